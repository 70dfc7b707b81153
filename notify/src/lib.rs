//! # weir-notify — where notifications go, and in what shape
//!
//! The one place both the speed layer's alert rules (`weir-stream`'s `alert`) and the
//! orchestrator's task notices (`weir-flow`'s `notices`: failures, retries, SLA misses) send
//! through. A caller builds a [`Notification`] (a group of [`Alert`]s for one [`Receiver`]) and
//! hands it to a [`Notifier`], which queues it and returns at once; a background sender per
//! receiver posts it, in order, as Alertmanager's webhook JSON (version 4) to a webhook, an
//! incoming-webhook message to Slack, or a new issue per firing group to Jira, with retries and
//! exponential backoff ([`Retry`]), so a slow or failing receiver never holds up a pipeline or a
//! scheduler. A receiver may also name Prometheus Alertmanagers ([`alertmanager`]), which get
//! every alert as Prometheus sends them, resent while it fires. HTTPS trust comes from
//! `weir_schemas::http` (`[http]` in `weir.toml`).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

pub mod alertmanager;

pub use alertmanager::Alertmanager;

/// A receiver of notifications (`receivers:` in an alerts file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Its name, used by rules' `receivers:`.
    pub name: String,
    /// Alertmanager-compatible webhook URL.
    pub webhook: Option<String>,
    /// Slack incoming-webhook URL.
    pub slack: Option<String>,
    /// Jira: an issue per firing group.
    pub jira: Option<Jira>,
    /// Prometheus Alertmanagers: every alert, silenced here or not, resent while it fires.
    pub alertmanager: Option<Alertmanager>,
}

impl Receiver {
    /// What is wrong with it, if anything: it must send somewhere, and its settings must hold.
    pub fn check(&self) -> Result<(), String> {
        if self.webhook.is_none() && self.slack.is_none() && self.jira.is_none() && self.alertmanager.is_none() {
            return Err(format!("receiver {}: none of webhook, slack, jira, alertmanager is set", self.name));
        }
        match &self.alertmanager {
            Some(am) => am.check().map_err(|e| format!("receiver {}: {e}", self.name)),
            None => Ok(()),
        }
    }

    /// Whether it posts each notification (webhook, Slack, Jira), as opposed to only holding
    /// alerts for Alertmanagers.
    fn posts(&self) -> bool {
        self.webhook.is_some() || self.slack.is_some() || self.jira.is_some()
    }
}

/// Where and how to open Jira issues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jira {
    /// The Jira base URL (`https://jira.example.com`).
    pub url: String,
    /// Project key.
    pub project: String,
    /// Issue type name.
    #[serde(default = "default_issue_type")]
    pub issue_type: String,
    /// Environment variable holding a bearer token (never the token itself in a file).
    pub token_env: Option<String>,
}

fn default_issue_type() -> String {
    "Bug".into()
}

/// One alert in a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Labels (alertname, pipeline, key columns, the rule's labels).
    pub labels: BTreeMap<String, String>,
    /// Expanded annotations.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339: when it became active.
    pub starts_at: String,
    /// RFC 3339: when it resolved; the zero time while firing.
    pub ends_at: String,
    /// Stable identity of the alert (rule + labels).
    pub fingerprint: String,
    /// A link back to where it comes from (`generatorURL`); empty for none.
    #[serde(default)]
    pub generator_url: String,
    /// Whether one of Weir's silences matches it: webhooks, Slack and Jira do not get it, an
    /// Alertmanager does (its own silences decide there).
    #[serde(skip)]
    pub silenced: bool,
}

/// A group of alerts for one receiver.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Who gets it.
    pub receiver: Arc<Receiver>,
    /// The group's key (its group-by labels).
    pub group_labels: BTreeMap<String, String>,
    /// The alerts whose state changed.
    pub alerts: Vec<Alert>,
    /// Whether its firing alerts are states that a later notification resolves (alert rules,
    /// queue alerts), which an Alertmanager receiver holds and resends; false for one-off notices
    /// (a task failed), which end on their own.
    pub ongoing: bool,
}

impl Notification {
    fn status(&self) -> &'static str {
        if self.alerts.iter().any(|a| a.status == "firing") { "firing" } else { "resolved" }
    }

    fn common(&self, pick: impl Fn(&Alert) -> &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut common = self.alerts.first().map(&pick).cloned().unwrap_or_default();
        for a in &self.alerts[1..] {
            let theirs = pick(a);
            common.retain(|k, v| theirs.get(k) == Some(v));
        }
        common
    }

    /// Alertmanager's webhook payload (version 4).
    pub fn alertmanager(&self) -> Json {
        let group_key = format!(
            "{{}}:{{{}}}",
            self.group_labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", ")
        );
        json!({
            "version": "4",
            "groupKey": group_key,
            "truncatedAlerts": 0,
            "status": self.status(),
            "receiver": self.receiver.name,
            "groupLabels": self.group_labels,
            "commonLabels": self.common(|a| &a.labels),
            "commonAnnotations": self.common(|a| &a.annotations),
            "externalURL": "",
            "alerts": self.alerts.iter().map(|a| json!({
                "status": a.status,
                "labels": a.labels,
                "annotations": a.annotations,
                "startsAt": a.starts_at,
                "endsAt": a.ends_at,
                "generatorURL": a.generator_url,
                "fingerprint": a.fingerprint,
            })).collect::<Vec<_>>(),
        })
    }

    /// A Slack incoming-webhook message.
    pub fn slack(&self) -> Json {
        let firing = self.alerts.iter().filter(|a| a.status == "firing").count();
        let name = self.group_labels.get("alertname").cloned().unwrap_or_else(|| "alerts".into());
        let mut text = format!("[{}:{}] {name}", self.status().to_uppercase(), firing.max(self.alerts.len()));
        for a in &self.alerts {
            let labels = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ");
            let summary = a.annotations.get("summary").map(|s| format!(" — {s}")).unwrap_or_default();
            text.push_str(&format!("\n• {} {labels}{summary}", a.status));
        }
        json!({ "text": text })
    }

    /// A Jira issue for a firing group (`None` for a resolved one).
    pub fn jira(&self, jira: &Jira) -> Option<Json> {
        if self.status() != "firing" {
            return None;
        }
        let name = self.group_labels.get("alertname").cloned().unwrap_or_else(|| "alert".into());
        let summary = self
            .alerts
            .iter()
            .find_map(|a| a.annotations.get("summary").cloned())
            .unwrap_or_else(|| format!("{name} is firing"));
        let description = self.slack()["text"].as_str().unwrap_or_default().to_string();
        Some(json!({
            "fields": {
                "project": {"key": jira.project},
                "summary": summary,
                "description": description,
                "issuetype": {"name": jira.issue_type},
                "labels": ["weir", name],
            }
        }))
    }
}

/// Hands notifications to background senders: one per receiver (and one more for its
/// Alertmanagers), so each receiver gets its notifications in order and a slow one holds up only
/// itself.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<alertmanager::Message>,
}

/// How hard senders try.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First wait after a failure.
    pub initial: Duration,
    /// Longest wait between tries.
    pub max: Duration,
    /// Tries before giving up.
    pub attempts: u32,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { initial: Duration::from_millis(200), max: Duration::from_secs(30), attempts: 10 }
    }
}

impl Notifier {
    /// Starts the sender tasks; notifications queue up to 10,000 deep.
    pub fn start(retry: Retry) -> Notifier {
        let (tx, mut rx) = mpsc::channel::<alertmanager::Message>(10_000);
        let client = weir_schemas::http::client();
        tokio::spawn(async move {
            let mut senders: BTreeMap<String, mpsc::UnboundedSender<Notification>> = BTreeMap::new();
            let mut alertmanagers: BTreeMap<String, mpsc::UnboundedSender<alertmanager::Message>> = BTreeMap::new();
            while let Some(message) = rx.recv().await {
                let (alertmanager::Message::Changed(n) | alertmanager::Message::Restored(n)) = &message;
                let receiver = n.receiver.clone();
                let changed = match &message {
                    alertmanager::Message::Changed(n) if receiver.posts() => {
                        let alerts: Vec<Alert> = n.alerts.iter().filter(|a| !a.silenced).cloned().collect();
                        (!alerts.is_empty()).then(|| Notification { alerts, ..n.clone() })
                    }
                    _ => None,
                };
                if let Some(am) = &receiver.alertmanager {
                    // By name and settings: two DAG files may each define a receiver `ops`.
                    let sender = alertmanagers
                        .entry(format!("{}\u{0}{am:?}", receiver.name))
                        .or_insert_with(|| alertmanager::spawn(client.clone(), receiver.clone()));
                    let _ = sender.send(message);
                }
                if let Some(n) = changed {
                    let sender = senders.entry(receiver.name.clone()).or_insert_with(|| {
                        let (tx, mut queue) = mpsc::unbounded_channel::<Notification>();
                        let client = client.clone();
                        tokio::spawn(async move {
                            while let Some(n) = queue.recv().await {
                                deliver(&client, &n, retry).await;
                            }
                        });
                        tx
                    });
                    let _ = sender.send(n);
                }
            }
        });
        Notifier { tx }
    }

    /// Queues a notification of alerts whose state changed; never waits (a full queue drops it
    /// with an error log).
    pub fn send(&self, n: Notification) {
        self.queue(alertmanager::Message::Changed(n));
    }

    /// Queues alerts still in the state they were in before a restart (a restored checkpoint):
    /// only Alertmanagers get them (they hold alerts; the other receivers were told before).
    pub fn restored(&self, n: Notification) {
        self.queue(alertmanager::Message::Restored(n));
    }

    fn queue(&self, message: alertmanager::Message) {
        if let Err(e) = self.tx.try_send(message) {
            tracing::error!(error = %e, "notification queue full or closed: notification dropped");
            metrics::counter!("weir_stream_notifications_dropped_total").increment(1);
        }
    }
}

async fn deliver(client: &reqwest::Client, n: &Notification, retry: Retry) {
    let r = &n.receiver;
    let mut posts: Vec<(&'static str, String, Json, Option<String>)> = Vec::new();
    if let Some(url) = &r.webhook {
        posts.push(("webhook", url.clone(), n.alertmanager(), None));
    }
    if let Some(url) = &r.slack {
        posts.push(("slack", url.clone(), n.slack(), None));
    }
    if let Some(j) = &r.jira
        && let Some(body) = n.jira(j)
    {
        let token = j.token_env.as_ref().and_then(|v| std::env::var(v).ok());
        posts.push(("jira", format!("{}/rest/api/2/issue", j.url.trim_end_matches('/')), body, token));
    }
    for (kind, url, body, token) in posts {
        let mut wait = retry.initial;
        for attempt in 1..=retry.attempts {
            let mut req = client.post(&url).json(&body);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let outcome = match req.send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!("HTTP {}", resp.status())),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    metrics::counter!("weir_stream_notifications_total", "receiver" => r.name.clone(), "kind" => kind, "outcome" => "sent").increment(1);
                    break;
                }
                Err(e) if attempt < retry.attempts => {
                    tracing::warn!(receiver = %r.name, kind, attempt, error = %e, "notification failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(retry.max);
                }
                Err(e) => {
                    tracing::error!(receiver = %r.name, kind, error = %e, "notification given up after {attempt} tries");
                    metrics::counter!("weir_stream_notifications_total", "receiver" => r.name.clone(), "kind" => kind, "outcome" => "failed").increment(1);
                }
            }
        }
    }
}
