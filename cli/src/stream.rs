//! `weir stream`: the speed-layer role. Runs every pipeline of the pipeline folder with the
//! alert rules of the alert folder; a pipeline that fails is restarted from its checkpoint
//! alone (as a supervised role, [`crate::roles`]), a broken file is reported and skipped.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;
use weir_bus::Bus;
use weir_lake::Lake;
use weir_notify::{Notifier, Retry};
use weir_schemas::registry::SchemaRegistry;
use weir_stream::{
    Engine, Pipeline, Stats,
    alert::{self, AlertConfig, RuleSet},
    pipeline::{self, Format},
    scale::{Member, RulesFactory},
    silence,
};

use crate::{
    config::Config,
    ingest::registry,
    roles::{self, Health},
    telemetry,
};

/// `weir stream`.
#[derive(Args)]
pub struct StreamArgs {
    /// Process what is on the source topics now, close every window, checkpoint, then exit.
    #[arg(long)]
    once: bool,
    /// List the pipelines and alert rules (and the files refused), then exit.
    #[arg(long)]
    check: bool,
    /// Where to serve /healthz and /metrics (default: stream.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Share each pipeline's partitions with the other `weir stream --scale-out` processes on
    /// the same bus (as stream.scale_out = true).
    #[arg(long)]
    scale_out: bool,
}

/// Everything a pipeline needs to (re)start.
pub struct Shared {
    pub bus: Arc<dyn Bus>,
    pub registry: Option<Arc<dyn SchemaRegistry>>,
    pub lake: Lake,
    pub alerts: Arc<AlertConfig>,
    pub notifier: Notifier,
    pub config: Config,
}

/// A pipeline run by this process alone, or as one member of its consumer groups.
enum Running {
    Alone(Engine),
    Member(Member),
}

impl Shared {
    async fn open(&self, p: &Pipeline) -> anyhow::Result<Running> {
        let registry = needs_registry(p).then(|| self.registry.clone()).flatten();
        let (engine, bus, lake) = (self.config.stream.engine(), self.bus.clone(), self.lake.clone());
        if self.config.stream.scale_out {
            let (pipeline, alerts, notifier) = (p.clone(), self.alerts.clone(), self.notifier.clone());
            let rules: RulesFactory =
                Arc::new(move || RuleSet::for_pipeline(&pipeline, alerts.clone(), Some(notifier.clone())));
            return Ok(Running::Member(Member::open(p.clone(), engine, bus, registry, lake, rules).await?));
        }
        let rules = RuleSet::for_pipeline(p, self.alerts.clone(), Some(self.notifier.clone()));
        Ok(Running::Alone(Engine::open(p.clone(), engine, bus, registry, lake, rules).await?))
    }
}

impl Running {
    async fn drain(&mut self) -> anyhow::Result<Stats> {
        Ok(match self {
            Running::Alone(e) => e.drain().await?,
            Running::Member(m) => m.drain().await?,
        })
    }

    async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<Stats> {
        Ok(match self {
            Running::Alone(e) => e.run(shutdown).await?,
            Running::Member(m) => m.run(shutdown).await?,
        })
    }
}

pub async fn run(config: &Config, args: StreamArgs) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.stream.scale_out |= args.scale_out;
    let config = &config;
    let s = &config.stream;
    let (pipelines, mut errors) = pipeline::load_dir(&s.pipelines_dir);
    let (alerts, alert_errors) = alert::load_dir(&s.alerts_dir);
    errors.extend(alert_errors);
    if args.check {
        for p in &pipelines {
            let mut joined: String = p.joins.iter().map(|j| format!(" ⋈ {}", j.table)).collect();
            if let Some(i) = &p.interval {
                let span = |d| humantime::format_duration(d).to_string();
                joined += &format!(" ⋈ {} within [-{}, +{}]", i.stream.topic, span(i.before), span(i.after));
            }
            println!("pipeline {:<28} {}{joined} → {}", p.id, p.source.topic, p.output_topic);
        }
        for r in &alerts.rules {
            println!("alert    {:<28} on {}: {}", r.name, r.pipeline, r.expr);
        }
        for e in &errors {
            println!("refused  {e}");
        }
        return Ok(());
    }
    for e in &errors {
        tracing::error!("refused: {e}");
    }
    for r in alerts.rules.iter().filter(|r| !pipelines.iter().any(|p| p.id == r.pipeline)) {
        tracing::error!(alert = %r.name, "rule watches pipeline {:?}, which is not loaded", r.pipeline);
    }
    anyhow::ensure!(!pipelines.is_empty(), "no pipelines in {}", s.pipelines_dir.display());
    let needs_registry = pipelines.iter().any(needs_registry);
    let shared = Arc::new(Shared {
        bus: weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?,
        registry: if needs_registry { Some(registry(config).await?) } else { None },
        lake: Lake::new(&config.lake),
        alerts: Arc::new(alerts),
        notifier: Notifier::start(Retry::default()),
        config: config.clone(),
    });
    if args.once {
        for p in &pipelines {
            let mut running = shared.open(p).await?;
            let stats = running.drain().await?;
            println!("{}: {}", p.id, serde_json::to_string(&stats)?);
        }
        // Let queued notifications go out before the process ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        return Ok(());
    }
    let metrics = telemetry::init_metrics()?;
    let listen = args.listen.unwrap_or(s.listen);
    let (bound, server) = telemetry::ops_server(listen, metrics).await?;
    tracing::info!(listen = %bound, pipelines = pipelines.len(), "stream running");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let health = Arc::new(Health::default());
    // Silences made through the API hold notifications here too.
    let silences = tokio::spawn(silence::follow(shared.bus.clone(), shared.alerts.silences.clone(), stop_rx.clone()));
    for p in pipelines {
        spawn_pipeline(&mut tasks, &health, shared.clone(), p, &stop_rx);
    }
    tokio::select! {
        _ = telemetry::stop_signal() => tracing::info!("stopping: writing checkpoints"),
        r = server => r.context("health and metrics server")?,
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    if let Err(e) = silences.await? {
        tracing::warn!(error = %e, "following {} failed", silence::SILENCES_TOPIC);
    }
    Ok(())
}

/// Whether `p` reads Avro (its source, or a joined table's changelog): schemas from the registry.
fn needs_registry(p: &Pipeline) -> bool {
    p.source.format != Format::Json || p.joins.iter().any(|j| j.table.changelog().is_some())
}

/// Runs pipeline `p` as role `pipeline <id>` until `stop`, reopening it from its checkpoint
/// after a failure.
pub fn spawn_pipeline(
    tasks: &mut tokio::task::JoinSet<()>,
    health: &Arc<Health>,
    shared: Arc<Shared>,
    p: Pipeline,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    roles::supervise(tasks, health, &format!("pipeline {}", p.id), stop, move |role| {
        let (shared, p) = (shared.clone(), p.clone());
        async move {
            // A source or joined changelog topic its producer has not created yet (a first
            // snapshot still running) is a wait, not a failure.
            let changelogs = p.joins.iter().filter_map(|j| j.table.changelog());
            for topic in std::iter::once(p.source.topic.as_str()).chain(changelogs) {
                let mut waiting = false;
                while let Err(weir_bus::BusError::UnknownTopic(_)) = shared.bus.topic(topic).await {
                    if !std::mem::replace(&mut waiting, true) {
                        tracing::info!(pipeline = %p.id, %topic, "waiting for the topic to be created");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        _ = role.stopping() => return Ok(()),
                    }
                }
            }
            let running = shared.open(&p).await?;
            role.ready();
            let stats = running.run(role.stopping()).await?;
            tracing::info!(pipeline = %p.id, ?stats, "pipeline stopped");
            Ok(())
        }
    });
}
