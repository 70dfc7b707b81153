//! The Cassandra source end to end: real segments in a `cdc_raw` directory → Debezium-Cassandra
//! events (Avro, embedded registry) on the embedded bus. The events, decoded back from the bus,
//! must reproduce Cassandra's own cell count and hash for the fixtures; a restart must neither
//! lose nor repeat events; processed segments are deleted or kept as configured.

use std::{path::PathBuf, sync::Arc, time::Duration};

use apache_avro::types::Value as A;
use weir_bus::{Bus, ConsumerConfig, local::LocalBus};
use weir_ingest::cassandra::{
    compression::Codec,
    fixtures::{Fixture, compressed_copy, default_dir, fold},
    source::{CassandraSource, CassandraSourceConfig, Processed},
};
use weir_schemas::{
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
    wire,
};

struct Setup {
    dir: tempfile::TempDir,
    bus: LocalBus,
    registry: Arc<dyn SchemaRegistry>,
    serializer: Arc<AvroSerializer>,
    segment: PathBuf,
    expected: (usize, i32),
}

async fn setup(version: &str) -> Setup {
    let fixture = Fixture::load(&default_dir().join(version)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cdc_raw = dir.path().join("cdc_raw");
    std::fs::create_dir_all(&cdc_raw).unwrap();
    let segment = cdc_raw.join(fixture.segment.file_name().unwrap());
    std::fs::copy(&fixture.segment, &segment).unwrap();
    std::fs::write(dir.path().join("tables.cql"), fixture.cql()).unwrap();
    let bus = LocalBus::open(&dir.path().join("bus"), Default::default()).unwrap();
    let pool =
        metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await.unwrap();
    let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await.unwrap());
    let serializer = Arc::new(AvroSerializer::new(registry.clone()));
    Setup { bus, registry, serializer, segment, expected: (fixture.cells, fixture.hash), dir }
}

fn config(s: &Setup, processed: Processed) -> CassandraSourceConfig {
    CassandraSourceConfig {
        name: "node1".into(),
        directory: s.dir.path().join("cdc_raw"),
        schema: Some(s.dir.path().join("tables.cql")),
        cql: None,
        topic_prefix: "shop".into(),
        cluster: "test-cluster".into(),
        partitions: 1, // one partition: the tests check log order across all keys
        processed,
        processed_dir: None,
        poll_interval: Duration::from_millis(10),
        state_dir: s.dir.path().join("state"),
    }
}

fn field<'a>(v: &'a A, name: &str) -> &'a A {
    match v {
        A::Union(_, inner) => field(inner, name),
        A::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no field {name}")).1,
        other => panic!("{other:?} has no field {name}"),
    }
}

fn plain(v: &A) -> &A {
    match v {
        A::Union(_, inner) => plain(inner),
        other => other,
    }
}

/// Every event on the topic, decoded with the registry's schemas: (op, clustering, val bytes, source pos).
async fn events(s: &Setup) -> Vec<(String, String, Option<Vec<u8>>, i32)> {
    let mut consumer = s.bus.consumer(ConsumerConfig::new("checker")).await.unwrap();
    consumer.subscribe(&["shop.Keyspace1.Standard1"]).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(Duration::from_millis(200)).await.unwrap();
        if batch.is_empty() {
            break;
        }
        for m in batch {
            let bytes = m.value.unwrap();
            let (id, body) = wire::unframe(&bytes).unwrap();
            let schema = apache_avro::Schema::parse_str(&s.registry.schema_by_id(id).await.unwrap()).unwrap();
            let v = apache_avro::from_avro_datum(&schema, &mut &body[..], None).unwrap();
            let A::String(op) = plain(field(&v, "op")) else { panic!("op") };
            let after = field(&v, "after");
            let A::String(col) = plain(field(field(after, "col"), "value")) else { panic!("col") };
            let val = match plain(field(after, "val")) {
                A::Null => None,
                cell => match plain(field(cell, "value")) {
                    A::Bytes(b) => Some(b.clone()),
                    _ => None,
                },
            };
            let A::Int(pos) = plain(field(field(&v, "source"), "pos")) else { panic!("pos") };
            assert_eq!(plain(field(field(&v, "source"), "cluster")), &A::String("test-cluster".into()));
            out.push((op.clone(), col.clone(), val, *pos));
        }
    }
    out
}

fn fold_events(events: &[(String, String, Option<Vec<u8>>, i32)]) -> (usize, i32) {
    let (mut cells, mut hash) = (0, 0i32);
    for (_, col, val, _) in events {
        if let (true, Some(bytes)) = (col.starts_with("name"), val) {
            cells += 1;
            hash = fold(hash, bytes);
        }
    }
    (cells, hash)
}

#[tokio::test]
async fn a_3_0_segment_becomes_events_that_reproduce_the_fixture_hash() {
    let s = setup("3.0.29").await;
    let mut source = CassandraSource::new(config(&s, Processed::Keep), &s.bus, s.serializer.clone()).await.unwrap();
    let stats = source.poll_once().await.unwrap();
    assert_eq!((stats.segments, stats.completed, stats.events), (1, 1, 98));
    let got = events(&s).await;
    assert_eq!(fold_events(&got), s.expected);
    assert!(got.iter().all(|(op, ..)| op == "i" || op == "u"));
    assert!(s.segment.exists(), "processed = keep leaves the segment");
    // Polling again finds nothing new: the offset moved past the segment.
    assert_eq!(source.poll_once().await.unwrap().events, 0);
}

#[tokio::test]
async fn a_4_0_segment_is_read_up_to_its_cdc_index_and_resumes_after_a_restart() {
    let s = setup("4.0.11").await;
    let index = s.segment.with_file_name(format!("{}_cdc.idx", s.segment.file_stem().unwrap().to_string_lossy()));
    let full = std::fs::metadata(&s.segment).unwrap().len();

    // Cassandra has synced the first two sections (up to byte 1576) and is still writing.
    std::fs::write(&index, "1576\n").unwrap();
    let mut source = CassandraSource::new(config(&s, Processed::Delete), &s.bus, s.serializer.clone()).await.unwrap();
    let first = source.poll_once().await.unwrap();
    assert_eq!((first.segments, first.completed), (1, 0));
    assert!(events(&s).await.iter().all(|(.., pos)| *pos < 1576), "nothing past the durable offset");
    assert!(source.offset().unwrap().position >= 1576 - 8, "{:?}", source.offset());
    drop(source);

    // Restart: a new source; Cassandra has finished the segment.
    std::fs::write(&index, format!("{full}\nCOMPLETED\n")).unwrap();
    let mut source = CassandraSource::new(config(&s, Processed::Delete), &s.bus, s.serializer.clone()).await.unwrap();
    let second = source.poll_once().await.unwrap();
    assert_eq!(second.completed, 1);
    assert_eq!(first.events + second.events, 355, "no event lost or repeated across the restart");

    let got = events(&s).await;
    assert_eq!(got.len(), 355);
    let positions: Vec<i32> = got.iter().map(|e| e.3).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "events in log order, each mutation once");
    assert_eq!(fold_events(&got), s.expected);
    assert!(!s.segment.exists() && !index.exists(), "processed = delete removes the segment and its index");
    assert_eq!(source.poll_once().await.unwrap(), Default::default());
}

#[tokio::test]
async fn a_saved_offset_in_the_middle_of_a_segment_resumes_exactly_there() {
    // A first run to learn the entry positions.
    let probe = setup("4.0.11").await;
    let mut source =
        CassandraSource::new(config(&probe, Processed::Keep), &probe.bus, probe.serializer.clone()).await.unwrap();
    source.poll_once().await.unwrap();
    let all = events(&probe).await;
    let resume_at = all[200].3;

    // A crash after the 200th event's offset was saved: the next run starts from that entry.
    let s = setup("4.0.11").await;
    std::fs::create_dir_all(s.dir.path().join("state")).unwrap();
    std::fs::write(s.dir.path().join("state/node1.cassandra-offset"), format!("1699285478684 {resume_at}\n")).unwrap();
    let mut source = CassandraSource::new(config(&s, Processed::Keep), &s.bus, s.serializer.clone()).await.unwrap();
    let stats = source.poll_once().await.unwrap();
    let got = events(&s).await;
    assert_eq!(stats.events, 355 - 200);
    assert_eq!(got.first().map(|e| e.3), Some(resume_at));
    assert_eq!(got, all[200..].to_vec(), "the same events, from the saved position on");
}

#[tokio::test]
async fn a_compressed_segment_is_read_up_to_its_durable_offset_too() {
    let s = setup("4.0.11").await;
    let plain = std::fs::read(&s.segment).unwrap();
    let compressed = compressed_copy(&plain, Codec::Zstd, "ZstdCompressor");
    std::fs::write(&s.segment, &compressed).unwrap();
    let index = s.segment.with_file_name(format!("{}_cdc.idx", s.segment.file_stem().unwrap().to_string_lossy()));
    // Durable up to the end of the second section of the compressed file.
    let be = |at: usize| i32::from_be_bytes(compressed[at..at + 4].try_into().unwrap()) as usize;
    let header_len = 14 + u16::from_be_bytes([compressed[12], compressed[13]]) as usize + 4;
    let second_end = be(be(header_len));
    std::fs::write(&index, format!("{second_end}\n")).unwrap();
    let mut source = CassandraSource::new(config(&s, Processed::Delete), &s.bus, s.serializer.clone()).await.unwrap();
    let first = source.poll_once().await.unwrap();
    assert_eq!(first.completed, 0);
    std::fs::write(&index, format!("{}\nCOMPLETED\n", compressed.len())).unwrap();
    let second = source.poll_once().await.unwrap();
    assert_eq!((second.completed, first.events + second.events), (1, 355));
    let got = events(&s).await;
    assert_eq!(fold_events(&got), s.expected);
    let positions: Vec<i32> = got.iter().map(|e| e.3).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "logical positions increase, each mutation once");
}

#[tokio::test]
async fn tables_can_be_given_inline_and_one_way_only() {
    let s = setup("3.0.29").await;
    let cql = std::fs::read_to_string(s.dir.path().join("tables.cql")).unwrap();
    let inline = CassandraSourceConfig { schema: None, cql: Some(cql.clone()), ..config(&s, Processed::Keep) };
    let mut source = CassandraSource::new(inline, &s.bus, s.serializer.clone()).await.unwrap();
    assert_eq!(source.poll_once().await.unwrap().events, 98);
    let both = CassandraSourceConfig { cql: Some(cql), ..config(&s, Processed::Keep) };
    let err = CassandraSource::new(both, &s.bus, s.serializer.clone()).await.err().unwrap().to_string();
    assert!(err.contains("exactly one of schema"), "{err}");
}

#[tokio::test]
async fn a_damaged_segment_stops_the_source_with_file_and_position() {
    let s = setup("3.0.29").await;
    let mut bytes = std::fs::read(&s.segment).unwrap();
    bytes[5000] ^= 0x40;
    std::fs::write(&s.segment, &bytes).unwrap();
    let mut source = CassandraSource::new(config(&s, Processed::Delete), &s.bus, s.serializer.clone()).await.unwrap();
    let err = source.poll_once().await.unwrap_err().to_string();
    assert!(err.contains("CommitLog-6-1699279786262.log") && err.contains("CRC"), "{err}");
    assert!(s.segment.exists(), "a segment that failed is never deleted");
}
