//! Commit signals: every commit that changes a table's data (the lake writer's appends, a
//! `current.*` rebuild, a SQL task's view) is announced on the bus topic `weir.lake.commits` as
//! one small JSON record, so that whoever waits for a table (the scheduler's table-triggered
//! DAGs) hears of it at once instead of scanning tables.
//!
//! A signal is a hint, never the truth: it is sent after the commit, best effort (a failure is
//! logged and counted, the commit stands), and a reader that missed some finds the versions in
//! the tables' Delta logs. Compaction and vacuum change no data and send none.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use weir_bus::{Bus, BusError, Producer, Record};

/// The topic commit signals go to (one partition, so they keep their order).
pub const COMMITS_TOPIC: &str = "weir.lake.commits";

/// One commit to a lake table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The table (`raw.x`, `current.x`, `views.x`).
    pub table: String,
    /// The version the commit made.
    pub version: u64,
    /// When it committed, in milliseconds since the epoch.
    pub ts_ms: i64,
    /// What committed it: `append` (lake writer), `current`, `view`.
    pub operation: String,
}

impl Commit {
    /// The record of this commit (key: the table).
    pub fn record(&self) -> Record {
        Record {
            key: Some(self.table.clone().into_bytes().into()),
            value: Some(serde_json::to_vec(self).expect("a commit serializes").into()),
            ..Record::default()
        }
    }

    /// A commit from a record's value, if it is one.
    pub fn parse(value: &[u8]) -> Option<Commit> {
        serde_json::from_slice(value).ok()
    }
}

/// Announces commits on a bus. Cheap to clone; the producer is made on first use.
#[derive(Clone)]
pub struct Signals {
    bus: Arc<dyn Bus>,
    producer: Arc<tokio::sync::OnceCell<Box<dyn Producer>>>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").field("bus", &self.bus.backend()).finish()
    }
}

impl Signals {
    /// Signals on `bus`.
    pub fn new(bus: Arc<dyn Bus>) -> Signals {
        Signals { bus, producer: Arc::default() }
    }

    /// Announces that `table` reached `version` (best effort: a failure is logged and counted).
    pub async fn committed(&self, table: &str, version: u64, operation: &str) {
        let commit = Commit {
            table: table.to_string(),
            version,
            ts_ms: chrono::Utc::now().timestamp_millis(),
            operation: operation.to_string(),
        };
        let outcome = match self.send(&commit).await {
            Ok(()) => "sent",
            Err(e) => {
                tracing::warn!(table, version, error = %e, "could not announce a lake commit on {COMMITS_TOPIC}; readers find it in the table's log");
                "failed"
            }
        };
        metrics::counter!("weir_lake_commit_signals_total", "outcome" => outcome).increment(1);
    }

    async fn send(&self, commit: &Commit) -> Result<(), BusError> {
        let producer = self
            .producer
            .get_or_try_init(|| async {
                ensure_topic(self.bus.as_ref()).await?;
                self.bus.producer().await
            })
            .await?;
        producer.send(COMMITS_TOPIC, vec![commit.record()]).await?;
        Ok(())
    }
}

/// Creates [`COMMITS_TOPIC`] if it is not there.
pub async fn ensure_topic(bus: &dyn Bus) -> Result<(), BusError> {
    match bus.create_topic(COMMITS_TOPIC, 1).await {
        Ok(()) | Err(BusError::TopicExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
