//! `weir demo` as a newcomer runs it: every role in one process on embedded defaults. While it
//! runs, the API answers SQL over the lake and the real-time views; by its end the DAG has run,
//! the staged card outage has fired the alert, and the lake holds the four change logs.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use weir_e2e::harness::Proc;

use serde_json::{Value, json};

#[tokio::test]
async fn the_demo_runs_every_role_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let free = weir_e2e::harness::free_port;
    let (port, pg_port) = (free(), free());
    let examples = weir_e2e::harness::repo_path("examples");
    let mut child = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["demo", "--duration", "60s", "--dag-after", "8s", "--outage-after", "3s", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--pg-listen")
            .arg(format!("127.0.0.1:{pg_port}"))
            .arg("--examples")
            .arg(&examples)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap()),
    );
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
        if child.try_wait().unwrap().is_some() {
            panic!("weir demo exited:\n{}", std::fs::read_to_string(dir.path().join("demo.log")).unwrap_or_default());
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no banner: {:?}", lines.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Mid-run, once today's orders_daily run succeeded (the orchestrator's routes, behind the
    // same token, say so): real-time results and the batch view answer over HTTP.
    let runs = loop {
        let resp = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v1/dags/orders_daily/runs"))
            .bearer_auth(&token)
            .send()
            .await;
        // The demo's manual run for today (the scheduler may also run yesterday's interval).
        if let Ok(r) = resp
            && let Ok(v) = r.json::<Value>().await
            && let Some(run) = v["runs"].as_array().and_then(|runs| {
                runs.iter().find(|r| r["run_id"].as_str().is_some_and(|id| id.starts_with("manual__")))
            })
            && run["state"] == "success"
        {
            break run.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "orders_daily did not succeed: {:?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
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
            (status.is_success(), v)
        }
    };
    // The serving catalogue picks the new view version up within its refresh interval (2 s).
    let started_wait = Instant::now();
    let facts = loop {
        let (ok, v) = query("SELECT count(*) AS n, count(payment_method) AS paid FROM views.order_facts").await;
        if ok && v["rows"][0]["n"].as_i64().is_some_and(|n| n > 10) {
            break v;
        }
        assert!(started_wait.elapsed() < Duration::from_secs(10), "views.order_facts not served: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(facts["rows"][0]["paid"].as_i64().unwrap() > 0, "{facts}");
    let (_, rt) =
        query("SELECT method, sum(payments) AS n FROM serving.payment_failures GROUP BY method ORDER BY method").await;
    let methods: Vec<&str> = rt["rows"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["card", "cash", "wallet"], "{rt}");
    let (_, raw) = query("SELECT count(*) AS n FROM raw.food_delivery_orders").await;
    // Every order in the day's facts is in the change log, which keeps growing.
    assert!(raw["rows"][0]["n"].as_i64().unwrap() >= facts["rows"][0]["n"].as_i64().unwrap(), "{raw} {facts}");
    let get = |path: String| {
        let req = reqwest::Client::new().get(format!("http://127.0.0.1:{port}{path}")).bearer_auth(&token);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let run_id = runs["run_id"].as_str().unwrap();
    let tasks = get(format!("/api/v1/dags/orders_daily/runs/{run_id}/tasks")).await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 5, "{tasks}");
    let anonymous = reqwest::get(format!("http://127.0.0.1:{port}/api/v1/dags")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    // The published spec covers every route, the orchestrator's too.
    let spec = get("/api/v1/openapi.json".into()).await;
    for path in [
        "/api/v1/query",
        "/api/v1/whoami",
        "/api/v1/dags/{dag}/runs",
        "/api/v1/dags/{dag}/grid",
        "/api/v1/dags/{dag}/backfill",
        "/api/v1/dags/{dag}/runs/{run}/tasks/{task}/state",
        "/api/v1/lake/tables/{name}",
        "/api/v1/silences",
        "/api/v1/lag",
        "/api/v1/lag/history",
        "/api/v1/pipelines",
    ] {
        assert!(spec["paths"][path].is_object(), "{path} is not in the OpenAPI spec");
    }
    // Consumer lag: the lake writer of every change-event topic, positioned by its commits. A
    // partition's first record (ratings are rare) may be younger than the lake's 5 s flush age,
    // so wait a few flushes for every partition that holds records to have a committed position.
    let lag_wait = Instant::now();
    loop {
        let lag = get("/api/v1/lag".into()).await;
        let mut behind = Vec::new();
        for t in ["orders", "payments", "deliveries", "ratings"] {
            let lake = lag["consumers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["consumer"] == "lake" && c["topic"] == format!("food.delivery.{t}"));
            let lake = lake.unwrap_or_else(|| panic!("no lake writer lag for {t}: {lag}"));
            assert_eq!(lake["target"], format!("raw.food_delivery_{t}"));
            let partitions = lake["partitions"].as_array().unwrap();
            assert!(partitions.iter().any(|p| p["end"].as_i64().unwrap() > 0), "no records in {t}: {lake}");
            if partitions.iter().any(|p| p["end"].as_i64().unwrap() > 0 && p["position"].as_i64().unwrap() == 0) {
                behind.push(lake.clone());
            }
        }
        if behind.is_empty() {
            break;
        }
        assert!(lag_wait.elapsed() < Duration::from_secs(20), "lake writers not positioned: {behind:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The console's overview in headless Chromium: its DOM after the page's calls ran, and a
    // screenshot (tests/tests/console.rs drives every page and action through Selenium).
    let page = format!("http://127.0.0.1:{port}/#token={token}");
    let chromium = |extra: &[String]| {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1200",
            "--virtual-time-budget=12000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        args.push(page.clone());
        Command::new("chromium").args(args).output().expect("chromium (Debian package, installed by scripts/test)")
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom".into()]).stdout).into_owned();
    for want in
        ["raw.food_delivery_orders", "payment_failures", "orders_daily", "consumer lag", "class=\"dot s-success\""]
    {
        assert!(dom.contains(want), "the console's overview lacks {want:?}:\n{dom}");
    }
    let shot = dir.path().join("dashboard.png");
    let out = chromium(&[format!("--screenshot={}", shot.display())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // A blank 1280×1200 page compresses to a few KB; tables, text and a chart do not.
    assert!(png.len() > 40_000, "the screenshot looks empty: {} bytes", png.len());

    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let out = lines.lock().unwrap().join("\n");
    assert!(out.contains(": success"), "the DAG run did not succeed:\n{out}");
    assert!(out.contains("[alert] FIRING PaymentFailureRateHigh — card payments:"), "no alert:\n{out}");
    for table in ["raw.food_delivery_payments", "current.food_delivery_orders", "views.order_facts"] {
        assert!(out.contains(table), "{table} missing:\n{out}");
    }
}
