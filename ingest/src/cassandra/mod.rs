//! Cassandra change data capture: decoding commit-log segments from a node's `cdc_raw` directory.
//!
//! [`segment`] checks a segment's framing (header, sync markers, CRCs) and yields serialized
//! mutations; [`mutation`] decodes them into partition updates, rows and cells using the captured
//! tables' CQL definitions from [`schema`]; [`json`] renders them. [`read_segment`] ties these
//! together. Mutations of tables not captured are skipped by table id.

pub mod compression;
pub mod events;
pub mod fixtures;
pub mod json;
pub mod mutation;
pub mod schema;
pub mod segment;
pub mod source;
pub mod values;
mod vint;

use self::{
    mutation::{PartitionUpdate, Tables},
    segment::{SegmentError, SegmentReader},
};

/// A segment that could not be decoded, with the file and byte position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitLogError {
    /// The framing is broken (CRC mismatch, truncation, bad header).
    #[error(transparent)]
    Segment(#[from] SegmentError),
    /// A mutation whose CRC was right but whose contents do not fit the captured schema.
    #[error("commit log {file}: mutation at byte {position}: {source}")]
    Mutation {
        /// The segment file.
        file: String,
        /// Byte position of the mutation's entry.
        position: u64,
        /// The decoding error.
        #[source]
        source: mutation::MutationError,
    },
}

/// What reading one segment found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Mutations read.
    pub mutations: usize,
    /// Mutations of tables not captured (skipped).
    pub skipped: usize,
    /// Partition updates of captured tables.
    pub updates: usize,
    /// Bytes read up to the end of the last mutation.
    pub bytes: u64,
}

/// Decodes every mutation of the segment `data` (from `file`), calling `on_update` with the entry
/// position and each partition update of a captured table, in log order.
pub fn read_segment(
    file: &str,
    data: &[u8],
    tables: &Tables,
    mut on_update: impl FnMut(u64, &PartitionUpdate<'_>),
) -> Result<SegmentStats, CommitLogError> {
    let (data, _) = segment::readable(file, data, None)?;
    let mut reader = SegmentReader::new(file, &data)?;
    let mut stats = SegmentStats::default();
    for entry in reader.by_ref() {
        let entry = entry?;
        stats.mutations += 1;
        let decoded = mutation::decode(entry.mutation, tables).map_err(|source| CommitLogError::Mutation {
            file: file.to_string(),
            position: entry.position,
            source,
        })?;
        if decoded.updates.is_empty() {
            stats.skipped += 1;
        }
        for update in &decoded.updates {
            stats.updates += 1;
            on_update(entry.position, update);
        }
    }
    stats.bytes = reader.position();
    Ok(stats)
}
