//! One partition of the embedded log: a directory of segment files named by their first offset.
//!
//! Appends go to the last segment under a lock, in one `write` per batch; once the write returns
//! the batch is visible to readers and acknowledged. On open the last segment is scanned and a torn
//! tail (a record cut short or failing its CRC by a crash mid-write) is truncated away.
//! Retention ([`PartitionLog::enforce`]) deletes whole sealed segments from the front.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};

use super::record::{self, Decoded, StoredRecord};
use crate::{BusError, Record, Result, config::Fsync};

/// A sparse index entry is kept every this many bytes.
const INDEX_INTERVAL: u64 = 64 * 1024;
/// Bytes read from a segment at a time. Below mimalloc's 512 KiB limit for pooled blocks, so
/// read buffers freed by the consumer's threads are reused instead of each being a fresh
/// (kernel-zeroed) mapping.
const READ_CHUNK: usize = 256 * 1024;

/// One segment file.
struct Segment {
    base: i64,
    path: PathBuf,
    file: File,
    /// Bytes of whole, acknowledged records; readers never look past it.
    len: AtomicU64,
    /// `(offset, byte position)` pairs, ascending; always starts with `(base, 0)`.
    index: Mutex<Vec<(i64, u64)>>,
}

impl Segment {
    fn file_name(base: i64) -> String {
        format!("{base:020}.log")
    }

    /// The byte position to start scanning from to find `offset`.
    fn floor(&self, offset: i64) -> (i64, u64) {
        let index = self.index.lock().unwrap();
        let i = index.partition_point(|(o, _)| *o <= offset);
        index[i.saturating_sub(1)]
    }

    fn note_index(&self, offset: i64, pos: u64) {
        self.note_index_all(std::iter::once((offset, pos)));
    }

    /// Records index entries for `(offset, position)` pairs in ascending order, one lock for all.
    fn note_index_all(&self, entries: impl Iterator<Item = (i64, u64)>) {
        let mut index = self.index.lock().unwrap();
        for (offset, pos) in entries {
            if index.last().is_none_or(|(o, p)| offset > *o && pos >= p + INDEX_INTERVAL) {
                index.push((offset, pos));
            }
        }
    }
}

/// What a retention pass may delete from a partition.
pub(crate) struct Retention {
    /// Sealed segments last written longer ago than this go.
    pub max_age: Option<Duration>,
    /// Oldest segments go while the rest still hold at least this many bytes.
    pub max_bytes: Option<u64>,
    /// The lowest offset a durable consumer still needs: no segment holding it or later goes.
    pub needed_from: Option<i64>,
}

/// The writer's side of the partition.
struct Writer {
    file: File,
    active: Arc<Segment>,
    buf: Vec<u8>,
}

/// A partition log.
pub(crate) struct PartitionLog {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: Fsync,
    writer: Mutex<Writer>,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Offset the next appended record gets.
    end: AtomicI64,
}

/// Where a reader is: the segment and byte position of `offset`.
#[derive(Clone)]
pub(crate) struct Cursor {
    segment: Arc<Segment>,
    pos: u64,
    /// The offset of the record at `pos`.
    pub offset: i64,
    /// Bytes from `pos` on that a read already fetched but did not hand out (it had its `max`
    /// records): the next read starts with them instead of reading them again.
    ahead: Bytes,
}

impl PartitionLog {
    /// Opens (or creates) the partition in `dir`, truncating a torn tail.
    pub fn open(dir: &Path, segment_bytes: u64, fsync: Fsync) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| BusError::io("creating", dir, e))?;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| BusError::io("listing", dir, e))? {
            let entry = entry.map_err(|e| BusError::io("listing", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = name.strip_suffix(".log").and_then(|b| b.parse::<i64>().ok()) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let mut segments = Vec::with_capacity(bases.len());
        for (i, base) in bases.iter().enumerate() {
            let path = dir.join(Segment::file_name(*base));
            let file = open_rw(&path)?;
            let len = file.metadata().map_err(|e| BusError::io("reading metadata of", &path, e))?.len();
            let segment =
                Segment { base: *base, path, file, len: AtomicU64::new(len), index: Mutex::new(vec![(*base, 0)]) };
            if i + 1 == bases.len() {
                recover_tail(&segment)?;
            }
            segments.push(Arc::new(segment));
        }
        let active = segments.last().unwrap().clone();
        let end = {
            let (mut offset, mut pos) = active.floor(i64::MAX);
            let len = active.len.load(Ordering::Acquire);
            while pos < len {
                let (rec, _) = read_at(&active, pos, len)?.expect("recovered tail holds whole records");
                offset = rec.offset + 1;
                pos += rec.framed_len as u64;
            }
            offset
        };
        let file = active.file.try_clone().map_err(|e| BusError::io("opening", &active.path, e))?;
        Ok(PartitionLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            fsync,
            writer: Mutex::new(Writer { file, active, buf: Vec::new() }),
            segments: RwLock::new(segments),
            end: AtomicI64::new(end),
        })
    }

    /// The offset the next record will get.
    pub fn end_offset(&self) -> i64 {
        self.end.load(Ordering::Acquire)
    }

    /// The first offset stored.
    pub fn start_offset(&self) -> i64 {
        self.segments.read().unwrap()[0].base
    }

    /// Appends `records` with `timestamp_ms` where they have none; returns the first offset.
    pub fn append(&self, records: &[&Record], timestamp_ms: i64) -> Result<i64> {
        let mut w = self.writer.lock().unwrap();
        let first = self.end.load(Ordering::Acquire);
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let mut positions = Vec::with_capacity(records.len());
        let start = w.active.len.load(Ordering::Acquire);
        for (i, rec) in records.iter().enumerate() {
            if record::framed_len(rec) > record::MAX_BODY {
                w.buf = buf;
                return Err(BusError::InvalidArgument(format!(
                    "record of {} bytes exceeds the embedded log's limit of {} bytes",
                    record::framed_len(rec),
                    record::MAX_BODY
                )));
            }
            positions.push(start + buf.len() as u64);
            record::encode(&mut buf, first + i as i64, rec.timestamp_ms.unwrap_or(timestamp_ms), rec);
        }
        let written = w.file.write_all_at(&buf, start).and_then(|()| match self.fsync {
            Fsync::Always => w.file.sync_data(),
            Fsync::Never => Ok(()),
        });
        if let Err(e) = written {
            // Cut back whatever part of the batch reached the file, so the log stays whole.
            let _ = w.file.set_len(start);
            w.buf = buf;
            return Err(BusError::io("appending to", &w.active.path, e));
        }
        w.active.note_index_all(positions.iter().enumerate().map(|(i, pos)| (first + i as i64, *pos)));
        let new_len = start + buf.len() as u64;
        w.active.len.store(new_len, Ordering::Release);
        w.buf = buf;
        let next = first + records.len() as i64;
        self.end.store(next, Ordering::Release);
        if new_len >= self.segment_bytes {
            self.roll(&mut w, next)?;
        }
        Ok(first)
    }

    fn roll(&self, w: &mut Writer, base: i64) -> Result<()> {
        let path = self.dir.join(Segment::file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| BusError::io("creating segment", &path, e))?;
        let writer_file = file.try_clone().map_err(|e| BusError::io("opening", &path, e))?;
        let segment =
            Arc::new(Segment { base, path, file, len: AtomicU64::new(0), index: Mutex::new(vec![(base, 0)]) });
        self.segments.write().unwrap().push(segment.clone());
        w.file = writer_file;
        w.active = segment;
        Ok(())
    }

    /// Bytes the partition's segments hold.
    pub fn size_bytes(&self) -> u64 {
        self.segments.read().unwrap().iter().map(|s| s.len.load(Ordering::Acquire)).sum()
    }

    /// Deletes the sealed segments at the front that `retention` lets go; returns how many
    /// segments and bytes went.
    pub fn enforce(&self, retention: &Retention, now: SystemTime) -> Result<(usize, u64)> {
        let mut segments = self.segments.write().unwrap();
        let mut total: u64 = segments.iter().map(|s| s.len.load(Ordering::Acquire)).sum();
        let (mut count, mut bytes) = (0, 0);
        // The last segment is the one being written: never deleted.
        while segments.len() > 1 {
            let (first, next) = (&segments[0], &segments[1]);
            if retention.needed_from.is_some_and(|needed| next.base > needed) {
                break; // a durable consumer has not read all of it yet
            }
            let len = first.len.load(Ordering::Acquire);
            let too_big = retention.max_bytes.is_some_and(|max| total - len >= max);
            let too_old = retention.max_age.is_some_and(|age| {
                let written = first.file.metadata().and_then(|m| m.modified()).unwrap_or(now);
                now.duration_since(written).unwrap_or_default() > age
            });
            if !too_big && !too_old {
                break;
            }
            std::fs::remove_file(&first.path).map_err(|e| BusError::io("deleting segment", &first.path, e))?;
            tracing::info!(segment = %first.path.display(), bytes = len, next_start = next.base, too_old, too_big, "retention deleted a segment");
            total -= len;
            bytes += len;
            count += 1;
            // Readers still on it keep its open file until they move on.
            segments.remove(0);
        }
        Ok((count, bytes))
    }

    /// A cursor at `offset`, clamped into the stored range.
    pub fn cursor(&self, offset: i64) -> Result<Cursor> {
        let start = self.start_offset();
        if offset < start {
            tracing::warn!(partition = %self.dir.display(), offset, start, "offset is below the log's start (deleted by retention): reading from its start");
        }
        let offset = offset.clamp(start, self.end_offset());
        let segment = {
            let segments = self.segments.read().unwrap();
            let i = segments.partition_point(|s| s.base <= offset);
            segments[i.saturating_sub(1)].clone()
        };
        let (mut at, mut pos) = segment.floor(offset);
        let len = segment.len.load(Ordering::Acquire);
        while at < offset && pos < len {
            match read_at(&segment, pos, len)? {
                Some((rec, _)) => {
                    segment.note_index(rec.offset, pos);
                    at = rec.offset + 1;
                    pos += rec.framed_len as u64;
                }
                None => break,
            }
        }
        Ok(Cursor { segment, pos, offset: at.max(offset), ahead: Bytes::new() })
    }

    /// Reads up to `max` records from `cursor`, advancing it.
    pub fn read(&self, cursor: &mut Cursor, max: usize, out: &mut Vec<StoredRecord>) -> Result<()> {
        let mut taken = 0;
        while taken < max {
            let len = cursor.segment.len.load(Ordering::Acquire);
            if cursor.pos >= len {
                // At the end of this segment: move on if a later one exists.
                let next = {
                    let segments = self.segments.read().unwrap();
                    segments.iter().find(|s| s.base > cursor.segment.base).cloned()
                };
                // A later segment exists only once this one is sealed, so its length is final.
                match next {
                    Some(s) => {
                        cursor.segment = s;
                        cursor.pos = 0;
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            let chunk = if cursor.ahead.is_empty() {
                read_bytes(&cursor.segment, cursor.pos, ((len - cursor.pos) as usize).min(READ_CHUNK))?
            } else {
                std::mem::take(&mut cursor.ahead)
            };
            let mut at = 0;
            while at < chunk.len() && taken < max {
                match record::decode(&chunk, at) {
                    Decoded::Record(rec) => {
                        at += rec.framed_len;
                        if rec.offset >= cursor.offset {
                            cursor.offset = rec.offset + 1;
                            out.push(rec);
                            taken += 1;
                        }
                    }
                    Decoded::Incomplete { needed } if at == 0 => {
                        // One record larger than a chunk: read exactly it.
                        let big = read_bytes(&cursor.segment, cursor.pos, needed)?;
                        match record::decode(&big, 0) {
                            Decoded::Record(rec) => {
                                // Past the end of `chunk`: nothing of it is kept for later.
                                at = rec.framed_len;
                                cursor.offset = rec.offset + 1;
                                out.push(rec);
                                taken += 1;
                            }
                            _ => return Err(corrupt(&cursor.segment, cursor.pos, "record runs past the segment")),
                        }
                        break;
                    }
                    Decoded::Incomplete { .. } => break,
                    Decoded::Corrupt(reason) => return Err(corrupt(&cursor.segment, cursor.pos + at as u64, &reason)),
                }
            }
            cursor.pos += at as u64;
            if taken == max && at < chunk.len() {
                cursor.ahead = chunk.slice(at..);
            }
        }
        Ok(())
    }
}

/// Opens a file for reading and writing, creating it empty if missing, keeping what it holds.
pub(crate) fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| BusError::io("opening", path, e))
}

fn corrupt(segment: &Segment, position: u64, reason: &str) -> BusError {
    BusError::Corrupt { path: segment.path.clone(), position, reason: reason.to_string() }
}

fn read_bytes(segment: &Segment, pos: u64, n: usize) -> Result<Bytes> {
    let mut buf = BytesMut::zeroed(n);
    segment.file.read_exact_at(&mut buf, pos).map_err(|e| BusError::io("reading", &segment.path, e))?;
    Ok(buf.freeze())
}

/// The record at `pos`, or `None` if the segment ends inside it.
fn read_at(segment: &Segment, pos: u64, len: u64) -> Result<Option<(StoredRecord, Bytes)>> {
    let header = read_bytes(segment, pos, record::FRAME_HEADER.min((len - pos) as usize))?;
    let body_len = match record::decode(&header, 0) {
        Decoded::Incomplete { needed } => needed,
        Decoded::Corrupt(reason) => return Err(corrupt(segment, pos, &reason)),
        Decoded::Record(rec) => rec.framed_len,
    };
    if pos + body_len as u64 > len {
        return Ok(None);
    }
    let bytes = read_bytes(segment, pos, body_len)?;
    match record::decode(&bytes, 0) {
        Decoded::Record(rec) => Ok(Some((rec, bytes))),
        Decoded::Incomplete { .. } => Ok(None),
        Decoded::Corrupt(reason) => Err(corrupt(segment, pos, &reason)),
    }
}

/// Scans the last segment and cuts it after its last whole, valid, in-sequence record.
fn recover_tail(segment: &Segment) -> Result<()> {
    let len = segment.len.load(Ordering::Acquire);
    let mut pos = 0u64;
    let mut expected = segment.base;
    let mut problem = None;
    while pos < len {
        let want = ((len - pos) as usize).min(READ_CHUNK);
        let chunk = read_bytes(segment, pos, want)?;
        let mut at = 0usize;
        loop {
            if at == chunk.len() {
                break;
            }
            match record::decode(&chunk, at) {
                Decoded::Record(rec) if rec.offset == expected => {
                    segment.note_index(rec.offset, pos + at as u64);
                    expected += 1;
                    at += rec.framed_len;
                }
                Decoded::Record(rec) => {
                    problem = Some(format!("offset {} where {expected} was due", rec.offset));
                    break;
                }
                Decoded::Incomplete { needed } if at == 0 && pos + needed as u64 <= len => {
                    // A record bigger than the chunk: check it whole.
                    let big = read_bytes(segment, pos, needed)?;
                    match record::decode(&big, 0) {
                        Decoded::Record(rec) if rec.offset == expected => {
                            segment.note_index(rec.offset, pos);
                            expected += 1;
                            at = rec.framed_len;
                        }
                        _ => problem = Some("invalid record".to_string()),
                    }
                    break;
                }
                Decoded::Incomplete { .. } if pos + (chunk.len() as u64) < len => break,
                Decoded::Incomplete { .. } => {
                    problem = Some("record cut short".to_string());
                    break;
                }
                Decoded::Corrupt(reason) => {
                    problem = Some(reason);
                    break;
                }
            }
        }
        pos += at as u64;
        if problem.is_some() || at == 0 {
            break;
        }
    }
    if pos < len {
        tracing::warn!(
            segment = %segment.path.display(),
            kept_bytes = pos,
            dropped_bytes = len - pos,
            reason = problem.as_deref().unwrap_or("unreadable tail"),
            "truncating torn tail of the embedded log"
        );
        metrics::counter!("weir_bus_local_torn_tails_total").increment(1);
        segment.file.set_len(pos).map_err(|e| BusError::io("truncating", &segment.path, e))?;
        segment.len.store(pos, Ordering::Release);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value of record `i`: small, except every 7th, which is larger than a read chunk.
    fn value(i: usize) -> Vec<u8> {
        let len = if i % 7 == 3 { READ_CHUNK + 1000 + i } else { 100 + i % 50 };
        vec![(i % 251) as u8; len]
    }

    #[test]
    fn reads_of_a_few_records_at_a_time_see_every_record_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments, so reads also cross from one segment to the next.
        let log = PartitionLog::open(dir.path(), 2 * READ_CHUNK as u64, Fsync::Never).unwrap();
        let mut cursor = log.cursor(0).unwrap();
        let (mut written, mut read) = (0, Vec::new());
        let mut out = Vec::new();
        for round in 0..30 {
            // Appends between reads: what a read fetched ahead must not hide them.
            let batch: Vec<Record> =
                (written..written + 5 + round).map(|i| Record::keyed(format!("{i}"), value(i))).collect();
            log.append(&batch.iter().collect::<Vec<_>>(), 0).unwrap();
            written += batch.len();
            for max in [1, 3, 2] {
                out.clear();
                log.read(&mut cursor, max, &mut out).unwrap();
                assert!(out.len() <= max);
                read.extend(out.drain(..).map(|r| (r.offset, r.value.unwrap())));
            }
        }
        loop {
            out.clear();
            log.read(&mut cursor, 4, &mut out).unwrap();
            if out.is_empty() {
                break;
            }
            read.extend(out.drain(..).map(|r| (r.offset, r.value.unwrap())));
        }
        assert_eq!(read.len(), written);
        for (i, (offset, v)) in read.iter().enumerate() {
            assert_eq!(*offset, i as i64);
            assert_eq!(v[..], value(i)[..], "record {i}");
        }
        assert_eq!(cursor.offset, written as i64);
    }
}
