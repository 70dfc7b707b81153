//! `weir bench serve`: a 1,000,000-row batch view in a local lake, `weir serve` started as its
//! own process, and load from this process over loopback HTTP: (a) a group-by over the whole
//! view, one query at a time, p50/p99; (b) point lookups by id from concurrent clients, queries/s
//! and p50/p99. Baselines in the same run: the same group-by run in this process straight on
//! DataFusion (no HTTP, no serving layer), and the same lookups against a second `weir serve`
//! with hot tables off (`serving.hot_table_bytes = 0`: each lookup scans the Delta table).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;
use deltalake::{
    DeltaTable,
    arrow::{
        array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray},
        datatypes::{DataType, Field, Schema, TimeUnit},
    },
    kernel::{StructType, engine::arrow_conversion::TryIntoKernel},
};
use serde_json::{Value, json};
use weir_lake::{Lake, LakeConfig, LakeUrl};

use super::machine;

/// `weir bench serve`.
#[derive(Args)]
pub struct ServeBenchArgs {
    /// Rows in the view.
    #[arg(long, default_value_t = 1_000_000)]
    rows: i64,
    /// Group-by queries to time.
    #[arg(long, default_value_t = 50)]
    group_bys: usize,
    /// Concurrent clients for point lookups.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long to run point lookups.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lookups_for: Duration,
}

const GROUP_BY: &str = "SELECT city, count(*) AS orders, avg(amount) AS avg_amount FROM views.bench GROUP BY city";

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    (v[i].as_secs_f64() * 1e5).round() / 100.0
}

/// Writes `views.bench`: id (sorted), city (100 values), amount, at; four files.
async fn view(lake: &Lake, rows: i64) -> anyhow::Result<()> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("amount", DataType::Float64, false),
        Field::new("at", ts, false),
    ]));
    let columns: StructType = schema.as_ref().try_into_kernel()?;
    let mut table = DeltaTable::try_from_url(lake.table_url("views.bench")?)
        .await?
        .create()
        .with_columns(columns.fields().cloned())
        .await?;
    let per_file = (rows + 3) / 4;
    let mut start = 0;
    while start < rows {
        let ids: Vec<i64> = (start..(start + per_file).min(rows)).collect();
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("city-{:02}", i % 100)))),
            Arc::new(Float64Array::from_iter_values(ids.iter().map(|i| (i % 5_000) as f64 / 100.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(ids.iter().map(|i| 1_795_392_000_000_000 + i * 1_000_000))
                    .with_timezone("UTC"),
            ),
        ];
        table = table.write(vec![RecordBatch::try_new(schema.clone(), arrays)?]).await?;
        start += per_file;
    }
    Ok(())
}

/// `weir serve` over `lake_dir` as a child process in `cwd` (with `toml` as its `weir.toml`),
/// once it is ready: the process and its HTTP port.
async fn serve(
    cwd: &std::path::Path,
    lake_dir: &std::path::Path,
    toml: &str,
) -> anyhow::Result<(tokio::process::Child, u16)> {
    std::fs::write(cwd.join("weir.toml"), toml)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let pg_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--pg-listen", &format!("127.0.0.1:{pg_port}")])
        .current_dir(cwd)
        .env("WEIR_LAKE_URL", format!("file://{}", lake_dir.display()))
        .env("WEIR_SERVING_TOKENS", "bench")
        .env("WEIR_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let started = Instant::now();
    while !reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "weir serve did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((child, port))
}

/// One query over HTTP with the bench token.
async fn query(port: u16, sql: String) -> anyhow::Result<Value> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let resp = CLIENT
        .get_or_init(reqwest::Client::new)
        .post(format!("http://127.0.0.1:{port}/api/v1/query"))
        .bearer_auth("bench")
        .json(&json!({"sql": sql}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "query failed: {}", resp.text().await?);
    Ok(resp.json::<Value>().await?)
}

/// Point lookups by random id from `args.clients` concurrent clients for `args.lookups_for`:
/// every lookup's latency.
async fn lookup_load(port: u16, args: &ServeBenchArgs) -> anyhow::Result<Vec<Duration>> {
    let deadline = Instant::now() + args.lookups_for;
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let rows = args.rows;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut id = (c as i64 * 7_919) % rows;
            while Instant::now() < deadline {
                id = (id * 48_271 + 11) % rows;
                let started = Instant::now();
                let v = query(port, format!("SELECT * FROM views.bench WHERE id = {id}")).await?;
                anyhow::ensure!(v["row_count"] == 1, "lookup of {id} returned {}", v["row_count"]);
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut lookups = Vec::new();
    for t in tasks {
        lookups.extend(t.await??);
    }
    Ok(lookups)
}

pub async fn run(args: ServeBenchArgs) -> anyhow::Result<Value> {
    let tmp = tempfile::tempdir()?;
    let lake_dir = tmp.path().join("lake");
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(lake_dir.clone()), ..LakeConfig::default() });
    eprintln!("serve: writing views.bench ({} rows)", args.rows);
    view(&lake, args.rows).await?;

    // Baseline: the group-by in this process on DataFusion, no HTTP.
    let mut baseline = Vec::new();
    for _ in 0..args.group_bys {
        let started = Instant::now();
        let rows: usize = weir_lake::query::run(&lake, GROUP_BY, None).await?.iter().map(RecordBatch::num_rows).sum();
        anyhow::ensure!(rows == 100, "the group-by returned {rows} groups");
        baseline.push(started.elapsed());
    }

    let (mut child, port) = serve(tmp.path(), &lake_dir, "").await?;
    eprintln!("serve: {} group-bys over HTTP", args.group_bys);
    let mut group_bys = Vec::new();
    for _ in 0..args.group_bys {
        let started = Instant::now();
        let v = query(port, GROUP_BY.to_string()).await?;
        anyhow::ensure!(v["row_count"] == 100, "the group-by returned {}", v["row_count"]);
        group_bys.push(started.elapsed());
    }
    eprintln!("serve: point lookups, {} clients for {:?}", args.clients, args.lookups_for);
    let mut lookups = lookup_load(port, &args).await?;
    child.kill().await.ok();
    // Baseline: the same lookups against a server that reads the Delta table for each one.
    let cold_dir = tmp.path().join("cold");
    std::fs::create_dir_all(&cold_dir)?;
    let (mut cold, cold_port) = serve(&cold_dir, &lake_dir, "[serving]\nhot_table_bytes = 0\n").await?;
    eprintln!("serve: baseline point lookups without hot tables, {:?}", args.lookups_for);
    let mut cold_lookups = lookup_load(cold_port, &args).await?;
    cold.kill().await.ok();
    let cold_qps = cold_lookups.len() as f64 / args.lookups_for.as_secs_f64();
    let qps = lookups.len() as f64 / args.lookups_for.as_secs_f64();
    Ok(json!({
        "benchmark": "serve",
        "machine": machine(),
        "rows": args.rows,
        "group_by_over_http_ms": {"p50": pct(&mut group_bys, 0.5), "p99": pct(&mut group_bys, 0.99), "runs": args.group_bys},
        "baseline_group_by_in_process_ms": {"p50": pct(&mut baseline, 0.5), "p99": pct(&mut baseline, 0.99)},
        "point_lookups": {"clients": args.clients, "queries": lookups.len(), "qps": qps.round(), "p50_ms": pct(&mut lookups, 0.5), "p99_ms": pct(&mut lookups, 0.99)},
        "baseline_point_lookups_without_hot_tables": {"qps": cold_qps.round(), "p50_ms": pct(&mut cold_lookups, 0.5), "p99_ms": pct(&mut cold_lookups, 0.99)},
        "lookup_speedup": (qps / cold_qps * 10.0).round() / 10.0,
        "goals": {"group_by_p99_ms": 50, "lookup_qps": 2000},
    }))
}
