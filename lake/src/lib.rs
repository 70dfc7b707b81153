//! # weir-lake — the immutable lake
//!
//! Owns the Delta tables on object storage: change-event topics become `raw.*` change-log tables,
//! appended exactly once by storing bus offsets in Delta `txn` actions in the same commit as the
//! data; `current.*` tables are rebuilt from them; SQL runs over all of them.
//!
//! - [`config`]: where the lake is.
//! - [`storage`]: `s3://` through object_store, with conditional PUT for atomic commits.
//! - [`catalog`]: the lake's named tables; listing, history, compaction, vacuum.
//! - [`avro_arrow`]: envelopes (Avro, registry schemas) straight into Arrow columns.
//! - [`writer`]: one topic → one Delta table, exactly once.
//! - [`chunk`]: records of one schema, decoded together by whichever Parquet writer takes them.
//! - [`files`]: a commit's Parquet files, decoded and encoded on every core.
//! - [`dlq`]: the dead-letter topic of records that cannot be decoded.
//! - [`current`]: latest row per primary key, rebuilt from a change log.
//! - [`query`]: DataFusion over the lake, with time travel.
//! - [`signal`]: commits announced on the bus (`weir.lake.commits`) for those waiting on tables.

pub mod avro_arrow;
pub mod catalog;
pub mod chunk;
pub mod config;
pub mod current;
pub mod dlq;
pub mod files;
pub mod query;
pub mod signal;
pub mod storage;
pub mod writer;

pub use catalog::{Lake, LakeError, OpenTables};
pub use config::{LakeConfig, LakeUrl, S3Options};
