//! The on-disk framing of one record in a segment file.
//!
//! ```text
//! u32 body length | u32 CRC-32C of the body | body
//! body = i64 offset | i64 timestamp ms | i32 key length (-1: none) | key
//!      | i32 value length (-1: none) | value | u16 header count | (u16 name length | name | i32 value length | value)*
//! ```
//! All integers little-endian. The offset inside the body lets recovery check that records follow
//! each other without gaps; the CRC catches torn and flipped bytes.

use bytes::Bytes;

use crate::Record;

/// Bytes before the body: length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;
/// Smallest possible body.
const MIN_BODY: usize = 8 + 8 + 4 + 4 + 2;
/// Largest body accepted; anything bigger is taken for garbage.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// Appends the framed record to `buf`.
pub(crate) fn encode(buf: &mut Vec<u8>, offset: i64, timestamp_ms: i64, record: &Record) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_HEADER]);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&timestamp_ms.to_le_bytes());
    put_optional(buf, record.key.as_deref());
    put_optional(buf, record.value.as_deref());
    buf.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    for (name, value) in &record.headers {
        buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(value.len() as i32).to_le_bytes());
        buf.extend_from_slice(value);
    }
    let body = &buf[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The framed size of a record, checked before encoding.
pub(crate) fn framed_len(record: &Record) -> usize {
    FRAME_HEADER
        + MIN_BODY
        + record.key.as_ref().map_or(0, |k| k.len())
        + record.value.as_ref().map_or(0, |v| v.len())
        + record.headers.iter().map(|(n, v)| 2 + n.len() + 4 + v.len()).sum::<usize>()
}

fn put_optional(buf: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            buf.extend_from_slice(&(d.len() as i32).to_le_bytes());
            buf.extend_from_slice(d);
        }
        None => buf.extend_from_slice(&(-1i32).to_le_bytes()),
    }
}

/// One record read back, its key, value and headers sharing the read buffer.
#[derive(Debug)]
pub(crate) struct StoredRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    /// Bytes the framed record takes.
    pub framed_len: usize,
}

/// What [`decode`] found at a position.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A whole, valid record.
    Record(StoredRecord),
    /// The buffer ends inside the record; `needed` bytes from the position would hold it.
    Incomplete { needed: usize },
    /// The bytes are not a valid record.
    Corrupt(String),
}

/// Decodes the record starting at `pos` of `buf`.
pub(crate) fn decode(buf: &Bytes, pos: usize) -> Decoded {
    let avail = buf.len() - pos;
    if avail < FRAME_HEADER {
        return Decoded::Incomplete { needed: FRAME_HEADER };
    }
    let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(buf[pos + 4..pos + 8].try_into().unwrap());
    if !(MIN_BODY..=MAX_BODY).contains(&len) {
        return Decoded::Corrupt(format!("impossible record length {len}"));
    }
    if avail < FRAME_HEADER + len {
        return Decoded::Incomplete { needed: FRAME_HEADER + len };
    }
    let body_start = pos + FRAME_HEADER;
    let body = &buf[body_start..body_start + len];
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt("CRC mismatch".to_string());
    }
    match parse_body(buf, body_start, len) {
        Ok(mut rec) => {
            rec.framed_len = FRAME_HEADER + len;
            Decoded::Record(rec)
        }
        Err(reason) => Decoded::Corrupt(reason),
    }
}

fn parse_body(buf: &Bytes, start: usize, len: usize) -> Result<StoredRecord, String> {
    let end = start + len;
    let mut at = start;
    let mut take = |n: usize| -> Result<usize, String> {
        if at + n > end {
            return Err("field runs past the record".to_string());
        }
        let here = at;
        at += n;
        Ok(here)
    };
    let i64_at = |p: usize| i64::from_le_bytes(buf[p..p + 8].try_into().unwrap());
    let i32_at = |p: usize| i32::from_le_bytes(buf[p..p + 4].try_into().unwrap());
    let u16_at = |p: usize| u16::from_le_bytes(buf[p..p + 2].try_into().unwrap());

    let offset = i64_at(take(8)?);
    let timestamp_ms = i64_at(take(8)?);
    let optional = |take: &mut dyn FnMut(usize) -> Result<usize, String>| -> Result<Option<Bytes>, String> {
        let n = i32_at(take(4)?);
        if n < 0 {
            return Ok(None);
        }
        let p = take(n as usize)?;
        Ok(Some(buf.slice(p..p + n as usize)))
    };
    let key = optional(&mut take)?;
    let value = optional(&mut take)?;
    let count = u16_at(take(2)?);
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = u16_at(take(2)?) as usize;
        let p = take(name_len)?;
        let name =
            std::str::from_utf8(&buf[p..p + name_len]).map_err(|_| "header name is not UTF-8".to_string())?.to_string();
        let value_len = i32_at(take(4)?);
        if value_len < 0 {
            return Err("negative header length".to_string());
        }
        let p = take(value_len as usize)?;
        headers.push((name, buf.slice(p..p + value_len as usize)));
    }
    if at != end {
        return Err(format!("{} stray bytes after the headers", end - at));
    }
    Ok(StoredRecord { offset, timestamp_ms, key, value, headers, framed_len: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::keyed("k", "value").with_header("reason", "x")
    }

    #[test]
    fn round_trips() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, 1234, &sample());
        encode(&mut buf, 8, 1235, &Record::default());
        assert_eq!(buf.len(), framed_len(&sample()) + framed_len(&Record::default()));
        let bytes = Bytes::from(buf);
        let Decoded::Record(first) = decode(&bytes, 0) else { panic!("first record") };
        assert_eq!((first.offset, first.timestamp_ms), (7, 1234));
        assert_eq!(first.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(first.value.as_deref(), Some(&b"value"[..]));
        assert_eq!(first.headers, vec![("reason".to_string(), Bytes::from("x"))]);
        let Decoded::Record(second) = decode(&bytes, first.framed_len) else { panic!("second record") };
        assert_eq!((second.offset, second.key, second.value), (8, None, None));
    }

    #[test]
    fn detects_torn_and_flipped_bytes() {
        let mut buf = Vec::new();
        encode(&mut buf, 0, 0, &sample());
        let whole = buf.len();
        let torn = Bytes::from(buf[..whole - 3].to_vec());
        assert!(matches!(decode(&torn, 0), Decoded::Incomplete { needed } if needed == whole));
        for i in FRAME_HEADER..whole {
            let mut flipped = buf.clone();
            flipped[i] ^= 0x10;
            assert!(matches!(decode(&Bytes::from(flipped), 0), Decoded::Corrupt(_)), "flip at {i}");
        }
    }
}
