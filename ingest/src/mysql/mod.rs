//! MySQL / MariaDB change data capture from the binlog, as Debezium's `mysql` and `mariadb`
//! connectors do it.
//!
//! - [`connection`]: the URL with its TLS settings, the password from the environment or a file.
//! - [`columns`]: table definitions (from `information_schema` or a binlog `TABLE_MAP`) and
//!   Debezium's type mapping to Connect schemas and values.
//! - [`events`]: change-event records (key, envelope, tombstones) and schema-change events.
//! - [`history`]: the schema history in Debezium's layout (`<prefix>.schema-history`), and the
//!   Debezium column description of each column type.
//! - [`offset`]: the persisted position (binlog file/pos, GTID, rows already produced of the
//!   transaction in progress, snapshot state).
//! - [`replay`]: the binlog position on every change record, and skipping, after a restart, the
//!   changes a partition already holds (no repeats after a crash before an offset save).
//! - [`snapshot`]: the initial consistent snapshot (`op = "r"`) tied to a binlog position.
//! - [`signal`]: Debezium signals from the signal table or the `<prefix>.signals` topic.
//! - [`incremental`]: incremental (chunked, watermarked) and blocking snapshots while streaming.
//! - [`stream`]: the binlog reader (replica protocol, MariaDB GTID/annotate events included).
//! - [`source`]: the running source: checks, snapshot, streaming, batching, offsets.
//! - [`preflight`]: every server setting and privilege to fix before a first capture, with the
//!   fix (`weir init`).
//!
//! The server needs `log_bin`, `binlog_format=ROW`, `binlog_row_image=FULL` and
//! `binlog_row_metadata=FULL` (MySQL 8.0.1+, MariaDB 10.5+): the full row metadata lets every
//! row be decoded with the column names and types in force at its binlog position, without
//! parsing DDL.

pub mod columns;
pub mod connection;
pub mod ddl;
pub mod events;
pub mod history;
pub mod incremental;
pub mod offset;
pub mod preflight;
pub mod replay;
pub mod signal;
pub mod snapshot;
pub mod source;
pub mod stream;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use weir_bus::BusError;
use weir_schemas::serializer::SerializeError;

pub use source::MysqlSource;

/// When the source takes a snapshot (Debezium's `snapshot.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot when there is no completed snapshot in the offset, then stream.
    #[default]
    Initial,
    /// Snapshot as `initial`, then stop.
    InitialOnly,
    /// Never snapshot; with no offset, stream from the oldest binlog the server has.
    Never,
    /// As `initial`, and snapshot again when the saved binlog position has been purged.
    WhenNeeded,
    /// Rebuild a lost or damaged schema history from the tables' current definitions at the
    /// saved offset, read no rows, then stream (Debezium's `recovery`). Only correct if no
    /// captured table's definition changed since the offset; set the mode back afterwards.
    Recovery,
}

/// How events are encoded (Debezium with Confluent's Avro converter, or with the JSON converter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// Avro in the Confluent wire format, schemas in the registry.
    #[default]
    Avro,
    /// Connect JSON: `{"schema": …, "payload": …}`.
    Json,
}

/// A `[[sources]]` entry with `kind = "mysql"` (MySQL 8 or MariaDB 10.5+).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// Source name; its offset is kept under this name.
    pub name: String,
    /// `mysql://user[:password]@host:port`, with `?ssl-mode=…&ssl-ca=…` for TLS ([`connection`]).
    pub url: String,
    /// The environment variable holding the password (instead of writing it in the URL)…
    #[serde(default)]
    pub password_env: Option<String>,
    /// … or the file holding it.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The replica server id this source announces (unique among the server's replicas).
    #[serde(default = "default_server_id")]
    pub server_id: u32,
    /// Topic prefix (Debezium's `topic.prefix`): topics are `<prefix>.<db>.<table>`.
    pub topic_prefix: String,
    /// `db.table` patterns to capture (`*` matches any run of characters); empty = every table
    /// outside the system databases.
    #[serde(default)]
    pub include_tables: Vec<String>,
    /// `db.table` patterns not to capture.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// When to snapshot.
    #[serde(default)]
    pub snapshot_mode: SnapshotMode,
    /// Event encoding.
    #[serde(default)]
    pub format: EventFormat,
    /// Send a tombstone (null value) after each delete, for log compaction.
    #[serde(default = "default_true")]
    pub tombstones_on_delete: bool,
    /// Operations not to emit (`c`, `u`, `d`, `t`); Debezium's default skips truncates.
    #[serde(default = "default_skipped")]
    pub skipped_operations: Vec<String>,
    /// Put the SQL statement (MariaDB `ANNOTATE_ROWS` / MySQL `ROWS_QUERY`) in `source.query`.
    #[serde(default)]
    pub include_query: bool,
    /// Partitions of the topics the source creates.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Topic-level configs of the change-event topics it creates (`retention.ms`,
    /// `cleanup.policy`, …, Kafka's names). The schema-history topic always keeps every record.
    #[serde(default)]
    pub topic_config: weir_bus::TopicConfig,
    /// Events per produced batch (and offset save) at most.
    #[serde(default = "default_batch")]
    pub max_batch: usize,
    /// How often the server sends a heartbeat when the binlog is idle; also the least time
    /// between two heartbeat records.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Write Debezium heartbeat records (key `{serverName}`, value `{ts_ms}`) to this topic at
    /// most every `heartbeat_interval` while streaming (Debezium's default name is
    /// `__debezium-heartbeat.<prefix>`). Off by default.
    #[serde(default)]
    pub heartbeat_topic: Option<String>,
    /// A statement run on the source at each heartbeat record (Debezium's
    /// `heartbeat.action.query`), e.g. an update of a heartbeat table, so a database whose
    /// captured tables are idle still moves the binlog on.
    #[serde(default)]
    pub heartbeat_action_query: Option<String>,
    /// Debezium's `provide.transaction.metadata`: fill each streamed event's `transaction` block
    /// and write a `BEGIN` and an `END` record per transaction to `<prefix>.transaction`.
    #[serde(default)]
    pub provide_transaction_metadata: bool,
    /// Debezium's `signal.data.collection`: the `db.table` whose inserted rows `(id, type,
    /// data)` are signals, and where incremental snapshots write their window watermarks.
    /// Signals also come from the `<prefix>.signals` topic.
    #[serde(default)]
    pub signal_data_collection: Option<String>,
    /// Debezium's `read.only`: never write to the source. Incremental snapshots then take each
    /// chunk's position from MariaDB's consistent snapshot instead of watermark rows (MariaDB
    /// only); signals come from the topic.
    #[serde(default)]
    pub read_only: bool,
    /// Rows per incremental-snapshot chunk (Debezium's `incremental.snapshot.chunk.size`).
    #[serde(default = "default_chunk")]
    pub incremental_snapshot_chunk_size: usize,
    /// Log snapshot progress this often.
    #[serde(default = "default_progress", with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Where the offset file is kept.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_server_id() -> u32 {
    5400
}
fn default_true() -> bool {
    true
}
fn default_skipped() -> Vec<String> {
    vec!["t".into()]
}
fn default_partitions() -> u32 {
    1
}
fn default_batch() -> usize {
    4096
}
fn default_chunk() -> usize {
    1024
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}
fn default_progress() -> Duration {
    Duration::from_secs(5)
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./weir-data/ingest")
}

impl MysqlSourceConfig {
    /// A configuration with every optional field at its default.
    pub fn new(name: impl Into<String>, url: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        MysqlSourceConfig {
            name: name.into(),
            url: url.into(),
            password_env: None,
            password_file: None,
            server_id: default_server_id(),
            topic_prefix: topic_prefix.into(),
            include_tables: Vec::new(),
            exclude_tables: Vec::new(),
            snapshot_mode: SnapshotMode::default(),
            format: EventFormat::default(),
            tombstones_on_delete: true,
            skipped_operations: default_skipped(),
            include_query: false,
            partitions: default_partitions(),
            topic_config: weir_bus::TopicConfig::new(),
            max_batch: default_batch(),
            heartbeat_interval: default_heartbeat(),
            heartbeat_topic: None,
            heartbeat_action_query: None,
            provide_transaction_metadata: false,
            signal_data_collection: None,
            read_only: false,
            incremental_snapshot_chunk_size: default_chunk(),
            progress_interval: default_progress(),
            state_dir: default_state_dir(),
        }
    }

    /// Whether `db.table` is captured.
    pub fn captures(&self, db: &str, table: &str) -> bool {
        if SYSTEM_DATABASES.contains(&db) {
            return false;
        }
        let name = format!("{db}.{table}");
        (self.include_tables.is_empty() || self.include_tables.iter().any(|p| glob(p, &name)))
            && !self.exclude_tables.iter().any(|p| glob(p, &name))
    }

    /// Whether a table of database `db` may be captured: whether DDL on the database as a whole
    /// (`CREATE|DROP DATABASE`) can concern this source.
    pub fn may_capture_database(&self, db: &str) -> bool {
        !SYSTEM_DATABASES.contains(&db)
            && (self.include_tables.is_empty()
                || self.include_tables.iter().any(|p| p.split_once('.').is_none_or(|(d, _)| glob(d, db))))
    }

    /// The databases every captured table is in, when the include patterns name them literally
    /// (`shop.*`, `billing.invoices`); `None` when any table of any database may be captured.
    /// `information_schema` is read for these databases only: on a server with many schemas its
    /// reads are the heaviest statements a source sends.
    pub fn captured_databases(&self) -> Option<Vec<String>> {
        let mut dbs: Vec<String> = Vec::new();
        for pattern in &self.include_tables {
            let (db, table) = pattern.split_once('.')?;
            if db.contains('*') || table.contains('.') {
                return None;
            }
            if !dbs.iter().any(|d| d == db) {
                dbs.push(db.to_string());
            }
        }
        (!dbs.is_empty()).then_some(dbs)
    }

    /// Whether the operation with Debezium code `op` is emitted.
    pub fn emits(&self, op: &str) -> bool {
        !self.skipped_operations.iter().any(|s| s == op)
    }
}

/// Databases never captured.
pub const SYSTEM_DATABASES: [&str; 4] = ["mysql", "information_schema", "performance_schema", "sys"];

/// `*`-glob match, case-sensitive.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else { return false };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// Why the MySQL source stopped.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    /// The server is not set up for CDC, or the user lacks a privilege.
    #[error("source {source_name}: {reason}")]
    Setup {
        /// Source name.
        source_name: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A query or the replication stream failed.
    #[error("source {source_name}: {action}: {error}")]
    Server {
        /// Source name.
        source_name: String,
        /// What was being done.
        action: String,
        /// The driver's error.
        error: Box<mysql_async::Error>,
    },
    /// The saved binlog position no longer exists on the server.
    #[error(
        "source {source_name}: binlog {file} (saved offset) has been purged from the server; set snapshot_mode = \
         \"when_needed\" to snapshot again, or delete {offset_file} to start over"
    )]
    Purged {
        /// Source name.
        source_name: String,
        /// The purged file.
        file: String,
        /// The offset file.
        offset_file: PathBuf,
    },
    /// A table definition or a row could not be decoded.
    #[error("source {source_name}: {file}:{pos}: {reason}")]
    Decode {
        /// Source name.
        source_name: String,
        /// Binlog file (or `snapshot`).
        file: String,
        /// Event position.
        pos: u64,
        /// Why.
        reason: String,
    },
    /// The offset file could not be read or written.
    #[error("source {source_name}: {action} {path}: {error}")]
    Io {
        /// Source name.
        source_name: String,
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        error: std::io::Error,
    },
    /// The bus refused the events.
    #[error("source {1}: {0}")]
    Bus(#[source] Box<BusError>, String),
    /// An event could not be serialized.
    #[error("source {1}: {0}")]
    Serialize(#[source] Box<SerializeError>, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_filters() {
        let mut c = MysqlSourceConfig::new("s", "mysql://x", "p");
        assert!(c.captures("shop", "orders"));
        assert!(!c.captures("mysql", "user"), "system databases are never captured");
        assert!(c.may_capture_database("any") && !c.may_capture_database("mysql"));
        c.include_tables = vec!["shop.*".into()];
        assert!(c.may_capture_database("shop") && !c.may_capture_database("weir_cli"));
        assert_eq!(c.captured_databases(), Some(vec!["shop".to_string()]));
        let with = |patterns: &[&str]| {
            let mut c = c.clone();
            c.include_tables = patterns.iter().map(|p| p.to_string()).collect();
            c.captured_databases()
        };
        assert_eq!(with(&["a.t", "b.*", "a.u"]), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(with(&["a.t", "shop_*.orders"]), None, "a wildcard database");
        let mut wild = c.clone();
        wild.include_tables = vec!["shop_*.orders".into()];
        assert!(wild.may_capture_database("shop_eu") && !wild.may_capture_database("crm"));
        assert_eq!(with(&[]), None, "every database");
        assert_eq!(with(&["a.b.c"]), None, "a dot in a name: which part is the database is unclear");
        c.exclude_tables = vec!["shop.tmp_*".into()];
        assert!(c.captures("shop", "orders"));
        assert!(!c.captures("shop", "tmp_x"));
        assert!(!c.captures("crm", "orders"));
        assert!(glob("a*b*c", "aXXbYc") && !glob("a*b", "ab_"));
        assert!(!c.emits("t") && c.emits("d"));
    }
}
