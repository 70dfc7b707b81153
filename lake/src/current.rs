//! Current-state tables: `current.<name>` holds the latest row image of every primary key of the
//! change log `raw.<name>`, deleted keys left out. A build reads the change log at one version
//! and writes the result as a new version of the current table, so older states stay readable
//! by time travel and files are only ever added.
//!
//! "Latest" is the highest bus offset of the key: a key's changes all travel on one partition of
//! the topic (records are partitioned by key), in the order the source committed them. A
//! truncate (`_op = 't'`, a row of nulls) removes every change before it, by source position.

use std::sync::Arc;

use deltalake::{
    DeltaTable, arrow::array::AsArray, datafusion::prelude::SessionContext, kernel::transaction::CommitProperties,
    operations::write::SchemaMode, protocol::SaveMode,
};

use weir_schemas::position::Position;

use crate::{
    avro_arrow::META_COLUMNS,
    catalog::{Lake, LakeError},
};

/// The raw table's property listing its primary-key columns (comma-separated), set by the writer
/// from the topic's key schema.
pub const KEY_PROPERTY: &str = "weir.key";

/// What one [`build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildStats {
    /// The current table written.
    pub table: String,
    /// The change-log version it was built from.
    pub raw_version: u64,
    /// The current table's new version.
    pub version: u64,
    /// Rows (live keys) in it.
    pub rows: u64,
}

/// `raw.orders`, `current.orders` or `orders` → `orders`.
fn base_name(name: &str) -> &str {
    name.strip_prefix("raw.").or_else(|| name.strip_prefix("current.")).unwrap_or(name)
}

/// The source position of the change log's latest truncate, if any.
async fn latest_truncate(ctx: &SessionContext) -> Result<Option<Position>, LakeError> {
    let query = |e| LakeError::Query(Box::new(e));
    let frame = ctx.sql("SELECT _pos FROM change_log WHERE _op = 't' AND _pos IS NOT NULL").await.map_err(query)?;
    let batches = frame.collect().await.map_err(query)?;
    let mut latest = None;
    for batch in &batches {
        // DataFusion may hand text back as a view array: make it plain UTF-8 first.
        let column = deltalake::arrow::compute::cast(batch.column(0), &deltalake::arrow::datatypes::DataType::Utf8)
            .map_err(|e| LakeError::Query(Box::new(e.into())))?;
        for position in column.as_string::<i32>().iter().flatten().filter_map(|t| Position::parse(t.as_bytes())) {
            if latest.as_ref().is_none_or(|l| position > *l) {
                latest = Some(position);
            }
        }
    }
    Ok(latest)
}

/// Rebuilds `current.<name>` from `raw.<name>` (`name` may carry either prefix).
pub async fn build(lake: &Lake, name: &str) -> Result<BuildStats, LakeError> {
    let base = base_name(name);
    let raw_name = format!("raw.{base}");
    let current_name = format!("current.{base}");
    let raw = lake.open(&raw_name, None).await?;
    let snapshot = raw.snapshot().map_err(|e| LakeError::delta(&raw_name, e))?;
    let raw_version = snapshot.version();
    let keys: Vec<String> = snapshot
        .metadata()
        .configuration()
        .get(KEY_PROPERTY)
        .map(|k| k.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        return Err(LakeError::Table {
            table: raw_name,
            reason: format!(
                "no primary key recorded (table property {KEY_PROPERTY}): its topic's records have no key, so \
                 there is no latest row per key"
            ),
        });
    }
    let row_columns: Vec<String> = snapshot
        .schema()
        .fields()
        .map(|f| f.name().to_string())
        .filter(|n| !META_COLUMNS.contains(&n.as_str()))
        .collect();
    let quote = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let select: Vec<String> = row_columns.iter().map(|c| quote(c)).collect();
    let partition_by: Vec<String> = keys.iter().map(|c| quote(c)).collect();
    // deltalake's session: its planner executes the write's own plan nodes.
    let ctx: SessionContext = deltalake::delta_datafusion::create_session().into_inner();
    raw.update_datafusion_session(&ctx.state()).map_err(|e| LakeError::delta(&raw_name, e))?;
    let provider = raw.table_provider().await.map_err(|e| LakeError::Query(Box::new(e)))?;
    ctx.register_table("change_log", provider).map_err(|e| LakeError::Query(Box::new(e)))?;

    // A truncate (`_op = 't'`) empties the table: only changes after the latest one count.
    let after_truncate = match latest_truncate(&ctx).await? {
        Some(Position { file, pos, row }) => {
            let (f, p, r) = (
                "split_part(_pos, ':', 1)",
                "CAST(split_part(_pos, ':', 2) AS BIGINT)",
                "CAST(split_part(_pos, ':', 3) AS BIGINT)",
            );
            let file = file.replace('\'', "''");
            format!(" AND ({f} > '{file}' OR ({f} = '{file}' AND ({p} > {pos} OR ({p} = {pos} AND {r} > {row}))))")
        }
        None => String::new(),
    };
    let sql = format!(
        "SELECT {cols}, _source_ts_ms FROM (\
           SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY _partition DESC, _offset DESC) AS __weir_rank \
           FROM change_log WHERE _op <> 't'{after_truncate}) \
         WHERE __weir_rank = 1 AND _op <> 'd'",
        cols = select.join(", "),
        keys = partition_by.join(", "),
    );
    let frame = ctx.sql(&sql).await.map_err(|e| LakeError::Query(Box::new(e)))?;

    let url = lake.table_url(&current_name)?;
    let table = DeltaTable::try_from_url(url).await.map_err(|e| LakeError::delta(&current_name, e))?;
    let table = table
        .write(Vec::new())
        .with_input_plan(frame.logical_plan().clone())
        .with_session_state(Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_commit_properties(CommitProperties::default().with_metadata([(
            "weir.source".to_string(),
            serde_json::json!({"table": raw_name, "version": raw_version}),
        )]))
        .await
        .map_err(|e| LakeError::delta(&current_name, e))?;
    let version = table.version().unwrap_or_default();
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(&current_name, e))?;
    let rows = snapshot.log_data().iter().filter_map(|f| f.num_records()).map(|n| n as u64).sum();
    tracing::info!(table = %current_name, raw_version, version, rows, "current-state table rebuilt");
    Ok(BuildStats { table: current_name, raw_version, version, rows })
}
