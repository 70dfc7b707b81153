//! The bus contract: every test here runs against the embedded log (`local::…`), against the
//! embedded log used from another process through its owner's socket (`remote::…`), against a
//! real Kafka-protocol broker (`kafka::…`, at `WEIR_TEST_KAFKA`, started by `scripts/test`), and
//! against a broker that takes only SCRAM logins over TLS (`kafka_sasl_ssl::…`, at
//! `WEIR_TEST_KAFKA_SASL_SSL`, with the test CA of `WEIR_TEST_TLS_DIR`).

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use bytes::Bytes;
use weir_bus::{
    Bus, BusError, ConsumerConfig, Message, OffsetReset, Record, TopicPartition, local::LocalBus, next_offsets,
    partitioner::partition_for_key,
};

mod common;

/// A topic name no other test (or earlier run against the same broker) uses.
fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{name}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

struct Backend {
    bus: Arc<dyn Bus>,
    _owner: Option<LocalBus>,
    _dir: Option<tempfile::TempDir>,
}

fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), Default::default()).unwrap();
    Backend { bus: Arc::new(bus), _owner: None, _dir: Some(dir) }
}

/// The same protocol a second process speaks: every call crosses the owner's Unix socket.
async fn remote() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let owner = LocalBus::open(dir.path(), Default::default()).unwrap();
    owner.serve().unwrap();
    let bus = weir_bus::local::remote::RemoteBus::connect(dir.path()).await.unwrap();
    Backend { bus: Arc::new(bus), _owner: Some(owner), _dir: Some(dir) }
}

async fn kafka() -> Backend {
    let brokers = std::env::var("WEIR_TEST_KAFKA")
        .expect("WEIR_TEST_KAFKA is not set: run scripts/test, which starts a Kafka-protocol broker on loopback");
    let bus = weir_bus::kafka::KafkaBus::connect(&brokers, Default::default()).await.unwrap();
    Backend { bus: Arc::new(bus), _owner: None, _dir: None }
}

async fn kafka_sasl_ssl() -> Backend {
    let bus = weir_bus::kafka::KafkaBus::connect(&common::sasl_ssl_brokers(), common::sasl_ssl_config()).await.unwrap();
    Backend { bus: Arc::new(bus), _owner: None, _dir: None }
}

/// Polls until `n` messages arrived or `deadline` passed.
async fn poll_n(consumer: &mut dyn weir_bus::Consumer, n: usize, deadline: Duration) -> Vec<Message> {
    let until = tokio::time::Instant::now() + deadline;
    let mut out = Vec::new();
    while out.len() < n && tokio::time::Instant::now() < until {
        out.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    out
}

async fn topics_are_created_and_listed(b: Backend) {
    let bus = b.bus;
    let name = unique("topics");
    bus.create_topic(&name, 3).await.unwrap();
    let listed = bus.list_topics().await.unwrap();
    assert!(listed.iter().any(|t| t.name == name && t.partitions == 3), "{listed:?}");
    assert_eq!(bus.topic(&name).await.unwrap().partitions, 3);
    assert!(matches!(bus.create_topic(&name, 3).await, Err(BusError::TopicExists(t)) if t == name));
    assert!(matches!(bus.topic("no-such-topic-anywhere").await, Err(BusError::UnknownTopic(_))));
    assert!(matches!(bus.create_topic("bad name!", 1).await, Err(BusError::InvalidTopic { .. })));
    assert!(bus.create_topic(&unique("zero"), 0).await.is_err());
}

async fn records_round_trip_with_headers(b: Backend) {
    let bus = b.bus;
    let topic = unique("roundtrip");
    bus.create_topic(&topic, 3).await.unwrap();
    let records: Vec<Record> = (0..100)
        .map(|i| Record::keyed(format!("key-{}", i % 7), format!("value-{i}")).with_header("n", format!("{i}")))
        .collect();
    let delivered = bus.producer().await.unwrap().send(&topic, records.clone()).await.unwrap();
    assert_eq!(delivered.len(), 100);
    let mut consumer = bus.consumer(ConsumerConfig::new(unique("g"))).await.unwrap();
    consumer.subscribe(&[&topic]).await.unwrap();
    let got = poll_n(consumer.as_mut(), 100, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 100);
    for m in &got {
        let i: usize = std::str::from_utf8(m.header("n").unwrap()).unwrap().parse().unwrap();
        assert_eq!(m.key, records[i].key);
        assert_eq!(m.value, records[i].value);
        assert_eq!((m.partition, m.offset), (delivered[i].partition, delivered[i].offset), "record {i}");
        assert_eq!(&*m.topic, topic);
        assert!(m.timestamp_ms > 0);
    }
    // Within a partition, records come back in the order they were produced, offsets without gaps.
    for p in 0..3 {
        let offsets: Vec<i64> = got.iter().filter(|m| m.partition == p).map(|m| m.offset).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {p}");
    }
}

async fn keys_use_kafkas_default_partitioner(b: Backend) {
    let bus = b.bus;
    let topic = unique("murmur");
    bus.create_topic(&topic, 12).await.unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("customer-{i}")).collect();
    let records = keys.iter().map(|k| Record::keyed(k.clone(), "v")).collect();
    let delivered = bus.producer().await.unwrap().send(&topic, records).await.unwrap();
    for (k, d) in keys.iter().zip(&delivered) {
        assert_eq!(d.partition, partition_for_key(k.as_bytes(), 12), "key {k}");
    }
}

async fn null_keys_values_and_explicit_partitions(b: Backend) {
    let bus = b.bus;
    let topic = unique("nulls");
    bus.create_topic(&topic, 2).await.unwrap();
    let producer = bus.producer().await.unwrap();
    let tombstone = Record { key: Some(Bytes::from("k")), partition: Some(1), ..Record::default() };
    let d = producer.send(&topic, vec![tombstone, Record::default()]).await.unwrap();
    assert_eq!(d[0].partition, 1);
    let bad = Record { partition: Some(9), ..Record::default() };
    assert!(producer.send(&topic, vec![bad]).await.is_err(), "partition 9 of 2 must be refused");
    let mut consumer = bus.consumer(ConsumerConfig::new(unique("g"))).await.unwrap();
    consumer.subscribe(&[&topic]).await.unwrap();
    let got = poll_n(consumer.as_mut(), 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    let tomb = got.iter().find(|m| m.key.is_some()).unwrap();
    assert_eq!((tomb.partition, tomb.value.as_ref()), (1, None));
    assert!(got.iter().any(|m| m.key.is_none() && m.value.is_none()));
}

async fn committed_offsets_resume_the_group(b: Backend) {
    let bus = b.bus;
    let topic = unique("commits");
    bus.create_topic(&topic, 2).await.unwrap();
    let records = (0..40).map(|i| Record::keyed(format!("{i}"), format!("{i}"))).collect();
    bus.producer().await.unwrap().send(&topic, records).await.unwrap();
    let group = unique("g");
    let mut config = ConsumerConfig::new(&group);
    config.max_poll_records = 5;
    let mut first = bus.consumer(config.clone()).await.unwrap();
    first.subscribe(&[&topic]).await.unwrap();
    let seen = poll_n(first.as_mut(), 1, Duration::from_secs(30)).await;
    assert!(!seen.is_empty() && seen.len() <= 5);
    let commits = next_offsets(&seen);
    first.commit(&commits).await.unwrap();
    let tps: Vec<TopicPartition> = (0..2).map(|p| TopicPartition::new(&topic, p)).collect();
    let committed = first.committed(&tps).await.unwrap();
    for (tp, offset) in &commits {
        assert_eq!(committed[tp.partition as usize], Some(*offset));
    }
    drop(first);

    let mut second = bus.consumer(config).await.unwrap();
    second.subscribe(&[&topic]).await.unwrap();
    let rest = poll_n(second.as_mut(), 40 - seen.len(), Duration::from_secs(30)).await;
    let mut all: Vec<(u32, i64)> = seen.iter().chain(&rest).map(|m| (m.partition, m.offset)).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "every record exactly once across the two members");
    assert_eq!(seen.len() + rest.len(), 40, "nothing re-read after the commit");
}

async fn assign_and_seek(b: Backend) {
    let bus = b.bus;
    let topic = unique("seek");
    bus.create_topic(&topic, 1).await.unwrap();
    let records = (0..20).map(|i| Record::keyed("k", format!("{i}"))).collect();
    bus.producer().await.unwrap().send(&topic, records).await.unwrap();
    assert_eq!(bus.end_offsets(&topic).await.unwrap(), vec![20]);
    let tp = TopicPartition::new(&topic, 0);
    let mut consumer = bus.consumer(ConsumerConfig::new(unique("g"))).await.unwrap();
    consumer.assign(std::slice::from_ref(&tp)).await.unwrap();
    assert_eq!(consumer.assignment(), vec![tp.clone()]);
    let first = poll_n(consumer.as_mut(), 20, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 20);
    consumer.seek(&tp, 15).await.unwrap();
    let again = poll_n(consumer.as_mut(), 5, Duration::from_secs(30)).await;
    assert_eq!(again.iter().map(|m| m.offset).collect::<Vec<_>>(), vec![15, 16, 17, 18, 19]);
}

async fn latest_reset_skips_the_past(b: Backend) {
    let bus = b.bus;
    let topic = unique("latest");
    bus.create_topic(&topic, 1).await.unwrap();
    let producer = bus.producer().await.unwrap();
    producer.send(&topic, vec![Record::keyed("k", "old")]).await.unwrap();
    let mut config = ConsumerConfig::new(unique("g"));
    config.offset_reset = OffsetReset::Latest;
    let mut consumer = bus.consumer(config).await.unwrap();
    consumer.assign(&[TopicPartition::new(&topic, 0)]).await.unwrap();
    assert!(consumer.poll(Duration::from_millis(1500)).await.unwrap().is_empty());
    producer.send(&topic, vec![Record::keyed("k", "new")]).await.unwrap();
    let got = poll_n(consumer.as_mut(), 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value.as_deref(), Some(&b"new"[..]));
}

async fn group_members_split_partitions(b: Backend) {
    let bus = b.bus;
    let topic = unique("split");
    bus.create_topic(&topic, 4).await.unwrap();
    let group = unique("g");
    let mut a = bus.consumer(ConsumerConfig::new(&group)).await.unwrap();
    let mut c = bus.consumer(ConsumerConfig::new(&group)).await.unwrap();
    a.subscribe(&[&topic]).await.unwrap();
    c.subscribe(&[&topic]).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, _) = tokio::join!(a.poll(Duration::from_millis(100)), c.poll(Duration::from_millis(100)));
        let (sa, sc): (BTreeSet<_>, BTreeSet<_>) =
            (a.assignment().into_iter().collect(), c.assignment().into_iter().collect());
        if !sa.is_empty() && !sc.is_empty() && sa.len() + sc.len() == 4 && sa.is_disjoint(&sc) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "no balanced assignment: {sa:?} / {sc:?}");
    }
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod local {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::local()).await } )*
        }
        mod remote {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::remote().await).await } )*
        }
        mod kafka {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::kafka().await).await } )*
        }
        mod kafka_sasl_ssl {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::kafka_sasl_ssl().await).await } )*
        }
    };
}

contract!(
    topics_are_created_and_listed,
    records_round_trip_with_headers,
    keys_use_kafkas_default_partitioner,
    null_keys_values_and_explicit_partitions,
    committed_offsets_resume_the_group,
    assign_and_seek,
    latest_reset_skips_the_past,
    group_members_split_partitions,
);
