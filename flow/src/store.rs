//! The orchestrator's state in the metadata database (SQLite or PostgreSQL through sqlx's `Any`
//! driver): DAGs and their versions, import errors, DAG runs, task instances and every try.
//! Each state change is one statement or one transaction; the scheduler keeps nothing that a
//! restart would need outside these tables.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use sqlx::{AnyPool, Row as _, any::AnyRow};

use crate::{
    dag::{Dag, DagError},
    events::{self, Change},
    rules::{RunState, TaskState},
    schedule::Interval,
};

/// A metadata-database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed.
    #[error("metadata DB: {0}")]
    Sql(#[from] sqlx::Error),
    /// The migrations failed.
    #[error("metadata DB migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A DAG the command names is not known.
    #[error("no DAG {0:?} (is its file in the DAG folder, and free of errors? see `weir dags list`)")]
    NoDag(String),
    /// A run the command names is not known.
    #[error("DAG {dag}: no run {run:?}")]
    NoRun {
        /// The DAG.
        dag: String,
        /// The run id.
        run: String,
    },
    /// A stored value could not be read back.
    #[error("metadata DB: bad stored value: {0}")]
    Corrupt(String),
    /// This scheduler no longer holds the lease it writes under: another one leads now.
    #[error("scheduler lease epoch {0} is no longer held (another scheduler took over); nothing was written")]
    Fenced(i64),
    /// Another transaction of this process held the SQLite database's write turn too long.
    #[error("metadata DB: no turn to write within {0:?} (another transaction of this process held it)")]
    Busy(std::time::Duration),
}

/// Microseconds since the epoch.
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The instant of `us` microseconds since the epoch.
pub fn instant(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// The PostgreSQL channel a worker notifies when it records a try's end (`dag\nrun\ntask`).
pub const DONE_CHANNEL: &str = "weir_flow_done";
/// The PostgreSQL channel the scheduler notifies when it queues tasks (payload: the queue).
pub const QUEUED_CHANNEL: &str = "weir_flow_queued";

/// Now, in microseconds since the epoch.
pub(crate) fn now() -> i64 {
    micros(Utc::now())
}

/// A DAG as the database knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagRow {
    /// Its id.
    pub dag_id: String,
    /// Its file.
    pub file: String,
    /// The current version.
    pub hash: String,
    /// Its schedule, as text.
    pub schedule: String,
    /// Paused DAGs get no scheduled runs (manual ones still run).
    pub paused: bool,
    /// The end of the last scheduled interval created.
    pub last_interval_end: Option<DateTime<Utc>>,
}

/// A DAG run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// The DAG.
    pub dag_id: String,
    /// Unique within the DAG: `scheduled__<logical date>`, `manual__…`, `backfill__…`.
    pub run_id: String,
    /// `scheduled`, `manual` or `backfill`.
    pub run_type: String,
    /// The data interval.
    pub interval: Interval,
    /// Its state.
    pub state: RunState,
    /// The manual run's conf (JSON object), merged over the DAG's params.
    pub conf: serde_json::Map<String, serde_json::Value>,
    /// The DAG version it runs.
    pub dag_hash: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its first task started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub ended_at: Option<DateTime<Utc>>,
    /// A table-triggered run's tables and their versions (empty for other runs).
    pub inputs: Inputs,
}

/// A table-triggered run's input tables, by name.
pub type Inputs = std::collections::BTreeMap<String, InputVersion>;

/// One input table of a table-triggered run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputVersion {
    /// The table's version the run covers (-1: the table has no commit yet).
    pub version: i64,
    /// The version the DAG's previous run covered (the run's commits are those after it).
    pub previous: i64,
}

impl InputVersion {
    /// Whether the table committed since the previous run.
    pub fn changed(&self) -> bool {
        self.version > self.previous
    }
}

/// A task instance.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// The task.
    pub task_id: String,
    /// Its state.
    pub state: TaskState,
    /// Tries started.
    pub try_number: u32,
    /// The last try number allowed.
    pub max_tries: u32,
    /// Its priority.
    pub priority: i64,
    /// Its pool.
    pub pool: String,
    /// Its queue.
    pub queue: String,
    /// When an up_for_retry task may start again.
    pub next_try_at: Option<DateTime<Utc>>,
    /// When its last try started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last try ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// For an instance of a mapped task (`<task>[<index>]`): that task.
    pub parent: Option<String>,
}

/// A task instance as a grid shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    /// The run.
    pub run_id: String,
    /// The task.
    pub task_id: String,
    /// Its state.
    pub state: TaskState,
    /// Tries started.
    pub try_number: u32,
    /// When its last try started.
    pub started_at: Option<DateTime<Utc>>,
    /// When its last try ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// One try of a task instance.
#[derive(Debug, Clone, PartialEq)]
pub struct TryRow {
    /// 1, 2, …
    pub try_number: u32,
    /// How it ended (or `running`).
    pub state: TaskState,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Where its log is.
    pub log: String,
}

/// The end of a try, as the metadata DB records it.
pub struct Finish {
    /// The instance.
    pub key: TaskKey,
    /// The try.
    pub try_number: u32,
    /// success, failed or up_for_retry.
    pub state: TaskState,
    /// Why it failed.
    pub reason: Option<String>,
    /// For up_for_retry: how long after this end the next try may start.
    pub retry_wait: Option<std::time::Duration>,
    /// Downstream tasks a branch did not choose: skipped.
    pub skip: Vec<String>,
    /// Where the try's log is now, when it moved (to the lake's object storage).
    pub log: Option<String>,
    /// A mapped task's expansion (its state is then `mapped`): its instances are created, or
    /// those of an earlier expansion scheduled again, in the same transaction.
    pub expand: Option<Expansion>,
}

/// The instances a mapped task expands into.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    /// One instance per item, `<task>[<index>]`.
    pub items: Vec<serde_json::Value>,
    /// Tries each instance has (the task's retries + 1).
    pub tries: u32,
}

/// Identifies a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    /// The DAG.
    pub dag_id: String,
    /// The run.
    pub run_id: String,
    /// The task.
    pub task_id: String,
}

/// The scheduler lease a leader writes under: its holder and epoch (see [`crate::lease`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The scheduler holding the lease.
    pub holder: String,
    /// Grows by one with each new leader.
    pub epoch: i64,
}

/// The orchestrator's tables.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Set for a leading scheduler: every state change it makes checks the lease first.
    fence: Option<Fence>,
    /// PostgreSQL (row locks with SKIP LOCKED, LISTEN/NOTIFY) rather than SQLite.
    postgres: bool,
    /// SQLite: this process's write turn on the database (see [`write_turn`]).
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// A transaction on the metadata DB (used as a connection: `.execute(&mut *tx)`). On SQLite it
/// holds this process's write turn on the database until it commits or is dropped.
pub struct Tx<'a> {
    tx: sqlx::Transaction<'a, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Tx<'_> {
    /// Commits it.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// Rows one multi-row statement writes at most (well under SQLite's and PostgreSQL's limits on
/// parameters).
pub(crate) const ROWS_PER_STATEMENT: usize = 200;

/// The `VALUES` of a multi-row statement: `rows` tuples of `cols` numbered parameters, from
/// `$first` on — `value_rows(2, 2, 3)` is `($3, $4), ($5, $6)`.
pub(crate) fn value_rows(rows: usize, cols: usize, first: usize) -> String {
    let tuple = |r: usize| {
        let params: Vec<String> = (0..cols).map(|c| format!("${}", first + r * cols + c)).collect();
        format!("({})", params.join(", "))
    };
    (0..rows).map(tuple).collect::<Vec<_>>().join(", ")
}

/// How long a write waits for its turn before it fails (SQLite's `busy_timeout` as set by
/// [`weir_schemas::metadata::connect`]).
const TURN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The write turn of this process on the SQLite database at `url`, shared by every store opened
/// on it. SQLite lets one transaction write at a time; writers of one process that found it busy
/// slept in SQLite's busy handler (1, 2, 5, 10… ms at a time; 1,143 such sleeps in one `weir
/// bench scheduler`, 39 with the turn), where waiting for the turn here wakes them in order as
/// soon as it is free. Other processes (the CLI, workers) still meet the busy handler.
fn write_turn(url: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Turns = std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>;
    static TURNS: std::sync::LazyLock<std::sync::Mutex<Turns>> = std::sync::LazyLock::new(Default::default);
    TURNS.lock().expect("not poisoned").entry(url.to_string()).or_default().clone()
}

impl Store {
    /// Uses `pool`, creating or upgrading the orchestrator's tables.
    pub async fn open(pool: AnyPool) -> Result<Store, StoreError> {
        // The schema registry keeps its own migrations in the same database.
        weir_schemas::metadata::migrate(sqlx::migrate!("./migrations"), &pool).await?;
        let url = &pool.connect_options().database_url;
        let postgres = url.scheme().starts_with("postgres");
        let turn = (!postgres).then(|| write_turn(url.as_str()));
        Ok(Store { pool, fence: None, postgres, turn })
    }

    /// This store, every state change of which first checks that `fence` still holds the lease.
    pub fn with_fence(&self, fence: Fence) -> Store {
        Store { fence: Some(fence), ..self.clone() }
    }

    /// The database's URL (password included: not for display).
    pub fn url(&self) -> String {
        self.pool.connect_options().database_url.to_string()
    }

    /// Whether the database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// The pool, for the other parts of the orchestrator that keep tables here.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a state change. Under a fence, its first statement writes the lease row: that takes
    /// the row's lock (PostgreSQL) or the write lock (SQLite) for the whole transaction, so no
    /// takeover can commit between the check and this transaction's commit.
    pub(crate) async fn begin(&self) -> Result<Tx<'_>, StoreError> {
        let mut tx = self.write().await?;
        if let Some(f) = &self.fence {
            let held = sqlx::query(
                "UPDATE flow_lease SET epoch = epoch WHERE name = 'scheduler' AND holder = $1 AND epoch = $2",
            )
            .bind(&f.holder)
            .bind(f.epoch)
            .execute(&mut *tx)
            .await?;
            if held.rows_affected() == 0 {
                return Err(StoreError::Fenced(f.epoch));
            }
        }
        Ok(tx)
    }

    /// Sends a PostgreSQL notification when the transaction commits (nothing on SQLite, where
    /// everyone polls).
    pub(crate) async fn notify(&self, tx: &mut Tx<'_>, channel: &str, payload: &str) -> Result<(), StoreError> {
        if self.postgres {
            sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Begins a transaction that writes, in this process's turn on SQLite.
    async fn write(&self) -> Result<Tx<'_>, StoreError> {
        let turn = match &self.turn {
            Some(turn) => Some(
                tokio::time::timeout(TURN_TIMEOUT, turn.clone().lock_owned())
                    .await
                    .map_err(|_| StoreError::Busy(TURN_TIMEOUT))?,
            ),
            None => None,
        };
        Ok(Tx { tx: self.pool.begin().await?, _turn: turn })
    }

    /// Records the DAGs and import errors of one parse of the DAG folder (see [`Self::upsert_dag`]).
    pub async fn sync_dags(&self, dags: &[Dag], errors: &[DagError]) -> Result<(), StoreError> {
        for d in dags {
            self.upsert_dag(d).await?;
        }
        let mut tx = self.write().await?;
        let t = now();
        sqlx::query("DELETE FROM flow_import_errors").execute(&mut *tx).await?;
        for e in errors {
            sqlx::query(
                "INSERT INTO flow_import_errors (file, line, reason, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (file) DO UPDATE SET line = excluded.line, reason = excluded.reason, seen_at = excluded.seen_at",
            )
            .bind(&e.file)
            .bind(e.line.map(|l| l as i64))
            .bind(&e.reason)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a DAG and its current version. A DAG keeps its paused flag and schedule cursor; a
    /// new one starts paused if its file says so. Safe to run from several processes at once.
    pub async fn upsert_dag(&self, d: &Dag) -> Result<(), StoreError> {
        let t = now();
        sqlx::query(
            "INSERT INTO flow_dags (dag_id, file, hash, schedule, paused, seen_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (dag_id) DO UPDATE SET file = excluded.file, hash = excluded.hash, \
             schedule = excluded.schedule, seen_at = excluded.seen_at",
        )
        .bind(&d.id)
        .bind(d.file.display().to_string())
        .bind(&d.hash)
        .bind(d.schedule.to_string())
        .bind(i64::from(d.paused_at_creation))
        .bind(t)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO flow_dag_versions (dag_id, hash, source, file, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (dag_id, hash) DO NOTHING",
        )
        .bind(&d.id)
        .bind(&d.hash)
        .bind(&d.source)
        .bind(d.file.display().to_string())
        .bind(t)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The import errors of the last parse.
    pub async fn import_errors(&self) -> Result<Vec<DagError>, StoreError> {
        let rows = sqlx::query("SELECT file, line, reason FROM flow_import_errors ORDER BY file")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| DagError {
                file: r.get(0),
                line: r.get::<Option<i64>, _>(1).map(|l| l as usize),
                reason: r.get(2),
            })
            .collect())
    }

    /// Every DAG known.
    pub async fn dags(&self) -> Result<Vec<DagRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT dag_id, file, hash, schedule, paused, last_interval_end FROM flow_dags ORDER BY dag_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(Self::dag_row).collect())
    }

    /// One DAG.
    pub async fn dag(&self, dag_id: &str) -> Result<DagRow, StoreError> {
        let row = sqlx::query(
            "SELECT dag_id, file, hash, schedule, paused, last_interval_end FROM flow_dags WHERE dag_id = $1",
        )
        .bind(dag_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::dag_row).ok_or_else(|| StoreError::NoDag(dag_id.into()))
    }

    fn dag_row(r: &AnyRow) -> DagRow {
        DagRow {
            dag_id: r.get(0),
            file: r.get(1),
            hash: r.get(2),
            schedule: r.get(3),
            paused: r.get::<i64, _>(4) != 0,
            last_interval_end: r.get::<Option<i64>, _>(5).map(instant),
        }
    }

    /// Pauses or unpauses a DAG.
    pub async fn set_paused(&self, dag_id: &str, paused: bool) -> Result<(), StoreError> {
        let r = sqlx::query("UPDATE flow_dags SET paused = $1 WHERE dag_id = $2")
            .bind(i64::from(paused))
            .bind(dag_id)
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::NoDag(dag_id.into()));
        }
        Ok(())
    }

    /// The DAG file text of version `hash`.
    pub async fn version_source(&self, dag_id: &str, hash: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT source, file FROM flow_dag_versions WHERE dag_id = $1 AND hash = $2")
            .bind(dag_id)
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Creates a run of `dag` (version `dag.hash`) with its task instances, and for a scheduled
    /// run moves the DAG's cursor to the interval's end, in one transaction. Returns false when
    /// the run id exists already (nothing is changed then).
    pub async fn create_run(
        &self,
        dag: &Dag,
        run_id: &str,
        run_type: &str,
        interval: Interval,
        conf: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, StoreError> {
        // Writing first takes SQLite's write lock at once (a read first could not be upgraded
        // while another connection writes).
        let mut tx = self.begin().await?;
        let created = self.insert_run(&mut tx, dag, run_id, run_type, interval, conf, None).await?;
        if created {
            tx.commit().await?;
        }
        Ok(created)
    }

    /// Creates a table-triggered run (`run_type` `tables`) of `dag` reading `inputs`, and moves
    /// the DAG's table cursors to their versions, in one transaction. False when the run id
    /// exists already.
    pub async fn create_triggered_run(
        &self,
        dag: &Dag,
        run_id: &str,
        interval: Interval,
        inputs: &Inputs,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let created =
            self.insert_run(&mut tx, dag, run_id, "tables", interval, &Default::default(), Some(inputs)).await?;
        if !created {
            return Ok(false);
        }
        for (table, input) in inputs {
            set_cursor(&mut tx, &dag.id, table, input.version).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The table versions `dag_id`'s last table-triggered run covered, by table.
    pub async fn table_cursors(&self, dag_id: &str) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT table_name, version FROM flow_table_cursors WHERE dag_id = $1")
            .bind(dag_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Sets where `dag_id` starts watching tables it has no cursor for (a new DAG, or a table
    /// added to its list): their versions now, so earlier commits start no run.
    pub async fn start_cursors(&self, dag_id: &str, versions: &[(String, i64)]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for (table, version) in versions {
            sqlx::query(
                "INSERT INTO flow_table_cursors (dag_id, table_name, version) VALUES ($1, $2, $3) \
                 ON CONFLICT (dag_id, table_name) DO NOTHING",
            )
            .bind(dag_id)
            .bind(table)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Inserts a run and its task instances (false, nothing written, when the run id exists).
    #[allow(clippy::too_many_arguments)]
    async fn insert_run(
        &self,
        tx: &mut Tx<'_>,
        dag: &Dag,
        run_id: &str,
        run_type: &str,
        interval: Interval,
        conf: &serde_json::Map<String, serde_json::Value>,
        inputs: Option<&Inputs>,
    ) -> Result<bool, StoreError> {
        let t = now();
        let inserted = sqlx::query(
            "INSERT INTO flow_dag_runs (dag_id, run_id, run_type, logical_date, interval_start, interval_end, state, \
             conf, dag_hash, created_at, inputs) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (dag_id, run_id) DO NOTHING",
        )
        .bind(&dag.id)
        .bind(run_id)
        .bind(run_type)
        .bind(micros(interval.start))
        .bind(micros(interval.start))
        .bind(micros(interval.end))
        .bind(RunState::Queued.as_str())
        .bind(serde_json::Value::Object(conf.clone()).to_string())
        .bind(&dag.hash)
        .bind(t)
        .bind(inputs.map(|i| serde_json::to_string(i).expect("inputs serialize")))
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        for task in &dag.tasks {
            sqlx::query(
                "INSERT INTO flow_task_instances (dag_id, run_id, task_id, state, try_number, max_tries, queue, pool, \
                 priority) VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8)",
            )
            .bind(&dag.id)
            .bind(run_id)
            .bind(&task.id)
            .bind(TaskState::None.as_str())
            .bind(i64::from(task.retries) + 1)
            .bind(&task.queue)
            .bind(&task.pool)
            .bind(task.priority)
            .execute(&mut **tx)
            .await?;
        }
        if run_type == "scheduled" {
            sqlx::query(
                "UPDATE flow_dags SET last_interval_end = $1 WHERE dag_id = $2 AND (last_interval_end IS NULL OR last_interval_end < $1)",
            )
            .bind(micros(interval.end))
            .bind(&dag.id)
            .execute(&mut **tx)
            .await?;
        }
        events::record(tx, t, &[Change::run(&dag.id, run_id, RunState::Queued.as_str())]).await?;
        Ok(true)
    }

    const RUN_COLUMNS: &str = "dag_id, run_id, run_type, interval_start, interval_end, state, conf, dag_hash, created_at, \
                               started_at, ended_at, inputs";

    fn run_row(r: &AnyRow) -> Result<RunRow, StoreError> {
        let state: String = r.get(5);
        let conf: String = r.get(6);
        Ok(RunRow {
            dag_id: r.get(0),
            run_id: r.get(1),
            run_type: r.get(2),
            interval: Interval { start: instant(r.get(3)), end: instant(r.get(4)) },
            state: state.parse().map_err(StoreError::Corrupt)?,
            conf: match serde_json::from_str(&conf) {
                Ok(serde_json::Value::Object(m)) => m,
                _ => return Err(StoreError::Corrupt(format!("run conf {conf:?}"))),
            },
            dag_hash: r.get(7),
            created_at: instant(r.get(8)),
            started_at: r.get::<Option<i64>, _>(9).map(instant),
            ended_at: r.get::<Option<i64>, _>(10).map(instant),
            inputs: match r.get::<Option<String>, _>(11) {
                None => Inputs::new(),
                Some(text) => {
                    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("run inputs {text:?}: {e}")))?
                }
            },
        })
    }

    /// Runs that are queued or running, oldest logical date first.
    pub async fn active_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM flow_dag_runs WHERE state IN ('queued', 'running') ORDER BY interval_start, created_at",
            Self::RUN_COLUMNS
        );
        sqlx::query(&sql).fetch_all(&self.pool).await?.iter().map(Self::run_row).collect()
    }

    /// The task instances of every active (queued or running) run, counted by state.
    pub async fn active_task_counts(&self) -> Result<HashMap<(String, String), HashMap<String, i64>>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.dag_id, i.run_id, i.state, COUNT(*) FROM flow_task_instances i JOIN flow_dag_runs r \
             ON r.dag_id = i.dag_id AND r.run_id = i.run_id WHERE r.state IN ('queued', 'running') \
             GROUP BY i.dag_id, i.run_id, i.state",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut counts: HashMap<(String, String), HashMap<String, i64>> = HashMap::new();
        for r in &rows {
            counts.entry((r.get(0), r.get(1))).or_default().insert(r.get(2), r.get(3));
        }
        Ok(counts)
    }

    /// The runs of a DAG, newest logical date first.
    pub async fn runs(&self, dag_id: &str, limit: usize) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM flow_dag_runs WHERE dag_id = $1 ORDER BY interval_start DESC, created_at DESC LIMIT $2",
            Self::RUN_COLUMNS
        );
        sqlx::query(&sql)
            .bind(dag_id)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Self::run_row)
            .collect()
    }

    /// Every run of a DAG, newest logical date first.
    pub async fn all_runs(&self, dag_id: &str) -> Result<Vec<RunRow>, StoreError> {
        self.runs(dag_id, i64::MAX as usize).await
    }

    /// How many runs of a DAG are running.
    pub async fn running_runs(&self, dag_id: &str) -> Result<usize, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM flow_dag_runs WHERE dag_id = $1 AND state = 'running'")
            .bind(dag_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.get::<i64, _>(0) as usize)
    }

    /// Whether a run of a DAG with this logical date succeeded.
    pub async fn succeeded_at(&self, dag_id: &str, logical_date: DateTime<Utc>) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM flow_dag_runs WHERE dag_id = $1 AND interval_start = $2 AND state = 'success' LIMIT 1",
        )
        .bind(dag_id)
        .bind(micros(logical_date))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// One run.
    pub async fn run(&self, dag_id: &str, run_id: &str) -> Result<RunRow, StoreError> {
        let sql = format!("SELECT {} FROM flow_dag_runs WHERE dag_id = $1 AND run_id = $2", Self::RUN_COLUMNS);
        let row = sqlx::query(&sql).bind(dag_id).bind(run_id).fetch_optional(&self.pool).await?;
        match row {
            Some(r) => Self::run_row(&r),
            None => Err(StoreError::NoRun { dag: dag_id.into(), run: run_id.into() }),
        }
    }

    /// Sets a run's state (a finished state also sets its end; running sets its start once).
    pub async fn set_run_state(&self, dag_id: &str, run_id: &str, state: RunState) -> Result<(), StoreError> {
        let sql = match state {
            RunState::Running => {
                "UPDATE flow_dag_runs SET state = $1, started_at = COALESCE(started_at, $2), ended_at = NULL \
                 WHERE dag_id = $3 AND run_id = $4"
            }
            RunState::Success | RunState::Failed => {
                "UPDATE flow_dag_runs SET state = $1, ended_at = $2 WHERE dag_id = $3 AND run_id = $4"
            }
            RunState::Queued => {
                "UPDATE flow_dag_runs SET state = $1, ended_at = NULL WHERE $2 = $2 AND dag_id = $3 AND run_id = $4"
            }
        };
        let mut tx = self.begin().await?;
        let t = now();
        let r = sqlx::query(sql).bind(state.as_str()).bind(t).bind(dag_id).bind(run_id).execute(&mut *tx).await?;
        if r.rows_affected() > 0 {
            events::record(&mut tx, t, &[Change::run(dag_id, run_id, state.as_str())]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks an active run as past its deadline; false when it was marked before or has ended.
    pub async fn mark_deadline_missed(&self, dag_id: &str, run_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let t = now();
        let r = sqlx::query(
            "UPDATE flow_dag_runs SET deadline_missed_at = $1 WHERE dag_id = $2 AND run_id = $3 \
             AND deadline_missed_at IS NULL AND state IN ('queued', 'running')",
        )
        .bind(t)
        .bind(dag_id)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        let marked = r.rows_affected() == 1;
        if marked {
            events::record(&mut tx, t, &[Change::run(dag_id, run_id, "deadline_missed")]).await?;
        }
        tx.commit().await?;
        Ok(marked)
    }

    /// The task instances of a run.
    pub async fn tasks(&self, dag_id: &str, run_id: &str) -> Result<Vec<TaskRow>, StoreError> {
        let sql = format!("SELECT {} FROM flow_task_instances WHERE dag_id = $1 AND run_id = $2", Self::TASK_COLUMNS);
        let rows = sqlx::query(&sql).bind(dag_id).bind(run_id).fetch_all(&self.pool).await?;
        rows.iter().map(Self::task_row).collect()
    }

    const TASK_COLUMNS: &str =
        "task_id, state, try_number, max_tries, priority, pool, queue, next_try_at, started_at, ended_at, map_parent";

    /// A row of [`Self::TASK_COLUMNS`].
    fn task_row(r: &AnyRow) -> Result<TaskRow, StoreError> {
        let state: String = r.get(1);
        Ok(TaskRow {
            task_id: r.get(0),
            state: state.parse().map_err(StoreError::Corrupt)?,
            try_number: r.get::<i64, _>(2) as u32,
            max_tries: r.get::<i64, _>(3) as u32,
            priority: r.get(4),
            pool: r.get(5),
            queue: r.get(6),
            next_try_at: r.get::<Option<i64>, _>(7).map(instant),
            started_at: r.get::<Option<i64>, _>(8).map(instant),
            ended_at: r.get::<Option<i64>, _>(9).map(instant),
            parent: r.get(10),
        })
    }

    /// The instances of mapped task `parent` in a run, by index (removed ones included).
    pub async fn mapped(&self, dag_id: &str, run_id: &str, parent: &str) -> Result<Vec<TaskRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM flow_task_instances WHERE dag_id = $1 AND run_id = $2 AND map_parent = $3 ORDER BY map_index",
            Self::TASK_COLUMNS
        );
        let rows = sqlx::query(&sql).bind(dag_id).bind(run_id).bind(parent).fetch_all(&self.pool).await?;
        rows.iter().map(Self::task_row).collect()
    }

    /// The index and item of a mapped instance.
    pub async fn map_item(&self, key: &TaskKey) -> Result<Option<(u32, serde_json::Value)>, StoreError> {
        let row = sqlx::query(
            "SELECT map_index, map_item FROM flow_task_instances WHERE dag_id = $1 AND run_id = $2 AND task_id = $3 \
             AND map_parent IS NOT NULL",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let item: String = row.get(1);
        let item = serde_json::from_str(&item).map_err(|e| StoreError::Corrupt(format!("map item of {key:?}: {e}")))?;
        Ok(Some((row.get::<i64, _>(0) as u32, item)))
    }

    /// Creates (or schedules again) the instances `ids` of mapped task `key` for `expansion` and
    /// removes those past its items.
    async fn expand<'a>(
        tx: &mut Tx<'_>,
        key: &'a TaskKey,
        ids: &'a [String],
        expansion: &Expansion,
        t: i64,
        made: &mut Vec<Change<'a>>,
    ) -> Result<(), StoreError> {
        for (index, (id, item)) in ids.iter().zip(&expansion.items).enumerate() {
            sqlx::query(
                "INSERT INTO flow_task_instances (dag_id, run_id, task_id, state, try_number, max_tries, queue, pool, \
                 priority, map_parent, map_index, map_item) SELECT dag_id, run_id, $1, 'scheduled', 0, $2, queue, pool, \
                 priority, task_id, $3, $4 FROM flow_task_instances WHERE dag_id = $5 AND run_id = $6 AND task_id = $7 \
                 ON CONFLICT (dag_id, run_id, task_id) DO UPDATE SET state = 'scheduled', \
                 max_tries = flow_task_instances.try_number + $2, next_try_at = NULL, ended_at = NULL, \
                 map_index = excluded.map_index, map_item = excluded.map_item",
            )
            .bind(id)
            .bind(i64::from(expansion.tries))
            .bind(index as i64)
            .bind(item.to_string())
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .execute(&mut **tx)
            .await?;
            made.push(Change::task(&key.dag_id, &key.run_id, id, None, TaskState::Scheduled.as_str()));
        }
        let removed = sqlx::query(
            "UPDATE flow_task_instances SET state = 'removed', ended_at = $1 WHERE dag_id = $2 AND run_id = $3 \
             AND map_parent = $4 AND map_index >= $5 AND state <> 'removed'",
        )
        .bind(t)
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(expansion.items.len() as i64)
        .execute(&mut **tx)
        .await?;
        if removed.rows_affected() > 0 {
            tracing::info!(dag = %key.dag_id, run_id = %key.run_id, task = %key.task_id, removed = removed.rows_affected(), "mapped instances past the new expansion's items removed");
        }
        Ok(())
    }

    /// The task instances `ids` of a run.
    pub async fn tasks_in(&self, dag_id: &str, run_id: &str, ids: &[String]) -> Result<Vec<TaskRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT {} FROM flow_task_instances WHERE dag_id = $1 AND run_id = $2 AND task_id IN ({})",
            Self::TASK_COLUMNS,
            marks.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(dag_id).bind(run_id);
        for id in ids {
            q = q.bind(id);
        }
        q.fetch_all(&self.pool).await?.iter().map(Self::task_row).collect()
    }

    /// How many task instances of a run have not finished.
    pub async fn unfinished(&self, dag_id: &str, run_id: &str) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM flow_task_instances WHERE dag_id = $1 AND run_id = $2 \
             AND state NOT IN ('success', 'failed', 'upstream_failed', 'skipped', 'removed')",
        )
        .bind(dag_id)
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>(0))
    }

    /// Sets task instances' state (for none, scheduled, queued, skipped, upstream_failed).
    pub async fn set_task_states(
        &self,
        dag_id: &str,
        run_id: &str,
        changes: &[(String, TaskState)],
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        let t = now();
        let mut made = Vec::with_capacity(changes.len());
        for (task_id, state) in changes {
            let ended = state.is_finished().then_some(t);
            let r = sqlx::query("UPDATE flow_task_instances SET state = $1, ended_at = COALESCE($2, ended_at) WHERE dag_id = $3 AND run_id = $4 AND task_id = $5")
                .bind(state.as_str())
                .bind(ended)
                .bind(dag_id)
                .bind(run_id)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() > 0 {
                made.push(Change::task(dag_id, run_id, task_id, None, state.as_str()));
            }
        }
        events::record(&mut tx, t, &made).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts tries of scheduled task instances — (instance, try number, log file) — in one
    /// transaction. For each: false (and nothing changed) when it is no longer scheduled.
    pub async fn start_tries(&self, starts: &[(TaskKey, u32, String)]) -> Result<Vec<bool>, StoreError> {
        self.end_and_start(&[], None, starts).await.map(|(_, started)| started)
    }

    /// Records the ends of tries (see [`Self::finish_tries`]) and starts others (see
    /// [`Self::start_tries`]) in one transaction: the scheduler fills the slots the ended tries
    /// free from its queue as it records their ends. Returns, per finish and per start, whether
    /// it was recorded.
    pub async fn finish_and_start(
        &self,
        finishes: &[Finish],
        starts: &[(TaskKey, u32, String)],
    ) -> Result<(Vec<bool>, Vec<bool>), StoreError> {
        self.end_and_start(finishes, None, starts).await
    }

    async fn end_and_start(
        &self,
        finishes: &[Finish],
        worker: Option<&str>,
        starts: &[(TaskKey, u32, String)],
    ) -> Result<(Vec<bool>, Vec<bool>), StoreError> {
        if finishes.is_empty() && starts.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut tx = self.begin().await?;
        let t = now();
        let mut made = Vec::new();
        // The ids of the instances expansions create.
        let instances: Vec<Vec<String>> = finishes
            .iter()
            .map(|f| {
                let n = f.expand.as_ref().map_or(0, |e| e.items.len());
                (0..n).map(|i| crate::dag::mapped_id(&f.key.task_id, i as u32)).collect()
            })
            .collect();
        let recorded = self.end_rows(&mut tx, t, finishes, worker, &instances, &mut made).await?;
        let started = Self::start_rows(&mut tx, t, starts, &mut made).await?;
        events::record(&mut tx, t, &made).await?;
        tx.commit().await?;
        Ok((recorded, started))
    }

    /// Within `tx`: marks `starts` running (those still scheduled) and adds their tries.
    async fn start_rows<'a>(
        tx: &mut Tx<'_>,
        t: i64,
        starts: &'a [(TaskKey, u32, String)],
        made: &mut Vec<Change<'a>>,
    ) -> Result<Vec<bool>, StoreError> {
        // A few statements for all of them, not two each: every statement is a round trip to
        // the database on the scheduler's critical path.
        let mut updated: std::collections::HashSet<(String, String, String)> = std::collections::HashSet::new();
        for chunk in starts.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE flow_task_instances SET state = 'running', try_number = v.column4, started_at = $1, \
                 ended_at = NULL, worker = NULL, next_try_at = NULL FROM (VALUES {}) AS v \
                 WHERE flow_task_instances.dag_id = v.column1 AND flow_task_instances.run_id = v.column2 \
                 AND flow_task_instances.task_id = v.column3 AND flow_task_instances.state = 'scheduled' \
                 RETURNING flow_task_instances.dag_id, flow_task_instances.run_id, flow_task_instances.task_id",
                value_rows(chunk.len(), 4, 2)
            );
            let mut q = sqlx::query(&sql).bind(t);
            for (key, try_number, _) in chunk {
                q = q.bind(&key.dag_id).bind(&key.run_id).bind(&key.task_id).bind(i64::from(*try_number));
            }
            for r in q.fetch_all(&mut **tx).await? {
                updated.insert((r.get(0), r.get(1), r.get(2)));
            }
        }
        let started: Vec<bool> = starts
            .iter()
            .map(|(k, _, _)| updated.contains(&(k.dag_id.clone(), k.run_id.clone(), k.task_id.clone())))
            .collect();
        let tries: Vec<&(TaskKey, u32, String)> =
            starts.iter().zip(&started).filter(|(_, ok)| **ok).map(|(s, _)| s).collect();
        for chunk in tries.chunks(ROWS_PER_STATEMENT) {
            let values: Vec<String> = (0..chunk.len())
                .map(|j| {
                    let p = |k: usize| format!("${}", 5 * j + k + 1);
                    format!("({}, {}, {}, {}, 'running', $1, {})", p(1), p(2), p(3), p(4), p(5))
                })
                .collect();
            let sql = format!(
                "INSERT INTO flow_task_tries (dag_id, run_id, task_id, try_number, state, started_at, log) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(t);
            for (key, try_number, log) in chunk {
                q = q.bind(&key.dag_id).bind(&key.run_id).bind(&key.task_id).bind(i64::from(*try_number)).bind(log);
            }
            q.execute(&mut **tx).await?;
        }
        made.extend(tries.iter().map(|(key, try_number, _)| {
            Change::task(&key.dag_id, &key.run_id, &key.task_id, Some(*try_number), "running")
        }));
        Ok(started)
    }

    /// Records the ends of tries in one transaction (see [`Finish`]). A try whose instance is no
    /// longer running that try (a zombie failed meanwhile) is left as it is.
    pub async fn finish_tries(&self, finishes: &[Finish]) -> Result<(), StoreError> {
        self.finish(finishes, None).await.map(|_| ())
    }

    /// A worker records the ends of its tries: only tries it still holds are recorded (a try the
    /// scheduler failed as a zombie stays failed). Returns, per finish, whether it was recorded;
    /// on PostgreSQL the scheduler is notified in the same transaction.
    pub async fn finish_tries_of(&self, worker: &str, finishes: &[Finish]) -> Result<Vec<bool>, StoreError> {
        self.finish(finishes, Some(worker)).await
    }

    async fn finish(&self, finishes: &[Finish], worker: Option<&str>) -> Result<Vec<bool>, StoreError> {
        self.end_and_start(finishes, worker, &[]).await.map(|(recorded, _)| recorded)
    }

    /// Within `tx`: records the ends of `finishes` (see [`Finish`]), with the instances of
    /// expansions (`instances`, per finish).
    async fn end_rows<'a>(
        &self,
        tx: &mut Tx<'_>,
        t: i64,
        finishes: &'a [Finish],
        worker: Option<&str>,
        instances: &'a [Vec<String>],
        made: &mut Vec<Change<'a>>,
    ) -> Result<Vec<bool>, StoreError> {
        if finishes.is_empty() {
            return Ok(Vec::new());
        }
        // As in `start_tries`: one statement per table for all of them, not two per try.
        let held = if worker.is_some() { "AND flow_task_instances.worker = $2" } else { "AND $2 = $2" };
        let mut ended: std::collections::HashSet<(String, String, String)> = std::collections::HashSet::new();
        for chunk in finishes.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE flow_task_instances SET state = v.column5, ended_at = $1, next_try_at = v.column6 \
                 FROM (VALUES {}) AS v WHERE flow_task_instances.dag_id = v.column1 \
                 AND flow_task_instances.run_id = v.column2 AND flow_task_instances.task_id = v.column3 \
                 AND flow_task_instances.try_number = v.column4 AND flow_task_instances.state = 'running' {held} \
                 RETURNING flow_task_instances.dag_id, flow_task_instances.run_id, flow_task_instances.task_id",
                value_rows(chunk.len(), 6, 3)
            );
            let mut q = sqlx::query(&sql).bind(t).bind(worker.unwrap_or(""));
            for f in chunk {
                // Counted from the end as recorded, so the wait is never shorter than asked.
                let next_try = f.retry_wait.map(|w| t + i64::try_from(w.as_micros()).unwrap_or(i64::MAX / 2));
                q = q
                    .bind(&f.key.dag_id)
                    .bind(&f.key.run_id)
                    .bind(&f.key.task_id)
                    .bind(i64::from(f.try_number))
                    .bind(f.state.as_str())
                    .bind(next_try);
            }
            for r in q.fetch_all(&mut **tx).await? {
                ended.insert((r.get(0), r.get(1), r.get(2)));
            }
        }
        let recorded: Vec<bool> = finishes
            .iter()
            .map(|f| ended.contains(&(f.key.dag_id.clone(), f.key.run_id.clone(), f.key.task_id.clone())))
            .collect();
        let done: Vec<(&Finish, &Vec<String>)> =
            finishes.iter().zip(instances).zip(&recorded).filter(|(_, ok)| **ok).map(|(f, _)| f).collect();
        for (f, ids) in &done {
            let key = &f.key;
            made.push(
                Change::task(&key.dag_id, &key.run_id, &key.task_id, Some(f.try_number), f.state.as_str())
                    .because(f.reason.as_deref()),
            );
            if let Some(expansion) = &f.expand {
                Self::expand(tx, key, ids, expansion, t, made).await?;
            }
            for task_id in &f.skip {
                let skipped = sqlx::query(
                    "UPDATE flow_task_instances SET state = 'skipped', ended_at = $1 WHERE dag_id = $2 AND run_id = $3 \
                     AND task_id = $4 AND state = 'none'",
                )
                .bind(t)
                .bind(&key.dag_id)
                .bind(&key.run_id)
                .bind(task_id)
                .execute(&mut **tx)
                .await?;
                if skipped.rows_affected() > 0 {
                    made.push(Change::task(&key.dag_id, &key.run_id, task_id, None, TaskState::Skipped.as_str()));
                }
            }
            if worker.is_some() {
                self.notify(tx, DONE_CHANNEL, &format!("{}\n{}\n{}", key.dag_id, key.run_id, key.task_id)).await?;
            }
        }
        for chunk in done.chunks(ROWS_PER_STATEMENT) {
            let chunk: Vec<&Finish> = chunk.iter().map(|(f, _)| *f).collect();
            let sql = format!(
                "UPDATE flow_task_tries SET state = v.column5, ended_at = $1, reason = v.column6, \
                 log = COALESCE(v.column7, flow_task_tries.log) FROM (VALUES {}) AS v \
                 WHERE flow_task_tries.dag_id = v.column1 AND flow_task_tries.run_id = v.column2 \
                 AND flow_task_tries.task_id = v.column3 AND flow_task_tries.try_number = v.column4",
                value_rows(chunk.len(), 7, 2)
            );
            let mut q = sqlx::query(&sql).bind(t);
            for f in &chunk {
                // The try that expanded a mapped task succeeded.
                let try_state = match f.state {
                    TaskState::UpForRetry => TaskState::Failed,
                    TaskState::Mapped => TaskState::Success,
                    s => s,
                };
                q = q
                    .bind(&f.key.dag_id)
                    .bind(&f.key.run_id)
                    .bind(&f.key.task_id)
                    .bind(i64::from(f.try_number))
                    .bind(try_state.as_str())
                    .bind(f.reason.as_deref())
                    .bind(f.log.as_deref());
            }
            q.execute(&mut **tx).await?;
        }
        Ok(recorded)
    }

    /// The tries of a task instance, first first.
    pub async fn tries(&self, key: &TaskKey) -> Result<Vec<TryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT try_number, state, started_at, ended_at, reason, log FROM flow_task_tries WHERE dag_id = $1 \
             AND run_id = $2 AND task_id = $3 ORDER BY try_number",
        )
        .bind(&key.dag_id)
        .bind(&key.run_id)
        .bind(&key.task_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let state: String = r.get(1);
                Ok(TryRow {
                    try_number: r.get::<i64, _>(0) as u32,
                    state: state.parse().map_err(StoreError::Corrupt)?,
                    started_at: instant(r.get(2)),
                    ended_at: r.get::<Option<i64>, _>(3).map(instant),
                    reason: r.get(4),
                    log: r.get(5),
                })
            })
            .collect()
    }

    /// Clears task instances of a run so they run again: state none, and retries counted afresh
    /// from the current try (the tries so far stay in the history). The run becomes queued.
    /// With `latest`, the next tries read the lake tables' latest versions instead of those the
    /// earlier tries read ([`Self::pinned_inputs`]). Mapped tasks in `mapped` wait for their
    /// cleared instances again (state `mapped`); a mapped task cleared itself expands anew once
    /// none of its instances runs.
    pub async fn clear(
        &self,
        dag_id: &str,
        run_id: &str,
        tasks: &[(String, u32)],
        mapped: &[String],
        latest: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let mut made = Vec::new();
        for (task_id, retries) in tasks {
            let r = sqlx::query(
                "UPDATE flow_task_instances SET state = 'none', max_tries = try_number + $1, next_try_at = NULL, \
                 ended_at = NULL, inputs_after = CASE WHEN $5 THEN try_number ELSE inputs_after END \
                 WHERE dag_id = $2 AND run_id = $3 AND task_id = $4 AND state NOT IN ('running', 'queued') \
                 AND NOT EXISTS (SELECT 1 FROM flow_task_instances m WHERE m.dag_id = $2 AND m.run_id = $3 \
                 AND m.map_parent = $4 AND m.state IN ('running', 'queued'))",
            )
            .bind(i64::from(*retries) + 1)
            .bind(dag_id)
            .bind(run_id)
            .bind(task_id)
            .bind(latest)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                made.push(Change::task(dag_id, run_id, task_id, None, TaskState::None.as_str()));
            }
        }
        for task_id in mapped {
            let r = sqlx::query(
                "UPDATE flow_task_instances SET state = 'mapped', ended_at = NULL WHERE dag_id = $1 AND run_id = $2 \
                 AND task_id = $3",
            )
            .bind(dag_id)
            .bind(run_id)
            .bind(task_id)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() > 0 {
                made.push(Change::task(dag_id, run_id, task_id, None, TaskState::Mapped.as_str()));
            }
        }
        sqlx::query("UPDATE flow_dag_runs SET state = 'queued', ended_at = NULL WHERE dag_id = $1 AND run_id = $2")
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        made.push(Change::run(dag_id, run_id, RunState::Queued.as_str()));
        events::record(&mut tx, now(), &made).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a finished or waiting task instance's state by hand (`success` or `failed`, as
    /// Airflow's "mark"): a running or queued one is refused, since its try would overwrite the
    /// mark. The run becomes queued so the scheduler settles it (and its downstream tasks) anew.
    pub async fn mark(&self, dag_id: &str, run_id: &str, task_id: &str, state: TaskState) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let t = now();
        let r = sqlx::query(
            "UPDATE flow_task_instances SET state = $1, ended_at = $2, next_try_at = NULL \
             WHERE dag_id = $3 AND run_id = $4 AND task_id = $5 AND state NOT IN ('running', 'queued')",
        )
        .bind(state.as_str())
        .bind(t)
        .bind(dag_id)
        .bind(run_id)
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("UPDATE flow_dag_runs SET state = 'queued', ended_at = NULL WHERE dag_id = $1 AND run_id = $2")
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        let made = [
            Change::task(dag_id, run_id, task_id, None, state.as_str()).because(Some("marked by hand")),
            Change::run(dag_id, run_id, RunState::Queued.as_str()),
        ];
        events::record(&mut tx, t, &made).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The states of each DAG's newest `per_dag` runs (newest first), in one query.
    pub async fn recent_run_states(&self, per_dag: usize) -> Result<Vec<(String, String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT dag_id, run_id, state FROM (SELECT dag_id, run_id, state, ROW_NUMBER() OVER \
             (PARTITION BY dag_id ORDER BY interval_start DESC, created_at DESC) AS n FROM flow_dag_runs) AS r \
             WHERE n <= $1 ORDER BY dag_id, n",
        )
        .bind(per_dag as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// The task instances of a DAG's newest `runs` runs (those [`Self::runs`] returns), in one
    /// query of only the columns a grid shows. The instances of a run come packed in one text
    /// value (`task:state:try:start:end`, comma-separated; task ids hold neither separator):
    /// moving 100 rows out of the driver rather than 20,000 is most of a grid's cost
    /// (docs/benchmarks.md, `weir bench console`).
    pub async fn recent_tasks(&self, dag_id: &str, runs: usize) -> Result<Vec<GridCell>, StoreError> {
        let agg = if self.postgres { "string_agg" } else { "group_concat" };
        let sql = format!(
            "SELECT run_id, {agg}(task_id || ':' || state || ':' || CAST(try_number AS TEXT) || ':' || \
             COALESCE(CAST(started_at AS TEXT), '') || ':' || COALESCE(CAST(ended_at AS TEXT), ''), ',') \
             FROM flow_task_instances WHERE dag_id = $1 AND run_id IN (SELECT run_id FROM flow_dag_runs \
             WHERE dag_id = $1 ORDER BY interval_start DESC, created_at DESC LIMIT $2) GROUP BY run_id"
        );
        let rows = sqlx::query(&sql).bind(dag_id).bind(runs as i64).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in &rows {
            let run_id: String = r.get(0);
            let packed: String = r.get(1);
            for item in packed.split(',') {
                let corrupt = || StoreError::Corrupt(format!("grid cell {item:?} of run {run_id}"));
                let mut f = item.split(':');
                let (Some(task), Some(state), Some(tries), Some(start), Some(end)) =
                    (f.next(), f.next(), f.next(), f.next(), f.next())
                else {
                    return Err(corrupt());
                };
                let time = |t: &str| t.parse::<i64>().ok().map(instant);
                out.push(GridCell {
                    run_id: run_id.clone(),
                    task_id: task.to_string(),
                    state: state.parse().map_err(StoreError::Corrupt)?,
                    try_number: tries.parse().map_err(|_| corrupt())?,
                    started_at: time(start),
                    ended_at: time(end),
                });
            }
        }
        Ok(out)
    }

    /// Task instances queued or running in `pool`, over every DAG.
    pub async fn busy_in_pool(&self, pool: &str) -> Result<usize, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) FROM flow_task_instances WHERE pool = $1 AND state IN ('queued', 'running')")
                .bind(pool)
                .fetch_one(&self.pool)
                .await?;
        Ok(row.get::<i64, _>(0) as usize)
    }

    /// Task instances left running or scheduled by a scheduler's local executor that stopped:
    /// back to none (their try stays in the history, failed, and counts against the retries).
    /// Instances handed to workers are theirs: a worker that stopped is found by its beats.
    pub async fn reset_orphans(&self) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let t = now();
        sqlx::query(
            "UPDATE flow_task_tries SET state = 'failed', ended_at = $1, reason = 'the scheduler stopped while it ran' \
             WHERE state = 'running' AND EXISTS (SELECT 1 FROM flow_task_instances i WHERE i.dag_id = flow_task_tries.dag_id \
             AND i.run_id = flow_task_tries.run_id AND i.task_id = flow_task_tries.task_id AND i.worker IS NULL)",
        )
        .bind(t)
        .execute(&mut *tx)
        .await?;
        let orphans = sqlx::query(
            "UPDATE flow_task_instances SET state = CASE WHEN try_number < max_tries THEN 'none' ELSE 'failed' END, \
             ended_at = $1 WHERE state IN ('running', 'scheduled') AND worker IS NULL \
             RETURNING dag_id, run_id, task_id, state",
        )
        .bind(t)
        .fetch_all(&mut *tx)
        .await?;
        let rows: Vec<(String, String, String, String)> =
            orphans.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        let made: Vec<Change> = rows.iter().map(|(d, r, k, st)| Change::task(d, r, k, None, st)).collect();
        events::record(&mut tx, t, &made).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}

/// A JSON column of a try that something besides its start and end fills in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TryJson {
    /// What it handed on (`$WEIR_OUTPUT`, a SQL task's view).
    Output,
    /// The table versions it read.
    Inputs,
}

impl Store {
    /// Sets `column` of try `try_number` of `key` to `json`.
    pub(crate) async fn set_try_json(
        &self,
        key: &TaskKey,
        try_number: u32,
        column: TryJson,
        json: String,
    ) -> Result<(), StoreError> {
        let sql = match column {
            TryJson::Output => {
                "UPDATE flow_task_tries SET output = $1 WHERE dag_id = $2 AND run_id = $3 AND task_id = $4 AND try_number = $5"
            }
            TryJson::Inputs => {
                "UPDATE flow_task_tries SET inputs = $1 WHERE dag_id = $2 AND run_id = $3 AND task_id = $4 AND try_number = $5"
            }
        };
        sqlx::query(sql)
            .bind(json)
            .bind(&key.dag_id)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(i64::from(try_number))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Moves `dag_id`'s cursor on `table` to `version`.
async fn set_cursor(tx: &mut Tx<'_>, dag_id: &str, table: &str, version: i64) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO flow_table_cursors (dag_id, table_name, version) VALUES ($1, $2, $3) \
         ON CONFLICT (dag_id, table_name) DO UPDATE SET version = excluded.version",
    )
    .bind(dag_id)
    .bind(table)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn value_rows_number_every_parameter_once() {
        assert_eq!(super::value_rows(2, 2, 3), "($3, $4), ($5, $6)");
        assert_eq!(super::value_rows(1, 3, 1), "($1, $2, $3)");
        assert_eq!(super::value_rows(0, 3, 1), "");
    }
}
