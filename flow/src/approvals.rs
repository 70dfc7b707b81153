//! Approval tasks (`approval: {message, approvers, timeout}`): a try that waits for a person.
//!
//! The try waits (checking the metadata DB every [`CHECK`]) for a decision on it — approve or
//! reject, who, when, a comment — made with `weir dags approve|reject`, the API or the console
//! ([`decide`]). One decision per try: a cleared task asks again. The decision is recorded in
//! `flow_approvals` and published on the event stream (`kind: approval`) in the same transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row as _;

use crate::{
    dag::{Dag, TaskKind},
    events::{self, Change},
    rules::TaskState,
    store::{Store, StoreError, TaskKey, instant, now},
};

/// How often a waiting try looks for its decision.
pub const CHECK: Duration = Duration::from_millis(250);

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Go on: the task succeeds.
    Approve,
    /// Stop: the task fails.
    Reject,
}

impl Decision {
    /// The decision's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = String;

    fn from_str(s: &str) -> Result<Decision, String> {
        match s {
            "approve" | "approved" => Ok(Decision::Approve),
            "reject" | "rejected" => Ok(Decision::Reject),
            other => Err(format!("decision {other:?}: expected approve or reject")),
        }
    }
}

/// A decision on one try.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decided {
    /// Approve or reject.
    pub decision: Decision,
    /// Who decided.
    pub by: String,
    /// Why (may be empty).
    pub comment: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The try it decided.
    pub try_number: u32,
}

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The task is not an approval task.
    #[error("task {0:?} is not an approval task")]
    NotApproval(String),
    /// The person may not decide.
    #[error("{by:?} may not decide: the approvers are {approvers:?}")]
    NotApprover {
        /// Who asked.
        by: String,
        /// Who may.
        approvers: Vec<String>,
    },
    /// The task is not waiting (not running, or decided already).
    #[error("{0}")]
    NotWaiting(String),
    /// The metadata DB failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records `decision` by `by` on the waiting try of `key`, checked against the DAG version its
/// run uses.
pub async fn decide(
    store: &Store,
    key: &TaskKey,
    decision: Decision,
    by: &str,
    comment: &str,
) -> Result<Decided, Refusal> {
    let run = store.run(&key.dag_id, &key.run_id).await?;
    let (source, file) = store
        .version_source(&key.dag_id, &run.dag_hash)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("no stored version {} of DAG {}", run.dag_hash, key.dag_id)))?;
    let dag = crate::dag::parse(std::path::Path::new(&file), &source)
        .map_err(|e| StoreError::Corrupt(format!("stored DAG version: {e}")))?;
    decide_on(store, &dag, key, decision, by, comment).await
}

async fn decide_on(
    store: &Store,
    dag: &Dag,
    key: &TaskKey,
    decision: Decision,
    by: &str,
    comment: &str,
) -> Result<Decided, Refusal> {
    let Some(TaskKind::Approval { approvers, .. }) = dag.task(&key.task_id).map(|t| &t.kind) else {
        return Err(Refusal::NotApproval(key.task_id.clone()));
    };
    if !approvers.is_empty() && !approvers.iter().any(|a| a == by) {
        return Err(Refusal::NotApprover { by: by.to_string(), approvers: approvers.clone() });
    }
    let task = store
        .tasks_in(&key.dag_id, &key.run_id, std::slice::from_ref(&key.task_id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Refusal::NotWaiting(format!("run {} has no task {:?}", key.run_id, key.task_id)))?;
    if task.state != TaskState::Running {
        return Err(Refusal::NotWaiting(format!("{} is {}, not waiting for a decision", key.task_id, task.state)));
    }
    let at = now();
    let mut tx = store.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO flow_approvals (dag_id, run_id, task_id, try_number, decision, decided_by, comment, decided_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dag_id, run_id, task_id, try_number) DO NOTHING",
    )
    .bind(&key.dag_id)
    .bind(&key.run_id)
    .bind(&key.task_id)
    .bind(i64::from(task.try_number))
    .bind(decision.as_str())
    .bind(by)
    .bind(comment)
    .bind(at)
    .execute(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    if inserted.rows_affected() == 0 {
        return Err(Refusal::NotWaiting(format!("try {} of {} is decided already", task.try_number, key.task_id)));
    }
    let detail = serde_json::json!({"decision": decision.as_str(), "by": by, "comment": comment});
    let change = Change {
        kind: "approval",
        dag_id: &key.dag_id,
        run_id: &key.run_id,
        task_id: Some(&key.task_id),
        try_number: Some(task.try_number),
        state: decision.as_str(),
        detail: Some(detail),
    };
    events::record(&mut tx, at, &[change]).await?;
    tx.commit().await.map_err(StoreError::from)?;
    tracing::info!(dag = %key.dag_id, run_id = %key.run_id, task = %key.task_id, decision = decision.as_str(), by, "approval decided");
    Ok(Decided {
        decision,
        by: by.to_string(),
        comment: comment.to_string(),
        at: instant(at),
        try_number: task.try_number,
    })
}

impl Store {
    /// The decision on try `try_number` of `key`, if any.
    pub async fn decision(&self, key: &TaskKey, try_number: u32) -> Result<Option<Decided>, StoreError> {
        let row = sqlx::query(
            "SELECT decision, decided_by, comment, decided_at FROM flow_approvals WHERE dag_id = $1 AND run_id = $2 \
             AND task_id = $3 AND try_number = $4",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(i64::from(try_number))
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let decision: String = r.get(0);
        Ok(Some(Decided {
            decision: decision.parse().map_err(StoreError::Corrupt)?,
            by: r.get(1),
            comment: r.get(2),
            at: instant(r.get(3)),
            try_number,
        }))
    }
}

/// Waits for the decision on try `try_number` of `key`: `Ok` when approved, else why not.
pub(crate) async fn wait(store: &Store, key: &TaskKey, try_number: u32, timeout: Duration) -> Result<Decided, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match store.decision(key, try_number).await {
            Ok(Some(d)) if d.decision == Decision::Approve => return Ok(d),
            Ok(Some(d)) => {
                let why = if d.comment.is_empty() { String::new() } else { format!(": {}", d.comment) };
                return Err(format!("rejected by {}{why}", d.by));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the approval decision failed; trying again"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no decision within {}", humantime::format_duration(timeout)));
        }
        tokio::time::sleep(CHECK).await;
    }
}
