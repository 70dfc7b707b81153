//! The initial consistent snapshot: every captured table's rows as `op = "r"` events, all read in
//! one `REPEATABLE READ` transaction whose binlog position is where streaming then starts; and
//! its schema-only sibling, the history recovery (`snapshot_mode = "recovery"`).
//!
//! As Debezium's default locking: a global read lock is held only while the transaction starts,
//! the binlog position is read and the table definitions are loaded; the rows are read after it
//! is released. MariaDB reports the position of the consistent snapshot itself
//! (`binlog_snapshot_file/position`), so there it also works without the `RELOAD` privilege.
//! A snapshot interrupted by a crash is taken again from the start.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;
use weir_schemas::{
    connect::Value,
    envelope::{Op, SnapshotMarker},
    history::ChangeKind,
};

use super::{
    MysqlError,
    columns::TableDef,
    events::RowChange,
    history::{HistoryRecord, TableChange},
    incremental::{row_values, select_list},
    offset::Offset,
    source::{MysqlSource, Progress, TableName, load_definitions, now_us},
    stream,
};

/// The statement that creates each table (`SHOW CREATE TABLE`), for the history as Debezium
/// writes it: its readers may re-parse DDL instead of reading the definitions.
async fn create_statements(
    conn: &mut mysql_async::Conn,
    defs: &BTreeMap<TableName, TableDef>,
) -> Result<Vec<String>, mysql_async::Error> {
    let mut ddl = Vec::with_capacity(defs.len());
    for (db, table) in defs.keys() {
        let sql = format!("SHOW CREATE TABLE `{}`.`{}`", db.replace('`', "``"), table.replace('`', "``"));
        let row: Option<(String, String)> = conn.query_first(sql).await?;
        ddl.push(row.map(|(_, create)| create).unwrap_or_default());
    }
    Ok(ddl)
}

impl MysqlSource {
    /// Starts the history afresh with one snapshot record per table, at `file`/`pos`.
    async fn record_definitions(
        &mut self,
        defs: &BTreeMap<TableName, TableDef>,
        ddl: Vec<String>,
        file: &str,
        pos: u64,
        ts_us: i64,
    ) -> Result<(), MysqlError> {
        self.known.clear();
        self.by_name.clear();
        for (((db, _), def), ddl) in defs.iter().zip(ddl) {
            let record = HistoryRecord {
                file: file.to_string(),
                pos,
                ts_ms: ts_us / 1000,
                database: db.clone(),
                ddl,
                snapshot: true,
                table_changes: vec![TableChange { change: ChangeKind::Create, table: def.clone() }],
            };
            let source = self.source_block(db, None, file, pos, ts_us, None, SnapshotMarker::True);
            self.record_history(record, &source).await?;
        }
        Ok(())
    }

    /// Records tables newly captured while streaming (`CREATE` history records at the saved
    /// offset, with their `SHOW CREATE TABLE`), so a restart knows their definitions.
    pub(super) async fn record_new_tables(&mut self, defs: &BTreeMap<TableName, TableDef>) -> Result<(), MysqlError> {
        let ddl = create_statements(&mut self.meta, defs).await.map_err(self.server_error("SHOW CREATE TABLE"))?;
        let (file, pos, ts_us) = (self.offset.file.clone(), self.offset.pos, now_us());
        for (((db, table), def), ddl) in defs.iter().zip(ddl) {
            tracing::info!(source = %self.config.name, table = %format!("{db}.{table}"), "newly captured table recorded in the schema history");
            let record = HistoryRecord {
                file: file.clone(),
                pos,
                ts_ms: ts_us / 1000,
                database: db.clone(),
                ddl,
                snapshot: false,
                table_changes: vec![TableChange { change: ChangeKind::Create, table: def.clone() }],
            };
            let source = self.source_block(db, None, &file, pos, ts_us, None, SnapshotMarker::False);
            self.record_history(record, &source).await?;
        }
        Ok(())
    }

    /// `snapshot_mode = "recovery"`: rebuilds a lost or damaged schema history from the tables'
    /// definitions now, recorded at the saved offset, without reading rows (Debezium's `recovery`;
    /// as there, correct only if no captured table changed since that offset).
    pub(super) async fn recover_history(&mut self) -> Result<(), MysqlError> {
        if self.offset.file.is_empty() || !self.offset.snapshot_completed {
            return Err(MysqlError::Setup {
                source_name: self.config.name.clone(),
                reason: "snapshot_mode = \"recovery\" rebuilds the schema history at a saved offset, and this source \
                         has none: use \"initial\""
                    .to_string(),
            });
        }
        let defs = self.load_definitions().await?;
        let ddl = create_statements(&mut self.meta, &defs).await.map_err(self.server_error("SHOW CREATE TABLE"))?;
        let (file, pos) = (self.offset.file.clone(), self.offset.pos);
        tracing::warn!(
            source = %self.config.name, tables = defs.len(), file = %file, pos,
            "schema history rebuilt from the current definitions; set snapshot_mode back once the source runs"
        );
        self.record_definitions(&defs, ddl, &file, pos, now_us()).await
    }

    /// Takes the snapshot and saves an offset at its binlog position.
    pub(super) async fn snapshot(&mut self) -> Result<(), MysqlError> {
        let started = now_us();
        let mut conn = stream::connect(&self.opts).await.map_err(self.server_error("connecting for the snapshot"))?;
        let (file, pos) = self.consistent_read(&mut conn, None).await?;
        let defs = load_definitions(&mut conn, &self.config).await.map_err(|e| self.load_error(e))?;
        let ddl = create_statements(&mut conn, &defs).await.map_err(self.server_error("SHOW CREATE TABLE"))?;
        // Releases the global read lock if one was taken (without ending the transaction).
        conn.query_drop("UNLOCK TABLES").await.map_err(self.server_error("UNLOCK TABLES"))?;
        tracing::info!(source = %self.config.name, tables = defs.len(), file = %file, pos, "snapshot started");
        self.record_definitions(&defs, ddl, &file, pos, started).await?;
        let names: Vec<_> = defs.keys().cloned().collect();
        self.read_tables(&mut conn, &names, (&file, pos), started).await?;
        conn.query_drop("COMMIT").await.map_err(self.server_error("ending the snapshot transaction"))?;
        let offset = Offset { file, pos, snapshot_completed: true, ..Offset::default() };
        self.flush(offset).await?;
        tracing::info!(source = %self.config.name, rows = self.stats.snapshot_rows, "snapshot completed");
        Ok(())
    }

    /// Reads every row of `names` on `conn` (in a consistent-snapshot transaction at binlog
    /// `file`/`pos`) as `op = "r"` events with Debezium's snapshot markers, flushing full batches
    /// with the offset unchanged.
    pub(super) async fn read_tables(
        &mut self,
        conn: &mut mysql_async::Conn,
        names: &[TableName],
        (file, pos): (&str, u64),
        started: i64,
    ) -> Result<(), MysqlError> {
        let estimates: Vec<(String, String, Option<u64>)> = conn
            .query("SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES")
            .await
            .map_err(self.server_error("reading row estimates"))?;
        let mut first_overall = true;
        let mut progress = Progress::new(self.config.progress_interval);
        for (t, name) in names.iter().enumerate() {
            let last_table = t + 1 == names.len();
            let Some(events) = self.events_by_name(name).await? else { continue };
            let estimate =
                estimates.iter().find(|(d, n, _)| (d, n) == (&name.0, &name.1)).and_then(|e| e.2).unwrap_or(0);
            let sql = format!(
                "SELECT {} FROM `{}`.`{}`",
                select_list(&events.def),
                name.0.replace('`', "``"),
                name.1.replace('`', "``")
            );
            let table_id = format!("{}.{}", name.0, name.1);
            let mut result = conn.exec_iter(sql, ()).await.map_err(self.server_error(format!("reading {table_id}")))?;
            let mut prev: Option<Vec<Value>> = None;
            let mut first_in_table = true;
            let mut count = 0u64;
            let table_started = std::time::Instant::now();
            loop {
                let row = result.next().await.map_err(self.server_error(format!("reading {table_id}")))?;
                let values = match row {
                    Some(row) => {
                        let values = row_values(&events.def, &row.unwrap())
                            .map_err(|e| self.decode_error("snapshot", count, format!("{table_id}: {e}")))?;
                        Some(values)
                    }
                    None => None,
                };
                let done = values.is_none();
                if let Some(p) = std::mem::replace(&mut prev, values) {
                    let marker = match (first_overall, first_in_table, done) {
                        (true, ..) => SnapshotMarker::First,
                        (_, _, true) if last_table => SnapshotMarker::Last,
                        (_, _, true) => SnapshotMarker::LastInDataCollection,
                        (_, true, _) => SnapshotMarker::FirstInDataCollection,
                        _ => SnapshotMarker::True,
                    };
                    first_overall = false;
                    first_in_table = false;
                    let source = self.source_block(&name.0, Some(&name.1), file, pos, started, None, marker);
                    let change = RowChange { op: Op::Read, before: None, after: Some(p), source };
                    events
                        .records(&self.encoder, change, false, now_us(), &mut self.pending, None)
                        .await
                        .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
                    count += 1;
                    self.stats.snapshot_rows += 1;
                }
                if self.pending.len() >= self.config.max_batch {
                    let offset = self.offset.clone();
                    self.flush(offset).await?;
                }
                if progress.due() {
                    let rate = count as f64 / table_started.elapsed().as_secs_f64().max(1e-9);
                    tracing::info!(source = %self.config.name, table = %table_id, rows = count, estimate, rows_per_s = rate as u64, "snapshot progress");
                }
                if done {
                    break;
                }
            }
            metrics::counter!("weir_ingest_mysql_snapshot_rows_total", "source" => self.config.name.clone())
                .increment(count);
            tracing::info!(source = %self.config.name, table = %table_id, rows = count, "table snapshotted");
        }
        Ok(())
    }
}
