//! Pipeline files (`pipelines/*.yaml`, and `*.sql` through [`crate::sql`]): what a streaming
//! pipeline reads, how it windows and aggregates, and where its results go. Parsing and checking
//! only; [`crate::engine`] runs them.
//!
//! ```yaml
//! id: payment_failures
//! source: {topic: shop.shop.payments}          # Debezium envelopes (Avro) by default
//! filter: "status <> 'pending'"                # DataFusion SQL expressions over the row
//! key: [merchant_id]
//! event_time: created_at                       # default: the change's source timestamp
//! window: {tumbling: 1m}                       # or {hopping: {size: 5m, slide: 1m}}, {session: {gap: 30s}}
//! aggregates:
//!   - {name: payments, fn: count}
//!   - {name: failed, fn: sum, expr: "CASE WHEN status = 'failed' THEN 1 ELSE 0 END"}
//!   - {name: p95_amount, fn: percentile, expr: amount, q: 0.95}
//! watermark: {max_out_of_orderness: 2s, allowed_lateness: 1m, idle_timeout: 5s}
//! joins:                                       # enrich each event with a table's current row
//!   - {topic: shop.shop.merchants, key: id, on: merchant_id, columns: [city], kind: left}
//!   - {table: views.merchant_tiers, key: merchant_id, on: merchant_id, columns: [tier]}
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// A pipeline file that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PipelineError {
    /// The file.
    pub file: String,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// A checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Its id (`id:` or the file name without `.yaml`).
    pub id: String,
    /// Free text.
    pub description: String,
    /// What it reads.
    pub source: Source,
    /// Rows for which this is not true are dropped (SQL expression).
    pub filter: Option<String>,
    /// Grouping expressions; none means one global group.
    pub key: Vec<String>,
    /// Expression giving the event time (a timestamp, or milliseconds since the epoch); by
    /// default the change's `_source_ts_ms` (Debezium) or the record's `_timestamp` (JSON).
    pub event_time: String,
    /// The windows.
    pub window: Window,
    /// Aggregates, in output order.
    pub aggregates: Vec<Aggregate>,
    /// Watermark and lateness.
    pub watermark: Watermark,
    /// Topic the results go to.
    pub output_topic: String,
    /// Also emit open windows' running results this often (none: only when a window closes).
    pub early_results: Option<Duration>,
    /// Tables each event is enriched from before the filter, keys and aggregates see it.
    pub joins: Vec<Join>,
    /// Another stream each event is joined with, within a time interval (after `joins`).
    pub interval: Option<IntervalJoin>,
    /// The file it came from.
    pub file: PathBuf,
}

/// A stream–table join: each event gets the current row of a table (see [`crate::join`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    /// The table.
    pub table: TableRef,
    /// The table's key columns (one, or several for a composite key).
    pub key: Vec<String>,
    /// The event columns holding the key to look up, in the order of `key`.
    pub on: Vec<String>,
    /// The table's columns added to each event: (column in the table, name in the event).
    pub columns: Vec<(String, String)>,
    /// What happens to an event whose key has no row.
    pub kind: JoinKind,
}

/// A stream–stream interval join: each event meets the other stream's events with its key whose
/// time lies within `[event time − before, event time + after]` (see [`crate::interval`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalJoin {
    /// The other stream (its topic, format and JSON fields).
    pub stream: Source,
    /// The other stream's event-time column.
    pub time: String,
    /// The other stream's key columns.
    pub key: Vec<String>,
    /// The event columns they must equal, in the order of `key`.
    pub on: Vec<String>,
    /// How far before an event's time the other's may lie.
    pub before: Duration,
    /// How far after an event's time the other's may lie.
    pub after: Duration,
    /// The other stream's columns added to each joined row: (its column, name in the event).
    pub columns: Vec<(String, String)>,
    /// What happens to an event with no match in the interval.
    pub kind: JoinKind,
}

/// Where a joined table's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableRef {
    /// A Debezium changelog topic (Avro envelopes, as ingest writes them), followed change by
    /// change.
    Changelog(String),
    /// A lake table (`current.*` or `views.*`), read whole again after each commit to it.
    Lake(String),
}

impl TableRef {
    /// The topic or lake table.
    pub fn name(&self) -> &str {
        match self {
            TableRef::Changelog(name) | TableRef::Lake(name) => name,
        }
    }

    /// The changelog topic, when it is one.
    pub fn changelog(&self) -> Option<&str> {
        match self {
            TableRef::Changelog(topic) => Some(topic),
            TableRef::Lake(_) => None,
        }
    }

    /// A topic, or a lake table when `name` is one a lookup can read (`current.*`, `views.*`;
    /// `raw.*` tables are change logs: their topic is the table to join).
    pub fn parse(name: &str) -> Result<TableRef, String> {
        match name.split_once('.').map(|(ns, _)| ns) {
            Some("current" | "views") => {
                weir_lake::catalog::check_name(name).map_err(|e| e.to_string())?;
                Ok(TableRef::Lake(name.to_string()))
            }
            Some("raw") => Err(format!("{name} is a change log: join the topic it is written from")),
            _ => {
                weir_bus::validate_topic_name(name).map_err(|e| format!("topic {name}: {e}"))?;
                Ok(TableRef::Changelog(name.to_string()))
            }
        }
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a join does with an event whose key the table does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinKind {
    /// The event is dropped (SQL `JOIN`).
    #[default]
    Inner,
    /// The event is kept with nulls in the table's columns (SQL `LEFT JOIN`).
    Left,
}

/// Where a pipeline's events come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The topic.
    pub topic: String,
    /// How its values are encoded.
    #[serde(default)]
    pub format: Format,
    /// For `json`: the fields to read and their types (`string`, `int`, `float`, `bool`,
    /// `timestamp`); others are ignored.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldType>,
    /// For `debezium`: which operations count (default `c`, `u`, `r`; add `d` to see deletes,
    /// whose row is the `before` image).
    #[serde(default = "default_ops")]
    pub ops: Vec<String>,
}

pub(crate) fn default_ops() -> Vec<String> {
    vec!["c".into(), "u".into(), "r".into()]
}

/// The encoding of a source topic's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Debezium change-event envelopes, Avro in the Confluent wire format; the row's columns plus
    /// `_op`, `_source_ts_ms`, `_topic`, `_partition`, `_offset`.
    #[default]
    Debezium,
    /// One JSON object per record.
    Json,
    /// One Avro record per record, in the Confluent wire format (schema from the registry);
    /// its fields become columns (nested values as JSON text), plus `_partition`, `_offset`,
    /// `_timestamp`.
    Avro,
}

/// A JSON field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// true / false.
    Bool,
    /// RFC 3339 text or milliseconds since the epoch.
    Timestamp,
}

/// Window shapes (event time, aligned to the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Fixed, non-overlapping windows of this length.
    Tumbling(Duration),
    /// Windows of `size` starting every `slide`; an event is in `size / slide` of them.
    Hopping {
        /// Length of each window.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// Per key: events closer than `gap` share a window.
    Session {
        /// Inactivity that ends a session.
        gap: Duration,
    },
}

/// `window:` as written: exactly one of the three shapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    #[serde(default, with = "humantime_serde")]
    tumbling: Option<Duration>,
    hopping: Option<HoppingFile>,
    session: Option<SessionFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HoppingFile {
    #[serde(with = "humantime_serde")]
    size: Duration,
    #[serde(with = "humantime_serde")]
    slide: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    #[serde(with = "humantime_serde")]
    gap: Duration,
}

impl WindowFile {
    fn shape(self) -> Result<Window, String> {
        match (self.tumbling, self.hopping, self.session) {
            (Some(size), None, None) => Ok(Window::Tumbling(size)),
            (None, Some(h), None) => Ok(Window::Hopping { size: h.size, slide: h.slide }),
            (None, None, Some(s)) => Ok(Window::Session { gap: s.gap }),
            _ => Err("window: give exactly one of tumbling, hopping, session".into()),
        }
    }
}

/// Aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggFn {
    /// Rows (or non-null values of `expr`).
    Count,
    /// Sum of `expr` (Float64).
    Sum,
    /// Smallest `expr`.
    Min,
    /// Largest `expr`.
    Max,
    /// Mean of `expr`.
    Avg,
    /// Distinct values of `expr`, estimated (HyperLogLog, ~1.6 % standard error).
    CountDistinct,
    /// The `q` quantile of `expr`, estimated (log-bucket sketch, ≤ 1 % relative error).
    Percentile,
}

/// One output column.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Output column name.
    pub name: String,
    /// The function.
    pub func: AggFn,
    /// Its input expression (`count` without one counts rows).
    pub expr: Option<String>,
    /// For `percentile`: the quantile in (0, 1).
    pub q: f64,
}

/// Event-time progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Watermark {
    /// The watermark trails the largest event time seen by this much.
    #[serde(with = "humantime_serde")]
    pub max_out_of_orderness: Duration,
    /// A closed window keeps its state this long after its end; events for it update and
    /// re-emit it. Later events are counted as late and sent to `<topic>.dlq`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A partition with no events for this long (wall clock) stops holding the watermark back;
    /// when every partition is idle the watermark follows the wall clock minus this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for Watermark {
    fn default() -> Self {
        Watermark {
            max_out_of_orderness: Duration::from_secs(1),
            allowed_lateness: Duration::ZERO,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    id: Option<String>,
    #[serde(default)]
    description: String,
    source: Source,
    filter: Option<String>,
    #[serde(default)]
    key: KeyList,
    event_time: Option<String>,
    window: WindowFile,
    aggregates: Vec<AggregateFile>,
    #[serde(default)]
    watermark: Watermark,
    output: Option<OutputFile>,
    #[serde(default)]
    joins: Vec<JoinFile>,
    interval_join: Option<IntervalJoinFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalJoinFile {
    source: Source,
    time: Option<String>,
    key: KeyList,
    on: KeyList,
    between: BetweenFile,
    columns: ColumnsFile,
    #[serde(default)]
    kind: JoinKind,
}

/// `between: {before: 5m, after: 1h}`: the other's time within [time − before, time + after].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BetweenFile {
    #[serde(default, with = "humantime_serde")]
    before: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    after: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinFile {
    topic: Option<String>,
    table: Option<String>,
    key: KeyList,
    on: KeyList,
    columns: ColumnsFile,
    #[serde(default)]
    kind: JoinKind,
}

/// A join's columns: names kept as they are, or each mapped to its name in the event.
#[derive(Deserialize)]
#[serde(untagged)]
enum ColumnsFile {
    Same(Vec<String>),
    Renamed(serde_yaml_ng::Mapping),
}

impl ColumnsFile {
    /// (column in the joined source, name in the events); `what` names the join in errors.
    fn pairs(self, what: &str) -> Result<Vec<(String, String)>, String> {
        match self {
            ColumnsFile::Same(names) => Ok(names.into_iter().map(|n| (n.clone(), n)).collect()),
            ColumnsFile::Renamed(map) => map
                .into_iter()
                .map(|(k, v)| match (k, v) {
                    (serde_yaml_ng::Value::String(k), serde_yaml_ng::Value::String(v)) => Ok((k, v)),
                    _ => Err(format!("{what}: columns maps a joined column to its name in the events")),
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum KeyList {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl KeyList {
    fn into_vec(self) -> Vec<String> {
        match self {
            KeyList::None => Vec::new(),
            KeyList::One(k) => vec![k],
            KeyList::Many(k) => k,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputFile {
    topic: Option<String>,
    #[serde(default, with = "humantime_serde")]
    early_results: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AggregateFile {
    name: String,
    #[serde(rename = "fn")]
    func: AggFn,
    expr: Option<String>,
    q: Option<f64>,
}

/// Reads and checks one pipeline file: SQL when its name ends in `.sql`, YAML otherwise.
pub fn load_file(path: &Path) -> Result<Pipeline, PipelineError> {
    if path.extension().is_some_and(|e| e == "sql") {
        return crate::sql::load_file(path);
    }
    let err = |line: Option<usize>, reason: String| PipelineError { file: path.display().to_string(), line, reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(None, format!("cannot read: {e}")))?;
    let f: PipelineFile =
        serde_yaml_ng::from_str(&text).map_err(|e| err(e.location().map(|l| l.line()), e.to_string()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
    check(f, stem, path).map_err(|reason| err(None, reason))
}

/// The columns every result has besides its keys and aggregates.
pub(crate) const RESULT_COLUMNS: [&str; 3] = ["window_start", "window_end", "final"];

/// Whether `id` can name a pipeline (YAML `id`, SQL `CREATE PIPELINE <id>`).
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{id:?}: use letters, digits, '_' and '-'"));
    }
    Ok(())
}

/// Whether every operation named is a Debezium one.
pub(crate) fn check_ops(ops: &[String]) -> Result<(), String> {
    match ops.iter().find(|op| !matches!(op.as_str(), "c" | "u" | "d" | "r")) {
        Some(op) => Err(format!("{op:?} is not one of c, u, d, r")),
        None => Ok(()),
    }
}

/// Whether the joins can be used: a topic, a key, at least one column, and no event column
/// named twice.
pub(crate) fn check_joins(joins: &[Join]) -> Result<(), String> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    for j in joins {
        let table = j.table.name();
        if j.key.is_empty() || j.on.is_empty() {
            return Err(format!("joins: {table}: give the table's key and the event column it is looked up with"));
        }
        if j.key.len() != j.on.len() {
            return Err(format!(
                "joins: {table}: the key has {} columns and `on` {}: one event column per key column",
                j.key.len(),
                j.on.len()
            ));
        }
        if j.columns.is_empty() {
            return Err(format!("joins: {table}: name at least one column to add to the events"));
        }
        for (_, name) in &j.columns {
            if let Some(other) = names.insert(name, table) {
                return Err(format!("joins: column {name:?} comes from both {other} and {table}"));
            }
        }
    }
    Ok(())
}

/// Whether an interval join can be used: a key, as many `on` columns, at least one column, and
/// no column named as one the table joins add.
pub(crate) fn check_interval(i: &IntervalJoin, joins: &[Join]) -> Result<(), String> {
    let topic = &i.stream.topic;
    if i.key.is_empty() || i.key.len() != i.on.len() {
        return Err(format!(
            "interval_join: {topic}: give its key columns and as many event columns (`on`) they must equal"
        ));
    }
    if i.columns.is_empty() {
        return Err(format!("interval_join: {topic}: name at least one of its columns to add to the events"));
    }
    for (_, name) in &i.columns {
        if let Some(j) = joins.iter().find(|j| j.columns.iter().any(|(_, n)| n == name)) {
            return Err(format!("interval_join: column {name:?} comes from both {topic} and {}", j.table));
        }
    }
    Ok(())
}

/// Whether hopping windows of `size` every `slide` tile time (size a multiple of slide).
pub(crate) fn check_hop(size: Duration, slide: Duration) -> Result<(), String> {
    if slide > size || !size.as_millis().is_multiple_of(slide.as_millis()) {
        return Err(format!(
            "size {} must be a multiple of slide {}",
            humantime::format_duration(size),
            humantime::format_duration(slide)
        ));
    }
    Ok(())
}

fn check(f: PipelineFile, stem: String, path: &Path) -> Result<Pipeline, String> {
    let id = f.id.unwrap_or(stem);
    check_id(&id).map_err(|e| format!("id {e}"))?;
    weir_bus::validate_topic_name(&f.source.topic).map_err(|e| format!("source.topic: {e}"))?;
    check_ops(&f.source.ops).map_err(|e| format!("source.ops: {e}"))?;
    match (f.source.format, f.source.fields.is_empty()) {
        (Format::Json, true) => return Err("source.fields: a json source lists its fields and their types".into()),
        (Format::Debezium | Format::Avro, false) => {
            return Err("source.fields: only a json source lists fields (Avro ones come from the registry)".into());
        }
        _ => {}
    }
    let positive = |what: &str, d: Duration| {
        if d.as_millis() == 0 { Err(format!("window.{what} must be at least 1ms")) } else { Ok(()) }
    };
    let window = f.window.shape()?;
    match window {
        Window::Tumbling(size) => positive("tumbling", size)?,
        Window::Hopping { size, slide } => {
            positive("size", size)?;
            positive("slide", slide)?;
            check_hop(size, slide).map_err(|e| format!("window: {e}"))?;
        }
        Window::Session { gap } => positive("gap", gap)?,
    }
    if f.aggregates.is_empty() {
        return Err("aggregates: at least one".into());
    }
    let mut aggregates = Vec::new();
    let mut names: HashMap<String, ()> = HashMap::new();
    for a in f.aggregates {
        if names.insert(a.name.clone(), ()).is_some() {
            return Err(format!("aggregates: {:?} appears twice", a.name));
        }
        if RESULT_COLUMNS.contains(&a.name.as_str()) {
            return Err(format!("aggregates: {:?} is a reserved output column", a.name));
        }
        if a.expr.is_none() && a.func != AggFn::Count {
            return Err(format!("aggregates.{}: {:?} needs an expr", a.name, a.func));
        }
        let q = match (a.func, a.q) {
            (AggFn::Percentile, Some(q)) if q > 0.0 && q < 1.0 => q,
            (AggFn::Percentile, _) => return Err(format!("aggregates.{}: percentile needs q in (0, 1)", a.name)),
            (_, Some(_)) => return Err(format!("aggregates.{}: q is only for percentile", a.name)),
            (_, None) => 0.0,
        };
        aggregates.push(Aggregate { name: a.name, func: a.func, expr: a.expr, q });
    }
    let key = f.key.into_vec();
    let event_time = f.event_time.unwrap_or_else(|| match f.source.format {
        Format::Debezium => "_source_ts_ms".into(),
        Format::Json | Format::Avro => "_timestamp".into(),
    });
    let mut joins = Vec::new();
    for j in f.joins {
        let table = match (j.topic, j.table) {
            (Some(topic), None) => {
                weir_bus::validate_topic_name(&topic).map_err(|e| format!("joins: topic: {e}"))?;
                TableRef::Changelog(topic)
            }
            (None, Some(table)) => match TableRef::parse(&table).map_err(|e| format!("joins: {e}"))? {
                lake @ TableRef::Lake(_) => lake,
                TableRef::Changelog(_) => {
                    return Err(format!(
                        "joins: table {table}: a lake table to look up is current.* or views.* (a changelog is topic:)"
                    ));
                }
            },
            _ => return Err("joins: give either the topic of a table's changelog or a lake table (table:)".into()),
        };
        let columns = j.columns.pairs(&format!("joins: {table}"))?;
        joins.push(Join { table, key: j.key.into_vec(), on: j.on.into_vec(), columns, kind: j.kind });
    }
    check_joins(&joins)?;
    let interval = match f.interval_join {
        None => None,
        Some(i) => {
            let stream = i.source;
            weir_bus::validate_topic_name(&stream.topic).map_err(|e| format!("interval_join.source.topic: {e}"))?;
            check_ops(&stream.ops).map_err(|e| format!("interval_join.source.ops: {e}"))?;
            if stream.format == Format::Json && stream.fields.is_empty() {
                return Err("interval_join.source.fields: a json source lists its fields and their types".into());
            }
            let time = i.time.unwrap_or_else(|| match stream.format {
                Format::Debezium => "_source_ts_ms".into(),
                Format::Json | Format::Avro => "_timestamp".into(),
            });
            let columns = i.columns.pairs(&format!("interval_join: {}", stream.topic))?;
            let join = IntervalJoin {
                time,
                key: i.key.into_vec(),
                on: i.on.into_vec(),
                before: i.between.before.unwrap_or_default(),
                after: i.between.after.unwrap_or_default(),
                columns,
                kind: i.kind,
                stream,
            };
            check_interval(&join, &joins)?;
            Some(join)
        }
    };
    let output = f.output.unwrap_or(OutputFile { topic: None, early_results: None });
    let output_topic = output.topic.unwrap_or_else(|| format!("weir.stream.{id}"));
    weir_bus::validate_topic_name(&output_topic).map_err(|e| format!("output.topic: {e}"))?;
    Ok(Pipeline {
        id,
        description: f.description,
        source: f.source,
        filter: f.filter,
        key,
        event_time,
        window,
        aggregates,
        watermark: f.watermark,
        output_topic,
        early_results: output.early_results,
        joins,
        interval,
        file: path.to_path_buf(),
    })
}

/// Every `*.yaml` / `*.yml` / `*.sql` pipeline in `dir`: the good ones, and an error for each bad
/// one (a bad file never stops the others; two files with one id both fail).
pub fn load_dir(dir: &Path) -> (Vec<Pipeline>, Vec<PipelineError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "sql"))
            .collect(),
        Err(e) => {
            let error =
                PipelineError { file: dir.display().to_string(), line: None, reason: format!("cannot list: {e}") };
            return (Vec::new(), vec![error]);
        }
    };
    files.sort();
    let (mut good, mut errors): (Vec<Pipeline>, Vec<PipelineError>) = (Vec::new(), Vec::new());
    for f in files {
        match load_file(&f) {
            Ok(p) => good.push(p),
            Err(e) => errors.push(e),
        }
    }
    let mut count: HashMap<String, usize> = HashMap::new();
    for p in &good {
        *count.entry(p.id.clone()).or_default() += 1;
    }
    good.retain(|p| {
        let unique = count[&p.id] == 1;
        if !unique {
            errors.push(PipelineError {
                file: p.file.display().to_string(),
                line: None,
                reason: format!("pipeline id {:?} is declared by more than one file", p.id),
            });
        }
        unique
    });
    (good, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Pipeline, PipelineError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(&path, text).unwrap();
        load_file(&path)
    }

    #[test]
    fn a_full_pipeline_parses() {
        let p = load(
            "id: fails\nsource: {topic: shop.shop.payments}\nfilter: \"amount > 0\"\nkey: merchant_id\n\
             window: {hopping: {size: 5m, slide: 1m}}\naggregates:\n  - {name: n, fn: count}\n  \
             - {name: p95, fn: percentile, expr: amount, q: 0.95}\nwatermark: {allowed_lateness: 30s}\n",
        )
        .unwrap();
        assert_eq!(p.id, "fails");
        assert_eq!(p.key, vec!["merchant_id"]);
        assert_eq!(p.event_time, "_source_ts_ms");
        assert_eq!(p.window, Window::Hopping { size: Duration::from_secs(300), slide: Duration::from_secs(60) });
        assert_eq!(p.aggregates[1].q, 0.95);
        assert_eq!(p.watermark.allowed_lateness, Duration::from_secs(30));
        assert_eq!(p.watermark.idle_timeout, Duration::from_secs(5));
        assert_eq!(p.output_topic, "weir.stream.fails");
        assert_eq!(p.source.ops, vec!["c", "u", "r"]);
    }

    #[test]
    fn mistakes_are_named() {
        let base = "source: {topic: t.a.b}\nwindow: {tumbling: 1m}\n";
        let cases = [
            (format!("{base}aggregates: [{{name: n, fn: count}}]\nbogus: 1\n"), "unknown field `bogus`"),
            (format!("{base}aggregates: [{{name: n, fn: median, expr: x}}]\n"), "unknown variant `median`"),
            (format!("{base}aggregates: [{{name: n, fn: sum}}]\n"), "aggregates.n: Sum needs an expr"),
            (format!("{base}aggregates: [{{name: p, fn: percentile, expr: x}}]\n"), "percentile needs q"),
            (format!("{base}aggregates: [{{name: n, fn: count}}, {{name: n, fn: count}}]\n"), "appears twice"),
            (format!("{base}aggregates: []\n"), "at least one"),
            (
                "source: {topic: t.a.b}\nwindow: {hopping: {size: 5m, slide: 2m}}\naggregates: [{name: n, fn: count}]\n"
                    .to_string(),
                "must be a multiple of slide",
            ),
            (
                "source: {topic: t.a.b, format: json}\nwindow: {tumbling: 1m}\naggregates: [{name: n, fn: count}]\n"
                    .to_string(),
                "lists its fields",
            ),
        ];
        for (text, want) in cases {
            let e = load(&text).unwrap_err();
            assert!(e.to_string().contains(want), "{want:?} not in {e}");
        }
        let e = load("source: {topic: t.a.b}\nwindow: {tumbling: 1m}\naggregates:\n  - {name: n, fn: count, q: 3}\n")
            .unwrap_err();
        assert!(e.reason.contains("q is only for percentile"), "{e}");
        let joined = "source: {topic: t.a.b}\nwindow: {tumbling: 1m}\naggregates: [{name: n, fn: count}]\njoins:\n";
        for (join, want) in [
            ("  - {key: id, on: k, columns: [c]}", "give either the topic"),
            ("  - {topic: a.b, table: current.t, key: id, on: k, columns: [c]}", "give either the topic"),
            ("  - {table: shop.t, key: id, on: k, columns: [c]}", "current.* or views.*"),
            ("  - {table: raw.t, key: id, on: k, columns: [c]}", "raw.t is a change log"),
            ("  - {topic: a.b, key: id, on: k, columns: []}", "at least one column"),
            ("  - {topic: a.b, key: [id, region], on: k, columns: [c]}", "one event column per key column"),
            (
                "  - {topic: a.b, key: id, on: k, columns: [c]}\n  - {topic: c.d, key: id, on: k, columns: [c]}",
                "comes from both",
            ),
        ] {
            let e = load(&format!("{joined}{join}\n")).unwrap_err();
            assert!(e.reason.contains(want), "{want:?} not in {e}");
        }
        let e = load("source: {topic: t.a.b}\nwindow: {tumbling: 1m}\naggregates: [{name: n, fn: count}]\nx: 1\n")
            .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }

    #[test]
    fn a_broken_file_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let good = "source: {topic: t.a.b}\nwindow: {session: {gap: 30s}}\naggregates: [{name: n, fn: count}]\n";
        std::fs::write(dir.path().join("a.yaml"), good).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "source: [").unwrap();
        let (good, bad) = load_dir(dir.path());
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].id, "a");
        assert_eq!(bad.len(), 1);
        assert!(bad[0].file.ends_with("b.yaml"));
    }

    #[test]
    fn the_shipped_examples_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let (pipelines, errors) = load_dir(&examples.join("pipelines"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(pipelines.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), vec!["payment_failures"]);
        let (alerts, errors) = crate::alert::load_dir(&examples.join("alerts"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(alerts.rules[0].pipeline, "payment_failures");
    }
}
