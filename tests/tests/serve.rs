//! `weir serve` as an operator runs it: TLS from `[serving.tls]` with the test CA's certificate,
//! tokens with scopes from `WEIR_SERVING_TOKENS`, and the orchestrator's real routes behind them:
//! a `read` token lists DAGs but cannot trigger one (403 naming `operate`), an `operate` token
//! triggers, pauses/unpauses and clears it; plain HTTP gets no answer. The OpenAPI document lists
//! exactly the routes the sources register, and the running server answers each as documented.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, free_port};
use weir_schemas::http::HttpConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_guard_the_orchestrators_routes_over_https() {
    let certs = weir_e2e::harness::tls_dir();
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

/// The HTTP methods a route may have.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The routes `weir serve` answers that the serving layer, the orchestrator and the health
/// endpoints register, read from their sources: (path, method) for every `.route("/…",
/// get(…).post(…))` but the console's page and assets.
fn registered_routes() -> std::collections::BTreeSet<(String, String)> {
    let mut routes = std::collections::BTreeSet::new();
    let files = ["serving/src", "flow/src"]
        .into_iter()
        .flat_map(|dir| std::fs::read_dir(weir_e2e::harness::repo_path(dir)).unwrap().flatten().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
        .chain([weir_e2e::harness::repo_path("cli/src/telemetry.rs")]);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (_, rest) in text.match_indices(".route(\"/").map(|(i, _)| text.split_at(i + ".route(\"".len())) {
            let (path, rest) = rest.split_once('"').unwrap();
            if !path.starts_with("/api/") && (path == "/" || path.contains('.')) {
                continue; // the console's page and assets
            }
            let line = rest.lines().next().unwrap();
            let methods: Vec<&str> = METHODS
                .into_iter()
                .filter(|m| {
                    line.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_'
                    })
                })
                .collect();
            assert!(!methods.is_empty(), "{}: no method on the line of {path}: {line}", file.display());
            for m in methods {
                routes.insert((path.to_string(), m.to_string()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route_and_only_routes_that_answer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, pg_port) = (free_port(), free_port());
    std::fs::create_dir_all(d.join("dags")).unwrap();
    let _serve = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--pg-listen", &format!("127.0.0.1:{pg_port}")])
            .current_dir(d)
            .env("WEIR_BUS_URL", "local:./bus")
            .env("WEIR_SERVING_TOKENS", "admin:admin-token")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let doc: serde_json::Value = loop {
        if let Ok(r) = http.get(format!("{base}/api/v1/openapi.json")).bearer_auth("admin-token").send().await
            && r.status() == 200
        {
            break r.json().await.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "weir serve did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in item.as_object().unwrap().keys().filter(|k| METHODS.contains(&k.as_str())) {
            documented.insert((path.clone(), m.clone()));
        }
    }
    let registered = registered_routes();
    assert!(registered.len() >= 25, "the source scan found too few routes: {registered:?}");
    let undocumented: Vec<_> = registered.difference(&documented).collect();
    let unregistered: Vec<_> = documented.difference(&registered).collect();
    assert!(undocumented.is_empty(), "routes missing from /api/v1/openapi.json: {undocumented:?}");
    assert!(unregistered.is_empty(), "documented routes that no .route() registers: {unregistered:?}");

    // The running server agrees: every documented method of a path answers (a handler's own 404
    // names what is missing; the router's has no body), every other method gets 405.
    for path in documented.iter().map(|(p, _)| p).collect::<std::collections::BTreeSet<_>>() {
        let concrete: Vec<&str> =
            path.split('/').map(|s| if s.starts_with('{') { "no_such_thing" } else { s }).collect();
        let url = format!("{base}{}", concrete.join("/"));
        for m in METHODS {
            let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let r = http.request(method, &url).bearer_auth("admin-token").send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            if documented.contains(&(path.clone(), m.to_string())) {
                assert!(status != 405 && !(status == 404 && body.is_empty()), "{m} {path}: no route ({status})");
            } else {
                assert_eq!(status, 405, "{m} {path} answers ({status}: {body}) but is not documented");
            }
        }
    }
}
