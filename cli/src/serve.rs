//! `weir serve`: the serving role. Builds the query catalogue (lake tables, real-time views from
//! the results topics, merged `serving.*` views), refreshes it every `serving.refresh_interval`,
//! and serves the HTTP API (SQL, alerts and silences, lag, and the orchestrator's DAG routes), the
//! PostgreSQL wire and the web dashboard, with /healthz, /readyz and /metrics.

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
    let tls = s.tls.as_ref().map(weir_serving::tls::acceptor).transpose()?;
    let metrics = telemetry::init_metrics()?;
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let realtime = Arc::new(Realtime::new(s.realtime_retention));
    let catalog = Arc::new(Catalog::new(Lake::new(&config.lake), realtime.clone(), s.clone()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(realtime::follow(bus.clone(), realtime.clone(), s.refresh_interval, stop.clone()));
    let refresher = tokio::spawn(catalog.clone().keep_fresh(s.refresh_interval, stop.clone()));
    let pg = match tokens.is_empty() {
        false => {
            let addr = args.pg_listen.unwrap_or(s.pg_listen);
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            tracing::info!(listen = %listener.local_addr()?, user = %s.pg_user, "PostgreSQL wire");
            let (user, tokens, tls) = (s.pg_user.clone(), tokens.clone(), tls.clone());
            Some(tokio::spawn(pg::serve(listener, catalog.clone(), user, tokens, tls, stop.clone())))
        }
        true => None,
    };
    let listen = args.listen.unwrap_or(s.listen);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, tls = tls.is_some(), "serving");
    let silences = Arc::new(Silences::default());
    let silence_follower = tokio::spawn(silence::follow(bus.clone(), silences.clone(), stop.clone()));
    let (protected, measure) =
        status_routes(bus.clone(), Lake::new(&config.lake), realtime, silences, s.refresh_interval, stop.clone())
            .await?;
    let lag_tracker = tokio::spawn(measure);
    let store = weir_flow::store::Store::open(config.metadata.connect().await?).await?;
    let routes = routes(
        catalog,
        tokens,
        store,
        Arc::new(Lake::new(&config.lake)),
        config.flow.dags_dir.clone(),
        metrics,
        protected,
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tls {
        Some(tls) => {
            let listener = weir_serving::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, routes).with_graceful_shutdown(ctrl_c).await
        }
        None => axum::serve(listener, routes).with_graceful_shutdown(ctrl_c).await,
    }
    .context("HTTP server")?;
    let _ = stop_tx.send(true);
    refresher.await?;
    lag_tracker.await?;
    follower.await??;
    silence_follower.await??;
    if let Some(pg) = pg {
        pg.await??;
    }
    Ok(())
}

/// The serving crate's routes that need the tokens — alerts and silences (over `silences`), lag
/// and pipeline status — and the lag measurement feeding them, to run until `stop`.
pub async fn status_routes(
    bus: Arc<dyn weir_bus::Bus>,
    lake: Lake,
    realtime: Arc<Realtime>,
    silences: Arc<Silences>,
    every: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(axum::Router, impl std::future::Future<Output = ()> + Send + 'static)> {
    let lag = Arc::new(LagTracker::new(bus.clone(), lake));
    let routes = weir_serving::alerts::router(realtime.clone(), silences, Arc::from(bus.producer().await?))
        .merge(weir_serving::lag::router(lag.clone(), realtime));
    Ok((routes, lag.keep_measuring(every, stop)))
}

/// Every HTTP route of the serving role: the query API and dashboard, the orchestrator's DAG
/// routes and the serving crate's `protected` ones (alerts, lag) behind the same tokens,
/// /healthz and /metrics.
pub fn routes(
    catalog: Arc<Catalog>,
    tokens: Arc<Tokens>,
    store: weir_flow::store::Store,
    lake: Arc<Lake>,
    dags_dir: std::path::PathBuf,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    protected: axum::Router,
) -> axum::Router {
    let protected = weir_flow::api::router(store, lake, dags_dir).merge(protected);
    http::router_with_paths(catalog, tokens.clone(), weir_flow::api::openapi_paths())
        .merge(http::protect(protected, tokens))
        .merge(telemetry::router(metrics))
}
