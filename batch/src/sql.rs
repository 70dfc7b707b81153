//! SQL tasks: a DataFusion query over every lake table (`raw.*`, `current.*`, `views.*`) whose
//! result becomes a new version of `views.<name>` — replacing its rows (the default; the schema
//! may change) or appended to them. The commit records where it came from (`weir.source`).

use std::sync::Arc;

use deltalake::{DeltaTable, kernel::transaction::CommitProperties, operations::write::SchemaMode, protocol::SaveMode};
use weir_lake::catalog::{Lake, LakeError};

/// What a SQL task wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewWritten {
    /// `views.<name>`.
    pub table: String,
    /// Its new version.
    pub version: u64,
    /// Rows written.
    pub rows: u64,
}

/// Runs `sql` and writes its result to `views.<view>`; `source` goes into the commit's metadata.
pub async fn write_view(
    lake: &Lake,
    sql: &str,
    view: &str,
    append: bool,
    source: serde_json::Value,
) -> Result<ViewWritten, LakeError> {
    let name = format!("views.{view}");
    let url = lake.table_url(&name)?;
    let ctx = weir_lake::query::session(lake, None).await?;
    let (sql, _) = weir_lake::query::rewrite_time_travel(sql)?;
    let frame = ctx.sql(&sql).await.map_err(|e| LakeError::Query(Box::new(e)))?;
    let table = DeltaTable::try_from_url(url).await.map_err(|e| LakeError::delta(&name, e))?;
    let before = table.version();
    let (mode, schema_mode) =
        if append { (SaveMode::Append, SchemaMode::Merge) } else { (SaveMode::Overwrite, SchemaMode::Overwrite) };
    let table = table
        .write(Vec::new())
        .with_input_plan(frame.logical_plan().clone())
        .with_session_state(Arc::new(ctx.state()))
        .with_save_mode(mode)
        .with_schema_mode(schema_mode)
        .with_commit_properties(CommitProperties::default().with_metadata([("weir.source".to_string(), source)]))
        .await
        .map_err(|e| LakeError::delta(&name, e))?;
    let version = table.version().unwrap_or_default();
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(&name, e))?;
    // Rows of the files this commit added.
    let rows = if append || before.is_none() {
        let old = match before {
            Some(v) => weir_lake::catalog::Lake::open(lake, &name, Some(v)).await.ok(),
            None => None,
        };
        let count = |t: &DeltaTable| -> u64 {
            t.snapshot()
                .map(|s| s.log_data().iter().filter_map(|f| f.num_records()).map(|n| n as u64).sum())
                .unwrap_or(0)
        };
        let all: u64 = snapshot.log_data().iter().filter_map(|f| f.num_records()).map(|n| n as u64).sum();
        all - old.as_ref().map(count).unwrap_or(0)
    } else {
        snapshot.log_data().iter().filter_map(|f| f.num_records()).map(|n| n as u64).sum()
    };
    Ok(ViewWritten { table: name, version, rows })
}
