//! `weir demo`: `weir up` (every role in one process on the configured, by default embedded, bus,
//! lake and metadata DB) over the example DAGs, pipeline and alert this binary carries, fed by a
//! built-in food-delivery workload: an orders service, a payments service,
//! a delivery service and a ratings service whose tables' changes arrive as Debezium change
//! events. The lake writes them into `raw.*`; the `orders_daily` DAG joins them into
//! `views.order_facts`; the `payment_failures` pipeline counts payments per method and minute and
//! its alert fires during the card outages the workload stages; the serving API answers SQL over
//! all of it. Prints the URLs, then runs until `--duration` or Ctrl-C.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use clap::Args;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::watch;
use weir_bus::{Bus, BusError, Record};
use weir_flow::{dag, rules::RunState, runs, store::Store};
use weir_lake::{Lake, writer::table_name};
use weir_notify::Receiver;
use weir_schemas::{
    avro::AvroSchema,
    connect::{Field, Value, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    registry::SchemaRegistry,
    serializer::AvroSerializer,
};

use crate::{
    config::Config,
    status::Console,
    up::{self, Platform, UpArgs},
};

/// `weir demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Stop after this long, Ctrl-C, and where to listen: as for `weir up`.
    #[command(flatten)]
    pub up: UpArgs,
    /// New orders per second.
    #[arg(long, default_value_t = 5.0)]
    orders_per_second: f64,
    /// A folder with `dags/`, `pipelines/` and `alerts/` to use instead of the example files
    /// this binary carries (written to `./weir-data/examples`).
    #[arg(long)]
    examples: Option<PathBuf>,
    /// When to run `orders_daily` for today (at the earliest: it waits for all four change logs).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    dag_after: Duration,
    /// When the first card outage starts (20 s long, then every 2 minutes).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    outage_after: Duration,
}

/// The example files this binary carries: (folder, file, text).
const EXAMPLES: [(&str, &str, &str); 4] = [
    ("dags", "orders_daily.yaml", include_str!("../../examples/dags/orders_daily.yaml")),
    ("dags", "canary.yaml", include_str!("../../examples/dags/canary.yaml")),
    ("pipelines", "payment_failures.yaml", include_str!("../../examples/pipelines/payment_failures.yaml")),
    ("alerts", "payments.yaml", include_str!("../../examples/alerts/payments.yaml")),
];

/// Writes the carried example files under `dir` (replacing older copies).
fn write_examples(dir: &Path) -> anyhow::Result<()> {
    for (folder, file, text) in EXAMPLES {
        let folder = dir.join(folder);
        std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
        let path = folder.join(file);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const PREFIX: &str = "food.delivery";
const TABLES: [&str; 4] = ["orders", "payments", "deliveries", "ratings"];

fn topic(table: &str) -> String {
    format!("{PREFIX}.{table}")
}

/// What the demo counts, for its summary.
#[derive(Default)]
struct Counts {
    orders: AtomicU64,
    payments: AtomicU64,
    failed: AtomicU64,
    alerts: AtomicU64,
}

pub async fn run(config: &Config, args: DemoArgs) -> anyhow::Result<()> {
    let examples = match &args.examples {
        Some(dir) => {
            for sub in ["dags", "pipelines", "alerts"] {
                let sub = dir.join(sub);
                anyhow::ensure!(
                    sub.is_dir(),
                    "{} is missing: pass --examples a folder with dags/, pipelines/ and alerts/, or leave it out to use the examples weir carries",
                    sub.display()
                );
            }
            dir.clone()
        }
        None => {
            let dir = PathBuf::from("./weir-data/examples");
            write_examples(&dir)?;
            dir
        }
    };
    // The demo's own wiring of `weir up`: its examples, and commits every 5 s so that the
    // first minute shows tables, runs and alerts.
    let mut config = config.clone();
    config.flow.dags_dir = examples.join("dags");
    config.stream.pipelines_dir = examples.join("pipelines");
    config.stream.alerts_dir = examples.join("alerts");
    config.lake.flush_interval = Duration::from_secs(5);
    let platform = Platform::open(config).await?;
    for t in TABLES {
        match platform.bus.create_topic(&topic(t), 2).await {
            Ok(()) | Err(BusError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let counts = Arc::new(Counts::default());
    let console = Console::default();
    let hook = console_receiver(counts.clone(), console.clone()).await?;
    let receiver = Arc::new(Receiver { name: "demo".into(), webhook: Some(hook), ..Receiver::default() });
    // The scheduler starts once the four change logs have their first commits, so that the
    // DAG's runs find their tables.
    let (gate_tx, gate) = watch::channel(false);
    let options = up::Options {
        listen: args.up.listen,
        pg_listen: args.up.pg_listen,
        alert_receiver: Some(receiver),
        scheduler_gate: Some(gate),
    };
    let started = Instant::now();
    let running = up::start(&platform, options).await?;
    let stop = running.stop_signal();

    // The four services' changes.
    let outages = Outages {
        first: started + args.outage_after,
        every: Duration::from_secs(120),
        length: Duration::from_secs(20),
    };
    let producer = workload(
        platform.bus.clone(),
        platform.registry.clone(),
        args.orders_per_second,
        outages,
        counts.clone(),
        stop.clone(),
    );
    let producer = tokio::spawn(producer);
    let trigger = tokio::spawn(trigger_today(
        platform.store.clone(),
        platform.lake.clone(),
        examples.join("dags"),
        args.dag_after,
        gate_tx,
        console.clone(),
        stop,
    ));

    up::banner("Weir demo", &platform, &running);
    println!(
        "  try         curl -s -H 'Authorization: Bearer {}' -d '{{\"sql\": \"SELECT * FROM serving.payment_failures ORDER BY window_start DESC LIMIT 5\"}}' http://{}/api/v1/query",
        running.session_token.as_deref().unwrap_or("<token>"),
        running.api
    );
    println!("  alerts      printed below as they fire and resolve (also on topic weir.alerts)");
    running.wait(&platform, &console, args.up.duration).await?;
    producer.await??;
    trigger.await??;
    println!(
        "[demo] {:.0} s: {} orders, {} payments ({} failed), {} alert notifications",
        started.elapsed().as_secs_f64(),
        counts.orders.load(Ordering::Relaxed),
        counts.payments.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.alerts.load(Ordering::Relaxed)
    );
    for t in platform.lake.tables().await? {
        println!("[demo] {:<36} version {:>3}  {} file(s)", t.name, t.version, t.files);
    }
    Ok(())
}

/// Once all four change logs have their first commit, opens the scheduler's gate, triggers
/// today's `orders_daily` run and prints its states as they change.
async fn trigger_today(
    store: Store,
    lake: Lake,
    dags_dir: PathBuf,
    after: Duration,
    gate: watch::Sender<bool>,
    console: Console,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut pause = async |d: Duration| -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stop.wait_for(|s| *s) => true,
        }
    };
    if pause(after).await {
        return Ok(());
    }
    loop {
        let tables = lake.tables().await?;
        let have = |t: &str| tables.iter().any(|i| i.name == table_name(&topic(t)));
        if TABLES.iter().all(|t| have(t)) {
            break;
        }
        if pause(Duration::from_secs(1)).await {
            return Ok(());
        }
    }
    let _ = gate.send(true);
    let d = dag::load_file(&dags_dir.join("orders_daily.yaml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    store.upsert_dag(&d).await?;
    let today = Utc::now().with_timezone(&d.timezone).date_naive().and_hms_opt(0, 0, 0).expect("midnight");
    let logical = d.timezone.from_local_datetime(&today).earliest().expect("midnight exists").with_timezone(&Utc);
    let run_id = runs::trigger(&store, &d, Default::default(), Some(logical)).await?;
    console.line(&format!("[demo] triggered orders_daily run {run_id} (today's orders into views.order_facts)"));
    let mut reported = None;
    loop {
        let state = store.run("orders_daily", &run_id).await?.state;
        if reported != Some(state) {
            console.line(&format!("[demo] orders_daily {run_id}: {state}"));
            reported = Some(state);
        }
        if matches!(state, RunState::Success | RunState::Failed) || pause(Duration::from_secs(1)).await {
            return Ok(());
        }
    }
}

/// A webhook on loopback that prints each notification's alerts.
async fn console_receiver(counts: Arc<Counts>, console: Console) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (counts, console) = (counts.clone(), console.clone());
            async move {
                counts.alerts.fetch_add(1, Ordering::Relaxed);
                for a in body["alerts"].as_array().into_iter().flatten() {
                    console.line(&format!(
                        "[alert] {} {} — {}",
                        a["status"].as_str().unwrap_or_default().to_uppercase(),
                        a["labels"]["alertname"].as_str().unwrap_or_default(),
                        a["annotations"]["summary"].as_str().unwrap_or_default()
                    ));
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/alerts", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

/// The services' tables.
fn tables() -> Vec<(&'static str, TableSchemas)> {
    let ts = || schema::int64().named("io.debezium.time.MicroTimestamp").version(1);
    let id = |n: &str| Field::new(n, schema::int64());
    let source = binlog_source_schema(BinlogFlavor::Mariadb);
    let table = |name: &'static str, key: &str, columns: Vec<Field>| {
        (name, TableSchemas::new(&topic(name), columns, vec![id(key)], source.clone()))
    };
    vec![
        table(
            "orders",
            "order_id",
            vec![
                id("order_id"),
                id("customer_id"),
                id("restaurant_id"),
                Field::new("amount", schema::float64()),
                Field::new("created_at", ts()),
            ],
        ),
        table(
            "payments",
            "payment_id",
            vec![
                id("payment_id"),
                id("order_id"),
                Field::new("status", schema::string()),
                Field::new("method", schema::string()),
            ],
        ),
        table(
            "deliveries",
            "delivery_id",
            vec![id("delivery_id"), id("order_id"), id("courier_id"), Field::new("delivered_at", ts())],
        ),
        table("ratings", "rating_id", vec![id("rating_id"), id("order_id"), id("stars")]),
    ]
}

/// When the card provider fails most payments.
#[derive(Clone, Copy)]
struct Outages {
    first: Instant,
    every: Duration,
    length: Duration,
}

impl Outages {
    fn now(&self) -> bool {
        let Some(since) = Instant::now().checked_duration_since(self.first) else { return false };
        Duration::from_nanos((since.as_nanos() % self.every.as_nanos()) as u64) < self.length
    }
}

/// The four services: each order is paid (card, wallet or cash), delivered a little later and
/// sometimes rated. During outages the card provider fails most payments.
async fn workload(
    bus: Arc<dyn Bus>,
    registry: Arc<dyn SchemaRegistry>,
    per_second: f64,
    outages: Outages,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let serializer = AvroSerializer::new(registry);
    let schemas = tables();
    let source_schema = binlog_source_schema(BinlogFlavor::Mariadb);
    let producer = bus.producer().await?;
    let avro: Vec<(AvroSchema, AvroSchema)> = schemas
        .iter()
        .map(|(_, t)| Ok((AvroSchema::new(t.envelope.clone())?, AvroSchema::new(t.key.clone().expect("keyed"))?)))
        .collect::<anyhow::Result<_>>()?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_id = Utc::now().timestamp_millis() * 10; // unique across demo runs on one lake
    let mut pos = 4i64;
    let mut pending_deliveries: Vec<(i64, Instant)> = Vec::new();
    let mut owed = 0.0;
    let mut rng = StdRng::from_rng(&mut rand::rng());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        let now_us = Utc::now().timestamp_micros();
        let outage = outages.now();
        let mut batches: Vec<Vec<Record>> = vec![Vec::new(); 4];
        owed += per_second / 10.0;
        let mut rows: Vec<(usize, i64, Vec<Value>)> = Vec::new();
        while owed >= 1.0 {
            owed -= 1.0;
            next_id += 1;
            let order = next_id;
            rows.push((
                0,
                order,
                vec![
                    Value::Int64(order),
                    Value::Int64(rng.random_range(1..5_000)),
                    Value::Int64(rng.random_range(1..200)),
                    Value::Float64((rng.random_range(800..6_000) as f64) / 100.0),
                    Value::Int64(now_us),
                ],
            ));
            let method = ["card", "card", "card", "wallet", "cash"][rng.random_range(0..5)];
            let fail_p = if method == "card" && outage { 0.6 } else { 0.03 };
            let failed = rng.random_bool(fail_p);
            rows.push((
                1,
                order,
                vec![
                    Value::Int64(order),
                    Value::Int64(order),
                    Value::String(if failed { "failed" } else { "paid" }.into()),
                    Value::String(method.into()),
                ],
            ));
            counts.orders.fetch_add(1, Ordering::Relaxed);
            counts.payments.fetch_add(1, Ordering::Relaxed);
            if failed {
                counts.failed.fetch_add(1, Ordering::Relaxed);
            } else {
                pending_deliveries.push((order, Instant::now() + Duration::from_secs(rng.random_range(2..8))));
            }
        }
        let due: Vec<i64> =
            pending_deliveries.iter().filter(|(_, at)| *at <= Instant::now()).map(|(o, _)| *o).collect();
        pending_deliveries.retain(|(_, at)| *at > Instant::now());
        for order in due {
            rows.push((
                2,
                order,
                vec![
                    Value::Int64(order),
                    Value::Int64(order),
                    Value::Int64(rng.random_range(1..80)),
                    Value::Int64(now_us),
                ],
            ));
            if rng.random_bool(0.4) {
                rows.push((
                    3,
                    order,
                    vec![Value::Int64(order), Value::Int64(order), Value::Int64(rng.random_range(1..=5))],
                ));
            }
        }
        for (table, key, row) in rows {
            pos += 200;
            let (name, t) = &schemas[table];
            let src = BinlogSource {
                flavor: BinlogFlavor::Mariadb,
                name: "food".into(),
                ts_us: now_us,
                snapshot: SnapshotMarker::False,
                db: "delivery".into(),
                table: Some((*name).into()),
                server_id: 1,
                gtid: None,
                file: "mysql-bin.000001".into(),
                pos,
                row: 0,
                thread: None,
                query: None,
            };
            let envelope = t.envelope_value(
                Op::Create,
                Value::Null,
                Value::Struct(row),
                src.to_value(&source_schema),
                None,
                now_us,
            );
            let topic = topic(name);
            let (value_schema, key_schema) = &avro[table];
            let key = serializer.serialize(&topic, true, key_schema, &Value::Struct(vec![Value::Int64(key)])).await?;
            let value = serializer.serialize(&topic, false, value_schema, &envelope).await?;
            batches[table].push(Record::keyed(key, value));
        }
        for (i, records) in batches.into_iter().enumerate() {
            if !records.is_empty() {
                producer.send(&topic(schemas[i].0), records).await?;
            }
        }
    }
}
