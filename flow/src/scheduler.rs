//! The scheduler: parses the DAG folder, creates runs when their data intervals end, decides
//! task instances by trigger rule, and runs them on a local executor with a fixed number of slots.
//!
//! Scheduling is event driven: when a try ends, its run's downstream tasks are decided and
//! started in the same turn of the loop — the critical path has no polling sleep. The loop also
//! wakes every `poll_interval` to pick up what other processes wrote (manual runs, clears, pauses)
//! and retries whose delay has passed, and every `parse_interval` to re-read the DAG folder.
//!
//! Every state change is written to the metadata DB before anything depends on it; a scheduler
//! that stops and starts again resumes from the DB (tries it had running count as failed).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weir_batch::sql::WriteMode;
use weir_lake::catalog::Lake;

use crate::{
    FlowError,
    dag::{self, Dag, TaskKind},
    rules::{Decision, RunState, TaskState, decide},
    store::{Finish, RunRow, Store, TaskKey, TaskRow},
    template::Context,
};

/// `[flow]` in `weir.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// The folder of DAG files.
    pub dags_dir: PathBuf,
    /// Tasks run at once by this scheduler's local executor.
    pub slots: usize,
    /// How often the DAG folder is read again.
    #[serde(with = "humantime_serde")]
    pub parse_interval: Duration,
    /// How often the metadata DB is read for work other processes created (manual runs, clears)
    /// and for retries that are due.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Where task logs are written (`<dir>/<dag>/<run>/<task>.<try>.log`); by default `logs/`
    /// beside the lake's tables when the lake is a local directory. With a lake on S3 they are
    /// written to `./weir-data/logs` by default and moved to the lake's `logs/` when the try ends.
    pub logs_dir: Option<PathBuf>,
    /// Pools and their slots; a task names one (`default_pool` has `slots` slots).
    pub pools: BTreeMap<String, usize>,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            dags_dir: PathBuf::from("dags"),
            slots: 16,
            parse_interval: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            logs_dir: None,
            pools: BTreeMap::new(),
        }
    }
}

impl FlowConfig {
    /// The log folder for a lake at `lake`.
    pub fn logs_dir_for(&self, lake: &Lake) -> PathBuf {
        if let Some(d) = &self.logs_dir {
            return d.clone();
        }
        match lake.url().root_url().ok().and_then(|u| u.to_file_path().ok()) {
            Some(p) => p.join("logs"),
            None => PathBuf::from("weir-data/logs"),
        }
    }
}

/// The log file of one try: `<dag>/<run>/<task>.<try>.log` (one folder per run, not per task:
/// creating folders is most of what a short task costs the file system).
pub fn log_path(logs_dir: &Path, key: &TaskKey, try_number: u32) -> PathBuf {
    logs_dir.join(&key.dag_id).join(&key.run_id).join(format!("{}.{try_number}.log", key.task_id))
}

/// How a try ended.
#[derive(Debug, Clone)]
enum Outcome {
    Success,
    /// A branch chose these downstream tasks.
    Follow(Vec<String>),
    Failed(String),
}

#[derive(Clone)]
struct Completion {
    key: TaskKey,
    try_number: u32,
    outcome: Outcome,
    /// Where the log went, when it moved to the lake's object storage.
    log: Option<String>,
}

/// The scheduler and its local executor.
pub struct Scheduler {
    store: Store,
    lake: Arc<Lake>,
    config: FlowConfig,
    logs_dir: PathBuf,
    /// The DAG folder as last read.
    dags: HashMap<String, Arc<Dag>>,
    /// DAG versions runs are pinned to, by (dag, hash).
    versions: HashMap<(String, String), Arc<Dag>>,
    /// Tries running on the executor.
    running: HashMap<TaskKey, Running>,
    done_tx: mpsc::UnboundedSender<Completion>,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    /// Scheduled task instances waiting for a slot, in the order they start.
    waiting: BTreeMap<WaitOrder, Waiting>,
    /// The earliest retry this scheduler set up: a full pass is due then.
    next_retry: Option<tokio::time::Instant>,
}

/// Higher priority first, then the older run, then by key.
type WaitOrder = (std::cmp::Reverse<i64>, chrono::DateTime<Utc>, TaskKey);

/// What the scheduler keeps of a running try: what recording its end needs.
struct Running {
    pool: String,
    dag: Arc<Dag>,
    max_tries: u32,
}

/// What starting a waiting task needs.
struct Waiting {
    dag: Arc<Dag>,
    run: RunRow,
    ti: TaskRow,
}

impl Scheduler {
    /// A scheduler over `store`, running tasks against `lake`.
    pub fn new(store: Store, lake: Arc<Lake>, config: FlowConfig) -> Scheduler {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let logs_dir = config.logs_dir_for(&lake);
        Scheduler {
            store,
            lake,
            config,
            logs_dir,
            dags: HashMap::new(),
            versions: HashMap::new(),
            running: HashMap::new(),
            done_tx,
            done_rx,
            waiting: BTreeMap::new(),
            next_retry: None,
        }
    }

    /// Runs until `shutdown`, then waits for the tries it started.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), FlowError> {
        let orphans = self.store.reset_orphans().await?;
        if orphans > 0 {
            tracing::warn!(orphans, "task instances left running by a stopped scheduler were reset");
        }
        tokio::pin!(shutdown);
        let mut next_parse = tokio::time::Instant::now();
        let mut next_poll = tokio::time::Instant::now();
        // Completions whose recording failed (the metadata DB was unreachable): retried.
        let mut unrecorded: Vec<Completion> = Vec::new();
        loop {
            let now = tokio::time::Instant::now();
            if self.next_retry.is_some_and(|t| now >= t) {
                self.next_retry = None;
                next_poll = now;
            }
            if now >= next_parse {
                if let Err(e) = self.parse().await {
                    tracing::error!(error = %e, "reading the DAG folder failed; trying again");
                }
                next_parse = now + self.config.parse_interval;
            }
            if now >= next_poll {
                let retry = std::mem::take(&mut unrecorded);
                if !retry.is_empty() {
                    self.record_all(retry, &mut unrecorded).await;
                }
                let pass = async {
                    self.create_scheduled_runs().await?;
                    self.schedule_all().await
                };
                if let Err(e) = pass.await {
                    tracing::error!(error = %e, "scheduling pass failed; trying again");
                }
                next_poll = now + self.config.poll_interval;
            }
            tokio::select! {
                Some(c) = self.done_rx.recv() => {
                    let mut ended = vec![c];
                    while let Ok(c) = self.done_rx.try_recv() {
                        ended.push(c);
                    }
                    let mut by_run: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
                    for c in &ended {
                        by_run.entry((c.key.dag_id.clone(), c.key.run_id.clone())).or_default().push(c.key.task_id.clone());
                    }
                    self.record_all(ended, &mut unrecorded).await;
                    let next = async {
                        for ((dag_id, run_id), tasks) in &by_run {
                            self.schedule_after(dag_id, run_id, tasks).await?;
                        }
                        self.dispatch().await
                    };
                    if let Err(e) = next.await {
                        tracing::error!(error = %e, "scheduling after a task ended failed; the next pass retries");
                    }
                }
                _ = tokio::time::sleep_until(next_parse.min(next_poll).min(self.next_retry.unwrap_or(next_poll))) => {}
                _ = &mut shutdown => break,
            }
        }
        tracing::info!(running = self.running.len(), "scheduler stopping; waiting for running tasks");
        while !self.running.is_empty() {
            match self.done_rx.recv().await {
                Some(c) => {
                    let mut lost = Vec::new();
                    self.record_all(vec![c], &mut lost).await;
                    for c in lost {
                        // Reset to a retry when this scheduler (or another) starts again.
                        self.running.remove(&c.key);
                    }
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Records the ends of tries in one transaction, or keeps them for the next pass when the
    /// metadata DB fails (they keep their slots meanwhile).
    async fn record_all(&mut self, ended: Vec<Completion>, unrecorded: &mut Vec<Completion>) {
        let finishes: Vec<Finish> = ended.iter().map(|c| self.finish_of(c)).collect();
        match self.store.finish_tries(&finishes).await {
            Ok(()) => {
                for f in &finishes {
                    self.running.remove(&f.key);
                    if let Some(wait) = f.retry_wait {
                        // Just after the retry becomes due by the recorded end time.
                        let wake = tokio::time::Instant::now() + wait + Duration::from_millis(1);
                        self.next_retry = Some(self.next_retry.map_or(wake, |t| t.min(wake)));
                    }
                    let state = if f.state == TaskState::Success { "success" } else { "failed" };
                    metrics::counter!("weir_flow_task_tries_total", "dag" => f.key.dag_id.clone(), "state" => state)
                        .increment(1);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, tries = ended.len(), "recording the end of tries failed; retrying");
                unrecorded.extend(ended);
            }
        }
    }

    /// Reads the DAG folder and records what it found.
    async fn parse(&mut self) -> Result<(), FlowError> {
        let (dags, errors) = dag::load_dir(&self.config.dags_dir);
        for e in &errors {
            tracing::error!(file = %e.file, line = ?e.line, reason = %e.reason, "DAG file refused");
        }
        self.store.sync_dags(&dags, &errors).await?;
        metrics::gauge!("weir_flow_dags").set(dags.len() as f64);
        metrics::gauge!("weir_flow_dag_import_errors").set(errors.len() as f64);
        self.dags = dags
            .into_iter()
            .map(|d| {
                let d = Arc::new(d);
                self.versions.insert((d.id.clone(), d.hash.clone()), d.clone());
                (d.id.clone(), d)
            })
            .collect();
        Ok(())
    }

    /// Creates the runs whose data intervals have ended.
    async fn create_scheduled_runs(&mut self) -> Result<(), FlowError> {
        let now = Utc::now();
        let active = self.store.active_runs().await?;
        for row in self.store.dags().await? {
            let Some(dag) = self.dags.get(&row.dag_id).cloned() else { continue };
            if row.paused {
                continue;
            }
            let mut queued = active.iter().filter(|r| r.dag_id == dag.id).count();
            let mut cursor = row.last_interval_end;
            loop {
                // Enough runs waiting: more are created as these finish.
                if queued >= dag.max_active_runs {
                    break;
                }
                let next = match cursor {
                    None if dag.catchup => dag.schedule.first(dag.start_date, dag.timezone),
                    None => dag.schedule.latest_complete(dag.start_date, dag.timezone, now),
                    Some(end) if dag.catchup => {
                        dag.schedule.next(crate::schedule::Interval { start: end, end }, dag.timezone)
                    }
                    Some(end) => {
                        dag.schedule.latest_complete(dag.start_date, dag.timezone, now).filter(|i| i.end > end).or_else(
                            || {
                                // Not caught up and nothing newer has ended: the next one, when due.
                                dag.schedule.next(crate::schedule::Interval { start: end, end }, dag.timezone)
                            },
                        )
                    }
                };
                let Some(interval) = next else { break };
                if interval.end > now || dag.end_date.is_some_and(|e| interval.start > e) {
                    break;
                }
                let run_id = format!("scheduled__{}", interval.start.to_rfc3339());
                if self.store.create_run(&dag, &run_id, "scheduled", interval, &serde_json::Map::new()).await? {
                    tracing::info!(dag = %dag.id, run_id, "scheduled run created");
                    queued += 1;
                }
                // Past the cursor, the next interval is a new one (`@once` has none).
                cursor = Some(interval.end);
            }
        }
        Ok(())
    }

    /// Decides and starts what it can in every active run.
    async fn schedule_all(&mut self) -> Result<(), FlowError> {
        for run in self.store.active_runs().await? {
            self.schedule_run(&run).await?;
        }
        self.dispatch().await
    }

    /// The DAG version `run` started with.
    async fn dag_of(&mut self, run: &RunRow) -> Result<Option<Arc<Dag>>, FlowError> {
        let key = (run.dag_id.clone(), run.dag_hash.clone());
        if let Some(d) = self.versions.get(&key) {
            return Ok(Some(d.clone()));
        }
        let Some((source, file)) = self.store.version_source(&run.dag_id, &run.dag_hash).await? else {
            return Ok(None);
        };
        match dag::parse(Path::new(&file), &source) {
            Ok(d) => {
                let d = Arc::new(d);
                self.versions.insert(key, d.clone());
                Ok(Some(d))
            }
            Err(e) => {
                tracing::error!(dag = %run.dag_id, hash = %run.dag_hash, error = %e, "stored DAG version no longer parses");
                Ok(None)
            }
        }
    }

    /// Decides the task instances of one run, starts those that may run, and ends the run when
    /// every task has finished.
    async fn schedule_run(&mut self, run: &RunRow) -> Result<(), FlowError> {
        if !matches!(run.state, RunState::Queued | RunState::Running) {
            return Ok(());
        }
        let Some(dag) = self.dag_of(run).await? else {
            tracing::error!(dag = %run.dag_id, run_id = %run.run_id, "the DAG version of this run is unknown; failing it");
            self.store.set_run_state(&run.dag_id, &run.run_id, RunState::Failed).await?;
            return Ok(());
        };
        if run.state == RunState::Queued {
            if self.store.running_runs(&run.dag_id).await? >= dag.max_active_runs {
                return Ok(());
            }
            self.store.set_run_state(&run.dag_id, &run.run_id, RunState::Running).await?;
        }
        let mut tasks: HashMap<String, TaskRow> =
            self.store.tasks(&run.dag_id, &run.run_id).await?.into_iter().map(|t| (t.task_id.clone(), t)).collect();
        // Decide until nothing changes: a skip or upstream failure can settle tasks further down.
        let now = Utc::now();
        let mut changes = Vec::new();
        loop {
            let mut changed = false;
            for task in &dag.tasks {
                let Some(ti) = tasks.get(&task.id) else { continue };
                let new = match ti.state {
                    TaskState::None => decided(task, &tasks),
                    TaskState::UpForRetry if ti.next_try_at.is_none_or(|t| t <= now) => Some(TaskState::Scheduled),
                    _ => None,
                };
                if let Some(state) = new {
                    changes.push((task.id.clone(), state));
                    tasks.get_mut(&task.id).expect("present").state = state;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        self.store.set_task_states(&run.dag_id, &run.run_id, &changes).await?;

        for ti in tasks.values().filter(|t| t.state == TaskState::Scheduled) {
            self.enqueue(&dag, run, ti);
        }

        if tasks.values().all(|t| t.state.is_finished()) {
            self.finish_run(&dag, run).await?;
        }
        Ok(())
    }

    /// After the tries of `ended` in one run ended: decides their downstream tasks — and, through skips and upstream
    /// failures, theirs — from their own rows only, queues what may run, and ends the run when
    /// nothing is left. Work per completion follows the task's edges, not the DAG's size.
    async fn schedule_after(&mut self, dag_id: &str, run_id: &str, ended: &[String]) -> Result<(), FlowError> {
        let run = self.store.run(dag_id, run_id).await?;
        let dag = match self.dag_of(&run).await? {
            Some(d) if run.state == RunState::Running => d,
            // Queued again by a clear, or its version is gone: the full pass handles it.
            _ => return self.schedule_run(&run).await,
        };
        let mut rows: HashMap<String, TaskRow> = HashMap::new();
        let mut changes = Vec::new();
        let mut frontier: Vec<String> =
            ended.iter().flat_map(|id| dag.downstream(id).map(|t| t.id.clone()).collect::<Vec<_>>()).collect();
        while !frontier.is_empty() {
            frontier.sort();
            frontier.dedup();
            let mut need: Vec<String> = Vec::new();
            for id in &frontier {
                let task = dag.task(id).expect("downstream of a task of the DAG");
                for t in std::iter::once(id).chain(task.upstream.iter()) {
                    if !rows.contains_key(t) && !need.contains(t) {
                        need.push(t.clone());
                    }
                }
            }
            for ti in self.store.tasks_in(&run.dag_id, &run.run_id, &need).await? {
                rows.insert(ti.task_id.clone(), ti);
            }
            let mut next = Vec::new();
            for id in &frontier {
                let task = dag.task(id).expect("downstream of a task of the DAG");
                if rows.get(id).is_none_or(|ti| ti.state != TaskState::None) {
                    continue;
                }
                let Some(state) = decided(task, &rows) else { continue };
                if state != TaskState::Scheduled {
                    next.extend(dag.downstream(id).map(|t| t.id.clone()));
                }
                rows.get_mut(id).expect("loaded").state = state;
                changes.push((id.clone(), state));
            }
            frontier = next;
        }
        self.store.set_task_states(&run.dag_id, &run.run_id, &changes).await?;
        for (id, state) in &changes {
            if *state == TaskState::Scheduled {
                self.enqueue(&dag, &run, &rows[id]);
            }
        }
        if self.store.unfinished(&run.dag_id, &run.run_id).await? == 0 {
            self.finish_run(&dag, &run).await?;
        }
        Ok(())
    }

    /// Puts a scheduled instance in the queue of those waiting for a slot (see `dispatch`).
    fn enqueue(&mut self, dag: &Arc<Dag>, run: &RunRow, ti: &TaskRow) {
        let key = TaskKey { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: ti.task_id.clone() };
        if self.running.contains_key(&key) {
            return;
        }
        let order = (std::cmp::Reverse(ti.priority), run.interval.start, key);
        self.waiting.entry(order).or_insert_with(|| Waiting { dag: dag.clone(), run: run.clone(), ti: ti.clone() });
    }

    /// Ends a run whose tasks have all finished: its outcome is its leaves' (tasks nothing
    /// depends on), as in Airflow.
    async fn finish_run(&mut self, dag: &Dag, run: &RunRow) -> Result<(), FlowError> {
        let tasks = self.store.tasks(&run.dag_id, &run.run_id).await?;
        if !tasks.iter().all(|t| t.state.is_finished()) {
            return Ok(()); // cleared meanwhile
        }
        let failed = tasks.iter().any(|ti| {
            dag.downstream(&ti.task_id).next().is_none()
                && matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed)
        });
        let state = if failed { RunState::Failed } else { RunState::Success };
        self.store.set_run_state(&run.dag_id, &run.run_id, state).await?;
        metrics::counter!("weir_flow_dag_runs_total", "dag" => run.dag_id.clone(), "state" => state.as_str())
            .increment(1);
        tracing::info!(dag = %run.dag_id, run_id = %run.run_id, %state, "DAG run finished");
        Ok(())
    }

    /// Starts waiting tasks, highest priority (then oldest run) first, within the executor's
    /// slots, the pools and each DAG's max_active_tasks.
    async fn dispatch(&mut self) -> Result<(), FlowError> {
        let mut chosen = Vec::new();
        let mut per_run: HashMap<(String, String), usize> = HashMap::new();
        for k in self.running.keys() {
            *per_run.entry((k.dag_id.clone(), k.run_id.clone())).or_default() += 1;
        }
        let mut per_pool: HashMap<&str, usize> = HashMap::new();
        for r in self.running.values() {
            *per_pool.entry(r.pool.as_str()).or_default() += 1;
        }
        for (order, w) in &self.waiting {
            if self.running.len() + chosen.len() >= self.config.slots {
                break;
            }
            let run_key = (w.run.dag_id.clone(), w.run.run_id.clone());
            if per_run.get(&run_key).copied().unwrap_or(0) >= w.dag.max_active_tasks {
                continue;
            }
            let pool_slots = self.config.pools.get(&w.ti.pool).copied().unwrap_or(self.config.slots);
            let used = per_pool.entry(w.ti.pool.as_str()).or_default();
            if *used >= pool_slots {
                continue;
            }
            *used += 1;
            *per_run.entry(run_key).or_default() += 1;
            chosen.push(order.clone());
        }
        // One transaction records every start.
        let chosen: Vec<Waiting> =
            chosen.into_iter().map(|order| self.waiting.remove(&order).expect("chosen from the map")).collect();
        let starts: Vec<(TaskKey, u32, String)> = chosen
            .iter()
            .map(|w| {
                let key = TaskKey {
                    dag_id: w.run.dag_id.clone(),
                    run_id: w.run.run_id.clone(),
                    task_id: w.ti.task_id.clone(),
                };
                let try_number = w.ti.try_number + 1;
                let log = log_path(&self.logs_dir, &key, try_number).display().to_string();
                (key, try_number, log)
            })
            .collect();
        let started = self.store.start_tries(&starts).await?;
        for (w, ok) in chosen.iter().zip(started) {
            // Not started when changed since it was scheduled (cleared, or finished elsewhere).
            if ok {
                self.spawn(&w.dag, &w.run, &w.ti, w.ti.try_number + 1);
            }
        }
        metrics::gauge!("weir_flow_tasks_waiting").set(self.waiting.len() as f64);
        metrics::gauge!("weir_flow_tasks_running").set(self.running.len() as f64);
        Ok(())
    }

    /// Runs try `try_number` of `ti` (its start recorded) on the executor.
    fn spawn(&mut self, dag: &Arc<Dag>, run: &RunRow, ti: &TaskRow, try_number: u32) {
        let key = TaskKey { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: ti.task_id.clone() };
        let log = log_path(&self.logs_dir, &key, try_number);
        self.running.insert(key.clone(), Running { pool: ti.pool.clone(), dag: dag.clone(), max_tries: ti.max_tries });
        let mut params = dag.params.clone();
        params.extend(run.conf.clone());
        let ctx = Context::new(
            &run.dag_id,
            &run.run_id,
            &ti.task_id,
            try_number,
            run.interval.start,
            (run.interval.start, run.interval.end),
            &params,
        );
        let task = dag.task(&ti.task_id).expect("instances are made from the DAG's tasks").clone();
        let cwd = dag.file.parent().map(Path::to_path_buf).unwrap_or_default();
        let lake = self.lake.clone();
        let store = self.store.clone();
        let interval = run.interval;
        let done = self.done_tx.clone();
        tracing::debug!(dag = %key.dag_id, run_id = %key.run_id, task = %key.task_id, try_number, "task started");
        tokio::spawn(async move {
            let env = Env { ctx: &ctx, cwd: &cwd, log: &log, lake: &lake, store: &store, key: &key, interval };
            let outcome = execute(&task, &env).await;
            let log = match lake.url() {
                weir_lake::LakeUrl::S3 { .. } => move_log(&lake, &key, try_number, &log).await,
                weir_lake::LakeUrl::File(_) => None,
            };
            let _ = done.send(Completion { key, try_number, outcome, log });
        });
    }

    /// How a try's end is to be recorded: its state, and the retry or the branch's skips.
    fn finish_of(&mut self, c: &Completion) -> Finish {
        let (dag, max_tries) = match self.running.get(&c.key) {
            Some(r) => (Some(r.dag.clone()), r.max_tries),
            None => (None, 1),
        };
        let mut skip = Vec::new();
        let outcome = match (&c.outcome, &dag) {
            (Outcome::Follow(chosen), Some(dag)) => {
                let downstream: Vec<String> = dag.downstream(&c.key.task_id).map(|t| t.id.clone()).collect();
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
            key: c.key.clone(),
            try_number: c.try_number,
            state,
            reason,
            retry_wait,
            skip,
            log: c.log.clone(),
        };
        let (dag_id, run_id, task_id, try_number) = (&c.key.dag_id, &c.key.run_id, &c.key.task_id, c.try_number);
        match outcome {
            Outcome::Success | Outcome::Follow(_) => finish(TaskState::Success, None, None, skip),
            Outcome::Failed(reason) if c.try_number < max_tries => {
                let task = dag.as_ref().and_then(|d| d.task(task_id));
                let wait = task.map_or(Duration::ZERO, |t| t.retry_wait(c.try_number + 1));
                tracing::warn!(dag = %dag_id, run_id = %run_id, task = %task_id, try_number, %reason, ?wait, "task failed; will retry");
                finish(TaskState::UpForRetry, Some(reason), Some(wait), Vec::new())
            }
            Outcome::Failed(reason) => {
                tracing::error!(dag = %dag_id, run_id = %run_id, task = %task_id, try_number, %reason, "task failed");
                finish(TaskState::Failed, Some(reason), None, Vec::new())
            }
        }
    }
}

/// The state a `none` instance of `task` moves to, given its upstream instances in `rows`
/// (`None`: it waits).
fn decided(task: &dag::Task, rows: &HashMap<String, TaskRow>) -> Option<TaskState> {
    let upstream: Vec<TaskState> = task.upstream.iter().filter_map(|u| rows.get(u)).map(|t| t.state).collect();
    match decide(task.trigger_rule, &upstream) {
        Decision::Wait => None,
        Decision::Run => Some(TaskState::Scheduled),
        Decision::Skip => Some(TaskState::Skipped),
        Decision::UpstreamFailed => Some(TaskState::UpstreamFailed),
    }
}

/// What a try runs with.
struct Env<'a> {
    ctx: &'a Context,
    cwd: &'a Path,
    log: &'a Path,
    lake: &'a Lake,
    store: &'a Store,
    key: &'a TaskKey,
    interval: crate::schedule::Interval,
}

/// Runs one try of `task`.
async fn execute(task: &dag::Task, env: &Env<'_>) -> Outcome {
    let Env { ctx, cwd, log, lake, key, .. } = *env;
    let render_all = |args: &[String]| args.iter().map(|a| ctx.render(a)).collect::<Result<Vec<_>, _>>();
    let timeout = task.execution_timeout;
    let result: Result<Option<Vec<String>>, String> = match &task.kind {
        TaskKind::Script { command, env } => {
            let run = async {
                let command = render_all(command)?;
                let mut all_env = ctx.env();
                for (k, v) in env {
                    all_env.push((k.clone(), ctx.render(v)?));
                }
                let script = weir_batch::script::Script {
                    command,
                    env: all_env,
                    cwd: cwd.into(),
                    log: log.into(),
                    timeout,
                    capture_stdout: false,
                };
                script.run().await.map(|_| None).map_err(|e| e.to_string())
            };
            run.await
        }
        TaskKind::Branch { command } => {
            let run = async {
                let command = render_all(command)?;
                let script = weir_batch::script::Script {
                    command,
                    env: ctx.env(),
                    cwd: cwd.into(),
                    log: log.into(),
                    timeout,
                    capture_stdout: true,
                };
                let out = script.run().await.map_err(|e| e.to_string())?;
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
        TaskKind::Sql { sql, view, append, replace_where } => {
            let run = async {
                let sql = ctx.render(sql)?;
                let mode = match (append, replace_where) {
                    (true, _) => WriteMode::Append,
                    (false, Some(p)) => WriteMode::ReplaceWhere(ctx.render(p)?),
                    (false, None) => WriteMode::Overwrite,
                };
                write_log(log, &format!("[weir] views.{view} ← {sql}\n")).await;
                let source = serde_json::json!({"dag": key.dag_id, "run": key.run_id, "task": key.task_id});
                let written = with_timeout(timeout, weir_batch::sql::write_view(lake, &sql, view, mode, source))
                    .await?
                    .map_err(|e| e.to_string())?;
                write_log(
                    log,
                    &format!(
                        "[weir] wrote {} rows as version {} of {}\n",
                        written.rows, written.version, written.table
                    ),
                )
                .await;
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
                let message = ctx.render(message)?;
                let body = serde_json::json!({
                    "dag_id": key.dag_id,
                    "run_id": key.run_id,
                    "task_id": key.task_id,
                    "logical_date": env.interval.start,
                    "data_interval_start": env.interval.start,
                    "data_interval_end": env.interval.end,
                    "message": message,
                });
                let send = reqwest::Client::new().post(url).json(&body).send();
                let response = with_timeout(timeout.or(Some(Duration::from_secs(30))), send)
                    .await?
                    .map_err(|e| format!("notify {url}: {e}"))?;
                let status = response.status();
                write_log(log, &format!("[weir] POST {url} → {status}\n")).await;
                if status.is_success() { Ok(None) } else { Err(format!("notify {url}: the webhook answered {status}")) }
            };
            run.await
        }
    };
    match result {
        Ok(None) => Outcome::Success,
        Ok(Some(chosen)) => Outcome::Follow(chosen),
        Err(reason) => {
            write_log(log, &format!("[weir] failed: {reason}\n")).await;
            Outcome::Failed(reason)
        }
    }
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

async fn with_timeout<T>(limit: Option<Duration>, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    match limit {
        Some(d) => {
            tokio::time::timeout(d, f).await.map_err(|_| format!("ran longer than its execution_timeout of {d:?}"))
        }
        None => Ok(f.await),
    }
}

/// Moves a finished try's log from the local folder into the lake's `logs/`; returns its URL.
/// A failure leaves the log where it is (logged, never fatal to the try).
async fn move_log(lake: &Lake, key: &TaskKey, try_number: u32, local: &Path) -> Option<String> {
    let rel = format!("logs/{}/{}/{}.{try_number}.log", key.dag_id, key.run_id, key.task_id);
    let bytes = match std::fs::read(local) {
        Ok(b) => b,
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
