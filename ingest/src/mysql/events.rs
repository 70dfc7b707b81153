//! Change-event records of one table (Debezium's `mysql`/`mariadb` event layout), and the
//! schema-change events and schema-history records of the source.
//!
//! Per row change: `c`/`r`/`u` → one record keyed by the primary key; `d` → the delete record
//! plus a tombstone (null value) when enabled; an update that changes the primary key → a delete
//! of the old key (header `__debezium.newkey`), its tombstone, and a create of the new key
//! (header `__debezium.oldkey`), as Debezium does. Tables without a primary key have null keys.

use bytes::Bytes;
use weir_bus::Record;
use weir_schemas::{
    avro::AvroSchema,
    connect::{ConnectSchema, StructBuilder, Value},
    envelope::{
        BinlogFlavor, BinlogSource, Op, TableSchemas, TransactionMeta, binlog_source_schema, heartbeat_key_schema,
        heartbeat_value_schema, topic_name, transaction_key_schema, transaction_value_schema,
    },
    history::{self, HistoryDoc},
    serializer::{EventEncoder, SerializeError},
};

use super::columns::TableDef;

/// One row change, before it becomes records.
#[derive(Debug, Clone)]
pub struct RowChange {
    /// `c`, `u`, `d` or `r`.
    pub op: Op,
    /// Row image before (updates, deletes).
    pub before: Option<Vec<Value>>,
    /// Row image after (creates, updates, reads).
    pub after: Option<Vec<Value>>,
    /// Where it came from.
    pub source: BinlogSource,
}

/// Event schemas and serialization of one table at one definition.
pub struct TableEvents {
    /// The definition the events follow.
    pub def: TableDef,
    /// `<prefix>.<db>.<table>`.
    pub topic: String,
    schemas: TableSchemas,
    source_schema: ConnectSchema,
    key: Option<AvroSchema>,
    value: AvroSchema,
    /// `db.table`, as transaction metadata names the table.
    collection: String,
}

impl TableEvents {
    /// The events of `def` under `prefix`.
    pub fn new(prefix: &str, flavor: BinlogFlavor, def: TableDef) -> Result<Self, String> {
        let topic = topic_name(prefix, &def.db, &def.table);
        let source_schema = binlog_source_schema(flavor);
        let schemas = TableSchemas::new(&topic, def.fields(), def.key_fields(), source_schema.clone());
        let key = schemas.key.clone().map(AvroSchema::new).transpose().map_err(|e| e.to_string())?;
        let value = AvroSchema::new(schemas.envelope.clone()).map_err(|e| e.to_string())?;
        let collection = format!("{}.{}", def.db, def.table);
        Ok(TableEvents { def, topic, schemas, source_schema, key, value, collection })
    }

    fn key_value(&self, row: &[Value]) -> Option<Value> {
        self.key.as_ref()?;
        Some(Value::Struct(self.def.key.iter().map(|&i| row[i].clone()).collect()))
    }

    async fn key_bytes(&self, encoder: &EventEncoder, row: &[Value]) -> Result<Option<Bytes>, SerializeError> {
        match (self.key_value(row), &self.key, &self.schemas.key) {
            (Some(k), Some(avro), Some(connect)) => {
                Ok(Some(encoder.encode(&self.topic, true, connect, avro, &k).await?.into()))
            }
            _ => Ok(None),
        }
    }

    async fn envelope(
        &self,
        encoder: &EventEncoder,
        op: Op,
        (before, after): (Option<Vec<Value>>, Option<Vec<Value>>),
        source: &BinlogSource,
        processed_us: i64,
        tx: &mut Option<&mut TransactionMeta>,
    ) -> Result<Bytes, SerializeError> {
        let row = |r: Option<Vec<Value>>| r.map_or(Value::Null, Value::Struct);
        let block = tx.as_deref_mut().map(|t| t.next(&self.collection));
        let value = self.schemas.envelope_value(
            op,
            row(before),
            row(after),
            source.to_value(&self.source_schema),
            block.as_ref(),
            processed_us,
        );
        Ok(encoder.encode(&self.topic, false, &self.schemas.envelope, &self.value, &value).await?.into())
    }

    /// `db.table`, as transaction metadata names the table.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// How many change events (not tombstones) [`TableEvents::records`] makes of a change `op`
    /// from row image `before` to `after`: two for an update that changes the primary key, one
    /// otherwise.
    pub fn event_count(&self, op: Op, before: Option<&[Value]>, after: Option<&[Value]>) -> usize {
        let key = |row: Option<&[Value]>| row.and_then(|r| self.key_value(r));
        if op == Op::Update && key(before) != key(after) { 2 } else { 1 }
    }

    /// The records of one row change, appended to `out` with this table's topic; with `tx`, each
    /// event's `transaction` block is filled from it.
    pub async fn records(
        &self,
        encoder: &EventEncoder,
        change: RowChange,
        tombstones: bool,
        processed_us: i64,
        out: &mut Vec<(String, Record)>,
        mut tx: Option<&mut TransactionMeta>,
    ) -> Result<(), SerializeError> {
        let ts = Some(change.source.ts_us / 1000);
        let RowChange { op, before, after, source } = change;
        let record =
            |key: Option<Bytes>, value: Option<Bytes>| Record { key, value, timestamp_ms: ts, ..Record::default() };
        let delete =
            |key: Option<Bytes>, value: Bytes, out: &mut Vec<(String, Record)>, header: Option<(&str, Bytes)>| {
                let mut r = record(key.clone(), Some(value));
                if let Some((name, v)) = header {
                    r = r.with_header(name, v);
                }
                out.push((self.topic.clone(), r));
                if tombstones && key.is_some() {
                    out.push((self.topic.clone(), record(key, None)));
                }
            };
        match op {
            Op::Read | Op::Create => {
                let key = self.key_bytes(encoder, after.as_deref().unwrap_or_default()).await?;
                let value = self.envelope(encoder, op, (None, after), &source, processed_us, &mut tx).await?;
                out.push((self.topic.clone(), record(key, Some(value))));
            }
            Op::Delete => {
                let key = self.key_bytes(encoder, before.as_deref().unwrap_or_default()).await?;
                let value = self.envelope(encoder, Op::Delete, (before, None), &source, processed_us, &mut tx).await?;
                delete(key, value, out, None);
            }
            Op::Update => {
                let old_key = self.key_bytes(encoder, before.as_deref().unwrap_or_default()).await?;
                let new_key = self.key_bytes(encoder, after.as_deref().unwrap_or_default()).await?;
                if old_key == new_key {
                    let value =
                        self.envelope(encoder, Op::Update, (before, after), &source, processed_us, &mut tx).await?;
                    out.push((self.topic.clone(), record(new_key, Some(value))));
                } else {
                    let gone =
                        self.envelope(encoder, Op::Delete, (before, None), &source, processed_us, &mut tx).await?;
                    let header = new_key.clone().map(|k| ("__debezium.newkey", k));
                    delete(old_key.clone(), gone, out, header);
                    let born =
                        self.envelope(encoder, Op::Create, (None, after), &source, processed_us, &mut tx).await?;
                    let mut r = record(new_key, Some(born));
                    if let Some(k) = old_key {
                        r = r.with_header("__debezium.oldkey", k);
                    }
                    out.push((self.topic.clone(), r));
                }
            }
            Op::Truncate => {
                let value = self.envelope(encoder, Op::Truncate, (None, None), &source, processed_us, &mut tx).await?;
                out.push((self.topic.clone(), record(None, Some(value))));
            }
        }
        Ok(())
    }
}

/// The source's metadata records: transaction `BEGIN`/`END` on `<prefix>.transaction` and
/// heartbeats, with Debezium's schemas.
pub struct MetadataEvents {
    /// `<prefix>.transaction`.
    pub transaction_topic: String,
    prefix: String,
    tx_key: (ConnectSchema, AvroSchema),
    tx_value: (ConnectSchema, AvroSchema),
    hb_key: (ConnectSchema, AvroSchema),
    hb_value: (ConnectSchema, AvroSchema),
}

fn with_avro(schema: ConnectSchema) -> (ConnectSchema, AvroSchema) {
    let avro = AvroSchema::new(schema.clone()).expect("Debezium's metadata schemas are valid Avro");
    (schema, avro)
}

impl MetadataEvents {
    /// The metadata records of a source with `prefix`.
    pub fn new(prefix: &str) -> Self {
        MetadataEvents {
            transaction_topic: format!("{prefix}.transaction"),
            prefix: prefix.to_string(),
            tx_key: with_avro(transaction_key_schema()),
            tx_value: with_avro(transaction_value_schema()),
            hb_key: with_avro(heartbeat_key_schema()),
            hb_value: with_avro(heartbeat_value_schema()),
        }
    }

    async fn record(
        &self,
        encoder: &EventEncoder,
        topic: &str,
        ((key_schema, key_avro), key): (&(ConnectSchema, AvroSchema), &Value),
        ((value_schema, value_avro), value): (&(ConnectSchema, AvroSchema), &Value),
        ts_ms: i64,
    ) -> Result<Record, SerializeError> {
        Ok(Record {
            key: Some(encoder.encode(topic, true, key_schema, key_avro, key).await?.into()),
            value: Some(encoder.encode(topic, false, value_schema, value_avro, value).await?.into()),
            timestamp_ms: Some(ts_ms),
            ..Record::default()
        })
    }

    /// The `BEGIN` (`end = false`) or `END` record of `tx`, at source time `ts_ms`.
    pub async fn transaction(
        &self,
        encoder: &EventEncoder,
        tx: &TransactionMeta,
        end: bool,
        ts_ms: i64,
    ) -> Result<Record, SerializeError> {
        let value = if end { tx.end(ts_ms) } else { tx.begin(ts_ms) };
        self.record(encoder, &self.transaction_topic, (&self.tx_key, &tx.key()), (&self.tx_value, &value), ts_ms).await
    }

    /// A heartbeat record for `topic` at `ts_ms`.
    pub async fn heartbeat(&self, encoder: &EventEncoder, topic: &str, ts_ms: i64) -> Result<Record, SerializeError> {
        let key = Value::Struct(vec![Value::String(self.prefix.clone())]);
        let value = Value::Struct(vec![Value::Int64(ts_ms)]);
        self.record(encoder, topic, (&self.hb_key, &key), (&self.hb_value, &value), ts_ms).await
    }
}

/// Schemas of the schema-change events Debezium writes to the `<prefix>` topic.
pub struct SchemaChangeEvents {
    /// The topic: the prefix itself.
    pub topic: String,
    key_schema: ConnectSchema,
    value_schema: ConnectSchema,
    source_schema: ConnectSchema,
    key: AvroSchema,
    value: AvroSchema,
}

impl SchemaChangeEvents {
    /// The schema-change events of a source with `prefix`.
    pub fn new(prefix: &str, flavor: BinlogFlavor) -> Self {
        let key_schema = history::schema_change_key_schema(flavor.connector());
        let source_schema = binlog_source_schema(flavor);
        let value_schema = history::schema_change_value_schema(flavor.connector(), source_schema.clone());
        let key = AvroSchema::new(key_schema.clone()).expect("schema-change key is valid Avro");
        let value = AvroSchema::new(value_schema.clone()).expect("schema-change value is valid Avro");
        SchemaChangeEvents { topic: prefix.to_string(), key_schema, value_schema, source_schema, key, value }
    }

    /// The schema-change record of the history record `doc` (its source block from `source`).
    pub async fn record(
        &self,
        encoder: &EventEncoder,
        doc: &HistoryDoc,
        source: &BinlogSource,
    ) -> Result<Record, SerializeError> {
        let database = doc.database_name.as_deref().unwrap_or_default();
        let key = StructBuilder::new(&self.key_schema).put("databaseName", database).build();
        let value = StructBuilder::new(&self.value_schema)
            .put("source", source.to_value(&self.source_schema))
            .put("ts_ms", doc.ts_ms)
            .put("databaseName", database)
            .put("ddl", doc.ddl.clone())
            .put("tableChanges", Value::Array(doc.table_changes.iter().map(|c| c.to_value()).collect()))
            .build();
        Ok(Record {
            key: Some(encoder.encode(&self.topic, true, &self.key_schema, &self.key, &key).await?.into()),
            value: Some(encoder.encode(&self.topic, false, &self.value_schema, &self.value, &value).await?.into()),
            timestamp_ms: Some(doc.ts_ms),
            ..Record::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_change_schemas_are_valid_avro() {
        let s = SchemaChangeEvents::new("shop", BinlogFlavor::Mariadb);
        apache_avro::Schema::parse_str(&s.value.json).expect("valid Avro");
        assert!(s.value.json.contains("io.debezium.connector.mariadb.SchemaChangeValue"));
    }
}
