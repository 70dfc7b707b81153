//! Running one try of a task, wherever it runs (the scheduler's local executor or a remote
//! worker): templating its context, executing its kind, keeping its log, and turning how it
//! ended into the state the metadata DB records (retry, branch skips).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use weir_batch::sql::WriteMode;
use weir_lake::catalog::Lake;

use crate::{
    approvals,
    dag::{self, Dag, TaskKind},
    outputs,
    rules::TaskState,
    store::{Finish, RunRow, Store, TaskKey},
    template::{Context, Syntax},
};

/// The log file of one try: `<dag>/<run>/<task>.<try>.log` (one folder per run, not per task:
/// creating folders is most of what a short task costs the file system).
pub fn log_path(logs_dir: &Path, key: &TaskKey, try_number: u32) -> PathBuf {
    logs_dir.join(&key.dag_id).join(&key.run_id).join(format!("{}.{try_number}.log", key.task_id))
}

/// Where the process groups of the tries running from `logs_dir` are recorded (see
/// [`weir_batch::orphans`]), beside the tries' `$WEIR_OUTPUT` and `$WEIR_STATE` files.
pub fn running_dir(logs_dir: &Path) -> PathBuf {
    logs_dir.join(".running")
}

/// Kills what an executor that died (SIGKILL, a crash) left running from `logs_dir` on this
/// machine, before its tries run again; logs each group killed.
pub fn kill_orphans(logs_dir: &Path) {
    for (ledger, group) in weir_batch::orphans::kill_orphans(&running_dir(logs_dir)) {
        tracing::warn!(ledger = %ledger.display(), group, "killed the processes of a try whose executor died");
    }
}

/// The ledger of an executor running tries from `logs_dir`.
pub fn ledger(logs_dir: &Path) -> std::sync::Arc<weir_batch::orphans::Ledger> {
    std::sync::Arc::new(weir_batch::orphans::Ledger::new(&running_dir(logs_dir)))
}

/// How a try ended.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Success,
    /// A branch chose these downstream tasks.
    Follow(Vec<String>),
    /// A mapped task expands into one instance per item.
    Mapped(Vec<serde_json::Value>),
    Failed(String),
}

/// Runs try `try_number` of task `task_id` in `run` of `dag` (its start already recorded), with
/// its log under `logs_dir`. Returns how it ended and, when the log moved to the lake's object
/// storage, its URL.
pub(crate) async fn run_try(
    dag: &Dag,
    run: &RunRow,
    task_id: &str,
    try_number: u32,
    logs_dir: &Path,
    with: &With<'_>,
) -> (Outcome, Option<String>) {
    let With { lake, store, batch, ledger, state } = *with;
    let key = TaskKey { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: task_id.to_string() };
    let log = log_path(logs_dir, &key, try_number);

    let Some(task) = dag.task(task_id) else {
        let reason = format!("DAG {} version {} has no task {task_id:?}", dag.id, dag.hash);
        return (failed(&log, reason).await, None);
    };
    let ctx = Context::new(
        &run.dag_id,
        &run.run_id,
        task_id,
        try_number,
        run.interval.start,
        (run.interval.start, run.interval.end),
        &dag.params,
        &run.conf,
    )
    .with_inputs(&run.inputs);
    // What earlier tasks of the run handed on, when its templates read any (a failure to read
    // them fails the try).
    let outputs = match task.templates_mention("tasks.") {
        true => store.outputs(&run.dag_id, &run.run_id).await,
        false => Ok(Default::default()),
    };
    let ctx = match outputs {
        Ok(outputs) => ctx.with_outputs(&outputs),
        Err(e) => {
            let reason = format!("reading the run's task outputs: {e}");
            return (failed(&log, reason).await, None);
        }
    };
    // A mapped task's own try expands it; an instance of it runs with its item.
    let ctx = match (&task.map, dag::mapped_index(task_id)) {
        (Some(spec), None) => {
            let expanded = async {
                let pinned = pinned_versions(store, &key, &run.inputs).await?;
                let (items, read) = crate::mapping::items(spec, &ctx, lake, store, &key, &pinned).await?;
                if !read.is_empty() {
                    store.record_inputs(&key, try_number, &read).await.map_err(|e| e.to_string())?;
                    let list: Vec<String> = read.iter().map(|(t, v)| format!("{t}@{v}")).collect();
                    write_log(&log, &format!("[weir] the items' query read {}\n", list.join(", "))).await;
                }
                Ok::<_, String>(items)
            };
            let outcome = match expanded.await {
                Ok(items) => {
                    let shown: Vec<String> = items.iter().take(5).map(|i| i.to_string()).collect();
                    let more = if items.len() > shown.len() { ", …" } else { "" };
                    let line = format!("[weir] mapped over {} items: {}{more}\n", items.len(), shown.join(", "));
                    write_log(&log, &line).await;
                    Outcome::Mapped(items)
                }
                Err(reason) => failed(&log, reason).await,
            };
            return (outcome, None);
        }
        (Some(spec), Some(_)) => match store.map_item(&key).await {
            Ok(Some((index, item))) => ctx.with_map(index, &item, matches!(spec.source, dag::MapSource::Over(_))),
            Ok(None) => {
                let reason = format!("{task_id} is not an instance of mapped task {}", task.id);
                return (failed(&log, reason).await, None);
            }
            Err(e) => {
                let reason = format!("reading the mapped item: {e}");
                return (failed(&log, reason).await, None);
            }
        },
        (None, _) => ctx,
    };
    let cwd = dag.file.parent().map(Path::to_path_buf).unwrap_or_default();
    tracing::debug!(dag = %key.dag_id, run_id = %key.run_id, task = %key.task_id, try_number, "task started");
    let env = Env {
        ctx: &ctx,
        cwd: &cwd,
        log: &log,
        ledger,
        scratch: &running_dir(logs_dir),
        inputs: &run.inputs,
        lake,
        store,
        key: &key,
        try_number,
        interval: run.interval,
        batch,
        state,
    };
    let outcome = execute(task, &env).await;
    let moved = match lake.url() {
        weir_lake::LakeUrl::S3 { .. } => move_log(lake, &key, try_number, &log).await,
        weir_lake::LakeUrl::File(_) => None,
    };
    (outcome, moved)
}

/// How the end of try `try_number` of `key` is recorded: its state, and the retry (while it has
/// tries left of `max_tries`) or the branch's skips. `dag` is the version the try ran.
pub(crate) fn finish_of(
    key: &TaskKey,
    try_number: u32,
    outcome: &Outcome,
    log: Option<String>,
    dag: Option<&Dag>,
    max_tries: u32,
) -> Finish {
    let mut skip = Vec::new();
    let outcome = match (outcome, dag) {
        (Outcome::Follow(chosen), Some(dag)) => {
            let downstream: Vec<String> = dag.downstream(&key.task_id).map(|t| t.id.clone()).collect();
            match chosen.iter().find(|id| !downstream.contains(id)) {
                Some(bad) => Outcome::Failed(format!(
                    "the branch chose {bad:?}, which is not directly downstream (choices: {})",
                    downstream.join(", ")
                )),
                None => {
                    skip = downstream.into_iter().filter(|d| !chosen.contains(d)).collect();
                    Outcome::Success
                }
            }
        }
        (o, _) => o.clone(),
    };
    let finish = |state, reason, retry_wait, skip| Finish {
        key: key.clone(),
        try_number,
        state,
        reason,
        retry_wait,
        skip,
        log: log.clone(),
        expand: None,
    };
    let (dag_id, run_id, task_id) = (&key.dag_id, &key.run_id, &key.task_id);
    match outcome {
        Outcome::Success | Outcome::Follow(_) => finish(TaskState::Success, None, None, skip),
        // Airflow's rule: a task mapped over nothing is skipped.
        Outcome::Mapped(items) if items.is_empty() => {
            finish(TaskState::Skipped, Some("mapped over no items".into()), None, Vec::new())
        }
        Outcome::Mapped(items) => {
            let tries = dag.and_then(|d| d.task(task_id)).map_or(1, |t| t.retries + 1);
            Finish {
                expand: Some(crate::store::Expansion { items, tries }),
                ..finish(TaskState::Mapped, None, None, Vec::new())
            }
        }
        Outcome::Failed(reason) if try_number < max_tries => {
            let task = dag.and_then(|d| d.task(task_id));
            let wait = task.map_or(Duration::ZERO, |t| t.retry_wait(try_number + 1));
            tracing::warn!(dag = %dag_id, run_id = %run_id, task = %task_id, try_number, %reason, ?wait, "task failed; will retry");
            finish(TaskState::UpForRetry, Some(reason), Some(wait), Vec::new())
        }
        Outcome::Failed(reason) => {
            tracing::error!(dag = %dag_id, run_id = %run_id, task = %task_id, try_number, %reason, "task failed");
            finish(TaskState::Failed, Some(reason), None, Vec::new())
        }
    }
}

/// The services a try uses.
#[derive(Clone, Copy)]
pub(crate) struct With<'a> {
    pub lake: &'a Lake,
    pub store: &'a Store,
    /// Where the executor records its tries' process groups.
    pub ledger: &'a std::sync::Arc<weir_batch::orphans::Ledger>,
    /// Where SQL tasks run.
    pub batch: &'a weir_batch::engine::BatchConfig,
    /// The task's state (`$WEIR_STATE`) when the caller read it already (the scheduler reads
    /// those of the tries it starts together); `None`: the try reads it.
    pub state: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// What a try runs with.
struct Env<'a> {
    ctx: &'a Context,
    cwd: &'a Path,
    log: &'a Path,
    /// Where the try's process group is recorded while it runs.
    ledger: &'a std::sync::Arc<weir_batch::orphans::Ledger>,
    /// Where its `$WEIR_OUTPUT` and `$WEIR_STATE` files are.
    scratch: &'a Path,
    /// A table-triggered run's input versions.
    inputs: &'a crate::store::Inputs,
    lake: &'a Lake,
    store: &'a Store,
    key: &'a TaskKey,
    try_number: u32,
    interval: crate::schedule::Interval,
    batch: &'a weir_batch::engine::BatchConfig,
    /// The task's state, when read already (see [`With::state`]).
    state: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Runs one try of `task`.
async fn execute(task: &dag::Task, env: &Env<'_>) -> Outcome {
    let Env { ctx, cwd, log, lake, key, .. } = *env;
    let timeout = task.execution_timeout;
    let result: Result<Option<Vec<String>>, String> = match &task.kind {
        TaskKind::Script { command, env: vars } => {
            let run = async {
                let command = ctx.render_argv(command)?;
                let mut all_env = ctx.env();
                for (k, v) in vars {
                    all_env.push((k.clone(), ctx.render(v, Syntax::Text)?));
                }
                run_script(command, all_env, false, timeout, env).await.map(|_| None)
            };
            run.await
        }
        TaskKind::Branch { command } => {
            let run = async {
                let command = ctx.render_argv(command)?;
                let out = run_script(command, ctx.env(), true, timeout, env).await?;
                let chosen: Vec<String> = out
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or_default()
                    .split([',', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                Ok(Some(chosen))
            };
            run.await
        }
        TaskKind::Sql { sql, view, append, replace_where, engine } => {
            let run = async {
                let engine = env.batch.engine_for(*engine)?;
                let sql = ctx.render(sql, Syntax::Sql)?;
                let mode = match (append, replace_where) {
                    (true, _) => WriteMode::Append,
                    (false, Some(p)) => WriteMode::ReplaceWhere(ctx.render(p, Syntax::Sql)?),
                    (false, None) => WriteMode::Overwrite,
                };
                write_log(log, &format!("[weir] views.{view} ← {sql} (engine {engine})\n")).await;
                let pinned = pinned_versions(env.store, env.key, env.inputs).await?;
                if !pinned.is_empty() {
                    let list: Vec<String> = pinned.iter().map(|(t, v)| format!("{t}@{v}")).collect();
                    write_log(
                        log,
                        &format!(
                            "[weir] reading {} (recorded before; `weir dags clear --latest` reads the latest)\n",
                            list.join(", ")
                        ),
                    )
                    .await;
                }
                let source = serde_json::json!({"dag": key.dag_id, "run": key.run_id, "task": key.task_id});
                let written = with_timeout(
                    timeout,
                    weir_batch::sql::write_view(lake, &engine, &sql, view, mode, source, &pinned),
                )
                .await?
                .map_err(|e| e.to_string())?;
                env.store.record_inputs(key, env.try_number, &written.inputs).await.map_err(|e| e.to_string())?;
                write_log(
                    log,
                    &format!(
                        "[weir] wrote {} rows as version {} of {}\n",
                        written.rows, written.version, written.table
                    ),
                )
                .await;
                let output =
                    serde_json::json!({"table": written.table, "version": written.version, "rows": written.rows});
                let serde_json::Value::Object(output) = output else { unreachable!("an object") };
                env.store.record_output(key, env.try_number, &output).await.map_err(|e| e.to_string())?;
                Ok(None)
            };
            run.await
        }
        TaskKind::Approval { message, approvers, timeout } => {
            let run = async {
                let message = ctx.render(message, Syntax::Text)?;
                let who = if approvers.is_empty() {
                    "anyone with an operate token".to_string()
                } else {
                    approvers.join(", ")
                };
                let how = format!("weir dags approve {} {} {}", key.dag_id, key.run_id, key.task_id);
                write_log(log, &format!("[weir] waiting for approval by {who}: {message}\n[weir] decide with `{how}` (or reject), the API or the console\n")).await;
                let d = approvals::wait(env.store, key, env.try_number, *timeout).await?;
                let comment = if d.comment.is_empty() { String::new() } else { format!(": {}", d.comment) };
                write_log(log, &format!("[weir] approved by {} at {}{comment}\n", d.by, d.at.to_rfc3339())).await;
                Ok(None)
            };
            run.await
        }
        TaskKind::LakeSnapshot { table } => {
            let run = async {
                let built =
                    with_timeout(timeout, weir_lake::current::build(lake, table)).await?.map_err(|e| e.to_string())?;
                write_log(
                    log,
                    &format!(
                        "[weir] current.{} version {}: {} rows from raw version {}\n",
                        table, built.version, built.rows, built.raw_version
                    ),
                )
                .await;
                Ok(None)
            };
            run.await
        }
        TaskKind::Sensor { until, poke_interval, timeout } => {
            with_timeout(Some(*timeout), sense(until, *poke_interval, env))
                .await
                .unwrap_or_else(|_| Err(format!("sensor timed out after {}", humantime::format_duration(*timeout))))
        }
        TaskKind::Notify { url, message } => {
            let run = async {
                let message = ctx.render(message, Syntax::Text)?;
                let body = serde_json::json!({
                    "dag_id": key.dag_id,
                    "run_id": key.run_id,
                    "task_id": key.task_id,
                    "logical_date": env.interval.start,
                    "data_interval_start": env.interval.start,
                    "data_interval_end": env.interval.end,
                    "message": message,
                });
                let send = weir_schemas::http::client().post(url).json(&body).send();
                let response = with_timeout(timeout.or(Some(Duration::from_secs(30))), send)
                    .await?
                    .map_err(|e| format!("notify {url}: {e}"))?;
                let status = response.status();
                write_log(log, &format!("[weir] POST {url} → {status}\n")).await;
                if status.is_success() { Ok(None) } else { Err(format!("notify {url}: the webhook answered {status}")) }
            };
            run.await
        }
        TaskKind::Push { files, uri } => {
            let run = async {
                let uri = ctx.render(uri, Syntax::Text)?;
                let mut listed = Vec::with_capacity(files.len());
                for f in files {
                    let rel = ctx.render(f, Syntax::Text)?;
                    let path = cwd.join(&rel);
                    let (size, md5) = file_md5(&path).await.map_err(|e| format!("push: {}: {e}", path.display()))?;
                    write_log(log, &format!("[weir] {rel}: {size} bytes, md5 {md5}\n")).await;
                    listed.push(serde_json::json!({"path": rel, "size": size, "md5": md5}));
                }
                let detail = serde_json::json!({"files": listed, "uri": uri});
                env.store.record_artifact(key, env.try_number, detail).await.map_err(|e| e.to_string())?;
                write_log(log, &format!("[weir] pushed {} file(s), payload {uri}\n", listed.len())).await;
                Ok(None)
            };
            with_timeout(timeout, run).await.and_then(|r| r)
        }
    };
    match result {
        Ok(None) => Outcome::Success,
        Ok(Some(chosen)) => Outcome::Follow(chosen),
        Err(reason) => failed(log, reason).await,
    }
}

/// The table versions a try of `key` that reads the lake (a SQL task, a `map: {sql}` expansion)
/// reads (see [`crate::lineage`]): what an earlier try of the instance read, else, in a
/// table-triggered run, the versions the run covers (its `inputs`).
async fn pinned_versions(
    store: &Store,
    key: &TaskKey,
    inputs: &crate::store::Inputs,
) -> Result<weir_lake::query::Versions, String> {
    if let Some(pinned) = store.pinned_inputs(key).await.map_err(|e| e.to_string())? {
        return Ok(pinned);
    }
    Ok(inputs.iter().filter_map(|(t, i)| Some((t.clone(), u64::try_from(i.version).ok()?))).collect())
}

/// Runs a script of the try with its pid file and its `$WEIR_OUTPUT` / `$WEIR_STATE` files
/// ([`crate::outputs`]): keeps the state it leaves, and its output when it succeeds (a bad
/// output fails the try). Returns the tail of standard output when `capture_stdout`.
async fn run_script(
    command: Vec<String>,
    mut vars: Vec<(String, String)>,
    capture_stdout: bool,
    timeout: Option<Duration>,
    env: &Env<'_>,
) -> Result<String, String> {
    let key = env.key;
    let state = match env.state {
        Some(state) => state.clone(),
        None => env.store.task_state(&key.dag_id, &key.task_id).await.map_err(|e| e.to_string())?,
    };
    let files = outputs::Files::prepare(env.scratch, key, env.try_number, state)
        .map_err(|e| format!("preparing $WEIR_OUTPUT and $WEIR_STATE: {e}"))?;
    vars.extend(files.env());
    let script = weir_batch::script::Script {
        command,
        env: vars,
        cwd: env.cwd.into(),
        log: env.log.into(),
        timeout,
        capture_stdout,
        ledger: Some(env.ledger.clone()),
    };
    let ran = script.run().await.map_err(|e| e.to_string());
    let handed = async {
        if let Some(state) = files.changed_state() {
            env.store.set_task_state(&key.dag_id, &key.task_id, Some(&state)).await.map_err(|e| e.to_string())?;
            write_log(env.log, &format!("[weir] state kept: {}\n", serde_json::Value::Object(state))).await;
        }
        let out = ran?;
        if let Some(output) = files.read_output()? {
            env.store.record_output(key, env.try_number, &output).await.map_err(|e| e.to_string())?;
        }
        Ok(out)
    };
    let result = handed.await;
    files.remove();
    result
}

/// Checks a sensor's condition every `poke` until it holds.
async fn sense(until: &dag::SensorCondition, poke: Duration, env: &Env<'_>) -> Result<Option<Vec<String>>, String> {
    let end_ms = env.interval.end.timestamp_millis();
    let mut pokes = 0u64;
    loop {
        pokes += 1;
        let (ok, seen) = match until {
            dag::SensorCondition::TableFresh(table) if table.starts_with("raw.") => {
                let sql = format!("SELECT max(_source_ts_ms) FROM {table}");
                let batches = weir_lake::query::run(env.lake, &sql, None).await;
                let newest = batches.ok().and_then(|b| {
                    use deltalake::arrow::{
                        array::{Array as _, AsArray as _},
                        datatypes::Int64Type,
                    };
                    b.first().filter(|b| b.num_rows() > 0).and_then(|b| {
                        let col = b.column(0).as_primitive::<Int64Type>();
                        (!col.is_null(0)).then(|| col.value(0))
                    })
                });
                (newest.is_some_and(|t| t >= end_ms), format!("newest change at {newest:?} ms"))
            }
            dag::SensorCondition::TableFresh(table) => {
                let last =
                    env.lake.history(table, Some(1)).await.ok().and_then(|h| h.first().and_then(|c| c.timestamp));
                (last.is_some_and(|t| t >= end_ms), format!("last commit at {last:?} ms"))
            }
            dag::SensorCondition::DagSucceeded(dag_id) => {
                let done = env.store.succeeded_at(dag_id, env.interval.start).await.map_err(|e| e.to_string())?;
                (done, format!("{dag_id} for {}", env.interval.start))
            }
        };
        write_log(env.log, &format!("[weir] poke {pokes}: {} ({seen})\n", if ok { "met" } else { "not yet" })).await;
        if ok {
            return Ok(None);
        }
        tokio::time::sleep(poke).await;
    }
}

/// A failed try: the reason, also written to its log.
async fn failed(log: &Path, reason: String) -> Outcome {
    write_log(log, &format!("[weir] failed: {reason}\n")).await;
    Outcome::Failed(reason)
}

async fn with_timeout<T>(limit: Option<Duration>, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    match limit {
        Some(d) => {
            tokio::time::timeout(d, f).await.map_err(|_| format!("ran longer than its execution_timeout of {d:?}"))
        }
        None => Ok(f.await),
    }
}

/// Moves a finished try's log from the local folder into the lake's `logs/`; returns its URL.
/// A failure leaves the log where it is (logged, never fatal to the try); a try that wrote
/// nothing has no log to move.
async fn move_log(lake: &Lake, key: &TaskKey, try_number: u32, local: &Path) -> Option<String> {
    let rel = format!("logs/{}/{}/{}.{try_number}.log", key.dag_id, key.run_id, key.task_id);
    let bytes = match std::fs::read(local) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None, // a silent try
        Err(e) => {
            tracing::warn!(log = %local.display(), error = %e, "cannot read the task log to upload it");
            return None;
        }
    };
    match lake.put_object(&rel, bytes).await {
        Ok(url) => {
            let _ = std::fs::remove_file(local);
            Some(url.to_string())
        }
        Err(e) => {
            tracing::warn!(log = %local.display(), error = %e, "cannot upload the task log to the lake; it stays local");
            None
        }
    }
}

/// A file's size and MD5 (hex), read in chunks.
async fn file_md5(path: &Path) -> std::io::Result<(u64, String)> {
    use md5::Digest as _;
    use tokio::io::AsyncReadExt as _;
    let mut f = tokio::fs::File::open(path).await?;
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()))
}

/// Appends to a try's log (a failure to log is itself logged, never fatal).
async fn write_log(path: &Path, text: &str) {
    use tokio::io::AsyncWriteExt as _;
    let write = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut f = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?;
        f.write_all(text.as_bytes()).await
    };
    if let Err(e) = write.await {
        tracing::warn!(log = %path.display(), error = %e, "cannot write the task log");
    }
}
