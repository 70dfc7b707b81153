//! A commit's Parquet files, written while its rows are still being decoded: each finished
//! batch goes at once to one of several Parquet writers (one more per
//! [`MIN_ROWS_PER_WRITER`] rows, up to the machine's cores), cut into runs of one `_date`
//! (zero-copy slices, no per-partition copy). At the commit the writers close their files and
//! hand back the files' `add` actions, with statistics, which [`commit`] records in one Delta
//! commit together with the writer's `txn` offsets.
//!
//! Encoding after decoding, one commit at a time on one writer, was the lake writer's bound: a
//! core decoded while the other encoded the previous commit, and each waited for the other.
//! Streaming the batches to several writers keeps both cores busy. Files of a commit that never
//! lands (a crash) are referenced by no version; `weir lake vacuum` removes them.

use deltalake::{
    DeltaTable, DeltaTableError, DeltaTablePartition,
    arrow::{array::AsArray as _, datatypes::Date32Type, record_batch::RecordBatch},
    kernel::{
        Action, Add, Transaction,
        transaction::{CommitBuilder, CommitProperties},
    },
    protocol::{DeltaOperation, SaveMode},
    writer::{DeltaWriter as _, RecordBatchWriter, WriteMode},
};
use indexmap::IndexMap;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::writer::parquet_properties;

/// A commit gets one more Parquet writer (and file per date) for every this many rows, so that
/// small commits stay one file per date and files stay big enough to read well.
pub const MIN_ROWS_PER_WRITER: usize = 100_000;

/// Batches a writer may have queued before [`Appender::write`] waits for it.
const QUEUED_PER_WRITER: usize = 8;

/// A writer's task: the `add` actions of the files it wrote.
type Encoding = JoinHandle<Result<Vec<Add>, DeltaTableError>>;

/// The Parquet writers of one commit.
pub struct Appender {
    table: DeltaTable,
    max_writers: usize,
    rows_per_writer: usize,
    /// Each writer's queue and task.
    writers: Vec<(mpsc::Sender<RecordBatch>, Encoding)>,
    turn: usize,
    rows: usize,
}

impl Appender {
    /// Writers for files of `table` (its schema, partitioning and statistics settings): as many
    /// as the machine has cores at most.
    pub fn new(table: &DeltaTable) -> Appender {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Appender::with_spread(table, cores, MIN_ROWS_PER_WRITER)
    }

    /// Up to `max_writers` writers, one per `rows_per_writer` rows.
    pub fn with_spread(table: &DeltaTable, max_writers: usize, rows_per_writer: usize) -> Appender {
        Appender {
            table: table.clone(),
            max_writers: max_writers.max(1),
            rows_per_writer: rows_per_writer.max(1),
            writers: Vec::new(),
            turn: 0,
            rows: 0,
        }
    }

    /// Rows handed over so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Hands `batch` (rows of the change-log schema, `_date` included) to a writer, waiting
    /// while every writer has a full queue.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), DeltaTableError> {
        if self.writers.len() < self.max_writers && self.rows >= self.writers.len() * self.rows_per_writer {
            let writer = RecordBatchWriter::for_table(&self.table)?.with_writer_properties(parquet_properties());
            let (tx, rx) = mpsc::channel(QUEUED_PER_WRITER);
            self.writers.push((tx, tokio::spawn(encode(writer, rx))));
        }
        self.rows += batch.num_rows();
        // The writer with the most room (the first from this turn's on a tie): one writer held
        // up, by a slow upload say, does not hold up the others.
        let n = self.writers.len();
        let mut i = self.turn % n;
        for j in (1..n).map(|k| (self.turn + k) % n) {
            if self.writers[j].0.capacity() > self.writers[i].0.capacity() {
                i = j;
            }
        }
        self.turn += 1;
        if self.writers[i].0.send(batch).await.is_err() {
            // The writer stopped: its task holds the reason.
            let (_, task) = self.writers.swap_remove(i);
            return Err(joined(task.await).err().unwrap_or_else(|| {
                DeltaTableError::Generic("a Parquet writer stopped before the end of its commit".into())
            }));
        }
        Ok(())
    }

    /// Closes every writer's files and returns their `add` actions.
    pub async fn finish(self) -> Result<Vec<Add>, DeltaTableError> {
        let mut adds = Vec::new();
        let mut failed = None;
        for (tx, task) in self.writers {
            drop(tx);
            match joined(task.await) {
                Ok(a) => adds.extend(a),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(adds), Err)
    }
}

/// One writer's task: encodes what it is handed, closes its files when the sender goes.
async fn encode(
    mut writer: RecordBatchWriter,
    mut batches: mpsc::Receiver<RecordBatch>,
) -> Result<Vec<Add>, DeltaTableError> {
    while let Some(batch) = batches.recv().await {
        for (day, rows) in date_runs(&batch) {
            // Partition values are strings in the Delta log; a date's is its ISO form.
            let partition = DeltaTablePartition::try_from(format!("_date={}", iso_date(day)).as_str())?;
            let values = IndexMap::from([(partition.key, partition.value)]);
            writer.write_partition(rows, &values, WriteMode::Default).await?;
        }
    }
    writer.flush().await
}

fn joined(
    done: Result<Result<Vec<Add>, DeltaTableError>, tokio::task::JoinError>,
) -> Result<Vec<Add>, DeltaTableError> {
    match done {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(DeltaTableError::Generic(format!("a Parquet writer task ended: {e}"))),
    }
}

/// Commits `adds` to `table` as one append with `txns`; returns the table at its new version.
pub async fn commit(table: &DeltaTable, adds: Vec<Add>, txns: Vec<Transaction>) -> Result<DeltaTable, DeltaTableError> {
    let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
    let mut table = table.clone();
    CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    table.update_incremental(None).await?;
    Ok(table)
}

/// `batch` cut where `_date` changes (rows of one event date sit together: each partition's
/// events come in time order).
fn date_runs(batch: &RecordBatch) -> Vec<(i32, RecordBatch)> {
    let Some(dates) = batch.column_by_name("_date").and_then(|c| c.as_primitive_opt::<Date32Type>()) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=dates.len() {
        if i == dates.len() || dates.value(i) != dates.value(start) {
            runs.push((dates.value(start), batch.slice(start, i - start)));
            start = i;
        }
    }
    runs
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
fn iso_date(days: i32) -> String {
    chrono::DateTime::from_timestamp(i64::from(days) * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::{
        array::{Date32Array, Int64Array},
        datatypes::{DataType, Field, Schema},
    };

    use super::*;

    fn batch(days: &[i32]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("_date", DataType::Date32, false),
        ]));
        let ids = Int64Array::from_iter_values(0..days.len() as i64);
        RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(Date32Array::from(days.to_vec()))]).unwrap()
    }

    #[test]
    fn runs_split_where_the_date_changes() {
        let b = batch(&[1, 1, 1, 2, 2, 1]);
        let runs: Vec<(i32, usize)> = date_runs(&b).iter().map(|(d, r)| (*d, r.num_rows())).collect();
        assert_eq!(runs, vec![(1, 3), (2, 2), (1, 1)]);
        assert!(date_runs(&batch(&[])).is_empty());
    }

    #[tokio::test]
    async fn a_commit_split_across_writers_keeps_every_row_in_its_date() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::catalog::Lake::new(&crate::config::LakeConfig {
            url: crate::config::LakeUrl::File(dir.path().to_path_buf()),
            ..Default::default()
        });
        let url = lake.table_url("raw.split").unwrap();
        std::fs::create_dir_all(url.to_file_path().unwrap()).unwrap();
        let table = DeltaTable::try_from_url(url)
            .await
            .unwrap()
            .create()
            .with_columns([
                deltalake::kernel::StructField::new("id", deltalake::kernel::DataType::LONG, false),
                deltalake::kernel::StructField::new("_date", deltalake::kernel::DataType::DATE, false),
            ])
            .with_partition_columns(["_date"])
            .await
            .unwrap();
        // Day 20,422 then 20,423, four batches, a writer per two rows (at most three).
        let mut appender = Appender::with_spread(&table, 3, 2);
        for days in [&[20_422, 20_422, 20_422][..], &[20_422, 20_423], &[20_423], &[20_423]] {
            appender.write(batch(days)).await.unwrap();
        }
        assert_eq!(appender.rows(), 7);
        let adds = appender.finish().await.unwrap();
        // Writers 0, 1, 2 take batches 1, 2, 3 and one of them batch 4: a file per writer and
        // date, so 4 (batch 4 joining writer 1's day-20,423 file) or 5.
        assert!((4..=5).contains(&adds.len()), "{adds:?}");
        let table = commit(&table, adds, vec![Transaction::new("weir-lake:t:0", 7)]).await.unwrap();
        assert_eq!(table.version(), Some(1));
        let log = table.log_store();
        let offset = table.snapshot().unwrap().transaction_version(log.as_ref(), "weir-lake:t:0").await.unwrap();
        assert_eq!(offset, Some(7));
        let rows = crate::query::run(
            &lake,
            "SELECT CAST(_date AS VARCHAR) AS d, count(*) AS n, sum(id) AS s FROM raw.split GROUP BY _date ORDER BY d",
            None,
        )
        .await
        .unwrap();
        let text = deltalake::arrow::util::pretty::pretty_format_batches(&rows).unwrap().to_string();
        assert!(text.contains("| 2025-11-30 | 4 | 3 |"), "{text}");
        assert!(text.contains("| 2025-12-01 | 3 | 1 |"), "{text}");
    }

    #[test]
    fn days_print_as_iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(20_422), "2025-11-30");
        assert_eq!(iso_date(-1), "1969-12-31");
    }
}
