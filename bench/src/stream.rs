//! `weir bench stream`: N payment change events (Debezium Avro envelopes) over K merchants on
//! the embedded bus, through a pipeline with 1-minute tumbling windows per merchant computing
//! count, sum, avg and p95 of the amount. Reports events/s of wall time and per CPU-second of
//! the process (the goal is per core), and, in the same run, the rate of decoding alone (the
//! same events into the same Arrow batches) as the baseline the window work adds to, and the
//! same pipeline written in SQL (`pipelines/*.sql`) over the same events, whose rate should equal
//! the YAML one's (goal: at least 0.9 of it), and an enrichment join: the same aggregates per
//! merchant and its city, the city looked up for each event in a merchants table kept from its
//! Debezium changelog. The YAML pipeline runs first and again last; the others are compared with
//! the mean of its two runs, so that the order they run in weighs less.
//!
//! Scale-out: the YAML pipeline as a scale-out pipeline ([`weir_stream::scale`]: repartitioned
//! by merchant through a bus topic, one engine per partition) run by one member, then by two
//! members splitting the partitions, each on its own thread and runtime (as two processes would
//! be, here sharing the embedded bus in-process). Goal: two members at least 1.7 times one
//! member's events per second of wall time.
//!
//! Peer: where Apache Flink is installed (`scripts/deps flink`), Flink SQL on a local mini-cluster
//! (parallelism 1, streaming mode) runs the same tumbling windows per merchant — count, sum and
//! average of the amount — over the same payments written to a CSV file (`bench/flink/tumbling.py`),
//! and a Weir pipeline with exactly those aggregates runs beside it; both report events per
//! CPU-second (Flink: of its JVM while the job runs). Flink reads plain CSV where Weir decodes
//! Avro change-event envelopes, which favours Flink.

use std::{sync::Arc, time::Instant};

use clap::Args;
use serde_json::{Value, json};
use weir_bus::{Bus, ConsumerConfig, Record, local::LocalBus};
use weir_lake::{Lake, config::LakeConfig};
use weir_schemas::{
    avro::AvroSchema,
    connect::{Field, Value as V, decimal_bytes, schema},
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    registry::SchemaRegistry,
    serializer::AvroSerializer,
};
use weir_stream::{Engine, EngineConfig, alert::RuleSet, decode::Decoder, pipeline, scale::Member};

use super::{Progress, machine};

const TOPIC: &str = "bench.shop.payments";
/// The merchants table's changelog (id, city) the join case looks cities up in.
const MERCHANTS: &str = "bench.shop.merchants";
/// Flink's side of the comparison.
const FLINK_SCRIPT: &str = include_str!("../flink/tumbling.py");
/// Distinct cities of the merchants.
const CITIES: i64 = 100;
/// Event time of the first event: 2026-11-23T00:00:00Z.
const T0_MS: i64 = 1_795_392_000_000;

/// `weir bench stream`.
#[derive(Args)]
pub struct StreamBenchArgs {
    /// Change events to aggregate.
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Distinct keys (merchants).
    #[arg(long, default_value_t = 10_000)]
    keys: i64,
    /// Events per second of event time (10M events at 2,000/s span 83 one-minute windows of
    /// about 12 events per key).
    #[arg(long, default_value_t = 2_000)]
    events_per_second: i64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// A Python with PyFlink (`apache-flink`) for the Flink comparison [default:
    /// ~/.cache/weir/flink-venv/bin/python when it exists, as `scripts/deps flink` installs it;
    /// without one the comparison is skipped]
    #[arg(long)]
    flink_python: Option<std::path::PathBuf>,
    /// Skip the Flink comparison even where Flink is installed.
    #[arg(long, conflicts_with = "flink_python")]
    no_flink: bool,
    /// Skip the scale-out case (one member, then two).
    #[arg(long)]
    no_scale_out: bool,
}

/// The Python `--flink-python` names, or the one `scripts/deps flink` installs if it is there.
fn flink_python(args: &StreamBenchArgs) -> Option<std::path::PathBuf> {
    if args.no_flink {
        return None;
    }
    if let Some(p) = &args.flink_python {
        return Some(p.clone());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))?;
    let python = cache.join("weir/flink-venv/bin/python");
    python.exists().then_some(python)
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

pub async fn run(args: StreamBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.events > 0 && args.keys > 0 && args.partitions > 0, "arguments must be positive");
    let super::Embedded { tmp, bus, registry } = super::embedded(TOPIC, args.partitions).await?;
    let flink = flink_python(&args);
    let csv = flink.as_ref().map(|_| tmp.path().join("payments.csv"));
    let bytes = produce(&bus, registry.clone(), &args, csv.as_deref()).await?;
    produce_merchants(&bus, registry.clone(), args.keys).await?;

    let pipelines = tmp.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(
        pipelines.join("payments_per_minute.yaml"),
        format!(
            "source: {{topic: {TOPIC}}}\nkey: merchant_id\nwindow: {{tumbling: 1m}}\naggregates:\n  \
             - {{name: payments, fn: count}}\n  - {{name: amount, fn: sum, expr: amount}}\n  \
             - {{name: avg_amount, fn: avg, expr: amount}}\n  \
             - {{name: p95_amount, fn: percentile, expr: amount, q: 0.95}}\n"
        ),
    )?;
    std::fs::write(
        pipelines.join("payments_per_minute_sql.sql"),
        format!(
            "CREATE PIPELINE payments_per_minute_sql AS\nSELECT merchant_id, COUNT(*) AS payments, SUM(amount) AS amount,\n  \
             AVG(amount) AS avg_amount, APPROX_PERCENTILE_CONT(amount, 0.95) AS p95_amount\nFROM \"{TOPIC}\"\n\
             GROUP BY merchant_id, TUMBLE(_source_ts_ms, INTERVAL '1' MINUTE)\n"
        ),
    )?;
    std::fs::write(
        pipelines.join("payments_per_merchant_and_city.sql"),
        format!(
            "CREATE PIPELINE payments_per_merchant_and_city AS\nSELECT p.merchant_id, m.city, COUNT(*) AS payments,\n  \
             SUM(p.amount) AS amount, AVG(p.amount) AS avg_amount, APPROX_PERCENTILE_CONT(p.amount, 0.95) AS p95_amount\n\
             FROM \"{TOPIC}\" p JOIN \"{MERCHANTS}\" m ON p.merchant_id = m.id\n\
             GROUP BY p.merchant_id, m.city, TUMBLE(p._source_ts_ms, INTERVAL '1' MINUTE)\n"
        ),
    )?;
    let (loaded, errors) = pipeline::load_dir(&pipelines);
    anyhow::ensure!(errors.is_empty(), "bench pipeline refused: {errors:?}");
    let [p_join, p, p_sql]: [pipeline::Pipeline; 3] =
        loaded.try_into().map_err(|l: Vec<_>| anyhow::anyhow!("{} pipelines, not 3", l.len()))?;
    // What Flink computes: the YAML pipeline without its percentile.
    let mut flink_twin = p.clone();
    flink_twin.id = format!("{}_flink_twin", p.id);
    flink_twin.aggregates.retain(|a| a.func != pipeline::AggFn::Percentile);
    anyhow::ensure!(
        pipeline::Pipeline {
            id: p.id.clone(),
            file: p.file.clone(),
            output_topic: p.output_topic.clone(),
            ..p_sql.clone()
        } == p,
        "the SQL pipeline differs from the YAML one"
    );
    let lake_dir = tmp.path().join("lake");
    std::fs::create_dir_all(&lake_dir)?;
    let url = format!("file://{}", lake_dir.display()).parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let lake = Lake::new(&LakeConfig { url, ..Default::default() });

    // Baseline: decoding alone, the same events into the same batches.
    eprintln!("baseline: decoding {} events", args.events);
    let (decode_secs, decode_cpu) = {
        let mut consumer = bus.consumer(ConsumerConfig::new("bench-decode")).await?;
        consumer.subscribe(&[TOPIC]).await?;
        let mut decoder = Decoder::new(&p.source, Some(registry.clone()));
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let mut seen = 0;
        while seen < args.events {
            let polled = consumer.poll(std::time::Duration::from_secs(2)).await?;
            anyhow::ensure!(!polled.is_empty(), "the topic ran dry after {seen} events");
            seen += polled.len();
            let out = decoder.decode(&polled).await?;
            anyhow::ensure!(out.dead.is_empty(), "bench events failed to decode: {:?}", out.dead.first());
        }
        (started.elapsed().as_secs_f64(), cpu_seconds() - cpu)
    };

    let mut runs = Vec::new();
    let runs_pipeline = p.clone();
    let mut again = p.clone();
    again.id = format!("{}_again", p.id);
    let mut forms = vec![("YAML", p), ("SQL", p_sql), ("join", p_join), ("YAML, again", again)];
    if flink.is_some() {
        forms.push(("Flink's aggregates", flink_twin));
    }
    for (form, p) in forms {
        eprintln!("pipeline ({form}): {} events, {} keys, 1-minute windows", args.events, args.keys);
        let config =
            EngineConfig { checkpoint_interval: std::time::Duration::from_secs(10), ..EngineConfig::default() };
        let mut engine =
            Engine::open(p, config, bus.clone(), Some(registry.clone()), lake.clone(), RuleSet::empty()).await?;
        let (started, cpu) = (Instant::now(), cpu_seconds());
        let stats = engine.drain().await?;
        let (secs, cpu_secs) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        anyhow::ensure!(
            stats.aggregated as usize == args.events,
            "the {form} pipeline aggregated {} of {} events",
            stats.aggregated,
            args.events
        );
        runs.push((stats, secs, cpu_secs));
    }
    let [
        (stats, secs, cpu_secs),
        (sql_stats, sql_secs, sql_cpu_secs),
        (join_stats, join_secs, join_cpu_secs),
        (_, again_secs, again_cpu_secs),
    ] = [runs[0], runs[1], runs[2], runs[3]];
    for (form, s) in [("SQL", sql_stats), ("join", join_stats)] {
        anyhow::ensure!(
            s.results == stats.results,
            "the {form} pipeline closed {} windows, YAML {}",
            s.results,
            stats.results
        );
    }
    let flink = match (&flink, &csv) {
        (Some(python), Some(csv)) => {
            let (_, twin_secs, twin_cpu) = runs[4];
            // The script is part of the binary: it runs wherever `weir` does, not only from a checkout.
            let script = tmp.path().join("tumbling.py");
            std::fs::write(&script, FLINK_SCRIPT)?;
            eprintln!("peer: Apache Flink ({}) on the same {} events", python.display(), args.events);
            let out = std::process::Command::new(python)
                .arg(&script)
                .arg(csv)
                .arg(tmp.path().join("flink-results"))
                .stderr(std::process::Stdio::inherit())
                .output()?;
            anyhow::ensure!(out.status.success(), "{} {} failed ({})", python.display(), script.display(), out.status);
            let f: Value = serde_json::from_slice(&out.stdout)
                .map_err(|e| anyhow::anyhow!("Flink's report: {e}: {}", String::from_utf8_lossy(&out.stdout)))?;
            anyhow::ensure!(f["events"] == json!(args.events), "Flink read {} events of {}", f["events"], args.events);
            let flink_cpu = f["cpu_seconds"].as_f64().unwrap_or(f64::NAN);
            json!({
                "flink": {
                    "version": f["flink"],
                    "parallelism": 1,
                    "input": "CSV file",
                    "results": f["results"],
                    "seconds": f["seconds"],
                    "cpu_seconds": flink_cpu,
                    "events_per_cpu_s": (args.events as f64 / flink_cpu).round(),
                },
                "weir": {
                    "input": "Debezium Avro envelopes on the embedded bus",
                    "results_closed": runs[4].0.results,
                    "seconds": twin_secs,
                    "cpu_seconds": twin_cpu,
                    "events_per_cpu_s": (args.events as f64 / twin_cpu).round(),
                },
                "ratio_weir_to_flink": flink_cpu / twin_cpu,
            })
        }
        _ if args.no_flink => json!({"skipped": "--no-flink"}),
        _ => json!({"skipped": "no PyFlink: `scripts/deps flink` installs it, or give --flink-python"}),
    };
    let scale_out = if args.no_scale_out {
        json!({"skipped": "--no-scale-out"})
    } else {
        // One member, two, two, one: each is the mean of a run early and one late.
        let mut cases = Vec::new();
        for (run, members) in [1, 2, 2, 1].into_iter().enumerate() {
            let mut p = runs_pipeline.clone();
            p.id = format!("{}_scale_out_{run}", runs_pipeline.id);
            eprintln!("scale-out: {members} member(s), {} events repartitioned by merchant", args.events);
            let bus: Arc<dyn Bus> = bus.clone();
            cases.push(scale_out_run(p, members, bus, registry.clone(), lake.clone(), args.events as u64)?);
        }
        let case = |a: (f64, f64, u64), b: (f64, f64, u64)| {
            let (secs, cpu) = ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
            json!({
                "seconds": [a.0, b.0],
                "cpu_seconds": [a.1, b.1],
                "results": [a.2, b.2],
                "events_per_s": (args.events as f64 / secs).round(),
                "events_per_cpu_s": (args.events as f64 / cpu).round(),
            })
        };
        let (one, two) = (case(cases[0], cases[3]), case(cases[1], cases[2]));
        let ratio = two["events_per_s"].as_f64().unwrap_or(f64::NAN) / one["events_per_s"].as_f64().unwrap_or(f64::NAN);
        json!({"one_member": one, "two_members": two, "ratio_two_to_one": ratio})
    };
    let per_core = args.events as f64 / cpu_secs;
    let again_per_core = args.events as f64 / again_cpu_secs;
    let yaml_per_core = (per_core + again_per_core) / 2.0;
    let sql_per_core = args.events as f64 / sql_cpu_secs;
    let join_per_core = args.events as f64 / join_cpu_secs;
    Ok(json!({
        "benchmark": "stream",
        "machine": machine(),
        "events": args.events,
        "keys": args.keys,
        "partitions": args.partitions,
        "avro_bytes": bytes,
        "windows_closed_results": stats.results,
        "checkpoints": stats.checkpoints,
        "pipeline": {
            "seconds": secs,
            "cpu_seconds": cpu_secs,
            "events_per_s": (args.events as f64 / secs).round(),
            "events_per_cpu_s": per_core.round(),
        },
        "baseline_decode_only": {
            "seconds": decode_secs,
            "cpu_seconds": decode_cpu,
            "events_per_cpu_s": (args.events as f64 / decode_cpu).round(),
        },
        "pipeline_again": {
            "seconds": again_secs,
            "cpu_seconds": again_cpu_secs,
            "events_per_s": (args.events as f64 / again_secs).round(),
            "events_per_cpu_s": again_per_core.round(),
        },
        "ratio_pipeline_to_decode_only": decode_cpu / cpu_secs,
        "sql_pipeline": {
            "seconds": sql_secs,
            "cpu_seconds": sql_cpu_secs,
            "events_per_s": (args.events as f64 / sql_secs).round(),
            "events_per_cpu_s": sql_per_core.round(),
        },
        "ratio_sql_to_yaml": sql_per_core / yaml_per_core,
        "join_pipeline": {
            "table_rows": args.keys,
            "cities": CITIES.min(args.keys),
            "seconds": join_secs,
            "cpu_seconds": join_cpu_secs,
            "events_per_s": (args.events as f64 / join_secs).round(),
            "events_per_cpu_s": join_per_core.round(),
        },
        "ratio_join_to_yaml": join_per_core / yaml_per_core,
        "peer_flink": flink,
        "scale_out": scale_out,
        "goals": {"events_per_cpu_s": 500_000, "ratio_sql_to_yaml": 0.9, "scale_out_ratio_two_to_one": 1.7},
    }))
}

/// Runs `members` scale-out members of `p`, each on its own thread with its own runtime, until
/// together they have aggregated `events`; returns the wall and CPU seconds (of the whole
/// process) from the members' first poll.
fn scale_out_run(
    p: pipeline::Pipeline,
    members: usize,
    bus: Arc<dyn Bus>,
    registry: Arc<dyn SchemaRegistry>,
    lake: Lake,
    events: u64,
) -> anyhow::Result<(f64, f64, u64)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let aggregated: Arc<Vec<AtomicU64>> = Arc::new((0..members).map(|_| AtomicU64::new(0)).collect());
    let results: Arc<Vec<AtomicU64>> = Arc::new((0..members).map(|_| AtomicU64::new(0)).collect());
    // Every member joins the groups before any polls, so that they split the partitions.
    let joined = Arc::new(std::sync::Barrier::new(members + 1));
    // No member leaves (its partitions would move to one still counting) before all are done.
    let finished = Arc::new(std::sync::Barrier::new(members));
    let threads: Vec<_> = (0..members)
        .map(|i| {
            let (p, bus, registry, lake) = (p.clone(), bus.clone(), registry.clone(), lake.clone());
            let (aggregated, joined, finished) = (aggregated.clone(), joined.clone(), finished.clone());
            let results = results.clone();
            let thread = std::thread::Builder::new().name(format!("scale-out-{i}"));
            thread.spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move {
                    let config = EngineConfig {
                        checkpoint_interval: std::time::Duration::from_secs(10),
                        ..EngineConfig::default()
                    };
                    let rules: weir_stream::scale::RulesFactory = Arc::new(RuleSet::empty);
                    let member = Member::open(p, config, bus, Some(registry), lake, rules).await;
                    joined.wait();
                    let mut member = member?;
                    let mut idle_since = Instant::now();
                    while aggregated.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>() < events {
                        if member.poll_once().await? > 0 {
                            idle_since = Instant::now();
                        }
                        aggregated[i].store(member.stats().aggregated, Ordering::Relaxed);
                        anyhow::ensure!(
                            idle_since.elapsed() < std::time::Duration::from_secs(30),
                            "scale-out member {i} read nothing for 30 s"
                        );
                    }
                    member.checkpoint().await?;
                    results[i].store(member.stats().results, Ordering::Relaxed);
                    finished.wait();
                    Ok(())
                })
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    joined.wait();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    let mut progress = Progress::new("scale-out events aggregated", events as usize);
    while threads.iter().any(|t| !t.is_finished()) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        progress.update(aggregated.iter().map(|a| a.load(Ordering::Relaxed)).sum::<u64>() as usize);
    }
    let (secs, cpu_secs) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    for (i, t) in threads.into_iter().enumerate() {
        let done = t.join().map_err(|_| anyhow::anyhow!("scale-out member {i} panicked"))?;
        done.map_err(|e| e.context(format!("scale-out member {i}")))?;
    }
    let total: u64 = aggregated.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    anyhow::ensure!(total == events, "the scale-out members aggregated {total} of {events} events");
    Ok((secs, cpu_secs, results.iter().map(|r| r.load(Ordering::Relaxed)).sum()))
}

/// A `payments` row: id, merchant, amount, status.
fn columns() -> Vec<Field> {
    vec![
        Field::new("id", schema::int64()),
        Field::new("merchant_id", schema::int64()),
        Field::new("amount", schema::decimal(12, 2)),
        Field::new("status", schema::string()),
    ]
}

/// Puts `keys` merchants (id, city) on the merchants table's changelog, as a snapshot does.
async fn produce_merchants(bus: &Arc<LocalBus>, registry: Arc<dyn SchemaRegistry>, keys: i64) -> anyhow::Result<()> {
    bus.create_topic(MERCHANTS, 1).await?;
    let serializer = AvroSerializer::new(registry);
    let source_schema = binlog_source_schema(BinlogFlavor::Mariadb);
    let t = TableSchemas::new(
        MERCHANTS,
        vec![Field::new("id", schema::int64()), Field::new("city", schema::string())],
        vec![Field::new("id", schema::int64())],
        source_schema.clone(),
    );
    let value_schema = AvroSchema::new(t.envelope.clone())?;
    let producer = bus.producer().await?;
    let mut records = Vec::new();
    for id in 0..keys {
        let row = V::Struct(vec![V::Int64(id), V::String(format!("city-{}", id % CITIES))]);
        let source = BinlogSource {
            flavor: BinlogFlavor::Mariadb,
            name: "bench".into(),
            ts_us: T0_MS * 1000,
            snapshot: SnapshotMarker::True,
            db: "shop".into(),
            table: Some("merchants".into()),
            server_id: 1,
            gtid: None,
            file: "mysql-bin.000001".into(),
            pos: 4,
            row: 0,
            thread: None,
            query: None,
        };
        let envelope = t.envelope_value(Op::Read, V::Null, row, source.to_value(&source_schema), None, 0);
        let value = serializer.serialize(MERCHANTS, false, &value_schema, &envelope).await?;
        records.push(Record::keyed(id.to_string(), value));
    }
    producer.send(MERCHANTS, records).await?;
    Ok(())
}

/// Produces the events (inserts of payments, in event-time order); returns their Avro bytes.
/// With `csv`, the same payments go to that file too (id, merchant_id, amount, event time in ms)
/// for the Flink comparison.
async fn produce(
    bus: &Arc<LocalBus>,
    registry: Arc<dyn SchemaRegistry>,
    args: &StreamBenchArgs,
    csv: Option<&std::path::Path>,
) -> anyhow::Result<u64> {
    use std::io::Write as _;
    let mut csv = match csv {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    let serializer = AvroSerializer::new(registry);
    let source_schema = binlog_source_schema(BinlogFlavor::Mariadb);
    let t = TableSchemas::new(TOPIC, columns(), vec![Field::new("id", schema::int64())], source_schema.clone());
    let value_schema = AvroSchema::new(t.envelope.clone())?;
    let key_schema = AvroSchema::new(t.key.clone().expect("a key"))?;
    let producer = bus.producer().await?;
    let statuses = ["paid", "paid", "paid", "failed"];
    let mut progress = Progress::new("producing events", args.events);
    let (mut bytes, mut records) = (0u64, Vec::with_capacity(10_000));
    for i in 0..args.events as i64 {
        let merchant = (i * 7_919) % args.keys;
        let cents = i % 50_000 + 100;
        let at_ms = T0_MS + i * 1000 / args.events_per_second;
        if let Some(csv) = &mut csv {
            writeln!(csv, "{i},{merchant},{}.{:02},{at_ms}", cents / 100, cents % 100)?;
        }
        let row = V::Struct(vec![
            V::Int64(i),
            V::Int64(merchant),
            V::Bytes(decimal_bytes(i128::from(cents))),
            V::String(statuses[(i % 4) as usize].into()),
        ]);
        let source = BinlogSource {
            flavor: BinlogFlavor::Mariadb,
            name: "bench".into(),
            ts_us: at_ms * 1000,
            snapshot: SnapshotMarker::False,
            db: "shop".into(),
            table: Some("payments".into()),
            server_id: 1,
            gtid: None,
            file: "mysql-bin.000001".into(),
            pos: 4 + i * 200,
            row: 0,
            thread: None,
            query: None,
        };
        let envelope = t.envelope_value(Op::Create, V::Null, row, source.to_value(&source_schema), None, 0);
        let key = serializer.serialize(TOPIC, true, &key_schema, &V::Struct(vec![V::Int64(i)])).await?;
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
    if let Some(mut csv) = csv {
        csv.flush()?;
    }
    progress.update(args.events);
    Ok(bytes)
}
