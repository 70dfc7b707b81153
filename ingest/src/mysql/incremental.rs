//! Snapshots taken while the source streams, as signals ask for them (Debezium's incremental and
//! blocking snapshots).
//!
//! **Incremental** (DBLog's algorithm, as Debezium): each table is read in chunks of
//! `incremental_snapshot_chunk_size` rows in primary-key order, up to the largest key it had when
//! its snapshot began. A chunk's rows wait in memory for a point of the binlog where emitting
//! them cannot overwrite a newer change:
//! - with a signal table, the source inserts an open watermark row, reads the chunk, then
//!   inserts a close watermark row. Each change the binlog shows between the two watermarks for a
//!   key of the chunk drops that key's row from the chunk (the change is as new or newer); at the
//!   close watermark the remaining rows go out as `op = "r"` events (`source.snapshot =
//!   "incremental"`). A change before the open watermark committed before the read, so the read
//!   saw it; one after the close watermark committed after it.
//! - read-only (`read_only = true`, MariaDB): no write to the source. The chunk is read in a
//!   consistent-snapshot transaction whose exact binlog position MariaDB reports
//!   (`binlog_snapshot_file/position`); its rows go out when the stream reaches that position,
//!   after every change the read saw and before every change it did not. (MySQL has no such
//!   position: there a read-only source refuses to start and a signal table is needed.)
//!
//! **Blocking**: the tables are read in one consistent-snapshot transaction; the stream goes on
//! to the snapshot's binlog position, then pauses while the rows go out, then resumes.
//!
//! The queue of tables, the current table's last emitted key and largest key, and the pause
//! flag are saved with the offset ([`SnapshotQueue`]): after a crash the snapshot resumes at the
//! chunk after the last one saved. A chunk emitted but not yet saved is read and emitted again
//! (at-least-once for `r` events, as in Debezium; the current-state tables are unaffected).

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Arc,
};

use mysql_async::{Conn, prelude::Queryable};
use serde::{Deserialize, Serialize};
use weir_schemas::{
    connect::Value,
    envelope::{Op, SnapshotMarker},
};

use super::{
    MysqlError,
    columns::{ColumnType, TableDef},
    events::{RowChange, TableEvents},
    replay::{self, Position},
    signal::{self, Action, WINDOW_CLOSE, WINDOW_OPEN},
    source::{MysqlSource, TableName, now_us},
    stream,
};

/// A key column's value as the server returned it, kept in the offset to resume after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyValue {
    /// NULL.
    Null,
    /// Strings, decimals, binary.
    Bytes(Vec<u8>),
    /// Signed integers.
    Int(i64),
    /// Unsigned integers.
    UInt(u64),
    /// FLOAT.
    Float(f32),
    /// DOUBLE.
    Double(f64),
    /// Dates and datetimes: year, month, day, hour, minute, second, microsecond.
    Date(u16, u8, u8, u8, u8, u8, u32),
    /// TIME: negative, days, hours, minutes, seconds, microseconds.
    Time(bool, u32, u8, u8, u8, u32),
}

impl From<&mysql_async::Value> for KeyValue {
    fn from(v: &mysql_async::Value) -> Self {
        use mysql_async::Value as V;
        match v.clone() {
            V::NULL => KeyValue::Null,
            V::Bytes(b) => KeyValue::Bytes(b),
            V::Int(i) => KeyValue::Int(i),
            V::UInt(u) => KeyValue::UInt(u),
            V::Float(f) => KeyValue::Float(f),
            V::Double(d) => KeyValue::Double(d),
            V::Date(y, mo, d, h, mi, s, us) => KeyValue::Date(y, mo, d, h, mi, s, us),
            V::Time(neg, d, h, mi, s, us) => KeyValue::Time(neg, d, h, mi, s, us),
        }
    }
}

impl From<&KeyValue> for mysql_async::Value {
    fn from(v: &KeyValue) -> Self {
        use mysql_async::Value as V;
        match v.clone() {
            KeyValue::Null => V::NULL,
            KeyValue::Bytes(b) => V::Bytes(b),
            KeyValue::Int(i) => V::Int(i),
            KeyValue::UInt(u) => V::UInt(u),
            KeyValue::Float(f) => V::Float(f),
            KeyValue::Double(d) => V::Double(d),
            KeyValue::Date(y, mo, d, h, mi, s, us) => V::Date(y, mo, d, h, mi, s, us),
            KeyValue::Time(neg, d, h, mi, s, us) => V::Time(neg, d, h, mi, s, us),
        }
    }
}

/// Snapshots asked for and not finished; saved with the offset.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SnapshotQueue {
    /// Tables (`db.table`) to snapshot incrementally, the one being read first.
    #[serde(default)]
    pub tables: VecDeque<String>,
    /// `additional-conditions` per table: a `WHERE` condition on the rows to read.
    #[serde(default)]
    pub conditions: BTreeMap<String, String>,
    /// Key of the last row of the first table that went out.
    #[serde(default)]
    pub last_key: Option<Vec<KeyValue>>,
    /// The first table's largest key when its snapshot began (rows added later stream in).
    #[serde(default)]
    pub max_key: Option<Vec<KeyValue>>,
    /// `pause-snapshot` received and no `resume-snapshot` since.
    #[serde(default)]
    pub paused: bool,
    /// Tables of a blocking snapshot not yet taken.
    #[serde(default)]
    pub blocking: Vec<String>,
}

impl SnapshotQueue {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.blocking.is_empty() && !self.paused
    }
}

/// Where a chunk's rows may go out.
enum Window {
    /// Between the signal table's watermark rows with these ids.
    Watermarks { open: String, close: String, opened: bool },
    /// When the stream reaches this binlog position (MariaDB's consistent-snapshot position).
    At { file: String, pos: u64 },
}

/// A chunk read and not yet emitted.
struct Chunk {
    name: TableName,
    events: Arc<TableEvents>,
    /// Rows with their key's identity.
    rows: Vec<(String, Vec<Value>)>,
    /// Keys changed by the stream inside the window.
    changed: HashSet<String>,
    /// The raw key of the chunk's last row.
    last: Option<Vec<KeyValue>>,
    /// The chunk was full: more rows may follow.
    full: bool,
    window: Window,
}

/// A blocking snapshot's open transaction and the binlog position it sees.
struct Blocking {
    conn: Conn,
    file: String,
    pos: u64,
}

/// The source's snapshot work beside streaming.
#[derive(Default)]
pub(super) struct Incremental {
    chunk: Option<Chunk>,
    blocking: Option<Blocking>,
    /// The connection chunks are read and watermarks written on.
    conn: Option<Conn>,
    /// Watermark ids made by this process.
    chunks: u64,
}

/// The identity of a key (its values' text), for the window's bookkeeping.
fn key_id(def: &TableDef, row: &[Value]) -> String {
    let key: Vec<&Value> = def.key.iter().map(|&i| &row[i]).collect();
    format!("{key:?}")
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The select list of a table's rows as events carry them (SET members as the bitmask the
/// binlog carries).
pub(super) fn select_list(def: &TableDef) -> String {
    def.columns
        .iter()
        .map(|c| {
            let q = quote(&c.name);
            if matches!(c.ty, ColumnType::Set { .. }) { format!("{q}+0 AS {q}") } else { q }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row read from the table, as Connect values.
pub(super) fn row_values(def: &TableDef, raw: &[mysql_async::Value]) -> Result<Vec<Value>, String> {
    def.columns.iter().zip(raw).map(|(column, v)| column.value(v, false)).collect()
}

/// `key > values` (`strict`) or `key <= values` over the key columns `keys`, expanded into
/// comparisons the server can use an index for: `(a > ?) OR (a = ? AND b > ?)`.
fn key_predicate(keys: &[String], values: &[KeyValue], after: bool) -> (String, Vec<mysql_async::Value>) {
    let mut terms = Vec::new();
    let mut params = Vec::new();
    let cmp = if after { ">" } else { "<" };
    for i in 0..keys.len() {
        let mut parts: Vec<String> = keys[..i].iter().map(|k| format!("{k} = ?")).collect();
        parts.push(format!("{} {cmp} ?", keys[i]));
        params.extend(values[..=i].iter().map(mysql_async::Value::from));
        terms.push(format!("({})", parts.join(" AND ")));
    }
    if !after {
        terms.push(format!("({})", keys.iter().map(|k| format!("{k} = ?")).collect::<Vec<_>>().join(" AND ")));
        params.extend(values.iter().map(mysql_async::Value::from));
    }
    (format!("({})", terms.join(" OR ")), params)
}

impl MysqlSource {
    fn signal_table(&self) -> Option<(&str, &str)> {
        self.config.signal_data_collection.as_deref().and_then(|c| c.split_once('.'))
    }

    /// Whether `db.table` is the signal table.
    pub(super) fn is_signal_table(&self, db: &str, table: &str) -> bool {
        self.signal_table() == Some((db, table))
    }

    /// Whether a snapshot is queued or in progress.
    pub(super) fn snapshot_pending(&self) -> bool {
        !self.snapshots.tables.is_empty()
            || !self.snapshots.blocking.is_empty()
            || self.incremental.chunk.is_some()
            || self.incremental.blocking.is_some()
    }

    /// Whether a snapshot is under way or can go on (a paused one with no chunk out is not).
    pub(super) fn snapshot_busy(&self) -> bool {
        self.incremental.chunk.is_some() || self.incremental.blocking.is_some() || self.snapshot_ready()
    }

    /// Whether snapshot work can start without waiting for the binlog.
    pub(super) fn snapshot_ready(&self) -> bool {
        self.incremental.chunk.is_none()
            && self.incremental.blocking.is_none()
            && (!self.snapshots.blocking.is_empty() || (!self.snapshots.tables.is_empty() && !self.snapshots.paused))
    }

    /// A record of the signal topic.
    pub(super) async fn on_topic_signal(&mut self, m: weir_bus::Message) -> Result<(), MysqlError> {
        self.signal_next = m.offset + 1;
        let id = format!("{}-{}", m.topic, m.offset);
        match signal::from_record(&self.config.topic_prefix, m.key.as_deref(), m.value.as_deref()) {
            Ok(Some((kind, data))) => self.on_signal(&id, &kind, &data, None).await,
            Ok(None) => Ok(()),
            Err(reason) => {
                tracing::error!(source = %self.config.name, signal = id, %reason, "signal ignored");
                Ok(())
            }
        }
    }

    /// Acts on one signal (from the signal table, at binlog position `at`, or from the topic).
    pub(super) async fn on_signal(
        &mut self,
        id: &str,
        kind: &str,
        data: &str,
        at: Option<&Position>,
    ) -> Result<(), MysqlError> {
        let action = match signal::parse(kind, data) {
            Ok(action) => action,
            Err(reason) => {
                tracing::error!(source = %self.config.name, signal = id, %reason, "signal ignored");
                metrics::counter!("weir_ingest_mysql_signals_rejected_total", "source" => self.config.name.clone())
                    .increment(1);
                return Ok(());
            }
        };
        if action == Action::Watermark {
            return match at {
                Some(at) => self.on_watermark(id, kind, at).await,
                None => Ok(()),
            };
        }
        tracing::info!(source = %self.config.name, signal = id, kind, data, "signal");
        metrics::counter!("weir_ingest_mysql_signals_total", "source" => self.config.name.clone(), "type" => kind.to_string())
            .increment(1);
        match action {
            Action::Execute { collections, blocking, conditions } => {
                if !blocking && !self.config.read_only && self.signal_table().is_none() {
                    tracing::error!(
                        source = %self.config.name, signal = id,
                        "an incremental snapshot needs signal_data_collection (its watermarks are written there) or \
                         read_only = true (MariaDB); signal ignored"
                    );
                    return Ok(());
                }
                // Tables captured since the history last saw the server (a table added to
                // include_tables is what an incremental snapshot is for) are recorded first.
                let now = self.load_definitions().await?;
                let new: BTreeMap<TableName, TableDef> =
                    now.into_iter().filter(|(name, _)| !self.known.contains_key(name)).collect();
                if !new.is_empty() {
                    self.record_new_tables(&new).await?;
                }
                let tables: Vec<String> = self
                    .known
                    .keys()
                    .filter(|(db, t)| !self.is_signal_table(db, t))
                    .filter(|(db, t)| collections.iter().any(|c| signal::matches(c, db, t)))
                    .map(|(db, t)| format!("{db}.{t}"))
                    .collect();
                if tables.is_empty() {
                    tracing::error!(source = %self.config.name, signal = id, ?collections, "no captured table matches the signal's data-collections");
                    return Ok(());
                }
                for (collection, filter) in conditions {
                    for (db, t) in self.known.keys().filter(|(db, t)| signal::matches(&collection, db, t)) {
                        self.snapshots.conditions.insert(format!("{db}.{t}"), filter.clone());
                    }
                }
                for t in tables {
                    if blocking {
                        if !self.snapshots.blocking.contains(&t) {
                            self.snapshots.blocking.push(t);
                        }
                    } else if !self.snapshots.tables.contains(&t) {
                        self.snapshots.tables.push_back(t);
                    }
                }
                tracing::info!(source = %self.config.name, incremental = ?self.snapshots.tables, blocking = ?self.snapshots.blocking, "snapshots queued");
            }
            Action::Stop { collections } => {
                let stop = |t: &String| {
                    let (db, table) = t.split_once('.').unwrap_or((t, ""));
                    collections.is_empty() || collections.iter().any(|c| signal::matches(c, db, table))
                };
                if self.snapshots.tables.front().is_some_and(stop) {
                    self.incremental.chunk = None;
                    self.snapshots.last_key = None;
                    self.snapshots.max_key = None;
                }
                self.snapshots.tables.retain(|t| !stop(t));
                self.snapshots.conditions.retain(|t, _| !stop(t));
                tracing::info!(source = %self.config.name, remaining = ?self.snapshots.tables, "incremental snapshot stopped");
            }
            Action::Pause => self.snapshots.paused = true,
            Action::Resume => self.snapshots.paused = false,
            Action::Watermark => unreachable!("handled above"),
        }
        Ok(())
    }

    /// A watermark row of the signal table reached the stream at `at`.
    async fn on_watermark(&mut self, id: &str, kind: &str, at: &Position) -> Result<(), MysqlError> {
        let Some(chunk) = self.incremental.chunk.as_mut() else { return Ok(()) };
        let Window::Watermarks { open, close, opened } = &mut chunk.window else { return Ok(()) };
        if kind == WINDOW_OPEN && id == open {
            *opened = true;
        } else if kind == WINDOW_CLOSE && id == close {
            self.emit_chunk(at).await?;
        }
        Ok(())
    }

    /// Whether changes to `name` must be checked against the chunk waiting for its window.
    pub(super) fn chunk_watches(&self, name: &TableName) -> bool {
        self.incremental
            .chunk
            .as_ref()
            .is_some_and(|c| &c.name == name && matches!(c.window, Window::Watermarks { opened: true, .. }))
    }

    /// The stream changed the row with image `before`/`after` inside the chunk's window: the
    /// chunk's row of that key must not go out.
    pub(super) fn chunk_saw(&mut self, before: Option<&[Value]>, after: Option<&[Value]>) {
        let Some(chunk) = self.incremental.chunk.as_mut() else { return };
        for row in [before, after].into_iter().flatten() {
            chunk.changed.insert(key_id(&chunk.events.def, row));
        }
    }

    /// A table's definition changed: a chunk read with the old one is read again.
    pub(super) fn chunk_schema_changed(&mut self, name: &TableName) {
        if self.incremental.chunk.as_ref().is_some_and(|c| &c.name == name) {
            tracing::info!(source = %self.config.name, table = %format!("{}.{}", name.0, name.1), "table changed during its incremental snapshot: chunk read again");
            self.incremental.chunk = None;
        }
    }

    async fn snapshot_conn(&mut self) -> Result<&mut Conn, MysqlError> {
        if self.incremental.conn.is_none() {
            let conn = stream::connect(&self.opts).await.map_err(self.server_error("connecting for snapshots"))?;
            self.incremental.conn = Some(conn);
        }
        Ok(self.incremental.conn.as_mut().expect("set above"))
    }

    /// Called before each binlog event with the stream's position when it is between
    /// transactions (`None` inside one): starts the next chunk or blocking snapshot, and emits
    /// what waits for exactly this position.
    ///
    /// A consistent read's rows go out at its position and nowhere else: after every change the
    /// read saw and before the first it did not (a transaction can start right at it, so the
    /// check follows the read at once). A stream found past the position has sent changes the
    /// read did not see: the read is taken again.
    pub(super) async fn snapshot_step(&mut self, at: Option<&Position>) -> Result<(), MysqlError> {
        let Some(at) = at else { return Ok(()) };
        if self.incremental.chunk.is_none() && self.incremental.blocking.is_none() {
            if !self.snapshots.blocking.is_empty() {
                let mut conn = stream::connect(&self.opts)
                    .await
                    .map_err(self.server_error("connecting for a blocking snapshot"))?;
                let (file, pos) = self.consistent_read(&mut conn, Some(at)).await?;
                tracing::info!(source = %self.config.name, tables = ?self.snapshots.blocking, file = %file, pos, "blocking snapshot: streaming up to its position");
                self.incremental.blocking = Some(Blocking { conn, file, pos });
            } else if !self.snapshots.tables.is_empty() && !self.snapshots.paused {
                self.read_chunk(at).await?;
            }
        }
        let here = (at.file.as_str(), at.pos);
        if let Some(Chunk { window: Window::At { file, pos }, .. }) = &self.incremental.chunk {
            match here.cmp(&(file.as_str(), *pos)) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => {
                    // Tagged just before the next event, after every change already read.
                    let tag = Position { file: at.file.clone(), pos: at.pos.saturating_sub(1), row: 0 };
                    self.emit_chunk(&tag).await?;
                }
                std::cmp::Ordering::Greater => {
                    tracing::warn!(source = %self.config.name, read_at = %format!("{file}:{pos}"), stream = %format!("{}:{}", at.file, at.pos), "the stream passed a chunk's position: chunk read again");
                    self.incremental.chunk = None;
                }
            }
        }
        if let Some(b) = &self.incremental.blocking {
            match here.cmp(&(b.file.as_str(), b.pos)) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => return self.blocking_snapshot().await,
                std::cmp::Ordering::Greater => {
                    tracing::warn!(source = %self.config.name, read_at = %format!("{}:{}", b.file, b.pos), stream = %format!("{}:{}", at.file, at.pos), "the stream passed the blocking snapshot's position: taken again");
                    self.incremental.blocking = None;
                }
            }
        }
        Ok(())
    }

    /// Starts a consistent-snapshot transaction on `conn` and returns the binlog position it
    /// sees. MariaDB reports it; MySQL needs a global read lock around it.
    ///
    /// For the initial snapshot (`streamed` = `None`) a global read lock is tried first (and left
    /// held for the caller to release once the definitions are read). While streaming, the
    /// snapshot must not be older than the binlog the source has read (`streamed`): a replica
    /// receives a transaction when it is written to the binlog, which can be before the storage
    /// engine has committed it, and a snapshot taken in between sees the state before it while
    /// the source has already sent its change. MariaDB then reports a position before that
    /// transaction, and the read is taken again until it has caught up.
    pub(super) async fn consistent_read(
        &mut self,
        conn: &mut Conn,
        streamed: Option<&Position>,
    ) -> Result<(String, u64), MysqlError> {
        conn.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(self.server_error("setting REPEATABLE READ"))?;
        if self.info.mariadb
            && let Some(streamed) = streamed
        {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                    .await
                    .map_err(self.server_error("starting the snapshot transaction"))?;
                let (file, pos) =
                    mariadb_snapshot_position(conn).await.map_err(self.server_error("reading binlog_snapshot_*"))?;
                if (file.as_str(), pos) >= (streamed.file.as_str(), streamed.pos) {
                    return Ok((file, pos));
                }
                conn.query_drop("COMMIT").await.map_err(self.server_error("ending a snapshot transaction"))?;
                if std::time::Instant::now() > deadline {
                    return Err(self.decode_error(
                        &file,
                        pos,
                        format!(
                            "consistent snapshots stay behind {}:{}, the binlog position the source has read",
                            streamed.file, streamed.pos
                        ),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let locked = match conn.query_drop("FLUSH TABLES WITH READ LOCK").await {
            Ok(()) => true,
            Err(e) if self.info.mariadb => {
                tracing::debug!(source = %self.config.name, error = %e, "no global read lock; relying on MariaDB's consistent snapshot position");
                false
            }
            Err(e) => {
                return Err(MysqlError::Setup {
                    source_name: self.config.name.clone(),
                    reason: format!("FLUSH TABLES WITH READ LOCK failed ({e}): a snapshot needs the RELOAD privilege"),
                });
            }
        };
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await
            .map_err(self.server_error("starting the snapshot transaction"))?;
        let position = if self.info.mariadb {
            mariadb_snapshot_position(conn).await.map_err(self.server_error("reading binlog_snapshot_*"))?
        } else {
            self.master_position().await?
        };
        if locked && streamed.is_some() {
            conn.query_drop("UNLOCK TABLES").await.map_err(self.server_error("UNLOCK TABLES"))?;
        }
        Ok(position)
    }

    /// Reads the next chunk of the first queued table, the stream being at `at`.
    async fn read_chunk(&mut self, at: &Position) -> Result<(), MysqlError> {
        let table = self.snapshots.tables.front().cloned().expect("called with a queued table");
        let Some((db, t)) = table.split_once('.') else {
            self.snapshots.tables.pop_front();
            return Ok(());
        };
        let name: TableName = (db.to_string(), t.to_string());
        let events = match self.events_by_name(&name).await? {
            Some(events) if !events.def.key.is_empty() => events,
            Some(_) => {
                tracing::error!(source = %self.config.name, table, "no primary key: an incremental snapshot reads chunks in key order; table skipped (use a blocking snapshot)");
                return self.table_done(0);
            }
            None => {
                tracing::warn!(source = %self.config.name, table, "table no longer exists: skipped");
                return self.table_done(0);
            }
        };
        let def = &events.def;
        let keys: Vec<String> = def.key.iter().map(|&i| quote(&def.columns[i].name)).collect();
        let from = format!("{}.{}", quote(&name.0), quote(&name.1));
        let condition = self.snapshots.conditions.get(&table).map(|c| format!("({c})"));
        let source_name = self.config.name.clone();
        if self.snapshots.max_key.is_none() {
            let desc = keys.iter().map(|k| format!("{k} DESC")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {} FROM {from}{} ORDER BY {desc} LIMIT 1",
                keys.join(", "),
                condition.as_ref().map(|c| format!(" WHERE {c}")).unwrap_or_default()
            );
            let err = self.server_error(format!("reading the largest key of {table}"));
            // As a prepared statement: typed values (a BIGINT key compared as text would be
            // compared as a double by the server).
            let row: Option<mysql_async::Row> = self.snapshot_conn().await?.exec_first(sql, ()).await.map_err(err)?;
            let Some(row) = row else {
                tracing::info!(source = %source_name, table, "incremental snapshot: table is empty");
                return self.table_done(0);
            };
            self.snapshots.max_key = Some(row.unwrap().iter().map(KeyValue::from).collect());
            tracing::info!(source = %source_name, table, "incremental snapshot of table started");
        }
        let max = self.snapshots.max_key.clone().expect("set above");
        let mut predicates = condition.into_iter().collect::<Vec<_>>();
        let mut params = Vec::new();
        if let Some(last) = &self.snapshots.last_key {
            let (p, v) = key_predicate(&keys, last, true);
            predicates.push(p);
            params.extend(v);
        }
        let (p, v) = key_predicate(&keys, &max, false);
        predicates.push(p);
        params.extend(v);
        let size = self.config.incremental_snapshot_chunk_size.max(1);
        let sql = format!(
            "SELECT {} FROM {from} WHERE {} ORDER BY {} LIMIT {size}",
            select_list(def),
            predicates.join(" AND "),
            keys.join(", ")
        );
        self.incremental.chunks += 1;
        let id = format!("weir-{:x}-{}", now_us(), self.incremental.chunks);
        let insert = self.signal_table().filter(|_| !self.config.read_only).map(|(sdb, st)| {
            (format!("INSERT INTO {}.{} VALUES (?, ?, ?)", quote(sdb), quote(st)), format!("{sdb}.{st}"))
        });
        let window = match &insert {
            Some((insert, signal_table)) => {
                let (open, close) = (format!("{id}-open"), format!("{id}-close"));
                let err = self.server_error(format!("writing the open watermark to {signal_table}"));
                let conn = self.snapshot_conn().await?;
                conn.exec_drop(insert, (&open, WINDOW_OPEN, "{}")).await.map_err(err)?;
                Window::Watermarks { open, close, opened: false }
            }
            None => {
                self.snapshot_conn().await?;
                let mut conn = self.incremental.conn.take().expect("opened above");
                let read = self.consistent_read(&mut conn, Some(at)).await;
                self.incremental.conn = Some(conn);
                let (file, pos) = read?;
                Window::At { file, pos }
            }
        };
        let err = self.server_error(format!("reading a chunk of {table}"));
        let raw: Vec<mysql_async::Row> = self.snapshot_conn().await?.exec(sql, params).await.map_err(err)?;
        match (&window, &insert) {
            (Window::Watermarks { close, .. }, Some((insert, signal_table))) => {
                let err = self.server_error(format!("writing the close watermark to {signal_table}"));
                let close = close.clone();
                self.snapshot_conn().await?.exec_drop(insert, (&close, WINDOW_CLOSE, "{}")).await.map_err(err)?;
            }
            _ => {
                let err = self.server_error("ending the chunk's transaction");
                self.snapshot_conn().await?.query_drop("COMMIT").await.map_err(err)?;
            }
        }
        let full = raw.len() >= size;
        let window_text = match &window {
            Window::At { file, pos } => format!("at {file}:{pos}"),
            Window::Watermarks { open, .. } => format!("watermark {open}"),
        };
        tracing::debug!(source = %self.config.name, table, rows = raw.len(), stream = %format!("{}:{}", at.file, at.pos), window = %window_text, "chunk read");
        let mut rows = Vec::with_capacity(raw.len());
        let mut last = None;
        for row in raw {
            let raw = row.unwrap();
            let values = row_values(def, &raw)
                .map_err(|e| self.decode_error("incremental snapshot", 0, format!("{table}: {e}")))?;
            last = Some(def.key.iter().map(|&i| KeyValue::from(&raw[i])).collect());
            rows.push((key_id(def, &values), values));
        }
        self.incremental.chunk =
            Some(Chunk { name, events: events.clone(), rows, changed: HashSet::new(), last, full, window });
        Ok(())
    }

    /// Queues the waiting chunk's rows (tagged at `at` for the replay filter) and moves the
    /// snapshot on.
    async fn emit_chunk(&mut self, at: &Position) -> Result<(), MysqlError> {
        let Some(chunk) = self.incremental.chunk.take() else { return Ok(()) };
        tracing::debug!(source = %self.config.name, at = %format!("{}:{}", at.file, at.pos), rows = chunk.rows.len(), changed = chunk.changed.len(), "chunk emitted");
        let ts = now_us();
        let mut emitted = 0u64;
        for (row, (id, values)) in chunk.rows.into_iter().enumerate() {
            if chunk.changed.contains(&id) {
                continue;
            }
            let source = self.source_block(
                &chunk.name.0,
                Some(&chunk.name.1),
                &at.file,
                at.pos,
                ts,
                None,
                SnapshotMarker::Incremental,
            );
            let change = RowChange { op: Op::Read, before: None, after: Some(values), source };
            let first = self.pending.len();
            chunk
                .events
                .records(&self.encoder, change, false, ts, &mut self.pending, None)
                .await
                .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
            replay::tag(&mut self.pending[first..], &Position { row: row as u64, ..at.clone() });
            emitted += 1;
        }
        self.stats.snapshot_rows += emitted;
        metrics::counter!("weir_ingest_mysql_incremental_snapshot_rows_total", "source" => self.config.name.clone())
            .increment(emitted);
        if chunk.full && chunk.last.is_some() {
            self.snapshots.last_key = chunk.last;
            Ok(())
        } else {
            self.table_done(emitted)
        }
    }

    /// The first queued table is done (or skipped).
    fn table_done(&mut self, last_rows: u64) -> Result<(), MysqlError> {
        let table = self.snapshots.tables.pop_front();
        if let Some(t) = &table {
            self.snapshots.conditions.remove(t);
        }
        self.snapshots.last_key = None;
        self.snapshots.max_key = None;
        tracing::info!(source = %self.config.name, table = ?table, last_chunk_rows = last_rows, remaining = self.snapshots.tables.len(), "incremental snapshot of table finished");
        if self.snapshots.tables.is_empty() {
            tracing::info!(source = %self.config.name, "incremental snapshot completed");
        }
        Ok(())
    }

    /// Takes the blocking snapshot the stream has just caught up with.
    async fn blocking_snapshot(&mut self) -> Result<(), MysqlError> {
        let Blocking { mut conn, file, pos } = self.incremental.blocking.take().expect("called when set");
        let names: Vec<TableName> = self
            .snapshots
            .blocking
            .iter()
            .filter_map(|t| t.split_once('.').map(|(d, t)| (d.to_string(), t.to_string())))
            .collect();
        tracing::info!(source = %self.config.name, tables = names.len(), file = %file, pos, "blocking snapshot: streaming paused");
        self.read_tables(&mut conn, &names, (&file, pos), now_us()).await?;
        conn.query_drop("COMMIT").await.map_err(self.server_error("ending the blocking snapshot"))?;
        self.snapshots.blocking.clear();
        let offset = self.offset.clone();
        self.flush(offset).await?;
        tracing::info!(source = %self.config.name, "blocking snapshot completed: streaming resumed");
        Ok(())
    }
}

/// MariaDB's binlog position of the consistent snapshot the connection's transaction holds.
pub(super) async fn mariadb_snapshot_position(conn: &mut Conn) -> Result<(String, u64), mysql_async::Error> {
    let rows: Vec<(String, String)> = conn.query("SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
    let get = |name: &str| rows.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
    let file = get("binlog_snapshot_file").unwrap_or_default();
    let pos = get("binlog_snapshot_position").and_then(|p| p.parse().ok()).unwrap_or(4);
    Ok((file, pos))
}

/// The `(id, type, data)` of each row a rows event inserted into the signal table (Debezium's
/// columns by position).
pub(super) fn signal_rows(
    rows: &mysql_async::binlog::events::RowsEventData<'_>,
    tme: &mysql_async::binlog::events::TableMapEvent<'static>,
) -> Result<Vec<(String, String, String)>, String> {
    use mysql_async::binlog::{events::RowsEventData, value::BinlogValue};
    if !matches!(rows, RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_)) {
        return Ok(Vec::new());
    }
    let text = |row: &mysql_async::binlog::row::BinlogRow, i: usize| match row.as_ref(i) {
        Some(BinlogValue::Value(mysql_async::Value::Bytes(b))) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    let mut out = Vec::new();
    for row in rows.rows(tme) {
        let (_, after) = row.map_err(|e| e.to_string())?;
        if let Some(after) = after {
            out.push((text(&after, 0), text(&after, 1), text(&after, 2)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_predicates_expand_for_an_index() {
        let keys = vec!["`a`".to_string(), "`b`".to_string()];
        let vals = vec![KeyValue::Int(1), KeyValue::Bytes(b"x".to_vec())];
        let (after, p) = key_predicate(&keys, &vals, true);
        assert_eq!(after, "((`a` > ?) OR (`a` = ? AND `b` > ?))");
        assert_eq!(p.len(), 3);
        let (upto, p) = key_predicate(&keys, &vals, false);
        assert_eq!(upto, "((`a` < ?) OR (`a` = ? AND `b` < ?) OR (`a` = ? AND `b` = ?))");
        assert_eq!(p.len(), 5);
    }

    #[test]
    fn queues_round_trip_through_the_offset_json() {
        let q = SnapshotQueue {
            tables: ["shop.orders".to_string()].into(),
            last_key: Some(vec![
                KeyValue::Int(-3),
                KeyValue::Bytes(vec![0, 255]),
                KeyValue::Date(2026, 12, 6, 1, 2, 3, 4),
            ]),
            ..SnapshotQueue::default()
        };
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<SnapshotQueue>(&json).unwrap(), q);
        assert!(!q.is_empty() && SnapshotQueue::default().is_empty());
    }
}
