//! A remote worker (`weir worker --queues …`): claims queued task instances from its queues in
//! the metadata DB, runs their tries, and records how they ended.
//!
//! Claims are one statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so two workers never get
//! the same instance. The worker beats every `heartbeat_interval`; if it stops, the leading
//! scheduler fails its tries into retries, and a late end from it is refused. On shutdown
//! (SIGTERM, Ctrl-C) it drains: it stops claiming, finishes what it runs, then exits.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Mutex, Notify, watch};
use weir_lake::catalog::Lake;

use crate::{
    FlowError,
    cluster::{self, Background, Claim},
    dag::{self, Dag},
    execute::{self, Outcome, log_path},
    scheduler::FlowConfig,
    store::{QUEUED_CHANNEL, RunRow, Store},
};

/// A worker over `store`, running tries against `lake`.
pub struct Worker {
    store: Store,
    lake: Arc<Lake>,
    config: FlowConfig,
    queues: Vec<String>,
    slots: usize,
    logs_dir: PathBuf,
    /// The record of its tries' process groups.
    ledger: Arc<weir_batch::orphans::Ledger>,
}

/// DAG versions tries run with, by (dag, hash).
type Versions = Arc<Mutex<HashMap<(String, String), Arc<Dag>>>>;

impl Worker {
    /// A worker claiming from `queues`, running up to `slots` tries at once.
    pub fn new(store: Store, lake: Arc<Lake>, config: FlowConfig, queues: Vec<String>, slots: usize) -> Worker {
        let logs_dir = config.logs_dir_for(&lake);
        let ledger = crate::execute::ledger(&logs_dir);
        Worker { store, lake, config, queues, slots, logs_dir, ledger }
    }

    /// Claims and runs tries until `shutdown`, then drains.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), FlowError> {
        let (me, host, pid) = cluster::member_id();
        // A worker on this machine that died with tries running left their processes; those
        // tries are failed into retries once its beats stop, so stop the processes first.
        crate::execute::kill_orphans(&self.logs_dir);
        self.store.register(&me, &host, pid, Some((&self.queues, self.slots))).await?;
        tracing::info!(id = %me, queues = %self.queues.join(","), slots = self.slots, "worker started");
        let (state_tx, state_rx) = watch::channel("active");
        let (lost_tx, mut lost_rx) = watch::channel(false);
        let mut beats = Background(tokio::spawn(beat(
            self.store.clone(),
            me.clone(),
            self.config.heartbeat_interval,
            state_rx,
            lost_tx,
        )));
        let wake = Arc::new(Notify::new());
        let listener =
            self.store.is_postgres().then(|| Background(tokio::spawn(listen_queued(self.store.url(), wake.clone()))));
        let versions: Versions = Arc::default();
        // PostgreSQL notifies this worker when tasks are queued; on SQLite it looks often.
        let look = if self.store.is_postgres() {
            self.config.poll_interval
        } else {
            self.config.poll_interval.min(crate::scheduler::SQLITE_LOOK)
        };
        let mut running = tokio::task::JoinSet::new();
        // Tries that are approvals waiting for a person: they hold no slot.
        let approvals = Arc::new(AtomicUsize::new(0));
        tokio::pin!(shutdown);
        loop {
            let busy = running.len().saturating_sub(approvals.load(Ordering::SeqCst));
            let free = self.slots.saturating_sub(busy);
            if free > 0 && !*lost_rx.borrow() {
                let log = |k: &_, t| log_path(&self.logs_dir, k, t).display().to_string();
                match self.store.claim(&me, &self.queues, free, log).await {
                    Ok(claims) => {
                        for claim in claims {
                            metrics::counter!("weir_flow_worker_claims_total").increment(1);
                            let t = Try {
                                store: self.store.clone(),
                                lake: self.lake.clone(),
                                logs_dir: self.logs_dir.clone(),
                                me: me.clone(),
                                versions: versions.clone(),
                                batch: self.config.batch.clone(),
                                ledger: self.ledger.clone(),
                                approvals: approvals.clone(),
                            };
                            running.spawn(t.run(claim));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming tasks failed; trying again"),
                }
            }
            metrics::gauge!("weir_flow_worker_running").set(running.len() as f64);
            tokio::select! {
                Some(_) = running.join_next(), if !running.is_empty() => {}
                _ = wake.notified() => {}
                _ = tokio::time::sleep(look) => {}
                _ = lost_rx.changed() => {
                    tracing::error!("the scheduler declared this worker lost (it missed its heartbeats); draining");
                    break;
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        let _ = state_tx.send("draining");
        tracing::info!(running = running.len(), "worker draining: no new claims; finishing what runs");
        while running.join_next().await.is_some() {
            metrics::gauge!("weir_flow_worker_running").set(running.len() as f64);
        }
        let _ = state_tx.send("stopped");
        let _ = (&mut beats.0).await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// What one claimed try needs.
struct Try {
    store: Store,
    lake: Arc<Lake>,
    logs_dir: PathBuf,
    me: String,
    versions: Versions,
    batch: weir_batch::engine::BatchConfig,
    ledger: Arc<weir_batch::orphans::Ledger>,
    /// The worker's count of tries that are approvals.
    approvals: Arc<AtomicUsize>,
}

/// Counts an approval's try among the worker's approvals while it lives.
struct ApprovalSlot(Arc<AtomicUsize>);

impl Drop for ApprovalSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Try {
    /// Runs the claimed try and records its end (retrying while the metadata DB is away; if it
    /// stays away, the scheduler fails the try as a zombie instead).
    async fn run(self, claim: Claim) {
        let key = &claim.key;
        let (outcome, log, dag) = match self.load(key).await {
            Ok((run, dag)) => {
                let _approval = crate::scheduler::is_approval(&dag, &key.task_id).then(|| {
                    self.approvals.fetch_add(1, Ordering::SeqCst);
                    ApprovalSlot(self.approvals.clone())
                });
                let (outcome, log) = execute::run_try(
                    &dag,
                    &run,
                    &key.task_id,
                    claim.try_number,
                    &self.logs_dir,
                    &execute::With {
                        lake: &self.lake,
                        store: &self.store,
                        batch: &self.batch,
                        ledger: &self.ledger,
                        state: None,
                    },
                )
                .await;
                (outcome, log, Some(dag))
            }
            Err(reason) => (Outcome::Failed(reason), None, None),
        };
        let finish = execute::finish_of(key, claim.try_number, &outcome, log, dag.as_deref(), claim.max_tries);
        for attempt in 1.. {
            match self.store.finish_tries_of(&self.me, std::slice::from_ref(&finish)).await {
                Ok(recorded) => {
                    if recorded.first() != Some(&true) {
                        tracing::warn!(dag = %key.dag_id, run_id = %key.run_id, task = %key.task_id, try_number = claim.try_number,
                            "the end of this try was refused: the scheduler failed it meanwhile (this worker missed its heartbeats)");
                    }
                    return;
                }
                Err(e) if attempt < 60 => {
                    tracing::warn!(error = %e, attempt, "recording the end of a try failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "recording the end of a try failed for good; the scheduler will retry it");
                    return;
                }
            }
        }
    }

    /// The run and the DAG version it runs.
    async fn load(&self, key: &crate::store::TaskKey) -> Result<(RunRow, Arc<Dag>), String> {
        let run = self.store.run(&key.dag_id, &key.run_id).await.map_err(|e| e.to_string())?;
        let id = (run.dag_id.clone(), run.dag_hash.clone());
        if let Some(d) = self.versions.lock().await.get(&id) {
            return Ok((run, d.clone()));
        }
        let (source, file) = self
            .store
            .version_source(&run.dag_id, &run.dag_hash)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("DAG {} version {} is not in the metadata DB", run.dag_id, run.dag_hash))?;
        let dag = Arc::new(dag::parse(std::path::Path::new(&file), &source).map_err(|e| e.to_string())?);
        self.versions.lock().await.insert(id, dag.clone());
        Ok((run, dag))
    }
}

/// Beats every `every` with the worker's current state until it is `stopped` (which is written
/// last). Turns `lost` true when the scheduler declared this worker lost.
async fn beat(
    store: Store,
    me: String,
    every: Duration,
    mut state: watch::Receiver<&'static str>,
    lost: watch::Sender<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = state.changed() => {}
        }
        let now = *state.borrow_and_update();
        match store.beat_worker(&me, now).await {
            Ok(true) => {}
            Ok(false) => {
                lost.send_replace(true);
            }
            Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
        }
        if now == "stopped" {
            return;
        }
    }
}

/// Wakes the claim loop when the scheduler queues tasks (PostgreSQL notifications).
async fn listen_queued(url: String, wake: Arc<Notify>) {
    loop {
        let listen = async {
            let mut l = sqlx::postgres::PgListener::connect(&url).await?;
            l.listen(QUEUED_CHANNEL).await?;
            loop {
                l.recv().await?;
                wake.notify_one();
            }
        };
        let r: Result<(), sqlx::Error> = listen.await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "queue notifications interrupted; polling meanwhile");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
