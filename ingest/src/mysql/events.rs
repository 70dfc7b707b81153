//! Change-event records of one table (Debezium's `mysql`/`mariadb` event layout), and the
//! schema-change events and schema-history records of the source.
//!
//! Per row change: `c`/`r`/`u` → one record keyed by the primary key; `d` → the delete record
//! plus a tombstone (null value) when enabled; an update that changes the primary key → a delete
//! of the old key (header `__debezium.newkey`), its tombstone, and a create of the new key
//! (header `__debezium.oldkey`), as Debezium does. Tables without a primary key have null keys.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_bus::Record;
use weir_schemas::{
    avro::AvroSchema,
    connect::{ConnectSchema, Field, StructBuilder, Value, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, TableSchemas, binlog_source_schema, topic_name},
    serializer::{EventEncoder, SerializeError},
};

use super::columns::{ColumnType, TableDef};

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
}

impl TableEvents {
    /// The events of `def` under `prefix`.
    pub fn new(prefix: &str, flavor: BinlogFlavor, def: TableDef) -> Result<Self, String> {
        let topic = topic_name(prefix, &def.db, &def.table);
        let source_schema = binlog_source_schema(flavor);
        let schemas = TableSchemas::new(&topic, def.fields(), def.key_fields(), source_schema.clone());
        let key = schemas.key.clone().map(AvroSchema::new).transpose().map_err(|e| e.to_string())?;
        let value = AvroSchema::new(schemas.envelope.clone()).map_err(|e| e.to_string())?;
        Ok(TableEvents { def, topic, schemas, source_schema, key, value })
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
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
        source: &BinlogSource,
        processed_us: i64,
    ) -> Result<Bytes, SerializeError> {
        let row = |r: Option<Vec<Value>>| r.map_or(Value::Null, Value::Struct);
        let value = self.schemas.envelope_value(
            op,
            row(before),
            row(after),
            source.to_value(&self.source_schema),
            None,
            processed_us,
        );
        Ok(encoder.encode(&self.topic, false, &self.schemas.envelope, &self.value, &value).await?.into())
    }

    /// The records of one row change, appended to `out` with this table's topic.
    pub async fn records(
        &self,
        encoder: &EventEncoder,
        change: RowChange,
        tombstones: bool,
        processed_us: i64,
        out: &mut Vec<(String, Record)>,
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
                let value = self.envelope(encoder, op, None, after, &source, processed_us).await?;
                out.push((self.topic.clone(), record(key, Some(value))));
            }
            Op::Delete => {
                let key = self.key_bytes(encoder, before.as_deref().unwrap_or_default()).await?;
                let value = self.envelope(encoder, Op::Delete, before, None, &source, processed_us).await?;
                delete(key, value, out, None);
            }
            Op::Update => {
                let old_key = self.key_bytes(encoder, before.as_deref().unwrap_or_default()).await?;
                let new_key = self.key_bytes(encoder, after.as_deref().unwrap_or_default()).await?;
                if old_key == new_key {
                    let value = self.envelope(encoder, Op::Update, before, after, &source, processed_us).await?;
                    out.push((self.topic.clone(), record(new_key, Some(value))));
                } else {
                    let gone = self.envelope(encoder, Op::Delete, before, None, &source, processed_us).await?;
                    let header = new_key.clone().map(|k| ("__debezium.newkey", k));
                    delete(old_key.clone(), gone, out, header);
                    let born = self.envelope(encoder, Op::Create, None, after, &source, processed_us).await?;
                    let mut r = record(new_key, Some(born));
                    if let Some(k) = old_key {
                        r = r.with_header("__debezium.oldkey", k);
                    }
                    out.push((self.topic.clone(), r));
                }
            }
            Op::Truncate => {
                let value = self.envelope(encoder, Op::Truncate, None, None, &source, processed_us).await?;
                out.push((self.topic.clone(), record(None, Some(value))));
            }
        }
        Ok(())
    }
}

/// What a schema change did to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeType {
    /// The table appeared.
    Create,
    /// Its columns or key changed.
    Alter,
    /// It was dropped.
    Drop,
}

/// One table's change in a schema-history record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableChange {
    /// What happened.
    #[serde(rename = "type")]
    pub change: ChangeType,
    /// `db.table`.
    pub id: String,
    /// The definition after the change (before it, for drops).
    pub table: TableDef,
}

/// A record of `<prefix>.schema-history` (JSON): a DDL statement or snapshot, where it happened,
/// and the definitions it produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Binlog file of the statement (or the snapshot's position).
    pub file: String,
    /// Position.
    pub pos: u64,
    /// GTID of its transaction.
    #[serde(default)]
    pub gtid: Option<String>,
    /// When, ms since the epoch.
    pub ts_ms: i64,
    /// Database the statement ran in.
    #[serde(rename = "databaseName")]
    pub database: String,
    /// The statement (`SNAPSHOT` for definitions read by a snapshot).
    pub ddl: String,
    /// Tables it changed.
    #[serde(rename = "tableChanges")]
    pub table_changes: Vec<TableChange>,
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

fn column_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "io.debezium.connector.schema.Column",
        vec![
            Field::new("name", schema::string()),
            Field::new("jdbcType", schema::int32()),
            Field::new("typeName", schema::string()),
            Field::new("typeExpression", schema::string().optional()),
            Field::new("length", schema::int32().optional()),
            Field::new("scale", schema::int32().optional()),
            Field::new("position", schema::int32()),
            Field::new("optional", schema::boolean().optional()),
            Field::new(
                "enumValues",
                ConnectSchema::new(weir_schemas::connect::ConnectType::Array(Box::new(schema::string()))).optional(),
            ),
        ],
    )
}

fn array_of(s: ConnectSchema) -> ConnectSchema {
    ConnectSchema::new(weir_schemas::connect::ConnectType::Array(Box::new(s)))
}

/// `(jdbcType, typeName, length, scale)` of a column, as `java.sql.Types` and MySQL name it.
fn jdbc(ty: &ColumnType) -> (i32, &'static str, Option<i32>, Option<i32>) {
    match ty {
        ColumnType::Boolean => (-7, "BIT", Some(1), None),
        ColumnType::TinyInt { unsigned } => (-6, if *unsigned { "TINYINT UNSIGNED" } else { "TINYINT" }, None, None),
        ColumnType::SmallInt { unsigned } => (5, if *unsigned { "SMALLINT UNSIGNED" } else { "SMALLINT" }, None, None),
        ColumnType::MediumInt { unsigned } => {
            (4, if *unsigned { "MEDIUMINT UNSIGNED" } else { "MEDIUMINT" }, None, None)
        }
        ColumnType::Int { unsigned } => (4, if *unsigned { "INT UNSIGNED" } else { "INT" }, None, None),
        ColumnType::BigInt { unsigned } => (-5, if *unsigned { "BIGINT UNSIGNED" } else { "BIGINT" }, None, None),
        ColumnType::Float => (6, "FLOAT", None, None),
        ColumnType::Double => (8, "DOUBLE", None, None),
        ColumnType::Decimal { precision, scale } => (3, "DECIMAL", Some(*precision as i32), Some(*scale as i32)),
        ColumnType::Bit { length } => (-7, "BIT", Some(*length as i32), None),
        ColumnType::Year => (4, "YEAR", None, None),
        ColumnType::Date => (91, "DATE", None, None),
        ColumnType::Time { fsp } => (92, "TIME", Some(i32::from(*fsp)), None),
        ColumnType::DateTime { fsp } => (93, "DATETIME", Some(i32::from(*fsp)), None),
        ColumnType::Timestamp { fsp } => (2014, "TIMESTAMP", Some(i32::from(*fsp)), None),
        ColumnType::Text { .. } => (12, "VARCHAR", None, None),
        ColumnType::Binary => (-3, "VARBINARY", None, None),
        ColumnType::Json => (1111, "JSON", None, None),
        ColumnType::Enum { .. } => (1, "ENUM", None, None),
        ColumnType::Set { .. } => (1, "SET", None, None),
        ColumnType::Geometry => (1111, "GEOMETRY", None, None),
    }
}

impl SchemaChangeEvents {
    /// The schema-change events of a source with `prefix`.
    pub fn new(prefix: &str, flavor: BinlogFlavor) -> Self {
        let c = flavor.connector();
        let key_schema = ConnectSchema::struct_of(
            format!("io.debezium.connector.{c}.SchemaChangeKey"),
            vec![Field::new("databaseName", schema::string())],
        );
        let source_schema = binlog_source_schema(flavor);
        let table = ConnectSchema::struct_of(
            "io.debezium.connector.schema.Table",
            vec![
                Field::new("primaryKeyColumnNames", array_of(schema::string()).optional()),
                Field::new("columns", array_of(column_schema())),
            ],
        );
        let change = ConnectSchema::struct_of(
            "io.debezium.connector.schema.Change",
            vec![Field::new("type", schema::string()), Field::new("id", schema::string()), Field::new("table", table)],
        );
        let value_schema = ConnectSchema::struct_of(
            format!("io.debezium.connector.{c}.SchemaChangeValue"),
            vec![
                Field::new("source", source_schema.clone()),
                Field::new("ts_ms", schema::int64()),
                Field::new("databaseName", schema::string().optional()),
                Field::new("schemaName", schema::string().optional()),
                Field::new("ddl", schema::string().optional()),
                Field::new("tableChanges", array_of(change)),
            ],
        );
        let key = AvroSchema::new(key_schema.clone()).expect("schema-change key is valid Avro");
        let value = AvroSchema::new(value_schema.clone()).expect("schema-change value is valid Avro");
        SchemaChangeEvents { topic: prefix.to_string(), key_schema, value_schema, source_schema, key, value }
    }

    /// The schema-change record of `history` (its source block from `source`).
    pub async fn record(
        &self,
        encoder: &EventEncoder,
        history: &HistoryRecord,
        source: &BinlogSource,
    ) -> Result<Record, SerializeError> {
        let key = StructBuilder::new(&self.key_schema).put("databaseName", history.database.as_str()).build();
        let changes = history
            .table_changes
            .iter()
            .map(|t| {
                let columns = t
                    .table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let (jdbc_type, type_name, length, scale) = jdbc(&c.ty);
                        let enum_values = match &c.ty {
                            ColumnType::Enum { values } | ColumnType::Set { values } => {
                                Value::Array(values.iter().map(|v| Value::from(v.as_str())).collect())
                            }
                            _ => Value::Null,
                        };
                        Value::Struct(vec![
                            Value::from(c.name.as_str()),
                            Value::Int32(jdbc_type),
                            Value::from(type_name),
                            Value::Null,
                            length.into(),
                            scale.into(),
                            Value::Int32(i as i32 + 1),
                            Value::Boolean(c.nullable),
                            enum_values,
                        ])
                    })
                    .collect();
                let pk =
                    Value::Array(t.table.key.iter().map(|&i| Value::from(t.table.columns[i].name.as_str())).collect());
                let change = match t.change {
                    ChangeType::Create => "CREATE",
                    ChangeType::Alter => "ALTER",
                    ChangeType::Drop => "DROP",
                };
                Value::Struct(vec![
                    Value::from(change),
                    Value::from(t.id.as_str()),
                    Value::Struct(vec![pk, Value::Array(columns)]),
                ])
            })
            .collect();
        let value = StructBuilder::new(&self.value_schema)
            .put("source", source.to_value(&self.source_schema))
            .put("ts_ms", history.ts_ms)
            .put("databaseName", history.database.as_str())
            .put("ddl", history.ddl.as_str())
            .put("tableChanges", Value::Array(changes))
            .build();
        Ok(Record {
            key: Some(encoder.encode(&self.topic, true, &self.key_schema, &self.key, &key).await?.into()),
            value: Some(encoder.encode(&self.topic, false, &self.value_schema, &self.value, &value).await?.into()),
            timestamp_ms: Some(history.ts_ms),
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
