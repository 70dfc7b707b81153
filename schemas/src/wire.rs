//! The Confluent wire format: magic byte `0`, the schema id as a big-endian `u32`, then the
//! Avro binary body. Every Confluent deserializer (Java, librdkafka-based, Python) reads this.

/// The magic byte that starts every framed message.
pub const MAGIC: u8 = 0;

/// Why bytes are not a framed message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Fewer than the 5 header bytes.
    #[error("message of {0} bytes is too short for the Confluent wire format (5-byte header)")]
    TooShort(usize),
    /// The first byte is not 0.
    #[error("unknown magic byte {0} (Confluent wire format starts with 0)")]
    BadMagic(u8),
}

/// Frames an Avro body with its schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a framed message into schema id and body.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if bytes.len() < 5 {
        return Err(WireError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(WireError::BadMagic(bytes[0]));
    }
    Ok((u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]), &bytes[5..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_unframes() {
        let framed = frame(258, b"avro");
        assert_eq!(framed, [0, 0, 0, 1, 2, b'a', b'v', b'r', b'o']);
        assert_eq!(unframe(&framed), Ok((258, &b"avro"[..])));
        assert_eq!(unframe(&[0, 0, 1]), Err(WireError::TooShort(3)));
        assert_eq!(unframe(&[1, 0, 0, 0, 1]), Err(WireError::BadMagic(1)));
    }
}
