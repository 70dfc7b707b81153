//! What queries see, and how a query runs. The catalogue is a DataFusion session rebuilt every
//! `refresh_interval`: the lake's `raw.*`, `current.*` and `views.*` tables at their latest
//! versions (kept open between refreshes, which read only the commits since), `realtime.<pipeline>` from the speed layer's results, and `serving.<pipeline>`, the
//! lambda merge of `views.<pipeline>` (batch) and `realtime.<pipeline>`.
//!
//! **Lambda merge.** The batch view's watermark W is the largest `time_column` value in
//! `views.<pipeline>`. `serving.<pipeline>` returns the batch rows with `time_column <= W` and the
//! real-time rows with `time_column > W`, on the columns both have: one continuous series in
//! which the recomputed batch results replace the streamed ones as soon as a batch run lands
//! (Pinot's time boundary). Without a batch view it is the real-time view.
//!
//! `views.*` and `current.*` tables that fit in `hot_table_bytes` are held in memory with
//! equality indexes built on first use, so point lookups do not decode Parquet ([`crate::hot`]).
//!
//! Every query is read-only (DataFusion refuses DDL, DML and other statements: no `CREATE`,
//! `INSERT`, `COPY`, `SET`), runs with its own memory limit, is cancelled at `query_timeout`, and
//! returns at most `max_rows` rows.

use std::{
    sync::{Arc, RwLock},
    time::Instant,
};

use deltalake::{
    arrow::{
        array::RecordBatch,
        datatypes::{DataType, SchemaRef},
    },
    datafusion::{
        catalog::MemorySchemaProvider,
        common::{ScalarValue, TableReference},
        datasource::MemTable,
        execution::{SessionStateBuilder, runtime_env::RuntimeEnvBuilder},
        functions_aggregate::expr_fn::max,
        prelude::{SQLOptions, SessionConfig, SessionContext, cast, ident, lit},
    },
};
use futures::StreamExt;
use serde::Serialize;
use weir_lake::{Lake, OpenTables, query::Registered};

use crate::{
    ServingConfig,
    hot::{self, HotTables},
    realtime::Realtime,
};

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL is wrong or not allowed (a client error).
    #[error("{0}")]
    Invalid(String),
    /// It ran past the timeout.
    #[error("the query ran longer than {0:?} and was cancelled")]
    Timeout(std::time::Duration),
    /// It failed while running (memory limit, storage).
    #[error("{0}")]
    Failed(String),
}

/// A query's answer.
pub struct Answer {
    /// Result schema.
    pub schema: SchemaRef,
    /// Up to `max_rows` rows.
    pub batches: Vec<RecordBatch>,
    /// Rows returned.
    pub rows: usize,
    /// Whether rows were left out at `max_rows`.
    pub truncated: bool,
    /// Time taken.
    pub elapsed: std::time::Duration,
}

/// One table of the catalogue.
#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    /// `<schema>.<table>`.
    pub name: String,
    /// Its columns: (name, Arrow type).
    pub columns: Vec<(String, String)>,
}

/// The catalogue and the query runner.
pub struct Catalog {
    lake: Lake,
    realtime: Arc<Realtime>,
    config: ServingConfig,
    current: RwLock<Option<Arc<SessionContext>>>,
    /// The lake's tables, kept open and updated with each refresh's new commits.
    open: OpenTables,
    hot: HotTables,
}

fn df_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Catalog {
    /// A catalogue over `lake` and `realtime`; empty until the first [`Self::refresh`].
    pub fn new(lake: Lake, realtime: Arc<Realtime>, config: ServingConfig) -> Catalog {
        Catalog {
            lake,
            realtime,
            config,
            current: RwLock::new(None),
            open: OpenTables::default(),
            hot: HotTables::default(),
        }
    }

    /// The per-query limits: (timeout, rows).
    pub fn limits(&self) -> (std::time::Duration, usize) {
        (self.config.query_timeout, self.config.max_rows)
    }

    /// Whether the catalogue has been built (what `/readyz` reports).
    pub fn ready(&self) -> bool {
        self.current.read().expect("not poisoned").is_some()
    }

    /// Rebuilds the session: lake tables at their latest versions, real-time views, merges.
    pub async fn refresh(&self) -> Result<(), String> {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
        let tables = self.open.refresh(&self.lake).await.map_err(df_err)?;
        let registered = weir_lake::query::register_opened(&ctx, &tables).await.map_err(df_err)?;
        self.heat(&ctx, &registered).await?;
        let catalog = ctx.catalog("datafusion").expect("the default catalog exists");
        for ns in ["realtime", "serving"] {
            catalog.register_schema(ns, Arc::new(MemorySchemaProvider::new())).map_err(df_err)?;
        }
        // PostgreSQL's catalogue, for clients that introspect over the wire (psql, Grafana).
        if let Err(e) = datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
            &ctx,
            "datafusion",
            Arc::new(datafusion_postgres::auth::AuthManager::default()),
        ) {
            tracing::warn!(error = %e, "pg_catalog is unavailable");
        }
        for pipeline in self.realtime.pipelines() {
            let Some(batch) = self.realtime.batch(&pipeline) else { continue };
            let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(df_err)?;
            ctx.register_table(TableReference::partial("realtime", pipeline.as_str()), Arc::new(table))
                .map_err(df_err)?;
            self.merge(&ctx, &pipeline).await?;
        }
        *self.current.write().expect("not poisoned") = Some(Arc::new(ctx));
        Ok(())
    }

    /// Swaps in hot copies of `views.*` and `current.*` tables (see [`crate::hot`]) while they
    /// fit in `hot_table_bytes`.
    async fn heat(&self, ctx: &SessionContext, registered: &[Registered]) -> Result<(), String> {
        let mut budget = self.config.hot_table_bytes;
        for t in registered.iter().filter(|t| hot::eligible(&t.name)) {
            let (ns, name) = t.name.split_once('.').expect("lake names have a namespace");
            let reference = TableReference::partial(ns, name);
            let inner = ctx.table_provider(reference.clone()).await.map_err(df_err)?;
            if let Some(copy) = self.hot.get(ctx, &t.name, t.version, t.bytes, inner, &mut budget).await {
                ctx.deregister_table(reference.clone()).map_err(df_err)?;
                ctx.register_table(reference, copy).map_err(df_err)?;
            }
        }
        self.hot.retain(&registered.iter().map(|t| t.name.as_str()).collect::<Vec<_>>());
        metrics::gauge!("weir_serving_hot_table_bytes").set(self.hot.bytes() as f64);
        Ok(())
    }

    /// Registers `serving.<pipeline>` (see the module docs).
    async fn merge(&self, ctx: &SessionContext, pipeline: &str) -> Result<(), String> {
        let t = self.config.time_column.as_str();
        let realtime = ctx.table(TableReference::partial("realtime", pipeline)).await.map_err(df_err)?;
        let view = match ctx.table(TableReference::partial("views", pipeline)).await {
            Ok(batch) => {
                let rt_schema = realtime.schema().as_arrow().clone();
                let common: Vec<(String, DataType)> = batch
                    .schema()
                    .as_arrow()
                    .fields()
                    .iter()
                    .filter(|f| rt_schema.field_with_name(f.name()).is_ok())
                    .map(|f| (f.name().clone(), f.data_type().clone()))
                    .collect();
                let watermark = if common.iter().any(|(c, _)| c == t) {
                    let max_frame = batch.clone().aggregate(vec![], vec![max(ident(t))]).map_err(df_err)?;
                    let got = max_frame.collect().await.map_err(df_err)?;
                    got.first()
                        .filter(|b| b.num_rows() > 0)
                        .map(|b| ScalarValue::try_from_array(b.column(0), 0))
                        .transpose()
                        .map_err(df_err)?
                        .filter(|w| !w.is_null())
                } else {
                    tracing::warn!(
                        pipeline,
                        time_column = t,
                        "views.{pipeline} and realtime.{pipeline} do not share the time column"
                    );
                    None
                };
                match watermark {
                    Some(w) => {
                        let b = batch
                            .filter(ident(t).lt_eq(lit(w.clone())))
                            .and_then(|f| f.select(common.iter().map(|(c, _)| ident(c)).collect::<Vec<_>>()))
                            .map_err(df_err)?;
                        let casts: Vec<_> = common.iter().map(|(c, ty)| cast(ident(c), ty.clone()).alias(c)).collect();
                        let r =
                            realtime
                                .filter(ident(t).gt(cast(
                                    lit(w),
                                    rt_schema.field_with_name(t).map_err(df_err)?.data_type().clone(),
                                )))
                                .and_then(|f| f.select(casts))
                                .map_err(df_err)?;
                        b.union(r).map_err(df_err)?
                    }
                    None => realtime,
                }
            }
            Err(_) => realtime,
        };
        ctx.register_table(TableReference::partial("serving", pipeline), view.into_view()).map_err(df_err)?;
        Ok(())
    }

    /// Refreshes now and then every `every` until `stop` turns true; a failed refresh keeps the
    /// previous catalogue and is logged.
    pub async fn keep_fresh(self: Arc<Self>, every: std::time::Duration, stop: tokio::sync::watch::Receiver<bool>) {
        crate::every(every, stop, || {
            let this = self.clone();
            async move {
                if let Err(e) = this.refresh().await {
                    tracing::error!(error = %e, "refreshing the catalogue failed; the previous one stays");
                }
            }
        })
        .await
    }

    /// Every table and view queries can name.
    pub async fn tables(&self) -> Vec<TableInfo> {
        let Some(ctx) = self.current.read().expect("not poisoned").clone() else { return Vec::new() };
        let catalog = ctx.catalog("datafusion").expect("the default catalog exists");
        let mut out = Vec::new();
        for ns in ["raw", "current", "views", "realtime", "serving"] {
            let Some(schema) = catalog.schema(ns) else { continue };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                let Ok(Some(table)) = schema.table(&name).await else { continue };
                let columns =
                    table.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().to_string())).collect();
                out.push(TableInfo { name: format!("{ns}.{name}"), columns });
            }
        }
        out
    }

    /// A session over the current catalogue with its own memory pool (the object stores the
    /// lake's tables registered are shared); `None` before the first refresh.
    pub fn connection_context(&self) -> Option<SessionContext> {
        let ctx = self.current.read().expect("not poisoned").clone()?;
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(ctx.runtime_env().object_store_registry.clone())
            .with_memory_limit(self.config.query_memory_bytes, 1.0)
            .build_arc()
            .ok()?;
        let state = SessionStateBuilder::new_from_existing(ctx.state()).with_runtime_env(runtime).build();
        Some(SessionContext::new_with_state(state))
    }

    /// Runs one read-only query under the configured limits.
    pub async fn query(&self, sql: &str) -> Result<Answer, QueryError> {
        let started = Instant::now();
        let qctx =
            self.connection_context().ok_or_else(|| QueryError::Failed("the catalogue is still loading".into()))?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let timeout = self.config.query_timeout;
        let max_rows = self.config.max_rows;
        let run = async {
            let frame = qctx.sql_with_options(sql, options).await.map_err(|e| QueryError::Invalid(e.to_string()))?;
            let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
            let mut stream = frame.execute_stream().await.map_err(|e| QueryError::Failed(e.to_string()))?;
            let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| QueryError::Failed(e.to_string()))?;
                if rows + batch.num_rows() > max_rows {
                    batches.push(batch.slice(0, max_rows - rows));
                    rows = max_rows;
                    truncated = true;
                    break;
                }
                rows += batch.num_rows();
                batches.push(batch);
            }
            Ok::<_, QueryError>((schema, batches, rows, truncated))
        };
        let (schema, batches, rows, truncated) =
            tokio::time::timeout(timeout, run).await.map_err(|_| QueryError::Timeout(timeout))??;
        Ok(Answer { schema, batches, rows, truncated, elapsed: started.elapsed() })
    }
}
