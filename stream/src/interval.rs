//! Stream–stream interval joins: each event of a pipeline's source meets the events of another
//! topic with the same key whose time lies within `[event time − before, event time + after]`
//! (Flink SQL's interval join: `s.t BETWEEN o.t - INTERVAL … AND o.t + INTERVAL …`).
//!
//! An event is held until the other stream's watermark has passed its time + `after`: every
//! event of the other stream that can match it has come by then (later ones are late there), so
//! it is joined once, with all its matches, and goes into its windows then — one row per match;
//! an inner join drops an event without one (counted as unjoined), a left join keeps it once
//! with nulls. Results stay final: the pipeline's watermark is the smaller of its source's and
//! the other stream's minus `after`, so no window closes before its events are released.
//!
//! The other stream's events are kept (their selected columns, in Arrow chunks indexed by key)
//! until no event still to come can match them: none held, and none the windows would still
//! accept. A checkpoint holds the held events, the kept rows and the other topic's offsets
//! (Arrow IPC, base64), so a restored pipeline joins as if it had not stopped.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Instant,
};

use deltalake::arrow::{
    array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt32Array, new_null_array},
    compute::{cast, interleave, take},
    datatypes::{DataType, Field, Int64Type, Schema, SchemaRef},
};
use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, TopicPartition};
use weir_schemas::registry::SchemaRegistry;

use crate::{
    decode::Decoder,
    eval::TimeOf,
    join::key_text,
    pipeline::{IntervalJoin, JoinKind, Watermark},
};

/// Why an interval join cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum IntervalError {
    /// The bus failed.
    #[error("interval join with {topic}: bus: {source}")]
    Bus {
        /// The other topic.
        topic: String,
        /// The bus error.
        #[source]
        source: Box<BusError>,
    },
    /// The other stream's rows or a checkpoint do not fit the join.
    #[error("interval join with {topic}: {reason}")]
    Mismatch {
        /// The other topic.
        topic: String,
        /// What does not fit.
        reason: String,
    },
}

/// An interval join's part of a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IntervalSnapshot {
    /// The other topic's partitions: the next offset to read and the largest event time seen.
    pub partitions: BTreeMap<u32, (i64, Option<i64>)>,
    /// The other stream's watermark.
    pub watermark: i64,
    /// The other stream's kept rows, one Arrow IPC stream (base64): `_key`, `_time`, then the
    /// selected columns.
    pub rows: Option<String>,
    /// The held events, one Arrow IPC stream per chunk (base64): `_key`, `_time`, then the
    /// event's columns.
    pub held: Vec<String>,
}

/// One partition of the other topic.
struct Clock {
    next: i64,
    max_time: Option<i64>,
    last_seen: Instant,
}

/// A chunk of rows and how many of them are still wanted.
struct Chunk {
    batch: RecordBatch,
    live: usize,
}

/// A held event: its chunk and row, time and key (none: a null key, which matches nothing).
struct Held {
    chunk: u64,
    row: u32,
    time: i64,
    key: Option<String>,
}

/// Per chunk of held events: their rows, and for each the (source, row) of the other stream's
/// columns to put beside it.
type Picks = (Vec<u32>, Vec<(usize, usize)>);

/// The joined rows of one release.
pub struct Released {
    /// Events with their matches' columns, one row per match (or one with nulls, left joins).
    pub batches: Vec<RecordBatch>,
    /// Events an inner join dropped for want of a match.
    pub unjoined: u64,
}

/// One pipeline's interval join.
pub struct Interval {
    spec: IntervalJoin,
    decoder: Decoder,
    consumer: Box<dyn Consumer>,
    clocks: BTreeMap<u32, Clock>,
    /// The other stream's watermark.
    watermark: i64,
    left_time: Option<TimeOf>,
    right_time: Option<TimeOf>,
    /// The selected columns of the other stream, as the first rows had them (later ones are
    /// cast to these types).
    fields: Option<Vec<Field>>,
    rows: BTreeMap<u64, Chunk>,
    /// Key → the kept rows of the other stream: (chunk, row, time).
    index: HashMap<String, Vec<(u64, u32, i64)>>,
    held_chunks: BTreeMap<u64, Chunk>,
    held: Vec<Held>,
    next_chunk: u64,
}

impl Interval {
    /// Opens the join's reader of the other topic (every partition, from its start until
    /// [`Interval::restore`] says otherwise).
    pub async fn open(
        pipeline: &str,
        spec: IntervalJoin,
        bus: &dyn Bus,
        registry: Option<Arc<dyn SchemaRegistry>>,
    ) -> Result<Interval, IntervalError> {
        let topic = spec.stream.topic.clone();
        let bus_err = |source| IntervalError::Bus { topic: topic.clone(), source: Box::new(source) };
        let info = bus.topic(&topic).await.map_err(bus_err)?;
        let consumer = bus
            .consumer(ConsumerConfig::new(format!("weir-stream-{pipeline}-interval-{topic}")))
            .await
            .map_err(bus_err)?;
        let clocks =
            (0..info.partitions).map(|n| (n, Clock { next: 0, max_time: None, last_seen: Instant::now() })).collect();
        Ok(Interval {
            decoder: Decoder::new(&spec.stream, registry),
            spec,
            consumer,
            clocks,
            watermark: i64::MIN,
            left_time: None,
            right_time: None,
            fields: None,
            rows: BTreeMap::new(),
            index: HashMap::new(),
            held_chunks: BTreeMap::new(),
            held: Vec::new(),
            next_chunk: 0,
        })
    }

    fn mismatch(&self, reason: impl std::fmt::Display) -> IntervalError {
        IntervalError::Mismatch { topic: self.spec.stream.topic.clone(), reason: reason.to_string() }
    }

    fn bus_err(&self, source: BusError) -> IntervalError {
        IntervalError::Bus { topic: self.spec.stream.topic.clone(), source: Box::new(source) }
    }

    /// The join as written.
    pub fn spec(&self) -> &IntervalJoin {
        &self.spec
    }

    /// The other stream's watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Events held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Rows of the other stream kept now.
    pub fn kept(&self) -> usize {
        self.rows.values().map(|c| c.live).sum()
    }

    /// Positions the reader at the next record of every partition of the other topic.
    pub async fn seek(&mut self) -> Result<(), IntervalError> {
        let topic = self.spec.stream.topic.clone();
        let tps: Vec<TopicPartition> = self.clocks.keys().map(|&p| TopicPartition::new(topic.clone(), p)).collect();
        self.consumer.assign(&tps).await.map_err(|e| self.bus_err(e))?;
        for tp in &tps {
            let next = self.clocks[&tp.partition].next;
            self.consumer.seek(tp, next).await.map_err(|e| self.bus_err(e))?;
        }
        Ok(())
    }

    /// Reads what the other topic has now (no wait).
    pub async fn poll(&mut self) -> Result<Vec<Message>, IntervalError> {
        let polled = self.consumer.poll(std::time::Duration::ZERO).await;
        polled.map_err(|e| self.bus_err(e))
    }

    /// Keeps the other stream's `messages`; returns those that cannot be joined, with why
    /// (their index in `messages`).
    pub async fn take_other(
        &mut self,
        pipeline: &str,
        messages: &[Message],
    ) -> Result<Vec<(usize, String)>, IntervalError> {
        let now = Instant::now();
        for m in messages {
            if let Some(c) = self.clocks.get_mut(&m.partition) {
                c.next = c.next.max(m.offset + 1);
                c.last_seen = now;
            }
        }
        let polled = self.decoder.decode(messages).await.map_err(|e| self.mismatch(format!("schema registry: {e}")))?;
        let mut dead = polled.dead;
        for d in polled.batches {
            if self.right_time.as_ref().is_none_or(|t| t.schema() != &d.batch.schema()) {
                let time = TimeOf::new(pipeline, "interval_join.time", &self.spec.time, d.batch.schema())
                    .map_err(|e| self.mismatch(e))?;
                self.right_time = Some(time);
            }
            let times =
                self.right_time.as_ref().expect("compiled above").times(&d.batch).map_err(|e| self.mismatch(e))?;
            let keys = key_text(&d.batch, &self.spec.key).map_err(|e| self.mismatch(format!("key: {e}")))?;
            let columns = self.select(&d.batch)?;
            let chunk = self.next_chunk;
            let mut live = 0;
            for (row, &msg) in d.rows.iter().enumerate() {
                let (Some(t), Some(key)) = (times[row], keys.is_valid(row).then(|| keys.value(row))) else {
                    let what = if times[row].is_none() { "time" } else { "key" };
                    dead.push((msg, format!("interval join: the event's {what} is null")));
                    continue;
                };
                if let Some(c) = self.clocks.get_mut(&messages[msg].partition) {
                    c.max_time = Some(c.max_time.map_or(t, |m| m.max(t)));
                }
                self.index.entry(key.to_string()).or_default().push((chunk, row as u32, t));
                live += 1;
            }
            if live > 0 {
                self.next_chunk += 1;
                self.rows.insert(chunk, Chunk { batch: columns, live });
            }
        }
        Ok(dead)
    }

    /// The selected columns of the other stream's `batch`, cast to the types the first rows had.
    fn select(&mut self, batch: &RecordBatch) -> Result<RecordBatch, IntervalError> {
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (i, (column, name)) in self.spec.columns.iter().enumerate() {
            let Some(array) = batch.column_by_name(column) else {
                let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
                return Err(self.mismatch(format!("no column {column:?} (there are {})", names.join(", "))));
            };
            let ty = self.fields.as_ref().map_or_else(|| array.data_type().clone(), |f| f[i].data_type().clone());
            let array = cast(array, &ty).map_err(|e| self.mismatch(format!("column {column}: {e}")))?;
            fields.push(Field::new(name, ty, true));
            columns.push(array);
        }
        self.fields.get_or_insert_with(|| fields.clone());
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| self.mismatch(e))
    }

    /// Holds the rows `rows` (row, event time) of source events `batch` until they can be
    /// joined.
    pub fn hold(&mut self, batch: &RecordBatch, rows: &[(usize, i64)]) -> Result<(), IntervalError> {
        if rows.is_empty() {
            return Ok(());
        }
        let keys = key_text(batch, &self.spec.on).map_err(|e| self.mismatch(format!("on: {e}")))?;
        let chunk = self.next_chunk;
        self.next_chunk += 1;
        for &(row, time) in rows {
            let key = keys.is_valid(row).then(|| keys.value(row).to_string());
            self.held.push(Held { chunk, row: row as u32, time, key });
        }
        self.held_chunks.insert(chunk, Chunk { batch: batch.clone(), live: rows.len() });
        Ok(())
    }

    /// The event time of source events `batch` (of the pipeline's `event_time`), compiled for
    /// its schema once.
    pub fn left_times(
        &mut self,
        pipeline: &str,
        expr: &str,
        batch: &RecordBatch,
    ) -> Result<Vec<Option<i64>>, IntervalError> {
        if self.left_time.as_ref().is_none_or(|t| t.schema() != &batch.schema()) {
            let time = TimeOf::new(pipeline, "event_time", expr, batch.schema()).map_err(|e| self.mismatch(e))?;
            self.left_time = Some(time);
        }
        self.left_time.as_ref().expect("compiled above").times(batch).map_err(|e| self.mismatch(e))
    }

    /// Moves the other stream's watermark as a pipeline's moves over its source (`w`'s
    /// out-of-orderness and idle timeout).
    pub fn advance(&mut self, w: &Watermark, now_ms: i64) -> i64 {
        let idle = w.idle_timeout;
        let ooo = w.max_out_of_orderness.as_millis() as i64;
        let active: Vec<&Clock> = self.clocks.values().filter(|c| c.last_seen.elapsed() < idle).collect();
        let candidate = if active.is_empty() {
            now_ms - idle.as_millis() as i64
        } else if active.iter().any(|c| c.max_time.is_none()) {
            i64::MIN
        } else {
            active.iter().filter_map(|c| c.max_time).min().map_or(i64::MIN, |t| t - ooo)
        };
        self.watermark = self.watermark.max(candidate);
        self.watermark
    }

    /// The earliest time of a held event.
    pub fn earliest_held(&self) -> Option<i64> {
        self.held.iter().map(|h| h.time).min()
    }

    /// Joins and lets go of every held event whose time + `after` the other stream's watermark
    /// has passed.
    pub fn release(&mut self) -> Result<Released, IntervalError> {
        let after = self.spec.after.as_millis() as i64;
        let before = self.spec.before.as_millis() as i64;
        let wm = self.watermark;
        let (ready, kept): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.time.saturating_add(after) <= wm);
        self.held = kept;
        let mut out = Released { batches: Vec::new(), unjoined: 0 };
        if ready.is_empty() {
            return Ok(out);
        }
        let fields = self.fields.clone().unwrap_or_else(|| {
            self.spec.columns.iter().map(|(_, name)| Field::new(name, DataType::Null, true)).collect()
        });
        // Chunk 0 of the sources interleaved is one row of nulls (a left join's unmatched event).
        let nulls: Vec<ArrayRef> = fields.iter().map(|f| new_null_array(f.data_type(), 1)).collect();
        let chunk_ids: Vec<u64> = self.rows.keys().copied().collect();
        let at: HashMap<u64, usize> = chunk_ids.iter().enumerate().map(|(i, &c)| (c, i + 1)).collect();
        let mut by_chunk: BTreeMap<u64, Picks> = BTreeMap::new();
        for h in &ready {
            let (left, right) = by_chunk.entry(h.chunk).or_default();
            let matches = h
                .key
                .as_ref()
                .and_then(|k| self.index.get(k))
                .into_iter()
                .flatten()
                .filter(|(_, _, t)| *t >= h.time.saturating_sub(before) && *t <= h.time.saturating_add(after));
            let mut any = false;
            for &(chunk, row, _) in matches {
                left.push(h.row);
                right.push((at[&chunk], row as usize));
                any = true;
            }
            if !any {
                match self.spec.kind {
                    JoinKind::Inner => out.unjoined += 1,
                    JoinKind::Left => {
                        left.push(h.row);
                        right.push((0, 0));
                    }
                }
            }
        }
        for (chunk, (left, right)) in by_chunk {
            let events = &self.held_chunks[&chunk].batch;
            if !left.is_empty() {
                let rows = UInt32Array::from(left);
                let mut columns: Vec<ArrayRef> = events
                    .columns()
                    .iter()
                    .map(|c| take(c.as_ref(), &rows, None))
                    .collect::<Result<_, _>>()
                    .map_err(|e| self.mismatch(e))?;
                let mut schema_fields: Vec<Field> =
                    events.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                for (i, field) in fields.iter().enumerate() {
                    if schema_fields.iter().any(|f| f.name() == field.name()) {
                        return Err(self.mismatch(format!(
                            "column {:?} is in both streams: name it otherwise in `columns`",
                            field.name()
                        )));
                    }
                    let mut sources: Vec<&dyn Array> = vec![nulls[i].as_ref()];
                    sources.extend(chunk_ids.iter().map(|c| self.rows[c].batch.column(i).as_ref()));
                    columns.push(interleave(&sources, &right).map_err(|e| self.mismatch(e))?);
                    schema_fields.push(field.clone());
                }
                let batch = RecordBatch::try_new(Arc::new(Schema::new(schema_fields)), columns)
                    .map_err(|e| self.mismatch(e))?;
                out.batches.push(batch);
            }
        }
        for h in &ready {
            if let Some(c) = self.held_chunks.get_mut(&h.chunk) {
                c.live -= 1;
                if c.live == 0 {
                    self.held_chunks.remove(&h.chunk);
                }
            }
        }
        Ok(out)
    }

    /// Lets go of the other stream's rows older than `horizon` − `before`: no event held or
    /// still to come can match them (`horizon` is the earliest time such an event can have).
    pub fn expire(&mut self, horizon: i64) {
        let oldest = horizon.saturating_sub(self.spec.before.as_millis() as i64);
        let rows = &mut self.rows;
        self.index.retain(|_, list| {
            list.retain(|&(chunk, _, t)| {
                if t >= oldest {
                    return true;
                }
                if let Some(c) = rows.get_mut(&chunk) {
                    c.live -= 1;
                    if c.live == 0 {
                        rows.remove(&chunk);
                    }
                }
                false
            });
            !list.is_empty()
        });
    }

    /// The join's part of a checkpoint.
    pub fn snapshot(&self) -> Result<IntervalSnapshot, IntervalError> {
        let partitions = self.clocks.iter().map(|(&p, c)| (p, (c.next, c.max_time))).collect();
        let rows = match &self.fields {
            None => None,
            Some(fields) => {
                let mut entries: Vec<(&String, u64, u32, i64)> =
                    self.index.iter().flat_map(|(k, list)| list.iter().map(move |&(c, r, t)| (k, c, r, t))).collect();
                entries.sort_by_key(|&(_, c, r, _)| (c, r));
                let chunk_ids: Vec<u64> = self.rows.keys().copied().collect();
                let at: HashMap<u64, usize> = chunk_ids.iter().enumerate().map(|(i, &c)| (c, i)).collect();
                let picks: Vec<(usize, usize)> = entries.iter().map(|&(_, c, r, _)| (at[&c], r as usize)).collect();
                let mut columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.0.as_str()))),
                    Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.3))),
                ];
                for (i, field) in fields.iter().enumerate() {
                    let sources: Vec<&dyn Array> =
                        chunk_ids.iter().map(|c| self.rows[c].batch.column(i).as_ref()).collect();
                    let column = if sources.is_empty() {
                        new_null_array(field.data_type(), 0)
                    } else {
                        interleave(&sources, &picks).map_err(|e| self.mismatch(e))?
                    };
                    columns.push(column);
                }
                Some(self.ipc(fields, columns)?)
            }
        };
        let mut held = Vec::new();
        for (&chunk, c) in &self.held_chunks {
            let mine: Vec<&Held> = self.held.iter().filter(|h| h.chunk == chunk).collect();
            let rows = UInt32Array::from(mine.iter().map(|h| h.row).collect::<Vec<_>>());
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(mine.iter().map(|h| h.key.clone()).collect::<Vec<_>>())),
                Arc::new(Int64Array::from_iter_values(mine.iter().map(|h| h.time))),
            ];
            for column in c.batch.columns() {
                columns.push(take(column.as_ref(), &rows, None).map_err(|e| self.mismatch(e))?);
            }
            let fields: Vec<Field> = c.batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            held.push(self.ipc(&fields, columns)?);
        }
        Ok(IntervalSnapshot { partitions, watermark: self.watermark, rows, held })
    }

    /// `_key`, `_time` and `columns` (of `fields`) as a checkpoint holds them ([`crate::ipc`]).
    fn ipc(&self, fields: &[Field], columns: Vec<ArrayRef>) -> Result<String, IntervalError> {
        let mut all = vec![Field::new("_key", DataType::Utf8, true), Field::new("_time", DataType::Int64, false)];
        all.extend(fields.iter().cloned());
        let batch = RecordBatch::try_new(Arc::new(Schema::new(all)), columns).map_err(|e| self.mismatch(e))?;
        crate::ipc::encode(&batch).map_err(|e| self.mismatch(e))
    }

    /// Batches a checkpoint holds ([`crate::ipc`]), split into keys, times and the other columns.
    fn decode_ipc(&self, text: &str) -> Result<Vec<(StringArray, Vec<i64>, RecordBatch)>, IntervalError> {
        let batches = crate::ipc::decode(text).map_err(|e| self.mismatch(format!("checkpoint: {e}")))?;
        let mut out = Vec::new();
        for batch in batches {
            let keys = batch.column(0).as_string::<i32>().clone();
            let times: Vec<i64> = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
            let schema: SchemaRef = Arc::new(Schema::new(batch.schema().fields()[2..].to_vec()));
            let rest = RecordBatch::try_new(schema, batch.columns()[2..].to_vec())
                .map_err(|e| self.mismatch(format!("checkpoint: {e}")))?;
            out.push((keys, times, rest));
        }
        Ok(out)
    }

    /// Takes a checkpoint's part (of the same join); call before [`Interval::seek`].
    pub fn restore(&mut self, snapshot: IntervalSnapshot) -> Result<(), IntervalError> {
        for (p, (next, max_time)) in snapshot.partitions {
            if let Some(c) = self.clocks.get_mut(&p) {
                (c.next, c.max_time) = (next, max_time);
            }
        }
        self.watermark = snapshot.watermark;
        if let Some(text) = &snapshot.rows {
            for (keys, times, batch) in self.decode_ipc(text)? {
                let fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                self.fields.get_or_insert(fields);
                let chunk = self.next_chunk;
                self.next_chunk += 1;
                for (row, time) in times.iter().enumerate() {
                    self.index.entry(keys.value(row).to_string()).or_default().push((chunk, row as u32, *time));
                }
                if batch.num_rows() > 0 {
                    self.rows.insert(chunk, Chunk { live: batch.num_rows(), batch });
                }
            }
        }
        for text in &snapshot.held {
            for (keys, times, batch) in self.decode_ipc(text)? {
                let chunk = self.next_chunk;
                self.next_chunk += 1;
                for (row, &time) in times.iter().enumerate() {
                    let key = keys.is_valid(row).then(|| keys.value(row).to_string());
                    self.held.push(Held { chunk, row: row as u32, time, key });
                }
                if batch.num_rows() > 0 {
                    self.held_chunks.insert(chunk, Chunk { live: batch.num_rows(), batch });
                }
            }
        }
        Ok(())
    }
}
