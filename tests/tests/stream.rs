//! `weir ingest http` and `weir stream` as a user runs them, as separate processes on the test
//! Kafka-protocol broker: JSON events POSTed by a service, a pipeline file, the stream role
//! killed with -9 again and again while events arrive — and every window's result still counts
//! every event exactly once. And a SQL pipeline joining a real MariaDB's payments with its
//! merchants, both captured by `weir ingest`, that follows a merchant's move across restarts.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use weir_e2e::harness::{Proc, free_port, kafka, mariadb, mysql_source_toml, ok, test_mysql_url, weir};

/// Starts `weir <args>` in `dir` on the test broker; its log is appended to `dir/<role>.log`.
fn spawn(dir: &Path, args: &[&str]) -> Proc {
    spawn_logged(dir, args[0], args)
}

/// Starts `weir <args>` in `dir` on the test broker; its log is appended to `dir/<log>.log`.
fn spawn_logged(dir: &Path, log: &str, args: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{log}.log"))).unwrap();
    Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(args)
            .current_dir(dir)
            .env("WEIR_BUS_URL", kafka())
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log),
    )
}

/// `pipelines/orders.yaml` in `dir`: pipeline `id` counting `topic`'s JSON orders, their revenue
/// and distinct ids per city and minute, with no out-of-orderness and `idle` as idle timeout.
fn write_orders_pipeline(dir: &Path, id: &str, topic: &str, idle: &str) {
    std::fs::create_dir_all(dir.join("pipelines")).unwrap();
    std::fs::write(
        dir.join("pipelines/orders.yaml"),
        format!("id: {id}\nsource:\n  topic: {topic}\n  format: json\n  fields: {{order_id: int, city: string, amount: float, at: timestamp}}\n\
         key: city\nevent_time: at\nwindow: {{tumbling: 1m}}\naggregates:\n  - {{name: orders, fn: count}}\n  \
         - {{name: revenue, fn: sum, expr: amount}}\n  - {{name: distinct_orders, fn: count_distinct, expr: order_id}}\n\
         watermark: {{max_out_of_orderness: 0s, idle_timeout: {idle}}}\n"
        ),
    )
    .unwrap();
}

/// The last lines of a role's log in `dir`, for a failure message.
fn log_tail(dir: &Path, role: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{role}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A role's log in `dir` without its colours.
fn plain_log(dir: &Path, role: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{role}.log"))).unwrap_or_default();
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

/// The partitions of consumer group `group` that a `weir stream` process holds now, as its log
/// in `dir` says (the bus logs every assignment and revocation of a group's partitions).
fn held(dir: &Path, role: &str, group: &str) -> BTreeSet<u32> {
    let (assigned, revoked) = (
        format!("group assigned partitions group=\"{group}\" "),
        format!("group revoked partitions group=\"{group}\" "),
    );
    let mut held = BTreeSet::new();
    for line in plain_log(dir, role).lines() {
        if line.contains(&revoked) {
            held.clear();
        } else if let Some(i) = line.find(&assigned) {
            let list = line[i..].split_once('[').and_then(|(_, rest)| rest.split_once(']')).map_or("", |(l, _)| l);
            held = list.split(',').filter_map(|p| p.trim().parse().ok()).collect();
        }
    }
    held
}

/// How many times the processes `roles` logged giving up `group`'s partitions.
fn revocations(dir: &Path, roles: &[String], group: &str) -> usize {
    let revoked = format!("group revoked partitions group=\"{group}\" ");
    roles.iter().map(|r| plain_log(dir, r).matches(&revoked).count()).sum()
}

async fn wait_healthy(port: u16) {
    let started = Instant::now();
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing answers on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 2026-01-01T00:00:00Z: event times in the past, so an idle source closes every window.
const T0: i64 = 1_767_225_600_000;
const CITIES: [&str; 3] = ["lyon", "oslo", "pune"];

fn order(i: i64) -> Value {
    let at = T0 + i * 1_500; // 40 orders a minute
    json!({"order_id": i, "city": CITIES[(i % 3) as usize], "amount": (i % 17) as f64 + 0.5, "at": at})
}

/// The latest result per (city, window start) on the results topic.
/// The latest result per (city, window) in the results topic, read by a fresh group. It stops
/// after 5 s without a record: with 1 s, the check stalled under load at the same 61 of 90
/// windows, most likely because a loaded broker's first fetch of a partition came after the read
/// had already stopped.
fn results(dir: &Path, bus: &str, topic: &str) -> BTreeMap<(String, String), Value> {
    results_by(dir, bus, topic, "city")
}

/// The latest result per (`key`'s value, window start) in the results topic (as [`results`]).
fn results_by(dir: &Path, bus: &str, topic: &str, key: &str) -> BTreeMap<(String, String), Value> {
    let group = format!("check-{}", rand_id());
    let out = ok(weir(dir, bus, &["consume", topic, "--group", &group, "--timeout-ms", "5000"], None));
    let mut latest = BTreeMap::new();
    for line in out.lines() {
        let value = line.splitn(4, '\t').nth(3).unwrap();
        let r: Value = serde_json::from_str(value).unwrap();
        latest.insert((r[key].as_str().unwrap().to_string(), r["window_start"].as_str().unwrap().to_string()), r);
    }
    latest
}

/// Waits (up to `limit`) until every 1-minute window per city of `orders` has a final result on
/// `output`, then asserts each one counts its orders, distinct orders and revenue exactly.
async fn expect_windows(
    d: &Path,
    output: &str,
    orders: &[Value],
    limit: Duration,
    context: &str,
    logs: impl Fn() -> String,
) {
    let mut expected: BTreeMap<(String, i64), (i64, f64)> = BTreeMap::new();
    for o in orders {
        let e = expected
            .entry((o["city"].as_str().unwrap().to_string(), (o["at"].as_i64().unwrap() - T0) / 60_000))
            .or_default();
        e.0 += 1;
        e.1 += o["amount"].as_f64().unwrap();
    }
    let started = Instant::now();
    let got = loop {
        let r = results(d, &kafka(), output);
        if r.len() == expected.len() && r.values().all(|v| v["final"] == true) {
            break r;
        }
        assert!(started.elapsed() < limit, "results incomplete: {} of {}; {}", r.len(), expected.len(), logs());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for ((city, minute), (count, revenue)) in &expected {
        let start =
            humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_millis((T0 + minute * 60_000) as u64));
        let r = &got[&(city.clone(), start.to_string())];
        assert_eq!(r["orders"], *count, "{city} minute {minute} {context}: {r}\n{}", logs());
        assert_eq!(r["distinct_orders"], *count, "{city} minute {minute}");
        assert!((r["revenue"].as_f64().unwrap() - revenue).abs() < 1e-6, "{city} minute {minute}: {r}");
    }
}

fn rand_id() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test]
async fn posted_events_are_windowed_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ingest_port, stream_port) = (free_port(), free_port());
    std::fs::write(d.join("weir.toml"), "[stream]\ncheckpoint_interval = \"300ms\"\npoll_interval = \"50ms\"\n")
        .unwrap();
    // Names of this run: the broker outlives the test.
    let run = rand_id() % 1_000_000_000;
    let (topic, pipeline) = (format!("app-orders-{run}"), format!("orders_{run}"));
    let output = format!("weir.stream.{pipeline}");
    write_orders_pipeline(d, &pipeline, &topic, "1s");
    let mut ingest = spawn(d, &["ingest", "http", "--listen", &format!("127.0.0.1:{ingest_port}")]);
    wait_healthy(ingest_port).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{ingest_port}/topics/{topic}?key=city");

    // A bad request is refused whole, naming the event; nothing lands.
    let resp = http.post(&url).json(&json!([order(0), 5])).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "events[1]: an event is a JSON object");
    assert_eq!(
        http.post("http://127.0.0.1:".to_string() + &ingest_port.to_string() + "/topics/weir.alerts")
            .json(&json!({"a": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    // The first batch creates the topic; the stream role starts on it.
    let total = 1_200;
    let batch = 50;
    let post = |from: i64| {
        let events: Vec<Value> = (from..from + batch).map(order).collect();
        http.post(&url).json(&events).send()
    };
    let resp = post(0).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["offsets"].as_array().unwrap().len(), batch as usize);
    let stream_args = ["stream", "--listen", &format!("127.0.0.1:{stream_port}")];
    let mut stream = spawn(d, &stream_args);
    let mut kills = 0;
    let mut from = batch;
    while from < total {
        post(from).await.unwrap().error_for_status().unwrap();
        from += batch;
        if from % 200 == 0 {
            // Let it get some way (a checkpoint or not), then kill it at a random moment.
            tokio::time::sleep(Duration::from_millis(150 + (from as u64 * 37) % 400)).await;
            stream.kill().unwrap(); // SIGKILL
            stream.wait().unwrap();
            kills += 1;
            stream = spawn(d, &stream_args);
        }
    }
    // One event of the wrong type: dead-lettered with the reason, the rest unaffected.
    let bad = json!({"order_id": 9_999, "city": "lyon", "amount": "lots", "at": T0});
    http.post(&url).json(&bad).send().await.unwrap().error_for_status().unwrap();

    // Every window closes once the source is idle; wait for the results to be complete.
    wait_healthy(stream_port).await;
    // A bound, not a wait: on 2 loaded cores the restarted process may take a while to drain.
    let orders: Vec<Value> = (0..total).map(order).collect();
    let logs = || format!("weir stream's log ends:\n{}", log_tail(d, "stream"));
    expect_windows(d, &output, &orders, Duration::from_secs(120), &format!("after {kills} kill -9s"), logs).await;
    assert!(kills >= 5);

    // The dead letter names its problem; the role reports health and metrics.
    // It ends at the dead letter; the long idle limit only matters when the shared broker is slow
    // under a full run (a 1 s limit once returned nothing).
    let dlq_topic = format!("{topic}.dlq");
    let args = ["consume", &dlq_topic, "--group", "c", "--max", "1", "--timeout-ms", "30000"];
    let dlq = ok(weir(d, &kafka(), &args, None));
    assert!(dlq.contains("lots"), "{dlq}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{stream_port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("weir_stream_events_total{{pipeline=\"{pipeline}\"}}")), "{metrics}");
    assert!(metrics.contains(&format!("weir_stream_dead_letters_total{{pipeline=\"{pipeline}\"}} 1")), "{metrics}");
    let check = ok(weir(d, &kafka(), &["stream", "--check"], None));
    assert!(check.contains(&format!("{topic} → {output}")), "{check}");
    Command::new("kill").args(["-INT", &stream.id().to_string()]).status().unwrap();
    assert!(stream.wait().unwrap().success(), "weir stream stops cleanly on Ctrl-C");
    ingest.kill().unwrap();
    ingest.wait().unwrap();
}

/// An interval join through `weir stream` on the test broker: orders meet the shipments of the
/// same order that left within 10 minutes after it (order `i`: none when `i % 3 == 0`; one by dhl
/// 4 minutes after when `1`; one by ups a minute after and one by dhl 12 minutes after — outside
/// — when `2`). The orders come first and are held; the process is killed with -9 while the
/// shipments arrive and resumes from its checkpoint; every carrier's per-minute count and amount
/// is exact.
#[tokio::test]
async fn an_interval_join_counts_each_shipment_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("weir.toml"), "[stream]\ncheckpoint_interval = \"200ms\"\npoll_interval = \"50ms\"\n")
        .unwrap();
    let run = rand_id() % 1_000_000_000;
    let (orders, shipments, pipeline) =
        (format!("iv-orders-{run}"), format!("iv-shipments-{run}"), format!("shipped_{run}"));
    for topic in [&orders, &shipments] {
        ok(weir(d, &kafka(), &["topics", "create", topic, "--partitions", "2"], None));
    }
    std::fs::create_dir_all(d.join("pipelines")).unwrap();
    std::fs::write(
        d.join("pipelines/shipped.yaml"),
        format!(
            "id: {pipeline}\nsource: {{topic: {orders}, format: json, fields: {{order_id: int, amount: float, at: timestamp}}}}\n\
             event_time: at\nkey: carrier\nwindow: {{tumbling: 1m}}\n\
             interval_join:\n  source: {{topic: {shipments}, format: json, fields: {{order_id: int, carrier: string, shipped_at: timestamp}}}}\n  \
             time: shipped_at\n  key: order_id\n  on: order_id\n  between: {{after: 10m}}\n  columns: [carrier]\n\
             aggregates:\n  - {{name: shipments, fn: count}}\n  - {{name: amount, fn: sum, expr: amount}}\n\
             watermark: {{max_out_of_orderness: 0s, idle_timeout: 20s}}\n"
        ),
    )
    .unwrap();
    // The idle timeout is longer than a loaded broker's first fetch: a partition silent that
    // long counts as idle even with records unread, and with every partition idle the watermark
    // follows the wall clock, far past these events' times (a 2 s timeout failed once so, under
    // a fresh machine's full suite: the first fetch came after 4 s and every order was late; see
    // "Time" in docs/streaming.md).
    let total = 400i64;
    let at = |i: i64| T0 + i * 15_000;
    let amount = |i: i64| (i % 5) as f64 + 0.5;
    let shipped = |i: i64| -> Vec<(i64, &'static str)> {
        match i % 3 {
            0 => vec![],
            1 => vec![(at(i) + 240_000, "dhl")],
            _ => vec![(at(i) + 60_000, "ups"), (at(i) + 720_000, "dhl")],
        }
    };
    let order_lines: String =
        (0..total).map(|i| format!("{i}\t{}\n", json!({"order_id": i, "amount": amount(i), "at": at(i)}))).collect();
    ok(weir(d, &kafka(), &["produce", &orders], Some(&order_lines)));
    let port = free_port();
    let start = || spawn_logged(d, "stream", &["stream", "--listen", &format!("127.0.0.1:{port}")]);
    let mut stream = start();
    // Shipments in time order (each partition's times only grow), in four slices.
    let mut all: Vec<(i64, i64, &str)> =
        (0..total).flat_map(|i| shipped(i).into_iter().map(move |(t, c)| (t, i, c))).collect();
    all.sort();
    for (n, slice) in all.chunks(all.len().div_ceil(4)).enumerate() {
        let lines: String = slice
            .iter()
            .map(|(t, i, c)| format!("{i}\t{}\n", json!({"order_id": i, "carrier": c, "shipped_at": t})))
            .collect();
        ok(weir(d, &kafka(), &["produce", &shipments], Some(&lines)));
        if n == 1 {
            // Killed once a checkpoint holds orders and shipments.
            let checkpoint = d.join(format!("weir-data/lake/checkpoints/stream/{pipeline}.json"));
            let started = Instant::now();
            loop {
                let c: Option<Value> = std::fs::read(&checkpoint).ok().and_then(|b| serde_json::from_slice(&b).ok());
                let i = c.as_ref().map(|c| &c["interval"]);
                if i.is_some_and(|i| i["held"].as_array().is_some_and(|h| !h.is_empty()) && i["rows"].is_string()) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no checkpoint holding both\n{}",
                    log_tail(d, "stream")
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stream.kill().unwrap(); // SIGKILL
            stream.wait().unwrap();
            stream = start();
        }
    }
    let mut expected: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    for i in 0..total {
        for (t, carrier) in shipped(i) {
            if t <= at(i) + 600_000 {
                let minute = humantime::format_rfc3339(
                    std::time::UNIX_EPOCH + Duration::from_millis((at(i) / 60_000 * 60_000) as u64),
                );
                let e = expected.entry((carrier.to_string(), minute.to_string())).or_default();
                e.0 += 1;
                e.1 += amount(i);
            }
        }
    }
    let output = format!("weir.stream.{pipeline}");
    let started = Instant::now();
    let got = loop {
        let got = results_by(d, &kafka(), &output, "carrier");
        if got.len() == expected.len() && got.values().all(|r| r["final"] == true) {
            break got;
        }
        let (n, m) = (got.len(), expected.len());
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "results incomplete: {n} of {m}\n{}",
            log_tail(d, "stream")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (k, (count, amount)) in &expected {
        let r = &got[k];
        assert_eq!(r["shipments"], *count, "{k:?}: {r}\n{}", log_tail(d, "stream"));
        assert!((r["amount"].as_f64().unwrap() - amount).abs() < 1e-6, "{k:?}: {r}");
    }
    let check = ok(weir(d, &kafka(), &["stream", "--check"], None));
    assert!(check.contains(&format!("{orders} ⋈ {shipments} within [-0s, +10m] → {output}")), "{check}");
    Command::new("kill").args(["-INT", &stream.id().to_string()]).status().unwrap();
    assert!(stream.wait().unwrap().success(), "weir stream stops cleanly on Ctrl-C");
}

/// `weir ingest http` with tokens: none → 401, a `read` token → 403, an `ingest` token posts; the
/// token file is read again when it changes, so a rotated token works and the old one stops
/// working without a restart.
#[tokio::test]
async fn ingest_http_takes_ingest_tokens_and_rotates_them_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    std::fs::write(d.join("weir.toml"), "[ingest.http]\ntokens_file = \"tokens\"\n").unwrap();
    std::fs::write(d.join("tokens"), "# who may post\ningest:first-token\n").unwrap();
    let mut ingest = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["ingest", "http", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(d)
            .env("WEIR_BUS_URL", "local:./bus")
            .env("WEIR_INGEST_TOKENS", "read:reader-token")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_healthy(port).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/topics/app-events");
    let post = |token: Option<&'static str>| {
        let mut req = http.post(&url).json(&json!({"a": 1}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some("reader-token")).await, 403, "a read token cannot post");
    assert_eq!(post(Some("first-token")).await, 200);
    std::fs::write(d.join("tokens"), "ingest:second-token\n").unwrap();
    let started = Instant::now();
    while post(Some("second-token")).await != 200 {
        assert!(started.elapsed() < Duration::from_secs(15), "the rotated token was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(post(Some("first-token")).await, 401, "the old token no longer works");
    ingest.kill().unwrap();
    ingest.wait().unwrap();
}

/// A SQL pipeline over change events `weir ingest` captured from a real MariaDB: payments per
/// merchant city, the city joined from the merchants table's changelog. A merchant that moves
/// counts in its new city from then on, also after `weir stream` restarts from its checkpoint;
/// a payment of a merchant the table does not hold is dropped by the inner join.
#[test]
fn a_sql_pipeline_joins_mariadb_payments_with_their_merchants() {
    const BUS: &str = "local:./weir-data/bus";
    mariadb(&format!(
        "DROP DATABASE IF EXISTS weir_join; CREATE DATABASE weir_join; \
         CREATE TABLE weir_join.merchants (id INT PRIMARY KEY, city VARCHAR(20)); \
         CREATE TABLE weir_join.payments (id INT PRIMARY KEY, merchant_id INT, amount DECIMAL(10,2), paid_at BIGINT); \
         INSERT INTO weir_join.merchants VALUES (1, 'lyon'), (2, 'oslo'); \
         INSERT INTO weir_join.payments VALUES (1, 1, 10.00, {a}), (2, 1, 5.50, {b}), (3, 2, 7.25, {c}), (4, 3, 1.00, {c})",
        a = T0,
        b = T0 + 1_000,
        c = T0 + 2_000,
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("weir.toml"), mysql_source_toml(&test_mysql_url(), 6431, "weir_join", "")).unwrap();
    std::fs::create_dir_all(d.join("pipelines")).unwrap();
    std::fs::write(
        d.join("pipelines/per_city.sql"),
        // Windows close by event time only (never by an idle source): the events are from the past.
        "CREATE PIPELINE per_city WITH (idle_timeout = '1h') AS\n\
         SELECT m.city, COUNT(*) AS payments, SUM(p.amount) AS amount\n\
         FROM \"shop.weir_join.payments\" p\n\
         JOIN \"shop.weir_join.merchants\" FOR SYSTEM_TIME AS OF p.proc_time AS m ON p.merchant_id = m.id\n\
         GROUP BY m.city, TUMBLE(p.paid_at, INTERVAL '1' MINUTE)\n",
    )
    .unwrap();
    ok(weir(d, BUS, &["ingest", "--once"], None));
    let check = ok(weir(d, BUS, &["stream", "--check"], None));
    assert!(check.contains("shop.weir_join.payments ⋈ shop.weir_join.merchants → weir.stream.per_city"), "{check}");
    let once = ok(weir(d, BUS, &["stream", "--once"], None));
    assert!(once.contains("\"unjoined\":1"), "merchant 3 is in no table: {once}");

    // Merchant 2 moves to Lyon; its next payment is a minute later, and one of merchant 1 in the
    // minute after moves the watermark past that minute.
    mariadb(&format!(
        "UPDATE weir_join.merchants SET city = 'lyon' WHERE id = 2; \
         INSERT INTO weir_join.payments VALUES (5, 2, 2.00, {}), (6, 1, 1.00, {})",
        T0 + 60_000,
        T0 + 125_000
    ));
    ok(weir(d, BUS, &["ingest", "--once"], None));
    let once = ok(weir(d, BUS, &["stream", "--once"], None));
    assert!(once.contains("\"aggregated\":5"), "the restored pipeline counts on: {once}");

    let r = results(d, BUS, "weir.stream.per_city");
    let minute = |m: i64| {
        humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_millis((T0 + m * 60_000) as u64)).to_string()
    };
    let payments = |city: &str, m: i64| r.get(&(city.to_string(), minute(m))).map(|r| r["payments"].as_i64().unwrap());
    assert_eq!(payments("lyon", 0), Some(2), "{r:?}");
    assert_eq!(payments("oslo", 0), Some(1), "{r:?}");
    assert_eq!(payments("lyon", 1), Some(1), "merchant 2 counts in its new city: {r:?}");
    assert_eq!(payments("oslo", 1), None, "{r:?}");
    assert_eq!(r[&("lyon".to_string(), minute(0))]["amount"], 15.5);
    assert!(r.values().all(|r| r["final"] == true), "{r:?}");
}

/// `weir stream --scale-out` as three processes sharing one pipeline on the test broker: the
/// group splits the partitions, orders keyed by their id are repartitioned by city, and with one
/// process after another killed with -9 while orders arrive — its partitions move to the other
/// two, then it is started again and takes its share back — every window still counts every
/// order exactly once.
///
/// A killed process is started again once the other two have seen their groups rebalance
/// without it (their logs show the revocation), not at once: when a member joins tansu 0.6.0's
/// groups while a dead one is still in them, the dead one is given partitions, and once its
/// session expires tansu drops it without starting a new generation (its heartbeat answers the
/// other members "no error"), so those partitions stay with no member (seen here: source
/// partition 1 assigned to a dead member at generation 8, then 355 heartbeats at generation 8
/// for three minutes). Kafka starts a new generation when a session expires.
#[tokio::test]
async fn three_scale_out_processes_count_every_event_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A dead member's partitions move once the broker misses its heartbeats for 6 s. The idle
    // timeout is longer: a source partition whose repartitioner died is waited for, not passed
    // by the watermark.
    std::fs::write(
        d.join("weir.toml"),
        "[stream]\ncheckpoint_interval = \"300ms\"\npoll_interval = \"50ms\"\n\n\
         [bus.kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
    )
    .unwrap();
    let run = rand_id() % 1_000_000_000;
    let (topic, pipeline) = (format!("scale-orders-{run}"), format!("scaled_{run}"));
    let output = format!("weir.stream.{pipeline}");
    ok(weir(d, &kafka(), &["topics", "create", &topic, "--partitions", "4"], None));
    write_orders_pipeline(d, &pipeline, &topic, "20s");
    const CITIES8: [&str; 8] = ["lyon", "oslo", "pune", "lima", "kobe", "graz", "cork", "baku"];
    let order = |i: i64| json!({"order_id": i, "city": CITIES8[(i * 5 % 8) as usize], "amount": (i % 17) as f64 + 0.5, "at": T0 + i * 200});
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |n: usize| {
        let listen = format!("127.0.0.1:{}", ports[n]);
        spawn_logged(d, &format!("stream-{n}"), &["stream", "--scale-out", "--listen", &listen])
    };
    let mut procs: Vec<Proc> = (0..3).map(start).collect();
    let roles: Vec<String> = (0..3).map(|n| format!("stream-{n}")).collect();
    let groups = [format!("weir-stream-{pipeline}-repartition"), format!("weir-stream-{pipeline}")];
    let tails = || roles.iter().map(|r| format!("{r}:\n{}", log_tail(d, r))).collect::<Vec<_>>().join("\n");
    let (total, batch) = (3_000i64, 250i64);
    let mut kills = 0;
    for from in (0..total).step_by(batch as usize) {
        let lines: String = (from..from + batch).map(|i| format!("{i}\t{}\n", order(i))).collect();
        ok(weir(d, &kafka(), &["produce", &topic], Some(&lines)));
        if from > 0 && from % 750 == 0 {
            // Each group's four partitions held, each by one of the three.
            let started = Instant::now();
            loop {
                let complete = groups.iter().all(|g| {
                    let sets: Vec<BTreeSet<u32>> = roles.iter().map(|r| held(d, r, g)).collect();
                    sets.iter().map(BTreeSet::len).sum::<usize>() == 4
                        && sets.iter().flatten().collect::<BTreeSet<_>>().len() == 4
                });
                if complete {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "groups not settled before kill {kills}\n{}",
                    tails()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let n = kills % 3;
            let others: Vec<String> = roles.iter().filter(|r| **r != roles[n]).cloned().collect();
            let before: Vec<usize> = groups.iter().map(|g| revocations(d, &others, g)).collect();
            procs[n].kill().unwrap(); // SIGKILL
            procs[n].wait().unwrap();
            kills += 1;
            // The other two rebalance once the broker misses the dead one's heartbeats.
            let started = Instant::now();
            while groups.iter().zip(&before).any(|(g, &b)| revocations(d, &others, g) <= b) {
                assert!(started.elapsed() < Duration::from_secs(60), "no rebalance after kill {kills}\n{}", tails());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            procs[n] = start(n);
        }
    }
    // A bound, not a wait: the idle timeout is 20 s and a killed member's partitions move after 6 s.
    let orders: Vec<Value> = (0..total).map(order).collect();
    expect_windows(d, &output, &orders, Duration::from_secs(180), &format!("after {kills} kill -9s"), tails).await;
    assert_eq!(kills, 3);
    // The three share the by-key topic's partitions: more than one holds some, none holds all.
    let shards = format!("weir_stream_shards{{pipeline=\"{pipeline}\"}} ");
    let started = Instant::now();
    loop {
        let mut held = Vec::new();
        for port in &ports {
            let m = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
            let n: f64 =
                m.lines().find_map(|l| l.strip_prefix(&shards)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
            held.push(n as u32);
        }
        if held.iter().filter(|&&n| n > 0).count() >= 2 && held.iter().all(|&n| n < 4) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "shards held: {held:?}\n{}", tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in &mut procs {
        Command::new("kill").args(["-INT", &p.id().to_string()]).status().unwrap();
    }
    for p in &mut procs {
        assert!(p.wait().unwrap().success(), "weir stream --scale-out stops cleanly on Ctrl-C\n{}", tails());
    }
}
