//! Bus messages into Arrow batches for a pipeline: Debezium envelopes through the lake's
//! single-pass Avro decoder (row image plus `_op`, `_source_ts_ms`, `_topic`, `_partition`,
//! `_offset`…), JSON objects through arrow-json with the pipeline's declared fields, plain Avro
//! records through apache-avro into the same JSON path with fields taken from the registry's
//! schema; the last two plus `_partition`, `_offset` and `_timestamp` (the record's timestamp). A
//! message that cannot be decoded is returned with the reason, for the dead-letter topic.

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

/// Consecutive plain-Avro messages of one schema id: the id, the batch schema, the messages'
/// indices and their values as JSON.
type AvroRun = (u32, SchemaRef, Vec<usize>, Vec<Vec<u8>>);

/// Decodes one source topic's messages.
pub struct Decoder {
    format: Format,
    registry: Option<Arc<dyn SchemaRegistry>>,
    layouts: HashMap<u32, Arc<Layout>>,
    json_schema: SchemaRef,
    /// Plain Avro: per schema id, the writer schema and the batch schema it decodes into.
    avro: HashMap<u32, Arc<(apache_avro::Schema, SchemaRef)>>,
}

impl Decoder {
    /// A decoder for `source`; Debezium and Avro sources need the schema registry.
    pub fn new(source: &Source, registry: Option<Arc<dyn SchemaRegistry>>) -> Decoder {
        let fields: Vec<Field> = source
            .fields
            .iter()
            .map(|(name, t)| {
                let ty = match t {
                    FieldType::String => DataType::Utf8,
                    FieldType::Int => DataType::Int64,
                    FieldType::Float => DataType::Float64,
                    FieldType::Bool => DataType::Boolean,
                    FieldType::Timestamp => timestamp(),
                };
                Field::new(name, ty, true)
            })
            .collect();
        Decoder {
            format: source.format,
            registry,
            layouts: HashMap::new(),
            json_schema: with_meta(fields),
            avro: HashMap::new(),
        }
    }

    /// Decodes `messages`; `Err` only when the schema registry cannot be reached (nothing is
    /// dead-lettered for an outage).
    pub async fn decode(&mut self, messages: &[Message]) -> Result<Polled, RegistryError> {
        match self.format {
            Format::Debezium => self.debezium(messages).await,
            Format::Json => Ok(self.json(messages)),
            Format::Avro => self.avro(messages).await,
        }
    }

    /// The writer schema of plain-Avro schema `id` and the batch schema it decodes into.
    async fn avro_schema(
        &mut self,
        id: u32,
    ) -> Result<Result<Arc<(apache_avro::Schema, SchemaRef)>, String>, RegistryError> {
        if let Some(s) = self.avro.get(&id) {
            return Ok(Ok(s.clone()));
        }
        let json = match self.schema_json(id).await? {
            Ok(json) => json,
            Err(reason) => return Ok(Err(reason)),
        };
        let schema = match apache_avro::Schema::parse_str(&json) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("schema id {id}: {e}"))),
        };
        let apache_avro::Schema::Record(record) = &schema else {
            return Ok(Err(format!("schema id {id} is not a record")));
        };
        let fields = record.fields.iter().map(|f| Field::new(&f.name, arrow_type(&f.schema), true)).collect();
        let entry = Arc::new((schema.clone(), with_meta(fields)));
        self.avro.insert(id, entry.clone());
        Ok(Ok(entry))
    }

    async fn avro(&mut self, messages: &[Message]) -> Result<Polled, RegistryError> {
        let mut out = Polled::default();
        // Runs of one schema id: (batch schema, message indices, their values as JSON).
        let mut runs: Vec<AvroRun> = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let Some(value) = &m.value else { continue };
            let (id, mut body) = match wire::unframe(value) {
                Ok(x) => x,
                Err(e) => {
                    out.dead.push((i, format!("not the Confluent wire format: {e}")));
                    continue;
                }
            };
            let schema = match self.avro_schema(id).await? {
                Ok(s) => s,
                Err(reason) => {
                    out.dead.push((i, reason));
                    continue;
                }
            };
            let record = match apache_avro::from_avro_datum(&schema.0, &mut body, None) {
                Ok(apache_avro::types::Value::Record(fields)) => fields,
                Ok(_) => {
                    out.dead.push((i, format!("schema id {id}: not a record")));
                    continue;
                }
                Err(e) => {
                    out.dead.push((i, format!("schema id {id}: {e}")));
                    continue;
                }
            };
            let object: serde_json::Map<String, serde_json::Value> =
                record.into_iter().map(|(k, v)| (k, avro_json(v))).collect();
            let json = serde_json::to_vec(&object).expect("JSON");
            match runs.last_mut() {
                Some((run_id, _, rows, values)) if *run_id == id => {
                    rows.push(i);
                    values.push(json);
                }
                _ => runs.push((id, schema.1.clone(), vec![i], vec![json])),
            }
        }
        for (_, schema, rows, values) in runs {
            match json_batch(&schema, messages, &rows, &values) {
                Ok(batch) => out.batches.push(Decoded { batch, rows }),
                Err(e) => out.dead.extend(rows.into_iter().map(|i| (i, e.clone()))),
            }
        }
        Ok(out)
    }

    /// The registry's schema `id`: `Ok(Err(reason))` when there is no such usable schema (the
    /// message is a dead letter), `Err` when the registry cannot be reached.
    async fn schema_json(&self, id: u32) -> Result<Result<String, String>, RegistryError> {
        let registry = self.registry.as_ref().expect("Debezium and Avro sources have a registry");
        match registry.schema_by_id(id).await {
            Ok(json) => Ok(Ok(json)),
            Err(e @ (RegistryError::SchemaNotFound(_) | RegistryError::InvalidSchema(_))) => {
                Ok(Err(format!("schema id {id}: {e}")))
            }
            Err(e) => Err(e),
        }
    }

    async fn layout(&mut self, id: u32) -> Result<Result<Arc<Layout>, String>, RegistryError> {
        if let Some(l) = self.layouts.get(&id) {
            return Ok(Ok(l.clone()));
        }
        let json = match self.schema_json(id).await? {
            Ok(json) => json,
            Err(reason) => return Ok(Err(reason)),
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
        let value = |i: usize| messages[i].value.as_deref().unwrap_or_default().to_vec();
        let values: Vec<Vec<u8>> = good.iter().map(|&i| value(i)).collect();
        match json_batch(&self.json_schema, messages, &good, &values) {
            Ok(batch) => out.batches.push(Decoded { batch, rows: good }),
            Err(_) => {
                // Some value has the wrong type for its field: find which, one by one.
                let mut kept = Vec::new();
                for i in good {
                    match json_batch(&self.json_schema, messages, &[i], &[value(i)]) {
                        Ok(_) => kept.push(i),
                        Err(e) => out.dead.push((i, e)),
                    }
                }
                if !kept.is_empty() {
                    let values: Vec<Vec<u8>> = kept.iter().map(|&i| value(i)).collect();
                    let batch = json_batch(&self.json_schema, messages, &kept, &values).expect("each decoded alone");
                    out.batches.push(Decoded { batch, rows: kept });
                }
            }
        }
        out
    }
}

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// `fields` plus the record's `_partition`, `_offset` and `_timestamp`.
fn with_meta(mut fields: Vec<Field>) -> SchemaRef {
    fields.extend([
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new("_timestamp", timestamp(), false),
    ]);
    Arc::new(Schema::new(fields))
}

/// The Arrow type a plain-Avro field decodes into: numbers, text, booleans and timestamps as
/// themselves (a `[null, T]` union as a nullable `T`), anything else as JSON text.
fn arrow_type(schema: &apache_avro::Schema) -> DataType {
    use apache_avro::Schema as S;
    match schema {
        S::Boolean => DataType::Boolean,
        S::Int | S::Long => DataType::Int64,
        S::Float | S::Double => DataType::Float64,
        S::String | S::Enum(_) | S::Uuid => DataType::Utf8,
        S::TimestampMillis | S::TimestampMicros | S::TimestampNanos => timestamp(),
        S::Union(u) => match u.variants().iter().filter(|v| !matches!(v, S::Null)).collect::<Vec<_>>()[..] {
            [one] => arrow_type(one),
            _ => DataType::Utf8,
        },
        _ => DataType::Utf8,
    }
}

/// An Avro value as the JSON arrow-json reads into [`arrow_type`]'s columns.
fn avro_json(v: apache_avro::types::Value) -> serde_json::Value {
    use apache_avro::types::Value as V;
    use serde_json::Value as J;
    match v {
        V::Null => J::Null,
        V::Boolean(b) => J::Bool(b),
        V::Int(n) => n.into(),
        V::Long(n) => n.into(),
        V::Float(x) => f64::from(x).into(),
        V::Double(x) => x.into(),
        V::String(s) | V::Enum(_, s) => J::String(s),
        V::Uuid(u) => J::String(u.to_string()),
        V::TimestampMillis(ms) => ms.into(),
        V::TimestampMicros(us) => us.div_euclid(1000).into(),
        V::TimestampNanos(ns) => ns.div_euclid(1_000_000).into(),
        V::Union(_, inner) => avro_json(*inner),
        // Nested and binary values: their JSON text, kept whole.
        other => J::String(J::try_from(other).map(|j| j.to_string()).unwrap_or_default()),
    }
}

/// Decodes JSON `values` (of messages `which`) into a batch of `schema` (whose last three fields
/// are the record's partition, offset and timestamp).
fn json_batch(
    schema: &SchemaRef,
    messages: &[Message],
    which: &[usize],
    values: &[Vec<u8>],
) -> Result<RecordBatch, String> {
    let data_fields: Vec<Field> =
        schema.fields().iter().take(schema.fields().len() - 3).map(|f| f.as_ref().clone()).collect();
    let mut decoder = ReaderBuilder::new(Arc::new(Schema::new(data_fields)))
        .with_batch_size(which.len().max(1))
        .build_decoder()
        .map_err(|e| e.to_string())?;
    for v in values {
        decoder.decode(v).map_err(|e| format!("does not match the declared fields: {e}"))?;
    }
    let batch = decoder.flush().map_err(|e| format!("does not match the declared fields: {e}"))?.ok_or("no rows")?;
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(Int32Array::from_iter_values(which.iter().map(|&i| messages[i].partition as i32))));
    columns.push(Arc::new(Int64Array::from_iter_values(which.iter().map(|&i| messages[i].offset))));
    columns.push(Arc::new(
        TimestampMillisecondArray::from_iter_values(which.iter().map(|&i| messages[i].timestamp_ms))
            .with_timezone("UTC"),
    ));
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}
