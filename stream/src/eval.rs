//! A pipeline's expressions (filter, key, event time, aggregate inputs), parsed as DataFusion
//! SQL expressions and compiled to physical expressions for one input schema, then evaluated
//! on whole batches: the per-row work left to the window operator is a hash lookup and the
//! accumulator updates.

use std::sync::Arc;

use deltalake::{
    arrow::{
        array::{Array, ArrayRef, AsArray, BooleanArray, StringArray},
        compute::{and, cast},
        datatypes::{DataType, Field, SchemaRef, TimeUnit, TimestampMillisecondType},
        record_batch::RecordBatch,
        row::{RowConverter, Rows, SortField},
    },
    datafusion::{common::DFSchema, error::DataFusionError, physical_plan::PhysicalExpr, prelude::SessionContext},
};

use crate::{
    pipeline::{AggFn, Format, Pipeline},
    sketch::stable_hash,
    window::Column,
};

/// A pipeline expression that does not compile or evaluate.
#[derive(Debug, thiserror::Error)]
#[error("pipeline {pipeline}: {what} {expr:?}: {source}")]
pub struct ExprError {
    /// The pipeline.
    pub pipeline: String,
    /// Which expression (`filter`, `key`, `event_time`, `aggregates.<name>`).
    pub what: String,
    /// Its text.
    pub expr: String,
    /// DataFusion's reason.
    #[source]
    pub source: DataFusionError,
}

/// An aggregate's name, function and compiled input.
type AggExpr = (String, AggFn, Option<Arc<dyn PhysicalExpr>>);

/// The compiled expressions of one pipeline for one input schema.
pub struct Compiled {
    schema: SchemaRef,
    pipeline: String,
    filter: Option<(String, Arc<dyn PhysicalExpr>)>,
    ops: Option<Vec<String>>,
    keys: Vec<(String, Arc<dyn PhysicalExpr>)>,
    time: (String, Arc<dyn PhysicalExpr>),
    aggs: Vec<AggExpr>,
    /// Names and types of the key columns.
    pub key_fields: Vec<Field>,
}

/// One batch, evaluated.
pub struct Prepared {
    /// Row-format keys (`keys.row(i)`); `None` for a pipeline without a key (one global group).
    pub keys: Option<Rows>,
    /// Event time in ms, `None` where the expression gave null.
    pub times: Vec<Option<i64>>,
    /// Which rows pass the filter (and the source's ops).
    pub keep: Option<BooleanArray>,
    /// One input column per aggregate.
    pub columns: Vec<Column>,
}

/// The row converter of keys with columns `fields` (one for the same types encodes and decodes
/// the same bytes: a restored engine decodes the keys a previous one encoded).
pub fn key_converter(fields: &[Field]) -> RowConverter {
    RowConverter::new(fields.iter().map(|f| SortField::new(f.data_type().clone())).collect())
        .expect("every Arrow type has a row format")
}

impl Compiled {
    /// Compiles `p`'s expressions for batches of `schema`.
    pub fn new(p: &Pipeline, schema: SchemaRef) -> Result<Compiled, ExprError> {
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|source| ExprError {
            pipeline: p.id.clone(),
            what: "input schema".into(),
            expr: String::new(),
            source,
        })?;
        let compile = |what: &str, sql: &str| {
            let err = |source| ExprError { pipeline: p.id.clone(), what: what.into(), expr: sql.into(), source };
            let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(err)?;
            ctx.create_physical_expr(expr, &df_schema).map_err(err)
        };
        let filter = p.filter.as_ref().map(|f| compile("filter", f).map(|e| (f.clone(), e))).transpose()?;
        let keys = p.key.iter().map(|k| compile("key", k).map(|e| (k.clone(), e))).collect::<Result<Vec<_>, _>>()?;
        let time = (p.event_time.clone(), compile("event_time", &p.event_time)?);
        let aggs = p
            .aggregates
            .iter()
            .map(|a| {
                let e = a.expr.as_ref().map(|x| compile(&format!("aggregates.{}", a.name), x)).transpose()?;
                Ok((a.name.clone(), a.func, e))
            })
            .collect::<Result<Vec<_>, ExprError>>()?;
        let key_fields = keys
            .iter()
            .map(|(name, e)| {
                let ty = e.data_type(&schema).map_err(|source| ExprError {
                    pipeline: p.id.clone(),
                    what: "key".into(),
                    expr: name.clone(),
                    source,
                })?;
                Ok(Field::new(name, ty, true))
            })
            .collect::<Result<Vec<_>, ExprError>>()?;
        let ops = (p.source.format == Format::Debezium).then(|| p.source.ops.clone());
        Ok(Compiled { schema, pipeline: p.id.clone(), filter, ops, keys, time, aggs, key_fields })
    }

    /// The schema this was compiled for.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// A converter between key columns and their row format.
    fn err(&self, what: &str, expr: &str, source: DataFusionError) -> ExprError {
        ExprError { pipeline: self.pipeline.clone(), what: what.into(), expr: expr.into(), source }
    }

    fn eval(
        &self,
        what: &str,
        name: &str,
        e: &Arc<dyn PhysicalExpr>,
        batch: &RecordBatch,
    ) -> Result<ArrayRef, ExprError> {
        e.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())).map_err(|source| self.err(what, name, source))
    }

    /// Evaluates every expression on `batch` (of this schema); keys go through `converter`.
    pub fn prepare(&self, batch: &RecordBatch, converter: &RowConverter) -> Result<Prepared, ExprError> {
        let n = batch.num_rows();
        let mut keep: Option<BooleanArray> = match &self.filter {
            Some((name, e)) => {
                let v = self.eval("filter", name, e, batch)?;
                let Some(b) = v.as_boolean_opt() else {
                    let reason = format!("gives {}, not a boolean", v.data_type());
                    return Err(self.err("filter", name, DataFusionError::Plan(reason)));
                };
                Some(b.clone())
            }
            None => None,
        };
        if let Some(ops) = &self.ops
            && let Some(col) = batch.column_by_name("_op").and_then(|c| c.as_string_opt::<i32>())
        {
            let col: &StringArray = col;
            let allowed: BooleanArray =
                col.iter().map(|op| Some(op.is_some_and(|o| ops.iter().any(|x| x == o)))).collect();
            keep = Some(match keep {
                Some(k) => and(&k, &allowed).map_err(|e| self.err("filter", "_op", e.into()))?,
                None => allowed,
            });
        }
        let key_arrays: Vec<ArrayRef> =
            self.keys.iter().map(|(name, e)| self.eval("key", name, e, batch)).collect::<Result<_, _>>()?;
        let keys = if key_arrays.is_empty() {
            None
        } else {
            let names = self.keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>().join(", ");
            Some(converter.convert_columns(&key_arrays).map_err(|e| self.err("key", &names, e.into()))?)
        };
        let (tname, te) = &self.time;
        let t = self.eval("event_time", tname, te, batch)?;
        let times = times_ms(&t).map_err(|e| self.err("event_time", tname, e.into()))?;
        let mut columns = Vec::with_capacity(self.aggs.len());
        for (name, func, e) in &self.aggs {
            let what = format!("aggregates.{name}");
            let column = match (func, e) {
                (_, None) => Column::Rows,
                (AggFn::Count, Some(e)) => Column::NotNull(self.eval(&what, name, e, batch)?),
                (AggFn::CountDistinct, Some(e)) => {
                    let v = self.eval(&what, name, e, batch)?;
                    let rows = RowConverter::new(vec![SortField::new(v.data_type().clone())])
                        .and_then(|c| c.convert_columns(std::slice::from_ref(&v)))
                        .map_err(|err| self.err(&what, name, err.into()))?;
                    let hashes = (0..n).map(|i| stable_hash(rows.row(i).as_ref())).collect();
                    Column::Hashes(hashes, v.logical_nulls())
                }
                (_, Some(e)) => {
                    let v = self.eval(&what, name, e, batch)?;
                    let f = cast(&v, &DataType::Float64).map_err(|err| self.err(&what, name, err.into()))?;
                    Column::Numbers(f.as_primitive::<deltalake::arrow::datatypes::Float64Type>().clone())
                }
            };
            columns.push(column);
        }
        Ok(Prepared { keys, times, keep, columns })
    }
}

/// Event times in ms since the epoch: timestamps and dates as they are, numbers as milliseconds.
fn times_ms(t: &ArrayRef) -> Result<Vec<Option<i64>>, deltalake::arrow::error::ArrowError> {
    let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
    let t = match t.data_type() {
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => cast(t, &ms)?,
        _ => cast(&cast(t, &DataType::Int64)?, &ms)?,
    };
    Ok(t.as_primitive::<TimestampMillisecondType>().iter().collect())
}

/// One time expression compiled for one schema: an interval join's event times, of either
/// stream.
pub struct TimeOf {
    schema: SchemaRef,
    pipeline: String,
    what: String,
    text: String,
    expr: Arc<dyn PhysicalExpr>,
}

impl TimeOf {
    /// Compiles `text` (named `what` in errors) for batches of `schema`.
    pub fn new(pipeline: &str, what: &str, text: &str, schema: SchemaRef) -> Result<TimeOf, ExprError> {
        let err = |source| ExprError { pipeline: pipeline.into(), what: what.into(), expr: text.into(), source };
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(err)?;
        let ctx = SessionContext::new();
        let expr = ctx.parse_sql_expr(text, &df_schema).and_then(|e| ctx.create_physical_expr(e, &df_schema));
        Ok(TimeOf { expr: expr.map_err(err)?, schema, pipeline: pipeline.into(), what: what.into(), text: text.into() })
    }

    /// The schema this was compiled for.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Each row's time in ms (`None` where null).
    pub fn times(&self, batch: &RecordBatch) -> Result<Vec<Option<i64>>, ExprError> {
        let err = |source| ExprError {
            pipeline: self.pipeline.clone(),
            what: self.what.clone(),
            expr: self.text.clone(),
            source,
        };
        let t = self.expr.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())).map_err(err)?;
        times_ms(&t).map_err(|e| err(e.into()))
    }
}

/// The keys a scale-out pipeline routes its events by ([`crate::scale`]): the key expressions
/// compiled for the *source's* rows (joins run after the repartition), each row's values cast to
/// text and joined by the unit separator (U+001F), a null as the empty text. Text, not Arrow's
/// row format, so that two batches decoded with different column types route a key alike.
pub struct RouteKeys {
    schema: SchemaRef,
    pipeline: String,
    keys: Vec<(String, Arc<dyn PhysicalExpr>)>,
}

impl RouteKeys {
    /// Compiles `p`'s key expressions for source batches of `schema`.
    pub fn new(p: &Pipeline, schema: SchemaRef) -> Result<RouteKeys, ExprError> {
        let ctx = SessionContext::new();
        let what = "key (a scale-out pipeline is repartitioned by its key before its joins, so the key must \
                    come from the source's columns)";
        let err =
            |expr: &str, source| ExprError { pipeline: p.id.clone(), what: what.into(), expr: expr.into(), source };
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| err("", e))?;
        let keys = p
            .key
            .iter()
            .map(|k| {
                let expr = ctx.parse_sql_expr(k, &df_schema).map_err(|e| err(k, e))?;
                Ok((k.clone(), ctx.create_physical_expr(expr, &df_schema).map_err(|e| err(k, e))?))
            })
            .collect::<Result<_, ExprError>>()?;
        Ok(RouteKeys { schema, pipeline: p.id.clone(), keys })
    }

    /// The schema this was compiled for.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Each row's key as text.
    pub fn texts(&self, batch: &RecordBatch) -> Result<Vec<String>, ExprError> {
        let n = batch.num_rows();
        let mut columns = Vec::with_capacity(self.keys.len());
        for (name, e) in &self.keys {
            let err =
                |source| ExprError { pipeline: self.pipeline.clone(), what: "key".into(), expr: name.clone(), source };
            let v = e.evaluate(batch).and_then(|v| v.into_array(n)).map_err(err)?;
            let text = cast(&v, &DataType::Utf8).map_err(|e| err(e.into()))?;
            columns.push(text.as_string::<i32>().clone());
        }
        fn text(c: &StringArray, row: usize) -> &str {
            if c.is_null(row) { "" } else { c.value(row) }
        }
        Ok((0..n)
            .map(|row| match columns.as_slice() {
                [one] => text(one, row).to_string(),
                _ => columns.iter().map(|c| text(c, row)).collect::<Vec<_>>().join("\u{1f}"),
            })
            .collect())
    }
}
