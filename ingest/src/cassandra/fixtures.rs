//! The real commit-log segments from Cassandra's `CommitLogUpgradeTest` (kept in
//! `shared/fixtures/cassandra-commitlog/<version>/`), used by tests and `weir bench cdc-cassandra`:
//! where they are, the one table they capture, and the cell count and hash Cassandra expects.

use std::path::{Path, PathBuf};

use std::io::Write;

use super::{
    compression::Codec,
    mutation::Tables,
    schema::TableSchema,
    segment::{be_i32, marker_crc, write_header},
};

/// One version's fixture.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Cassandra version (the folder name).
    pub version: String,
    /// The segment file.
    pub segment: PathBuf,
    /// The captured table's id (`cfid` in hash.txt).
    pub table_id: String,
    /// Cells the upgrade test expects (rows whose first clustering value starts with `name`).
    pub cells: usize,
    /// The hash the upgrade test expects over those cells' values (see [`fold`]).
    pub hash: i32,
}

impl Fixture {
    /// Reads `<dir>/hash.txt` and finds the segment beside it.
    pub fn load(dir: &Path) -> std::io::Result<Fixture> {
        let text = std::fs::read_to_string(dir.join("hash.txt"))?;
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::trim)
                .ok_or_else(|| std::io::Error::other(format!("{}: no {key}=", dir.join("hash.txt").display())))
        };
        let number = |key: &str| -> std::io::Result<i64> {
            get(key)?.parse().map_err(|e| std::io::Error::other(format!("{key} in {}: {e}", dir.display())))
        };
        let segment = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .ok_or_else(|| std::io::Error::other(format!("{}: no .log segment", dir.display())))?;
        Ok(Fixture {
            version: dir.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            segment,
            table_id: get("cfid")?.to_string(),
            cells: number("cells")? as usize,
            hash: number("hash")? as i32,
        })
    }

    /// Every version under `dir`, sorted by version.
    pub fn load_all(dir: &Path) -> std::io::Result<Vec<Fixture>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.join("hash.txt").exists() {
                out.push(Fixture::load(&path)?);
            }
        }
        out.sort_by(|a, b| a.version.cmp(&b.version));
        Ok(out)
    }

    /// The captured table's definition (`Keyspace1.Standard1`).
    pub fn cql(&self) -> String {
        format!(
            r#"CREATE TABLE "Keyspace1"."Standard1" (key ascii, col ascii, val blob, val0 blob, PRIMARY KEY (key, col)) WITH ID = {};"#,
            self.table_id
        )
    }

    /// The captured table, ready for decoding.
    pub fn tables(&self) -> Tables {
        Tables::new(TableSchema::parse_all(&self.cql()).expect("the fixture table parses"))
    }
}

/// The fixtures folder of this checkout (`../shared/fixtures/cassandra-commitlog`).
pub fn default_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/cassandra-commitlog")
}

/// The upgrade test's hash step for one cell value: each byte shifted by 0, 8, 16, 24, 0, … bits
/// and added, wrapping.
pub fn fold(mut hash: i32, bytes: &[u8]) -> i32 {
    let mut shift = 0;
    for &b in bytes {
        hash = hash.wrapping_add(i32::from(b).wrapping_shl(shift));
        shift = (shift + 8) & 31;
    }
    hash
}

/// The uncompressed segment `plain` rewritten as Cassandra's `CompressedSegment` would write it
/// with `codec`, the header naming compressor class `class` (e.g. `LZ4Compressor`): each sync
/// section's entries compressed behind its marker and uncompressed length. No Cassandra is at
/// hand to write compressed segments, so tests build them from the real fixtures with this.
pub fn compressed_copy(plain: &[u8], codec: Codec, class: &str) -> Vec<u8> {
    let version = be_i32(&plain[0..4]);
    let id = i64::from_be_bytes(plain[4..12].try_into().unwrap());
    let header_len = 14 + u16::from_be_bytes([plain[12], plain[13]]) as usize + 4;
    let params =
        format!(r#"{{"compressionParameters":{{}},"compressionClass":"org.apache.cassandra.io.compress.{class}"}}"#);
    let mut out = write_header(version, id, &params);
    let mut at = header_len;
    while at + 8 <= plain.len() {
        let next = be_i32(&plain[at..at + 4]) as usize;
        if next == 0 {
            break;
        }
        let entries = &plain[at + 8..next];
        let body = match codec {
            Codec::Lz4 => {
                let mut b = (entries.len() as u32).to_le_bytes().to_vec();
                b.extend(lz4_flex::block::compress(entries));
                b
            }
            Codec::Snappy => snap::raw::Encoder::new().compress_vec(entries).expect("snappy"),
            Codec::Deflate => {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(entries).expect("deflate");
                e.finish().expect("deflate")
            }
            Codec::Zstd => ruzstd::encoding::compress_to_vec(entries, ruzstd::encoding::CompressionLevel::Fastest),
        };
        let marker_at = out.len();
        out.extend_from_slice(&((marker_at + 12 + body.len()) as i32).to_be_bytes());
        out.extend_from_slice(&marker_crc(id, marker_at).to_be_bytes());
        out.extend_from_slice(&(entries.len() as i32).to_be_bytes());
        out.extend_from_slice(&body);
        at = next;
    }
    out.resize(out.len() + 64, 0); // the zeroed rest of a preallocated segment
    out
}
