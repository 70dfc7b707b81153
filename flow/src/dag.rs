//! DAG files: the YAML a data engineer drops into `dags/`, parsed and checked into a [`Dag`].
//!
//! One file holds one DAG. Everything is checked when the file is read — unknown keys, task ids,
//! upstream references, cycles, schedules, time zones, durations — and an error names the file,
//! the line when the YAML parser knows it, and the reason, so one broken file never hides the
//! others ([`load_dir`] returns the good DAGs and the errors side by side).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use weir_notify::Receiver;

use crate::{rules::TriggerRule, schedule::Schedule};

/// Why a DAG file was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DagError {
    /// The file.
    pub file: String,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// A checked DAG.
#[derive(Debug, Clone, PartialEq)]
pub struct Dag {
    /// Its id (the file's `dag_id`, or the file name without `.yaml`).
    pub id: String,
    /// Free text.
    pub description: String,
    /// Who answers for it (a team or a person), shown in the console.
    pub owner: String,
    /// When runs are due.
    pub schedule: Schedule,
    /// The time zone of the schedule and of dates written without one.
    pub timezone: Tz,
    /// The first data interval starts at or after this.
    pub start_date: DateTime<Utc>,
    /// No data interval starts after this.
    pub end_date: Option<DateTime<Utc>>,
    /// Whether missed intervals since `start_date` are all run (true) or only the latest.
    pub catchup: bool,
    /// Runs of this DAG running at once.
    pub max_active_runs: usize,
    /// Task instances of one run running at once.
    pub max_active_tasks: usize,
    /// Defaults of `{{ params.* }}`, overridden by a manual run's `--conf`.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Tasks in file order.
    pub tasks: Vec<Task>,
    /// Paused when first seen.
    pub paused_at_creation: bool,
    /// The file it came from.
    pub file: PathBuf,
    /// SHA-256 of the file's bytes: the DAG version a run records.
    pub hash: String,
    /// The file's text (kept with each version so a run finishes with the version it began with).
    pub source: String,
    /// A run not finished this long after its data interval's end has missed its deadline.
    pub deadline: Option<Duration>,
    /// Where notifications can go (webhook, Slack, Jira), by name.
    pub receivers: Vec<Receiver>,
    /// Who is told of what.
    pub notifications: Notifications,
}

/// `notifications:` of a DAG file: receiver names per occasion.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Notifications {
    /// A task failed with no retry left, or the run failed.
    pub on_failure: Vec<String>,
    /// A task failed and will be tried again.
    pub on_retry: Vec<String>,
    /// The run succeeded.
    pub on_success: Vec<String>,
    /// The run had not finished `deadline` after its data interval's end.
    pub on_deadline_missed: Vec<String>,
}

impl Dag {
    /// The task with id `id`; for a mapped instance (`<task>[<index>]`), its task.
    pub fn task(&self, id: &str) -> Option<&Task> {
        let id = mapped_index(id).map_or(id, |(parent, _)| parent);
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The tasks that list `id` as upstream.
    pub fn downstream(&self, id: &str) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(move |t| t.upstream.iter().any(|u| u == id))
    }

    /// `id` and every task downstream of it, transitively.
    pub fn downstream_closure(&self, id: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo = vec![id.to_string()];
        while let Some(t) = todo.pop() {
            if out.insert(t.clone()) {
                todo.extend(self.downstream(&t).map(|d| d.id.clone()));
            }
        }
        out
    }
}

/// One task of a DAG.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Unique within the DAG (`<group>.<id>` for a task of a group).
    pub id: String,
    /// The task group it belongs to (`a.b` when nested), shown grouped.
    pub group: Option<String>,
    /// What it runs.
    pub kind: TaskKind,
    /// Tasks that must finish first.
    pub upstream: Vec<String>,
    /// When it runs, given how its upstream tasks ended.
    pub trigger_rule: TriggerRule,
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry.
    pub retry_delay: Duration,
    /// Double the wait on each further retry…
    pub retry_exponential_backoff: bool,
    /// … up to this.
    pub max_retry_delay: Duration,
    /// A try running longer than this is killed and failed.
    pub execution_timeout: Option<Duration>,
    /// The queue a worker takes it from.
    pub queue: String,
    /// Higher runs first when slots are short.
    pub priority: i64,
    /// The pool whose slots it takes.
    pub pool: String,
    /// Expanded at run time into one instance per item (see [`MapSpec`]).
    pub map: Option<MapSpec>,
}

/// `map:` — a task expanded at run time into one instance per item, `<task>[0]`, `<task>[1]`…,
/// each with its own tries, retries and log; its templates read the item as `{{ map.item }}`
/// (`{{ map.item.<key> }}` for an object) and `{{ map.index }}`. The task itself stands for all
/// of them: its downstream tasks wait until every instance has finished.
#[derive(Debug, Clone, PartialEq)]
pub struct MapSpec {
    /// Where the items come from.
    pub source: MapSource,
    /// More items than this fail the expansion (`max_map`; Airflow's `max_map_length`).
    pub max: usize,
}

/// The items of a mapped task.
#[derive(Debug, Clone, PartialEq)]
pub enum MapSource {
    /// `over: [..]`: a list written in the DAG file.
    Over(Vec<serde_json::Value>),
    /// `sql: SELECT …`: one item per row of a query on the lake (templated) — the value of a
    /// one-column row, else an object of the row's columns.
    Sql(String),
    /// `from: tasks.<id>.output.<key>`: a JSON array an upstream task wrote to `$WEIR_OUTPUT`.
    From {
        /// The upstream task.
        task: String,
        /// The output's key.
        key: String,
    },
}

/// Items a task may map over unless it says otherwise (`max_map`).
pub const DEFAULT_MAX_MAP: usize = 1024;

/// `(task, index)` for the id of a mapped instance, `<task>[<index>]`.
pub fn mapped_index(id: &str) -> Option<(&str, u32)> {
    let (parent, rest) = id.strip_suffix(']')?.rsplit_once('[')?;
    Some((parent, rest.parse().ok()?))
}

/// The id of instance `index` of mapped task `task`.
pub fn mapped_id(task: &str, index: u32) -> String {
    format!("{task}[{index}]")
}

impl Task {
    /// Whether any of its templated text contains `needle` (say `tasks.`: it reads other tasks'
    /// outputs, which are then looked up for its tries).
    pub fn templates_mention(&self, needle: &str) -> bool {
        let mut texts: Vec<&String> = Vec::new();
        match &self.kind {
            TaskKind::Script { command, env } => texts.extend(command.iter().chain(env.values())),
            TaskKind::Branch { command } => texts.extend(command),
            TaskKind::Sql { sql, replace_where, .. } => texts.extend(std::iter::once(sql).chain(replace_where)),
            TaskKind::Notify { url, message } => texts.extend([url, message]),
            TaskKind::Push { files, uri } => texts.extend(files.iter().chain([uri])),
            TaskKind::Approval { message, .. } => texts.push(message),
            TaskKind::LakeSnapshot { .. } | TaskKind::Sensor { .. } => {}
        }
        if let Some(MapSpec { source: MapSource::Sql(sql), .. }) = &self.map {
            texts.push(sql);
        }
        texts.iter().any(|t| t.contains(needle))
    }

    /// The wait before try `next_try` (2 = the first retry).
    pub fn retry_wait(&self, next_try: u32) -> Duration {
        if !self.retry_exponential_backoff {
            return self.retry_delay;
        }
        let factor = 2u32.saturating_pow(next_try.saturating_sub(2));
        self.retry_delay.saturating_mul(factor).min(self.max_retry_delay)
    }
}

/// What a task runs.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskKind {
    /// An executable with arguments (templated) and environment.
    Script {
        /// argv; the first is looked up on `PATH` or relative to the DAG file's directory.
        command: Vec<String>,
        /// Extra environment (values templated).
        env: BTreeMap<String, String>,
    },
    /// A DataFusion query over the lake whose result becomes a new version of `views.<view>`.
    Sql {
        /// The query (templated).
        sql: String,
        /// The view it writes.
        view: String,
        /// Replace the view's rows (default) or append to them.
        append: bool,
        /// Replace only the rows matching this predicate (templated; Delta's replaceWhere), so
        /// that each data interval's run rewrites its own rows and a rerun duplicates nothing.
        replace_where: Option<String>,
        /// The engine it asks for (else `[batch] engine`).
        engine: Option<weir_batch::engine::EngineChoice>,
    },
    /// An executable whose standard output names the downstream tasks to follow (one per line,
    /// or separated by commas or spaces); the other direct downstream tasks are skipped.
    Branch {
        /// argv (templated).
        command: Vec<String>,
    },
    /// Rebuilds `current.<table>` from `raw.<table>`.
    LakeSnapshot {
        /// The raw table's name (without `raw.`).
        table: String,
    },
    /// Waits (checking every `poke_interval`, failing after `timeout`) until a condition holds.
    Sensor {
        /// What it waits for.
        until: SensorCondition,
        /// Between checks.
        poke_interval: Duration,
        /// Fails when the condition still does not hold after this long.
        timeout: Duration,
    },
    /// POSTs a JSON message about the run to a webhook; a non-2xx answer fails the try.
    Notify {
        /// The webhook.
        url: String,
        /// Text (templated).
        message: String,
    },
    /// Waits for a person to approve or reject (`weir dags approve`, the API, the console):
    /// approved, it succeeds; rejected, or undecided after `timeout`, it fails.
    Approval {
        /// What the approver is asked (templated).
        message: String,
        /// Who may decide (anyone with an operate token when empty).
        approvers: Vec<String>,
        /// Fails when no one decided after this long.
        timeout: Duration,
    },
    /// Publishes an artifact on `weir.flow.events` for downstream systems: its files (path,
    /// size, MD5) and the URI of its payload. A missing file fails the try.
    Push {
        /// Files (templated; relative to the DAG file's folder).
        files: Vec<String>,
        /// Where the payload is (templated), for consumers to fetch.
        uri: String,
    },
}

/// What a sensor waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorCondition {
    /// The lake table has data up to the data interval's end: for `raw.*` a change whose source
    /// time is at or after it; for other tables a commit made at or after it.
    TableFresh(String),
    /// A run of this DAG with the same logical date succeeded.
    DagSucceeded(String),
}

impl TaskKind {
    /// The kind's name as written in DAG files.
    pub fn name(&self) -> &'static str {
        match self {
            TaskKind::Script { .. } => "script",
            TaskKind::Sql { .. } => "sql",
            TaskKind::Branch { .. } => "branch",
            TaskKind::LakeSnapshot { .. } => "lake_snapshot",
            TaskKind::Sensor { .. } => "sensor",
            TaskKind::Notify { .. } => "notify",
            TaskKind::Push { .. } => "push",
            TaskKind::Approval { .. } => "approval",
        }
    }
}

// ---- the file's shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DagFile {
    dag_id: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    owner: String,
    /// A cron expression or preset, or `{tables, mode, debounce}` ([`TablesFile`]).
    #[serde(default)]
    schedule: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    timezone: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
    #[serde(default)]
    catchup: bool,
    max_active_runs: Option<usize>,
    max_active_tasks: Option<usize>,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    default_args: TaskDefaults,
    #[serde(default)]
    is_paused_upon_creation: bool,
    deadline: Option<String>,
    #[serde(default)]
    receivers: Vec<Receiver>,
    #[serde(default)]
    notifications: Notifications,
    tasks: Vec<TaskFile>,
}

/// `schedule: {tables, mode, debounce}`: the tables whose commits start runs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TablesFile {
    tables: Vec<String>,
    #[serde(default)]
    mode: crate::schedule::TriggerMode,
    debounce: Option<String>,
}

/// `default_args`. A task repeats these keys in [`TaskFile`] rather than flattening this struct:
/// serde cannot refuse unknown keys of a struct with a flattened field, and a misspelt key must be
/// an error that names it.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct TaskDefaults {
    retries: Option<u32>,
    retry_delay: Option<String>,
    retry_exponential_backoff: Option<bool>,
    max_retry_delay: Option<String>,
    execution_timeout: Option<String>,
    queue: Option<String>,
    priority: Option<i64>,
    pool: Option<String>,
    trigger_rule: Option<String>,
}

/// One entry of `tasks` (its settings override `default_args`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    /// A task's id (absent for a group).
    #[serde(default)]
    id: String,
    /// A task group: its id, its own default args, and its tasks.
    group: Option<String>,
    tasks: Option<Vec<TaskFile>>,
    default_args: Option<TaskDefaults>,
    #[serde(default)]
    upstream: Vec<String>,
    retries: Option<u32>,
    retry_delay: Option<String>,
    retry_exponential_backoff: Option<bool>,
    max_retry_delay: Option<String>,
    execution_timeout: Option<String>,
    queue: Option<String>,
    priority: Option<i64>,
    pool: Option<String>,
    trigger_rule: Option<String>,
    script: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    sql: Option<String>,
    view: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    replace_where: Option<String>,
    engine: Option<weir_batch::engine::EngineChoice>,
    branch: Option<Vec<String>>,
    lake_snapshot: Option<String>,
    sensor: Option<SensorFile>,
    poke_interval: Option<String>,
    timeout: Option<String>,
    notify: Option<NotifyFile>,
    push: Option<PushFile>,
    approval: Option<ApprovalFile>,
    map: Option<MapFile>,
    max_map: Option<usize>,
}

/// `map: {over | sql | from}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapFile {
    over: Option<Vec<serde_json::Value>>,
    sql: Option<String>,
    from: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalFile {
    message: String,
    #[serde(default)]
    approvers: Vec<String>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFile {
    files: Vec<String>,
    uri: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorFile {
    table: Option<String>,
    dag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyFile {
    url: String,
    #[serde(default)]
    message: String,
}

/// Reads and checks one DAG file.
pub fn load_file(path: &Path) -> Result<Dag, DagError> {
    let text = std::fs::read_to_string(path).map_err(|e| DagError {
        file: path.display().to_string(),
        line: None,
        reason: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Checks the DAG in `text` (the contents of `path`).
pub fn parse(path: &Path, text: &str) -> Result<Dag, DagError> {
    let file = path.display().to_string();
    let err = |reason: String| DagError { file: file.clone(), line: None, reason };
    let raw: DagFile = serde_yaml_ng::from_str(text).map_err(|e| DagError {
        file: file.clone(),
        line: e.location().map(|l| l.line()),
        reason: strip_location(&e.to_string()),
    })?;
    let id = match raw.dag_id {
        Some(id) => id,
        None => path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string(),
    };
    check_id("dag_id", &id).map_err(err)?;
    let timezone: Tz = match &raw.timezone {
        None => Tz::UTC,
        Some(name) => name.parse().map_err(|_| err(format!("timezone {name:?}: not an IANA time zone name")))?,
    };
    let schedule = match raw.schedule.clone() {
        None | Some(serde_yaml_ng::Value::Null) => Ok(Schedule::None),
        Some(serde_yaml_ng::Value::String(text)) => Schedule::parse(Some(&text)),
        Some(tables @ serde_yaml_ng::Value::Mapping(_)) => serde_yaml_ng::from_value::<TablesFile>(tables)
            .map_err(|e| strip_location(&e.to_string()))
            .and_then(|t| table_trigger(&t)),
        Some(_) => Err("expected a cron expression, a preset (@daily…) or {tables: [...]}".into()),
    }
    .map_err(|e| err(format!("schedule: {e}")))?;
    let start_date = match &raw.start_date {
        Some(s) => parse_instant(s, timezone).map_err(|e| err(format!("start_date {s:?}: {e}")))?,
        None if matches!(schedule, Schedule::None | Schedule::Tables(_)) => DateTime::<Utc>::UNIX_EPOCH,
        None => return Err(err("start_date is required when there is a schedule".into())),
    };
    let end_date = match &raw.end_date {
        Some(s) => Some(parse_instant(s, timezone).map_err(|e| err(format!("end_date {s:?}: {e}")))?),
        None => None,
    };
    if raw.tasks.is_empty() {
        return Err(err("tasks: a DAG needs at least one task".into()));
    }
    let deadline = match &raw.deadline {
        Some(d) => Some(humantime::parse_duration(d).map_err(|e| err(format!("deadline {d:?}: {e}")))?),
        None => None,
    };
    let mut names = BTreeSet::new();
    for r in &raw.receivers {
        if !names.insert(r.name.as_str()) {
            return Err(err(format!("receivers: {:?} is defined twice", r.name)));
        }
        r.check().map_err(|e| err(format!("receivers: {e}")))?;
    }
    let n = &raw.notifications;
    for (key, list) in [
        ("on_failure", &n.on_failure),
        ("on_retry", &n.on_retry),
        ("on_success", &n.on_success),
        ("on_deadline_missed", &n.on_deadline_missed),
    ] {
        if let Some(unknown) = list.iter().find(|r| !names.contains(r.as_str())) {
            return Err(err(format!("notifications.{key}: no receiver {unknown:?} in receivers")));
        }
    }
    if !n.on_deadline_missed.is_empty() && deadline.is_none() {
        return Err(err("notifications.on_deadline_missed needs a deadline".into()));
    }
    let defaults = raw.default_args;
    let mut groups = Groups::default();
    let mut tasks = Vec::with_capacity(raw.tasks.len());
    flatten(raw.tasks, None, &defaults, "tasks", &mut tasks, &mut groups).map_err(err)?;
    let mut seen = HashMap::new();
    for (i, task) in tasks.iter().enumerate() {
        if groups.members.contains_key(&task.id) {
            return Err(err(format!("task id {:?} is also a group's id", task.id)));
        }
        if seen.insert(task.id.clone(), i).is_some() {
            return Err(err(format!("task id {:?} is used twice", task.id)));
        }
    }
    groups.resolve(&mut tasks);
    for t in &tasks {
        if let Some(MapSpec { source: MapSource::From { task, .. }, .. }) = &t.map
            && !t.upstream.contains(task)
        {
            return Err(err(format!("task {:?}: maps over the output of {task:?}, which is not its upstream", t.id)));
        }
        for u in &t.upstream {
            if !seen.contains_key(u) {
                return Err(err(format!("task {:?}: upstream {u:?} is not a task of this DAG", t.id)));
            }
            if u == &t.id {
                return Err(err(format!("task {:?} lists itself as upstream", t.id)));
            }
        }
    }
    let dag = Dag {
        id,
        description: raw.description,
        owner: raw.owner,
        schedule,
        timezone,
        start_date,
        end_date,
        catchup: raw.catchup,
        max_active_runs: raw.max_active_runs.unwrap_or(16).max(1),
        max_active_tasks: raw.max_active_tasks.unwrap_or(16).max(1),
        params: raw.params,
        tasks,
        paused_at_creation: raw.is_paused_upon_creation,
        file: path.to_path_buf(),
        hash: hex(&Sha256::digest(text.as_bytes())),
        source: text.to_string(),
        deadline,
        receivers: raw.receivers,
        notifications: raw.notifications,
    };
    if let Some(cycle) = find_cycle(&dag) {
        return Err(err(format!("the tasks form a cycle: {}", cycle.join(" → "))));
    }
    for t in &dag.tasks {
        if let TaskKind::Branch { .. } = t.kind
            && dag.downstream(&t.id).next().is_none()
        {
            return Err(err(format!("branch task {:?} has no downstream tasks to choose from", t.id)));
        }
    }
    Ok(dag)
}

/// Every `*.yaml` / `*.yml` file of `dir` (not recursive), sorted by name: the DAGs that are
/// fine, and an error for each file that is not (a broken file never stops the others). Two files
/// claiming one `dag_id` are both refused.
pub fn load_dir(dir: &Path) -> (Vec<Dag>, Vec<DagError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(e) => {
            return (
                Vec::new(),
                vec![DagError { file: dir.display().to_string(), line: None, reason: format!("cannot list: {e}") }],
            );
        }
    };
    files.sort();
    let (mut dags, mut errors) = (Vec::<Dag>::new(), Vec::new());
    for f in files {
        match load_file(&f) {
            Ok(d) => dags.push(d),
            Err(e) => errors.push(e),
        }
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for d in &dags {
        *count.entry(d.id.clone()).or_default() += 1;
    }
    dags.retain(|d| {
        if count[&d.id] > 1 {
            errors.push(DagError {
                file: d.file.display().to_string(),
                line: None,
                reason: format!("dag_id {:?} is declared by more than one file", d.id),
            });
            false
        } else {
            true
        }
    });
    (dags, errors)
}

/// Task groups met while flattening: their members (ids with the group's prefix, nested groups'
/// included) and the upstream the group itself lists.
#[derive(Default)]
struct Groups {
    members: BTreeMap<String, Vec<String>>,
    upstream: BTreeMap<String, Vec<String>>,
}

impl Groups {
    /// The tasks of `group` no other task of it depends on.
    fn leaves(&self, group: &str, tasks: &[Task]) -> Vec<String> {
        let members = &self.members[group];
        let inner = |t: &Task| members.contains(&t.id);
        members.iter().filter(|m| !tasks.iter().filter(|t| inner(t)).any(|t| t.upstream.contains(m))).cloned().collect()
    }

    /// Resolves upstream names: a sibling's short id inside a group, a group's id (its leaves);
    /// a group's own upstream goes to its tasks that have none inside it.
    fn resolve(&self, tasks: &mut [Task]) {
        let ids: BTreeSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
        for t in tasks.iter_mut() {
            let group = t.group.clone();
            for u in &mut t.upstream {
                // Innermost group first: `b` inside `a.x` is `a.x.b`, then `a.b`, then `b`.
                let mut scope = group.clone();
                while let Some(g) = scope {
                    let candidate = format!("{g}.{u}");
                    if ids.contains(&candidate) || self.members.contains_key(&candidate) {
                        *u = candidate;
                        break;
                    }
                    scope = g.rsplit_once('.').map(|(parent, _)| parent.to_string());
                }
            }
        }
        for (group, upstream) in &self.upstream {
            let members = &self.members[group];
            let roots: Vec<String> = tasks
                .iter()
                .filter(|t| members.contains(&t.id) && !t.upstream.iter().any(|u| members.contains(u)))
                .map(|t| t.id.clone())
                .collect();
            for t in tasks.iter_mut().filter(|t| roots.contains(&t.id)) {
                t.upstream.extend(upstream.iter().cloned());
            }
        }
        // Group ids as upstream stand for the group's leaves (after the groups' own upstream).
        let snapshot = tasks.to_vec();
        for t in tasks.iter_mut() {
            let mut expanded: Vec<String> = Vec::new();
            for u in &t.upstream {
                let names = match self.members.contains_key(u) {
                    true => self.leaves(u, &snapshot),
                    false => vec![u.clone()],
                };
                for n in names {
                    if !expanded.contains(&n) {
                        expanded.push(n);
                    }
                }
            }
            t.upstream = expanded;
        }
    }
}

/// `entries` (tasks and groups) as tasks, a group's tasks prefixed with its id and given its
/// default args over the outer ones; `at` says where, for errors.
fn flatten(
    entries: Vec<TaskFile>,
    group: Option<&str>,
    defaults: &TaskDefaults,
    at: &str,
    out: &mut Vec<Task>,
    groups: &mut Groups,
) -> Result<(), String> {
    for (i, mut t) in entries.into_iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(name) = t.group.take() else {
            if t.tasks.is_some() || t.default_args.is_some() {
                return Err(format!("{here}: tasks and default_args belong to a group (give it `group: <id>`)"));
            }
            let mut task = task(t, defaults).map_err(|reason| format!("{here}: {reason}"))?;
            if let Some(g) = group {
                task.id = format!("{g}.{}", task.id);
                task.group = Some(g.to_string());
            }
            for parent in ancestors(group) {
                groups.members.entry(parent).or_default().push(task.id.clone());
            }
            out.push(task);
            continue;
        };
        check_id("group", &name).map_err(|e| format!("{here}: {e}"))?;
        let full = match group {
            Some(g) => format!("{g}.{name}"),
            None => name,
        };
        let Some(inner) = t.tasks.take().filter(|t| !t.is_empty()) else {
            return Err(format!("{here}: group {full:?} needs tasks"));
        };
        if !t.id.is_empty() || t.has_kind() {
            return Err(format!("{here}: group {full:?} takes group, tasks, default_args and upstream only"));
        }
        if groups.members.contains_key(&full) {
            return Err(format!("{here}: group {full:?} is defined twice"));
        }
        groups.members.insert(full.clone(), Vec::new());
        groups.upstream.insert(full.clone(), t.upstream.clone());
        let merged = match &t.default_args {
            Some(own) => own.over(defaults),
            None => defaults.clone(),
        };
        flatten(inner, Some(&full), &merged, &format!("{here}.tasks"), out, groups)?;
    }
    Ok(())
}

/// `group` and the groups around it (`a.b` → `a.b`, `a`).
fn ancestors(group: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut g = group.map(str::to_string);
    while let Some(name) = g {
        g = name.rsplit_once('.').map(|(parent, _)| parent.to_string());
        out.push(name);
    }
    out
}

impl TaskDefaults {
    /// These defaults, falling back to `outer` for what they leave unset.
    fn over(&self, outer: &TaskDefaults) -> TaskDefaults {
        TaskDefaults {
            retries: self.retries.or(outer.retries),
            retry_delay: self.retry_delay.clone().or_else(|| outer.retry_delay.clone()),
            retry_exponential_backoff: self.retry_exponential_backoff.or(outer.retry_exponential_backoff),
            max_retry_delay: self.max_retry_delay.clone().or_else(|| outer.max_retry_delay.clone()),
            execution_timeout: self.execution_timeout.clone().or_else(|| outer.execution_timeout.clone()),
            queue: self.queue.clone().or_else(|| outer.queue.clone()),
            priority: self.priority.or(outer.priority),
            pool: self.pool.clone().or_else(|| outer.pool.clone()),
            trigger_rule: self.trigger_rule.clone().or_else(|| outer.trigger_rule.clone()),
        }
    }
}

impl TaskFile {
    /// Whether it names a task kind.
    fn has_kind(&self) -> bool {
        self.script.is_some()
            || self.sql.is_some()
            || self.branch.is_some()
            || self.lake_snapshot.is_some()
            || self.sensor.is_some()
            || self.notify.is_some()
            || self.push.is_some()
            || self.approval.is_some()
    }
}

fn task(t: TaskFile, d: &TaskDefaults) -> Result<Task, String> {
    check_id("id", &t.id)?;
    // A task's own settings win over the DAG's default_args.
    let a = TaskDefaults {
        retries: t.retries,
        retry_delay: t.retry_delay.clone(),
        retry_exponential_backoff: t.retry_exponential_backoff,
        max_retry_delay: t.max_retry_delay.clone(),
        execution_timeout: t.execution_timeout.clone(),
        queue: t.queue.clone(),
        priority: t.priority,
        pool: t.pool.clone(),
        trigger_rule: t.trigger_rule.clone(),
    };
    let dur = |key: &str, v: Option<&String>, default: Duration| -> Result<Duration, String> {
        match v {
            Some(s) => parse_duration(s).map_err(|e| format!("{key} {s:?}: {e}")),
            None => Ok(default),
        }
    };
    let retry_delay = dur("retry_delay", a.retry_delay.as_ref().or(d.retry_delay.as_ref()), Duration::from_secs(300))?;
    let max_retry_delay =
        dur("max_retry_delay", a.max_retry_delay.as_ref().or(d.max_retry_delay.as_ref()), Duration::from_secs(86_400))?;
    let execution_timeout = match a.execution_timeout.as_ref().or(d.execution_timeout.as_ref()) {
        Some(s) => Some(parse_duration(s).map_err(|e| format!("execution_timeout {s:?}: {e}"))?),
        None => None,
    };
    let trigger_rule = match a.trigger_rule.as_ref().or(d.trigger_rule.as_ref()) {
        Some(s) => s.parse()?,
        None => TriggerRule::AllSuccess,
    };
    let mut kinds = Vec::new();
    if let Some(command) = t.script {
        kinds.push(TaskKind::Script { command, env: t.env.clone() });
    }
    if let Some(sql) = t.sql {
        let append = match t.mode.as_deref() {
            None | Some("overwrite") => false,
            Some("append") => true,
            Some(other) => return Err(format!("mode {other:?}: expected overwrite or append")),
        };
        let view = t.view.clone().unwrap_or_else(|| t.id.clone());
        check_id("view", &view)?;
        if append && t.replace_where.is_some() {
            return Err(format!("task {:?}: replace_where needs mode overwrite", t.id));
        }
        kinds.push(TaskKind::Sql { sql, view, append, replace_where: t.replace_where.clone(), engine: t.engine });
    }
    if let Some(command) = t.branch {
        kinds.push(TaskKind::Branch { command });
    }
    if let Some(table) = t.lake_snapshot {
        let table = table.strip_prefix("raw.").unwrap_or(&table).to_string();
        kinds.push(TaskKind::LakeSnapshot { table });
    }
    if let Some(sensor) = t.sensor {
        let until = match (sensor.table, sensor.dag) {
            (Some(table), None) => {
                crate::dag::check_table(&table)?;
                SensorCondition::TableFresh(table)
            }
            (None, Some(dag)) => SensorCondition::DagSucceeded(dag),
            _ => return Err(format!("task {:?}: a sensor waits for exactly one of table or dag", t.id)),
        };
        let poke_interval = dur("poke_interval", t.poke_interval.as_ref(), Duration::from_secs(60))?;
        let timeout = dur("timeout", t.timeout.as_ref(), Duration::from_secs(24 * 3600))?;
        kinds.push(TaskKind::Sensor { until, poke_interval, timeout });
    } else if t.poke_interval.is_some() || t.timeout.is_some() {
        return Err(format!("task {:?}: poke_interval and timeout belong to sensor tasks", t.id));
    }
    if let Some(n) = t.notify {
        if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
            return Err(format!("task {:?}: notify url {:?} is not http(s)", t.id, n.url));
        }
        kinds.push(TaskKind::Notify { url: n.url, message: n.message });
    }
    if let Some(p) = t.push {
        if p.files.is_empty() {
            return Err(format!("task {:?}: push needs at least one file", t.id));
        }
        kinds.push(TaskKind::Push { files: p.files, uri: p.uri });
    }
    if let Some(a) = t.approval {
        let timeout = dur("approval timeout", a.timeout.as_ref(), Duration::from_secs(24 * 3600))?;
        kinds.push(TaskKind::Approval { message: a.message, approvers: a.approvers, timeout });
    }
    let kind = match kinds.len() {
        1 => kinds.pop().expect("one"),
        0 => {
            return Err(format!(
                "task {:?} has no kind: give one of script, sql, branch, lake_snapshot, sensor, notify, push, approval",
                t.id
            ));
        }
        _ => {
            let names: Vec<_> = kinds.iter().map(TaskKind::name).collect();
            return Err(format!("task {:?} has several kinds ({}): give exactly one", t.id, names.join(", ")));
        }
    };
    if let TaskKind::Script { command, .. } | TaskKind::Branch { command } = &kind
        && command.is_empty()
    {
        return Err(format!("task {:?}: the command is empty", t.id));
    }
    if !matches!(kind, TaskKind::Sql { .. })
        && (t.view.is_some() || t.mode.is_some() || t.replace_where.is_some() || t.engine.is_some())
    {
        return Err(format!("task {:?}: view, mode, replace_where and engine belong to sql tasks", t.id));
    }
    if !matches!(kind, TaskKind::Script { .. }) && !t.env.is_empty() {
        return Err(format!("task {:?}: env belongs to script tasks", t.id));
    }
    let map = match t.map {
        Some(m) => Some(map_spec(&t.id, &kind, m, t.max_map)?),
        None if t.max_map.is_some() => return Err(format!("task {:?}: max_map belongs to mapped tasks", t.id)),
        None => None,
    };
    Ok(Task {
        id: t.id,
        group: None,
        kind,
        upstream: t.upstream,
        trigger_rule,
        retries: a.retries.or(d.retries).unwrap_or(0),
        retry_delay,
        retry_exponential_backoff: a.retry_exponential_backoff.or(d.retry_exponential_backoff).unwrap_or(false),
        max_retry_delay,
        execution_timeout,
        queue: a.queue.clone().or_else(|| d.queue.clone()).unwrap_or_else(|| "default".into()),
        priority: a.priority.or(d.priority).unwrap_or(1),
        pool: a.pool.clone().or_else(|| d.pool.clone()).unwrap_or_else(|| "default_pool".into()),
        map,
    })
}

/// `map:` of task `id` of kind `kind`, checked.
fn map_spec(id: &str, kind: &TaskKind, m: MapFile, max: Option<usize>) -> Result<MapSpec, String> {
    if matches!(kind, TaskKind::Branch { .. } | TaskKind::Approval { .. } | TaskKind::LakeSnapshot { .. }) {
        return Err(format!("task {id:?}: {} tasks cannot be mapped", kind.name()));
    }
    let source = match (m.over, m.sql, m.from) {
        (Some(over), None, None) => MapSource::Over(over),
        (None, Some(sql), None) => MapSource::Sql(sql),
        (None, None, Some(from)) => {
            let (task, key) = from
                .strip_prefix("tasks.")
                .and_then(|rest| rest.split_once(".output."))
                .filter(|(task, key)| !task.is_empty() && !key.is_empty())
                .ok_or_else(|| format!("task {id:?}: map from {from:?}: expected tasks.<id>.output.<key>"))?;
            MapSource::From { task: task.into(), key: key.into() }
        }
        _ => return Err(format!("task {id:?}: map takes exactly one of over, sql and from")),
    };
    let max = max.unwrap_or(DEFAULT_MAX_MAP);
    if max == 0 {
        return Err(format!("task {id:?}: max_map must be at least 1"));
    }
    Ok(MapSpec { source, max })
}

/// `schedule: {tables, mode, debounce}`, checked.
fn table_trigger(t: &TablesFile) -> Result<Schedule, String> {
    if t.tables.is_empty() {
        return Err("tables: name at least one lake table".into());
    }
    let mut seen = BTreeSet::new();
    for table in &t.tables {
        check_table(table)?;
        if !seen.insert(table) {
            return Err(format!("tables: {table:?} is named twice"));
        }
    }
    let debounce = match &t.debounce {
        Some(d) => parse_duration(d).map_err(|e| format!("debounce: {e}"))?,
        None => Duration::ZERO,
    };
    Ok(Schedule::Tables(crate::schedule::TableTrigger { tables: t.tables.clone(), mode: t.mode, debounce }))
}

/// A lake table name as sensors take it: `raw.x`, `current.x` or `views.x`.
fn check_table(name: &str) -> Result<(), String> {
    match name.split_once('.') {
        Some(("raw" | "current" | "views", rest)) => check_id("table", rest),
        _ => Err(format!("table {name:?}: expected raw.<name>, current.<name> or views.<name>")),
    }
}

fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !id.starts_with('.');
    if ok { Ok(()) } else { Err(format!("{what} {id:?}: use letters, digits, '_', '-' and '.' only")) }
}

/// A task id path in a cycle, if the graph has one.
fn find_cycle(dag: &Dag) -> Option<Vec<String>> {
    // Depth-first search with colours: 1 = on the stack, 2 = done.
    fn visit<'a>(dag: &'a Dag, id: &'a str, colour: &mut HashMap<&'a str, u8>, stack: &mut Vec<&'a str>) -> bool {
        match colour.get(id) {
            Some(2) => return false,
            Some(1) => {
                stack.push(id);
                return true;
            }
            _ => {}
        }
        colour.insert(id, 1);
        stack.push(id);
        let task = dag.task(id).expect("checked ids");
        for u in &task.upstream {
            if visit(dag, u, colour, stack) {
                return true;
            }
        }
        stack.pop();
        colour.insert(id, 2);
        false
    }
    let mut colour = HashMap::new();
    for t in &dag.tasks {
        let mut stack = Vec::new();
        if visit(dag, &t.id, &mut colour, &mut stack) {
            let last = stack.last().copied().expect("a cycle");
            let start = stack.iter().position(|s| *s == last).expect("on the stack");
            let mut cycle: Vec<String> = stack[start..].iter().rev().map(|s| s.to_string()).collect();
            cycle.dedup();
            cycle.push(cycle[0].clone());
            return Some(cycle);
        }
    }
    None
}

/// `2026-11-01`, `2026-11-01 06:00`, `2026-11-01T06:00:00` (in `tz`) or RFC 3339 with an offset.
pub fn parse_instant(s: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0).expect("midnight")
    } else {
        ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
            .ok_or("expected a date (2026-11-01), a local time (2026-11-01 06:00) or RFC 3339")?
    };
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{s} does not exist in {tz} (a daylight-saving gap)"))
}

/// `30s`, `5m`, `1h 30m`, `2days` (humantime), or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(n) = s.trim().parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn strip_location(msg: &str) -> String {
    // serde_yaml_ng appends " at line L column C"; the line is reported separately.
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Dag, DagError> {
        parse(Path::new("dags/example.yaml"), text)
    }

    #[test]
    fn a_full_dag_file() {
        let dag = parse_str(
            r#"
description: orders per day
schedule: "0 3 * * *"
timezone: Europe/Paris
start_date: 2026-11-01
catchup: true
params: {region: eu}
default_args:
  retries: 2
  retry_delay: 30s
  retry_exponential_backoff: true
  max_retry_delay: 2m
tasks:
  - id: extract
    script: ["./extract.sh", "{{ ds }}"]
    env: {MODE: full}
  - id: facts
    upstream: [extract]
    sql: SELECT 1 AS x
    view: order_facts
    retries: 0
  - id: cleanup
    upstream: [facts]
    trigger_rule: all_done
    lake_snapshot: raw.shop_orders
"#,
        )
        .unwrap();
        assert_eq!(dag.id, "example");
        assert_eq!(dag.timezone, chrono_tz::Europe::Paris);
        assert_eq!(dag.start_date.to_rfc3339(), "2026-10-31T23:00:00+00:00");
        assert_eq!(dag.tasks.len(), 3);
        let extract = dag.task("extract").unwrap();
        assert_eq!(extract.retries, 2);
        assert_eq!(extract.retry_wait(2), Duration::from_secs(30));
        assert_eq!(extract.retry_wait(3), Duration::from_secs(60));
        assert_eq!(extract.retry_wait(5), Duration::from_secs(120), "capped by max_retry_delay");
        assert_eq!(dag.task("facts").unwrap().retries, 0);
        assert_eq!(
            dag.task("facts").unwrap().kind,
            TaskKind::Sql {
                sql: "SELECT 1 AS x".into(),
                view: "order_facts".into(),
                append: false,
                replace_where: None,
                engine: None
            }
        );
        assert_eq!(dag.task("cleanup").unwrap().kind, TaskKind::LakeSnapshot { table: "shop_orders".into() });
        assert_eq!(dag.task("cleanup").unwrap().trigger_rule, TriggerRule::AllDone);
        assert_eq!(dag.downstream_closure("extract").len(), 3);
        assert_eq!(dag.hash.len(), 64);
    }

    #[test]
    fn mistakes_are_named_with_file_and_line() {
        let err = |text: &str| parse_str(text).unwrap_err().to_string();
        let e = err("tasks:\n  - id: a\n    script: [true]\n    retires: 3\n");
        assert!(e.starts_with("dags/example.yaml:") && e.contains("retires"), "{e}");
        let e = err("tasks:\n  - id: a\n    script: [true]\n  - id: b\n    upstream: [c]\n    script: [true]\n");
        assert!(e.contains("upstream \"c\" is not a task"), "{e}");
        let e = err(
            "tasks:\n  - {id: a, upstream: [c], script: [true]}\n  - {id: b, upstream: [a], script: [true]}\n  - {id: c, upstream: [b], script: [true]}\n",
        );
        assert!(e.contains("cycle") && e.contains("a → ") && e.contains("b → "), "{e}");
        let e = err("tasks:\n  - {id: a, script: [true], sql: SELECT 1}\n");
        assert!(e.contains("several kinds (script, sql)"), "{e}");
        let e = err("tasks:\n  - {id: a}\n");
        assert!(e.contains("has no kind"), "{e}");
        let e = err("schedule: '61 * * * *'\nstart_date: 2026-11-01\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("schedule") && e.contains("minute \"61\""), "{e}");
        let e = err("schedule: '@daily'\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("start_date is required"), "{e}");
        let e = err("timezone: Mars/Olympus\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("Mars/Olympus"), "{e}");
        let e = err("tasks:\n  - {id: a, script: [true], trigger_rule: sometimes}\n");
        assert!(e.contains("sometimes") && e.contains("all_success"), "{e}");
        let e = err("tasks: [\n");
        assert!(parse_str("tasks: [\n").unwrap_err().line.is_some(), "{e}");
        let e = err("tasks:\n  - {id: a, branch: [echo, b]}\n");
        assert!(e.contains("no downstream"), "{e}");
        let e = err("tasks:\n  - {id: a, sensor: {table: views.x, dag: d}}\n");
        assert!(e.contains("exactly one of table or dag"), "{e}");
        let e = err("tasks:\n  - {id: a, sensor: {table: orders}}\n");
        assert!(e.contains("raw.<name>"), "{e}");
        let e = err("tasks:\n  - {id: a, script: [true], timeout: 5s}\n");
        assert!(e.contains("belong to sensor tasks"), "{e}");
        let e = err("tasks:\n  - {id: a, notify: {url: 'ftp://x'}}\n");
        assert!(e.contains("not http(s)"), "{e}");
        let e = err("notifications: {on_failure: [pager]}\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("notifications.on_failure: no receiver \"pager\""), "{e}");
        let e = err("receivers: [{name: pager}]\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("receiver pager: none of webhook, slack, jira, alertmanager is set"), "{e}");
        let e = err("receivers: [{name: am, alertmanager: {urls: []}}]\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("receiver am: alertmanager: urls is empty"), "{e}");
        let e = err(
            "receivers: [{name: p, webhook: 'http://x'}]\nnotifications: {on_deadline_missed: [p]}\ntasks:\n  - {id: a, script: [true]}\n",
        );
        assert!(e.contains("needs a deadline"), "{e}");
        let e = err("deadline: soon\ntasks:\n  - {id: a, script: [true]}\n");
        assert!(e.contains("deadline \"soon\""), "{e}");
        let e = err("tasks:\n  - {id: a, push: {files: [], uri: 's3://b/k'}}\n");
        assert!(e.contains("push needs at least one file"), "{e}");
        let e = err("tasks:\n  - {id: a, script: [true], map: {over: [1], sql: SELECT 1}}\n");
        assert!(e.contains("map takes exactly one of over, sql and from"), "{e}");
        let e = err("tasks:\n  - {id: a, script: [true], map: {from: list.files}}\n");
        assert!(e.contains("expected tasks.<id>.output.<key>"), "{e}");
        let e =
            err("tasks:\n  - {id: l, script: [true]}\n  - {id: a, script: [true], map: {from: tasks.l.output.f}}\n");
        assert!(e.contains("maps over the output of \"l\", which is not its upstream"), "{e}");
        let e = err("tasks:\n  - {id: a, script: [true], max_map: 5}\n");
        assert!(e.contains("max_map belongs to mapped tasks"), "{e}");
        let e = err("tasks:\n  - {id: a, approval: {message: ok}, map: {over: [1]}}\n");
        assert!(e.contains("approval tasks cannot be mapped"), "{e}");
    }

    #[test]
    fn mapped_instances_resolve_to_their_task() {
        let d = parse_str("tasks:\n  - {id: a.b, script: [true], map: {over: [x, 2]}, max_map: 10}\n").unwrap();
        let task = d.task("a.b[12]").unwrap();
        assert_eq!(task.id, "a.b");
        assert_eq!(task.map, Some(MapSpec { source: MapSource::Over(vec!["x".into(), 2.into()]), max: 10 }));
        assert_eq!(mapped_index("a.b[12]"), Some(("a.b", 12)));
        assert_eq!(mapped_index("a.b"), None);
        assert_eq!(mapped_index("a.b[x]"), None);
        assert_eq!(mapped_id("a.b", 3), "a.b[3]");
        assert!(d.task("c[1]").is_none());
    }

    #[test]
    fn task_groups_prefix_their_tasks_and_stand_for_their_leaves() {
        let d = parse_str(
            "default_args: {retries: 1, pool: small}\ntasks:\n  - {id: extract, script: [\"true\"]}\n  \
             - group: load\n    upstream: [extract]\n    default_args: {retries: 3}\n    tasks:\n      \
             - {id: orders, script: [\"true\"]}\n      - {id: check, upstream: [orders], script: [\"true\"], retries: 0}\n      \
             - group: dims\n        tasks:\n          - {id: customers, script: [\"true\"]}\n  \
             - {id: report, upstream: [load], script: [\"true\"]}\n",
        )
        .unwrap();
        let t = |id: &str| d.task(id).unwrap_or_else(|| panic!("no task {id}: {:?}", d.tasks));
        assert_eq!(t("load.orders").upstream, ["extract"], "the group's upstream goes to its roots");
        assert_eq!(t("load.check").upstream, ["load.orders"], "a sibling by its short id");
        assert_eq!(t("load.dims.customers").upstream, ["extract"]);
        assert_eq!(t("load.dims.customers").group.as_deref(), Some("load.dims"));
        assert_eq!(t("report").upstream, ["load.check", "load.dims.customers"], "a group stands for its leaves");
        assert_eq!((t("load.orders").retries, t("load.check").retries, t("extract").retries), (3, 0, 1));
        assert_eq!(t("load.orders").pool, "small", "outer default args reach into the group");
        let err = |text: &str| parse_str(text).unwrap_err().to_string();
        let e = err("tasks:\n  - {group: g, tasks: []}\n");
        assert!(e.contains("group \"g\" needs tasks"), "{e}");
        let e = err("tasks:\n  - {group: g, script: [\"true\"], tasks: [{id: a, script: [\"true\"]}]}\n");
        assert!(e.contains("takes group, tasks, default_args and upstream only"), "{e}");
        let e = err("tasks:\n  - {id: a, tasks: [{id: b, script: [\"true\"]}]}\n");
        assert!(e.contains("belong to a group"), "{e}");
        let e = err("tasks:\n  - {id: a, upstream: [nope], script: [\"true\"]}\n");
        assert!(e.contains("upstream \"nope\" is not a task"), "{e}");
    }

    #[test]
    fn table_schedules() {
        let d = parse_str(
            "schedule: {tables: [raw.orders, current.customers], mode: all, debounce: 2s}\ntasks:\n  - {id: a, script: [true]}\n",
        )
        .unwrap();
        let expected = crate::schedule::TableTrigger {
            tables: vec!["raw.orders".into(), "current.customers".into()],
            mode: crate::schedule::TriggerMode::All,
            debounce: Duration::from_secs(2),
        };
        assert_eq!(d.schedule, Schedule::Tables(expected));
        assert_eq!(d.schedule.to_string(), "on commit (all): raw.orders, current.customers, debounce 2s");
        let err = |text: &str| parse_str(text).unwrap_err().to_string();
        let task = "\ntasks:\n  - {id: a, script: [true]}\n";
        let e = err(&format!("schedule: {{tables: []}}{task}"));
        assert!(e.contains("name at least one lake table"), "{e}");
        let e = err(&format!("schedule: {{tables: [orders]}}{task}"));
        assert!(e.contains("\"orders\"") && e.contains("raw.<name>"), "{e}");
        let e = err(&format!("schedule: {{tables: [raw.a, raw.a]}}{task}"));
        assert!(e.contains("named twice"), "{e}");
        let e = err(&format!("schedule: {{tables: [raw.a], debounce: soon}}{task}"));
        assert!(e.contains("debounce"), "{e}");
        let e = err(&format!("schedule: {{tables: [raw.a], mode: sometimes}}{task}"));
        assert!(e.contains("sometimes") && e.contains("any"), "{e}");
        let e = err(&format!("schedule: {{tables: [raw.a], every: 5s}}{task}"));
        assert!(e.contains("every"), "{e}");
    }

    #[test]
    fn the_shipped_dags_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dags");
        let (dags, errors) = load_dir(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        let canary = dags.iter().find(|d| d.id == "canary").expect("the canary ships");
        assert_eq!(canary.schedule.to_string(), "*/30 * * * *");
        assert_eq!(canary.deadline, Some(Duration::from_secs(600)));
        assert!(dags.iter().any(|d| d.id == "orders_daily"));
    }

    #[test]
    fn a_broken_file_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), "tasks:\n  - {id: a, script: [true]}\n").unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "tasks:\n  - {id: a, script: [true]\n").unwrap();
        std::fs::write(dir.path().join("twin1.yml"), "dag_id: twin\ntasks:\n  - {id: a, script: [true]}\n").unwrap();
        std::fs::write(dir.path().join("twin2.yml"), "dag_id: twin\ntasks:\n  - {id: a, script: [true]}\n").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a DAG").unwrap();
        let (dags, errors) = load_dir(dir.path());
        assert_eq!(dags.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].file.ends_with("bad.yaml") && errors[0].line.is_some(), "{errors:?}");
        assert!(errors.iter().filter(|e| e.reason.contains("more than one file")).count() == 2);
    }
}
