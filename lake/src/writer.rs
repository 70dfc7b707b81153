//! The change-log writer: one change-event topic → one append-only Delta table
//! `raw/<topic with dots as underscores>` under the lake, exactly once.
//!
//! Exactly-once: every commit carries, for each partition it wrote, a Delta `txn` action with app
//! id `weir-lake:<topic>:<partition>` and version = the next offset to read. On start the writer
//! reads those versions from the table and seeks there; the consumer group's own offsets are not
//! trusted. A crash before a commit loses nothing (the records are read again); a crash after it
//! repeats nothing (the offsets moved in the same atomic commit). Writers on different partitions
//! of one topic append to one table safely: appends do not conflict and each owns its app ids.
//!
//! Records that cannot be decoded (not the Confluent wire format, unknown schema id, a body that
//! does not follow its schema) go to `<topic>.dlq` with the reason and origin in headers; the
//! writer continues. Tombstones carry no row and are skipped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use deltalake::{
    DeltaTable, DeltaTableError,
    arrow::record_batch::RecordBatch,
    kernel::{Transaction, transaction::CommitProperties},
    protocol::SaveMode,
};
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, Producer, Record, TopicPartition};
use weir_schemas::{registry::SchemaRegistry, wire};

use crate::avro_arrow::{BatchBuilder, Layout};

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
    /// … or when the oldest buffered row is this old.
    pub age: Duration,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        FlushPolicy { rows: 200_000, age: Duration::from_secs(30) }
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
}

/// The app id of a topic partition in the table's `txn` actions.
pub fn app_id(topic: &str, partition: u32) -> String {
    format!("weir-lake:{topic}:{partition}")
}

/// The lake table name of a topic: `raw.<topic with . as _>`.
pub fn table_name(topic: &str) -> String {
    format!("raw.{}", topic.replace('.', "_"))
}

/// Writes one topic (or some of its partitions) into its Delta table.
pub struct TopicWriter {
    topic: String,
    table_url: String,
    table: DeltaTable,
    consumer: Box<dyn Consumer>,
    dlq: Box<dyn Producer>,
    bus: Arc<dyn Bus>,
    registry: Arc<dyn SchemaRegistry>,
    layouts: HashMap<u32, Arc<Layout>>,
    current: Option<(u32, Arc<Layout>, BatchBuilder)>,
    /// Next offset per partition, as far as rows are buffered.
    next: BTreeMap<u32, i64>,
    /// Finished batches of the current schema, not yet committed.
    batches: Vec<RecordBatch>,
    buffered: usize,
    oldest: Option<Instant>,
    policy: FlushPolicy,
    stats: DrainStats,
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
        let mut next = BTreeMap::new();
        for &p in &partitions {
            let version = match table.snapshot() {
                Ok(state) => {
                    state.transaction_version(table.log_store().as_ref(), app_id(topic, p)).await.map_err(delta_err)?
                }
                Err(_) => None, // no table yet
            };
            next.insert(p, version.unwrap_or(0));
        }
        let mut consumer = bus.consumer(ConsumerConfig::new(format!("weir-lake-{topic}"))).await.map_err(bus_err)?;
        let tps: Vec<TopicPartition> = partitions.iter().map(|&p| TopicPartition::new(topic, p)).collect();
        consumer.assign(&tps).await.map_err(bus_err)?;
        for tp in &tps {
            consumer.seek(tp, next[&tp.partition]).await.map_err(bus_err)?;
        }
        let dlq = bus.producer().await.map_err(bus_err)?;
        tracing::info!(topic, table = %table_url, ?next, "lake writer positioned from the table's txn actions");
        Ok(TopicWriter {
            topic: topic.into(),
            table_url: table_url.to_string(),
            table,
            consumer,
            dlq,
            bus,
            registry,
            layouts: HashMap::new(),
            current: None,
            next,
            batches: Vec::new(),
            buffered: 0,
            oldest: None,
            policy,
            stats: DrainStats::default(),
        })
    }

    fn bus_err(&self, e: BusError) -> WriterError {
        WriterError::Bus { topic: self.topic.clone(), source: Box::new(e) }
    }

    /// The table as last committed (or opened).
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Reads until the topic has nothing more for `idle`, committing by the flush policy and
    /// once at the end.
    pub async fn drain(&mut self, idle: Duration) -> Result<DrainStats, WriterError> {
        self.stats = DrainStats::default();
        loop {
            let batch = self.consumer.poll(idle).await.map_err(|e| self.bus_err(e))?;
            if batch.is_empty() {
                break;
            }
            self.take(batch).await?;
            if self.due() {
                self.commit().await?;
            }
        }
        self.commit().await?;
        Ok(self.stats)
    }

    /// Follows the topic until `shutdown`, committing by the flush policy.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), WriterError> {
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
        self.commit().await
    }

    fn due(&self) -> bool {
        self.buffered >= self.policy.rows || self.oldest.is_some_and(|t| t.elapsed() >= self.policy.age)
    }

    async fn layout(&mut self, id: u32) -> Result<Arc<Layout>, String> {
        if let Some(l) = self.layouts.get(&id) {
            return Ok(l.clone());
        }
        let json = self.registry.schema_by_id(id).await.map_err(|e| format!("schema id {id}: {e}"))?;
        let layout = Arc::new(Layout::new(&json).map_err(|e| format!("schema id {id}: {e}"))?);
        self.layouts.insert(id, layout.clone());
        Ok(layout)
    }

    /// Buffers a polled batch.
    async fn take(&mut self, messages: Vec<Message>) -> Result<(), WriterError> {
        for m in messages {
            self.next.insert(m.partition, m.offset + 1);
            let Some(value) = &m.value else { continue }; // tombstone
            let (id, body) = match wire::unframe(value) {
                Ok(x) => x,
                Err(e) => {
                    self.dead_letter(&m, &format!("not the Confluent wire format: {e}")).await?;
                    continue;
                }
            };
            let layout = match self.layout(id).await {
                Ok(l) => l,
                Err(reason) => {
                    self.dead_letter(&m, &reason).await?;
                    continue;
                }
            };
            if self.current.as_ref().is_some_and(|(cur, ..)| *cur != id) {
                // A new schema: what is buffered is committed under the old one first.
                self.seal();
                let upto = self.next.clone();
                self.next.insert(m.partition, m.offset); // this record is not in the commit
                self.commit().await?;
                self.next = upto;
                self.current = None;
            }
            let (_, layout, builder) = self.current.get_or_insert_with(|| (id, layout.clone(), layout.batch(8192)));
            match layout.append(body, &self.topic, m.partition as i32, m.offset, builder) {
                Ok(true) => {
                    self.buffered += 1;
                    self.oldest.get_or_insert_with(Instant::now);
                    if builder.rows() >= 8192 {
                        self.seal();
                    }
                }
                Ok(false) => {}
                Err(e) => self.dead_letter(&m, &format!("schema id {id}: {e}")).await?,
            }
            if self.buffered >= self.policy.rows {
                self.commit().await?;
            }
        }
        Ok(())
    }

    /// Moves the rows being built into the finished batches.
    fn seal(&mut self) {
        if let Some((_, layout, builder)) = self.current.as_mut()
            && builder.rows() > 0
        {
            self.batches.push(builder.finish(layout.schema()));
        }
    }

    async fn dead_letter(&mut self, m: &Message, reason: &str) -> Result<(), WriterError> {
        let dlq = format!("{}.dlq", self.topic);
        match self.bus.create_topic(&dlq, 1).await {
            Ok(()) | Err(BusError::TopicExists(_)) => {}
            Err(e) => return Err(self.bus_err(e)),
        }
        let record = Record { key: m.key.clone(), value: m.value.clone(), ..Record::default() }
            .with_header("weir.dlq.reason", reason.to_string())
            .with_header("weir.dlq.topic", self.topic.clone())
            .with_header("weir.dlq.partition", m.partition.to_string())
            .with_header("weir.dlq.offset", m.offset.to_string());
        self.dlq.send(&dlq, vec![record]).await.map_err(|e| self.bus_err(e))?;
        tracing::warn!(topic = %self.topic, partition = m.partition, offset = m.offset, reason, "record sent to the DLQ");
        metrics::counter!("weir_lake_dead_letters_total", "topic" => self.topic.clone()).increment(1);
        self.stats.dead_letters += 1;
        Ok(())
    }

    /// Commits what is buffered, with the partitions' next offsets as `txn` actions.
    async fn commit(&mut self) -> Result<(), WriterError> {
        self.seal();
        let batches = std::mem::take(&mut self.batches);
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let txns: Vec<Transaction> =
            self.next.iter().map(|(&p, &o)| Transaction::new(app_id(&self.topic, p), o)).collect();
        if batches.is_empty() {
            // Nothing to add; offsets past skipped records (tombstones, DLQ) are saved with the
            // next commit that has rows.
            self.oldest = None;
            return Ok(());
        }
        let started = Instant::now();
        let table = self
            .table
            .clone()
            .write(batches)
            .with_save_mode(SaveMode::Append)
            .with_partition_columns(["_date"])
            .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
            .with_commit_properties(CommitProperties::default().with_application_transactions(txns))
            .await
            .map_err(|e| WriterError::Delta {
                topic: self.topic.clone(),
                table: self.table_url.clone(),
                source: Box::new(e),
            })?;
        self.table = table;
        self.buffered = 0;
        self.oldest = None;
        self.stats.rows += rows as u64;
        self.stats.commits += 1;
        metrics::counter!("weir_lake_rows_total", "topic" => self.topic.clone()).increment(rows as u64);
        tracing::info!(topic = %self.topic, rows, version = ?self.table.version(), ms = started.elapsed().as_millis() as u64, "lake commit");
        Ok(())
    }
}
