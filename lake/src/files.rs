//! A commit's Parquet files, written while its records are still being read: each chunk of
//! records goes at once to one of several writer tasks (up to the machine's cores), which decodes
//! it ([`Chunk::decode`]) and encodes the rows, cut into runs of one `_date` (zero-copy slices, no
//! per-partition copy). At the commit the writers close their files and hand back the files'
//! `add` actions, with statistics, and the records they could not decode; [`commit`] records the
//! files in one Delta commit together with the writer's `txn` offsets.
//!
//! Decoding on the reading task and encoding after it was the lake writer's bound: one core
//! decoded while the other waited for rows. Decoding and encoding a chunk in the same task keeps
//! both cores busy and the rows in the cache of the core that encodes them. A second writer starts
//! only when the first falls behind (a chunk waits in every writer's queue), so a quiet topic's
//! commit stays one file per date. Files of a commit that never lands (a crash) are referenced
//! by no version; `weir lake vacuum` removes them.

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
use weir_bus::Message;

use crate::{
    chunk::{Chunk, Decoded},
    writer::parquet_properties,
};

/// Chunks a writer may have queued before [`Appender::write`] waits for it.
const QUEUED_PER_WRITER: usize = 8;

/// What a writer task turns into rows before encoding them.
pub trait IntoBatch: Send + 'static {
    /// The rows, and the records that could not be made rows (with the reason).
    fn into_batch(self) -> Decoded;
}

impl IntoBatch for Chunk {
    fn into_batch(self) -> Decoded {
        self.decode()
    }
}

impl IntoBatch for RecordBatch {
    fn into_batch(self) -> Decoded {
        Decoded { batch: self, dead: Vec::new() }
    }
}

/// What a commit's writers wrote.
#[derive(Default)]
pub struct Written {
    /// The files, as `add` actions.
    pub adds: Vec<Add>,
    /// Rows in them.
    pub rows: usize,
    /// Records that could not be decoded, with the reason.
    pub dead: Vec<(Message, String)>,
}

/// A writer's task.
type Encoding = JoinHandle<Result<Written, DeltaTableError>>;

/// The Parquet writers of one commit.
pub struct Appender<T> {
    table: DeltaTable,
    max_writers: usize,
    /// Each writer's queue and task.
    writers: Vec<(mpsc::Sender<T>, Encoding)>,
    turn: usize,
}

impl<T: IntoBatch> Appender<T> {
    /// Writers for files of `table` (its schema, partitioning and statistics settings): as many
    /// as the machine has cores at most.
    pub fn new(table: &DeltaTable) -> Appender<T> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Appender::with_writers(table, cores)
    }

    /// Up to `max_writers` writers.
    pub fn with_writers(table: &DeltaTable, max_writers: usize) -> Appender<T> {
        Appender { table: table.clone(), max_writers: max_writers.max(1), writers: Vec::new(), turn: 0 }
    }

    /// Hands `work` (rows of the change-log schema, `_date` included, or records that decode to
    /// them) to a writer, waiting while every writer has a full queue.
    pub async fn write(&mut self, work: T) -> Result<(), DeltaTableError> {
        let behind = self.writers.iter().all(|(tx, _)| tx.capacity() < QUEUED_PER_WRITER);
        if self.writers.len() < self.max_writers && behind {
            let writer = RecordBatchWriter::for_table(&self.table)?.with_writer_properties(parquet_properties());
            let (tx, rx) = mpsc::channel(QUEUED_PER_WRITER);
            self.writers.push((tx, tokio::spawn(encode(writer, rx))));
        }
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
        if self.writers[i].0.send(work).await.is_err() {
            // The writer stopped: its task holds the reason.
            let (_, task) = self.writers.swap_remove(i);
            return Err(joined(task.await).err().unwrap_or_else(|| {
                DeltaTableError::Generic("a Parquet writer stopped before the end of its commit".into())
            }));
        }
        Ok(())
    }

    /// Closes every writer's files and returns what they wrote.
    pub async fn finish(self) -> Result<Written, DeltaTableError> {
        let mut all = Written::default();
        let mut failed = None;
        for (tx, task) in self.writers {
            drop(tx);
            match joined(task.await) {
                Ok(w) => {
                    all.adds.extend(w.adds);
                    all.rows += w.rows;
                    all.dead.extend(w.dead);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(all), Err)
    }
}

/// One writer's task: decodes and encodes what it is handed, closes its files when the sender
/// goes.
async fn encode<T: IntoBatch>(
    mut writer: RecordBatchWriter,
    mut work: mpsc::Receiver<T>,
) -> Result<Written, DeltaTableError> {
    let mut written = Written::default();
    while let Some(work) = work.recv().await {
        let Decoded { batch, dead } = work.into_batch();
        written.rows += batch.num_rows();
        written.dead.extend(dead);
        for (day, rows) in date_runs(&batch) {
            // Partition values are strings in the Delta log; a date's is its ISO form.
            let partition = DeltaTablePartition::try_from(format!("_date={}", iso_date(day)).as_str())?;
            let values = IndexMap::from([(partition.key, partition.value)]);
            writer.write_partition(rows, &values, WriteMode::Default).await?;
        }
    }
    written.adds = writer.flush().await?;
    Ok(written)
}

fn joined(done: Result<Result<Written, DeltaTableError>, tokio::task::JoinError>) -> Result<Written, DeltaTableError> {
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
        // Day 20,422 then 20,423, four batches, at most three writers. On this test's
        // single-threaded runtime no writer runs before the batches are handed over, so each
        // finds every writer behind: writers 0, 1, 2 take batches 1, 2, 3, and writer 0 batch 4.
        let mut appender = Appender::with_writers(&table, 3);
        for days in [&[20_422, 20_422, 20_422][..], &[20_422, 20_423], &[20_423], &[20_423]] {
            appender.write(batch(days)).await.unwrap();
        }
        let written = appender.finish().await.unwrap();
        assert_eq!((written.rows, written.dead.len()), (7, 0));
        // A file per writer and date: 2 + 2 + 1.
        assert_eq!(written.adds.len(), 5, "{:?}", written.adds);
        let table = commit(&table, written.adds, vec![Transaction::new("weir-lake:t:0", 7)]).await.unwrap();
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
