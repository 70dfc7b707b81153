//! The Cassandra CDC source: follows a node's `cdc_raw` directory and puts every mutation of the
//! captured tables on the bus as Debezium-Cassandra change events.
//!
//! Segments are read in id order. Cassandra 4+ writes `<segment>_cdc.idx` beside each segment:
//! its first line is the durable offset (read no further), a second line `COMPLETED` means the
//! segment is finished. Cassandra 3.x moves a segment into `cdc_raw` only once it is full.
//!
//! The offset — segment id and the position of the next unread entry — is saved (written to a
//! temporary file, then renamed) after each batch of events is acknowledged by the bus. After a
//! crash, events after the last saved offset may be produced again; each carries its segment file
//! and position in `source`, so consumers can drop duplicates. Nothing acknowledged is lost.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Producer, Record};
use weir_schemas::serializer::{AvroSerializer, SerializeError};

use super::{
    CommitLogError,
    events::TableEvents,
    mutation::{self, Tables},
    schema::{SchemaError, TableSchema},
    segment::{SegmentReader, readable},
};

/// Events produced per acknowledged batch (and offset save).
const BATCH: usize = 1000;

/// What happens to a segment once every mutation in it is on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Processed {
    /// Delete it (and its index file), so `cdc_raw` does not fill up — Cassandra stops
    /// accepting writes to CDC tables when it is full.
    #[default]
    Delete,
    /// Move it to `processed_dir`.
    Move,
    /// Leave it (for tests and audits; something else must clean up).
    Keep,
}

/// A `[[sources]]` entry with `kind = "cassandra"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraSourceConfig {
    /// Source name; its offset is kept under this name.
    pub name: String,
    /// The node's `cdc_raw` directory.
    pub directory: PathBuf,
    /// CQL file with the captured tables' `CREATE TABLE … WITH ID = <uuid>` statements.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// The same statements inline, instead of `schema`.
    #[serde(default)]
    pub cql: Option<String>,
    /// Topic prefix: topics are `<prefix>.<keyspace>.<table>`.
    pub topic_prefix: String,
    /// Cluster name written in every event's `source.cluster`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Partitions of topics the source creates.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// What to do with processed segments.
    #[serde(default)]
    pub processed: Processed,
    /// Where `processed = "move"` puts them.
    #[serde(default)]
    pub processed_dir: Option<PathBuf>,
    /// How often to look for new data.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where the offset file is kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_cluster() -> String {
    "cassandra".to_string()
}
fn default_partitions() -> u32 {
    1
}
fn default_poll() -> Duration {
    Duration::from_secs(1)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./weir-data/ingest")
}

/// Why the source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The captured tables could not be read.
    #[error("source {source_name}: {path}: {reason}")]
    Schema {
        /// Source name.
        source_name: String,
        /// The CQL file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A segment is damaged or does not fit the schema.
    #[error("source {source_name}: {error}")]
    CommitLog {
        /// Source name.
        source_name: String,
        /// The error, with file and position.
        error: Box<CommitLogError>,
    },
    /// A file operation failed.
    #[error("source {source_name}: {action} {path}: {error}")]
    Io {
        /// Source name.
        source_name: String,
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// The bus refused the events.
    #[error("source {1}: {0}")]
    Bus(#[source] Box<BusError>, String),
    /// An event could not be serialized.
    #[error("source {1}: {0}")]
    Serialize(#[source] Box<SerializeError>, String),
}

/// Where reading resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offset {
    /// Segment id.
    pub segment: i64,
    /// Byte position of the next unread entry in that segment.
    pub position: u64,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Segments read.
    pub segments: usize,
    /// Segments finished (and handled by the processed policy).
    pub completed: usize,
    /// Change events produced.
    pub events: usize,
}

/// A running Cassandra CDC source.
pub struct CassandraSource {
    config: CassandraSourceConfig,
    tables: Tables,
    events: HashMap<[u8; 16], TableEvents>,
    producer: Box<dyn Producer>,
    serializer: Arc<AvroSerializer>,
}

impl CassandraSource {
    /// Reads the captured tables and creates their topics if missing.
    pub async fn new(
        config: CassandraSourceConfig,
        bus: &dyn Bus,
        serializer: Arc<AvroSerializer>,
    ) -> Result<Self, SourceError> {
        let schema_error = |reason: String| SourceError::Schema {
            source_name: config.name.clone(),
            path: config.schema.clone().unwrap_or_else(|| PathBuf::from("cql")),
            reason,
        };
        let cql = match (&config.schema, &config.cql) {
            (Some(path), None) => std::fs::read_to_string(path).map_err(|e| schema_error(e.to_string()))?,
            (None, Some(cql)) => cql.clone(),
            _ => {
                return Err(schema_error(
                    "give the captured tables as exactly one of schema (a .cql file) or cql".into(),
                ));
            }
        };
        let parsed = TableSchema::parse_all(&cql).map_err(|e: SchemaError| schema_error(e.to_string()))?;
        if parsed.is_empty() {
            return Err(schema_error("no CREATE TABLE statement".into()));
        }
        let tables = Tables::new(parsed.clone());
        let mut events = HashMap::new();
        for table in parsed {
            let id = table.id;
            let table = tables.get(&id).expect("just added").clone();
            let e = TableEvents::new(&config.topic_prefix, &config.cluster, table)
                .map_err(|e| schema_error(e.to_string()))?;
            match bus.create_topic(&e.topic, config.partitions).await {
                Ok(()) | Err(BusError::TopicExists(_)) => {}
                Err(err) => return Err(SourceError::Bus(Box::new(err), config.name.clone())),
            }
            events.insert(id, e);
        }
        let producer = bus.producer().await.map_err(|e| SourceError::Bus(Box::new(e), config.name.clone()))?;
        Ok(CassandraSource { config, tables, events, producer, serializer })
    }

    fn io(&self, action: &'static str, path: &Path, error: std::io::Error) -> SourceError {
        SourceError::Io { source_name: self.config.name.clone(), action, path: path.to_path_buf(), error }
    }

    fn offset_path(&self) -> PathBuf {
        self.config.state_dir.join(format!("{}.cassandra-offset", self.config.name))
    }

    /// The saved offset (the start when there is none).
    pub fn offset(&self) -> Result<Offset, SourceError> {
        let path = self.offset_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut parts = text.split_whitespace();
                let parsed =
                    (|| Some(Offset { segment: parts.next()?.parse().ok()?, position: parts.next()?.parse().ok()? }))();
                parsed.ok_or_else(|| {
                    self.io("parsing", &path, std::io::Error::other(format!("not 'segment position': {text:?}")))
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Offset::default()),
            Err(e) => Err(self.io("reading", &path, e)),
        }
    }

    fn save_offset(&self, offset: Offset) -> Result<(), SourceError> {
        let dir = &self.config.state_dir;
        std::fs::create_dir_all(dir).map_err(|e| self.io("creating", dir, e))?;
        let path = self.offset_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{} {}\n", offset.segment, offset.position))
            .map_err(|e| self.io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| self.io("replacing", &path, e))
    }

    /// The segments in the directory, by id: `(id, path)`.
    fn segments(&self) -> Result<Vec<(i64, PathBuf)>, SourceError> {
        let dir = &self.config.directory;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| self.io("listing", dir, e))? {
            let path = entry.map_err(|e| self.io("listing", dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            // CommitLog-<version>-<id>.log
            let id = name
                .strip_prefix("CommitLog-")
                .and_then(|rest| rest.strip_suffix(".log"))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(_, id)| id.parse::<i64>().ok());
            if let Some(id) = id {
                out.push((id, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads everything new once; returns what it did.
    pub async fn poll_once(&mut self) -> Result<PollStats, SourceError> {
        let mut stats = PollStats::default();
        let mut offset = self.offset()?;
        for (id, path) in self.segments()? {
            if id < offset.segment {
                continue;
            }
            let start = if id == offset.segment { offset.position } else { 0 };
            let index = path.with_file_name(format!("{}_cdc.idx", path.file_stem().unwrap().to_string_lossy()));
            let (limit, complete) = match std::fs::read_to_string(&index) {
                Ok(text) => {
                    let mut lines = text.lines();
                    let durable: usize = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
                    (Some(durable), lines.any(|l| l.trim() == "COMPLETED"))
                }
                Err(_) => (None, true),
            };
            let data = std::fs::read(&path).map_err(|e| self.io("reading", &path, e))?;
            stats.segments += 1;
            let (events, end) = self.read_segment(&path, &data, limit, start, id).await?;
            stats.events += events;
            offset = Offset { segment: id, position: end };
            if !complete {
                // Cassandra is still writing it: come back for more on the next poll.
                self.save_offset(offset)?;
                break;
            }
            offset = Offset { segment: id + 1, position: 0 };
            self.save_offset(offset)?;
            self.finish(&path, &index)?;
            stats.completed += 1;
        }
        Ok(stats)
    }

    /// Produces the events of `data` from entry position `start`; returns how many and where
    /// reading stopped.
    async fn read_segment(
        &mut self,
        path: &Path,
        data: &[u8],
        limit: Option<usize>,
        start: u64,
        id: i64,
    ) -> Result<(usize, u64), SourceError> {
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let name = self.config.name.clone();
        let commit_log =
            |error: CommitLogError| SourceError::CommitLog { source_name: name.clone(), error: Box::new(error) };
        let name_str = path.display().to_string();
        let (data, limit) = readable(&name_str, data, limit).map_err(|e| commit_log(e.into()))?;
        let mut reader = SegmentReader::new(&name_str, &data).map_err(|e| commit_log(e.into()))?;
        if let Some(limit) = limit {
            reader = reader.with_limit(limit);
        }
        let mut pending: Vec<(String, Record)> = Vec::new();
        let mut produced = 0;
        let mut next_position = start;
        while let Some(entry) = reader.next() {
            let entry = entry.map_err(|e| commit_log(e.into()))?;
            if entry.position < start {
                continue;
            }
            let decoded = mutation::decode(entry.mutation, &self.tables).map_err(|source| {
                commit_log(CommitLogError::Mutation {
                    file: path.display().to_string(),
                    position: entry.position,
                    source,
                })
            })?;
            metrics::counter!("weir_ingest_cassandra_mutations_total").increment(1);
            for update in &decoded.updates {
                let events = &self.events[&update.table.id];
                for event in events.events(update, &file, entry.position) {
                    let key = self.serializer.serialize(&events.topic, true, &events.key, &event.key).await;
                    let value = self.serializer.serialize(&events.topic, false, &events.value, &event.value).await;
                    let (key, value) = match (key, value) {
                        (Ok(k), Ok(v)) => (k, v),
                        (Err(e), _) | (_, Err(e)) => return Err(SourceError::Serialize(Box::new(e), name.clone())),
                    };
                    pending.push((events.topic.clone(), Record::keyed(key, value)));
                }
            }
            next_position = reader.position();
            if pending.len() >= BATCH {
                produced += self.flush(&mut pending).await?;
                self.save_offset(Offset { segment: id, position: next_position })?;
            }
        }
        produced += self.flush(&mut pending).await?;
        Ok((produced, next_position.max(reader.position())))
    }

    /// Sends the pending events, in order per topic; returns how many.
    async fn flush(&self, pending: &mut Vec<(String, Record)>) -> Result<usize, SourceError> {
        let n = crate::produce::send_grouped(self.producer.as_ref(), pending)
            .await
            .map_err(|e| SourceError::Bus(Box::new(e), self.config.name.clone()))?;
        metrics::counter!("weir_ingest_cassandra_events_total").increment(n as u64);
        Ok(n)
    }

    /// Applies the processed policy to a finished segment and its index file.
    fn finish(&self, segment: &Path, index: &Path) -> Result<(), SourceError> {
        for path in [segment, index] {
            if !path.exists() {
                continue;
            }
            match self.config.processed {
                Processed::Keep => {}
                Processed::Delete => std::fs::remove_file(path).map_err(|e| self.io("deleting", path, e))?,
                Processed::Move => {
                    let dir = self.config.processed_dir.as_ref().ok_or_else(|| {
                        self.io("moving", path, std::io::Error::other("processed = \"move\" needs processed_dir"))
                    })?;
                    std::fs::create_dir_all(dir).map_err(|e| self.io("creating", dir, e))?;
                    let to = dir.join(path.file_name().unwrap());
                    std::fs::rename(path, &to).map_err(|e| self.io("moving", path, e))?;
                }
            }
        }
        tracing::info!(source = %self.config.name, segment = %segment.display(), policy = ?self.config.processed, "segment processed");
        Ok(())
    }

    /// Polls until `shutdown` resolves, sleeping `poll_interval` when there was nothing new.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), SourceError> {
        tokio::pin!(shutdown);
        loop {
            let stats = self.poll_once().await?;
            if stats.events > 0 {
                tracing::info!(source = %self.config.name, events = stats.events, segments = stats.segments, "produced change events");
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }
}
