//! The scheduler end to end with real processes, a real lake directory and a real metadata DB —
//! every test on SQLite, on PostgreSQL (`WEIR_TEST_POSTGRES_URL`, started by `scripts/test`),
//! and on both with the tasks run by two remote workers claiming from the queue.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use weir_flow::{
    dag,
    rules::{RunState, TaskState},
    runs::{self, ClearSpec},
    scheduler::{Executor, FlowConfig, Scheduler},
    store::{RunRow, Store, TaskKey},
    worker::Worker,
};
use weir_lake::{Lake, LakeConfig};
use weir_schemas::metadata;

mod common;
use common::postgres_database;

/// A scheduler running on a temporary DAG folder and lake, and the store it writes.
struct Setup {
    dir: tempfile::TempDir,
    store: Store,
    lake: Arc<Lake>,
    db: Db,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The bus the scheduler hears lake commit signals on, when the test has one.
    bus: Option<Arc<dyn weir_bus::Bus>>,
}

impl Setup {
    async fn new(db: Db) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        let pool = match db {
            Db::Sqlite | Db::SqliteWorkers => {
                metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5))
                    .await
                    .unwrap()
            }
            Db::Postgres | Db::Workers => postgres_database().await,
            Db::PostgresTls => postgres_tls_database().await,
        };
        let store = Store::open(pool).await.unwrap();
        let lake_url = url::Url::from_directory_path(dir.path().join("lake")).unwrap();
        let lake =
            Arc::new(Lake::new(&LakeConfig { url: lake_url.as_str().parse().unwrap(), ..LakeConfig::default() }));
        Setup { dir, store, lake, db, stop: None, tasks: Vec::new(), bus: None }
    }

    /// Gives the test an embedded bus: the lake announces its commits on it and the scheduler
    /// hears them.
    fn with_signals(mut self) -> Setup {
        let bus: Arc<dyn weir_bus::Bus> =
            Arc::new(weir_bus::local::LocalBus::open(&self.dir.path().join("bus"), Default::default()).unwrap());
        let lake = (*self.lake).clone().with_signals(weir_lake::signal::Signals::new(bus.clone()));
        self.lake = Arc::new(lake);
        self.bus = Some(bus);
        self
    }

    fn dags(&self) -> PathBuf {
        self.dir.path().join("dags")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_dag(&self, name: &str, text: &str) -> dag::Dag {
        let path = self.dags().join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        dag::load_file(&path).unwrap()
    }

    fn config(&self) -> FlowConfig {
        FlowConfig {
            dags_dir: self.dags(),
            slots: 4,
            parse_interval: Duration::from_millis(200),
            poll_interval: Duration::from_millis(50),
            logs_dir: Some(self.dir.path().join("logs")),
            executor: match self.db {
                Db::Workers | Db::SqliteWorkers => Executor::Workers,
                Db::Sqlite | Db::Postgres | Db::PostgresTls => Executor::Local,
            },
            heartbeat_interval: Duration::from_millis(100),
            ..FlowConfig::default()
        }
    }

    fn start(&mut self) {
        self.start_with(self.config());
    }

    /// Starts the scheduler and, with remote workers, two of them (half the slots each).
    fn start_with(&mut self, config: FlowConfig) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        self.stop = Some(tx);
        let stopped = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        if config.executor == Executor::Workers {
            for _ in 0..2 {
                let worker = Worker::new(
                    self.store.clone(),
                    self.lake.clone(),
                    config.clone(),
                    vec!["default".into()],
                    config.slots / 2,
                );
                let stop = stopped();
                self.tasks.push(tokio::spawn(async move { worker.run(stop).await.expect("a worker fails") }));
            }
        }
        let mut scheduler = Scheduler::new(self.store.clone(), self.lake.clone(), config);
        if let Some(bus) = &self.bus {
            scheduler = scheduler.with_bus(bus.clone());
        }
        let stop = stopped();
        self.tasks.push(tokio::spawn(async move { scheduler.run(stop).await.expect("the scheduler fails") }));
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
    }

    /// Waits until the run has finished.
    async fn finished(&self, dag_id: &str, run_id: &str, limit: Duration) -> RunRow {
        let started = Instant::now();
        loop {
            let run = self.store.run(dag_id, run_id).await.unwrap();
            if matches!(run.state, RunState::Success | RunState::Failed) {
                return run;
            }
            if started.elapsed() >= limit {
                let tasks = self.store.tasks(dag_id, run_id).await.unwrap();
                panic!("run {run_id} of {dag_id} still {} after {limit:?}: {tasks:#?}", run.state);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn states(&self, dag_id: &str, run_id: &str) -> Vec<(String, TaskState)> {
        let mut t: Vec<_> =
            self.store.tasks(dag_id, run_id).await.unwrap().into_iter().map(|t| (t.task_id, t.state)).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    async fn state(&self, dag_id: &str, run_id: &str, task: &str) -> TaskState {
        self.states(dag_id, run_id).await.into_iter().find(|(t, _)| t == task).unwrap().1
    }
}

#[derive(Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
    /// PostgreSQL, with tasks run by remote workers.
    Workers,
    /// SQLite, with tasks run by remote workers (no notifications: everyone looks often).
    SqliteWorkers,
    /// PostgreSQL over TLS (`sslmode=verify-full` with the test CA).
    PostgresTls,
}

/// A fresh PostgreSQL database for one test, reached over TLS that checks the server's
/// certificate and name against the test CA (`sslmode=verify-full`).
async fn postgres_tls_database() -> sqlx::AnyPool {
    let base = std::env::var("WEIR_TEST_POSTGRES_URL")
        .expect("WEIR_TEST_POSTGRES_URL is not set: run scripts/test, which starts PostgreSQL on loopback");
    let ca = weir_e2e::https::tls_dir().join("ca.pem");
    let name = format!("flow_tls_{}", std::process::id());
    let url = metadata::create_postgres_database(&base, &name).await.unwrap();
    let url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let pool = metadata::connect(&url, Duration::from_secs(10)).await.unwrap();
    let ssl: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(ssl, "the metadata connection is encrypted");
    pool
}

/// The error of connecting to the test PostgreSQL over TLS that trusts only `ca_file`.
async fn postgres_tls_error(ca_file: &std::path::Path) -> String {
    let base = std::env::var("WEIR_TEST_POSTGRES_URL").unwrap();
    let url = format!("{base}?sslmode=verify-full&sslrootcert={}", ca_file.display());
    match metadata::connect(&url, Duration::from_secs(5)).await {
        Ok(_) => panic!("connected with a CA that did not sign the server's certificate"),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

fn key(dag: &str, run: &str, task: &str) -> TaskKey {
    TaskKey { dag_id: dag.into(), run_id: run.into(), task_id: task.into() }
}

/// A script counting its calls in `file`, failing until the `n`th call.
fn succeed_on_call(file: &Path, n: u32) -> String {
    format!(
        "[sh, -c, 'c=$(cat {f} 2>/dev/null || echo 0); c=$((c+1)); echo $c > {f}; echo call $c; [ $c -ge {n} ]']",
        f = file.display()
    )
}

async fn retries_back_off_and_a_failure_fails_downstream(db: Db) {
    let mut s = Setup::new(db).await;
    let flaky = succeed_on_call(&s.path("flaky.count"), 3);
    let d = s.write_dag(
        "retry",
        &format!(
            "tasks:
  - id: flaky
    script: {flaky}
    retries: 3
    retry_delay: 300ms
    retry_exponential_backoff: true
  - id: doomed
    script: [sh, -c, 'echo nope >&2; exit 7']
    retries: 1
    retry_delay: 100ms
  - id: after_doomed
    upstream: [doomed]
    script: [true]
  - id: after_flaky
    upstream: [flaky]
    script: [true]
"
        ),
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    let run = s.finished("retry", &run_id, Duration::from_secs(30)).await;
    assert_eq!(run.state, RunState::Failed, "a leaf failed upstream");
    assert_eq!(
        s.states("retry", &run_id).await,
        [
            ("after_doomed".into(), TaskState::UpstreamFailed),
            ("after_flaky".into(), TaskState::Success),
            ("doomed".into(), TaskState::Failed),
            ("flaky".into(), TaskState::Success),
        ]
    );
    let tries = s.store.tries(&key("retry", &run_id, "flaky")).await.unwrap();
    assert_eq!(
        tries.iter().map(|t| t.state).collect::<Vec<_>>(),
        [TaskState::Failed, TaskState::Failed, TaskState::Success]
    );
    let gap = |a: usize| (tries[a + 1].started_at - tries[a].ended_at.unwrap()).to_std().unwrap();
    assert!(gap(0) >= Duration::from_millis(300), "first retry after {:?}", gap(0));
    assert!(gap(1) >= Duration::from_millis(600), "second retry after {:?} (doubled)", gap(1));
    assert!(gap(1) < Duration::from_secs(3), "{:?}", gap(1));
    let doomed = s.store.tries(&key("retry", &run_id, "doomed")).await.unwrap();
    assert_eq!(doomed.len(), 2, "one retry");
    assert!(doomed[1].reason.as_deref().unwrap().contains("exited with status 7"), "{doomed:?}");
    let log = std::fs::read_to_string(&doomed[1].log).unwrap();
    assert!(log.contains("nope"), "stderr goes to the log too: {log}");
    assert!(doomed[1].log.ends_with(&format!("/retry/{run_id}/doomed.2.log")), "{}", doomed[1].log);
    s.stop().await;
}

async fn a_try_past_its_timeout_is_killed(db: Db) {
    let mut s = Setup::new(db).await;
    let d = s.write_dag("slow", "tasks:\n  - {id: sleepy, script: [sleep, '30'], execution_timeout: 500ms}\n");
    s.start();
    let started = Instant::now();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    let run = s.finished("slow", &run_id, Duration::from_secs(20)).await;
    assert_eq!(run.state, RunState::Failed);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let tries = s.store.tries(&key("slow", &run_id, "sleepy")).await.unwrap();
    assert!(tries[0].reason.as_deref().unwrap().contains("execution_timeout"), "{tries:?}");
    s.stop().await;
}

async fn every_trigger_rule(db: Db) {
    let mut s = Setup::new(db).await;
    let mut text = String::from("tasks:\n  - {id: ok, script: [true]}\n  - {id: bad, script: [false]}\n");
    let rules =
        ["all_success", "all_failed", "all_done", "one_success", "one_failed", "none_failed", "none_skipped", "always"];
    for r in rules {
        text.push_str(&format!("  - {{id: {r}, upstream: [ok, bad], trigger_rule: {r}, script: [true]}}\n"));
    }
    // Skips: a branch that follows `ok2`, skipping `skipped`; rules downstream of a skip.
    text.push_str("  - {id: pick, branch: [echo, ok2]}\n  - {id: ok2, upstream: [pick], script: [true]}\n");
    text.push_str("  - {id: skipped, upstream: [pick], script: [true]}\n");
    for r in ["all_success", "none_failed", "none_skipped", "one_success"] {
        text.push_str(&format!("  - {{id: s_{r}, upstream: [ok2, skipped], trigger_rule: {r}, script: [true]}}\n"));
    }
    let d = s.write_dag("rules", &text);
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    s.finished("rules", &run_id, Duration::from_secs(30)).await;
    use TaskState::{Skipped, Success, UpstreamFailed};
    let want = [
        ("all_success", UpstreamFailed),
        ("all_failed", Skipped),
        ("all_done", Success),
        ("one_success", Success),
        ("one_failed", Success),
        ("none_failed", UpstreamFailed),
        ("none_skipped", Success),
        ("always", Success),
        ("ok2", Success),
        ("skipped", Skipped),
        ("s_all_success", Skipped),
        ("s_none_failed", Success),
        ("s_none_skipped", Skipped),
        ("s_one_success", Success),
    ];
    for (task, state) in want {
        assert_eq!(s.state("rules", &run_id, task).await, state, "task {task}");
    }
    // A silent success leaves no log file and reads as "no output"; a silent failure's says how
    // it ended.
    let quiet = &s.store.tries(&key("rules", &run_id, "ok")).await.unwrap()[0];
    assert!(!std::path::Path::new(&quiet.log).exists(), "{}", quiet.log);
    assert_eq!(runs::read_log(&s.lake, &quiet.log).await.unwrap(), runs::NO_OUTPUT.as_bytes());
    let failed = &s.store.tries(&key("rules", &run_id, "bad")).await.unwrap()[0];
    let text = String::from_utf8(runs::read_log(&s.lake, &failed.log).await.unwrap()).unwrap();
    assert!(text.contains("[weir] false ended with exit status: 1"), "{text}");
    s.stop().await;
}

async fn a_branch_that_names_a_stranger_fails(db: Db) {
    let mut s = Setup::new(db).await;
    let d = s.write_dag(
        "badbranch",
        "tasks:\n  - {id: pick, branch: [echo, elsewhere]}\n  - {id: a, upstream: [pick], script: [true]}\n",
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    s.finished("badbranch", &run_id, Duration::from_secs(20)).await;
    assert_eq!(s.state("badbranch", &run_id, "pick").await, TaskState::Failed);
    let tries = s.store.tries(&key("badbranch", &run_id, "pick")).await.unwrap();
    assert!(tries[0].reason.as_deref().unwrap().contains("\"elsewhere\""), "{tries:?}");
    s.stop().await;
}

fn days_ago(n: i64) -> String {
    (Utc::now() - chrono::Duration::days(n)).format("%Y-%m-%d").to_string()
}

async fn catchup_backfill_and_templated_dates(db: Db) {
    let mut s = Setup::new(db).await;
    let out = s.path("dates.txt");
    // Catchup: one run per day since the start date, each writing its own ds.
    s.write_dag(
        "daily",
        &format!(
            "schedule: '@daily'\nstart_date: {}\ncatchup: true\nmax_active_runs: 2\ntasks:\n  - id: t\n    script: [sh, -c, 'echo {{{{ ds }}}} {{{{ data_interval_end }}}} >> {}']\n",
            days_ago(5),
            out.display()
        ),
    );
    // No catchup: only the latest interval.
    s.write_dag(
        "latest",
        &format!("schedule: '@daily'\nstart_date: {}\ntasks:\n  - {{id: t, script: [true]}}\n", days_ago(5)),
    );
    // Paused, then backfilled.
    let paused = s.write_dag(
        "paused",
        &format!(
            "schedule: '@daily'\nstart_date: {}\ncatchup: true\nis_paused_upon_creation: true\ntasks:\n  - {{id: t, script: [true]}}\n",
            days_ago(10)
        ),
    );
    s.start();
    let all_done = |runs: &[RunRow], n: usize| runs.len() == n && runs.iter().all(|r| r.state == RunState::Success);
    let started = Instant::now();
    loop {
        let daily = s.store.runs("daily", 100).await.unwrap();
        let latest = s.store.runs("latest", 100).await.unwrap();
        if all_done(&daily, 5) && all_done(&latest, 1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "daily {daily:?} latest {latest:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lines: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_string).collect();
    lines.sort();
    let want: Vec<String> = (1..=5).rev().map(|n| format!("{} {}T00:00:00Z", days_ago(n), days_ago(n - 1))).collect();
    assert_eq!(lines, want);
    let latest = s.store.runs("latest", 10).await.unwrap();
    assert_eq!(latest[0].interval.start.format("%Y-%m-%d").to_string(), days_ago(1));
    assert!(s.store.runs("paused", 10).await.unwrap().is_empty(), "a paused DAG gets no scheduled runs");

    let from: DateTime<Utc> = format!("{}T00:00:00Z", days_ago(8)).parse().unwrap();
    let to: DateTime<Utc> = format!("{}T00:00:00Z", days_ago(6)).parse().unwrap();
    let created = runs::backfill(&s.store, &paused, from, to).await.unwrap();
    assert_eq!(created.len(), 3, "{created:?}");
    for r in &created {
        assert_eq!(s.finished("paused", r, Duration::from_secs(30)).await.state, RunState::Success);
    }
    assert!(runs::backfill(&s.store, &paused, from, to).await.unwrap().is_empty(), "intervals with runs are skipped");
    s.stop().await;
}

async fn clear_reruns_with_a_new_try_and_keeps_history(db: Db) {
    let mut s = Setup::new(db).await;
    let flag = s.path("fixed");
    let d = s.write_dag(
        "fix",
        &format!(
            "tasks:\n  - {{id: a, script: [true]}}\n  - {{id: b, upstream: [a], script: [test, -e, '{}']}}\n  - {{id: c, upstream: [b], script: [true]}}\n",
            flag.display()
        ),
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("fix", &run_id, Duration::from_secs(20)).await.state, RunState::Failed);
    assert_eq!(s.state("fix", &run_id, "c").await, TaskState::UpstreamFailed);
    std::fs::write(&flag, "").unwrap();
    let spec = ClearSpec { only_failed: true, run_id: Some(run_id.clone()), ..ClearSpec::default() };
    let cleared = runs::clear(&s.store, &d, &spec).await.unwrap();
    assert_eq!(cleared, [(run_id.clone(), vec!["b".to_string(), "c".to_string()])]);
    assert_eq!(s.finished("fix", &run_id, Duration::from_secs(20)).await.state, RunState::Success);
    let tries = s.store.tries(&key("fix", &run_id, "b")).await.unwrap();
    assert_eq!(
        tries.iter().map(|t| (t.try_number, t.state)).collect::<Vec<_>>(),
        [(1, TaskState::Failed), (2, TaskState::Success)]
    );
    assert_eq!(s.store.tries(&key("fix", &run_id, "a")).await.unwrap().len(), 1, "a succeeded and was not cleared");
    // Clear a task and its downstream regardless of state.
    let spec =
        ClearSpec { task: Some("b".into()), downstream: true, run_id: Some(run_id.clone()), ..ClearSpec::default() };
    runs::clear(&s.store, &d, &spec).await.unwrap();
    s.finished("fix", &run_id, Duration::from_secs(20)).await;
    assert_eq!(s.store.tries(&key("fix", &run_id, "c")).await.unwrap().len(), 2);
    s.stop().await;
}

/// Between two full reads of the DAG folder (a minute apart here) the pass still acts on what
/// another process changes in a running run: a task cleared while another holds the run open
/// runs again at once, not at the next full read.
async fn the_pass_acts_on_a_clear_between_full_reads(db: Db) {
    let mut s = Setup::new(db).await;
    let release = s.path("release");
    let d = s.write_dag(
        "held",
        &format!(
            "tasks:\n  - {{id: a, script: [true]}}\n  - {{id: hold, script: [sh, -c, 'while [ ! -e \"{}\" ]; do sleep 0.05; done']}}\n",
            release.display()
        ),
    );
    let config = FlowConfig { parse_interval: Duration::from_secs(60), ..s.config() };
    s.start_with(config);
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    running(&s, "held", &run_id, "hold").await;
    let started = Instant::now();
    while s.state("held", &run_id, "a").await != TaskState::Success {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a never succeeded: {:?}",
            s.states("held", &run_id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spec = ClearSpec { task: Some("a".into()), run_id: Some(run_id.clone()), ..ClearSpec::default() };
    runs::clear(&s.store, &d, &spec).await.unwrap();
    let cleared = Instant::now();
    while s.store.tries(&key("held", &run_id, "a")).await.unwrap().len() < 2 {
        assert!(
            cleared.elapsed() < Duration::from_secs(15),
            "the cleared task did not run again before the next full read: {:?}",
            s.states("held", &run_id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&release, "").unwrap();
    assert_eq!(s.finished("held", &run_id, Duration::from_secs(20)).await.state, RunState::Success);
    let tries = s.store.tries(&key("held", &run_id, "a")).await.unwrap();
    assert_eq!(tries.iter().map(|t| t.state).collect::<Vec<_>>(), [TaskState::Success, TaskState::Success]);
    s.stop().await;
}

/// Tasks append `start end` (ns) to a file; returns the most that overlapped.
fn max_overlap(file: &Path) -> usize {
    let spans: Vec<(u128, u128)> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    spans.iter().map(|(a, _)| spans.iter().filter(|(s, e)| s <= a && a < e).count()).max().unwrap_or(0)
}

async fn concurrency_limits_hold(db: Db) {
    let mut s = Setup::new(db).await;
    let spans = s.path("spans");
    let pooled = s.path("pooled");
    let task = |id: String, extra: &str, file: &Path| {
        format!(
            "  - {{id: {id}, {extra}script: [sh, -c, 'a=$(date +%s%N); sleep 0.3; echo $a $(date +%s%N) >> {}']}}\n",
            file.display()
        )
    };
    let mut text = String::from("max_active_tasks: 2\ntasks:\n");
    for i in 0..6 {
        text.push_str(&task(format!("t{i}"), "", &spans));
    }
    let limited = s.write_dag("limited", &text);
    let mut text = String::from("tasks:\n");
    for i in 0..4 {
        text.push_str(&task(format!("p{i}"), "pool: single, ", &pooled));
    }
    let pool_dag = s.write_dag("pooled", &text);
    let mut config = s.config();
    config.pools.insert("single".into(), 1);
    s.start_with(config);
    let a = runs::trigger(&s.store, &limited, Default::default(), None).await.unwrap();
    let b = runs::trigger(&s.store, &pool_dag, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("limited", &a, Duration::from_secs(30)).await.state, RunState::Success);
    assert_eq!(s.finished("pooled", &b, Duration::from_secs(30)).await.state, RunState::Success);
    assert_eq!(max_overlap(&spans), 2, "max_active_tasks 2");
    assert_eq!(max_overlap(&pooled), 1, "a pool of one slot");
    s.stop().await;
}

async fn a_run_finishes_with_the_dag_version_it_started_with(db: Db) {
    let mut s = Setup::new(db).await;
    let out = s.path("version.txt");
    let text = |v: &str| {
        format!(
            "tasks:\n  - {{id: first, script: [sleep, '1']}}\n  - {{id: second, upstream: [first], script: [sh, -c, 'echo {v} > {}']}}\n",
            out.display()
        )
    };
    let d = s.write_dag("versioned", &text("A"));
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = s.write_dag("versioned", &text("B"));
    assert_ne!(v2.hash, d.hash);
    tokio::time::sleep(Duration::from_millis(400)).await; // the scheduler reads the new version
    let run = s.finished("versioned", &run_id, Duration::from_secs(20)).await;
    assert_eq!(run.state, RunState::Success);
    assert_eq!(run.dag_hash, d.hash);
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "A");
    // A new run uses the new version.
    let run2 = runs::trigger(&s.store, &v2, Default::default(), None).await.unwrap();
    s.finished("versioned", &run2, Duration::from_secs(20)).await;
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "B");
    s.stop().await;
}

async fn broken_files_are_reported_and_the_rest_runs(db: Db) {
    let mut s = Setup::new(db).await;
    std::fs::write(s.dags().join("broken.yaml"), "tasks:\n  - id: x\n    script: [true\n").unwrap();
    let d = s.write_dag("fine", "params: {who: world}\ntasks:\n  - {id: hello, script: [sh, -c, 'echo hello \"$1\" $WEIR_PARAM_WHO', sh, '{{ params.who }}']}\n");
    s.start();
    let mut conf = serde_json::Map::new();
    conf.insert("who".into(), "weir".into());
    let run_id = runs::trigger(&s.store, &d, conf, None).await.unwrap();
    assert_eq!(s.finished("fine", &run_id, Duration::from_secs(20)).await.state, RunState::Success);
    let tries = s.store.tries(&key("fine", &run_id, "hello")).await.unwrap();
    let log = std::fs::read_to_string(&tries[0].log).unwrap();
    assert!(log.contains("hello weir weir"), "conf overrides params, in templates and env: {log}");
    let errors = s.store.import_errors().await.unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].file.ends_with("broken.yaml") && errors[0].line.is_some(), "{errors:?}");
    s.stop().await;
}

async fn a_sql_task_writes_a_view_version(db: Db) {
    let mut s = Setup::new(db).await;
    // A source table written straight with deltalake (as the lake writer would).
    let orders = {
        use deltalake::arrow::{
            array::{Int64Array, StringArray},
            datatypes::{DataType, Field, Schema},
            record_batch::RecordBatch,
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("customer", DataType::Utf8, false),
            Field::new("amount", DataType::Int64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(StringArray::from(vec!["ann", "bob", "ann", "cy"])),
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])),
            ],
        )
        .unwrap()
    };
    let url = s.lake.table_url("current.orders").unwrap();
    deltalake::DeltaTable::try_from_url(url).await.unwrap().write(vec![orders]).await.unwrap();
    let d = s.write_dag(
        "spend",
        "params: {min: 15}\ntasks:\n  - id: per_customer\n    view: spend\n    sql: SELECT customer, sum(amount) AS total FROM current.orders WHERE amount >= {{ params.min }} GROUP BY customer\n",
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("spend", &run_id, Duration::from_secs(60)).await.state, RunState::Success);
    let batches = weir_lake::query::run(&s.lake, "SELECT customer, total FROM views.spend ORDER BY customer", None)
        .await
        .unwrap();
    let text = deltalake::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    assert!(
        text.contains("| ann      | 30    |")
            && text.contains("| bob      | 20    |")
            && text.contains("| cy       | 40    |"),
        "{text}"
    );
    let history = s.lake.history("views.spend", None).await.unwrap();
    assert_eq!(history.len(), 1);
    let tries = s.store.tries(&key("spend", &run_id, "per_customer")).await.unwrap();
    let log = std::fs::read_to_string(&tries[0].log).unwrap();
    assert!(log.contains("wrote 3 rows as version 0 of views.spend"), "{log}");
    s.stop().await;
}

async fn sensors_wait_for_a_dag_run_and_a_fresh_table_or_time_out(db: Db) {
    let mut s = Setup::new(db).await;
    let up = s.write_dag("up", "tasks:\n  - {id: work, script: [true]}\n");
    let down = s.write_dag(
        "down",
        "tasks:\n  - {id: wait, sensor: {dag: up}, poke_interval: 100ms, timeout: 20s}\n  - {id: after, upstream: [wait], script: [true]}\n",
    );
    let never =
        s.write_dag("never", "tasks:\n  - {id: wait, sensor: {dag: ghost}, poke_interval: 100ms, timeout: 600ms}\n");
    let fresh = s.write_dag(
        "fresh",
        "tasks:\n  - {id: wait, sensor: {table: views.landing}, poke_interval: 100ms, timeout: 20s}\n",
    );
    s.start();
    let day: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
    let down_run = runs::trigger(&s.store, &down, Default::default(), Some(day)).await.unwrap();
    let never_run = runs::trigger(&s.store, &never, Default::default(), None).await.unwrap();
    let fresh_run = runs::trigger(&s.store, &fresh, Default::default(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.state("down", &down_run, "wait").await, TaskState::Running, "no run of `up` for that day yet");
    assert_eq!(s.state("fresh", &fresh_run, "wait").await, TaskState::Running, "no views.landing yet");
    runs::trigger(&s.store, &up, Default::default(), Some(day)).await.unwrap();
    assert_eq!(s.finished("down", &down_run, Duration::from_secs(20)).await.state, RunState::Success);
    // A commit to the table after the interval's end satisfies the freshness sensor.
    let batch = {
        use deltalake::arrow::{
            array::Int64Array,
            datatypes::{DataType, Field, Schema},
            record_batch::RecordBatch,
        };
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap()
    };
    let url = s.lake.table_url("views.landing").unwrap();
    deltalake::DeltaTable::try_from_url(url).await.unwrap().write(vec![batch]).await.unwrap();
    assert_eq!(s.finished("fresh", &fresh_run, Duration::from_secs(20)).await.state, RunState::Success);
    let run = s.finished("never", &never_run, Duration::from_secs(20)).await;
    assert_eq!(run.state, RunState::Failed);
    let tries = s.store.tries(&key("never", &never_run, "wait")).await.unwrap();
    assert!(tries[0].reason.as_deref().unwrap().contains("sensor timed out after 600ms"), "{tries:?}");
    let log = std::fs::read_to_string(&tries[0].log).unwrap();
    assert!(log.matches("not yet").count() >= 3, "it poked repeatedly: {log}");
    s.stop().await;
}

async fn notify_posts_the_run_to_a_webhook(db: Db) {
    let (addr, received) = common::receiver().await;

    let mut s = Setup::new(db).await;
    let d = s.write_dag(
        "told",
        &format!(
            "tasks:\n  - {{id: tell, notify: {{url: 'http://{addr}/hook', message: 'report for {{{{ ds }}}} is ready'}}}}\n  \
             - {{id: fail, notify: {{url: 'http://{addr}/broken'}}, retries: 1, retry_delay: 100ms}}\n"
        ),
    );
    s.start();
    let day: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
    let run_id = runs::trigger(&s.store, &d, Default::default(), Some(day)).await.unwrap();
    s.finished("told", &run_id, Duration::from_secs(20)).await;
    assert_eq!(s.state("told", &run_id, "tell").await, TaskState::Success);
    assert_eq!(s.state("told", &run_id, "fail").await, TaskState::Failed);
    let tries = s.store.tries(&key("told", &run_id, "fail")).await.unwrap();
    assert_eq!(tries.len(), 2);
    assert!(tries[1].reason.as_deref().unwrap().contains("500"), "{tries:?}");
    let got: Vec<serde_json::Value> = received.lock().unwrap().iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["dag_id"], "told");
    assert_eq!(got[0]["run_id"], run_id.as_str());
    assert_eq!(got[0]["message"], "report for 2026-11-20 is ready");
    assert_eq!(got[0]["data_interval_start"], "2026-11-20T00:00:00Z");
    s.stop().await;
}

/// A DAG's notifications: a retry to Slack, the missed deadline and the success to an
/// Alertmanager-style webhook, each once.
async fn failures_retries_successes_and_deadlines_are_notified(db: Db) {
    let (addr, received) = common::receiver().await;

    let mut s = Setup::new(db).await;
    let calls = s.path("calls");
    let d = s.write_dag(
        "watched",
        &format!(
            "deadline: 1s\nreceivers:\n  - {{name: pager, webhook: 'http://{addr}/pager'}}\n  - {{name: chat, slack: 'http://{addr}/chat'}}\n\
             notifications: {{on_failure: [pager], on_retry: [chat], on_success: [pager, chat], on_deadline_missed: [pager]}}\n\
             tasks:\n  - {{id: flaky, retries: 1, retry_delay: 0s, script: {}}}\n  \
             - {{id: slow, upstream: [flaky], script: [sleep, '1.5']}}\n",
            succeed_on_call(&calls, 2)
        ),
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), Some(Utc::now())).await.unwrap();
    assert_eq!(s.finished("watched", &run_id, Duration::from_secs(20)).await.state, RunState::Success);
    let start = Instant::now();
    while received.lock().unwrap().len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(10), "{:#?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more arrives
    let got = received.lock().unwrap().clone();
    let to = |who: &str| -> Vec<serde_json::Value> {
        got.iter().filter(|(w, _)| w == who).map(|(_, b)| b.clone()).collect()
    };
    let pager: Vec<String> =
        to("pager").iter().map(|b| b["commonLabels"]["alertname"].as_str().unwrap().to_string()).collect();
    assert_eq!(pager, ["DagRunDeadlineMissed", "DagRunSucceeded"], "{got:#?}");
    let missed = &to("pager")[0];
    assert_eq!(missed["commonLabels"]["dag"], "watched");
    assert_eq!(missed["commonLabels"]["run_id"], run_id.as_str());
    assert!(missed["commonAnnotations"]["summary"].as_str().unwrap().contains("not finished 1s after"), "{missed}");
    let chat: Vec<String> = to("chat").iter().map(|b| b["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(chat.len(), 2, "{chat:?}");
    assert!(
        chat[0].contains("TaskRetrying") && chat[0].contains("task flaky failed (try 1) and will be retried"),
        "{chat:?}"
    );
    assert!(chat[1].contains("DagRunSucceeded"), "{chat:?}");
    s.stop().await;
}

/// A run's conf is whoever triggered it: hostile values change nothing but a literal's content
/// in SQL, stay one argument in a command, and are refused where an interpreter would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_conf_values_change_only_literals() {
    let mut s = Setup::new(Db::Sqlite).await;
    let pwned = s.path("pwned");
    let hostile = [
        "x' OR '1'='1".to_string(),
        "'; DROP TABLE views.keep; --".to_string(),
        format!("$(touch {})", pwned.display()),
        "line one\nline two */ -- /*".to_string(),
        "back\\slash\\' E'".to_string(),
        "-1".to_string(),
    ];
    let mut select = Vec::new();
    let mut params = serde_json::Map::new();
    let mut conf = serde_json::Map::new();
    for (i, v) in hostile.iter().enumerate() {
        select.push(format!("{{{{ params.v{i} }}}} AS bare{i}, '{{{{ params.v{i} }}}}' AS quoted{i}"));
        params.insert(format!("v{i}"), "harmless".into());
        conf.insert(format!("v{i}"), v.clone().into());
    }
    conf.insert("n".into(), (-3).into());
    let sql = format!("SELECT {}, 7 -{{{{ params.n }}}} AS ten -- {{{{ params.v3 }}}}\n, 1 AS one", select.join(", "));
    let params_yaml = serde_json::to_string(&params).unwrap();
    let d = s.write_dag(
        "hostile",
        &format!(
            "params: {params_yaml}\ntasks:\n  - {{id: keep, sql: SELECT 1 AS x, view: keep}}\n  \
             - id: q\n    upstream: [keep]\n    view: hostile\n    sql: {}\n  \
             - {{id: printf, upstream: [keep], script: [printf, '%s', '{{{{ params.v2 }}}}']}}\n  \
             - {{id: shell, upstream: [keep], script: [sh, -c, 'echo {{{{ params.v2 }}}}']}}\n",
            serde_json::to_string(&sql).unwrap()
        ),
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, conf, None).await.unwrap();
    assert_eq!(s.finished("hostile", &run_id, Duration::from_secs(60)).await.state, RunState::Failed);
    for task in ["q", "printf"] {
        let tries = s.store.tries(&key("hostile", &run_id, task)).await.unwrap();
        let reason = tries.last().and_then(|t| t.reason.clone());
        assert_eq!(s.state("hostile", &run_id, task).await, TaskState::Success, "{task}: {reason:?}");
    }
    assert_eq!(s.state("hostile", &run_id, "shell").await, TaskState::Failed, "params are refused in sh -c code");
    let tries = s.store.tries(&key("hostile", &run_id, "shell")).await.unwrap();
    let log = std::fs::read_to_string(&tries[0].log).unwrap();
    assert!(log.contains("would run as code") && log.contains("$WEIR_PARAM_V2"), "{log}");
    let tries = s.store.tries(&key("hostile", &run_id, "printf")).await.unwrap();
    let printed = std::fs::read_to_string(&tries[0].log).unwrap();
    assert!(printed.contains(&hostile[2]), "one argument, printed as it is: {printed}");
    assert!(!pwned.exists(), "no command ran from a value");

    use deltalake::arrow::array::AsArray as _;
    let batches = weir_lake::query::run(&s.lake, "SELECT * FROM views.hostile", None).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let b = &batches[0];
    assert_eq!(b.num_columns(), hostile.len() * 2 + 2, "no column added or lost: {:?}", b.schema());
    for (i, v) in hostile.iter().enumerate() {
        for name in [format!("bare{i}"), format!("quoted{i}")] {
            let col = b.column_by_name(&name).unwrap_or_else(|| panic!("{name} missing: {:?}", b.schema()));
            let col = deltalake::arrow::compute::cast(col, &deltalake::arrow::datatypes::DataType::Utf8).unwrap();
            assert_eq!(col.as_string::<i32>().value(0), v, "{name}");
        }
    }
    let ten = deltalake::arrow::compute::cast(
        b.column_by_name("ten").unwrap(),
        &deltalake::arrow::datatypes::DataType::Int64,
    )
    .unwrap();
    assert_eq!(ten.as_primitive::<deltalake::arrow::datatypes::Int64Type>().value(0), 10, "7 - (-3)");
    assert!(b.column_by_name("one").is_some(), "the comment ended where the author ended it");
    let kept = weir_lake::query::run(&s.lake, "SELECT x FROM views.keep", None).await.unwrap();
    assert_eq!(kept[0].num_rows(), 1, "views.keep is still there");
    s.stop().await;
}

/// The metadata DB over TLS (`sslmode=verify-full`, the test CA) and every outgoing call over
/// https to a real TLS server: a `notify` task and the DAG's success notification arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_over_tls_and_notifications_over_https() {
    use weir_e2e::https::{Receiver, tls_dir};
    let ca = weir_schemas::http::HttpConfig { ca_file: Some(tls_dir().join("ca.pem")), ..Default::default() };
    weir_schemas::http::configure(&ca).unwrap();
    let receiver = Receiver::start();
    let err = postgres_tls_error(&tls_dir().join("other-ca.pem")).await;
    assert!(err.contains("UnknownIssuer"), "a certificate of another CA is refused: {err}");
    let mut s = Setup::new(Db::PostgresTls).await;
    let d = s.write_dag(
        "secure",
        &format!(
            "receivers:\n  - {{name: pager, webhook: '{}'}}\nnotifications: {{on_success: [pager]}}\n\
             tasks:\n  - {{id: tell, notify: {{url: '{}', message: 'done {{{{ ds }}}}'}}}}\n",
            receiver.url("/pager"),
            receiver.url("/hook")
        ),
    );
    s.start();
    let run_id = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("secure", &run_id, Duration::from_secs(30)).await.state, RunState::Success);
    let mut got = receiver.wait_for(2, Duration::from_secs(20));
    got.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(got[0].path, "/hook");
    assert!(got[0].body.contains("\"message\":\"done "), "{}", got[0].body);
    assert_eq!(got[1].path, "/pager");
    assert!(got[1].body.contains("DagRunSucceeded"), "{}", got[1].body);
    s.stop().await;
}

/// Appends one row to lake table `table` (created on first use) and announces the commit as
/// the lake's writers do; returns the version.
async fn commit(lake: &Lake, table: &str, announce: bool) -> u64 {
    use deltalake::arrow::{
        array::Int64Array,
        datatypes::{DataType, Field, Schema},
        record_batch::RecordBatch,
    };
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1]))]).unwrap();
    let table_url = lake.table_url(table).unwrap();
    let written = deltalake::DeltaTable::try_from_url(table_url).await.unwrap().write(vec![batch]).await.unwrap();
    let version = written.version().unwrap() as u64;
    if announce {
        lake.announce(table, version, "append").await;
    }
    version
}

/// Waits until `dag_id` has `n` runs (newest first) and they have finished.
async fn runs_finished(s: &Setup, dag_id: &str, n: usize, limit: Duration) -> Vec<RunRow> {
    let started = Instant::now();
    loop {
        let runs = s.store.runs(dag_id, 100).await.unwrap();
        assert!(runs.len() <= n, "more than {n} runs of {dag_id}: {runs:#?}");
        if runs.len() == n && runs.iter().all(|r| matches!(r.state, RunState::Success | RunState::Failed)) {
            return runs;
        }
        assert!(started.elapsed() < limit, "{dag_id}: expected {n} finished runs within {limit:?}: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the scheduler has started watching `dag_id`'s tables (its cursors are stored).
async fn watching(s: &Setup, dag_id: &str, tables: usize) -> std::collections::BTreeMap<String, i64> {
    let started = Instant::now();
    loop {
        let cursors = s.store.table_cursors(dag_id).await.unwrap();
        if cursors.len() == tables {
            return cursors;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{dag_id} never watched its tables: {cursors:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn input(version: i64, previous: i64) -> weir_flow::store::InputVersion {
    weir_flow::store::InputVersion { version, previous }
}

/// `schedule: {tables}`: commits announced on the bus start a run at once (the DAG folder is read
/// only every minute here, so nothing else could), two commits within the debounce start one,
/// the run records the versions it covers and its tasks see them; commits from before the DAG
/// was first seen start nothing.
async fn lake_commits_start_table_triggered_runs(db: Db) {
    let mut s = Setup::new(db).await.with_signals();
    let before = commit(&s.lake, "raw.orders", true).await;
    let seen = s.path("seen");
    s.write_dag(
        "orders_report",
        &format!(
            "schedule: {{tables: [raw.orders, current.customers], debounce: 1s}}\n\
             tasks:\n  - id: count\n    view: orders_seen\n    \
             sql: SELECT {{{{ inputs.raw.orders.version }}}} AS version, count(*) AS n FROM raw.orders\n  \
             - {{id: note, upstream: [count], script: [sh, -c, 'echo \"$WEIR_INPUT_RAW_ORDERS_PREVIOUS $WEIR_INPUT_RAW_ORDERS_VERSION {{{{ inputs.current.customers.version }}}}\" >> {}']}}\n",
            seen.display()
        ),
    );
    let config = FlowConfig { parse_interval: Duration::from_secs(60), ..s.config() };
    s.start_with(config);
    let cursors = watching(&s, "orders_report", 2).await;
    assert_eq!(cursors["raw.orders"], before as i64, "a DAG starts at the tables' versions when first seen");
    assert_eq!(cursors["current.customers"], -1);

    // Two commits (two partitions, say) within the debounce: one run.
    let first = Instant::now();
    let v1 = commit(&s.lake, "raw.orders", true).await;
    let v2 = commit(&s.lake, "raw.orders", true).await;
    let runs = runs_finished(&s, "orders_report", 1, Duration::from_secs(30)).await;
    let waited = first.elapsed();
    assert!(v2 == v1 + 1 && waited < Duration::from_secs(30), "the run came from the signal, not a folder read");
    let run = &runs[0];
    assert_eq!(run.state, RunState::Success);
    assert_eq!(run.run_type, "tables");
    assert_eq!(run.inputs["raw.orders"], input(v2 as i64, before as i64));
    assert_eq!(run.inputs["current.customers"], input(-1, -1));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), format!("{before} {v2} -1\n"));
    let batches = weir_lake::query::run(&s.lake, "SELECT version, n FROM views.orders_seen", None).await.unwrap();
    let text = deltalake::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains(&format!("| {v2}       | 3 |")), "{text}");

    // A commit to the other table: the next run covers it, raw.orders unchanged.
    let c0 = commit(&s.lake, "current.customers", true).await;
    let runs = runs_finished(&s, "orders_report", 2, Duration::from_secs(30)).await;
    assert_eq!(runs[0].inputs["raw.orders"], input(v2 as i64, v2 as i64));
    assert_eq!(runs[0].inputs["current.customers"], input(c0 as i64, -1));
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), format!("{before} {v2} -1\n{v2} {v2} {c0}\n"));
    s.stop().await;
}

/// `$WEIR_OUTPUT` hands a JSON object to the run's later tasks (templates, as data; the
/// environment), a SQL task hands on the view it wrote, `$WEIR_STATE` keeps a task's state across
/// a failed try, its retry and the next run, and an output that is not a JSON object fails the try.
async fn outputs_flow_between_tasks_and_state_survives_retries_and_runs(db: Db) {
    let mut s = Setup::new(db).await;
    let d = s.write_dag(
        "handoff",
        r#"tasks:
  - id: extract
    retries: 1
    retry_delay: 0s
    script: [sh, -c, 'n=$(cat "$WEIR_STATE" 2>/dev/null | tr -cd 0-9); n=$((${n:-0} + 1)); echo "{\"n\": $n}" > "$WEIR_STATE"; echo "{\"rows\": $((n * 10)), \"day\": \"it''s\"}" > "$WEIR_OUTPUT"; [ $n -ge 2 ]']
  - id: use
    upstream: [extract]
    script: [sh, -c, 'echo "$1 $WEIR_TASKS_EXTRACT_OUTPUT_ROWS" >> got', sh, '{{ tasks.extract.output.rows }}']
  - id: count
    upstream: [extract]
    view: handoff
    sql: "SELECT {{ tasks.extract.output.rows }} AS rows, {{ tasks.extract.output.day }} AS day"
"#,
    );
    let bad =
        s.write_dag("bad_output", "tasks:\n  - {id: t, script: [sh, -c, 'echo \"[1, 2]\" > \"$WEIR_OUTPUT\"']}\n");
    s.start();
    let first = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("handoff", &first, Duration::from_secs(60)).await.state, RunState::Success);
    let tries = s.store.tries(&key("handoff", &first, "extract")).await.unwrap();
    assert_eq!(tries.len(), 2, "the first try failed, its retry succeeded: {tries:?}");
    assert_eq!(
        std::fs::read_to_string(s.dags().join("got")).unwrap(),
        "20 20\n",
        "the retry saw the state its failed try kept"
    );
    let outputs = s.store.outputs("handoff", &first).await.unwrap();
    assert_eq!(serde_json::Value::Object(outputs["extract"].clone()), serde_json::json!({"rows": 20, "day": "it's"}));
    assert_eq!(outputs["count"]["table"], "views.handoff");
    assert_eq!(outputs["count"]["rows"], 1);
    let batches = weir_lake::query::run(&s.lake, "SELECT rows, day FROM views.handoff", None).await.unwrap();
    let text = deltalake::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("| 20   | it's |"), "the output is a SQL literal: {text}");

    let second = runs::trigger(&s.store, &d, Default::default(), Some(Utc::now())).await.unwrap();
    assert_eq!(s.finished("handoff", &second, Duration::from_secs(60)).await.state, RunState::Success);
    assert_eq!(std::fs::read_to_string(s.dags().join("got")).unwrap(), "20 20\n30 30\n");
    let state = s.store.task_state("handoff", "extract").await.unwrap();
    assert_eq!(serde_json::Value::Object(state), serde_json::json!({"n": 3}));

    let run = runs::trigger(&s.store, &bad, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("bad_output", &run, Duration::from_secs(60)).await.state, RunState::Failed);
    let tries = s.store.tries(&key("bad_output", &run, "t")).await.unwrap();
    let reason = tries[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("$WEIR_OUTPUT: a JSON object is expected, not an array"), "{reason}");
    s.stop().await;
}

/// Waits until `task` of the run is running.
async fn running(s: &Setup, dag_id: &str, run_id: &str, task: &str) {
    let started = Instant::now();
    while s.state(dag_id, run_id, task).await != TaskState::Running {
        assert!(started.elapsed() < Duration::from_secs(30), "{task} never ran: {:?}", s.states(dag_id, run_id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An approval task waits for a person: through the API only a listed approver may decide, and
/// only while it waits; approved, the run goes on; rejected (with the CLI's function), the task
/// fails with who and why; undecided past its timeout, it fails. Each decision is read back
/// from `weir.flow.events` on the bus.
async fn approval_tasks_wait_for_a_decision(db: Db) {
    let mut s = Setup::new(db).await.with_signals();
    let d = s.write_dag(
        "publish",
        "tasks:\n  - {id: prepare, script: [\"true\"]}\n  - id: gate\n    upstream: [prepare]\n    \
         approval: {message: 'Publish {{ ds }}?', approvers: [alice], timeout: 60s}\n  \
         - {id: publish, upstream: [gate], script: [sh, -c, 'echo published >> published']}\n",
    );
    let lonely = s.write_dag("lonely", "tasks:\n  - {id: gate, approval: {message: 'anyone?', timeout: 1s}}\n");
    s.start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let api = weir_flow::api::router(s.store.clone(), s.lake.clone(), s.dags());
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });
    let post = |run: String, body: serde_json::Value| async move {
        let url = format!("http://{addr}/api/v1/dags/publish/runs/{run}/tasks/gate/approval");
        let r = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };

    let first = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    let (status, body) = post(first.clone(), serde_json::json!({"decision": "approve", "by": "alice"})).await;
    assert_eq!(status, 409, "not waiting yet, or already deciding: {body}");
    running(&s, "publish", &first, "gate").await;
    let (status, body) = post(first.clone(), serde_json::json!({"decision": "approve", "by": "mallory"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"mallory\" may not decide"), "{body}");
    let (status, body) = post(first.clone(), serde_json::json!({"decision": "maybe", "by": "alice"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) =
        post(first.clone(), serde_json::json!({"decision": "approve", "by": "alice", "comment": "numbers check out"}))
            .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["decision"], "approve");
    assert_eq!(body["try_number"], 1);
    assert_eq!(s.finished("publish", &first, Duration::from_secs(30)).await.state, RunState::Success);
    assert_eq!(std::fs::read_to_string(s.dags().join("published")).unwrap(), "published\n");
    let decided = s.store.decision(&key("publish", &first, "gate"), 1).await.unwrap().unwrap();
    assert_eq!((decided.by.as_str(), decided.comment.as_str()), ("alice", "numbers check out"));
    let tries = s.store.tries(&key("publish", &first, "gate")).await.unwrap();
    let log = std::fs::read_to_string(&tries[0].log).unwrap();
    assert!(log.contains("waiting for approval by alice: Publish ") && log.contains("approved by alice"), "{log}");
    let (status, _) = post(first.clone(), serde_json::json!({"decision": "reject", "by": "alice"})).await;
    assert_eq!(status, 409, "a decided try is not decided again");

    let second = runs::trigger(&s.store, &d, Default::default(), Some(Utc::now())).await.unwrap();
    running(&s, "publish", &second, "gate").await;
    let k = key("publish", &second, "gate");
    weir_flow::approvals::decide(&s.store, &k, weir_flow::approvals::Decision::Reject, "alice", "wrong totals")
        .await
        .unwrap();
    assert_eq!(s.finished("publish", &second, Duration::from_secs(30)).await.state, RunState::Failed);
    assert_eq!(s.state("publish", &second, "publish").await, TaskState::UpstreamFailed);
    let reason = s.store.tries(&k).await.unwrap()[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("rejected by alice: wrong totals"), "{reason}");

    let run = runs::trigger(&s.store, &lonely, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("lonely", &run, Duration::from_secs(30)).await.state, RunState::Failed);
    let reason = s.store.tries(&key("lonely", &run, "gate")).await.unwrap()[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("no decision within 1s"), "{reason}");

    // The decisions, as the relay published them.
    use weir_bus::{ConsumerConfig, TopicPartition};
    let bus = s.bus.clone().expect("with_signals gives a bus");
    let topic = TopicPartition::new(weir_flow::events::EVENTS_TOPIC, 0);
    let mut consumer = bus.consumer(ConsumerConfig::new("approvals")).await.unwrap();
    consumer.assign(std::slice::from_ref(&topic)).await.unwrap();
    consumer.seek(&topic, 0).await.unwrap();
    let mut decisions: Vec<(String, serde_json::Value)> = Vec::new();
    let started = Instant::now();
    while decisions.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "approval events on the bus: {decisions:?}");
        for m in consumer.poll(Duration::from_millis(200)).await.unwrap() {
            let e: weir_flow::events::FlowEvent = serde_json::from_slice(m.value.as_deref().unwrap()).unwrap();
            if e.kind == "approval" {
                assert_eq!((e.dag_id.as_str(), e.task_id.as_deref(), e.try_number), ("publish", Some("gate"), Some(1)));
                decisions.push((e.run_id, e.detail.unwrap_or_default()));
            }
        }
    }
    assert_eq!(
        decisions,
        [
            (first, serde_json::json!({"decision": "approve", "by": "alice", "comment": "numbers check out"})),
            (second, serde_json::json!({"decision": "reject", "by": "alice", "comment": "wrong totals"})),
        ]
    );
    s.stop().await;
}

/// One number from `sql` over the lake.
async fn scalar(lake: &Lake, sql: &str) -> i64 {
    use deltalake::arrow::{array::AsArray as _, datatypes::Int64Type};
    let batches = weir_lake::query::run(lake, sql, None).await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// A SQL task records the table versions it read; a cleared task reads them again (its result
/// equals the first try's, checked with time travel on the view) and `--latest` reads the newest.
async fn a_rerun_reads_the_versions_its_first_try_read(db: Db) {
    let mut s = Setup::new(db).await;
    commit(&s.lake, "raw.orders", false).await;
    let read = commit(&s.lake, "raw.orders", false).await;
    // A mapped task whose items come from the same table: one item, the count.
    let d = s.write_dag(
        "counts",
        "tasks:\n  - {id: count, view: counts, sql: 'SELECT count(*) AS n FROM raw.orders'}\n  \
         - {id: each, map: {sql: 'SELECT count(*) AS n FROM raw.orders'}, script: [sh, -c, 'echo $WEIR_MAP_ITEM >> each.txt']}\n",
    );
    let each = s.dags().join("each.txt");
    let items = || std::fs::read_to_string(&each).unwrap_or_default();
    s.start();
    let run = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("counts", &run, Duration::from_secs(60)).await.state, RunState::Success);
    let lineage = s.store.lineage("counts", &run).await.unwrap();
    assert_eq!(lineage.len(), 2, "{lineage:?}");
    assert_eq!(lineage[0].read.get("raw.orders"), Some(&read));
    assert_eq!((lineage[1].task_id.as_str(), lineage[1].read.get("raw.orders")), ("each", Some(&read)));
    assert_eq!(items(), "2\n");
    assert_eq!(lineage[0].wrote, Some(("views.counts".to_string(), 0)));
    assert_eq!(scalar(&s.lake, "SELECT n FROM views.counts").await, 2);

    let newest = commit(&s.lake, "raw.orders", false).await;
    let clear = |latest| ClearSpec { run_id: Some(run.clone()), latest, ..ClearSpec::default() };
    runs::clear(&s.store, &d, &clear(false)).await.unwrap();
    assert_eq!(s.finished("counts", &run, Duration::from_secs(60)).await.state, RunState::Success);
    let lineage = s.store.lineage("counts", &run).await.unwrap();
    assert_eq!((lineage[0].try_number, lineage[0].read.get("raw.orders")), (2, Some(&read)), "{lineage:?}");
    assert_eq!(
        scalar(&s.lake, "SELECT n FROM views.counts VERSION AS OF 1").await,
        2,
        "the rerun read what try 1 read"
    );
    assert_eq!(
        scalar(&s.lake, &format!("SELECT count(*) FROM raw.orders VERSION AS OF {read}")).await,
        scalar(&s.lake, "SELECT n FROM views.counts VERSION AS OF 1").await
    );
    assert_eq!(items(), "2\n2\n", "the expansion again read what its first try read: the same item");

    runs::clear(&s.store, &d, &clear(true)).await.unwrap();
    assert_eq!(s.finished("counts", &run, Duration::from_secs(60)).await.state, RunState::Success);
    let lineage = s.store.lineage("counts", &run).await.unwrap();
    assert_eq!((lineage[0].try_number, lineage[0].read.get("raw.orders")), (3, Some(&newest)), "{lineage:?}");
    assert_eq!(scalar(&s.lake, "SELECT n FROM views.counts").await, 3, "--latest read the newest version");
    assert_eq!(items(), "2\n2\n3\n", "--latest expanded over the newest version");
    s.stop().await;
}

/// Mapped tasks: one instance per row of a query on the lake (50), per item of an upstream
/// task's output (one fails its first try and retries), per instance of a mapped upstream (its
/// output), none for an empty list (skipped); the
/// downstream task waits for all of them. An expansion past `max_map` fails with the reason; a
/// failed instance fails its task and, cleared with only failed ones, runs again alone.
async fn mapped_tasks_expand_at_run_time(db: Db) {
    let mut s = Setup::new(db).await;
    let d = s.write_dag(
        "fan",
        r#"tasks:
  - id: regions
    view: regions
    sql: "SELECT value AS region, concat('r', CAST(value AS VARCHAR)) AS name FROM generate_series(1, 50)"
  - id: per_region
    upstream: [regions]
    map: {sql: "SELECT region, name FROM views.regions ORDER BY region"}
    script: [sh, -c, 'echo "$WEIR_MAP_INDEX $WEIR_MAP_ITEM_NAME $1" >> regions.txt', sh, '{{ map.item.region }}']
  - id: list
    script: [sh, -c, 'echo "{\"files\": [\"a\", \"b\", \"c\"]}" > "$WEIR_OUTPUT"']
  - id: per_file
    upstream: [list]
    retries: 1
    retry_delay: 0s
    map: {from: tasks.list.output.files}
    script: [sh, -c, 'if [ "$1" = b ] && [ ! -f b.once ]; then touch b.once; exit 1; fi; echo "$1" >> files.txt; printf "{\"twice\": \"%s%s\"}" "$1" "$1" > "$WEIR_OUTPUT"', sh, '{{ map.item }}']
  - id: per_twice
    upstream: [per_file]
    map: {from: tasks.per_file.output.twice}
    script: [sh, -c, 'echo "$WEIR_MAP_INDEX $1" >> twice.txt', sh, '{{ map.item }}']
  - id: nothing
    map: {over: []}
    script: ["false"]
  - id: after
    upstream: [per_region, per_file, nothing]
    trigger_rule: none_failed
    script: [sh, -c, 'echo done > after.txt']
"#,
    );
    let many =
        s.write_dag("too_many", "tasks:\n  - {id: each, map: {over: [1, 2, 3]}, max_map: 2, script: [\"true\"]}\n");
    let fixable = s.write_dag(
        "fixable",
        "tasks:\n  - id: each\n    map: {over: [ok1, bad, ok2]}\n    \
         script: [sh, -c, '[ \"$WEIR_MAP_ITEM\" != bad ] || [ -f fixed ]']\n  \
         - {id: then, upstream: [each], script: [\"true\"]}\n",
    );
    s.start();
    let run = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("fan", &run, Duration::from_secs(120)).await.state, RunState::Success);
    let states = s.states("fan", &run).await;
    let instances: Vec<_> = states.iter().filter(|(t, _)| t.starts_with("per_region[")).collect();
    assert_eq!(instances.len(), 50, "{states:?}");
    assert!(instances.iter().all(|(_, st)| *st == TaskState::Success), "{instances:?}");
    let mut lines: Vec<String> =
        std::fs::read_to_string(s.dags().join("regions.txt")).unwrap().lines().map(str::to_string).collect();
    lines.sort_by_key(|l| l.split(' ').next().unwrap().parse::<u32>().unwrap());
    let expected: Vec<String> = (0..50).map(|i| format!("{i} r{} {}", i + 1, i + 1)).collect();
    assert_eq!(lines, expected, "each instance saw its own row");
    let mut files: Vec<String> =
        std::fs::read_to_string(s.dags().join("files.txt")).unwrap().lines().map(str::to_string).collect();
    files.sort();
    assert_eq!(files, ["a", "b", "c"]);
    let mut twice: Vec<String> =
        std::fs::read_to_string(s.dags().join("twice.txt")).unwrap().lines().map(str::to_string).collect();
    twice.sort();
    assert_eq!(twice, ["0 aa", "1 bb", "2 cc"], "one instance per instance of the mapped upstream, in its order");
    assert_eq!(s.store.tries(&key("fan", &run, "per_file[1]")).await.unwrap().len(), 2, "b failed once, then retried");
    assert_eq!(s.store.tries(&key("fan", &run, "per_file[0]")).await.unwrap().len(), 1);
    assert_eq!(s.state("fan", &run, "per_region").await, TaskState::Success);
    assert_eq!(s.state("fan", &run, "nothing").await, TaskState::Skipped, "mapped over no items");
    assert_eq!(s.state("fan", &run, "after").await, TaskState::Success);
    assert!(s.dags().join("after.txt").exists());

    let run = runs::trigger(&s.store, &many, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("too_many", &run, Duration::from_secs(60)).await.state, RunState::Failed);
    let reason = s.store.tries(&key("too_many", &run, "each")).await.unwrap()[0].reason.clone().unwrap_or_default();
    assert_eq!(reason, "3 items to map over, more than max_map (2)");

    let run = runs::trigger(&s.store, &fixable, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("fixable", &run, Duration::from_secs(60)).await.state, RunState::Failed);
    assert_eq!(
        s.states("fixable", &run).await,
        [
            ("each".to_string(), TaskState::Failed),
            ("each[0]".to_string(), TaskState::Success),
            ("each[1]".to_string(), TaskState::Failed),
            ("each[2]".to_string(), TaskState::Success),
            ("then".to_string(), TaskState::UpstreamFailed),
        ]
    );
    std::fs::write(s.dags().join("fixed"), "").unwrap();
    let spec = ClearSpec { run_id: Some(run.clone()), only_failed: true, ..ClearSpec::default() };
    let cleared = runs::clear(&s.store, &fixable, &spec).await.unwrap();
    assert_eq!(cleared, [(run.clone(), vec!["each[1]".to_string(), "then".to_string()])]);
    assert_eq!(s.finished("fixable", &run, Duration::from_secs(60)).await.state, RunState::Success);
    let tries = |t: &'static str| {
        let k = key("fixable", &run, t);
        let store = s.store.clone();
        async move { store.tries(&k).await.unwrap().len() }
    };
    assert_eq!(
        (tries("each").await, tries("each[0]").await, tries("each[1]").await),
        (1, 1, 2),
        "only the failed instance ran again"
    );
    s.stop().await;
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Db::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Db::Postgres).await } )*
        }
        mod workers {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Db::Workers).await } )*
        }
        mod sqlite_workers {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Db::SqliteWorkers).await } )*
        }
    };
}

on_both_databases!(
    retries_back_off_and_a_failure_fails_downstream,
    a_try_past_its_timeout_is_killed,
    every_trigger_rule,
    a_branch_that_names_a_stranger_fails,
    catchup_backfill_and_templated_dates,
    clear_reruns_with_a_new_try_and_keeps_history,
    the_pass_acts_on_a_clear_between_full_reads,
    concurrency_limits_hold,
    a_run_finishes_with_the_dag_version_it_started_with,
    broken_files_are_reported_and_the_rest_runs,
    a_sql_task_writes_a_view_version,
    sensors_wait_for_a_dag_run_and_a_fresh_table_or_time_out,
    notify_posts_the_run_to_a_webhook,
    failures_retries_successes_and_deadlines_are_notified,
    lake_commits_start_table_triggered_runs,
    outputs_flow_between_tasks_and_state_survives_retries_and_runs,
    approval_tasks_wait_for_a_decision,
    a_rerun_reads_the_versions_its_first_try_read,
    mapped_tasks_expand_at_run_time,
);

/// Approvals waiting for a person hold none of the local executor's slots: with more of them
/// waiting than there are slots (4), another DAG's script still runs, and the approvals all go
/// on once decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_approvals_hold_no_slot() {
    let mut s = Setup::new(Db::Sqlite).await;
    assert_eq!(s.config().slots, 4);
    let gates: String =
        (0..6).map(|i| format!("  - {{id: gate{i}, approval: {{message: 'go?', timeout: 60s}}}}\n")).collect();
    let gated = s.write_dag("gated", &format!("tasks:\n{gates}"));
    let busy = s.write_dag("busy", "tasks:\n  - {id: work, script: [\"true\"]}\n");
    s.start();
    let gated_run = runs::trigger(&s.store, &gated, Default::default(), None).await.unwrap();
    for i in 0..6 {
        running(&s, "gated", &gated_run, &format!("gate{i}")).await;
    }
    let busy_run = runs::trigger(&s.store, &busy, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("busy", &busy_run, Duration::from_secs(30)).await.state, RunState::Success);
    for i in 0..6 {
        let k = key("gated", &gated_run, &format!("gate{i}"));
        weir_flow::approvals::decide(&s.store, &k, weir_flow::approvals::Decision::Approve, "alice", "").await.unwrap();
    }
    assert_eq!(s.finished("gated", &gated_run, Duration::from_secs(30)).await.state, RunState::Success);
}

/// A task group runs as its flattened tasks: after the group's upstream, its own default args
/// (a retry), and a task downstream of the group waits for all of the group's last tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_group_runs_between_its_upstream_and_downstream() {
    let mut s = Setup::new(Db::Sqlite).await;
    let calls = s.path("calls");
    let d = s.write_dag(
        "grouped",
        &format!(
            "tasks:\n  - {{id: extract, script: [sh, -c, 'echo extract >> order']}}\n  \
             - group: load\n    upstream: [extract]\n    default_args: {{retries: 1, retry_delay: 0s}}\n    tasks:\n      \
             - {{id: flaky, script: {}}}\n      - {{id: slow, script: [sh, -c, 'sleep 0.3; echo slow >> order']}}\n  \
             - {{id: report, upstream: [load], script: [sh, -c, 'echo report >> order']}}\n",
            succeed_on_call(&calls, 2)
        ),
    );
    s.start();
    let run = runs::trigger(&s.store, &d, Default::default(), None).await.unwrap();
    assert_eq!(s.finished("grouped", &run, Duration::from_secs(60)).await.state, RunState::Success);
    let order = std::fs::read_to_string(s.dags().join("order")).unwrap();
    assert!(order.starts_with("extract\n") && order.ends_with("slow\nreport\n"), "{order}");
    assert_eq!(s.store.tries(&key("grouped", &run, "load.flaky")).await.unwrap().len(), 2, "the group's retries");
    s.stop().await;
}

/// `mode: all` waits for a commit to every table; without signals (no bus) the scheduler finds
/// commits in the tables' logs when it reads the DAG folder, and a scheduler started after
/// commits it never heard of runs for them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_tables_mode_and_commits_found_in_the_logs() {
    let mut s = Setup::new(Db::Sqlite).await;
    s.write_dag("both", "schedule: {tables: [raw.a, raw.b], mode: all}\ntasks:\n  - {id: t, script: [true]}\n");
    // A probe on raw.a alone: its run shows the scheduler has seen raw.a's commit.
    s.write_dag("probe", "schedule: {tables: [raw.a]}\ntasks:\n  - {id: t, script: [true]}\n");
    s.start();
    watching(&s, "both", 2).await;
    watching(&s, "probe", 1).await;
    let a = commit(&s.lake, "raw.a", false).await as i64;
    runs_finished(&s, "probe", 1, Duration::from_secs(30)).await;
    assert!(s.store.runs("both", 10).await.unwrap().is_empty(), "mode all ran before raw.b committed");
    let b = commit(&s.lake, "raw.b", false).await as i64;
    let runs = runs_finished(&s, "both", 1, Duration::from_secs(30)).await;
    assert_eq!(runs[0].inputs["raw.a"], input(a, -1));
    assert_eq!(runs[0].inputs["raw.b"], input(b, -1));
    s.stop().await;

    // Commits while no scheduler runs: the next one runs for them, once.
    let a2 = commit(&s.lake, "raw.a", false).await as i64;
    let b2 = commit(&s.lake, "raw.b", false).await as i64;
    let a3 = commit(&s.lake, "raw.a", false).await as i64;
    s.start();
    let runs = runs_finished(&s, "both", 2, Duration::from_secs(30)).await;
    assert_eq!(runs[0].inputs["raw.a"], input(a3, a));
    assert_eq!(runs[0].inputs["raw.b"], input(b2, b));
    assert!(a2 < a3);
    let probe = runs_finished(&s, "probe", 2, Duration::from_secs(30)).await;
    assert_eq!(probe[0].inputs["raw.a"], input(a3, a));
    s.stop().await;
}

/// Several processes opening a fresh database at once (a scheduler and a `weir dags` command,
/// say) each run the migrations; all of them must come up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_opening_a_fresh_database_together_all_start() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/weir.db", dir.path().display());
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            set.spawn(async move {
                let pool = metadata::connect(&url, Duration::from_secs(10)).await.unwrap();
                let store = Store::open(pool.clone()).await?;
                weir_schemas::registry::store::SqlRegistry::open(pool).await.unwrap();
                store.dags().await
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().expect("every opener starts");
        }
    }
}

/// With the lake on S3 (a local S3-compatible server), a try's log is written locally and moved
/// into the lake's `logs/` when the try ends; the try records the object's URL. SQL tasks write
/// their views there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_s3_lake_logs_and_views_land_in_the_bucket() {
    let endpoint = std::env::var("WEIR_TEST_S3_ENDPOINT")
        .expect("WEIR_TEST_S3_ENDPOINT is not set: run scripts/test, which starts a local S3 server");
    let bucket = format!("weir-flow-{}", std::process::id());
    let created = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
    let mut s = Setup::new(Db::Sqlite).await;
    s.lake = Arc::new(Lake::new(&LakeConfig {
        url: format!("s3://{bucket}/lake").parse().unwrap(),
        s3: weir_lake::S3Options { endpoint: Some(endpoint), allow_http: true, ..Default::default() },
        ..LakeConfig::default()
    }));
    let d = s.write_dag(
        "on_s3",
        "tasks:\n  - {id: say, script: [sh, -c, 'echo hello from {{ ds }}']}\n  - {id: count, upstream: [say], sql: SELECT 42 AS answer, view: answers}\n",
    );
    let mut config = s.config();
    config.logs_dir = Some(s.path("spool"));
    s.start_with(config);
    let day: DateTime<Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
    let run_id = runs::trigger(&s.store, &d, Default::default(), Some(day)).await.unwrap();
    assert_eq!(s.finished("on_s3", &run_id, Duration::from_secs(60)).await.state, RunState::Success);
    let tries = s.store.tries(&key("on_s3", &run_id, "say")).await.unwrap();
    let url = url::Url::parse(&tries[0].log).unwrap();
    assert!(url.as_str().starts_with(&format!("s3://{bucket}/lake/logs/on_s3/manual__")), "{url}");
    assert!(url.as_str().ends_with("/say.1.log"), "{url}");
    let text = String::from_utf8(s.lake.get_object(&url).await.unwrap()).unwrap();
    assert!(text.contains("hello from 2026-11-20"), "{text}");
    assert!(!s.path(&format!("spool/on_s3/{run_id}/say.1.log")).exists(), "the local copy is removed");
    let batches = weir_lake::query::run(&s.lake, "SELECT answer FROM views.answers", None).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    s.stop().await;
}
