//! # weir-ingest — getting changes out of production databases
//!
//! Owns the change-data-capture sources. Today: [`cassandra`], the commit-log decoder
//! (segment framing, mutations, table schemas). Still to come: turning decoded mutations into
//! Debezium-Cassandra events on `<prefix>.<keyspace>.<table>` topics with persisted offsets, the
//! MySQL/MariaDB binlog source, and HTTP event ingestion. Each source will persist its position so
//! a restart loses nothing.

pub mod cassandra;
