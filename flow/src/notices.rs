//! What the orchestrator tells people, through the stream layer's notifiers (webhook in
//! Alertmanager's format, Slack, Jira): a DAG's notifications — a task failed or will be
//! retried, the run succeeded or failed, the run missed its deadline — and the orchestrator's
//! own alert, `TaskQueuedTooLong`, when a queue's oldest task has waited past a threshold
//! (no worker serves it, or too few do).
//!
//! DAG notifications follow the event stream ([`crate::events`]): the leader's relay hands
//! each event to [`for_event`]. Like the stream, they are at least once.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::Utc;
use weir_notify::{Alert, Notification, Notifier, Receiver};

use crate::{autoscale::QueueLoad, dag::Dag, events::FlowEvent};

/// The notifications one event of `dag` calls for (none when its DAG asks for none).
pub fn for_event(event: &FlowEvent, dag: &Dag) -> Vec<Notification> {
    let n = &dag.notifications;
    let reason = event.detail.as_ref().and_then(|d| d["reason"].as_str()).map(|r| format!(": {r}")).unwrap_or_default();
    let task = event.task_id.clone().unwrap_or_default();
    let try_text = event.try_number.map(|t| format!(" (try {t})")).unwrap_or_default();
    let (names, alertname, summary) = match (event.kind.as_str(), event.state.as_str()) {
        ("task", "failed") => {
            (&n.on_failure, "TaskFailed", format!("{} {}: task {task} failed{try_text}{reason}", dag.id, event.run_id))
        }
        ("task", "up_for_retry") => (
            &n.on_retry,
            "TaskRetrying",
            format!("{} {}: task {task} failed{try_text} and will be retried{reason}", dag.id, event.run_id),
        ),
        ("run", "failed") => (&n.on_failure, "DagRunFailed", format!("{} {}: the run failed", dag.id, event.run_id)),
        ("run", "success") => {
            (&n.on_success, "DagRunSucceeded", format!("{} {}: the run succeeded", dag.id, event.run_id))
        }
        ("run", "deadline_missed") => (
            &n.on_deadline_missed,
            "DagRunDeadlineMissed",
            format!(
                "{} {}: not finished {} after its data interval ended",
                dag.id,
                event.run_id,
                dag.deadline.map(|d| humantime::format_duration(d).to_string()).unwrap_or_default()
            ),
        ),
        _ => return Vec::new(),
    };
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), alertname.to_string()),
        ("dag".to_string(), dag.id.clone()),
        ("run_id".to_string(), event.run_id.clone()),
    ]);
    if !task.is_empty() {
        labels.insert("task".into(), task);
    }
    if let Some(t) = event.try_number {
        labels.insert("try".into(), t.to_string());
    }
    let alert = alert(labels, summary, &event.at.to_rfc3339());
    names
        .iter()
        .filter_map(|name| dag.receivers.iter().find(|r| &r.name == name))
        .map(|r| Notification {
            receiver: Arc::new(r.clone()),
            group_labels: BTreeMap::from([("alertname".to_string(), alertname.to_string())]),
            alerts: vec![alert.clone()],
            ongoing: false,
        })
        .collect()
}

fn alert(labels: BTreeMap<String, String>, summary: String, starts_at: &str) -> Alert {
    let fingerprint = labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    Alert {
        status: "firing".into(),
        labels,
        annotations: BTreeMap::from([("summary".to_string(), summary)]),
        starts_at: starts_at.to_string(),
        ends_at: "0001-01-01T00:00:00Z".into(),
        fingerprint,
        generator_url: String::new(),
        silenced: false,
    }
}

/// `TaskQueuedTooLong` per queue: firing when the oldest queued task has waited longer than
/// the threshold, resolved when it no longer has.
#[derive(Default)]
pub struct QueueAlerts {
    firing: HashSet<String>,
}

impl QueueAlerts {
    /// Checks every queue's load; notifies `receivers` of each change.
    pub fn check(&mut self, loads: &[QueueLoad], after: Duration, receivers: &[Receiver], notifier: &Notifier) {
        for load in loads {
            let waited = load.oldest_queued.unwrap_or_default();
            let over = load.queued > 0 && waited > after;
            let was = self.firing.contains(&load.queue);
            if over == was {
                continue;
            }
            if over {
                self.firing.insert(load.queue.clone());
                tracing::warn!(queue = %load.queue, waited_s = waited.as_secs(), workers = load.workers, "TaskQueuedTooLong firing");
            } else {
                self.firing.remove(&load.queue);
                tracing::info!(queue = %load.queue, "TaskQueuedTooLong resolved");
            }
            metrics::gauge!("weir_flow_queue_alert_firing", "queue" => load.queue.clone()).set(if over {
                1.0
            } else {
                0.0
            });
            let labels = BTreeMap::from([
                ("alertname".to_string(), "TaskQueuedTooLong".to_string()),
                ("queue".to_string(), load.queue.clone()),
            ]);
            let summary = format!(
                "queue {}: the oldest of {} queued tasks has waited {} s ({} workers claim from it)",
                load.queue,
                load.queued,
                waited.as_secs(),
                load.workers
            );
            let mut a = alert(labels, summary, &Utc::now().to_rfc3339());
            if !over {
                a.status = "resolved".into();
                a.ends_at = Utc::now().to_rfc3339();
            }
            for r in receivers {
                notifier.send(Notification {
                    receiver: Arc::new(r.clone()),
                    group_labels: BTreeMap::from([("alertname".to_string(), "TaskQueuedTooLong".to_string())]),
                    alerts: vec![a.clone()],
                    ongoing: true,
                });
            }
        }
    }
}
