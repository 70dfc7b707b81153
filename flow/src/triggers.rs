//! Table-triggered DAGs (`schedule: {tables: [...], mode: any|all, debounce}`): which DAG runs
//! next because its input tables committed.
//!
//! The leading scheduler learns of commits two ways: at once from the lake's commit signals on
//! the bus ([`weir_lake::signal`], read from the end of `weir.lake.commits` when it starts to
//! lead), and, for whatever a signal did not bring (a writer without the bus, a signal lost), from
//! the tables' Delta logs each time it reads the DAG folder ([`Triggers::reconcile`] lists only the
//! log entries after the version it knows: no table is scanned). The metadata DB keeps, per DAG
//! and table, the version the DAG's last run covered (its cursor); a DAG seen for the first time
//! starts at the tables' versions then. A run is due when a table (`any`) or every table (`all`)
//! has committed past its cursor, `debounce` after the first such commit was seen; it records the
//! versions it covers, and the cursors move to them in the same transaction, so a new leader
//! neither repeats nor skips a run.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::{sync::mpsc, time::Instant};
use weir_bus::{Bus, BusError, ConsumerConfig, TopicPartition};
use weir_lake::{
    Lake,
    signal::{COMMITS_TOPIC, Commit},
};

use crate::{
    dag::Dag,
    schedule::{Interval, Schedule, TableTrigger, TriggerMode},
    store::{InputVersion, Inputs, Store, StoreError},
};

/// What the leader knows of the watched tables and of the DAGs waiting on them.
#[derive(Default)]
pub(crate) struct Triggers {
    /// The latest version known per table (-1: no commit yet).
    latest: HashMap<String, i64>,
    /// When each table's latest known commit was seen.
    seen_at: HashMap<String, DateTime<Utc>>,
    /// Per DAG: the table versions its last run covered, as the metadata DB holds them.
    cursors: HashMap<String, BTreeMap<String, i64>>,
    /// DAGs with commits to run for: since when, and when the run is due.
    pending: HashMap<String, (DateTime<Utc>, Instant)>,
}

/// A run a table trigger asks for.
pub(crate) struct Due {
    pub dag: Arc<Dag>,
    pub interval: Interval,
    pub inputs: Inputs,
}

fn trigger(dag: &Dag) -> Option<&TableTrigger> {
    match &dag.schedule {
        Schedule::Tables(t) => Some(t),
        _ => None,
    }
}

impl Triggers {
    /// Takes note of a commit signal.
    pub fn heard(&mut self, commit: &Commit) {
        let version = i64::try_from(commit.version).unwrap_or(i64::MAX);
        let latest = self.latest.entry(commit.table.clone()).or_insert(-1);
        if version > *latest {
            *latest = version;
            let at = DateTime::from_timestamp_millis(commit.ts_ms).unwrap_or_else(Utc::now);
            self.seen_at.insert(commit.table.clone(), at);
        }
    }

    /// Reads the watched tables' latest versions from their logs, then the DAGs' cursors from the
    /// metadata DB, starting the cursors of DAGs (or tables) seen for the first time.
    pub async fn reconcile(
        &mut self,
        lake: &Lake,
        store: &Store,
        dags: &HashMap<String, Arc<Dag>>,
    ) -> Result<(), StoreError> {
        let watched: BTreeSet<&String> = dags.values().filter_map(|d| trigger(d)).flat_map(|t| &t.tables).collect();
        for table in watched {
            let known = self.latest.get(table).copied().unwrap_or(-1);
            match lake.latest_version(table, u64::try_from(known).ok()).await {
                Ok(v) => {
                    let v = v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
                    if v > known {
                        self.latest.insert(table.clone(), v);
                        self.seen_at.insert(table.clone(), Utc::now());
                    } else {
                        self.latest.entry(table.clone()).or_insert(v);
                    }
                }
                Err(e) => tracing::warn!(table, error = %e, "cannot read the table's latest version; trying again"),
            }
        }
        self.cursors.retain(|dag_id, _| dags.get(dag_id).is_some_and(|d| trigger(d).is_some()));
        for dag in dags.values() {
            let Some(t) = trigger(dag) else { continue };
            let mut cursors = store.table_cursors(&dag.id).await?;
            let new: Vec<(String, i64)> = t
                .tables
                .iter()
                .filter(|table| !cursors.contains_key(*table))
                .filter_map(|table| Some((table.clone(), *self.latest.get(table)?)))
                .collect();
            if !new.is_empty() {
                tracing::info!(dag = %dag.id, tables = ?new, "watching tables for commits from their versions now");
                store.start_cursors(&dag.id, &new).await?;
                cursors.extend(new);
            }
            self.cursors.insert(dag.id.clone(), cursors);
        }
        Ok(())
    }

    /// The runs due now, among `dags`; notes when the others with commits will be due.
    pub fn due(&mut self, dags: &HashMap<String, Arc<Dag>>) -> Vec<Due> {
        let now = Instant::now();
        // A DAG whose file went away or no longer waits on tables waits for nothing (a pending
        // entry left behind would keep the loop's timer in the past).
        self.pending.retain(|id, _| dags.get(id).is_some_and(|d| trigger(d).is_some()));
        let mut out = Vec::new();
        for dag in dags.values() {
            let Some(t) = trigger(dag) else { continue };
            let Some(cursors) = self.cursors.get(&dag.id) else { continue };
            let mut inputs = Inputs::new();
            for table in &t.tables {
                let (Some(&previous), Some(&version)) = (cursors.get(table), self.latest.get(table)) else {
                    continue;
                };
                inputs.insert(table.clone(), InputVersion { version: version.max(previous), previous });
            }
            let changed = inputs.values().filter(|i| i.changed()).count();
            let ready = match t.mode {
                TriggerMode::Any => changed > 0,
                TriggerMode::All => changed == t.tables.len(),
            };
            if !ready {
                self.pending.remove(&dag.id);
                continue;
            }
            let since = inputs
                .iter()
                .filter(|(_, i)| i.changed())
                .filter_map(|(table, _)| self.seen_at.get(table).copied())
                .min()
                .unwrap_or_else(Utc::now);
            let (since, at) = *self.pending.entry(dag.id.clone()).or_insert((since, now + t.debounce));
            if at <= now {
                out.push(Due {
                    dag: dag.clone(),
                    interval: Interval { start: since, end: Utc::now().max(since) },
                    inputs,
                });
            }
        }
        out
    }

    /// When the next pending run is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(_, at)| *at).min()
    }

    /// `dag_id`'s due run cannot start yet (paused, or enough runs active): looked at again at `until`.
    pub fn postpone(&mut self, dag_id: &str, until: Instant) {
        if let Some((_, at)) = self.pending.get_mut(dag_id) {
            *at = until;
        }
    }

    /// A run was created for `dag_id` covering `inputs`: its cursors move there.
    pub fn created(&mut self, dag_id: &str, inputs: &Inputs) {
        self.pending.remove(dag_id);
        let cursors = self.cursors.entry(dag_id.to_string()).or_default();
        for (table, input) in inputs {
            cursors.insert(table.clone(), input.version);
        }
    }
}

/// Follows `weir.lake.commits` from its end (positioned before this returns), sending each
/// commit to `to` until `to` closes.
pub(crate) async fn follow(
    bus: Arc<dyn Bus>,
    to: mpsc::UnboundedSender<Commit>,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    weir_lake::signal::ensure_topic(bus.as_ref()).await?;
    let mut consumer = bus.consumer(ConsumerConfig::new("weir-flow-triggers")).await?;
    let tp = TopicPartition::new(COMMITS_TOPIC, 0);
    consumer.assign(std::slice::from_ref(&tp)).await?;
    let end = bus.end_offsets(COMMITS_TOPIC).await?.first().copied().unwrap_or(0);
    consumer.seek(&tp, end).await?;
    Ok(tokio::spawn(async move {
        loop {
            match consumer.poll(Duration::from_millis(500)).await {
                Ok(messages) => {
                    for m in messages {
                        let Some(commit) = m.value.as_deref().and_then(Commit::parse) else { continue };
                        if to.send(commit).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading lake commit signals failed; the DAG folder's next read finds the commits");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if to.is_closed() {
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dags(texts: &[(&str, &str)]) -> HashMap<String, Arc<Dag>> {
        texts
            .iter()
            .map(|(id, text)| {
                let d = crate::dag::parse(std::path::Path::new(&format!("{id}.yaml")), text).unwrap();
                (d.id.clone(), Arc::new(d))
            })
            .collect()
    }

    fn commit(table: &str, version: u64) -> Commit {
        Commit { table: table.into(), version, ts_ms: 0, operation: "append".into() }
    }

    #[test]
    fn debounced_runs_wait_and_a_dag_gone_leaves_nothing_pending() {
        let on = dags(&[("d", "schedule: {tables: [raw.a], debounce: 1h}\ntasks:\n  - {id: t, script: [\"true\"]}\n")]);
        let mut t = Triggers::default();
        t.cursors.insert("d".into(), BTreeMap::from([("raw.a".to_string(), 0)]));
        t.heard(&commit("raw.a", 1));
        assert!(t.due(&on).is_empty(), "debounced for an hour");
        assert!(t.next_due().is_some());
        t.heard(&commit("raw.a", 2));
        assert!(t.due(&on).is_empty());
        // The file now has a cron schedule: nothing is pending any more.
        let cron =
            dags(&[("d", "schedule: '@daily'\nstart_date: 2026-01-01\ntasks:\n  - {id: t, script: [\"true\"]}\n")]);
        assert!(t.due(&cron).is_empty());
        assert_eq!(t.next_due(), None, "no timer left in the past");
    }

    #[test]
    fn all_needs_every_table_and_any_one() {
        let both = "tasks:\n  - {id: t, script: [\"true\"]}\n";
        let on = dags(&[
            ("all", &format!("schedule: {{tables: [raw.a, raw.b], mode: all}}\n{both}")),
            ("any", &format!("schedule: {{tables: [raw.a, raw.b]}}\n{both}")),
        ]);
        let mut t = Triggers::default();
        for d in ["all", "any"] {
            t.cursors.insert(d.into(), BTreeMap::from([("raw.a".to_string(), 3), ("raw.b".to_string(), -1)]));
        }
        t.heard(&commit("raw.b", 0));
        t.heard(&commit("raw.a", 2)); // older than the cursor: nothing new
        let due: Vec<String> = t.due(&on).into_iter().map(|d| d.dag.id.clone()).collect();
        assert_eq!(due, ["any"]);
        t.created("any", &Inputs::from([("raw.b".to_string(), InputVersion { version: 0, previous: -1 })]));
        t.heard(&commit("raw.a", 4));
        let due = t.due(&on);
        assert_eq!(due.len(), 2, "all: both tables moved; any: raw.a moved");
        let all = due.iter().find(|d| d.dag.id == "all").unwrap();
        assert_eq!(all.inputs["raw.a"], InputVersion { version: 4, previous: 3 });
        assert_eq!(all.inputs["raw.b"], InputVersion { version: 0, previous: -1 });
    }
}
