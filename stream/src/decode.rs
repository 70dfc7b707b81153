//! Bus messages into Arrow batches for a pipeline: Debezium envelopes through the lake's
//! single-pass Avro decoder (row image plus `_op`, `_source_ts_ms`, `_topic`, `_partition`,
//! `_offset`…), JSON objects through arrow-json with the pipeline's declared fields plus
//! `_partition`, `_offset` and `_timestamp` (the record's timestamp). A message that cannot be
//! decoded is returned with the reason, for the dead-letter topic.

use std::{collections::HashMap, sync::Arc};

use deltalake::arrow::{
    array::{ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    json::ReaderBuilder,
};
use weir_bus::Message;
use weir_lake::avro_arrow::Layout;
use weir_schemas::{
    registry::{RegistryError, SchemaRegistry},
    wire,
};

use crate::pipeline::{FieldType, Format, Source};

/// Rows decoded from a run of messages, and which message each row came from.
pub struct Decoded {
    /// The rows.
    pub batch: RecordBatch,
    /// `rows[i]` is the index (in the polled messages) of row `i`'s message.
    pub rows: Vec<usize>,
}

/// What a poll decoded: batches (one per schema run) and undecodable messages with reasons.
#[derive(Default)]
pub struct Polled {
    /// Decoded rows.
    pub batches: Vec<Decoded>,
    /// (message index, reason) of each message that could not be decoded.
    pub dead: Vec<(usize, String)>,
}

/// Decodes one source topic's messages.
pub struct Decoder {
    format: Format,
    registry: Option<Arc<dyn SchemaRegistry>>,
    layouts: HashMap<u32, Arc<Layout>>,
    json_schema: SchemaRef,
}

impl Decoder {
    /// A decoder for `source`; Debezium sources need the schema registry.
    pub fn new(source: &Source, registry: Option<Arc<dyn SchemaRegistry>>) -> Decoder {
        let mut fields: Vec<Field> = source
            .fields
            .iter()
            .map(|(name, t)| {
                let ty = match t {
                    FieldType::String => DataType::Utf8,
                    FieldType::Int => DataType::Int64,
                    FieldType::Float => DataType::Float64,
                    FieldType::Bool => DataType::Boolean,
                    FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                };
                Field::new(name, ty, true)
            })
            .collect();
        fields.extend([
            Field::new("_partition", DataType::Int32, false),
            Field::new("_offset", DataType::Int64, false),
            Field::new("_timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        ]);
        Decoder { format: source.format, registry, layouts: HashMap::new(), json_schema: Arc::new(Schema::new(fields)) }
    }

    /// Decodes `messages`; `Err` only when the schema registry cannot be reached (nothing is
    /// dead-lettered for an outage).
    pub async fn decode(&mut self, messages: &[Message]) -> Result<Polled, RegistryError> {
        match self.format {
            Format::Debezium => self.debezium(messages).await,
            Format::Json => Ok(self.json(messages)),
        }
    }

    async fn layout(&mut self, id: u32) -> Result<Result<Arc<Layout>, String>, RegistryError> {
        if let Some(l) = self.layouts.get(&id) {
            return Ok(Ok(l.clone()));
        }
        let registry = self.registry.as_ref().expect("a Debezium source has a registry");
        let json = match registry.schema_by_id(id).await {
            Ok(json) => json,
            Err(e @ (RegistryError::SchemaNotFound(_) | RegistryError::InvalidSchema(_))) => {
                return Ok(Err(format!("schema id {id}: {e}")));
            }
            Err(e) => return Err(e),
        };
        match Layout::new(&json) {
            Ok(l) => {
                let l = Arc::new(l);
                self.layouts.insert(id, l.clone());
                Ok(Ok(l))
            }
            Err(e) => Ok(Err(format!("schema id {id}: {e}"))),
        }
    }

    async fn debezium(&mut self, messages: &[Message]) -> Result<Polled, RegistryError> {
        let mut out = Polled::default();
        let mut current: Option<(u32, Arc<Layout>, weir_lake::avro_arrow::BatchBuilder, Vec<usize>)> = None;
        for (i, m) in messages.iter().enumerate() {
            let Some(value) = &m.value else { continue }; // a tombstone follows a delete
            let (id, body) = match wire::unframe(value) {
                Ok(x) => x,
                Err(e) => {
                    out.dead.push((i, format!("not the Confluent wire format: {e}")));
                    continue;
                }
            };
            let layout = match self.layout(id).await? {
                Ok(l) => l,
                Err(reason) => {
                    out.dead.push((i, reason));
                    continue;
                }
            };
            if current.as_ref().is_some_and(|(cur, ..)| *cur != id) {
                let (_, l, mut b, rows) = current.take().expect("checked");
                out.batches.push(Decoded { batch: b.finish(l.schema()), rows });
            }
            let (_, layout, builder, rows) =
                current.get_or_insert_with(|| (id, layout.clone(), layout.batch(messages.len()), Vec::new()));
            match layout.append(body, &m.topic, m.partition as i32, m.offset, builder) {
                Ok(true) => rows.push(i),
                Ok(false) => {}
                Err(e) => out.dead.push((i, format!("schema id {id}: {e}"))),
            }
        }
        if let Some((_, l, mut b, rows)) = current
            && !rows.is_empty()
        {
            out.batches.push(Decoded { batch: b.finish(l.schema()), rows });
        }
        Ok(out)
    }

    fn json(&self, messages: &[Message]) -> Polled {
        let mut out = Polled::default();
        let good: Vec<usize> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let Some(v) = &m.value else { return None };
                match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(v) {
                    Ok(_) => Some(i),
                    Err(e) => {
                        out.dead.push((i, format!("not a JSON object: {e}")));
                        None
                    }
                }
            })
            .collect();
        if good.is_empty() {
            return out;
        }
        match self.json_batch(messages, &good) {
            Ok(batch) => out.batches.push(Decoded { batch, rows: good }),
            Err(_) => {
                // Some value has the wrong type for its field: find which, one by one.
                let mut kept = Vec::new();
                for i in good {
                    match self.json_batch(messages, &[i]) {
                        Ok(_) => kept.push(i),
                        Err(e) => out.dead.push((i, e)),
                    }
                }
                if !kept.is_empty() {
                    let batch = self.json_batch(messages, &kept).expect("every one decoded alone");
                    out.batches.push(Decoded { batch, rows: kept });
                }
            }
        }
        out
    }

    fn json_batch(&self, messages: &[Message], which: &[usize]) -> Result<RecordBatch, String> {
        let data_fields: Vec<Field> = self
            .json_schema
            .fields()
            .iter()
            .take(self.json_schema.fields().len() - 3)
            .map(|f| f.as_ref().clone())
            .collect();
        let data_schema = Arc::new(Schema::new(data_fields));
        let mut decoder = ReaderBuilder::new(data_schema)
            .with_batch_size(which.len().max(1))
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for &i in which {
            let bytes = messages[i].value.as_deref().unwrap_or_default();
            decoder.decode(bytes).map_err(|e| format!("JSON does not match the declared fields: {e}"))?;
        }
        let batch =
            decoder.flush().map_err(|e| format!("JSON does not match the declared fields: {e}"))?.ok_or("no rows")?;
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(Arc::new(Int32Array::from_iter_values(which.iter().map(|&i| messages[i].partition as i32))));
        columns.push(Arc::new(Int64Array::from_iter_values(which.iter().map(|&i| messages[i].offset))));
        columns.push(Arc::new(
            TimestampMillisecondArray::from_iter_values(which.iter().map(|&i| messages[i].timestamp_ms))
                .with_timezone("UTC"),
        ));
        RecordBatch::try_new(self.json_schema.clone(), columns).map_err(|e| e.to_string())
    }
}
