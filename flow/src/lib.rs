//! # weir-flow — the orchestrator
//!
//! Will own DAG files and their model, the scheduler and its task-instance state machine, the
//! metadata store (sqlx, SQLite or PostgreSQL), executors, remote workers, leader election and
//! the task event stream. Not built yet: see the orchestration issues.
