//! `weir up` as a team runs it on the embedded defaults, with other `weir` commands in other
//! terminals: topics, producers and a consumer group shared with the running process, SQL and
//! DAG commands beside it, and no acknowledged record lost or torn by `kill -9` of it.

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{EMBEDDED, Proc, free_port, ok, up_until, weir_up};

/// `weir` beside `weir up` in `dir`.
fn weir(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    weir_e2e::harness::weir(dir, EMBEDDED, args, stdin)
}

/// `weir up` in `dir`, checking its /healthz names every role running.
async fn up(dir: &std::path::Path) -> Proc {
    let up = weir_up(dir, &[]).await;
    let body: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{}/healthz", up.port)).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "ok", "{body}");
    for role in ["serve", "lake", "current", "scheduler", "ingest http"] {
        assert_eq!(body["roles"][role]["state"], "running", "{role}: {body}");
    }
    up.child
}

/// The values `weir consume` printed (`partition offset key value` lines).
fn values(out: &str) -> Vec<String> {
    out.lines().map(|l| l.splitn(4, '\t').nth(3).unwrap_or_default().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_commands_share_a_running_weir_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(d.join("dags/hello.yaml"), "tasks:\n  - {id: greet, script: [echo, hello from the DAG]}\n").unwrap();
    let ingest_port = free_port();
    std::fs::write(
        d.join("weir.toml"),
        format!(
            "[up]\nstatus_interval = \"1s\"\n[ingest.http]\nenabled = true\nlisten = \"127.0.0.1:{ingest_port}\"\n"
        ),
    )
    .unwrap();
    let mut running = up(&d).await;

    // JSON events over HTTP into the shared bus, read by another process.
    let posted = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{ingest_port}/topics/app-events"))
        .json(&serde_json::json!({"user": 7, "action": "signup"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let events = ok(weir(&d, &["consume", "app-events", "--group", "look", "--timeout-ms", "500"], None));
    assert!(events.contains("\"signup\""), "{events}");

    // Topics, producers and one consumer group, all in other processes.
    ok(weir(&d, &["topics", "create", "shared", "--partitions", "4"], None));
    assert!(ok(weir(&d, &["topics", "list"], None)).contains("shared\t4"));
    let producers: Vec<_> = (0..3)
        .map(|p| {
            let d = d.clone();
            std::thread::spawn(move || {
                let lines: String = (0..400).map(|i| format!("k{p}-{i}\tv{p}-{i}\n")).collect();
                ok(weir(&d, &["produce", "shared"], Some(&lines)))
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || {
                ok(weir(&d, &["consume", "shared", "--group", "g", "--timeout-ms", "3000"], None))
            })
        })
        .collect();
    let outs: Vec<String> = consumers.into_iter().map(|c| c.join().unwrap()).collect();
    let read: Vec<String> = outs.iter().flat_map(|o| values(o)).collect();
    let distinct: BTreeSet<&String> = read.iter().collect();
    assert_eq!(distinct.len(), 1200, "records missing from the group's reads");
    assert_eq!(read.len(), 1200, "the group read some records twice");
    // A group that already read everything gets nothing more.
    assert_eq!(ok(weir(&d, &["consume", "shared", "--group", "g", "--timeout-ms", "500"], None)), "");

    // A member killed with kill -9 leaves its group with its connection: the next member gets
    // every partition, so records produced after the kill all reach it.
    ok(weir(&d, &["topics", "create", "later", "--partitions", "4"], None));
    ok(weir(&d, &["produce", "later"], Some("first\tbefore the kill\n")));
    let mut killed = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["consume", "later", "--group", "k", "--timeout-ms", "60000"])
            .current_dir(&d)
            .env_remove("WEIR_BUS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(killed.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.contains("before the kill"), "the member did not read: {first:?}");
    killed.kill().unwrap();
    killed.wait().unwrap();
    let lines: String = (0..100).map(|i| format!("key{i}\tafter-{i}\n")).collect();
    ok(weir(&d, &["produce", "later"], Some(&lines)));
    let rest = ok(weir(&d, &["consume", "later", "--group", "k", "--timeout-ms", "2000"], None));
    let after: BTreeSet<String> = values(&rest).into_iter().filter(|v| v.starts_with("after-")).collect();
    assert_eq!(after.len(), 100, "partitions of the killed member were not handed on:\n{rest}");

    // SQL, the lake and the orchestrator beside it: a manual run the running scheduler executes.
    assert!(ok(weir(&d, &["query", "SELECT 40 + 2 AS answer"], None)).contains("42"));
    ok(weir(&d, &["lake", "tables"], None));
    assert!(ok(weir(&d, &["dags", "list"], None)).contains("hello"));
    let triggered = ok(weir(&d, &["dags", "trigger", "hello"], None));
    let started = Instant::now();
    loop {
        let runs = ok(weir(&d, &["dags", "runs", "hello"], None));
        if runs.contains("success") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the manual run did not succeed: {triggered}\n{runs}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The status lines name the roles; the full log went to the file, not the terminal.
    let out = std::fs::read_to_string(d.join("up.out")).unwrap();
    assert!(out.contains("roles running"), "{out}");
    let log = std::fs::read_to_string(d.join("weir-data/logs/weir.log")).unwrap();
    assert!(log.contains("INFO"), "{log}");
    let err = std::fs::read_to_string(d.join("up.err")).unwrap();
    assert!(!err.contains("INFO"), "info lines on the terminal: {err}");

    // kill -9 of the owner: nothing acknowledged is lost or torn, and a new `weir up` serves it.
    running.kill().unwrap();
    running.wait().unwrap();
    let mut again = up(&d).await;
    let all = ok(weir(&d, &["consume", "shared", "--group", "after-crash", "--timeout-ms", "1000"], None));
    let after: BTreeSet<String> = values(&all).into_iter().collect();
    assert_eq!(after, distinct.into_iter().cloned().collect(), "records lost or changed by kill -9");
    stop(&mut again, &d);
}

/// Ctrl-C (SIGINT): the roles drain and the process ends by itself, successfully (else the
/// failure shows the end of its log).
fn stop(child: &mut Child, dir: &std::path::Path) {
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(100), "weir up did not stop within its drain timeout");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    let err = std::fs::read_to_string(dir.join("up.err")).unwrap_or_default();
    let tail: Vec<&str> = err.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    assert!(status.success(), "weir up ended with {status} after Ctrl-C:\n{}", tail.join("\n"));
}

/// On the backends `weir.toml` names: here Kafka (the test broker), with the lake and metadata
/// embedded. Events posted over HTTP reach the broker, where a plain consumer reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weir_up_runs_on_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kafka = weir_e2e::harness::kafka();
    let ingest_port = free_port();
    std::fs::write(
        d.join("weir.toml"),
        // The test broker is shared: this `weir up`'s lake role follows every change topic other
        // tests create there, and under a full run committing them all at Ctrl-C once took over
        // the default 30 s drain (exit 1, "roles still busy after 30s: lake").
        format!(
            "[bus]\nurl = \"{kafka}\"\n[ingest.http]\nenabled = true\nlisten = \"127.0.0.1:{ingest_port}\"\n\
             [up]\ndrain_timeout = \"90s\"\n"
        ),
    )
    .unwrap();
    let mut running = up(d).await;
    let topic = format!("up-on-kafka-{}", std::process::id());
    ok(weir_e2e::harness::weir(d, &kafka, &["topics", "create", &topic, "--partitions", "2"], None));
    let posted = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{ingest_port}/topics/{topic}"))
        .json(&serde_json::json!({"on": "kafka"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    // It ends at the first record; the long idle limit only matters when the shared broker is
    // slow under a full run (once the record took over the default 5 s to arrive).
    let args = ["consume", &topic, "--group", "look", "--max", "1", "--timeout-ms", "30000"];
    let read = ok(weir_e2e::harness::weir(d, &kafka, &args, None));
    assert!(read.contains("\"kafka\""), "{read}");
    assert!(std::fs::read_to_string(d.join("up.out")).unwrap().contains(&format!("bus {kafka}")));
    stop(&mut running, d);
}

/// A DAG file that does not parse is named on /healthz and in the status lines; the other DAG
/// still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_dag_file_is_reported_and_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(d.join("dags/good.yaml"), "tasks:\n  - {id: a, script: [echo, fine]}\n").unwrap();
    std::fs::write(d.join("dags/broken.yaml"), "tasks:\n  - {id: a, script: [echo\n").unwrap();
    std::fs::write(d.join("weir.toml"), "[up]\nstatus_interval = \"1s\"\n").unwrap();
    let mut running = up_until(d, &[], |_| true).await;
    let started = Instant::now();
    let body = loop {
        let r = reqwest::get(format!("http://127.0.0.1:{}/healthz", running.port)).await.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        if body["roles"]["dag files"]["state"] == "failed" {
            assert_eq!(status, 503, "{body}");
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the broken file is not reported: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(body["roles"]["dag files"]["error"].as_str().unwrap().contains("broken.yaml"), "{body}");
    assert_eq!(body["roles"]["scheduler"]["state"], "running", "{body}");
    ok(weir(d, &["dags", "trigger", "good"], None));
    while !ok(weir(d, &["dags", "runs", "good"], None)).contains("success") {
        assert!(started.elapsed() < Duration::from_secs(60), "the good DAG did not run");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = std::fs::read_to_string(d.join("up.out")).unwrap();
    assert!(out.contains("dag files FAILED") && out.contains("broken.yaml"), "{out}");
    stop(&mut running.child, d);
}
