//! A view written by a Ballista cluster: the executors write the result as Parquet files in a
//! fresh directory under the view's table (`ballista-<uuid>/`), and the task turns those files
//! into one Delta commit — the same overwrite / `replace_where` / append semantics as a local
//! write, and the same single commit per try. A try that fails before its commit leaves only
//! unreferenced files, which `weir lake vacuum` removes.
//!
//! `replace_where` runs as Delta's replaceWhere does: the result must match the predicate; the
//! view's files holding matching rows are removed, and their other rows are written back (by the
//! executors, into the same directory) in the same commit.

use std::{collections::HashMap, sync::Arc};

use deltalake::{
    DeltaTable,
    arrow::datatypes::{Schema as ArrowSchema, SchemaRef},
    datafusion::{
        common::Column,
        config::TableParquetOptions,
        dataframe::{DataFrame, DataFrameWriteOptions},
        error::DataFusionError,
        logical_expr::{Expr, cast, lit},
        prelude::{ParquetReadOptions, SessionContext},
    },
    kernel::{
        Action, Add, Protocol, StructField, StructType,
        engine::arrow_conversion::{TryIntoArrow as _, TryIntoKernel as _},
        new_metadata,
        transaction::{CommitBuilder, CommitProperties},
    },
    logstore::ObjectStoreRef,
    parquet::file::{
        FOOTER_SIZE,
        metadata::{FooterTail, ParquetMetaDataReader},
    },
    protocol::{DeltaOperation, SaveMode},
};
use deltalake::{Path, logstore::object_store::ObjectStoreExt as _};
use futures::{StreamExt as _, TryStreamExt as _};
use weir_lake::catalog::LakeError;

use crate::sql::WriteMode;

/// What the cluster wrote and the task committed.
pub(crate) struct Committed {
    pub version: u64,
    pub rows: u64,
}

/// Writes `frame` (a query on the Ballista session `ctx`, connected to `cluster`) to `table`
/// (`name`) as `mode` says, with `source` in the commit's metadata.
pub(crate) async fn write(
    ctx: &SessionContext,
    cluster: &str,
    table: &DeltaTable,
    name: &str,
    frame: DataFrame,
    mode: WriteMode,
    source: serde_json::Value,
) -> Result<Committed, LakeError> {
    let delta = |e: deltalake::DeltaTableError| LakeError::delta(name, e);
    let snapshot = table.snapshot().ok();
    if let Some(s) = snapshot
        && !s.metadata().partition_columns().is_empty()
    {
        return Err(invalid(
            name,
            "a partitioned view cannot be written on Ballista; run its task on engine: local".into(),
        ));
    }
    let result = arrow_schema(&frame);
    // The schema the view will have: the result's in Delta's types (a new view or a whole
    // replacement), or the view's own (an append may add columns; replace_where may not).
    let (schema, metadata_changes) = match (snapshot, &mode) {
        (None, _) | (Some(_), WriteMode::Overwrite) => {
            let schema = delta_schema(name, &result)?;
            let changed = snapshot.is_none_or(|s| *s.schema() != schema);
            (schema, changed)
        }
        (Some(s), WriteMode::Append) => {
            let mut fields: Vec<_> = s.schema().fields().cloned().collect();
            let added = delta_schema(name, &result)?;
            let new: Vec<_> = added.fields().filter(|f| s.schema().field(f.name()).is_none()).cloned().collect();
            let changed = !new.is_empty();
            fields.extend(new.into_iter().map(|f| StructField::nullable(f.name(), f.data_type().clone())));
            (StructType::try_new(fields).map_err(|e| delta(e.into()))?, changed)
        }
        (Some(s), WriteMode::ReplaceWhere(_)) => {
            let schema = s.schema().as_ref().clone();
            if let Some(f) = result.fields().iter().find(|f| schema.field(f.name()).is_none()) {
                return Err(invalid(name, format!("replace_where: the view has no column {:?}", f.name())));
            }
            (schema, false)
        }
    };
    let target: ArrowSchema = (&schema).try_into_arrow().map_err(|e| delta(e.into()))?;
    let store = table.object_store();
    let dir = format!("ballista-{}", uuid::Uuid::new_v4());
    let dir_url = table.table_url().join(&format!("{dir}/")).expect("a table URL is a directory");
    let on_cluster = |e: DataFusionError| {
        LakeError::Query(Box::new(e.context(format!("writing {name} on the Ballista scheduler at {cluster}"))))
    };

    let result_url = dir_url.join("result/").expect("a relative path");
    let written = write_parquet(conform(frame.clone(), &target).map_err(on_cluster)?, result_url.as_str())
        .await
        .map_err(on_cluster)?;
    if let (Some(s), WriteMode::Append | WriteMode::ReplaceWhere(_)) = (snapshot, &mode) {
        check_not_null(ctx, name, s.schema().as_ref(), &result, result_url.as_str(), &target).await?;
    }
    let mut removed = Vec::new();
    let mut predicate = None;
    if let (Some(s), WriteMode::ReplaceWhere(sql)) = (snapshot, &mode) {
        // Delta's rule: every row a replace_where writes matches it (checked on what was written;
        // a failure leaves the files unreferenced).
        let strays =
            count_written(ctx, result_url.as_str(), &target, |f| not_matching(f, sql)).await.map_err(on_cluster)?;
        if strays > 0 {
            return Err(invalid(name, format!("replace_where {sql:?}: {strays} rows of the result do not match it")));
        }
        let files: Vec<_> = s.log_data().iter().collect();
        let urls: Vec<String> = files.iter().map(|f| weir_lake::query::data_file_url(table, &f.path())).collect();
        let matching = files_matching(ctx, &urls, &target, sql).await.map_err(on_cluster)?;
        if !matching.is_empty() {
            // The rows of those files that the predicate does not replace are written back.
            let kept = read_files(ctx, matching.iter().map(|&i| urls[i].clone()), &target)
                .await
                .and_then(|f| not_matching(f, sql))
                .map_err(on_cluster)?;
            let kept_url = dir_url.join("kept/").expect("a relative path");
            write_parquet(kept, kept_url.as_str()).await.map_err(on_cluster)?;
        }
        removed = matching.iter().map(|&i| Action::Remove(files[i].remove_action(true))).collect();
        predicate = Some(sql.clone());
    }

    let mut actions = Vec::new();
    match snapshot {
        None => {
            actions.push(Action::Protocol(protocol_for(name, &schema)?));
            actions.push(Action::Metadata(
                new_metadata(&schema, Vec::<String>::new(), Vec::<(String, String)>::new())
                    .map_err(|e| delta(e.into()))?,
            ));
        }
        Some(s) if metadata_changes => {
            if needs_ntz(&schema) && !has_writer_feature(s.protocol(), "timestampNtz") {
                // A legacy protocol is replaced by one with the feature; a table-features one
                // would need its other features merged, which deltalake does not expose.
                if protocol_json(s.protocol())["minWriterVersion"].as_i64().unwrap_or(0) >= 7 {
                    return Err(invalid(
                        name,
                        "a new timestamp-without-time-zone column needs a protocol upgrade; run this task on engine: local"
                            .into(),
                    ));
                }
                actions.push(Action::Protocol(protocol_for(name, &schema)?));
            }
            let configuration: Vec<(String, String)> =
                s.metadata().configuration().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            actions.push(Action::Metadata(
                new_metadata(&schema, Vec::<String>::new(), configuration).map_err(|e| delta(e.into()))?,
            ));
        }
        Some(_) => {}
    }
    if let (Some(s), WriteMode::Overwrite) = (snapshot, &mode) {
        actions.extend(s.log_data().iter().map(|f| Action::Remove(f.remove_action(true))));
    }
    let removed_files = removed.len();
    actions.extend(removed);
    let adds =
        adds_in(&store, &dir).await.map_err(|e| invalid(name, format!("reading the files Ballista wrote: {e}")))?;
    let added_files = adds.len();
    actions.extend(adds.into_iter().map(Action::Add));

    let save_mode = if matches!(mode, WriteMode::Append) { SaveMode::Append } else { SaveMode::Overwrite };
    let operation = DeltaOperation::Write { mode: save_mode, partition_by: None, predicate };
    let metrics = serde_json::json!({
        "num_added_rows": written,
        "num_added_files": added_files,
        "num_removed_files": removed_files,
        "engine": "ballista",
    });
    let properties = CommitProperties::default()
        .with_metadata([("weir.source".to_string(), source), ("operationMetrics".to_string(), metrics)]);
    let committed = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(snapshot.map(|s| s as &dyn deltalake::kernel::transaction::TableReference), table.log_store(), operation)
        .await
        .map_err(delta)?;
    Ok(Committed { version: committed.version() as u64, rows: written })
}

fn invalid(name: &str, reason: String) -> LakeError {
    LakeError::Table { table: name.to_string(), reason }
}

fn arrow_schema(frame: &DataFrame) -> SchemaRef {
    Arc::new(frame.schema().as_arrow().clone())
}

/// `schema` in Delta's types (as a local write would store it).
fn delta_schema(name: &str, schema: &SchemaRef) -> Result<StructType, LakeError> {
    let normalized = deltalake::kernel::schema::cast::normalize_for_delta(schema);
    normalized.as_ref().try_into_kernel().map_err(|e| LakeError::delta(name, e.into()))
}

/// Whether `schema` has a timestamp without time zone (a table feature beyond protocol 1/2).
fn needs_ntz(schema: &StructType) -> bool {
    serde_json::to_string(schema).is_ok_and(|s| s.contains("\"timestamp_ntz\""))
}

/// A protocol as its log action's JSON.
fn protocol_json(protocol: &Protocol) -> serde_json::Value {
    serde_json::to_value(protocol).unwrap_or_default()
}

/// Whether `protocol` lists `feature` among its writer features.
fn has_writer_feature(protocol: &Protocol, feature: &str) -> bool {
    protocol_json(protocol)["writerFeatures"].as_array().is_some_and(|f| f.iter().any(|x| x == feature))
}

/// The protocol a new table with `schema` needs: Delta's default (reader 1, writer 2), or table
/// features with `timestampNtz` when a column is a timestamp without time zone.
fn protocol_for(name: &str, schema: &StructType) -> Result<Protocol, LakeError> {
    let value = if needs_ntz(schema) {
        serde_json::json!({"minReaderVersion": 3, "minWriterVersion": 7,
            "readerFeatures": ["timestampNtz"], "writerFeatures": ["timestampNtz"]})
    } else {
        serde_json::json!({"minReaderVersion": 1, "minWriterVersion": 2})
    };
    serde_json::from_value(value).map_err(|e| invalid(name, format!("building its protocol: {e}")))
}

/// `frame` with every column cast to `target`'s type (columns the view has but the result lacks
/// stay absent: Delta reads them as null).
fn conform(frame: DataFrame, target: &ArrowSchema) -> Result<DataFrame, DataFusionError> {
    let columns: Vec<Expr> = frame
        .schema()
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(Column::from((qualifier, field)));
            match target.field_with_name(field.name()) {
                Ok(t) if t.data_type() != field.data_type() => cast(column, t.data_type().clone()).alias(field.name()),
                _ => column.alias(field.name()),
            }
        })
        .collect();
    frame.select(columns)
}

/// Writes `frame` as Snappy Parquet files into the directory `url`; returns the rows written.
async fn write_parquet(frame: DataFrame, url: &str) -> Result<u64, DataFusionError> {
    let mut options = TableParquetOptions::default();
    options.global.compression = Some("snappy".to_string());
    let counts = frame.write_parquet(url, DataFrameWriteOptions::new(), Some(options)).await?;
    Ok(counts
        .iter()
        .filter_map(|b| b.column(0).as_any().downcast_ref::<deltalake::arrow::array::UInt64Array>())
        .flat_map(|a| a.iter().flatten())
        .sum())
}

/// Reads Parquet files (or directories) as one table of `schema`.
async fn read_files(
    ctx: &SessionContext,
    urls: impl IntoIterator<Item = String>,
    schema: &ArrowSchema,
) -> Result<DataFrame, DataFusionError> {
    let urls: Vec<String> = urls.into_iter().collect();
    ctx.read_parquet(urls, ParquetReadOptions::default().schema(schema)).await
}

/// Delta's invariant on a write into an existing view: its NOT NULL columns hold no nulls. A
/// column the result lacks would be all nulls; one it may have nulls in is counted on what the
/// executors wrote.
async fn check_not_null(
    ctx: &SessionContext,
    name: &str,
    view: &StructType,
    result: &ArrowSchema,
    written: &str,
    schema: &ArrowSchema,
) -> Result<(), LakeError> {
    let mut nullable = Vec::new();
    for column in view.fields().filter(|f| !f.is_nullable()) {
        match result.field_with_name(column.name()) {
            Err(_) => {
                return Err(invalid(
                    name,
                    format!("column {:?} is NOT NULL, and the result has no such column", column.name()),
                ));
            }
            Ok(f) if f.is_nullable() => nullable.push(column.name().to_string()),
            Ok(_) => {}
        }
    }
    let Some(any_null) =
        nullable.iter().map(|c| Expr::Column(Column::new_unqualified(c.as_str())).is_null()).reduce(|a, b| a.or(b))
    else {
        return Ok(());
    };
    let on_cluster =
        |e: DataFusionError| LakeError::Query(Box::new(e.context(format!("checking {name}'s NOT NULL columns"))));
    let nulls = count_written(ctx, written, schema, |f| f.filter(any_null)).await.map_err(on_cluster)?;
    if nulls > 0 {
        return Err(invalid(name, format!("{nulls} rows of the result have nulls in NOT NULL columns {nullable:?}")));
    }
    Ok(())
}

/// How many rows of the files under `url` (read as `schema`) `rule` keeps: what the executors
/// wrote that breaks a rule, counted on the cluster.
async fn count_written(
    ctx: &SessionContext,
    url: &str,
    schema: &ArrowSchema,
    rule: impl FnOnce(DataFrame) -> Result<DataFrame, DataFusionError>,
) -> Result<usize, DataFusionError> {
    rule(read_files(ctx, [url.to_string()], schema).await?)?.count().await
}

/// The rows of `frame` for which the SQL `predicate` is false or null.
fn not_matching(frame: DataFrame, predicate: &str) -> Result<DataFrame, DataFusionError> {
    let predicate = frame.parse_sql_expr(predicate)?;
    frame.filter(predicate.is_not_true())
}

/// Which of `urls` hold a row matching `predicate`, in one job: each file's scan, filtered and
/// cut to one row, tagged with its index.
async fn files_matching(
    ctx: &SessionContext,
    urls: &[String],
    schema: &ArrowSchema,
    predicate: &str,
) -> Result<Vec<usize>, DataFusionError> {
    let mut union: Option<DataFrame> = None;
    for (i, url) in urls.iter().enumerate() {
        let file = read_files(ctx, [url.clone()], schema).await?;
        let predicate = file.parse_sql_expr(predicate)?;
        let probe = file.filter(predicate)?.limit(0, Some(1))?.select(vec![lit(i as u64).alias("file")])?;
        union = Some(match union {
            None => probe,
            Some(u) => u.union(probe)?,
        });
    }
    let Some(union) = union else { return Ok(Vec::new()) };
    let mut matching = Vec::new();
    for batch in union.collect().await? {
        let column = batch.column(0).as_any().downcast_ref::<deltalake::arrow::array::UInt64Array>();
        matching.extend(column.into_iter().flat_map(|a| a.values().iter().map(|&i| i as usize)));
    }
    matching.sort_unstable();
    matching.dedup();
    Ok(matching)
}

/// `add` actions for the non-empty Parquet files under `dir`, with their row counts as stats.
async fn adds_in(store: &ObjectStoreRef, dir: &str) -> Result<Vec<Add>, Box<dyn std::error::Error + Send + Sync>> {
    let listed: Vec<_> = store.list(Some(&Path::from(dir))).try_collect().await?;
    let mut adds = Vec::new();
    let mut footers = futures::stream::iter(listed.into_iter().filter(|m| m.location.as_ref().ends_with(".parquet")))
        .map(|meta| async move {
            let rows = footer_rows(store, &meta).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((meta, rows))
        })
        .buffer_unordered(8);
    while let Some(footer) = footers.next().await {
        let (meta, rows) = footer?;
        if rows == 0 {
            continue;
        }
        adds.push(Add {
            path: meta.location.to_string(),
            partition_values: HashMap::new(),
            size: meta.size as i64,
            modification_time: meta.last_modified.timestamp_millis(),
            data_change: true,
            stats: Some(serde_json::json!({ "numRecords": rows }).to_string()),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        });
    }
    Ok(adds)
}

/// The row count in the footer of the Parquet file `meta` (two ranged reads: the footer's length,
/// then the footer).
async fn footer_rows(
    store: &ObjectStoreRef,
    meta: &deltalake::ObjectMeta,
) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    let size = meta.size;
    let not_parquet = || format!("{} is not a plain Parquet file", meta.location);
    let tail_size = FOOTER_SIZE as u64;
    let tail = store.get_range(&meta.location, size.checked_sub(tail_size).ok_or_else(not_parquet)?..size).await?;
    let tail = FooterTail::try_from(&tail[..])?;
    if tail.is_encrypted_footer() {
        return Err(not_parquet().into());
    }
    let start = (size - tail_size).checked_sub(tail.metadata_length() as u64).ok_or_else(not_parquet)?;
    let footer = store.get_range(&meta.location, start..size - tail_size).await?;
    Ok(ParquetMetaDataReader::decode_metadata(&footer)?.file_metadata().num_rows())
}
