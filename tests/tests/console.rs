//! The operator console in a real browser: `weir demo` with an operate and a read token, and
//! `tests/peers/console_check.py` driving headless Chromium through Selenium (chromedriver) over
//! every page and action, checking each action's effect in the page and in the metadata DB.
//! Screenshots of every page land in `target/tmp/console-screenshots/`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use weir_e2e::harness::Proc;

use serde_json::Value;

/// Copies the example folder (the test edits a DAG file to make a second version).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn every_page_and_action_of_the_console_works_in_chromium() {
    let python = weir_e2e::harness::python();
    let dir = tempfile::tempdir().unwrap();
    let examples = dir.path().join("examples");
    copy_dir(&weir_e2e::harness::repo_path("examples"), &examples);
    // A DAG whose first task writes coloured lines for ~10 s: its log is followed while it runs.
    std::fs::write(
        examples.join("dags/console_slow.yaml"),
        "description: a slow task for the console test\ntasks:\n  - id: slow\n    script: [sh, -c, \
         'for i in $(seq 1 40); do printf \"\\033[32mline %s\\033[0m\\n\" $i; sleep 0.25; done']\n  \
         - id: after\n    script: [\"true\"]\n    upstream: [slow]\n",
    )
    .unwrap();
    // An approval task, decided from its page.
    std::fs::write(
        examples.join("dags/console_gate.yaml"),
        "description: an approval for the console test\ntasks:\n  - id: gate\n    \
         approval: {message: 'Ship the report?', approvers: [carol]}\n  - {id: ship, upstream: [gate], script: [\"true\"]}\n",
    )
    .unwrap();
    // A mapped task: its page lists its instances, an instance's page shows its item.
    std::fs::write(
        examples.join("dags/console_fan.yaml"),
        "description: a mapped task for the console test\ntasks:\n  - id: each\n    \
         map: {over: [north, south]}\n    script: [\"true\"]\n",
    )
    .unwrap();
    let free = weir_e2e::harness::free_port;
    let (port, pg_port) = (free(), free());
    let (operate, read) = ("console-operate-token", "console-read-token");
    let mut child = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["demo", "--duration", "600s", "--dag-after", "3s", "--outage-after", "3s", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pg-listen")
            .arg(format!("127.0.0.1:{pg_port}"))
            .arg("--examples")
            .arg(&examples)
            .env("WEIR_SERVING_TOKENS", format!("operate:{operate},read:{read}"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap()),
    );
    let url = format!("http://127.0.0.1:{port}");

    // The demo's first run of orders_daily succeeded: the lake has its tables, the grid its cells.
    let started = Instant::now();
    loop {
        let runs =
            reqwest::Client::new().get(format!("{url}/api/v1/dags/orders_daily/runs")).bearer_auth(read).send().await;
        if let Ok(r) = runs
            && let Ok(v) = r.json::<Value>().await
            && v["runs"].as_array().is_some_and(|runs| runs.iter().any(|r| r["state"] == "success"))
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("weir demo exited ({status}):\n{}", std::fs::read_to_string(dir.path().join("demo.log")).unwrap());
        }
        assert!(started.elapsed() < Duration::from_secs(90), "orders_daily never succeeded");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = weir_e2e::harness::repo_path("tests/peers").join("console_check.py");
    let mut check = Command::new(python)
        .arg(script)
        .arg(&url)
        .arg(operate)
        .arg(read)
        .arg(dir.path().join("weir-data/weir.db"))
        .arg(examples.join("dags/orders_daily.yaml"))
        .arg(&shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = check.stdout.take().unwrap();
    let lines: Vec<String> =
        BufReader::new(stdout).lines().map_while(Result::ok).inspect(|l| println!("{l}")).collect();
    let out = check.wait_with_output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        out.status.success() && lines.last().is_some_and(|l| l == "all console checks passed"),
        "the console checks failed:\n{}\n{}\ndemo log tail:\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.path().join("demo.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    for page in [
        "01-overview",
        "04-dag-grid",
        "05-dag-graph",
        "06-task",
        "06c-approval",
        "06d-mapped",
        "08-dag-code-diff",
        "10-lake-table",
        "11-streams",
        "12-sql",
    ] {
        assert!(shots.join(format!("{page}.png")).exists(), "no screenshot of {page}");
    }
}
