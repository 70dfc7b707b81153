//! Commit-log segment framing, descriptor versions 6 (Cassandra 3.0/3.11) and 7 (4.0/4.1).
//!
//! ```text
//! header   i32 version | i64 segment id | u16 length + JSON parameters | u32 CRC32
//! section  i32 position of the next sync marker | u32 CRC32(id low, id high, this position)
//!          entries until that position
//! entry    i32 size | u32 CRC32(size) | mutation (size bytes) | u32 CRC32(size, mutation)
//! ```
//! All integers big-endian; CRCs are java.util.zip.CRC32 fed ints as 4 big-endian bytes. A sync
//! marker of zeros, or the end of the file, ends the segment. Every other inconsistency is an
//! error naming the file and byte position: nothing is skipped silently. Compressed segments are
//! read through [`readable`], which rebuilds them uncompressed (see `compression`).

use std::{borrow::Cow, sync::Arc};

use super::compression::{Codec, uncompressed_image};

/// Segment descriptor versions this reader understands.
pub const SUPPORTED_VERSIONS: [i32; 2] = [6, 7];

/// A segment that cannot be read past some position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commit log {file} at byte {position}: {reason}")]
pub struct SegmentError {
    /// The segment file.
    pub file: Arc<str>,
    /// Byte position of the problem.
    pub position: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks a segment's header.
pub fn parse_header(file: &str, data: &[u8]) -> Result<Header, SegmentError> {
    let err =
        |position: usize, reason: String| SegmentError { file: Arc::from(file), position: position as u64, reason };
    if data.len() < 14 {
        return Err(err(0, format!("{} bytes is too short for a segment header", data.len())));
    }
    let version = be_i32(&data[0..4]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(err(0, format!("descriptor version {version} is not supported (6: Cassandra 3.x, 7: 4.x)")));
    }
    let id = i64::from_be_bytes(data[4..12].try_into().unwrap());
    let params_len = u16::from_be_bytes([data[12], data[13]]) as usize;
    let len = 14 + params_len + 4;
    if data.len() < len {
        return Err(err(12, "header parameters run past the end of the file".into()));
    }
    let params = &data[14..14 + params_len];
    let mut crc = crc32fast::Hasher::new();
    crc_ints(&mut crc, &[version, id as i32, (id >> 32) as i32, params_len as i32]);
    crc.update(params);
    if crc.finalize() != be_i32(&data[14 + params_len..len]) as u32 {
        return Err(err(0, "header CRC mismatch".into()));
    }
    let parameters = String::from_utf8_lossy(params).into_owned();
    let codec = Codec::from_parameters(&parameters).map_err(|reason| err(14, reason))?;
    Ok(Header { version, id, parameters, len, codec })
}

/// The bytes a [`SegmentReader`] should read for the segment `data`, and how far: the file itself
/// up to `limit`, or, for a compressed segment, its uncompressed image (holding only the sections
/// that end within `limit`, so no further limit applies).
pub fn readable<'a>(
    file: &str,
    data: &'a [u8],
    limit: Option<usize>,
) -> Result<(Cow<'a, [u8]>, Option<usize>), SegmentError> {
    let header = parse_header(file, data)?;
    let Some(codec) = header.codec else { return Ok((Cow::Borrowed(data), limit)) };
    let limit = limit.unwrap_or(data.len()).min(data.len());
    let image = uncompressed_image(data, codec, header.version, header.id, header.len, limit)
        .map_err(|(position, reason)| SegmentError { file: Arc::from(file), position: position as u64, reason })?;
    Ok((Cow::Owned(image), None))
}

/// The segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Descriptor version (6 or 7).
    pub version: i32,
    /// Segment id (also in the file name).
    pub id: i64,
    /// The JSON parameters (compression, encryption).
    pub parameters: String,
    /// Bytes the header takes; the first sync marker follows.
    pub len: usize,
    /// The compression the parameters name.
    pub codec: Option<Codec>,
}

/// One mutation's bytes and where they sit in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Byte position of the entry (its size field) in the segment.
    pub position: u64,
    /// The serialized mutation.
    pub mutation: &'a [u8],
}

/// A big-endian i32 from the first four bytes of `b`.
pub(crate) fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Feeds ints to a CRC as Cassandra does: each as 4 big-endian bytes.
pub(crate) fn crc_ints(crc: &mut crc32fast::Hasher, ints: &[i32]) {
    for i in ints {
        crc.update(&i.to_be_bytes());
    }
}

/// The CRC of the sync marker at `position` of segment `id`.
pub(crate) fn marker_crc(id: i64, position: usize) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc_ints(&mut crc, &[id as i32, (id >> 32) as i32, position as i32]);
    crc.finalize()
}

/// A segment header with these JSON `parameters`, its CRC included.
pub(crate) fn write_header(version: i32, id: i64, parameters: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + parameters.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(parameters.len() as u16).to_be_bytes());
    out.extend_from_slice(parameters.as_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc_ints(&mut crc, &[version, id as i32, (id >> 32) as i32, parameters.len() as i32]);
    crc.update(parameters.as_bytes());
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// Reads the mutations of one segment held in memory.
pub struct SegmentReader<'a> {
    data: &'a [u8],
    file: Arc<str>,
    header: Header,
    /// Next byte to read.
    pos: usize,
    /// End of the current section (position of the next sync marker).
    section_end: usize,
    /// Readable length: the whole file, or the durable offset a CDC index file gives.
    limit: usize,
    done: bool,
}

impl<'a> SegmentReader<'a> {
    /// Checks the header of `data` (the segment file `file`). A compressed segment must first be
    /// turned into its uncompressed image with [`readable`].
    pub fn new(file: &str, data: &'a [u8]) -> Result<Self, SegmentError> {
        let header = parse_header(file, data)?;
        if let Some(codec) = header.codec {
            return Err(SegmentError {
                file: Arc::from(file),
                position: 14,
                reason: format!("{codec:?}-compressed segment: read it through segment::readable"),
            });
        }
        let len = header.len;
        Ok(SegmentReader {
            data,
            file: Arc::from(file),
            pos: len,
            section_end: len,
            limit: data.len(),
            header,
            done: false,
        })
    }

    /// Reads no further than `limit` bytes (a Cassandra 4 `_cdc.idx` durable offset).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.min(self.data.len());
        self
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The byte position reading has reached.
    pub fn position(&self) -> u64 {
        self.pos as u64
    }

    fn error(&mut self, position: usize, reason: String) -> SegmentError {
        self.done = true;
        SegmentError { file: self.file.clone(), position: position as u64, reason }
    }

    /// Moves to the next section; `false` at the end of the segment.
    fn next_section(&mut self) -> Result<bool, SegmentError> {
        let at = self.pos;
        if at + 8 > self.limit {
            return Ok(false);
        }
        let next = be_i32(&self.data[at..at + 4]);
        let stored = be_i32(&self.data[at + 4..at + 8]) as u32;
        if next == 0 && stored == 0 {
            return Ok(false);
        }
        if marker_crc(self.header.id, at) != stored {
            return Err(self.error(at, "sync marker CRC mismatch".into()));
        }
        let next = next as usize;
        if next < at + 8 || next > self.data.len() {
            return Err(self.error(at, format!("sync marker points to byte {next}, outside the segment")));
        }
        if next > self.limit {
            // The section is not durable yet (CDC index); stop before it.
            return Ok(false);
        }
        self.pos = at + 8;
        self.section_end = next;
        Ok(true)
    }

    fn read_entry(&mut self) -> Result<Option<Entry<'a>>, SegmentError> {
        let at = self.pos;
        if at + 4 > self.section_end {
            self.pos = self.section_end;
            return Ok(None);
        }
        let size = be_i32(&self.data[at..at + 4]);
        if size == 0 {
            // Cassandra's end-of-segment marker is all zeros; a zero size with a CRC is damage.
            if at + 8 <= self.section_end && self.data[at + 4..at + 8] != [0; 4] {
                return Err(self.error(at, "entry size is zero but its CRC is not".into()));
            }
            self.done = true;
            return Ok(None);
        }
        if at + 8 > self.section_end {
            return Err(self.error(at, "entry header runs past its section".into()));
        }
        let mut crc = crc32fast::Hasher::new();
        crc_ints(&mut crc, &[size]);
        if crc.clone().finalize() != be_i32(&self.data[at + 4..at + 8]) as u32 {
            return Err(self.error(at, format!("entry size CRC mismatch (size field {size})")));
        }
        if size < 0 || at + 12 + size as usize > self.section_end {
            return Err(self.error(at, format!("entry of {size} bytes runs past its section")));
        }
        let start = at + 8;
        let end = start + size as usize;
        let mutation = &self.data[start..end];
        crc.update(mutation);
        if crc.finalize() != be_i32(&self.data[end..end + 4]) as u32 {
            return Err(self.error(at, "mutation CRC mismatch".into()));
        }
        self.pos = end + 4;
        Ok(Some(Entry { position: at as u64, mutation }))
    }
}

impl<'a> Iterator for SegmentReader<'a> {
    type Item = Result<Entry<'a>, SegmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.pos >= self.section_end {
                match self.next_section() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            match self.read_entry() {
                Ok(Some(entry)) => return Some(Ok(entry)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}
