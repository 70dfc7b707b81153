//! The change-log writer: one change-event topic → one append-only Delta table
//! `raw/<topic with dots as underscores>` under the lake, exactly once.
//!
//! Exactly-once: every commit carries, for each partition it wrote, a Delta `txn` action with app
//! id `weir-lake:<topic>:<partition>` and version = the next offset to read. On start the writer
//! reads those versions from the table and seeks there; the consumer group's own offsets are not
//! trusted (the writer commits them after the table's, for lag and the embedded log's retention,
//! never ahead of the table). A crash before a commit loses nothing (the records are read again); a crash after it
//! repeats nothing (the offsets moved in the same atomic commit). Writers on different partitions
//! of one topic append to one table safely: appends do not conflict and each owns its app ids.
//!
//! Fencing: two writers on one partition (an overlapping deploy, a rebalance) must not both
//! commit the same offsets. Each commit expects every partition's stored `txn` version to be the
//! one its batch started from; it checks that on the snapshot it commits against, and Delta's
//! conflict check (`ConcurrentTransaction`) catches a commit with the same app id that lands in
//! between. A writer whose partition moved under it is a zombie: its commit is dropped (the files
//! stay unreferenced until vacuum), it logs and counts that (`weir_lake_fenced_total`) and rejoins
//! from the offsets the table holds.
//!
//! Records that cannot be decoded (not the Confluent wire format, unknown schema id, a body that
//! does not follow its schema) go to `<topic>.dlq` with the reason and origin in headers; the
//! writer continues. A bad header or schema id is found as the record is read and sent at once;
//! a bad body is found where the record is decoded (by the commit's Parquet writer, see
//! [`crate::files`]) and sent before the commit that moves past it. Tombstones carry no row
//! and are skipped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use deltalake::{
    DeltaTable, DeltaTableError,
    arrow::record_batch::RecordBatch,
    kernel::{
        Transaction,
        transaction::{CommitProperties, TransactionError},
    },
    operations::write::SchemaMode,
    protocol::SaveMode,
};
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, TopicPartition};
use weir_schemas::{
    registry::{RegistryError, SchemaRegistry},
    wire,
};

use crate::{
    LakeError,
    avro_arrow::Layout,
    chunk::Chunk,
    current::KEY_PROPERTY,
    dlq::Dlq,
    files::{self, Appender},
};

/// Records per chunk: what one Parquet writer decodes and encodes at a time. A chunk's vector
/// (128 bytes a record) stays under mimalloc's 512 KiB limit for pooled blocks: larger ones are
/// each a fresh mapping the kernel zeroes, which cost the writer up to a tenth of its CPU.
const CHUNK_RECORDS: usize = 4000;

/// How long a drain that is behind the topic's end waits for its first record (a Kafka
/// consumer's start-up) before it takes the end offset for one counting records never delivered.
const FIRST_RECORD_WAIT: Duration = Duration::from_secs(10);

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The bus failed.
    #[error("lake writer for {topic}: {source}")]
    Bus {
        /// The topic.
        topic: String,
        /// Cause.
        source: Box<BusError>,
    },
    /// A column of the topic's new schema has a type the table's column cannot take.
    #[error(
        "lake writer for {topic}: column {column} changed type from {table_type} to {new_type}, which table {table} \
         cannot take; this table stops here (write the new shape to a new table, or migrate this one)"
    )]
    Incompatible {
        /// The topic.
        topic: String,
        /// The table URL.
        table: String,
        /// The column.
        column: String,
        /// Its type in the table.
        table_type: String,
        /// Its type in the new rows.
        new_type: String,
    },
    /// The schema registry could not be reached.
    #[error("lake writer for {topic}: {source}")]
    Registry {
        /// The topic.
        topic: String,
        /// Cause.
        source: Box<RegistryError>,
    },
    /// Another writer committed offsets of these partitions since this writer's batch began
    /// (`(partition, expected, stored)`); the writer drops the batch and rejoins from the table.
    #[error(
        "lake writer for {topic}: another writer moved partitions {moved:?} (partition, expected, stored) of table \
         {table}; this writer's batch is dropped"
    )]
    Fenced {
        /// The topic.
        topic: String,
        /// The table URL.
        table: String,
        /// The partitions whose stored version moved: (partition, expected, stored).
        moved: Vec<(u32, i64, i64)>,
    },
    /// The Delta table could not be read or written.
    #[error("lake writer for {topic}: Delta table {table}: {source}")]
    Delta {
        /// The topic.
        topic: String,
        /// The table URL.
        table: String,
        /// Cause.
        source: Box<DeltaTableError>,
    },
}

/// When buffered rows are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Commit when this many rows are buffered.
    pub rows: usize,
    /// … or when the buffered records' encoded size reaches this many bytes…
    pub bytes: usize,
    /// … or when the oldest buffered row is this old.
    pub age: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy { rows: 200_000, bytes: 128 << 20, age: Duration::from_secs(30) }
    }
}

/// What one [`TopicWriter::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Rows committed to the table.
    pub rows: u64,
    /// Delta commits made.
    pub commits: u64,
    /// Records sent to the DLQ.
    pub dead_letters: u64,
    /// Batches dropped because another writer had committed their partitions (see fencing).
    pub fenced: u64,
}

/// How change-log files are encoded: Snappy-compressed Parquet (Delta's and Spark's default),
/// fast to write and to read.
pub fn parquet_properties() -> deltalake::parquet::file::properties::WriterProperties {
    deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::SNAPPY)
        .build()
}

/// The app id of a topic partition in the table's `txn` actions.
pub fn app_id(topic: &str, partition: u32) -> String {
    format!("weir-lake:{topic}:{partition}")
}

/// The lake table name of a topic: `raw.<topic with . as _>`.
pub fn table_name(topic: &str) -> String {
    format!("raw.{}", topic.replace('.', "_"))
}

/// The next offsets of partitions `0..partitions` of `topic` that its lake writer will read, from
/// the `txn` actions of `table`, the topic's ([`table_name`]); 0 for a partition not written yet.
pub async fn committed_offsets(
    table: &DeltaTable,
    topic: &str,
    partitions: u32,
) -> Result<BTreeMap<u32, i64>, LakeError> {
    let partitions: Vec<u32> = (0..partitions).collect();
    stored_offsets(table, topic, &partitions).await.map_err(|e| LakeError::delta(&table_name(topic), e))
}

/// The next offsets of `partitions` of `topic` stored in `table`'s `txn` actions (0 where none).
async fn stored_offsets(
    table: &DeltaTable,
    topic: &str,
    partitions: &[u32],
) -> Result<BTreeMap<u32, i64>, DeltaTableError> {
    let snapshot = table.snapshot()?;
    let mut next = BTreeMap::new();
    for &p in partitions {
        let v = snapshot.transaction_version(table.log_store().as_ref(), app_id(topic, p)).await?;
        next.insert(p, v.unwrap_or(0));
    }
    Ok(next)
}

/// Writes one topic (or some of its partitions) into its Delta table.
pub struct TopicWriter {
    topic: String,
    table_url: String,
    table: DeltaTable,
    consumer: Box<dyn Consumer>,
    dlq: Dlq,
    /// Where its commits are announced.
    signals: crate::signal::Signals,
    bus: Arc<dyn Bus>,
    registry: Arc<dyn SchemaRegistry>,
    layouts: HashMap<u32, Arc<Layout>>,
    /// The records read since the last chunk was handed on (all of one schema).
    current: Option<Chunk>,
    /// Next offset per partition, as far as rows are buffered.
    next: BTreeMap<u32, i64>,
    /// Next offset per partition as the table holds it after this writer's last commit (or when
    /// it opened or rejoined): what the next commit expects to find (see the module's fencing).
    committed: BTreeMap<u32, i64>,
    /// Counts rejoins, so that a batch being buffered stops at one.
    epoch: u64,
    /// Where the chunks of the commit being gathered went (`None`: none yet).
    pending: Option<Rows>,
    /// Records (with a value) read since the last commit.
    buffered: usize,
    buffered_bytes: usize,
    /// Records sent to the DLQ since the last commit.
    dead_since_commit: u64,
    /// The primary-key columns, from the first keyed record's key schema…
    key: Option<Vec<String>>,
    /// … once that record has been seen.
    key_known: bool,
    oldest: Option<Instant>,
    policy: FlushPolicy,
    stats: DrainStats,
    /// The end offsets the running [`Self::drain`] reads up to.
    drain_ends: Option<Vec<i64>>,
    /// The commit being written in the background while the next rows decode (at most one).
    in_flight: Option<tokio::task::JoinHandle<Result<Committed, WriterError>>>,
}

/// What a background commit hands back: the table at its new version, the rows it added and the
/// records it sent to the DLQ.
struct Committed {
    table: DeltaTable,
    rows: usize,
    dead: usize,
    /// The partitions' next offsets it stored.
    offsets: BTreeMap<u32, i64>,
}

impl TopicWriter {
    /// Opens (or prepares to create) the table at `table_url` and positions a consumer on
    /// `partitions` of `topic` (all when `None`) at the offsets the table has committed.
    pub async fn open(
        bus: Arc<dyn Bus>,
        registry: Arc<dyn SchemaRegistry>,
        topic: &str,
        partitions: Option<Vec<u32>>,
        table_url: url::Url,
        policy: FlushPolicy,
    ) -> Result<TopicWriter, WriterError> {
        let bus_err = |e: BusError| WriterError::Bus { topic: topic.into(), source: Box::new(e) };
        let delta_err = |e: DeltaTableError| WriterError::Delta {
            topic: topic.into(),
            table: table_url.to_string(),
            source: Box::new(e),
        };
        let table = DeltaTable::try_from_url(table_url.clone()).await.map_err(delta_err)?;
        let partitions = match partitions {
            Some(p) => p,
            None => (0..bus.topic(topic).await.map_err(bus_err)?.partitions).collect(),
        };
        let next = match table.snapshot() {
            Ok(_) => stored_offsets(&table, topic, &partitions).await.map_err(delta_err)?,
            Err(_) => partitions.iter().map(|&p| (p, 0)).collect(), // no table yet
        };
        let mut consumer = bus.consumer(ConsumerConfig::new(format!("weir-lake-{topic}"))).await.map_err(bus_err)?;
        let tps: Vec<TopicPartition> = partitions.iter().map(|&p| TopicPartition::new(topic, p)).collect();
        consumer.assign(&tps).await.map_err(bus_err)?;
        for tp in &tps {
            consumer.seek(tp, next[&tp.partition]).await.map_err(bus_err)?;
        }
        let dlq = Dlq::new(bus.clone(), topic).await.map_err(bus_err)?;
        let signals = crate::signal::Signals::new(bus.clone());
        tracing::info!(topic, table = %table_url, ?next, "lake writer positioned from the table's txn actions");
        let mut writer = TopicWriter {
            topic: topic.into(),
            table_url: table_url.to_string(),
            table,
            consumer,
            dlq,
            signals,
            bus,
            registry,
            layouts: HashMap::new(),
            current: None,
            committed: next.clone(),
            next,
            epoch: 0,
            pending: None,
            buffered: 0,
            buffered_bytes: 0,
            dead_since_commit: 0,
            key: None,
            key_known: false,
            oldest: None,
            policy,
            stats: DrainStats::default(),
            drain_ends: None,
            in_flight: None,
        };
        writer.report_progress().await;
        Ok(writer)
    }

    fn delta_err(&self, e: DeltaTableError) -> WriterError {
        WriterError::Delta { topic: self.topic.clone(), table: self.table_url.clone(), source: Box::new(e) }
    }

    fn bus_err(&self, e: BusError) -> WriterError {
        WriterError::Bus { topic: self.topic.clone(), source: Box::new(e) }
    }

    /// The table as last committed (or opened).
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Reads what the topic held when called (up to its end offsets then), committing by the
    /// flush policy and once at the end. Stops early if the topic has nothing more for `idle`
    /// (a Kafka end offset can count control records that are never delivered), or, before the
    /// first record arrives, for [`FIRST_RECORD_WAIT`].
    pub async fn drain(&mut self, idle: Duration) -> Result<DrainStats, WriterError> {
        self.stats = DrainStats::default();
        loop {
            let epoch = self.epoch;
            let drained = self.drain_rows(idle).await;
            self.landing(drained).await?;
            if self.epoch == epoch {
                return Ok(self.stats);
            }
            // Fenced at the last commit: read on from the offsets the table holds.
        }
    }

    async fn drain_rows(&mut self, idle: Duration) -> Result<(), WriterError> {
        let ends = self.bus.end_offsets(&self.topic).await.map_err(|e| self.bus_err(e))?;
        self.drain_ends = Some(ends);
        let started = Instant::now();
        let mut arrived = false;
        let drained = async {
            while !self.drained() {
                let batch = self.consumer.poll(idle).await.map_err(|e| self.bus_err(e))?;
                if batch.is_empty() {
                    // A Kafka consumer's first fetch can take longer than `idle`.
                    if arrived || started.elapsed() >= idle.max(FIRST_RECORD_WAIT) {
                        break;
                    }
                    continue;
                }
                arrived = true;
                self.take(batch).await?;
                if self.due() {
                    self.commit().await?;
                }
            }
            self.commit_last().await
        }
        .await;
        self.drain_ends = None;
        drained
    }

    /// Whether a drain has read up to the end offsets it was called with.
    fn drained(&self) -> bool {
        self.drain_ends
            .as_ref()
            .is_some_and(|ends| self.next.iter().all(|(&p, &o)| ends.get(p as usize).is_none_or(|&end| o >= end)))
    }

    /// Follows the topic until `shutdown`, committing by the flush policy.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), WriterError> {
        let followed = self.follow(shutdown).await;
        self.landing(followed).await
    }

    async fn follow(&mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), WriterError> {
        tokio::pin!(shutdown);
        loop {
            let batch = tokio::select! {
                b = self.consumer.poll(Duration::from_millis(500)) => b.map_err(|e| self.bus_err(e))?,
                _ = &mut shutdown => break,
            };
            self.take(batch).await?;
            if self.due() {
                self.commit().await?;
            }
        }
        self.commit_last().await
    }

    /// Waits for the commit in flight, also when the writer stops on an error: what was read
    /// before the record that stopped it is then in the lake.
    async fn landing(&mut self, result: Result<(), WriterError>) -> Result<(), WriterError> {
        let landed = self.settle().await;
        result.and(landed)
    }

    fn due(&self) -> bool {
        self.buffered >= self.policy.rows
            || self.buffered_bytes >= self.policy.bytes
            || self.oldest.is_some_and(|t| t.elapsed() >= self.policy.age)
    }

    /// The layout of schema `id`: `Ok(Err(reason))` when the record cannot be decoded (unknown
    /// id, not an envelope: a dead letter), `Err` when the registry cannot be reached (the writer
    /// stops and resumes from the table later; nothing is dead-lettered for an outage).
    async fn layout(&mut self, id: u32) -> Result<Result<Arc<Layout>, String>, WriterError> {
        if let Some(l) = self.layouts.get(&id) {
            return Ok(Ok(l.clone()));
        }
        let json = match self.registry.schema_by_id(id).await {
            Ok(json) => json,
            Err(e @ (RegistryError::SchemaNotFound(_) | RegistryError::InvalidSchema(_))) => {
                return Ok(Err(format!("schema id {id}: {e}")));
            }
            Err(e) => return Err(WriterError::Registry { topic: self.topic.clone(), source: Box::new(e) }),
        };
        let layout = match Layout::new(&json) {
            Ok(l) => Arc::new(l),
            Err(e) => return Ok(Err(format!("schema id {id}: {e}"))),
        };
        self.layouts.insert(id, layout.clone());
        Ok(Ok(layout))
    }

    /// Buffers a polled batch.
    async fn take(&mut self, messages: Vec<Message>) -> Result<(), WriterError> {
        let epoch = self.epoch;
        for m in messages {
            if self.epoch != epoch {
                break; // fenced and rejoined: the consumer reads again from the table's offsets
            }
            self.next.insert(m.partition, m.offset + 1);
            let Some(value) = &m.value else { continue }; // tombstone
            let size = value.len();
            let id = match wire::unframe(value) {
                Ok((id, _)) => id,
                Err(e) => {
                    self.dead_letter(m, format!("not the Confluent wire format: {e}")).await?;
                    continue;
                }
            };
            if self.current.as_ref().is_none_or(|c| c.schema_id() != id) {
                let layout = match self.layout(id).await? {
                    Ok(l) => l,
                    Err(reason) => {
                        self.dead_letter(m, reason).await?;
                        continue;
                    }
                };
                if self.current.is_some() {
                    // A new schema: what is buffered is committed under the old one first.
                    self.seal().await?;
                    let upto = self.next.clone();
                    self.next.insert(m.partition, m.offset); // this record is not in the commit
                    self.commit().await?;
                    self.next = upto;
                }
                self.current = Some(Chunk::new(id, layout, self.topic.as_str().into(), CHUNK_RECORDS));
            }
            if !self.key_known
                && let Some(key) = &m.key
            {
                self.key = self.key_columns(key).await;
                self.key_known = true;
            }
            self.buffered += 1;
            self.buffered_bytes += size;
            self.oldest.get_or_insert_with(Instant::now);
            let chunk = self.current.as_mut().expect("made for this record's schema above");
            chunk.push(m);
            if chunk.len() >= CHUNK_RECORDS {
                self.seal().await?;
            }
            if self.buffered >= self.policy.rows || self.buffered_bytes >= self.policy.bytes {
                self.commit().await?;
            }
        }
        Ok(())
    }

    /// The field names of a framed key's schema (the table's primary key), if it is one.
    async fn key_columns(&mut self, key: &[u8]) -> Option<Vec<String>> {
        let (id, _) = wire::unframe(key).ok()?;
        let json = self.registry.schema_by_id(id).await.ok()?;
        crate::avro_arrow::record_field_names(&json)
    }

    /// Hands the records read on as a chunk: to the commit's Parquet writer, or decoded into
    /// memory when they add columns to the table. The first chunk of a commit decides which (and
    /// creates the table if there is none yet); an incompatible column type stops the writer here.
    async fn seal(&mut self) -> Result<(), WriterError> {
        let Some(chunk) = self.current.as_mut().filter(|c| !c.is_empty()).map(Chunk::take) else { return Ok(()) };
        if self.pending.is_none() {
            let schema = chunk.layout().schema();
            if self.table.version().is_none() {
                self.create(&schema).await?;
            }
            self.pending = Some(if adds_columns(&self.table, &schema, &self.topic, &self.table_url)? {
                Rows::Batches(Vec::new(), Vec::new())
            } else {
                Rows::Files(Appender::new(&self.table).map_err(|e| self.delta_err(e))?)
            });
        }
        match self.pending.as_mut().expect("set above") {
            Rows::Files(appender) => {
                let written = appender.write(chunk).await;
                written.map_err(|e| self.delta_err(e))?;
            }
            Rows::Batches(batches, dead) => {
                let decoded = chunk.decode();
                batches.push(decoded.batch);
                dead.extend(decoded.dead);
            }
        }
        Ok(())
    }

    /// Sends a record that cannot be decoded to the DLQ at once.
    async fn dead_letter(&mut self, m: Message, reason: String) -> Result<(), WriterError> {
        self.dlq.send(&[(m, reason)]).await.map_err(|e| self.bus_err(e))?;
        self.stats.dead_letters += 1;
        self.dead_since_commit += 1;
        Ok(())
    }

    /// Creates the table with the columns of the first rows, partitioned by `_date`, recording
    /// the primary key. Another writer may create it first; then that table is used.
    async fn create(&mut self, schema: &deltalake::arrow::datatypes::SchemaRef) -> Result<(), WriterError> {
        use deltalake::kernel::{
            StructType, engine::arrow_conversion::TryIntoKernel as _, schema::normalize_for_delta,
        };
        let columns: StructType = normalize_for_delta(schema)
            .as_ref()
            .try_into_kernel()
            .map_err(|e| self.delta_err(DeltaTableError::from(e)))?;
        let key = self.key.as_ref().map(|k| (KEY_PROPERTY, k.join(",")));
        let created = self
            .table
            .create()
            .with_columns(columns.fields().cloned())
            .with_partition_columns(["_date"])
            .with_configuration(key.map(|(k, v)| (k, Some(v))))
            .with_raise_if_key_not_exists(false)
            // Losing the race for version 0 must fail, not create the table a second time.
            .with_commit_properties(CommitProperties::default().with_max_retries(0))
            .await;
        match created {
            Ok(table) => self.table = table,
            Err(e) => {
                // Lost a race with another writer's create? Then the table is there now.
                self.table.update_state().await.map_err(|_| self.delta_err(e))?;
            }
        }
        Ok(())
    }

    /// Waits for the commit in flight, if any, and takes the table it produced.
    async fn settle(&mut self) -> Result<(), WriterError> {
        let Some(handle) = self.in_flight.take() else { return Ok(()) };
        let committed = match handle.await {
            Ok(Err(WriterError::Fenced { moved, .. })) => return self.rejoin(&moved).await,
            Ok(result) => result?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                return Err(WriterError::Delta {
                    topic: self.topic.clone(),
                    table: self.table_url.clone(),
                    source: Box::new(DeltaTableError::Generic(format!("the commit task ended: {e}"))),
                });
            }
        };
        self.table = committed.table;
        self.committed = committed.offsets;
        self.stats.rows += committed.rows as u64;
        self.stats.dead_letters += committed.dead as u64;
        self.stats.commits += 1;
        self.report_progress().await;
        Ok(())
    }

    /// Commits the offsets the table holds to the writer's consumer group. The table stays the
    /// truth the writer resumes from; the group's offsets show its lag to the bus's tools and
    /// keep the embedded log's retention from deleting what the lake has not stored yet. They
    /// are committed after the table's, so they are never ahead of it.
    async fn report_progress(&mut self) {
        let offsets: Vec<(TopicPartition, i64)> =
            self.committed.iter().map(|(&p, &o)| (TopicPartition::new(&self.topic, p), o)).collect();
        if let Err(e) = self.consumer.commit(&offsets).await {
            tracing::warn!(topic = %self.topic, error = %e, "could not commit the lake's offsets to the bus (the table keeps them)");
        }
    }

    /// After another writer moved `moved` partitions: drops what is buffered, reads the table
    /// again and positions the consumer at the offsets it holds.
    async fn rejoin(&mut self, moved: &[(u32, i64, i64)]) -> Result<(), WriterError> {
        tracing::warn!(topic = %self.topic, table = %self.table_url, ?moved, "another writer committed this writer's partitions (partition, expected, stored): dropping the batch and rejoining from the table");
        metrics::counter!("weir_lake_fenced_total", "topic" => self.topic.clone()).increment(1);
        self.stats.fenced += 1;
        self.current = None;
        self.pending = None;
        self.buffered = 0;
        self.buffered_bytes = 0;
        self.dead_since_commit = 0;
        self.oldest = None;
        self.epoch += 1;
        self.table.update_state().await.map_err(|e| self.delta_err(e))?;
        let partitions: Vec<u32> = self.next.keys().copied().collect();
        self.next = stored_offsets(&self.table, &self.topic, &partitions).await.map_err(|e| self.delta_err(e))?;
        self.committed = self.next.clone();
        for (&p, &offset) in &self.next {
            let tp = TopicPartition::new(&self.topic, p);
            self.consumer.seek(&tp, offset).await.map_err(|e| self.bus_err(e))?;
        }
        self.report_progress().await;
        Ok(())
    }

    /// Commits what is buffered, with the partitions' next offsets as `txn` actions. The Parquet
    /// files were written while the records were read; a background task closes them, sends the
    /// records they could not decode to the DLQ and makes the commit while the writer reads on.
    /// The commit before it is awaited first, so commits land in offset order and at most one is
    /// in flight. [`Self::settle`] awaits it.
    async fn commit(&mut self) -> Result<(), WriterError> {
        if self.drained() {
            return self.commit_last().await;
        }
        self.commit_with(0).await
    }

    /// The last commit before the writer stops (or pauses at the end of a drain): no next
    /// commit's records keep the other cores busy, so helper writers take some of its queued
    /// chunks.
    async fn commit_last(&mut self) -> Result<(), WriterError> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        self.commit_with(cores - 1).await
    }

    async fn commit_with(&mut self, helpers: usize) -> Result<(), WriterError> {
        self.seal().await?;
        self.settle().await?;
        let txns: Vec<Transaction> =
            self.next.iter().map(|(&p, &o)| Transaction::new(app_id(&self.topic, p), o)).collect();
        let rows = match self.pending.take() {
            Some(rows) => rows,
            None => {
                // Nothing to add. Offsets past tombstones wait for the next commit with rows;
                // past dead letters they are saved now (a commit of `txn` actions alone), so
                // that a restart does not send them to the DLQ again.
                if self.dead_since_commit > 0 && self.table.version().is_some() {
                    match self.job(txns, 0).record(Vec::new()).await {
                        Err(WriterError::Fenced { moved, .. }) => return self.rejoin(&moved).await,
                        recorded => self.table = recorded?,
                    }
                    self.committed = self.next.clone();
                    self.dead_since_commit = 0;
                    self.report_progress().await;
                }
                self.oldest = None;
                return Ok(());
            }
        };
        let job = self.job(txns, helpers);
        self.in_flight = Some(tokio::spawn(job.run(rows)));
        self.dead_since_commit = 0;
        self.buffered = 0;
        self.buffered_bytes = 0;
        self.oldest = None;
        Ok(())
    }
}

impl TopicWriter {
    /// A commit of `txns` on the table as this writer knows it, expecting the offsets it committed last.
    fn job(&self, txns: Vec<Transaction>, helpers: usize) -> CommitJob {
        CommitJob {
            topic: self.topic.clone(),
            table_url: self.table_url.clone(),
            table: self.table.clone(),
            txns,
            expected: self.committed.clone(),
            dlq: self.dlq.clone(),
            signals: self.signals.clone(),
            helpers,
        }
    }
}

/// The rows a commit adds.
enum Rows {
    /// Chunks streamed to the commit's Parquet writer, which decodes and encodes them (rows of
    /// the table's own columns): the commit closes the files and records them.
    Files(Appender<Chunk>),
    /// Decoded into memory (rows that add columns), with the records that failed: the commit
    /// writes them with deltalake's write operation, which evolves the table.
    Batches(Vec<RecordBatch>, Vec<(Message, String)>),
}

/// One commit's work, owned so that it can run beside the decoding of the next rows.
struct CommitJob {
    topic: String,
    table_url: String,
    table: DeltaTable,
    txns: Vec<Transaction>,
    /// The partitions' next offsets the table must hold before this commit (see fencing).
    expected: BTreeMap<u32, i64>,
    dlq: Dlq,
    /// Where the commit is announced.
    signals: crate::signal::Signals,
    /// Writers that may help close the files (see [`Appender::finish`]).
    helpers: usize,
}

/// Attempts at a commit that conflicts with another writer's (a concurrent schema change).
const COMMIT_ATTEMPTS: usize = 5;

impl CommitJob {
    fn delta_err(&self, e: DeltaTableError) -> WriterError {
        WriterError::Delta { topic: self.topic.clone(), table: self.table_url.clone(), source: Box::new(e) }
    }

    /// Sends the records that failed to decode to the DLQ, then commits the rows with the
    /// offsets past them.
    async fn run(mut self, rows: Rows) -> Result<Committed, WriterError> {
        let started = Instant::now();
        let (table, rows, dead) = match rows {
            Rows::Files(appender) => {
                let written = appender.finish(self.helpers).await.map_err(|e| self.delta_err(e))?;
                self.dead_letters(&written.dead).await?;
                (self.record(written.adds).await?, written.rows, written.dead.len())
            }
            Rows::Batches(mut batches, dead) => {
                self.dead_letters(&dead).await?;
                batches.retain(|b| b.num_rows() > 0);
                let rows = batches.iter().map(RecordBatch::num_rows).sum();
                let table =
                    if batches.is_empty() { self.record(Vec::new()).await? } else { self.evolve(batches).await? };
                (table, rows, dead.len())
            }
        };
        metrics::counter!("weir_lake_rows_total", "topic" => self.topic.clone()).increment(rows as u64);
        tracing::info!(topic = %self.topic, rows, dead, version = ?table.version(), ms = started.elapsed().as_millis() as u64, "lake commit");
        if let Some(version) = table.version().filter(|_| rows > 0) {
            self.signals.committed(&table_name(&self.topic), version, "append").await;
        }
        let offsets = self.txns.iter().filter_map(|t| Some((partition_of(&t.app_id)?, t.version))).collect();
        Ok(Committed { table, rows, dead, offsets })
    }

    async fn dead_letters(&self, dead: &[(Message, String)]) -> Result<(), WriterError> {
        self.dlq.send(dead).await.map_err(|e| WriterError::Bus { topic: self.topic.clone(), source: Box::new(e) })
    }

    /// Commits written files with the offsets. Another writer (other partitions of the topic)
    /// may commit in between: appends do not conflict; a concurrent schema change does, and
    /// then the files are recorded on the new version (they hold a subset of its columns).
    async fn record(&mut self, adds: Vec<deltalake::kernel::Add>) -> Result<DeltaTable, WriterError> {
        let mut attempt = 1;
        loop {
            self.fence().await?;
            match files::commit(&self.table, adds.clone(), self.txns.clone()).await {
                Ok(table) => return Ok(table),
                Err(e) => self.conflicted(e, &mut attempt).await?,
            }
        }
    }

    /// Writes rows that add columns with deltalake's write operation, which merges the schema.
    /// On a conflict (another writer changed the schema too) it reads the table and tries again.
    async fn evolve(&mut self, batches: Vec<RecordBatch>) -> Result<DeltaTable, WriterError> {
        let schema = batches[0].schema();
        let mut attempt = 1;
        loop {
            let evolve = adds_columns(&self.table, &schema, &self.topic, &self.table_url)?;
            let mut write = self
                .table
                .clone()
                .write(batches.clone())
                .with_save_mode(SaveMode::Append)
                .with_partition_columns(["_date"])
                .with_writer_properties(parquet_properties())
                .with_commit_properties(CommitProperties::default().with_application_transactions(self.txns.clone()));
            if evolve {
                write = write.with_schema_mode(SchemaMode::Merge);
            }
            self.fence().await?;
            match write.await {
                Ok(table) => return Ok(table),
                Err(e) => self.conflicted(e, &mut attempt).await?,
            }
        }
    }

    /// `Ok` when every partition's stored next offset in the table (as last read) is the one this
    /// commit expects; else [`WriterError::Fenced`] naming those that moved.
    async fn fence(&self) -> Result<(), WriterError> {
        let partitions: Vec<u32> = self.expected.keys().copied().collect();
        let stored = stored_offsets(&self.table, &self.topic, &partitions).await.map_err(|e| self.delta_err(e))?;
        let moved: Vec<(u32, i64, i64)> = self
            .expected
            .iter()
            .filter(|&(p, e)| stored.get(p) != Some(e))
            .map(|(&p, &e)| (p, e, stored.get(&p).copied().unwrap_or(0)))
            .collect();
        if moved.is_empty() {
            return Ok(());
        }
        Err(WriterError::Fenced { topic: self.topic.clone(), table: self.table_url.clone(), moved })
    }

    /// After a failed commit: `Ok` to try again (a conflict with attempts left; the table has
    /// been read again), else the error.
    async fn conflicted(&mut self, e: DeltaTableError, attempt: &mut usize) -> Result<(), WriterError> {
        match e {
            DeltaTableError::Transaction { source: TransactionError::CommitConflict(conflict) }
                if *attempt < COMMIT_ATTEMPTS =>
            {
                *attempt += 1;
                tracing::info!(topic = %self.topic, %conflict, attempt = *attempt, "commit conflict; trying again on the new table version");
                self.table.update_state().await.map_err(|e| self.delta_err(e))
            }
            e => Err(self.delta_err(e)),
        }
    }
}

/// The partition of a `txn` app id made by [`app_id`].
fn partition_of(app_id: &str) -> Option<u32> {
    app_id.rsplit_once(':')?.1.parse().ok()
}

/// Whether rows of `schema` add columns to `table` (they then evolve it); an error when a column
/// they share has another type.
fn adds_columns(
    table: &DeltaTable,
    schema: &deltalake::arrow::datatypes::SchemaRef,
    topic: &str,
    table_url: &str,
) -> Result<bool, WriterError> {
    use deltalake::kernel::{StructType, engine::arrow_conversion::TryIntoKernel as _, schema::normalize_for_delta};
    let delta_err =
        |e: DeltaTableError| WriterError::Delta { topic: topic.into(), table: table_url.into(), source: Box::new(e) };
    let new: StructType =
        normalize_for_delta(schema).as_ref().try_into_kernel().map_err(|e| delta_err(DeltaTableError::from(e)))?;
    let existing = table.snapshot().map_err(delta_err)?.schema();
    let mut added = false;
    for field in new.fields() {
        let Some(old) = existing.field(field.name()) else {
            added = true;
            continue;
        };
        if old.data_type() != field.data_type() {
            return Err(WriterError::Incompatible {
                topic: topic.into(),
                table: table_url.into(),
                column: field.name().clone(),
                table_type: old.data_type().to_string(),
                new_type: field.data_type().to_string(),
            });
        }
    }
    Ok(added)
}
