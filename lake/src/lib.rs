//! # weir-lake — the immutable lake
//!
//! Will own the Delta table writer on object storage (local disk or S3): change-event topics become
//! `raw.*` change-log tables, appended exactly once by storing Kafka offsets in Delta `txn`
//! actions in the same commit as the data; `current.*` tables rebuilt from the change log;
//! compaction and retention. Today it owns only its configuration: where the lake is.

pub mod config;

pub use config::{LakeConfig, LakeUrl};
