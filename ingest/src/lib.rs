//! # weir-ingest — getting changes out of production databases
//!
//! Owns the change-data-capture sources. Each source turns a database's own change log into
//! Debezium-compatible events on `<prefix>.<db>.<table>` topics and persists its position so a
//! restart loses nothing. Sources are configured as `[[sources]]` entries, one [`SourceConfig`]
//! variant per kind:
//!
//! - [`cassandra`]: commit-log segments from a node's `cdc_raw` directory (decoder, events, source).
//! - [`mysql`]: the MySQL/MariaDB binlog (snapshot, replication stream, schema history, source).
//!
//! Services that own no database send events straight in through [`http`]: JSON over HTTP onto
//! a topic.

pub mod cassandra;
pub mod http;
pub mod mysql;
mod produce;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// One `[[sources]]` entry; `kind` chooses the connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// `kind = "cassandra"`.
    Cassandra(cassandra::source::CassandraSourceConfig),
    /// `kind = "mysql"` (MySQL or MariaDB).
    Mysql(mysql::MysqlSourceConfig),
}

impl SourceConfig {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Cassandra(c) => &c.name,
            SourceConfig::Mysql(c) => &c.name,
        }
    }
}

/// `[ingest]`: the ingest role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Where `weir ingest` serves `/healthz` and `/metrics`.
    pub listen: SocketAddr,
    /// `[ingest.http]`: `weir ingest http`.
    pub http: http::HttpIngestConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9091)), http: http::HttpIngestConfig::default() }
    }
}
