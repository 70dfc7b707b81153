//! # weir-batch — batch computation over the lake
//!
//! Will own the DataFusion session over the lake's catalogue and the runtimes of batch tasks:
//! SQL (results written as new versions of `views.*` tables) and arbitrary executables.
//! Not built yet: see the orchestration issue.
