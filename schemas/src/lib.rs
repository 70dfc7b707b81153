//! # weir-schemas — the data contracts
//!
//! What travels on Weir's change-event topics, and how it is encoded:
//!
//! - [`connect`]: Kafka Connect's schema and value model, in which Debezium defines its events.
//! - [`envelope`]: Debezium's change-event envelope (`before`, `after`, `source`, `op`, `ts_*`,
//!   `transaction`), the `source` blocks of the MySQL/MariaDB and Cassandra connectors, key and
//!   value schemas named `<prefix>.<db>.<table>.Key` / `.Value` / `.Envelope`.
//! - [`history`]: Debezium's schema-history shapes (tables, columns, changes) for schema-change
//!   events and the schema-history topic.
//! - [`avro`]: Connect schemas as Avro (as Confluent's converter maps them) and values as Avro
//!   binary.
//! - [`wire`]: the Confluent wire format (magic byte, schema id, body).
//! - [`json`]: values as Kafka Connect's JSON converter writes them (schema + payload), the
//!   alternative to Avro.
//! - [`position`]: a binlog source position as text (`file:pos:row`), in binlog order.
//! - [`registry`]: the Confluent Schema Registry REST API — an HTTP client, a store in the
//!   metadata database, and a server for that store.
//! - [`http`]: the outgoing HTTP client (https, private CAs, bounded times) every role uses.
//! - [`metadata`]: the connection to the metadata database (SQLite or PostgreSQL).
//! - [`tokens`]: API tokens with scopes (read, operate, ingest, admin), kept as digests.
//! - [`secret`]: passwords, tokens and keys read from the environment or a file, never printed.
//! - [`serializer`]: all of the above together: a value in, framed Avro out, its schema
//!   registered under the topic's subject on first use; or JSON ([`serializer::EventEncoder`]).
//!
//! A source builds [`envelope::TableSchemas`] for a table, makes each change an envelope
//! [`connect::Value`], and hands it to an [`serializer::AvroSerializer`]; the bytes go on the bus.
//! Any Debezium consumer with a Confluent Avro deserializer reads them unchanged.

pub mod avro;
pub mod connect;
pub mod envelope;
pub mod history;
pub mod http;
pub mod json;
pub mod metadata;
pub mod position;
pub mod registry;
pub mod secret;
pub mod serializer;
pub mod tokens;
pub mod wire;
