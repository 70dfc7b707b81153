//! Runs one pipeline: reads every partition of its source topic, decodes and evaluates whole
//! batches, feeds the window state, tracks the watermark per partition, emits results to the
//! pipeline's topic (and to its alert rules), dead-letters bad and late events, and checkpoints
//! state + offsets to the lake's object storage. Events are enriched from the pipeline's joined
//! tables ([`crate::join`]) before its filter, keys and aggregates see them.
//!
//! Exactly-once state: a checkpoint is one object (`checkpoints/stream/<pipeline>.json`, replaced
//! atomically) holding the window state and the next offset of every partition together. After a
//! crash the pipeline restores it and re-reads from those offsets, so no event is counted twice
//! or lost. Results emitted between that checkpoint and the crash are emitted again with the same
//! identity (key, window) and the same values: the results topic is an upsert stream.
//!
//! An engine reads either the whole source topic through its own consumer ([`Engine::open`]) or
//! one partition of the pipeline's by-key topic that a scale-out member polls for it
//! ([`Engine::open_shard`], [`crate::scale`]). A shard keeps its watermark per *source*
//! partition (from the records' `weir.source.*` headers), skips a record whose source offset it
//! has already taken (a repartitioner that crashed before committing sends it again), and
//! checkpoints to `checkpoints/stream/<pipeline>/<partition>.json`.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use deltalake::arrow::{
    array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, TimeUnit},
    json::{WriterBuilder, writer::JsonArray},
    row::RowConverter,
};
use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, Producer, Record, TopicPartition};
use weir_lake::{Lake, catalog::LakeError};
use weir_schemas::registry::{RegistryError, SchemaRegistry};

use crate::{
    alert::RuleSet,
    decode::Decoder,
    eval::{Compiled, ExprError, Prepared},
    interval::{Interval, IntervalSnapshot},
    join::{Table, TableSnapshot},
    pipeline::{AggFn, Pipeline},
    sketch::stable_hash,
    window::{Emitted, Snapshot, Value, Windows},
};

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The bus failed.
    #[error("pipeline {pipeline}: bus: {source}")]
    Bus {
        /// The pipeline.
        pipeline: String,
        /// The bus error.
        #[source]
        source: BusError,
    },
    /// The schema registry could not be reached.
    #[error("pipeline {pipeline}: schema registry: {source}")]
    Registry {
        /// The pipeline.
        pipeline: String,
        /// The registry error.
        #[source]
        source: RegistryError,
    },
    /// An expression does not compile or evaluate.
    #[error(transparent)]
    Expr(#[from] ExprError),
    /// A joined table cannot be read or does not fit the events.
    #[error("pipeline {pipeline}: {source}")]
    Join {
        /// The pipeline.
        pipeline: String,
        /// What failed.
        #[source]
        source: crate::join::JoinError,
    },
    /// The interval join's other stream cannot be read or does not fit the events.
    #[error("pipeline {pipeline}: {source}")]
    Interval {
        /// The pipeline.
        pipeline: String,
        /// What failed.
        #[source]
        source: Box<crate::interval::IntervalError>,
    },
    /// The pipeline asks for what this way of running it does not do.
    #[error("pipeline {pipeline}: {reason}")]
    Unsupported {
        /// The pipeline.
        pipeline: String,
        /// What, and what to do instead.
        reason: String,
    },
    /// A checkpoint could not be read or written.
    #[error("pipeline {pipeline}: checkpoint: {reason}")]
    Checkpoint {
        /// The pipeline.
        pipeline: String,
        /// What failed.
        reason: String,
    },
}

/// How a pipeline runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Checkpoint state and offsets this often.
    pub checkpoint_interval: Duration,
    /// Longest wait for new events before the watermark and timers are looked at.
    pub poll_interval: Duration,
    /// How often a joined lake table is looked at for a newer version.
    pub table_refresh: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            checkpoint_interval: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            table_refresh: Duration::from_secs(1),
        }
    }
}

/// Counters of one pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events read (after decoding).
    pub events: u64,
    /// Events that passed the filter and went into windows.
    pub aggregated: u64,
    /// Events too late for every window they belong to.
    pub late: u64,
    /// Messages dead-lettered for any reason (late included).
    pub dead_letters: u64,
    /// Result rows emitted.
    pub results: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Events a join dropped: an inner join's table had no row for their key.
    #[serde(default)]
    pub unjoined: u64,
}

/// One source partition's progress and clock.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PartitionState {
    /// The next offset to read (a shard: the next source offset to take; smaller ones are
    /// duplicates).
    next: i64,
    /// The largest event time seen.
    max_time: Option<i64>,
    #[serde(skip, default = "Instant::now")]
    last_seen: Instant,
}

/// What a checkpoint holds.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    pipeline: String,
    /// The source topic (empty in checkpoints written before it was recorded).
    #[serde(default)]
    topic: String,
    /// A hash of the pipeline's definition: state of another definition is not restored.
    fingerprint: String,
    taken_at_ms: i64,
    partitions: BTreeMap<u32, PartitionState>,
    watermark: i64,
    windows: Snapshot,
    alerts: serde_json::Value,
    stats: Stats,
    /// The key columns of the windows' keys: (name, Arrow type, nullable). A restored engine
    /// writes the restored windows' keys with them before it decodes any new event (absent in
    /// checkpoints written before it was recorded).
    #[serde(default)]
    key_columns: Option<Vec<(String, String, bool)>>,
    /// The joined tables' rows and changelog offsets, in the order of the pipeline's joins.
    #[serde(default)]
    tables: Vec<TableSnapshot>,
    /// A shard's partition of the by-key topic and the next offset to read there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<(u32, i64)>,
    /// The interval join's held events, kept rows and offsets of the other topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<IntervalSnapshot>,
}

/// What an engine reads.
enum Input {
    /// Every partition of the source topic, through the engine's own consumer.
    Whole(Box<dyn Consumer>),
    /// One partition of the by-key topic, polled by a scale-out member that hands the records
    /// to [`Engine::step`].
    Shard {
        /// The partition.
        partition: u32,
        /// The next offset to take.
        next: i64,
        /// `next` at the last checkpoint: what the member commits for the partition.
        checkpointed: i64,
        /// The source partitions that may count as idle: their events have all been
        /// repartitioned and this shard has read its partition to its end ([`Engine::set_quiet`]).
        quiet: std::collections::BTreeSet<u32>,
    },
}

/// The header a repartitioned record carries its source partition in.
pub const SOURCE_PARTITION: &str = "weir.source.partition";
/// The header a repartitioned record carries its source offset in.
pub const SOURCE_OFFSET: &str = "weir.source.offset";
/// The header a repartitioned record carries its source key in (its own key is the pipeline's).
pub const SOURCE_KEY: &str = "weir.source.key";

/// The source partition and offset a repartitioned record carries in its headers.
pub fn source_position(m: &Message) -> Option<(u32, i64)> {
    let number = |name| m.header(name).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
    Some((u32::try_from(number(SOURCE_PARTITION)?).ok()?, number(SOURCE_OFFSET)?))
}

/// Wall-clock time in ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One running pipeline.
pub struct Engine {
    p: Pipeline,
    config: EngineConfig,
    bus: Arc<dyn Bus>,
    lake: Lake,
    input: Input,
    producer: Arc<dyn Producer>,
    decoder: Decoder,
    compiled: Option<Compiled>,
    /// The key columns and their row converter, which encodes the windows' keys and decodes them
    /// into results: the compiled pipeline's, or, until an event is decoded after a restore, the
    /// checkpoint's.
    keys: Option<(Vec<Field>, RowConverter)>,
    windows: Windows,
    tables: Vec<Table>,
    interval: Option<Box<Interval>>,
    /// Per source partition.
    partitions: BTreeMap<u32, PartitionState>,
    watermark: i64,
    stats: Stats,
    rules: RuleSet,
    dlq_ready: bool,
    last_checkpoint: Instant,
    last_early: Instant,
    fingerprint: String,
}

/// Where a pipeline's last checkpoint left its source topic (what consumer-lag views read).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The pipeline.
    pub pipeline: String,
    /// Its source topic (empty for a checkpoint written before topics were recorded).
    #[serde(default)]
    pub topic: String,
    /// When the checkpoint was taken (ms since the epoch).
    pub taken_at_ms: i64,
    /// Partition → the next offset to read.
    #[serde(rename = "partitions", deserialize_with = "next_offsets")]
    pub next: BTreeMap<u32, i64>,
    /// The watermark (event time, ms) at the checkpoint.
    #[serde(default)]
    pub watermark: i64,
    /// The pipeline's counters at the checkpoint.
    #[serde(default)]
    pub stats: Stats,
}

fn next_offsets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, i64>, D::Error> {
    #[derive(Deserialize)]
    struct Next {
        next: i64,
    }
    Ok(BTreeMap::<u32, Next>::deserialize(d)?.into_iter().map(|(p, n)| (p, n.next)).collect())
}

/// The positions of every pipeline with a checkpoint in `lake` (a checkpoint that cannot be
/// read is logged and left out). A scale-out pipeline's position is on its by-key topic, merged
/// from its shards' checkpoints: each partition's next offset, the oldest checkpoint time and
/// watermark, the counters summed.
pub async fn positions(lake: &Lake) -> Result<Vec<Position>, LakeError> {
    /// A checkpoint's position and, for a shard's, its partition and next offset there.
    type Read = Option<(Position, Option<(u32, i64)>)>;
    let read = async |path: &str| -> Result<Read, LakeError> {
        let Some(bytes) = lake.read_object(path).await? else { return Ok(None) };
        let parsed = serde_json::from_slice::<Position>(&bytes)
            .and_then(|p| Ok((p, serde_json::from_slice::<ShardOf>(&bytes)?.shard)));
        match parsed {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(checkpoint = %path, error = %e, "unreadable checkpoint");
                Ok(None)
            }
        }
    };
    let mut out = Vec::new();
    for path in lake.list_objects("checkpoints/stream").await? {
        if let Some((p, _)) = read(&path).await? {
            out.push(p);
        }
    }
    for folder in lake.list_folders("checkpoints/stream").await? {
        let mut merged: Option<Position> = None;
        for path in lake.list_objects(&folder).await? {
            let Some((p, Some((partition, next)))) = read(&path).await? else { continue };
            let m = merged.get_or_insert_with(|| Position {
                topic: crate::scale::by_key_topic(&p.pipeline),
                next: BTreeMap::new(),
                stats: Stats::default(),
                ..p.clone()
            });
            m.next.insert(partition, next);
            m.taken_at_ms = m.taken_at_ms.min(p.taken_at_ms);
            m.watermark = m.watermark.min(p.watermark);
            m.stats = crate::scale::sum(m.stats, p.stats);
        }
        out.extend(merged);
    }
    Ok(out)
}

/// The shard a checkpoint belongs to.
#[derive(Deserialize)]
struct ShardOf {
    #[serde(default)]
    shard: Option<(u32, i64)>,
}

/// The object a pipeline's checkpoint lives at, below the lake's root.
pub fn checkpoint_path(pipeline: &str) -> String {
    format!("checkpoints/stream/{pipeline}.json")
}

/// The object the checkpoint of a scale-out pipeline's shard `partition` lives at.
pub fn shard_checkpoint_path(pipeline: &str, partition: u32) -> String {
    format!("checkpoints/stream/{pipeline}/{partition}.json")
}

impl Engine {
    /// Opens pipeline `p`: restores its checkpoint (if any) and positions the reader after it.
    /// `rules` are the alert rules over this pipeline's results.
    pub async fn open(
        p: Pipeline,
        config: EngineConfig,
        bus: Arc<dyn Bus>,
        registry: Option<Arc<dyn SchemaRegistry>>,
        lake: Lake,
        rules: RuleSet,
    ) -> Result<Engine, EngineError> {
        let bus_err = |source| EngineError::Bus { pipeline: p.id.clone(), source };
        let consumer = bus.consumer(ConsumerConfig::new(format!("weir-stream-{}", p.id))).await.map_err(bus_err)?;
        let producer: Arc<dyn Producer> = bus.producer().await.map_err(bus_err)?.into();
        let mut engine = Engine::build(p, config, bus, registry, lake, rules, Input::Whole(consumer), producer).await?;
        let tps: Vec<TopicPartition> =
            engine.partitions.keys().map(|&n| TopicPartition::new(engine.p.source.topic.clone(), n)).collect();
        let Input::Whole(consumer) = &mut engine.input else { unreachable!("built whole") };
        let seeks: Vec<(TopicPartition, i64)> =
            tps.iter().map(|tp| (tp.clone(), engine.partitions[&tp.partition].next)).collect();
        let assigned = async {
            consumer.assign(&tps).await?;
            for (tp, next) in &seeks {
                consumer.seek(tp, *next).await?;
            }
            Ok(())
        };
        assigned.await.map_err(|e| engine.bus_err(e))?;
        Ok(engine)
    }

    /// Opens partition `partition` of scale-out pipeline `p`'s by-key topic as a shard: restores
    /// its checkpoint (if any); the member that polls the partition hands its records to
    /// [`Engine::step`] from [`Engine::shard_next`] on.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_shard(
        p: Pipeline,
        config: EngineConfig,
        bus: Arc<dyn Bus>,
        registry: Option<Arc<dyn SchemaRegistry>>,
        lake: Lake,
        rules: RuleSet,
        producer: Arc<dyn Producer>,
        partition: u32,
    ) -> Result<Engine, EngineError> {
        let input = Input::Shard { partition, next: 0, checkpointed: 0, quiet: Default::default() };
        Engine::build(p, config, bus, registry, lake, rules, input, producer).await
    }

    /// A shard's next offset to take from its by-key partition, and that offset at its last
    /// checkpoint (`None` for an engine reading the whole source).
    pub fn shard_next(&self) -> Option<(i64, i64)> {
        match self.input {
            Input::Shard { next, checkpointed, .. } => Some((next, checkpointed)),
            Input::Whole(_) => None,
        }
    }

    /// Whether a source partition has been silent for the idle timeout: a shard then needs to
    /// be told whether it is quiet ([`Engine::set_quiet`]) before it counts as idle.
    pub fn may_be_idle(&self) -> bool {
        let idle = self.p.watermark.idle_timeout;
        self.partitions.values().any(|p| p.last_seen.elapsed() >= idle)
    }

    /// Tells a shard which source partitions are quiet: every event of theirs has been
    /// repartitioned and the shard has read its by-key partition to its end. Only those count
    /// as idle when silent: one whose repartitioner died (its events waiting for the group to
    /// move it) holds the watermark back instead of being passed by it.
    pub fn set_quiet(&mut self, partitions: std::collections::BTreeSet<u32>) {
        if let Input::Shard { quiet, .. } = &mut self.input {
            *quiet = partitions;
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn build(
        p: Pipeline,
        config: EngineConfig,
        bus: Arc<dyn Bus>,
        registry: Option<Arc<dyn SchemaRegistry>>,
        lake: Lake,
        rules: RuleSet,
        input: Input,
        producer: Arc<dyn Producer>,
    ) -> Result<Engine, EngineError> {
        let bus_err = |source| EngineError::Bus { pipeline: p.id.clone(), source };
        let info = bus.topic(&p.source.topic).await.map_err(bus_err)?;
        let mut outputs = vec![p.output_topic.as_str()];
        if !rules.is_empty() {
            outputs.push(crate::alert::ALERTS_TOPIC);
        }
        for topic in outputs {
            match bus.create_topic(topic, 1).await {
                Ok(()) | Err(BusError::TopicExists(_)) => {}
                Err(e) => return Err(bus_err(e)),
            }
        }
        let fingerprint = format!(
            "{:016x}",
            stable_hash(
                format!(
                    "{:?}{:?}{:?}{:?}{:?}{:?}{}",
                    p.source,
                    p.filter,
                    p.key,
                    p.event_time,
                    p.window,
                    p.aggregates,
                    // Pipelines without joins keep the fingerprint they had before joins existed.
                    if p.joins.is_empty() { String::new() } else { format!("{:?}", p.joins) }
                        + &p.interval.as_ref().map_or(String::new(), |i| format!("{i:?}"))
                )
                .as_bytes()
            )
        );
        let funcs: Vec<(AggFn, f64)> = p.aggregates.iter().map(|a| (a.func, a.q)).collect();
        let mut tables = Vec::new();
        for j in &p.joins {
            let table = Table::open(&p.id, j, &*bus, registry.clone(), &lake, config.table_refresh)
                .await
                .map_err(|source| EngineError::Join { pipeline: p.id.clone(), source })?;
            tables.push(table);
        }
        let interval = match (&p.interval, &input) {
            (None, _) => None,
            (Some(_), Input::Shard { .. }) => {
                return Err(EngineError::Unsupported { pipeline: p.id.clone(), reason: SCALE_OUT_INTERVAL.into() });
            }
            (Some(spec), Input::Whole(_)) => Some(Box::new(
                Interval::open(&p.id, spec.clone(), &*bus, registry.clone())
                    .await
                    .map_err(|source| EngineError::Interval { pipeline: p.id.clone(), source: Box::new(source) })?,
            )),
        };
        let mut engine = Engine {
            interval,
            tables,
            windows: Windows::new(p.window, p.watermark.allowed_lateness, funcs),
            decoder: Decoder::new(&p.source, registry),
            input,
            producer,
            partitions: (0..info.partitions)
                .map(|n| (n, PartitionState { next: 0, max_time: None, last_seen: Instant::now() }))
                .collect(),
            watermark: i64::MIN,
            stats: Stats::default(),
            rules,
            dlq_ready: false,
            last_checkpoint: Instant::now(),
            last_early: Instant::now(),
            compiled: None,
            keys: None,
            fingerprint,
            p,
            config,
            bus,
            lake,
        };
        engine.restore().await?;
        for t in &mut engine.tables {
            t.seek().await.map_err(|source| EngineError::Join { pipeline: engine.p.id.clone(), source })?;
        }
        if let Some(i) = &mut engine.interval {
            i.seek()
                .await
                .map_err(|source| EngineError::Interval { pipeline: engine.p.id.clone(), source: Box::new(source) })?;
        }
        Ok(engine)
    }

    /// Where this engine's checkpoint lives.
    fn checkpoint_object(&self) -> String {
        match self.input {
            Input::Whole(_) => checkpoint_path(&self.p.id),
            Input::Shard { partition, .. } => shard_checkpoint_path(&self.p.id, partition),
        }
    }

    /// The consumer of an engine reading the whole source.
    fn consumer(&mut self) -> &mut Box<dyn Consumer> {
        match &mut self.input {
            Input::Whole(c) => c,
            Input::Shard { .. } => panic!("a shard is polled by its scale-out member, not by itself"),
        }
    }

    fn bus_err(&self, source: BusError) -> EngineError {
        EngineError::Bus { pipeline: self.p.id.clone(), source }
    }

    fn checkpoint_err(&self, reason: impl std::fmt::Display) -> EngineError {
        EngineError::Checkpoint { pipeline: self.p.id.clone(), reason: reason.to_string() }
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.p
    }

    /// Counters so far (restored ones included).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Rows of each joined table now, and the changes read from its changelog since the
    /// pipeline was opened (a restored table reads only what came after its checkpoint).
    pub fn tables(&self) -> Vec<(usize, u64)> {
        self.tables.iter().map(|t| (t.len(), t.changes_read())).collect()
    }

    /// An interval join's held events and the other stream's rows it keeps now.
    pub fn interval(&self) -> Option<(usize, usize)> {
        self.interval.as_ref().map(|i| (i.held(), i.kept()))
    }

    /// The current watermark (ms since the epoch; `i64::MIN` before any event).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    async fn restore(&mut self) -> Result<(), EngineError> {
        let path = self.checkpoint_object();
        let Some(bytes) = self.lake.read_object(&path).await.map_err(|e: LakeError| self.checkpoint_err(e))? else {
            tracing::info!(pipeline = %self.p.id, "no checkpoint: reading the source from its start");
            return Ok(());
        };
        let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| self.checkpoint_err(format!("{path}: {e}")))?;
        for (n, state) in &c.partitions {
            if let Some(p) = self.partitions.get_mut(n) {
                p.next = state.next;
                p.max_time = state.max_time;
            }
        }
        if let (Input::Shard { partition, next, checkpointed, .. }, Some((at, at_next))) = (&mut self.input, c.shard)
            && *partition == at
        {
            (*next, *checkpointed) = (at_next, at_next);
        }
        if c.fingerprint == self.fingerprint {
            self.windows.restore(c.windows).map_err(|e| self.checkpoint_err(e))?;
            self.rules.restore(c.alerts);
            self.rules.announce_restored();
            if let Some(columns) = c.key_columns {
                let fields: Result<Vec<Field>, String> = columns
                    .into_iter()
                    .map(|(name, data_type, nullable)| match data_type.parse::<DataType>() {
                        Ok(t) => Ok(Field::new(name, t, nullable)),
                        Err(e) => Err(format!("key column {name}: {e}")),
                    })
                    .collect();
                match fields {
                    Ok(fields) => self.keys = Some(key_columns(fields)),
                    // As with a checkpoint from before key columns were recorded: keys are known
                    // again from the first event decoded.
                    Err(e) => tracing::warn!(pipeline = %self.p.id, error = %e, "cannot restore the key columns"),
                }
            }
            if c.tables.len() == self.tables.len() {
                for (t, snapshot) in self.tables.iter_mut().zip(c.tables) {
                    t.restore(snapshot).map_err(|source| EngineError::Join { pipeline: self.p.id.clone(), source })?;
                }
            }
            if let (Some(i), Some(snapshot)) = (&mut self.interval, c.interval) {
                i.restore(snapshot).map_err(|source| EngineError::Interval {
                    pipeline: self.p.id.clone(),
                    source: Box::new(source),
                })?;
            }
            self.watermark = c.watermark;
            self.stats = c.stats;
        } else {
            tracing::warn!(
                pipeline = %self.p.id,
                "the pipeline's definition changed since its checkpoint: its window state is discarded; \
                 reading resumes at the checkpoint's offsets"
            );
        }
        tracing::info!(pipeline = %self.p.id, watermark = self.watermark, "restored the checkpoint of {}", c.taken_at_ms);
        Ok(())
    }

    /// Writes a checkpoint now.
    pub async fn checkpoint(&mut self) -> Result<(), EngineError> {
        let started = Instant::now();
        self.stats.checkpoints += 1;
        let mut tables = Vec::new();
        for t in &mut self.tables {
            tables.push(t.snapshot().map_err(|source| EngineError::Join { pipeline: self.p.id.clone(), source })?);
        }
        let interval =
            match &self.interval {
                Some(i) => Some(i.snapshot().map_err(|source| EngineError::Interval {
                    pipeline: self.p.id.clone(),
                    source: Box::new(source),
                })?),
                None => None,
            };
        let c = Checkpoint {
            interval,
            tables,
            pipeline: self.p.id.clone(),
            topic: self.p.source.topic.clone(),
            fingerprint: self.fingerprint.clone(),
            taken_at_ms: now_ms(),
            partitions: self.partitions.clone(),
            watermark: self.watermark,
            windows: self.windows.snapshot(),
            alerts: self.rules.snapshot(),
            stats: self.stats,
            key_columns: self.keys.as_ref().map(|(fields, _)| {
                fields.iter().map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable())).collect()
            }),
            shard: match self.input {
                Input::Shard { partition, next, .. } => Some((partition, next)),
                Input::Whole(_) => None,
            },
        };
        let bytes = serde_json::to_vec(&c).map_err(|e| self.checkpoint_err(e))?;
        let size = bytes.len();
        self.lake.put_object(&self.checkpoint_object(), bytes).await.map_err(|e| self.checkpoint_err(e))?;
        self.last_checkpoint = Instant::now();
        let topic = self.p.source.topic.clone();
        let consumer = match &mut self.input {
            Input::Whole(consumer) => consumer,
            Input::Shard { next, checkpointed, .. } => {
                // Its member commits it for the by-key partition.
                *checkpointed = *next;
                return Ok(());
            }
        };
        // The checkpoint's offsets go to the pipeline's group after the checkpoint itself: never
        // ahead of it. They show its lag and keep the embedded log's retention from deleting
        // what a restart would read again.
        let offsets: Vec<(TopicPartition, i64)> =
            self.partitions.iter().map(|(&n, p)| (TopicPartition::new(topic.clone(), n), p.next)).collect();
        if let Err(e) = consumer.commit(&offsets).await {
            tracing::warn!(pipeline = %self.p.id, error = %e, "could not commit the checkpoint's offsets to the bus (the checkpoint keeps them)");
        }
        let id = self.p.id.clone();
        metrics::counter!("weir_stream_checkpoints_total", "pipeline" => id.clone()).increment(1);
        metrics::histogram!("weir_stream_checkpoint_seconds", "pipeline" => id).record(started.elapsed().as_secs_f64());
        tracing::debug!(pipeline = %self.p.id, bytes = size, "checkpoint written");
        Ok(())
    }

    /// Runs until `shutdown` resolves, then writes a last checkpoint.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<Stats, EngineError> {
        tokio::pin!(shutdown);
        loop {
            let polled = tokio::select! {
                _ = &mut shutdown => break,
                polled = poll(&mut self) => polled?,
            };
            self.step(polled).await?;
        }
        self.checkpoint().await?;
        Ok(self.stats)
    }

    /// Processes what is on the source now, closes every window the (idle-advanced) watermark
    /// passes and checkpoints; for tests and benchmarks. Returns once a poll finds nothing.
    pub async fn drain(&mut self) -> Result<Stats, EngineError> {
        loop {
            let polled = poll(self).await?;
            let empty = polled.is_empty();
            self.step(polled).await?;
            if empty {
                break;
            }
        }
        self.checkpoint().await?;
        Ok(self.stats)
    }

    /// Polls once and processes what came (no checkpoint unless one is due); returns how many
    /// messages it read.
    pub async fn poll_once(&mut self) -> Result<usize, EngineError> {
        let polled = poll(self).await?;
        let n = polled.len();
        self.step(polled).await?;
        Ok(n)
    }

    /// One poll's worth of work: take the messages, then the watermark, timers and checkpoint.
    pub async fn step(&mut self, polled: Vec<Message>) -> Result<(), EngineError> {
        self.take_other().await?;
        if !polled.is_empty() {
            self.take(&polled).await?;
        }
        self.advance().await?;
        if let Some(every) = self.p.early_results
            && self.last_early.elapsed() >= every
        {
            self.last_early = Instant::now();
            let early = self.windows.early();
            self.emit(early).await?;
        }
        if self.last_checkpoint.elapsed() >= self.config.checkpoint_interval {
            self.checkpoint().await?;
        }
        Ok(())
    }

    async fn take(&mut self, messages: &[Message]) -> Result<(), EngineError> {
        let now = Instant::now();
        let fresh: Vec<Message>;
        let messages = match &mut self.input {
            Input::Whole(_) => {
                for m in messages {
                    if let Some(p) = self.partitions.get_mut(&m.partition) {
                        p.next = p.next.max(m.offset + 1);
                        p.last_seen = now;
                    }
                }
                messages
            }
            Input::Shard { next, quiet, .. } => {
                let keep: Vec<bool> = messages
                    .iter()
                    .map(|m| {
                        if m.offset < *next {
                            return false;
                        }
                        *next = m.offset + 1;
                        let Some((partition, offset)) = source_position(m) else { return true };
                        let Some(p) = self.partitions.get_mut(&partition) else { return true };
                        if offset < p.next {
                            return false;
                        }
                        p.next = offset + 1;
                        p.last_seen = now;
                        // It speaks again: quiet no more until the member looks again.
                        quiet.remove(&partition);
                        true
                    })
                    .collect();
                let skipped = keep.iter().filter(|k| !**k).count();
                if skipped == 0 {
                    messages
                } else {
                    metrics::counter!("weir_stream_duplicates_total", "pipeline" => self.p.id.clone())
                        .increment(skipped as u64);
                    fresh = messages.iter().zip(&keep).filter(|(_, k)| **k).map(|(m, _)| m.clone()).collect();
                    &fresh
                }
            }
        };
        if messages.is_empty() {
            return Ok(());
        }
        self.stats.events += messages.len() as u64;
        metrics::counter!("weir_stream_events_total", "pipeline" => self.p.id.clone()).increment(messages.len() as u64);
        let polled = self
            .decoder
            .decode(messages)
            .await
            .map_err(|source| EngineError::Registry { pipeline: self.p.id.clone(), source })?;
        let mut dead: Vec<(usize, String)> = polled.dead;
        let mut late = 0u64;
        let id = self.p.id.clone();
        let join_err = |source| EngineError::Join { pipeline: id.clone(), source };
        if !polled.batches.is_empty() {
            for t in &mut self.tables {
                t.catch_up(&*self.bus).await.map_err(join_err)?;
            }
        }
        for mut d in polled.batches {
            for t in &self.tables {
                let (batch, kept) = t.enrich(&d.batch).map_err(join_err)?;
                if let Some(kept) = kept {
                    let before = d.rows.len();
                    d.rows = d.rows.iter().zip(kept.values().iter()).filter(|(_, k)| *k).map(|(&r, _)| r).collect();
                    let dropped = (before - d.rows.len()) as u64;
                    self.stats.unjoined += dropped;
                    metrics::counter!("weir_stream_unjoined_events_total", "pipeline" => self.p.id.clone())
                        .increment(dropped);
                }
                d.batch = batch;
            }
            if let Some(interval) = &mut self.interval {
                // Held until the other stream has every event that can match them.
                let interval_err = |source| EngineError::Interval { pipeline: id.clone(), source: Box::new(source) };
                let times = interval.left_times(&id, &self.p.event_time, &d.batch).map_err(interval_err)?;
                let mut held = Vec::new();
                for (row, &msg) in d.rows.iter().enumerate() {
                    let Some(t) = times[row] else {
                        dead.push((msg, format!("event_time {:?} is null", self.p.event_time)));
                        continue;
                    };
                    if !self.windows.accepts(t, self.watermark) {
                        late += 1;
                        dead.push((msg, late_reason(&self.p, t, self.watermark)));
                        continue;
                    }
                    let m = &messages[msg];
                    let source = source_position(m).map_or(m.partition, |(p, _)| p);
                    if let Some(part) = self.partitions.get_mut(&source) {
                        part.max_time = Some(part.max_time.map_or(t, |m| m.max(t)));
                    }
                    held.push((row, t));
                }
                interval.hold(&d.batch, &held).map_err(interval_err)?;
                continue;
            }
            let prepared = self.prepare(&d.batch)?;
            for (row, &msg) in d.rows.iter().enumerate() {
                if prepared.keep.as_ref().is_some_and(|k| !k.is_valid(row) || !k.value(row)) {
                    continue;
                }
                let Some(t) = prepared.times[row] else {
                    dead.push((msg, format!("event_time {:?} is null", self.p.event_time)));
                    continue;
                };
                let key: &[u8] = prepared.keys.as_ref().map_or(&[], |k| k.row(row).data());
                if self.windows.add(key, t, &prepared.columns, row, self.watermark) {
                    self.stats.aggregated += 1;
                    let m = &messages[msg];
                    let source = source_position(m).map_or(m.partition, |(p, _)| p);
                    if let Some(part) = self.partitions.get_mut(&source) {
                        part.max_time = Some(part.max_time.map_or(t, |m| m.max(t)));
                    }
                } else {
                    late += 1;
                    dead.push((msg, late_reason(&self.p, t, self.watermark)));
                }
            }
        }
        if late > 0 {
            self.stats.late += late;
            metrics::counter!("weir_stream_late_events_total", "pipeline" => self.p.id.clone()).increment(late);
        }
        if !dead.is_empty() {
            self.dead_letter(messages, dead).await?;
        }
        Ok(())
    }

    /// Compiles the pipeline's expressions for `batch`'s schema (once per schema) and evaluates
    /// them on it.
    // EngineError is as large as a BusError; this runs once per batch, not per event.
    #[allow(clippy::result_large_err)]
    fn prepare(&mut self, batch: &RecordBatch) -> Result<Prepared, EngineError> {
        if self.compiled.as_ref().is_none_or(|c| c.schema() != &batch.schema()) {
            let c = Compiled::new(&self.p, batch.schema())?;
            self.keys = Some(key_columns(c.key_fields.clone()));
            self.compiled = Some(c);
        }
        let compiled = self.compiled.as_ref().expect("compiled above");
        let (_, converter) = self.keys.as_ref().expect("set with compiled");
        Ok(compiled.prepare(batch, converter)?)
    }

    /// Reads what the interval join's other stream has now; its undecodable events, and those
    /// without a key or time, go to its own dead letters.
    async fn take_other(&mut self) -> Result<(), EngineError> {
        let Some(interval) = &mut self.interval else { return Ok(()) };
        let id = self.p.id.clone();
        let interval_err = |source| EngineError::Interval { pipeline: id.clone(), source: Box::new(source) };
        let polled = interval.poll().await.map_err(interval_err)?;
        if polled.is_empty() {
            return Ok(());
        }
        let dead = interval.take_other(&id, &polled).await.map_err(interval_err)?;
        if !dead.is_empty() {
            let topic = interval.spec().stream.topic.clone();
            self.dead_letter_to(&topic, &polled, dead).await?;
        }
        Ok(())
    }

    /// Joins the held events the other stream's watermark has passed and puts the joined rows
    /// into their windows.
    // EngineError is as large as a BusError; this runs once per batch, not per event.
    #[allow(clippy::result_large_err)]
    fn release(&mut self) -> Result<(), EngineError> {
        let Some(interval) = &mut self.interval else { return Ok(()) };
        let id = self.p.id.clone();
        interval.advance(&self.p.watermark, now_ms());
        let released = interval
            .release()
            .map_err(|source| EngineError::Interval { pipeline: id.clone(), source: Box::new(source) })?;
        metrics::gauge!("weir_stream_interval_held", "pipeline" => id.clone()).set(interval.held() as f64);
        metrics::gauge!("weir_stream_interval_kept", "pipeline" => id.clone()).set(interval.kept() as f64);
        if released.unjoined > 0 {
            self.stats.unjoined += released.unjoined;
            metrics::counter!("weir_stream_unjoined_events_total", "pipeline" => id.clone())
                .increment(released.unjoined);
        }
        let mut late = 0u64;
        for batch in &released.batches {
            let prepared = self.prepare(batch)?;
            for row in 0..batch.num_rows() {
                if prepared.keep.as_ref().is_some_and(|k| !k.is_valid(row) || !k.value(row)) {
                    continue;
                }
                let Some(t) = prepared.times[row] else { continue };
                let key: &[u8] = prepared.keys.as_ref().map_or(&[], |k| k.row(row).data());
                if self.windows.add(key, t, &prepared.columns, row, self.watermark) {
                    self.stats.aggregated += 1;
                } else {
                    late += 1;
                }
            }
        }
        if late > 0 {
            // Not expected: a held event's windows stay open until it is released.
            tracing::warn!(pipeline = %id, late, "joined events came after their windows closed");
            self.stats.late += late;
            metrics::counter!("weir_stream_late_events_total", "pipeline" => id).increment(late);
        }
        Ok(())
    }

    async fn dead_letter(&mut self, messages: &[Message], dead: Vec<(usize, String)>) -> Result<(), EngineError> {
        let source = self.p.source.topic.clone();
        self.dead_letter_to(&source, messages, dead).await
    }

    /// Sends `dead` (indexes into `messages`, read from `source`, with why) to `<source>.dlq`.
    async fn dead_letter_to(
        &mut self,
        source: &str,
        messages: &[Message],
        mut dead: Vec<(usize, String)>,
    ) -> Result<(), EngineError> {
        dead.sort_by_key(|(i, _)| *i);
        let topic = format!("{source}.dlq");
        if !self.dlq_ready || source != self.p.source.topic {
            match self.bus.create_topic(&topic, 1).await {
                Ok(()) | Err(BusError::TopicExists(_)) => self.dlq_ready |= source == self.p.source.topic,
                Err(e) => return Err(self.bus_err(e)),
            }
        }
        let records: Vec<Record> = dead
            .iter()
            .map(|(i, reason)| {
                let m = &messages[*i];
                // A repartitioned record is named by where it came from.
                let (from, partition, offset, key) = match source_position(m) {
                    Some((p, o)) => (source.to_string(), p, o, m.header(SOURCE_KEY).cloned()),
                    None => (m.topic.to_string(), m.partition, m.offset, m.key.clone()),
                };
                Record { key, value: m.value.clone(), timestamp_ms: Some(m.timestamp_ms), ..Record::default() }
                    .with_header("weir.dlq.reason", reason.clone())
                    .with_header("weir.dlq.topic", from)
                    .with_header("weir.dlq.partition", partition.to_string())
                    .with_header("weir.dlq.offset", offset.to_string())
                    .with_header("weir.dlq.pipeline", self.p.id.clone())
            })
            .collect();
        if let Some((_, reason)) = dead.first() {
            tracing::warn!(pipeline = %self.p.id, count = dead.len(), first = %reason, "events sent to {topic}");
        }
        self.stats.dead_letters += records.len() as u64;
        metrics::counter!("weir_stream_dead_letters_total", "pipeline" => self.p.id.clone())
            .increment(records.len() as u64);
        self.producer.send(&topic, records).await.map_err(|e| self.bus_err(e))?;
        Ok(())
    }

    /// Moves the watermark: the smallest (largest event time − out-of-orderness) over the
    /// partitions that are not idle; when all are idle, the wall clock minus the idle timeout.
    /// A shard's source partition is idle only when also quiet ([`Engine::set_quiet`]).
    fn next_watermark(&self) -> i64 {
        let w = &self.p.watermark;
        let idle = w.idle_timeout;
        let ooo = w.max_out_of_orderness.as_millis() as i64;
        let may_idle = |n: &u32| match &self.input {
            Input::Whole(_) => true,
            Input::Shard { quiet, .. } => quiet.contains(n),
        };
        let active: Vec<&PartitionState> = self
            .partitions
            .iter()
            .filter(|(n, p)| p.last_seen.elapsed() < idle || !may_idle(n))
            .map(|(_, p)| p)
            .collect();
        let candidate = if active.is_empty() {
            now_ms() - idle.as_millis() as i64
        } else if active.iter().any(|p| p.max_time.is_none()) {
            i64::MIN
        } else {
            active.iter().filter_map(|p| p.max_time).min().map_or(i64::MIN, |t| t - ooo)
        };
        self.watermark.max(candidate)
    }

    async fn advance(&mut self) -> Result<(), EngineError> {
        self.release()?;
        let mut wm = self.next_watermark();
        if let Some(i) = &mut self.interval {
            // No window closes before the events still held for it are released.
            let after = i.spec().after.as_millis() as i64;
            wm = wm.min(i.watermark().saturating_sub(after)).max(self.watermark);
            let accepted_from = wm.saturating_sub(self.windows.lateness() + self.windows.span());
            i.expire(i.earliest_held().map_or(accepted_from, |t| t.min(accepted_from)));
        }
        if wm > self.watermark || self.windows.has_late_updates() {
            self.watermark = wm;
            let closed = self.windows.advance(wm);
            self.emit(closed).await?;
            let (windows, pairs) = self.windows.size();
            let id = self.p.id.clone();
            metrics::gauge!("weir_stream_watermark_ms", "pipeline" => id.clone()).set(wm as f64);
            metrics::gauge!("weir_stream_open_windows", "pipeline" => id.clone()).set(windows as f64);
            metrics::gauge!("weir_stream_window_keys", "pipeline" => id).set(pairs as f64);
            // Series without a result for a whole window can only turn stale when time moves.
            let changes = self.rules.on_watermark(wm);
            self.rules.publish(changes, &*self.producer).await.map_err(|e| self.bus_err(e))?;
        }
        Ok(())
    }

    /// The result rows as one batch: key columns, window_start, window_end, final, aggregates.
    fn results_batch(&self, out: &[Emitted]) -> RecordBatch {
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        if let Some((key_fields, converter)) = &self.keys
            && !key_fields.is_empty()
        {
            let parser = converter.parser();
            let keys = converter
                .convert_rows(out.iter().map(|e| parser.parse(&e.key)))
                .expect("keys were made by a converter of the same key types");
            fields.extend(key_fields.iter().cloned());
            columns.extend(keys);
        }
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        fields.push(Field::new("window_start", ts.clone(), false));
        fields.push(Field::new("window_end", ts, false));
        fields.push(Field::new("final", DataType::Boolean, false));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(out.iter().map(|e| e.start)).with_timezone("UTC"),
        ));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(out.iter().map(|e| e.end)).with_timezone("UTC"),
        ));
        columns.push(Arc::new(BooleanArray::from_iter(out.iter().map(|e| Some(e.is_final)))));
        for (i, a) in self.p.aggregates.iter().enumerate() {
            match a.func {
                AggFn::Count | AggFn::CountDistinct => {
                    fields.push(Field::new(&a.name, DataType::Int64, false));
                    columns.push(Arc::new(Int64Array::from_iter_values(out.iter().map(|e| match e.values[i] {
                        Value::Int(n) => n,
                        Value::Float(_) => 0,
                    }))));
                }
                _ => {
                    fields.push(Field::new(&a.name, DataType::Float64, true));
                    columns.push(Arc::new(Float64Array::from_iter(out.iter().map(|e| match e.values[i] {
                        Value::Float(x) => x,
                        Value::Int(n) => Some(n as f64),
                    }))));
                }
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match their fields")
    }

    async fn emit(&mut self, out: Vec<Emitted>) -> Result<(), EngineError> {
        if out.is_empty() {
            return Ok(());
        }
        let batch = self.results_batch(&out);
        let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(Vec::new());
        writer.write(&batch).expect("JSON encoding of plain columns");
        writer.finish().expect("JSON encoding of plain columns");
        let rows: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&writer.into_inner()).expect("arrow-json writes JSON");
        let key_count = self.keys.as_ref().map_or(0, |(fields, _)| fields.len());
        let records: Vec<Record> = rows
            .into_iter()
            .zip(&out)
            .map(|(mut row, e)| {
                // The record key names the result's identity: a later emission replaces it.
                let key: serde_json::Map<String, serde_json::Value> =
                    row.iter().take(key_count + 1).map(|(k, v)| (k.clone(), v.clone())).collect();
                row.insert("pipeline".into(), self.p.id.clone().into());
                Record {
                    key: Some(serde_json::to_vec(&key).expect("JSON").into()),
                    value: Some(serde_json::to_vec(&row).expect("JSON").into()),
                    timestamp_ms: Some(e.end),
                    ..Record::default()
                }
            })
            .collect();
        self.stats.results += records.len() as u64;
        metrics::counter!("weir_stream_results_total", "pipeline" => self.p.id.clone()).increment(records.len() as u64);
        self.producer.send(&self.p.output_topic, records).await.map_err(|e| self.bus_err(e))?;
        let changes = self.rules.on_results(&batch, self.watermark);
        self.rules.publish(changes, &*self.producer).await.map_err(|e| self.bus_err(e))?;
        Ok(())
    }
}

/// One poll of an engine reading the whole source.
async fn poll(engine: &mut Engine) -> Result<Vec<Message>, EngineError> {
    let every = engine.config.poll_interval;
    engine.consumer().poll(every).await.map_err(|e| engine.bus_err(e))
}

/// Why a pipeline with an interval join is refused scale-out.
pub const SCALE_OUT_INTERVAL: &str =
    "an interval join does not run scale-out yet (its other stream is not repartitioned): run it without --scale-out";

/// Why an event at `t` is late at watermark `wm`.
fn late_reason(p: &Pipeline, t: i64, wm: i64) -> String {
    format!(
        "late: event time {} is more than the allowed lateness ({}) behind the watermark {}",
        fmt_ms(t),
        humantime::format_duration(p.watermark.allowed_lateness),
        fmt_ms(wm)
    )
}

/// Key columns with the row converter of their values.
fn key_columns(fields: Vec<Field>) -> (Vec<Field>, RowConverter) {
    let converter = crate::eval::key_converter(&fields);
    (fields, converter)
}

/// Milliseconds since the epoch as RFC 3339 text.
pub fn fmt_ms(ms: i64) -> String {
    if ms == i64::MIN {
        return "(none yet)".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
