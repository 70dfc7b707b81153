//! The MySQL/MariaDB source against a real MariaDB with ROW binlog (`WEIR_TEST_MYSQL_URL`, started
//! by `scripts/test`): snapshot and streaming of every type of Debezium's mapping, all operations,
//! DDL mid-stream with the schema history, a 100,000-row transaction, restarts at random points,
//! and the setup errors a user meets.
//!
//! Each test works in its own database and announces its own replica server id, so the tests run
//! in parallel against one server. Events are decoded back from the bus with the registry's
//! schemas, as a Debezium consumer would.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use apache_avro::types::Value as A;
use mysql_async::prelude::Queryable;
use weir_bus::{Bus, ConsumerConfig, Message, local::LocalBus};
use weir_ingest::mysql::{MysqlError, MysqlSource, MysqlSourceConfig, SnapshotMode, offset};
use weir_schemas::{
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
    wire,
};

fn url() -> String {
    std::env::var("WEIR_TEST_MYSQL_URL")
        .expect("WEIR_TEST_MYSQL_URL is not set: run scripts/test, which starts MariaDB with a ROW binlog on loopback")
}

/// A record decoded: key, value (`None` for a tombstone), header names, value schema id.
type Decoded = (Option<A>, Option<A>, Vec<String>, u32);

struct Setup {
    dir: tempfile::TempDir,
    bus: Arc<LocalBus>,
    registry: Arc<dyn SchemaRegistry>,
    serializer: Arc<AvroSerializer>,
    db: String,
    conn: mysql_async::Conn,
    /// Parsed value schemas by registry id.
    schemas: std::sync::Mutex<std::collections::HashMap<u32, apache_avro::Schema>>,
}

impl Setup {
    async fn new(db: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let bus = Arc::new(LocalBus::open(&dir.path().join("bus"), Default::default()).unwrap());
        let pool = metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5))
            .await
            .unwrap();
        let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await.unwrap());
        let serializer = Arc::new(AvroSerializer::new(registry.clone()));
        let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url()).unwrap()).await.unwrap();
        conn.query_drop(format!("DROP DATABASE IF EXISTS {db}")).await.unwrap();
        conn.query_drop(format!("CREATE DATABASE {db}")).await.unwrap();
        conn.query_drop(format!("USE {db}")).await.unwrap();
        Setup { dir, bus, registry, serializer, db: db.into(), conn, schemas: Default::default() }
    }

    fn config(&self) -> MysqlSourceConfig {
        let mut c = MysqlSourceConfig::new("src", url(), "shop");
        c.include_tables = vec![format!("{}.*", self.db)];
        // A replica id of its own per test: the server drops a replica whose id reconnects.
        c.server_id = 10_000 + (std::process::id() % 50_000) + rand_suffix();
        c.state_dir = self.dir.path().join("state");
        c.heartbeat_interval = Duration::from_millis(500);
        c
    }

    async fn source(&self, config: MysqlSourceConfig) -> MysqlSource {
        MysqlSource::new(config, self.bus.clone(), self.serializer.clone()).await.unwrap()
    }

    async fn sql(&mut self, statements: &str) {
        for s in statements.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
            self.conn.query_drop(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }

    /// Every record of `topic`, decoded: `(key, value, headers)`; `None` value = tombstone.
    async fn records(&self, topic: &str) -> Vec<Decoded> {
        let mut out = Vec::new();
        for m in self.messages(topic).await {
            let key = match &m.key {
                Some(k) => Some(self.decode(k).await.0),
                None => None,
            };
            let (value, id) = match &m.value {
                Some(v) => {
                    let (value, id) = self.decode(v).await;
                    (Some(value), id)
                }
                None => (None, 0),
            };
            out.push((key, value, m.headers.iter().map(|(n, _)| n.clone()).collect(), id));
        }
        out
    }

    /// Every message of `topic`, read by a new consumer group until a poll finds nothing more.
    async fn messages(&self, topic: &str) -> Vec<Message> {
        let mut consumer = self.bus.consumer(ConsumerConfig::new(format!("check-{}", rand_suffix()))).await.unwrap();
        consumer.subscribe(&[topic]).await.unwrap();
        let mut out = Vec::new();
        loop {
            let batch = consumer.poll(Duration::from_millis(300)).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch);
        }
    }

    /// The records of the schema history, as the JSON text on the topic.
    async fn history(&self) -> Vec<String> {
        let records = self.messages("shop.schema-history").await;
        records.into_iter().map(|m| String::from_utf8(m.value.unwrap().to_vec()).unwrap()).collect()
    }

    async fn decode(&self, bytes: &[u8]) -> (A, u32) {
        let (id, body) = wire::unframe(bytes).unwrap();
        let cached = self.schemas.lock().unwrap().get(&id).cloned();
        let schema = match cached {
            Some(schema) => schema,
            None => {
                let schema = apache_avro::Schema::parse_str(&self.registry.schema_by_id(id).await.unwrap()).unwrap();
                self.schemas.lock().unwrap().insert(id, schema.clone());
                schema
            }
        };
        (apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap(), id)
    }

    /// The change events of a table as `(op, before, after, source)` rows of plain values.
    async fn events(&self, table: &str) -> Vec<Event> {
        self.records(&format!("shop.{}.{table}", self.db))
            .await
            .into_iter()
            .filter_map(|(key, value, headers, schema_id)| {
                let value = value?;
                Some(Event {
                    op: string(field(&value, "op")),
                    before: row(field(&value, "before")),
                    after: row(field(&value, "after")),
                    source: row(field(&value, "source")).unwrap(),
                    key: key.and_then(|k| row(&k)),
                    headers,
                    schema_id,
                })
            })
            .collect()
    }
}

fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    (nanos % 10_000) * 10 + NEXT.fetch_add(1, Ordering::SeqCst) % 10
}

#[derive(Debug, Clone)]
struct Event {
    op: String,
    before: Option<BTreeMap<String, A>>,
    after: Option<BTreeMap<String, A>>,
    source: BTreeMap<String, A>,
    key: Option<BTreeMap<String, A>>,
    headers: Vec<String>,
    schema_id: u32,
}

fn plain(v: &A) -> &A {
    match v {
        A::Union(_, inner) => plain(inner),
        other => other,
    }
}

fn field<'a>(v: &'a A, name: &str) -> &'a A {
    match plain(v) {
        A::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no field {name}")).1,
        other => panic!("{other:?} has no field {name}"),
    }
}

fn string(v: &A) -> String {
    match plain(v) {
        A::String(s) | A::Enum(_, s) => s.clone(),
        other => panic!("not a string: {other:?}"),
    }
}

fn row(v: &A) -> Option<BTreeMap<String, A>> {
    match plain(v) {
        A::Null => None,
        A::Record(fields) => Some(fields.iter().map(|(n, v)| (n.clone(), plain(v).clone())).collect()),
        other => panic!("not a row: {other:?}"),
    }
}

fn int(v: &A) -> i64 {
    match plain(v) {
        A::Int(i) => i64::from(*i),
        A::Long(l) => *l,
        other => panic!("not an integer: {other:?}"),
    }
}

const ALL_TYPES: &str = "CREATE TABLE all_types (
  id INT NOT NULL PRIMARY KEY,
  b1 BIT(1), b10 BIT(10), ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
  mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  f FLOAT, d DOUBLE, dec1 DECIMAL(10,2), dec2 DECIMAL(65,30),
  y YEAR, dt DATE, tm TIME, tm6 TIME(6), dtm DATETIME, dtm3 DATETIME(3), dtm6 DATETIME(6), ts TIMESTAMP(3) NULL,
  c CHAR(5), vc VARCHAR(100), tx TEXT, bin BINARY(4), vb VARBINARY(10), bl BLOB,
  j JSON, e ENUM('small','medium','large'), s SET('a','b','c'), g GEOMETRY
)";

const ALL_VALUES: &str = "(1, b'1', b'1000000001', -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
  -9223372036854775808, 18446744073709551615, 1.5, -2.25, '-12345678.91', '12345678901234567890123456789012345.123456789012345678901234567891',
  2024, '2024-02-29', '-838:59:59', '12:34:56.789012', '1999-12-31 23:59:59', '2018-06-20 06:37:03.123', '2018-06-20 06:37:03.123456',
  '2018-06-20 13:37:03.120', 'abc', 'héllo wörld', 'long text', x'01020304', x'ff00', x'deadbeef',
  '{\"k\": [1, 2, {\"n\": null}]}', 'medium', 'a,c', ST_GeomFromText('POINT(1 2)', 4326))";

fn check_all_types(after: &BTreeMap<String, A>) {
    let get = |k: &str| after.get(k).unwrap_or_else(|| panic!("no column {k}"));
    assert_eq!(get("b1"), &A::Boolean(true));
    assert_eq!(get("b10"), &A::Bytes(vec![0x01, 0x02]), "BIT(10) b'1000000001' little-endian");
    assert_eq!(get("ti"), &A::Int(-128));
    assert_eq!(get("tiu"), &A::Int(255));
    assert_eq!(get("si"), &A::Int(-32768));
    assert_eq!(get("siu"), &A::Int(65535));
    assert_eq!(get("mi"), &A::Int(-8_388_608));
    assert_eq!(get("miu"), &A::Int(16_777_215));
    assert_eq!(get("i"), &A::Int(i32::MIN));
    assert_eq!(get("iu"), &A::Long(4_294_967_295));
    assert_eq!(get("bi"), &A::Long(i64::MIN));
    assert_eq!(get("biu"), &A::Long(-1), "bigint.unsigned.handling.mode=long wraps like Debezium");
    assert_eq!(get("f"), &A::Float(1.5));
    assert_eq!(get("d"), &A::Double(-2.25));
    assert_eq!(decimal(get("dec1")), num_bigint_text(&decimal_bytes_of(-1_234_567_891)));
    assert_eq!(
        decimal(get("dec2")),
        "12345678901234567890123456789012345123456789012345678901234567891",
        "DECIMAL(65,30): 65 digits, beyond 128 bits"
    );
    assert_eq!(get("y"), &A::Int(2024));
    assert_eq!(get("dt"), &A::Int(19_782), "2024-02-29 in days since the epoch");
    assert_eq!(get("tm"), &A::Long(-(838 * 3600 + 59 * 60 + 59) * 1_000_000));
    assert_eq!(get("tm6"), &A::Long((12 * 3600 + 34 * 60 + 56) * 1_000_000 + 789_012));
    assert_eq!(get("dtm"), &A::Long(946_684_799_000));
    assert_eq!(get("dtm3"), &A::Long(1_529_476_623_123), "DATETIME(3): io.debezium.time.Timestamp ms");
    assert_eq!(get("dtm6"), &A::Long(1_529_476_623_123_456), "DATETIME(6): MicroTimestamp µs");
    assert_eq!(get("ts"), &A::String("2018-06-20T13:37:03.120Z".into()));
    assert_eq!(get("c"), &A::String("abc".into()));
    assert_eq!(get("vc"), &A::String("héllo wörld".into()));
    assert_eq!(get("tx"), &A::String("long text".into()));
    assert_eq!(get("bin"), &A::Bytes(vec![1, 2, 3, 4]));
    assert_eq!(get("vb"), &A::Bytes(vec![0xff, 0x00]));
    assert_eq!(get("bl"), &A::Bytes(vec![0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(get("j"), &A::String(r#"{"k":[1,2,{"n":null}]}"#.into()));
    assert_eq!(get("e"), &A::String("medium".into()));
    assert_eq!(get("s"), &A::String("a,c".into()));
    let A::Record(g) = get("g") else { panic!("geometry {:?}", get("g")) };
    assert_eq!(plain(&g[1].1), &A::Int(4326), "srid");
    let A::Bytes(wkb) = plain(&g[0].1) else { panic!("wkb") };
    assert_eq!(wkb.len(), 21, "WKB point: byte order, type, two doubles");
    assert_eq!(f64::from_le_bytes(wkb[5..13].try_into().unwrap()), 1.0);
}

/// The unscaled value of a Connect Decimal as decimal text.
fn decimal(v: &A) -> String {
    match v {
        A::Bytes(b) => num_bigint_text(b),
        A::Decimal(d) => {
            let b: Vec<u8> = d.try_into().unwrap();
            num_bigint_text(&b)
        }
        other => panic!("not a decimal {other:?}"),
    }
}

fn decimal_bytes_of(v: i128) -> Vec<u8> {
    weir_schemas::connect::decimal_bytes(v)
}

/// Big-endian two's complement (any length) as decimal text.
fn num_bigint_text(bytes: &[u8]) -> String {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = if negative {
        // Two's complement negate.
        let mut v: Vec<u8> = bytes.iter().map(|b| !b).collect();
        for b in v.iter_mut().rev() {
            let (n, carry) = b.overflowing_add(1);
            *b = n;
            if !carry {
                break;
            }
        }
        v
    } else {
        bytes.to_vec()
    };
    let mut digits = Vec::new();
    while mag.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in mag.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    format!("{}{}", if negative { "-" } else { "" }, String::from_utf8(digits).unwrap())
}

#[tokio::test]
async fn every_type_maps_as_debezium_does_in_snapshot_and_binlog_alike() {
    let mut s = Setup::new("weir_types").await;
    s.sql(&format!("{ALL_TYPES};\nINSERT INTO all_types VALUES {ALL_VALUES};\nINSERT INTO all_types (id) VALUES (2)"))
        .await;
    let mut source = s.source(s.config()).await;
    let stats = source.catch_up().await.unwrap();
    assert_eq!(stats.snapshot_rows, 2);
    s.sql(&format!(
        "INSERT INTO all_types VALUES {};\nINSERT INTO all_types (id) VALUES (4)",
        ALL_VALUES.replacen("(1,", "(3,", 1)
    ))
    .await;
    source.catch_up().await.unwrap();

    let events = s.events("all_types").await;
    let ops: Vec<&str> = events.iter().map(|e| e.op.as_str()).collect();
    assert_eq!(ops, ["r", "r", "c", "c"]);
    for e in [&events[0], &events[2]] {
        check_all_types(e.after.as_ref().unwrap());
    }
    // NULLs everywhere but the key.
    for e in [&events[1], &events[3]] {
        let after = e.after.as_ref().unwrap();
        assert!(after.iter().filter(|(k, _)| *k != "id").all(|(_, v)| v == &A::Null), "{after:?}");
    }
    // The snapshot (information_schema) and the binlog (table map) define the same schema.
    assert_eq!(events[0].schema_id, events[2].schema_id, "one schema version for snapshot and stream");
    assert_eq!(events[0].key.as_ref().unwrap()["id"], A::Int(1));
    assert_eq!(string(&events[0].source["snapshot"]), "first");
    assert_eq!(string(&events[1].source["snapshot"]), "last");
    assert_eq!(string(&events[2].source["snapshot"]), "false");
    assert_eq!(string(&events[2].source["connector"]), "mariadb");
    assert!(string(&events[2].source["gtid"]).starts_with("0-1-"), "MariaDB GTIDs are delivered");
    assert!(string(&events[2].source["file"]).starts_with("mysql-bin."));
    assert!(int(&events[2].source["pos"]) > 4);

    // The Avro the registry holds names Debezium's logical types.
    let schema = s.registry.schema_by_id(events[0].schema_id).await.unwrap();
    for name in [
        "io.debezium.data.Bits",
        "io.debezium.time.Year",
        "io.debezium.time.Date",
        "io.debezium.time.MicroTime",
        "io.debezium.time.Timestamp",
        "io.debezium.time.MicroTimestamp",
        "io.debezium.time.ZonedTimestamp",
        "io.debezium.data.Json",
        "io.debezium.data.Enum",
        "io.debezium.data.EnumSet",
        "io.debezium.data.geometry.Geometry",
        "org.apache.kafka.connect.data.Decimal",
        "shop.weir_types.all_types.Envelope",
        "io.debezium.connector.mariadb.Source",
    ] {
        assert!(schema.contains(name), "{name} missing from {schema}");
    }
    assert!(schema.contains(r#""allowed":"small,medium,large""#), "{schema}");
}

#[tokio::test]
async fn creates_updates_deletes_truncates_and_key_changes() {
    let mut s = Setup::new("weir_ops").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20));\nCREATE TABLE nokey (v INT)").await;
    let mut config = s.config();
    config.skipped_operations = Vec::new();
    let mut source = s.source(config).await;
    source.catch_up().await.unwrap();
    s.sql(
        "INSERT INTO t VALUES (1, 'a'), (2, 'b');\n\
         UPDATE t SET v = 'a2' WHERE id = 1;\n\
         DELETE FROM t WHERE id = 2;\n\
         UPDATE t SET id = 10 WHERE id = 1;\n\
         INSERT INTO nokey VALUES (7);\n\
         TRUNCATE TABLE t",
    )
    .await;
    let stats = source.catch_up().await.unwrap();
    assert_eq!(stats.changes, 6, "2 inserts, 1 update, 1 delete, 1 key update into t, 1 insert into nokey");

    let records = s.records("shop.weir_ops.t").await;
    let shape: Vec<(String, bool)> = records
        .iter()
        .map(|(k, v, _, _)| (v.as_ref().map_or("tombstone".into(), |v| string(field(v, "op"))), k.is_some()))
        .collect();
    let expect = [
        ("c", true),
        ("c", true),
        ("u", true),
        ("d", true),
        ("tombstone", true),
        ("d", true), // key update: delete of the old key…
        ("tombstone", true),
        ("c", true), // …and create of the new one
        ("t", false),
    ];
    assert_eq!(shape, expect.map(|(o, k)| (o.to_string(), k)));
    let events = s.events("t").await;
    let update = &events[2];
    assert_eq!(update.before.as_ref().unwrap()["v"], A::String("a".into()));
    assert_eq!(update.after.as_ref().unwrap()["v"], A::String("a2".into()));
    assert!(events[4].headers.contains(&"__debezium.newkey".to_string()), "{:?}", events[4].headers);
    assert_eq!(events[5].key.as_ref().unwrap()["id"], A::Int(10));
    assert!(events[5].headers.contains(&"__debezium.oldkey".to_string()));
    // Two rows of one INSERT: same event position, row 0 and 1.
    assert_eq!(events[0].source["pos"], events[1].source["pos"]);
    assert_eq!((int(&events[0].source["row"]), int(&events[1].source["row"])), (0, 1));

    let nokey = s.records("shop.weir_ops.nokey").await;
    assert_eq!(nokey.len(), 1);
    assert!(nokey[0].0.is_none(), "a table without a primary key has null keys");

    // With Debezium's default skipped_operations = ["t"], truncates are not emitted.
    let default = s.config();
    assert!(!default.emits("t"));
}

#[tokio::test]
async fn debeziums_history_reader_recovers_the_tables_weir_recorded() {
    let mut s = Setup::new("weir_dbzhist").await;
    s.sql(
        "CREATE TABLE t1 (id INT PRIMARY KEY, a TINYINT UNSIGNED NOT NULL, d DECIMAL(10,2), e ENUM('x','y'), \
         l VARCHAR(10) CHARACTER SET latin1, ts TIMESTAMP(3) NULL, b BLOB);\n\
         CREATE TABLE t2 (k BIGINT, name TEXT, PRIMARY KEY (k))",
    )
    .await;
    let mut source = s.source(s.config()).await;
    source.catch_up().await.unwrap();
    // One statement at a time: the source reads definitions from information_schema when it
    // meets a DDL, so statements already behind it in the binlog would share one record.
    for ddl in [
        "ALTER TABLE t1 ADD COLUMN n INT NULL",
        "CREATE TABLE t3 (x INT, y DATETIME(6), PRIMARY KEY (y, x))",
        "DROP TABLE t2",
    ] {
        s.sql(ddl).await;
        source.catch_up().await.unwrap();
    }
    let offset = source.offset().clone();
    drop(source);

    // The history topic's records, one per line, as Debezium's FileSchemaHistory keeps them.
    let lines: String = s.history().await.into_iter().map(|r| r + "\n").collect();
    assert_eq!(lines.lines().count(), 5, "a record per snapshotted table and per DDL:\n{lines}");
    let file = s.dir.path().join("history.dat");
    std::fs::write(&file, &lines).unwrap();
    let (server_id,): (u32,) = s.conn.query_first("SELECT @@server_id").await.unwrap().map(|v: u32| (v,)).unwrap();
    let stop = serde_json::json!({"server_id": server_id, "file": offset.file, "pos": offset.pos});

    let out = weir_e2e::debezium::peer(&["history", file.to_str().unwrap(), "shop", &stop.to_string()]);
    let tables: BTreeMap<String, serde_json::Value> = out
        .lines()
        .map(|l| {
            let t: serde_json::Value = serde_json::from_str(l).unwrap();
            (t["id"].as_str().unwrap().to_string(), t)
        })
        .collect();
    assert_eq!(
        tables.keys().collect::<Vec<_>>(),
        [r#""weir_dbzhist"."t1""#, r#""weir_dbzhist"."t3""#],
        "t2 was dropped: {out}"
    );
    let columns = |id: &str| -> Vec<(String, String, bool)> {
        tables[id]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["typeName"].as_str().unwrap().to_string(),
                    c["optional"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let expect =
        |v: &[(&str, &str, bool)]| v.iter().map(|(n, t, o)| (n.to_string(), t.to_string(), *o)).collect::<Vec<_>>();
    assert_eq!(
        columns(r#""weir_dbzhist"."t1""#),
        expect(&[
            ("id", "INT", false),
            ("a", "TINYINT UNSIGNED", false),
            ("d", "DECIMAL", true),
            ("e", "ENUM", true),
            ("l", "VARCHAR", true),
            ("ts", "TIMESTAMP", true),
            ("b", "VARBINARY", true),
            ("n", "INT", true),
        ])
    );
    let t1 = &tables[r#""weir_dbzhist"."t1""#];
    assert_eq!(t1["primaryKeyColumnNames"], serde_json::json!(["id"]));
    assert_eq!(t1["columns"][2]["length"], 10);
    assert_eq!(t1["columns"][2]["scale"], 2);
    assert_eq!(t1["columns"][3]["enumValues"], serde_json::json!(["x", "y"]));
    assert_eq!(t1["columns"][4]["charsetName"], "latin1");
    assert_eq!(t1["columns"][5]["length"], 3);
    assert_eq!(columns(r#""weir_dbzhist"."t3""#), expect(&[("x", "INT", false), ("y", "DATETIME", false)]));
    assert_eq!(tables[r#""weir_dbzhist"."t3""#]["primaryKeyColumnNames"], serde_json::json!(["y", "x"]));

    // Recovery stops where it is told: at the snapshot's position only the snapshot's tables exist.
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    let out = weir_e2e::debezium::peer(&["history", file.to_str().unwrap(), "shop", &first["position"].to_string()]);
    let ids: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string()).collect();
    assert!(ids.iter().any(|i| i.contains("t2")) && !ids.iter().any(|i| i.contains("t3")), "{ids:?}");
}

#[tokio::test]
async fn transaction_metadata_and_heartbeats_are_written_as_debezium_writes_them() {
    let mut s = Setup::new("weir_txmeta").await;
    s.sql(
        "DROP DATABASE IF EXISTS weir_txmeta_hb;\n\
         CREATE DATABASE weir_txmeta_hb;\n\
         CREATE TABLE weir_txmeta_hb.beat (id INT PRIMARY KEY, n INT);\n\
         INSERT INTO weir_txmeta_hb.beat VALUES (1, 0);\n\
         CREATE TABLE a (id INT PRIMARY KEY, v INT);\n\
         CREATE TABLE b (id INT PRIMARY KEY);\n\
         INSERT INTO a VALUES (100, 0)",
    )
    .await;
    let mut config = s.config();
    config.provide_transaction_metadata = true;
    config.heartbeat_topic = Some("__debezium-heartbeat.shop".into());
    config.heartbeat_action_query = Some("UPDATE weir_txmeta_hb.beat SET n = n + 1".into());
    let mut source = s.source(config).await;
    source.catch_up().await.unwrap();
    s.sql(
        "BEGIN;\n\
         INSERT INTO a VALUES (1, 1), (2, 2);\n\
         INSERT INTO b VALUES (1);\n\
         UPDATE a SET id = 3 WHERE id = 1;\n\
         COMMIT;\n\
         INSERT INTO b VALUES (2)",
    )
    .await;
    source.catch_up().await.unwrap();
    drop(source);

    // <prefix>.transaction: BEGIN and END per streamed transaction, keyed by its id.
    let tx = s.records("shop.transaction").await;
    let statuses: Vec<String> = tx.iter().map(|(_, v, _, _)| string(field(v.as_ref().unwrap(), "status"))).collect();
    assert_eq!(statuses, ["BEGIN", "END", "BEGIN", "END"], "the snapshot has no transaction metadata");
    let ids: Vec<String> = tx.iter().map(|(_, v, _, _)| string(field(v.as_ref().unwrap(), "id"))).collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
    for (key, _, _, _) in &tx {
        assert!(ids.contains(&string(field(key.as_ref().unwrap(), "id"))));
    }
    let end = tx[1].1.as_ref().unwrap();
    // Two inserts and a key-changing update (a delete and a create) in a, one insert in b.
    assert_eq!(int(field(end, "event_count")), 5);
    let A::Array(collections) = plain(field(end, "data_collections")) else { panic!("no data_collections") };
    let counts: Vec<(String, i64)> =
        collections.iter().map(|c| (string(field(c, "data_collection")), int(field(c, "event_count")))).collect();
    assert_eq!(counts, [("weir_txmeta.a".to_string(), 4), ("weir_txmeta.b".to_string(), 1)]);
    assert!(matches!(plain(field(&tx[0].1.clone().unwrap(), "event_count")), A::Null), "BEGIN carries no counts");

    // Each streamed event's transaction block: the id, its order in the transaction and in its table.
    let block = |records: Vec<Decoded>| -> Vec<(String, i64, i64)> {
        records
            .iter()
            .filter_map(|(_, v, _, _)| v.as_ref())
            .filter_map(|v| match plain(field(v, "transaction")) {
                A::Null => None,
                t => {
                    Some((string(field(t, "id")), int(field(t, "total_order")), int(field(t, "data_collection_order"))))
                }
            })
            .collect()
    };
    let (t1, t2) = (ids[0].clone(), ids[2].clone());
    assert_eq!(
        block(s.records("shop.weir_txmeta.a").await),
        [(t1.clone(), 1, 1), (t1.clone(), 2, 2), (t1.clone(), 4, 3), (t1.clone(), 5, 4)]
    );
    assert_eq!(block(s.records("shop.weir_txmeta.b").await), [(t1, 3, 1), (t2, 1, 1)]);

    // Heartbeats: key {serverName}, value {ts_ms}; the action query ran on the source.
    let beats = s.records("__debezium-heartbeat.shop").await;
    assert!(!beats.is_empty(), "no heartbeat record");
    let (key, value, _, _) = &beats[0];
    assert_eq!(string(field(key.as_ref().unwrap(), "serverName")), "shop");
    let age_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
        - int(field(value.as_ref().unwrap(), "ts_ms"));
    assert!((0..60_000).contains(&age_ms), "heartbeat ts_ms is {age_ms} ms old");
    let beat: Option<i64> = s.conn.query_first("SELECT n FROM weir_txmeta_hb.beat").await.unwrap();
    assert!(beat.unwrap() >= 1, "the heartbeat action query ran");
}

#[tokio::test]
async fn recovery_mode_rebuilds_a_lost_history_without_reading_rows_again() {
    let mut s = Setup::new("weir_recover").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10));\nINSERT INTO t VALUES (1, 'a')").await;
    let mut config = s.config();
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    let offset = source.offset().clone();
    drop(source);

    // Recovery needs a saved offset to record the definitions at.
    let mut fresh = config.clone();
    fresh.snapshot_mode = SnapshotMode::Recovery;
    fresh.state_dir = s.dir.path().join("fresh-state");
    let err = s.source(fresh).await.catch_up().await.unwrap_err().to_string();
    assert!(err.contains("recovery") && err.contains("initial"), "{err}");

    // The history is lost (a bus without the source's topics), the offset kept.
    s.bus = Arc::new(LocalBus::open(&s.dir.path().join("bus-after-loss"), Default::default()).unwrap());
    config.snapshot_mode = SnapshotMode::Recovery;
    let mut source = s.source(config).await;
    source.catch_up().await.unwrap();
    let rows = s.bus.end_offsets("shop.weir_recover.t").await.map(|o| o.iter().sum::<i64>()).unwrap_or(0);
    assert_eq!(rows, 0, "recovery reads no rows");
    let history: Vec<serde_json::Value> = s.history().await.iter().map(|r| serde_json::from_str(r).unwrap()).collect();
    assert_eq!(history.len(), 1, "{history:?}");
    assert!(history[0]["ddl"].as_str().unwrap().starts_with("CREATE TABLE `t`"));
    assert_eq!(history[0]["position"]["file"], offset.file.as_str());
    assert_eq!(history[0]["position"]["pos"], offset.pos);
    assert_eq!(history[0]["tableChanges"][0]["id"], r#""weir_recover"."t""#);

    // And the source streams on from its offset.
    s.sql("INSERT INTO t VALUES (2, 'b')").await;
    source.catch_up().await.unwrap();
    let events = s.events("t").await;
    assert_eq!(events.iter().map(|e| e.op.as_str()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(events[0].after.as_ref().unwrap()["v"], A::String("b".into()));
}

#[tokio::test]
async fn ddl_mid_stream_decodes_each_row_with_its_own_schema_and_survives_restart() {
    let mut s = Setup::new("weir_ddl").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, a INT);\nINSERT INTO t VALUES (1, 10)").await;
    let mut source = s.source(s.config()).await;
    source.catch_up().await.unwrap();
    // Changes interleaved with DDL, all in the binlog before the source reads any of them.
    s.sql(
        "INSERT INTO t VALUES (2, 20);\n\
         ALTER TABLE t ADD COLUMN b VARCHAR(10);\n\
         INSERT INTO t VALUES (3, 30, 'x');\n\
         ALTER TABLE t DROP COLUMN a;\n\
         INSERT INTO t VALUES (4, 'y');\n\
         ALTER TABLE t RENAME COLUMN b TO c;\n\
         INSERT INTO t VALUES (5, 'z')",
    )
    .await;
    source.catch_up().await.unwrap();
    drop(source);

    let events = s.events("t").await;
    let columns: Vec<Vec<String>> =
        events.iter().map(|e| e.after.as_ref().unwrap().keys().cloned().collect()).collect();
    assert_eq!(
        columns,
        [vec!["a", "id"], vec!["a", "id"], vec!["a", "b", "id"], vec!["b", "id"], vec!["c", "id"],]
            .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
    );
    assert_eq!(events[2].after.as_ref().unwrap()["b"], A::String("x".into()));
    assert_eq!(events[4].after.as_ref().unwrap()["c"], A::String("z".into()));
    let ids: std::collections::BTreeSet<u32> = events.iter().map(|e| e.schema_id).collect();
    assert_eq!(ids.len(), 4, "one schema version per table shape");

    // The history topic (1 partition) and the schema-change events on the prefix topic.
    let ddls: Vec<String> = s
        .history()
        .await
        .iter()
        .map(|r| {
            // A definition met in the binlog without its DDL (a table outside the last refresh)
            // has no statement.
            serde_json::from_str::<serde_json::Value>(r).unwrap()["ddl"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(ddls[0].starts_with("CREATE TABLE `t`"), "the snapshot records the statement that creates t: {}", ddls[0]);
    assert!(ddls.iter().any(|d| d.contains("RENAME COLUMN b TO c")), "{ddls:?}");
    let changes = s.records("shop").await;
    assert!(changes.len() >= 4, "a schema-change event per DDL and the snapshot: {}", changes.len());
    let last = changes.last().unwrap().1.as_ref().unwrap();
    assert_eq!(string(field(last, "databaseName")), "weir_ddl");

    // A restart replays the history and streams on with the latest definition.
    let mut source = s.source(s.config()).await;
    s.sql("INSERT INTO t VALUES (6, 'w')").await;
    source.catch_up().await.unwrap();
    let events = s.events("t").await;
    assert_eq!(events.len(), 6);
    assert_eq!(events[5].after.as_ref().unwrap()["c"], A::String("w".into()));
    assert_eq!(events[5].schema_id, events[4].schema_id);
}

/// DDL on a database the source does not capture is none of its schema changes, also when a
/// captured table's own DDL follows it in the binlog before the source reads either (the
/// definitions read then already show the captured table's change).
#[tokio::test]
async fn ddl_of_another_database_is_not_a_schema_change_of_the_source() {
    let mut s = Setup::new("weir_ddl_own").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, a INT)").await;
    let mut source = s.source(s.config()).await;
    source.catch_up().await.unwrap();
    let before = s.records("shop").await.len();
    s.sql(
        "DROP DATABASE IF EXISTS weir_ddl_other;\n\
         CREATE DATABASE weir_ddl_other;\n\
         CREATE TABLE weir_ddl_other.u (id INT PRIMARY KEY);\n\
         ALTER TABLE t ADD COLUMN b INT",
    )
    .await;
    source.catch_up().await.unwrap();
    let changes = s.records("shop").await;
    let ddls: Vec<String> =
        changes[before..].iter().map(|(_, v, _, _)| string(field(v.as_ref().unwrap(), "ddl"))).collect();
    assert_eq!(ddls, ["ALTER TABLE t ADD COLUMN b INT"]);
}

#[tokio::test]
async fn a_schema_change_the_registry_refuses_stops_the_source_naming_the_subject() {
    let mut s = Setup::new("weir_incompatible").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, a INT NOT NULL);\nINSERT INTO t VALUES (1, 10)").await;
    let mut source = s.source(s.config()).await;
    source.catch_up().await.unwrap();
    // int → string cannot be read by the new schema from data written with the old one
    // (BACKWARD, the registry's default), so the registry refuses the new version.
    s.sql("ALTER TABLE t MODIFY a VARCHAR(10) NOT NULL;\nINSERT INTO t VALUES (2, 'x')").await;
    let err = source.catch_up().await.expect_err("an incompatible schema must stop the source");
    let text = format!("{err:#}");
    assert!(text.contains("shop.weir_incompatible.t-value"), "the subject is not named: {text}");
    assert!(text.contains("incompatible") && text.contains("BACKWARD"), "the reason is not given: {text}");
    assert_eq!(s.events("t").await.len(), 1, "nothing after the refused change is produced");
}

#[tokio::test]
async fn a_100k_row_transaction_survives_crashes_at_random_points_without_loss() {
    let mut s = Setup::new("weir_big").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)").await;
    let mut config = s.config();
    config.max_batch = 5_000;
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    drop(source);
    // 100,000 rows in one transaction, then a few small ones.
    s.sql(
        "SET SESSION max_recursive_iterations = 200000;\n\
         INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) SELECT i, i * 2 FROM n;\n\
         INSERT INTO t VALUES (100001, 0);\n\
         INSERT INTO t VALUES (100002, 0)",
    )
    .await;
    // Crash the running source (abort its task: no flush, no offset save) at random moments.
    let mut rng_state = 0x9e37_79b9u64 ^ u64::from(rand_suffix());
    let mut crashes = 0;
    for _ in 0..4 {
        let source = s.source(config.clone()).await;
        let handle = tokio::spawn(source.run(std::future::pending()));
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        tokio::time::sleep(Duration::from_millis(50 + rng_state % 400)).await;
        handle.abort();
        let _ = handle.await;
        crashes += 1;
        eprintln!(
            "crash {crashes}: saved offset {:?}, {} records on the topic",
            offset::load(&offset::path(&config.state_dir, "src")).unwrap(),
            s.bus.end_offsets("shop.weir_big.t").await.unwrap()[0]
        );
    }
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    let saved = offset::load(&offset::path(&config.state_dir, "src")).unwrap().unwrap();
    assert_eq!(saved.skip_rows, 0, "caught up: between transactions");

    let events = s.events("t").await;
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut positions = std::collections::HashSet::new();
    let mut duplicates = 0;
    for e in &events {
        let id = int(&e.after.as_ref().unwrap()["id"]);
        *seen.entry(id).or_default() += 1;
        let pos = (string(&e.source["file"]), int(&e.source["pos"]), int(&e.source["row"]));
        if !positions.insert(pos) {
            duplicates += 1;
        }
    }
    assert_eq!(seen.len(), 100_002, "every row arrived ({crashes} crashes)");
    assert!(seen.keys().copied().eq(1..=100_002));
    // Duplicates are possible only for batches sent but not yet recorded in the offset, and
    // each carries the same source position, so consumers can drop them.
    let repeated: usize = seen.values().map(|n| n - 1).sum();
    assert_eq!(repeated, duplicates, "every duplicate is recognisable by its source position");
    assert!(repeated <= crashes * 5_000, "at most one unsaved batch per crash: {repeated}");
}

#[tokio::test]
async fn clear_errors_for_missing_privileges_and_purged_binlogs() {
    let mut s = Setup::new("weir_errors").await;
    s.sql(
        "CREATE TABLE t (id INT PRIMARY KEY);\n\
         INSERT INTO t VALUES (1);\n\
         DROP USER IF EXISTS 'weak'@'127.0.0.1';\n\
         CREATE USER 'weak'@'127.0.0.1' IDENTIFIED BY 'weak';\n\
         GRANT SELECT ON weir_errors.* TO 'weak'@'127.0.0.1'",
    )
    .await;
    let mut config = s.config();
    let host = url().rsplit_once('@').unwrap().1.to_string();
    config.url = format!("mysql://weak:weak@{host}");
    let err = match MysqlSource::new(config, s.bus.clone(), s.serializer.clone()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a user without replication privileges was accepted"),
    };
    assert!(err.contains("REPLICATION SLAVE") && err.contains("src"), "{err}");

    // A saved position in a binlog the server no longer has.
    let config = s.config();
    let path = offset::path(&config.state_dir, "src");
    let gone =
        offset::Offset { file: "mysql-bin.999999".into(), pos: 4, snapshot_completed: true, ..Default::default() };
    offset::save(&path, &gone).unwrap();
    let mut source = s.source(config.clone()).await;
    match source.catch_up().await {
        Err(e @ MysqlError::Purged { .. }) => assert!(e.to_string().contains("when_needed"), "{e}"),
        other => panic!("expected a purged-binlog error, got {other:?}"),
    }
    // when_needed snapshots again instead.
    let mut config = config;
    config.snapshot_mode = SnapshotMode::WhenNeeded;
    let mut source = s.source(config).await;
    let stats = source.catch_up().await.unwrap();
    assert_eq!(stats.snapshot_rows, 1);
    assert_ne!(source.offset().file, "mysql-bin.999999");
}

#[tokio::test]
async fn json_format_embeds_the_schema_like_the_json_converter() {
    let mut s = Setup::new("weir_json").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, price DECIMAL(8,2), at DATETIME(6))").await;
    let mut config = s.config();
    config.format = weir_ingest::mysql::EventFormat::Json;
    let mut source = s.source(config).await;
    source.catch_up().await.unwrap();
    s.sql("INSERT INTO t VALUES (7, 12.50, '2026-11-23 10:00:00.000001')").await;
    source.catch_up().await.unwrap();
    let mut consumer = s.bus.consumer(ConsumerConfig::new("json")).await.unwrap();
    consumer.subscribe(&["shop.weir_json.t"]).await.unwrap();
    let records = consumer.poll(Duration::from_secs(1)).await.unwrap();
    assert_eq!(records.len(), 1);
    let key: serde_json::Value = serde_json::from_slice(records[0].key.as_ref().unwrap()).unwrap();
    assert_eq!(key["payload"], serde_json::json!({"id": 7}));
    let value: serde_json::Value = serde_json::from_slice(records[0].value.as_ref().unwrap()).unwrap();
    let after = &value["payload"]["after"];
    assert_eq!(after["id"], 7);
    assert_eq!(after["price"], "BOI=", "Decimal 12.50 = unscaled 1250, base64");
    assert_eq!(after["at"], 1_795_428_000_000_001i64, "MicroTimestamp");
    assert_eq!(value["payload"]["op"], "c");
    assert_eq!(value["schema"]["name"], "shop.weir_json.t.Envelope");
    assert_eq!(value["payload"]["source"]["connector"], "mariadb");
}

#[tokio::test]
async fn snapshot_modes_never_and_initial_only() {
    let mut s = Setup::new("weir_modes").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY);\nINSERT INTO t VALUES (1), (2)").await;

    // never: no snapshot; the rows come from the binlog (from its oldest file) as creates.
    let mut config = s.config();
    config.snapshot_mode = SnapshotMode::Never;
    let mut source = s.source(config.clone()).await;
    let stats = source.catch_up().await.unwrap();
    assert_eq!(stats.snapshot_rows, 0);
    let events = s.events("t").await;
    // The whole binlog is read: a server that ran this test before also replays those runs'
    // rows of a table of the same name. What matters: no reads, and this run's rows last.
    assert!(
        events.len() >= 2 && events.iter().all(|e| e.op == "c"),
        "{:?}",
        events.iter().map(|e| &e.op).collect::<Vec<_>>()
    );
    let last: Vec<i64> = events[events.len() - 2..].iter().map(|e| int(&e.after.as_ref().unwrap()["id"])).collect();
    assert_eq!(last, [1, 2]);
    assert!(source.offset().gtid.is_some(), "the GTID state is recorded with the position");

    // initial_only: the snapshot, then nothing more, even after new changes.
    let mut only = s.config();
    only.name = "only".into();
    only.topic_prefix = "only".into();
    only.snapshot_mode = SnapshotMode::InitialOnly;
    let mut source = s.source(only.clone()).await;
    assert_eq!(source.catch_up().await.unwrap().snapshot_rows, 2);
    s.sql("INSERT INTO t VALUES (3)").await;
    let again = source.catch_up().await.unwrap();
    assert_eq!((again.snapshot_rows, again.changes), (0, 0));
    let ops: Vec<String> = s
        .records("only.weir_modes.t")
        .await
        .iter()
        .map(|(_, v, _, _)| string(field(v.as_ref().unwrap(), "op")))
        .collect();
    assert_eq!(ops, ["r", "r"]);
}

#[tokio::test]
async fn catching_up_ends_after_a_binlog_rotation_with_no_transactions() {
    let mut s = Setup::new("weir_rotate").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY)").await;
    let mut source = s.source(s.config()).await;
    source.catch_up().await.unwrap();
    let before = source.offset().file.clone();
    s.sql("FLUSH BINARY LOGS").await;
    tokio::time::timeout(Duration::from_secs(30), source.catch_up())
        .await
        .expect("catch-up reaches a position past the rotation")
        .unwrap();
    assert_ne!(source.offset().file, before, "the offset follows into the new binlog");
    s.sql("INSERT INTO t VALUES (1)").await;
    let stats = source.catch_up().await.unwrap();
    assert_eq!(stats.changes, 1);
}

/// TLS as MySQL's clients spell it, against MariaDB with the test CA. The user `weir_tls` must use
/// TLS (`REQUIRE SSL`): with `ssl-mode=VERIFY_IDENTITY` the snapshot and the binlog arrive; a
/// certificate of another CA is refused, naming it; without TLS the server refuses the user.
#[tokio::test]
async fn snapshot_and_binlog_over_verified_tls() {
    let mut s = Setup::new("weir_tls").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20));\nINSERT INTO t VALUES (1, 'before')").await;
    let tls_url = std::env::var("WEIR_TEST_MYSQL_TLS_URL").expect("WEIR_TEST_MYSQL_TLS_URL: run scripts/test");
    let tls_dir = std::path::PathBuf::from(std::env::var("WEIR_TEST_TLS_DIR").expect("WEIR_TEST_TLS_DIR"));
    let with_ca = |ca: &str| format!("{tls_url}/?ssl-mode=VERIFY_IDENTITY&ssl-ca={}", tls_dir.join(ca).display());
    let mut config = s.config();
    config.url = with_ca("ca.pem");
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    s.sql("INSERT INTO t VALUES (2, 'after')").await;
    assert_eq!(source.catch_up().await.unwrap().changes, 1);
    let ops: Vec<String> = s.events("t").await.into_iter().map(|e| e.op).collect();
    assert_eq!(ops, ["r", "c"], "snapshot, then the binlog, over TLS");

    let refused = |config: MysqlSourceConfig| {
        let (bus, serializer) = (s.bus.clone(), s.serializer.clone());
        async move {
            match MysqlSource::new(config, bus, serializer).await {
                Err(e) => format!("{e}"),
                Ok(_) => panic!("connected"),
            }
        }
    };
    config.url = with_ca("other-ca.pem");
    let err = refused(config.clone()).await;
    assert!(err.contains("UnknownIssuer") && err.contains("src"), "{err}");
    config.url = tls_url.clone();
    let err = refused(config).await;
    assert!(err.contains("Access denied for user 'weir_tls'"), "the server requires TLS of this user: {err}");
}

/// A crash after the bus acknowledged a batch but before its offset was saved: the restarted
/// source reads those changes again from the older offset and skips them (each change record
/// carries its binlog position), so each is on the bus once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_acknowledged_before_a_crash_are_not_produced_again() {
    let mut s = Setup::new("weir_replay").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT);\nCREATE TABLE u (id INT PRIMARY KEY);\nINSERT INTO t VALUES (1, 1)")
        .await;
    let config = s.config();
    let path = offset::path(&config.state_dir, "src");
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    let before_crash = offset::load(&path).unwrap().unwrap();
    s.sql(
        "INSERT INTO t VALUES (2, 2);\nUPDATE t SET v = 3 WHERE id = 1;\nINSERT INTO u VALUES (5);\n\
         DELETE FROM t WHERE id = 2",
    )
    .await;
    source.catch_up().await.unwrap();
    drop(source);
    // The offset save never happened.
    offset::save(&path, &before_crash).unwrap();
    s.sql("INSERT INTO t VALUES (4, 4)").await;
    let mut source = s.source(config).await;
    source.catch_up().await.unwrap();
    let ops: Vec<(String, Option<String>)> = s
        .events("t")
        .await
        .iter()
        .map(|e| (e.op.clone(), e.headers.iter().find(|h| *h == "weir.pos").cloned()))
        .collect();
    let codes: Vec<&str> = ops.iter().map(|(op, _)| op.as_str()).collect();
    assert_eq!(codes, ["r", "c", "u", "d", "c"], "each change once, then the new one");
    assert!(ops[1..].iter().all(|(_, h)| h.is_some()), "binlog changes carry their position: {ops:?}");
    assert_eq!(s.events("u").await.len(), 1, "the other table's change once too");
}

/// The state of table `t (id, v)` that a consumer folding its change events in order holds.
/// A read (`r`) event of a row the stream has changed before it must agree with the state the
/// events before it give (one that does not is stale, and overwrites a newer change), and an
/// update's or delete's row image before must be the state so far (else it is older than a read
/// before it).
fn fold(events: &[Event]) -> BTreeMap<i64, i64> {
    // id → value, None once deleted.
    let mut state: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    let mut changed = std::collections::HashSet::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(before) = &e.before {
            let (id, v) = (int(&before["id"]), int(&before["v"]));
            if let Some(known) = state.get(&id) {
                assert_eq!(*known, Some(v), "event {i}: {} of id {id} after a newer state: {e:?}", e.op);
            }
        }
        match e.op.as_str() {
            "d" => {
                let id = int(&e.before.as_ref().unwrap()["id"]);
                changed.insert(id);
                state.insert(id, None);
            }
            op => {
                let after = e.after.as_ref().unwrap();
                let (id, v) = (int(&after["id"]), int(&after["v"]));
                if op == "r" && changed.contains(&id) {
                    assert_eq!(state.get(&id), Some(&Some(v)), "event {i}: stale read of id {id}: {e:?}");
                } else if op != "r" {
                    changed.insert(id);
                }
                state.insert(id, Some(v));
            }
        }
    }
    state.into_iter().filter_map(|(id, v)| Some((id, v?))).collect()
}

/// Asserts that `events` fold to `table`; when they do not, names the first differing ids with
/// each one's events (a whole table in the message would hide them).
fn assert_folds_to(events: &[Event], table: &BTreeMap<i64, i64>, what: &str) {
    let folded = fold(events);
    let ids: std::collections::BTreeSet<i64> = folded.keys().chain(table.keys()).copied().collect();
    let differing: Vec<i64> = ids.into_iter().filter(|id| folded.get(id) != table.get(id)).collect();
    if differing.is_empty() {
        return;
    }
    let mut report = format!("{what}: {} ids differ ({} events)\n", differing.len(), events.len());
    for id in differing.iter().take(5) {
        report += &format!("id {id}: table {:?}, events fold to {:?}\n", table.get(id), folded.get(id));
        for (i, e) in events.iter().enumerate() {
            let image = |row: &Option<BTreeMap<String, A>>| row.as_ref().map(|r| (int(&r["id"]), int(&r["v"])));
            let (before, after) = (image(&e.before), image(&e.after));
            if before.or(after).is_some_and(|(k, _)| k == *id) {
                report += &format!(
                    "  event {i}: {} before {before:?} after {after:?} snapshot {} at {}:{} row {}\n",
                    e.op,
                    string(&e.source["snapshot"]),
                    string(&e.source["file"]),
                    int(&e.source["pos"]),
                    int(&e.source["row"]),
                );
            }
        }
    }
    panic!("{report}");
}

impl Setup {
    /// The rows of `t` now.
    async fn table(&mut self) -> BTreeMap<i64, i64> {
        let rows: Vec<(i64, i64)> = self.conn.query("SELECT id, v FROM t").await.unwrap();
        rows.into_iter().collect()
    }

    /// Waits until the source's saved offset satisfies `done`.
    async fn wait_offset(&self, config: &MysqlSourceConfig, what: &str, done: impl Fn(&offset::Offset) -> bool) {
        let path = offset::path(&config.state_dir, &config.name);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if offset::load(&path).ok().flatten().is_some_and(|o| done(&o)) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {:?}", offset::load(&path));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the running source has saved an offset at or past the server's binlog end.
    async fn wait_caught_up(&mut self, config: &MysqlSourceConfig) {
        let row: mysql_async::Row = self.conn.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
        let (file, pos): (String, u64) = (row.get(0).unwrap(), row.get(1).unwrap());
        self.wait_offset(config, "the source to catch up", |o| (o.file.as_str(), o.pos) >= (file.as_str(), pos)).await;
    }

    /// Produces `records` to the signal topic `shop.signals`.
    async fn send_signals(&self, records: Vec<weir_bus::Record>) -> Result<(), weir_bus::BusError> {
        self.bus.create_topic("shop.signals", 1).await.ok();
        self.bus.producer().await?.send("shop.signals", records).await.map(|_| ())
    }

    /// Fills `t` with ids 1..=n.
    async fn fill(&mut self, n: u32) {
        self.sql(&format!(
            "CREATE TABLE t (id INT PRIMARY KEY, v INT);\n\
             SET SESSION max_recursive_iterations = 2000000;\n\
             INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) SELECT i, 0 FROM n"
        ))
        .await;
    }
}

/// A source running in a task of its own.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), MysqlError>>,
}

impl Running {
    fn start(source: MysqlSource) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(source.run(async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Stops it as a shutdown does (offset saved).
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }

    /// Stops it as a crash does: nothing flushed or saved.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Writers changing `t` until stopped.
struct Writer {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Setup {
    /// Stops the writers, waits until the source has streamed what they wrote, stops the
    /// source; how many statements the writers ran.
    async fn settle(&mut self, config: &MysqlSourceConfig, writer: Writer, running: Running) -> u64 {
        writer.stop.send(true).unwrap();
        let statements = writer.task.await.unwrap();
        self.wait_caught_up(config).await;
        running.stop().await;
        statements
    }
}

/// Updates, deletes and inserts rows of `t` from two connections until told to stop.
fn concurrent_writer(db: &str, n: i64) -> Writer {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..2u64).map(|w| writer(db, n, w, stopped.clone())).collect();
    let task = tokio::spawn(async move {
        let mut statements = 0;
        for w in writers {
            statements += w.await.unwrap();
        }
        statements
    });
    Writer { stop, task }
}

fn writer(
    db: &str,
    n: i64,
    seed: u64,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u64> {
    let db = db.to_string();
    tokio::spawn(async move {
        let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url()).unwrap()).await.unwrap();
        conn.query_drop(format!("USE {db}")).await.unwrap();
        let mut x = 0x2545_f491u64 + seed * 7919;
        let mut statements = 0;
        while !*stopped.borrow_and_update() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (x % n as u64) as i64 + 1;
            let sql = match x % 10 {
                0 => format!("DELETE FROM t WHERE id = {id}"),
                1 => format!("INSERT INTO t VALUES ({}, 7) ON DUPLICATE KEY UPDATE v = v + 1", n + id),
                _ => format!("UPDATE t SET v = v + 1 WHERE id = {id}"),
            };
            conn.query_drop(sql).await.unwrap();
            statements += 1;
        }
        statements
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_snapshot_by_signal_table_never_overwrites_concurrent_changes() {
    let mut s = Setup::new("weir_incr").await;
    s.fill(5_000).await;
    s.sql("CREATE TABLE debezium_signal (id VARCHAR(42) PRIMARY KEY, type VARCHAR(32) NOT NULL, data VARCHAR(2048))")
        .await;
    let mut config = s.config();
    config.signal_data_collection = Some("weir_incr.debezium_signal".into());
    config.incremental_snapshot_chunk_size = 100;
    config.include_tables = vec!["weir_incr.t".into()];
    let source = s.source(config.clone()).await;
    let running = Running::start(source);
    s.wait_offset(&config, "the initial snapshot", |o| o.snapshot_completed).await;

    let writer = concurrent_writer("weir_incr", 5_000);
    // Twice, one after the other, for more windows that concurrent changes fall into.
    for id in ["sig-1", "sig-2"] {
        s.sql(&format!(
            r#"INSERT INTO debezium_signal VALUES ('{id}', 'execute-snapshot', '{{"data-collections": ["weir_incr.t"], "type": "incremental"}}')"#
        ))
        .await;
        s.wait_caught_up(&config).await;
        s.wait_offset(&config, "the snapshot to finish", |o| o.snapshots.is_empty()).await;
    }
    let statements = s.settle(&config, writer, running).await;

    let events = s.events("t").await;
    let incremental: Vec<&Event> =
        events.iter().filter(|e| e.op == "r" && string(&e.source["snapshot"]) == "incremental").collect();
    let mut keys: Vec<i64> = incremental.iter().map(|e| int(&e.after.as_ref().unwrap()["id"])).collect();
    keys.sort();
    let reads = keys.len();
    keys.dedup();
    assert!(reads <= 2 * keys.len(), "each row at most once per snapshot without a crash");
    assert!(
        keys.len() as u64 >= 5_000 - statements.min(5_000) && !keys.is_empty(),
        "rows the writer did not touch are all snapshotted: {} of 5000 ({statements} statements)",
        keys.len()
    );
    assert!(
        incremental.iter().all(|e| e.headers.iter().any(|h| h == "weir.pos")),
        "chunk rows carry a replay position"
    );
    let table = s.table().await;
    assert_folds_to(&events, &table, &format!("no snapshot row overwrote a newer change ({statements} statements)"));
    // The watermarks went through the signal table; nothing of it was captured.
    let marks: Vec<String> = s.conn.query("SELECT type FROM debezium_signal WHERE id NOT LIKE 'sig-%'").await.unwrap();
    assert!(marks.len() >= 200 && marks.len().is_multiple_of(2), "open and close per chunk: {}", marks.len());
    assert!(s.bus.end_offsets("shop.weir_incr.debezium_signal").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_incremental_snapshot_from_the_signal_topic_pauses_resumes_and_survives_a_crash() {
    let mut s = Setup::new("weir_incr_ro").await;
    s.fill(20_000).await;
    let mut config = s.config();
    config.read_only = true;
    config.incremental_snapshot_chunk_size = 500;
    config.max_batch = 500;
    config.snapshot_mode = SnapshotMode::Never;
    let signal = |kind: &str, data: serde_json::Value| weir_ingest::mysql::signal::record("shop", kind, &data);
    // Start from the binlog's end, with nothing snapshotted: streaming only.
    let mut source = s.source(config.clone()).await;
    let row: mysql_async::Row = s.conn.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    offset::save(
        &offset::path(&config.state_dir, "src"),
        &offset::Offset { file: row.get(0).unwrap(), pos: row.get(1).unwrap(), ..Default::default() },
    )
    .unwrap();
    drop(source);

    // Queued and paused: streaming goes on, no chunk is read.
    let execute = serde_json::json!({"data-collections": ["weir_incr_ro\\.t"], "type": "INCREMENTAL"});
    s.send_signals(vec![signal("execute-snapshot", execute), signal("pause-snapshot", serde_json::json!({}))])
        .await
        .unwrap();
    source = s.source(config.clone()).await;
    let running = Running::start(source);
    s.wait_offset(&config, "the pause", |o| o.snapshots.paused && o.signal_offset == 2).await;
    s.sql("INSERT INTO t VALUES (900001, 1)").await;
    s.wait_caught_up(&config).await;
    let events = s.events("t").await;
    assert_eq!(events.len(), 1, "paused: only the streamed insert");

    // Resumed; the source is killed (no flush) once some chunks are saved, and restarted.
    let writer = concurrent_writer("weir_incr_ro", 20_000);
    s.send_signals(vec![signal("resume-snapshot", serde_json::json!(null))]).await.unwrap();
    s.wait_offset(&config, "some chunks", |o| {
        o.snapshots.last_key.is_some() || (o.signal_offset == 3 && o.snapshots.is_empty())
    })
    .await;
    running.kill().await;
    let saved = offset::load(&offset::path(&config.state_dir, "src")).unwrap().unwrap();
    if let Some(max) = &saved.snapshots.max_key {
        // The largest key when the first chunk was read (the row streamed while paused), typed as
        // the column is: compared as text, a BIGINT would be compared as a double.
        assert_eq!(max, &[weir_ingest::mysql::incremental::KeyValue::Int(900_001)]);
    }
    let source = s.source(config.clone()).await;
    let running = Running::start(source);
    s.wait_offset(&config, "the snapshot to finish", |o| o.snapshots.is_empty()).await;
    let statements = s.settle(&config, writer, running).await;

    let events = s.events("t").await;
    let incremental: Vec<i64> = events
        .iter()
        .filter(|e| e.op == "r")
        .inspect(|e| assert_eq!(string(&e.source["snapshot"]), "incremental"))
        .map(|e| int(&e.after.as_ref().unwrap()["id"]))
        .collect();
    let distinct: std::collections::BTreeSet<i64> = incremental.iter().copied().collect();
    assert!(distinct.len() as u64 >= 20_000 - statements.min(20_000), "{} rows snapshotted", distinct.len());
    let repeated = incremental.len() - distinct.len();
    assert!(
        repeated <= 2 * 500,
        "resumed after the saved chunk, not from the start: {repeated} rows again (saved {saved:?})"
    );
    let table = s.table().await;
    assert_folds_to(&events, &table, &format!("no snapshot row overwrote a newer change ({statements} statements)"));
    let tables: Vec<String> = s.conn.query("SHOW TABLES").await.unwrap();
    assert_eq!(tables, ["t"], "read-only: nothing written to the source");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_snapshot_pauses_streaming_at_its_position() {
    let mut s = Setup::new("weir_block").await;
    s.fill(3_000).await;
    let mut config = s.config();
    config.snapshot_mode = SnapshotMode::Never;
    let row: mysql_async::Row = s.conn.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    offset::save(
        &offset::path(&config.state_dir, "src"),
        &offset::Offset { file: row.get(0).unwrap(), pos: row.get(1).unwrap(), ..Default::default() },
    )
    .unwrap();
    let source = s.source(config.clone()).await;
    let running = Running::start(source);
    let writer = concurrent_writer("weir_block", 3_000);
    let data = serde_json::json!({"data-collections": ["weir_block.t"], "type": "blocking"});
    s.send_signals(vec![weir_ingest::mysql::signal::record("shop", "execute-snapshot", &data)]).await.unwrap();
    s.wait_offset(&config, "the blocking snapshot", |o| o.signal_offset == 1 && o.snapshots.is_empty()).await;
    let statements = s.settle(&config, writer, running).await;

    let events = s.events("t").await;
    let read: Vec<&Event> = events.iter().filter(|e| e.op == "r").collect();
    assert!(read.len() >= 2_900, "the table's rows at the snapshot's position: {}", read.len());
    let markers: Vec<String> = read.iter().map(|e| string(&e.source["snapshot"])).collect();
    assert_eq!(markers.first().map(String::as_str), Some("first"));
    assert_eq!(markers.last().map(String::as_str), Some("last"));
    let table = s.table().await;
    assert_folds_to(
        &events,
        &table,
        &format!("snapshot rows sit between the changes before and after them ({statements} statements)"),
    );
}

/// A source on the primary of a GTID replication pair; the primary fails with changes the
/// source has not read yet (the replica has them); the replica is promoted and the source is
/// pointed at it: it resumes by GTID, in the replica's own binlog files, with every change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_failover_to_a_promoted_replica_by_gtid_without_loss_or_repeats() {
    let mut pair = tokio::task::spawn_blocking(weir_e2e::mariadb_pair::Pair::start).await.unwrap();
    let s = Setup::new("weir_failover").await;
    pair.primary.sql("CREATE DATABASE weir_failover; CREATE TABLE weir_failover.t (id INT PRIMARY KEY, v INT)");
    pair.primary.sql("INSERT INTO weir_failover.t VALUES (1, 1), (2, 2)");
    // The replica's binlog differs from the primary's from the start (it was written apart).
    pair.replica.sql("FLUSH BINARY LOGS");
    let mut config = s.config();
    config.url = pair.primary.url();
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    pair.primary.sql("INSERT INTO weir_failover.t VALUES (3, 3); UPDATE weir_failover.t SET v = 10 WHERE id = 1");
    source.catch_up().await.unwrap();
    let on_primary = source.offset().clone();
    drop(source);
    assert_eq!(on_primary.server_id, Some(1));
    assert!(on_primary.gtid_position.as_deref().is_some_and(|p| p.starts_with("0-1-")), "{on_primary:?}");

    // Read by nobody before the primary goes.
    pair.primary.sql("INSERT INTO weir_failover.t VALUES (4, 4); DELETE FROM weir_failover.t WHERE id = 2");
    pair.wait_replicated();
    pair.fail_over();
    pair.replica.sql("INSERT INTO weir_failover.t VALUES (5, 5); UPDATE weir_failover.t SET v = 30 WHERE id = 3");

    config.url = pair.replica.url();
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    let on_replica = source.offset().clone();
    assert_eq!(on_replica.server_id, Some(2), "{on_replica:?}");
    assert!(on_replica.gtid_position.as_deref().is_some_and(|p| p.starts_with("0-2-")), "{on_replica:?}");
    // And on: a restart on the replica resumes by its own file and position.
    drop(source);
    pair.replica.sql("INSERT INTO weir_failover.t VALUES (6, 6)");
    s.source(config).await.catch_up().await.unwrap();

    let events = s.events("t").await;
    let ops: Vec<(String, i64)> =
        events.iter().map(|e| (e.op.clone(), int(&e.after.as_ref().or(e.before.as_ref()).unwrap()["id"]))).collect();
    let expected = [("r", 1), ("r", 2), ("c", 3), ("u", 1), ("c", 4), ("d", 2), ("c", 5), ("u", 3), ("c", 6)];
    assert_eq!(ops, expected.map(|(op, id)| (op.to_string(), id)), "each change once, none lost");
    let rows: Vec<(i64, i64)> = pair
        .replica
        .sql("SELECT id, v FROM weir_failover.t ORDER BY id")
        .lines()
        .map(|l| {
            let (id, v) = l.split_once('\t').unwrap();
            (id.parse().unwrap(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(fold(&events).into_iter().collect::<Vec<_>>(), rows);
    let servers: Vec<i64> = events.iter().map(|e| int(&e.source["server_id"])).collect();
    assert_eq!(servers, [1, 1, 1, 1, 1, 1, 2, 2, 2], "source.server_id is the writing server's");
}

/// Transaction metadata stays right across crashes inside a transaction: a restarted source
/// skips the rows it produced and still counts them, so each event keeps its order in the
/// transaction and the END record counts every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_orders_survive_crashes_inside_the_transaction() {
    let mut s = Setup::new("weir_txcrash").await;
    s.sql("CREATE TABLE t (id INT PRIMARY KEY, v INT)").await;
    let mut config = s.config();
    config.max_batch = 1_000;
    config.provide_transaction_metadata = true;
    let mut source = s.source(config.clone()).await;
    source.catch_up().await.unwrap();
    drop(source);
    s.sql(
        "SET SESSION max_recursive_iterations = 200000;\n\
         INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) SELECT i, 0 FROM n",
    )
    .await;
    let path = offset::path(&config.state_dir, "src");
    let mut crashes = 0;
    let mut inside = 0;
    // Where the binlog ends with the transaction in it. Other tests write to the same server, so
    // the source may move past events of theirs before it reaches the transaction: only a saved
    // offset at or beyond this end is past the transaction.
    let status: mysql_async::Row = s.conn.query_first("SHOW MASTER STATUS").await.unwrap().unwrap();
    let (end_file, end_pos): (String, u64) = (status.get(0).unwrap(), status.get(1).unwrap());
    for delay_ms in (1..).map(|k| 20 * k) {
        let source = s.source(config.clone()).await;
        let handle = tokio::spawn(source.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        handle.abort();
        let _ = handle.await;
        crashes += 1;
        let saved = offset::load(&path).unwrap().unwrap();
        if saved.skip_rows > 0 {
            inside += 1;
        } else if (saved.file.as_str(), saved.pos) >= (end_file.as_str(), end_pos) {
            break; // past the transaction
        }
        assert!(crashes < 100, "the transaction never finished");
    }
    assert!(inside > 0, "no crash fell inside the transaction ({crashes} crashes)");
    let mut source = s.source(config).await;
    source.catch_up().await.unwrap();
    assert!(offset::load(&path).unwrap().unwrap().skip_rows == 0);

    // Every row's event has total_order = its row number; duplicates (a batch sent but not saved
    // before a crash) carry the same.
    let records = s.records("shop.weir_txcrash.t").await;
    let mut orders: BTreeMap<i64, i64> = BTreeMap::new();
    for (_, value, _, _) in records.iter().filter(|r| r.1.is_some()) {
        let value = value.as_ref().unwrap();
        let id = int(&row(field(value, "after")).unwrap()["id"]);
        let order = int(field(plain(field(value, "transaction")), "total_order"));
        assert_eq!(*orders.entry(id).or_insert(order), order, "id {id} with two orders");
        assert_eq!(order, id, "id {id}: total_order {order} ({crashes} crashes)");
    }
    assert_eq!(orders.len(), 30_000);
    let ends: Vec<i64> = s
        .records("shop.transaction")
        .await
        .iter()
        .filter_map(|(_, v, _, _)| v.as_ref())
        .filter(|v| string(field(v, "status")) == "END")
        .map(|v| int(field(v, "event_count")))
        .collect();
    assert!(!ends.is_empty() && ends.iter().all(|&n| n == 30_000), "END counts: {ends:?}");
}
