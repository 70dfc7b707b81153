//! Shared by the lake's tests: an embedded bus and registry in a temporary directory, and a
//! producer of Debezium envelopes for a table `shop.inv.orders (id PK, amount, at, day, status
//! [, note])`.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use weir_bus::{Bus, Record, config::LocalConfig, local::LocalBus};
use weir_lake::{LakeConfig, LakeUrl};
use weir_schemas::{
    avro::AvroSchema,
    connect::{Field, Value, decimal_bytes, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
};

pub const TOPIC: &str = "shop.inv.orders";

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub bus: Arc<LocalBus>,
    pub registry: Arc<dyn SchemaRegistry>,
    pub serializer: AvroSerializer,
    /// The binlog position of the next change produced (positions grow in produce order).
    pub next_pos: std::sync::atomic::AtomicI64,
}

pub async fn setup(partitions: u32) -> Setup {
    setup_with(partitions, LocalConfig::default()).await
}

/// [`setup`] on an embedded log configured by `bus`.
pub async fn setup_with(partitions: u32, bus: LocalConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(LocalBus::open(&dir.path().join("bus"), bus).unwrap());
    bus.create_topic(TOPIC, partitions).await.unwrap();
    let pool =
        metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await.unwrap();
    let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await.unwrap());
    let serializer = AvroSerializer::new(registry.clone());
    Setup { dir, bus, registry, serializer, next_pos: 1000.into() }
}

impl Setup {
    /// A lake config on a local directory of this setup.
    pub fn lake_config(&self) -> LakeConfig {
        LakeConfig { url: LakeUrl::File(self.dir.path().join("lake")), ..LakeConfig::default() }
    }
}

/// One change of a row `id` whose columns derive from `id` and `rev`.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub id: i64,
    pub op: Op,
    pub rev: i64,
}

/// Which version of the table's definition a change is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `id, amount, at, day, status`.
    Base,
    /// … plus a nullable `note` (a compatible change).
    WithNote,
    /// `amount` became text (an incompatible change).
    AmountAsText,
}

fn columns(shape: Shape) -> Vec<Field> {
    let with_note = shape == Shape::WithNote;
    let amount = if shape == Shape::AmountAsText { schema::string() } else { schema::decimal(10, 2) };
    let mut c = vec![
        Field::new("id", schema::int64()),
        Field::new("amount", amount.optional()),
        Field::new("at", schema::int64().named("io.debezium.time.MicroTimestamp").version(1).optional()),
        Field::new("day", schema::int32().named("io.debezium.time.Date").version(1).optional()),
        Field::new("status", schema::string().optional()),
    ];
    if with_note {
        c.push(Field::new("note", schema::string().optional()));
    }
    c
}

/// The `status` column of row `id` at revision `rev`.
pub fn status(id: i64, rev: i64) -> String {
    format!("s{}-r{rev}", id % 3)
}

/// Produces `changes` as envelopes keyed by id (a tombstone after each delete; a truncate has
/// no key and its `id` is not used).
pub async fn produce_changes(s: &Setup, changes: &[Change], shape: Shape) {
    let with_note = shape == Shape::WithNote;
    let t = TableSchemas::new(
        TOPIC,
        columns(shape),
        vec![Field::new("id", schema::int64())],
        binlog_source_schema(BinlogFlavor::Mariadb),
    );
    let value_schema = AvroSchema::new(t.envelope.clone()).unwrap();
    let key_schema = AvroSchema::new(t.key.clone().unwrap()).unwrap();
    let producer = s.bus.producer().await.unwrap();
    let mut records = Vec::new();
    for &Change { id, op, rev } in changes {
        let row = |rev: i64| {
            let mut row = vec![
                Value::Int64(id),
                if shape == Shape::AmountAsText {
                    Value::String(format!("{id}.05"))
                } else {
                    Value::Bytes(decimal_bytes(i128::from(id) * 100 + 5))
                },
                Value::Int64(1_795_428_000_000_000 + id),
                Value::Int32(20_415),
                Value::String(status(id, rev)),
            ];
            if with_note {
                row.push(Value::String(format!("note {id}")));
            }
            Value::Struct(row)
        };
        let source = BinlogSource {
            flavor: BinlogFlavor::Mariadb,
            name: "shop".into(),
            ts_us: 1_795_428_000_000_000 + id * 1000,
            snapshot: SnapshotMarker::False,
            db: "inv".into(),
            table: Some("orders".into()),
            server_id: 1,
            gtid: None,
            file: "mysql-bin.000001".into(),
            pos: s.next_pos.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            row: 0,
            thread: None,
            query: None,
        };
        let (before, after) = match op {
            Op::Truncate => (Value::Null, Value::Null),
            Op::Delete => (row(rev), Value::Null),
            Op::Update => (row(rev - 1), row(rev)),
            _ => (Value::Null, row(rev)),
        };
        let envelope =
            t.envelope_value(op, before, after, source.to_value(&binlog_source_schema(BinlogFlavor::Mariadb)), None, 0);
        let value = s.serializer.serialize(TOPIC, false, &value_schema, &envelope).await.unwrap();
        if op == Op::Truncate {
            records.push(Record { value: Some(value.into()), ..Record::default() }); // no key: no row
            continue;
        }
        let key =
            s.serializer.serialize(TOPIC, true, &key_schema, &Value::Struct(vec![Value::Int64(id)])).await.unwrap();
        records.push(Record::keyed(key.clone(), value));
        if op == Op::Delete {
            records.push(Record { key: Some(key.into()), value: None, ..Record::default() }); // tombstone
        }
    }
    producer.send(TOPIC, records).await.unwrap();
}

/// Produces `n` changes with ids `from..from+n`: creates, every 10th a delete.
pub async fn produce(s: &Setup, from: i64, n: i64, with_note: bool) {
    let shape = if with_note { Shape::WithNote } else { Shape::Base };
    let changes: Vec<Change> = (from..from + n)
        .map(|id| Change { id, op: if id % 10 == 9 { Op::Delete } else { Op::Create }, rev: 0 })
        .collect();
    produce_changes(s, &changes, shape).await;
}
