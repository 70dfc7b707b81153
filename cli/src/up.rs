//! `weir up`: every role that `weir.toml` configures, in one process, on the backends it names
//! (the embedded bus, lake and metadata DB when it names none): the `[[sources]]`, a lake writer
//! for every change-event topic, `current.*` upkeep, the scheduler over `flow.dags_dir`, the
//! stream pipelines with their alerts, and the serving API, PostgreSQL wire and operator console.
//!
//! Roles start in dependency order (serving's listeners first, so that a taken port fails the
//! start; then sources, lake, pipelines, scheduler), each supervised on its own ([`roles`]):
//! one that fails is reported on `/healthz` and the status lines and retried with backoff while
//! the others run. Ctrl-C or SIGTERM stops them all; each commits what it buffered and saves its
//! offsets, within `up.drain_timeout`. The process serves its embedded bus to the machine's
//! other `weir` commands (see `weir_bus::local::remote`). `weir demo` is this plus a workload.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinSet};
use weir_bus::Bus;
use weir_flow::{scheduler::Scheduler, store::Store};
use weir_lake::Lake;
use weir_notify::{Notifier, Receiver, Retry};
use weir_schemas::{registry::SchemaRegistry, serializer::AvroSerializer, tokens::Tokens};
use weir_stream::{
    alert,
    pipeline::{self, Format},
};

use crate::{
    config::Config,
    ingest::{self, registry},
    lake::{self as lake_role, Writers},
    roles::{self, Health},
    serve, status, stream, telemetry,
};

/// `[up]`: how `weir up` and `weir demo` run their roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpConfig {
    /// The full log (the terminal shows a status and errors).
    pub log_file: PathBuf,
    /// How long a stop waits for the roles to commit what they hold and save their offsets.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often `current.*` tables are rebuilt from change logs that have new commits.
    #[serde(with = "humantime_serde")]
    pub current_interval: Duration,
    /// How often the status lines are printed when the output is not a terminal (a terminal's
    /// status is redrawn every second).
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
}

impl Default for UpConfig {
    fn default() -> Self {
        UpConfig {
            log_file: PathBuf::from("./weir-data/logs/weir.log"),
            drain_timeout: Duration::from_secs(30),
            current_interval: Duration::from_secs(5),
            status_interval: Duration::from_secs(10),
        }
    }
}

/// `weir up`.
#[derive(Args)]
pub struct UpArgs {
    /// Stop by itself after this long (e.g. `10m`); default: run until Ctrl-C.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where the serving API listens (default: serving.listen).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the PostgreSQL wire listens (default: serving.pg_listen).
    #[arg(long)]
    pub pg_listen: Option<SocketAddr>,
    /// Print the full log on stderr too (it always goes to up.log_file).
    #[arg(long)]
    pub verbose: bool,
}

/// What every role shares: the configuration and the connections it names.
pub struct Platform {
    pub config: Config,
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<dyn SchemaRegistry>,
    pub lake: Lake,
    pub store: Store,
}

impl Platform {
    /// Opens the bus (owning and serving the embedded one, or joining its owner), the registry,
    /// the lake and the metadata DB.
    pub async fn open(config: Config) -> anyhow::Result<Platform> {
        let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
        let registry = registry(&config).await?;
        // Commits are announced on the bus, for the table-triggered DAGs.
        let lake = Lake::new(&config.lake).with_signals(weir_lake::signal::Signals::new(bus.clone()));
        let store = Store::open(config.metadata.connect().await?).await.context("opening the metadata DB")?;
        Ok(Platform { config, bus, registry, lake, store })
    }
}

/// What a caller of [`start`] may change.
#[derive(Default)]
pub struct Options {
    /// Serving addresses (API, PostgreSQL wire) instead of the configured ones.
    pub listen: Option<SocketAddr>,
    pub pg_listen: Option<SocketAddr>,
    /// Send every alert here instead of the receivers its file names.
    pub alert_receiver: Option<Arc<Receiver>>,
    /// Start the scheduler only once this turns true (the demo's DAG needs its tables first).
    pub scheduler_gate: Option<watch::Receiver<bool>>,
}

/// The running roles.
pub struct Up {
    tasks: JoinSet<()>,
    stop: watch::Sender<bool>,
    pub health: Arc<Health>,
    /// Where the HTTP API and the PostgreSQL wire listen.
    pub api: SocketAddr,
    pub pg: Option<SocketAddr>,
    /// What the status lines show: consumer lag and the real-time views (alerts among them).
    pub lag: Arc<weir_serving::lag::LagTracker>,
    pub realtime: Arc<weir_serving::realtime::Realtime>,
    /// The bearer token to show, when the configuration has none and one was made for this run.
    pub session_token: Option<String>,
    drain_timeout: Duration,
}

/// Starts every configured role.
pub async fn start(p: &Platform, options: Options) -> anyhow::Result<Up> {
    let config = &p.config;
    let metrics = telemetry::init_metrics()?;
    let (stop_tx, stop) = watch::channel(false);
    let health = Arc::new(Health::default());
    let mut tasks = JoinSet::new();

    // Serving's listeners bind first, so a taken port stops the start with its address.
    let s = &config.serving;
    let mut tokens = Tokens::load_watched(Some(&s.tokens_env), s.tokens_file.as_deref())?;
    let mut session_token = None;
    if tokens.is_empty() && s.tokens_file.is_none() {
        // No token configured: one admin token for this run, shown in the banner.
        let token = format!("weir-{:016x}", rand::rng().random::<u64>());
        tokens = Arc::new(Tokens::from_text(&token)?);
        session_token = Some(token);
    }
    let parts = serve::Parts {
        bus: p.bus.clone(),
        lake: p.lake.clone(),
        store: p.store.clone(),
        tokens,
        dags_dir: config.flow.dags_dir.clone(),
        health: health.clone().router().merge(telemetry::metrics_router(metrics)),
    };
    let listen = (options.listen.unwrap_or(s.listen), options.pg_listen.unwrap_or(s.pg_listen));
    let serve::Bound { api, pg, lag, realtime, run } = serve::bind(config, parts, listen, stop.clone()).await?;
    // Sources: change data capture onto the bus.
    let serializer = Arc::new(AvroSerializer::new(p.registry.clone()));
    for source in &config.sources {
        let (source, bus, serializer) = (source.clone(), p.bus.clone(), serializer.clone());
        roles::supervise(&mut tasks, &health, &format!("source {}", source.name()), &stop, move |role| {
            let (source, bus, serializer) = (source.clone(), bus.clone(), serializer.clone());
            async move {
                let running = ingest::Running::open(&source, &bus, &serializer).await?;
                role.ready();
                running.run(role.stopping()).await
            }
        });
    }

    // JSON events over HTTP, when [ingest.http] enabled: bound now, so a taken port fails the start.
    if config.ingest.http.enabled {
        let addr = config.ingest.http.listen;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let routes = ingest::http_routes(config, p.bus.clone()).await?;
        roles::run_once(&mut tasks, &health, "ingest http", &stop, move |role| async move {
            role.ready();
            axum::serve(listener, routes).with_graceful_shutdown(role.stopping()).await?;
            Ok(())
        });
    }

    // The lake: every change-event topic into its raw.* table, and current.* kept up to date.
    {
        let (bus, registry, lake, policy) =
            (p.bus.clone(), p.registry.clone(), p.lake.clone(), config.lake.flush_policy());
        roles::supervise(&mut tasks, &health, "lake", &stop, move |role| {
            let writers =
                Writers { bus: bus.clone(), registry: registry.clone(), lake: lake.clone(), policy, partitions: None };
            async move {
                role.ready();
                lake_role::follow(writers, None, role.stop()).await
            }
        });
        let (lake, every) = (p.lake.clone(), config.up.current_interval);
        roles::supervise(&mut tasks, &health, "current", &stop, move |role| keep_current(lake.clone(), every, role));
    }

    // The speed layer.
    // A folder that is not there holds no pipelines or rules: nothing to run, nothing refused.
    let st = &config.stream;
    let (pipelines, errors) = match st.pipelines_dir.is_dir() {
        true => pipeline::load_dir(&st.pipelines_dir),
        false => (Vec::new(), Vec::new()),
    };
    let (mut alerts, alert_errors) = match st.alerts_dir.is_dir() {
        true => alert::load_dir(&st.alerts_dir),
        false => Default::default(),
    };
    for e in errors.iter().chain(&alert_errors) {
        tracing::error!("refused: {e}");
    }
    if !errors.is_empty() || !alert_errors.is_empty() {
        health.set(
            "stream files",
            roles::RoleState::Failed {
                error: format!("{} file(s) refused (see the log)", errors.len() + alert_errors.len()),
                attempts: 1,
            },
        );
    }
    if let Some(receiver) = options.alert_receiver {
        alerts.receivers = vec![receiver];
        for r in &mut alerts.rules {
            r.receivers.clear();
        }
    }
    if !pipelines.is_empty() {
        let needs_registry = pipelines.iter().any(|p| p.source.format != Format::Json);
        let shared = Arc::new(stream::Shared {
            bus: p.bus.clone(),
            registry: needs_registry.then(|| p.registry.clone()),
            lake: p.lake.clone(),
            alerts: Arc::new(alerts),
            notifier: Notifier::start(Retry::default()),
            config: config.clone(),
        });
        {
            let (bus, silences) = (p.bus.clone(), shared.alerts.silences.clone());
            roles::supervise(&mut tasks, &health, "silences", &stop, move |role| {
                let (bus, silences) = (bus.clone(), silences.clone());
                async move {
                    role.ready();
                    Ok(weir_stream::silence::follow(bus, silences, role.stop()).await?)
                }
            });
        }
        for pipeline in pipelines {
            stream::spawn_pipeline(&mut tasks, &health, shared.clone(), pipeline, &stop);
        }
    }

    // The orchestrator over flow.dags_dir.
    {
        let (store, lake, flow, bus) = (p.store.clone(), Arc::new(p.lake.clone()), config.flow.clone(), p.bus.clone());
        let gate = options.scheduler_gate;
        roles::supervise(&mut tasks, &health, "scheduler", &stop, move |role| {
            let scheduler = Scheduler::new(store.clone(), lake.clone(), flow.clone()).with_bus(bus.clone());
            let mut gate = gate.clone();
            async move {
                if let Some(gate) = &mut gate {
                    tokio::select! {
                        _ = gate.wait_for(|open| *open) => {}
                        _ = role.stopping() => return Ok(()),
                    }
                }
                role.ready();
                Ok(scheduler.run(role.stopping()).await?)
            }
        });
    }

    // Serving answers once every role above is registered, so /healthz never omits one.
    roles::run_once(&mut tasks, &health, "serve", &stop, move |role| async move {
        role.ready();
        run.await
    });

    Ok(Up {
        tasks,
        stop: stop_tx,
        health,
        api,
        pg,
        lag,
        realtime,
        session_token,
        drain_timeout: config.up.drain_timeout,
    })
}

impl Up {
    /// A receiver of the stop signal, for work a caller adds beside the roles.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Runs until `duration` passed, Ctrl-C or SIGTERM, showing the status on `console`; then stops every
    /// role and waits up to `up.drain_timeout` for them to commit and save their offsets.
    pub async fn wait(
        mut self,
        platform: &Platform,
        console: &status::Console,
        duration: Option<Duration>,
    ) -> anyhow::Result<()> {
        let status =
            status::Status::new(platform.store.clone(), self.health.clone(), self.lag.clone(), self.realtime.clone());
        let every = platform.config.up.status_interval;
        let shown = tokio::spawn(status.show(console.clone(), every, self.stop.subscribe()));
        let until = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = until => {}
            _ = telemetry::stop_signal() => {}
        }
        let _ = self.stop.send(true);
        let _ = shown.await;
        console.done();
        println!("[weir] stopping: committing what the roles hold (at most {:?})", self.drain_timeout);
        let drained =
            tokio::time::timeout(self.drain_timeout, async { while self.tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let busy: Vec<String> = self
                .health
                .snapshot()
                .into_iter()
                .filter(|(_, s)| !matches!(s, roles::RoleState::Stopped { .. }))
                .map(|(n, _)| n)
                .collect();
            self.tasks.abort_all();
            anyhow::bail!(
                "roles still busy after {:?}, stopped without finishing: {} (their uncommitted input is read again at the next start)",
                self.drain_timeout,
                busy.join(", ")
            );
        }
        Ok(())
    }
}

/// Rebuilds `current.<t>` whenever `raw.<t>` has a commit the last build did not see.
async fn keep_current(lake: Lake, every: Duration, role: roles::Role) -> anyhow::Result<()> {
    role.ready();
    let mut built: HashMap<String, u64> = HashMap::new();
    let mut stop = role.stop();
    loop {
        for t in lake.tables().await? {
            if !t.name.starts_with("raw.") || built.get(&t.name) == Some(&t.version) {
                continue;
            }
            match weir_lake::current::build(&lake, &t.name).await {
                Ok(stats) => {
                    tracing::debug!(table = %stats.table, version = stats.version, rows = stats.rows, "current table rebuilt");
                    built.insert(t.name, stats.raw_version);
                }
                // A change log without a key has no current table; say so once per version.
                Err(e) => {
                    tracing::warn!(table = %t.name, error = %e, "no current table");
                    built.insert(t.name, t.version);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// `weir up`.
pub async fn run(config: &Config, args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let platform = Platform::open(config.clone()).await?;
    let options = Options { listen: args.listen, pg_listen: args.pg_listen, ..Options::default() };
    let up = start(&platform, options).await?;
    banner("Weir", &platform, &up);
    up.wait(&platform, &status::Console::default(), args.duration).await?;
    println!("[weir] stopped after {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What is running and how to reach it.
pub fn banner(title: &str, platform: &Platform, up: &Up) {
    let c = &platform.config;
    println!("{title}: every configured role in one process");
    println!("  bus {}   lake {}   metadata {}", c.bus.url, c.lake.url, c.metadata.url);
    let sources: Vec<&str> = c.sources.iter().map(|s| s.name()).collect();
    println!(
        "  sources {}   dags {}   pipelines {}   log {}",
        if sources.is_empty() { "none".to_string() } else { sources.join(", ") },
        c.flow.dags_dir.display(),
        c.stream.pipelines_dir.display(),
        c.up.log_file.display()
    );
    let api = up.api;
    let token = up.session_token.as_deref();
    match token {
        Some(t) => println!("  console     http://{api}/#token={t}   (bearer token {t})"),
        None => println!("  console     http://{api}/   (tokens from {} / serving.tokens_file)", c.serving.tokens_env),
    }
    println!("  SQL API     http://{api}/api/v1/query   health http://{api}/healthz   metrics http://{api}/metrics");
    if let Some(pg) = up.pg {
        println!("  psql        psql 'postgresql://{}:{}@{pg}/weir'", c.serving.pg_user, token.unwrap_or("<token>"));
    }
    println!(
        "  beside it   weir topics list · weir consume <topic> --group g · weir query \"SELECT …\" · weir dags list"
    );
}
