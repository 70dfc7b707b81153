//! Sending alerts to Prometheus Alertmanager the way Prometheus does, so that Alertmanager's own
//! routing, grouping, silences, inhibitions and repeats act on Weir's alerts.
//!
//! A receiver with `alertmanager: {urls: [...]}` gets every alert, silenced in Weir or not, posted
//! to `POST /api/v2/alerts` of each URL (every member of an HA cluster, as Prometheus sends to
//! all). An alert that fires is held and sent again every `resend_every` (Prometheus's
//! `--rules.alert.resend-delay`, 1 minute) with `endsAt` four resends ahead, so an Alertmanager
//! that restarted learns it again and an alert whose sender died resolves on its own; a resolved
//! alert is sent with its end and again for 15 minutes (Prometheus's resolved retention), which
//! makes good a send that failed. A one-off notice (a task failed: [`Notification::ongoing`] is
//! false) gets a fixed end four resends after it was first sent.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use crate::{Alert, Notification, Receiver};

/// How long a resolved alert is still sent: Prometheus's `resolvedRetention`.
const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);

/// Where a receiver's Alertmanagers are (`alertmanager:` in a receiver).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alertmanager {
    /// Base URLs (`http://127.0.0.1:9093`); each gets every alert.
    pub urls: Vec<String>,
    /// How often alerts still firing are sent again (default 1 minute).
    #[serde(default = "default_resend_every", with = "humantime_serde")]
    pub resend_every: Duration,
}

fn default_resend_every() -> Duration {
    Duration::from_secs(60)
}

impl Alertmanager {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.urls.is_empty() {
            return Err("alertmanager: urls is empty".into());
        }
        for url in &self.urls {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => return Err(format!("alertmanager: {url:?}: scheme {} is not http or https", u.scheme())),
                Err(e) => return Err(format!("alertmanager: {url:?}: {e}")),
            }
        }
        if self.resend_every.is_zero() {
            return Err("alertmanager: resend_every must be longer than 0s".into());
        }
        Ok(())
    }
}

/// One alert as the sender holds it.
struct Held {
    alert: Alert,
    /// A fixed `endsAt` (resolved, or a one-off notice); `None` while it fires.
    ends: Option<SystemTime>,
}

/// What the notifier is told; the Alertmanager sender holds and sends both alike, the other
/// receivers get only changes.
pub(crate) enum Message {
    /// Alerts whose state changed.
    Changed(Notification),
    /// Alerts in the state they were in before a restart (a restored checkpoint).
    Restored(Notification),
}

/// Starts the sender of one receiver's Alertmanagers.
pub(crate) fn spawn(client: reqwest::Client, receiver: Arc<Receiver>) -> mpsc::UnboundedSender<Message> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(client, receiver, rx));
    tx
}

async fn run(client: reqwest::Client, receiver: Arc<Receiver>, mut rx: mpsc::UnboundedReceiver<Message>) {
    let Some(am) = receiver.alertmanager.clone() else { return };
    let mut held: BTreeMap<String, Held> = BTreeMap::new();
    let mut resend = tokio::time::interval(am.resend_every);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resend.tick().await;
    loop {
        let fingerprints: Vec<String> = tokio::select! {
            message = rx.recv() => {
                let Some(first) = message else { return };
                let now = SystemTime::now();
                let mut changed = Vec::new();
                let mut next = Some(first);
                // Everything queued goes in one post, at once.
                while let Some(Message::Changed(n) | Message::Restored(n)) = next {
                    for alert in n.alerts {
                        let ends = match alert.status.as_str() {
                            "resolved" => Some(parse_time(&alert.ends_at).unwrap_or(now)),
                            _ if n.ongoing => None,
                            _ => Some(now.max(parse_time(&alert.starts_at).unwrap_or(now)) + 4 * am.resend_every),
                        };
                        changed.push(alert.fingerprint.clone());
                        held.insert(alert.fingerprint.clone(), Held { alert, ends });
                    }
                    next = rx.try_recv().ok();
                }
                changed.sort();
                changed.dedup();
                changed
            }
            _ = resend.tick() => {
                let now = SystemTime::now();
                held.retain(|_, h| h.ends.is_none_or(|end| end + RESOLVED_RETENTION > now));
                held.keys().cloned().collect()
            }
        };
        metrics::gauge!("weir_notify_alertmanager_alerts", "receiver" => receiver.name.clone()).set(held.len() as f64);
        if fingerprints.is_empty() {
            continue;
        }
        let now = SystemTime::now();
        let body: Vec<Json> =
            fingerprints.iter().filter_map(|f| held.get(f)).map(|h| postable(h, now, am.resend_every)).collect();
        for url in &am.urls {
            post(&client, &receiver.name, url, &body).await;
        }
    }
}

/// An alert as `POST /api/v2/alerts` takes it: a firing one ends four resends from now.
fn postable(h: &Held, now: SystemTime, resend_every: Duration) -> Json {
    let starts = parse_time(&h.alert.starts_at).unwrap_or(now);
    // Alertmanager refuses an alert that ends before it starts.
    let ends = h.ends.unwrap_or_else(|| now.max(starts) + 4 * resend_every).max(starts);
    let mut alert = json!({
        "labels": h.alert.labels,
        "annotations": h.alert.annotations,
        "startsAt": format_time(starts),
        "endsAt": format_time(ends),
    });
    if !h.alert.generator_url.is_empty() {
        alert["generatorURL"] = Json::String(h.alert.generator_url.clone());
    }
    alert
}

async fn post(client: &reqwest::Client, receiver: &str, url: &str, body: &[Json]) {
    let endpoint = format!("{}/api/v2/alerts", url.trim_end_matches('/'));
    let outcome = match client.post(&endpoint).json(body).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => {
            let status = resp.status();
            Err(format!("HTTP {status}: {}", resp.text().await.unwrap_or_default().trim()))
        }
        Err(e) => Err(e.to_string()),
    };
    let label = match &outcome {
        Ok(()) => "sent",
        Err(e) => {
            tracing::warn!(receiver, url = %endpoint, alerts = body.len(), error = %e, "Alertmanager refused or unreachable; the next resend carries these alerts again");
            "failed"
        }
    };
    metrics::counter!("weir_stream_notifications_total", "receiver" => receiver.to_string(), "kind" => "alertmanager", "outcome" => label)
        .increment(1);
}

fn parse_time(text: &str) -> Option<SystemTime> {
    let t = DateTime::parse_from_rfc3339(text).ok()?;
    // Alertmanager's "zero" end (0001-01-01) means none.
    (t.timestamp() > 0).then(|| t.with_timezone(&Utc).into())
}

fn format_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(status: &str, starts: &str, ends: &str) -> Alert {
        Alert {
            status: status.into(),
            labels: [("alertname".to_string(), "A".to_string())].into(),
            annotations: BTreeMap::new(),
            starts_at: starts.into(),
            ends_at: ends.into(),
            fingerprint: "f".into(),
            generator_url: String::new(),
            silenced: false,
        }
    }

    #[test]
    fn firing_alerts_end_four_resends_ahead_and_never_before_they_start() {
        let now = parse_time("2026-12-07T10:00:00Z").unwrap();
        let every = Duration::from_secs(60);
        let firing = Held { alert: alert("firing", "2026-12-07T09:00:00.000Z", "0001-01-01T00:00:00Z"), ends: None };
        let p = postable(&firing, now, every);
        assert_eq!(p["startsAt"], "2026-12-07T09:00:00.000Z");
        assert_eq!(p["endsAt"], "2026-12-07T10:04:00.000Z");
        assert!(p.get("generatorURL").is_none());
        // Event time ahead of the clock: the end follows the start.
        let ahead = Held { alert: alert("firing", "2026-12-07T11:00:00+00:00", "0001-01-01T00:00:00Z"), ends: None };
        assert_eq!(postable(&ahead, now, every)["endsAt"], "2026-12-07T11:04:00.000Z");
        let resolved = Held {
            alert: alert("resolved", "2026-12-07T09:00:00Z", "2026-12-07T09:30:00Z"),
            ends: parse_time("2026-12-07T09:30:00Z"),
        };
        assert_eq!(postable(&resolved, now, every)["endsAt"], "2026-12-07T09:30:00.000Z");
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let am = |urls: &[&str], secs| Alertmanager {
            urls: urls.iter().map(|u| u.to_string()).collect(),
            resend_every: Duration::from_secs(secs),
        };
        assert!(am(&["http://127.0.0.1:9093"], 60).check().is_ok());
        assert!(am(&[], 60).check().unwrap_err().contains("urls is empty"));
        assert!(am(&["ftp://x"], 60).check().unwrap_err().contains("scheme ftp"));
        assert!(am(&["127.0.0.1:9093"], 60).check().is_err());
        assert!(am(&["http://x"], 0).check().unwrap_err().contains("resend_every"));
    }
}
