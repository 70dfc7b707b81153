//! What SQL tasks read: the exact version of each lake table a try read (kept with the try, and
//! in the view's commit as `weir.source.inputs`), the versions a rerun reads, and a run's lineage
//! (table@version → task → view@version).
//!
//! A rerun — a retry, or a try after `weir dags clear` — reads the versions its instance's first
//! try that read any did, so a rerun reproduces its result; `clear --latest` starts afresh from the
//! tables' latest versions. A table-triggered run's first tries read its input tables at the
//! versions the run covers.

use serde_json::{Value, json};
use sqlx::Row as _;
use weir_lake::query::Versions;

use crate::store::{Store, StoreError, TaskKey};

fn parse(text: &str) -> Result<Versions, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("recorded inputs {text:?}: {e}")))
}

/// One SQL task's reads and write in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Edge {
    /// The task.
    pub task_id: String,
    /// Its try that this describes (the latest that read).
    pub try_number: u32,
    /// The tables it read, at their versions.
    pub read: Versions,
    /// The view it wrote and the version (from its output), when it succeeded.
    pub wrote: Option<(String, u64)>,
}

impl Store {
    /// Keeps the versions try `try_number` of `key` read.
    pub async fn record_inputs(&self, key: &TaskKey, try_number: u32, inputs: &Versions) -> Result<(), StoreError> {
        let json = serde_json::to_string(inputs).expect("versions serialize");
        self.set_try_json(key, try_number, crate::store::TryJson::Inputs, json).await
    }

    /// The versions a new try of `key` reads: those of its first try that read any since the
    /// instance was last cleared with `--latest` (`None`: read the latest).
    pub async fn pinned_inputs(&self, key: &TaskKey) -> Result<Option<Versions>, StoreError> {
        let row = sqlx::query(
            "SELECT t.inputs FROM flow_task_tries t JOIN flow_task_instances i ON i.dag_id = t.dag_id \
             AND i.run_id = t.run_id AND i.task_id = t.task_id WHERE t.dag_id = $1 AND t.run_id = $2 AND t.task_id = $3 \
             AND t.inputs IS NOT NULL AND t.try_number > i.inputs_after ORDER BY t.try_number LIMIT 1",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| parse(&r.get::<String, _>(0))).transpose()
    }

    /// The run's lineage: per SQL task, its latest try that read, what it read and wrote.
    pub async fn lineage(&self, dag_id: &str, run_id: &str) -> Result<Vec<Edge>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, try_number, inputs, output FROM flow_task_tries WHERE dag_id = $1 AND run_id = $2 \
             AND inputs IS NOT NULL ORDER BY task_id, try_number",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        let mut edges: Vec<Edge> = Vec::new();
        for r in &rows {
            let output: Option<Value> = r.get::<Option<String>, _>(3).and_then(|o| serde_json::from_str(&o).ok());
            let wrote = output.and_then(|o| Some((o.get("table")?.as_str()?.to_string(), o.get("version")?.as_u64()?)));
            let edge = Edge {
                task_id: r.get(0),
                try_number: r.get::<i64, _>(1) as u32,
                read: parse(&r.get::<String, _>(2))?,
                wrote,
            };
            match edges.last_mut() {
                Some(last) if last.task_id == edge.task_id => *last = edge, // a later try of the same task
                _ => edges.push(edge),
            }
        }
        Ok(edges)
    }
}

/// The lineage as the API shows it: nodes `table@version` and tasks, edges between them.
pub fn lineage_json(edges: &[Edge]) -> Value {
    let mut links = Vec::new();
    for e in edges {
        for (table, version) in &e.read {
            links.push(json!({"from": format!("{table}@{version}"), "to": e.task_id}));
        }
        if let Some((view, version)) = &e.wrote {
            links.push(json!({"from": e.task_id, "to": format!("{view}@{version}")}));
        }
    }
    let tasks: Vec<Value> = edges
        .iter()
        .map(|e| {
            json!({"task_id": e.task_id, "try_number": e.try_number, "read": e.read,
                   "wrote": e.wrote.as_ref().map(|(v, n)| json!({"table": v, "version": n}))})
        })
        .collect();
    json!({"tasks": tasks, "edges": links})
}
