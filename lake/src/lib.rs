//! # weir-lake — the immutable lake
//!
//! Owns the Delta tables on object storage: change-event topics become `raw.*` change-log tables,
//! appended exactly once by storing bus offsets in Delta `txn` actions in the same commit as the
//! data.
//!
//! - [`config`]: where the lake is.
//! - [`avro_arrow`]: envelopes (Avro, registry schemas) straight into Arrow columns.
//! - [`writer`]: one topic → one Delta table, exactly once, with a dead-letter topic.
//!
//! Still to come: `current.*` tables rebuilt from the change log, compaction and retention, S3.

pub mod avro_arrow;
pub mod config;
pub mod writer;

pub use config::{LakeConfig, LakeUrl};
