//! # weir-stream — the speed layer
//!
//! Streaming pipelines over bus topics: event-time windows with watermarks, aggregates,
//! checkpoints to the lake's object storage, and alert rules (sent by `weir-notify`'s notifiers).
//!
//! - [`config`]: `[stream]` in `weir.toml`.
//! - [`pipeline`]: pipeline files (`pipelines/*.yaml`) — source, filter, key, event time,
//!   window, aggregates, watermark.
//! - [`sql`]: pipelines written in SQL (`pipelines/*.sql`), parsed into the same [`Pipeline`].
//! - [`decode`]: bus messages (Debezium Avro envelopes, JSON) into Arrow batches.
//! - [`eval`]: the pipeline's SQL expressions compiled by DataFusion and evaluated per batch.
//! - [`join`]: stream–table joins: tables kept from Debezium changelog topics, events enriched.
//! - [`window`]: tumbling, hopping and session window state; closing, lateness, early results.
//! - [`sketch`]: mergeable quantile and distinct-count summaries.
//! - [`engine`]: runs one pipeline: watermark per partition, results topic, dead letters,
//!   checkpoints.
//! - [`scale`]: scale-out — a pipeline shared by several processes through consumer groups,
//!   repartitioned by key through a bus topic, one engine per partition.
//! - [`alert`]: alert rules with Prometheus semantics over results; `weir.alerts`.
//! - [`silence`]: silences from alert files and the API (`weir.alerts.silences`).

pub mod alert;
pub mod config;
pub mod decode;
pub mod engine;
pub mod eval;
pub mod interval;
pub mod ipc;
pub mod join;
pub mod pipeline;
pub mod scale;
pub mod silence;
pub mod sketch;
pub mod sql;
pub mod window;

pub use config::StreamConfig;
pub use engine::{Engine, EngineConfig, EngineError, Stats};
pub use pipeline::Pipeline;
