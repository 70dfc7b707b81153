//! Serves the embedded log to the machine's other processes: the process that owns the log's
//! directory listens on `<dir>/bus.sock` (mode 0600) and answers [`wire`] requests with its own
//! [`LocalBus`], so producers, consumer groups and commits across processes go through one
//! in-memory state and one writer per partition. Each consumer connection is one group member;
//! when the connection ends (the client exits or is killed) the member leaves its group.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Weak,
};

use tokio::net::{UnixListener, UnixStream};

use super::{
    Inner, LocalBus,
    wire::{self, Request, Response},
};
use crate::{Bus, BusError, Consumer, ConsumerConfig, Producer, Result, TopicPartition};

/// The socket's file name inside the log's directory.
pub const SOCKET: &str = "bus.sock";

/// Stops the accept loop and removes the socket when the log is closed.
pub(super) struct Serving {
    task: tokio::task::AbortHandle,
    path: PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `<dir>/bus.sock` (replacing one a crashed owner left: whoever holds the directory's
/// lock is the only one serving it) and answers connections until the log is dropped.
pub(super) fn start(dir: &Path, inner: Weak<Inner>) -> Result<Serving> {
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BusError::io("removing the stale socket", &path, e)),
    }
    let listener = UnixListener::bind(&path).map_err(|e| BusError::io("listening on", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| BusError::io("restricting", &path, e))?;
    tracing::debug!(socket = %path.display(), "serving the embedded bus to other processes");
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a bus client failed");
                    continue;
                }
            };
            let Some(inner) = inner.upgrade() else { return };
            let bus = LocalBus { inner };
            tokio::spawn(async move {
                if let Err(e) = connection(bus, stream).await {
                    tracing::debug!(error = %e, "bus client connection ended");
                }
            });
        }
    });
    Ok(Serving { task: task.abort_handle(), path })
}

/// What one connection has opened: a producer (so that records without key or partition move on
/// to the next partition batch by batch, as one in-process producer's do), a consumer.
#[derive(Default)]
struct Session {
    producer: Option<Box<dyn Producer>>,
    consumer: Option<Box<dyn Consumer>>,
}

/// Answers one connection's requests in order until it closes.
async fn connection(bus: LocalBus, mut stream: UnixStream) -> std::io::Result<()> {
    let mut session = Session::default();
    // The connection holds the log only while a request is answered or a consumer is open.
    let weak = std::sync::Arc::downgrade(&bus.inner);
    drop(bus);
    let mut buf = bytes::BytesMut::new();
    while let Some(request) = wire::read::<Request>(&mut stream, &mut buf).await? {
        let Some(inner) = weak.upgrade() else { break };
        let bus = LocalBus { inner };
        let response = match answer(&bus, &mut session, request).await {
            Ok(r) => r,
            Err(e) => Response::Failed(e.into()),
        };
        drop(bus);
        wire::write(&mut stream, &response).await?;
    }
    Ok(())
}

fn member(c: &mut Option<Box<dyn Consumer>>) -> Result<&mut Box<dyn Consumer>> {
    c.as_mut().ok_or_else(|| BusError::InvalidArgument("this connection is not a consumer".into()))
}

async fn answer(bus: &LocalBus, session: &mut Session, request: Request) -> Result<Response> {
    let consumer = &mut session.consumer;
    Ok(match request {
        Request::CreateTopic { name, partitions, config } => {
            bus.create_topic_with(&name, partitions, &config.into_iter().collect()).await?;
            Response::Done
        }
        Request::TopicConfig { name } => Response::Config(bus.topic_config(&name).await?.into_iter().collect()),
        Request::ListTopics => Response::Topics(wire::topics(bus.list_topics().await?)),
        Request::Topic { name } => Response::Topics(wire::topics(vec![bus.topic(&name).await?])),
        Request::EndOffsets { topic } => Response::Offsets(bus.end_offsets(&topic).await?),
        Request::PartitionStats { topic } => Response::Stats(bus.partition_stats(&topic).await?),
        Request::Send { topic, records } => {
            let producer = match &mut session.producer {
                Some(p) => p,
                None => session.producer.insert(bus.producer().await?),
            };
            let delivered = producer.send(&topic, records.into_iter().map(Into::into).collect()).await?;
            Response::Delivered(wire::delivered(delivered))
        }
        Request::Consumer { group, offset_reset, max_poll_records } => {
            let config = ConsumerConfig { group, offset_reset, max_poll_records: max_poll_records as usize };
            *consumer = Some(bus.consumer(config).await?);
            Response::Done
        }
        Request::Subscribe { topics } => {
            let c = member(consumer)?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            c.subscribe(&names).await?;
            Response::Assignment(wire::tps(&c.assignment()))
        }
        Request::Assign { partitions } => {
            let c = member(consumer)?;
            c.assign(&wire::from_tps(partitions)).await?;
            Response::Assignment(wire::tps(&c.assignment()))
        }
        Request::Poll { timeout_ms } => {
            let c = member(consumer)?;
            let messages = c.poll(wire::poll_timeout(timeout_ms)).await?;
            Response::Polled {
                assignment: wire::tps(&c.assignment()),
                messages: messages.into_iter().map(Into::into).collect(),
            }
        }
        Request::Seek { topic, partition, offset } => {
            member(consumer)?.seek(&TopicPartition::new(topic, partition), offset).await?;
            Response::Done
        }
        Request::Commit { offsets } => {
            let offsets: Vec<_> = offsets.into_iter().map(|(t, p, o)| (TopicPartition::new(t, p), o)).collect();
            member(consumer)?.commit(&offsets).await?;
            Response::Done
        }
        Request::Committed { partitions } => {
            Response::Committed(member(consumer)?.committed(&wire::from_tps(partitions)).await?)
        }
    })
}
