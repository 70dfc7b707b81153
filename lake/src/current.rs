//! Current-state tables: `current.<name>` holds the latest row image of every primary key of the
//! change log `raw.<name>`, deleted keys left out. A build reads the change log at one version
//! and writes the result as a new version of the current table, so older states stay readable
//! by time travel and files are only ever added.
//!
//! "Latest" is the highest bus offset of the key: a key's changes all travel on one partition of
//! the topic (records are partitioned by key), in the order the source committed them. A
//! truncate (`_op = 't'`, a row of nulls) removes every change before it, by source position.
//!
//! Builds are incremental: each commit of the current table records the change-log version it
//! was built from (`weir.source` in its commit info). The next build reads only the change-log
//! files added since that version, reduces them to the latest change per key and merges that
//! into the current rows (keys changed since are replaced or, when deleted, dropped; a truncate
//! among the new changes starts from an empty table). The result is written as a new version,
//! like a full build: its cost grows with the live rows and the new changes, not with the
//! change log's history. A full build ([`rebuild`]) reads the whole change log; [`build`] makes
//! one when there is no earlier build to start from or the change log was rewritten since
//! (files removed, e.g. by `weir lake optimize`). Why this and not a merge of only the touched
//! files: docs/architecture.md.

use std::{collections::HashSet, sync::Arc};

use deltalake::{
    DeltaTable,
    arrow::array::AsArray,
    datafusion::{
        common::ScalarValue,
        prelude::{SessionContext, ident, lit},
    },
    kernel::transaction::CommitProperties,
    operations::write::SchemaMode,
    protocol::SaveMode,
};
use futures::TryStreamExt as _;

use weir_schemas::position::Position;

use crate::{
    avro_arrow::META_COLUMNS,
    catalog::{Lake, LakeError},
};

/// The raw table's property listing its primary-key columns (comma-separated), set by the writer
/// from the topic's key schema.
pub const KEY_PROPERTY: &str = "weir.key";

/// What one [`build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStats {
    /// The current table written.
    pub table: String,
    /// The change-log version it was built from.
    pub raw_version: u64,
    /// The current table's new version.
    pub version: u64,
    /// Rows (live keys) in it.
    pub rows: u64,
    /// Whether only the changes since the previous build were read.
    pub incremental: bool,
    /// Change-log rows read.
    pub changes: u64,
}

/// `raw.orders`, `current.orders` or `orders` → `orders`.
fn base_name(name: &str) -> &str {
    name.strip_prefix("raw.").or_else(|| name.strip_prefix("current.")).unwrap_or(name)
}

/// The source position of the latest truncate in `table`, if any.
async fn latest_truncate(ctx: &SessionContext, table: &str) -> Result<Option<Position>, LakeError> {
    let query = |e| LakeError::Query(Box::new(e));
    let frame =
        ctx.sql(&format!("SELECT _pos FROM {table} WHERE _op = 't' AND _pos IS NOT NULL")).await.map_err(query)?;
    let batches = frame.collect().await.map_err(query)?;
    let mut latest = None;
    for batch in &batches {
        // DataFusion may hand text back as a view array: make it plain UTF-8 first.
        let column = deltalake::arrow::compute::cast(batch.column(0), &deltalake::arrow::datatypes::DataType::Utf8)
            .map_err(|e| LakeError::Query(Box::new(e.into())))?;
        for position in column.as_string::<i32>().iter().flatten().filter_map(|t| Position::parse(t.as_bytes())) {
            if latest.as_ref().is_none_or(|l| position > *l) {
                latest = Some(position);
            }
        }
    }
    Ok(latest)
}

/// `AND` a condition keeping only changes after the source position `truncate`.
fn after(truncate: Option<Position>) -> String {
    let Some(Position { file, pos, row }) = truncate else { return String::new() };
    let (f, p, r) = (
        "split_part(_pos, ':', 1)",
        "CAST(split_part(_pos, ':', 2) AS BIGINT)",
        "CAST(split_part(_pos, ':', 3) AS BIGINT)",
    );
    let file = file.replace('\'', "''");
    format!(" AND ({f} > '{file}' OR ({f} = '{file}' AND ({p} > {pos} OR ({p} = {pos} AND {r} > {row}))))")
}

fn quote(c: &str) -> String {
    format!("\"{}\"", c.replace('"', "\"\""))
}

fn query_err(e: deltalake::datafusion::error::DataFusionError) -> LakeError {
    LakeError::Query(Box::new(e))
}

/// The change log at its latest version and what a build needs to know about it.
struct ChangeLog {
    name: String,
    table: DeltaTable,
    version: u64,
    keys: Vec<String>,
    /// Its row columns (the source table's), in order.
    columns: Vec<String>,
}

impl ChangeLog {
    async fn open(lake: &Lake, base: &str) -> Result<ChangeLog, LakeError> {
        let name = format!("raw.{base}");
        let table = lake.open(&name, None).await?;
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(&name, e))?;
        let version = snapshot.version() as u64;
        let keys: Vec<String> = snapshot
            .metadata()
            .configuration()
            .get(KEY_PROPERTY)
            .map(|k| k.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        if keys.is_empty() {
            return Err(LakeError::Table {
                table: name,
                reason: format!(
                    "no primary key recorded (table property {KEY_PROPERTY}): its topic's records have no key, so \
                     there is no latest row per key"
                ),
            });
        }
        let columns = snapshot
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .filter(|n| !META_COLUMNS.contains(&n.as_str()))
            .collect();
        Ok(ChangeLog { name, table, version, keys, columns })
    }

    /// The latest change per key among `changes` (a registered table of change-log rows) after
    /// the latest truncate in them, as SQL: the row columns, `_source_ts_ms` and `_op`.
    async fn latest_sql(&self, ctx: &SessionContext, changes: &str) -> Result<(String, bool), LakeError> {
        let truncate = latest_truncate(ctx, changes).await?;
        let truncated = truncate.is_some();
        let sql = format!(
            "SELECT {cols}, _source_ts_ms, _op FROM (\
               SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY _partition DESC, _offset DESC) AS __weir_rank \
               FROM {changes} WHERE _op <> 't'{after}) \
             WHERE __weir_rank = 1",
            cols = self.columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
            keys = self.keys.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", "),
            after = after(truncate),
        );
        Ok((sql, truncated))
    }
}

/// The change-log version `current` was last built from, if it records one.
async fn built_from(current: &DeltaTable) -> Option<u64> {
    let history: Vec<_> = current.history(Some(1)).try_collect().await.ok()?;
    history.first()?.info.get("weir.source")?.get("version")?.as_u64()
}

/// Builds made at once on one table (the upkeep of `weir up` and a DAG's task, say) commit
/// one at a time: each commit must land on the version its build read (no automatic retry,
/// which would add a second overwrite's rows to the first's); a build that loses starts again
/// from the new version, up to this many times.
const BUILD_ATTEMPTS: usize = 5;

/// Whether `e` is a commit that lost a race with another build's.
fn lost_race(e: &LakeError) -> bool {
    matches!(
        e,
        LakeError::Delta { source, .. }
            if matches!(**source, deltalake::DeltaTableError::Transaction { .. } | deltalake::DeltaTableError::VersionAlreadyExists(_))
    )
}

/// Runs `attempt` until it does not lose a commit race, at most [`BUILD_ATTEMPTS`] times.
async fn retried<F, Fut>(name: &str, attempt: F) -> Result<BuildStats, LakeError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<BuildStats, LakeError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(e) if lost_race(&e) && tries < BUILD_ATTEMPTS => {
                tracing::info!(table = name, attempt = tries, error = %e, "another build committed first: building again");
                tries += 1;
            }
            result => return result,
        }
    }
}

/// Brings `current.<name>` up to date with `raw.<name>` (`name` may carry either prefix): from
/// the changes since the version it was last built from where it can, else in full.
pub async fn build(lake: &Lake, name: &str) -> Result<BuildStats, LakeError> {
    retried(name, || build_once(lake, name)).await
}

async fn build_once(lake: &Lake, name: &str) -> Result<BuildStats, LakeError> {
    let base = base_name(name);
    let log = ChangeLog::open(lake, base).await?;
    let current_name = format!("current.{base}");
    let Some(current) = lake.try_open(&current_name, None).await? else { return full(lake, &log).await };
    let Some(from) = built_from(&current).await else { return full(lake, &log).await };
    if from > log.version {
        return full(lake, &log).await; // the change log was replaced
    }
    let Some(added) = added_files(lake, &log, from).await? else {
        tracing::info!(table = %log.name, from, "files were removed from the change log since the last build: a full build");
        return full(lake, &log).await;
    };
    incremental(lake, &log, current, from, added).await
}

/// Rebuilds `current.<name>` from the whole change log `raw.<name>`.
pub async fn rebuild(lake: &Lake, name: &str) -> Result<BuildStats, LakeError> {
    retried(name, || async {
        let log = ChangeLog::open(lake, base_name(name)).await?;
        full(lake, &log).await
    })
    .await
}

/// The paths of the files `log` has at its version and did not have at `from`; `None` when it
/// lost some files since (a rewrite: only a full build is right then).
async fn added_files(lake: &Lake, log: &ChangeLog, from: u64) -> Result<Option<Vec<String>>, LakeError> {
    let paths = |t: &DeltaTable| -> Result<HashSet<String>, LakeError> {
        let snapshot = t.snapshot().map_err(|e| LakeError::delta(&log.name, e))?;
        Ok(snapshot.log_data().iter().map(|f| f.path().to_string()).collect())
    };
    let Ok(before) = lake.open(&log.name, Some(from)).await else { return Ok(None) }; // its log is gone
    let (before, now) = (paths(&before)?, paths(&log.table)?);
    if !before.is_subset(&now) {
        return Ok(None);
    }
    Ok(Some(now.difference(&before).cloned().collect()))
}

async fn full(lake: &Lake, log: &ChangeLog) -> Result<BuildStats, LakeError> {
    let ctx = crate::query::new_session()?;
    log.table.update_datafusion_session(&ctx.state()).map_err(|e| LakeError::delta(&log.name, e))?;
    let provider = log.table.table_provider().await.map_err(query_err)?;
    ctx.register_table("change_log", provider).map_err(query_err)?;
    let changes = count(&ctx, "change_log").await?;
    let (latest, _) = log.latest_sql(&ctx, "change_log").await?;
    let cols = log.columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {cols}, _source_ts_ms FROM ({latest}) WHERE _op <> 'd'");
    write(lake, log, &ctx, &sql, false, changes).await
}

async fn incremental(
    lake: &Lake,
    log: &ChangeLog,
    current: DeltaTable,
    from: u64,
    added: Vec<String>,
) -> Result<BuildStats, LakeError> {
    let current_name = format!("current.{}", base_name(&log.name));
    if added.is_empty() {
        // Nothing new: the table stays at its version.
        let version = current.version().unwrap_or_default();
        let rows = rows(&current, &current_name)?;
        tracing::info!(table = %current_name, raw_version = log.version, version, rows, "current-state table up to date");
        let table = current_name;
        return Ok(BuildStats { table, raw_version: log.version, version, rows, incremental: true, changes: 0 });
    }
    let ctx = crate::query::new_session()?;
    log.table.update_datafusion_session(&ctx.state()).map_err(|e| LakeError::delta(&log.name, e))?;
    let changes = log.table.table_provider().with_file_paths(added).await.map_err(query_err)?;
    ctx.register_table("changes", changes.clone()).map_err(query_err)?;
    let read = count(&ctx, "changes").await?;
    let (latest, truncated) = log.latest_sql(&ctx, "changes").await?;
    let cols = log.columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
    let new_rows = format!("SELECT {cols}, _source_ts_ms FROM latest WHERE _op <> 'd'");
    let sql = if truncated {
        format!("WITH latest AS ({latest}) {new_rows}") // a truncate since: the old rows are gone
    } else {
        // The current rows with the columns the change log has gained since left null.
        let provider = current.table_provider().await.map_err(query_err)?;
        let present: HashSet<String> = provider.schema().fields().iter().map(|f| f.name().clone()).collect();
        let types = changes.schema();
        let mut select = Vec::new();
        for c in log.columns.iter().chain([&"_source_ts_ms".to_string()]) {
            if present.contains(c) {
                select.push(ident(c));
            } else {
                let field = types.field_with_name(c).map_err(|e| query_err(e.into()))?;
                let null = ScalarValue::try_from(field.data_type()).map_err(query_err)?;
                select.push(lit(null).alias(c));
            }
        }
        let aligned = ctx.read_table(provider).map_err(query_err)?.select(select).map_err(query_err)?;
        ctx.register_table("current_rows", aligned.into_view()).map_err(query_err)?;
        let matches = log.keys.iter().map(|k| format!("l.{k} = c.{k}", k = quote(k))).collect::<Vec<_>>().join(" AND ");
        format!(
            "WITH latest AS ({latest}) \
             SELECT {cols}, _source_ts_ms FROM current_rows c WHERE NOT EXISTS (SELECT 1 FROM latest l WHERE {matches}) \
             UNION ALL {new_rows}"
        )
    };
    tracing::debug!(table = %current_name, from, to = log.version, read, truncated, "incremental build");
    write(lake, log, &ctx, &sql, true, read).await
}

/// Rows in `ctx`'s table `name`.
async fn count(ctx: &SessionContext, name: &str) -> Result<u64, LakeError> {
    let batches = ctx
        .sql(&format!("SELECT count(*) FROM {name}"))
        .await
        .map_err(query_err)?
        .collect()
        .await
        .map_err(query_err)?;
    let counts = batches.first().map(|b| b.column(0).as_primitive::<deltalake::arrow::datatypes::Int64Type>().value(0));
    Ok(counts.unwrap_or(0) as u64)
}

fn rows(table: &DeltaTable, name: &str) -> Result<u64, LakeError> {
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    Ok(snapshot.log_data().iter().filter_map(|f| f.num_records()).map(|n| n as u64).sum())
}

/// Overwrites the current table with the result of `sql`, recording the change-log version.
async fn write(
    lake: &Lake,
    log: &ChangeLog,
    ctx: &SessionContext,
    sql: &str,
    incremental: bool,
    changes: u64,
) -> Result<BuildStats, LakeError> {
    let current_name = format!("current.{}", base_name(&log.name));
    let frame = ctx.sql(sql).await.map_err(query_err)?;
    let url = lake.table_url(&current_name)?;
    let table = DeltaTable::try_from_url(url).await.map_err(|e| LakeError::delta(&current_name, e))?;
    let table = table
        .write(Vec::new())
        .with_input_plan(frame.logical_plan().clone())
        .with_session_state(Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_commit_properties(CommitProperties::default().with_max_retries(0).with_metadata([(
            "weir.source".to_string(),
            serde_json::json!({"table": log.name, "version": log.version, "incremental": incremental}),
        )]))
        .await
        .map_err(|e| LakeError::delta(&current_name, e))?;
    let version = table.version().unwrap_or_default();
    let rows = rows(&table, &current_name)?;
    let raw_version = log.version;
    tracing::info!(table = %current_name, raw_version, version, rows, incremental, changes, "current-state table built");
    lake.announce(&current_name, version, "current").await;
    Ok(BuildStats { table: current_name, raw_version, version, rows, incremental, changes })
}
