//! # weir-flow — the orchestrator
//!
//! DAG files and their model ([`dag`]), schedules and data intervals ([`schedule`]), DAGs that
//! lake commits start ([`triggers`]), trigger
//! rules and states ([`rules`]), templating ([`template`]), what tasks hand on and keep
//! ([`outputs`]), tasks that wait for a person's decision ([`approvals`]), the table versions SQL tasks
//! read and reread ([`lineage`]), tasks mapped over items at run time ([`mapping`]), the metadata store ([`store`]), the
//! commands users run against it ([`runs`]: trigger, backfill, clear) and the scheduler with its
//! local executor ([`scheduler`]), running one try wherever it runs ([`execute`]), and the HTTP
//! routes over runs and logs ([`api`]). Scale-out: the lease that makes one of several schedulers
//! the leader ([`lease`]), remote workers ([`worker`]) and the tables they share ([`cluster`]);
//! every state change published in order on `weir.flow.events` ([`events`]); the desired
//! worker count per queue ([`autoscale`]); notifications of failures, retries, successes and
//! missed deadlines, and the orchestrator's own alerts ([`notices`]).

pub mod api;
pub mod approvals;
pub mod autoscale;
pub mod cluster;
pub mod dag;
pub mod events;
pub mod execute;
pub mod lease;
pub mod lineage;
mod mapping;
pub mod notices;
pub mod outputs;
pub mod rules;
pub mod runs;
pub mod schedule;
pub mod scheduler;
pub mod store;
pub mod template;
mod triggers;
pub mod ui;
pub mod worker;

/// Why an orchestrator operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The metadata database.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A DAG file.
    #[error(transparent)]
    Dag(#[from] dag::DagError),
    /// A request that cannot be carried out (the message says why).
    #[error("{0}")]
    Invalid(String),
}
