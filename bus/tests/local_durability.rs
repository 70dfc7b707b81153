//! Durability of the embedded log: torn tails, corruption, the directory lock, segment rolling,
//! and acknowledged records surviving `kill -9` of the producing process.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use weir_bus::{
    Bus, BusError, ConsumerConfig, Record, TopicPartition,
    config::{Fsync, LocalConfig},
    local::LocalBus,
};

fn segment(dir: &Path, topic: &str, partition: u32) -> std::path::PathBuf {
    dir.join("topics").join(topic).join(partition.to_string()).join(format!("{:020}.log", 0))
}

async fn read_all(bus: &LocalBus, topic: &str) -> Vec<weir_bus::Message> {
    let mut consumer = bus.consumer(ConsumerConfig::new("reader")).await.unwrap();
    consumer.assign(&[TopicPartition::new(topic, 0)]).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(Duration::from_millis(50)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = LocalBus::open(dir.path(), LocalConfig::default()).unwrap();
        bus.create_topic("t", 1).await.unwrap();
        let records = (0..10).map(|i| Record::keyed("k", format!("v{i}"))).collect();
        bus.producer().await.unwrap().send("t", records).await.unwrap();
    }
    let path = segment(dir.path(), "t", 0);
    let whole = std::fs::metadata(&path).unwrap().len();
    // A crash in the middle of writing record 10: its first 13 bytes reached the file.
    let mut bytes = std::fs::read(&path).unwrap();
    let last_record: Vec<u8> = bytes[bytes.len() - 30..].to_vec();
    bytes.extend_from_slice(&last_record[..13]);
    std::fs::write(&path, &bytes).unwrap();

    let bus = LocalBus::open(dir.path(), LocalConfig::default()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole, "torn bytes removed");
    assert_eq!(bus.end_offsets("t").await.unwrap(), vec![10]);
    let d = bus.producer().await.unwrap().send("t", vec![Record::keyed("k", "v10")]).await.unwrap();
    assert_eq!(d[0].offset, 10);
    let all = read_all(&bus, "t").await;
    let values: Vec<String> =
        all.iter().map(|m| String::from_utf8(m.value.clone().unwrap().to_vec()).unwrap()).collect();
    assert_eq!(values, (0..=10).map(|i| format!("v{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_flipped_bit_in_a_sealed_segment_is_reported_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig { segment_bytes: 1024, ..LocalConfig::default() };
    {
        let bus = LocalBus::open(dir.path(), config.clone()).unwrap();
        bus.create_topic("t", 1).await.unwrap();
        let producer = bus.producer().await.unwrap();
        for i in 0..40 {
            producer.send("t", vec![Record::keyed("k", format!("value number {i:04}"))]).await.unwrap();
        }
    }
    let path = segment(dir.path(), "t", 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let bus = LocalBus::open(dir.path(), config).unwrap();
    let mut consumer = bus.consumer(ConsumerConfig::new("reader")).await.unwrap();
    consumer.assign(&[TopicPartition::new("t", 0)]).await.unwrap();
    let err = consumer.poll(Duration::from_millis(100)).await.unwrap_err();
    match err {
        BusError::Corrupt { path: p, reason, .. } => {
            assert_eq!(p, path);
            assert!(reason.contains("CRC"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[tokio::test]
async fn one_process_owns_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _bus = LocalBus::open(dir.path(), LocalConfig::default()).unwrap();
    match LocalBus::open(dir.path(), LocalConfig::default()) {
        Err(BusError::Locked { holder, .. }) => assert_eq!(holder, format!("pid {}", std::process::id())),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn segments_roll_and_reads_cross_them_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalConfig { segment_bytes: 4096, fsync: Fsync::Always, ..LocalConfig::default() };
    {
        let bus = LocalBus::open(dir.path(), config.clone()).unwrap();
        bus.create_topic("t", 1).await.unwrap();
        let producer = bus.producer().await.unwrap();
        for batch in 0..50 {
            let records = (0..20).map(|i| Record::keyed("k", format!("{:05}", batch * 20 + i))).collect();
            producer.send("t", records).await.unwrap();
        }
    }
    let files = std::fs::read_dir(dir.path().join("topics/t/0")).unwrap().count();
    assert!(files > 5, "expected several segments, found {files}");
    let bus = LocalBus::open(dir.path(), config).unwrap();
    assert_eq!(bus.end_offsets("t").await.unwrap(), vec![1000]);
    let all = read_all(&bus, "t").await;
    assert_eq!(all.len(), 1000);
    assert!(all.iter().enumerate().all(|(i, m)| m.offset == i as i64));
    let mut consumer = bus.consumer(ConsumerConfig::new("seeker")).await.unwrap();
    let tp = TopicPartition::new("t", 0);
    consumer.assign(std::slice::from_ref(&tp)).await.unwrap();
    consumer.seek(&tp, 777).await.unwrap();
    let got = consumer.poll(Duration::from_millis(100)).await.unwrap();
    assert_eq!(got[0].offset, 777);
    assert_eq!(got[0].value.as_deref(), Some(&b"00777"[..]));
}

/// Not a test on its own: the child process of `acknowledged_records_survive_kill_9`, run with
/// `--ignored`. It produces numbered records in batches and prints each acknowledged batch's last
/// offset, until it is killed.
#[tokio::test]
#[ignore = "child process of acknowledged_records_survive_kill_9"]
async fn child_producer() {
    let dir = std::env::var("WEIR_KILL_TEST_DIR").expect("run by acknowledged_records_survive_kill_9");
    let bus = LocalBus::open(Path::new(&dir), LocalConfig::default()).unwrap();
    if bus.topic("t").await.is_err() {
        bus.create_topic("t", 1).await.unwrap();
    }
    let producer = bus.producer().await.unwrap();
    let mut next = bus.end_offsets("t").await.unwrap()[0];
    loop {
        let records: Vec<Record> = (next..next + 100).map(|i| Record::keyed("k", format!("{i:010}"))).collect();
        let d = producer.send("t", records).await.unwrap();
        next = d.last().unwrap().offset + 1;
        println!("acked {}", next - 1);
    }
}

#[tokio::test]
async fn acknowledged_records_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last_acked = -1i64;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_producer", "--ignored", "--nocapture", "--test-threads=1"])
            .env("WEIR_KILL_TEST_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acks = 0;
        while acks < 20 + round * 7 {
            let line = lines.next().expect("child stopped early").unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                last_acked = n.parse().unwrap();
                acks += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructors, no flush
        child.wait().unwrap();

        let bus = LocalBus::open(dir.path(), LocalConfig::default()).unwrap();
        let end = bus.end_offsets("t").await.unwrap()[0];
        assert!(end > last_acked, "round {round}: acknowledged offset {last_acked} lost (end {end})");
        let all = read_all(&bus, "t").await;
        assert_eq!(all.len() as i64, end, "round {round}");
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.value.as_deref(), Some(format!("{i:010}").as_bytes()), "round {round}, offset {i}");
        }
    }
}
