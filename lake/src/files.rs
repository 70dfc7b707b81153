//! A commit's Parquet files, written while its records are still being read: the commit's
//! writer task takes each chunk of records as it is read, decodes it ([`Chunk::decode`]) and
//! encodes the rows, cut into runs of one `_date` (zero-copy slices, no per-partition copy). At
//! the commit it closes its files (one per date) and hands back their `add` actions, with
//! statistics, and the records it could not decode; [`commit`] records the files in one Delta
//! commit together with the writer's `txn` offsets.
//!
//! Commits overlap: while one commit's writer works through its records, the next commit's
//! writer already takes the records read since, so two cores decode and encode and each commit
//! still gets one file per date, as big as the commit. (Splitting one commit across several
//! writers also kept both cores busy, but every extra file costs a dictionary filled per column
//! and a footer: measured slower.) The queue is unbounded; the flush policy bounds what a commit
//! holds, and the writer waits for the previous commit before it starts another. The last
//! commit of a drain has no next one to overlap with: there [`Appender::finish`] lets helper
//! writers take chunks still queued (a file more per helper). Files of a commit that never lands
//! (a crash) are referenced by no version; `weir lake vacuum` removes them.

use std::sync::Arc;

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
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinHandle,
};
use weir_bus::Message;

use crate::{
    chunk::{Chunk, Decoded},
    writer::parquet_properties,
};

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

/// Rows already decoded (the tests hand these over).
#[cfg(test)]
impl IntoBatch for RecordBatch {
    fn into_batch(self) -> Decoded {
        Decoded { batch: self, dead: Vec::new() }
    }
}

/// What a commit's writer wrote.
#[derive(Default)]
pub struct Written {
    /// The files, as `add` actions.
    pub adds: Vec<Add>,
    /// Rows in them.
    pub rows: usize,
    /// Records that could not be decoded, with the reason.
    pub dead: Vec<(Message, String)>,
}

/// Chunks waiting for a writer; each writer takes the next one.
type Queue<T> = Arc<Mutex<mpsc::UnboundedReceiver<T>>>;

/// A writer's task.
type Encoding = JoinHandle<Result<Written, DeltaTableError>>;

/// Chunks that must be waiting at [`Appender::finish`] for a helper to start.
const CHUNKS_PER_HELPER: usize = 4;

/// The Parquet writer of one commit, on its own task.
pub struct Appender<T> {
    table: DeltaTable,
    sender: mpsc::UnboundedSender<T>,
    queue: Queue<T>,
    tasks: Vec<Encoding>,
}

impl<T: IntoBatch> Appender<T> {
    /// A writer for files of `table` (its schema, partitioning and statistics settings).
    pub fn new(table: &DeltaTable) -> Result<Appender<T>, DeltaTableError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = Arc::new(Mutex::new(receiver));
        let tasks = vec![start(table, &queue)?];
        Ok(Appender { table: table.clone(), sender, queue, tasks })
    }

    /// Hands `work` (rows of the change-log schema, `_date` included, or records that decode to
    /// them) to the writer.
    pub async fn write(&mut self, work: T) -> Result<(), DeltaTableError> {
        if self.sender.send(work).is_err() {
            // The writer stopped: its task holds the reason.
            let task = self.tasks.swap_remove(0);
            return Err(joined(task.await).err().unwrap_or_else(|| {
                DeltaTableError::Generic("a Parquet writer stopped before the end of its commit".into())
            }));
        }
        Ok(())
    }

    /// Closes the files and returns what was written. Up to `helpers` more writers take chunks
    /// still queued, one per [`CHUNKS_PER_HELPER`] of them.
    pub async fn finish(self, helpers: usize) -> Result<Written, DeltaTableError> {
        let Appender { table, sender, queue, mut tasks } = self;
        // Without a sender a writer waiting on the queue gives it up, so it can be looked at.
        drop(sender);
        let waiting = queue.lock().await.len();
        for _ in 0..helpers.min(waiting / CHUNKS_PER_HELPER) {
            tasks.push(start(&table, &queue)?);
        }
        let mut all = Written::default();
        let mut failed = None;
        for task in tasks {
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

/// A writer task for files of `table`, taking work from `queue`.
fn start<T: IntoBatch>(table: &DeltaTable, queue: &Queue<T>) -> Result<Encoding, DeltaTableError> {
    let writer = RecordBatchWriter::for_table(table)?.with_writer_properties(parquet_properties());
    Ok(tokio::spawn(encode(writer, queue.clone())))
}

/// One writer's task: decodes and encodes what it is handed, closes its files when the sender
/// goes.
async fn encode<T: IntoBatch>(mut writer: RecordBatchWriter, queue: Queue<T>) -> Result<Written, DeltaTableError> {
    let mut written = Written::default();
    loop {
        let next = queue.lock().await.recv().await;
        let Some(work) = next else { break };
        let Decoded { batch, dead } = work.into_batch();
        written.rows += batch.num_rows();
        written.dead.extend(dead);
        for (day, rows) in date_runs(&batch) {
            // Partition values are strings in the Delta log; a date's is its ISO form.
            let partition = DeltaTablePartition::try_from(format!("_date={}", iso_date(day)).as_str())?;
            let values = IndexMap::from([(partition.key, partition.value)]);
            writer.write_partition(rows, &values, WriteMode::Default).await?;
        }
        // A chunk is much work without a wait: let other tasks of this thread (a helper, the
        // reader) run before the next.
        tokio::task::yield_now().await;
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
    async fn a_commit_keeps_every_row_in_its_date() {
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
        // Day 20,422 then 20,423, four batches.
        let mut appender = Appender::new(&table).unwrap();
        for days in [&[20_422, 20_422, 20_422][..], &[20_422, 20_423], &[20_423], &[20_423]] {
            appender.write(batch(days)).await.unwrap();
        }
        let written = appender.finish(0).await.unwrap();
        assert_eq!((written.rows, written.dead.len()), (7, 0));
        assert_eq!(written.adds.len(), 2, "a file per date: {:?}", written.adds);
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

        // A last commit with chunks still queued: a helper writer takes some (a file each).
        let mut appender = Appender::new(&table).unwrap();
        for _ in 0..2 * CHUNKS_PER_HELPER {
            appender.write(batch(&[20_424, 20_424])).await.unwrap();
        }
        let written = appender.finish(1).await.unwrap();
        assert_eq!((written.rows, written.adds.len()), (4 * CHUNKS_PER_HELPER, 2));
        // Nothing queued: no helper.
        let appender = Appender::<RecordBatch>::new(&table).unwrap();
        assert!(appender.finish(1).await.unwrap().adds.is_empty());
    }

    #[test]
    fn days_print_as_iso_dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(20_422), "2025-11-30");
        assert_eq!(iso_date(-1), "1969-12-31");
    }
}
