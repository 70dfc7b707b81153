//! The `weir` binary end to end: the topics/produce/consume round trip on the embedded log and on
//! a real Kafka-protocol broker (`WEIR_TEST_KAFKA`), configuration errors, bounded failure on an
//! unreachable broker, and the registry service's health and metrics endpoints.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use weir_e2e::harness::{Proc, kafka, mariadb, mysql_source_toml, ok, test_mysql_url, weir};
use weir_ingest::cassandra::fixtures::{Fixture, default_dir};

fn round_trip(bus_url: &str, topic: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(weir(d, bus_url, &["topics", "create", topic, "--partitions", "4"], None));
    let listed = ok(weir(d, bus_url, &["topics", "list"], None));
    assert!(listed.lines().any(|l| l == format!("{topic}\t4")), "{listed}");

    let input = "alice\tfirst\nbob\tsecond\nalice\tthird\n";
    let out = weir(d, bus_url, &["produce", topic], Some(input));
    assert!(String::from_utf8_lossy(&ok_stderr(out)).contains("produced 3 record(s)"));

    let printed = ok(weir(d, bus_url, &["consume", topic, "--group", "g1", "--timeout-ms", "1500"], None));
    let mut lines: Vec<Vec<String>> = printed.lines().map(|l| l.split('\t').map(str::to_string).collect()).collect();
    lines.sort_by_key(|f| (f[0].clone(), f[1].clone()));
    assert_eq!(lines.len(), 3, "{printed}");
    let alice: Vec<&Vec<String>> = lines.iter().filter(|f| f[2] == "alice").collect();
    assert_eq!(alice.len(), 2);
    assert_eq!(alice[0][0], alice[1][0], "same key, same partition");
    assert_eq!((alice[0][3].as_str(), alice[1][3].as_str()), ("first", "third"), "order kept within the key");
    // The group committed after printing: nothing new for it, everything for another group.
    assert_eq!(ok(weir(d, bus_url, &["consume", topic, "--group", "g1", "--timeout-ms", "1000"], None)), "");
    let other = ok(weir(d, bus_url, &["consume", topic, "--group", "g2", "--max", "2", "--timeout-ms", "1500"], None));
    assert_eq!(other.lines().count(), 2, "--max stops early: {other}");
}

fn ok_stderr(out: Output) -> Vec<u8> {
    assert!(out.status.success(), "weir failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stderr
}

#[test]
fn round_trip_on_the_embedded_log() {
    round_trip("local:./weir-data/bus", "orders");
}

#[test]
fn round_trip_on_kafka() {
    let brokers = weir_e2e::harness::kafka_brokers();
    let topic = format!("cli-orders-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    round_trip(&format!("kafka://{brokers}"), &topic);
}

#[test]
fn topic_configs_reach_kafka_and_the_embedded_log_applies_retention_only() {
    let brokers = weir_e2e::harness::kafka_brokers();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kafka = format!("kafka://{brokers}");
    let topic = format!("cli-configs-{}", std::process::id());
    let create = ["topics", "create", &topic, "--topic-config", "retention.ms=86400000", "--topic-config"];
    ok(weir(d, &kafka, &[&create[..], &["cleanup.policy=compact"]].concat(), None));
    let described = ok(weir(d, &kafka, &["topics", "describe", &topic], None));
    assert!(
        described.contains("config\tretention.ms=86400000") && described.contains("config\tcleanup.policy=compact"),
        "{described}"
    );

    let local = "local:./weir-data/bus";
    let out = weir(d, local, &["topics", "create", "compacted", "--topic-config", "cleanup.policy=compact"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot apply cleanup.policy=compact"), "{err}");
    ok(weir(d, local, &["topics", "create", "kept", "--topic-config", "retention.ms=60000"], None));
    ok(weir(d, local, &["produce", "kept"], Some("a\nb\n")));
    let described = ok(weir(d, local, &["topics", "describe", "kept"], None));
    assert!(described.contains("config\tretention.ms=60000"), "{described}");
    assert!(described.contains("config\tretention.bytes=-1"), "the default applies: {described}");
    let sized = described.lines().find(|l| l.starts_with("partition 0\toffsets 0..2\t")).expect(&described);
    let bytes: u64 = sized.rsplit('\t').next().unwrap().strip_suffix(" bytes").unwrap().parse().unwrap();
    assert!(bytes > 2, "{sized}");
    let out = weir(d, local, &["topics", "create", "bad", "--topic-config", "retention.ms"], None);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not key=value"));
}

#[test]
fn bad_configuration_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(dir.path(), "http://nowhere", &["topics", "list"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WEIR_BUS_URL (bus.url)") && err.contains("unsupported bus URL"), "{err}");

    std::fs::write(dir.path().join("weir.toml"), "[metadata]\nurl = \"oracle://db\"\n").unwrap();
    let out = weir(dir.path(), "local:./bus", &["topics", "list"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metadata.url \"oracle://db\""), "{err}");
}

#[test]
fn an_unreachable_broker_fails_within_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("weir.toml"), "[bus.kafka]\nconnect_timeout = \"2s\"\n").unwrap();
    let started = Instant::now();
    let out = weir(dir.path(), "kafka://127.0.0.1:1", &["topics", "list"], None);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:1 unreachable within 2000 ms"), "{err}");
}

#[test]
fn a_topic_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir(dir.path(), "local:./bus", &["produce", "ghost"], Some("x\n"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("topic \"ghost\" does not exist"), "{err}");
}

/// `weir registry` on a free loopback port in `dir` (its metadata DB there): the process and the
/// URL its first line announces.
fn registry(dir: &std::path::Path) -> (Proc, String) {
    let mut child = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["registry", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("schema registry on ").expect("address line").to_string();
    (child, url)
}

#[tokio::test]
async fn the_registry_service_serves_health_metrics_and_the_rest_api() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = registry(dir.path());
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let schema = r#"{"type":"record","name":"R","fields":[{"name":"a","type":"string"}]}"#;
    let registered: serde_json::Value = http
        .post(format!("{base}/subjects/orders-value/versions"))
        .json(&serde_json::json!({ "schema": schema }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered["id"], 1);
    let missing = http.get(format!("{base}/subjects/nope/versions")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error_code"], 40401);
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("weir_registry_schemas_registered_total 1"), "{metrics}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.path().join("weir-data/weir.db").exists(), "embedded default metadata database");
}

#[test]
fn cassandra_dump_prints_the_mutations_of_captured_tables() {
    let fixture = Fixture::load(&default_dir().join("3.0.29")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("tables.cql");
    std::fs::write(&schema, fixture.cql()).unwrap();
    let segment = fixture.segment.clone();
    let out = weir(
        dir.path(),
        "local:./bus",
        &["cassandra", "dump", segment.to_str().unwrap(), "--schema", schema.to_str().unwrap()],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let stdout = ok(out);
    assert!(stderr.contains("176 mutations, 78 of tables not captured, 98 partition updates"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 98);
    let first = &lines[0];
    assert_eq!((first["keyspace"].as_str(), first["table"].as_str()), (Some("Keyspace1"), Some("Standard1")));
    assert!(first["rows"][0]["clustering"]["col"].as_str().unwrap().starts_with("name"));
    assert!(first["rows"][0]["cells"][0]["value"].as_str().unwrap().starts_with("0x"));
}

#[test]
fn ingest_once_puts_a_cdc_raw_segment_on_the_bus() {
    let fixture = Fixture::load(&default_dir().join("3.0.29")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("cdc_raw")).unwrap();
    std::fs::copy(&fixture.segment, d.join("cdc_raw/CommitLog-6-1699279786262.log")).unwrap();
    std::fs::write(d.join("tables.cql"), fixture.cql()).unwrap();
    std::fs::write(
        d.join("weir.toml"),
        "[[sources]]\nkind = \"cassandra\"\nname = \"node1\"\ndirectory = \"cdc_raw\"\nschema = \"tables.cql\"\ntopic_prefix = \"shop\"\n",
    )
    .unwrap();
    let out = ok(weir(d, "local:./weir-data/bus", &["ingest", "--once"], None));
    assert!(out.contains("node1: 1 segment(s) read, 1 finished, 98 change event(s) produced"), "{out}");
    assert!(!d.join("cdc_raw/CommitLog-6-1699279786262.log").exists(), "processed segments are deleted by default");
    let consumed = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "shop.Keyspace1.Standard1", "--group", "g", "--timeout-ms", "500"],
        None,
    ));
    assert_eq!(consumed.lines().count(), 98);
    // Nothing new on a second run: the offset was saved.
    let again = ok(weir(d, "local:./weir-data/bus", &["ingest", "--once"], None));
    assert!(again.contains("0 change event(s)"), "{again}");

    std::fs::write(d.join("weir.toml"), "[[sources]]\nkind = \"oracle\"\nname = \"x\"\n").unwrap();
    let out = weir(d, "local:./weir-data/bus", &["ingest", "--once"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sources") && err.contains("oracle"), "{err}");
}

#[test]
fn ingest_once_snapshots_and_streams_a_mariadb_table() {
    let url = test_mysql_url();
    mariadb(
        "DROP DATABASE IF EXISTS weir_cli; CREATE DATABASE weir_cli; CREATE TABLE weir_cli.t (id INT PRIMARY KEY, v TEXT); INSERT INTO weir_cli.t VALUES (1, 'a'), (2, 'b')",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("weir.toml"), mysql_source_toml(&url, 6401, "weir_cli", "")).unwrap();
    let out = ok(weir(d, "local:./weir-data/bus", &["ingest", "--once"], None));
    assert!(out.contains("maria: 2 snapshot row(s), 0 binlog change(s)"), "{out}");
    mariadb("INSERT INTO weir_cli.t VALUES (3, 'c'); DELETE FROM weir_cli.t WHERE id = 1");
    let out = ok(weir(d, "local:./weir-data/bus", &["ingest", "--once"], None));
    assert!(
        out.contains("maria: 0 snapshot row(s), 2 binlog change(s), 3 record(s)"),
        "create, delete, tombstone: {out}"
    );
    let consumed = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "shop.weir_cli.t", "--group", "g", "--timeout-ms", "500"],
        None,
    ));
    assert_eq!(consumed.lines().count(), 5);

    // An incremental snapshot (read-only: MariaDB's consistent snapshot positions) by signal:
    // `--once` takes the signals sent so far and finishes the snapshot they ask for.
    let toml = std::fs::read_to_string(d.join("weir.toml")).unwrap();
    std::fs::write(d.join("weir.toml"), toml.replace("topic_prefix", "read_only = true\ntopic_prefix")).unwrap();
    let mut waiting = Proc::spawn(
        std::process::Command::new(weir_e2e::harness::weir_bin())
            .args(["ingest", "snapshot", "maria", "--tables", "weir_cli.t", "--wait"])
            .current_dir(d)
            .env("WEIR_BUS_URL", "local:./weir-data/bus")
            .stdout(std::process::Stdio::piped()),
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(waiting.stdout.take().unwrap()));
    let sent = lines.next().unwrap().unwrap();
    assert!(sent.contains("execute-snapshot") && sent.contains("shop.signals (offset 0)"), "{sent}");
    let out = ok(weir(d, "local:./weir-data/bus", &["ingest", "--once"], None));
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(waiting.wait().unwrap().success());
    assert_eq!(rest.last().map(String::as_str), Some("done"), "{rest:?}");
    assert!(
        out.contains("maria: 2 snapshot row(s), 0 binlog change(s), 2 record(s)"),
        "rows 2 and 3 read again: {out}"
    );
    let consumed = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "shop.weir_cli.t", "--group", "g", "--timeout-ms", "500"],
        None,
    ));
    assert_eq!(consumed.matches("incremental").count(), 2, "source.snapshot of each read: {consumed}");
    let bad = weir(d, "local:./weir-data/bus", &["ingest", "snapshot", "nosuch", "--tables", "a.b"], None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no MySQL/MariaDB source named \"nosuch\""));

    // A wrong password fails naming the source, without echoing the password.
    let bad = url.replacen("weir:weir@", "weir:wrong@", 1);
    std::fs::write(
        d.join("weir.toml"),
        format!("[[sources]]\nkind = \"mysql\"\nname = \"maria\"\nurl = \"{bad}\"\ntopic_prefix = \"shop\"\n"),
    )
    .unwrap();
    let out = weir(d, "local:./weir-data/bus", &["ingest", "--once"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("source maria") && !err.contains("wrong"), "{err}");
}

/// A MariaDB source's topics on the Kafka-protocol broker, read by Confluent's own consumer and
/// `AvroDeserializer` (`tests/peers/confluent_consumer.py`) against `weir registry`: snapshot,
/// create, update, delete (and tombstone), DDL, truncate, schema-change events and transaction
/// metadata all decode, with the values written.
#[test]
fn confluents_consumer_and_avro_deserializer_read_every_record_of_a_mariadb_source() {
    let url = test_mysql_url();
    let python = weir_e2e::harness::python();
    let brokers = weir_e2e::harness::kafka_brokers();
    let prefix = format!("cfk{}", std::process::id());
    mariadb(
        "DROP DATABASE IF EXISTS weir_cfk; CREATE DATABASE weir_cfk; \
         CREATE TABLE weir_cfk.t (id INT PRIMARY KEY, v VARCHAR(20), d DECIMAL(8,2)); \
         INSERT INTO weir_cfk.t VALUES (1, 'one', 1.50)",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra = "skipped_operations = []\nprovide_transaction_metadata = true\n";
    let toml = mysql_source_toml(&url, 6405, "weir_cfk", extra).replace("\"shop\"", &format!("\"{prefix}\""));
    std::fs::write(d.join("weir.toml"), toml).unwrap();
    let bus = kafka();
    ok(weir(d, &bus, &["ingest", "--once"], None));
    mariadb(
        "INSERT INTO weir_cfk.t VALUES (2, 'two', 2.25); UPDATE weir_cfk.t SET v = 'uno' WHERE id = 1; \
         DELETE FROM weir_cfk.t WHERE id = 2; ALTER TABLE weir_cfk.t ADD COLUMN n INT; \
         INSERT INTO weir_cfk.t VALUES (3, 'three', 3.00, 33); TRUNCATE TABLE weir_cfk.t",
    );
    ok(weir(d, &bus, &["ingest", "--once"], None));

    let (mut registry, registry_url) = registry(d);

    // Table: r, c, u, d + tombstone, c, t = 7; schema changes: snapshot + ALTER (TRUNCATE is not
    // DDL that changes a definition) = 2; transactions: 4 streamed (insert, update, delete,
    // insert) × BEGIN/END = 8.
    let table = format!("{prefix}.weir_cfk.t");
    let transaction = format!("{prefix}.transaction");
    let script = weir_e2e::harness::repo_path("tests/peers").join("confluent_consumer.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([&brokers, &registry_url, "17", &table, &prefix, &transaction])
        .output()
        .unwrap();
    registry.kill().unwrap();
    registry.wait().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |topic: &str| records.iter().filter(|r| r["topic"] == topic).collect::<Vec<_>>();

    let events = of(&table);
    let ops: Vec<&str> = events.iter().map(|r| r["value"]["op"].as_str().unwrap_or("tombstone")).collect();
    assert_eq!(ops, ["r", "c", "u", "d", "tombstone", "c", "t"], "{events:?}");
    assert_eq!(events[0]["value"]["after"], serde_json::json!({"id": 1, "v": "one", "d": "1.50"}));
    assert_eq!(events[2]["value"]["before"]["v"], "one");
    assert_eq!(events[2]["value"]["after"]["v"], "uno");
    assert_eq!(events[3]["key"], serde_json::json!({"id": 2}));
    assert_eq!(events[5]["value"]["after"], serde_json::json!({"id": 3, "v": "three", "d": "3.00", "n": 33}));
    assert_eq!(events[5]["value"]["source"]["connector"], "mariadb");
    assert!(events[0]["value"]["transaction"].is_null() && !events[1]["value"]["transaction"].is_null());

    let changes = of(&prefix);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[1]["value"]["ddl"], "ALTER TABLE weir_cfk.t ADD COLUMN n INT");
    assert_eq!(changes[1]["value"]["tableChanges"][0]["id"], r#""weir_cfk"."t""#);
    let columns = changes[1]["value"]["tableChanges"][0]["table"]["columns"].as_array().unwrap();
    assert_eq!(columns.last().unwrap()["name"], "n");

    let tx = of(&transaction);
    let statuses: Vec<&str> = tx.iter().map(|r| r["value"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["BEGIN", "END"].repeat(4));
    assert_eq!(tx[1]["value"]["event_count"], 1);
}

#[test]
fn kill_9_of_a_mysql_ingest_loses_and_repeats_nothing() {
    let url = test_mysql_url();
    mariadb(
        "DROP DATABASE IF EXISTS weir_kill; CREATE DATABASE weir_kill; CREATE TABLE weir_kill.t (id INT PRIMARY KEY, v INT)",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("weir.toml"), mysql_source_toml(&url, 6402, "weir_kill", "max_batch = 700\n")).unwrap();
    let spawn = || {
        Proc::spawn(
            Command::new(weir_e2e::harness::weir_bin())
                .args(["ingest", "--listen", "127.0.0.1:0"])
                .current_dir(d)
                .env("WEIR_BUS_URL", "local:./weir-data/bus")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    };
    let mut seed = std::process::id() as u64 | 1;
    let mut kills = 0;
    let mut child = spawn();
    for txn in 0..20 {
        let (lo, hi) = (txn * 500 + 1, txn * 500 + 500);
        mariadb(&format!(
            "SET SESSION max_recursive_iterations = 100000; INSERT INTO weir_kill.t WITH RECURSIVE s(i) AS \
             (SELECT {lo} UNION ALL SELECT i + 1 FROM s WHERE i < {hi}) SELECT i, i FROM s"
        ));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 300));
        if txn % 3 == 1 {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            child = spawn();
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "shop.weir_kill.t", "--group", "before", "--timeout-ms", "500"],
        None,
    ));
    assert!(before.lines().count() > 0, "the killed processes were producing");
    ok(weir(d, "local:./weir-data/bus", &["ingest", "--once"], None));
    let consumed = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "shop.weir_kill.t", "--group", "g", "--timeout-ms", "1000"],
        None,
    ));
    // `partition<TAB>offset<TAB>key<TAB>value`: distinct keys are distinct rows.
    let keys: std::collections::HashSet<&str> = consumed.lines().filter_map(|l| l.split('\t').nth(2)).collect();
    assert_eq!(keys.len(), 10_000, "every row arrived despite {kills} kill -9s");
    // A kill between a batch's acknowledgement and its offset save left that batch on the bus;
    // the restarted source skipped it (ingest::mysql::replay).
    let repeated = consumed.lines().count() - keys.len();
    assert_eq!(repeated, 0, "changes produced twice across {kills} kill -9s");
}

#[test]
fn a_finished_initial_only_source_leaves_the_others_running() {
    let url = test_mysql_url();
    mariadb(
        "DROP DATABASE IF EXISTS weir_only; CREATE DATABASE weir_only; CREATE TABLE weir_only.t (id INT PRIMARY KEY); INSERT INTO weir_only.t VALUES (1)",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let only = mysql_source_toml(&url, 6403, "weir_only", "snapshot_mode = \"initial_only\"\n")
        .replace("\"maria\"", "\"only\"");
    let follow = mysql_source_toml(&url, 6404, "weir_only", "").replace("\"shop\"", "\"live\"");
    std::fs::write(d.join("weir.toml"), format!("{only}\n{follow}")).unwrap();
    let mut child = Proc::spawn(
        Command::new(weir_e2e::harness::weir_bin())
            .args(["ingest", "--listen", "127.0.0.1:0"])
            .current_dir(d)
            .env("WEIR_BUS_URL", "local:./weir-data/bus")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    std::thread::sleep(Duration::from_secs(1));
    mariadb("INSERT INTO weir_only.t VALUES (2)");
    std::thread::sleep(Duration::from_secs(2));
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    let out = child.into_inner().wait_with_output().unwrap();
    assert!(still_running, "weir ingest exited: {}", String::from_utf8_lossy(&out.stderr));
    let consumed = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "live.weir_only.t", "--group", "g", "--timeout-ms", "500"],
        None,
    ));
    assert_eq!(consumed.lines().count(), 2, "the following source saw the snapshot row and the new one");
    let consumed = ok(weir(
        d,
        "local:./weir-data/bus",
        &["consume", "shop.weir_only.t", "--group", "g", "--timeout-ms", "500"],
        None,
    ));
    assert_eq!(consumed.lines().count(), 1, "the initial_only source stopped after its snapshot");
}
