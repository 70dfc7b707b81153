//! `weir serve`: the serving role. Builds the query catalogue (lake tables, real-time views from
//! the results topics, merged `serving.*` views), refreshes it every `serving.refresh_interval`,
//! and serves the HTTP API (SQL, alerts and silences, lag, and the orchestrator's DAG routes), the
//! PostgreSQL wire and the operator console, with /healthz, /readyz and /metrics.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use clap::Args;
use weir_lake::Lake;
use weir_schemas::tokens::Tokens;
use weir_serving::{
    catalog::Catalog,
    http,
    lag::LagTracker,
    pg,
    realtime::{self, Realtime},
};
use weir_stream::silence::{self, Silences};

use crate::{config::Config, telemetry};

/// `weir serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Where to serve the API (default: serving.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where to serve the PostgreSQL wire (default: serving.pg_listen).
    #[arg(long)]
    pg_listen: Option<SocketAddr>,
}

pub async fn run(config: &Config, args: ServeArgs) -> anyhow::Result<()> {
    let s = &config.serving;
    let tokens = Tokens::load_watched(Some(&s.tokens_env), s.tokens_file.as_deref())?;
    if tokens.is_empty() {
        tracing::warn!("{} and serving.tokens_file hold no token: the API will refuse every query", s.tokens_env);
    }
    let metrics = telemetry::init_metrics()?;
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let store = weir_flow::store::Store::open(config.metadata.connect().await?).await?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let parts = Parts {
        bus,
        lake: Lake::new(&config.lake),
        store,
        tokens,
        dags_dir: config.flow.dags_dir.clone(),
        health: telemetry::router(metrics),
    };
    let listen = (args.listen.unwrap_or(s.listen), args.pg_listen.unwrap_or(s.pg_listen));
    let bound = bind(config, parts, listen, stop).await?;
    tokio::spawn(async move {
        telemetry::stop_signal().await;
        let _ = stop_tx.send(true);
    });
    bound.run.await
}

/// What [`bind`] needs besides the configuration.
pub struct Parts {
    pub bus: Arc<dyn weir_bus::Bus>,
    pub lake: Lake,
    pub store: weir_flow::store::Store,
    pub tokens: Arc<Tokens>,
    pub dags_dir: std::path::PathBuf,
    /// `/healthz` and `/metrics`.
    pub health: axum::Router,
}

/// The serving role, its listeners bound.
pub struct Bound {
    /// Where the HTTP API listens.
    pub api: SocketAddr,
    /// Where the PostgreSQL wire listens (none without tokens: it would refuse everyone).
    pub pg: Option<SocketAddr>,
    /// The consumer-lag measurements (for a status display).
    pub lag: Arc<LagTracker>,
    /// The real-time views, alerts among them.
    pub realtime: Arc<Realtime>,
    /// Serves until `stop`, then ends every part.
    pub run: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
}

/// Binds the serving role's listeners (`listen` = API, PostgreSQL wire) and builds what serves
/// them: the catalogue refreshed every `serving.refresh_interval`, the real-time views followed
/// from the results topics, silences, consumer lag, the HTTP API and the PostgreSQL wire.
pub async fn bind(
    config: &Config,
    parts: Parts,
    listen: (SocketAddr, SocketAddr),
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Bound> {
    let s = &config.serving;
    let Parts { bus, lake, store, tokens, dags_dir, health } = parts;
    let tls = s.tls.as_ref().map(weir_serving::tls::acceptor).transpose()?;
    let realtime = Arc::new(Realtime::new(s.realtime_retention));
    let catalog = Arc::new(Catalog::new(lake.clone(), realtime.clone(), s.clone()));
    let pg_listener = match tokens.is_empty() {
        false => {
            let addr = listen.1;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            tracing::info!(listen = %listener.local_addr()?, user = %s.pg_user, "PostgreSQL wire");
            Some(listener)
        }
        true => None,
    };
    let pg = pg_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let listener = tokio::net::TcpListener::bind(listen.0).await.with_context(|| format!("binding {}", listen.0))?;
    let api = listener.local_addr()?;
    tracing::info!(listen = %api, tls = tls.is_some(), "serving");
    let silences = Arc::new(Silences::default());
    let lag = Arc::new(LagTracker::new(bus.clone(), lake.clone()));
    let protected = weir_serving::alerts::router(realtime.clone(), silences.clone(), Arc::from(bus.producer().await?))
        .merge(weir_serving::lag::router(lag.clone(), realtime.clone()));
    let lake = Arc::new(lake);
    let protected = protected.merge(weir_serving::lake::router(lake.clone()));
    let routes = routes(catalog.clone(), tokens.clone(), store, lake, dags_dir, health, protected);
    let every = s.refresh_interval;
    let user = s.pg_user.clone();
    let (views, tracker) = (realtime.clone(), lag.clone());
    let run = async move {
        let mut until = stop.clone();
        let until = async move {
            let _ = until.wait_for(|s| *s).await;
        };
        let pg_tls = tls.clone();
        let http = async {
            match tls {
                Some(tls) => {
                    let listener = weir_serving::tls::TlsListener::new(listener, tls)?;
                    axum::serve(listener, routes).with_graceful_shutdown(until).await
                }
                None => axum::serve(listener, routes).with_graceful_shutdown(until).await,
            }
            .context("HTTP server")
        };
        let pg = async {
            match pg_listener {
                Some(l) => {
                    pg::serve(l, catalog.clone(), user, tokens, pg_tls, stop.clone()).await.context("PostgreSQL wire")
                }
                None => Ok(()),
            }
        };
        let follow = async {
            realtime::follow(bus.clone(), views, every, stop.clone()).await.context("following the results topics")
        };
        let silenced =
            async { silence::follow(bus.clone(), silences, stop.clone()).await.context("following the silences") };
        let background = async {
            tokio::join!(catalog.clone().keep_fresh(every, stop.clone()), tracker.keep_measuring(every, stop.clone()));
            anyhow::Ok(())
        };
        tokio::try_join!(http, pg, follow, silenced, background)?;
        Ok(())
    };
    Ok(Bound { api, pg, lag, realtime, run: Box::pin(run) })
}

/// Every HTTP route of the serving role: the query API and console, the orchestrator's DAG
/// routes and the serving crate's `protected` ones (alerts, lag) behind the same tokens, and
/// `health` (/healthz and /metrics).
pub(crate) fn routes(
    catalog: Arc<Catalog>,
    tokens: Arc<Tokens>,
    store: weir_flow::store::Store,
    lake: Arc<Lake>,
    dags_dir: std::path::PathBuf,
    health: axum::Router,
    protected: axum::Router,
) -> axum::Router {
    let protected = weir_flow::api::router(store, lake, dags_dir).merge(protected);
    http::router_with_paths(catalog, tokens.clone(), weir_flow::api::openapi_paths())
        .merge(http::protect(protected, tokens))
        .merge(health)
}
