//! `weir bench scheduler`: the orchestrator's own overhead, on the embedded metadata DB.
//!
//! (a) chain: one DAG of N `script: [true]` tasks in a line — the time from one task's recorded
//! end to the next one's recorded start (p50/p99), and the whole chain's time per task;
//! (b) fan-out: D DAGs × W parallel `true` tasks triggered at once — tasks per second.
//! (c) table trigger: a DAG with `schedule: {tables: [raw.bench]}`, on the embedded bus — the
//! time from a commit to the table to the triggered run's first task recorded running (p50/p99),
//! one commit at a time. The peer is Airflow's AssetWatcher path, which polls: its file trigger
//! (`FileDeleteTrigger`, in Airflow's own AssetWatcher example) pokes every 5 s by default, so it
//! notices an event 2.5 s later on average before the scheduler even creates the run.
//! Baseline in the same run: spawning `true` directly (one after another; then with the same
//! number of slots), the floor any executor of processes has.
//!
//! With `--history RUNS`: the chain and the fan-out on an empty metadata DB and on one that already
//! holds RUNS finished runs of `--history-tasks` tasks each (100,000 × 30 = 3 M task instances and
//! as many tries, as in apache/airflow#54283); the ratios say whether scheduling stays flat as
//! history grows.
//!
//! With `--schedulers N --workers M`: the same workload with remote workers, for 1, 2, … N
//! schedulers (on PostgreSQL with `--metadata-url`); the baseline is one scheduler.

use std::{sync::Arc, time::Instant};

use clap::Args;
use serde_json::{Value, json};
use weir_flow::{
    dag,
    rules::RunState,
    runs,
    scheduler::{Executor, FlowConfig, Scheduler},
    store::{Store, TaskKey},
    worker::Worker,
};
use weir_lake::{Lake, LakeConfig};

use super::machine;

/// `weir bench scheduler`.
#[derive(Args)]
pub struct SchedulerBenchArgs {
    /// Tasks in the linear chain.
    #[arg(long, default_value_t = 1000)]
    chain: usize,
    /// DAGs in the fan-out part…
    #[arg(long, default_value_t = 100)]
    dags: usize,
    /// … each with this many parallel tasks.
    #[arg(long, default_value_t = 100)]
    width: usize,
    /// Executor slots (with --workers: shared out among the workers).
    #[arg(long, default_value_t = 16)]
    slots: usize,
    /// Scale-out: measure with 1, 2, … N schedulers (one leads, the others stand by) and
    /// remote workers; the ratio to one scheduler is what high availability costs.
    #[arg(long)]
    schedulers: Option<usize>,
    /// Commits to the input table of the table-triggered DAG, one run each.
    #[arg(long, default_value_t = 100)]
    commits: usize,
    /// History: measure on an empty metadata DB and on one holding this many finished runs.
    #[arg(long)]
    history: Option<usize>,
    /// History: tasks per past run.
    #[arg(long, default_value_t = 30)]
    history_tasks: usize,
    /// Scale-out: remote workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Scale-out: rounds over 1..=N schedulers, alternately up and down.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Scale-out: a PostgreSQL server (`postgres://user@host:port/db`) to create the benchmark's
    /// databases on (default: SQLite files).
    #[arg(long, env = "WEIR_BENCH_POSTGRES_URL")]
    metadata_url: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(args: SchedulerBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.chain > 1 && args.dags > 0 && args.width > 0 && args.slots > 0, "arguments must be positive");
    let tmp = tempfile::tempdir()?;
    let dags_dir = tmp.path().join("dags");
    std::fs::create_dir_all(&dags_dir)?;
    let lake_url = url::Url::from_directory_path(tmp.path().join("lake")).map_err(|()| anyhow::anyhow!("lake path"))?;
    let lake = Arc::new(Lake::new(&LakeConfig {
        url: lake_url.as_str().parse().map_err(anyhow::Error::msg)?,
        ..LakeConfig::default()
    }));

    // The DAG files.
    let mut chain = String::from("dag_id: chain\nmax_active_tasks: 1\ntasks:\n  - {id: t0, script: [\"true\"]}\n");
    for i in 1..args.chain {
        chain.push_str(&format!("  - {{id: t{i}, upstream: [t{}], script: [\"true\"]}}\n", i - 1));
    }
    std::fs::write(dags_dir.join("chain.yaml"), chain)?;
    for d in 0..args.dags {
        let mut text = format!("dag_id: fan{d}\nmax_active_tasks: {}\ntasks:\n", args.width);
        for i in 0..args.width {
            text.push_str(&format!("  - {{id: t{i}, script: [\"true\"]}}\n"));
        }
        std::fs::write(dags_dir.join(format!("fan{d}.yaml")), text)?;
    }
    let (dags, errors) = dag::load_dir(&dags_dir);
    anyhow::ensure!(errors.is_empty(), "bench DAGs refused: {errors:?}");
    let config = FlowConfig {
        dags_dir: dags_dir.clone(),
        slots: args.slots,
        logs_dir: Some(tmp.path().join("logs")),
        ..FlowConfig::default()
    };

    if let Some(schedulers) = args.schedulers {
        return scale_out(&args, schedulers, &dags, lake, config, tmp.path()).await;
    }
    if let Some(runs) = args.history {
        return history(&args, runs, &dags, lake, config, tmp.path()).await;
    }

    let store = Store::open(sqlite(tmp.path(), "weir").await?).await?;
    let scheduler = Scheduler::new(store.clone(), lake, config);
    let running = Started::new(scheduler);
    let measured = measure(&store, &dags, &args).await?;
    running.stop().await?;
    let total = args.dags * args.width;
    let triggered = table_trigger(tmp.path(), &args, args.slots).await?;

    // Baselines: `true` spawned directly.
    let n = args.chain.min(1000);
    let started = Instant::now();
    for _ in 0..n {
        tokio::process::Command::new("true").status().await?;
    }
    let spawn_serial_ms = started.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.slots));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..total {
        let permit = sem.clone().acquire_owned().await?;
        set.spawn(async move {
            let r = tokio::process::Command::new("true").status().await;
            drop(permit);
            r
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let spawn_parallel_rate = total as f64 / started.elapsed().as_secs_f64();

    Ok(json!({
        "benchmark": "scheduler",
        "machine": machine(),
        "metadata_db": "sqlite (embedded default)",
        "slots": args.slots,
        "chain": measured.chain_json(&args),
        "fan_out": measured.fan_json(&args),
        "table_trigger": triggered,
        "baseline": {
            "spawn_true_serial_ms": spawn_serial_ms,
            "spawn_true_parallel_per_s": spawn_parallel_rate.round(),
            "fan_out_ratio_to_spawning": measured.fan_rate / spawn_parallel_rate,
        },
        "goals": {"task_to_task_p50_ms": 10, "tasks_per_s": 1000, "commit_to_task_p50_ms": 100, "commit_to_task_p99_ms": 1000},
    }))
}

/// Airflow's AssetWatcher file trigger's default poke interval (`FileDeleteTrigger`).
const AIRFLOW_POKE_MS: f64 = 5000.0;

/// (c): commits to `raw.bench`, each announced on an embedded bus as the lake writer does, and
/// the time to the triggered run's first task recorded running.
async fn table_trigger(tmp: &std::path::Path, args: &SchedulerBenchArgs, slots: usize) -> anyhow::Result<Value> {
    use deltalake::arrow::{
        array::Int64Array,
        datatypes::{DataType, Field, Schema},
        record_batch::RecordBatch,
    };
    anyhow::ensure!(args.commits > 0, "--commits must be positive");
    eprintln!("table trigger: {} commits to raw.bench, one triggered run each", args.commits);
    let dir = tmp.join("trigger");
    let dags_dir = dir.join("dags");
    std::fs::create_dir_all(&dags_dir)?;
    std::fs::write(
        dags_dir.join("on_commit.yaml"),
        "schedule: {tables: [raw.bench]}\ntasks:\n  - {id: first, script: [\"true\"]}\n",
    )?;
    let bus: Arc<dyn weir_bus::Bus> = Arc::new(weir_bus::local::LocalBus::open(&dir.join("bus"), Default::default())?);
    let lake_url = url::Url::from_directory_path(dir.join("lake")).map_err(|()| anyhow::anyhow!("lake path"))?;
    let lake =
        Lake::new(&LakeConfig { url: lake_url.as_str().parse().map_err(anyhow::Error::msg)?, ..LakeConfig::default() })
            .with_signals(weir_lake::signal::Signals::new(bus.clone()));
    let lake = Arc::new(lake);
    let store = Store::open(sqlite(&dir, "weir").await?).await?;
    let config = FlowConfig { dags_dir, slots, logs_dir: Some(dir.join("logs")), ..FlowConfig::default() };
    let scheduler = Scheduler::new(store.clone(), lake.clone(), config).with_bus(bus);
    let running = Started::new(scheduler);
    while store.table_cursors("on_commit").await?.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let table_url = lake.table_url("raw.bench")?;
    let mut latencies = Vec::with_capacity(args.commits);
    for i in 0..args.commits {
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![i as i64]))])?;
        let table = deltalake::DeltaTable::try_from_url(table_url.clone()).await?.write(vec![batch]).await?;
        let committed = chrono::Utc::now();
        lake.announce("raw.bench", table.version().unwrap_or_default(), "append").await;
        // The run this commit starts, once its first task has run.
        let started = loop {
            let runs = store.runs("on_commit", args.commits + 1).await?;
            if runs.len() > i {
                let run = &runs[0];
                anyhow::ensure!(runs.len() == i + 1, "commit {i} started {} runs", runs.len() - i);
                anyhow::ensure!(run.state != RunState::Failed, "triggered run {} failed", run.run_id);
                if run.state == RunState::Success {
                    let key =
                        TaskKey { dag_id: "on_commit".into(), run_id: run.run_id.clone(), task_id: "first".into() };
                    break store.tries(&key).await?.first().map(|t| t.started_at);
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let started = started.ok_or_else(|| anyhow::anyhow!("the triggered run's task has no try"))?;
        latencies.push((started - committed).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    running.stop().await?;
    latencies.sort_by(f64::total_cmp);
    let p50 = percentile(&latencies, 0.5);
    Ok(json!({
        "commits": args.commits,
        "commit_to_first_task_ms": {"p50": p50, "p99": percentile(&latencies, 0.99), "max": percentile(&latencies, 1.0)},
        "airflow_asset_watcher_poke_interval_ms": AIRFLOW_POKE_MS,
        "ratio_p50_to_airflow_mean_poke_wait": p50 / (AIRFLOW_POKE_MS / 2.0),
    }))
}

/// `--schedulers N --workers M`: for n = 1..=N, n schedulers (one leads, the rest stand by as
/// heirs) and M remote workers on a fresh metadata DB each. The counts are measured in rounds,
/// up then down (1, 2, 3, 3, 2, 1 …), so drift on a noisy machine falls on every n alike; the
/// ratio of each n's mean fan-out rate to n = 1's is what high availability costs.
async fn scale_out(
    args: &SchedulerBenchArgs,
    schedulers: usize,
    dags: &[dag::Dag],
    lake: Arc<Lake>,
    config: FlowConfig,
    tmp: &std::path::Path,
) -> anyhow::Result<Value> {
    anyhow::ensure!(
        schedulers > 0 && args.workers > 0 && args.rounds > 0,
        "--schedulers, --workers and --rounds must be positive"
    );
    let config = FlowConfig { executor: Executor::Workers, ..config };
    let mut by_n: Vec<Vec<Measured>> = (0..schedulers).map(|_| Vec::new()).collect();
    let mut db = 0;
    for round in 0..args.rounds {
        let order: Vec<usize> =
            if round % 2 == 0 { (1..=schedulers).collect() } else { (1..=schedulers).rev().collect() };
        for n in order {
            eprintln!("round {}: {n} scheduler(s), {} worker(s)", round + 1, args.workers);
            db += 1;
            let pool = match &args.metadata_url {
                Some(url) => postgres(url, db).await?,
                None => sqlite(tmp, &format!("ha{db}")).await?,
            };
            let store = Store::open(pool).await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut roles = tokio::task::JoinSet::new();
            for _ in 0..n {
                let s = Scheduler::new(store.clone(), lake.clone(), config.clone());
                roles.spawn(s.run(until(stopped.clone())));
            }
            let per_worker = args.slots.div_ceil(args.workers);
            for _ in 0..args.workers {
                let w = Worker::new(store.clone(), lake.clone(), config.clone(), vec!["default".into()], per_worker);
                roles.spawn(w.run(until(stopped.clone())));
            }
            // Wait for a leader, so the figures measure scheduling rather than the first election.
            while store.lease().await?.holder.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            by_n[n - 1].push(measure(&store, dags, args).await?);
            let _ = stop.send(true);
            while let Some(r) = roles.join_next().await {
                r??;
            }
        }
    }
    let mean = |ms: &[Measured], f: &dyn Fn(&Measured) -> f64| ms.iter().map(f).sum::<f64>() / ms.len() as f64;
    let base = mean(&by_n[0], &|m| m.fan_rate);
    let results: Vec<Value> = by_n
        .iter()
        .enumerate()
        .map(|(i, ms)| {
            let rate = mean(ms, &|m| m.fan_rate);
            json!({
                "schedulers": i + 1,
                "chain_task_to_task_p50_ms": ms.iter().map(|m| percentile(&m.gaps, 0.5)).collect::<Vec<_>>(),
                "chain_task_to_task_p99_ms": ms.iter().map(|m| percentile(&m.gaps, 0.99)).collect::<Vec<_>>(),
                "fan_out_tasks_per_s": ms.iter().map(|m| m.fan_rate.round()).collect::<Vec<_>>(),
                "fan_out_tasks_per_s_mean": rate.round(),
                "fan_out_ratio_to_one_scheduler": rate / base,
            })
        })
        .collect();
    Ok(json!({
        "benchmark": "scheduler",
        "mode": "scale-out",
        "machine": machine(),
        "metadata_db": if args.metadata_url.is_some() { "postgresql" } else { "sqlite" },
        "workers": args.workers,
        "slots": args.slots,
        "rounds": args.rounds,
        "chain_tasks": args.chain,
        "fan_out_tasks": args.dags * args.width,
        "by_schedulers": results,
        "goals": {"fan_out_ratio_to_one_scheduler": 0.9},
    }))
}

/// `--history RUNS`: the same workload on an empty metadata DB, then on one filled with RUNS
/// finished runs of `--history-tasks` tasks (each with its one try), both on SQLite.
async fn history(
    args: &SchedulerBenchArgs,
    runs: usize,
    dags: &[dag::Dag],
    lake: Arc<Lake>,
    config: FlowConfig,
    tmp: &std::path::Path,
) -> anyhow::Result<Value> {
    anyhow::ensure!(runs > 0 && args.history_tasks > 0, "--history and --history-tasks must be positive");
    let mut measured = Vec::new();
    for (name, past) in [("empty", 0), ("history", runs)] {
        let pool = sqlite(tmp, name).await?;
        let store = Store::open(pool.clone()).await?;
        if past > 0 {
            eprintln!("history: writing {past} finished runs × {} tasks (and their tries)", args.history_tasks);
            let started = Instant::now();
            fill_history(&pool, past, args.history_tasks).await?;
            eprintln!("history: written in {:.1} s", started.elapsed().as_secs_f64());
        }
        let scheduler = Scheduler::new(store.clone(), lake.clone(), config.clone());
        let running = Started::new(scheduler);
        eprintln!("history: measuring on the {name} metadata DB");
        measured.push(measure(&store, dags, args).await?);
        running.stop().await?;
    }
    let (empty, full) = (&measured[0], &measured[1]);
    let p50 = |m: &Measured| percentile(&m.gaps, 0.5);
    Ok(json!({
        "benchmark": "scheduler",
        "mode": "history",
        "machine": machine(),
        "metadata_db": "sqlite (embedded default)",
        "history": {"runs": runs, "task_instances": runs * args.history_tasks, "tries": runs * args.history_tasks},
        "empty": {"chain": empty.chain_json(args), "fan_out": empty.fan_json(args)},
        "with_history": {"chain": full.chain_json(args), "fan_out": full.fan_json(args)},
        "ratio_chain_p50_history_to_empty": p50(full) / p50(empty),
        "ratio_fan_out_time_history_to_empty": full.fan_secs / empty.fan_secs,
        "goals": {"ratio_history_to_empty_at_most": 1.2},
    }))
}

/// Writes `runs` finished runs of DAG `history` with `tasks` task instances each, and their tries
/// (generated inside the database, in one transaction).
async fn fill_history(pool: &weir_schemas::metadata::Pool, runs: usize, tasks: usize) -> anyhow::Result<()> {
    let (runs, tasks) = (runs as i64, tasks as i64);
    let numbers = "WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < $1 - 1), \
                   t(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM t WHERE j < $2 - 1) ";
    let mut tx = pool.begin().await?;
    sqlx::query(&format!(
        "{numbers}INSERT INTO flow_dag_runs (dag_id, run_id, run_type, logical_date, interval_start, interval_end, \
         state, conf, dag_hash, created_at, started_at, ended_at) \
         SELECT 'history', 'scheduled__' || i, 'scheduled', i * 60000000, i * 60000000, (i + 1) * 60000000, \
         'success', '{{}}', 'h', i, i, i FROM r"
    ))
    .bind(runs)
    .bind(tasks)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "{numbers}INSERT INTO flow_task_instances (dag_id, run_id, task_id, state, try_number, max_tries, queue, pool, \
         priority, started_at, ended_at) SELECT 'history', 'scheduled__' || i, 't' || j, 'success', 1, 1, 'default', \
         'default_pool', 1, i, i FROM r, t"
    ))
    .bind(runs)
    .bind(tasks)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "{numbers}INSERT INTO flow_task_tries (dag_id, run_id, task_id, try_number, state, started_at, ended_at, log) \
         SELECT 'history', 'scheduled__' || i, 't' || j, 1, 'success', i, i, '' FROM r, t"
    ))
    .bind(runs)
    .bind(tasks)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What one measurement found.
struct Measured {
    gaps: Vec<f64>,
    chain_secs: f64,
    fan_secs: f64,
    fan_rate: f64,
}

impl Measured {
    fn chain_json(&self, args: &SchedulerBenchArgs) -> Value {
        let g = &self.gaps;
        json!({
            "tasks": args.chain,
            "task_to_task_ms": {"p50": percentile(g, 0.5), "p99": percentile(g, 0.99), "max": percentile(g, 1.0)},
            "seconds": self.chain_secs,
            "ms_per_task_including_process": self.chain_secs * 1000.0 / args.chain as f64,
        })
    }

    fn fan_json(&self, args: &SchedulerBenchArgs) -> Value {
        json!({
            "dags": args.dags,
            "tasks_per_dag": args.width,
            "tasks": args.dags * args.width,
            "seconds": self.fan_secs,
            "tasks_per_s": self.fan_rate.round(),
        })
    }
}

/// Runs (a) the chain and (b) the fan-out on whatever schedules `store`.
async fn measure(store: &Store, dags: &[dag::Dag], args: &SchedulerBenchArgs) -> anyhow::Result<Measured> {
    eprintln!("chain: {} tasks in a line", args.chain);
    let chain_dag = dags.iter().find(|d| d.id == "chain").expect("written above");
    let started = Instant::now();
    let run_id = runs::trigger(store, chain_dag, Default::default(), None).await?;
    wait(store, "chain", std::slice::from_ref(&run_id)).await?;
    let chain_secs = started.elapsed().as_secs_f64();
    let mut gaps = Vec::with_capacity(args.chain);
    let mut prev_end: Option<chrono::DateTime<chrono::Utc>> = None;
    for i in 0..args.chain {
        let key = TaskKey { dag_id: "chain".into(), run_id: run_id.clone(), task_id: format!("t{i}") };
        let tries = store.tries(&key).await?;
        let t = tries.last().ok_or_else(|| anyhow::anyhow!("t{i} never ran"))?;
        if let Some(end) = prev_end {
            gaps.push((t.started_at - end).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        prev_end = t.ended_at;
    }
    gaps.sort_by(f64::total_cmp);

    let total = args.dags * args.width;
    eprintln!("fan-out: {} DAGs × {} parallel tasks", args.dags, args.width);
    let started = Instant::now();
    let mut fan_runs = Vec::new();
    for d in dags.iter().filter(|d| d.id.starts_with("fan")) {
        fan_runs.push((d.id.clone(), runs::trigger(store, d, Default::default(), None).await?));
    }
    for (dag_id, run) in &fan_runs {
        wait(store, dag_id, std::slice::from_ref(run)).await?;
    }
    let fan_secs = started.elapsed().as_secs_f64();
    Ok(Measured { gaps, chain_secs, fan_secs, fan_rate: total as f64 / fan_secs })
}

/// A scheduler running in this process until [`Started::stop`].
struct Started {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<Result<(), weir_flow::FlowError>>,
}

impl Started {
    fn new(scheduler: Scheduler) -> Started {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        Started { stop, handle: tokio::spawn(scheduler.run(until(stopped))) }
    }

    /// Stops it and waits until it has (its error, if it failed).
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        Ok(self.handle.await??)
    }
}

/// Resolves when `stop` turns true.
async fn until(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn sqlite(dir: &std::path::Path, name: &str) -> anyhow::Result<weir_schemas::metadata::Pool> {
    let url = format!("sqlite://{}/{name}.db", dir.display());
    Ok(weir_schemas::metadata::connect(&url, std::time::Duration::from_secs(10)).await?)
}

/// A fresh database `weir_bench_<pid>_<n>` on the PostgreSQL server of `url`.
async fn postgres(url: &str, n: usize) -> anyhow::Result<weir_schemas::metadata::Pool> {
    let name = format!("weir_bench_{}_{n}", std::process::id());
    let db = weir_schemas::metadata::create_postgres_database(url, &name).await?;
    Ok(weir_schemas::metadata::connect(&db, std::time::Duration::from_secs(10)).await?)
}

/// Waits until the runs have finished; a failed run is an error.
async fn wait(store: &Store, dag_id: &str, run_ids: &[String]) -> anyhow::Result<()> {
    for run_id in run_ids {
        loop {
            let run = store.run(dag_id, run_id).await?;
            match run.state {
                RunState::Success => break,
                RunState::Failed => anyhow::bail!("{dag_id} {run_id} failed"),
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }
    Ok(())
}
