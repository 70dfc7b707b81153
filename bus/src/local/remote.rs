//! The embedded log as seen from a process that does not own its directory: every call goes over
//! `<dir>/bus.sock` to the owning process ([`super::server`]), so a second terminal's `weir
//! consume`, or a role started beside `weir up`, shares topics, offsets and consumer groups with
//! it. Admin calls share one connection; each producer and each consumer has its own, and a
//! consumer's group membership lasts as long as its connection.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tokio::{net::UnixStream, sync::Mutex};

use super::{
    server::SOCKET,
    wire::{self, Request, Response},
};
use crate::{
    Bus, BusError, Consumer, ConsumerConfig, Delivered, Message, PartitionStats, Producer, Record, Result, TopicConfig,
    TopicInfo, TopicPartition,
};

/// How long a client waits for the owner to start listening (it takes the lock first).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A bus whose embedded log another process owns.
pub struct RemoteBus {
    socket: PathBuf,
    admin: Mutex<Connection>,
}

/// One connection to the owner: requests answered strictly in order. A call may be cancelled
/// (a `poll` raced against a stop signal): the answer it was owed is read before the next
/// request, and a poll's owed records are handed to the next poll, so none is skipped.
struct Connection {
    socket: PathBuf,
    stream: UnixStream,
    /// Bytes of answers read so far (reading into it is cancel-safe).
    buf: bytes::BytesMut,
    state: State,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Idle,
    /// A request was sent and its answer not read yet.
    Owed,
    /// A request was cancelled half-written: the stream is out of step.
    Broken,
}

impl Connection {
    async fn open(socket: &Path) -> Result<Self> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(10);
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => {
                    return Ok(Connection {
                        socket: socket.to_path_buf(),
                        stream,
                        buf: bytes::BytesMut::new(),
                        state: State::Idle,
                    });
                }
                Err(e) if started.elapsed() < CONNECT_WAIT => {
                    tracing::debug!(socket = %socket.display(), error = %e, "the bus owner is not listening yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(BusError::NotServed { socket: socket.to_path_buf(), reason: e.to_string() }),
            }
        }
    }

    fn lost(&self, reason: impl std::fmt::Display) -> BusError {
        BusError::OwnerGone { socket: self.socket.clone(), reason: reason.to_string() }
    }

    /// The answer an earlier, cancelled call was owed, if any.
    async fn settle(&mut self) -> Result<Option<Response>> {
        match self.state {
            State::Idle => Ok(None),
            State::Owed => self.receive().await.map(Some),
            State::Broken => Err(self.lost("an earlier request was interrupted while being sent")),
        }
    }

    async fn send(&mut self, request: &Request) -> Result<()> {
        self.state = State::Broken;
        wire::write(&mut self.stream, request).await.map_err(|e| self.lost(e))?;
        self.state = State::Owed;
        Ok(())
    }

    async fn receive(&mut self) -> Result<Response> {
        match wire::read(&mut self.stream, &mut self.buf).await {
            Ok(Some(frame)) => {
                self.state = State::Idle;
                match frame {
                    Response::Failed(e) => Err(e.into_bus_error(&self.socket)),
                    r => Ok(r),
                }
            }
            Ok(None) => Err(self.lost("the owning process closed the connection")),
            Err(e) => Err(self.lost(e)),
        }
    }

    async fn call(&mut self, request: &Request) -> Result<Response> {
        self.settle().await?;
        self.send(request).await?;
        self.receive().await
    }
}

fn unexpected(r: Response) -> BusError {
    BusError::InvalidArgument(format!("the bus owner answered out of protocol: {r:?}"))
}

impl RemoteBus {
    /// Connects to the process serving the embedded log in `dir`.
    pub async fn connect(dir: &Path) -> Result<Self> {
        let socket = dir.join(SOCKET);
        let admin = Connection::open(&socket).await?;
        tracing::debug!(socket = %socket.display(), "using the embedded bus of another process");
        Ok(RemoteBus { socket, admin: Mutex::new(admin) })
    }

    async fn admin(&self, request: Request) -> Result<Response> {
        self.admin.lock().await.call(&request).await
    }
}

#[async_trait]
impl Bus for RemoteBus {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn create_topic_with(&self, name: &str, partitions: u32, config: &TopicConfig) -> Result<()> {
        let config = config.clone().into_iter().collect();
        match self.admin(Request::CreateTopic { name: name.into(), partitions, config }).await? {
            Response::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        match self.admin(Request::ListTopics).await? {
            Response::Topics(list) => {
                Ok(list.into_iter().map(|(name, partitions)| TopicInfo { name, partitions }).collect())
            }
            r => Err(unexpected(r)),
        }
    }

    async fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        match self.admin(Request::TopicConfig { name: name.into() }).await? {
            Response::Config(config) => Ok(config.into_iter().collect()),
            r => Err(unexpected(r)),
        }
    }

    async fn topic(&self, name: &str) -> Result<TopicInfo> {
        match self.admin(Request::Topic { name: name.into() }).await? {
            Response::Topics(mut list) if list.len() == 1 => {
                let (name, partitions) = list.remove(0);
                Ok(TopicInfo { name, partitions })
            }
            r => Err(unexpected(r)),
        }
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        match self.admin(Request::EndOffsets { topic: topic.into() }).await? {
            Response::Offsets(o) => Ok(o),
            r => Err(unexpected(r)),
        }
    }

    async fn partition_stats(&self, topic: &str) -> Result<Vec<PartitionStats>> {
        match self.admin(Request::PartitionStats { topic: topic.into() }).await? {
            Response::Stats(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(RemoteProducer { connection: Mutex::new(Connection::open(&self.socket).await?) }))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        let mut connection = Connection::open(&self.socket).await?;
        let request = Request::Consumer {
            group: config.group,
            offset_reset: config.offset_reset,
            max_poll_records: config.max_poll_records as u64,
        };
        match connection.call(&request).await? {
            Response::Done => Ok(Box::new(RemoteConsumer { connection, assignment: Vec::new() })),
            r => Err(unexpected(r)),
        }
    }
}

struct RemoteProducer {
    connection: Mutex<Connection>,
}

#[async_trait]
impl Producer for RemoteProducer {
    async fn send(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Delivered>> {
        let request = Request::Send { topic: topic.into(), records: records.into_iter().map(Into::into).collect() };
        match self.connection.lock().await.call(&request).await? {
            Response::Delivered(d) => {
                Ok(d.into_iter().map(|(partition, offset)| Delivered { partition, offset }).collect())
            }
            r => Err(unexpected(r)),
        }
    }
}

struct RemoteConsumer {
    connection: Connection,
    assignment: Vec<TopicPartition>,
}

impl RemoteConsumer {
    async fn done(&mut self, request: Request) -> Result<()> {
        match self.connection.call(&request).await? {
            Response::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    async fn assigned(&mut self, request: Request) -> Result<()> {
        match self.connection.call(&request).await? {
            Response::Assignment(a) => {
                self.assignment = wire::from_tps(a);
                Ok(())
            }
            r => Err(unexpected(r)),
        }
    }
}

#[async_trait]
impl Consumer for RemoteConsumer {
    async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        self.assigned(Request::Subscribe { topics: topics.iter().map(|t| t.to_string()).collect() }).await
    }

    async fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.assigned(Request::Assign { partitions: wire::tps(partitions) }).await
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.assignment.clone()
    }

    async fn poll(&mut self, timeout: Duration) -> Result<Vec<Message>> {
        let owed = match self.connection.settle().await? {
            Some(r @ Response::Polled { .. }) if matches!(&r, Response::Polled { messages, .. } if !messages.is_empty()) => {
                Some(r)
            }
            _ => None,
        };
        let response = match owed {
            Some(r) => r,
            None => self.connection.call(&Request::Poll { timeout_ms: timeout.as_millis() as u64 }).await?,
        };
        match response {
            Response::Polled { assignment, messages } => {
                self.assignment = wire::from_tps(assignment);
                Ok(wire::messages(messages))
            }
            r => Err(unexpected(r)),
        }
    }

    async fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<()> {
        self.done(Request::Seek { topic: tp.topic.clone(), partition: tp.partition, offset }).await
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let offsets = offsets.iter().map(|(tp, o)| (tp.topic.clone(), tp.partition, *o)).collect();
        self.done(Request::Commit { offsets }).await
    }

    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Option<i64>>> {
        match self.connection.call(&Request::Committed { partitions: wire::tps(partitions) }).await? {
            Response::Committed(c) => Ok(c),
            r => Err(unexpected(r)),
        }
    }
}
