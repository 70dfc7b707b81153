//! # weir — the command
//!
//! The only place that wires Weir's crates together: it loads the configuration
//! ([`config`]), opens the bus, the metadata database and the registry it names, and runs one
//! command or role. Library crates return typed errors; here they become `anyhow` messages.

mod ballista;
mod cassandra;
mod config;
mod console;
mod dags;
mod demo;
mod events;
mod ingest;
mod init;
mod lake;
mod query;
mod registry;
mod roles;
mod serve;
mod status;
mod stream;
mod telemetry;
mod topics;
mod up;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// CDC and the bus allocate and free many small values per event; mimalloc does that at a
/// fraction of glibc malloc's cost (measured in docs/benchmarks.md). Built without asking for
/// transparent huge pages (`no_thp`): the lake writer's memory turns over fast, and each fresh
/// huge page cost a 2 MiB zeroing fault (`weir bench lake` ran ~12% faster without them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Weir: change data capture, an immutable lake, batch and streaming over one bus.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Configuration file (default: ./weir.toml if it exists). WEIR_BUS_URL, WEIR_LAKE_URL and
    /// WEIR_METADATA_URL override it.
    #[arg(long, global = true, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and list topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Produce lines of stdin (`key<TAB>value`, or just `value`) to a topic.
    Produce(console::ProduceArgs),
    /// Print a topic's records (`partition offset key value`), committing after printing.
    Consume(console::ConsumeArgs),
    /// Run the configured [[sources]]: change data capture to the bus.
    Ingest(ingest::IngestArgs),
    /// The lake: change-event topics into Delta tables.
    #[command(subcommand)]
    Lake(lake::LakeCommand),
    /// Run SQL over the lake's tables (DataFusion), with time travel.
    Query(query::QueryArgs),
    /// Serve the embedded schema registry (Confluent REST API) from the metadata database.
    Registry(registry::RegistryArgs),
    /// Cassandra commit-log tools.
    #[command(subcommand)]
    Cassandra(cassandra::CassandraCommand),
    /// DAGs: list, show, trigger, pause, backfill, clear, runs, tasks, logs.
    #[command(subcommand)]
    Dags(dags::DagsCommand),
    /// Run the orchestrator: schedule DAG runs and execute their tasks (`status`: who leads).
    Scheduler(dags::SchedulerArgs),
    /// The orchestrator's event stream (`weir.flow.events`).
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Run a remote worker: claim tasks from queues and run them (`[flow] executor = "workers"`).
    Worker(dags::WorkerArgs),
    /// Start a project on your own MySQL/MariaDB: check the server, write weir.toml and starter
    /// DAG, pipeline and alert files.
    Init(init::InitArgs),
    /// Every role weir.toml configures, in one process (sources, lake, current.*, scheduler,
    /// pipelines and alerts, serving); other weir commands work beside it.
    Up(up::UpArgs),
    /// `weir up` with a built-in food-delivery workload and example DAG, pipeline and alert.
    Demo(demo::DemoArgs),
    /// Serve SQL over HTTP on the lake and the real-time views (the serving layer).
    Serve(serve::ServeArgs),
    /// Run the streaming pipelines and alert rules (the speed layer).
    Stream(stream::StreamArgs),
    /// Apache DataFusion Ballista's scheduler and executor, for SQL tasks on a cluster.
    #[command(subcommand)]
    Ballista(ballista::BallistaCommand),
    /// Run a benchmark and print its result as JSON.
    #[command(subcommand)]
    Bench(weir_bench::BenchCommand),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let is_service = matches!(
        cli.command,
        Command::Registry(_)
            | Command::Ingest(_)
            | Command::Lake(lake::LakeCommand::Run { .. })
            | Command::Scheduler(dags::SchedulerArgs { command: None, .. })
            | Command::Worker(_)
            | Command::Ballista(_)
            | Command::Stream(_)
            | Command::Serve(_)
    );
    // `weir up` and `weir demo` log to the file their configuration names and keep the terminal
    // for their status (see `run`). One-shot commands end with one clear error; librdkafka's
    // retry chatter would bury it.
    if !matches!(cli.command, Command::Up(_) | Command::Demo(_)) {
        telemetry::init_logs(if is_service { SERVICE_LOG } else { "warn,librdkafka=off,buoyant_kernel=off" });
    }
    if let Err(e) = run(cli).await {
        eprintln!("weir: {e:#}");
        std::process::exit(1);
    }
}

/// What services log (for `weir up` and `weir demo`: to their log file). The Delta kernel (crate
/// buoyant_kernel) logs a table that does not exist yet, a writer's first open, as an error.
const SERVICE_LOG: &str = "info,librdkafka=warn,buoyant_kernel=off";

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config::load(cli.config.as_deref())?;
    match &cli.command {
        Command::Up(a) => telemetry::init_logs_to_file(SERVICE_LOG, &config.up.log_file, a.verbose)?,
        Command::Demo(a) => telemetry::init_logs_to_file(SERVICE_LOG, &config.up.log_file, a.up.verbose)?,
        _ => {}
    }
    weir_schemas::http::configure(&config.http)?;
    match cli.command {
        Command::Topics(c) => topics::run(&config, c).await,
        Command::Produce(a) => console::produce(&config, a).await,
        Command::Consume(a) => console::consume(&config, a).await,
        Command::Registry(a) => registry::serve(&config, a).await,
        Command::Ingest(a) => ingest::run(&config, a).await,
        Command::Lake(c) => lake::run(&config, c).await,
        Command::Query(a) => query::run(&config, a).await,
        Command::Cassandra(c) => cassandra::run(c),
        Command::Dags(c) => dags::run(&config, c).await,
        Command::Scheduler(a) => dags::scheduler(&config, a).await,
        Command::Worker(a) => dags::worker(&config, a).await,
        Command::Ballista(c) => ballista::run(&config, c).await,
        Command::Events(c) => events::run(&config, c).await,
        Command::Stream(a) => stream::run(&config, a).await,
        Command::Serve(a) => serve::run(&config, a).await,
        Command::Init(a) => init::run(a).await,
        Command::Up(a) => up::run(&config, a).await,
        Command::Demo(a) => demo::run(&config, a).await,
        Command::Bench(b) => {
            let wiring = weir_bench::Wiring {
                bus: config.bus.clone(),
                routes: |catalog, tokens, store, lake, dags| {
                    serve::routes(catalog, tokens, store, lake, dags, axum::Router::new(), axum::Router::new())
                },
            };
            weir_bench::run(&wiring, b).await
        }
    }
}
