//! # weir-ingest — getting changes out of production databases
//!
//! Will own the change-data-capture sources: the MySQL/MariaDB binlog reader (consistent snapshot,
//! then streaming from the snapshot's position) and the Cassandra commit-log reader (`cdc_raw`),
//! plus HTTP event ingestion. Each source turns changes into Debezium envelopes (see
//! `weir-schemas`) on `<prefix>.<db>.<table>` topics of the bus, and persists its source
//! offset so that a restart loses nothing. Not built yet: see the CDC issues.
