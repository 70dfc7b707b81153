//! # weir-stream — the speed layer
//!
//! Will own streaming pipelines over bus topics: event-time windows with watermarks, aggregates,
//! checkpoints to object storage, and alert rules with their notifiers. Not built yet: see the
//! streaming issue.
