//! Schema registry: the Confluent Schema Registry REST API, as a client and as an embedded server.
//!
//! - [`SchemaRegistry`] is what producers and consumers need: register a schema under a subject
//!   and get its global id, fetch a schema by id, list subjects and versions.
//! - [`http::HttpRegistry`] speaks the REST API to any Confluent-compatible registry.
//! - [`store::SqlRegistry`] keeps schemas in the metadata database (SQLite or PostgreSQL).
//! - [`server::router`] serves the embedded registry over that REST API (compatibility levels and
//!   checks, soft and permanent deletes included, [`compat`]), so Confluent's clients, Debezium
//!   tooling, Kafka Connect and `kafka-avro-console-consumer` can use it.
//!
//! Subjects follow the default `TopicNameStrategy`: `<topic>-key` and `<topic>-value`.
//! Identical schema text (after JSON minification) gets one id across subjects, as in Confluent.

pub mod compat;
pub mod http;
pub mod server;
pub mod store;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The subject of a topic's keys or values under the default `TopicNameStrategy`.
pub fn subject(topic: &str, is_key: bool) -> String {
    format!("{topic}-{}", if is_key { "key" } else { "value" })
}

/// A schema as registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredSchema {
    /// The subject.
    pub subject: String,
    /// Global schema id.
    pub id: u32,
    /// Version within the subject, from 1.
    pub version: u32,
    /// Avro schema JSON.
    pub schema: String,
}

/// Which version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The newest.
    Latest,
    /// A version number.
    Number(u32),
}

impl std::fmt::Display for Version {
    /// As the REST API writes it: `latest` or the number.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Version::Latest => f.write_str("latest"),
            Version::Number(n) => write!(f, "{n}"),
        }
    }
}

/// A registry error, with the Confluent error code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {version} not found for subject '{subject}'.")]
    VersionNotFound {
        /// Subject.
        subject: String,
        /// Version asked for.
        version: String,
    },
    /// 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 40404.
    #[error("Subject '{0}' was soft deleted.Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40406.
    #[error("Subject '{subject}' Version {version} was soft deleted.Set permanent=true to delete permanently")]
    VersionSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40407.
    #[error("Subject '{subject}' Version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted {
        /// Subject.
        subject: String,
        /// Version.
        version: u32,
    },
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    NoSubjectCompatibility(String),
    /// 409: the schema breaks the subject's compatibility level.
    #[error("{}", incompatible(subject, level, reasons))]
    Incompatible {
        /// Subject.
        subject: String,
        /// Its compatibility level (empty when another registry said so: its message is the reason).
        level: String,
        /// What breaks.
        reasons: Vec<String>,
    },
    /// 42203.
    #[error(
        "Invalid compatibility level {0:?}. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive"
    )]
    InvalidCompatibility(String),
    /// The metadata database failed.
    #[error("schema registry store: {0}")]
    Store(#[from] sqlx::Error),
    /// A remote registry could not be reached or answered badly.
    #[error("schema registry at {url}: {reason}")]
    Remote {
        /// The registry URL.
        url: String,
        /// What went wrong.
        reason: String,
        /// Whether retrying may help (connection failures, 5xx).
        retriable: bool,
    },
}

fn incompatible(subject: &str, level: &str, reasons: &[String]) -> String {
    if level.is_empty() {
        return reasons.join("; ");
    }
    format!(
        "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({level}): {}",
        reasons.join("; ")
    )
}

impl RegistryError {
    /// The Confluent `error_code` and HTTP status of this error.
    pub fn codes(&self) -> (u32, u16) {
        match self {
            RegistryError::SubjectNotFound(_) => (40401, 404),
            RegistryError::VersionNotFound { .. } => (40402, 404),
            RegistryError::SchemaNotFound(_) => (40403, 404),
            RegistryError::InvalidSchema(_) => (42201, 422),
            RegistryError::InvalidVersion(_) => (42202, 422),
            RegistryError::SubjectSoftDeleted(_) => (40404, 404),
            RegistryError::SubjectNotSoftDeleted(_) => (40405, 404),
            RegistryError::VersionSoftDeleted { .. } => (40406, 404),
            RegistryError::VersionNotSoftDeleted { .. } => (40407, 404),
            RegistryError::NoSubjectCompatibility(_) => (40408, 404),
            RegistryError::Incompatible { .. } => (409, 409),
            RegistryError::InvalidCompatibility(_) => (42203, 422),
            RegistryError::Store(_) => (50001, 500),
            RegistryError::Remote { .. } => (50003, 502),
        }
    }

    /// Whether retrying may help.
    pub fn is_retriable(&self) -> bool {
        match self {
            RegistryError::Store(e) => matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)),
            RegistryError::Remote { retriable, .. } => *retriable,
            _ => false,
        }
    }
}

/// A Confluent-compatible schema registry.
#[async_trait]
pub trait SchemaRegistry: Send + Sync {
    /// Registers `schema` (Avro JSON) under `subject`; returns its global id. Registering a schema
    /// the subject already has returns the existing id without a new version.
    async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError>;

    /// The version of `subject` that holds `schema`.
    async fn lookup(&self, subject: &str, schema: &str) -> Result<RegisteredSchema, RegistryError>;

    /// The schema with this global id.
    async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError>;

    /// Every subject, sorted.
    async fn subjects(&self) -> Result<Vec<String>, RegistryError>;

    /// The versions of a subject, ascending.
    async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError>;

    /// One version of a subject.
    async fn version(&self, subject: &str, version: Version) -> Result<RegisteredSchema, RegistryError>;
}

/// Checks that `schema` is valid Avro and returns its canonical text: minified JSON, key order kept.
pub fn canonical_schema(schema: &str) -> Result<String, RegistryError> {
    let json: serde_json::Value =
        serde_json::from_str(schema).map_err(|e| RegistryError::InvalidSchema(format!("not JSON: {e}")))?;
    apache_avro::Schema::parse(&json).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    Ok(json.to_string())
}
