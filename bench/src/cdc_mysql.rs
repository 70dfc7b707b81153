//! `weir bench cdc-mysql`: the MySQL/MariaDB source against a real server, into the embedded bus.
//!
//! (a) Drain: N row changes (half inserts, half updates, in transactions of `txn_rows`) are written
//! while the source is stopped; then the source catches up: change events/s. The baseline, in the
//! same run, reads the same binlog range with the bare replication client and decodes every row
//! without producing anything, so the ratio shows what event building, Avro and the bus cost.
//! (b) Steady: a writer commits `rate` changes/s (transactions every 10 ms) while the source
//! runs; a consumer on the bus measures commit-to-consume latency of every change.
//! (c) Incremental snapshot: `snapshot_rows` rows already in the table are snapshotted by signal
//! while the source streams and the writer goes on at `rate` changes/s: rows/s of the snapshot
//! (watermarks in a signal table, and read-only), against the initial snapshot of the same rows in
//! the same run, and the commit-to-consume latency of the concurrent changes meanwhile.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use mysql_async::{BinlogStreamRequest, binlog::events::EventData, prelude::Queryable};
use serde_json::{Value, json};
use weir_bus::{Bus, ConsumerConfig, local::LocalBus};
use weir_ingest::mysql::{MysqlSource, MysqlSourceConfig, offset, signal};
use weir_schemas::{
    metadata,
    registry::{SchemaRegistry, store::SqlRegistry},
    serializer::AvroSerializer,
};

use super::machine;
use weir_bus::BusConfig;

/// `weir bench cdc-mysql`.
#[derive(Args)]
pub struct CdcMysqlArgs {
    /// The server (needs log_bin, ROW, FULL image and metadata, and rights to create a database).
    #[arg(long, env = "WEIR_BENCH_MYSQL_URL")]
    url: String,
    /// Row changes to drain.
    #[arg(long, default_value_t = 1_000_000)]
    changes: usize,
    /// Rows per transaction while writing the backlog.
    #[arg(long, default_value_t = 1000)]
    txn_rows: usize,
    /// Changes per second in the steady phase.
    #[arg(long, default_value_t = 5000)]
    rate: usize,
    /// Length of the steady phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Rows in the table the incremental-snapshot phase snapshots.
    #[arg(long, default_value_t = 500_000)]
    snapshot_rows: usize,
    /// Rows per incremental-snapshot chunk.
    #[arg(long, default_value_t = 10_000)]
    chunk: usize,
    /// Database the benchmark creates (and drops).
    #[arg(long, default_value = "weir_bench")]
    database: String,
}

struct Rig {
    dir: tempfile::TempDir,
    bus: Arc<dyn Bus>,
    serializer: Arc<AvroSerializer>,
}

async fn rig(config: &BusConfig) -> anyhow::Result<Rig> {
    let dir = tempfile::tempdir()?;
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::open(&dir.path().join("bus"), config.local.clone())?);
    let pool = metadata::connect(&format!("sqlite://{}/weir.db", dir.path().display()), Duration::from_secs(5)).await?;
    let registry: Arc<dyn SchemaRegistry> = Arc::new(SqlRegistry::open(pool).await?);
    Ok(Rig { dir, bus, serializer: Arc::new(AvroSerializer::new(registry)) })
}

fn source_config(args: &CdcMysqlArgs, rig: &Rig, name: &str, server_id: u32) -> MysqlSourceConfig {
    let mut c = MysqlSourceConfig::new(name, args.url.clone(), "bench");
    c.include_tables = vec![format!("{}.*", args.database)];
    c.state_dir = rig.dir.path().join("state");
    c.server_id = server_id;
    c
}

pub async fn run(config: &BusConfig, args: CdcMysqlArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.changes >= 2 && args.txn_rows > 0 && args.rate >= 100, "changes, txn_rows, rate too small");
    let db = &args.database;
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&args.url)?).await.context("connecting")?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS {db}")).await?;
    conn.query_drop(format!("CREATE DATABASE {db}")).await?;
    conn.query_drop(format!(
        "CREATE TABLE {db}.orders (id BIGINT PRIMARY KEY, customer INT NOT NULL, amount DECIMAL(10,2) NOT NULL, \
         status VARCHAR(16) NOT NULL, created DATETIME(3) NOT NULL) CHARACTER SET utf8mb4"
    ))
    .await?;
    let drain = drain(config, &args, &mut conn).await?;
    let steady = steady(config, &args, &mut conn).await?;
    let incremental = incremental(config, &args, &mut conn).await?;
    conn.query_drop(format!("DROP DATABASE {db}")).await?;
    Ok(json!({
        "benchmark": "cdc-mysql",
        "server": conn.server_version(),
        "drain": drain,
        "steady": steady,
        "incremental_snapshot": incremental,
        "machine": machine(),
    }))
}

/// Writes the backlog, then times the source's catch-up and the bare decoder's.
async fn drain(config: &BusConfig, args: &CdcMysqlArgs, conn: &mut mysql_async::Conn) -> anyhow::Result<Value> {
    let db = &args.database;
    let rig = rig(config).await?;
    let mut source =
        MysqlSource::new(source_config(args, &rig, "drain", 4_054_001), rig.bus.clone(), rig.serializer.clone())
            .await?;
    source.catch_up().await?; // snapshot of the empty table: the offset is now the backlog's start
    let start = (source.offset().file.clone(), source.offset().pos);

    let inserts = args.changes / 2;
    let updates = args.changes - inserts;
    let written = Instant::now();
    insert_orders(conn, db, inserts, args.txn_rows).await?;
    let mut done = 0;
    while done < updates {
        let n = args.txn_rows.min(updates - done);
        conn.query_drop(format!(
            "UPDATE {db}.orders SET status = 'paid', amount = amount + 1 WHERE id > {lo} AND id <= {hi}",
            lo = done % inserts,
            hi = done % inserts + n
        ))
        .await?;
        done += n;
    }
    let write_secs = written.elapsed().as_secs_f64();
    eprintln!("cdc-mysql: {} changes written in {write_secs:.1} s; draining", args.changes);

    let started = Instant::now();
    let stats = source.catch_up().await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        stats.changes as usize == args.changes,
        "drained {} changes, wrote {}",
        stats.changes,
        args.changes
    );
    let events = rig.bus.end_offsets(&format!("bench.{db}.orders")).await?.iter().sum::<i64>();

    let (baseline_rows, baseline_secs) = bare_decode(&args.url, &start.0, start.1).await?;
    let rate = stats.changes as f64 / secs;
    let baseline = baseline_rows as f64 / baseline_secs;
    Ok(json!({
        "changes": stats.changes,
        "records_on_bus": events,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "events_per_s": rate.round(),
        "baseline_bare_decode_rows_per_s": baseline.round(),
        "ratio_to_bare_decode": (rate / baseline * 1000.0).round() / 1000.0,
        "write_seconds": (write_secs * 10.0).round() / 10.0,
    }))
}

/// Inserts orders 1..=`rows` into `db.orders`, `per_txn` rows a transaction.
async fn insert_orders(conn: &mut mysql_async::Conn, db: &str, rows: usize, per_txn: usize) -> anyhow::Result<()> {
    conn.query_drop("SET SESSION max_recursive_iterations = 100000000").await.ok();
    let mut next = 0;
    while next < rows {
        let n = per_txn.min(rows - next);
        conn.query_drop(format!(
            "INSERT INTO {db}.orders WITH RECURSIVE s(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM s WHERE i < {hi}) \
             SELECT i, i % 1000, (i % 10000) / 100, 'new', '2026-11-23 10:00:00.000' FROM s",
            lo = next + 1,
            hi = next + n
        ))
        .await?;
        next += n;
    }
    Ok(())
}

/// Reads the binlog from `file`/`pos` to its end with the bare replication client, decoding
/// every row of every rows event: the floor under any CDC on this server and machine.
async fn bare_decode(url: &str, file: &str, pos: u64) -> anyhow::Result<(u64, f64)> {
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(url)?).await?;
    conn.query_drop("SET @mariadb_slave_capability = 4").await?;
    let request = BinlogStreamRequest::new(4_054_002).with_filename(file.as_bytes()).with_pos(pos).with_non_blocking();
    let started = Instant::now();
    let mut stream = conn.get_binlog_stream(request).await?;
    let mut rows = 0u64;
    while let Some(event) = stream.next().await {
        let event = event?;
        if let Some(EventData::RowsEvent(r)) = event.read_data()? {
            let tme = stream.get_tme(r.table_id()).context("rows event without table map")?;
            for row in r.rows(tme) {
                let (before, after) = row?;
                std::hint::black_box((before, after));
                rows += 1;
            }
        }
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}

/// Commits `rate` changes/s while the source runs; measures commit-to-consume latency.
async fn steady(config: &BusConfig, args: &CdcMysqlArgs, conn: &mut mysql_async::Conn) -> anyhow::Result<Value> {
    let db = args.database.clone();
    conn.query_drop(format!("TRUNCATE TABLE {db}.orders")).await?; // no snapshot backlog
    let rig = rig(config).await?;
    let mut source =
        MysqlSource::new(source_config(args, &rig, "steady", 4_054_003), rig.bus.clone(), rig.serializer.clone())
            .await?;
    source.catch_up().await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped_source = stopped.clone();
    let running = tokio::spawn(source.run(async move {
        let _ = stopped_source.wait_for(|s| *s).await;
    }));
    let reader = arrivals(rig.bus.as_ref(), &format!("bench.{db}.orders"), stopped.clone()).await?;
    let (stop_writer, writer_stopped) = tokio::sync::watch::channel(false);
    let writer = writer(&args.url, &db, args.rate, 10_000_000, writer_stopped).await?;
    tokio::time::sleep(args.steady).await;
    let _ = stop_writer.send(true);
    let (commits, achieved) = writer.await??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(true);
    running.await??;
    let arrivals = reader.await??;
    Ok(json!({
        "changes": commits.len(),
        "changes_per_s": achieved.round(),
        "commit_to_consume_ms": latency(&commits, &arrivals),
    }))
}

/// Records when each key of `topic` first arrives, until `stopped`.
async fn arrivals(
    bus: &dyn Bus,
    topic: &str,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<HashMap<i64, Instant>>>> {
    match bus.create_topic(topic, 1).await {
        Ok(()) | Err(weir_bus::BusError::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut consumer = bus.consumer(ConsumerConfig::new("latency")).await?;
    consumer.subscribe(&[topic]).await?;
    Ok(tokio::spawn(async move {
        let mut arrivals: HashMap<i64, Instant> = HashMap::new();
        loop {
            let batch = tokio::select! {
                b = consumer.poll(Duration::from_millis(200)) => b?,
                _ = stopped.wait_for(|s| *s) => break,
            };
            let now = Instant::now();
            for m in batch {
                if let Some(id) = m.key.as_deref().and_then(avro_long_key) {
                    arrivals.entry(id).or_insert(now);
                }
            }
        }
        anyhow::Ok(arrivals)
    }))
}

/// Inserts `rate` rows/s (a transaction every 10 ms) with ids from `first` until `stopped`;
/// returns each id's commit time (an event may arrive before the writer has its COMMIT reply:
/// latency 0) and the rate achieved.
async fn writer(
    url: &str,
    db: &str,
    rate: usize,
    first: i64,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(Vec<(i64, Instant)>, f64)>>> {
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(url)?).await.context("connecting")?;
    let db = db.to_string();
    Ok(tokio::spawn(async move {
        let mut commits = Vec::new();
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut next_id = first;
        while !*stopped.borrow() {
            tick.tick().await;
            let values: Vec<String> =
                (0..per_tick).map(|k| format!("({}, {}, 9.99, 'new', NOW(3))", next_id + k as i64, k % 1000)).collect();
            conn.query_drop(format!("INSERT INTO {db}.orders VALUES {}", values.join(","))).await?;
            let at = Instant::now();
            commits.extend((0..per_tick).map(|k| (next_id + k as i64, at)));
            next_id += per_tick as i64;
        }
        let achieved = commits.len() as f64 / started.elapsed().as_secs_f64();
        Ok((commits, achieved))
    }))
}

/// Commit-to-consume percentiles of `commits` (ms), and how many never arrived.
fn latency(commits: &[(i64, Instant)], arrivals: &HashMap<i64, Instant>) -> Value {
    let mut latencies: Vec<Duration> = Vec::new();
    let mut missing = 0;
    for (id, committed) in commits {
        match arrivals.get(id) {
            Some(arrived) => latencies.push(arrived.saturating_duration_since(*committed)),
            None => missing += 1,
        }
    }
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        (latencies[i].as_secs_f64() * 1e5).round() / 100.0
    };
    json!({
        "measured": latencies.len(),
        "not_seen_within_1s_after_the_end": missing,
        "p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0),
    })
}

/// Phase (c): the initial snapshot of `snapshot_rows` rows (the baseline), then an incremental
/// snapshot of the same rows by signal in each window mode while the writer goes on.
async fn incremental(config: &BusConfig, args: &CdcMysqlArgs, conn: &mut mysql_async::Conn) -> anyhow::Result<Value> {
    let db = args.database.clone();
    conn.query_drop(format!("TRUNCATE TABLE {db}.orders")).await?;
    conn.query_drop(format!(
        "CREATE TABLE IF NOT EXISTS {db}.debezium_signal (id VARCHAR(42) PRIMARY KEY, type VARCHAR(32) NOT NULL, \
         data VARCHAR(2048))"
    ))
    .await?;
    let rows = args.snapshot_rows;
    insert_orders(conn, &db, rows, 100_000).await?;
    // Baseline: the initial (consistent, one-query-per-table) snapshot of the same rows.
    let baseline = rig(config).await?;
    let mut source = MysqlSource::new(
        source_config(args, &baseline, "initial", 4_054_004),
        baseline.bus.clone(),
        baseline.serializer.clone(),
    )
    .await?;
    let started = Instant::now();
    let stats = source.catch_up().await?;
    let initial = stats.snapshot_rows as f64 / started.elapsed().as_secs_f64();
    drop(source);
    eprintln!("cdc-mysql: initial snapshot of {} rows at {initial:.0} rows/s", stats.snapshot_rows);

    let mut modes = serde_json::Map::new();
    for (mode, read_only, server_id) in [("signal_table", false, 4_054_005u32), ("read_only", true, 4_054_006)] {
        let rig = rig(config).await?;
        let mut c = source_config(args, &rig, mode, server_id);
        c.include_tables = vec![format!("{db}.orders")];
        c.signal_data_collection = Some(format!("{db}.debezium_signal"));
        c.read_only = read_only;
        c.incremental_snapshot_chunk_size = args.chunk;
        // Streaming from the binlog's end: no initial snapshot.
        let row: mysql_async::Row = conn.query_first("SHOW MASTER STATUS").await?.context("SHOW MASTER STATUS")?;
        let (file, pos): (String, u64) =
            (row.get(0).context("SHOW MASTER STATUS: file")?, row.get(1).context("SHOW MASTER STATUS: position")?);
        let saved = offset::Offset { file, pos, snapshot_completed: true, ..Default::default() };
        offset::save(&offset::path(&c.state_dir, &c.name), &saved)?;
        let source = MysqlSource::new(c.clone(), rig.bus.clone(), rig.serializer.clone()).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut stopped_source = stopped.clone();
        let running = tokio::spawn(source.run(async move {
            let _ = stopped_source.wait_for(|s| *s).await;
        }));
        let reader = arrivals(rig.bus.as_ref(), &format!("bench.{db}.orders"), stopped.clone()).await?;
        let (stop_writer, writer_stopped) = tokio::sync::watch::channel(false);
        let first_id = 20_000_000 + i64::from(server_id) * 1_000_000;
        let writer = writer(&args.url, &db, args.rate, first_id, writer_stopped).await?;

        let topic = signal::topic("bench");
        match rig.bus.create_topic(&topic, 1).await {
            Ok(()) | Err(weir_bus::BusError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let data = json!({"data-collections": [format!("{db}.orders")]});
        let started = Instant::now();
        rig.bus.producer().await?.send(&topic, vec![signal::record("bench", "execute-snapshot", &data)]).await?;
        let path = offset::path(&c.state_dir, &c.name);
        let mut last_report = Instant::now();
        loop {
            let o = offset::load(&path)?.unwrap_or_default();
            if o.signal_offset == 1 && o.snapshots.is_empty() {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("cdc-mysql: incremental snapshot ({mode}) after key {:?}", o.snapshots.last_key);
                last_report = Instant::now();
            }
            anyhow::ensure!(!running.is_finished(), "the source stopped during the incremental snapshot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let _ = stop_writer.send(true);
        let (commits, achieved) = writer.await??;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = stop.send(true);
        running.await??;
        let arrivals = reader.await??;
        let rate = rows as f64 / secs;
        eprintln!("cdc-mysql: incremental snapshot ({mode}) at {rate:.0} rows/s");
        modes.insert(
            mode.to_string(),
            json!({
                "seconds": (secs * 1000.0).round() / 1000.0,
                "rows_per_s": rate.round(),
                "ratio_to_initial_snapshot": (rate / initial * 1000.0).round() / 1000.0,
                "concurrent_changes_per_s": achieved.round(),
                "concurrent_commit_to_consume_ms": latency(&commits, &arrivals),
            }),
        );
    }
    Ok(json!({
        "rows": rows,
        "chunk": args.chunk,
        "initial_snapshot_rows_per_s": initial.round(),
        "modes": modes,
    }))
}

/// The `id` of an Avro key `{id: long}` in the Confluent wire format.
pub fn avro_long_key(bytes: &[u8]) -> Option<i64> {
    let body = bytes.get(5..)?;
    let (mut value, mut shift) = (0u64, 0);
    for &b in body {
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
        shift += 7;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn zigzag_keys() {
        assert_eq!(super::avro_long_key(&[0, 0, 0, 0, 1, 0x02]), Some(1));
        assert_eq!(super::avro_long_key(&[0, 0, 0, 0, 1, 0x01]), Some(-1));
        assert_eq!(super::avro_long_key(&[0, 0, 0, 0, 1, 0x80, 0x01]), Some(64));
    }
}
