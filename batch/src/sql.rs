//! SQL tasks: a DataFusion query over every lake table (`raw.*`, `current.*`, `views.*`) whose
//! result becomes a new version of `views.<name>` — replacing its rows (the default; the schema
//! may change) or appended to them. The commit records where it came from (`weir.source`).
//!
//! On Ballista the tables reach the cluster as plain Parquet scans of the versions this task
//! resolved ([`weir_lake::query::Registration::Files`]), so executors need no Delta log; the
//! executors write the result's Parquet files under the view and the task makes the one Delta
//! commit (see `cluster_write`).

use std::sync::Arc;

use futures::TryStreamExt as _;

use ballista::prelude::{SessionConfigExt as _, SessionContextExt as _};
use deltalake::{
    DeltaTable,
    datafusion::{
        error::DataFusionError,
        execution::SessionStateBuilder,
        prelude::{SessionConfig, SessionContext},
    },
    kernel::transaction::CommitProperties,
    operations::write::SchemaMode,
    protocol::SaveMode,
};
use weir_lake::{
    catalog::{Lake, LakeError},
    query::{Registration, Versions},
};

use crate::engine::Engine;

/// What a SQL task wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewWritten {
    /// `views.<name>`.
    pub table: String,
    /// Its new version.
    pub version: u64,
    /// Rows written.
    pub rows: u64,
    /// The lake tables the query read, at the versions it read (also in the commit's
    /// `weir.source.inputs`).
    pub inputs: Versions,
}

/// How a SQL task's result lands in its view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// Replace every row.
    Overwrite,
    /// Replace the rows matching a predicate (Delta's replaceWhere; the result must match it too).
    ReplaceWhere(String),
    /// Add the rows.
    Append,
}

/// Runs `sql` on `engine` and writes its result to `views.<view>`: tables `versions` names are read
/// at those versions, the others at their latest. `source` goes into the commit's metadata, with
/// the versions read as `inputs`.
pub async fn write_view(
    lake: &Lake,
    engine: &Engine,
    sql: &str,
    view: &str,
    mode: WriteMode,
    mut source: serde_json::Value,
    versions: &Versions,
) -> Result<ViewWritten, LakeError> {
    let name = format!("views.{view}");
    let url = lake.table_url(&name)?;
    let table = DeltaTable::try_from_url(url).await.map_err(|e| LakeError::delta(&name, e))?;
    let before = table.version();
    let query_err = |e| LakeError::Query(Box::new(e));
    let write = match engine {
        Engine::Local => {
            let ctx = weir_lake::query::new_session()?;
            let (sql, registered) =
                weir_lake::query::register_pinned(&ctx, lake, sql, Registration::Delta, versions).await?;
            let inputs = weir_lake::query::tables_read(&ctx, &sql, &registered)?;
            source["inputs"] = serde_json::json!(inputs);
            let frame = ctx.sql(&sql).await.map_err(query_err)?;
            let write = table
                .write(Vec::new())
                .with_input_plan(frame.logical_plan().clone())
                .with_session_state(Arc::new(ctx.state()));
            (write, inputs)
        }
        Engine::Ballista { scheduler } => {
            let ctx = ballista_session(scheduler, view).await?;
            let (sql, registered) =
                weir_lake::query::register_pinned(&ctx, lake, sql, Registration::Files, versions).await?;
            let inputs = weir_lake::query::tables_read(&ctx, &sql, &registered)?;
            source["inputs"] = serde_json::json!(inputs);
            let on_cluster = |e: DataFusionError| {
                LakeError::Query(Box::new(e.context(format!("running on the Ballista scheduler at {engine}"))))
            };
            let frame = ctx.sql(&sql).await.map_err(on_cluster)?;
            let mode = if before.is_some() { mode } else { WriteMode::Overwrite };
            let done =
                crate::cluster_write::write(&ctx, &engine.to_string(), &table, &name, frame, mode, source).await?;
            lake.announce(&name, done.version, "view").await;
            return Ok(ViewWritten { table: name, version: done.version, rows: done.rows, inputs });
        }
    };
    let (write, inputs) = write;
    let mut write =
        write.with_commit_properties(CommitProperties::default().with_metadata([("weir.source".to_string(), source)]));
    write = match (mode, before.is_some()) {
        (WriteMode::Append, _) => write.with_save_mode(SaveMode::Append).with_schema_mode(SchemaMode::Merge),
        (WriteMode::ReplaceWhere(predicate), true) => {
            write.with_save_mode(SaveMode::Overwrite).with_replace_where(predicate)
        }
        // A new view, or a whole replacement (whose columns may change).
        _ => write.with_save_mode(SaveMode::Overwrite).with_schema_mode(SchemaMode::Overwrite),
    };
    let table = write.await.map_err(|e| LakeError::delta(&name, e))?;
    let version = table.version().unwrap_or_default();
    lake.announce(&name, version, "view").await;
    // Rows added, from the commit's own metrics (read from the table just written, not reopened).
    let history: Vec<_> = table.history(Some(1)).try_collect().await.map_err(|e| LakeError::delta(&name, e))?;
    let rows = history
        .first()
        .and_then(|c| c.info.get("operationMetrics"))
        .and_then(|m| m.get("num_added_rows"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Ok(ViewWritten { table: name, version, rows, inputs })
}

/// The session configuration of a Ballista job writing `views.<view>`: Ballista's defaults, the
/// job named after the view, and the `DATAFUSION_*` / `BALLISTA_*` options of the environment
/// (named as in [`weir_lake::query::new_session`]).
pub fn ballista_config(view: &str) -> Result<SessionConfig, LakeError> {
    let mut config = SessionConfig::new_with_ballista().with_ballista_job_name(&format!("weir views.{view}"));
    for (key, value) in weir_lake::query::options_in_env(config.options()) {
        config.options_mut().set(&key, &value).map_err(|e| {
            LakeError::Query(Box::new(e.context("DataFusion and Ballista options from the environment")))
        })?;
    }
    Ok(config)
}

/// A session whose queries run on the Ballista scheduler at `scheduler` (`host:port`), as a job
/// configured by [`ballista_config`].
pub async fn ballista_session(scheduler: &str, view: &str) -> Result<SessionContext, LakeError> {
    let state = SessionStateBuilder::new().with_config(ballista_config(view)?).with_default_features().build();
    SessionContext::remote_with_state(&format!("df://{scheduler}"), state)
        .await
        .map_err(|e| LakeError::Query(Box::new(e.context(format!("connecting to Ballista at {scheduler}")))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's SQL reads a table as of a version: `VERSION AS OF` is honoured, not dropped.
    #[tokio::test]
    async fn time_travel_works_inside_a_sql_task() {
        let dir = tempfile::tempdir().unwrap();
        let config = weir_lake::LakeConfig {
            url: format!("file://{}", dir.path().display()).parse().unwrap(),
            ..Default::default()
        };
        let lake = Lake::new(&config);
        let source = serde_json::json!({"test": true});
        for sql in ["SELECT 1 AS n", "SELECT 2 AS n"] {
            let none = Versions::new();
            write_view(&lake, &Engine::Local, sql, "counter", WriteMode::Overwrite, source.clone(), &none)
                .await
                .unwrap();
        }
        let sql = "SELECT n FROM views.counter VERSION AS OF 0";
        let written =
            write_view(&lake, &Engine::Local, sql, "first", WriteMode::Overwrite, source.clone(), &Versions::new())
                .await
                .unwrap();
        assert_eq!(written.inputs, Versions::from([("views.counter".to_string(), 0)]), "the version read is recorded");
        // Pinned: the latest is read at the version given, and the commit says so.
        let pinned = Versions::from([("views.counter".to_string(), 0)]);
        let sql = "WITH c AS (SELECT n FROM views.counter) SELECT n FROM c";
        let written =
            write_view(&lake, &Engine::Local, sql, "pinned", WriteMode::Overwrite, source, &pinned).await.unwrap();
        assert_eq!(written.inputs, pinned, "a CTE is not a table");
        let commit = lake.history("views.pinned", Some(1)).await.unwrap();
        let recorded = &commit[0].info["weir.source"]["inputs"];
        assert_eq!(recorded, &serde_json::json!({"views.counter": 0}), "{recorded}");
        let batches = weir_lake::query::run(&lake, "SELECT n FROM views.pinned", None).await.unwrap();
        let n = deltalake::arrow::compute::cast(batches[0].column(0), &deltalake::arrow::datatypes::DataType::Int64)
            .unwrap();
        assert_eq!(n.as_primitive::<deltalake::arrow::datatypes::Int64Type>().value(0), 1, "read the pinned version");
        let batches = weir_lake::query::run(&lake, "SELECT n FROM views.first", None).await.unwrap();
        let n = deltalake::arrow::compute::cast(batches[0].column(0), &deltalake::arrow::datatypes::DataType::Int64)
            .unwrap();
        use deltalake::arrow::array::AsArray;
        assert_eq!(n.as_primitive::<deltalake::arrow::datatypes::Int64Type>().value(0), 1, "read the latest version");
    }
}
