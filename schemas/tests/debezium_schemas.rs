//! Every schema Weir writes in Debezium's name, compared field by field with the one Debezium's own
//! classes build: `tests/peers/DebeziumPeer.java` runs Debezium 3.6.3.Final's `SchemaFactory`,
//! `Envelope`, source-info struct makers and `ConnectTableChangeSerializer`, and turns each
//! schema into Avro with Confluent's `AvroData`, which is what a Debezium connector with the Avro
//! converter registers. Weir's Avro for the same schema must be the same JSON: names, namespaces,
//! field order, types, optionality (`["null", …]` unions), defaults, `connect.name`,
//! `connect.version`, `connect.parameters` and `connect.default`.
//!
//! Needs Java 17 and Debezium's jars (`WEIR_TEST_DEBEZIUM_LIBS`); `scripts/test` provides both.

use serde_json::Value as Json;
use weir_schemas::{
    avro::AvroSchema,
    connect::{ConnectSchema, Field, schema},
    envelope::{
        BinlogFlavor, TableSchemas, binlog_source_schema, cassandra_source_schema, heartbeat_key_schema,
        heartbeat_value_schema, transaction_key_schema, transaction_schema, transaction_value_schema,
    },
    history::{schema_change_key_schema, schema_change_value_schema},
};

/// Debezium's schemas by name, as Avro JSON.
fn debezium_schemas(prefix: &str) -> serde_json::Map<String, Json> {
    match serde_json::from_str(&weir_e2e::debezium::peer(&["schemas", prefix])).expect("the peer prints JSON") {
        Json::Object(map) => map,
        other => panic!("expected an object, got {other}"),
    }
}

/// Every difference between two JSON trees, as `path: ours != theirs`.
fn differences(path: &str, ours: &Json, theirs: &Json, out: &mut Vec<String>) {
    match (ours, theirs) {
        (Json::Object(a), Json::Object(b)) => {
            let a_keys: Vec<&String> = a.keys().collect();
            let b_keys: Vec<&String> = b.keys().collect();
            for key in b_keys.iter().filter(|k| !a.contains_key(k.as_str())) {
                out.push(format!("{path}.{key}: missing (Debezium: {})", b[key.as_str()]));
            }
            for key in a_keys.iter().filter(|k| !b.contains_key(k.as_str())) {
                out.push(format!("{path}.{key}: {} (Debezium has none)", a[key.as_str()]));
            }
            for (key, value) in a {
                if let Some(other) = b.get(key) {
                    differences(&format!("{path}.{key}"), value, other, out);
                }
            }
        }
        (Json::Array(a), Json::Array(b)) => {
            let name = |v: &Json| v.get("name").and_then(Json::as_str).map(str::to_string);
            if a.len() != b.len() || a.iter().map(name).ne(b.iter().map(name)) {
                let names = |v: &[Json]| v.iter().map(|x| name(x).unwrap_or_else(|| x.to_string())).collect::<Vec<_>>();
                out.push(format!("{path}: elements {:?} != Debezium's {:?}", names(a), names(b)));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let label = name(x).unwrap_or_else(|| i.to_string());
                differences(&format!("{path}[{label}]"), x, y, out);
            }
        }
        _ if ours != theirs => out.push(format!("{path}: {ours} != Debezium's {theirs}")),
        _ => {}
    }
}

fn avro(schema: ConnectSchema) -> Json {
    serde_json::from_str(&AvroSchema::new(schema).expect("valid Avro").json).unwrap()
}

#[test]
fn every_schema_weir_writes_in_debeziums_name_is_the_one_debezium_builds() {
    let prefix = "shop";
    let theirs = debezium_schemas(prefix);
    let envelope = |flavor| {
        TableSchemas::new(
            "shop.inventory.orders",
            vec![Field::new("id", schema::int32())],
            vec![Field::new("id", schema::int32())],
            binlog_source_schema(flavor),
        )
        .envelope
    };
    let ours: Vec<(&str, ConnectSchema)> = vec![
        ("mysql.source", binlog_source_schema(BinlogFlavor::Mysql)),
        ("mariadb.source", binlog_source_schema(BinlogFlavor::Mariadb)),
        ("cassandra.source", cassandra_source_schema()),
        ("mysql.envelope", envelope(BinlogFlavor::Mysql)),
        ("mariadb.envelope", envelope(BinlogFlavor::Mariadb)),
        ("mysql.schema_change.key", schema_change_key_schema("mysql")),
        ("mysql.schema_change.value", schema_change_value_schema("mysql", binlog_source_schema(BinlogFlavor::Mysql))),
        ("mariadb.schema_change.key", schema_change_key_schema("mariadb")),
        (
            "mariadb.schema_change.value",
            schema_change_value_schema("mariadb", binlog_source_schema(BinlogFlavor::Mariadb)),
        ),
        ("transaction.key", transaction_key_schema()),
        ("transaction.value", transaction_value_schema()),
        ("heartbeat.key", heartbeat_key_schema()),
        ("heartbeat.value", heartbeat_value_schema()),
    ];
    let mut diffs = Vec::new();
    for (name, schema) in ours {
        let theirs = theirs.get(name).unwrap_or_else(|| panic!("the peer printed no {name}"));
        differences(name, &avro(schema), theirs, &mut diffs);
    }
    assert!(diffs.is_empty(), "{} differences from Debezium:\n{}", diffs.len(), diffs.join("\n"));

    // The transaction block inside every envelope is Debezium's too.
    let block = avro(transaction_schema());
    assert_eq!(theirs["mysql.envelope"]["fields"][3]["type"][1], block.as_array().unwrap()[1]);
}

#[test]
fn the_comparison_reports_what_differs() {
    // The check above can fail: a renamed field, a lost optional and a version are all reported.
    let ours = avro(heartbeat_key_schema());
    let mut theirs = ours.clone();
    theirs["fields"][0]["name"] = Json::from("server");
    theirs["connect.version"] = Json::from(2);
    let mut diffs = Vec::new();
    differences("heartbeat.key", &ours, &theirs, &mut diffs);
    assert_eq!(diffs.len(), 3, "{diffs:?}");
}
