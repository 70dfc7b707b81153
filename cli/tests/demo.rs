//! `weir demo` as a newcomer runs it: every role in one process on embedded defaults. While it
//! runs, the API answers SQL over the lake and the real-time views; by its end the DAG has run,
//! the staged card outage has fired the alert, and the lake holds the four change logs.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

#[tokio::test]
async fn the_demo_runs_every_role_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["demo", "--duration", "40s", "--dag-after", "8s", "--outage-after", "3s", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--examples")
        .arg(&examples)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            sink.lock().unwrap().push(line.unwrap());
        }
    });
    let started = Instant::now();
    let token = loop {
        let found = lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.split_once("bearer token ").map(|(_, t)| t.trim_end_matches(')').to_string()));
        if let Some(t) = found {
            break t;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no banner: {:?}", lines.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Mid-run: real-time results and (once the DAG ran) the batch view answer over HTTP.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(started.elapsed())).await;
    let query = |sql: &str| {
        let body = json!({"sql": sql});
        let token = token.clone();
        async move {
            let resp = reqwest::Client::new()
                .post(format!("http://127.0.0.1:{port}/api/v1/query"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap();
            assert!(status.is_success(), "{v}");
            v
        }
    };
    let rt =
        query("SELECT method, sum(payments) AS n FROM serving.payment_failures GROUP BY method ORDER BY method").await;
    let methods: Vec<&str> = rt["rows"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["card", "cash", "wallet"], "{rt}");
    let facts = query("SELECT count(*) AS n, count(payment_method) AS paid FROM views.order_facts").await;
    assert!(facts["rows"][0]["n"].as_i64().unwrap() > 10, "{facts}");
    let raw = query("SELECT count(*) AS n FROM raw.food_delivery_orders").await;
    assert!(raw["rows"][0]["n"].as_i64().unwrap() > 50, "{raw}");

    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let out = lines.lock().unwrap().join("\n");
    assert!(out.contains(": success"), "the DAG run did not succeed:\n{out}");
    assert!(out.contains("[alert] FIRING PaymentFailureRateHigh — card payments:"), "no alert:\n{out}");
    for table in ["raw.food_delivery_payments", "current.food_delivery_orders", "views.order_facts"] {
        assert!(out.contains(table), "{table} missing:\n{out}");
    }
}
