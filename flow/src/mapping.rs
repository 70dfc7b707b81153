//! Dynamic task mapping: the items a mapped task (`map:` in its DAG file, see
//! [`crate::dag::MapSpec`]) expands into at run time. The expansion is the task's own try — it
//! runs where its tries run, with its retries and its log — and ends with the task `mapped` and
//! one instance per item, `<task>[<index>]`, created in the transaction that records the try
//! ([`crate::store::Expansion`]). The scheduler runs the instances like any task and settles the
//! task when they have all finished: failed when one failed, else succeeded.
//!
//! A `map: {sql}` query reads lake tables as a SQL task does ([`crate::lineage`]): the versions
//! it read are kept with the try, and a rerun of the expansion (after `weir dags clear`) reads
//! those versions again, so it gives the same items; `clear --latest` reads the latest.
//!
//! `map: {from: tasks.<t>.output.<key>}` over a task `t` that is itself mapped gives one item per
//! instance of `t` (its `<key>`, in index order), as Airflow maps over a mapped task's results.

use serde_json::Value;
use weir_lake::{
    catalog::Lake,
    query::{Registration, Versions},
};

use crate::{
    dag::{MapSource, MapSpec},
    rules::TaskState,
    store::{Store, TaskKey, TaskRow},
    template::{Context, Syntax},
};

/// The items of one expansion of the mapped task `key` (at most `spec.max`), and the table
/// versions a `sql` source read (its tables at `pinned` where it names them).
pub(crate) async fn items(
    spec: &MapSpec,
    ctx: &Context,
    lake: &Lake,
    store: &Store,
    key: &TaskKey,
    pinned: &Versions,
) -> Result<(Vec<Value>, Versions), String> {
    let mut read = Versions::new();
    let items = match &spec.source {
        MapSource::Over(items) => items.clone(),
        MapSource::Sql(sql) => {
            let sql = ctx.render(sql, Syntax::Sql)?;
            let err = |e: weir_lake::catalog::LakeError| format!("map sql: {e}");
            let session = weir_lake::query::new_session().map_err(err)?;
            let (sql, registered) =
                weir_lake::query::register_pinned(&session, lake, &sql, Registration::Delta, pinned)
                    .await
                    .map_err(err)?;
            read = weir_lake::query::tables_read(&session, &sql, &registered).map_err(err)?;
            let frame = session.sql(&sql).await.map_err(|e| format!("map sql: {e}"))?;
            let batches = frame.collect().await.map_err(|e| format!("map sql: {e}"))?;
            rows(&batches).map_err(|e| format!("map sql: {e}"))?
        }
        MapSource::From { task, key: name } => {
            let outputs = store.outputs(&key.dag_id, &key.run_id).await.map_err(|e| e.to_string())?;
            let instances = store.mapped(&key.dag_id, &key.run_id, task).await.map_err(|e| e.to_string())?;
            if instances.is_empty() {
                let value = outputs.get(task).and_then(|o| o.get(name)).ok_or_else(|| {
                    format!(
                        "map from tasks.{task}.output.{name}: task {task:?} handed on no {name:?} (its $WEIR_OUTPUT)"
                    )
                })?;
                match value {
                    Value::Array(items) => items.clone(),
                    other => {
                        return Err(format!("map from tasks.{task}.output.{name}: a list is expected, not {other}"));
                    }
                }
            } else {
                // A mapped upstream: one item per instance, in index order — the `name` each handed
                // on (as Airflow maps over a mapped task's results).
                instances
                    .iter()
                    .filter(|i| i.state != TaskState::Removed)
                    .map(|i| {
                        outputs.get(&i.task_id).and_then(|o| o.get(name)).cloned().ok_or_else(|| {
                            format!("map from tasks.{task}.output.{name}: instance {} handed on no {name:?}", i.task_id)
                        })
                    })
                    .collect::<Result<Vec<Value>, String>>()?
            }
        }
    };
    if items.len() > spec.max {
        return Err(format!("{} items to map over, more than max_map ({})", items.len(), spec.max));
    }
    Ok((items, read))
}

/// The rows of a query's result as items: a one-column row's value, else an object of its columns.
fn rows(batches: &[deltalake::arrow::record_batch::RecordBatch]) -> Result<Vec<Value>, String> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    let schema = first.schema();
    let mut writer = deltalake::arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        writer.write(b).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let bytes = writer.into_inner();
    let rows: Vec<serde_json::Map<String, Value>> = match bytes.is_empty() {
        true => Vec::new(),
        false => serde_json::from_slice(&bytes).map_err(|e| e.to_string())?,
    };
    Ok(match schema.fields().len() {
        // A NULL column is left out of its object.
        1 => {
            let name = schema.field(0).name();
            rows.into_iter().map(|mut r| r.remove(name).unwrap_or(Value::Null)).collect()
        }
        _ => rows.into_iter().map(Value::Object).collect(),
    })
}

/// The state a mapped task settles in once its `instances` have all finished (`None` while one
/// has not): failed when one failed, else success.
pub(crate) fn settled(instances: &[TaskRow]) -> Option<TaskState> {
    let live: Vec<&TaskRow> = instances.iter().filter(|t| t.state != TaskState::Removed).collect();
    if !live.iter().all(|t| t.state.is_finished()) {
        return None;
    }
    let failed = live.iter().any(|t| matches!(t.state, TaskState::Failed | TaskState::UpstreamFailed));
    Some(if failed { TaskState::Failed } else { TaskState::Success })
}
