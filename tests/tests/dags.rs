//! `weir dags` and `weir scheduler` as a user runs them: DAG files in `dags/`, the embedded
//! metadata DB, the scheduler as its own process (stopped with Ctrl-C, or killed with -9).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, free_port, ok, weir};

fn dags(dir: &Path, args: &[&str]) -> std::process::Output {
    weir(dir, "local:./weir-data/bus", args, None)
}

fn scheduler(dir: &Path, port: u16) -> Proc {
    Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["scheduler", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}

/// Polls `weir dags runs` until the run's state is final.
fn wait_for_run(dir: &Path, dag: &str, run: &str, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        let out = ok(dags(dir, &["dags", "runs", dag]));
        if let Some(line) = out.lines().find(|l| l.starts_with(run)) {
            let state = line.split_whitespace().nth(2).unwrap().to_string();
            if state == "success" || state == "failed" {
                return state;
            }
        }
        assert!(started.elapsed() < limit, "run {run} not finished after {limit:?}:\n{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.0 GET on loopback; the whole response.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn interrupt(child: &mut Child) {
    Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(20), "the scheduler did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn list_trigger_run_inspect_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(
        d.join("dags/report.yaml"),
        "description: a daily report\nschedule: '@daily'\nstart_date: 2026-01-01\nis_paused_upon_creation: true\n\
         tasks:\n  - id: extract\n    script: [sh, -c, 'echo extracting {{ ds }} for \"$WEIR_PARAM_WHO\"']\n  \
         - id: check\n    upstream: [extract]\n    script: [test, -e, ready]\n  \
         - id: publish\n    upstream: [check]\n    script: [echo, published]\n",
    )
    .unwrap();
    std::fs::write(d.join("dags/broken.yaml"), "tasks:\n  - id: a\n    script: [true]\n  - id: b\n    upstreem: [a]\n")
        .unwrap();

    let out = dags(d, &["dags", "list"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("report") && stdout.contains("true"), "paused on creation: {stdout}");
    assert!(stderr.contains("broken.yaml:5:") && stderr.contains("upstreem"), "file, line and key named: {stderr}");
    std::fs::write(
        d.join("dags/counts.yaml"),
        "params: {min: 1}\ntasks:\n  - id: big\n    sql: SELECT count(*) AS n FROM (VALUES (1), (2), (3)) AS t(x) WHERE x > {{ params.min }}\n",
    )
    .unwrap();
    let plan = ok(dags(d, &["dags", "explain", "counts"]));
    assert!(plan.contains("== task big → views.big") && plan.contains("physical_plan"), "{plan}");
    assert!(plan.contains("mode=Partial") && plan.contains("column1@0 > 1"), "templated and planned: {plan}");
    let shown = ok(dags(d, &["dags", "show", "report"]));
    assert!(shown.contains("check") && shown.contains("← extract"), "{shown}");
    let err = dags(d, &["dags", "trigger", "nope"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("no DAG \"nope\""));

    // A task's state ($WEIR_STATE), set, shown and cleared by hand.
    ok(dags(d, &["dags", "state", "report", "extract", "--set", r#"{"cursor": 42}"#]));
    let shown = ok(dags(d, &["dags", "state", "report"]));
    assert!(shown.starts_with("extract\t{\"cursor\":42}\t"), "{shown}");
    let err = dags(d, &["dags", "state", "report", "nope", "--set", "{}"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("no task \"nope\""), "{err:?}");
    let err = dags(d, &["dags", "state", "report", "extract", "--set", "[1]"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("a JSON object is expected"), "{err:?}");
    ok(dags(d, &["dags", "state", "report", "extract", "--clear"]));
    assert_eq!(ok(dags(d, &["dags", "state", "report"])), "");

    let port = free_port();
    let mut sched = scheduler(d, port);
    let run = ok(dags(d, &["dags", "trigger", "report", "--conf", r#"{"who": "ops"}"#])).trim().to_string();
    assert!(run.starts_with("manual__"), "{run}");
    assert_eq!(wait_for_run(d, "report", &run, Duration::from_secs(30)), "failed");
    let tasks = ok(dags(d, &["dags", "tasks", "report", &run]));
    assert!(tasks.contains("check") && tasks.contains("failed") && tasks.contains("upstream_failed"), "{tasks}");
    let log = ok(dags(d, &["dags", "logs", "report", &run, "extract"]));
    assert!(log.contains("extracting ") && log.contains(" for ops"), "{log}");

    // Health and metrics while it runs.
    assert!(http_get(port, "/healthz").ends_with("\r\n\r\nok\n"));
    let metrics = http_get(port, "/metrics");
    assert!(metrics.contains("weir_flow_task_tries_total"), "{metrics}");

    // Fix the cause, clear the failed tasks: they run again as try 2.
    std::fs::write(d.join("dags/ready"), "").unwrap(); // scripts run in their DAG file's folder
    let cleared = ok(dags(d, &["dags", "clear", "report", "--failed", "--run", &run]));
    assert!(cleared.contains("check, publish"), "{cleared}");
    assert_eq!(wait_for_run(d, "report", &run, Duration::from_secs(30)), "success");
    let log = ok(dags(d, &["dags", "logs", "report", &run, "publish"]));
    assert!(log.contains("published"), "{log}");
    let first = dags(d, &["dags", "logs", "report", &run, "check", "--try", "1"]);
    assert!(String::from_utf8_lossy(&first.stderr).contains("try 1 — failed"), "the failed try is kept");

    // Paused: no scheduled runs; unpaused: the latest interval runs.
    assert!(!ok(dags(d, &["dags", "runs", "report"])).contains("scheduled__"));
    ok(dags(d, &["dags", "unpause", "report"]));
    let started = Instant::now();
    while !ok(dags(d, &["dags", "runs", "report"])).contains("scheduled__") {
        assert!(started.elapsed() < Duration::from_secs(30), "no scheduled run after unpausing");
        std::thread::sleep(Duration::from_millis(100));
    }
    interrupt(&mut sched);
}

#[test]
fn a_scheduler_killed_mid_task_reruns_it_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(
        d.join("dags/long.yaml"),
        "default_args: {retries: 1, retry_delay: 1s}\ntasks:\n  \
         - id: slow\n    script: [sh, -c, 'echo started $$ >> calls; sleep 10; echo done >> calls']\n  \
         - id: after\n    upstream: [slow]\n    script: [sh, -c, 'echo after >> calls']\n",
    )
    .unwrap();
    let mut sched = scheduler(d, free_port());
    let run = ok(dags(d, &["dags", "trigger", "long"])).trim().to_string();
    let started = Instant::now();
    while !std::fs::read_to_string(d.join("dags/calls")).unwrap_or_default().contains("started") {
        assert!(started.elapsed() < Duration::from_secs(20), "the task never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    sched.kill().unwrap(); // SIGKILL: its try's shell runs on, orphaned
    sched.wait().unwrap();
    let calls = std::fs::read_to_string(d.join("dags/calls")).unwrap();
    let orphan: u32 = calls.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(alive(orphan), "the first try's shell outlives the killed scheduler");
    // Restarted at once: it stops the orphan before running the task again. (The task sleeps 10 s:
    // with 3 s, a restart slowed by the whole suite's load let the orphan finish on its own.)
    let mut sched = scheduler(d, free_port());
    assert_eq!(wait_for_run(d, "long", &run, Duration::from_secs(30)), "success");
    interrupt(&mut sched);
    assert!(!alive(orphan), "the first try's shell was stopped");
    let calls = std::fs::read_to_string(d.join("dags/calls")).unwrap();
    assert_eq!(calls.matches("started").count(), 2, "the interrupted try is run again: {calls}");
    assert_eq!(calls.matches("done").count(), 1, "only the second try finished; the two never overlapped: {calls}");
    assert_eq!(calls.matches("after").count(), 1, "{calls}");
    let tasks = ok(dags(d, &["dags", "tasks", "long", &run]));
    let slow = tasks.lines().find(|l| l.starts_with("slow")).unwrap();
    assert!(slow.contains("success") && slow.split_whitespace().nth(2) == Some("2"), "{tasks}");
}

#[test]
fn an_approval_waits_for_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(
        d.join("dags/gated.yaml"),
        "tasks:\n  - {id: gate, approval: {message: 'ship it?', approvers: [bob]}}\n  \
         - {id: ship, upstream: [gate], script: [sh, -c, 'echo shipped >> shipped']}\n",
    )
    .unwrap();
    let mut sched = scheduler(d, free_port());
    let run = ok(dags(d, &["dags", "trigger", "gated"])).trim().to_string();
    let started = Instant::now();
    while !ok(dags(d, &["dags", "tasks", "gated", &run]))
        .lines()
        .any(|l| l.starts_with("gate") && l.contains("running"))
    {
        assert!(started.elapsed() < Duration::from_secs(20), "the approval never started waiting");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = dags(d, &["dags", "approve", "gated", &run, "gate", "--by", "eve"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"eve\" may not decide"), "{refused:?}");
    let out = dags(d, &["dags", "approve", "gated", &run, "gate", "--by", "bob", "--comment", "go"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("approve by bob (try 1)"), "{out:?}");
    assert_eq!(wait_for_run(d, "gated", &run, Duration::from_secs(30)), "success");
    interrupt(&mut sched);
    assert_eq!(std::fs::read_to_string(d.join("dags/shipped")).unwrap(), "shipped\n");
    let log = ok(dags(d, &["dags", "logs", "gated", &run, "gate"]));
    assert!(log.contains("approved by bob") && log.contains(": go"), "{log}");
}

#[test]
fn lineage_shows_the_versions_each_sql_task_read_and_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(
        d.join("dags/chain.yaml"),
        "tasks:\n  - {id: a, sql: 'SELECT 1 AS n'}\n  - {id: b, upstream: [a], sql: 'SELECT n + 1 AS n FROM views.a'}\n",
    )
    .unwrap();
    let mut sched = scheduler(d, free_port());
    let run = ok(dags(d, &["dags", "trigger", "chain"])).trim().to_string();
    assert_eq!(wait_for_run(d, "chain", &run, Duration::from_secs(60)), "success");
    interrupt(&mut sched);
    let lineage = ok(dags(d, &["dags", "lineage", "chain"]));
    assert!(lineage.contains("  a (try 1): no lake table → views.a@0"), "{lineage}");
    assert!(lineage.contains("  b (try 1): views.a@0 → views.b@0"), "{lineage}");
}

/// Whether process `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])))
}
