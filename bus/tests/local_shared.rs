//! The embedded log shared through its owner's socket, beyond the contract suite: a member whose
//! connection ends leaves its group, a cancelled poll loses no record, a client of an owner that
//! stopped gets an error naming the socket, and a new owner replaces the socket a killed one left.

use std::{collections::BTreeSet, time::Duration};

use weir_bus::{Bus, BusError, ConsumerConfig, Record, local::LocalBus, local::remote::RemoteBus, next_offsets};

fn owner(dir: &std::path::Path) -> LocalBus {
    let bus = LocalBus::open(dir, Default::default()).unwrap();
    bus.serve().unwrap();
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_connection_ends_leaves_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let _owner = owner(dir.path());
    let client = RemoteBus::connect(dir.path()).await.unwrap();
    client.create_topic("t", 4).await.unwrap();
    let mut a = client.consumer(ConsumerConfig::new("g")).await.unwrap();
    let mut b = client.consumer(ConsumerConfig::new("g")).await.unwrap();
    a.subscribe(&["t"]).await.unwrap();
    b.subscribe(&["t"]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(a.assignment().len() == 2 && b.assignment().len() == 2) {
        let _ = tokio::join!(a.poll(Duration::from_millis(50)), b.poll(Duration::from_millis(50)));
        assert!(tokio::time::Instant::now() < deadline, "no split: {:?} / {:?}", a.assignment(), b.assignment());
    }
    drop(b);
    while a.assignment().len() != 4 {
        a.poll(Duration::from_millis(50)).await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "the closed member kept its partitions: {:?}", a.assignment());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_poll_loses_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let owner = owner(dir.path());
    owner.create_topic("t", 1).await.unwrap();
    let client = RemoteBus::connect(dir.path()).await.unwrap();
    let mut consumer = client.consumer(ConsumerConfig::new("g")).await.unwrap();
    consumer.subscribe(&["t"]).await.unwrap();
    // Cancel a poll while it waits on the owner, then produce: the answer it was owed carries
    // the records, and the next poll must return them.
    let cancelled = tokio::time::timeout(Duration::from_millis(100), consumer.poll(Duration::from_secs(5))).await;
    assert!(cancelled.is_err(), "the poll should still have been waiting");
    let producer = owner.producer().await.unwrap();
    producer.send("t", (0..10).map(|i| Record::keyed("k", format!("v{i}"))).collect()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 10 && tokio::time::Instant::now() < deadline {
        seen.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    let offsets: BTreeSet<i64> = seen.iter().map(|m| m.offset).collect();
    assert_eq!(offsets, (0..10).collect(), "records lost or repeated after a cancelled poll");
    consumer.commit(&next_offsets(&seen)).await.unwrap();
    assert_eq!(consumer.committed(&[weir_bus::TopicPartition::new("t", 0)]).await.unwrap(), vec![Some(10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_a_stopped_owner_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let owner = owner(dir.path());
    let client = RemoteBus::connect(dir.path()).await.unwrap();
    client.create_topic("t", 1).await.unwrap();
    drop(owner);
    match client.list_topics().await {
        Err(e @ BusError::OwnerGone { .. }) => assert!(e.to_string().contains("bus.sock"), "{e}"),
        other => panic!("expected OwnerGone, got {other:?}"),
    }
    // The socket went with its owner; a new owner serves the same data.
    assert!(!dir.path().join("bus.sock").exists());
    let _again = owner_after_crash(dir.path());
    let client = RemoteBus::connect(dir.path()).await.unwrap();
    assert_eq!(client.topic("t").await.unwrap().partitions, 1);
}

/// A socket file left by an owner that was killed does not stop the next owner.
fn owner_after_crash(dir: &std::path::Path) -> LocalBus {
    std::fs::write(dir.join("bus.sock"), b"left by a killed owner").unwrap();
    owner(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_does_not_serve_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let _owner = LocalBus::open(dir.path(), Default::default()).unwrap();
    let config = weir_bus::BusConfig { url: weir_bus::BusUrl::Local(dir.path().to_path_buf()), ..Default::default() };
    match weir_bus::open(&config).await {
        Err(e @ BusError::NotServed { .. }) => assert!(e.to_string().contains("does not serve it"), "{e}"),
        Err(e) => panic!("expected NotServed, got {e}"),
        Ok(_) => panic!("expected NotServed, got a bus"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_batches_of_a_remote_producer_take_turns_over_the_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let _owner = owner(dir.path());
    let client = RemoteBus::connect(dir.path()).await.unwrap();
    client.create_topic("t", 4).await.unwrap();
    let producer = client.producer().await.unwrap();
    let mut partitions = BTreeSet::new();
    for i in 0..4 {
        let record = Record { value: Some(format!("v{i}").into()), ..Record::default() };
        partitions.insert(producer.send("t", vec![record]).await.unwrap()[0].partition);
    }
    assert_eq!(partitions, (0..4).collect(), "as one in-process producer: a batch per partition in turn");
}
