//! `weir ingest`: runs every configured `[[sources]]` entry, producing change events to the bus.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Args;
use weir_ingest::{SourceConfig, cassandra::source::CassandraSource, mysql::MysqlSource};
use weir_schemas::{
    registry::{SchemaRegistry, http::HttpRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
};

use crate::{config::Config, telemetry};

/// `weir ingest`.
#[derive(Args)]
pub struct IngestArgs {
    /// `weir ingest http`: accept JSON events over HTTP instead of running [[sources]].
    #[command(subcommand)]
    endpoint: Option<Endpoint>,
    /// Read what is there now, then exit (instead of following the sources).
    #[arg(long)]
    once: bool,
    /// Where to serve /healthz and /metrics (default: ingest.listen, 127.0.0.1:9091).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// Other ways in than the configured sources.
#[derive(clap::Subcommand)]
enum Endpoint {
    /// Accept JSON events on `POST /topics/{topic}` (REST Proxy v2, NDJSON or JSON arrays) and
    /// produce them to the bus; answers once the bus acknowledged them.
    Http {
        /// Where to listen (default: ingest.http.listen, 127.0.0.1:8090); also serves /healthz
        /// and /metrics.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Ask a running MySQL/MariaDB source to snapshot tables while it streams (Debezium's
    /// `execute-snapshot` signal on `<prefix>.signals`), or to stop, pause or resume.
    Snapshot(SnapshotArgs),
}

/// `weir ingest snapshot`.
#[derive(Args)]
struct SnapshotArgs {
    /// The `[[sources]]` entry's name.
    source: String,
    /// Tables (`db.table`, or regular expressions over such names), comma-separated.
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Take a blocking snapshot (streaming waits) instead of an incremental one.
    #[arg(long)]
    blocking: bool,
    /// Only rows matching a condition: `db.table=SQL condition` (repeatable).
    #[arg(long = "where", value_name = "TABLE=CONDITION")]
    conditions: Vec<String>,
    /// Stop snapshotting `--tables` (all when none is given).
    #[arg(long, conflicts_with_all = ["pause", "resume", "blocking"])]
    stop: bool,
    /// Pause the incremental snapshot.
    #[arg(long, conflicts_with_all = ["stop", "resume", "blocking"])]
    pause: bool,
    /// Resume a paused incremental snapshot.
    #[arg(long, conflicts_with_all = ["stop", "pause", "blocking"])]
    resume: bool,
    /// Wait, showing progress, until the source has taken the signal and finished its
    /// snapshots (reads the source's offset file: run it where the source runs).
    #[arg(long)]
    wait: bool,
}

/// `weir ingest http`.
async fn http(config: &Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let routes = http_routes(config, bus).await?.merge(telemetry::router(metrics));
    let addr = listen.unwrap_or(config.ingest.http.listen);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(listen = %listener.local_addr()?, "HTTP event ingestion running");
    axum::serve(listener, routes)
        .with_graceful_shutdown(telemetry::stop_signal())
        .await
        .context("HTTP ingestion server")
}

/// The HTTP ingestion routes (`POST /topics/{topic}`) with the configured tokens.
pub async fn http_routes(config: &Config, bus: Arc<dyn weir_bus::Bus>) -> anyhow::Result<axum::Router> {
    let h = &config.ingest.http;
    let tokens = weir_schemas::tokens::Tokens::load_watched(Some(&h.tokens_env), h.tokens_file.as_deref())?;
    let tokens = if tokens.is_empty() && h.tokens_file.is_none() {
        tracing::warn!(
            "{} and ingest.http.tokens_file hold no token: anyone who reaches the listener may post",
            h.tokens_env
        );
        None
    } else {
        Some(tokens)
    };
    Ok(weir_ingest::http::router(bus, h, tokens).await?)
}

/// `weir ingest snapshot`: sends the signal, and with `--wait` follows the source's offset.
async fn snapshot(config: &Config, args: SnapshotArgs) -> anyhow::Result<()> {
    use weir_ingest::mysql::{offset, signal};
    let source = config
        .sources
        .iter()
        .find_map(|s| match s {
            SourceConfig::Mysql(c) if c.name == args.source => Some(c),
            _ => None,
        })
        .with_context(|| format!("no MySQL/MariaDB source named {:?} in [[sources]]", args.source))?;
    let (kind, data) = if args.stop {
        ("stop-snapshot", serde_json::json!({"data-collections": args.tables, "type": "incremental"}))
    } else if args.pause {
        ("pause-snapshot", serde_json::json!({}))
    } else if args.resume {
        ("resume-snapshot", serde_json::json!({}))
    } else {
        anyhow::ensure!(!args.tables.is_empty(), "--tables names the tables to snapshot");
        let mut conditions = Vec::new();
        for c in &args.conditions {
            let (table, filter) =
                c.split_once('=').with_context(|| format!("--where {c:?}: expected db.table=condition"))?;
            conditions.push(serde_json::json!({"data-collection": table.trim(), "filter": filter.trim()}));
        }
        let kind = if args.blocking { "blocking" } else { "incremental" };
        (
            "execute-snapshot",
            serde_json::json!({"data-collections": args.tables, "type": kind, "additional-conditions": conditions}),
        )
    };
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let topic = signal::topic(&source.topic_prefix);
    match bus.create_topic(&topic, 1).await {
        Ok(()) | Err(weir_bus::BusError::TopicExists(_)) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {topic}")),
    }
    let record = signal::record(&source.topic_prefix, kind, &data);
    let sent = bus.producer().await?.send(&topic, vec![record]).await.with_context(|| format!("sending to {topic}"))?;
    let at = sent.first().map(|d| d.offset).unwrap_or_default();
    println!("{kind} {data} sent to {topic} (offset {at})");
    if !args.wait {
        return Ok(());
    }
    let path = offset::path(&source.state_dir, &source.name);
    let mut last = String::new();
    loop {
        let saved = offset::load(&path)?.unwrap_or_default();
        let q = &saved.snapshots;
        let line = if saved.signal_offset <= at {
            "waiting for the source to take the signal".to_string()
        } else if args.stop || args.pause {
            println!("taken");
            return Ok(());
        } else if q.paused {
            format!("paused; queued: {}", q.tables.iter().cloned().collect::<Vec<_>>().join(", "))
        } else if !q.blocking.is_empty() {
            format!("blocking snapshot of {}", q.blocking.join(", "))
        } else if let Some(table) = q.tables.front() {
            let key = q.last_key.as_ref().map(|k| format!("{k:?}")).unwrap_or_else(|| "the start".into());
            format!("{table}: after key {key}; {} more table(s) queued", q.tables.len() - 1)
        } else {
            println!("done");
            return Ok(());
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The registry the configuration names: `registry.url`, else the embedded one in the metadata DB.
pub async fn registry(config: &Config) -> anyhow::Result<Arc<dyn SchemaRegistry>> {
    Ok(match &config.registry.url {
        Some(url) => {
            let r = &config.registry;
            let registry = HttpRegistry::new(url, Duration::from_secs(10))?;
            let password =
                weir_schemas::secret::load("registry.password", r.password_env.as_deref(), r.password_file.as_deref())?;
            match (&r.username, password) {
                (Some(user), Some(password)) => Arc::new(registry.with_basic_auth(user, password)),
                (None, None) => Arc::new(registry),
                _ => anyhow::bail!("registry.username and registry.password_env (or _file) go together"),
            }
        }
        None => {
            Arc::new(SqlRegistry::open(config.metadata.connect().await?).await.context("opening the schema registry")?)
        }
    })
}

pub async fn run(config: &Config, args: IngestArgs) -> anyhow::Result<()> {
    match args.endpoint {
        Some(Endpoint::Http { listen }) => return http(config, listen).await,
        Some(Endpoint::Snapshot(a)) => return snapshot(config, a).await,
        None => {}
    }
    anyhow::ensure!(!config.sources.is_empty(), "no [[sources]] in the configuration: nothing to ingest");
    let metrics = telemetry::init_metrics()?;
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let serializer = Arc::new(AvroSerializer::new(registry(config).await?));
    let mut sources = Vec::new();
    for source in &config.sources {
        sources.push(Running::open(source, &bus, &serializer).await?);
    }
    if args.once {
        for (source, source_config) in sources.iter_mut().zip(&config.sources) {
            println!("{}: {}", source_config.name(), source.once().await?);
        }
        return Ok(());
    }
    let addr = args.listen.unwrap_or(config.ingest.listen);
    let (bound, server) = telemetry::ops_server(addr, metrics).await?;
    tracing::info!(listen = %bound, sources = sources.len(), "ingest running");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for source in sources {
        let mut stopped = stopped.clone();
        tasks.spawn(source.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    tokio::pin!(server);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            result = &mut server => {
                result.context("health and metrics server")?;
                break;
            }
            _ = &mut ctrl_c => break,
            next = tasks.join_next() => match next {
                // A source that is done (snapshot_mode = "initial_only") leaves the others running.
                Some(result) => result??,
                None => break,
            },
        }
    }
    let _ = stop.send(true);
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

/// A configured source, running.
pub enum Running {
    Cassandra(Box<CassandraSource>),
    Mysql(Box<MysqlSource>),
}

impl Running {
    /// Connects a configured source (its offsets, its server, its schema history).
    pub async fn open(
        source: &SourceConfig,
        bus: &Arc<dyn weir_bus::Bus>,
        serializer: &Arc<AvroSerializer>,
    ) -> anyhow::Result<Running> {
        Ok(match source {
            SourceConfig::Cassandra(c) => {
                Running::Cassandra(Box::new(CassandraSource::new(c.clone(), bus.as_ref(), serializer.clone()).await?))
            }
            SourceConfig::Mysql(c) => {
                Running::Mysql(Box::new(MysqlSource::new(c.clone(), bus.clone(), serializer.clone()).await?))
            }
        })
    }

    /// Reads what is there now; a line saying what was done.
    async fn once(&mut self) -> anyhow::Result<String> {
        Ok(match self {
            Running::Cassandra(s) => {
                let stats = s.poll_once().await?;
                format!(
                    "{} segment(s) read, {} finished, {} change event(s) produced",
                    stats.segments, stats.completed, stats.events
                )
            }
            Running::Mysql(s) => {
                let stats = s.catch_up().await?;
                format!(
                    "{} snapshot row(s), {} binlog change(s), {} record(s) produced; now at {}:{}",
                    stats.snapshot_rows,
                    stats.changes,
                    stats.records,
                    s.offset().file,
                    s.offset().pos
                )
            }
        })
    }

    /// Follows the source until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> anyhow::Result<()> {
        match self {
            Running::Cassandra(s) => (*s).run(shutdown).await?,
            Running::Mysql(s) => (*s).run(shutdown).await?,
        }
        Ok(())
    }
}
