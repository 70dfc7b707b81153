//! # weir-serving — what dashboards query
//!
//! Owns the HTTP query API over the lake and the speed layer's results, with the lambda merge of
//! batch and real-time views.
//!
//! - [`config`]: `[serving]` in `weir.toml`: listen address, tokens, query limits.
//! - [`realtime`]: results topics (`weir.stream.*`) read into upsert tables, `realtime.*`.
//! - [`catalog`]: the DataFusion session over `raw.*`, `current.*`, `views.*`, `realtime.*` and
//!   the merged `serving.*` views; read-only queries under a timeout, a row and a memory limit.
//! - [`hot`]: in-memory copies of `views.*`/`current.*` tables with indexes for point lookups.
//! - [`http`]: `POST /api/v1/query` (JSON or Arrow IPC), `GET /api/v1/tables`, the OpenAPI
//!   document, `/readyz`, `/api/v1/whoami`, the operator console at `/` (`console/`); bearer tokens.
//! - [`alerts`]: alert states and silences (Alertmanager's silence format) over HTTP.
//! - [`lag`]: consumer lag of the lake writers and streaming pipelines, per topic, and its history.
//! - [`lake`]: the lake's tables over HTTP: versions, schema, history, a preview, freshness.
//! - [`pg`]: the PostgreSQL wire (datafusion-postgres) over the same catalogue.
//! - [`tls`]: `[serving.tls]`, the acceptor the HTTP API and the PostgreSQL wire share.
//!
//! Every endpoint but the health checks takes a bearer token of a scope that allows the request
//! ([`weir_schemas::tokens`]).

pub mod alerts;
pub mod catalog;
pub mod config;
pub mod hot;
pub mod http;
pub mod lag;
pub mod lake;
pub mod pg;
pub mod realtime;
pub mod tls;

pub use config::ServingConfig;

/// Runs `job` now and then every `period` until `stop` turns true (the catalogue refresh, the lag
/// measurement).
pub(crate) async fn every<F, Fut>(period: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        job().await;
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
