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
//!
//! Several schedulers may run against one metadata DB: one leads ([`crate::lease`]), the others
//! wait as heirs. With `executor = "workers"` the leader runs nothing itself: it queues task
//! instances that remote workers ([`crate::worker`]) claim, learns of their ends (at once
//! through PostgreSQL notifications, else by polling), and fails the tries of workers that stop
//! beating (zombies) into their retries.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use weir_lake::catalog::Lake;
use weir_notify::{Notifier, Receiver, Retry};

use crate::{
    FlowError,
    autoscale::{self, AutoscaleConfig, Autoscaler},
    cluster::{self, Background, Beats},
    dag::{self, Dag},
    events,
    execute::{self, Outcome, log_path},
    lease, mapping,
    notices::QueueAlerts,
    rules::{Decision, RunState, TaskState, decide},
    store::{DONE_CHANNEL, Finish, RunRow, Store, StoreError, TaskKey, TaskRow},
    triggers::{self, Triggers},
};

/// Where task instances run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// On the leading scheduler, in `slots` slots.
    #[default]
    Local,
    /// On `weir worker` processes, which claim them from their queues.
    Workers,
}

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
    /// `[batch]`: the engine of SQL tasks (a section of its own in `weir.toml`, copied here).
    #[serde(skip)]
    pub batch: weir_batch::engine::BatchConfig,
    /// Pools and their slots; a task names one (`default_pool` has `slots` slots).
    pub pools: BTreeMap<String, usize>,
    /// `local` (the scheduler runs tasks) or `workers` (`weir worker` processes do; `slots` then
    /// bounds the tasks queued or running at once, and each worker has its own slots).
    pub executor: Executor,
    /// How often schedulers and workers beat, and the leader renews its lease.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long the leader's lease may go unrenewed before an heir takes over.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// How long a worker may go without beating before its tries are failed into retries.
    #[serde(with = "humantime_serde")]
    pub zombie_timeout: Duration,
    /// `[flow.autoscale]`: the desired worker count per queue (with `executor = "workers"`).
    pub autoscale: AutoscaleConfig,
    /// Where the orchestrator's own alerts go (`TaskQueuedTooLong`): `[[flow.receivers]]`
    /// with a name and a webhook, slack or jira.
    pub receivers: Vec<Receiver>,
    /// `TaskQueuedTooLong` fires when a queue's oldest task has waited this long.
    #[serde(with = "humantime_serde")]
    pub queued_alert_after: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            dags_dir: PathBuf::from("dags"),
            slots: 16,
            parse_interval: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            logs_dir: None,
            batch: weir_batch::engine::BatchConfig::default(),
            pools: BTreeMap::new(),
            executor: Executor::Local,
            heartbeat_interval: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(5),
            zombie_timeout: Duration::from_secs(30),
            autoscale: AutoscaleConfig::default(),
            receivers: Vec::new(),
            queued_alert_after: Duration::from_secs(600),
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

    /// The lease timing.
    pub fn timing(&self) -> lease::Timing {
        lease::Timing { heartbeat: self.heartbeat_interval, lease_timeout: self.lease_timeout }
    }
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
    /// Writes under the lease while leading.
    store: Store,
    /// The same database without the fence: membership and the lease itself.
    base: Store,
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
    /// Scheduled task instances waiting for a slot.
    waiting: Queue,
    /// The earliest retry this scheduler set up: a full pass is due then.
    next_retry: Option<tokio::time::Instant>,
    /// Workers' beats, to find those that stopped.
    worker_beats: Beats,
    /// The desired worker count per queue.
    autoscaler: Autoscaler,
    /// `TaskQueuedTooLong` per queue.
    queue_alerts: QueueAlerts,
    /// The DAG folder as last read, for the relay's notifications.
    shared_dags: Arc<std::sync::RwLock<HashMap<String, Arc<Dag>>>>,
    /// Where the leader publishes the event stream (none: events stay in the outbox).
    bus: Option<Arc<dyn weir_bus::Bus>>,
    /// Wakes the publisher after state changes.
    events_wake: Arc<tokio::sync::Notify>,
    /// Table-triggered DAGs: the tables' versions and the DAGs' cursors, while leading.
    triggers: Triggers,
    /// The local executor's record of its tries' process groups.
    ledger: Arc<weir_batch::orphans::Ledger>,
}

/// How often, on SQLite (no notifications), the leader looks for the ends of workers' tries and
/// workers look for queued tasks.
pub const SQLITE_LOOK: Duration = Duration::from_millis(50);

/// Why leading ended.
enum Ended {
    Shutdown,
    LostLease,
}

/// Higher priority first, then the older run, then by key.
type WaitOrder = (std::cmp::Reverse<i64>, chrono::DateTime<Utc>, TaskKey);

/// What the scheduler keeps of a try it runs (or, with workers, of an instance it handed out):
/// what the limits and recording its end need.
struct Running {
    pool: String,
    /// The DAG version of a local try.
    dag: Option<Arc<Dag>>,
    max_tries: u32,
    /// A local try's task: aborted when this scheduler stops leading, which drops the try and
    /// kills its process group.
    task: Option<tokio::task::AbortHandle>,
    /// Whether it takes one of the executor's slots and its pool's: an approval waiting for a
    /// person does not (as Airflow's deferred tasks do not), on either executor.
    holds_slot: bool,
}

/// Scheduled task instances waiting for a slot, in the order they start, counted per run.
#[derive(Default)]
struct Queue {
    order: BTreeMap<WaitOrder, Waiting>,
    per_run: HashMap<(String, String), usize>,
    /// How many of them are approvals.
    approvals: usize,
}

impl Queue {
    /// Adds `w` at `order` unless it is there.
    fn insert(&mut self, order: WaitOrder, w: Waiting) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.order.entry(order) {
            *self.per_run.entry((w.run.dag_id.clone(), w.run.run_id.clone())).or_default() += 1;
            self.approvals += usize::from(w.is_approval());
            e.insert(w);
        }
    }

    /// Takes the task at `order` out.
    fn remove(&mut self, order: &WaitOrder) -> Option<Waiting> {
        let w = self.order.remove(order)?;
        self.approvals -= usize::from(w.is_approval());
        let run = (w.run.dag_id.clone(), w.run.run_id.clone());
        if let Some(n) = self.per_run.get_mut(&run) {
            *n -= 1;
            if *n == 0 {
                self.per_run.remove(&run);
            }
        }
        Some(w)
    }

    /// How many of run `run_id` of `dag_id` wait.
    fn of_run(&self, dag_id: &str, run_id: &str) -> usize {
        self.per_run.get(&(dag_id.to_string(), run_id.to_string())).copied().unwrap_or(0)
    }

    fn clear(&mut self) {
        *self = Queue::default();
    }
}

/// What starting a waiting task needs.
struct Waiting {
    dag: Arc<Dag>,
    run: RunRow,
    ti: TaskRow,
}

impl Waiting {
    fn is_approval(&self) -> bool {
        is_approval(&self.dag, &self.ti.task_id)
    }
}

/// Whether task `task_id` of `dag` is an approval (a wait for a person).
pub(crate) fn is_approval(dag: &Dag, task_id: &str) -> bool {
    dag.task(task_id).is_some_and(|t| matches!(t.kind, crate::dag::TaskKind::Approval { .. }))
}

impl Scheduler {
    /// A scheduler over `store`, running tasks against `lake`.
    pub fn new(store: Store, lake: Arc<Lake>, config: FlowConfig) -> Scheduler {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let logs_dir = config.logs_dir_for(&lake);
        let ledger = execute::ledger(&logs_dir);
        Scheduler {
            base: store.clone(),
            store,
            lake,
            config,
            logs_dir,
            dags: HashMap::new(),
            versions: HashMap::new(),
            running: HashMap::new(),
            done_tx,
            done_rx,
            waiting: Queue::default(),
            next_retry: None,
            worker_beats: Beats::default(),
            autoscaler: Autoscaler::default(),
            queue_alerts: QueueAlerts::default(),
            shared_dags: Arc::default(),
            bus: None,
            events_wake: Arc::default(),
            triggers: Triggers::default(),
            ledger,
        }
    }

    /// Publishes every state change on `weir.flow.events` on `bus` while leading.
    pub fn with_bus(mut self, bus: Arc<dyn weir_bus::Bus>) -> Scheduler {
        self.bus = Some(bus);
        self
    }

    /// Runs until `shutdown`: stands by as an heir, leads while it holds the lease, and stands
    /// by again if it loses it. On shutdown it waits for the tries it started and gives the
    /// lease up.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), FlowError> {
        let (me, host, pid) = cluster::member_id();
        self.base.register(&me, &host, pid, None).await?;
        tracing::info!(id = %me, executor = ?self.config.executor, "scheduler started; waiting for the lease");
        let (lead_tx, mut lead_rx) = watch::channel(None);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut keeper =
            Background(tokio::spawn(lease::keep(self.base.clone(), me, self.config.timing(), lead_tx, stop_rx)));
        tokio::pin!(shutdown);
        loop {
            let fence = tokio::select! {
                f = lead_rx.wait_for(Option::is_some) => match f {
                    Ok(f) => f.clone().expect("waited for some"),
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            };
            self.store = self.base.with_fence(fence.clone());
            let ended = self.lead(&mut shutdown, &mut lead_rx).await;
            self.triggers = Triggers::default();
            self.waiting.clear();
            self.next_retry = None;
            self.worker_beats = Beats::default();
            match ended {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::LostLease) => tracing::warn!(epoch = fence.epoch, "no longer leading; standing by"),
                Err(e) => {
                    let _ = stop_tx.send(true);
                    let _ = (&mut keeper.0).await;
                    return Err(e);
                }
            }
        }
        // The keeper gives the lease up, so an heir takes over at once.
        let _ = stop_tx.send(true);
        let _ = (&mut keeper.0).await;
        Ok(())
    }

    /// Leads until `shutdown` or until the lease is lost.
    async fn lead(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
        lead_rx: &mut watch::Receiver<Option<crate::store::Fence>>,
    ) -> Result<Ended, FlowError> {
        let remote = self.config.executor == Executor::Workers;
        if !remote {
            // A scheduler on this machine that died with tries running left their processes:
            // stopped before those tries are reset and run again.
            execute::kill_orphans(&self.logs_dir);
            match self.store.reset_orphans().await {
                Ok(0) => {}
                Ok(orphans) => tracing::warn!(orphans, "task instances left running by a stopped scheduler were reset"),
                Err(StoreError::Fenced(_)) => return Ok(Ended::LostLease),
                Err(e) => return Err(e.into()),
            }
        }
        // Workers' ends, as PostgreSQL notifies them (SQLite: the poll finds them).
        let (remote_tx, mut remote_rx) = mpsc::unbounded_channel::<TaskKey>();
        let notifier = Notifier::start(Retry::default());
        let notices = events::Notices { notifier: notifier.clone(), dags: self.shared_dags.clone() };
        let every = self.config.poll_interval.min(Duration::from_millis(200));
        let relay = events::relay(self.store.clone(), self.bus.clone(), notices, self.events_wake.clone(), every);
        let _relay = Background(tokio::spawn(relay));
        let _listener = (remote && self.store.is_postgres())
            .then(|| Background(tokio::spawn(listen_done(self.store.url(), remote_tx))));
        // Lake commits, for table-triggered DAGs: positioned at the signals' end before the first
        // reconcile reads the tables' logs, so no commit falls between the two.
        let (commit_tx, mut commit_rx) = mpsc::unbounded_channel();
        let _follower = match &self.bus {
            Some(bus) => match triggers::follow(bus.clone(), commit_tx).await {
                Ok(task) => Some(Background(task)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot follow lake commit signals; table-triggered DAGs start when the DAG folder is read");
                    None
                }
            },
            None => None,
        };
        let ended = self.lead_loop(shutdown, lead_rx, &mut remote_rx, &mut commit_rx, &notifier).await;
        if matches!(ended, Ok(Ended::Shutdown)) && !remote {
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
        }
        // A new term starts from the database: whoever leads next resets the tries still running
        // here to retries. Having lost the lease (or failing), this scheduler stops them now, their
        // whole process groups, so that no try runs here while its retry runs elsewhere.
        if !matches!(ended, Ok(Ended::Shutdown)) {
            let stopped = self.running.values().filter_map(|r| r.task.as_ref()).inspect(|t| t.abort()).count();
            if stopped > 0 {
                tracing::warn!(stopped, "no longer leading: the tries running here were stopped");
            }
        }
        self.running.clear();
        ended
    }

    async fn lead_loop(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
        lead_rx: &mut watch::Receiver<Option<crate::store::Fence>>,
        remote_rx: &mut mpsc::UnboundedReceiver<TaskKey>,
        commit_rx: &mut mpsc::UnboundedReceiver<weir_lake::signal::Commit>,
        notifier: &Notifier,
    ) -> Result<Ended, FlowError> {
        let remote = self.config.executor == Executor::Workers;
        let mut next_parse = tokio::time::Instant::now();
        let mut next_poll = tokio::time::Instant::now();
        // Completions whose recording failed (the metadata DB was unreachable): retried.
        let mut unrecorded: Vec<Completion> = Vec::new();
        // The next pass reads every active run in full (see `schedule_all`).
        let mut full_pass = true;
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
                let reconciled = self.triggers.reconcile(&self.lake, &self.store, &self.dags).await;
                if lost(reconciled.map_err(FlowError::from), "reading table-triggered DAGs' cursors") {
                    return Ok(Ended::LostLease);
                }
                // Schedulers and workers gone for an hour leave `weir scheduler status`.
                if let Err(e) = self.base.forget_members(Duration::from_secs(3600)).await {
                    tracing::warn!(error = %e, "forgetting departed schedulers and workers failed");
                }
                next_parse = now + self.config.parse_interval;
                full_pass = true;
            }
            if now >= next_poll {
                let retry = std::mem::take(&mut unrecorded);
                if !retry.is_empty() {
                    self.record_all(retry, &mut unrecorded).await;
                }
                // Each step on its own: one that fails (logged, tried again next pass) does not
                // hold up the others.
                if remote {
                    let workers = self.check_workers().await;
                    if lost(workers, "checking the workers' heartbeats") {
                        return Ok(Ended::LostLease);
                    }
                    let handed = self.refresh_handed().await;
                    if lost(handed, "counting the tasks handed to workers") {
                        return Ok(Ended::LostLease);
                    }
                    let signal = self.autoscale(notifier).await;
                    if lost(signal, "computing the autoscaling signal") {
                        return Ok(Ended::LostLease);
                    }
                }
                let deadlines = self.check_deadlines().await;
                if lost(deadlines, "checking run deadlines") {
                    return Ok(Ended::LostLease);
                }
                let pass = async {
                    self.create_scheduled_runs().await?;
                    self.create_triggered_runs().await?;
                    self.schedule_all(std::mem::take(&mut full_pass)).await
                };
                if lost(pass.await, "scheduling pass") {
                    return Ok(Ended::LostLease);
                }
                next_poll = now + self.config.poll_interval;
            }
            let next = tokio::select! {
                Some(c) = self.done_rx.recv() => {
                    let mut ended = vec![c];
                    while let Ok(c) = self.done_rx.try_recv() {
                        ended.push(c);
                    }
                    let by_run = by_run(ended.iter().map(|c| &c.key));
                    self.record_all(ended, &mut unrecorded).await;
                    Some(by_run)
                }
                Some(key) = remote_rx.recv() => {
                    let mut ended = vec![key];
                    while let Ok(k) = remote_rx.try_recv() {
                        ended.push(k);
                    }
                    for k in &ended {
                        self.running.remove(k);
                    }
                    Some(by_run(ended.iter()))
                }
                // SQLite has no notifications: look for workers' ends often (a cheap read).
                _ = tokio::time::sleep(SQLITE_LOOK), if remote && !self.store.is_postgres() => {
                    match self.ended_remotely().await {
                        Ok(ended) if !ended.is_empty() => Some(by_run(ended.iter())),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, "looking for the ends of workers' tries failed");
                            None
                        }
                    }
                }
                Some(commit) = commit_rx.recv() => {
                    self.triggers.heard(&commit);
                    while let Ok(c) = commit_rx.try_recv() {
                        self.triggers.heard(&c);
                    }
                    self.start_triggered().await
                }
                _ = tokio::time::sleep_until(self.triggers.next_due().unwrap_or(next_poll)), if self.triggers.next_due().is_some() => {
                    self.start_triggered().await
                }
                changed = lead_rx.changed() => {
                    if changed.is_err() || lead_rx.borrow().is_none() {
                        return Ok(Ended::LostLease);
                    }
                    None
                }
                _ = tokio::time::sleep_until(next_parse.min(next_poll).min(self.next_retry.unwrap_or(next_poll))) => None,
                _ = &mut *shutdown => return Ok(Ended::Shutdown),
            };
            if let Some(by_run) = next {
                let next = async {
                    for ((dag_id, run_id), tasks) in &by_run {
                        self.schedule_after(dag_id, run_id, tasks).await?;
                    }
                    self.dispatch().await
                };
                match next.await {
                    Err(FlowError::Store(StoreError::Fenced(_))) => return Ok(Ended::LostLease),
                    Err(e) => {
                        tracing::error!(error = %e, "scheduling after a task ended failed; the next pass retries")
                    }
                    Ok(()) => {}
                }
            }
            // This turn's state changes are in the outbox.
            self.events_wake.notify_one();
        }
    }

    /// With workers: the instances handed out that are no longer queued or running (their
    /// tries ended), now forgotten here.
    async fn ended_remotely(&mut self) -> Result<Vec<TaskKey>, FlowError> {
        let handed: std::collections::HashSet<TaskKey> =
            self.store.handed().await?.into_iter().map(|h| h.key).collect();
        let ended: Vec<TaskKey> = self.running.keys().filter(|k| !handed.contains(*k)).cloned().collect();
        for k in &ended {
            self.running.remove(k);
        }
        Ok(ended)
    }

    /// With workers: counts what is queued or running on them, as the database says.
    async fn refresh_handed(&mut self) -> Result<(), FlowError> {
        let dags = &self.dags;
        self.running = self
            .store
            .handed()
            .await?
            .into_iter()
            .map(|h| {
                let holds_slot = !dags.get(&h.key.dag_id).is_some_and(|d| is_approval(d, &h.key.task_id));
                (h.key, Running { pool: h.pool, dag: None, max_tries: 0, task: None, holds_slot })
            })
            .collect();
        Ok(())
    }

    /// With workers: the desired worker count per queue (see [`crate::autoscale`]).
    async fn autoscale(&mut self, notifier: &Notifier) -> Result<(), FlowError> {
        let config = &self.config.autoscale;
        let mut signals = Vec::new();
        let loads = self.store.queue_loads().await?;
        self.queue_alerts.check(&loads, self.config.queued_alert_after, &self.config.receivers, notifier);
        for load in loads {
            let wanted = autoscale::wanted(&load, self.config.slots, config);
            let (desired, changed) =
                self.autoscaler.desire(&load.queue, wanted, config.scale_down_after, std::time::Instant::now());
            metrics::gauge!("weir_flow_workers_desired", "queue" => load.queue.clone()).set(desired as f64);
            metrics::gauge!("weir_flow_queued_tasks", "queue" => load.queue.clone()).set(load.queued as f64);
            metrics::gauge!("weir_flow_queued_oldest_seconds", "queue" => load.queue.clone())
                .set(load.oldest_queued.map_or(0.0, |d| d.as_secs_f64()));
            if changed {
                tracing::info!(queue = %load.queue, desired, workers = load.workers, queued = load.queued, running = load.running, "desired workers changed");
                if let Some(hook) = &config.hook {
                    autoscale::run_hook(hook, &load.queue, desired);
                }
            }
            signals.push((load, desired));
        }
        self.store.set_desired(&signals).await?;
        Ok(())
    }

    /// Marks the active runs that have passed their DAG's deadline (once each; the event
    /// stream and the DAG's `on_deadline_missed` receivers hear of it).
    async fn check_deadlines(&mut self) -> Result<(), FlowError> {
        let now = Utc::now();
        for run in self.store.active_runs().await? {
            let Some(dag) = self.dag_of(&run).await? else { continue };
            let Some(deadline) = dag.deadline else { continue };
            let due = run.interval.end + chrono::Duration::from_std(deadline).unwrap_or(chrono::Duration::MAX);
            if now > due && self.store.mark_deadline_missed(&run.dag_id, &run.run_id).await? {
                tracing::warn!(dag = %run.dag_id, run_id = %run.run_id, deadline = %humantime::format_duration(deadline), "DAG run missed its deadline");
                metrics::counter!("weir_flow_deadline_misses_total", "dag" => run.dag_id.clone()).increment(1);
            }
        }
        Ok(())
    }

    /// With workers: fails the tries of workers that stopped beating (zombies) into retries.
    async fn check_workers(&mut self) -> Result<(), FlowError> {
        for w in self.store.workers().await? {
            if !matches!(w.state.as_str(), "active" | "draining") {
                continue;
            }
            let silent = self.worker_beats.observe(&w.id, w.beats);
            if silent < self.config.zombie_timeout {
                continue;
            }
            let reason = format!("worker {} stopped heartbeating ({} s without a beat)", w.id, silent.as_secs());
            let failed = self.store.fail_zombies(&w.id, &reason).await?;
            tracing::warn!(worker = %w.id, tries = failed.len(), "{reason}; its tries were failed into retries");
            metrics::counter!("weir_flow_zombie_tries_total").increment(failed.len() as u64);
        }
        Ok(())
    }

    /// Records the ends of tries, and the starts of waiting tries that take their slots, in one
    /// transaction, then runs those; when the metadata DB fails, keeps the ends for the next pass
    /// (they keep their slots meanwhile) and puts the others back in the queue.
    async fn record_all(&mut self, ended: Vec<Completion>, unrecorded: &mut Vec<Completion>) {
        let finishes: Vec<Finish> = ended
            .iter()
            .map(|c| {
                let (dag, max_tries) = self.running.get(&c.key).map_or((None, 1), |r| (r.dag.clone(), r.max_tries));
                execute::finish_of(&c.key, c.try_number, &c.outcome, c.log.clone(), dag.as_deref(), max_tries)
            })
            .collect();
        // The slots these ends free are filled from the queue in the same transaction (on the
        // local executor; workers' tries are handed out by `dispatch`).
        let ending: std::collections::HashSet<TaskKey> = finishes.iter().map(|f| f.key.clone()).collect();
        let chosen = match self.config.executor {
            Executor::Local => self.choose(&ending),
            Executor::Workers => Vec::new(),
        };
        let recorded = async {
            let (starts, states) = self.starts_of(&chosen).await?;
            let (_, started) = self.store.finish_and_start(&finishes, &starts).await?;
            Ok::<_, FlowError>((started, states))
        };
        match recorded.await {
            Ok((started, states)) => {
                for f in &finishes {
                    self.running.remove(&f.key);
                    if let Some(wait) = f.retry_wait {
                        // Just after the retry becomes due by the recorded end time.
                        let wake = tokio::time::Instant::now() + wait + Duration::from_millis(1);
                        self.next_retry = Some(self.next_retry.map_or(wake, |t| t.min(wake)));
                    }
                    let state = match f.state {
                        TaskState::Success | TaskState::Mapped | TaskState::Skipped => "success",
                        _ => "failed",
                    };
                    metrics::counter!("weir_flow_task_tries_total", "dag" => f.key.dag_id.clone(), "state" => state)
                        .increment(1);
                }
                self.run_started(chosen, started, states);
            }
            Err(e) => {
                tracing::error!(error = %e, tries = ended.len(), "recording the end of tries failed; retrying");
                unrecorded.extend(ended);
                for (order, w) in chosen {
                    self.waiting.insert(order, w);
                }
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
        *self.shared_dags.write().expect("not poisoned") = self.dags.clone();
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

    /// Creates the runs of table-triggered DAGs that are due (see [`crate::triggers`]); one that
    /// cannot start yet (paused, or `max_active_runs` reached) is looked at again next pass.
    /// Returns the runs created.
    async fn create_triggered_runs(&mut self) -> Result<Vec<RunRow>, FlowError> {
        let due = self.triggers.due(&self.dags);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let rows: HashMap<String, bool> = self.store.dags().await?.into_iter().map(|r| (r.dag_id, r.paused)).collect();
        let active = self.store.active_runs().await?;
        let mut created = Vec::new();
        for d in due {
            let busy = active.iter().filter(|r| r.dag_id == d.dag.id).count() >= d.dag.max_active_runs;
            if rows.get(&d.dag.id).copied().unwrap_or(true) || busy {
                self.triggers.postpone(&d.dag.id, tokio::time::Instant::now() + self.config.poll_interval);
                continue;
            }
            let now = Utc::now();
            let run_id = format!("tables__{}", now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            if self.store.create_triggered_run(&d.dag, &run_id, d.interval, &d.inputs).await? {
                let changed: Vec<String> =
                    d.inputs.iter().filter(|(_, i)| i.changed()).map(|(t, i)| format!("{t}@{}", i.version)).collect();
                tracing::info!(dag = %d.dag.id, run_id, ?changed, "table-triggered run created");
                metrics::counter!("weir_flow_table_triggered_runs_total", "dag" => d.dag.id.clone()).increment(1);
                self.triggers.created(&d.dag.id, &d.inputs);
                created.push(self.store.run(&d.dag.id, &run_id).await?);
            }
        }
        Ok(created)
    }

    /// Creates the table-triggered runs that are due and starts their first tasks at once.
    async fn start_triggered(&mut self) -> Option<BTreeMap<(String, String), Vec<String>>> {
        let started = async {
            for run in self.create_triggered_runs().await? {
                self.schedule_run(&run).await?;
            }
            self.dispatch().await
        };
        match started.await {
            Ok(()) => {}
            Err(FlowError::Store(StoreError::Fenced(_))) => {} // the lease watch ends this term
            Err(e) => tracing::error!(error = %e, "starting table-triggered runs failed; the next pass retries"),
        }
        None
    }

    /// Decides and starts what it can in every active run. Unless `full`, a running run whose
    /// task instances (counted by state, one statement for all runs) show nothing to decide,
    /// retry or settle, and exactly as many scheduled as wait here, is not read: reading every
    /// row of every active run each second took an eighth of the loop's time in a 100 × 100
    /// fan-out. What other processes change in a run (a clear, a mark) queues it again, and a
    /// queued run is always read; the full pass (at each read of the DAG folder) reads them all.
    async fn schedule_all(&mut self, full: bool) -> Result<(), FlowError> {
        let runs = self.store.active_runs().await?;
        let counts = if full { None } else { Some(self.store.active_task_counts().await?) };
        let settled: Vec<bool> = runs
            .iter()
            .map(|run| {
                let Some(counts) = &counts else { return false };
                let Some(states) = counts.get(&(run.dag_id.clone(), run.run_id.clone())) else { return false };
                let count = |s: TaskState| states.get(s.as_str()).copied().unwrap_or(0);
                let unfinished =
                    states.iter().any(|(s, n)| *n > 0 && !s.parse::<TaskState>().is_ok_and(|s| s.is_finished()));
                run.state == RunState::Running
                    && unfinished
                    && count(TaskState::None) == 0
                    && count(TaskState::UpForRetry) == 0
                    && count(TaskState::Mapped) == 0
                    && count(TaskState::Scheduled) == self.waiting.of_run(&run.dag_id, &run.run_id) as i64
            })
            .collect();
        for (run, settled) in runs.iter().zip(settled) {
            if !settled {
                self.schedule_run(run).await?;
            }
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
        let now = Utc::now();
        let mut changes = Vec::new();
        // Mapped instances of a task still `mapped` (not cleared to expand anew): a cleared one,
        // or one whose retry is due, is scheduled; a mapped task whose instances have all
        // finished settles (before its downstream tasks are decided).
        let waiting: Vec<String> =
            tasks.values().filter(|t| t.state == TaskState::Mapped).map(|t| t.task_id.clone()).collect();
        for ti in tasks.values_mut().filter(|t| t.parent.as_ref().is_some_and(|p| waiting.contains(p))) {
            let due = match ti.state {
                TaskState::None => true,
                TaskState::UpForRetry => ti.next_try_at.is_none_or(|t| t <= now),
                _ => false,
            };
            if due {
                ti.state = TaskState::Scheduled;
                changes.push((ti.task_id.clone(), TaskState::Scheduled));
            }
        }
        for task in dag.tasks.iter().filter(|t| t.map.is_some()) {
            if tasks.get(&task.id).is_none_or(|ti| ti.state != TaskState::Mapped) {
                continue;
            }
            let instances: Vec<TaskRow> =
                tasks.values().filter(|t| t.parent.as_deref() == Some(task.id.as_str())).cloned().collect();
            if let Some(state) = mapping::settled(&instances) {
                tasks.get_mut(&task.id).expect("present").state = state;
                changes.push((task.id.clone(), state));
            }
        }
        // Decide until nothing changes: a skip or upstream failure can settle tasks further down.
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
        let ended = self.after_mapped(&dag, &run, ended).await?;
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
        // A run with tries here, running or waiting for a slot, is not finished: no need to count.
        let here = |k: &TaskKey| k.dag_id == run.dag_id && k.run_id == run.run_id;
        let busy = self.waiting.of_run(&run.dag_id, &run.run_id) > 0 || self.running.keys().any(here);
        if !busy && self.store.unfinished(&run.dag_id, &run.run_id).await? == 0 {
            self.finish_run(&dag, &run).await?;
        }
        Ok(())
    }

    /// What the ends of `ended` mean for mapped tasks: a mapped task's try that expanded it
    /// queues its instances; when the last instance of a mapped task finishes, the task settles
    /// (see [`mapping::settled`]) and counts as ended too. Returns the ended tasks, settled
    /// mapped tasks included.
    async fn after_mapped(&mut self, dag: &Arc<Dag>, run: &RunRow, ended: &[String]) -> Result<Vec<String>, FlowError> {
        let mut all = ended.to_vec();
        let expanded: Vec<String> = ended
            .iter()
            .filter(|id| dag::mapped_index(id).is_none() && dag.task(id).is_some_and(|t| t.map.is_some()))
            .cloned()
            .collect();
        let mut parents: Vec<String> =
            ended.iter().filter_map(|id| dag::mapped_index(id).map(|(p, _)| p.to_string())).collect();
        parents.sort();
        parents.dedup();
        if expanded.is_empty() && parents.is_empty() {
            return Ok(all);
        }
        let rows = self.store.tasks_in(&run.dag_id, &run.run_id, &[expanded, parents.clone()].concat()).await?;
        let mut settled = Vec::new();
        for row in rows.iter().filter(|r| r.state == TaskState::Mapped) {
            let instances = self.store.mapped(&run.dag_id, &run.run_id, &row.task_id).await?;
            if parents.contains(&row.task_id) {
                if let Some(state) = mapping::settled(&instances) {
                    settled.push((row.task_id.clone(), state));
                    all.push(row.task_id.clone());
                }
            } else {
                for ti in instances.iter().filter(|t| t.state == TaskState::Scheduled) {
                    self.enqueue(dag, run, ti);
                }
            }
        }
        self.store.set_task_states(&run.dag_id, &run.run_id, &settled).await?;
        Ok(all)
    }

    /// Puts a scheduled instance in the queue of those waiting for a slot (see `dispatch`).
    fn enqueue(&mut self, dag: &Arc<Dag>, run: &RunRow, ti: &TaskRow) {
        let key = TaskKey { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: ti.task_id.clone() };
        if self.running.contains_key(&key) {
            return;
        }
        let order = (std::cmp::Reverse(ti.priority), run.interval.start, key);
        self.waiting.insert(order, Waiting { dag: dag.clone(), run: run.clone(), ti: ti.clone() });
    }

    /// Ends a run whose tasks have all finished: its outcome is its leaves' (tasks nothing
    /// depends on), as in Airflow.
    async fn finish_run(&mut self, dag: &Dag, run: &RunRow) -> Result<(), FlowError> {
        let tasks = self.store.tasks(&run.dag_id, &run.run_id).await?;
        if !tasks.iter().all(|t| t.state.is_finished()) {
            return Ok(()); // cleared meanwhile
        }
        let failed = tasks.iter().any(|ti| {
            // A mapped task stands for its instances.
            ti.parent.is_none()
                && dag.downstream(&ti.task_id).next().is_none()
                && matches!(ti.state, TaskState::Failed | TaskState::UpstreamFailed)
        });
        let state = if failed { RunState::Failed } else { RunState::Success };
        self.store.set_run_state(&run.dag_id, &run.run_id, state).await?;
        metrics::counter!("weir_flow_dag_runs_total", "dag" => run.dag_id.clone(), "state" => state.as_str())
            .increment(1);
        tracing::info!(dag = %run.dag_id, run_id = %run.run_id, %state, "DAG run finished");
        Ok(())
    }

    /// Takes from the queue the waiting tasks that may start now, highest priority (then oldest
    /// run) first, within the executor's slots, the pools and each DAG's max_active_tasks. The
    /// tries of `ending` (whose ends are being recorded) no longer hold their slots; on the
    /// local executor approvals hold none (they count towards max_active_tasks).
    fn choose(&mut self, ending: &std::collections::HashSet<TaskKey>) -> Vec<(WaitOrder, Waiting)> {
        let mut chosen = Vec::new();
        let running: Vec<(&TaskKey, &Running)> = self.running.iter().filter(|(k, _)| !ending.contains(*k)).collect();
        let mut per_run: HashMap<(String, String), usize> = HashMap::new();
        let mut per_pool: HashMap<&str, usize> = HashMap::new();
        let mut busy = 0;
        for (k, r) in &running {
            *per_run.entry((k.dag_id.clone(), k.run_id.clone())).or_default() += 1;
            if r.holds_slot {
                *per_pool.entry(r.pool.as_str()).or_default() += 1;
                busy += 1;
            }
        }
        for (order, w) in &self.waiting.order {
            let slotless = w.is_approval();
            if busy >= self.config.slots && !slotless {
                if self.waiting.approvals > 0 {
                    continue; // an approval further on may still start
                }
                break;
            }
            let run_key = (w.run.dag_id.clone(), w.run.run_id.clone());
            if per_run.get(&run_key).copied().unwrap_or(0) >= w.dag.max_active_tasks {
                continue;
            }
            if !slotless {
                let pool_slots = self.config.pools.get(&w.ti.pool).copied().unwrap_or(self.config.slots);
                let used = per_pool.entry(w.ti.pool.as_str()).or_default();
                if *used >= pool_slots {
                    continue;
                }
                *used += 1;
                busy += 1;
            }
            *per_run.entry(run_key).or_default() += 1;
            chosen.push(order.clone());
        }
        chosen
            .into_iter()
            .map(|order| {
                let w = self.waiting.remove(&order).expect("chosen from the map");
                (order, w)
            })
            .collect()
    }

    /// The starts of the tries of `chosen` — (instance, try number, log file) — and their
    /// tasks' states (`$WEIR_STATE`), read together rather than by each try.
    async fn starts_of(
        &self,
        chosen: &[(WaitOrder, Waiting)],
    ) -> Result<(Vec<(TaskKey, u32, String)>, States), FlowError> {
        let starts: Vec<(TaskKey, u32, String)> = chosen
            .iter()
            .map(|(_, w)| {
                let key = key_of(w);
                let try_number = w.ti.try_number + 1;
                let log = log_path(&self.logs_dir, &key, try_number).display().to_string();
                (key, try_number, log)
            })
            .collect();
        let tasks: Vec<(&str, &str)> = starts.iter().map(|(k, _, _)| (k.dag_id.as_str(), k.task_id.as_str())).collect();
        let states = self.store.task_states_of(&tasks).await?;
        Ok((starts, states))
    }

    /// Runs the tries of `chosen` whose starts were recorded (`started`).
    fn run_started(&mut self, chosen: Vec<(WaitOrder, Waiting)>, started: Vec<bool>, mut states: States) {
        for ((_, w), ok) in chosen.into_iter().zip(started) {
            // Not started when changed since it was scheduled (cleared, or finished elsewhere).
            if ok {
                let state = states.remove(&(w.run.dag_id.clone(), w.ti.task_id.clone())).unwrap_or_default();
                self.spawn(&w.dag, &w.run, &w.ti, w.ti.try_number + 1, state);
            }
        }
    }

    /// Starts what [`Self::choose`] takes from the queue.
    async fn dispatch(&mut self) -> Result<(), FlowError> {
        let chosen = self.choose(&Default::default());
        if self.config.executor == Executor::Workers {
            let chosen: Vec<Waiting> = chosen.into_iter().map(|(_, w)| w).collect();
            // One transaction hands every chosen instance to the workers.
            let keys: Vec<TaskKey> = chosen.iter().map(key_of).collect();
            let queued = self.store.queue_tasks(&keys).await?;
            for ((key, w), ok) in keys.into_iter().zip(&chosen).zip(queued) {
                if ok {
                    let running = Running {
                        pool: w.ti.pool.clone(),
                        dag: None,
                        max_tries: w.ti.max_tries,
                        task: None,
                        holds_slot: !w.is_approval(),
                    };
                    self.running.insert(key, running);
                }
            }
        } else if !chosen.is_empty() {
            // One transaction records every start.
            let (starts, states) = self.starts_of(&chosen).await?;
            let started = self.store.start_tries(&starts).await?;
            self.run_started(chosen, started, states);
        }
        metrics::gauge!("weir_flow_tasks_waiting").set(self.waiting.order.len() as f64);
        metrics::gauge!("weir_flow_tasks_running").set(self.running.len() as f64);
        Ok(())
    }

    /// Runs try `try_number` of `ti` (its start recorded) on the local executor.
    fn spawn(
        &mut self,
        dag: &Arc<Dag>,
        run: &RunRow,
        ti: &TaskRow,
        try_number: u32,
        state: serde_json::Map<String, serde_json::Value>,
    ) {
        let key = TaskKey { dag_id: run.dag_id.clone(), run_id: run.run_id.clone(), task_id: ti.task_id.clone() };
        let mut running = Running {
            pool: ti.pool.clone(),
            dag: Some(dag.clone()),
            max_tries: ti.max_tries,
            task: None,
            holds_slot: !is_approval(dag, &ti.task_id),
        };
        let running_key = key.clone();
        let (dag, run) = (dag.clone(), run.clone());
        let (lake, store, logs_dir) = (self.lake.clone(), self.store.clone(), self.logs_dir.clone());
        let (batch, ledger) = (self.config.batch.clone(), self.ledger.clone());
        let done = self.done_tx.clone();
        let task = tokio::spawn(async move {
            let with =
                execute::With { lake: &lake, store: &store, batch: &batch, ledger: &ledger, state: Some(&state) };
            let (outcome, log) = execute::run_try(&dag, &run, &key.task_id, try_number, &logs_dir, &with).await;
            let _ = done.send(Completion { key, try_number, outcome, log });
        });
        running.task = Some(task.abort_handle());
        self.running.insert(running_key, running);
    }
}

/// The instance a waiting task is.
fn key_of(w: &Waiting) -> TaskKey {
    TaskKey { dag_id: w.run.dag_id.clone(), run_id: w.run.run_id.clone(), task_id: w.ti.task_id.clone() }
}

/// Tasks' states (`$WEIR_STATE`) by DAG and task.
type States = HashMap<(String, String), serde_json::Map<String, serde_json::Value>>;

/// Whether a step failed because another scheduler leads now; other failures are logged (the
/// next pass tries again).
fn lost(step: Result<(), FlowError>, what: &str) -> bool {
    match step {
        Ok(()) => false,
        Err(FlowError::Store(StoreError::Fenced(_))) => true,
        Err(e) => {
            tracing::error!(error = %e, "{what} failed; trying again");
            false
        }
    }
}

/// Keys grouped by run: (dag, run) → tasks.
fn by_run<'a>(keys: impl Iterator<Item = &'a TaskKey>) -> BTreeMap<(String, String), Vec<String>> {
    let mut by_run: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for k in keys {
        by_run.entry((k.dag_id.clone(), k.run_id.clone())).or_default().push(k.task_id.clone());
    }
    by_run
}

/// Forwards the ends workers record, as PostgreSQL notifies them, until the receiver is gone.
/// The poll finds whatever a broken connection misses.
async fn listen_done(url: String, ended: mpsc::UnboundedSender<TaskKey>) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for workers' notifications; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(DONE_CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for workers' notifications; polling meanwhile");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        loop {
            match listener.recv().await {
                Ok(n) => {
                    let mut parts = n.payload().splitn(3, '\n');
                    if let (Some(d), Some(r), Some(t)) = (parts.next(), parts.next(), parts.next()) {
                        let key = TaskKey { dag_id: d.into(), run_id: r.into(), task_id: t.into() };
                        if ended.send(key).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "workers' notifications interrupted; reconnecting");
                    break;
                }
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
