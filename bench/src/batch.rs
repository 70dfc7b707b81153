//! `weir bench batch`: the `orders_daily` shape — orders LEFT JOIN payments, deliveries and
//! ratings on `order_id`, grouped per day and payment method — as a SQL task writing a view,
//! in-process and on a local Ballista cluster (one scheduler, two executors, spawned from this
//! binary), against DuckDB (PyPI `duckdb` in the test venv) over the very same Parquet files.
//!
//! The four tables are generated (seeded) into a temporary lake, one Delta commit per million
//! orders, as Weir's writers lay them out: ~2 % of orders unpaid, ~10 % undelivered, half unrated.
//! Each round runs the three in turn (in-process, Ballista, DuckDB); the figures are the medians
//! over rounds and the ratios between them. Every run's result rows are compared with
//! DuckDB's: a benchmark whose engines disagree is an error, not a figure.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use deltalake::{
    DeltaTable,
    arrow::{
        array::{ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray},
        datatypes::{DataType, Field, Schema},
        util::display::{ArrayFormatter, FormatOptions},
    },
    protocol::SaveMode,
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};
use weir_batch::{
    engine::Engine,
    sql::{WriteMode, write_view},
};
use weir_lake::{Lake, LakeConfig, LakeUrl};

use super::{Progress, machine, median};

/// The tables, as `views.<name>` (the namespace SQL tasks write; any namespace reads the same).
const TABLES: [&str; 4] = ["bench_orders", "bench_payments", "bench_deliveries", "bench_ratings"];

/// The task's query: what `orders_daily` computes, aggregated to integers so that every engine's
/// answer can be compared exactly.
const QUERY: &str = "SELECT o.order_date, p.method, count(*) AS orders, sum(o.amount) AS amount, \
     count(p.order_id) AS paid, sum(p.amount) AS paid_amount, \
     count(d.order_id) AS delivered, sum(d.minutes) AS delivery_minutes, \
     count(r.order_id) AS rated, sum(r.stars) AS stars \
     FROM views.bench_orders o \
     LEFT JOIN views.bench_payments p ON p.order_id = o.order_id \
     LEFT JOIN views.bench_deliveries d ON d.order_id = o.order_id \
     LEFT JOIN views.bench_ratings r ON r.order_id = o.order_id \
     GROUP BY o.order_date, p.method";

/// 2026-11-01 as days since 1970-01-01 (Arrow's `Date32`).
const FIRST_DAY: i32 = 20_758;
/// Orders are spread over this many days.
const DAYS: i32 = 30;
const METHODS: [&str; 3] = ["card", "cash", "wallet"];

/// `weir bench batch`.
#[derive(Args)]
pub struct BatchBenchArgs {
    /// Orders (the other tables follow from it).
    #[arg(long, default_value_t = 10_000_000)]
    orders: u64,
    /// Rounds of the three engines; the figures are medians.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Orders per commit (and so per data file) while generating.
    #[arg(long, default_value_t = 1_000_000)]
    commit_rows: u64,
    /// Task slots of each of the two executors (default: the machine's cores shared between them).
    #[arg(long)]
    executor_slots: Option<usize>,
    /// Where the lake and the cluster's logs go (default: a temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The Python with `duckdb` (default: the test venv `scripts/deps` makes).
    #[arg(long, env = "WEIR_TEST_PYTHON")]
    python: Option<PathBuf>,
}

/// Generates the four tables' rows, a million orders at a time.
struct Generator {
    rng: StdRng,
    next_id: i64,
}

impl Generator {
    fn schemas() -> [Arc<Schema>; 4] {
        let id = || Field::new("order_id", DataType::Int64, false);
        [
            Schema::new(vec![
                id(),
                Field::new("order_date", DataType::Date32, false),
                Field::new("customer_id", DataType::Int64, false),
                Field::new("amount", DataType::Int64, false),
            ]),
            Schema::new(vec![
                id(),
                Field::new("method", DataType::Utf8, false),
                Field::new("status", DataType::Utf8, false),
                Field::new("amount", DataType::Int64, false),
            ]),
            Schema::new(vec![
                id(),
                Field::new("courier_id", DataType::Int64, false),
                Field::new("minutes", DataType::Int32, false),
            ]),
            Schema::new(vec![id(), Field::new("stars", DataType::Int32, false)]),
        ]
        .map(Arc::new)
    }

    /// The next `n` orders and the rows of the other tables that belong to them.
    fn next(&mut self, n: u64, schemas: &[Arc<Schema>; 4]) -> anyhow::Result<[RecordBatch; 4]> {
        let ids: Vec<i64> = (self.next_id..self.next_id + n as i64).collect();
        self.next_id += n as i64;
        let rng = &mut self.rng;
        let dates: Vec<i32> = ids.iter().map(|_| FIRST_DAY + rng.random_range(0..DAYS)).collect();
        let customers: Vec<i64> = ids.iter().map(|_| rng.random_range(0..1_000_000)).collect();
        let amounts: Vec<i64> = ids.iter().map(|_| rng.random_range(500..10_000)).collect();
        let paid: Vec<(i64, i64)> =
            ids.iter().zip(&amounts).filter(|_| rng.random_range(0..50) != 0).map(|(&i, &a)| (i, a)).collect();
        let delivered: Vec<i64> = ids.iter().copied().filter(|_| rng.random_range(0..10) != 0).collect();
        let rated: Vec<i64> = ids.iter().copied().filter(|_| rng.random_bool(0.5)).collect();
        let orders: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(Date32Array::from(dates)),
            Arc::new(Int64Array::from(customers)),
            Arc::new(Int64Array::from(amounts)),
        ];
        let payments: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(paid.iter().map(|p| p.0))),
            Arc::new(StringArray::from_iter_values(paid.iter().map(|_| METHODS[rng.random_range(0..METHODS.len())]))),
            Arc::new(StringArray::from_iter_values(
                paid.iter().map(|_| if rng.random_range(0..20) == 0 { "failed" } else { "captured" }),
            )),
            Arc::new(Int64Array::from_iter_values(paid.iter().map(|p| p.1))),
        ];
        let deliveries: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(delivered.iter().copied())),
            Arc::new(Int64Array::from_iter_values(delivered.iter().map(|_| rng.random_range(0..20_000)))),
            Arc::new(Int32Array::from_iter_values(delivered.iter().map(|_| rng.random_range(10..90)))),
        ];
        let ratings: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(rated.iter().copied())),
            Arc::new(Int32Array::from_iter_values(rated.iter().map(|_| rng.random_range(1..=5)))),
        ];
        let [o, p, d, r] = schemas;
        Ok([
            RecordBatch::try_new(o.clone(), orders)?,
            RecordBatch::try_new(p.clone(), payments)?,
            RecordBatch::try_new(d.clone(), deliveries)?,
            RecordBatch::try_new(r.clone(), ratings)?,
        ])
    }
}

/// Writes the four tables into `lake`; returns each table's data files (local paths).
async fn generate(lake: &Lake, args: &BatchBenchArgs) -> anyhow::Result<Vec<Vec<String>>> {
    let schemas = Generator::schemas();
    let mut tables = Vec::new();
    for name in TABLES {
        let url = lake.table_url(&format!("views.{name}")).map_err(anyhow::Error::msg)?;
        tables.push(Some(DeltaTable::try_from_url(url).await?));
    }
    let mut generator = Generator { rng: StdRng::seed_from_u64(0x0D1E_5EED), next_id: 1 };
    let mut progress = Progress::new(format!("generating {} orders", args.orders), args.orders as usize);
    let mut written = 0;
    while written < args.orders {
        let n = args.commit_rows.min(args.orders - written);
        for (slot, batch) in tables.iter_mut().zip(generator.next(n, &schemas)?) {
            let table = slot.take().expect("every table is put back");
            *slot = Some(
                table
                    .write(vec![batch])
                    .with_save_mode(SaveMode::Append)
                    .with_writer_properties(weir_lake::writer::parquet_properties())
                    .await?,
            );
        }
        written += n;
        progress.update(written as usize);
    }
    let mut files = Vec::new();
    for table in tables.into_iter().flatten() {
        let uris: Vec<String> = table.get_file_uris()?.collect();
        files.push(uris.iter().map(|u| u.trim_start_matches("file://").to_string()).collect());
    }
    Ok(files)
}

/// Result rows as text (NULL for null), sorted: the form every engine's answer is compared in.
fn rows_of(batches: &[RecordBatch]) -> anyhow::Result<Vec<Vec<String>>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters: Vec<ArrayFormatter> =
            batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            rows.push(formatters.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    rows.sort();
    Ok(rows)
}

/// Runs the query as a SQL task on `engine` (writing `views.<view>`); returns its seconds and
/// the view's rows (read after the clock stops).
async fn run_task(lake: &Lake, engine: &Engine, view: &str) -> anyhow::Result<(f64, Vec<Vec<String>>)> {
    let started = Instant::now();
    write_view(lake, engine, QUERY, view, WriteMode::Overwrite, json!({"bench": "batch"}), &Default::default())
        .await
        .with_context(|| format!("the SQL task on {engine}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let batches = weir_lake::query::run(lake, &format!("SELECT * FROM views.{view}"), None).await?;
    Ok((seconds, rows_of(&batches)?))
}

/// DuckDB in a Python process that answers one query per line of JSON on stdin.
struct DuckDb {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    version: String,
    threads: u64,
}

const DUCKDB_SERVER: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")  # it would print on stdout, where the answers go
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(json.dumps({"version": duckdb.__version__, "threads": threads}), flush=True)
for line in sys.stdin:
    try:
        rows = con.execute(json.loads(line)["sql"]).fetchall()
        print(json.dumps({"rows": [["NULL" if v is None else str(v) for v in r] for r in rows]}), flush=True)
    except Exception as e:
        print(json.dumps({"error": str(e)}), flush=True)
"#;

impl DuckDb {
    fn start(python: &Path) -> anyhow::Result<DuckDb> {
        let mut child = Command::new(python)
            .args(["-c", DUCKDB_SERVER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} (run scripts/deps for the venv with duckdb)", python.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut hello = String::new();
        stdout.read_line(&mut hello)?;
        let hello: Value = serde_json::from_str(&hello)
            .with_context(|| format!("{} could not import duckdb (run scripts/deps)", python.display()))?;
        let version = hello["version"].as_str().unwrap_or_default().to_string();
        let threads = hello["threads"].as_u64().unwrap_or_default();
        Ok(DuckDb { child, stdin, stdout, version, threads })
    }

    /// Runs `sql`; returns its seconds (the round trip) and its rows.
    fn query(&mut self, sql: &str) -> anyhow::Result<(f64, Vec<Vec<String>>)> {
        let started = Instant::now();
        writeln!(self.stdin, "{}", json!({ "sql": sql }))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let seconds = started.elapsed().as_secs_f64();
        let answer: Value = serde_json::from_str(&line).context("DuckDB's answer")?;
        if let Some(e) = answer["error"].as_str() {
            anyhow::bail!("DuckDB: {e}\n{sql}");
        }
        let mut rows: Vec<Vec<String>> = serde_json::from_value(answer["rows"].clone())?;
        rows.sort();
        Ok((seconds, rows))
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Ballista scheduler and executors spawned from this binary, killed on drop.
struct Cluster {
    scheduler: String,
    children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    async fn start(dir: &Path, executors: usize, slots: usize) -> anyhow::Result<Cluster> {
        let exe = std::env::current_exe()?;
        let (grpc, ops) = (free_port()?, free_port()?);
        let scheduler = format!("127.0.0.1:{grpc}");
        let mut cluster = Cluster { scheduler: scheduler.clone(), children: Vec::new() };
        let spawn = |args: Vec<String>, log: &str| -> anyhow::Result<Child> {
            Ok(Command::new(&exe)
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(log))?)
                .spawn()?)
        };
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        cluster.children.push(spawn(
            args(&["ballista", "scheduler", "--bind", &scheduler, "--listen", &format!("127.0.0.1:{ops}")]),
            "scheduler.log",
        )?);
        wait_healthy(ops, "the Ballista scheduler", dir.join("scheduler.log")).await?;
        for i in 0..executors {
            let (flight, exec_grpc, exec_ops) = (free_port()?, free_port()?, free_port()?);
            let work = dir.join(format!("executor-{i}"));
            std::fs::create_dir_all(&work)?;
            let log = format!("executor-{i}.log");
            cluster.children.push(spawn(
                args(&[
                    "ballista",
                    "executor",
                    "--scheduler",
                    &scheduler,
                    "--port",
                    &flight.to_string(),
                    "--grpc-port",
                    &exec_grpc.to_string(),
                    "--work-dir",
                    &work.display().to_string(),
                    "--concurrent-tasks",
                    &slots.to_string(),
                    "--listen",
                    &format!("127.0.0.1:{exec_ops}"),
                ]),
                &log,
            )?);
            wait_healthy(exec_ops, "a Ballista executor", dir.join(&log)).await?;
        }
        Ok(cluster)
    }
}

/// Waits for `/healthz` on `port` to answer 200; a role that does not within a minute is an
/// error pointing at its log.
async fn wait_healthy(port: u16, what: &str, log: PathBuf) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "{what} did not start; see {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: BatchBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.rounds >= 1 && args.orders >= 1, "--rounds and --orders must be at least 1");
    let python = match &args.python {
        Some(p) => p.clone(),
        None => dirs_cache().join("weir/venv/bin/python"),
    };
    let mut duckdb = DuckDb::start(&python)?;
    let tmp = tempfile::tempdir()?;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => tmp.path().to_path_buf(),
    };
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(dir.join("lake")), ..LakeConfig::default() });
    let files = generate(&lake, &args).await?;
    let mut setup = "CREATE SCHEMA views;".to_string();
    for (name, files) in TABLES.iter().zip(&files) {
        setup += &format!("CREATE VIEW views.{name} AS SELECT * FROM read_parquet({});", json!(files));
    }
    duckdb.query(&setup).context("registering the Parquet files with DuckDB")?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let slots = args.executor_slots.unwrap_or((cores / 2).max(1));
    let cluster = Cluster::start(&dir, 2, slots).await?;
    let ballista = Engine::Ballista { scheduler: cluster.scheduler.clone() };

    let (mut local_s, mut ballista_s, mut duckdb_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut groups = 0;
    for round in 1..=args.rounds {
        let (l, local_rows) = run_task(&lake, &Engine::Local, "bench_daily_local").await?;
        let (b, ballista_rows) = run_task(&lake, &ballista, "bench_daily_ballista").await?;
        let (d, duckdb_rows) = duckdb.query(QUERY)?;
        anyhow::ensure!(!duckdb_rows.is_empty(), "DuckDB returned no rows");
        anyhow::ensure!(local_rows == duckdb_rows, "in-process and DuckDB disagree in round {round}");
        anyhow::ensure!(ballista_rows == duckdb_rows, "Ballista and DuckDB disagree in round {round}");
        groups = duckdb_rows.len();
        eprintln!("round {round}/{}: in-process {l:.2} s, Ballista {b:.2} s, DuckDB {d:.2} s", args.rounds);
        local_s.push(l);
        ballista_s.push(b);
        duckdb_s.push(d);
    }
    drop(cluster);
    let (local, on_ballista, duck) = (median(local_s.clone()), median(ballista_s.clone()), median(duckdb_s.clone()));
    let bytes: u64 = files.iter().flatten().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    Ok(json!({
        "benchmark": "batch",
        "machine": machine(),
        "orders": args.orders,
        "data_files": files.iter().map(Vec::len).sum::<usize>(),
        "data_bytes": bytes,
        "result_groups": groups,
        "rounds": args.rounds,
        "in_process_s": local,
        "ballista_s": on_ballista,
        "duckdb_s": duck,
        "runs_s": {"in_process": local_s, "ballista": ballista_s, "duckdb": duckdb_s},
        "ballista_executors": 2,
        "ballista_slots_per_executor": slots,
        "duckdb": {"version": duckdb.version, "threads": duckdb.threads},
        "results_equal": true,
        "in_process_vs_duckdb": local / duck,
        "ballista_vs_in_process": on_ballista / local,
        "goals": {
            "in_process_vs_duckdb_at_most": 1.0,
            "ballista_vs_in_process_at_most": 1.5,
            "met": local / duck <= 1.0 && on_ballista / local <= 1.5,
        },
    }))
}

/// `$XDG_CACHE_HOME`, else `~/.cache`, as `scripts/deps` places the venv.
pub(super) fn dirs_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"))
}
