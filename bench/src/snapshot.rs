//! `weir bench snapshot`: bringing `current.*` up to date after N new changes, incrementally
//! (only the change-log files added since the last build) against a full rebuild from the whole
//! change log, on change logs of several lengths with the same live keys, in the same run.
//!
//! For each history length a fresh lake gets a change log (`raw.bench_orders`, as the lake
//! writer lays it out: row columns, `_op`, `_pos`, `_partition`, `_offset`, `_date`, key `id`):
//! one create per key, then updates of random keys up to the length. `current.*` is built once
//! (untimed), N changes are appended (updates, deletes and creates of random keys), then the
//! incremental build and a full rebuild are timed on the same change-log version; both must give
//! the same number of rows. The goals are the incremental build's growth from the shortest to
//! the longest history and its speed-up over the full build at the longest.

use std::{sync::Arc, time::Instant};

use clap::Args;
use deltalake::{
    DeltaTable,
    arrow::{
        array::{ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray},
        datatypes::{DataType, Field, Schema},
    },
    protocol::SaveMode,
};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::{Value, json};
use weir_lake::{Lake, LakeConfig, LakeUrl, current::KEY_PROPERTY};

use super::{Progress, machine};

const TABLE: &str = "bench_orders";

/// `weir bench snapshot`.
#[derive(Args)]
pub struct SnapshotBenchArgs {
    /// Live keys (one create each at the start of every change log).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Change-log lengths (rows) to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_000u64, 5_000_000, 10_000_000])]
    histories: Vec<u64>,
    /// New changes before the timed builds.
    #[arg(long, default_value_t = 10_000)]
    changes: u64,
    /// Rows per change-log commit while building the history.
    #[arg(long, default_value_t = 1_000_000)]
    commit_rows: u64,
}

/// Writes change-log rows in the lake writer's layout; offsets (and binlog positions) count up.
struct History {
    schema: Arc<Schema>,
    next_offset: i64,
    /// Seeded: the same histories on every run.
    rng: StdRng,
}

/// What a change does.
#[derive(Clone, Copy)]
enum Kind {
    Create,
    Update,
    Delete,
}

impl History {
    fn new() -> History {
        let mut fields = vec![
            Field::new("id", DataType::Int64, false),
            Field::new("status", DataType::Utf8, true),
            Field::new("amount", DataType::Int64, true),
        ];
        fields.extend(weir_lake::avro_arrow::meta_fields());
        let schema = Arc::new(Schema::new(fields));
        History { schema, next_offset: 0, rng: StdRng::seed_from_u64(0x2545_F491_4F6C_DD1D) }
    }

    /// A batch of changes of `ids`.
    fn batch(&mut self, changes: &[(i64, Kind)]) -> anyhow::Result<RecordBatch> {
        let n = changes.len();
        let offsets: Vec<i64> = (self.next_offset..self.next_offset + n as i64).collect();
        self.next_offset += n as i64;
        let (ops, statuses): (Vec<&str>, Vec<Option<String>>) = changes
            .iter()
            .zip(&offsets)
            .map(|(&(id, kind), offset)| match kind {
                Kind::Create => ("c", Some(format!("new {id}"))),
                Kind::Update => ("u", Some(format!("rev {offset}"))),
                Kind::Delete => ("d", Some(format!("gone {id}"))),
            })
            .unzip();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.0))),
            Arc::new(StringArray::from(statuses)),
            Arc::new(Int64Array::from_iter_values(offsets.iter().map(|o| o % 10_000))),
            Arc::new(StringArray::from(ops)),
            Arc::new(Int64Array::from_iter_values(offsets.iter().map(|o| 1_796_000_000_000 + o / 100))),
            Arc::new(StringArray::from_iter_values(offsets.iter().map(|o| format!("mysql-bin.000001:{}:0", 4 + o)))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n("bench.shop.orders", n))),
            Arc::new(Int32Array::from_iter_values(std::iter::repeat_n(0, n))),
            Arc::new(Int64Array::from_iter_values(offsets.iter().copied())),
            Arc::new(Date32Array::from_iter_values(std::iter::repeat_n(20_788, n))),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// `n` changes of random keys below `keys`: updates, with a twentieth each deletes and
    /// creates of keys past it when `mixed`.
    fn random(&mut self, n: u64, keys: u64, mixed: bool) -> Vec<(i64, Kind)> {
        (0..n)
            .map(|i| {
                let id = self.rng.random_range(0..keys) as i64;
                match (mixed, self.rng.random_range(0..20)) {
                    (true, 0) => (id, Kind::Delete),
                    (true, 1) => ((keys + i) as i64, Kind::Create),
                    _ => (id, Kind::Update),
                }
            })
            .collect()
    }
}

/// Creates the change log with the lake writer's layout and table properties.
async fn create(table: DeltaTable, schema: &Arc<Schema>) -> anyhow::Result<DeltaTable> {
    use deltalake::kernel::{StructType, engine::arrow_conversion::TryIntoKernel as _};
    let columns: StructType = schema.as_ref().try_into_kernel()?;
    Ok(table
        .create()
        .with_columns(columns.fields().cloned())
        .with_partition_columns(["_date"])
        .with_configuration([(KEY_PROPERTY, Some("id"))])
        .with_raise_if_key_not_exists(false)
        .await?)
}

/// Appends `batches` to the change log in one commit.
async fn append(table: DeltaTable, batches: Vec<RecordBatch>) -> anyhow::Result<DeltaTable> {
    Ok(table
        .write(batches)
        .with_save_mode(SaveMode::Append)
        .with_partition_columns(["_date"])
        .with_writer_properties(weir_lake::writer::parquet_properties())
        .await?)
}

/// One history length's figures.
async fn measure(args: &SnapshotBenchArgs, history_rows: u64) -> anyhow::Result<Value> {
    anyhow::ensure!(history_rows >= args.keys, "a history ({history_rows}) shorter than the keys ({})", args.keys);
    let tmp = tempfile::tempdir()?;
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(tmp.path().join("lake")), ..LakeConfig::default() });
    let mut table =
        DeltaTable::try_from_url(lake.table_url(&format!("raw.{TABLE}")).map_err(anyhow::Error::msg)?).await?;
    let mut history = History::new();
    table = create(table, &history.schema).await?;
    let mut progress = Progress::new(format!("history of {history_rows} changes"), history_rows as usize);
    let mut written = 0;
    while written < history_rows {
        let n = args.commit_rows.min(history_rows - written);
        let changes: Vec<(i64, Kind)> = if written < args.keys {
            let end = (written + n).min(args.keys);
            (written..end).map(|id| (id as i64, Kind::Create)).collect()
        } else {
            history.random(n, args.keys, false)
        };
        let len = changes.len() as u64;
        table = append(table, vec![history.batch(&changes)?]).await?;
        written += len;
        progress.update(written as usize);
    }
    let base = weir_lake::current::build(&lake, TABLE).await?;
    eprintln!("current.{TABLE}: {} rows from {history_rows} changes", base.rows);
    let changes = history.random(args.changes, args.keys, true);
    append(table, vec![history.batch(&changes)?]).await?;

    let started = Instant::now();
    let incremental = weir_lake::current::build(&lake, TABLE).await?;
    let incremental_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(incremental.incremental, "the build after {} changes was not incremental", args.changes);
    let started = Instant::now();
    let full = weir_lake::current::rebuild(&lake, TABLE).await?;
    let full_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        full.rows == incremental.rows,
        "the full build has {} rows, the incremental one {}",
        full.rows,
        incremental.rows
    );
    eprintln!("{history_rows} changes: incremental {incremental_s:.2} s, full {full_s:.2} s");
    Ok(json!({
        "history_rows": history_rows,
        "live_rows": full.rows,
        "incremental_s": incremental_s,
        "incremental_changes_read": incremental.changes,
        "full_s": full_s,
        "full_changes_read": full.changes,
        "speedup": full_s / incremental_s,
    }))
}

pub async fn run(args: SnapshotBenchArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.histories.len() >= 2, "--histories needs at least two lengths to compare");
    let mut results = Vec::new();
    for &h in &args.histories {
        results.push(measure(&args, h).await?);
    }
    let seconds = |r: &Value, k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let (first, last) = (&results[0], &results[results.len() - 1]);
    let growth = seconds(last, "incremental_s") / seconds(first, "incremental_s");
    let speedup = seconds(last, "speedup");
    Ok(json!({
        "benchmark": "snapshot",
        "machine": machine(),
        "keys": args.keys,
        "new_changes": args.changes,
        "histories": results,
        "incremental_growth": growth,
        "speedup_at_longest": speedup,
        "goals": {
            "incremental_growth_at_most": 1.5,
            "speedup_at_longest_at_least": 10.0,
            "met": growth <= 1.5 && speedup >= 10.0,
        },
    }))
}
