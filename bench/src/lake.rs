//! `weir bench lake`: N change events (Avro envelopes of an `orders` table) from the embedded
//! bus into a Delta table by the lake writer — consume, decode, Parquet, commit with offsets —
//! against, in the same run, the same Arrow batches written straight to Parquet files with
//! `parquet`'s ArrowWriter (same writer properties, one file per commit's worth of rows).
//!
//! The events are produced before the clock starts; the baseline's batches are decoded before
//! its clock starts, so the ratio is the lake writer's whole cost against Parquet encoding alone.
//!
//! The two are timed in alternating rounds (lake, baseline, lake, baseline, …; each lake round
//! writes a new table from offset 0) and the figures are the medians: on a shared machine one
//! pair of runs can differ by a fifth either way.

use std::{sync::Arc, time::Instant};

use clap::Args;
use deltalake::parquet::arrow::ArrowWriter;
use serde_json::{Value, json};
use weir_bus::{Bus, ConsumerConfig, Record, local::LocalBus};
use weir_lake::{
    avro_arrow::Layout,
    writer::{FlushPolicy, TopicWriter, parquet_properties},
};
use weir_schemas::{
    avro::AvroSchema,
    connect::{Field, Value as V, decimal_bytes, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    registry::SchemaRegistry,
    serializer::AvroSerializer,
    wire,
};

use super::{Progress, machine, median};

const TOPIC: &str = "bench.shop.orders";

/// `weir bench lake`.
#[derive(Args)]
pub struct LakeBenchArgs {
    /// Change events to write.
    #[arg(long, default_value_t = 5_000_000)]
    events: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Rows per Delta commit (the writer's flush_rows).
    #[arg(long, default_value_t = 500_000)]
    commit_rows: usize,
    /// Rounds of each (lake, then baseline); the medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One timed round of either side.
struct Round {
    seconds: f64,
    bytes_on_disk: u64,
}

pub async fn run(args: LakeBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.events > 0 && args.partitions > 0 && args.commit_rows > 0 && args.rounds > 0,
        "arguments must be positive"
    );
    let super::Embedded { tmp, bus, registry } = super::embedded(TOPIC, args.partitions).await?;
    let bytes = produce(&bus, registry.clone(), args.events).await?;
    // The baseline's input: the same rows decoded into the same Arrow batches, not timed.
    eprintln!("baseline: decoding the events into Arrow batches");
    let decode_started = Instant::now();
    let batches = decode_all(&bus, registry.as_ref(), args.events).await?;
    let decode_secs = decode_started.elapsed().as_secs_f64();

    let (mut lake, mut raw) = (Vec::new(), Vec::new());
    let (mut commits, mut files) = (0, 0);
    for round in 1..=args.rounds {
        let dir = tmp.path().join(format!("round-{round}"));
        eprintln!("round {round}/{}: lake writer, {} events → Delta", args.rounds, args.events);
        let (r, c) = lake_round(&args, &bus, &registry, &dir.join("lake/raw/bench_shop_orders")).await?;
        eprintln!("round {round}/{}: lake {:.0} rows/s", args.rounds, args.events as f64 / r.seconds);
        commits = c;
        lake.push(r);
        eprintln!("round {round}/{}: baseline ArrowWriter, {} rows per file", args.rounds, args.commit_rows);
        let (r, f) = baseline_round(&batches, args.commit_rows, &dir.join("parquet"))?;
        files = f;
        eprintln!("round {round}/{}: baseline {:.0} rows/s", args.rounds, args.events as f64 / r.seconds);
        raw.push(r);
        std::fs::remove_dir_all(&dir)?;
    }

    let rate = |r: &Round| args.events as f64 / r.seconds;
    let lake_rate = median(lake.iter().map(rate).collect());
    let raw_rate = median(raw.iter().map(rate).collect());
    let rates = |rs: &[Round]| rs.iter().map(|r| rate(r).round()).collect::<Vec<_>>();
    let ratios: Vec<f64> = lake.iter().zip(&raw).map(|(l, r)| rate(l) / rate(r)).collect();
    Ok(json!({
        "benchmark": "lake",
        "machine": machine(),
        "events": args.events,
        "partitions": args.partitions,
        "avro_bytes": bytes,
        "rounds": args.rounds,
        "lake": {
            "rows_per_s": lake_rate.round(),
            "rows_per_s_by_round": rates(&lake),
            "commits": commits,
            "bytes_on_disk": lake[0].bytes_on_disk,
        },
        "baseline_arrow_writer": {
            "rows_per_s": raw_rate.round(),
            "rows_per_s_by_round": rates(&raw),
            "files": files,
            "bytes_on_disk": raw[0].bytes_on_disk,
        },
        "ratio_lake_to_arrow_writer": lake_rate / raw_rate,
        "ratio_by_round": ratios,
        "decode_only_rows_per_s": (args.events as f64 / decode_secs).round(),
        "goals": {"rows_per_s": 300_000, "ratio": 0.8},
    }))
}

/// The lake writer into a new table at `dir`, timed from open to its last commit; with the
/// commits it made.
async fn lake_round(
    args: &LakeBenchArgs,
    bus: &Arc<LocalBus>,
    registry: &Arc<dyn SchemaRegistry>,
    dir: &std::path::Path,
) -> anyhow::Result<(Round, u64)> {
    std::fs::create_dir_all(dir)?;
    let url = url_of(dir)?;
    let policy = FlushPolicy { rows: args.commit_rows, bytes: usize::MAX, age: std::time::Duration::from_secs(3600) };
    let started = Instant::now();
    let mut writer = TopicWriter::open(bus.clone(), registry.clone(), TOPIC, None, url, policy).await?;
    let stats = writer.drain(std::time::Duration::from_millis(200)).await?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(stats.rows as usize == args.events, "the writer wrote {} of {} rows", stats.rows, args.events);
    Ok((Round { seconds, bytes_on_disk: dir_bytes(dir) }, stats.commits))
}

/// `batches` written straight to Parquet files of `commit_rows` rows under `dir` by ArrowWriter;
/// with the files written.
fn baseline_round(
    batches: &[deltalake::arrow::record_batch::RecordBatch],
    commit_rows: usize,
    dir: &std::path::Path,
) -> anyhow::Result<(Round, usize)> {
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let mut file_no = 0;
    let mut rows_in_file = 0;
    let mut out: Option<ArrowWriter<std::fs::File>> = None;
    for batch in batches {
        if out.is_none() {
            let file = std::fs::File::create(dir.join(format!("part-{file_no:05}.parquet")))?;
            out = Some(ArrowWriter::try_new(file, batch.schema(), Some(parquet_properties()))?);
            file_no += 1;
        }
        let w = out.as_mut().expect("just opened");
        w.write(batch)?;
        rows_in_file += batch.num_rows();
        if rows_in_file >= commit_rows {
            out.take().expect("open").close()?;
            rows_in_file = 0;
        }
    }
    if let Some(w) = out {
        w.close()?;
    }
    Ok((Round { seconds: started.elapsed().as_secs_f64(), bytes_on_disk: dir_bytes(dir) }, file_no))
}

fn url_of(dir: &std::path::Path) -> anyhow::Result<url::Url> {
    let abs = dir.canonicalize()?;
    url::Url::from_directory_path(&abs).map_err(|()| anyhow::anyhow!("{} is not absolute", abs.display()))
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() { dir_bytes(&p) } else { e.metadata().map_or(0, |m| m.len()) };
    }
    total
}

/// An `orders` row: id, customer, amount, currency, status, created (µs), note.
fn columns() -> Vec<Field> {
    vec![
        Field::new("id", schema::int64()),
        Field::new("customer_id", schema::int64()),
        Field::new("amount", schema::decimal(12, 2)),
        Field::new("currency", schema::string()),
        Field::new("status", schema::string()),
        Field::new("created_at", schema::int64().named("io.debezium.time.MicroTimestamp").version(1)),
        Field::new("note", schema::string().optional()),
    ]
}

/// Produces `n` envelopes (inserts, then updates of the same ids); returns their Avro bytes.
async fn produce(bus: &Arc<LocalBus>, registry: Arc<dyn SchemaRegistry>, n: usize) -> anyhow::Result<u64> {
    let serializer = AvroSerializer::new(registry);
    let source_schema = binlog_source_schema(BinlogFlavor::Mariadb);
    let t = TableSchemas::new(TOPIC, columns(), vec![Field::new("id", schema::int64())], source_schema.clone());
    let value_schema = AvroSchema::new(t.envelope.clone())?;
    let key_schema = AvroSchema::new(t.key.clone().expect("a key"))?;
    let producer = bus.producer().await?;
    let statuses = ["created", "paid", "shipped", "delivered"];
    let mut progress = Progress::new("producing events", n);
    let mut bytes = 0u64;
    let mut records = Vec::with_capacity(10_000);
    let ids = (n as i64 / 2).max(1);
    for i in 0..n as i64 {
        let id = i % ids;
        let update = i >= ids;
        let row = |rev: i64| {
            V::Struct(vec![
                V::Int64(id),
                V::Int64(id % 100_003),
                V::Bytes(decimal_bytes(i128::from(id % 100_000) * 7 + 99)),
                V::String("EUR".into()),
                V::String(statuses[((id + rev) % 4) as usize].into()),
                V::Int64(1_795_428_000_000_000 + id * 1000),
                if id % 3 == 0 { V::Null } else { V::String(format!("order {id} note")) },
            ])
        };
        let source = BinlogSource {
            flavor: BinlogFlavor::Mariadb,
            name: "bench".into(),
            ts_us: 1_795_428_000_000_000 + i * 100,
            snapshot: SnapshotMarker::False,
            db: "shop".into(),
            table: Some("orders".into()),
            server_id: 1,
            gtid: None,
            file: "mysql-bin.000001".into(),
            pos: 4 + i * 200,
            row: 0,
            thread: None,
            query: None,
        };
        let (op, before, after) = if update { (Op::Update, row(0), row(1)) } else { (Op::Create, V::Null, row(0)) };
        let envelope = t.envelope_value(op, before, after, source.to_value(&source_schema), None, 0);
        let key = serializer.serialize(TOPIC, true, &key_schema, &V::Struct(vec![V::Int64(id)])).await?;
        let value = serializer.serialize(TOPIC, false, &value_schema, &envelope).await?;
        bytes += value.len() as u64;
        records.push(Record::keyed(key, value));
        if records.len() == 10_000 {
            producer.send(TOPIC, std::mem::take(&mut records)).await?;
            progress.update(i as usize + 1);
        }
    }
    if !records.is_empty() {
        producer.send(TOPIC, records).await?;
    }
    progress.update(n);
    Ok(bytes)
}

/// Decodes every event on the topic into Arrow batches of 8,192 rows, as the writer does.
async fn decode_all(
    bus: &Arc<LocalBus>,
    registry: &dyn SchemaRegistry,
    n: usize,
) -> anyhow::Result<Vec<deltalake::arrow::record_batch::RecordBatch>> {
    let mut consumer = bus.consumer(ConsumerConfig::new("bench-baseline")).await?;
    consumer.subscribe(&[TOPIC]).await?;
    let mut layout: Option<(u32, Layout)> = None;
    let mut builder = None;
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < n {
        let polled = consumer.poll(std::time::Duration::from_secs(2)).await?;
        anyhow::ensure!(!polled.is_empty(), "the topic ran dry after {seen} of {n} events");
        for m in polled {
            seen += 1;
            let (id, body) = wire::unframe(m.value.as_deref().unwrap_or_default())?;
            if layout.as_ref().is_none_or(|(cur, _)| *cur != id) {
                let l = Layout::new(&registry.schema_by_id(id).await?)?;
                builder = Some(l.batch(8192));
                layout = Some((id, l));
            }
            let (_, l) = layout.as_ref().expect("set above");
            let b = builder.as_mut().expect("set with the layout");
            l.append(body, TOPIC, m.partition as i32, m.offset, b)?;
            if b.rows() >= 8192 {
                batches.push(b.finish(l.schema()));
            }
        }
    }
    if let (Some((_, l)), Some(b)) = (&layout, builder.as_mut())
        && b.rows() > 0
    {
        batches.push(b.finish(l.schema()));
    }
    Ok(batches)
}
