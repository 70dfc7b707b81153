//! Hot tables: in-memory copies of the lake's `views.*` and `current.*` tables — what dashboards
//! look rows up in — so that a point lookup does not decode Parquet. A [`HotTable`] wraps the
//! Delta table's own provider at one version:
//!
//! - a scan with an equality filter on a column (`col = <literal>`, `col IN (<literals>)`) is
//!   answered from the copy through that column's sorted index (a permutation of row numbers,
//!   built on the first lookup and kept for the version; binary search finds the equal rows);
//! - every other scan goes to the Delta provider, unchanged (file pruning, Parquet statistics).
//!
//! Filters are pushed down as *inexact*: DataFusion still applies every predicate above the scan,
//! so the index only ever narrows the rows it reads, and answers equal the Delta provider's.
//! [`HotTables`] keeps one copy per table under a memory budget and reuses it while the table's
//! version does not change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use async_trait::async_trait;
use deltalake::{
    arrow::{
        array::{Array, ArrayRef, RecordBatch, UInt32Array, make_comparator},
        compute::{SortOptions, cast, concat_batches, sort_to_indices, take_record_batch},
        datatypes::SchemaRef,
    },
    datafusion::{
        catalog::{Session, TableProvider},
        common::{Column, DataFusionError, ScalarValue, Statistics},
        datasource::{TableType, memory::MemorySourceConfig, source::DataSourceExec},
        logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, expr::InList},
        physical_plan::ExecutionPlan,
        prelude::SessionContext,
    },
};

/// One table held in memory at one version (see the module docs).
pub struct HotTable {
    inner: Arc<dyn TableProvider>,
    version: u64,
    rows: RecordBatch,
    /// Per column: row numbers sorted by that column's value, once built (`None`: the column's
    /// type cannot be sorted).
    indexes: Vec<OnceLock<Option<UInt32Array>>>,
}

impl std::fmt::Debug for HotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotTable").field("version", &self.version).field("rows", &self.rows.num_rows()).finish()
    }
}

/// The literals a filter compares one column with, if it is an equality the index can answer.
fn equality(expr: &Expr) -> Option<(&Column, Vec<&ScalarValue>)> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => Some((c, vec![v])),
            _ => None,
        },
        Expr::InList(InList { expr, list, negated: false }) => {
            let Expr::Column(c) = expr.as_ref() else { return None };
            let values = list.iter().map(|e| if let Expr::Literal(v, _) = e { Some(v) } else { None });
            Some((c, values.collect::<Option<Vec<_>>>()?))
        }
        _ => None,
    }
}

impl HotTable {
    /// Reads every row of `inner` (the table at `version`, registered in `ctx`) into memory.
    pub async fn load(
        ctx: &SessionContext,
        inner: Arc<dyn TableProvider>,
        version: u64,
    ) -> Result<HotTable, DataFusionError> {
        let batches = ctx.read_table(inner.clone())?.collect().await?;
        let schema = inner.schema();
        // The copy has the provider's column types exactly, so index scans and Delta scans agree.
        let batches = batches
            .into_iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .zip(schema.fields())
                    .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
                    .collect::<Result<Vec<ArrayRef>, _>>()?;
                RecordBatch::try_new(schema.clone(), columns)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rows = concat_batches(&schema, &batches)?;
        let indexes = (0..schema.fields().len()).map(|_| OnceLock::new()).collect();
        Ok(HotTable { inner, version, rows, indexes })
    }

    /// The Delta version held.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Memory the copy takes (indexes add 4 bytes per row and indexed column).
    pub fn bytes(&self) -> usize {
        self.rows.get_array_memory_size()
    }

    /// Column `i`'s index, built on first use.
    fn index(&self, i: usize) -> Option<&UInt32Array> {
        self.indexes[i]
            .get_or_init(|| {
                let started = std::time::Instant::now();
                let built = sort_to_indices(self.rows.column(i), Some(SortOptions::default()), None).ok();
                tracing::debug!(column = %self.rows.schema().field(i).name(), elapsed = ?started.elapsed(), "built an index");
                built
            })
            .as_ref()
    }

    /// Row numbers (ascending) whose column `i` equals one of `values`; `None` when the index
    /// cannot answer (a literal of another type than the column's, an unsortable type).
    fn lookup(&self, i: usize, values: &[&ScalarValue]) -> Option<Vec<u32>> {
        let column = self.rows.column(i);
        if values.iter().any(|v| v.data_type() != *column.data_type()) {
            return None;
        }
        let index = self.index(i)?;
        let mut found = Vec::new();
        for value in values {
            if value.is_null() {
                continue; // `col = NULL` is never true
            }
            let probe = value.to_array_of_size(1).ok()?;
            let compare = make_comparator(column.as_ref(), probe.as_ref(), SortOptions::default()).ok()?;
            let sorted = index.values();
            let first = sorted.partition_point(|&r| compare(r as usize, 0).is_lt());
            let end = first + sorted[first..].partition_point(|&r| compare(r as usize, 0).is_eq());
            found.extend_from_slice(&sorted[first..end]);
        }
        found.sort_unstable();
        found.dedup();
        Some(found)
    }
}

#[async_trait]
impl TableProvider for HotTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>, DataFusionError> {
        let inner = self.inner.supports_filters_pushdown(filters)?;
        Ok(filters
            .iter()
            .zip(inner)
            .map(|(f, inner)| match (equality(f), inner) {
                (None, TableProviderFilterPushDown::Unsupported) => TableProviderFilterPushDown::Unsupported,
                _ => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
        let schema = self.rows.schema();
        let hit = filters.iter().filter_map(equality).find_map(|(column, values)| {
            let i = schema.index_of(&column.name).ok()?;
            self.lookup(i, &values)
        });
        let Some(rows) = hit else {
            return self.inner.scan(state, projection, filters, limit).await;
        };
        metrics::counter!("weir_serving_index_lookups_total").increment(1);
        let picked = take_record_batch(&self.rows, &UInt32Array::from(rows))?;
        let source = MemorySourceConfig::try_new(&[vec![picked]], schema, projection.cloned())?.with_limit(limit);
        Ok(DataSourceExec::from_data_source(source))
    }
}

/// The hot copies, by table name, under a memory budget.
#[derive(Default)]
pub struct HotTables {
    held: Mutex<HashMap<String, Arc<HotTable>>>,
    /// Tables found too big for the budget, at that version (not read again until it changes).
    too_big: Mutex<HashMap<String, u64>>,
}

/// Whether `name` is a table hot copies are kept of.
pub fn eligible(name: &str) -> bool {
    name.starts_with("views.") || name.starts_with("current.")
}

impl HotTables {
    /// The copy of `name` at `version`: the one held if it is that version, else read from
    /// `inner` (registered in `ctx`) if the table fits what is left of `budget` (`data_bytes`, the size of its Parquet
    /// files, is checked first). Tables not returned are served by `inner` directly.
    pub async fn get(
        &self,
        ctx: &SessionContext,
        name: &str,
        version: u64,
        data_bytes: u64,
        inner: Arc<dyn TableProvider>,
        budget: &mut usize,
    ) -> Option<Arc<HotTable>> {
        let held = self.held.lock().expect("not poisoned").get(name).cloned();
        let table = match held {
            Some(t) if t.version() == version => t,
            _ => {
                // Not read: found too big at this version, or its files alone exceed what is left
                // (cheap to check again, so not remembered: a later refresh may have room).
                if self.too_big.lock().expect("not poisoned").get(name) == Some(&version) || data_bytes > *budget as u64
                {
                    self.forget(name, None);
                    return None;
                }
                let started = std::time::Instant::now();
                match HotTable::load(ctx, inner, version).await {
                    Ok(t) => {
                        tracing::info!(table = name, version, rows = t.rows.num_rows(), bytes = t.bytes(), elapsed = ?started.elapsed(), "hot copy loaded");
                        Arc::new(t)
                    }
                    Err(e) => {
                        tracing::warn!(table = name, version, error = %e, "could not load a hot copy; serving from the lake");
                        self.forget(name, None);
                        return None;
                    }
                }
            }
        };
        if table.bytes() > *budget {
            self.forget(name, Some(version));
            return None;
        }
        *budget -= table.bytes();
        self.held.lock().expect("not poisoned").insert(name.to_string(), table.clone());
        Some(table)
    }

    /// Drops the copy of `name`; `too_big_at` remembers that this version does not fit.
    fn forget(&self, name: &str, too_big_at: Option<u64>) {
        self.held.lock().expect("not poisoned").remove(name);
        if let Some(v) = too_big_at {
            self.too_big.lock().expect("not poisoned").insert(name.to_string(), v);
        }
    }

    /// Keeps only the copies of `names` (tables that disappeared free their memory).
    pub fn retain(&self, names: &[&str]) {
        self.held.lock().expect("not poisoned").retain(|n, _| names.contains(&n.as_str()));
    }

    /// Memory the copies take.
    pub fn bytes(&self) -> usize {
        self.held.lock().expect("not poisoned").values().map(|t| t.bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use deltalake::{
        arrow::{
            array::{Int64Array, StringArray},
            datatypes::{DataType, Field, Schema},
            util::pretty::pretty_format_batches,
        },
        datafusion::datasource::MemTable,
    };

    use super::*;

    /// 10,000 rows in 3 batches: id (unique, shuffled), city (10 values, some nulls), n.
    fn table() -> Arc<dyn TableProvider> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("city", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batches = (0..3)
            .map(|b| {
                let ids: Vec<i64> = (0..3_334).map(|i| (b * 3_334 + i) * 7_919 % 10_007).collect();
                let cities =
                    StringArray::from_iter(ids.iter().map(|i| (i % 13 != 0).then(|| format!("city-{}", i % 10))));
                let n = Int64Array::from_iter_values(ids.iter().map(|i| i % 3));
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(ids)), Arc::new(cities), Arc::new(n)],
                )
                .unwrap()
            })
            .collect();
        Arc::new(MemTable::try_new(schema, vec![batches]).unwrap())
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> String {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[tokio::test]
    async fn lookups_through_the_index_equal_the_inner_tables_answers() {
        let ctx = SessionContext::new();
        let inner = table();
        ctx.register_table("plain", inner.clone()).unwrap();
        let hot = Arc::new(HotTable::load(&ctx, inner, 3).await.unwrap());
        ctx.register_table("hot", hot.clone()).unwrap();
        for filter in [
            "id = 7919",
            "7919 = id",
            "id = 10006",
            "id = -1",
            "id IN (0, 5, 7919, 123456)",
            "city = 'city-3'",
            "city = 'city-3' AND n = 1",
            "id = 7919 AND n = 2",
            "n = 1 OR id = 5",
            "city IS NULL AND id < 100",
            "id = CAST(NULL AS BIGINT)",
        ] {
            for select in ["*", "city, id"] {
                let q = |t: &str| format!("SELECT {select} FROM {t} WHERE {filter} ORDER BY id");
                assert_eq!(rows(&ctx, &q("hot")).await, rows(&ctx, &q("plain")).await, "{}", q("hot"));
            }
            let limited = |t: &str| format!("SELECT count(*) FROM (SELECT * FROM {t} WHERE {filter} LIMIT 3)");
            assert_eq!(rows(&ctx, &limited("hot")).await, rows(&ctx, &limited("plain")).await, "{}", limited("hot"));
        }
        // The index answered (it exists) for the id and city columns, and the row sets are exact.
        assert!(hot.indexes[0].get().is_some() && hot.indexes[1].get().is_some());
        let id = ScalarValue::Int64(Some(7_919));
        let found = hot.lookup(0, &[&id]).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(hot.rows.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(found[0] as usize), 7_919);
        let city = ScalarValue::Utf8(Some("city-3".into()));
        assert_eq!(hot.lookup(1, &[&city]).unwrap().len(), rows_where(&hot, |c| c == Some("city-3")));
        // A literal of another type is left to the inner table's scan.
        assert_eq!(hot.lookup(0, &[&ScalarValue::Int32(Some(5))]), None);
    }

    fn rows_where(hot: &HotTable, keep: impl Fn(Option<&str>) -> bool) -> usize {
        let cities = hot.rows.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        cities.iter().filter(|c| keep(*c)).count()
    }

    #[tokio::test]
    async fn copies_stay_within_the_budget_and_follow_versions() {
        let ctx = SessionContext::new();
        let tables = HotTables::default();
        let mut budget = 10 << 20;
        let first = tables.get(&ctx, "views.a", 1, 1_000, table(), &mut budget).await.unwrap();
        assert_eq!(budget, (10 << 20) - first.bytes());
        // Same version: the same copy (and its indexes) again.
        let mut budget = 10 << 20;
        let again = tables.get(&ctx, "views.a", 1, 1_000, table(), &mut budget).await.unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // A new version is read again; one that cannot fit is not held at all.
        let mut budget = 10 << 20;
        let newer = tables.get(&ctx, "views.a", 2, 1_000, table(), &mut budget).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &newer));
        let mut small = 1_000;
        assert!(tables.get(&ctx, "views.a", 3, 1_000, table(), &mut small).await.is_none());
        assert_eq!(tables.bytes(), 0);
        let mut none = 10;
        assert!(tables.get(&ctx, "views.b", 1, 1_000, table(), &mut none).await.is_none());
        assert_eq!(none, 10);
        // Its files did not fit what was left then; with room on a later refresh it is read.
        let mut room = 10 << 20;
        assert!(tables.get(&ctx, "views.b", 1, 1_000, table(), &mut room).await.is_some());
    }
}
