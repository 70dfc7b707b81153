//! `weir demo`: every role in one process on the configured (by default embedded) bus, lake and
//! metadata DB, fed by a built-in food-delivery workload: an orders service, a payments service,
//! a delivery service and a ratings service whose tables' changes arrive as Debezium change
//! events. The lake writes them into `raw.*`; the `orders_daily` DAG joins them into
//! `views.order_facts`; the `payment_failures` pipeline counts payments per method and minute and
//! its alert fires during the card outages the workload stages; the serving API answers SQL over
//! all of it. Prints the URLs, then runs until `--duration` or Ctrl-C.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use clap::Args;
use futures::FutureExt as _;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{sync::watch, task::JoinSet};
use weir_bus::{Bus, BusError, Record};
use weir_flow::{dag, rules::RunState, runs, scheduler::Scheduler, store::Store};
use weir_lake::{
    Lake,
    writer::{FlushPolicy, TopicWriter, table_name},
};
use weir_schemas::{
    avro::AvroSchema,
    connect::{Field, Value, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    registry::SchemaRegistry,
    serializer::AvroSerializer,
};
use weir_serving::{
    catalog::Catalog,
    pg,
    realtime::{self, Realtime},
};
use weir_stream::{
    Engine,
    alert::{self, RuleSet},
    notify::{Notifier, Receiver, Retry},
    pipeline, silence,
};

use crate::{config::Config, ingest::registry, telemetry};

/// `weir demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Stop by itself after this long (e.g. `60s`); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// New orders per second.
    #[arg(long, default_value_t = 5.0)]
    orders_per_second: f64,
    /// Where the serving API listens.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Where the PostgreSQL wire listens.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pg_listen: SocketAddr,
    /// The folder with `dags/`, `pipelines/` and `alerts/`.
    #[arg(long, default_value = "examples")]
    examples: PathBuf,
    /// When to run `orders_daily` for today (at the earliest: it waits for all four change logs).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    dag_after: Duration,
    /// When the first card outage starts (20 s long, then every 2 minutes).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    outage_after: Duration,
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
    for sub in ["dags", "pipelines", "alerts"] {
        let dir = args.examples.join(sub);
        anyhow::ensure!(
            dir.is_dir(),
            "{} is missing: run weir demo from the repository root, or pass --examples",
            dir.display()
        );
    }
    let metrics = telemetry::init_metrics()?;
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let registry = registry(config).await?;
    let lake = Lake::new(&config.lake);
    for t in TABLES {
        match bus.create_topic(&topic(t), 2).await {
            Ok(()) | Err(BusError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (stop_tx, stop) = watch::channel(false);
    let until = |mut s: watch::Receiver<bool>| async move {
        let _ = s.wait_for(|s| *s).await;
    };
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();

    // The four services' changes.
    let outages = Outages {
        first: started + args.outage_after,
        every: Duration::from_secs(120),
        length: Duration::from_secs(20),
    };
    tasks.spawn(workload(bus.clone(), registry.clone(), args.orders_per_second, outages, counts.clone(), stop.clone()));

    // The lake: one exactly-once writer per topic, committing every 5 s.
    let policy = FlushPolicy { rows: 100_000, bytes: 64 << 20, age: Duration::from_secs(5) };
    for t in TABLES {
        let topic = topic(t);
        let url = lake.table_url(&table_name(&topic))?;
        let writer = TopicWriter::open(bus.clone(), registry.clone(), &topic, None, url, policy).await?;
        let stop = stop.clone();
        tasks.spawn(async move { Ok(writer.run(until(stop)).await?) });
    }

    // The speed layer, its alerts delivered to the demo's own webhook, which prints them.
    let hook = console_receiver(counts.clone()).await?;
    let (pipelines, errors) = pipeline::load_dir(&args.examples.join("pipelines"));
    let (mut alerts, alert_errors) = alert::load_dir(&args.examples.join("alerts"));
    for e in errors.iter().chain(&alert_errors) {
        tracing::error!("refused: {e}");
    }
    alerts.receivers = vec![Arc::new(Receiver { name: "demo".into(), webhook: Some(hook), slack: None, jira: None })];
    for r in &mut alerts.rules {
        r.receivers.clear();
    }
    let alerts = Arc::new(alerts);
    {
        let (bus, silences, stop) = (bus.clone(), alerts.silences.clone(), stop.clone());
        tasks.spawn(async move { Ok(silence::follow(bus, silences, stop).await?) });
    }
    let notifier = Notifier::start(Retry::default());
    for p in pipelines {
        let rules = RuleSet::for_pipeline(&p, alerts.clone(), Some(notifier.clone()));
        let engine =
            Engine::open(p, config.stream.engine(), bus.clone(), Some(registry.clone()), lake.clone(), rules).await?;
        let stop = stop.clone();
        tasks.spawn(async move {
            engine.run(until(stop)).await?;
            Ok(())
        });
    }

    // Serving.
    let token = format!("demo-{:016x}", rand::rng().random::<u64>());
    let realtime_views = Arc::new(Realtime::new(config.serving.realtime_retention));
    let catalog = Arc::new(Catalog::new(lake.clone(), realtime_views.clone(), config.serving.clone()));
    {
        let (bus, views, follow_stop) = (bus.clone(), realtime_views.clone(), stop.clone());
        let every = config.serving.refresh_interval;
        tasks.spawn(async move { Ok(realtime::follow(bus, views, every, follow_stop).await?) });
        let refresh = catalog.clone().keep_fresh(every, stop.clone());
        tasks.spawn(async move {
            refresh.await;
            Ok(())
        });
    }
    let pg_listener =
        tokio::net::TcpListener::bind(args.pg_listen).await.with_context(|| format!("binding {}", args.pg_listen))?;
    let pg_addr = pg_listener.local_addr()?;
    // One admin token for the demo's own session.
    let tokens = Arc::new(weir_schemas::tokens::Tokens::from_text(&token)?);
    let pg_serve =
        pg::serve(pg_listener, catalog.clone(), config.serving.pg_user.clone(), tokens.clone(), None, stop.clone());
    tasks.spawn(pg_serve.map(|r| Ok(r?)));
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let api = listener.local_addr()?;
    let store = Store::open(config.metadata.connect().await?).await?;
    let (protected, measure) = crate::serve::status_routes(
        bus.clone(),
        lake.clone(),
        realtime_views.clone(),
        alerts.silences.clone(),
        config.serving.refresh_interval,
        stop.clone(),
    )
    .await?;
    tasks.spawn(measure.map(Ok));
    let routes = crate::serve::routes(
        catalog,
        tokens,
        store,
        Arc::new(lake.clone()),
        args.examples.join("dags"),
        metrics,
        protected,
    );
    {
        let stop = stop.clone();
        tasks.spawn(async move {
            axum::serve(listener, routes).with_graceful_shutdown(until(stop)).await?;
            Ok(())
        });
    }

    // The orchestrator starts once the lake has its first commits; then today's orders_daily.
    {
        let (lake, flow, stop, bus) = (Arc::new(lake.clone()), config.flow.clone(), stop.clone(), bus.clone());
        let dags_dir = args.examples.join("dags");
        let metadata = config.metadata.clone();
        let after = args.dag_after;
        tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                _ = until(stop.clone()) => return Ok(()),
            }
            // The DAG snapshots all four change logs: wait until each has its first commit.
            loop {
                let tables = lake.tables().await?;
                let have = |t: &str| tables.iter().any(|i| i.name == table_name(&topic(t)));
                if TABLES.iter().all(|t| have(t)) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = until(stop.clone()) => return Ok(()),
                }
            }
            let store = Store::open(metadata.connect().await?).await?;
            let flow = weir_flow::scheduler::FlowConfig { dags_dir: dags_dir.clone(), ..flow };
            let scheduler = Scheduler::new(store.clone(), lake, flow).with_bus(bus);
            let sched = tokio::spawn(scheduler.run(until(stop.clone())));
            let d = dag::load_file(&dags_dir.join("orders_daily.yaml")).map_err(|e| anyhow::anyhow!("{e}"))?;
            let today = Utc::now().with_timezone(&d.timezone).date_naive().and_hms_opt(0, 0, 0).expect("midnight");
            let logical =
                d.timezone.from_local_datetime(&today).earliest().expect("midnight exists").with_timezone(&Utc);
            let run_id = runs::trigger(&store, &d, Default::default(), Some(logical)).await?;
            println!("[demo] triggered orders_daily run {run_id} (today's orders into views.order_facts)");
            let mut reported = None;
            loop {
                let state = store.run("orders_daily", &run_id).await?.state;
                if reported != Some(state) {
                    println!("[demo] orders_daily {run_id}: {state}");
                    reported = Some(state);
                }
                if matches!(state, RunState::Success | RunState::Failed) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = until(stop.clone()) => break,
                }
            }
            sched.await??;
            Ok(())
        });
    }

    println!(
        "Weir demo: all roles in one process (bus {}, lake {}, metadata {})",
        config.bus.url, config.lake.url, config.metadata.url
    );
    println!("  dashboard   http://{api}/#token={token}");
    println!("  SQL API     http://{api}/api/v1/query   (bearer token {token})");
    println!("  catalogue   http://{api}/api/v1/tables   OpenAPI http://{api}/api/v1/openapi.json");
    println!(
        "  psql        psql 'postgresql://{}:{token}@{pg_addr}/weir' -c 'SELECT * FROM serving.payment_failures LIMIT 5'",
        config.serving.pg_user
    );
    println!("  metrics     http://{api}/metrics   health http://{api}/healthz");
    println!(
        "  try         curl -s -H 'Authorization: Bearer {token}' -d '{{\"sql\": \"SELECT * FROM serving.payment_failures ORDER BY window_start DESC LIMIT 5\"}}' http://{api}/api/v1/query"
    );
    println!("  alerts      printed below as they fire and resolve (also on topic weir.alerts)");
    match args.duration {
        Some(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    println!("[demo] stopping");
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done? {
            tracing::error!(error = %format!("{e:#}"), "a demo role failed");
        }
    }
    println!(
        "[demo] {:.0} s: {} orders, {} payments ({} failed), {} alert notifications",
        started.elapsed().as_secs_f64(),
        counts.orders.load(Ordering::Relaxed),
        counts.payments.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.alerts.load(Ordering::Relaxed)
    );
    for t in lake.tables().await? {
        println!("[demo] {:<36} version {:>3}  {} file(s)", t.name, t.version, t.files);
    }
    Ok(())
}

/// A webhook on loopback that prints each notification's alerts.
async fn console_receiver(counts: Arc<Counts>) -> anyhow::Result<String> {
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let counts = counts.clone();
            async move {
                counts.alerts.fetch_add(1, Ordering::Relaxed);
                for a in body["alerts"].as_array().into_iter().flatten() {
                    println!(
                        "[alert] {} {} — {}",
                        a["status"].as_str().unwrap_or_default().to_uppercase(),
                        a["labels"]["alertname"].as_str().unwrap_or_default(),
                        a["annotations"]["summary"].as_str().unwrap_or_default()
                    );
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
