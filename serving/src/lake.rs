//! The lake's tables over HTTP, for the console's lake pages: `GET /api/v1/lake/tables` (every
//! table with its version, files, bytes and last commit), and `GET /api/v1/lake/tables/{name}
//! [?version=N]` (one table at its latest version or version N: schema, files, bytes, the commit
//! history, the first rows, and for `current.*` how far it is behind its change log). Reads the
//! Delta logs directly, so time travel works on any version still on storage. Mount behind the
//! API's tokens ([`crate::http::protect`]).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use deltalake::{DeltaTable, arrow::array::RecordBatch, kernel::CommitInfo};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_lake::{Lake, LakeError};

use crate::http::{error, rows_json};

/// Rows of a table preview.
pub const PREVIEW_ROWS: usize = 50;
/// Commits of a table's history shown.
pub const HISTORY: usize = 100;

struct LakeApi {
    lake: Arc<Lake>,
}

/// The lake routes over `lake`.
pub fn router(lake: Arc<Lake>) -> Router {
    Router::new()
        .route("/api/v1/lake/tables", get(list))
        .route("/api/v1/lake/tables/{name}", get(table))
        .with_state(Arc::new(LakeApi { lake }))
}

fn failed(e: LakeError) -> Response {
    match e {
        LakeError::NoTable { .. } => error(StatusCode::NOT_FOUND, e),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, other),
    }
}

/// A commit's time (ms) and `weir.source` version (what a derived table was built from).
fn commit_facts(c: Option<&CommitInfo>) -> (Option<i64>, Option<u64>) {
    c.map_or((None, None), |c| {
        (c.timestamp, c.info.get("weir.source").and_then(|s| s.get("version")).and_then(Value::as_u64))
    })
}

/// The newest `n` commits of `table`, newest first.
async fn commits(table: &DeltaTable, n: usize) -> Result<Vec<CommitInfo>, deltalake::DeltaTableError> {
    use futures::TryStreamExt as _;
    table.history(Some(n)).try_collect().await
}

/// The newest commit's [`commit_facts`].
async fn last_commit(table: &DeltaTable) -> (Option<i64>, Option<u64>) {
    commit_facts(commits(table, 1).await.ok().as_ref().and_then(|h| h.first()))
}

async fn list(State(api): State<Arc<LakeApi>>) -> Response {
    let tables = match api.lake.open_all().await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let mut out = Vec::with_capacity(tables.len());
    for (name, table) in &tables {
        let Ok(snapshot) = table.snapshot() else { continue };
        let (files, bytes) = snapshot.log_data().iter().fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.size() as u64));
        let (committed_ms, _) = last_commit(table).await;
        out.push(json!({"name": name, "version": snapshot.version(), "files": files, "bytes": bytes,
                        "last_commit_ms": committed_ms}));
    }
    Json(json!({"tables": out})).into_response()
}

#[derive(Deserialize)]
struct TableQuery {
    version: Option<u64>,
}

async fn table(State(api): State<Arc<LakeApi>>, Path(name): Path<String>, Query(q): Query<TableQuery>) -> Response {
    // Only names the lake lists reach the SQL below.
    match api.lake.table_names().await {
        Ok(names) if names.contains(&name) => {}
        Ok(_) => return error(StatusCode::NOT_FOUND, format!("no table {name:?} in the lake")),
        Err(e) => return failed(e),
    }
    let latest = match api.lake.open(&name, None).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    let at = match q.version {
        Some(v) if Some(v) != latest.version() => match api.lake.open(&name, Some(v)).await {
            Ok(t) => t,
            Err(e) => return error(StatusCode::NOT_FOUND, format!("{name} version {v}: {e}")),
        },
        _ => latest.clone(),
    };
    let snapshot = match at.snapshot() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let version = snapshot.version();
    let schema: Vec<Value> = snapshot
        .schema()
        .fields()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
        .collect();
    let (files, bytes) = snapshot.log_data().iter().fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.size() as u64));
    let partitions = snapshot.metadata().partition_columns().to_vec();
    // The latest table's commits, newest first, one per version down from the latest.
    let commits = match commits(&latest, HISTORY).await {
        Ok(c) => c,
        Err(e) => return failed(LakeError::delta(&name, e)),
    };
    let history: Vec<Value> = commits
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"version": latest.version().map(|v| v.saturating_sub(i as u64)), "timestamp_ms": c.timestamp, "operation": c.operation,
                   "parameters": c.operation_parameters, "weir": c.info.iter().filter(|(k, _)| k.starts_with("weir."))
                       .collect::<std::collections::BTreeMap<_, _>>()})
        })
        .collect();
    let rows = match preview(&name, &at).await {
        Ok(batches) => rows_json(&batches).unwrap_or_else(|e| json!({"error": e.to_string()})),
        Err(e) => json!({"error": e.to_string()}),
    };
    let freshness = match name.strip_prefix("current.") {
        Some(base) => freshness(&api.lake, commit_facts(commits.first()), base).await,
        None => Value::Null,
    };
    Json(json!({
        "name": name, "version": version, "latest_version": latest.version(), "files": files, "bytes": bytes,
        "partition_columns": partitions, "schema": schema, "history": history, "rows": rows, "freshness": freshness,
    }))
    .into_response()
}

/// The first [`PREVIEW_ROWS`] rows of `table` (opened at the version to show), in a session
/// that holds only it.
async fn preview(name: &str, table: &DeltaTable) -> Result<Vec<RecordBatch>, String> {
    let ctx = weir_lake::query::new_session().map_err(|e| e.to_string())?;
    weir_lake::query::register_opened(&ctx, &[(name.to_string(), table.clone())]).await.map_err(|e| e.to_string())?;
    let frame = ctx.sql(&format!("SELECT * FROM {name} LIMIT {PREVIEW_ROWS}")).await.map_err(|e| e.to_string())?;
    frame.collect().await.map_err(|e| e.to_string())
}

/// How far `current.<base>` is behind `raw.<base>`: the change-log version it was built from,
/// the change log's latest version and commit time, and the current table's last build time
/// (`built`: its newest commit's [`commit_facts`]).
async fn freshness(lake: &Lake, built: (Option<i64>, Option<u64>), base: &str) -> Value {
    let raw = match lake.open(&format!("raw.{base}"), None).await {
        Ok(t) => t,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let (built_ms, built_from) = built;
    let (raw_ms, _) = last_commit(&raw).await;
    let raw_version = raw.version().unwrap_or_default();
    json!({
        "change_log": format!("raw.{base}"), "change_log_version": raw_version, "change_log_commit_ms": raw_ms,
        "built_from_version": built_from, "built_ms": built_ms,
        "versions_behind": built_from.map(|v| raw_version.saturating_sub(v)),
    })
}
