//! The orchestrator's event stream: every DAG-run and task-instance state change, in order, on
//! `weir.flow.events`, for downstream systems and dashboards.
//!
//! A transactional outbox: each state change adds a `flow_outbox` row in the transaction that
//! makes it ([`record`]), numbered from a counter row that the transaction updates last, so the
//! numbers follow commit order. The leading scheduler's relay publishes the rows in that order,
//! hands them to the DAGs' notifications ([`crate::notices`]) and then deletes them ([`relay`]). Publication is at least once — a leader that dies between the
//! send and the delete leaves the rows to its heir — so consumers drop a `seq` they have seen.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio::sync::Notify;
use weir_bus::{Bus, BusError, Record};

use crate::{
    dag::Dag,
    store::{Store, StoreError, TaskKey, Tx, instant, now},
};

/// The topic of the orchestrator's events (one partition: one order).
pub const EVENTS_TOPIC: &str = "weir.flow.events";

/// One event: the JSON value of a record on [`EVENTS_TOPIC`] (key: the DAG id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowEvent {
    /// Grows by one per event, in commit order; a consumer drops a `seq` it has seen.
    pub seq: i64,
    /// `run` (a DAG run's state), `task` (a task instance's) or `artifact` (a `push` task's).
    pub kind: String,
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task (task and artifact events).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task_id: Option<String>,
    /// The try (task events from the try's start on, and artifact events).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub try_number: Option<u32>,
    /// The new state (`pushed` for artifacts).
    pub state: String,
    /// The run's logical date (its data interval's start).
    pub logical_date: Option<DateTime<Utc>>,
    /// When the change was made.
    pub at: DateTime<Utc>,
    /// A failure's reason (`{"reason": …}`), an artifact's files and payload URI.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub detail: Option<serde_json::Value>,
}

/// A state change to record with the transaction that makes it.
pub(crate) struct Change<'a> {
    pub kind: &'static str,
    pub dag_id: &'a str,
    pub run_id: &'a str,
    pub task_id: Option<&'a str>,
    pub try_number: Option<u32>,
    pub state: &'a str,
    pub detail: Option<serde_json::Value>,
}

impl<'a> Change<'a> {
    /// A task instance's new state.
    pub fn task(dag_id: &'a str, run_id: &'a str, task_id: &'a str, try_number: Option<u32>, state: &'a str) -> Self {
        Change { kind: "task", dag_id, run_id, task_id: Some(task_id), try_number, state, detail: None }
    }

    /// A DAG run's new state.
    pub fn run(dag_id: &'a str, run_id: &'a str, state: &'a str) -> Self {
        Change { kind: "run", dag_id, run_id, task_id: None, try_number: None, state, detail: None }
    }

    /// With a failure's reason.
    pub fn because(mut self, reason: Option<&str>) -> Self {
        self.detail = reason.map(|r| serde_json::json!({ "reason": r }));
        self
    }
}

/// Adds `changes` to the outbox in `tx`, at time `at` (µs). Call it last in the transaction:
/// the counter row it updates stays locked until the commit.
pub(crate) async fn record(tx: &mut Tx<'_>, at: i64, changes: &[Change<'_>]) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let last: i64 = sqlx::query("UPDATE flow_counters SET value = value + $1 WHERE name = 'events' RETURNING value")
        .bind(changes.len() as i64)
        .fetch_one(&mut **tx)
        .await?
        .get(0);
    let first = last - changes.len() as i64 + 1;
    // One statement per chunk of changes, not one per change: each statement is a round trip
    // to the database on the scheduler's critical path.
    const PER_STATEMENT: usize = crate::store::ROWS_PER_STATEMENT;
    for (n, chunk) in changes.chunks(PER_STATEMENT).enumerate() {
        let rows: Vec<String> = (0..chunk.len())
            .map(|j| {
                let p = |k: usize| format!("${}", j * 9 + k);
                format!(
                    "({}, {}, {}, {}, {}, {}, {}, (SELECT interval_start FROM flow_dag_runs WHERE dag_id = {} AND run_id = {}), {}, {})",
                    p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(3), p(4), p(8), p(9)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO flow_outbox (seq, kind, dag_id, run_id, task_id, try_number, state, logical_date, at, detail) \
             VALUES {}",
            rows.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (j, c) in chunk.iter().enumerate() {
            q = q
                .bind(first + (n * PER_STATEMENT + j) as i64)
                .bind(c.kind)
                .bind(c.dag_id)
                .bind(c.run_id)
                .bind(c.task_id)
                .bind(c.try_number.map(i64::from))
                .bind(c.state)
                .bind(at)
                .bind(c.detail.as_ref().map(|d| d.to_string()));
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// The oldest `limit` events not yet published, in order.
    pub async fn outbox(&self, limit: usize) -> Result<Vec<FlowEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, kind, dag_id, run_id, task_id, try_number, state, logical_date, at, detail FROM flow_outbox \
             ORDER BY seq LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let detail: Option<String> = r.get(9);
                Ok(FlowEvent {
                    seq: r.get(0),
                    kind: r.get(1),
                    dag_id: r.get(2),
                    run_id: r.get(3),
                    task_id: r.get(4),
                    try_number: r.get::<Option<i64>, _>(5).map(|t| t as u32),
                    state: r.get(6),
                    logical_date: r.get::<Option<i64>, _>(7).map(instant),
                    at: instant(r.get(8)),
                    detail: detail
                        .map(|d| {
                            serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(format!("event detail: {e}")))
                        })
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Records an artifact a `push` task published (see [`crate::dag::TaskKind::Push`]).
    pub async fn record_artifact(
        &self,
        key: &TaskKey,
        try_number: u32,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let change = Change {
            kind: "artifact",
            dag_id: &key.dag_id,
            run_id: &key.run_id,
            task_id: Some(&key.task_id),
            try_number: Some(try_number),
            state: "pushed",
            detail: Some(detail),
        };
        record(&mut tx, now(), &[change]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets published events up to `seq` (under the leader's fence).
    pub async fn published(&self, seq: i64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM flow_outbox WHERE seq <= $1").bind(seq).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Events the relay takes from the outbox at a time.
const OUTBOX_PAGE: usize = 1000;

/// The least time between two relay rounds that found events. Each round writes (it deletes
/// what it published); woken after every scheduler turn, it took every other turn of the
/// database's writer (in a 3,000-task fan-out the scheduler's transactions waited 1.07 s in all
/// for their turn; 0.65 s with rounds this far apart).
pub const GATHER: Duration = Duration::from_millis(25);

/// Whom the relay tells of events: the notifier, and the DAGs (their `notifications:`) as the
/// scheduler last read them.
pub struct Notices {
    /// Sends notifications in the background.
    pub notifier: weir_notify::Notifier,
    /// The DAG folder as last read.
    pub dags: Arc<std::sync::RwLock<HashMap<String, Arc<Dag>>>>,
}

/// Why a relay round stopped.
enum Stop {
    /// Another scheduler leads: this relay ends.
    Fenced,
    /// Anything else: logged, tried again.
    Failed(String),
}

/// Relays the outbox until the leader loses its lease (`store` is fenced): publishes each batch
/// of events to [`EVENTS_TOPIC`] on `bus` (when there is one), hands them to the DAGs'
/// notifications, then deletes them — on `wake`, and every `every` for what other processes
/// (workers) added. Rounds are at least [`GATHER`] apart, so that under load each one takes a
/// batch of the scheduler's changes rather than taking turns with each of its transactions.
pub async fn relay(store: Store, bus: Option<Arc<dyn Bus>>, notices: Notices, wake: Arc<Notify>, every: Duration) {
    let mut producer = None;
    loop {
        let began = tokio::time::Instant::now();
        let round = async {
            let events = store.outbox(OUTBOX_PAGE).await.map_err(|e| Stop::Failed(e.to_string()))?;
            let Some(last) = events.last().map(|e| e.seq) else { return Ok(0) };
            if let Some(bus) = &bus {
                if producer.is_none() {
                    match bus.create_topic(EVENTS_TOPIC, 1).await {
                        Ok(()) | Err(BusError::TopicExists(_)) => {}
                        Err(e) => return Err(Stop::Failed(e.to_string())),
                    }
                    producer = Some(bus.producer().await.map_err(|e| Stop::Failed(e.to_string()))?);
                }
                let records: Vec<Record> = events
                    .iter()
                    .map(|e| Record::keyed(e.dag_id.clone(), serde_json::to_vec(e).expect("events serialize")))
                    .collect();
                let sent = producer.as_ref().expect("opened").send(EVENTS_TOPIC, records).await;
                sent.map_err(|e| Stop::Failed(e.to_string()))?;
            }
            {
                let dags = notices.dags.read().expect("not poisoned");
                for e in &events {
                    if let Some(dag) = dags.get(&e.dag_id) {
                        for n in crate::notices::for_event(e, dag) {
                            notices.notifier.send(n);
                        }
                    }
                }
            }
            match store.published(last).await {
                Ok(()) => Ok(events.len()),
                Err(StoreError::Fenced(_)) => Err(Stop::Fenced),
                Err(e) => Err(Stop::Failed(e.to_string())),
            }
        };
        match round.await {
            Ok(n) if n > 0 => {
                metrics::counter!("weir_flow_events_published_total").increment(n as u64);
                if n < OUTBOX_PAGE {
                    tokio::time::sleep_until(began + GATHER).await;
                }
                continue; // more may be waiting
            }
            Ok(_) => {}
            Err(Stop::Fenced) => return,
            Err(Stop::Failed(e)) => {
                tracing::warn!(error = %e, topic = EVENTS_TOPIC, "relaying the orchestrator's events failed; retrying")
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}
