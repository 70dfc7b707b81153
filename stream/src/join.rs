//! Stream–table joins: the tables a pipeline's events are enriched from. A table is the current
//! state of a Debezium changelog topic (what ingest writes for a source table): each change puts
//! its row under its key (`c`, `u`, `r`), removes it (`d`) or empties the table (`t`). Or it is a
//! lake table (`current.*`, or a batch view `views.*` a DAG writes), read whole again when a newer
//! version of it is committed (looked for at most every [`EngineConfig::table_refresh`]).
//!
//! An event looks its key up in the table as it stands when the pipeline processes the event (a
//! processing-time lookup join, Flink's `JOIN … FOR SYSTEM_TIME AS OF proc_time`): before each
//! batch of events the table reads its changelog up to the end offsets the bus reports then, so
//! every change written before the events were read is seen by them. Events replayed after a
//! crash see the table as it is at the replay.
//!
//! Rows stay in Arrow column chunks, one per batch of changes read, with a key → (chunk, row)
//! index; events get their columns by `interleave` (no value is copied one by one), and chunks
//! are compacted once most of their rows are stale. A checkpoint holds the table's live rows
//! (Arrow IPC) with the changelog offsets after them, so a restored pipeline joins against the
//! table it had and reads on from there; a lake table's checkpoint is its version (it is read
//! again on restore).
//!
//! [`EngineConfig::table_refresh`]: crate::engine::EngineConfig::table_refresh

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use deltalake::arrow::{
    array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, new_null_array},
    compute::{cast, filter_record_batch, interleave},
    datatypes::{DataType, Field, Schema},
};
use deltalake::datafusion::{error::DataFusionError, prelude::SessionContext};
use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, TopicPartition};
use weir_lake::{Lake, catalog::LakeError};
use weir_schemas::registry::{RegistryError, SchemaRegistry};

use crate::{
    decode::Decoder,
    pipeline::{Format, Join, JoinKind, Source, TableRef},
};

/// Why a join cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The bus failed.
    #[error("join {table}: bus: {source}")]
    Bus {
        /// The table.
        table: String,
        /// The bus error.
        #[source]
        source: Box<BusError>,
    },
    /// The schema registry could not be reached.
    #[error("join {table}: schema registry: {source}")]
    Registry {
        /// The table.
        table: String,
        /// The registry error.
        #[source]
        source: Box<RegistryError>,
    },
    /// The table or the events do not fit the join as written.
    #[error("join {table}: {reason}")]
    Mismatch {
        /// The table.
        table: String,
        /// What does not fit.
        reason: String,
    },
}

/// A table's part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// The changelog topic or lake table.
    pub topic: String,
    /// Partition → the next offset to read (changelogs).
    pub next: BTreeMap<u32, i64>,
    /// The live rows as one Arrow IPC stream (base64): `_key` then the added columns; none
    /// before the first change, nor for a lake table (read again on restore).
    pub rows: Option<String>,
    /// The lake table's version the rows were read from.
    #[serde(default)]
    pub version: Option<u64>,
}

/// Chunks are compacted when they hold more than this many rows and twice the live ones…
const COMPACT_AFTER: usize = 4096;
/// …or when there are more than this many (each lookup batch spans them all).
const MAX_CHUNKS: usize = 64;

/// Where a table's rows come from, and how far they were read.
enum Reader {
    Changelog {
        decoder: Decoder,
        consumer: Box<dyn Consumer>,
        /// Partition → the next offset to read.
        next: BTreeMap<u32, i64>,
    },
    Lake {
        lake: Lake,
        /// The version read.
        version: Option<u64>,
        /// When the lake was last asked for a newer version, and how often to ask.
        checked: Option<Instant>,
        every: Duration,
        /// Whether the log said the table has no commit yet.
        missing_told: bool,
    },
}

/// One joined table.
pub struct Table {
    pipeline: String,
    join: Join,
    /// The topic or lake table.
    name: String,
    reader: Reader,
    /// The added columns as events get them (named as in the events), known from the first
    /// change read or from the checkpoint.
    fields: Option<Vec<Field>>,
    /// Column chunks; chunk 0 is one row of nulls (what a missing key gets).
    chunks: Vec<Vec<ArrayRef>>,
    /// Rows in the chunks after chunk 0.
    stored: usize,
    /// Key (as text) → (chunk, row).
    rows: HashMap<String, (usize, usize)>,
    /// Changes read since the table was opened.
    changes: u64,
}

impl Table {
    /// Opens the table of `join` for pipeline `pipeline`, empty: a changelog positioned at its
    /// start (see [`Table::restore`]), a lake table read by the first [`Table::catch_up`] and
    /// looked at again every `refresh`.
    pub async fn open(
        pipeline: &str,
        join: &Join,
        bus: &dyn Bus,
        registry: Option<Arc<dyn SchemaRegistry>>,
        lake: &Lake,
        refresh: Duration,
    ) -> Result<Table, JoinError> {
        let name = join.table.name().to_string();
        let reader = match &join.table {
            TableRef::Lake(_) => {
                Reader::Lake { lake: lake.clone(), version: None, checked: None, every: refresh, missing_told: false }
            }
            TableRef::Changelog(topic) => {
                let bus_err = |source| JoinError::Bus { table: name.clone(), source: Box::new(source) };
                let Some(registry) = registry else {
                    return Err(JoinError::Mismatch {
                        table: name,
                        reason: "a changelog's Avro schemas come from the schema registry: none is configured".into(),
                    });
                };
                let info = bus.topic(topic).await.map_err(bus_err)?;
                let source = Source {
                    topic: topic.clone(),
                    format: Format::Debezium,
                    fields: BTreeMap::new(),
                    ops: ["c", "u", "r", "d"].map(String::from).to_vec(),
                };
                let consumer = bus
                    .consumer(ConsumerConfig::new(format!("weir-stream-{pipeline}-join-{topic}")))
                    .await
                    .map_err(bus_err)?;
                Reader::Changelog {
                    decoder: Decoder::new(&source, Some(registry)),
                    consumer,
                    next: (0..info.partitions).map(|p| (p, 0)).collect(),
                }
            }
        };
        Ok(Table {
            pipeline: pipeline.to_string(),
            join: join.clone(),
            name,
            reader,
            fields: None,
            chunks: Vec::new(),
            stored: 0,
            rows: HashMap::new(),
            changes: 0,
        })
    }

    fn mismatch(&self, reason: impl Into<String>) -> JoinError {
        JoinError::Mismatch { table: self.name.clone(), reason: reason.into() }
    }

    fn bus_err(&self, source: BusError) -> JoinError {
        JoinError::Bus { table: self.name.clone(), source: Box::new(source) }
    }

    /// Takes the rows and offsets of a checkpoint (of the same join); call before [`Table::seek`].
    /// A lake table is read again instead.
    pub fn restore(&mut self, snapshot: TableSnapshot) -> Result<(), JoinError> {
        let Reader::Changelog { next, .. } = &mut self.reader else { return Ok(()) };
        for (p, n) in snapshot.next {
            next.insert(p, n);
        }
        let Some(text) = snapshot.rows else { return Ok(()) };
        let batches = crate::ipc::decode(&text).map_err(|e| self.mismatch(format!("checkpointed rows: {e}")))?;
        for batch in batches {
            let schema = batch.schema();
            let fields: Vec<Field> = schema.fields().iter().skip(1).map(|f| f.as_ref().clone()).collect();
            self.start(fields);
            let keys = batch.column(0).as_string::<i32>().clone();
            let chunk = self.chunks.len();
            self.chunks.push(batch.columns()[1..].to_vec());
            self.stored += batch.num_rows();
            for (row, key) in keys.iter().enumerate() {
                if let Some(key) = key {
                    self.rows.insert(key.to_string(), (chunk, row));
                }
            }
        }
        Ok(())
    }

    /// Positions a changelog's reader at the next change of every partition.
    pub async fn seek(&mut self) -> Result<(), JoinError> {
        let Reader::Changelog { consumer, next, .. } = &mut self.reader else { return Ok(()) };
        let tps: Vec<TopicPartition> = next.keys().map(|&p| TopicPartition::new(self.name.clone(), p)).collect();
        let bus_err = |source| JoinError::Bus { table: self.name.clone(), source: Box::new(source) };
        consumer.assign(&tps).await.map_err(bus_err)?;
        for tp in &tps {
            consumer.seek(tp, next[&tp.partition]).await.map_err(bus_err)?;
        }
        Ok(())
    }

    /// The table's part of a checkpoint (compacts it first).
    pub fn snapshot(&mut self) -> Result<TableSnapshot, JoinError> {
        let (next, version) = match &self.reader {
            Reader::Changelog { next, .. } => (next.clone(), None),
            Reader::Lake { version, .. } => {
                return Ok(TableSnapshot {
                    topic: self.name.clone(),
                    next: BTreeMap::new(),
                    rows: None,
                    version: *version,
                });
            }
        };
        self.compact()?;
        let rows = match &self.fields {
            None => None,
            Some(fields) => {
                let mut keys: Vec<(&String, &(usize, usize))> = self.rows.iter().collect();
                keys.sort_by_key(|(_, at)| **at);
                let mut columns: Vec<ArrayRef> =
                    vec![Arc::new(StringArray::from_iter_values(keys.iter().map(|(k, _)| k.as_str())))];
                let at: Vec<(usize, usize)> = keys.iter().map(|(_, at)| **at).collect();
                columns.extend(self.take(&at)?);
                let mut schema_fields = vec![Field::new("_key", DataType::Utf8, false)];
                schema_fields.extend(fields.iter().cloned());
                let batch = RecordBatch::try_new(Arc::new(Schema::new(schema_fields)), columns)
                    .map_err(|e| self.mismatch(e.to_string()))?;
                Some(crate::ipc::encode(&batch).map_err(|e| self.mismatch(e))?)
            }
        };
        Ok(TableSnapshot { topic: self.name.clone(), next, rows, version })
    }

    /// Rows held now.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Changes read since the table was opened.
    pub fn changes_read(&self) -> u64 {
        self.changes
    }

    /// Brings the table up to date: a changelog read up to the end offsets the bus reports now,
    /// a lake table read again if a newer version was committed.
    pub async fn catch_up(&mut self, bus: &dyn Bus) -> Result<(), JoinError> {
        if matches!(self.reader, Reader::Lake { .. }) {
            self.refresh_from_lake().await?;
        } else {
            self.read_changelog(bus).await?;
        }
        metrics::gauge!("weir_stream_join_rows", "pipeline" => self.pipeline.clone(), "table" => self.name.clone())
            .set(self.rows.len() as f64);
        Ok(())
    }

    async fn read_changelog(&mut self, bus: &dyn Bus) -> Result<(), JoinError> {
        let ends = bus.end_offsets(&self.name).await.map_err(|e| self.bus_err(e))?;
        let behind = |reader: &Reader| match reader {
            Reader::Changelog { next, .. } => {
                next.iter().any(|(&p, &n)| ends.get(p as usize).is_some_and(|&end| n < end))
            }
            Reader::Lake { .. } => false,
        };
        // A poll that finds nothing while the ends say more is there (records the bus counts but
        // never hands out, as transaction markers) ends the wait after a few tries.
        let mut idle = 0;
        while behind(&self.reader) && idle < 5 {
            let Reader::Changelog { consumer, .. } = &mut self.reader else { break };
            let polled = consumer.poll(Duration::from_millis(100)).await;
            let polled = polled.map_err(|e| self.bus_err(e))?;
            if polled.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            self.apply(&polled).await?;
        }
        if idle == 5 {
            tracing::debug!(table = %self.name, "changelog end offsets not reached; joining with what was read");
        }
        Ok(())
    }

    /// Reads the lake table again when a version newer than the one read is there (asking at
    /// most every `every`).
    async fn refresh_from_lake(&mut self) -> Result<(), JoinError> {
        let Reader::Lake { lake, version, checked, every, missing_told } = &mut self.reader else { return Ok(()) };
        if checked.is_some_and(|at| at.elapsed() < *every) {
            return Ok(());
        }
        *checked = Some(Instant::now());
        let (lake, read) = (lake.clone(), *version);
        let lake_err = |e: LakeError| JoinError::Mismatch { table: self.name.clone(), reason: e.to_string() };
        let latest = lake.latest_version(&self.name, read).await.map_err(lake_err)?;
        if latest.is_none() && !std::mem::replace(missing_told, true) {
            tracing::warn!(pipeline = %self.pipeline, table = %self.name, "the joined lake table has no commit yet: events find no row until it has");
        }
        let Some(latest) = latest.filter(|&v| Some(v) != read) else { return Ok(()) };
        let table = lake.open(&self.name, Some(latest)).await.map_err(lake_err)?;
        let query_err = |e: DataFusionError| JoinError::Mismatch { table: self.name.clone(), reason: e.to_string() };
        let provider = table
            .table_provider()
            .await
            .map_err(|e| JoinError::Mismatch { table: self.name.clone(), reason: e.to_string() })?;
        let mut wanted: Vec<&str> = self.join.key.iter().map(String::as_str).collect();
        wanted.extend(self.join.columns.iter().map(|(from, _)| from.as_str()));
        let batches = SessionContext::new()
            .read_table(provider)
            .and_then(|df| df.select_columns(&wanted))
            .map_err(query_err)?
            .collect()
            .await
            .map_err(query_err)?;
        self.rows.clear();
        self.chunks.truncate(1);
        self.stored = 0;
        for batch in &batches {
            self.changes += batch.num_rows() as u64;
            self.apply_batch(batch)?;
        }
        self.compact()?;
        if let Reader::Lake { version, .. } = &mut self.reader {
            *version = Some(latest);
        }
        tracing::info!(pipeline = %self.pipeline, table = %self.name, version = latest, rows = self.rows.len(), "read the joined lake table");
        Ok(())
    }

    fn start(&mut self, fields: Vec<Field>) {
        if self.fields.is_none() {
            self.chunks = vec![fields.iter().map(|f| new_null_array(f.data_type(), 1)).collect()];
            self.fields = Some(fields);
        }
    }

    /// Applies changes read from the changelog.
    async fn apply(&mut self, messages: &[Message]) -> Result<(), JoinError> {
        let Reader::Changelog { decoder, next, .. } = &mut self.reader else { return Ok(()) };
        for m in messages {
            let next = next.entry(m.partition).or_insert(0);
            *next = (*next).max(m.offset + 1);
        }
        self.changes += messages.len() as u64;
        let decoded = decoder
            .decode(messages)
            .await
            .map_err(|source| JoinError::Registry { table: self.name.clone(), source: Box::new(source) })?;
        if let Some((i, reason)) = decoded.dead.first() {
            tracing::warn!(table = %self.name, count = decoded.dead.len(), offset = messages[*i].offset, %reason, "changelog records that cannot be decoded are skipped");
        }
        for d in decoded.batches {
            self.apply_batch(&d.batch)?;
        }
        Ok(())
    }

    fn apply_batch(&mut self, batch: &RecordBatch) -> Result<(), JoinError> {
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
                self.mismatch(format!("the table has no column {name:?} (it has {})", names.join(", ")))
            })
        };
        let keys = key_text(batch, &self.join.key).map_err(|e| self.mismatch(format!("the table: {e}")))?;
        // A lake table's rows have no operation: each is the row of its key.
        let ops = batch.column_by_name("_op").map(|ops| ops.as_string::<i32>().clone());
        let mut added: Vec<ArrayRef> = Vec::new();
        for (from, _) in &self.join.columns {
            added.push(column(from)?);
        }
        let fields: Vec<Field> = self
            .join
            .columns
            .iter()
            .zip(&added)
            .map(|((_, name), a)| Field::new(name, a.data_type().clone(), true))
            .collect();
        self.start(fields);
        // A column whose type changed since the first change (schema evolution) is cast to the
        // first one's type.
        let wanted = self.fields.as_ref().expect("started");
        for (a, f) in added.iter_mut().zip(wanted) {
            if a.data_type() != f.data_type() {
                *a = cast(a, f.data_type()).map_err(|e| JoinError::Mismatch {
                    table: self.name.clone(),
                    reason: format!("column {}: {e}", f.name()),
                })?;
            }
        }
        let chunk = self.chunks.len();
        self.chunks.push(added);
        self.stored += batch.num_rows();
        for row in 0..batch.num_rows() {
            match ops.as_ref().and_then(|ops| ops.is_valid(row).then(|| ops.value(row))) {
                Some("t") => self.rows.clear(),
                Some("d") if keys.is_valid(row) => {
                    self.rows.remove(keys.value(row));
                }
                Some("d") => {}
                _ if keys.is_valid(row) => {
                    self.rows.insert(keys.value(row).to_string(), (chunk, row));
                }
                _ => {}
            }
        }
        if self.chunks.len() > MAX_CHUNKS || self.stored > COMPACT_AFTER && self.stored > 2 * self.rows.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// The added columns of the rows at `at` ((chunk, row) each).
    fn take(&self, at: &[(usize, usize)]) -> Result<Vec<ArrayRef>, JoinError> {
        let width = self.fields.as_ref().map_or(0, Vec::len);
        (0..width)
            .map(|c| {
                let arrays: Vec<&dyn Array> = self.chunks.iter().map(|chunk| chunk[c].as_ref()).collect();
                interleave(&arrays, at).map_err(|e| self.mismatch(e.to_string()))
            })
            .collect()
    }

    /// Rewrites the chunks as one holding only the live rows.
    fn compact(&mut self) -> Result<(), JoinError> {
        if self.fields.is_none() || self.chunks.len() <= 2 && self.stored == self.rows.len() {
            return Ok(());
        }
        let mut keys: Vec<(String, (usize, usize))> = self.rows.drain().collect();
        keys.sort_by_key(|(_, at)| *at);
        let at: Vec<(usize, usize)> = keys.iter().map(|(_, at)| *at).collect();
        let live = self.take(&at)?;
        self.chunks.truncate(1);
        self.chunks.push(live);
        self.stored = keys.len();
        self.rows = keys.into_iter().enumerate().map(|(row, (key, _))| (key, (1, row))).collect();
        Ok(())
    }

    /// `batch` with the table's columns added; with an inner join, the rows whose key the table
    /// holds (`Some(mask)` says which of `batch`'s rows are kept).
    pub fn enrich(&self, batch: &RecordBatch) -> Result<(RecordBatch, Option<BooleanArray>), JoinError> {
        let on = key_text(batch, &self.join.on).map_err(|e| self.mismatch(format!("the events: {e}")))?;
        let at: Vec<(usize, usize)> = (0..batch.num_rows())
            .map(|row| if on.is_valid(row) { self.rows.get(on.value(row)).copied().unwrap_or((0, 0)) } else { (0, 0) })
            .collect();
        let mut fields: Vec<Field> = batch.schema_ref().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = batch.columns().to_vec();
        match &self.fields {
            Some(added) => {
                columns.extend(self.take(&at)?);
                fields.extend(added.iter().cloned());
            }
            // Nothing read yet: no row to find, and no type known for the columns.
            None => {
                for (_, name) in &self.join.columns {
                    columns.push(new_null_array(&DataType::Utf8, batch.num_rows()));
                    fields.push(Field::new(name, DataType::Utf8, true));
                }
            }
        }
        for (_, name) in &self.join.columns {
            if batch.schema_ref().column_with_name(name).is_some() {
                return Err(self.mismatch(format!(
                    "column {name:?} is an event column too: add it under another name (columns: {{{name}: <new name>}})"
                )));
            }
        }
        let enriched =
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| self.mismatch(e.to_string()))?;
        match self.join.kind {
            JoinKind::Left => Ok((enriched, None)),
            JoinKind::Inner => {
                let mask: BooleanArray = at.iter().map(|&(chunk, _)| Some(chunk != 0)).collect();
                let kept = filter_record_batch(&enriched, &mask).map_err(|e| self.mismatch(e.to_string()))?;
                Ok((kept, Some(mask)))
            }
        }
    }
}

/// The key of each row of `batch` as text: the `columns`' values cast to text, joined by the
/// unit separator (U+001F) when there are several; null when one of them is.
pub(crate) fn key_text(batch: &RecordBatch, columns: &[String]) -> Result<StringArray, String> {
    let mut texts = Vec::new();
    for name in columns {
        let column = batch.column_by_name(name).ok_or_else(|| {
            let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            format!("no column {name:?} (there are {})", names.join(", "))
        })?;
        let text = cast(column, &DataType::Utf8).map_err(|e| format!("column {name}: {e}"))?;
        texts.push(text.as_string::<i32>().clone());
    }
    if let [one] = texts.as_slice() {
        return Ok(one.clone());
    }
    Ok((0..batch.num_rows())
        .map(|row| {
            if texts.iter().any(|t| t.is_null(row)) {
                return None;
            }
            Some(texts.iter().map(|t| t.value(row)).collect::<Vec<_>>().join("\u{1f}"))
        })
        .collect())
}
