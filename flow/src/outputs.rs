//! What tasks hand on: a small output to the tasks after them, and state a task keeps across its
//! tries and runs.
//!
//! - **Outputs.** A script writes a JSON object to the file `$WEIR_OUTPUT`; when the try
//!   succeeds the object is kept with the try (`flow_task_tries.output`), and templates of the
//!   run's other tasks read it as `{{ tasks.<id>.output.<key> }}` (as data: a SQL literal, never
//!   code). A SQL task's output is `{table, version, rows}` of the view it wrote.
//! - **State.** `$WEIR_STATE` names a file holding the task's state (a JSON object; there is no
//!   file while the task has none); whatever object the script leaves there, whether the try
//!   succeeds or not, is the state the next try or run finds (a cursor, a watermark). `weir dags
//!   state` shows and sets it.
//!
//! Both are bounded to [`MAX_BYTES`]; a script that writes something else fails its try with the
//! reason (an output) or keeps the state it had (the state, logged).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};
use sqlx::Row as _;

use crate::store::{Store, StoreError, TaskKey, now};

/// The largest output or state, in bytes of JSON.
pub const MAX_BYTES: usize = 64 << 10;

/// The two files a try exchanges with its script, in the executor's folder of running tries,
/// named after the try (no folder or file is created per try unless the script writes one, or the
/// task has state to hand it: a fan-out of short tries spends most on creating files).
pub(crate) struct Files {
    output: PathBuf,
    state_file: PathBuf,
    /// The state the try started with.
    state: Map<String, Value>,
}

impl Files {
    /// The files of try `try_number` of `key` in `dir`; the state file holds `state` when it is not
    /// empty (else there is none).
    pub fn prepare(dir: &Path, key: &TaskKey, try_number: u32, state: Map<String, Value>) -> std::io::Result<Files> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{}\0{}\0{}\0{try_number}", key.dag_id, key.run_id, key.task_id));
        let name: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        let files = Files {
            output: dir.join(format!("{name}.output.json")),
            state_file: dir.join(format!("{name}.state.json")),
            state,
        };
        std::fs::create_dir_all(dir)?; // once per executor; after that a lookup
        remove_if_there(&files.output)?;
        if files.state.is_empty() {
            remove_if_there(&files.state_file)?;
        } else {
            std::fs::write(&files.state_file, Value::Object(files.state.clone()).to_string())?;
        }
        Ok(files)
    }

    fn output(&self) -> PathBuf {
        self.output.clone()
    }

    fn state_file(&self) -> PathBuf {
        self.state_file.clone()
    }

    /// `WEIR_OUTPUT` and `WEIR_STATE` for the script.
    pub fn env(&self) -> [(String, String); 2] {
        [
            ("WEIR_OUTPUT".into(), self.output().display().to_string()),
            ("WEIR_STATE".into(), self.state_file().display().to_string()),
        ]
    }

    /// The output the script wrote (`None`: it wrote none); an error says what is wrong with it.
    pub fn read_output(&self) -> Result<Option<Map<String, Value>>, String> {
        match std::fs::read(self.output()) {
            Ok(bytes) => object(&bytes).map(Some).map_err(|e| format!("$WEIR_OUTPUT: {e}")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("$WEIR_OUTPUT: {e}")),
        }
    }

    /// The state the script left, when it changed it (a bad one is logged and dropped).
    pub fn changed_state(&self) -> Option<Map<String, Value>> {
        let bytes = std::fs::read(self.state_file()).ok()?; // none: unchanged (or never any)
        match object(&bytes) {
            Ok(state) if state != self.state => Some(state),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(file = %self.state_file().display(), error = %e, "the task's new state is kept out: the old one stays");
                None
            }
        }
    }

    /// Removes the files.
    pub fn remove(self) {
        let _ = remove_if_there(&self.output);
        let _ = remove_if_there(&self.state_file);
    }
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `bytes` as a bounded JSON object.
fn object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    if bytes.len() > MAX_BYTES {
        return Err(format!("{} bytes, more than the {MAX_BYTES} allowed", bytes.len()));
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("a JSON object is expected, not {}", kind(&other))),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse(text: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Corrupt(format!("stored JSON object {text:?}"))),
    }
}

impl Store {
    /// Keeps `output` with try `try_number` of `key`.
    pub async fn record_output(
        &self,
        key: &TaskKey,
        try_number: u32,
        output: &Map<String, Value>,
    ) -> Result<(), StoreError> {
        let json = Value::Object(output.clone()).to_string();
        self.set_try_json(key, try_number, crate::store::TryJson::Output, json).await
    }

    /// The outputs of `run_id`'s tasks, by task: each one's latest try that left one.
    pub async fn outputs(
        &self,
        dag_id: &str,
        run_id: &str,
    ) -> Result<BTreeMap<String, Map<String, Value>>, StoreError> {
        let rows = sqlx::query(
            "SELECT task_id, output FROM flow_task_tries WHERE dag_id = $1 AND run_id = $2 AND output IS NOT NULL \
             ORDER BY task_id, try_number",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_all(self.pool())
        .await?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let text: String = r.get(1);
            out.insert(r.get(0), parse(&text)?); // later tries overwrite earlier ones
        }
        Ok(out)
    }

    /// `task_id`'s state in `dag_id` (`{}` when it has none).
    pub async fn task_state(&self, dag_id: &str, task_id: &str) -> Result<Map<String, Value>, StoreError> {
        let row = sqlx::query("SELECT value FROM flow_task_state WHERE dag_id = $1 AND task_id = $2")
            .bind(dag_id)
            .bind(task_id)
            .fetch_optional(self.pool())
            .await?;
        row.map_or(Ok(Map::new()), |r| parse(&r.get::<String, _>(0)))
    }

    /// The states of the tasks `keys` (DAG id, task id) that have one, in one statement per
    /// [`crate::store::ROWS_PER_STATEMENT`] tasks: the scheduler reads those of the tries it
    /// starts at once, not one read per try.
    pub(crate) async fn task_states_of(
        &self,
        keys: &[(&str, &str)],
    ) -> Result<HashMap<(String, String), Map<String, Value>>, StoreError> {
        let mut states = HashMap::new();
        for chunk in keys.chunks(crate::store::ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT s.dag_id, s.task_id, s.value FROM flow_task_state s JOIN (VALUES {}) AS v \
                 ON s.dag_id = v.column1 AND s.task_id = v.column2",
                crate::store::value_rows(chunk.len(), 2, 1)
            );
            let mut q = sqlx::query(&sql);
            for (dag_id, task_id) in chunk {
                q = q.bind(*dag_id).bind(*task_id);
            }
            for r in q.fetch_all(self.pool()).await? {
                states.insert((r.get(0), r.get(1)), parse(&r.get::<String, _>(2))?);
            }
        }
        Ok(states)
    }

    /// Every task's state in `dag_id`, with when it was last set.
    pub async fn task_states(
        &self,
        dag_id: &str,
    ) -> Result<Vec<(String, Map<String, Value>, chrono::DateTime<chrono::Utc>)>, StoreError> {
        let rows =
            sqlx::query("SELECT task_id, value, updated_at FROM flow_task_state WHERE dag_id = $1 ORDER BY task_id")
                .bind(dag_id)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(|r| Ok((r.get(0), parse(&r.get::<String, _>(1))?, crate::store::instant(r.get(2))))).collect()
    }

    /// Sets `task_id`'s state in `dag_id` (`None`: forgets it).
    pub async fn set_task_state(
        &self,
        dag_id: &str,
        task_id: &str,
        state: Option<&Map<String, Value>>,
    ) -> Result<(), StoreError> {
        match state {
            Some(state) => {
                sqlx::query(
                    "INSERT INTO flow_task_state (dag_id, task_id, value, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (dag_id, task_id) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(dag_id)
                .bind(task_id)
                .bind(Value::Object(state.clone()).to_string())
                .bind(now())
                .execute(self.pool())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM flow_task_state WHERE dag_id = $1 AND task_id = $2")
                    .bind(dag_id)
                    .bind(task_id)
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_be_small_json_objects() {
        assert!(object(br#"{"rows": 3}"#).is_ok());
        assert!(object(b"[1, 2]").unwrap_err().contains("not an array"));
        assert!(object(b"{oops").unwrap_err().contains("not JSON"));
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_BYTES));
        assert!(object(big.as_bytes()).unwrap_err().contains("more than"));
    }
}
