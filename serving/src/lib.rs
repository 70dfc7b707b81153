//! # weir-serving — what dashboards query
//!
//! Owns the HTTP query API over the lake and the speed layer's results, with the lambda merge of
//! batch and real-time views.
//!
//! - [`config`]: `[serving]` in `weir.toml`: listen address, tokens, query limits.
//! - [`realtime`]: results topics (`weir.stream.*`) read into upsert tables, `realtime.*`.
//! - [`catalog`]: the DataFusion session over `raw.*`, `current.*`, `views.*`, `realtime.*` and
//!   the merged `serving.*` views; read-only queries under a timeout, a row and a memory limit.
//! - [`http`]: `POST /api/v1/query` (JSON or Arrow IPC), `GET /api/v1/tables`, the OpenAPI
//!   document, `/readyz`; bearer tokens.
//!
//! Still to come (the serving issue): the PostgreSQL wire, DAG/alert/pipeline routes, the web
//! dashboard and `weir demo`.

pub mod catalog;
pub mod config;
pub mod http;
pub mod pg;
pub mod realtime;

pub use config::ServingConfig;
