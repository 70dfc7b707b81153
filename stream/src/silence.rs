//! Silences: alerts whose labels match a silence's matchers are not notified while it is active
//! (they still change state and reach `weir.alerts`, marked `silenced`). Silences come from the
//! `silences:` of alert files and from the serving API, which publishes them to
//! `weir.alerts.silences` (key: the silence id; the latest record of an id wins; expiring a
//! silence publishes it again ending now). Every stream and serving process follows that topic
//! from its start, so all of them agree on what is silenced.
//!
//! The record is Alertmanager's API v2 silence: `{"id", "matchers": [{"name", "value",
//! "isEqual"}], "startsAt", "endsAt", "createdBy", "comment"}` (RFC 3339 times).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Producer, Record};

/// The topic silences made through the API go to.
pub const SILENCES_TOPIC: &str = "weir.alerts.silences";

/// One label condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Label value.
    pub value: String,
    /// `true`: the label must equal the value; `false`: must not.
    #[serde(default = "yes")]
    pub is_equal: bool,
    /// Regular-expression matchers are refused (only `false` is accepted).
    #[serde(default)]
    pub is_regex: bool,
}

fn yes() -> bool {
    true
}

/// A silence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Silence {
    /// Its id (given by the API; `file:<path>#<n>` for a file's).
    #[serde(default)]
    pub id: String,
    /// Every matcher must hold.
    pub matchers: Vec<Matcher>,
    /// When it starts (default: now).
    #[serde(default = "SystemTime::now", with = "humantime_serde")]
    pub starts_at: SystemTime,
    /// When it ends.
    #[serde(with = "humantime_serde")]
    pub ends_at: SystemTime,
    /// Who made it.
    #[serde(default)]
    pub created_by: String,
    /// Why.
    #[serde(default)]
    pub comment: String,
}

/// A silence that cannot be accepted.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    /// What is wrong with it.
    #[error("silence refused: {0}")]
    Invalid(String),
    /// Publishing it failed.
    #[error("publishing the silence: {0}")]
    Bus(#[from] BusError),
}

impl Silence {
    /// `pending`, `active` or `expired` at `now`.
    pub fn state(&self, now: SystemTime) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }

    /// Whether it is active at `now` and every matcher holds for `labels`.
    pub fn silences(&self, labels: &BTreeMap<String, String>, now: SystemTime) -> bool {
        self.state(now) == "active"
            && self.matchers.iter().all(|m| (labels.get(&m.name).map(String::as_str) == Some(&m.value)) == m.is_equal)
    }

    /// Checks what the API is given: at least one matcher, each naming a label, none a regex,
    /// one that requires a value (a silence of everything is refused), an end after the start.
    pub fn validate(&self) -> Result<(), SilenceError> {
        let invalid = |why: &str| Err(SilenceError::Invalid(why.into()));
        if self.matchers.is_empty() {
            return invalid("give at least one matcher");
        }
        if let Some(m) = self.matchers.iter().find(|m| m.name.is_empty()) {
            return Err(SilenceError::Invalid(format!("matcher {:?} has no label name", m.value)));
        }
        if let Some(m) = self.matchers.iter().find(|m| m.is_regex) {
            return Err(SilenceError::Invalid(format!("matcher on {:?}: regex matchers are not supported", m.name)));
        }
        if !self.matchers.iter().any(|m| m.is_equal && !m.value.is_empty()) {
            return invalid("at least one matcher must require a label value (isEqual with a value)");
        }
        if self.ends_at <= self.starts_at {
            return invalid("endsAt must be after startsAt");
        }
        Ok(())
    }
}

/// The silences in force: those of the alert files and those published to the topic.
#[derive(Debug, Default)]
pub struct Silences {
    from_files: Vec<Silence>,
    published: RwLock<BTreeMap<String, Silence>>,
}

impl Silences {
    /// Silences with the files' ones.
    pub fn with_files(from_files: Vec<Silence>) -> Silences {
        Silences { from_files, published: RwLock::default() }
    }

    /// Whether an active silence matches `labels` now.
    pub fn silenced(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.matching(labels, SystemTime::now()).is_empty()
    }

    /// Ids of the silences active at `now` that match `labels`.
    pub fn matching(&self, labels: &BTreeMap<String, String>, now: SystemTime) -> Vec<String> {
        let published = self.published.read().expect("not poisoned");
        self.from_files
            .iter()
            .chain(published.values())
            .filter(|s| s.silences(labels, now))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Takes in one published silence (the newest record of its id wins).
    pub fn apply(&self, silence: Silence) {
        self.published.write().expect("not poisoned").insert(silence.id.clone(), silence);
    }

    /// Every silence, files' first, then published ones by id.
    pub fn list(&self) -> Vec<Silence> {
        let published = self.published.read().expect("not poisoned");
        self.from_files.iter().chain(published.values()).cloned().collect()
    }

    /// A published silence by id.
    pub fn get(&self, id: &str) -> Option<Silence> {
        self.published.read().expect("not poisoned").get(id).cloned()
    }
}

/// Publishes `silence` (validated) to [`SILENCES_TOPIC`] and applies it to `silences`.
pub async fn publish(producer: &dyn Producer, silences: &Silences, silence: Silence) -> Result<(), SilenceError> {
    silence.validate()?;
    let value = serde_json::to_vec(&silence).expect("a silence is JSON");
    producer.send(SILENCES_TOPIC, vec![Record::keyed(silence.id.clone().into_bytes(), value)]).await?;
    silences.apply(silence);
    Ok(())
}

/// Follows [`SILENCES_TOPIC`] from its start into `silences` until `stop` turns true (creating
/// the topic if it does not exist). A record that is not a silence is logged and skipped.
pub async fn follow(
    bus: Arc<dyn Bus>,
    silences: Arc<Silences>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BusError> {
    let partitions = match bus.topic(SILENCES_TOPIC).await {
        Ok(t) => t.partitions,
        Err(_) => {
            if let Err(e) = bus.create_topic(SILENCES_TOPIC, 1).await {
                tracing::debug!(error = %e, "creating the silences topic (another process may have)");
            }
            bus.topic(SILENCES_TOPIC).await?.partitions
        }
    };
    // Every process holds every silence.
    weir_bus::follow_from_start(bus.as_ref(), SILENCES_TOPIC, partitions, "weir-silences", Duration::from_millis(500), stop, |m| {
        match m.value.as_deref().map(serde_json::from_slice::<Silence>) {
            Some(Ok(s)) => silences.apply(s),
            Some(Err(e)) => {
                tracing::warn!(offset = m.offset, error = %e, "skipping a record of {SILENCES_TOPIC} that is not a silence")
            }
            None => {}
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn silence(id: &str, matchers: &[(&str, &str, bool)], ends_in: i64) -> Silence {
        let now = SystemTime::now();
        Silence {
            id: id.into(),
            matchers: matchers
                .iter()
                .map(|(n, v, eq)| Matcher { name: n.to_string(), value: v.to_string(), is_equal: *eq, is_regex: false })
                .collect(),
            starts_at: now - Duration::from_secs(1),
            ends_at: if ends_in >= 0 {
                now + Duration::from_secs(ends_in as u64)
            } else {
                now - Duration::from_secs(ends_in.unsigned_abs())
            },
            created_by: "test".into(),
            comment: String::new(),
        }
    }

    #[test]
    fn matchers_states_and_the_newest_record_of_an_id() {
        let s = Silences::with_files(vec![silence("file:a.yaml#0", &[("merchant_id", "7", true)], 60)]);
        assert!(s.silenced(&labels(&[("alertname", "X"), ("merchant_id", "7")])));
        assert!(!s.silenced(&labels(&[("alertname", "X"), ("merchant_id", "8")])));
        s.apply(silence("s1", &[("alertname", "X", true), ("severity", "page", false)], 60));
        assert!(s.silenced(&labels(&[("alertname", "X"), ("severity", "ticket")])));
        assert!(!s.silenced(&labels(&[("alertname", "X"), ("severity", "page")])), "isEqual false");
        let ids = s.matching(&labels(&[("alertname", "X"), ("merchant_id", "7")]), SystemTime::now());
        assert_eq!(ids, vec!["file:a.yaml#0".to_string(), "s1".to_string()]);
        // Expiring s1 (the same id again, ending in the past) lifts it.
        s.apply(silence("s1", &[("alertname", "X", true)], -1));
        assert!(!s.silenced(&labels(&[("alertname", "X")])));
        assert_eq!(s.get("s1").unwrap().state(SystemTime::now()), "expired");
        assert_eq!(s.list().len(), 2);
    }

    #[test]
    fn the_api_format_round_trips_and_bad_silences_name_the_problem() {
        let json = r#"{"matchers":[{"name":"alertname","value":"PaymentFailuresHigh"}],
            "endsAt":"2030-01-01T00:00:00Z","createdBy":"oncall","comment":"deploy"}"#;
        let s: Silence = serde_json::from_str(json).unwrap();
        assert!(s.matchers[0].is_equal && s.state(SystemTime::now()) == "active");
        s.validate().unwrap();
        let back: Silence = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        let refused = |s: Silence| s.validate().unwrap_err().to_string();
        assert!(refused(silence("x", &[], 60)).contains("at least one matcher"));
        assert!(refused(silence("x", &[("a", "1", false)], 60)).contains("require a label value"));
        assert!(refused(silence("x", &[("a", "1", true)], -5)).contains("endsAt"));
        let mut regex = silence("x", &[("a", "1.*", true)], 60);
        regex.matchers[0].is_regex = true;
        assert!(refused(regex).contains("regex"));
        assert!(serde_json::from_str::<Silence>(r#"{"matchers":[],"endsAt":"2030-01-01T00:00:00Z","x":1}"#).is_err());
    }
}
