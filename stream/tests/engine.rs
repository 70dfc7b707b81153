//! The stream engine end to end on the embedded bus, registry and a local lake: real Debezium
//! Avro envelopes in; results, dead letters, alerts and notifications out; checkpoints restored.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value as Json;
use weir_bus::{Bus, ConsumerConfig, Record, TopicPartition, local::LocalBus};
use weir_lake::{Lake, LakeConfig, LakeUrl};
use weir_notify::{Notifier, Retry};
use weir_schemas::{
    avro::AvroSchema,
    connect::{Field, Value, decimal_bytes, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
};
use weir_stream::{
    Engine, EngineConfig, Pipeline,
    alert::{self, RuleSet},
    pipeline,
};

const TOPIC: &str = "shop.shop.payments";
/// The changelog of the merchants table payments are joined with.
const MERCHANTS: &str = "shop.shop.merchants";
/// 2026-01-01T00:00:00Z: event times well in the past, so an idle source closes every window.
const T0: i64 = 1_767_225_600_000;

struct Setup {
    dir: tempfile::TempDir,
    bus: Arc<LocalBus>,
    registry: Arc<dyn SchemaRegistry>,
    serializer: AvroSerializer,
    lake: Lake,
}

async fn setup(partitions: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(LocalBus::open(&dir.path().join("bus"), Default::default()).unwrap());
    bus.create_topic(TOPIC, partitions).await.unwrap();
    let pool =
        metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await.unwrap();
    let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await.unwrap());
    let serializer = AvroSerializer::new(registry.clone());
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(dir.path().join("lake")), ..LakeConfig::default() });
    Setup { dir, bus, registry, serializer, lake }
}

/// A payment: id, merchant, amount in cents, status, event time (ms).
#[derive(Debug, Clone, Copy)]
struct Payment {
    id: i64,
    merchant: i64,
    cents: i64,
    failed: bool,
    at: i64,
}

impl Setup {
    async fn produce(&self, payments: &[Payment]) {
        let t = TableSchemas::new(
            TOPIC,
            vec![
                Field::new("id", schema::int64()),
                Field::new("merchant_id", schema::int64()),
                Field::new("amount", schema::decimal(10, 2)),
                Field::new("status", schema::string()),
            ],
            vec![Field::new("id", schema::int64())],
            binlog_source_schema(BinlogFlavor::Mariadb),
        );
        let value_schema = AvroSchema::new(t.envelope.clone()).unwrap();
        let key_schema = AvroSchema::new(t.key.clone().unwrap()).unwrap();
        let mut records = Vec::new();
        for p in payments {
            let row = Value::Struct(vec![
                Value::Int64(p.id),
                Value::Int64(p.merchant),
                Value::Bytes(decimal_bytes(i128::from(p.cents))),
                Value::String(if p.failed { "failed" } else { "paid" }.into()),
            ]);
            let source = BinlogSource {
                flavor: BinlogFlavor::Mariadb,
                name: "shop".into(),
                ts_us: p.at * 1000,
                snapshot: SnapshotMarker::False,
                db: "shop".into(),
                table: Some("payments".into()),
                server_id: 1,
                gtid: None,
                file: "mysql-bin.000001".into(),
                pos: 4 + p.id,
                row: 0,
                thread: None,
                query: None,
            };
            let source = source.to_value(&binlog_source_schema(BinlogFlavor::Mariadb));
            let envelope = t.envelope_value(Op::Create, Value::Null, row, source, None, 0);
            let key_value = Value::Struct(vec![Value::Int64(p.id)]);
            let key = self.serializer.serialize(TOPIC, true, &key_schema, &key_value).await.unwrap();
            let value = self.serializer.serialize(TOPIC, false, &value_schema, &envelope).await.unwrap();
            records.push(Record::keyed(key, value));
        }
        self.bus.producer().await.unwrap().send(TOPIC, records).await.unwrap();
    }

    /// Changes to the merchants table (id, city) on its changelog topic, as ingest writes them:
    /// a delete carries the row as its `before` image.
    async fn produce_merchants(&self, changes: &[(Op, i64, &str)]) {
        match self.bus.create_topic(MERCHANTS, 1).await {
            Ok(()) | Err(weir_bus::BusError::TopicExists(_)) => {}
            Err(e) => panic!("{e}"),
        }
        let t = TableSchemas::new(
            MERCHANTS,
            vec![Field::new("id", schema::int64()), Field::new("city", schema::string())],
            vec![Field::new("id", schema::int64())],
            binlog_source_schema(BinlogFlavor::Mariadb),
        );
        let value_schema = AvroSchema::new(t.envelope.clone()).unwrap();
        let mut records = Vec::new();
        for (n, &(op, id, city)) in changes.iter().enumerate() {
            let row = Value::Struct(vec![Value::Int64(id), Value::String(city.into())]);
            let (before, after) = match op {
                Op::Delete => (row, Value::Null),
                _ => (Value::Null, row),
            };
            let source = BinlogSource {
                flavor: BinlogFlavor::Mariadb,
                name: "shop".into(),
                ts_us: T0 * 1000,
                snapshot: SnapshotMarker::False,
                db: "shop".into(),
                table: Some("merchants".into()),
                server_id: 1,
                gtid: None,
                file: "mysql-bin.000001".into(),
                pos: 4 + n as i64,
                row: 0,
                thread: None,
                query: None,
            };
            let source = source.to_value(&binlog_source_schema(BinlogFlavor::Mariadb));
            let envelope = t.envelope_value(op, before, after, source, None, 0);
            let value = self.serializer.serialize(MERCHANTS, false, &value_schema, &envelope).await.unwrap();
            records.push(Record::keyed(id.to_string(), value));
        }
        self.bus.producer().await.unwrap().send(MERCHANTS, records).await.unwrap();
    }

    /// The latest result per (first key column as text, window start) on the results topic.
    async fn results_by(&self, p: &Pipeline, key: &str) -> BTreeMap<(String, String), Json> {
        let mut latest = BTreeMap::new();
        for (_, r) in self.read(&p.output_topic).await {
            latest.insert((r[key].to_string(), r["window_start"].as_str().unwrap().to_string()), r);
        }
        latest
    }

    /// The alert rules of `yaml`, written to `alerts/payments.yaml` and loaded as `weir stream`
    /// loads them.
    fn alert_config(&self, yaml: &str) -> alert::AlertConfig {
        let dir = self.dir.path().join("alerts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("payments.yaml"), yaml).unwrap();
        let (config, errors) = alert::load_dir(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        config
    }

    fn pipeline(&self, yaml: &str) -> Pipeline {
        let path = self.dir.path().join("p.yaml");
        std::fs::write(&path, yaml).unwrap();
        pipeline::load_file(&path).unwrap()
    }

    async fn engine(&self, p: &Pipeline, rules: RuleSet) -> Engine {
        let config = EngineConfig {
            checkpoint_interval: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(50),
            // A joined lake table is looked at again before every batch of events.
            table_refresh: Duration::ZERO,
        };
        Engine::open(p.clone(), config, self.bus.clone(), Some(self.registry.clone()), self.lake.clone(), rules)
            .await
            .unwrap()
    }

    /// Every record of a single-partition topic: (headers, value as JSON or raw text).
    async fn read(&self, topic: &str) -> Vec<(HashMap<String, String>, Json)> {
        let mut c = self.bus.consumer(ConsumerConfig::new(format!("read-{}", rand_suffix()))).await.unwrap();
        c.assign(&[TopicPartition::new(topic, 0)]).await.unwrap();
        let mut out = Vec::new();
        loop {
            let polled = c.poll(Duration::from_millis(200)).await.unwrap();
            if polled.is_empty() {
                return out;
            }
            for m in polled {
                let headers =
                    m.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
                let value = m.value.as_deref().unwrap_or_default();
                let json = serde_json::from_slice(value).unwrap_or(Json::Null);
                out.push((headers, json));
            }
        }
    }

    /// Payments and their amount in cents per (merchant, window start), from the results topic.
    async fn payments_per_minute(&self, p: &Pipeline) -> BTreeMap<(i64, String), (i64, i64)> {
        let cents = |r: &Json| (r["amount"].as_f64().unwrap() * 100.0).round() as i64;
        self.results(p).await.into_iter().map(|(k, r)| (k, (r["payments"].as_i64().unwrap(), cents(&r)))).collect()
    }

    /// The latest result per (merchant, window start) on the results topic.
    async fn results(&self, p: &Pipeline) -> BTreeMap<(i64, String), Json> {
        let mut latest = BTreeMap::new();
        for (_, r) in self.read(&p.output_topic).await {
            latest
                .insert((r["merchant_id"].as_i64().unwrap_or(-1), r["window_start"].as_str().unwrap().to_string()), r);
        }
        latest
    }
}

/// Payments and their amount in cents per (merchant, window start).
fn per_minute(payments: &[Payment]) -> BTreeMap<(i64, String), (i64, i64)> {
    let mut out: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    for p in payments {
        let e = out.entry((p.merchant, minute((p.at - T0) / 60_000))).or_default();
        e.0 += 1;
        e.1 += p.cents;
    }
    out
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Closes every window: lets the source go idle, then drains (the watermark follows the clock).
async fn drain_idle(engine: &mut Engine, idle: Duration) {
    tokio::time::sleep(idle + Duration::from_millis(50)).await;
    engine.drain().await.unwrap();
}

const PER_MINUTE: &str = "source: {topic: shop.shop.payments}\nkey: merchant_id\nwindow: {tumbling: 1m}\n\
    aggregates:\n  - {name: payments, fn: count}\n  - {name: failed, fn: sum, expr: \"CASE WHEN status = 'failed' THEN 1 ELSE 0 END\"}\n  \
    - {name: amount, fn: sum, expr: amount}\n  - {name: p95_amount, fn: percentile, expr: amount, q: 0.95}\n  \
    - {name: ids, fn: count_distinct, expr: id}\n";

fn minute(m: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis((T0 + m * 60_000) as u64);
    humantime::format_rfc3339(t).to_string()
}

#[tokio::test]
async fn windows_follow_event_time_and_late_events_go_to_the_dlq() {
    let s = setup(1).await;
    let p = s.pipeline(&format!(
        "{PER_MINUTE}watermark: {{max_out_of_orderness: 5s, allowed_lateness: 30s, idle_timeout: 300ms}}\n"
    ));
    let mut engine = s.engine(&p, RuleSet::empty()).await;
    // Minute 0: merchant 1 pays 1.00 … 20.00 (every 4th fails), out of order; merchant 2 once.
    let mut payments: Vec<Payment> = (1..=20)
        .map(|i| Payment { id: i, merchant: 1, cents: i * 100, failed: i % 4 == 0, at: T0 + (20 - i) * 2_000 })
        .collect();
    payments.push(Payment { id: 21, merchant: 2, cents: 999, failed: false, at: T0 + 59_999 });
    // Minute 1 starts; the watermark (max − 5 s) passes minute 0's end only with the event at 1:06.
    payments.push(Payment { id: 22, merchant: 1, cents: 500, failed: true, at: T0 + 66_000 });
    s.produce(&payments).await;
    engine.drain().await.unwrap();
    // The checkpoint's offsets reach the pipeline's group (for lag and the log's retention).
    let mut group = s.bus.consumer(ConsumerConfig::new("weir-stream-p")).await.unwrap();
    assert_eq!(group.committed(&[TopicPartition::new(TOPIC, 0)]).await.unwrap(), vec![Some(22)]);
    let r = s.results(&p).await;
    let m1 = &r[&(1, minute(0))];
    assert_eq!(m1["payments"], 20);
    assert_eq!(m1["failed"], 5.0);
    assert_eq!(m1["amount"], 210.0);
    assert_eq!(m1["ids"], 20);
    assert_eq!(m1["final"], true);
    assert_eq!(m1["window_end"], minute(1));
    let p95 = m1["p95_amount"].as_f64().unwrap();
    assert!((p95 - 19.0).abs() / 19.0 <= 0.011, "p95 {p95}");
    assert_eq!(r[&(2, minute(0))]["payments"], 1);
    assert!(!r.contains_key(&(1, minute(1))), "minute 1 is still open");

    // Late but within the allowed lateness: minute 0 is updated and emitted again.
    s.produce(&[Payment { id: 23, merchant: 1, cents: 100, failed: false, at: T0 + 30_000 }]).await;
    engine.drain().await.unwrap();
    assert_eq!(s.results(&p).await[&(1, minute(0))]["payments"], 21);
    // Move the watermark past 0:60 + 30 s, then an event for minute 0 is too late.
    s.produce(&[Payment { id: 24, merchant: 3, cents: 100, failed: false, at: T0 + 100_000 }]).await;
    engine.drain().await.unwrap();
    s.produce(&[Payment { id: 25, merchant: 1, cents: 100, failed: false, at: T0 + 10_000 }]).await;
    // And a record that is not Avro at all.
    s.bus.producer().await.unwrap().send(TOPIC, vec![Record::keyed("k", "not avro")]).await.unwrap();
    engine.drain().await.unwrap();
    assert_eq!(s.results(&p).await[&(1, minute(0))]["payments"], 21, "the late event changed nothing");
    let dlq = s.read(&format!("{TOPIC}.dlq")).await;
    assert_eq!(dlq.len(), 2, "{dlq:?}");
    assert!(dlq[0].0["weir.dlq.reason"].starts_with("late: event time 2026-01-01T00:00:10"), "{:?}", dlq[0].0);
    assert_eq!(dlq[0].0["weir.dlq.pipeline"], "p");
    assert!(dlq[1].0["weir.dlq.reason"].contains("Confluent wire format"), "{:?}", dlq[1].0);
    let stats = engine.stats();
    assert_eq!((stats.late, stats.dead_letters), (1, 2));

    // The source goes idle: the watermark follows the clock and closes every window.
    drain_idle(&mut engine, Duration::from_millis(300)).await;
    let r = s.results(&p).await;
    assert_eq!(r[&(1, minute(1))]["payments"], 1);
    assert_eq!(r[&(1, minute(1))]["failed"], 1.0);
    assert_eq!(r[&(3, minute(1))]["payments"], 1);
}

#[tokio::test]
async fn a_restart_from_the_checkpoint_neither_loses_nor_double_counts() {
    let s = setup(3).await;
    let p = s.pipeline(&format!("{PER_MINUTE}watermark: {{idle_timeout: 300ms}}\n"));
    let payments: Vec<Payment> = (0..3_000)
        .map(|i| Payment { id: i, merchant: i % 7, cents: 100 + i % 13, failed: i % 5 == 0, at: T0 + i * 100 })
        .collect();
    let expected = per_minute(&payments);
    // Engine A: the first third, checkpointed at the end of its drain.
    s.produce(&payments[..1_000]).await;
    let mut a = s.engine(&p, RuleSet::empty()).await;
    a.drain().await.unwrap();
    // It takes the second third into its windows, then dies without a checkpoint.
    s.produce(&payments[1_000..2_000]).await;
    a.poll_once().await.unwrap();
    assert!(a.stats().aggregated > 1_000, "engine A saw more than its checkpoint holds");
    drop(a);
    // Engine B restores the checkpoint, re-reads from its offsets and takes the rest.
    s.produce(&payments[2_000..]).await;
    let mut b = s.engine(&p, RuleSet::empty()).await;
    b.drain().await.unwrap();
    drain_idle(&mut b, Duration::from_millis(300)).await;
    assert_eq!(b.stats().aggregated, 3_000, "every event exactly once");
    assert_eq!(s.payments_per_minute(&p).await, expected);
    // The checkpoint's positions (what consumer-lag views read) are the end of the source.
    b.checkpoint().await.unwrap();
    let positions = weir_stream::engine::positions(&s.lake).await.unwrap();
    assert_eq!(positions.len(), 1, "{positions:?}");
    assert_eq!((positions[0].pipeline.as_str(), positions[0].topic.as_str()), (p.id.as_str(), TOPIC));
    assert_eq!(positions[0].next.values().copied().collect::<Vec<_>>(), s.bus.end_offsets(TOPIC).await.unwrap());
    assert_eq!((positions[0].watermark, positions[0].stats), (b.watermark(), b.stats()));
}

#[tokio::test]
async fn windows_restored_without_new_events_keep_their_key_columns() {
    let s = setup(1).await;
    let p = s.pipeline(&format!("{PER_MINUTE}watermark: {{idle_timeout: 300ms}}\n"));
    let payments: Vec<Payment> =
        (0..600).map(|i| Payment { id: i, merchant: i % 3, cents: 100, failed: false, at: T0 + i * 100 }).collect();
    s.produce(&payments).await;
    // Engine A reads everything and checkpoints while the last minute's windows are still open
    // (the source is not idle yet).
    let mut a = s.engine(&p, RuleSet::empty()).await;
    a.drain().await.unwrap();
    drop(a);
    let before = s.read(&p.output_topic).await.len();
    // Engine B restores them and reads nothing new: the windows close as the source idles.
    let mut b = s.engine(&p, RuleSet::empty()).await;
    drain_idle(&mut b, Duration::from_millis(300)).await;
    let after = s.read(&p.output_topic).await;
    assert!(after.len() > before, "engine B emitted the restored windows ({before} before, {} after)", after.len());
    for (_, r) in &after[before..] {
        assert!(r["merchant_id"].is_i64(), "a restored window's result has its key column: {r}");
    }
    let per_merchant: BTreeMap<i64, i64> =
        s.results(&p).await.into_iter().fold(BTreeMap::new(), |mut m, ((k, _), r)| {
            *m.entry(k).or_default() += r["payments"].as_i64().unwrap();
            m
        });
    assert_eq!(per_merchant, BTreeMap::from([(0, 200), (1, 200), (2, 200)]), "every payment counted once, by merchant");
}

/// What a receiver on loopback got: (path, Authorization header, JSON body).
type Received = Arc<Mutex<Vec<(String, String, Json)>>>;

/// An HTTP server recording every POST; the first call to `/hook` fails with 500 (the notifier
/// must retry).
async fn receiver() -> (std::net::SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Json>| {
            let sink = sink.clone();
            async move {
                let mut got = sink.lock().unwrap();
                let path = uri.path().to_string();
                let failed_before = got.iter().any(|(p, a, _)| p == "/hook" && a == "refused");
                if path == "/hook" && !failed_before {
                    got.push((path, "refused".into(), body));
                    return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                }
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                got.push((path, auth, body));
                axum::http::StatusCode::OK
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

#[tokio::test]
async fn alerts_fire_and_resolve_and_every_notifier_delivers() {
    let s = setup(1).await;
    let (addr, received) = receiver().await;
    // The Jira token comes from an environment variable; cargo sets CARGO_PKG_NAME for tests.
    let config = s.alert_config(&format!(
        "rules:\n  - alert: PaymentFailuresHigh\n    pipeline: p\n    expr: \"failed / payments > 0.5\"\n    \
             value: \"failed / payments\"\n    labels: {{severity: page}}\n    \
             annotations: {{summary: \"merchant {{{{ $labels.merchant_id }}}} failed {{{{ $value }}}}\"}}\n\
             receivers:\n  - {{name: oncall, webhook: \"http://{addr}/hook\"}}\n  \
             - {{name: chat, slack: \"http://{addr}/slack\"}}\n  \
             - {{name: tickets, jira: {{url: \"http://{addr}/jira\", project: OPS, token_env: CARGO_PKG_NAME}}}}\n"
    ));
    let p = s.pipeline(&format!("{PER_MINUTE}watermark: {{max_out_of_orderness: 0s, idle_timeout: 300ms}}\n"));
    let notifier = Notifier::start(Retry { initial: Duration::from_millis(50), ..Retry::default() });
    let rules = RuleSet::for_pipeline(&p, Arc::new(config), Some(notifier));
    let mut engine = s.engine(&p, rules).await;
    // Minute 0: merchant 1 fails 3 of 4, merchant 2 none. Minute 1: merchant 1 recovers.
    let mut payments = Vec::new();
    for i in 0..4 {
        payments.push(Payment { id: i, merchant: 1, cents: 100, failed: i < 3, at: T0 + i * 1000 });
        payments.push(Payment { id: 10 + i, merchant: 2, cents: 100, failed: false, at: T0 + i * 1000 });
        payments.push(Payment { id: 20 + i, merchant: 1, cents: 100, failed: false, at: T0 + 60_000 + i * 1000 });
    }
    payments.push(Payment { id: 99, merchant: 2, cents: 100, failed: false, at: T0 + 120_000 });
    s.produce(&payments).await;
    engine.drain().await.unwrap();
    let changes: Vec<Json> = s.read("weir.alerts").await.into_iter().map(|(_, v)| v).collect();
    let seen: Vec<(&str, &str)> =
        changes.iter().map(|c| (c["labels"]["merchant_id"].as_str().unwrap(), c["state"].as_str().unwrap())).collect();
    assert_eq!(seen, vec![("1", "firing"), ("1", "resolved")]);
    assert_eq!(changes[0]["annotations"]["summary"], "merchant 1 failed 0.75");
    assert_eq!(changes[0]["labels"]["severity"], "page");
    assert_eq!(changes[1]["evaluated_at"], format!("{}.000Z", minute(2).trim_end_matches('Z')));
    // Webhook: refused once, then both changes in order. Slack: both. Jira: the firing one only.
    let started = std::time::Instant::now();
    let by_path = |path: &str| -> Vec<(String, Json)> {
        received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, a, _)| p == path && a != "refused")
            .map(|(_, a, b)| (a.clone(), b.clone()))
            .collect()
    };
    while by_path("/hook").len() < 2 || by_path("/slack").len() < 2 || by_path("/jira/rest/api/2/issue").is_empty() {
        assert!(started.elapsed() < Duration::from_secs(10), "notifications missing: {:?}", received.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hook = by_path("/hook");
    assert_eq!(hook[0].1["version"], "4");
    assert_eq!(hook[0].1["status"], "firing");
    assert_eq!(hook[0].1["receiver"], "oncall");
    assert_eq!(hook[0].1["groupLabels"]["alertname"], "PaymentFailuresHigh");
    assert_eq!(hook[0].1["commonLabels"]["severity"], "page");
    assert_eq!(hook[0].1["alerts"][0]["labels"]["merchant_id"], "1");
    assert_eq!(hook[0].1["alerts"][0]["annotations"]["summary"], "merchant 1 failed 0.75");
    assert_eq!(hook[0].1["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(hook[1].1["status"], "resolved");
    assert_eq!(hook[1].1["alerts"][0]["endsAt"], "2026-01-01T00:02:00.000Z");
    assert_eq!(hook[1].1["alerts"][0]["fingerprint"], hook[0].1["alerts"][0]["fingerprint"]);
    let slack = by_path("/slack");
    let text = slack[0].1["text"].as_str().unwrap();
    assert!(text.starts_with("[FIRING:1] PaymentFailuresHigh"), "{text}");
    assert!(text.contains("merchant_id=1") && text.contains("merchant 1 failed 0.75"), "{text}");
    assert!(slack[1].1["text"].as_str().unwrap().starts_with("[RESOLVED:1]"), "{slack:?}");
    let jira = by_path("/jira/rest/api/2/issue");
    assert_eq!(jira.len(), 1, "a resolved group opens no issue");
    assert_eq!(jira[0].0, "Bearer weir-stream");
    let fields = &jira[0].1["fields"];
    assert_eq!(fields["project"]["key"], "OPS");
    assert_eq!(fields["issuetype"]["name"], "Bug");
    assert_eq!(fields["summary"], "merchant 1 failed 0.75");
}

/// Polls `check` every 50 ms until it gives something, for at most `limit`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Weir's alerts in a real Prometheus Alertmanager: its grouping puts two merchants' alerts in
/// one notification, its silence holds back a third (that Weir sent: silences are
/// Alertmanager's there), a resolved alert reaches its receiver, and an Alertmanager that lost
/// its alerts (kill -9) has the firing one again from Weir's resends, and again from a stream
/// engine restored from its checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_a_real_alertmanager_whose_grouping_and_silences_act_on_them() {
    let s = setup(1).await;
    let (addr, received) = receiver().await;
    let mut am = weir_e2e::alertmanager::Alertmanager::start(&format!(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 300ms\n  group_interval: 500ms\n  \
         repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{addr}/am\n"
    ))
    .await;
    let silence = am.silence(&[("merchant_id", "3")], "merchant 3 is migrating").await;
    let config = Arc::new(s.alert_config(&format!(
            "rules:\n  - alert: PaymentFailuresHigh\n    pipeline: p\n    expr: \"failed / payments > 0.5\"\n    \
             labels: {{severity: page}}\n    annotations: {{summary: \"merchant {{{{ $labels.merchant_id }}}} failing\"}}\n\
             receivers:\n  - {{name: am, alertmanager: {{urls: [\"{}\"], resend_every: 500ms}}}}\n\
             external_url: \"https://weir.example.com/\"\n",
            am.url()
    )));
    // Windows close only as events move the watermark, never with the clock.
    let p = s.pipeline(&format!("{PER_MINUTE}watermark: {{max_out_of_orderness: 0s, idle_timeout: 1h}}\n"));
    let engine = |notifier: Notifier| s.engine(&p, RuleSet::for_pipeline(&p, config.clone(), Some(notifier)));
    let mut engine_a = engine(Notifier::start(Retry::default())).await;
    let hook = || -> Vec<Json> {
        received.lock().unwrap().iter().filter(|(path, _, _)| path == "/am").map(|(_, _, b)| b.clone()).collect()
    };
    let merchants = |n: &Json| -> Vec<(String, String)> {
        let mut m: Vec<(String, String)> = n["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (a["labels"]["merchant_id"].as_str().unwrap().to_string(), a["status"].as_str().unwrap().to_string())
            })
            .collect();
        m.sort();
        m
    };

    // Minute 0: merchants 1, 2 and 3 fail 3 of 4 payments, 4 fails none; a payment of minute 1
    // closes minute 0.
    let mut payments = Vec::new();
    for m in 1..=4 {
        for i in 0..4 {
            payments.push(Payment {
                id: m * 100 + i,
                merchant: m,
                cents: 100,
                failed: m < 4 && i < 3,
                at: T0 + i * 1000,
            });
        }
    }
    payments.push(Payment { id: 1_000, merchant: 4, cents: 100, failed: false, at: T0 + 60_000 });
    s.produce(&payments).await;
    engine_a.drain().await.unwrap();
    let first =
        eventually("Alertmanager's first notification", Duration::from_secs(20), || async { hook().first().cloned() })
            .await;
    let firing = |m: &str| (m.to_string(), "firing".to_string());
    assert_eq!(merchants(&first), vec![firing("1"), firing("2")], "one group, without the silenced merchant: {first}");
    assert_eq!(first["groupLabels"]["alertname"], "PaymentFailuresHigh");
    assert_eq!(first["commonLabels"]["severity"], "page");
    assert_eq!(first["commonAnnotations"], Json::Object(Default::default()), "the summaries differ");
    let alert = &first["alerts"][0];
    assert_eq!(alert["annotations"]["summary"], "merchant 1 failing");
    assert_eq!(alert["startsAt"], "2026-01-01T00:01:00Z", "fired at the end of minute 0, in event time");
    assert_eq!(alert["generatorURL"], "https://weir.example.com/#/streams");
    let silenced = am.alerts("merchant_id=\"3\"").await;
    assert_eq!(silenced.len(), 1, "{silenced:?}");
    assert_eq!(silenced[0]["status"]["state"], "suppressed");
    assert_eq!(silenced[0]["status"]["silencedBy"], serde_json::json!([silence]));

    // Minute 1: merchant 1 recovers, 2 still fails, 3 has no payment; minute 2 closes it.
    let mut payments = Vec::new();
    for i in 0..4 {
        payments.push(Payment { id: 2_000 + i, merchant: 1, cents: 100, failed: false, at: T0 + 60_000 + i * 1000 });
        payments.push(Payment { id: 2_100 + i, merchant: 2, cents: 100, failed: i < 3, at: T0 + 60_000 + i * 1000 });
    }
    payments.push(Payment { id: 3_000, merchant: 4, cents: 100, failed: false, at: T0 + 120_000 });
    s.produce(&payments).await;
    engine_a.drain().await.unwrap();
    let resolved = eventually("merchant 1 resolved at the receiver", Duration::from_secs(20), || async {
        hook().into_iter().find(|n| merchants(n).contains(&("1".to_string(), "resolved".to_string())))
    })
    .await;
    assert_eq!(merchants(&resolved), vec![("1".into(), "resolved".into()), firing("2")], "{resolved}");
    let one = resolved["alerts"].as_array().unwrap().iter().find(|a| a["labels"]["merchant_id"] == "1").unwrap();
    assert_eq!(one["endsAt"], "2026-01-01T00:02:00Z", "resolved at the end of minute 1");
    // Firing: ends four resends ahead of the wall clock, so it resolves if Weir goes quiet.
    let two = am.alerts("merchant_id=\"2\"").await;
    assert_eq!(two[0]["status"]["state"], "active");
    let ends = humantime::parse_rfc3339_weak(two[0]["endsAt"].as_str().unwrap()).unwrap();
    let ahead = ends.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    assert!(ahead <= Duration::from_secs(3), "endsAt {:?} is {ahead:?} ahead, not about 4 x 500 ms", two[0]["endsAt"]);

    // Alertmanager crashes: its alerts are gone until Weir's next resend brings merchant 2 back.
    am.crash_and_restart().await;
    let relearned = eventually("merchant 2 resent", Duration::from_secs(10), || async {
        let alerts = am.alerts("").await;
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    let active: Vec<&str> = relearned
        .iter()
        .filter(|a| a["status"]["state"] == "active")
        .map(|a| a["labels"]["merchant_id"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["2"], "only what still fires: {relearned:?}");

    // Weir restarts from its checkpoint with no new event while Alertmanager crashes again: the
    // restored engine announces what fires.
    drop(engine_a);
    am.crash_and_restart().await;
    let _engine_b = engine(Notifier::start(Retry::default())).await;
    let relearned = eventually("merchant 2 announced by the restored engine", Duration::from_secs(10), || async {
        let alerts = am.alerts("merchant_id=\"2\"").await;
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    assert_eq!(relearned[0]["status"]["state"], "active");
    assert_eq!(relearned[0]["startsAt"], "2026-01-01T00:01:00.000Z");
}

/// `PER_MINUTE` in SQL.
const PER_MINUTE_SQL: &str = "-- payments per merchant and minute\nCREATE PIPELINE twin WITH (idle_timeout = '300ms')\n\
    AS SELECT merchant_id,\n  COUNT(*) AS payments,\n  SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,\n  \
    SUM(amount) AS amount,\n  APPROX_PERCENTILE_CONT(amount, 0.95) AS p95_amount,\n  APPROX_DISTINCT(id) AS ids\n\
    FROM \"shop.shop.payments\"\nGROUP BY merchant_id, TUMBLE(_source_ts_ms, INTERVAL '1' MINUTE);\n";

#[tokio::test]
async fn a_sql_pipeline_gives_the_results_of_its_yaml_twin() {
    let s = setup(1).await;
    let yaml = s.pipeline(&format!("{PER_MINUTE}watermark: {{idle_timeout: 300ms}}\n"));
    let path = s.dir.path().join("twin.sql");
    std::fs::write(&path, PER_MINUTE_SQL).unwrap();
    let sql = pipeline::load_file(&path).unwrap();
    assert_ne!(yaml.output_topic, sql.output_topic);
    let payments: Vec<Payment> = (0..2_000)
        .map(|i| Payment { id: i % 700, merchant: i % 5, cents: 100 + i % 97, failed: i % 3 == 0, at: T0 + i * 150 })
        .collect();
    s.produce(&payments).await;
    for p in [&yaml, &sql] {
        let mut engine = s.engine(p, RuleSet::empty()).await;
        engine.drain().await.unwrap();
        drain_idle(&mut engine, Duration::from_millis(300)).await;
        assert_eq!(engine.stats().aggregated, 2_000, "{}", p.id);
    }
    // Each result names its pipeline; the rest must be equal.
    let (mut from_yaml, mut from_sql) = (s.results(&yaml).await, s.results(&sql).await);
    for (results, p) in [(&mut from_yaml, &yaml), (&mut from_sql, &sql)] {
        for r in results.values_mut() {
            assert_eq!(r.as_object_mut().unwrap().remove("pipeline"), Some(Json::String(p.id.clone())));
        }
    }
    // 2,000 payments 150 ms apart: 5 minutes, 5 merchants.
    assert_eq!(from_yaml.len(), 25, "{from_yaml:?}");
    assert!(from_yaml.values().all(|r| r["final"] == true));
    assert_eq!(from_sql, from_yaml);
}

#[tokio::test]
async fn a_changed_pipeline_starts_afresh_at_its_checkpoint() {
    let s = setup(3).await;
    let payments: Vec<Payment> =
        (0..2_000).map(|i| Payment { id: i, merchant: i % 7, cents: 100, failed: false, at: T0 + i * 100 }).collect();
    s.produce(&payments[..1_000]).await;
    let before = s.pipeline(&format!("{PER_MINUTE}watermark: {{idle_timeout: 300ms}}\n"));
    s.engine(&before, RuleSet::empty()).await.drain().await.unwrap();
    // The file changes (one more aggregate): the old state cannot be used, reading resumes after
    // what the old definition consumed, and new windows are complete.
    s.produce(&payments[1_000..]).await;
    let after = s.pipeline(&format!(
        "{PER_MINUTE}  - {{name: biggest, fn: max, expr: amount}}\nwatermark: {{idle_timeout: 300ms}}\n"
    ));
    let mut engine = s.engine(&after, RuleSet::empty()).await;
    engine.drain().await.unwrap();
    drain_idle(&mut engine, Duration::from_millis(300)).await;
    assert_eq!(engine.stats().aggregated, 1_000);
    // Events 1,000.. are at 100 s.. : minute 2 (120 s ..) onwards holds only new events.
    let r = s.results(&after).await;
    let minute_2: i64 = (0..7).map(|m| r[&(m, minute(2))]["payments"].as_i64().unwrap()).sum();
    assert_eq!(minute_2, 600);
    assert_eq!(r[&(0, minute(2))]["biggest"], 1.0);
}

#[tokio::test]
async fn plain_avro_events_in_session_windows() {
    let s = setup(1).await;
    let topic = "app.clicks";
    s.bus.create_topic(topic, 1).await.unwrap();
    let value_schema = weir_schemas::connect::ConnectSchema::struct_of(
        "app.clicks.Value",
        vec![
            Field::new("user", schema::string()),
            Field::new("page", schema::string()),
            Field::new("at", schema::int64()),
            Field::new("referrer", schema::string().optional()),
        ],
    );
    let avro = AvroSchema::new(value_schema).unwrap();
    let clicks =
        [("a", "home", 0), ("b", "home", 5_000), ("a", "cart", 10_000), ("a", "cart", 38_000), ("a", "pay", 200_000)];
    let mut records = Vec::new();
    for (user, page, at) in clicks {
        let v = Value::Struct(vec![user.into(), page.into(), Value::Int64(T0 + at), Value::Null]);
        records.push(Record::keyed(user, s.serializer.serialize(topic, false, &avro, &v).await.unwrap()));
    }
    records.push(Record::keyed("x", "not avro"));
    s.bus.producer().await.unwrap().send(topic, records).await.unwrap();
    let p = s.pipeline(
        "source: {topic: app.clicks, format: avro}\nkey: user\nevent_time: at\nwindow: {session: {gap: 30s}}\n\
         aggregates:\n  - {name: clicks, fn: count}\n  - {name: pages, fn: count_distinct, expr: page}\n  \
         - {name: referred, fn: count, expr: referrer}\nwatermark: {max_out_of_orderness: 0s}\n",
    );
    let mut engine = s.engine(&p, RuleSet::empty()).await;
    engine.drain().await.unwrap();
    let results: Vec<Json> = s.read(&p.output_topic).await.into_iter().map(|(_, v)| v).collect();
    let mut got: Vec<(String, String, String, i64, i64, i64)> = results
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap().to_string();
            let n = |k: &str| r[k].as_i64().unwrap();
            (text("user"), text("window_start"), text("window_end"), n("clicks"), n("pages"), n("referred"))
        })
        .collect();
    let at = |ms: i64| {
        humantime::format_rfc3339(std::time::UNIX_EPOCH + Duration::from_millis((T0 + ms) as u64)).to_string()
    };
    got.sort();
    // a: 0, 10 s and 38 s chain into one session (each within 30 s of the last); the click at
    // 200 s opens another, still open.
    assert_eq!(got, vec![("a".into(), at(0), at(68_000), 3, 2, 0), ("b".into(), at(5_000), at(35_000), 1, 1, 0)]);
    let dlq = s.read("app.clicks.dlq").await;
    assert_eq!(dlq.len(), 1);
    assert!(dlq[0].0["weir.dlq.reason"].contains("Confluent wire format"));
}

/// Minute `m`'s payments of merchants `1..=last`: merchant `n` takes 10 + n payments of 1.00, one
/// a second from the minute's start.
fn merchants_in_minute(last: i64, m: i64) -> Vec<Payment> {
    let mut out = Vec::new();
    for merchant in 1..=last {
        for k in 0..10 + merchant {
            let id = m * 1000 + merchant * 100 + k;
            out.push(Payment { id, merchant, cents: 100, failed: false, at: T0 + m * 60_000 + k * 1000 });
        }
    }
    out
}

/// Payments per city: each payment gets its merchant's city from the merchants table's
/// changelog, as the table stands when the payment is processed.
const PER_CITY: &str = "source: {topic: shop.shop.payments}\nkey: city\nwindow: {tumbling: 1m}\n\
    aggregates:\n  - {name: payments, fn: count}\n  - {name: amount, fn: sum, expr: amount}\n\
    joins:\n  - {topic: shop.shop.merchants, key: id, on: merchant_id, columns: [city]}\n\
    watermark: {idle_timeout: 300ms}\n";

/// `PER_CITY` in SQL, with a LEFT JOIN: payments of unknown merchants count under a null city.
const PER_CITY_LEFT_SQL: &str = "CREATE PIPELINE per_city_left WITH (idle_timeout = '300ms') AS\n\
    SELECT m.city, COUNT(*) AS payments, SUM(p.amount) AS amount\nFROM \"shop.shop.payments\" p\n\
    LEFT JOIN \"shop.shop.merchants\" FOR SYSTEM_TIME AS OF p.proc_time AS m ON p.merchant_id = m.id\n\
    GROUP BY m.city, TUMBLE(p._source_ts_ms, INTERVAL '1' MINUTE)\n";

/// A stream–table join follows the table: an update moves a merchant's later payments to its
/// new city, a delete drops them (inner join) or leaves their city null (left join), and a
/// pipeline restored from its checkpoint has the table back without reading it again.
#[tokio::test]
async fn a_stream_table_join_follows_updates_to_the_table() {
    let s = setup(1).await;
    s.produce_merchants(&[(Op::Create, 1, "Berlin"), (Op::Create, 2, "Paris"), (Op::Create, 3, "Rome")]).await;
    let inner = s.pipeline(PER_CITY);
    let path = s.dir.path().join("per_city_left.sql");
    std::fs::write(&path, PER_CITY_LEFT_SQL).unwrap();
    let left = pipeline::load_file(&path).unwrap();
    // Merchant 4 is in no table.
    let minute_of = |m: i64| merchants_in_minute(4, m);
    let mut engines = vec![s.engine(&inner, RuleSet::empty()).await, s.engine(&left, RuleSet::empty()).await];
    s.produce(&minute_of(0)).await;
    for e in &mut engines {
        e.drain().await.unwrap();
        assert_eq!(e.tables(), vec![(3, 3)], "{}: three merchants read", e.pipeline().id);
    }
    // Merchant 2 moves to Berlin, merchant 3 is deleted; then minute 1's payments.
    s.produce_merchants(&[(Op::Update, 2, "Berlin"), (Op::Delete, 3, "Rome")]).await;
    s.produce(&minute_of(1)).await;
    for e in &mut engines {
        e.drain().await.unwrap();
        assert_eq!(e.tables(), vec![(2, 5)], "{}", e.pipeline().id);
    }
    // Both stop (their last checkpoint holds the table); merchant 1 moves to Oslo meanwhile.
    drop(engines);
    s.produce_merchants(&[(Op::Update, 1, "Oslo")]).await;
    s.produce(&minute_of(2)).await;
    for p in [&inner, &left] {
        let mut e = s.engine(p, RuleSet::empty()).await;
        e.drain().await.unwrap();
        drain_idle(&mut e, Duration::from_millis(300)).await;
        assert_eq!(e.tables(), vec![(2, 1)], "{}: only the change after the checkpoint is read", p.id);
        let unjoined = if p.id == inner.id { 14 * 3 + 13 * 2 } else { 0 };
        assert_eq!(e.stats().unjoined, unjoined, "{}", p.id);
        assert_eq!(e.stats().aggregated, 3 * 50 - unjoined, "{}", p.id);
    }
    let count = |r: &BTreeMap<(String, String), Json>, city: &str, m: i64| {
        r.get(&(city.to_string(), minute(m))).map(|r| r["payments"].as_i64().unwrap())
    };
    let from_inner = s.results_by(&inner, "city").await;
    let from_left = s.results_by(&left, "city").await;
    for r in [&from_inner, &from_left] {
        assert_eq!(count(r, "\"Berlin\"", 0), Some(11));
        assert_eq!(count(r, "\"Paris\"", 0), Some(12));
        assert_eq!(count(r, "\"Rome\"", 0), Some(13));
        assert_eq!(count(r, "\"Berlin\"", 1), Some(11 + 12), "merchant 2 moved to Berlin: {r:?}");
        assert_eq!(count(r, "\"Paris\"", 1), None);
        assert_eq!(count(r, "\"Rome\"", 1), None, "merchant 3 was deleted");
        assert_eq!(count(r, "\"Oslo\"", 2), Some(11), "the update made while the pipeline was down");
        assert_eq!(count(r, "\"Berlin\"", 2), Some(12));
    }
    assert!(from_inner.keys().all(|(city, _)| city != "null"), "{from_inner:?}");
    assert_eq!(count(&from_left, "null", 0), Some(14));
    assert_eq!(count(&from_left, "null", 1), Some(13 + 14));
    assert_eq!(count(&from_left, "null", 2), Some(13 + 14));
    assert!(from_left.values().chain(from_inner.values()).all(|r| r["final"] == true));
}

/// A join on a composite key (merchant and status) into a lake table: each payment finds the
/// row of its merchant *and* status.
#[tokio::test]
async fn a_join_on_two_key_columns() {
    use deltalake::arrow::{
        array::{Int64Array, RecordBatch, StringArray},
        datatypes::{DataType, Field as ArrowField, Schema},
    };
    let s = setup(1).await;
    let schema = Arc::new(Schema::new(vec![
        ArrowField::new("merchant", DataType::Int64, false),
        ArrowField::new("status", DataType::Utf8, false),
        ArrowField::new("label", DataType::Utf8, true),
    ]));
    let rows = [(1, "paid", "m1 paid"), (1, "failed", "m1 failed"), (2, "paid", "m2 paid")];
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(rows.iter().map(|r| Some(r.0)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.1)).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| Some(r.2)).collect::<StringArray>()),
        ],
    )
    .unwrap();
    let url = s.lake.table_url("current.labels").unwrap();
    std::fs::create_dir_all(url.to_file_path().unwrap()).unwrap();
    deltalake::DeltaTable::try_from_url(url).await.unwrap().write(vec![batch]).await.unwrap();
    let path = s.dir.path().join("labels.sql");
    std::fs::write(
        &path,
        "CREATE PIPELINE labels WITH (idle_timeout = '300ms') AS\n\
         SELECT l.label, COUNT(*) AS payments FROM \"shop.shop.payments\" p\n\
         JOIN current.labels l ON p.merchant_id = l.merchant AND p.status = l.status\n\
         GROUP BY l.label, TUMBLE(p._source_ts_ms, INTERVAL '1' MINUTE)\n",
    )
    .unwrap();
    let p = pipeline::load_file(&path).unwrap();
    // Merchants 1 and 2, every third payment failed: 2 × 30 payments, 10 of each failed.
    let payments: Vec<Payment> = (0..60)
        .map(|i| Payment { id: i, merchant: 1 + i % 2, cents: 100, failed: (i / 2) % 3 == 0, at: T0 + i * 500 })
        .collect();
    s.produce(&payments).await;
    let mut engine = s.engine(&p, RuleSet::empty()).await;
    engine.drain().await.unwrap();
    drain_idle(&mut engine, Duration::from_millis(300)).await;
    let r = s.results_by(&p, "label").await;
    let count = |label: &str| r.get(&(format!("{label:?}"), minute(0))).map(|r| r["payments"].as_i64().unwrap());
    assert_eq!((count("m1 paid"), count("m1 failed"), count("m2 paid")), (Some(20), Some(10), Some(20)), "{r:?}");
    assert_eq!(engine.stats().unjoined, 10, "merchant 2's failed payments have no row");
}

/// A lake table (here `current.merchants`) joined as a lookup: each new version committed to
/// it is read again, and events processed after that see its rows.
#[tokio::test]
async fn a_lake_table_join_sees_each_committed_version() {
    use deltalake::arrow::{
        array::{Int64Array, RecordBatch, StringArray},
        datatypes::{DataType, Field as ArrowField, Schema},
    };
    let s = setup(1).await;
    let write = |rows: Vec<(i64, &'static str)>| {
        let lake = s.lake.clone();
        async move {
            let schema = Arc::new(Schema::new(vec![
                ArrowField::new("id", DataType::Int64, false),
                ArrowField::new("city", DataType::Utf8, true),
            ]));
            let ids: Int64Array = rows.iter().map(|r| Some(r.0)).collect();
            let cities: StringArray = rows.iter().map(|r| Some(r.1)).collect();
            let batch = RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(cities)]).unwrap();
            let url = lake.table_url("current.merchants").unwrap();
            std::fs::create_dir_all(url.to_file_path().unwrap()).unwrap();
            deltalake::DeltaTable::try_from_url(url)
                .await
                .unwrap()
                .write(vec![batch])
                .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
                .await
                .unwrap();
        }
    };
    write(vec![(1, "lyon"), (2, "oslo")]).await;
    let p = s.pipeline(
        "source: {topic: shop.shop.payments}\nkey: city\nwindow: {tumbling: 1m}\naggregates: [{name: payments, fn: count}]\n\
         joins:\n  - {table: current.merchants, key: id, on: merchant_id, columns: [city], kind: left}\n\
         watermark: {idle_timeout: 300ms}\n",
    );
    // Merchant 3 is in no version of the table.
    let minute_of = |m: i64| merchants_in_minute(3, m);
    let mut engine = s.engine(&p, RuleSet::empty()).await;
    s.produce(&minute_of(0)).await;
    engine.drain().await.unwrap();
    assert_eq!(engine.tables(), vec![(2, 2)], "version 0 read");
    // Version 1: merchant 2 moves to Lyon.
    write(vec![(1, "lyon"), (2, "lyon")]).await;
    s.produce(&minute_of(1)).await;
    engine.drain().await.unwrap();
    drain_idle(&mut engine, Duration::from_millis(300)).await;
    assert_eq!(engine.tables(), vec![(2, 4)], "version 1 read as a whole");
    let r = s.results_by(&p, "city").await;
    let count = |city: &str, m: i64| r.get(&(city.to_string(), minute(m))).map(|r| r["payments"].as_i64().unwrap());
    assert_eq!((count("\"lyon\"", 0), count("\"oslo\"", 0), count("null", 0)), (Some(11), Some(12), Some(13)), "{r:?}");
    assert_eq!((count("\"lyon\"", 1), count("\"oslo\"", 1), count("null", 1)), (Some(23), None, Some(13)), "{r:?}");
}

#[tokio::test]
async fn a_scale_out_pipeline_is_split_between_members_and_survives_one_dying() {
    use weir_stream::scale::{Member, by_key_topic};
    let s = setup(4).await;
    // Payments are keyed by their id; the pipeline groups by merchant: repartitioned by it.
    let p = s.pipeline(&format!("{PER_MINUTE}watermark: {{idle_timeout: 300ms}}\n"));
    let payments: Vec<Payment> = (0..4_000)
        .map(|i| Payment { id: i, merchant: i % 11, cents: 100 + i % 13, failed: i % 5 == 0, at: T0 + i * 50 })
        .collect();
    let expected = per_minute(&payments);
    let config = EngineConfig {
        checkpoint_interval: Duration::from_secs(3600),
        poll_interval: Duration::from_millis(20),
        table_refresh: Duration::ZERO,
    };
    let member = || async {
        let rules: weir_stream::scale::RulesFactory = Arc::new(RuleSet::empty);
        let (bus, registry) = (s.bus.clone(), Some(s.registry.clone()));
        Member::open(p.clone(), config.clone(), bus, registry, s.lake.clone(), rules).await.unwrap()
    };
    let (mut a, mut b) = (member().await, member().await);
    let events = |a: &Member, b: &Member| a.stats().events + b.stats().events;
    let both_until = async |a: &mut Member, b: &mut Member, n: u64| {
        let started = std::time::Instant::now();
        while events(a, b) < n {
            assert!(started.elapsed() < Duration::from_secs(30), "stuck at {} of {n} events", events(a, b));
            a.poll_once().await.unwrap();
            b.poll_once().await.unwrap();
        }
    };
    s.produce(&payments[..2_000]).await;
    both_until(&mut a, &mut b, 2_000).await;
    // The group split the by-key topic's partitions between the two.
    let (held_a, held_b) = (a.shards(), b.shards());
    assert!(!held_a.is_empty() && !held_b.is_empty(), "a holds {held_a:?}, b {held_b:?}");
    assert_eq!(held_a.len() + held_b.len(), 4, "a holds {held_a:?}, b {held_b:?}");
    a.checkpoint().await.unwrap();
    b.checkpoint().await.unwrap();
    let b_checkpointed = b.stats().events;
    // B takes more events into its windows, then dies without a checkpoint.
    s.produce(&payments[2_000..3_000]).await;
    both_until(&mut a, &mut b, 3_000).await;
    let b_took = b.stats().events;
    assert!(b_took > b_checkpointed, "b took events after its checkpoint");
    drop(b);
    // A gains B's partitions, restores their checkpoints and reads again what B had not
    // checkpointed; nothing is counted twice.
    s.produce(&payments[3_000..]).await;
    a.drain().await.unwrap();
    assert_eq!(a.shards(), vec![0, 1, 2, 3]);
    assert_eq!(a.stats().events, 4_000, "every event exactly once (b had taken {b_took})");
    // A repartitioner that died between sending and committing sends records again: skipped.
    let mut again = Vec::new();
    let mut reader = s.bus.consumer(ConsumerConfig::new("copy")).await.unwrap();
    reader.assign(&[TopicPartition::new(by_key_topic(&p.id), 0)]).await.unwrap();
    for m in reader.poll(Duration::from_millis(500)).await.unwrap().into_iter().take(100) {
        again.push(Record { key: m.key, value: m.value, headers: m.headers, partition: Some(0), timestamp_ms: None });
    }
    assert!(!again.is_empty());
    s.bus.producer().await.unwrap().send(&by_key_topic(&p.id), again).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    a.drain().await.unwrap();
    assert_eq!(a.stats().events, 4_000, "records sent again are skipped");
    // Consumer-lag views see the pipeline at the end of its by-key topic.
    let positions = weir_stream::engine::positions(&s.lake).await.unwrap();
    let at = positions.iter().find(|x| x.pipeline == p.id).expect("the scale-out pipeline's position");
    assert_eq!(at.topic, by_key_topic(&p.id));
    assert_eq!(at.next.values().copied().collect::<Vec<_>>(), s.bus.end_offsets(&at.topic).await.unwrap());
    assert_eq!(at.stats.events, 4_000);
    assert_eq!(s.payments_per_minute(&p).await, expected);
}

/// Orders (JSON, 2 partitions) joined with their shipments (another topic) shipped within 10
/// minutes after the order, counted per carrier and minute of the order. Order `i` has no
/// shipment (`i % 4 == 0`), one 5 minutes after (`1`), two at 2 and 9 minutes (`2`), or two
/// outside the interval, 1 minute before and 15 after (`3`). The even orders' shipments arrive
/// before them, the odd ones' a slice of 50 orders later (within the 45 minutes of
/// out-of-orderness); the pipelines stop half-way, holding events and shipment rows, and resume
/// from their checkpoints.
#[tokio::test]
async fn an_interval_join_counts_each_order_with_its_shipments_within_the_interval() {
    let s = setup(1).await;
    let (orders_topic, shipments_topic) = ("shop.orders", "shop.shipments");
    s.bus.create_topic(orders_topic, 2).await.unwrap();
    s.bus.create_topic(shipments_topic, 2).await.unwrap();
    let yaml = |id: &str, kind: &str, key: &str| {
        format!(
            "id: {id}\nsource: {{topic: {orders_topic}, format: json, fields: {{order_id: int, city: string, amount: float, at: timestamp}}}}\n\
             event_time: at\nkey: {key}\nwindow: {{tumbling: 1m}}\n\
             interval_join:\n  source: {{topic: {shipments_topic}, format: json, fields: {{order_id: int, carrier: string, shipped_at: timestamp}}}}\n  \
             time: shipped_at\n  key: order_id\n  on: order_id\n  between: {{before: 0s, after: 10m}}\n  columns: [carrier, shipped_at]\n  kind: {kind}\n\
             aggregates:\n  - {{name: shipments, fn: count}}\n  - {{name: orders, fn: count_distinct, expr: order_id}}\n  \
             - {{name: amount, fn: sum, expr: amount}}\n  - {{name: latest, fn: max, expr: \"CAST(shipped_at AS BIGINT)\"}}\n\
             watermark: {{max_out_of_orderness: 45m, idle_timeout: 300ms}}\n"
        )
    };
    let inner = s.pipeline(&yaml("shipped", "inner", "carrier"));
    let left = s.pipeline(&yaml("shipped_or_not", "left", "city"));
    let order_at = |i: i64| T0 + i * 20_000;
    let amount = |i: i64| (i % 7) as f64 + 0.25;
    let shipments = |i: i64| -> Vec<(i64, &str)> {
        let at = order_at(i);
        match i % 4 {
            0 => vec![],
            1 => vec![(at + 300_000, "dhl")],
            2 => vec![(at + 120_000, "dhl"), (at + 540_000, "ups")],
            _ => vec![(at - 60_000, "dhl"), (at + 900_000, "ups")],
        }
    };
    let producer = s.bus.producer().await.unwrap();
    let send = |topic: &'static str, rows: Vec<(i64, Json)>| {
        let producer = &producer;
        async move {
            let records: Vec<Record> = rows
                .into_iter()
                .map(|(k, v)| Record {
                    key: Some(k.to_string().into()),
                    value: Some(serde_json::to_vec(&v).unwrap().into()),
                    ..Record::default()
                })
                .collect();
            producer.send(topic, records).await.unwrap();
        }
    };
    // Orders 0..200 in four slices; each slice's shipments come half before, half after it.
    let orders = |from: i64, to: i64| -> Vec<(i64, Json)> {
        (from..to)
            .map(|i| {
                let city = ["lyon", "oslo"][(i % 2) as usize];
                (i, serde_json::json!({"order_id": i, "city": city, "amount": amount(i), "at": order_at(i)}))
            })
            .collect()
    };
    let shipped = |from: i64, to: i64, early: bool| -> Vec<(i64, Json)> {
        (from..to)
            .filter(|i| (i % 2 == 0) == early)
            .flat_map(|i| {
                shipments(i).into_iter().map(move |(at, carrier)| {
                    (i, serde_json::json!({"order_id": i, "carrier": carrier, "shipped_at": at}))
                })
            })
            .collect()
    };
    let mut engines = vec![s.engine(&inner, RuleSet::empty()).await, s.engine(&left, RuleSet::empty()).await];
    let slices = [(0, 50), (50, 100), (100, 150), (150, 200)];
    for (n, &(from, to)) in slices.iter().enumerate() {
        // The odd orders' shipments come a slice late: up to 41 minutes out of order.
        let mut sends = vec![(shipments_topic, shipped(from, to, true)), (orders_topic, orders(from, to))];
        if n > 0 {
            sends.push((shipments_topic, shipped(slices[n - 1].0, slices[n - 1].1, false)));
        }
        for (topic, rows) in sends {
            send(topic, rows).await;
            for e in &mut engines {
                e.drain().await.unwrap();
            }
        }
        if n == 1 {
            // Both stop with events held and shipments kept; their checkpoints hold them.
            let state: Vec<(usize, usize)> = engines.iter().map(|e| e.interval().unwrap()).collect();
            assert!(state.iter().all(|&(held, kept)| held > 0 && kept > 0), "{state:?}");
            drop(engines);
            engines = vec![s.engine(&inner, RuleSet::empty()).await, s.engine(&left, RuleSet::empty()).await];
            let restored: Vec<(usize, usize)> = engines.iter().map(|e| e.interval().unwrap()).collect();
            assert_eq!(restored, state);
        }
    }
    send(shipments_topic, shipped(150, 200, false)).await;
    for e in &mut engines {
        e.drain().await.unwrap();
        drain_idle(e, Duration::from_millis(300)).await;
    }
    let [inner_engine, left_engine] = <[Engine; 2]>::try_from(engines).ok().unwrap();
    assert_eq!(
        inner_engine.stats().unjoined,
        100,
        "orders 4k and 4k+3 have no shipment within 10 minutes: {:?} {:?}",
        inner_engine.stats(),
        inner_engine.interval()
    );
    assert_eq!(inner_engine.stats().aggregated, 50 + 2 * 50);
    assert_eq!(left_engine.stats().unjoined, 0);
    assert_eq!(left_engine.stats().aggregated, 100 + 50 + 2 * 50, "a left join keeps unmatched orders once");

    // Expected: per (carrier, minute of the order) the matching shipments, their orders and the
    // orders' amounts (once per match, as the joined rows carry them).
    let mut expected: BTreeMap<(String, String), (i64, i64, f64, i64)> = BTreeMap::new();
    let mut per_city: BTreeMap<(String, String), i64> = BTreeMap::new();
    for i in 0..200 {
        let m = minute((order_at(i) - T0) / 60_000);
        let matches: Vec<(i64, &str)> =
            shipments(i).into_iter().filter(|(at, _)| *at >= order_at(i) && *at <= order_at(i) + 600_000).collect();
        *per_city.entry((format!("\"{}\"", ["lyon", "oslo"][(i % 2) as usize]), m.clone())).or_default() +=
            matches.len().max(1) as i64;
        let mut carriers: Vec<&str> = matches.iter().map(|(_, c)| *c).collect();
        carriers.dedup();
        for (at, carrier) in &matches {
            let e = expected.entry((format!("\"{carrier}\""), m.clone())).or_default();
            e.0 += 1;
            e.2 += amount(i);
            e.3 = e.3.max(*at);
        }
        for carrier in carriers {
            expected.entry((format!("\"{carrier}\""), m.clone())).or_default().1 += 1;
        }
    }
    let got = s.results_by(&inner, "carrier").await;
    assert_eq!(got.len(), expected.len(), "{got:?}");
    for (k, (shipments, orders, amount, latest)) in &expected {
        let r = &got[k];
        assert_eq!(r["shipments"], *shipments, "{k:?}: {r}");
        assert_eq!(r["orders"], *orders, "{k:?}: {r}");
        assert!((r["amount"].as_f64().unwrap() - amount).abs() < 1e-9, "{k:?}: {r}");
        assert_eq!(r["latest"].as_f64().unwrap() as i64, *latest, "{k:?}: {r}");
        assert_eq!(r["final"], true);
    }
    let got = s.results_by(&left, "city").await;
    assert_eq!(got.len(), per_city.len());
    for (k, rows) in &per_city {
        assert_eq!(got[k]["shipments"], *rows, "{k:?}: {}", got[k]);
    }
}
