//! The MySQL source's persisted position, saved (temporary file, then rename) after each batch the
//! bus has acknowledged.
//!
//! Between transactions it is the position of the next event. Inside a transaction whose events
//! span several batches (a 100,000-row transaction does) it is the position where that
//! transaction starts plus `skip_rows`, the number of row changes of it already produced: a
//! restart reads the transaction again and skips them, so nothing is produced twice unless the
//! crash came between a send and its offset save.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use super::incremental::SnapshotQueue;

/// Where the source resumes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Offset {
    /// Binlog file.
    pub file: String,
    /// Position in it.
    pub pos: u64,
    /// Row changes to skip from `pos` (those of a partly produced transaction).
    #[serde(default)]
    pub skip_rows: u64,
    /// GTID of the last transaction fully produced (MariaDB `domain-server-seq`, MySQL `uuid:n`).
    #[serde(default)]
    pub gtid: Option<String>,
    /// MariaDB's GTID position there (the last GTID of each replication domain, comma-separated,
    /// as `@@gtid_slave_pos` writes it): where to resume on another server of the replication
    /// topology, whose binlog files and positions differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_position: Option<String>,
    /// `@@server_id` of the server whose binlog `file`/`pos` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<u32>,
    /// Whether the initial snapshot finished.
    #[serde(default)]
    pub snapshot_completed: bool,
    /// Incremental and blocking snapshots asked for by signals and not finished.
    #[serde(default, skip_serializing_if = "SnapshotQueue::is_empty")]
    pub snapshots: SnapshotQueue,
    /// The next record of the signal topic to act on.
    #[serde(default)]
    pub signal_offset: i64,
}

/// Reading or writing the offset file failed.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {error}", path.display())]
pub struct OffsetError {
    /// What was being done.
    pub action: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Cause.
    pub error: std::io::Error,
}

/// The offset file of source `name` under `dir`.
pub fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.mysql-offset.json"))
}

/// The saved offset, if any.
pub fn load(path: &Path) -> Result<Option<Offset>, OffsetError> {
    let err = |action, error| OffsetError { action, path: path.to_path_buf(), error };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| err("parsing", std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("reading", e)),
    }
}

/// Saves `offset` atomically.
pub fn save(path: &Path, offset: &Offset) -> Result<(), OffsetError> {
    let err = |action, error| OffsetError { action, path: path.to_path_buf(), error };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("creating the directory of", e))?;
    }
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(offset).expect("offsets serialize");
    std::fs::write(&tmp, json).map_err(|e| err("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("replacing", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path(), "db1");
        assert_eq!(load(&p).unwrap(), None);
        let o = Offset {
            file: "mysql-bin.000003".into(),
            pos: 1234,
            skip_rows: 7,
            gtid: Some("0-1-42".into()),
            gtid_position: Some("0-1-42,1-2-7".into()),
            server_id: Some(1),
            snapshot_completed: true,
            snapshots: SnapshotQueue::default(),
            signal_offset: 3,
        };
        save(&p, &o).unwrap();
        assert_eq!(load(&p).unwrap(), Some(o));
        std::fs::write(&p, "{not json").unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("parsing"));
    }
}
