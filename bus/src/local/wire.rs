//! The protocol between the process that owns an embedded log and the other processes on the
//! machine that use it ([`super::server`], [`super::remote`]): length-prefixed frames (4 bytes,
//! big-endian) of postcard-encoded [`Request`]s and [`Response`]s over a Unix socket, strictly one
//! answer per request. A connection is either an admin/producer connection or, after
//! [`Request::Consumer`], one consumer group member whose membership ends with the connection.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{BusError, Delivered, Message, OffsetReset, Record, TopicInfo, TopicPartition};

/// Largest frame either side accepts (a poll of 10,000 records of 20 KiB fits).
const MAX_FRAME: usize = 256 << 20;

/// A request to the owning process.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    CreateTopic {
        name: String,
        partitions: u32,
        config: Vec<(String, String)>,
    },
    ListTopics,
    TopicConfig {
        name: String,
    },
    Topic {
        name: String,
    },
    EndOffsets {
        topic: String,
    },
    Send {
        topic: String,
        records: Vec<WireRecord>,
    },
    /// Turns this connection into a consumer of `group`.
    Consumer {
        group: String,
        offset_reset: OffsetReset,
        max_poll_records: u64,
    },
    Subscribe {
        topics: Vec<String>,
    },
    Assign {
        partitions: Vec<(String, u32)>,
    },
    Poll {
        timeout_ms: u64,
    },
    Seek {
        topic: String,
        partition: u32,
        offset: i64,
    },
    Commit {
        offsets: Vec<(String, u32, i64)>,
    },
    Committed {
        partitions: Vec<(String, u32)>,
    },
    PartitionStats {
        topic: String,
    },
}

/// The owning process's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    Done,
    Topics(Vec<(String, u32)>),
    Config(Vec<(String, String)>),
    Offsets(Vec<i64>),
    Delivered(Vec<(u32, i64)>),
    /// The consumer's partitions after the request (a poll may follow a rebalance).
    Assignment(Vec<(String, u32)>),
    Polled {
        assignment: Vec<(String, u32)>,
        messages: Vec<WireMessage>,
    },
    Committed(Vec<Option<i64>>),
    Failed(WireError),
    Stats(Vec<crate::PartitionStats>),
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireRecord {
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
    partition: Option<u32>,
    timestamp_ms: Option<i64>,
}

impl From<Record> for WireRecord {
    fn from(r: Record) -> Self {
        WireRecord {
            key: r.key,
            value: r.value,
            headers: r.headers,
            partition: r.partition,
            timestamp_ms: r.timestamp_ms,
        }
    }
}

impl From<WireRecord> for Record {
    fn from(r: WireRecord) -> Self {
        Record { key: r.key, value: r.value, headers: r.headers, partition: r.partition, timestamp_ms: r.timestamp_ms }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WireMessage {
    topic: String,
    partition: u32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Bytes)>,
}

impl From<Message> for WireMessage {
    fn from(m: Message) -> Self {
        WireMessage {
            topic: m.topic.to_string(),
            partition: m.partition,
            offset: m.offset,
            timestamp_ms: m.timestamp_ms,
            key: m.key,
            value: m.value,
            headers: m.headers,
        }
    }
}

/// Messages of one poll, sharing one `Arc<str>` per run of the same topic.
pub(crate) fn messages(wire: Vec<WireMessage>) -> Vec<Message> {
    let mut topic: Option<std::sync::Arc<str>> = None;
    wire.into_iter()
        .map(|m| {
            let name = match &topic {
                Some(t) if **t == *m.topic => t.clone(),
                _ => topic.insert(m.topic.as_str().into()).clone(),
            };
            Message {
                topic: name,
                partition: m.partition,
                offset: m.offset,
                timestamp_ms: m.timestamp_ms,
                key: m.key,
                value: m.value,
                headers: m.headers,
            }
        })
        .collect()
}

/// The errors a caller matches on keep their variant across the socket; the rest their text.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    InvalidTopic { topic: String, reason: String },
    UnknownTopic(String),
    TopicExists(String),
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    InvalidArgument(String),
    Other(String),
}

impl From<BusError> for WireError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::InvalidTopic { topic, reason } => WireError::InvalidTopic { topic, reason },
            BusError::UnknownTopic(t) => WireError::UnknownTopic(t),
            BusError::TopicExists(t) => WireError::TopicExists(t),
            BusError::UnknownPartition { topic, partition, partitions } => {
                WireError::UnknownPartition { topic, partition, partitions }
            }
            BusError::InvalidArgument(a) => WireError::InvalidArgument(a),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl WireError {
    /// The error as the caller's bus reports it; `socket` names the owning process's socket.
    pub(crate) fn into_bus_error(self, socket: &std::path::Path) -> BusError {
        match self {
            WireError::InvalidTopic { topic, reason } => BusError::InvalidTopic { topic, reason },
            WireError::UnknownTopic(t) => BusError::UnknownTopic(t),
            WireError::TopicExists(t) => BusError::TopicExists(t),
            WireError::UnknownPartition { topic, partition, partitions } => {
                BusError::UnknownPartition { topic, partition, partitions }
            }
            WireError::InvalidArgument(a) => BusError::InvalidArgument(a),
            WireError::Other(message) => BusError::Owner { socket: socket.to_path_buf(), message },
        }
    }
}

pub(crate) fn tps(partitions: &[TopicPartition]) -> Vec<(String, u32)> {
    partitions.iter().map(|tp| (tp.topic.clone(), tp.partition)).collect()
}

pub(crate) fn from_tps(partitions: Vec<(String, u32)>) -> Vec<TopicPartition> {
    partitions.into_iter().map(|(t, p)| TopicPartition::new(t, p)).collect()
}

pub(crate) fn topics(list: Vec<TopicInfo>) -> Vec<(String, u32)> {
    list.into_iter().map(|t| (t.name, t.partitions)).collect()
}

pub(crate) fn delivered(list: Vec<Delivered>) -> Vec<(u32, i64)> {
    list.into_iter().map(|d| (d.partition, d.offset)).collect()
}

/// How long a poll may wait, capped so that a wrong value cannot hold a connection forever.
pub(crate) fn poll_timeout(ms: u64) -> Duration {
    Duration::from_millis(ms.min(3_600_000))
}

/// Writes one frame.
pub(crate) async fn write<T: Serialize>(stream: &mut (impl AsyncWriteExt + Unpin), message: &T) -> std::io::Result<()> {
    let body = postcard::to_stdvec(message).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {} bytes exceeds {MAX_FRAME}", body.len())));
    }
    stream.write_u32(body.len() as u32).await?;
    stream.write_all(&body).await?;
    stream.flush().await
}

/// Reads one frame into `buf` (which keeps what arrived of the next); `None` at a clean end of
/// the stream. Cancel-safe: what was read stays in `buf` for the next call.
pub(crate) async fn read<T: DeserializeOwned>(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut bytes::BytesMut,
) -> std::io::Result<Option<T>> {
    loop {
        if let Some(frame) = split_frame(buf)? {
            return Ok(Some(frame));
        }
        if stream.read_buf(buf).await? == 0 {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(std::io::ErrorKind::UnexpectedEof.into()),
            };
        }
    }
}

/// Takes one whole frame off the front of `buf`, if it holds one.
fn split_frame<T: DeserializeOwned>(buf: &mut bytes::BytesMut) -> std::io::Result<Option<T>> {
    let Some(head) = buf.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*head) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    let frame = buf.split_to(4 + len);
    postcard::from_bytes(&frame[4..]).map(Some).map_err(std::io::Error::other)
}
