//! Logs (`tracing` to stderr, filtered by `WEIR_LOG` or `RUST_LOG`; for `weir up` to a file, with
//! only errors on the terminal) and the Prometheus recorder, plus the `/healthz` and `/metrics`
//! routes every Weir service serves.

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

fn filter(default_level: &str) -> String {
    std::env::var("WEIR_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default_level.to_string())
}

/// Starts logging at `default_level` unless `WEIR_LOG` / `RUST_LOG` say otherwise.
pub fn init_logs(default_level: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter(default_level)))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Logs at `default_level` (or `WEIR_LOG` / `RUST_LOG`) to `file`, appending, and to stderr: all
/// of it with `verbose`, else errors only, so that the terminal stays readable.
pub fn init_logs_to_file(default_level: &str, file: &std::path::Path, verbose: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("opening the log file {}", file.display()))?;
    let level = filter(default_level);
    let to_file = tracing_subscriber::fmt::layer()
        .with_writer(std::sync::Mutex::new(log))
        .with_ansi(false)
        .with_filter(EnvFilter::new(&level));
    // The Delta kernel logs a table that does not exist yet as an error: not one for a person.
    let terminal = if verbose { level } else { "error,buoyant_kernel=off".to_string() };
    let to_stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(EnvFilter::new(terminal));
    let _ = tracing_subscriber::registry().with(to_file).with(to_stderr).try_init();
    Ok(())
}

/// Installs the process-wide Prometheus recorder.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// Binds `listen` and returns the address bound and the server of [`router`] on it, which runs
/// when awaited (a role selects on it beside its own work).
pub async fn ops_server(
    listen: std::net::SocketAddr,
    metrics: PrometheusHandle,
) -> anyhow::Result<(std::net::SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    Ok((listener.local_addr()?, axum::serve(listener, router(metrics)).into_future()))
}

/// `GET /healthz` (process is up) and `GET /metrics` (Prometheus text format).
pub fn router(metrics: PrometheusHandle) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).merge(metrics_router(metrics))
}

/// `GET /metrics` (Prometheus text format).
pub fn metrics_router(metrics: PrometheusHandle) -> Router {
    Router::new().route("/metrics", get(move || std::future::ready(metrics.render())))
}

/// Resolves on Ctrl-C or SIGTERM (what `docker stop`, systemd and Kubernetes send).
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGTERM; only Ctrl-C stops this process");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
