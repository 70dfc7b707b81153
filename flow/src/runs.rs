//! What users do to runs from the command line or the API: trigger a manual run, backfill a
//! date range, clear task instances so they run again. Each writes to the metadata DB; the
//! scheduler picks the change up on its next poll.

use chrono::{DateTime, Utc};

use crate::{
    FlowError,
    dag::Dag,
    schedule::{Interval, Schedule},
    store::Store,
};

/// Creates a manual run of `dag` (its current version) with `conf` over its params; the data
/// interval is the latest complete one (or the instant `logical_date` when given or when the DAG
/// has no schedule). Returns the run id.
pub async fn trigger(
    store: &Store,
    dag: &Dag,
    conf: serde_json::Map<String, serde_json::Value>,
    logical_date: Option<DateTime<Utc>>,
) -> Result<String, FlowError> {
    store.upsert_dag(dag).await?;
    let now = Utc::now();
    let interval = match logical_date {
        Some(t) => {
            dag.schedule.first(t, dag.timezone).filter(|i| i.start == t).unwrap_or(Interval { start: t, end: t })
        }
        None => {
            dag.schedule.latest_complete(dag.start_date, dag.timezone, now).unwrap_or(Interval { start: now, end: now })
        }
    };
    let run_id = format!("manual__{}", now.to_rfc3339());
    if !store.create_run(dag, &run_id, "manual", interval, &conf).await? {
        return Err(FlowError::Invalid(format!("DAG {}: run {run_id} exists already", dag.id)));
    }
    Ok(run_id)
}

/// Creates a backfill run for every data interval of `dag` that starts in `[from, to]` and has
/// no run yet. Returns the run ids created.
pub async fn backfill(
    store: &Store,
    dag: &Dag,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<String>, FlowError> {
    if matches!(dag.schedule, Schedule::None | Schedule::Once | Schedule::Tables(_)) {
        return Err(FlowError::Invalid(format!("DAG {} has no recurring time schedule to backfill", dag.id)));
    }
    if from > to {
        return Err(FlowError::Invalid(format!("backfill --from {from} is after --to {to}")));
    }
    store.upsert_dag(dag).await?;
    let existing: Vec<Interval> = store.all_runs(&dag.id).await?.iter().map(|r| r.interval).collect();
    let mut created = Vec::new();
    let mut next = dag.schedule.first(from.max(dag.start_date), dag.timezone);
    while let Some(interval) = next {
        if interval.start > to || interval.end > Utc::now() {
            break;
        }
        if !existing.iter().any(|i| i.start == interval.start) {
            let run_id = format!("backfill__{}", interval.start.to_rfc3339());
            if store.create_run(dag, &run_id, "backfill", interval, &serde_json::Map::new()).await? {
                created.push(run_id);
            }
        }
        next = dag.schedule.next(interval, dag.timezone);
    }
    Ok(created)
}

/// Which task instances a clear resets.
#[derive(Debug, Clone, Default)]
pub struct ClearSpec {
    /// Only this task (and, with `downstream`, what depends on it); all tasks when `None`.
    pub task: Option<String>,
    /// Include tasks downstream of `task`.
    pub downstream: bool,
    /// Only instances that failed or failed upstream.
    pub only_failed: bool,
    /// Only this run; every run of the DAG when `None`.
    pub run_id: Option<String>,
    /// SQL tasks read the lake tables' latest versions, not those their earlier tries read.
    pub latest: bool,
}

/// Clears task instances so the scheduler runs them again (a new try each; earlier tries stay
/// in the history). Returns (run id, task ids) of what was cleared.
///
/// A mapped task cleared expands anew (its instances run again, with the items of the new
/// expansion). Named on its own (`task[3]`), or failed when only failed instances are cleared,
/// a mapped instance runs again with its item, and its task waits for it again.
pub async fn clear(store: &Store, dag: &Dag, spec: &ClearSpec) -> Result<Vec<(String, Vec<String>)>, FlowError> {
    let instance = spec.task.as_deref().and_then(|t| crate::dag::mapped_index(t).map(|_| t.to_string()));
    let tasks: Vec<String> = match &spec.task {
        Some(t) => {
            let Some(task) = dag.task(t) else {
                return Err(FlowError::Invalid(format!("DAG {} has no task {t:?}", dag.id)));
            };
            let mut tasks: Vec<String> = match spec.downstream {
                true => dag.downstream_closure(&task.id).into_iter().collect(),
                false => vec![task.id.clone()],
            };
            if instance.is_some() {
                tasks.retain(|id| *id != task.id); // the instance, not its whole task
            }
            tasks
        }
        None => dag.tasks.iter().map(|t| t.id.clone()).collect(),
    };
    let runs = match &spec.run_id {
        Some(r) => vec![store.run(&dag.id, r).await?],
        None => store.all_runs(&dag.id).await?,
    };
    let failed = |ti: &crate::store::TaskRow| {
        matches!(ti.state, crate::rules::TaskState::Failed | crate::rules::TaskState::UpstreamFailed)
    };
    let mut cleared = Vec::new();
    for run in runs {
        let instances = store.tasks(&dag.id, &run.run_id).await?;
        let mut chosen: Vec<(String, u32)> = Vec::new();
        let mut mapped: Vec<String> = Vec::new();
        for ti in &instances {
            let pick = match &ti.parent {
                Some(parent) => {
                    let named = instance.as_deref() == Some(ti.task_id.as_str());
                    let again =
                        (named || (spec.only_failed && tasks.contains(parent))) && (!spec.only_failed || failed(ti));
                    if again && !mapped.contains(parent) {
                        mapped.push(parent.clone());
                    }
                    again
                }
                None => tasks.contains(&ti.task_id) && (!spec.only_failed || failed(ti)),
            };
            if pick {
                chosen.push((ti.task_id.clone(), dag.task(&ti.task_id).map_or(0, |t| t.retries)));
            }
        }
        // A mapped task whose instances run again waits for them; it does not expand anew.
        chosen.retain(|(id, _)| !mapped.contains(id));
        if chosen.is_empty() {
            continue;
        }
        store.clear(&dag.id, &run.run_id, &chosen, &mapped, spec.latest).await?;
        cleared.push((run.run_id.clone(), chosen.into_iter().map(|(t, _)| t).collect()));
    }
    Ok(cleared)
}

/// The text of a try's log: a file for a local lake, an object for a lake on S3. A try that has
/// written nothing (so far) has no file; its log says so.
pub async fn read_log(lake: &weir_lake::Lake, log: &str) -> Result<Vec<u8>, FlowError> {
    if log.starts_with("s3://") {
        let url = url::Url::parse(log).map_err(|e| FlowError::Invalid(format!("log URL {log}: {e}")))?;
        lake.get_object(&url).await.map_err(|e| FlowError::Invalid(format!("reading {log}: {e}")))
    } else {
        match tokio::fs::read(log).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NO_OUTPUT.as_bytes().to_vec()),
            Err(e) => Err(FlowError::Invalid(format!("reading {log}: {e}"))),
        }
    }
}

/// A part of a log: the bytes `[start, start + bytes.len())` of a log of `total` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPart {
    /// Where the part starts.
    pub start: u64,
    /// The log's size now (it grows while the try runs).
    pub total: u64,
    /// The part.
    pub bytes: Vec<u8>,
}

/// At most `limit` bytes of a try's log from `offset` (past the end: none), or its last `limit`
/// bytes when `offset` is `None`, so a 50 MB log is read a page at a time. A local log is read
/// with a seek; an object on S3 is fetched whole and cut (logs move there once the try ended).
pub async fn read_log_part(
    lake: &weir_lake::Lake,
    log: &str,
    offset: Option<u64>,
    limit: u64,
) -> Result<LogPart, FlowError> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let range = |total: u64| {
        let start = offset.unwrap_or(total.saturating_sub(limit)).min(total);
        (start, limit.min(total - start))
    };
    if log.starts_with("s3://") {
        let all = read_log(lake, log).await?;
        let (start, len) = range(all.len() as u64);
        let bytes = all[start as usize..(start + len) as usize].to_vec();
        return Ok(LogPart { start, total: all.len() as u64, bytes });
    }
    let reading = |e: std::io::Error| FlowError::Invalid(format!("reading {log}: {e}"));
    let mut file = match tokio::fs::File::open(log).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes = NO_OUTPUT.as_bytes().to_vec();
            return Ok(LogPart { start: 0, total: bytes.len() as u64, bytes });
        }
        Err(e) => return Err(reading(e)),
    };
    let total = file.metadata().await.map_err(reading)?.len();
    let (start, len) = range(total);
    file.seek(std::io::SeekFrom::Start(start)).await.map_err(reading)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes).await.map_err(reading)?;
    Ok(LogPart { start, total, bytes })
}

/// The log of a try that wrote nothing (its state and times are in `weir dags tasks`).
pub const NO_OUTPUT: &str = "[weir] no output\n";
