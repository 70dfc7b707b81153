//! SQL over the lake with DataFusion: every table is registered under its namespace
//! (`raw.orders`, `current.orders`, `views.order_facts`), and a table reference may travel in
//! time with Delta's `VERSION AS OF <n>` (`SELECT … FROM raw.orders VERSION AS OF 3`), or a whole
//! query may read every table at one version.

use std::{collections::BTreeMap, sync::Arc};

use deltalake::{
    arrow::record_batch::RecordBatch,
    datafusion::{
        catalog::MemorySchemaProvider,
        common::TableReference,
        config::ConfigOptions,
        prelude::SessionContext,
        sql::sqlparser::{
            dialect::GenericDialect,
            tokenizer::{Location, Token, Tokenizer},
        },
    },
};

use crate::catalog::{Lake, LakeError, NAMESPACES};

fn query_err(e: deltalake::datafusion::error::DataFusionError) -> LakeError {
    LakeError::Query(Box::new(e))
}

/// A DataFusion session with deltalake's settings, and any DataFusion option set in the
/// environment the way DataFusion's own tools read it: `DATAFUSION_EXECUTION_TARGET_PARTITIONS=8`
/// sets `datafusion.execution.target_partitions`. A value the option cannot take is an error
/// naming the option.
pub fn new_session() -> Result<SessionContext, LakeError> {
    session_from(|var| std::env::var(var).ok())
}

/// The options of `options` (its extensions' too, such as Ballista's `ballista.*`) that the
/// environment sets, named as in [`new_session`], as (key, value).
pub fn options_in_env(options: &ConfigOptions) -> std::collections::HashMap<String, String> {
    options_in(options, |var| std::env::var(var).ok())
}

fn options_in(
    options: &ConfigOptions,
    lookup: impl Fn(&str) -> Option<String>,
) -> std::collections::HashMap<String, String> {
    let entries = options.entries();
    entries
        .into_iter()
        .filter_map(|e| Some((e.key.clone(), lookup(&e.key.to_uppercase().replace('.', "_"))?)))
        .collect()
}

/// [`new_session`] with the variables `lookup` finds.
fn session_from(lookup: impl Fn(&str) -> Option<String>) -> Result<SessionContext, LakeError> {
    let overrides = options_in(&ConfigOptions::default(), lookup);
    if overrides.is_empty() {
        return Ok(deltalake::delta_datafusion::create_session().into_inner());
    }
    deltalake::delta_datafusion::DeltaSessionContext::new_with_session_overrides(&overrides)
        .map(|c| c.into_inner())
        .map_err(|e| LakeError::Table {
            table: "query".into(),
            reason: format!("DataFusion options from the environment: {e}"),
        })
}

/// A DataFusion session ([`new_session`]) that sees every table of `lake` at its latest version,
/// or at `version` when given (tables younger than it are left out).
pub async fn session(lake: &Lake, version: Option<u64>) -> Result<SessionContext, LakeError> {
    let ctx = new_session()?;
    register_tables(&ctx, lake, version).await?;
    Ok(ctx)
}

/// A table [`register_tables`] registered: its name, version and the bytes of its data files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// `<namespace>.<table>`.
    pub name: String,
    /// The Delta version registered.
    pub version: u64,
    /// Sum of the sizes of the version's data files.
    pub bytes: u64,
}

impl Registered {
    fn of(name: &str, table: &deltalake::DeltaTable) -> Result<Registered, LakeError> {
        let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
        let bytes = snapshot.log_data().iter().map(|f| f.size() as u64).sum();
        Ok(Registered { name: name.to_string(), version: snapshot.version(), bytes })
    }
}

/// The lake's namespaces (`raw`, `current`, `views`) as schemas of `ctx`'s default catalog.
fn register_namespaces(ctx: &SessionContext) -> Result<(), LakeError> {
    let catalog = ctx.catalog("datafusion").expect("the default catalog exists");
    for ns in NAMESPACES {
        catalog.register_schema(ns, Arc::new(MemorySchemaProvider::new())).map_err(query_err)?;
    }
    Ok(())
}

/// Registers every table of `lake` in `ctx` under its namespace (see [`session`]).
pub async fn register_tables(
    ctx: &SessionContext,
    lake: &Lake,
    version: Option<u64>,
) -> Result<Vec<Registered>, LakeError> {
    let mut tables = Vec::new();
    for (name, mut table) in lake.open_all().await? {
        match version {
            Some(v) if table.version().is_some_and(|latest| v > latest) => continue,
            Some(v) => table.load_version(v).await.map_err(|e| LakeError::delta(&name, e))?,
            None => {}
        }
        tables.push((name, table));
    }
    register_opened(ctx, &tables).await
}

/// Registers `tables` (as opened, each under its name's namespace) in `ctx`.
pub async fn register_opened(
    ctx: &SessionContext,
    tables: &[(String, deltalake::DeltaTable)],
) -> Result<Vec<Registered>, LakeError> {
    register_namespaces(ctx)?;
    let mut registered = Vec::new();
    for (name, table) in tables {
        register(ctx, name, name, table).await?;
        registered.push(Registered::of(name, table)?);
    }
    Ok(registered)
}

/// How a session sees the lake's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Registration {
    /// Delta table providers: the session reads the Delta log (in-process engines).
    #[default]
    Delta,
    /// Plain Parquet scans of each table version's data files, with partition values as literal
    /// columns: a plan any DataFusion engine can run without Delta (Ballista's executors).
    Files,
}

/// Registers every table of `lake` (at its latest version) and the versions the `VERSION AS OF`
/// references of `sql` pin, the way `how` says, in `ctx`; returns `sql` rewritten to read the
/// pinned versions and what was registered.
pub async fn register_for(
    ctx: &SessionContext,
    lake: &Lake,
    sql: &str,
    how: Registration,
) -> Result<(String, Vec<Registered>), LakeError> {
    register_pinned(ctx, lake, sql, how, &Versions::new()).await
}

/// Table versions, by `<namespace>.<table>`.
pub type Versions = BTreeMap<String, u64>;

/// [`register_for`], with the tables `versions` names registered at those versions rather than
/// their latest (a rerun reading what its first try read).
pub async fn register_pinned(
    ctx: &SessionContext,
    lake: &Lake,
    sql: &str,
    how: Registration,
    versions: &Versions,
) -> Result<(String, Vec<Registered>), LakeError> {
    let (sql, pinned) = rewrite_time_travel(sql)?;
    let mut tables: Vec<(String, String, deltalake::DeltaTable)> = Vec::new();
    for (name, mut table) in lake.open_all().await? {
        if let Some(&v) = versions.get(&name) {
            table.load_version(v).await.map_err(|e| LakeError::delta(&name, e))?;
        }
        tables.push((name.clone(), name, table));
    }
    for ((name, v), alias) in pinned {
        tables.push((name.clone(), alias, lake.open(&name, Some(v)).await?));
    }
    register_namespaces(ctx)?;
    let mut registered = Vec::new();
    for (name, as_name, table) in &tables {
        match how {
            Registration::Delta => register(ctx, name, as_name, table).await?,
            Registration::Files => register_files(ctx, name, as_name, table).await?,
        }
        registered.push(Registered::of(name, table)?);
    }
    Ok((sql, registered))
}

/// The lake tables `sql` (as [`register_pinned`] rewrote it) reads, with the version each is read
/// at: from `registered`, or from a `VERSION AS OF` alias (`raw.orders@v3`). CTEs are not tables.
pub fn tables_read(ctx: &SessionContext, sql: &str, registered: &[Registered]) -> Result<Versions, LakeError> {
    let state = ctx.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(sql, &dialect).map_err(query_err)?;
    let mut out = Versions::new();
    for r in state.resolve_table_references(&statement).map_err(query_err)? {
        let (Some(ns), table) = (r.schema(), r.table()) else { continue };
        match table.rsplit_once("@v").and_then(|(t, v)| Some((t, v.parse::<u64>().ok()?))) {
            Some((t, v)) => {
                out.insert(format!("{ns}.{t}"), v);
            }
            None => {
                let name = format!("{ns}.{table}");
                if let Some(reg) = registered.iter().find(|x| x.name == name) {
                    out.insert(name, reg.version);
                }
            }
        }
    }
    Ok(out)
}

/// The URL of `table`'s data file at `path` (as its log names it, relative to the table).
pub fn data_file_url(table: &deltalake::DeltaTable, path: &str) -> String {
    format!("{}/{path}", table.table_url().as_str().trim_end_matches('/'))
}

/// Registers `table` as a view over its version's data files: per set of partition values, a
/// Parquet listing of exactly those files (never a directory listing, which would see files of
/// other versions and of failed writes), with the partition values as literals, all unioned.
/// Columns come in the order and types the Delta provider gives them.
async fn register_files(
    ctx: &SessionContext,
    name: &str,
    as_name: &str,
    table: &deltalake::DeltaTable,
) -> Result<(), LakeError> {
    use deltalake::datafusion::{
        catalog::view::ViewTable,
        common::{Column, DFSchema, ScalarValue},
        datasource::{
            file_format::parquet::ParquetFormat,
            listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl},
            provider_as_source,
        },
        logical_expr::{EmptyRelation, Expr, LogicalPlan, LogicalPlanBuilder, lit},
    };
    let bad = |reason: String| LakeError::Table { table: name.to_string(), reason };
    let snapshot = table.snapshot().map_err(|e| LakeError::delta(name, e))?;
    let partition_cols: Vec<String> = snapshot.metadata().partition_columns().to_vec();
    let schema = table.table_provider().await.map_err(query_err)?.schema();
    let file_schema = Arc::new(deltalake::arrow::datatypes::Schema::new(
        schema.fields().iter().filter(|f| !partition_cols.contains(f.name())).cloned().collect::<Vec<_>>(),
    ));
    // Files grouped by their partition values (rendered as Delta stores them).
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<ListingTableUrl>> = BTreeMap::new();
    for f in snapshot.log_data().iter() {
        let values = f.partition_values_map();
        let key = partition_cols.iter().map(|c| values.get(c).cloned().flatten()).collect();
        let url = data_file_url(table, &f.path());
        let url = ListingTableUrl::parse(&url).map_err(|e| bad(format!("data file {url}: {e}")))?;
        groups.entry(key).or_default().push(url);
    }
    let mut plan: Option<LogicalPlan> = None;
    for (values, files) in groups {
        let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(files)
            .with_listing_options(options)
            .with_schema(file_schema.clone());
        let listing = ListingTable::try_new(config).map_err(query_err)?;
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let expr = match partition_cols.iter().position(|c| c == field.name()) {
                Some(i) => {
                    let value = match &values[i] {
                        Some(v) => ScalarValue::try_from_string(v.clone(), field.data_type())
                            .map_err(|e| bad(format!("partition value {}={v}: {e}", field.name())))?,
                        None => ScalarValue::try_from(field.data_type()).map_err(query_err)?,
                    };
                    lit(value).alias(field.name())
                }
                None => Expr::Column(Column::new_unqualified(field.name())),
            };
            columns.push(expr);
        }
        let part = LogicalPlanBuilder::scan(format!("{as_name}.files"), provider_as_source(Arc::new(listing)), None)
            .and_then(|b| b.project(columns))
            .and_then(|b| b.build())
            .map_err(query_err)?;
        plan = Some(match plan {
            None => part,
            Some(p) => LogicalPlanBuilder::from(p).union(part).and_then(|b| b.build()).map_err(query_err)?,
        });
    }
    let plan = match plan {
        Some(p) => p,
        None => LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: false,
            schema: Arc::new(DFSchema::try_from(schema.as_ref().clone()).map_err(query_err)?),
        }),
    };
    register_provider(ctx, as_name, Arc::new(ViewTable::new(plan, None)))
}

/// Registers `provider` as `as_name` (`<namespace>.<table>`) in `ctx`.
fn register_provider(
    ctx: &SessionContext,
    as_name: &str,
    provider: Arc<dyn deltalake::datafusion::catalog::TableProvider>,
) -> Result<(), LakeError> {
    let (ns, rest) = as_name.split_once('.').expect("checked lake names have a namespace");
    ctx.register_table(TableReference::partial(ns, rest), provider).map_err(query_err)?;
    Ok(())
}

async fn register(
    ctx: &SessionContext,
    name: &str,
    as_name: &str,
    table: &deltalake::DeltaTable,
) -> Result<(), LakeError> {
    table.update_datafusion_session(&ctx.state()).map_err(|e| LakeError::delta(name, e))?;
    let provider = table.table_provider().await.map_err(query_err)?;
    register_provider(ctx, as_name, provider)
}

/// A session for `sql`: every table (see [`session`] for `version`) plus the table versions its
/// `VERSION AS OF` references pin; returned with `sql` rewritten to read them.
pub async fn session_for(lake: &Lake, sql: &str, version: Option<u64>) -> Result<(SessionContext, String), LakeError> {
    let (sql, pinned) = rewrite_time_travel(sql)?;
    let ctx = session(lake, version).await?;
    for ((name, v), alias) in pinned {
        let table = lake.open(&name, Some(v)).await?;
        register(&ctx, &name, &alias, &table).await?;
    }
    Ok((ctx, sql))
}

/// Runs `sql` against the lake (see [`session`] for `version`), resolving `VERSION AS OF`.
pub async fn run(lake: &Lake, sql: &str, version: Option<u64>) -> Result<Vec<RecordBatch>, LakeError> {
    let (ctx, sql) = session_for(lake, sql, version).await?;
    let frame = ctx.sql(&sql).await.map_err(query_err)?;
    frame.collect().await.map_err(query_err)
}

/// Tables pinned to a version by `VERSION AS OF`: (table, version) → the alias registered for it.
pub type Pins = BTreeMap<(String, u64), String>;

/// Replaces each `<ns>.<table> VERSION AS OF <n>` with a reference to an alias table
/// `"<ns>"."<table>@v<n>"`; returns the new SQL and the (table, version) → alias pins.
pub fn rewrite_time_travel(sql: &str) -> Result<(String, Pins), LakeError> {
    let bad = |reason: String| LakeError::Table { table: "query".into(), reason };
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| bad(format!("cannot tokenize the SQL: {e}")))?;
    // Only the rewritten references change; everything else is copied from `sql` as written
    // (tokens printed back would lose escapes: `'O''Brien'` would come out as `'O'Brien'`).
    let line_starts: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let offset = |l: Location| {
        let start = line_starts[(l.line as usize).saturating_sub(1).min(line_starts.len() - 1)];
        sql[start..].char_indices().nth((l.column as usize).saturating_sub(1)).map_or(sql.len(), |(i, _)| start + i)
    };
    let word =
        |t: &Token, w: &str| matches!(t, Token::Word(x) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let significant = |j: &usize| !matches!(tokens[*j].token, Token::Whitespace(_));
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut pins = BTreeMap::new();
    for i in 0..tokens.len() {
        if !word(&tokens[i].token, "VERSION") {
            continue;
        }
        // The next three significant tokens must be AS OF <number>…
        let after: Vec<usize> = (i + 1..tokens.len()).filter(significant).take(3).collect();
        if after.len() < 3 || !word(&tokens[after[0]].token, "AS") || !word(&tokens[after[1]].token, "OF") {
            continue;
        }
        let Token::Number(n, _) = &tokens[after[2]].token else {
            return Err(bad("VERSION AS OF needs a version number".into()));
        };
        let version: u64 = n.parse().map_err(|_| bad(format!("VERSION AS OF {n}: not a version number")))?;
        // … and the three before it `<ns> . <table>`.
        let before: Vec<usize> = (0..i).rev().filter(significant).take(3).collect();
        let [table, period, ns] = before[..] else {
            return Err(bad("VERSION AS OF must follow a table name such as raw.orders".into()));
        };
        let (Token::Word(table), Token::Period, Token::Word(ns_word)) =
            (&tokens[table].token, &tokens[period].token, &tokens[ns].token)
        else {
            return Err(bad("VERSION AS OF must follow a table name such as raw.orders".into()));
        };
        let name = format!("{}.{}", ns_word.value, table.value);
        crate::catalog::check_name(&name)?;
        let alias = format!("{}@v{version}", table.value);
        pins.insert((name, version), format!("{}.{alias}", ns_word.value));
        let (from, to) = (offset(tokens[ns].span.start), offset(tokens[after[2]].span.end));
        out.push_str(&sql[copied..from]);
        out.push_str(&format!("\"{}\".\"{alias}\"", ns_word.value));
        copied = to;
    }
    out.push_str(&sql[copied..]);
    Ok((out, pins))
}

#[cfg(test)]
mod tests {
    use super::{rewrite_time_travel, session_from};

    /// DataFusion's environment variables tune sessions; a bad value names the option.
    #[test]
    fn datafusion_options_come_from_the_environment() {
        let env = |value: &'static str| {
            move |var: &str| (var == "DATAFUSION_EXECUTION_TARGET_PARTITIONS").then(|| value.to_string())
        };
        let partitions = |ctx: deltalake::datafusion::prelude::SessionContext| ctx.state().config().target_partitions();
        assert_eq!(partitions(session_from(env("7")).unwrap()), 7);
        let Err(e) = session_from(env("many")) else { panic!("a bad value is an error") };
        assert!(e.to_string().contains("datafusion.execution.target_partitions"), "{e}");
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(partitions(session_from(|_| None).unwrap()), cores);
    }

    #[test]
    fn version_as_of_becomes_an_alias() {
        let (sql, pins) =
            rewrite_time_travel("SELECT count(*) FROM raw.orders VERSION AS OF 3 o JOIN current.pay p ON o.id = p.id")
                .unwrap();
        assert_eq!(sql, "SELECT count(*) FROM \"raw\".\"orders@v3\" o JOIN current.pay p ON o.id = p.id");
        assert_eq!(pins.into_iter().collect::<Vec<_>>(), [(("raw.orders".into(), 3), "raw.orders@v3".into())]);
        // Inside a string it is data, not syntax.
        let (sql, pins) = rewrite_time_travel("SELECT 'raw.x VERSION AS OF 2'").unwrap();
        assert_eq!((sql.as_str(), pins.len()), ("SELECT 'raw.x VERSION AS OF 2'", 0));
        assert!(rewrite_time_travel("SELECT * FROM raw.o VERSION AS OF x").is_err());
        assert!(rewrite_time_travel("SELECT * FROM t VERSION AS OF 1").is_err());
    }
    #[test]
    fn quotes_and_escapes_are_kept_as_written() {
        for sql in [
            "SELECT 'O''Brien', E'a\\''b', \"we\"\"ird\" FROM t -- it's\n/* 'x */ WHERE a = '''; DROP TABLE t; --'",
            "SELECT $$ it's $$, X'ff', N'n''n'",
        ] {
            assert_eq!(rewrite_time_travel(sql).unwrap().0, sql);
        }
        let (sql, _) = rewrite_time_travel("SELECT 'it''s' FROM raw.o VERSION AS OF 2").unwrap();
        assert_eq!(sql, "SELECT 'it''s' FROM \"raw\".\"o@v2\"");
    }
}
