//! Cassandra's variable-length integers (`VIntCoding`): the count of leading one bits of the first
//! byte is the count of extra bytes; the value follows big-endian. Signed values are zigzagged.

/// Reads an unsigned vint at `*pos`, advancing it; `None` if `buf` ends first.
pub fn read_unsigned(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let extra = first.leading_ones() as usize;
    if buf.len() < *pos + 1 + extra {
        return None;
    }
    let mut value = if extra >= 8 { 0 } else { u64::from(first & (0xff >> extra)) };
    for &b in &buf[*pos + 1..*pos + 1 + extra] {
        value = (value << 8) | u64::from(b);
    }
    *pos += 1 + extra;
    Some(value)
}

/// Reads a zigzag-encoded signed vint.
pub fn read_signed(buf: &[u8], pos: &mut usize) -> Option<i64> {
    read_unsigned(buf, pos).map(|n| ((n >> 1) as i64) ^ -((n & 1) as i64))
}

/// Appends `value` as an unsigned vint (used by tests to build inputs).
#[cfg(test)]
pub fn write_unsigned(out: &mut Vec<u8>, value: u64) {
    let bits = 64 - value.leading_zeros() as usize;
    let extra = if bits <= 7 { 0 } else { ((bits - 1) / 7).min(8) };
    if extra == 8 {
        out.push(0xff);
        out.extend_from_slice(&value.to_be_bytes());
        return;
    }
    let bytes = value.to_be_bytes();
    let mut first = bytes[7 - extra];
    first |= !(0xffu8 >> extra);
    out.push(first);
    out.extend_from_slice(&bytes[8 - extra..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_size() {
        for value in [0u64, 1, 127, 128, 255, 16_383, 16_384, 1 << 20, 1 << 35, 1 << 56, u64::MAX - 1, u64::MAX] {
            let mut buf = Vec::new();
            write_unsigned(&mut buf, value);
            let mut pos = 0;
            assert_eq!(read_unsigned(&buf, &mut pos), Some(value), "{value}");
            assert_eq!(pos, buf.len());
        }
        assert_eq!(read_unsigned(&[0x80], &mut 0), None, "truncated");
    }

    #[test]
    fn known_encodings() {
        let mut buf = Vec::new();
        write_unsigned(&mut buf, 128);
        assert_eq!(buf, [0x80, 0x80]);
        let mut pos = 0;
        assert_eq!(read_signed(&[0x03], &mut pos), Some(-2));
    }
}
