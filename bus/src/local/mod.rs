//! The embedded durable log: Kafka's model (topics, partitions, offsets, consumer groups) in a
//! directory on one machine, owned by one process at a time. The owner serves the log to the
//! machine's other processes over a Unix socket ([`server`]); they use it through
//! [`remote::RemoteBus`], so every append and every group goes through the owner's one state.
//!
//! ```text
//! <dir>/LOCK                          held (flock) by the owning process; holds its pid
//! <dir>/bus.sock                      the owner's socket for other processes (mode 0600)
//! <dir>/topics/<topic>/partitions     the partition count
//! <dir>/topics/<topic>/config         its own configs, `key=value` lines (retention)
//! <dir>/topics/<topic>/<p>/<base>.log segment files (see `record` for the framing)
//! <dir>/groups/<hex group>.offsets    committed offsets of one consumer group
//! ```
//!
//! Retention runs in the owning process every `[bus.local.retention] check_interval`
//! ([`LocalBus::enforce_retention`]): see [`crate::config::RetentionConfig`].

mod groups;
mod partition;
mod record;
pub mod remote;
pub mod server;
mod wire;

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use tokio::sync::watch;

use self::{
    groups::Groups,
    partition::{Cursor, PartitionLog, Retention},
    record::StoredRecord,
};
use crate::{
    Bus, BusError, Consumer, ConsumerConfig, Delivered, Message, OffsetReset, PartitionStats, Producer, Record, Result,
    TopicConfig, TopicInfo, TopicPartition, config::LocalConfig, partitioner::partition_for_key, validate_topic_name,
};

/// Most partitions one topic may have.
const MAX_PARTITIONS: u32 = 10_000;

/// Room a poll reserves for its records at once (more grow as needed).
const READ_AHEAD_RECORDS: usize = 10_000;

/// The embedded log. Clones share the same state.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

struct Topic {
    name: String,
    partitions: Vec<PartitionLog>,
    /// Its own configs (retention); `[bus.local.retention]` gives the rest.
    config: TopicConfig,
}

struct Inner {
    root: PathBuf,
    config: LocalConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    groups: Mutex<Groups>,
    /// Bumped on every append and every rebalance; waiting consumers watch it.
    changes: watch::Sender<u64>,
    /// Serving other processes, once [`LocalBus::serve`] started it; stops when the log closes.
    serving: Mutex<Option<server::Serving>>,
    _lock: File,
}

impl LocalBus {
    /// Opens the log in `dir`, creating it if needed, and takes its lock.
    pub fn open(dir: &Path, config: LocalConfig) -> Result<Self> {
        std::fs::create_dir_all(dir.join("topics")).map_err(|e| BusError::io("creating", dir, e))?;
        let lock = take_lock(dir)?;
        let mut topics = BTreeMap::new();
        let topics_dir = dir.join("topics");
        for entry in std::fs::read_dir(&topics_dir).map_err(|e| BusError::io("listing", &topics_dir, e))? {
            let path = entry.map_err(|e| BusError::io("listing", &topics_dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if name.starts_with(".tmp-") {
                // A topic creation that crashed before its rename: it never existed.
                std::fs::remove_dir_all(&path).map_err(|e| BusError::io("removing", &path, e))?;
                continue;
            }
            let topic = open_topic(&path, &name, &config)?;
            topics.insert(name, Arc::new(topic));
        }
        let groups = Groups::open(&dir.join("groups"), config.fsync)?;
        tracing::debug!(dir = %dir.display(), topics = topics.len(), "opened embedded bus");
        let bus = LocalBus {
            inner: Arc::new(Inner {
                root: dir.to_path_buf(),
                config,
                topics: RwLock::new(topics),
                groups: Mutex::new(groups),
                changes: watch::Sender::new(0),
                serving: Mutex::new(None),
                _lock: lock,
            }),
        };
        start_retention(&bus.inner);
        Ok(bus)
    }

    /// Deletes the segments retention lets go now (the owner also does it every
    /// `check_interval`); returns how many segments and bytes went.
    pub fn enforce_retention(&self) -> Result<(usize, u64)> {
        self.inner.enforce_retention(SystemTime::now())
    }
}

/// Runs retention every `check_interval` on a thread of its own, until the log is closed.
fn start_retention(inner: &Arc<Inner>) {
    let interval = inner.config.retention.check_interval;
    if interval.is_zero() {
        return;
    }
    let weak = Arc::downgrade(inner);
    let spawned = std::thread::Builder::new().name("weir-bus-retention".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            let Some(inner) = weak.upgrade() else { return };
            if let Err(e) = inner.enforce_retention(SystemTime::now()) {
                tracing::warn!(error = %e, "embedded log retention failed; trying again at the next check");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the embedded log's retention thread: records are kept");
    }
}

impl LocalBus {
    /// Lets the machine's other processes use this log through `<dir>/bus.sock` until it is
    /// dropped. Needs a Tokio runtime.
    pub fn serve(&self) -> Result<()> {
        let mut serving = self.inner.serving.lock().unwrap();
        if serving.is_none() {
            *serving = Some(server::start(&self.inner.root, Arc::downgrade(&self.inner))?);
        }
        Ok(())
    }
}

fn take_lock(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut file = partition::open_rw(&path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "unknown pid".to_string(),
                pid => format!("pid {pid}"),
            };
            return Err(BusError::Locked { dir: dir.to_path_buf(), holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(BusError::io("locking", &path, e)),
    }
    file.set_len(0).map_err(|e| BusError::io("writing", &path, e))?;
    file.write_all(std::process::id().to_string().as_bytes()).map_err(|e| BusError::io("writing", &path, e))?;
    Ok(file)
}

fn open_topic(path: &Path, name: &str, config: &LocalConfig) -> Result<Topic> {
    let count_path = path.join("partitions");
    let text = std::fs::read_to_string(&count_path).map_err(|e| BusError::io("reading", &count_path, e))?;
    let count: u32 = text.trim().parse().map_err(|_| BusError::Corrupt {
        path: count_path.clone(),
        position: 0,
        reason: format!("partition count {text:?} is not a number"),
    })?;
    let partitions = (0..count)
        .map(|p| PartitionLog::open(&path.join(p.to_string()), config.segment_bytes, config.fsync))
        .collect::<Result<Vec<_>>>()?;
    let config_path = path.join(CONFIG_FILE);
    let topic_config = match std::fs::read_to_string(&config_path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| BusError::Corrupt {
                    path: config_path.clone(),
                    position: 0,
                    reason: format!("line {l:?} is not key=value"),
                })
            })
            .collect::<Result<TopicConfig>>()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TopicConfig::new(),
        Err(e) => return Err(BusError::io("reading", &config_path, e)),
    };
    Ok(Topic { name: name.to_string(), partitions, config: topic_config })
}

/// A topic's own configs, beside its partitions.
const CONFIG_FILE: &str = "config";

/// Checks that the embedded log can apply every config of a topic `name`: deleting by age and
/// size, not compaction.
fn check_config(name: &str, config: &TopicConfig) -> Result<()> {
    for (k, v) in config {
        let ok = match k.as_str() {
            "cleanup.policy" => v == "delete",
            "retention.ms" | "retention.bytes" => v.parse::<i64>().is_ok_and(|n| n >= -1),
            _ => false,
        };
        if !ok {
            return Err(BusError::InvalidArgument(format!(
                "topic {name:?}: the embedded log cannot apply {k}={v} (it takes cleanup.policy=delete, \
                 retention.ms and retention.bytes as integers, -1 for no limit); use a Kafka bus for compaction \
                 and other topic configs"
            )));
        }
    }
    Ok(())
}

/// A non-negative limit from a topic config, `-1` for none; `None` when the topic has no value.
fn limit(config: &TopicConfig, key: &str) -> Option<Option<u64>> {
    config.get(key).and_then(|v| v.parse::<i64>().ok()).map(|n| u64::try_from(n).ok())
}

impl Inner {
    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics.read().unwrap().get(name).cloned().ok_or_else(|| BusError::UnknownTopic(name.to_string()))
    }

    fn partition_count(&self, name: &str) -> Option<u32> {
        self.topics.read().unwrap().get(name).map(|t| t.partitions.len() as u32)
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The configs applied to `topic`: its own over `[bus.local.retention]`'s.
    fn effective_config(&self, topic: &Topic) -> TopicConfig {
        let defaults = &self.config.retention;
        let mut config = TopicConfig::new();
        config.insert("cleanup.policy".into(), "delete".into());
        config.insert("retention.ms".into(), defaults.age.map_or(-1, |a| a.as_millis() as i64).to_string());
        config.insert("retention.bytes".into(), defaults.bytes.map_or(-1, |b| b as i64).to_string());
        config.extend(topic.config.clone());
        config
    }

    fn enforce_retention(&self, now: SystemTime) -> Result<(usize, u64)> {
        let topics: Vec<Arc<Topic>> = self.topics.read().unwrap().values().cloned().collect();
        let expiry = self.config.retention.idle_group_expiry;
        let (mut segments, mut bytes) = (0, 0);
        for topic in topics {
            let config = self.effective_config(&topic);
            let max_age = limit(&config, "retention.ms").flatten().map(Duration::from_millis);
            let max_bytes = limit(&config, "retention.bytes").flatten();
            if max_age.is_none() && max_bytes.is_none() {
                continue;
            }
            for (p, log) in topic.partitions.iter().enumerate() {
                let tp = TopicPartition::new(topic.name.clone(), p as u32);
                let needed_from = self.groups.lock().unwrap().needed_from(&tp, now, expiry);
                let (s, b) = log.enforce(&Retention { max_age, max_bytes, needed_from }, now)?;
                segments += s;
                bytes += b;
            }
        }
        if segments > 0 {
            metrics::counter!("weir_bus_local_retention_segments_total").increment(segments as u64);
            metrics::counter!("weir_bus_local_retention_bytes_total").increment(bytes);
        }
        Ok((segments, bytes))
    }
}

fn check_partition(topic: &Topic, partition: u32) -> Result<()> {
    if partition as usize >= topic.partitions.len() {
        return Err(BusError::UnknownPartition {
            topic: topic.name.clone(),
            partition,
            partitions: topic.partitions.len() as u32,
        });
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[async_trait]
impl Bus for LocalBus {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn create_topic_with(&self, name: &str, partitions: u32, config: &TopicConfig) -> Result<()> {
        validate_topic_name(name)?;
        check_config(name, config)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(BusError::InvalidArgument(format!(
                "topic {name:?}: partitions must be between 1 and {MAX_PARTITIONS}, not {partitions}"
            )));
        }
        let inner = &self.inner;
        let mut topics = inner.topics.write().unwrap();
        if topics.contains_key(name) {
            return Err(BusError::TopicExists(name.to_string()));
        }
        let dir = inner.root.join("topics");
        let tmp = dir.join(format!(".tmp-{name}"));
        let fin = dir.join(name);
        let build = || -> std::io::Result<()> {
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)?;
            }
            std::fs::create_dir_all(&tmp)?;
            std::fs::write(tmp.join("partitions"), partitions.to_string())?;
            let lines: String = config.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            std::fs::write(tmp.join(CONFIG_FILE), lines)?;
            std::fs::rename(&tmp, &fin)
        };
        build().map_err(|e| BusError::io("creating topic directory", &fin, e))?;
        let topic = open_topic(&fin, name, &inner.config)?;
        topics.insert(name.to_string(), Arc::new(topic));
        tracing::info!(topic = name, partitions, "created topic");
        Ok(())
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let topics = self.inner.topics.read().unwrap();
        Ok(topics.values().map(|t| TopicInfo { name: t.name.clone(), partitions: t.partitions.len() as u32 }).collect())
    }

    async fn topic(&self, name: &str) -> Result<TopicInfo> {
        let t = self.inner.topic(name)?;
        Ok(TopicInfo { name: t.name.clone(), partitions: t.partitions.len() as u32 })
    }

    async fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        let topic = self.inner.topic(name)?;
        Ok(self.inner.effective_config(&topic))
    }

    async fn partition_stats(&self, topic: &str) -> Result<Vec<PartitionStats>> {
        let t = self.inner.topic(topic)?;
        Ok(t.partitions
            .iter()
            .map(|p| PartitionStats { start: p.start_offset(), end: p.end_offset(), bytes: Some(p.size_bytes()) })
            .collect())
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        Ok(self.inner.topic(topic)?.partitions.iter().map(|p| p.end_offset()).collect())
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(LocalProducer { inner: self.inner.clone(), sticky: AtomicU32::new(0) }))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        if config.max_poll_records == 0 {
            return Err(BusError::InvalidArgument("max_poll_records must be at least 1".to_string()));
        }
        Ok(Box::new(LocalConsumer {
            rx: self.inner.changes.subscribe(),
            inner: self.inner.clone(),
            config,
            member: None,
            generation: 0,
            complete: true,
            cursors: BTreeMap::new(),
            next: 0,
            stored: Vec::new(),
        }))
    }
}

/// Producer of the embedded log.
struct LocalProducer {
    inner: Arc<Inner>,
    /// Records without key or partition of one batch go to one partition, the next batch to the next.
    sticky: AtomicU32,
}

#[async_trait]
impl Producer for LocalProducer {
    async fn send(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Delivered>> {
        let t = self.inner.topic(topic)?;
        let n = t.partitions.len() as u32;
        let sticky = self.sticky.fetch_add(1, Ordering::Relaxed) % n;
        let mut per_partition: Vec<Vec<usize>> = vec![Vec::new(); n as usize];
        for (i, r) in records.iter().enumerate() {
            let p = match (r.partition, &r.key) {
                (Some(p), _) => {
                    check_partition(&t, p)?;
                    p
                }
                (None, Some(key)) => partition_for_key(key, n),
                (None, None) => sticky,
            };
            per_partition[p as usize].push(i);
        }
        let now = now_ms();
        let mut delivered = vec![Delivered { partition: 0, offset: 0 }; records.len()];
        let mut bytes = 0u64;
        for (p, indices) in per_partition.iter().enumerate() {
            if indices.is_empty() {
                continue;
            }
            let batch: Vec<&Record> = indices.iter().map(|&i| &records[i]).collect();
            let first = t.partitions[p].append(&batch, now)?;
            for (j, &i) in indices.iter().enumerate() {
                delivered[i] = Delivered { partition: p as u32, offset: first + j as i64 };
            }
            bytes += batch.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64).sum::<u64>();
        }
        self.inner.notify();
        metrics::counter!("weir_bus_produced_records_total", "backend" => "local").increment(records.len() as u64);
        metrics::counter!("weir_bus_produced_bytes_total", "backend" => "local").increment(bytes);
        Ok(delivered)
    }
}

/// Consumer of the embedded log.
struct LocalConsumer {
    inner: Arc<Inner>,
    config: ConsumerConfig,
    rx: watch::Receiver<u64>,
    /// Group member id while subscribed.
    member: Option<u64>,
    generation: u64,
    /// Whether it reads its whole assignment (else partitions still wait for their last reader).
    complete: bool,
    cursors: BTreeMap<TopicPartition, (Arc<Topic>, Cursor)>,
    /// Which assigned partition the next poll reads first, so none starves.
    next: usize,
    /// Records read from a partition, kept between polls so that its memory is reused.
    stored: Vec<StoredRecord>,
}

impl LocalConsumer {
    fn leave_group(&mut self) {
        if let Some(member) = self.member.take() {
            let inner = self.inner.clone();
            inner.groups.lock().unwrap().leave(&self.config.group, member, &|t| inner.partition_count(t));
            inner.notify();
        }
    }

    fn start_position(&self, topic: &Topic, tp: &TopicPartition) -> Result<Cursor> {
        let log = &topic.partitions[tp.partition as usize];
        let committed = self.inner.groups.lock().unwrap().committed(&self.config.group, tp);
        let offset = match (committed, self.config.offset_reset) {
            (Some(offset), _) => offset,
            (None, OffsetReset::Earliest) => log.start_offset(),
            (None, OffsetReset::Latest) => log.end_offset(),
        };
        log.cursor(offset)
    }

    /// Picks up a rebalance of the group, if one happened since the last look, or partitions of
    /// its assignment that another member has let go of since.
    fn sync_assignment(&mut self) -> Result<()> {
        let Some(member) = self.member else { return Ok(()) };
        let taken = {
            let mut groups = self.inner.groups.lock().unwrap();
            if groups.generation(&self.config.group) == self.generation && self.complete {
                return Ok(());
            }
            groups.take(&self.config.group, member)
        };
        if taken.released {
            // Members waiting for what this one let go of look again.
            self.inner.notify();
        }
        let mut cursors = BTreeMap::new();
        for tp in taken.partitions {
            let entry = match self.cursors.remove(&tp) {
                Some(kept) => kept,
                None => {
                    let topic = self.inner.topic(&tp.topic)?;
                    let cursor = self.start_position(&topic, &tp)?;
                    (topic, cursor)
                }
            };
            cursors.insert(tp, entry);
        }
        tracing::debug!(group = %self.config.group, member, generation = taken.generation, partitions = cursors.len(), complete = taken.complete, "rebalanced");
        self.cursors = cursors;
        self.generation = taken.generation;
        self.complete = taken.complete;
        Ok(())
    }

    fn read_available(&mut self) -> Result<Vec<Message>> {
        let max = self.config.max_poll_records;
        let count = self.cursors.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        // A poll usually returns `max` records: one allocation instead of doubling to it.
        let mut out = Vec::with_capacity(max.min(READ_AHEAD_RECORDS));
        let start = self.next % count;
        let stored = &mut self.stored;
        let mut order: Vec<_> = self.cursors.iter_mut().collect();
        order.rotate_left(start);
        for (tp, (topic, cursor)) in order {
            if out.len() >= max {
                break;
            }
            stored.clear();
            topic.partitions[tp.partition as usize].read(cursor, max - out.len(), stored)?;
            let name: Arc<str> = tp.topic.as_str().into();
            out.extend(stored.drain(..).map(|r| Message {
                topic: name.clone(),
                partition: tp.partition,
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r.headers,
            }));
        }
        self.next = start + 1;
        Ok(out)
    }
}

#[async_trait]
impl Consumer for LocalConsumer {
    async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        for t in topics {
            self.inner.topic(t)?;
        }
        self.leave_group();
        self.cursors.clear();
        let inner = self.inner.clone();
        let member = inner.groups.lock().unwrap().join(
            &self.config.group,
            topics.iter().map(|t| t.to_string()).collect(),
            &|t| inner.partition_count(t),
        );
        self.member = Some(member);
        self.generation = 0;
        self.complete = false;
        inner.notify();
        self.sync_assignment()
    }

    async fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        self.leave_group();
        let mut cursors = BTreeMap::new();
        for tp in partitions {
            let topic = self.inner.topic(&tp.topic)?;
            check_partition(&topic, tp.partition)?;
            let cursor = self.start_position(&topic, tp)?;
            cursors.insert(tp.clone(), (topic, cursor));
        }
        self.cursors = cursors;
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        self.cursors.keys().cloned().collect()
    }

    async fn poll(&mut self, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.rx.borrow_and_update();
            self.sync_assignment()?;
            let messages = self.read_available()?;
            if !messages.is_empty() {
                metrics::counter!("weir_bus_consumed_records_total", "backend" => "local")
                    .increment(messages.len() as u64);
                return Ok(messages);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(messages);
            }
            match tokio::time::timeout(remaining, self.rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<()> {
        let Some((topic, cursor)) = self.cursors.get_mut(tp) else {
            return Err(BusError::InvalidArgument(format!("cannot seek {tp}: it is not assigned to this consumer")));
        };
        *cursor = topic.partitions[tp.partition as usize].cursor(offset)?;
        Ok(())
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        for (tp, _) in offsets {
            let topic = self.inner.topic(&tp.topic)?;
            check_partition(&topic, tp.partition)?;
        }
        self.inner.groups.lock().unwrap().commit(&self.config.group, offsets)
    }

    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Option<i64>>> {
        let groups = self.inner.groups.lock().unwrap();
        Ok(partitions.iter().map(|tp| groups.committed(&self.config.group, tp)).collect())
    }
}

impl Drop for LocalConsumer {
    fn drop(&mut self) {
        self.leave_group();
    }
}
