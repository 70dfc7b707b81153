//! What Weir encodes, Python's fastavro decodes: a Debezium envelope with many column types,
//! framed in the Confluent wire format with ids from the embedded registry.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use serde_json::{Value as Json, json};
use weir_schemas::{
    avro::AvroSchema,
    connect::{ConnectSchema, ConnectType, Field, StructBuilder, Value, decimal_bytes, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, Transaction, binlog_source_schema},
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
};

fn columns() -> Vec<Field> {
    vec![
        Field::new("id", schema::int32()),
        Field::new("tiny", schema::int8().optional()),
        Field::new("small", schema::int16().optional()),
        Field::new("big", schema::int64().optional()),
        Field::new("ratio", schema::float32().optional()),
        Field::new("score", schema::float64().optional()),
        Field::new("active", schema::boolean().optional()),
        Field::new("name", schema::string().optional()),
        Field::new("blob", schema::bytes().optional()),
        Field::new("amount", schema::decimal(10, 2).optional()),
        Field::new("day", schema::int32().named("io.debezium.time.Date").version(1).optional()),
        Field::new("at", schema::int64().named("io.debezium.time.Timestamp").version(1).optional()),
        Field::new("zoned", schema::string().named("io.debezium.time.ZonedTimestamp").version(1).optional()),
        Field::new(
            "status",
            schema::string().named("io.debezium.data.Enum").version(1).param("allowed", "new,paid,shipped").optional(),
        ),
        Field::new("doc", schema::string().named("io.debezium.data.Json").version(1).optional()),
        Field::new("tags", ConnectSchema::new(ConnectType::Array(Box::new(schema::string()))).optional()),
        Field::new(
            "attrs",
            ConnectSchema::new(ConnectType::Map(Box::new(schema::string()), Box::new(schema::int64()))).optional(),
        ),
    ]
}

#[tokio::test]
async fn fastavro_decodes_weir_envelopes() {
    let python = std::env::var("WEIR_TEST_PYTHON")
        .expect("WEIR_TEST_PYTHON is not set: run scripts/test, which installs fastavro in a venv");
    let dir = tempfile::tempdir().unwrap();
    let pool =
        metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await.unwrap();
    let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await.unwrap());
    let serializer = AvroSerializer::new(registry.clone());

    let topic = "shop.inventory.orders";
    let tables = TableSchemas::new(
        topic,
        columns(),
        vec![Field::new("id", schema::int32())],
        binlog_source_schema(BinlogFlavor::Mariadb),
    );
    let key_schema = AvroSchema::new(tables.key.clone().unwrap()).unwrap();
    let envelope_schema = AvroSchema::new(tables.envelope.clone()).unwrap();

    let row = StructBuilder::new(&tables.value)
        .put("id", 42)
        .put("tiny", Value::Int8(-3))
        .put("small", Value::Int16(-300))
        .put("big", Value::Int64(9_007_199_254_740_993))
        .put("ratio", Value::Float32(0.5))
        .put("score", Value::Float64(-1.25))
        .put("active", true)
        .put("name", "Zoë 🍕")
        .put("blob", Value::Bytes(vec![0, 1, 254, 255]))
        .put("amount", Value::Bytes(decimal_bytes(12345)))
        .put("day", Value::Int32(20_415))
        .put("at", Value::Int64(1_763_900_000_123))
        .put("zoned", "2025-11-23T12:00:00Z")
        .put("status", "paid")
        .put("doc", r#"{"a": [1, 2]}"#)
        .put("tags", Value::Array(vec!["x".into(), "y".into()]))
        .put("attrs", Value::Map(vec![("k".into(), Value::Int64(7))]))
        .build();
    let sparse = StructBuilder::new(&tables.value).put("id", 43).build();
    let source = BinlogSource {
        flavor: BinlogFlavor::Mariadb,
        name: "shop".into(),
        ts_us: 1_763_900_000_123_456,
        snapshot: SnapshotMarker::False,
        db: "inventory".into(),
        table: Some("orders".into()),
        server_id: 1,
        gtid: Some("0-1-77".into()),
        file: "mysql-bin.000003".into(),
        pos: 4711,
        row: 0,
        thread: Some(12),
        query: None,
    };
    let source_schema = &tables.envelope.fields()[2].schema;
    let tx = Transaction { id: "0-1-77".into(), total_order: 1, data_collection_order: 1 };
    let created = tables.envelope_value(
        Op::Create,
        Value::Null,
        row.clone(),
        source.to_value(source_schema),
        Some(&tx),
        1_763_900_001_000_000,
    );
    let deleted = tables.envelope_value(
        Op::Delete,
        sparse,
        Value::Null,
        source.to_value(source_schema),
        None,
        1_763_900_002_000_000,
    );
    let key = StructBuilder::new(tables.key.as_ref().unwrap()).put("id", 42).build();

    let messages = vec![
        serializer.serialize(topic, true, &key_schema, &key).await.unwrap(),
        serializer.serialize(topic, false, &envelope_schema, &created).await.unwrap(),
        serializer.serialize(topic, false, &envelope_schema, &deleted).await.unwrap(),
    ];
    let mut schemas = BTreeMap::new();
    for m in &messages {
        let id = u32::from_be_bytes(m[1..5].try_into().unwrap());
        schemas.insert(id.to_string(), registry.schema_by_id(id).await.unwrap());
    }
    let input = dir.path().join("input.json");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let doc = json!({"schemas": schemas, "messages": messages.iter().map(|m| hex(m)).collect::<Vec<_>>()});
    std::fs::write(&input, doc.to_string()).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fastavro_decode.py");
    let out = std::process::Command::new(python).arg(script).arg(&input).output().unwrap();
    assert!(out.status.success(), "fastavro failed: {}", String::from_utf8_lossy(&out.stderr));
    let decoded: Json = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(decoded[0]["value"], json!({"id": 42}));
    assert_ne!(decoded[0]["schema_id"], decoded[1]["schema_id"], "key and value have their own schemas");
    let c = &decoded[1]["value"];
    assert_eq!(c["op"], "c");
    assert_eq!(c["before"], Json::Null);
    assert_eq!(c["ts_ms"], 1_763_900_001_000i64);
    assert_eq!(c["ts_us"], 1_763_900_001_000_000i64);
    assert_eq!(c["transaction"], json!({"id": "0-1-77", "total_order": 1, "data_collection_order": 1}));
    let a = &c["after"];
    assert_eq!(a["id"], 42);
    assert_eq!(a["tiny"], -3);
    assert_eq!(a["small"], -300);
    assert_eq!(a["big"], 9_007_199_254_740_993i64);
    assert_eq!(a["ratio"], 0.5);
    assert_eq!(a["score"], -1.25);
    assert_eq!(a["active"], true);
    assert_eq!(a["name"], "Zoë 🍕");
    assert_eq!(a["blob"], "0001feff");
    assert_eq!(a["amount"], "123.45", "Connect Decimal decodes as a decimal with scale 2");
    assert_eq!(a["day"], 20_415);
    assert_eq!(a["at"], 1_763_900_000_123i64);
    assert_eq!(a["zoned"], "2025-11-23T12:00:00Z");
    assert_eq!(a["status"], "paid");
    assert_eq!(a["doc"], r#"{"a": [1, 2]}"#);
    assert_eq!(a["tags"], json!(["x", "y"]));
    assert_eq!(a["attrs"], json!({"k": 7}));
    let s = &c["source"];
    assert_eq!(s["connector"], "mariadb");
    assert_eq!(s["name"], "shop");
    assert_eq!(s["snapshot"], "false");
    assert_eq!(s["ts_ms"], 1_763_900_000_123i64);
    assert_eq!(s["db"], "inventory");
    assert_eq!(s["table"], "orders");
    assert_eq!(s["gtid"], "0-1-77");
    assert_eq!(s["file"], "mysql-bin.000003");
    assert_eq!(s["pos"], 4711);
    assert_eq!(s["thread"], 12);
    assert_eq!(s["query"], Json::Null);

    let d = &decoded[2]["value"];
    assert_eq!(d["op"], "d");
    assert_eq!(d["after"], Json::Null);
    assert_eq!(d["before"]["id"], 43);
    assert_eq!(d["before"]["name"], Json::Null);
    assert_eq!(d["transaction"], Json::Null);
}
