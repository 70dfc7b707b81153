//! Decoded mutations as JSON, for `weir cassandra dump` and for inspection: CQL values rendered
//! by type (text as strings, blobs as `0x…`, numbers as numbers, big decimals as strings).

use serde_json::{Map, Value, json};

use super::{
    mutation::{Cell, DeletionTime, PartitionUpdate, Row},
    schema::{CqlType, TableSchema, format_uuid},
    values::CqlValue,
};

/// One partition update as a JSON object; `segment` and `position` say where it was read.
pub fn update_to_json(segment: &str, position: u64, u: &PartitionUpdate<'_>) -> Value {
    let t = &u.table;
    let mut key = Map::new();
    for (column, bytes) in t.partition_key().zip(u.key_components()) {
        key.insert(column.name.clone(), value(&column.ty, bytes));
    }
    let mut out = Map::new();
    out.insert("segment".into(), json!(segment));
    out.insert("position".into(), json!(position));
    out.insert("keyspace".into(), json!(t.keyspace));
    out.insert("table".into(), json!(t.table));
    out.insert("key".into(), Value::Object(key));
    if let Some(d) = &u.deletion {
        out.insert("partition_deletion".into(), deletion(d));
    }
    if let Some(s) = &u.static_row {
        out.insert("static".into(), row(t, s));
    }
    out.insert("rows".into(), Value::Array(u.rows.iter().map(|r| row(t, r)).collect()));
    if !u.range_tombstones.is_empty() {
        let clustering_types: Vec<&CqlType> = t.clustering().map(|c| &c.ty).collect();
        let markers = u.range_tombstones.iter().map(|m| {
            let bound: Vec<Value> = m
                .clustering
                .iter()
                .zip(&clustering_types)
                .map(|(v, ty)| v.map_or(Value::Null, |b| value(ty, b)))
                .collect();
            json!({"kind": m.kind, "bound": bound, "deletion": deletion(&m.deletion),
                   "start_deletion": m.start_deletion.as_ref().map(deletion)})
        });
        out.insert("range_tombstones".into(), Value::Array(markers.collect()));
    }
    Value::Object(out)
}

fn deletion(d: &DeletionTime) -> Value {
    json!({"marked_for_delete_at": d.marked_for_delete_at, "local_deletion_time": d.local_deletion_time})
}

fn row(t: &TableSchema, r: &Row<'_>) -> Value {
    let mut out = Map::new();
    let mut clustering = Map::new();
    for (column, v) in t.clustering().zip(&r.clustering) {
        clustering.insert(column.name.clone(), v.map_or(Value::Null, |b| value(&column.ty, b)));
    }
    if !clustering.is_empty() {
        out.insert("clustering".into(), Value::Object(clustering));
    }
    if let Some(l) = &r.liveness {
        out.insert("timestamp".into(), json!(l.timestamp));
        if let Some(ttl) = l.ttl {
            out.insert("ttl".into(), json!(ttl));
        }
    }
    if let Some(d) = &r.deletion {
        out.insert("deletion".into(), deletion(d));
    }
    if !r.complex_deletions.is_empty() {
        let cd: Map<String, Value> =
            r.complex_deletions.iter().map(|(c, d)| (t.columns[*c].name.clone(), deletion(d))).collect();
        out.insert("complex_deletions".into(), Value::Object(cd));
    }
    out.insert("cells".into(), Value::Array(r.cells.iter().map(|c| cell(t, c)).collect()));
    Value::Object(out)
}

fn cell(t: &TableSchema, c: &Cell<'_>) -> Value {
    let column = &t.columns[c.column];
    let mut out = Map::new();
    out.insert("column".into(), json!(column.name));
    if let Some(path) = c.path {
        let key_ty = match &column.ty {
            CqlType::Set(e, _) => e.as_ref(),
            CqlType::Map(k, _, _) => k.as_ref(),
            _ => &CqlType::TimeUuid, // list cells are keyed by a timeuuid
        };
        out.insert("path".into(), value(key_ty, path));
    }
    if c.deleted {
        out.insert("deleted".into(), json!(true));
    } else if c.path.is_none() || !matches!(column.ty, CqlType::Set(..)) {
        let ty = match &column.ty {
            CqlType::List(e, false) => e.as_ref(),
            CqlType::Map(_, v, false) => v.as_ref(),
            other => other,
        };
        out.insert("value".into(), value(ty, c.value));
    }
    out.insert("timestamp".into(), json!(c.timestamp));
    if let Some(ttl) = c.ttl {
        out.insert("ttl".into(), json!(ttl));
    }
    if let Some(ldt) = c.local_deletion_time {
        out.insert("local_deletion_time".into(), json!(ldt));
    }
    Value::Object(out)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// A CQL value as JSON; bytes that do not fit the type come out as `{"invalid": "0x…"}`.
pub fn value(ty: &CqlType, b: &[u8]) -> Value {
    match CqlValue::decode(ty, b) {
        Some(v) => rendered(&v),
        None => json!({"invalid": hex(b)}),
    }
}

fn rendered(v: &CqlValue) -> Value {
    let opt = |v: &Option<CqlValue>| v.as_ref().map_or(Value::Null, rendered);
    match v {
        CqlValue::Text(s) | CqlValue::Varint(s) | CqlValue::Decimal(s) => json!(s),
        CqlValue::Bytes(b) => json!(hex(b)),
        CqlValue::Boolean(x) => json!(x),
        CqlValue::TinyInt(x) => json!(x),
        CqlValue::SmallInt(x) => json!(x),
        CqlValue::Int(x) | CqlValue::Date(x) => json!(x),
        CqlValue::BigInt(x) | CqlValue::Timestamp(x) | CqlValue::Time(x) => json!(x),
        CqlValue::Float(x) => json!(x),
        CqlValue::Double(x) => json!(x),
        CqlValue::Uuid(u) => json!(format_uuid(u)),
        CqlValue::Inet(ip) => json!(ip.to_string()),
        CqlValue::Duration { months, days, nanoseconds } => {
            json!({"months": months, "days": days, "nanoseconds": nanoseconds})
        }
        CqlValue::List(items) => Value::Array(items.iter().map(opt).collect()),
        CqlValue::Map(entries) => Value::Array(entries.iter().map(|(k, v)| json!([opt(k), opt(v)])).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_by_type() {
        assert_eq!(value(&CqlType::Text, b"hi"), json!("hi"));
        assert_eq!(value(&CqlType::Blob, &[1, 255]), json!("0x01ff"));
        assert_eq!(value(&CqlType::Int, &[0xff, 0xff, 0xff, 0xfe]), json!(-2));
        assert_eq!(value(&CqlType::Date, &[0x80, 0, 0, 1]), json!(1));
        assert_eq!(value(&CqlType::Decimal, &[0, 0, 0, 2, 0x30, 0x39]), json!("12345E-2"));
        assert_eq!(value(&CqlType::Inet, &[127, 0, 0, 1]), json!("127.0.0.1"));
        let set = [0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 1, b'b'];
        assert_eq!(value(&CqlType::Set(Box::new(CqlType::Text), true), &set), json!(["a", "b"]));
        assert_eq!(value(&CqlType::Int, &[1]), json!({"invalid": "0x01"}));
    }
}
