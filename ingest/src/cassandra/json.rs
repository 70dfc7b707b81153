//! Decoded mutations as JSON, for `weir cassandra dump` and for inspection: CQL values rendered
//! by type (text as strings, blobs as `0x…`, numbers as numbers, big decimals as strings).

use serde_json::{Map, Value, json};

use super::{
    mutation::{Cell, DeletionTime, PartitionUpdate, Row},
    schema::{CqlType, TableSchema, format_uuid},
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

fn be_signed(b: &[u8]) -> Option<i128> {
    if b.is_empty() || b.len() > 16 {
        return None;
    }
    let mut v: i128 = if b[0] & 0x80 != 0 { -1 } else { 0 };
    for &x in b {
        v = (v << 8) | i128::from(x);
    }
    Some(v)
}

/// A CQL value as JSON; bytes that do not fit the type come out as `{"invalid": "0x…"}`.
pub fn value(ty: &CqlType, b: &[u8]) -> Value {
    rendered(ty, b).unwrap_or_else(|| json!({"invalid": hex(b)}))
}

fn rendered(ty: &CqlType, b: &[u8]) -> Option<Value> {
    let fixed = |n: usize| (b.len() == n).then_some(b);
    Some(match ty {
        CqlType::Ascii | CqlType::Text => json!(std::str::from_utf8(b).ok()?),
        CqlType::Blob => json!(hex(b)),
        CqlType::Boolean => json!(fixed(1)?[0] != 0),
        CqlType::TinyInt => json!(i8::from_be_bytes(fixed(1)?.try_into().ok()?)),
        CqlType::SmallInt => json!(i16::from_be_bytes(fixed(2)?.try_into().ok()?)),
        CqlType::Int => json!(i32::from_be_bytes(fixed(4)?.try_into().ok()?)),
        CqlType::BigInt | CqlType::Counter | CqlType::Timestamp => {
            json!(i64::from_be_bytes(fixed(8)?.try_into().ok()?))
        }
        CqlType::Time => json!(i64::from_be_bytes(fixed(8)?.try_into().ok()?)),
        CqlType::Float => json!(f32::from_be_bytes(fixed(4)?.try_into().ok()?)),
        CqlType::Double => json!(f64::from_be_bytes(fixed(8)?.try_into().ok()?)),
        // Days with 2^31 as the epoch.
        CqlType::Date => json!(i64::from(u32::from_be_bytes(fixed(4)?.try_into().ok()?)) - (1i64 << 31)),
        CqlType::Uuid | CqlType::TimeUuid => json!(format_uuid(fixed(16)?.try_into().ok()?)),
        CqlType::Inet => match b.len() {
            4 => json!(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
            16 => json!(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?).to_string()),
            _ => return None,
        },
        CqlType::Varint => json!(be_signed(b)?.to_string()),
        CqlType::Decimal => {
            let scale = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
            json!(format!("{}E{}", be_signed(&b[4..])?, -scale))
        }
        CqlType::Duration => {
            let mut pos = 0;
            let months = super::vint::read_signed(b, &mut pos)?;
            let days = super::vint::read_signed(b, &mut pos)?;
            let nanos = super::vint::read_signed(b, &mut pos)?;
            json!({"months": months, "days": days, "nanoseconds": nanos})
        }
        CqlType::List(e, _) | CqlType::Set(e, _) => {
            let items = frozen_items(b, 1)?;
            Value::Array(items.into_iter().map(|i| i.map_or(Value::Null, |x| value(e, x))).collect())
        }
        CqlType::Map(k, v, _) => {
            let items = frozen_items(b, 2)?;
            Value::Array(
                items
                    .chunks(2)
                    .map(|kv| {
                        json!([kv[0].map_or(Value::Null, |x| value(k, x)), kv[1].map_or(Value::Null, |x| value(v, x))])
                    })
                    .collect(),
            )
        }
        CqlType::Tuple(types) => {
            let mut out = Vec::new();
            let mut at = 0;
            for t in types {
                if at >= b.len() {
                    break;
                }
                let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
                at += 4;
                if len < 0 {
                    out.push(Value::Null);
                } else {
                    out.push(value(t, b.get(at..at + len as usize)?));
                    at += len as usize;
                }
            }
            Value::Array(out)
        }
    })
}

/// The elements of a frozen collection: i32 count (× `per` for maps), each i32 length + bytes.
fn frozen_items(b: &[u8], per: usize) -> Option<Vec<Option<&[u8]>>> {
    let count = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
    if count < 0 || count as usize > b.len() {
        return None;
    }
    let mut at = 4;
    let mut out = Vec::with_capacity(count as usize * per);
    for _ in 0..count as usize * per {
        let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(b.get(at..at + len as usize)?));
            at += len as usize;
        }
    }
    Some(out)
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
