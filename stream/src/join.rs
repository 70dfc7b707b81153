//! Stream–table joins: the tables a pipeline's events are enriched from. A table is the current
//! state of a Debezium changelog topic (what ingest writes for a source table): each change puts
//! its row under its key (`c`, `u`, `r`), removes it (`d`) or empties the table (`t`).
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
//! table it had and reads on from there.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use deltalake::arrow::{
    array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, new_null_array},
    compute::{cast, filter_record_batch, interleave},
    datatypes::{DataType, Field, Schema},
    ipc::{reader::StreamReader, writer::StreamWriter},
};
use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, TopicPartition};
use weir_schemas::registry::{RegistryError, SchemaRegistry};

use crate::{
    decode::Decoder,
    pipeline::{Format, Join, JoinKind, Source},
};

/// Why a join cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The bus failed.
    #[error("join {topic}: bus: {source}")]
    Bus {
        /// The changelog topic.
        topic: String,
        /// The bus error.
        #[source]
        source: Box<BusError>,
    },
    /// The schema registry could not be reached.
    #[error("join {topic}: schema registry: {source}")]
    Registry {
        /// The changelog topic.
        topic: String,
        /// The registry error.
        #[source]
        source: Box<RegistryError>,
    },
    /// The table or the events do not fit the join as written.
    #[error("join {topic}: {reason}")]
    Mismatch {
        /// The changelog topic.
        topic: String,
        /// What does not fit.
        reason: String,
    },
}

/// A table's part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableSnapshot {
    /// The changelog topic.
    pub topic: String,
    /// Partition → the next offset to read.
    pub next: BTreeMap<u32, i64>,
    /// The live rows as one Arrow IPC stream (base64): `_key` then the added columns; none
    /// before the first change.
    pub rows: Option<String>,
}

/// Chunks are compacted when they hold more than this many rows and twice the live ones…
const COMPACT_AFTER: usize = 4096;
/// …or when there are more than this many (each lookup batch spans them all).
const MAX_CHUNKS: usize = 64;

/// One joined table.
pub struct Table {
    pipeline: String,
    join: Join,
    decoder: Decoder,
    consumer: Box<dyn Consumer>,
    next: BTreeMap<u32, i64>,
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
    /// Opens the table of `join` for pipeline `pipeline`, empty and positioned at the start of
    /// its changelog (see [`Table::restore`]).
    pub async fn open(
        pipeline: &str,
        join: &Join,
        bus: &dyn Bus,
        registry: Option<Arc<dyn SchemaRegistry>>,
    ) -> Result<Table, JoinError> {
        let topic = join.topic.clone();
        let bus_err = |source| JoinError::Bus { topic: topic.clone(), source: Box::new(source) };
        let Some(registry) = registry else {
            return Err(JoinError::Mismatch {
                topic,
                reason: "a changelog's Avro schemas come from the schema registry: none is configured".into(),
            });
        };
        let info = bus.topic(&join.topic).await.map_err(bus_err)?;
        let source = Source {
            topic: join.topic.clone(),
            format: Format::Debezium,
            fields: BTreeMap::new(),
            ops: ["c", "u", "r", "d"].map(String::from).to_vec(),
        };
        let consumer = bus
            .consumer(ConsumerConfig::new(format!("weir-stream-{pipeline}-join-{}", join.topic)))
            .await
            .map_err(bus_err)?;
        Ok(Table {
            pipeline: pipeline.to_string(),
            join: join.clone(),
            decoder: Decoder::new(&source, Some(registry)),
            consumer,
            next: (0..info.partitions).map(|p| (p, 0)).collect(),
            fields: None,
            chunks: Vec::new(),
            stored: 0,
            rows: HashMap::new(),
            changes: 0,
        })
    }

    fn mismatch(&self, reason: impl Into<String>) -> JoinError {
        JoinError::Mismatch { topic: self.join.topic.clone(), reason: reason.into() }
    }

    fn bus_err(&self, source: BusError) -> JoinError {
        JoinError::Bus { topic: self.join.topic.clone(), source: Box::new(source) }
    }

    /// Takes the rows and offsets of a checkpoint (of the same join); call before [`Table::seek`].
    pub fn restore(&mut self, snapshot: TableSnapshot) -> Result<(), JoinError> {
        for (p, n) in snapshot.next {
            self.next.insert(p, n);
        }
        let Some(text) = snapshot.rows else { return Ok(()) };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| self.mismatch(format!("checkpointed rows: {e}")))?;
        let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| self.mismatch(format!("checkpointed rows: {e}")))?;
        for batch in reader {
            let batch = batch.map_err(|e| self.mismatch(format!("checkpointed rows: {e}")))?;
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

    /// Positions the reader at the next change of every partition.
    pub async fn seek(&mut self) -> Result<(), JoinError> {
        let tps: Vec<TopicPartition> =
            self.next.keys().map(|&p| TopicPartition::new(self.join.topic.clone(), p)).collect();
        self.consumer.assign(&tps).await.map_err(|e| self.bus_err(e))?;
        for tp in &tps {
            let next = self.next[&tp.partition];
            self.consumer.seek(tp, next).await.map_err(|e| self.bus_err(e))?;
        }
        Ok(())
    }

    /// The table's part of a checkpoint (compacts it first).
    pub fn snapshot(&mut self) -> Result<TableSnapshot, JoinError> {
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
                let mut bytes = Vec::new();
                let mut writer =
                    StreamWriter::try_new(&mut bytes, &batch.schema()).map_err(|e| self.mismatch(e.to_string()))?;
                writer.write(&batch).map_err(|e| self.mismatch(e.to_string()))?;
                writer.finish().map_err(|e| self.mismatch(e.to_string()))?;
                drop(writer);
                Some(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        };
        Ok(TableSnapshot { topic: self.join.topic.clone(), next: self.next.clone(), rows })
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

    /// Reads the changelog up to the end offsets the bus reports now.
    pub async fn catch_up(&mut self, bus: &dyn Bus) -> Result<(), JoinError> {
        let ends = bus.end_offsets(&self.join.topic).await.map_err(|e| self.bus_err(e))?;
        let behind =
            |next: &BTreeMap<u32, i64>| next.iter().any(|(&p, &n)| ends.get(p as usize).is_some_and(|&end| n < end));
        // A poll that finds nothing while the ends say more is there (records the bus counts but
        // never hands out, as transaction markers) ends the wait after a few tries.
        let mut idle = 0;
        while behind(&self.next) && idle < 5 {
            let polled = self.consumer.poll(Duration::from_millis(100)).await.map_err(|e| self.bus_err(e))?;
            if polled.is_empty() {
                idle += 1;
                continue;
            }
            idle = 0;
            self.apply(&polled).await?;
        }
        if idle == 5 {
            tracing::debug!(topic = %self.join.topic, "changelog end offsets not reached; joining with what was read");
        }
        metrics::gauge!("weir_stream_join_rows", "pipeline" => self.pipeline.clone(), "topic" => self.join.topic.clone())
            .set(self.rows.len() as f64);
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
        for m in messages {
            let next = self.next.entry(m.partition).or_insert(0);
            *next = (*next).max(m.offset + 1);
        }
        self.changes += messages.len() as u64;
        let decoded = self
            .decoder
            .decode(messages)
            .await
            .map_err(|source| JoinError::Registry { topic: self.join.topic.clone(), source: Box::new(source) })?;
        if let Some((i, reason)) = decoded.dead.first() {
            tracing::warn!(topic = %self.join.topic, count = decoded.dead.len(), offset = messages[*i].offset, %reason, "changelog records that cannot be decoded are skipped");
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
        let keys = cast(&column(&self.join.key)?, &DataType::Utf8).map_err(|e| self.mismatch(e.to_string()))?;
        let keys = keys.as_string::<i32>().clone();
        let ops = column("_op")?.as_string::<i32>().clone();
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
                    topic: self.join.topic.clone(),
                    reason: format!("column {}: {e}", f.name()),
                })?;
            }
        }
        let chunk = self.chunks.len();
        self.chunks.push(added);
        self.stored += batch.num_rows();
        for row in 0..batch.num_rows() {
            match ops.is_valid(row).then(|| ops.value(row)) {
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
        let on = batch.column_by_name(&self.join.on).ok_or_else(|| {
            let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            self.mismatch(format!("the events have no column {:?} (they have {})", self.join.on, names.join(", ")))
        })?;
        let on = cast(on, &DataType::Utf8).map_err(|e| self.mismatch(e.to_string()))?;
        let on = on.as_string::<i32>();
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
