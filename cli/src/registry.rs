//! `weir registry`: the embedded schema registry as a service, with `/healthz` and `/metrics`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use clap::Args;
use weir_schemas::registry::{server, store::SqlRegistry};

use crate::{config::Config, telemetry};

/// `weir registry`.
#[derive(Args)]
pub struct RegistryArgs {
    /// Address to listen on (default: registry.listen, 127.0.0.1:8081).
    #[arg(long)]
    listen: Option<SocketAddr>,
}

pub async fn serve(config: &Config, args: RegistryArgs) -> anyhow::Result<()> {
    let metrics = telemetry::init_metrics()?;
    let pool = config.metadata.connect().await?;
    let registry = SqlRegistry::open(pool).await.context("opening the schema registry tables")?;
    let app = server::router(Arc::new(registry)).merge(telemetry::router(metrics));
    let addr = args.listen.unwrap_or(config.registry.listen);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, metadata = %weir_schemas::metadata::redact(&config.metadata.url), "schema registry listening");
    println!("schema registry on http://{local}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
