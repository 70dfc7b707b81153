//! What the operator console shows of the orchestrator, each answer in a fixed, small number of
//! metadata-DB queries whatever the number of DAGs, runs or tasks: the DAG list with every DAG's
//! newest runs and next run ([`dag_list`]), a DAG's grid of runs × tasks ([`grid`]), its graph
//! in layers ([`graph`]) and a task instance's tries with why it is not running ([`task_detail`]).
//! DAG versions are parsed once per (DAG, file hash) and kept ([`Versions`]): a hash names one
//! file text, so a kept parse never goes stale.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{
    dag::{self, Dag, TaskKind},
    rules::TaskState,
    schedule::Schedule,
    store::{DagRow, RunRow, Store, StoreError, TaskKey, TaskRow},
};

/// Runs of each DAG the list shows.
pub const LIST_RUNS: usize = 5;

/// A DAG version's parse, by (DAG id, file hash); `None` when it does not parse.
type Parsed = HashMap<(String, String), Option<Arc<Dag>>>;

/// Parsed DAG versions by (DAG id, file hash).
#[derive(Default)]
pub struct Versions {
    parsed: Mutex<Parsed>,
}

impl Versions {
    /// Version `hash` of DAG `dag_id` as the metadata DB keeps it, parsed (`None` when the DB has
    /// no such version or its text no longer parses, e.g. after a DAG-format change).
    pub async fn get(&self, store: &Store, dag_id: &str, hash: &str) -> Result<Option<Arc<Dag>>, StoreError> {
        let key = (dag_id.to_string(), hash.to_string());
        if let Some(known) = self.parsed.lock().expect("not poisoned").get(&key) {
            return Ok(known.clone());
        }
        let parsed = store
            .version_source(dag_id, hash)
            .await?
            .and_then(|(source, file)| dag::parse(Path::new(&file), &source).ok())
            .map(Arc::new);
        self.parsed.lock().expect("not poisoned").insert(key, parsed.clone());
        Ok(parsed)
    }
}

/// A time as RFC 3339 text, or null.
pub(crate) fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| Value::String(t.to_rfc3339()))
}

/// A run as the API shows it.
pub(crate) fn run_json(r: &RunRow) -> Value {
    json!({
        "run_id": r.run_id, "run_type": r.run_type, "state": r.state.as_str(),
        "data_interval_start": r.interval.start.to_rfc3339(), "data_interval_end": r.interval.end.to_rfc3339(),
        "conf": r.conf, "version": r.dag_hash, "created_at": r.created_at.to_rfc3339(),
        "started_at": time(r.started_at), "ended_at": time(r.ended_at), "inputs": r.inputs,
    })
}

/// The next data interval the scheduler will create a run for, after the DAG's cursor (without
/// catchup, an overdue DAG's next run is its latest complete interval), and whether it is due.
fn next_interval(row: &DagRow, d: &Dag) -> Value {
    let now = Utc::now();
    let from = row.last_interval_end.unwrap_or(d.start_date);
    let next = match (row.last_interval_end, &d.schedule) {
        (_, Schedule::None) | (Some(_), Schedule::Once) => None,
        _ => d.schedule.first(from, d.timezone),
    };
    let next = match next {
        Some(i) if !d.catchup && i.end <= now => d.schedule.latest_complete(from, d.timezone, now).or(Some(i)),
        other => other,
    };
    match next.filter(|i| d.end_date.is_none_or(|e| i.start <= e)) {
        Some(i) => json!({"data_interval_start": i.start.to_rfc3339(), "data_interval_end": i.end.to_rfc3339(),
                          "run_after": i.end.to_rfc3339(), "due": i.end <= now}),
        None => Value::Null,
    }
}

/// `GET /api/v1/dags`: every DAG (id, file, schedule, paused, version, owner, description, task
/// count, next run, newest runs' states) and the DAG files refused (file, line, reason).
pub async fn dag_list(store: &Store, versions: &Versions) -> Result<Value, StoreError> {
    let rows = store.dags().await?;
    let mut recent: HashMap<String, Vec<Value>> = HashMap::new();
    for (dag_id, run_id, state) in store.recent_run_states(LIST_RUNS).await? {
        recent.entry(dag_id).or_default().push(json!({"run_id": run_id, "state": state}));
    }
    let mut dags = Vec::with_capacity(rows.len());
    for row in rows {
        let parsed = versions.get(store, &row.dag_id, &row.hash).await?;
        let mut v = json!({
            "dag_id": row.dag_id, "file": row.file, "schedule": row.schedule, "paused": row.paused,
            "version": row.hash, "recent_runs": recent.remove(&row.dag_id).unwrap_or_default(),
        });
        if let Some(d) = parsed {
            v["owner"] = json!(d.owner);
            v["description"] = json!(d.description);
            v["tasks"] = json!(d.tasks.len());
            v["next_run"] = next_interval(&row, &d);
        }
        dags.push(v);
    }
    let errors: Vec<Value> = store
        .import_errors()
        .await?
        .into_iter()
        .map(|e| json!({"file": e.file, "line": e.line, "reason": e.reason}))
        .collect();
    Ok(json!({"dags": dags, "import_errors": errors}))
}

/// `GET /api/v1/dags/{dag}/grid`: the newest `runs` runs (oldest first) and the task ids (the
/// current version's order, then tasks only older versions had), with one cell per run and task:
/// `[state, try number, duration in ms or null]` where `state` indexes `states`, or null where
/// that run's version had no such task. Compact on purpose: 200 tasks × 100 runs is 20,000 cells.
pub async fn grid(store: &Store, current: &Dag, runs: usize) -> Result<Value, StoreError> {
    let mut run_rows = store.runs(&current.id, runs).await?;
    run_rows.reverse();
    let instances = store.recent_tasks(&current.id, runs).await?;
    let mut tasks: Vec<String> = current.tasks.iter().map(|t| t.id.clone()).collect();
    let mut column: HashMap<String, usize> = tasks.iter().cloned().enumerate().map(|(i, t)| (t, i)).collect();
    let row_of: HashMap<&str, usize> = run_rows.iter().enumerate().map(|(i, r)| (r.run_id.as_str(), i)).collect();
    let state_index: HashMap<TaskState, usize> = TaskState::ALL.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let now = Utc::now();
    let mut cells: Vec<Vec<Value>> = vec![Vec::new(); run_rows.len()];
    for ti in &instances {
        let Some(&r) = row_of.get(ti.run_id.as_str()) else { continue };
        if crate::dag::mapped_index(&ti.task_id).is_some() {
            continue; // a mapped task's cell stands for its instances (listed on its page)
        }
        let c = *column.entry(ti.task_id.clone()).or_insert_with(|| {
            tasks.push(ti.task_id.clone());
            tasks.len() - 1
        });
        let row = &mut cells[r];
        if row.len() <= c {
            row.resize(c + 1, Value::Null);
        }
        let duration = match (ti.started_at, ti.ended_at) {
            (Some(s), Some(e)) if e >= s => json!((e - s).num_milliseconds()),
            (Some(s), None) if ti.state == TaskState::Running => json!((now - s).num_milliseconds()),
            _ => Value::Null,
        };
        row[c] = json!([state_index[&ti.state], ti.try_number, duration]);
    }
    for row in &mut cells {
        row.resize(tasks.len(), Value::Null);
    }
    let runs: Vec<Value> = run_rows.iter().map(run_json).collect();
    let states: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
    Ok(json!({"dag_id": current.id, "states": states, "tasks": tasks, "runs": runs, "cells": cells}))
}

/// The graph of a DAG version: tasks with their kind, trigger rule and layer (the longest path
/// from a task without upstream: layers read left to right), and the edges upstream → task.
pub fn graph(d: &Dag) -> Value {
    let mut layer: BTreeMap<&str, usize> = BTreeMap::new();
    // Tasks are acyclic (checked at parse); settle layers by relaxing until nothing moves.
    loop {
        let mut moved = false;
        for t in &d.tasks {
            let l = t.upstream.iter().map(|u| layer.get(u.as_str()).map_or(1, |l| l + 1)).max().unwrap_or(0);
            if layer.get(t.id.as_str()) != Some(&l) {
                layer.insert(&t.id, l);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    let nodes: Vec<Value> = d
        .tasks
        .iter()
        .map(|t| {
            let what = match &t.kind {
                TaskKind::Sql { view, .. } => format!("views.{view}"),
                TaskKind::LakeSnapshot { table } => format!("current.{table}"),
                TaskKind::Script { command, .. } | TaskKind::Branch { command } => command.join(" "),
                _ => String::new(),
            };
            json!({"id": t.id, "group": t.group, "kind": t.kind.name(), "trigger_rule": t.trigger_rule.to_string(),
                   "layer": layer.get(t.id.as_str()), "detail": what, "upstream": t.upstream})
        })
        .collect();
    let edges: Vec<Value> = d.tasks.iter().flat_map(|t| t.upstream.iter().map(move |u| json!([u, t.id]))).collect();
    json!({"nodes": nodes, "edges": edges})
}

/// Why a task instance is not running now, in words an operator acts on; `None` while it runs
/// or once it finished.
async fn why_waiting(
    store: &Store,
    d: &Dag,
    ti: &TaskRow,
    instances: &[TaskRow],
) -> Result<Option<String>, StoreError> {
    Ok(match ti.state {
        TaskState::None => {
            let upstream = d.task(&ti.task_id).map(|t| t.upstream.clone()).unwrap_or_default();
            let waiting: Vec<String> = instances
                .iter()
                .filter(|u| upstream.contains(&u.task_id) && !u.state.is_finished())
                .map(|u| format!("{} ({})", u.task_id, u.state))
                .collect();
            Some(if waiting.is_empty() {
                "its upstream tasks are done: the scheduler schedules it on its next pass".into()
            } else {
                format!("waiting on upstream: {}", waiting.join(", "))
            })
        }
        TaskState::Scheduled => {
            let busy = store.busy_in_pool(&ti.pool).await?;
            Some(format!(
                "waiting for a free slot: {busy} task(s) hold pool {:?} now; the DAG runs at most {} at once \
                 (max_active_tasks)",
                ti.pool, d.max_active_tasks
            ))
        }
        TaskState::Mapped => {
            let mine: Vec<&TaskRow> = instances
                .iter()
                .filter(|t| t.parent.as_deref() == Some(ti.task_id.as_str()) && t.state != TaskState::Removed)
                .collect();
            let done = mine.iter().filter(|t| t.state.is_finished()).count();
            Some(format!("waiting for its mapped instances: {done} of {} finished", mine.len()))
        }
        TaskState::Queued => {
            let workers = store.workers().await?;
            let live = workers.iter().filter(|w| w.state == "active" && w.queues.contains(&ti.queue)).count();
            Some(if live == 0 && !workers.is_empty() {
                format!("queued, but no live worker takes queue {:?}", ti.queue)
            } else {
                format!("queued for an executor slot on queue {:?} ({live} live worker(s) take it)", ti.queue)
            })
        }
        TaskState::UpForRetry => Some(match ti.next_try_at {
            Some(at) => format!(
                "try {} failed; try {} of {} at {} UTC",
                ti.try_number,
                ti.try_number + 1,
                ti.max_tries,
                at.format("%H:%M:%S")
            ),
            None => format!("try {} failed; the next try is due", ti.try_number),
        }),
        _ => None,
    })
}

/// `GET /api/v1/dags/{dag}/runs/{run}/tasks/{task}`: a task instance of the run's DAG version
/// `d`: its state, tries (state, start, end, reason) and why it is not running.
pub async fn task_detail(store: &Store, d: &Dag, key: &TaskKey) -> Result<Option<Value>, StoreError> {
    let instances = store.tasks(&key.dag_id, &key.run_id).await?;
    let Some(ti) = instances.iter().find(|t| t.task_id == key.task_id) else { return Ok(None) };
    let tries: Vec<Value> = store
        .tries(key)
        .await?
        .into_iter()
        .map(|t| {
            json!({"try_number": t.try_number, "state": t.state.as_str(), "started_at": t.started_at.to_rfc3339(),
                   "ended_at": time(t.ended_at), "reason": t.reason})
        })
        .collect();
    let why = why_waiting(store, d, ti, &instances).await?;
    let task = d.task(&key.task_id);
    // An approval task: what it asks, who may decide, and the decision on its latest try.
    let approval = match task.map(|t| &t.kind) {
        Some(crate::dag::TaskKind::Approval { message, approvers, timeout }) => {
            let decision = match ti.try_number {
                0 => None,
                n => store.decision(key, n).await?,
            };
            json!({"message": message, "approvers": approvers, "timeout_s": timeout.as_secs(), "decision": decision,
                   "waiting": ti.state == crate::rules::TaskState::Running && decision.is_none()})
        }
        _ => Value::Null,
    };
    // A mapped task: its instances; an instance: its index and item.
    let mapped = match task.and_then(|t| t.map.as_ref()) {
        Some(_) if crate::dag::mapped_index(&key.task_id).is_none() => {
            let mut list: Vec<(u32, &crate::store::TaskRow)> = instances
                .iter()
                .filter(|t| t.parent.as_deref() == Some(key.task_id.as_str()))
                .filter_map(|t| Some((crate::dag::mapped_index(&t.task_id)?.1, t)))
                .collect();
            list.sort_by_key(|(i, _)| *i);
            json!(list.iter().map(|(i, t)| json!({"index": i, "task_id": t.task_id, "state": t.state.as_str(), "try_number": t.try_number})).collect::<Vec<_>>())
        }
        _ => Value::Null,
    };
    let item = match store.map_item(key).await? {
        Some((index, item)) => json!({"index": index, "item": item}),
        None => Value::Null,
    };
    Ok(Some(json!({
        "dag_id": key.dag_id, "run_id": key.run_id, "task_id": key.task_id,
        "state": ti.state.as_str(), "try_number": ti.try_number, "max_tries": ti.max_tries,
        "pool": ti.pool, "queue": ti.queue, "priority": ti.priority,
        "next_try_at": time(ti.next_try_at), "started_at": time(ti.started_at), "ended_at": time(ti.ended_at),
        "kind": task.map(|t| t.kind.name()), "upstream": task.map(|t| t.upstream.clone()),
        "downstream": d.downstream(&key.task_id).map(|t| t.id.clone()).collect::<Vec<_>>(),
        "tries": tries, "why_not_running": why, "approval": approval, "mapped": mapped, "map_item": item,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_graph_lays_tasks_out_by_their_longest_path_from_a_root() {
        let text = "schedule: null\ntasks:\n\
                    - {id: d, script: [\"true\"], upstream: [b, c]}\n\
                    - {id: b, script: [\"true\"], upstream: [a]}\n\
                    - {id: c, script: [\"true\"], upstream: [a, b]}\n\
                    - {id: a, script: [\"true\"]}\n\
                    - {id: lone, script: [\"true\"]}\n";
        let d = dag::parse(Path::new("g.yaml"), text).unwrap();
        let g = graph(&d);
        let layer = |id: &str| g["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap()["layer"].clone();
        assert_eq!([layer("a"), layer("b"), layer("c"), layer("d"), layer("lone")], [0, 1, 2, 3, 0].map(|l| json!(l)));
        assert_eq!(g["edges"].as_array().unwrap().len(), 5);
    }
}
