//! `weir serve` as an operator runs it: TLS from `[serving.tls]` with the test CA's certificate,
//! tokens with scopes from `WEIR_SERVING_TOKENS`, and the orchestrator's real routes behind them:
//! a `read` token lists DAGs but cannot trigger one (403 naming `operate`), an `operate` token
//! triggers, pauses/unpauses and clears it; plain HTTP gets no answer.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, free_port};
use weir_schemas::http::HttpConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_guard_the_orchestrators_routes_over_https() {
    let certs =
        std::path::PathBuf::from(std::env::var("WEIR_TEST_TLS_DIR").expect("WEIR_TEST_TLS_DIR: run scripts/test"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, pg_port) = (free_port(), free_port());
    std::fs::create_dir_all(d.join("dags")).unwrap();
    std::fs::write(d.join("dags/report.yaml"), "is_paused_upon_creation: true\ntasks:\n  - {id: a, script: [true]}\n")
        .unwrap();
    std::fs::write(
        d.join("weir.toml"),
        format!(
            "[serving.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            certs.join("server.pem").display(),
            certs.join("server.key").display()
        ),
    )
    .unwrap();
    let mut serve = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--pg-listen", &format!("127.0.0.1:{pg_port}")])
            .current_dir(d)
            .env("WEIR_BUS_URL", "local:./bus")
            .env("WEIR_SERVING_TOKENS", "read:reader-token,operate:operator-token")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let https = HttpConfig { ca_file: Some(certs.join("ca.pem")), ..HttpConfig::default() }.build().unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let started = Instant::now();
    while https.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "weir serve did not answer over https");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let get = https.get(format!("{base}/api/v1/dags")).bearer_auth("reader-token").send().await.unwrap();
    assert_eq!(get.status(), 200, "a read token may GET");
    let runs = format!("{base}/api/v1/dags/report/runs");
    let refused = https.post(&runs).bearer_auth("reader-token").send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let body = refused.text().await.unwrap();
    assert!(body.contains("scope is read; POST /api/v1/dags/report/runs needs operate"), "{body}");
    let triggered = https.post(&runs).bearer_auth("operator-token").send().await.unwrap();
    assert_eq!(triggered.status(), 201);
    let listed = https.get(&runs).bearer_auth("reader-token").send().await.unwrap().text().await.unwrap();
    assert!(listed.contains("manual__"), "{listed}");

    // Pause/unpause (Airflow's PATCH) and clear: operate only, never through a GET, effects
    // visible in what the API reads back from the metadata DB.
    let dag = format!("{base}/api/v1/dags/report");
    let paused = |body: String| {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["dags"].as_array().unwrap().iter().find(|d| d["dag_id"] == "report").unwrap()["paused"].clone()
    };
    let list = || async { https.get(format!("{base}/api/v1/dags")).bearer_auth("reader-token").send().await.unwrap() };
    assert_eq!(paused(list().await.text().await.unwrap()), true, "is_paused_upon_creation");
    let unpause = serde_json::json!({"is_paused": false});
    let refused = https.patch(&dag).bearer_auth("reader-token").json(&unpause).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(paused(list().await.text().await.unwrap()), true, "a refused action changes nothing");
    let done = https.patch(&dag).bearer_auth("operator-token").json(&unpause).send().await.unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    assert_eq!(paused(list().await.text().await.unwrap()), false);
    let bad =
        https.patch(&dag).bearer_auth("operator-token").json(&serde_json::json!({"paused": 1})).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("is_paused"), "the error says what is expected");
    let run = listed.split("manual__").nth(1).unwrap().split('"').next().unwrap();
    let run_id = format!("manual__{run}");
    let clear = format!("{dag}/clear");
    let body = serde_json::json!({"task": "a", "run_id": run_id});
    assert_eq!(https.get(&clear).bearer_auth("operator-token").send().await.unwrap().status(), 405, "no GET");
    let refused = https.post(&clear).bearer_auth("reader-token").json(&body).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let cleared = https.post(&clear).bearer_auth("operator-token").json(&body).send().await.unwrap();
    assert_eq!(cleared.status(), 200);
    let cleared: serde_json::Value = cleared.json().await.unwrap();
    assert_eq!(cleared["cleared"], serde_json::json!([{"run_id": run_id, "task_ids": ["a"]}]), "{cleared}");
    let missing = https.post(&clear).bearer_auth("operator-token").json(&serde_json::json!({"task": "nope"})).send();
    let missing = missing.await.unwrap();
    assert_eq!(missing.status(), 400);
    let text = missing.text().await.unwrap();
    assert!(text.contains("no task") && text.contains("nope"), "names the task: {text}");

    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "no plain-text answer");
    serve.kill().unwrap();
    serve.wait().unwrap();
}
