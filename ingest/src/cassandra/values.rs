//! CQL values decoded from their serialized bytes, once, for every consumer (JSON dumps, change
//! events).

use super::{schema::CqlType, vint};

/// A decoded CQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum CqlValue {
    /// ascii, text.
    Text(String),
    /// blob.
    Bytes(Vec<u8>),
    /// boolean.
    Boolean(bool),
    /// tinyint.
    TinyInt(i8),
    /// smallint.
    SmallInt(i16),
    /// int.
    Int(i32),
    /// bigint, counter.
    BigInt(i64),
    /// float.
    Float(f32),
    /// double.
    Double(f64),
    /// timestamp: milliseconds since the epoch.
    Timestamp(i64),
    /// date: days since the epoch.
    Date(i32),
    /// time: nanoseconds since midnight.
    Time(i64),
    /// uuid, timeuuid.
    Uuid([u8; 16]),
    /// inet.
    Inet(std::net::IpAddr),
    /// varint, in decimal digits.
    Varint(String),
    /// decimal, as `<unscaled>E<-scale>`.
    Decimal(String),
    /// duration.
    Duration {
        /// Months.
        months: i64,
        /// Days.
        days: i64,
        /// Nanoseconds.
        nanoseconds: i64,
    },
    /// list, set, tuple elements (`None` for a null element).
    List(Vec<Option<CqlValue>>),
    /// map entries.
    Map(Vec<(Option<CqlValue>, Option<CqlValue>)>),
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

impl CqlValue {
    /// Decodes `b` as a value of `ty`; `None` when the bytes do not fit the type.
    pub fn decode(ty: &CqlType, b: &[u8]) -> Option<CqlValue> {
        let fixed = |n: usize| (b.len() == n).then_some(b);
        Some(match ty {
            CqlType::Ascii | CqlType::Text => CqlValue::Text(std::str::from_utf8(b).ok()?.to_string()),
            CqlType::Blob => CqlValue::Bytes(b.to_vec()),
            CqlType::Boolean => CqlValue::Boolean(fixed(1)?[0] != 0),
            CqlType::TinyInt => CqlValue::TinyInt(i8::from_be_bytes(fixed(1)?.try_into().ok()?)),
            CqlType::SmallInt => CqlValue::SmallInt(i16::from_be_bytes(fixed(2)?.try_into().ok()?)),
            CqlType::Int => CqlValue::Int(i32::from_be_bytes(fixed(4)?.try_into().ok()?)),
            CqlType::BigInt | CqlType::Counter => CqlValue::BigInt(i64::from_be_bytes(fixed(8)?.try_into().ok()?)),
            CqlType::Timestamp => CqlValue::Timestamp(i64::from_be_bytes(fixed(8)?.try_into().ok()?)),
            CqlType::Time => CqlValue::Time(i64::from_be_bytes(fixed(8)?.try_into().ok()?)),
            CqlType::Float => CqlValue::Float(f32::from_be_bytes(fixed(4)?.try_into().ok()?)),
            CqlType::Double => CqlValue::Double(f64::from_be_bytes(fixed(8)?.try_into().ok()?)),
            // Days with 2^31 as the epoch.
            CqlType::Date => {
                CqlValue::Date((i64::from(u32::from_be_bytes(fixed(4)?.try_into().ok()?)) - (1i64 << 31)) as i32)
            }
            CqlType::Uuid | CqlType::TimeUuid => CqlValue::Uuid(fixed(16)?.try_into().ok()?),
            CqlType::Inet => CqlValue::Inet(match b.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?),
                _ => return None,
            }),
            CqlType::Varint => CqlValue::Varint(be_signed(b)?.to_string()),
            CqlType::Decimal => {
                let scale = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
                CqlValue::Decimal(format!("{}E{}", be_signed(&b[4..])?, -i64::from(scale)))
            }
            CqlType::Duration => {
                let mut pos = 0;
                let months = vint::read_signed(b, &mut pos)?;
                let days = vint::read_signed(b, &mut pos)?;
                let nanoseconds = vint::read_signed(b, &mut pos)?;
                CqlValue::Duration { months, days, nanoseconds }
            }
            CqlType::List(e, _) | CqlType::Set(e, _) => CqlValue::List(
                frozen_items(b, 1)?.into_iter().map(|i| i.and_then(|x| CqlValue::decode(e, x))).collect(),
            ),
            CqlType::Map(k, v, _) => CqlValue::Map(
                frozen_items(b, 2)?
                    .chunks(2)
                    .map(|kv| (kv[0].and_then(|x| CqlValue::decode(k, x)), kv[1].and_then(|x| CqlValue::decode(v, x))))
                    .collect(),
            ),
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
                        out.push(None);
                    } else {
                        out.push(Some(CqlValue::decode(t, b.get(at..at + len as usize)?)?));
                        at += len as usize;
                    }
                }
                CqlValue::List(out)
            }
        })
    }
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
    fn decodes_by_type() {
        assert_eq!(CqlValue::decode(&CqlType::Int, &[0xff, 0xff, 0xff, 0xfe]), Some(CqlValue::Int(-2)));
        assert_eq!(CqlValue::decode(&CqlType::Date, &[0x80, 0, 0, 1]), Some(CqlValue::Date(1)));
        assert_eq!(
            CqlValue::decode(&CqlType::Decimal, &[0, 0, 0, 2, 0x30, 0x39]),
            Some(CqlValue::Decimal("12345E-2".into()))
        );
        let set = [0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 1, b'b'];
        assert_eq!(
            CqlValue::decode(&CqlType::Set(Box::new(CqlType::Text), true), &set),
            Some(CqlValue::List(vec![Some(CqlValue::Text("a".into())), Some(CqlValue::Text("b".into()))]))
        );
        assert_eq!(CqlValue::decode(&CqlType::Int, &[1]), None);
    }
}
