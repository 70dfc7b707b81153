//! SQL tasks on Apache DataFusion Ballista: `weir ballista scheduler` and two `weir ballista
//! executor`s on loopback run a DAG's join (the `orders_daily` shape) and a `replace_where`
//! backfill, and the views equal the in-process engine's.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, free_port, ok, weir};

const BUS: &str = "local:./weir-data/bus";

fn spawn(dir: &Path, args: &[&str]) -> Proc {
    spawn_logged(dir, args, &dir.join(format!("{}.log", args.join("_").replace(['/', ':', '.'], "-"))))
}

/// [`spawn`] with its log (stderr) in `log`.
fn spawn_logged(dir: &Path, args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).unwrap();
    Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(args)
            .current_dir(dir)
            .env("WEIR_BUS_URL", BUS)
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// Waits until `port` answers `/healthz` with 200.
fn wait_healthy(port: u16, what: &str) {
    use std::io::{Read as _, Write as _};
    let started = Instant::now();
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = write!(s, "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{what} not healthy on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Ballista scheduler and two executors on loopback, configured as `[batch] ballista`.
struct Cluster {
    grpc: u16,
    /// Each executor and its log.
    executors: Vec<(Proc, std::path::PathBuf)>,
    _scheduler: Proc,
}

impl Cluster {
    fn start(d: &Path, scheduler_args: &[&str]) -> Cluster {
        Cluster::start_with(d, scheduler_args, "")
    }

    /// With `toml` added to `weir.toml`.
    fn start_with(d: &Path, scheduler_args: &[&str], toml: &str) -> Cluster {
        let (grpc, ops) = (free_port(), free_port());
        std::fs::write(d.join("weir.toml"), format!("{toml}\n[batch]\nballista = \"ballista://127.0.0.1:{grpc}\"\n"))
            .unwrap();
        let bind = format!("127.0.0.1:{grpc}");
        let listen = format!("127.0.0.1:{ops}");
        let scheduler =
            spawn(d, &[&["ballista", "scheduler", "--bind", &bind, "--listen", &listen], scheduler_args].concat());
        wait_healthy(ops, "the Ballista scheduler");
        let mut executors = Vec::new();
        for i in 0..2 {
            let (flight, exec_grpc, exec_ops) = (free_port(), free_port(), free_port());
            let work = d.join(format!("executor-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            let log = d.join(format!("executor-{i}.log"));
            let child = spawn_logged(
                d,
                &[
                    "ballista",
                    "executor",
                    "--scheduler",
                    &bind,
                    "--port",
                    &flight.to_string(),
                    "--grpc-port",
                    &exec_grpc.to_string(),
                    "--work-dir",
                    work.to_str().unwrap(),
                    "--concurrent-tasks",
                    "2",
                    "--heartbeat-interval",
                    "2",
                    "--listen",
                    &format!("127.0.0.1:{exec_ops}"),
                ],
                &log,
            );
            wait_healthy(exec_ops, "a Ballista executor");
            executors.push((child, log));
        }
        Cluster { grpc, executors, _scheduler: scheduler }
    }
}

/// Whether the executor logging to `log` is running a task of the job's first stage (it started
/// one and finished none).
fn running_first_stage(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let first_stage = |line: &&str, what: &str| {
        line.contains(what)
            && line.split("[TID ").nth(1).and_then(|t| t.split('/').nth(1)).is_some_and(|s| s.starts_with("0."))
    };
    let started = text.lines().any(|l| first_stage(&l, "Received task"));
    let finished = text.lines().any(|l| first_stage(&l, "Finished task"));
    started && !finished
}

fn wait_for_run(dir: &Path, dag: &str, run: &str) -> String {
    let started = Instant::now();
    loop {
        let out = ok(weir(dir, BUS, &["dags", "runs", dag], None));
        if let Some(line) = out.lines().find(|l| l.starts_with(run)) {
            let state = line.split_whitespace().nth(2).unwrap().to_string();
            if state == "success" || state == "failed" {
                return state;
            }
        }
        // Under nextest's 300 s, so that a run that hangs is reported with its tasks.
        if started.elapsed() >= Duration::from_secs(240) {
            let tasks = weir(dir, BUS, &["dags", "tasks", dag, run], None);
            panic!("run {run} not finished in 240 s:\n{out}\n{}", String::from_utf8_lossy(&tasks.stdout));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits for `run` of `dag` and fails with its tasks and the failed ones' logs unless it succeeded.
fn assert_succeeded(d: &Path, dag: &str, run: &str) {
    let state = wait_for_run(d, dag, run);
    let tasks = ok(weir(d, BUS, &["dags", "tasks", dag, run], None));
    let failed = tasks.lines().filter(|l| l.contains(" failed ")).filter_map(|l| l.split_whitespace().next());
    let logs: Vec<String> = failed
        .map(|t| String::from_utf8_lossy(&weir(d, BUS, &["dags", "logs", dag, run, t], None).stdout).into_owned())
        .collect();
    assert_eq!(state, "success", "{tasks}\n{}", logs.join("\n"));
}

fn query(dir: &Path, sql: &str) -> String {
    ok(weir(dir, BUS, &["query", "--format", "csv", sql], None))
}

/// Orders per day and payment method with their payments, deliveries and ratings.
const DAILY: &str = "SELECT o.day, p.method, count(*) AS orders, sum(p.amount) AS paid, \
    count(d.order_id) AS delivered, avg(d.minutes) AS avg_minutes, count(r.order_id) AS rated, \
    avg(r.stars) AS avg_stars \
    FROM views.orders o LEFT JOIN views.payments p ON o.order_id = p.order_id \
    LEFT JOIN views.deliveries d ON o.order_id = d.order_id \
    LEFT JOIN views.ratings r ON o.order_id = r.order_id";

#[test]
fn sql_tasks_on_a_ballista_cluster_write_what_the_in_process_engine_writes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = Cluster::start(d, &[]);
    let grpc = cluster.grpc;
    std::fs::create_dir_all(d.join("dags")).unwrap();
    let series = "FROM generate_series(1, 20000)";
    let daily = |engine: &str, view: &str| {
        format!(
            "  - id: {view}\n    upstream: [orders, payments, deliveries, ratings]\n    engine: {engine}\n    \
                 sql: \"{DAILY} GROUP BY 1, 2\"\n"
        )
    };
    let backfill = |engine: &str, view: &str, upstream: &str| {
        format!(
            "  - id: {view}_backfill\n    upstream: [{upstream}]\n    engine: {engine}\n    view: {view}\n    \
                 replace_where: \"day IN (3, 4)\"\n    \
                 sql: \"{DAILY} WHERE o.day IN (3, 4) AND o.order_id <= 10000 GROUP BY 1, 2\"\n"
        )
    };
    std::fs::write(
        d.join("dags/daily.yaml"),
        format!(
            "tasks:\n  \
             - id: orders\n    sql: \"SELECT value AS order_id, CAST(value % 30 AS INT) AS day {series}\"\n  \
             - id: payments\n    sql: \"SELECT value AS order_id, CASE WHEN value % 3 = 0 THEN 'card' ELSE 'cash' END AS method, \
             CAST(value % 1000 AS DOUBLE) AS amount {series}\"\n  \
             - id: deliveries\n    sql: \"SELECT value AS order_id, CAST(value % 47 AS DOUBLE) AS minutes {series} WHERE value % 10 <> 0\"\n  \
             - id: ratings\n    sql: \"SELECT value AS order_id, CAST(value % 5 + 1 AS DOUBLE) AS stars {series} WHERE value % 2 = 0\"\n\
             {}{}{}{}",
            daily("local", "daily_local"),
            daily("ballista", "daily_ballista"),
            backfill("local", "daily_local", "daily_local"),
            backfill("ballista", "daily_ballista", "daily_ballista"),
        ),
    )
    .unwrap();

    let _flow = spawn(d, &["scheduler", "--listen", &format!("127.0.0.1:{}", free_port())]);
    let run = ok(weir(d, BUS, &["dags", "trigger", "daily"], None)).trim().to_string();
    assert_succeeded(d, "daily", &run);
    let log = ok(weir(d, BUS, &["dags", "logs", "daily", &run, "daily_ballista"], None));
    assert!(log.contains(&format!("(engine ballista://127.0.0.1:{grpc})")), "{log}");

    let columns = "day, method, orders, paid, delivered, avg_minutes, rated, avg_stars";
    let local = query(d, &format!("SELECT {columns} FROM views.daily_local ORDER BY day, method"));
    let ballista = query(d, &format!("SELECT {columns} FROM views.daily_ballista ORDER BY day, method"));
    assert_eq!(local, ballista, "the same view from both engines");
    assert_eq!(local.lines().count(), 1 + 30, "a row per day (each day has one method): {local}");
    // The backfill replaced days 3 and 4 only: with half the orders there, the other days whole.
    let day = |view: &str, day: u32| query(d, &format!("SELECT sum(orders) FROM views.{view} WHERE day = {day}"));
    assert_eq!(day("daily_ballista", 3).lines().nth(1), day("daily_local", 3).lines().nth(1));
    let third: u64 = day("daily_ballista", 3).lines().nth(1).unwrap().parse().unwrap();
    let fifth: u64 = day("daily_ballista", 5).lines().nth(1).unwrap().parse().unwrap();
    assert!(third * 2 <= fifth + 2 && third * 2 + 2 >= fifth, "day 3 backfilled with half: {third} vs {fifth}");
    // `weir dags explain` shows the stages Ballista splits the join into.
    let plan = ok(weir(d, BUS, &["dags", "explain", "daily", "--task", "daily_ballista"], None));
    assert!(plan.contains("Ballista's stages") && plan.contains("stage 3:"), "{plan}");
    assert!(plan.contains("ShuffleWriterExec") && plan.contains("UnresolvedShuffleExec"), "{plan}");
    // Two tasks wrote it: versions 0 and 1, one commit each.
    let latest = query(d, "SELECT count(*) FROM views.daily_ballista VERSION AS OF 1");
    assert_eq!(latest.lines().nth(1), Some("30"), "{latest}");
    let beyond = weir(d, BUS, &["query", "SELECT count(*) FROM views.daily_ballista VERSION AS OF 2"], None);
    assert!(!beyond.status.success(), "no third commit");

    // The executors wrote the files: the backfill's commit adds its result and the rows it kept
    // of the files it replaced, all under one `ballista-<uuid>/` directory of the view.
    let table = d.join("weir-data/lake/views/daily_ballista");
    let (added, removed) = actions(&table, 1);
    let dir = added[0].split('/').next().unwrap().to_string();
    assert!(dir.starts_with("ballista-") && added.iter().all(|p| p.starts_with(&format!("{dir}/"))), "{added:?}");
    assert!(added.iter().any(|p| p.contains("/result/")) && added.iter().any(|p| p.contains("/kept/")), "{added:?}");
    let first = actions(&table, 0).0;
    assert!(
        !removed.is_empty() && removed.iter().all(|p| first.contains(p)) && removed.len() < first.len(),
        "the backfill replaced only the files holding days 3 and 4: {removed:?} of {first:?}"
    );

    // A try whose result breaks its replace_where fails after the executors wrote it: no commit,
    // and its files are left unreferenced for vacuum.
    std::fs::write(
        d.join("dags/bad.yaml"),
        format!(
            "tasks:\n  - id: bad\n    engine: ballista\n    retries: 0\n    view: daily_ballista\n    \
             replace_where: \"day = 99\"\n    sql: \"{DAILY} WHERE o.day = 3 GROUP BY 1, 2\"\n"
        ),
    )
    .unwrap();
    let run = ok(weir(d, BUS, &["dags", "trigger", "bad"], None)).trim().to_string();
    assert_eq!(wait_for_run(d, "bad", &run), "failed");
    let log = ok(weir(d, BUS, &["dags", "logs", "bad", &run, "bad"], None));
    assert!(log.contains("rows of the result do not match it"), "{log}");
    let beyond = weir(d, BUS, &["query", "SELECT count(*) FROM views.daily_ballista VERSION AS OF 2"], None);
    assert!(!beyond.status.success(), "the failed try committed nothing");
    let vacuum = |extra: &[&str]| {
        let out = weir(
            d,
            BUS,
            &[&["lake", "vacuum", "views.daily_ballista", "--retention", "0s", "--force"], extra].concat(),
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let unreferenced = vacuum(&["--dry-run"]);
    let orphans: Vec<&str> = unreferenced.lines().filter(|l| l.contains("ballista-") && !l.contains(&dir)).collect();
    assert!(!orphans.is_empty(), "the failed try's files are unreferenced: {unreferenced}");
    vacuum(&[]);
    assert!(orphans.iter().all(|f| !table.join(f).exists() && !Path::new(f).exists()), "vacuum removed {orphans:?}");
    assert_eq!(query(d, "SELECT count(*) FROM views.daily_ballista").lines().nth(1), Some("30"));
}

/// The paths a table's commit `version` adds and removes.
fn actions(table: &Path, version: u64) -> (Vec<String>, Vec<String>) {
    let log = std::fs::read_to_string(table.join(format!("_delta_log/{version:020}.json"))).unwrap();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for line in log.lines() {
        let action: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(p) = action["add"]["path"].as_str() {
            added.push(p.to_string());
        }
        if let Some(p) = action["remove"]["path"].as_str() {
            removed.push(p.to_string());
        }
    }
    (added, removed)
}

/// What the executors write is a Delta table like a local write's: new views, appends that add
/// a column, overwrites that change the columns, timestamps and decimals — equal to the local
/// engine's rows and read by Python's `deltalake` (delta-rs's reader, not ours).
#[test]
fn views_written_by_executors_have_the_local_engines_rows_and_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _cluster = Cluster::start(d, &[]);
    std::fs::create_dir_all(d.join("dags")).unwrap();
    // Ballista cannot ship generate_series (a table function) to executors: a local task makes
    // the numbers every other task reads.
    let tasks = |e: &str| {
        format!(
            "  - id: shape_{e}\n    upstream: [nums]\n    engine: {e}\n    \
             sql: \"SELECT value AS id, CAST(value AS DECIMAL(10, 2)) / 4 AS amount, \
             to_timestamp(1793491200 + value * 60) AS at, concat('x', value) AS label FROM views.nums WHERE value <= 100\"\n  \
             - id: more_{e}\n    upstream: [shape_{e}]\n    engine: {e}\n    view: shape_{e}\n    mode: append\n    \
             sql: \"SELECT value AS id, CAST(value AS DECIMAL(10, 2)) / 4 AS amount, \
             to_timestamp(1793491200 + value * 60) AS at, 'more' AS label, value % 7 AS extra FROM views.nums WHERE value > 100\"\n  \
             - id: reshape_{e}\n    upstream: [nums]\n    engine: {e}\n    sql: SELECT value AS a FROM views.nums WHERE value <= 3\n  \
             - id: reshaped_{e}\n    upstream: [reshape_{e}]\n    engine: {e}\n    view: reshape_{e}\n    \
             sql: \"SELECT concat('b', value) AS b FROM views.nums WHERE value <= 2\"\n"
        )
    };
    let nums = "  - id: nums\n    sql: SELECT value FROM generate_series(1, 150)\n";
    std::fs::write(d.join("dags/shapes.yaml"), format!("tasks:\n{nums}{}{}", tasks("local"), tasks("ballista")))
        .unwrap();
    let _flow = spawn(d, &["scheduler", "--listen", &format!("127.0.0.1:{}", free_port())]);
    let run = ok(weir(d, BUS, &["dags", "trigger", "shapes"], None)).trim().to_string();
    assert_succeeded(d, "shapes", &run);
    for (sql, rows) in
        [("SELECT * FROM views.shape_{} ORDER BY id", 150), ("SELECT * FROM views.reshape_{} ORDER BY b", 2)]
    {
        let local = query(d, &sql.replace("{}", "local"));
        assert_eq!(local, query(d, &sql.replace("{}", "ballista")), "{sql}");
        assert_eq!(local.lines().count(), 1 + rows, "{local}");
    }
    let python = weir_e2e::harness::python();
    let read = |view: &str| {
        let path = d.join("weir-data/lake/views").join(view);
        // os._exit: skip the interpreter teardown, where the deltalake package's native threads
        // occasionally abort (as in lake/tests/writer.rs).
        let script = "import os, sys, deltalake\n\
                      t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
                      print(t.num_rows, [f'{f.name}:{f.type}' for f in t.schema], t.column('id').to_pylist()[-1])\n\
                      sys.stdout.flush()\n\
                      os._exit(0)";
        let out = Command::new(&python).args(["-c", script, path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (local, ballista) = (read("shape_local"), read("shape_ballista"));
    assert_eq!(local, ballista, "delta-rs reads both alike");
    assert!(
        ballista.starts_with("150 ") && ballista.contains("at:timestamp[us]") && ballista.contains("extra:"),
        "{ballista}"
    );
}

#[test]
fn a_ballista_task_without_a_scheduler_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port(); // nothing listens there
    std::fs::write(d.join("weir.toml"), format!("[batch]\nengine = \"ballista://127.0.0.1:{port}\"\n")).unwrap();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(d.join("dags/one.yaml"), "tasks:\n  - id: one\n    sql: SELECT 1 AS n\n").unwrap();
    let _flow = spawn(d, &["scheduler", "--listen", &format!("127.0.0.1:{}", free_port())]);
    let run = ok(weir(d, BUS, &["dags", "trigger", "one"], None)).trim().to_string();
    assert_eq!(wait_for_run(d, "one", &run), "failed");
    let log = weir(d, BUS, &["dags", "logs", "one", &run, "one"], None);
    let text = format!("{}{}", String::from_utf8_lossy(&log.stdout), String::from_utf8_lossy(&log.stderr));
    assert!(text.contains(&format!("Ballista scheduler at ballista://127.0.0.1:{port}")), "{text}");
}

#[test]
fn an_executor_killed_mid_query_has_its_tasks_run_again_and_the_view_is_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cluster = Cluster::start(d, &["--executor-timeout", "6"]);
    std::fs::create_dir_all(d.join("dags")).unwrap();
    // A join of 20 M pairs: long enough on the dev build to kill an executor in the middle.
    let heavy = "SELECT a.k, count(*) AS pairs, sum(b.v) AS total FROM (SELECT value % 500 AS k FROM views.big) a \
                 JOIN (SELECT value % 500 AS k, value AS v FROM views.big) b ON a.k = b.k GROUP BY a.k";
    std::fs::write(
        d.join("dags/heavy.yaml"),
        format!(
            "tasks:\n  - id: big\n    sql: SELECT value FROM generate_series(1, 100000)\n  \
             - id: on_cluster\n    upstream: [big]\n    engine: ballista\n    sql: \"{heavy}\"\n  \
             - id: in_process\n    upstream: [on_cluster]\n    engine: local\n    sql: \"{heavy}\"\n"
        ),
    )
    .unwrap();
    let _flow = spawn(d, &["scheduler", "--listen", &format!("127.0.0.1:{}", free_port())]);
    let run = ok(weir(d, BUS, &["dags", "trigger", "heavy"], None)).trim().to_string();
    // Kill the executor running the join's stage (it takes seconds on the dev build) before it
    // finishes. (An executor lost after finishing a stage can stall a Ballista 55 job whose next
    // stage had started: docs/scale-out.md.)
    let started = Instant::now();
    let victim = loop {
        if let Some(i) = cluster.executors.iter().position(|(_, log)| running_first_stage(log)) {
            break i;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no executor ever ran the join's stage");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut child, _) = cluster.executors.remove(victim);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let tasks = ok(weir(d, BUS, &["dags", "tasks", "heavy", &run], None));
    let on_cluster = tasks.lines().find(|l| l.starts_with("on_cluster")).unwrap_or_default().to_string();
    assert_eq!(
        on_cluster.split_whitespace().nth(1),
        Some("running"),
        "the query was still running when its executor died: {tasks}"
    );

    assert_eq!(
        wait_for_run(d, "heavy", &run),
        "success",
        "{}",
        ok(weir(d, BUS, &["dags", "tasks", "heavy", &run], None))
    );
    let tasks = ok(weir(d, BUS, &["dags", "tasks", "heavy", &run], None));
    let cluster_try = tasks.lines().find(|l| l.starts_with("on_cluster")).unwrap().to_string();
    assert_eq!(cluster_try.split_whitespace().nth(2), Some("1"), "one try: Ballista re-ran the lost tasks: {tasks}");
    let a = query(d, "SELECT k, pairs, total FROM views.on_cluster ORDER BY k");
    let b = query(d, "SELECT k, pairs, total FROM views.in_process ORDER BY k");
    assert_eq!(a.lines().count(), 501);
    assert_eq!(a, b, "the view after the kill is the in-process result");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lake_on_s3_is_read_by_the_cluster_through_its_bucket() {
    let endpoint = weir_e2e::harness::s3_endpoint();
    let bucket = format!("weir-ballista-{}", std::process::id());
    let created = reqwest::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let toml = format!("[lake]\nurl = \"s3://{bucket}/lake\"\n[lake.s3]\nendpoint = \"{endpoint}\"\nallow_http = true\n");
        let _cluster = Cluster::start_with(&d, &[], &toml);
        std::fs::create_dir_all(d.join("dags")).unwrap();
        let per_day = "SELECT day, count(*) AS orders, sum(order_id) AS ids FROM views.orders GROUP BY day";
        std::fs::write(
            d.join("dags/s3.yaml"),
            format!(
                "tasks:\n  - id: orders\n    sql: SELECT value AS order_id, value % 7 AS day FROM generate_series(1, 5000)\n  \
                 - id: on_cluster\n    upstream: [orders]\n    engine: ballista\n    sql: {per_day}\n  \
                 - id: in_process\n    upstream: [orders]\n    engine: local\n    sql: {per_day}\n"
            ),
        )
        .unwrap();
        let _flow = spawn(&d, &["scheduler", "--listen", &format!("127.0.0.1:{}", free_port())]);
        let run = ok(weir(&d, BUS, &["dags", "trigger", "s3"], None)).trim().to_string();
        let state = wait_for_run(&d, "s3", &run);
        let log = weir(&d, BUS, &["dags", "logs", "s3", &run, "on_cluster"], None);
        assert_eq!(state, "success", "{}", String::from_utf8_lossy(&log.stderr));
        let a = query(&d, "SELECT day, orders, ids FROM views.on_cluster ORDER BY day");
        let b = query(&d, "SELECT day, orders, ids FROM views.in_process ORDER BY day");
        assert_eq!(a.lines().count(), 8, "{a}");
        assert_eq!(a, b);
    })
    .await
    .unwrap();
}
