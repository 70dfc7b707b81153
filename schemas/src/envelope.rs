//! Debezium change-event envelopes: schemas and values, field for field as Debezium builds them.
//!
//! Value schema `<prefix>.<db>.<table>.Envelope` (version 2) with fields, in Debezium's order:
//! `before`, `after` (the optional row struct `<…>.Value`), `source` (the connector's source
//! block), `transaction` (optional `event.block`), `op`, `ts_ms`, `ts_us`, `ts_ns`. The key is the
//! required struct `<…>.Key` of the primary-key columns. Topic `<prefix>.<db>.<table>`.
//!
//! That order and version are Debezium 3's (checked against tag v3.6.1.Final, DBZ-7698):
//! `TableSchemaBuilder` defines the envelope `.withRecord(value).withSource(source)
//! .withTransaction(transaction)`, and `SchemaFactory.datatypeEnvelopeSchema().build()` then adds
//! `op` (required), `ts_ms`, `ts_us`, `ts_ns` (optional) to a struct of `Envelope.SCHEMA_VERSION`
//! = 2 (`debezium-connector-common/src/main/java/io/debezium/{relational/TableSchemaBuilder,
//! schema/SchemaFactory,data/Envelope}.java`). Debezium's documentation page still shows the older
//! order.

use crate::connect::{ConnectSchema, Field, StructBuilder, Value, schema};

/// Debezium's version string written into `source.version`.
pub const DEBEZIUM_COMPAT_VERSION: &str = "3.0.0.Final";

/// The operation of a change event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// A row read by a snapshot.
    Read,
    /// An insert.
    Create,
    /// An update.
    Update,
    /// A delete.
    Delete,
    /// A table truncation.
    Truncate,
}

impl Op {
    /// Debezium's one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Truncate => "t",
        }
    }

    /// Parses Debezium's code.
    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "r" => Op::Read,
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "t" => Op::Truncate,
            _ => return None,
        })
    }
}

/// The `snapshot` field of a source block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMarker {
    /// Part of a snapshot.
    True,
    /// First record of a snapshot.
    First,
    /// First record of one table in a snapshot.
    FirstInDataCollection,
    /// Last record of one table in a snapshot.
    LastInDataCollection,
    /// Last record of a snapshot.
    Last,
    /// Streamed, not snapshotted.
    False,
    /// Part of an incremental snapshot.
    Incremental,
}

impl SnapshotMarker {
    const ALL: [(SnapshotMarker, &'static str); 7] = [
        (SnapshotMarker::True, "true"),
        (SnapshotMarker::First, "first"),
        (SnapshotMarker::FirstInDataCollection, "first_in_data_collection"),
        (SnapshotMarker::LastInDataCollection, "last_in_data_collection"),
        (SnapshotMarker::Last, "last"),
        (SnapshotMarker::False, "false"),
        (SnapshotMarker::Incremental, "incremental"),
    ];

    /// The value Debezium writes.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(m, _)| *m == self).map(|(_, s)| *s).unwrap()
    }
}

/// The `io.debezium.data.Enum` schema of `source.snapshot`.
fn snapshot_schema() -> ConnectSchema {
    let allowed: Vec<&str> = SnapshotMarker::ALL.iter().map(|(_, s)| *s).collect();
    schema::string()
        .named("io.debezium.data.Enum")
        .version(1)
        .param("allowed", allowed.join(","))
        .default_value(Value::from("false"))
        .optional()
}

/// The fields every Debezium source block starts with.
fn common_source_fields() -> Vec<Field> {
    vec![
        Field::new("version", schema::string()),
        Field::new("connector", schema::string()),
        Field::new("name", schema::string()),
        Field::new("ts_ms", schema::int64()),
        Field::new("snapshot", snapshot_schema()),
        Field::new("db", schema::string()),
        Field::new("sequence", schema::string().optional()),
        Field::new("ts_us", schema::int64().optional()),
        Field::new("ts_ns", schema::int64().optional()),
    ]
}

/// Which binlog connector the events imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinlogFlavor {
    /// Debezium's `mysql` connector.
    Mysql,
    /// Debezium's `mariadb` connector.
    Mariadb,
}

impl BinlogFlavor {
    /// The connector name in `source.connector` and the schema name.
    pub fn connector(self) -> &'static str {
        match self {
            BinlogFlavor::Mysql => "mysql",
            BinlogFlavor::Mariadb => "mariadb",
        }
    }
}

/// The source block of the MySQL and MariaDB connectors (`io.debezium.connector.<c>.Source`).
pub fn binlog_source_schema(flavor: BinlogFlavor) -> ConnectSchema {
    let mut fields = common_source_fields();
    fields.extend([
        Field::new("table", schema::string().optional()),
        Field::new("server_id", schema::int64()),
        Field::new("gtid", schema::string().optional()),
        Field::new("file", schema::string()),
        Field::new("pos", schema::int64()),
        Field::new("row", schema::int32()),
        Field::new("thread", schema::int64().optional()),
        Field::new("query", schema::string().optional()),
    ]);
    ConnectSchema::struct_of(format!("io.debezium.connector.{}.Source", flavor.connector()), fields).version(1)
}

/// Where a binlog event came from.
#[derive(Debug, Clone, PartialEq)]
pub struct BinlogSource {
    /// Connector flavour.
    pub flavor: BinlogFlavor,
    /// The topic prefix (`name`).
    pub name: String,
    /// Commit time at the source, in microseconds since the epoch.
    pub ts_us: i64,
    /// Snapshot marker.
    pub snapshot: SnapshotMarker,
    /// Database.
    pub db: String,
    /// Table.
    pub table: Option<String>,
    /// The source server's id.
    pub server_id: i64,
    /// GTID of the transaction, if GTIDs are on.
    pub gtid: Option<String>,
    /// Binlog file.
    pub file: String,
    /// Position of the event in the file.
    pub pos: i64,
    /// Row number within the event.
    pub row: i32,
    /// Thread id of the writing session.
    pub thread: Option<i64>,
    /// The SQL statement, if `binlog_rows_query_log_events` is on.
    pub query: Option<String>,
}

impl BinlogSource {
    /// The source block value for `schema` (from [`binlog_source_schema`]), built by position:
    /// it is made for every event.
    pub fn to_value(&self, schema: &ConnectSchema) -> Value {
        debug_assert_eq!(schema.fields().len(), 17, "binlog_source_schema's fields");
        let opt = |s: &Option<String>| s.as_ref().map_or(Value::Null, |s| Value::String(s.clone()));
        Value::Struct(vec![
            Value::from(DEBEZIUM_COMPAT_VERSION),
            Value::from(self.flavor.connector()),
            Value::String(self.name.clone()),
            Value::Int64(self.ts_us.div_euclid(1000)),
            Value::from(self.snapshot.as_str()),
            Value::String(self.db.clone()),
            Value::Null, // sequence
            Value::Int64(self.ts_us),
            Value::Int64(self.ts_us.saturating_mul(1000)),
            opt(&self.table),
            Value::Int64(self.server_id),
            opt(&self.gtid),
            Value::String(self.file.clone()),
            Value::Int64(self.pos),
            Value::Int32(self.row),
            self.thread.map_or(Value::Null, Value::Int64),
            opt(&self.query),
        ])
    }
}

/// The source block of the Cassandra connector (schema name `source`).
pub fn cassandra_source_schema() -> ConnectSchema {
    let mut fields = common_source_fields();
    fields.extend([
        Field::new("cluster", schema::string()),
        Field::new("file", schema::string()),
        Field::new("pos", schema::int32()),
        Field::new("keyspace", schema::string()),
        Field::new("table", schema::string()),
    ]);
    ConnectSchema::struct_of("source", fields).version(1)
}

/// Where a Cassandra mutation came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CassandraSource {
    /// The topic prefix (`name`).
    pub name: String,
    /// Write time of the mutation, microseconds since the epoch.
    pub ts_us: i64,
    /// Cluster name.
    pub cluster: String,
    /// Commit-log segment file.
    pub file: String,
    /// Position of the mutation in the segment.
    pub pos: i32,
    /// Keyspace.
    pub keyspace: String,
    /// Table.
    pub table: String,
}

impl CassandraSource {
    /// The source block value for `schema` (from [`cassandra_source_schema`]).
    pub fn to_value(&self, schema: &ConnectSchema) -> Value {
        StructBuilder::new(schema)
            .put("version", DEBEZIUM_COMPAT_VERSION)
            .put("connector", "cassandra")
            .put("name", self.name.as_str())
            .put("ts_ms", self.ts_us.div_euclid(1000))
            .put("snapshot", SnapshotMarker::False.as_str())
            .put("db", self.keyspace.as_str())
            .put("ts_us", self.ts_us)
            .put("ts_ns", self.ts_us.saturating_mul(1000))
            .put("cluster", self.cluster.as_str())
            .put("file", self.file.as_str())
            .put("pos", self.pos)
            .put("keyspace", self.keyspace.as_str())
            .put("table", self.table.as_str())
            .build()
    }
}

/// Debezium's `event.block` transaction metadata schema.
pub fn transaction_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "event.block",
        vec![
            Field::new("id", schema::string()),
            Field::new("total_order", schema::int64()),
            Field::new("data_collection_order", schema::int64()),
        ],
    )
    .version(1)
    .optional()
}

/// The key of a `<prefix>.transaction` record (`io.debezium.connector.common.TransactionMetadataKey`).
pub fn transaction_key_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "io.debezium.connector.common.TransactionMetadataKey",
        vec![Field::new("id", schema::string())],
    )
    .version(1)
}

/// The value of a `<prefix>.transaction` record: a transaction's `BEGIN` or `END`
/// (`io.debezium.connector.common.TransactionMetadataValue`); `END` carries the event counts.
pub fn transaction_value_schema() -> ConnectSchema {
    let per_table = ConnectSchema::struct_of(
        "event.collection",
        vec![Field::new("data_collection", schema::string()), Field::new("event_count", schema::int64())],
    )
    .version(1)
    .optional();
    ConnectSchema::struct_of(
        "io.debezium.connector.common.TransactionMetadataValue",
        vec![
            Field::new("status", schema::string()),
            Field::new("id", schema::string()),
            Field::new("event_count", schema::int64().optional()),
            Field::new("data_collections", schema::array(per_table).optional()),
            Field::new("ts_ms", schema::int64()),
        ],
    )
    .version(1)
}

/// The key of a heartbeat record (`io.debezium.connector.common.ServerNameKey`).
pub fn heartbeat_key_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "io.debezium.connector.common.ServerNameKey",
        vec![Field::new("serverName", schema::string())],
    )
    .version(1)
}

/// The value of a heartbeat record (`io.debezium.connector.common.Heartbeat`).
pub fn heartbeat_value_schema() -> ConnectSchema {
    ConnectSchema::struct_of("io.debezium.connector.common.Heartbeat", vec![Field::new("ts_ms", schema::int64())])
        .version(1)
}

/// Transaction metadata of one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Transaction id (GTID or file:pos of its BEGIN).
    pub id: String,
    /// Position of the event among all events of the transaction (from 1).
    pub total_order: i64,
    /// Position among the transaction's events on the same table (from 1).
    pub data_collection_order: i64,
}

/// The transaction metadata of one source transaction while its events are produced
/// (Debezium's `provide.transaction.metadata`): the `transaction` block of each event, and the
/// `BEGIN`/`END` records of the `<prefix>.transaction` topic.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionMeta {
    /// Transaction id: the GTID, or `file=<binlog file>,pos=<position of BEGIN>` without GTIDs.
    pub id: String,
    total: i64,
    /// Events per data collection (`db.table`), in order of first event.
    per_collection: Vec<(String, i64)>,
}

impl TransactionMeta {
    /// A transaction with no events yet.
    pub fn new(id: impl Into<String>) -> Self {
        TransactionMeta { id: id.into(), total: 0, per_collection: Vec::new() }
    }

    /// Counts one more event of `collection` and returns its `transaction` block.
    pub fn next(&mut self, collection: &str) -> Transaction {
        self.total += 1;
        let order = match self.per_collection.iter_mut().find(|(c, _)| c == collection) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.per_collection.push((collection.to_string(), 1));
                1
            }
        };
        Transaction { id: self.id.clone(), total_order: self.total, data_collection_order: order }
    }

    /// Events counted so far.
    pub fn event_count(&self) -> i64 {
        self.total
    }

    /// The record key (for [`transaction_key_schema`]).
    pub fn key(&self) -> Value {
        Value::Struct(vec![Value::String(self.id.clone())])
    }

    /// The `BEGIN` value (for [`transaction_value_schema`]), at source time `ts_ms`.
    pub fn begin(&self, ts_ms: i64) -> Value {
        Value::Struct(vec![
            Value::from("BEGIN"),
            Value::String(self.id.clone()),
            Value::Null,
            Value::Null,
            Value::Int64(ts_ms),
        ])
    }

    /// The `END` value with the transaction's event counts, at source time `ts_ms`.
    pub fn end(&self, ts_ms: i64) -> Value {
        let collections = self
            .per_collection
            .iter()
            .map(|(c, n)| Value::Struct(vec![Value::String(c.clone()), Value::Int64(*n)]))
            .collect();
        Value::Struct(vec![
            Value::from("END"),
            Value::String(self.id.clone()),
            Value::Int64(self.total),
            Value::Array(collections),
            Value::Int64(ts_ms),
        ])
    }
}

/// The topic of a table: `<prefix>.<db>.<table>`.
pub fn topic_name(prefix: &str, db: &str, table: &str) -> String {
    format!("{prefix}.{db}.{table}")
}

/// The schemas of one table's change events.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchemas {
    /// `<topic>.Key`: the primary-key columns (`None` for a table without a key).
    pub key: Option<ConnectSchema>,
    /// `<topic>.Value`: the row (optional, as `before` and `after` may be null).
    pub value: ConnectSchema,
    /// `<topic>.Envelope`.
    pub envelope: ConnectSchema,
}

impl TableSchemas {
    /// Builds key, row and envelope schemas for `topic` from the row's and key's columns.
    pub fn new(topic: &str, columns: Vec<Field>, key_columns: Vec<Field>, source: ConnectSchema) -> Self {
        let value = ConnectSchema::struct_of(format!("{topic}.Value"), columns).optional();
        let key = (!key_columns.is_empty()).then(|| ConnectSchema::struct_of(format!("{topic}.Key"), key_columns));
        let envelope = ConnectSchema::struct_of(
            format!("{topic}.Envelope"),
            vec![
                Field::new("before", value.clone()),
                Field::new("after", value.clone()),
                Field::new("source", source),
                Field::new("transaction", transaction_schema()),
                Field::new("op", schema::string()),
                Field::new("ts_ms", schema::int64().optional()),
                Field::new("ts_us", schema::int64().optional()),
                Field::new("ts_ns", schema::int64().optional()),
            ],
        )
        .version(2);
        TableSchemas { key, value, envelope }
    }

    /// The envelope value of one change. `before`/`after` are row structs or [`Value::Null`];
    /// `processed_us` is when Weir produced the event (the envelope's `ts_*`).
    pub fn envelope_value(
        &self,
        op: Op,
        before: Value,
        after: Value,
        source: Value,
        transaction: Option<&Transaction>,
        processed_us: i64,
    ) -> Value {
        let tx = transaction.map_or(Value::Null, |t| {
            Value::Struct(vec![
                Value::from(t.id.as_str()),
                Value::Int64(t.total_order),
                Value::Int64(t.data_collection_order),
            ])
        });
        StructBuilder::new(&self.envelope)
            .put("before", before)
            .put("after", after)
            .put("source", source)
            .put("transaction", tx)
            .put("op", op.code())
            .put("ts_ms", processed_us.div_euclid(1000))
            .put("ts_us", processed_us)
            .put("ts_ns", processed_us.saturating_mul(1000))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::AvroSchema;

    #[test]
    fn envelope_fields_are_in_debeziums_order() {
        let t = TableSchemas::new(
            "shop.inventory.orders",
            vec![Field::new("id", schema::int32())],
            vec![Field::new("id", schema::int32())],
            binlog_source_schema(BinlogFlavor::Mariadb),
        );
        let names: Vec<&str> = t.envelope.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["before", "after", "source", "transaction", "op", "ts_ms", "ts_us", "ts_ns"]);
        let mysql_source = binlog_source_schema(BinlogFlavor::Mysql);
        let source: Vec<&str> = mysql_source.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            source,
            [
                "version",
                "connector",
                "name",
                "ts_ms",
                "snapshot",
                "db",
                "sequence",
                "ts_us",
                "ts_ns",
                "table",
                "server_id",
                "gtid",
                "file",
                "pos",
                "row",
                "thread",
                "query"
            ]
        );
        assert_eq!(t.envelope.name.as_deref(), Some("shop.inventory.orders.Envelope"));
        assert_eq!(t.key.as_ref().unwrap().name.as_deref(), Some("shop.inventory.orders.Key"));
        let avro = AvroSchema::new(t.envelope).unwrap();
        apache_avro::Schema::parse_str(&avro.json).expect("valid Avro");
        assert!(avro.json.contains(r#""connect.name":"io.debezium.connector.mariadb.Source""#), "{}", avro.json);
    }

    #[test]
    fn the_positional_source_block_matches_the_named_fields() {
        let schema = binlog_source_schema(BinlogFlavor::Mysql);
        let source = BinlogSource {
            flavor: BinlogFlavor::Mysql,
            name: "shop".into(),
            ts_us: 1_500_000,
            snapshot: SnapshotMarker::Last,
            db: "inventory".into(),
            table: Some("orders".into()),
            server_id: 7,
            gtid: None,
            file: "bin.000001".into(),
            pos: 42,
            row: 3,
            thread: Some(9),
            query: None,
        };
        let named = StructBuilder::new(&schema)
            .put("version", DEBEZIUM_COMPAT_VERSION)
            .put("connector", "mysql")
            .put("name", "shop")
            .put("ts_ms", 1500i64)
            .put("snapshot", "last")
            .put("db", "inventory")
            .put("sequence", Value::Null)
            .put("ts_us", 1_500_000i64)
            .put("ts_ns", 1_500_000_000i64)
            .put("table", "orders")
            .put("server_id", 7i64)
            .put("gtid", Value::Null)
            .put("file", "bin.000001")
            .put("pos", 42i64)
            .put("row", 3)
            .put("thread", 9i64)
            .put("query", Value::Null)
            .build();
        assert_eq!(source.to_value(&schema), named);
    }

    #[test]
    fn ops_round_trip() {
        for op in [Op::Read, Op::Create, Op::Update, Op::Delete, Op::Truncate] {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code("x"), None);
    }
}
