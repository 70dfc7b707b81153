//! # weir-bus — the event bus
//!
//! Every arrow between Weir's roles goes through the bus. This crate owns the [`Bus`] trait and its
//! two backends:
//!
//! - [`kafka::KafkaBus`] talks to a Kafka-protocol cluster through rdkafka (idempotent producer,
//!   `acks=all`, consumer groups with explicit commits). It is the backend for real deployments.
//! - [`local::LocalBus`] is a durable embedded log for one machine: one directory per topic
//!   partition holding segment files of CRC-protected records, committed group offsets in files
//!   beside them. A record acknowledged to the producer has been written to the operating system,
//!   so it survives `kill -9` of the process. One process owns the directory and serves it to the
//!   machine's other processes over a Unix socket ([`local::remote::RemoteBus`]).
//!
//! Both backends place a keyed record on the same partition (Kafka's murmur2 partitioner, see
//! [`partitioner`]), so moving from one to the other does not reorder anything a consumer relies on.
//! One contract test suite (`tests/contract.rs`) runs against both.
//!
//! Data flow: a [`Producer`] appends batches of [`Record`]s to a topic and gets back a
//! [`Delivered`] position for each; a [`Consumer`] joins a group ([`Consumer::subscribe`]) or takes
//! partitions by hand ([`Consumer::assign`]), polls [`Message`]s and commits the next offset to read.

pub mod config;
pub mod error;
pub mod kafka;
pub mod local;
pub mod partitioner;
mod security;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use config::{BusConfig, BusUrl};
pub use error::BusError;

/// Result type of every bus operation.
pub type Result<T, E = BusError> = std::result::Result<T, E>;

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// Partitioning key; `None` spreads records over partitions.
    pub key: Option<Bytes>,
    /// Payload; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Headers in order; names may repeat.
    pub headers: Vec<(String, Bytes)>,
    /// Explicit partition; overrides the key's partition.
    pub partition: Option<u32>,
    /// Event time in ms since the epoch; `None` means "now".
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// A record with a key and a value.
    pub fn keyed(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Record { key: Some(key.into()), value: Some(value.into()), ..Record::default() }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition the record went to.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// A record read from the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic it was read from (shared by the messages of one poll: no copy per record).
    pub topic: std::sync::Arc<str>,
    /// Partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Timestamp in ms since the epoch.
    pub timestamp_ms: i64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value, if any (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<(String, Bytes)>,
}

impl Message {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// Topic-level configs by Kafka's names (`retention.ms` → `-1`).
pub type TopicConfig = std::collections::BTreeMap<String, String>;

/// The configs of a topic whose records must never expire (a schema history): Debezium's
/// requirement for its schema-history topic.
pub fn keep_forever() -> TopicConfig {
    [("cleanup.policy", "delete"), ("retention.bytes", "-1"), ("retention.ms", "-1")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What one partition holds: offsets `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionStats {
    /// The first offset still stored (records before it were deleted by retention).
    pub start: i64,
    /// The offset the next record will get.
    pub end: i64,
    /// Bytes stored (the embedded log; Kafka does not report it to clients).
    pub bytes: Option<u64>,
}

/// A topic and its partition count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
}

impl TopicPartition {
    /// Builds a topic-partition.
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where a consumer starts in a partition its group has no committed offset for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The first offset still stored.
    #[default]
    Earliest,
    /// The end of the partition: only records produced from now on.
    Latest,
}

/// How a consumer is set up.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerConfig {
    /// Consumer group; committed offsets belong to it.
    pub group: String,
    /// Start position where the group has no committed offset.
    pub offset_reset: OffsetReset,
    /// Most records one [`Consumer::poll`] returns.
    pub max_poll_records: usize,
}

impl ConsumerConfig {
    /// A consumer of `group` starting from the earliest offset.
    pub fn new(group: impl Into<String>) -> Self {
        ConsumerConfig { group: group.into(), offset_reset: OffsetReset::Earliest, max_poll_records: 10_000 }
    }
}

/// An event bus: topics with partitions, producers and consumer groups.
#[async_trait]
pub trait Bus: Send + Sync {
    /// A short name of the backend (`local` or `kafka`), for logs and benchmarks.
    fn backend(&self) -> &'static str;

    /// Creates a topic; fails with [`BusError::TopicExists`] if it is there already.
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<()> {
        self.create_topic_with(name, partitions, &TopicConfig::new()).await
    }

    /// Creates a topic with topic-level configs (Kafka's names: `retention.ms`, `retention.bytes`,
    /// `cleanup.policy`, …); a backend fails with [`BusError::InvalidArgument`] on a config it
    /// cannot apply, never ignores one.
    async fn create_topic_with(&self, name: &str, partitions: u32, config: &TopicConfig) -> Result<()>;

    /// The topic-level configs the backend applies to `name` (Kafka: every config the broker
    /// reports; the embedded log: its retention, the topic's own or `[bus.local.retention]`'s).
    async fn topic_config(&self, name: &str) -> Result<TopicConfig>;

    /// Each partition's first and next offsets and, where the backend knows it, its size.
    async fn partition_stats(&self, topic: &str) -> Result<Vec<PartitionStats>>;

    /// Every topic, sorted by name.
    async fn list_topics(&self) -> Result<Vec<TopicInfo>>;

    /// The partition count of one topic; [`BusError::UnknownTopic`] if it does not exist.
    async fn topic(&self, name: &str) -> Result<TopicInfo>;

    /// The offset the next record of each partition of `topic` will get (the high watermark).
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>>;

    /// A producer. Cheap to create; share one across tasks.
    async fn producer(&self) -> Result<Box<dyn Producer>>;

    /// A consumer for `config.group`, with no partitions until it subscribes or is assigned some.
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>>;
}

/// Appends records to topics.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Appends `records` to `topic`. When this returns `Ok`, every record is acknowledged
    /// (durable as the backend defines it) and the result gives each one's position, in order.
    async fn send(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Delivered>>;
}

/// Reads records for one consumer group member.
#[async_trait]
pub trait Consumer: Send {
    /// Joins the group for these topics; the group spreads their partitions over its members.
    async fn subscribe(&mut self, topics: &[&str]) -> Result<()>;

    /// Takes exactly these partitions, outside group management (commits still use the group).
    async fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()>;

    /// The partitions this consumer currently reads.
    fn assignment(&self) -> Vec<TopicPartition>;

    /// Waits up to `timeout` for records; returns at once when some are ready. An empty batch
    /// means nothing arrived in time.
    async fn poll(&mut self, timeout: Duration) -> Result<Vec<Message>>;

    /// Makes the next poll of `tp` start at `offset`.
    async fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<()>;

    /// Commits, for each partition, the offset of the next record to read.
    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()>;

    /// The group's committed offsets for these partitions (`None` where it has none).
    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Option<i64>>>;
}

/// Commits the offset after each partition's last message in `messages`.
pub fn next_offsets(messages: &[Message]) -> Vec<(TopicPartition, i64)> {
    let mut next: std::collections::BTreeMap<TopicPartition, i64> = Default::default();
    for m in messages {
        let tp = TopicPartition::new(m.topic.to_string(), m.partition);
        let entry = next.entry(tp).or_insert(m.offset + 1);
        *entry = (*entry).max(m.offset + 1);
    }
    next.into_iter().collect()
}

/// Reads partitions `0..partitions` of `topic` from their first record, without committing (each
/// caller builds the whole state, such as the latest record per key), handing every message to
/// `apply`, until `stop` turns true.
pub async fn follow_from_start(
    bus: &dyn Bus,
    topic: &str,
    partitions: u32,
    group: &str,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut apply: impl FnMut(Message) + Send,
) -> Result<()> {
    let mut consumer = bus.consumer(ConsumerConfig::new(group)).await?;
    let tps: Vec<TopicPartition> = (0..partitions).map(|p| TopicPartition::new(topic, p)).collect();
    consumer.assign(&tps).await?;
    for tp in &tps {
        consumer.seek(tp, 0).await?;
    }
    loop {
        let polled = tokio::select! {
            p = consumer.poll(poll) => p?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        polled.into_iter().for_each(&mut apply);
    }
}

/// Opens the bus a URL names: `local:<dir>` or `kafka://host:port[,host:port…]`. The first
/// process to open an embedded log owns it and serves it to the others; a later one uses it
/// through the owner ([`local::remote::RemoteBus`]).
pub async fn open(config: &BusConfig) -> Result<std::sync::Arc<dyn Bus>> {
    match &config.url {
        BusUrl::Local(dir) => match local::LocalBus::open(dir, config.local.clone()) {
            Ok(bus) => {
                bus.serve()?;
                Ok(std::sync::Arc::new(bus))
            }
            Err(BusError::Locked { holder, .. }) => {
                tracing::debug!(dir = %dir.display(), %holder, "embedded bus owned by another process: using it through its socket");
                Ok(std::sync::Arc::new(local::remote::RemoteBus::connect(dir).await?))
            }
            Err(e) => Err(e),
        },
        BusUrl::Kafka(brokers) => {
            Ok(std::sync::Arc::new(kafka::KafkaBus::connect(brokers, config.kafka.clone()).await?))
        }
    }
}

/// Validates a topic name the way Kafka does: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason: &str| Err(BusError::InvalidTopic { topic: name.to_string(), reason: reason.to_string() });
    if name.is_empty() {
        return bad("empty name");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return bad(&format!("character {c:?} is not allowed (only [a-zA-Z0-9._-])"));
    }
    Ok(())
}
