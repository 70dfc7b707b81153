//! # weir-bench — the benchmarks
//!
//! `weir bench <name>` runs one (the `weir` binary hands it its wiring, [`Wiring`]); each prints
//! one JSON document on stdout, progress on stderr, and measures itself against a baseline or a
//! peer in the same run (docs/benchmarks.md records the figures, machine and command). The
//! benchmarks drive the crates' public APIs in process, or the `weir` binary's roles as child
//! processes (the running executable, `std::env::current_exe`), against real services on
//! loopback where they need one. `tests/tests/bench.rs` runs every one at a tiny size and checks
//! its JSON, so none can rot unnoticed.

mod alert_latency;
mod batch;
mod bus;
mod cdc_cassandra;
mod cdc_mysql;
mod console;
mod lake;
mod scheduler;
mod serve;
mod snapshot;
mod stream;

use clap::Subcommand;

use std::{path::PathBuf, sync::Arc};

/// What a benchmark takes from the `weir` binary's wiring.
pub struct Wiring {
    /// `[bus]` of `weir.toml`.
    pub bus: weir_bus::BusConfig,
    /// Every HTTP route of the serving role as `weir serve` composes them (the console benchmark
    /// serves them).
    pub routes: Routes,
}

/// The serving role's routes from its catalogue, tokens, metadata store, lake and DAG folder.
pub type Routes = fn(
    Arc<weir_serving::catalog::Catalog>,
    Arc<weir_schemas::tokens::Tokens>,
    weir_flow::store::Store,
    Arc<weir_lake::Lake>,
    PathBuf,
) -> axum::Router;

/// The benchmarks.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// The orders_daily join as a SQL task, in-process and on Ballista, against DuckDB on the same files.
    Batch(batch::BatchBenchArgs),
    /// Produce then consume N records on the embedded log (and on Kafka with --kafka).
    Bus(bus::BusBenchArgs),
    /// Decode Cassandra commit-log segments: MB/s and mutations/s on one core.
    CdcCassandra(cdc_cassandra::CdcCassandraArgs),
    /// The operator console: grid API, and grid, DAG list and 50 MB log in headless Chromium.
    Console(console::ConsoleBenchArgs),
    /// MySQL/MariaDB CDC into the embedded bus: backlog drain events/s, steady-load latency.
    CdcMysql(cdc_mysql::CdcMysqlArgs),
    /// Change events from the embedded bus into a Delta table, against Parquet's ArrowWriter.
    Lake(lake::LakeBenchArgs),
    /// The orchestrator: task-to-task latency along a chain, tasks/s across parallel DAGs.
    Scheduler(scheduler::SchedulerBenchArgs),
    /// Commit on MariaDB → CDC → bus → stream → alert → webhook: latency p50/p99.
    AlertLatency(alert_latency::AlertLatencyArgs),
    /// The serving API under load from a second process: group-by p50/p99, point lookups/s.
    Serve(serve::ServeBenchArgs),
    /// `current.*` after N new changes: incremental build against a full rebuild, by history length.
    Snapshot(snapshot::SnapshotBenchArgs),
    /// Windowed aggregation of change events: events/s per core, against decoding alone.
    Stream(stream::StreamBenchArgs),
}

/// Runs one benchmark and prints its JSON document.
pub async fn run(wiring: &Wiring, command: BenchCommand) -> anyhow::Result<()> {
    let mut result = match command {
        BenchCommand::Batch(args) => batch::run(args).await?,
        BenchCommand::Bus(args) => bus::run(&wiring.bus, args).await?,
        BenchCommand::CdcCassandra(args) => cdc_cassandra::run(args)?,
        BenchCommand::CdcMysql(args) => cdc_mysql::run(&wiring.bus, args).await?,
        BenchCommand::Console(args) => console::run(args, wiring.routes).await?,
        BenchCommand::Lake(args) => lake::run(args).await?,
        BenchCommand::Scheduler(args) => scheduler::run(args).await?,
        BenchCommand::Stream(args) => stream::run(args).await?,
        BenchCommand::AlertLatency(args) => alert_latency::run(args).await?,
        BenchCommand::Serve(args) => serve::run(args).await?,
        BenchCommand::Snapshot(args) => snapshot::run(args).await?,
    };
    // Every document says where it was measured.
    if let Some(doc) = result.as_object_mut() {
        doc.entry("machine").or_insert_with(machine);
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

/// An embedded bus and schema registry in a temporary directory.
pub struct Embedded {
    /// Holds the bus log and the registry's SQLite file (and anything else a benchmark puts there).
    pub tmp: tempfile::TempDir,
    /// The embedded bus.
    pub bus: std::sync::Arc<weir_bus::local::LocalBus>,
    /// The embedded registry.
    pub registry: std::sync::Arc<dyn weir_schemas::registry::SchemaRegistry>,
}

/// An [`Embedded`] bus and registry with `topic` created with `partitions`.
pub async fn embedded(topic: &str, partitions: u32) -> anyhow::Result<Embedded> {
    use weir_bus::Bus as _;
    let tmp = tempfile::tempdir()?;
    let bus = std::sync::Arc::new(weir_bus::local::LocalBus::open(&tmp.path().join("bus"), Default::default())?);
    bus.create_topic(topic, partitions).await?;
    let url = format!("sqlite://{}/weir.db", tmp.path().display());
    let pool = weir_schemas::metadata::connect(&url, std::time::Duration::from_secs(5)).await?;
    let registry: std::sync::Arc<dyn weir_schemas::registry::SchemaRegistry> =
        std::sync::Arc::new(weir_schemas::registry::store::SqlRegistry::open(pool).await?);
    Ok(Embedded { tmp, bus, registry })
}

/// Facts about the machine a figure was measured on.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu,
        "os": std::env::consts::OS,
        "weir_version": env!("CARGO_PKG_VERSION"),
        "debug_build": cfg!(debug_assertions),
    })
}

/// Prints `label: done/total` to stderr at every tenth.
pub struct Progress {
    label: String,
    total: usize,
    next_tenth: usize,
}

impl Progress {
    /// A progress line for `total` units.
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Progress { label: label.into(), total, next_tenth: 1 }
    }

    /// Reports `done` units.
    pub fn update(&mut self, done: usize) {
        while self.next_tenth <= 10 && done * 10 >= self.total * self.next_tenth {
            eprintln!("{}: {}% ({done}/{})", self.label, self.next_tenth * 10, self.total);
            self.next_tenth += 1;
        }
    }
}

/// The median of `xs` (the mean of the middle two for an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}
