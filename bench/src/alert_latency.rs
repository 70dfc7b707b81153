//! `weir bench alert-latency`: from a commit on a real MariaDB to the alert's webhook call.
//!
//! In one process: the MySQL source (binlog → Debezium Avro on the embedded bus), a pipeline
//! counting failed payments per merchant in 1-minute windows with early results, an alert rule
//! `failed >= 3` notifying a webhook receiver on loopback. A writer keeps a background load of
//! paid payments over 1,000 merchants; each trial commits three failed payments for a new
//! merchant in one transaction and times the commit's return to the webhook's arrival. In the
//! same run, a bus consumer times the same commits to their arrival on the bus (the CDC part),
//! so the figures split into capture and stream + alert + notification.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use mysql_async::prelude::Queryable;
use serde_json::{Value, json};
use weir_bus::{Bus, ConsumerConfig, local::LocalBus};
use weir_ingest::mysql::{MysqlSource, MysqlSourceConfig};
use weir_lake::{Lake, LakeConfig, LakeUrl};
use weir_notify::{Notifier, Retry};
use weir_schemas::{
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
};
use weir_stream::{
    Engine, EngineConfig,
    alert::{self, RuleSet},
    pipeline,
};

use super::machine;

/// `weir bench alert-latency`.
#[derive(Args)]
pub struct AlertLatencyArgs {
    /// The server (needs log_bin, ROW, FULL image and metadata, and rights to create a database).
    #[arg(long, env = "WEIR_BENCH_MYSQL_URL")]
    url: String,
    /// Alerts to time.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Background payments per second.
    #[arg(long, default_value_t = 500)]
    rate: usize,
    /// How often open windows emit running results (what alerts see before a window closes).
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    early_results: Duration,
    /// Database the benchmark creates (and drops).
    #[arg(long, default_value = "weir_alert_bench")]
    database: String,
}

pub async fn run(args: AlertLatencyArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.trials > 0 && args.rate >= 100, "trials must be positive and rate at least 100");
    let db = args.database.clone();
    let topic = format!("bench.{db}.payments");
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&args.url)?).await.context("connecting")?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS {db}")).await?;
    conn.query_drop(format!("CREATE DATABASE {db}")).await?;
    conn.query_drop(format!(
        "CREATE TABLE {db}.payments (id BIGINT PRIMARY KEY, merchant_id INT NOT NULL, \
         amount DECIMAL(10,2) NOT NULL, status VARCHAR(16) NOT NULL)"
    ))
    .await?;
    conn.query_drop(format!("INSERT INTO {db}.payments VALUES (0, 0, 1.00, 'paid')")).await?;

    let dir = tempfile::tempdir()?;
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::open(&dir.path().join("bus"), Default::default())?);
    let pool = metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await?);
    let mut source_config = MysqlSourceConfig::new("alerts", args.url.clone(), "bench");
    source_config.include_tables = vec![format!("{db}.*")];
    source_config.state_dir = dir.path().join("state");
    source_config.server_id = 4_054_101; // far from the server ids the tests pick (all below 200,000)
    let mut source =
        MysqlSource::new(source_config, bus.clone(), Arc::new(AvroSerializer::new(registry.clone()))).await?;
    source.catch_up().await?; // the snapshot creates the topic

    // The webhook receiver: first firing notification per merchant.
    let fired: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let sink = fired.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let now = Instant::now();
                for a in body["alerts"].as_array().into_iter().flatten() {
                    if a["status"] == "firing"
                        && let Some(m) = a["labels"]["merchant_id"].as_str()
                    {
                        sink.lock().expect("not poisoned").entry(m.to_string()).or_insert(now);
                    }
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let files = dir.path();
    std::fs::create_dir_all(files.join("pipelines"))?;
    std::fs::create_dir_all(files.join("alerts"))?;
    std::fs::write(
        files.join("pipelines/failures.yaml"),
        format!(
            "source: {{topic: {topic}}}\nkey: merchant_id\nwindow: {{tumbling: 1m}}\naggregates:\n  \
             - {{name: payments, fn: count}}\n  \
             - {{name: failed, fn: sum, expr: \"CASE WHEN status = 'failed' THEN 1 ELSE 0 END\"}}\n\
             output: {{early_results: {}}}\n",
            humantime::format_duration(args.early_results)
        ),
    )?;
    std::fs::write(
        files.join("alerts/failures.yaml"),
        format!(
            "rules:\n  - {{alert: FailedPayments, pipeline: failures, expr: \"failed >= 3\"}}\n\
             receivers:\n  - {{name: hook, webhook: \"{hook}\"}}\n"
        ),
    )?;
    let (mut pipelines, errors) = pipeline::load_dir(&files.join("pipelines"));
    anyhow::ensure!(errors.is_empty(), "bench pipeline refused: {errors:?}");
    let (alerts, errors) = alert::load_dir(&files.join("alerts"));
    anyhow::ensure!(errors.is_empty(), "bench alerts refused: {errors:?}");
    let p = pipelines.pop().expect("one pipeline");
    let rules = RuleSet::for_pipeline(&p, Arc::new(alerts), Some(Notifier::start(Retry::default())));
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(files.join("lake")), ..LakeConfig::default() });
    let config = EngineConfig { poll_interval: Duration::from_millis(20), ..EngineConfig::default() };
    let engine = Engine::open(p, config, bus.clone(), Some(registry), lake, rules).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut s: tokio::sync::watch::Receiver<bool>| async move {
        let _ = s.wait_for(|s| *s).await;
    };
    let source_task = tokio::spawn(source.run(until(stopped.clone())));
    let engine_task = tokio::spawn(engine.run(until(stopped.clone())));
    // The CDC part alone: arrival on the bus of each trial's rows (ids ≥ 1e9).
    let mut consumer = bus.consumer(ConsumerConfig::new("alert-latency")).await?;
    consumer.subscribe(&[topic.as_str()]).await?;
    let arrivals: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let mut reader_stop = stopped.clone();
    let reader = tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                b = consumer.poll(Duration::from_millis(100)) => b?,
                _ = reader_stop.wait_for(|s| *s) => return anyhow::Ok(()),
            };
            let now = Instant::now();
            for m in batch {
                if let Some(id) = m.key.as_deref().and_then(super::cdc_mysql::avro_long_key) {
                    seen.lock().expect("not poisoned").entry(id).or_insert(now);
                }
            }
        }
    });
    // Background load.
    let mut writer_conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&args.url)?).await?;
    let (rate, wdb) = (args.rate, db.clone());
    let mut writer_stop = stopped.clone();
    let writer = tokio::spawn(async move {
        let per_tick = rate / 100;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut id = 1i64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = writer_stop.wait_for(|s| *s) => return anyhow::Ok(id - 1),
            }
            let values: Vec<String> = (0..per_tick)
                .map(|k| format!("({}, {}, 9.99, 'paid')", id + k as i64, (id + k as i64) % 1000))
                .collect();
            writer_conn.query_drop(format!("INSERT INTO {wdb}.payments VALUES {}", values.join(","))).await?;
            id += per_tick as i64;
        }
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!("alert-latency: {} trials under {} payments/s", args.trials, args.rate);
    let mut to_alert = Vec::new();
    let mut to_bus = Vec::new();
    for k in 0..args.trials as i64 {
        let merchant = 100_000 + k;
        let ids: Vec<i64> = (0..3).map(|j| 1_000_000_000 + k * 10 + j).collect();
        let values: Vec<String> = ids.iter().map(|id| format!("({id}, {merchant}, 5.00, 'failed')")).collect();
        conn.query_drop(format!("INSERT INTO {db}.payments VALUES {}", values.join(","))).await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(10);
        let alerted = loop {
            if let Some(t) = fired.lock().expect("not poisoned").get(&merchant.to_string()) {
                break *t;
            }
            anyhow::ensure!(Instant::now() < deadline, "no alert for merchant {merchant} within 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        to_alert.push(alerted.saturating_duration_since(committed));
        if let Some(t) = ids.iter().filter_map(|id| arrivals.lock().expect("not poisoned").get(id).copied()).max() {
            to_bus.push(t.saturating_duration_since(committed));
        }
        tokio::time::sleep(Duration::from_millis(100 + (k as u64 * 37) % 100)).await;
    }
    let _ = stop.send(true);
    let background = writer.await??;
    source_task.await??;
    let stats = engine_task.await??;
    reader.await??;
    conn.query_drop(format!("DROP DATABASE {db}")).await?;
    let pct = |v: &mut Vec<Duration>, p: f64| -> f64 {
        v.sort();
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        (v[i].as_secs_f64() * 1e5).round() / 100.0
    };
    Ok(json!({
        "benchmark": "alert-latency",
        "machine": machine(),
        "server": conn.server_version(),
        "trials": args.trials,
        "background_payments": background,
        "early_results_ms": args.early_results.as_millis(),
        "events_aggregated": stats.aggregated,
        "commit_to_webhook_ms": {"p50": pct(&mut to_alert, 0.5), "p99": pct(&mut to_alert, 0.99), "max": pct(&mut to_alert, 1.0)},
        "baseline_commit_to_bus_ms": {"p50": pct(&mut to_bus, 0.5), "p99": pct(&mut to_bus, 0.99), "max": pct(&mut to_bus, 1.0)},
        "goals": {"commit_to_webhook_p99_ms": 1000},
    }))
}
