//! `weir bench bus`: produce then consume N records of B bytes, per backend: the embedded log
//! (`local`), the same log used through its owner's socket as another process would
//! (`local_shared`, with its ratio to `local`), and Kafka when one is named.
//!
//! Records are built before the clock starts; producing sends batches with several in flight,
//! as a real producer would; consuming is one consumer-group member reading every partition.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use weir_bus::{
    Bus, BusUrl, ConsumerConfig, Record,
    local::{LocalBus, remote::RemoteBus},
};

use super::{Progress, machine};
use weir_bus::BusConfig;

/// `weir bench bus`.
#[derive(Args)]
pub struct BusBenchArgs {
    /// Records to produce and consume.
    #[arg(long, default_value_t = 1_000_000)]
    records: usize,
    /// Bytes per record value.
    #[arg(long, default_value_t = 200)]
    value_bytes: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records per produce call.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Also run on this Kafka cluster (`host:port`); defaults to bus.url when that is Kafka.
    #[arg(long)]
    kafka: Option<String>,
    /// Directory for the embedded log (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

pub async fn run(config: &BusConfig, args: BusBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.records > 0 && args.batch > 0 && args.partitions > 0,
        "records, batch and partitions must be positive"
    );
    let mut results = serde_json::Map::new();

    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let owner = LocalBus::open(&dir, config.local.clone())?;
    owner.serve()?;
    let local = measure(Arc::new(owner.clone()), "local", &args).await?;
    let shared = measure(Arc::new(RemoteBus::connect(&dir).await?), "local shared", &args).await?;
    let ratio = |key: &str| round(shared[key].as_f64().unwrap_or(0.0) / local[key].as_f64().unwrap_or(1.0));
    let ratios = json!({
        "produce": ratio("produce_records_per_s"),
        "consume": ratio("consume_records_per_s"),
    });
    results.insert("local".into(), local);
    results.insert("local_shared".into(), shared);
    results.insert("local_shared_to_local".into(), ratios);

    let kafka = args.kafka.clone().or(match &config.url {
        BusUrl::Kafka(brokers) => Some(brokers.clone()),
        BusUrl::Local(_) => None,
    });
    if let Some(brokers) = kafka {
        let bus: Arc<dyn Bus> = Arc::new(weir_bus::kafka::KafkaBus::connect(&brokers, config.kafka.clone()).await?);
        results.insert("kafka".into(), measure(bus, "kafka", &args).await?);
    }
    Ok(json!({
        "benchmark": "bus",
        "records": args.records,
        "value_bytes": args.value_bytes,
        "partitions": args.partitions,
        "batch": args.batch,
        "backends": results,
        "machine": machine(),
    }))
}

async fn measure(bus: Arc<dyn Bus>, backend: &str, args: &BusBenchArgs) -> anyhow::Result<Value> {
    let topic =
        format!("weir-bench-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    bus.create_topic(&topic, args.partitions).await?;
    let value = Bytes::from((0..args.value_bytes).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>());
    let batches: Vec<Vec<Record>> = (0..args.records)
        .collect::<Vec<_>>()
        .chunks(args.batch)
        .map(|chunk| chunk.iter().map(|i| Record::keyed(format!("key-{:08}", i % 100_000), value.clone())).collect())
        .collect();

    let producer = bus.producer().await?;
    let mut progress = Progress::new(format!("{backend} produce"), args.records);
    let mut sent = 0usize;
    let started = Instant::now();
    let mut acks = futures::stream::iter(batches).map(|b| producer.send(&topic, b)).buffered(8);
    while let Some(delivered) = acks.try_next().await? {
        sent += delivered.len();
        progress.update(sent);
    }
    let produce_s = started.elapsed().as_secs_f64();
    drop(acks);

    let mut consumer = bus.consumer(ConsumerConfig::new(format!("{topic}-reader"))).await?;
    consumer.subscribe(&[&topic]).await?;
    let mut progress = Progress::new(format!("{backend} consume"), args.records);
    let mut received = 0usize;
    let mut bytes = 0usize;
    let started = Instant::now();
    while received < args.records {
        let batch = consumer.poll(std::time::Duration::from_secs(30)).await?;
        anyhow::ensure!(!batch.is_empty(), "{backend}: no record for 30 s after {received} of {}", args.records);
        bytes += batch.iter().map(|m| m.value.as_ref().map_or(0, |v| v.len())).sum::<usize>();
        received += batch.len();
        progress.update(received);
    }
    let consume_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(received == args.records, "{backend}: consumed {received} records, produced {}", args.records);
    anyhow::ensure!(bytes == args.records * args.value_bytes, "{backend}: value bytes differ");
    let mb = (args.records * args.value_bytes) as f64 / 1e6;
    Ok(json!({
        "produce_seconds": round(produce_s),
        "produce_records_per_s": (args.records as f64 / produce_s).round(),
        "produce_mb_per_s": round(mb / produce_s),
        "consume_seconds": round(consume_s),
        "consume_records_per_s": (args.records as f64 / consume_s).round(),
        "consume_mb_per_s": round(mb / consume_s),
    }))
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
