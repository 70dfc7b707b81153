//! # weir-serving — what dashboards query
//!
//! Will own the HTTP API, the PostgreSQL wire endpoint, the lambda merge of batch and real-time
//! views, and the web dashboard. Not built yet: see the serving issue.
