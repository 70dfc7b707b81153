//! Retention of the embedded log: segments go by size and age, never while a consumer group
//! still needs them, and the log's start survives a restart.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use weir_bus::{
    Bus, BusError, ConsumerConfig, OffsetReset, Record, TopicConfig, TopicPartition,
    config::{LocalConfig, RetentionConfig},
    local::LocalBus,
};

/// Small segments, and no retention thread: the tests run retention when they choose.
fn config() -> LocalConfig {
    LocalConfig {
        segment_bytes: 1024,
        retention: RetentionConfig { check_interval: Duration::ZERO, ..RetentionConfig::default() },
        ..LocalConfig::default()
    }
}

fn topic_config(pairs: &[(&str, &str)]) -> TopicConfig {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn produce(bus: &LocalBus, topic: &str, from: usize, to: usize) {
    let producer = bus.producer().await.unwrap();
    for i in from..to {
        producer.send(topic, vec![Record::keyed("k", format!("record {i:05} {}", "x".repeat(80)))]).await.unwrap();
    }
}

/// The offsets a fresh group reads from the start of the log.
async fn offsets_from_start(bus: &LocalBus, topic: &str) -> Vec<i64> {
    let mut consumer = bus
        .consumer(ConsumerConfig { offset_reset: OffsetReset::Earliest, ..ConsumerConfig::new("reader") })
        .await
        .unwrap();
    consumer.assign(&[TopicPartition::new(topic, 0)]).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.iter().map(|m| m.offset));
    }
}

fn segment_files(dir: &Path, topic: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("topics").join(topic).join("0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn size_retention_keeps_what_a_group_has_not_committed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), config()).unwrap();
    bus.create_topic_with("t", 1, &topic_config(&[("retention.bytes", "2048")])).await.unwrap();
    produce(&bus, "t", 0, 200).await;
    let before = bus.partition_stats("t").await.unwrap()[0];
    assert_eq!((before.start, before.end), (0, 200));
    assert!(before.bytes.unwrap() > 10 * 1024, "{before:?}");

    // A lake writer committed up to 50: nothing from 50 on may go.
    let tp = TopicPartition::new("t", 0);
    let mut lake = bus.consumer(ConsumerConfig::new("weir-lake-t")).await.unwrap();
    lake.commit(&[(tp.clone(), 50)]).await.unwrap();
    let (segments, bytes) = bus.enforce_retention().unwrap();
    assert!(segments > 0 && bytes > 0, "segments before offset 50 go");
    let held = bus.partition_stats("t").await.unwrap()[0];
    assert!(held.start > 0 && held.start <= 50, "{held:?}");
    assert_eq!(held.end, 200);
    assert_eq!(offsets_from_start(&bus, "t").await, (held.start..200).collect::<Vec<_>>());

    // Once it committed everything, the size limit alone decides.
    lake.commit(&[(tp, 200)]).await.unwrap();
    bus.enforce_retention().unwrap();
    let trimmed = bus.partition_stats("t").await.unwrap()[0];
    assert!(trimmed.start > 50, "{trimmed:?}");
    let kept = trimmed.bytes.unwrap();
    assert!(
        (2048..2048 + 1024 + 200).contains(&kept),
        "keeps at least retention.bytes, at most a segment more: {kept}"
    );
    assert_eq!(offsets_from_start(&bus, "t").await, (trimmed.start..200).collect::<Vec<_>>());

    // The start survives a restart, and appends go on from the end.
    drop(lake);
    drop(bus);
    let bus = LocalBus::open(dir.path(), config()).unwrap();
    let reopened = bus.partition_stats("t").await.unwrap()[0];
    assert_eq!((reopened.start, reopened.end), (trimmed.start, 200));
    produce(&bus, "t", 200, 201).await;
    assert_eq!(offsets_from_start(&bus, "t").await, (trimmed.start..201).collect::<Vec<_>>());
    assert_eq!(bus.topic_config("t").await.unwrap()["retention.bytes"], "2048");
}

#[tokio::test]
async fn age_retention_deletes_old_sealed_segments_and_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), config()).unwrap();
    bus.create_topic_with("old", 1, &topic_config(&[("retention.ms", "60000")])).await.unwrap();
    bus.create_topic("forever", 1).await.unwrap();
    produce(&bus, "old", 0, 100).await;
    produce(&bus, "forever", 0, 100).await;
    assert_eq!(bus.enforce_retention().unwrap(), (0, 0), "nothing is a minute old yet");

    let two_minutes_ago = SystemTime::now() - Duration::from_secs(120);
    for path in segment_files(dir.path(), "old").into_iter().chain(segment_files(dir.path(), "forever")) {
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(two_minutes_ago).unwrap();
    }
    let files = segment_files(dir.path(), "old");
    assert!(files.len() > 3);
    bus.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "old"), files[files.len() - 1..], "only the active segment is left");
    let old = bus.partition_stats("old").await.unwrap()[0];
    assert!(old.start > 0 && old.end == 100, "{old:?}");
    assert_eq!(bus.partition_stats("forever").await.unwrap()[0].start, 0, "a topic without retention keeps all");
    assert_eq!(bus.topic_config("forever").await.unwrap()["retention.ms"], "-1");
}

#[tokio::test]
async fn the_owner_runs_retention_on_its_own_with_the_configured_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig {
        segment_bytes: 1024,
        retention: RetentionConfig {
            bytes: Some(1024),
            check_interval: Duration::from_millis(20),
            ..RetentionConfig::default()
        },
        ..LocalConfig::default()
    };
    let bus = LocalBus::open(dir.path(), config).unwrap();
    bus.create_topic("t", 1).await.unwrap();
    // The schema history's configs override the default: it keeps everything.
    bus.create_topic_with("history", 1, &weir_bus::keep_forever()).await.unwrap();
    assert_eq!(bus.topic_config("t").await.unwrap()["retention.bytes"], "1024");
    assert_eq!(bus.topic_config("history").await.unwrap()["retention.bytes"], "-1");
    produce(&bus, "t", 0, 100).await;
    produce(&bus, "history", 0, 100).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus.partition_stats("t").await.unwrap()[0].start == 0 {
        assert!(Instant::now() < deadline, "retention never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bus.partition_stats("history").await.unwrap()[0].start, 0);
}

#[tokio::test]
async fn configs_it_cannot_apply_are_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), config()).unwrap();
    for (k, v) in [("cleanup.policy", "compact"), ("retention.ms", "a week"), ("segment.ms", "1000")] {
        match bus.create_topic_with("t", 1, &topic_config(&[(k, v)])).await {
            Err(BusError::InvalidArgument(msg)) => assert!(msg.contains(&format!("{k}={v}")), "{msg}"),
            other => panic!("{k}={v}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(bus.list_topics().await.unwrap().is_empty(), "a refused topic is not created");
}
