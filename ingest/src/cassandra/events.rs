//! Partition updates as Debezium-Cassandra change events.
//!
//! Like Debezium's Cassandra connector: topic `<prefix>.<keyspace>.<table>`; key
//! `io.debezium.connector.cassandra.<prefix>.<keyspace>.<table>.Key` holding the primary-key
//! columns; value `….Envelope` with `ts_ms`, `op` (`i` insert, `u` update, `d` delete), `source`
//! (cluster, file, pos, keyspace, table) and `after`, which has one optional `cell_value_<column>`
//! struct `{value, deletion_ts, set}` per column: a column the change did not touch is null; a
//! column it deleted has a null value and its tombstone time in `deletion_ts` (µs). A range
//! deletion (`DELETE … WHERE ck > x`) is op `r`, with `_range_start` and `_range_end` structs
//! `{method, values: [{name, value, type}]}`, `method` being Cassandra's bound kind
//! (`INCL_START_BOUND`, `EXCL_END_BOUND`, …).
//!
//! CQL types map to Connect types as: text/ascii → string, blob → bytes, boolean, tinyint → int8,
//! smallint → int16, int → int32, bigint/counter → int64, float → float32, double → float64,
//! timestamp → int64 `Timestamp` (ms), date → int32 `Date` (days), time → int64 (ns),
//! uuid/timeuuid → string `io.debezium.data.Uuid`, inet/varint/decimal/duration/tuple → string,
//! list/set → array, map → map.
//!
//! One deliberate difference from Debezium: Debezium names every cell struct `cell_value`, and
//! Confluent's `AvroData` then writes the second and later cells as references to the first
//! definition, whatever their value type (checked with Debezium 3.6.3's `CellData.cellSchema` and
//! `AvroData` 7.0.16: a `text` cell after an `int` cell is declared `int`). Naming each cell
//! `cell_value_<column>` keeps every column's own type in the registered Avro schema.

use std::sync::Arc;

use weir_schemas::{
    avro::{AvroError, AvroSchema},
    connect::{ConnectSchema, ConnectType, Field, StructBuilder, Value, logical, schema},
    envelope::{CassandraSource, cassandra_source_schema},
};

use super::{
    json,
    mutation::{Cell, PartitionUpdate, Row},
    schema::{ColumnKind, CqlType, TableSchema, format_uuid},
    values::CqlValue,
};

/// One change event, ready to serialize.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `i`, `u` or `d`.
    pub op: &'static str,
    /// The key struct.
    pub key: Value,
    /// The envelope.
    pub value: Value,
}

/// The schemas and topic of one captured table.
pub struct TableEvents {
    /// `<prefix>.<keyspace>.<table>`.
    pub topic: String,
    /// Key schema.
    pub key: AvroSchema,
    /// Envelope schema.
    pub value: AvroSchema,
    table: Arc<TableSchema>,
    prefix: String,
    cluster: String,
}

fn connect_schema(ty: &CqlType) -> ConnectSchema {
    match ty {
        CqlType::Ascii | CqlType::Text => schema::string(),
        CqlType::Blob => schema::bytes(),
        CqlType::Boolean => schema::boolean(),
        CqlType::TinyInt => schema::int8(),
        CqlType::SmallInt => schema::int16(),
        CqlType::Int => schema::int32(),
        CqlType::BigInt | CqlType::Counter => schema::int64(),
        CqlType::Float => schema::float32(),
        CqlType::Double => schema::float64(),
        CqlType::Timestamp => schema::int64().named(logical::TIMESTAMP).version(1),
        CqlType::Date => schema::int32().named(logical::DATE).version(1),
        CqlType::Time => schema::int64(),
        CqlType::Uuid | CqlType::TimeUuid => schema::string().named("io.debezium.data.Uuid").version(1),
        CqlType::Inet | CqlType::Varint | CqlType::Decimal | CqlType::Duration | CqlType::Tuple(_) => schema::string(),
        CqlType::List(e, _) | CqlType::Set(e, _) => {
            ConnectSchema::new(ConnectType::Array(Box::new(connect_schema(e).optional())))
        }
        CqlType::Map(k, v, _) => {
            ConnectSchema::new(ConnectType::Map(Box::new(connect_schema(k)), Box::new(connect_schema(v).optional())))
        }
    }
}

fn connect_value(v: &CqlValue) -> Value {
    let opt = |v: &Option<CqlValue>| v.as_ref().map_or(Value::Null, connect_value);
    match v {
        CqlValue::Text(s) | CqlValue::Varint(s) | CqlValue::Decimal(s) => Value::String(s.clone()),
        CqlValue::Bytes(b) => Value::Bytes(b.clone()),
        CqlValue::Boolean(b) => Value::Boolean(*b),
        CqlValue::TinyInt(x) => Value::Int8(*x),
        CqlValue::SmallInt(x) => Value::Int16(*x),
        CqlValue::Int(x) | CqlValue::Date(x) => Value::Int32(*x),
        CqlValue::BigInt(x) | CqlValue::Timestamp(x) | CqlValue::Time(x) => Value::Int64(*x),
        CqlValue::Float(x) => Value::Float32(*x),
        CqlValue::Double(x) => Value::Float64(*x),
        CqlValue::Uuid(u) => Value::String(format_uuid(u)),
        CqlValue::Inet(ip) => Value::String(ip.to_string()),
        CqlValue::Duration { months, days, nanoseconds } => Value::String(format!("{months}mo{days}d{nanoseconds}ns")),
        CqlValue::List(items) => Value::Array(items.iter().map(opt).collect()),
        CqlValue::Map(entries) => Value::Map(entries.iter().map(|(k, v)| (opt(k), opt(v))).collect()),
    }
}

/// A value of a column whose Connect type is a string but whose CQL value is composite (tuple).
fn value_of(ty: &CqlType, bytes: &[u8]) -> Value {
    match (ty, CqlValue::decode(ty, bytes)) {
        (CqlType::Tuple(_), Some(_)) => Value::String(json::value(ty, bytes).to_string()),
        (_, Some(v)) => connect_value(&v),
        (_, None) => Value::Null,
    }
}

fn cell_schema(column: &str, ty: &CqlType) -> ConnectSchema {
    ConnectSchema::struct_of(
        format!("cell_value_{column}"),
        vec![
            Field::new("value", connect_schema(ty).optional()),
            Field::new("deletion_ts", schema::int64().optional()),
            Field::new("set", schema::boolean()),
        ],
    )
    .version(1)
    .optional()
}

/// Cassandra's `ClusteringPrefix.Kind` names, by ordinal.
const BOUND_KINDS: [&str; 8] = [
    "EXCL_END_BOUND",
    "INCL_START_BOUND",
    "EXCL_END_INCL_START_BOUNDARY",
    "STATIC_CLUSTERING",
    "CLUSTERING",
    "INCL_END_EXCL_START_BOUNDARY",
    "INCL_END_BOUND",
    "EXCL_START_BOUND",
];

fn range_schema(name: &str) -> ConnectSchema {
    let value = ConnectSchema::struct_of(
        "clustering_value",
        vec![
            Field::new("name", schema::string()),
            Field::new("value", schema::string()),
            Field::new("type", schema::string()),
        ],
    )
    .version(1);
    let values = ConnectSchema::new(ConnectType::Array(Box::new(value))).named("clustering_values").version(1);
    ConnectSchema::struct_of(name, vec![Field::new("method", schema::string()), Field::new("values", values)])
        .version(1)
        .optional()
}

impl TableEvents {
    /// The schemas of `table`'s events under `prefix`, with `cluster` in every source block.
    pub fn new(prefix: &str, cluster: &str, table: Arc<TableSchema>) -> Result<Self, AvroError> {
        let topic = format!("{prefix}.{}.{}", table.keyspace, table.table);
        let key_fields = table
            .columns
            .iter()
            .filter(|c| matches!(c.kind, ColumnKind::PartitionKey | ColumnKind::Clustering))
            .map(|c| {
                let s = connect_schema(&c.ty);
                Field::new(c.name.clone(), if c.kind == ColumnKind::Clustering { s.optional() } else { s })
            })
            .collect();
        let key = ConnectSchema::struct_of(format!("io.debezium.connector.cassandra.{topic}.Key"), key_fields);
        let mut after_fields: Vec<Field> =
            table.columns.iter().map(|c| Field::new(c.name.clone(), cell_schema(&c.name, &c.ty))).collect();
        for range in ["_range_start", "_range_end"] {
            after_fields.push(Field::new(range, range_schema(range)));
        }
        let after = ConnectSchema::struct_of("after", after_fields).version(1);
        let value = ConnectSchema::struct_of(
            format!("io.debezium.connector.cassandra.{topic}.Envelope"),
            vec![
                Field::new("ts_ms", schema::int64()),
                Field::new("op", schema::string()),
                Field::new("source", cassandra_source_schema()),
                Field::new("after", after),
            ],
        );
        Ok(TableEvents {
            topic,
            key: AvroSchema::new(key)?,
            value: AvroSchema::new(value)?,
            table,
            prefix: prefix.to_string(),
            cluster: cluster.to_string(),
        })
    }

    /// The events of one partition update read from `file` at `position`.
    pub fn events(&self, update: &PartitionUpdate<'_>, file: &str, position: u64) -> Vec<ChangeEvent> {
        let t = &self.table;
        let partition: Vec<(usize, Value)> = t
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind == ColumnKind::PartitionKey)
            .zip(update.key_components())
            .map(|((i, c), bytes)| (i, value_of(&c.ty, bytes)))
            .collect();
        let mut out = Vec::new();
        if let Some(d) = update.deletion {
            out.push(self.event(
                "d",
                &partition,
                &[],
                Vec::new(),
                Some(d.marked_for_delete_at),
                d.marked_for_delete_at,
                file,
                position,
            ));
        }
        out.extend(self.range_events(update, &partition, file, position));
        for row in update.static_row.iter().chain(&update.rows) {
            let clustering: Vec<(usize, Value)> = t
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.kind == ColumnKind::Clustering)
                .zip(&row.clustering)
                .map(|((i, c), v)| (i, v.map_or(Value::Null, |b| value_of(&c.ty, b))))
                .collect();
            if let Some(d) = row.deletion {
                out.push(self.event(
                    "d",
                    &partition,
                    &clustering,
                    Vec::new(),
                    Some(d.marked_for_delete_at),
                    d.marked_for_delete_at,
                    file,
                    position,
                ));
                if row.cells.is_empty() {
                    continue;
                }
            }
            let op = if row.liveness.is_some() { "i" } else { "u" };
            let (cells, ts) = self.cells(row);
            out.push(self.event(op, &partition, &clustering, cells, None, ts, file, position));
        }
        out
    }

    /// One `r` event per deleted clustering range: a start bound (or boundary) up to the next end.
    fn range_events(
        &self,
        update: &PartitionUpdate<'_>,
        partition: &[(usize, Value)],
        file: &str,
        position: u64,
    ) -> Vec<ChangeEvent> {
        let t = &self.table;
        let columns: Vec<_> = t.clustering().collect();
        let bound = |kind: &str, values: &[Option<&[u8]>]| {
            let items = values
                .iter()
                .zip(&columns)
                .map(|(v, c)| {
                    let text = match v.map(|b| json::value(&c.ty, b)) {
                        Some(serde_json::Value::String(s)) => s,
                        Some(other) => other.to_string(),
                        None => "null".to_string(),
                    };
                    Value::Struct(vec![
                        Value::from(c.name.as_str()),
                        Value::String(text),
                        Value::String(c.ty.cql_name()),
                    ])
                })
                .collect();
            Value::Struct(vec![Value::from(kind), Value::Array(items)])
        };
        let mut out = Vec::new();
        let mut open: Option<Value> = None;
        for m in &update.range_tombstones {
            // Boundaries close one range and open the next: (end kind, start kind).
            let (end_kind, start_kind) = match m.kind {
                1 | 7 => (None, Some(BOUND_KINDS[m.kind as usize])),
                0 | 6 => (Some(BOUND_KINDS[m.kind as usize]), None),
                2 => (Some("EXCL_END_BOUND"), Some("INCL_START_BOUND")),
                5 => (Some("INCL_END_BOUND"), Some("EXCL_START_BOUND")),
                _ => (None, None),
            };
            if let (Some(kind), Some(start)) = (end_kind, open.take()) {
                let end = bound(kind, &m.clustering);
                let ts = m.deletion.marked_for_delete_at;
                let mut event = self.event("r", partition, &[], Vec::new(), Some(ts), ts, file, position);
                if let Value::Struct(envelope) = &mut event.value
                    && let Value::Struct(after) = &mut envelope[3]
                {
                    let n = after.len();
                    after[n - 2] = start;
                    after[n - 1] = end;
                }
                out.push(event);
            }
            if let Some(kind) = start_kind {
                open = Some(bound(kind, &m.clustering));
            }
        }
        out
    }

    /// The row's cells as `(column, cell struct)`, and the newest write time among them.
    fn cells(&self, row: &Row<'_>) -> (Vec<(usize, Value)>, i64) {
        let t = &self.table;
        let mut ts = row.liveness.map_or(i64::MIN, |l| l.timestamp);
        let mut out: Vec<(usize, Value)> = Vec::new();
        let mut i = 0;
        while i < row.cells.len() {
            let column = row.cells[i].column;
            let ty = &t.columns[column].ty;
            let end = i + row.cells[i..].iter().take_while(|c| c.column == column).count();
            let group: &[Cell<'_>] = &row.cells[i..end];
            ts = ts.max(group.iter().map(|c| c.timestamp).max().unwrap_or(i64::MIN));
            let cell = if ty.is_complex() {
                let live: Vec<&Cell<'_>> = group.iter().filter(|c| !c.deleted).collect();
                let value = match ty {
                    CqlType::Set(e, _) => {
                        Value::Array(live.iter().map(|c| value_of(e, c.path.unwrap_or_default())).collect())
                    }
                    CqlType::List(e, _) => Value::Array(live.iter().map(|c| value_of(e, c.value)).collect()),
                    CqlType::Map(k, v, _) => Value::Map(
                        live.iter().map(|c| (value_of(k, c.path.unwrap_or_default()), value_of(v, c.value))).collect(),
                    ),
                    _ => Value::Null,
                };
                let deleted =
                    row.complex_deletions.iter().find(|(c, _)| *c == column).map(|(_, d)| d.marked_for_delete_at);
                Value::Struct(vec![value, deleted.map_or(Value::Null, Value::Int64), Value::Boolean(true)])
            } else {
                let c = &group[0];
                let value = if c.deleted { Value::Null } else { value_of(ty, c.value) };
                let deletion = if c.deleted { Value::Int64(c.timestamp) } else { Value::Null };
                Value::Struct(vec![value, deletion, Value::Boolean(true)])
            };
            out.push((column, cell));
            i = end;
        }
        for (column, d) in &row.complex_deletions {
            if !out.iter().any(|(c, _)| c == column) {
                out.push((
                    *column,
                    Value::Struct(vec![Value::Null, Value::Int64(d.marked_for_delete_at), Value::Boolean(true)]),
                ));
            }
        }
        (out, ts)
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        op: &'static str,
        partition: &[(usize, Value)],
        clustering: &[(usize, Value)],
        cells: Vec<(usize, Value)>,
        key_deletion: Option<i64>,
        ts_us: i64,
        file: &str,
        position: u64,
    ) -> ChangeEvent {
        let t = &self.table;
        let key_cell = |v: &Value| {
            Value::Struct(vec![v.clone(), key_deletion.map_or(Value::Null, Value::Int64), Value::Boolean(true)])
        };
        let mut after = vec![Value::Null; t.columns.len() + 2];
        for (i, v) in partition.iter().chain(clustering) {
            if *v != Value::Null {
                after[*i] = key_cell(v);
            }
        }
        for (i, cell) in cells {
            after[i] = cell;
        }
        let mut key = Vec::new();
        for (_, v) in partition.iter().chain(clustering) {
            key.push(v.clone());
        }
        // Clustering key fields a partition deletion does not name stay null.
        key.resize(t.partition_key().count() + t.clustering().count(), Value::Null);
        let source_schema = &self.value.connect.fields()[2].schema;
        let source = CassandraSource {
            name: self.prefix.clone(),
            ts_us,
            cluster: self.cluster.clone(),
            file: file.to_string(),
            pos: position as i32,
            keyspace: t.keyspace.clone(),
            table: t.table.clone(),
        }
        .to_value(source_schema);
        let value = StructBuilder::new(&self.value.connect)
            .put("ts_ms", ts_us.div_euclid(1000))
            .put("op", op)
            .put("source", source)
            .put("after", Value::Struct(after))
            .build();
        ChangeEvent { op, key: Value::Struct(key), value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cassandra::mutation::{Tables, decode};

    fn table() -> TableSchema {
        TableSchema::parse_all(
            "CREATE TABLE ks.t (k text, c int, v blob, PRIMARY KEY (k, c)) WITH ID = 00000000-0000-0000-0000-0000000000bb;",
        )
        .unwrap()
        .remove(0)
    }

    /// `DELETE FROM ks.t WHERE k = 'a'` + `DELETE FROM ks.t WHERE k = 'a' AND c = 3`
    /// + `DELETE FROM ks.t WHERE k = 'a' AND c >= 5 AND c <= 9`, as one partition update.
    fn deletions() -> Vec<u8> {
        let mut m = vec![1];
        m.extend_from_slice(&table().id);
        m.extend_from_slice(&[1, b'a']);
        m.push(0x04); // HAS_PARTITION_DELETION
        m.extend_from_slice(&[0, 0, 0]); // stats
        m.extend_from_slice(&[1, 1, b'v']); // regular columns: v
        m.extend_from_slice(&[10, 0]); // partition deletion: timestamp delta 10, local deletion time delta 0
        m.extend_from_slice(&[0x02, 1, 0, 1, 0, 0, 0, 0, 5, 20, 0]); // marker INCL_START c=5
        m.push(0x10 | 0x20); // row: HAS_DELETION, HAS_ALL_COLUMNS
        m.extend_from_slice(&[0, 0, 0, 0, 3]); // clustering c=3
        m.extend_from_slice(&[30, 0]); // row deletion
        m.push(0x01 | 0x04); // cell v: deleted, empty value
        m.push(30); // its timestamp delta
        m.push(0); // its local deletion time delta
        m.extend_from_slice(&[0x02, 6, 0, 1, 0, 0, 0, 0, 9, 20, 0]); // marker INCL_END c=9
        m.push(0x01); // end of partition
        m
    }

    #[test]
    fn deletions_become_d_and_r_events_that_fit_their_schemas() {
        let tables = Tables::new([table()]);
        let bytes = deletions();
        let decoded = decode(&bytes, &tables).unwrap();
        let update = &decoded.updates[0];
        let events = TableEvents::new("shop", "c1", update.table.clone()).unwrap();
        let out = events.events(update, "CommitLog-7-1.log", 42);
        let ops: Vec<&str> = out.iter().map(|e| e.op).collect();
        assert_eq!(ops, ["d", "r", "d", "u"]);
        let key_schema = apache_avro::Schema::parse_str(&events.key.json).unwrap();
        let value_schema = apache_avro::Schema::parse_str(&events.value.json).unwrap();
        for e in &out {
            let key = events.key.encode(&e.key).unwrap();
            apache_avro::from_avro_datum(&key_schema, &mut &key[..], None).unwrap();
            let value = events.value.encode(&e.value).unwrap();
            let v = apache_avro::from_avro_datum(&value_schema, &mut &value[..], None).unwrap();
            let text = format!("{v:?}");
            assert!(text.contains("CommitLog-7-1.log") && text.contains("\"c1\""), "{text}");
        }
        let range = format!("{:?}", out[1].value);
        assert!(range.contains("INCL_START_BOUND") && range.contains("INCL_END_BOUND"), "{range}");
        assert!(range.contains("String(\"5\")") && range.contains("String(\"9\")"), "{range}");
        // The partition deletion's key names no clustering column.
        assert_eq!(out[0].key, Value::Struct(vec![Value::from("a"), Value::Null]));
        assert_eq!(out[2].key, Value::Struct(vec![Value::from("a"), Value::Int32(3)]));
    }
}
