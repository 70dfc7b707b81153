//! The orchestrator scaled out, as processes: three `weir scheduler`s and two `weir worker`s on
//! the test PostgreSQL (`WEIR_TEST_POSTGRES_URL`), each with its own host name as if on its own
//! machine, and the test Kafka broker (`WEIR_TEST_KAFKA`). The leading scheduler is killed with
//! -9 twenty times while 500 tasks run; every task must run exactly once, every failover is
//! timed, and `weir.flow.events` must carry every state change in order across the leaders.

use std::{
    collections::HashSet,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, free_port, kafka, ok, weir};

const KILLS: usize = 20;
const RUNS: usize = 5;
const CHAIN: usize = 100;

/// `weir` with the test Kafka as its bus.
fn cli(dir: &Path, args: &[&str]) -> String {
    ok(weir(dir, &kafka(), args, None))
}

/// A role as its own process, with `host` as its machine's name.
fn role(dir: &Path, args: &[&str], host: &str) -> Proc {
    Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .current_dir(dir)
            .env("WEIR_BUS_URL", kafka())
            .env("HOSTNAME", host)
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// A fresh database on the test PostgreSQL; its URL.
fn database() -> String {
    let base = weir_e2e::harness::postgres_url();
    let name = format!("ha_{}", std::process::id());
    let out = Command::new("psql").args([&base, "-qc", &format!("CREATE DATABASE {name}")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{}/{name}", base.rsplit_once('/').unwrap().0)
}

/// (holder, epoch) from `weir scheduler status`.
fn lease(dir: &Path) -> (String, u64) {
    let out = cli(dir, &["scheduler", "status"]);
    let first = out.lines().next().unwrap_or_default();
    let epoch = first.split("epoch ").nth(1).and_then(|r| r.split([',', ')']).next()).and_then(|e| e.parse().ok());
    let holder = first.strip_prefix("lease: held by ").and_then(|r| r.split(' ').next()).unwrap_or_default();
    (holder.to_string(), epoch.unwrap_or_else(|| panic!("no epoch in {out}")))
}

fn executions(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("out")).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn killing_the_leader_twenty_times_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(
        d.join("weir.toml"),
        format!(
            "[metadata]\nurl = \"{}\"\n[flow]\nexecutor = \"workers\"\nslots = 64\nheartbeat_interval = \"200ms\"\n\
             lease_timeout = \"1s\"\npoll_interval = \"200ms\"\nparse_interval = \"1s\"\n",
            database()
        ),
    )
    .unwrap();
    // Five runs of a 100-task chain: each task appends its name to `out`.
    // Named per test process: the broker's topic outlives the test.
    let dag_id = format!("chain_{}", std::process::id());
    let mut dag = String::from("tasks:\n");
    for i in 0..CHAIN {
        let up = if i == 0 { String::new() } else { format!(", upstream: [t{}]", i - 1) };
        dag.push_str(&format!(
            "  - {{id: t{i}{up}, script: [sh, -c, 'sleep 0.05; echo {{{{ run_id }}}}/t{i} >> {}']}}\n",
            d.join("out").display()
        ));
    }
    std::fs::write(d.join(format!("dags/{dag_id}.yaml")), dag).unwrap();

    let mut schedulers: Vec<Proc> = (0..3).map(|i| role(d, &["scheduler"], &format!("sched-{i}"))).collect();
    let mut workers: Vec<Proc> = (0..2).map(|i| role(d, &["worker", "--slots", "4"], &format!("worker-{i}"))).collect();
    let started = Instant::now();
    while lease(d).0.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no scheduler took the lease");
        std::thread::sleep(Duration::from_millis(100));
    }
    let runs: Vec<String> = (0..RUNS)
        .map(|i| {
            let date = format!("2026-11-{:02}", i + 1);
            cli(d, &["dags", "trigger", &dag_id, "--logical-date", &date]).trim().to_string()
        })
        .collect();

    let mut failovers = Vec::new();
    for kill in 0..KILLS {
        // Let the leader make progress, then kill it.
        let before = executions(d).len();
        let since = Instant::now();
        while executions(d).len() < before + 10 {
            assert!(since.elapsed() < Duration::from_secs(30), "no progress under a leader (kill {kill})");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(executions(d).len() < RUNS * CHAIN, "the workload ended before kill {kill}: make it longer");
        let (holder, epoch) = lease(d);
        let pid: u32 = holder.split(':').nth(1).unwrap().parse().unwrap();
        let i = schedulers.iter().position(|c| c.id() == pid).expect("the leader is one of ours");
        let mut leader = schedulers.remove(i);
        leader.kill().unwrap(); // SIGKILL
        let killed = Instant::now();
        leader.wait().unwrap();
        loop {
            let (h, e) = lease(d);
            if e > epoch && !h.is_empty() {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(10), "no failover within 10 s (kill {kill})");
            std::thread::sleep(Duration::from_millis(20));
        }
        failovers.push(killed.elapsed().as_secs_f64());
        // A replacement joins as an heir, as a supervisor would restart it.
        schedulers.push(role(d, &["scheduler"], &format!("sched-{}", kill + 3)));
    }

    let started = Instant::now();
    loop {
        let states: Vec<String> = runs
            .iter()
            .map(|r| {
                let out = cli(d, &["dags", "runs", &dag_id]);
                out.lines().find(|l| l.starts_with(r.as_str())).unwrap().split_whitespace().nth(2).unwrap().to_string()
            })
            .collect();
        if states.iter().all(|s| s == "success" || s == "failed") {
            assert!(states.iter().all(|s| s == "success"), "{states:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "runs unfinished: {states:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ran = executions(d);
    let distinct: HashSet<&String> = ran.iter().collect();
    assert_eq!((ran.len(), distinct.len()), (RUNS * CHAIN, RUNS * CHAIN), "every task exactly once");
    for r in &runs {
        let tasks = cli(d, &["dags", "tasks", &dag_id, r]);
        let retried: Vec<&str> = tasks.lines().skip(2).filter(|l| l.split_whitespace().nth(2) != Some("1")).collect();
        assert!(retried.is_empty(), "no task needed a second try: {retried:?}");
    }
    // The event stream: in order, complete, duplicates only as repeated `seq`s.
    let started = Instant::now();
    let events = loop {
        let lines = cli(d, &["events", "tail", "--from-offset", "0", "--once", "--dag", &dag_id]);
        let events: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let done = events.iter().filter(|e| e["kind"] == "run" && e["state"] == "success").count();
        if done == RUNS {
            break events;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{done} run successes published");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut last = 0i64;
    let mut repeated = 0;
    let mut successes = HashSet::new();
    for e in &events {
        let seq = e["seq"].as_i64().unwrap();
        if seq <= last {
            repeated += 1;
            continue;
        }
        assert_eq!(seq, last + 1, "events are published in order, none missing");
        last = seq;
        if e["kind"] == "task" && e["state"] == "success" {
            assert!(successes.insert((e["run_id"].to_string(), e["task_id"].to_string())), "two successes: {e}");
        }
    }
    assert_eq!(successes.len(), RUNS * CHAIN, "a success event per task");
    let mut sorted = failovers.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{{\"kills\": {KILLS}, \"tasks\": {}, \"events\": {}, \"events_repeated\": {repeated}, \"failover_s\": {{\"min\": {:.2}, \"median\": {:.2}, \"max\": {:.2}}}, \"each_s\": {:?}}}",
        RUNS * CHAIN,
        events.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        failovers.iter().map(|f| (f * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    for mut c in schedulers.into_iter().chain(workers.drain(..)) {
        let _ = c.kill();
        let _ = c.wait();
    }
}
