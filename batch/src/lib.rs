//! # weir-batch — batch computation over the lake
//!
//! The runtimes of batch tasks, independent of any scheduler: [`script`] runs an executable
//! with its output captured into a log file (its process group recorded so that [`orphans`] can
//! stop what a killed executor left running), [`sql`] runs a DataFusion query over the lake and
//! writes its result as a new version of a `views.*` Delta table, on the [`engine`] the task
//! chose (in-process DataFusion or a Ballista cluster).

mod cluster_write;
pub mod engine;
pub mod orphans;
pub mod script;
pub mod sql;
