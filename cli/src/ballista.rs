//! `weir ballista scheduler|executor`: Apache DataFusion Ballista's two roles built into the weir
//! binary, for SQL tasks whose engine is `ballista://host:port` (see `weir_batch::engine`). Each
//! serves `/healthz` and `/metrics` on its `--listen` address like every other role; Ballista's
//! own gRPC endpoints are on `--bind` (scheduler) and `--port`/`--grpc-port` (executor).
//!
//! Tasks reach the cluster as plans over the Parquet files of the table versions they resolved.
//! With the lake on S3 both roles register the lake's bucket (`[lake]` and the AWS environment,
//! as every role reads them); with the lake on local disk executors must see its directory at
//! the same path (one machine, or a shared mount).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Subcommand;

use crate::{config::Config, telemetry};

/// Executors ask the scheduler for tasks (Spark's model) rather than the scheduler pushing them:
/// measured, with push a job whose executor died after finishing a stage stalled once the lost
/// stage was rolled back (nothing offered its tasks again); with pull the live executors take
/// them at their next poll.
const SCHEDULING: ballista_core::config::TaskSchedulingPolicy = ballista_core::config::TaskSchedulingPolicy::PullStaged;

/// Ballista's roles.
#[derive(Subcommand)]
pub enum BallistaCommand {
    /// The scheduler: plans each query into stages and hands their tasks to executors.
    Scheduler {
        /// Ballista's gRPC endpoint (what `[batch] engine = "ballista://host:port"` names).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// The host name others reach it by (default: the bind address).
        #[arg(long)]
        external_host: Option<String>,
        /// Where to serve /healthz and /metrics.
        #[arg(long, default_value = "127.0.0.1:9099")]
        listen: SocketAddr,
        /// Seconds without a heartbeat after which an executor is dead and its tasks run elsewhere.
        #[arg(long, default_value_t = 30)]
        executor_timeout: u64,
    },
    /// An executor: runs the scheduler's tasks, keeping shuffle files in its work directory.
    Executor {
        /// The scheduler's gRPC endpoint, `host:port`.
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// The address this executor listens on.
        #[arg(long, default_value = "127.0.0.1")]
        bind_host: String,
        /// The host name the scheduler and other executors reach it by (default: `--bind-host`).
        #[arg(long)]
        external_host: Option<String>,
        /// Its Arrow Flight port (other executors fetch shuffle data from it).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Its gRPC port (the scheduler's calls).
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Where shuffle files go (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Tasks run at once (default: the machine's cores).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
        /// Seconds between heartbeats to the scheduler.
        #[arg(long, default_value_t = 5)]
        heartbeat_interval: u64,
        /// Where to serve /healthz and /metrics.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
    },
}

pub async fn run(config: &Config, command: BallistaCommand) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let lake_store = weir_lake::storage::lake_store(&config.lake)
        .map_err(|e| anyhow::anyhow!("the lake's object store ({}): {e}", config.lake.url))?;
    match command {
        BallistaCommand::Scheduler { bind, external_host, listen, executor_timeout } => {
            let (_, server) = telemetry::ops_server(listen, metrics).await?;
            let config = ballista_scheduler::config::SchedulerConfig {
                bind_host: bind.ip().to_string(),
                bind_port: bind.port(),
                external_host: external_host.unwrap_or_else(|| bind.ip().to_string()),
                executor_timeout_seconds: executor_timeout,
                scheduling_policy: SCHEDULING,
                no_executors_grace_period_seconds: executor_timeout,
                override_session_builder: lake_store.map(
                    |(url, store)| -> ballista_scheduler::scheduler_server::SessionBuilder {
                        Arc::new(move |session| {
                            let state = ballista_core::utils::default_session_builder(session)?;
                            state.runtime_env().register_object_store(&url, store.clone());
                            Ok(state)
                        })
                    },
                ),
                ..Default::default()
            };
            let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&config)
                .await
                .context("setting up the Ballista scheduler's state")?;
            tracing::info!(%bind, %listen, "Ballista scheduler running");
            let scheduler = ballista_scheduler::scheduler_process::start_server(cluster, bind, Arc::new(config));
            tokio::select! {
                r = scheduler => r.with_context(|| format!("Ballista scheduler on {bind}"))?,
                r = server => r.context("health and metrics server")?,
                () = telemetry::stop_signal() => {}
            }
        }
        BallistaCommand::Executor {
            scheduler,
            bind_host,
            external_host,
            port,
            grpc_port,
            work_dir,
            concurrent_tasks,
            heartbeat_interval,
            listen,
        } => {
            let (scheduler_host, scheduler_port) = scheduler
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .with_context(|| format!("--scheduler {scheduler:?} is not host:port"))?;
            let (_, server) = telemetry::ops_server(listen, metrics).await?;
            // Spill and shuffle files go to the work directory, as Ballista's own runtime does.
            let work_dir =
                work_dir.unwrap_or_else(|| std::env::temp_dir().join(format!("weir-ballista-{}", std::process::id())));
            std::fs::create_dir_all(&work_dir).with_context(|| format!("creating {}", work_dir.display()))?;
            let runtime = lake_store.map(|(url, store)| -> ballista_core::RuntimeProducer {
                let temp = work_dir.clone();
                Arc::new(move |_| {
                    let runtime = deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
                        .with_temp_file_path(temp.clone())
                        .build()?;
                    runtime.register_object_store(&url, store.clone());
                    Ok(Arc::new(runtime))
                })
            });
            let mut config = ballista_executor::executor_process::ExecutorProcessConfig {
                external_host: Some(external_host.unwrap_or_else(|| bind_host.clone())),
                bind_host,
                port,
                grpc_port,
                scheduler_host,
                scheduler_port,
                scheduler_connect_timeout_seconds: 10,
                work_dir: Some(work_dir.display().to_string()),
                override_runtime_producer: runtime,
                executor_heartbeat_interval_seconds: heartbeat_interval,
                task_scheduling_policy: SCHEDULING,
                ..Default::default()
            };
            if let Some(n) = concurrent_tasks {
                config.vcores = n;
            }
            tracing::info!(scheduler = %scheduler, port, grpc_port, vcores = config.vcores, %listen, "Ballista executor running");
            let executor = ballista_executor::executor_process::start_executor_process(Arc::new(config));
            tokio::select! {
                r = executor => r.with_context(|| format!("Ballista executor of {scheduler}"))?,
                r = server => r.context("health and metrics server")?,
                () = telemetry::stop_signal() => {}
            }
        }
    }
    Ok(())
}
