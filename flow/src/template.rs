//! `{{ name }}` templating of SQL, command arguments and other task fields with a run's context:
//! `ds`, `ds_nodash`, `ts`, `logical_date`, `data_interval_start`, `data_interval_end`, `run_id`,
//! `dag_id`, `task_id`, `try_number` (Weir's own values, in fixed formats), in a table-triggered
//! run `inputs.<table>.version` and `inputs.<table>.previous` (the table version the run covers and
//! the one the previous run covered), `tasks.<id>.output.<key>` (what an earlier task of the run
//! handed on, see [`crate::outputs`]; data, like a conf's values), in a mapped instance
//! `map.index` and `map.item` (`map.item.<key>` for an object; data unless the DAG file's `over`
//! list holds it) and `params.<key>` (the DAG
//! file's params, overridden by a manual run's conf). An unknown name is an error that names
//! it; `{{{{` writes `{{`.
//!
//! Whoever may trigger a run chooses its conf, so a param's value is data and never structure:
//! - in SQL ([`Syntax::Sql`]: `sql`, `replace_where`) it renders as a SQL literal (`'it''s'`, `42`,
//!   `(-1)`, `TRUE`, `NULL`) — or, inside a quoted string the author wrote (`'{{ params.x }}'`), as
//!   that string's escaped content; in a comment with its line breaks removed. A quoted identifier
//!   or a dollar-quoted string refuses it.
//! - in a command's arguments each templated value stays inside its argument; an argument that an
//!   interpreter runs as code (`sh -c CODE`, `python -c CODE`, `perl -e CODE`…) refuses params:
//!   pass them as their own argument or through the environment (`"$WEIR_PARAM_X"`).
//! - `{{ params.x | raw }}` inserts the text as it is, anywhere, but only a value written in the
//!   DAG file: a run whose conf sets `x` fails with the reason.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// What the text around a placeholder is, which decides how a param's value is written into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Plain text (arguments, environment values, messages, URIs): the value as text.
    Text,
    /// SQL (DataFusion's dialect): the value as a literal.
    Sql,
    /// Code an interpreter runs (`sh -c`): params only with `| raw`.
    Code,
}

/// Where a variable's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Computed by Weir (dates, ids) in a fixed format.
    Weir,
    /// Written in the DAG file's `params`.
    Dag,
    /// Given by the run's conf.
    Conf,
    /// Written by a task of the run (its `$WEIR_OUTPUT`).
    Output,
}

#[derive(Debug, Clone)]
struct Var {
    text: String,
    value: Value,
    origin: Origin,
}

/// The values a task's templates can use.
#[derive(Debug, Clone, Default)]
pub struct Context {
    vars: BTreeMap<String, Var>,
}

impl Context {
    /// The context of one try of a task: `params` from the DAG file, `conf` from the run (its keys
    /// override the params').
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        logical_date: DateTime<Utc>,
        interval: (DateTime<Utc>, DateTime<Utc>),
        params: &serde_json::Map<String, Value>,
        conf: &serde_json::Map<String, Value>,
    ) -> Context {
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut vars = BTreeMap::new();
        let mut weir = |name: &str, text: String| {
            vars.insert(name.to_string(), Var { value: Value::String(text.clone()), text, origin: Origin::Weir });
        };
        weir("ds", logical_date.format("%Y-%m-%d").to_string());
        weir("ds_nodash", logical_date.format("%Y%m%d").to_string());
        weir("ts", ts(logical_date));
        weir("logical_date", ts(logical_date));
        weir("data_interval_start", ts(interval.0));
        weir("data_interval_end", ts(interval.1));
        weir("run_id", run_id.into());
        weir("dag_id", dag_id.into());
        weir("task_id", task_id.into());
        weir("try_number", try_number.to_string());
        let given = params.iter().map(|kv| (kv, Origin::Dag)).chain(conf.iter().map(|kv| (kv, Origin::Conf)));
        for ((k, v), origin) in given {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vars.insert(format!("params.{k}"), Var { text, value: v.clone(), origin });
        }
        Context { vars }
    }

    /// Adds the outputs the run's tasks handed on (`tasks.<id>.output.<key>`), as data.
    pub fn with_outputs(mut self, outputs: &BTreeMap<String, serde_json::Map<String, Value>>) -> Context {
        for (task, output) in outputs {
            for (k, v) in output {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                self.vars
                    .insert(format!("tasks.{task}.output.{k}"), Var { text, value: v.clone(), origin: Origin::Output });
            }
        }
        self
    }

    /// Adds a mapped instance's `map.index` and `map.item` (and `map.item.<key>` for each key of
    /// an object item): the DAG file's when `written` (its `over` list), else data.
    pub fn with_map(mut self, index: u32, item: &Value, written: bool) -> Context {
        let origin = if written { Origin::Dag } else { Origin::Output };
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let var = Var { text: index.to_string(), value: Value::from(index), origin: Origin::Weir };
        self.vars.insert("map.index".into(), var);
        self.vars.insert("map.item".into(), Var { text: text(item), value: item.clone(), origin });
        if let Value::Object(fields) = item {
            for (k, v) in fields {
                self.vars.insert(format!("map.item.{k}"), Var { text: text(v), value: v.clone(), origin });
            }
        }
        self
    }

    /// Adds a table-triggered run's input versions (`inputs.<table>.version`, `.previous`).
    pub fn with_inputs(mut self, inputs: &crate::store::Inputs) -> Context {
        for (table, input) in inputs {
            for (field, n) in [("version", input.version), ("previous", input.previous)] {
                let var = Var { text: n.to_string(), value: Value::from(n), origin: Origin::Weir };
                self.vars.insert(format!("inputs.{table}.{field}"), var);
            }
        }
        self
    }

    /// The variables as environment variables for scripts: `WEIR_DS`, `WEIR_RUN_ID`,
    /// `WEIR_PARAM_<KEY>`…
    pub fn env(&self) -> Vec<(String, String)> {
        self.vars.iter().map(|(k, v)| (env_name(k), v.text.clone())).collect()
    }

    /// Renders a command's arguments, each on its own; an argument that an interpreter runs as
    /// code is rendered as [`Syntax::Code`].
    pub fn render_argv(&self, argv: &[String]) -> Result<Vec<String>, String> {
        let code = code_argument(argv);
        argv.iter()
            .enumerate()
            .map(|(i, a)| match &code {
                Some((at, program)) if *at == i => {
                    self.render(a, Syntax::Code).map_err(|e| format!("argument {i} ({program} code): {e}"))
                }
                _ => self.render(a, Syntax::Text),
            })
            .collect()
    }

    /// Renders `text` written in `syntax`.
    pub fn render(&self, text: &str, syntax: Syntax) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        // Only SQL needs to know where in the text a placeholder stands.
        let mut sql = SqlScanner::default();
        let scan = |sql: &mut SqlScanner, text: &str| {
            if syntax == Syntax::Sql {
                sql.scan(text);
            }
        };
        let mut rest = text;
        loop {
            let Some(i) = rest.find("{{") else {
                out.push_str(rest);
                return Ok(out);
            };
            let literal = &rest[..i];
            scan(&mut sql, literal);
            out.push_str(literal);
            let after = &rest[i + 2..];
            if let Some(stripped) = after.strip_prefix("{{") {
                scan(&mut sql, "{{");
                out.push_str("{{");
                rest = stripped;
                continue;
            }
            let end = after.find("}}").ok_or_else(|| format!("unclosed {{{{ in {text:?}"))?;
            let expr = after[..end].trim();
            rest = &after[end + 2..];
            let (name, filter) = match expr.split_once('|') {
                None => (expr, None),
                Some((name, filter)) => (name.trim_end(), Some(filter.trim())),
            };
            let raw = match filter {
                None => false,
                Some("raw") => true,
                Some(other) => return Err(format!("unknown filter {other:?} in {{{{ {expr} }}}} (known: raw)")),
            };
            let var = self.vars.get(name).ok_or_else(|| {
                let known: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                format!("unknown template variable {name:?} (known: {})", known.join(", "))
            })?;
            let value = match (var.origin, raw, syntax) {
                (Origin::Conf, true, _) => {
                    return Err(format!(
                        "{{{{ {name} | raw }}}}: this run's conf sets {name}, and raw text comes only from the DAG file's params"
                    ));
                }
                (Origin::Output, true, _) => {
                    return Err(format!(
                        "{{{{ {name} | raw }}}}: a task's output is data (so is an item mapped from it or from a query), and raw text comes only from the DAG file"
                    ));
                }
                (Origin::Weir, _, _) | (_, true, _) | (_, false, Syntax::Text) => var.text.clone(),
                (_, false, Syntax::Code) => {
                    return Err(format!(
                        "{{{{ {name} }}}} would run as code: pass it as its own argument or as \"${}\" from the environment, \
                         or write {{{{ {name} | raw }}}} to insert the DAG file's value as code",
                        env_name(name)
                    ));
                }
                (_, false, Syntax::Sql) => sql.value(name, &var.value, &var.text, rest.starts_with('\''))?,
            };
            sql.inserted(&value);
            out.push_str(&value);
        }
    }
}

/// `params.x` → `WEIR_PARAM_X`, `inputs.raw.orders.version` → `WEIR_INPUT_RAW_ORDERS_VERSION`,
/// `ds` → `WEIR_DS` (characters a shell name cannot hold become `_`).
fn env_name(var: &str) -> String {
    let name = match (var.strip_prefix("params."), var.strip_prefix("inputs.")) {
        (Some(p), _) => format!("WEIR_PARAM_{p}"),
        (_, Some(i)) => format!("WEIR_INPUT_{i}"),
        _ => format!("WEIR_{var}"),
    };
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

/// The argument an interpreter runs as code, and the interpreter: the one after a shell's `-c`
/// (`sh -c`, `bash -ec`, `bash -o pipefail -c`), Python's `-c`, Perl's and Ruby's `-e`, Node's
/// `-e`/`-p`. The interpreter may stand anywhere (`env A=1 sh -c`, `timeout 60 bash -c`,
/// `find . -exec sh -c`), and every argument after it is looked at for the flag: taking a
/// script's own argument for code can only refuse a param, never let one run.
fn code_argument(argv: &[String]) -> Option<(usize, String)> {
    fn short(arg: &str) -> bool {
        arg.len() > 1 && arg.starts_with('-') && !arg.starts_with("--")
    }
    argv.iter().enumerate().find_map(|(i, arg)| {
        let program = arg.rsplit('/').next().unwrap_or(arg);
        let is_code_flag: fn(&str) -> bool = match program {
            "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" => |a| short(a) && a.contains('c'),
            p if p.starts_with("python") => |a| short(a) && a.ends_with('c'),
            "perl" | "ruby" => |a| short(a) && (a.ends_with('e') || a.ends_with('E')),
            "node" | "nodejs" => |a| matches!(a, "-e" | "--eval" | "-p" | "--print"),
            _ => return None,
        };
        let code = i + 2 + argv[i + 1..].iter().position(|a| is_code_flag(a))?;
        (code < argv.len()).then(|| (code, program.to_string()))
    })
}

/// Where in SQL text the scan has got to (DataFusion's generic dialect: standard strings without
/// backslash escapes, `E'…'` strings with them, nested block comments, dollar-quoted strings).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum SqlState {
    #[default]
    Code,
    /// Inside `'…'`; `true` for an `E'…'` string, where a backslash escapes.
    Str(bool),
    /// Inside a `"…"` identifier.
    Ident,
    /// After `--`, to the end of the line.
    LineComment,
    /// Inside `/* … */`, this deep.
    BlockComment(u32),
    /// Inside `$tag$ … $tag$`.
    Dollar(String),
}

#[derive(Debug, Default)]
struct SqlScanner {
    state: SqlState,
    /// The last two characters of the text so far, the last one second.
    prev: [Option<char>; 2],
}

impl SqlScanner {
    /// Follows the author's `text` (values inserted between texts leave the state as it was).
    fn scan(&mut self, text: &str) {
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, c)| c);
            match &mut self.state {
                SqlState::Code => match (c, next) {
                    ('\'', _) => {
                        let e_prefix = matches!(self.prev[1], Some('e' | 'E'))
                            && !self.prev[0].is_some_and(|p| p.is_alphanumeric() || p == '_');
                        self.state = SqlState::Str(e_prefix);
                    }
                    ('"', _) => self.state = SqlState::Ident,
                    ('-', Some('-')) => {
                        chars.next();
                        self.state = SqlState::LineComment;
                    }
                    ('/', Some('*')) => {
                        chars.next();
                        self.state = SqlState::BlockComment(1);
                    }
                    ('$', _) => {
                        let tail = &text[i + 1..];
                        if let Some(end) = tail.find('$')
                            && tail[..end].chars().all(|t| t.is_alphanumeric() || t == '_')
                            && !tail[..end].starts_with(|t: char| t.is_ascii_digit())
                        {
                            let tag = tail[..end].to_string();
                            for _ in 0..=tag.chars().count() {
                                chars.next();
                            }
                            self.state = SqlState::Dollar(tag);
                        }
                    }
                    _ => {}
                },
                SqlState::Str(escapes) => match (c, next) {
                    ('\\', Some(_)) if *escapes => {
                        chars.next();
                    }
                    ('\'', Some('\'')) => {
                        chars.next();
                    }
                    ('\'', _) => self.state = SqlState::Code,
                    _ => {}
                },
                SqlState::Ident => match (c, next) {
                    ('"', Some('"')) => {
                        chars.next();
                    }
                    ('"', _) => self.state = SqlState::Code,
                    _ => {}
                },
                SqlState::LineComment => {
                    if c == '\n' {
                        self.state = SqlState::Code;
                    }
                }
                SqlState::BlockComment(depth) => match (c, next) {
                    ('/', Some('*')) => {
                        chars.next();
                        *depth += 1;
                    }
                    ('*', Some('/')) => {
                        chars.next();
                        *depth -= 1;
                        if *depth == 0 {
                            self.state = SqlState::Code;
                        }
                    }
                    _ => {}
                },
                SqlState::Dollar(tag) => {
                    if c == '$' && text[i + 1..].strip_prefix(tag.as_str()).is_some_and(|t| t.starts_with('$')) {
                        let n = tag.chars().count() + 1;
                        for _ in 0..n {
                            chars.next();
                        }
                        self.state = SqlState::Code;
                    }
                }
            }
            self.prev = [self.prev[1], Some(c)];
        }
    }

    /// Notes a value written between two of the author's texts.
    fn inserted(&mut self, value: &str) {
        let mut last = value.chars().rev();
        if let Some(c) = last.next() {
            self.prev = [last.next().or(self.prev[1]), Some(c)];
        }
    }

    /// A param's value written where the scan stands; `quote_follows` when the author's text
    /// goes on with `'`.
    fn value(&self, name: &str, value: &Value, text: &str, quote_follows: bool) -> Result<String, String> {
        Ok(match &self.state {
            SqlState::Code => {
                let literal = match value {
                    Value::Null => "NULL".to_string(),
                    Value::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
                    Value::Number(n) if text.starts_with('-') => format!("({n})"),
                    Value::Number(n) => n.to_string(),
                    Value::String(_) | Value::Array(_) | Value::Object(_) => quoted(text),
                };
                // A quote right before or after would join the literal to the author's string.
                let before = if self.prev[1] == Some('\'') { " " } else { "" };
                let after = if quote_follows { " " } else { "" };
                format!("{before}{literal}{after}")
            }
            SqlState::Str(false) => text.replace('\'', "''"),
            SqlState::Str(true) => text.replace('\\', "\\\\").replace('\'', "''"),
            SqlState::LineComment | SqlState::BlockComment(_) => {
                text.replace(['\n', '\r'], " ").replace("*/", "* /").replace("/*", "/ *")
            }
            SqlState::Ident => {
                return Err(format!(
                    "{{{{ {name} }}}} in a quoted identifier: a param cannot name a table or column; \
                     write {{{{ {name} | raw }}}} to use the DAG file's value"
                ));
            }
            SqlState::Dollar(_) => {
                return Err(format!(
                    "{{{{ {name} }}}} in a dollar-quoted string: put it in a '…' string, or outside one as a literal"
                ));
            }
        })
    }
}

fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn context(params: Value, conf: Value) -> Context {
        Context::new(
            "d",
            "scheduled__2026-11-22",
            "t",
            2,
            t("2026-11-22T00:00:00Z"),
            (t("2026-11-22T00:00:00Z"), t("2026-11-23T00:00:00Z")),
            params.as_object().unwrap(),
            conf.as_object().unwrap(),
        )
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_dates_params_and_names_unknown_variables() {
        let c = context(serde_json::json!({"region": "eu", "limit": 10}), serde_json::json!({}));
        let sql = "SELECT * FROM x WHERE day = '{{ ds }}' AND ts < '{{data_interval_end}}' AND r = '{{ params.region }}' LIMIT {{ params.limit }} -- {{{{";
        assert_eq!(
            c.render(sql, Syntax::Sql).unwrap(),
            "SELECT * FROM x WHERE day = '2026-11-22' AND ts < '2026-11-23T00:00:00Z' AND r = 'eu' LIMIT 10 -- {{"
        );
        assert!(c.render("{{ dss }}", Syntax::Text).unwrap_err().contains("\"dss\""));
        assert!(c.render("{{ ds ", Syntax::Text).unwrap_err().contains("unclosed"));
        assert!(c.render("{{ ds | upper }}", Syntax::Text).unwrap_err().contains("unknown filter \"upper\""));
        assert!(c.env().contains(&("WEIR_PARAM_REGION".into(), "eu".into())));
        assert!(c.env().contains(&("WEIR_TRY_NUMBER".into(), "2".into())));
    }

    #[test]
    fn params_in_sql_are_literals() {
        let c = context(
            serde_json::json!({"s": "x' OR '1'='1", "n": -5, "b": true, "z": null, "a": [1, "two"], "e": "a\\'b"}),
            serde_json::json!({}),
        );
        let r = |s: &str| c.render(s, Syntax::Sql).unwrap();
        assert_eq!(r("WHERE v = {{ params.s }}"), "WHERE v = 'x'' OR ''1''=''1'");
        assert_eq!(r("WHERE v = '{{ params.s }}'"), "WHERE v = 'x'' OR ''1''=''1'");
        assert_eq!(r("WHERE v = 'pre {{ params.s }} post'"), "WHERE v = 'pre x'' OR ''1''=''1 post'");
        assert_eq!(r("x -{{ params.n }}"), "x -(-5)", "a negative number cannot start a comment");
        assert_eq!(r("{{ params.b }} AND {{ params.z }}"), "TRUE AND NULL");
        assert_eq!(r("{{ params.a }}"), "'[1,\"two\"]'");
        assert_eq!(r("E'{{ params.e }}'"), "E'a\\\\''b'", "escape strings escape backslashes too");
        assert_eq!(r("'{{ params.e }}'"), "'a\\''b'", "standard strings keep backslashes");
        assert_eq!(r("-- {{ params.s }}\nSELECT 1"), "-- x' OR '1'='1\nSELECT 1");
        let c2 = context(serde_json::json!({"s": "\nDROP TABLE t; /* */"}), serde_json::json!({}));
        assert_eq!(c2.render("-- {{ params.s }}\n1", Syntax::Sql).unwrap(), "--  DROP TABLE t; / * * /\n1");
        assert_eq!(c2.render("/* {{ params.s }} */ 1", Syntax::Sql).unwrap(), "/*  DROP TABLE t; / * * / */ 1");
        // Quotes the author put beside a placeholder do not join the literal.
        assert_eq!(r("'a'{{ params.b }}"), "'a' TRUE");
        assert_eq!(r("{{ params.s }}'b'"), "'x'' OR ''1''=''1' 'b'");
        // Weir's own values are text, so '{{ ds }}' and TIMESTAMP '{{ ts }}' keep working.
        assert_eq!(r("TIMESTAMP '{{ ts }}' + {{ try_number }}"), "TIMESTAMP '2026-11-22T00:00:00Z' + 2");
        assert!(c.render("SELECT \"{{ params.s }}\"", Syntax::Sql).unwrap_err().contains("quoted identifier"));
        assert!(c.render("SELECT $$ {{ params.s }} $$", Syntax::Sql).unwrap_err().contains("dollar-quoted"));
        assert!(c.render("SELECT $q$ {{ params.s }} $q$", Syntax::Sql).unwrap_err().contains("dollar-quoted"));
        assert_eq!(r("SELECT $q$ it's $q$, {{ params.b }}"), "SELECT $q$ it's $q$, TRUE", "a closed dollar string");
    }

    #[test]
    fn raw_comes_only_from_the_dag_file() {
        let c = context(serde_json::json!({"table": "orders", "who": "x"}), serde_json::json!({"who": "ops"}));
        assert_eq!(c.render("SELECT * FROM {{ params.table | raw }}", Syntax::Sql).unwrap(), "SELECT * FROM orders");
        assert_eq!(c.render("SELECT * FROM {{params.table|raw}}", Syntax::Sql).unwrap(), "SELECT * FROM orders");
        assert_eq!(c.render("SELECT * FROM {{ params.table }}", Syntax::Sql).unwrap(), "SELECT * FROM 'orders'");
        let err = c.render("SELECT {{ params.who | raw }}", Syntax::Sql).unwrap_err();
        assert!(err.contains("conf sets params.who"), "{err}");
        assert_eq!(c.render("{{ params.who }}", Syntax::Text).unwrap(), "ops", "conf overrides params");
    }

    #[test]
    fn outputs_and_inputs_are_data() {
        let mut outputs = BTreeMap::new();
        let out = serde_json::json!({"day": "it's", "rows": 3});
        outputs.insert("extract".to_string(), out.as_object().unwrap().clone());
        let mut inputs = crate::store::Inputs::new();
        inputs.insert("raw.orders".into(), crate::store::InputVersion { version: 7, previous: 4 });
        let c = context(serde_json::json!({}), serde_json::json!({})).with_outputs(&outputs).with_inputs(&inputs);
        let sql =
            "SELECT {{ tasks.extract.output.day }}, {{ tasks.extract.output.rows }}, {{ inputs.raw.orders.version }}";
        assert_eq!(c.render(sql, Syntax::Sql).unwrap(), "SELECT 'it''s', 3, 7");
        let err = c.render("{{ tasks.extract.output.day | raw }}", Syntax::Sql).unwrap_err();
        assert!(err.contains("a task's output is data"), "{err}");
        let err = c.render_argv(&argv(&["sh", "-c", "echo {{ tasks.extract.output.day }}"])).unwrap_err();
        assert!(err.contains("$WEIR_TASKS_EXTRACT_OUTPUT_DAY"), "{err}");
        assert!(c.env().contains(&("WEIR_INPUT_RAW_ORDERS_PREVIOUS".into(), "4".into())));
    }

    #[test]
    fn mapped_items_are_data_unless_the_dag_file_lists_them() {
        let base = context(serde_json::json!({}), serde_json::json!({}));
        let queried = base.clone().with_map(3, &serde_json::json!({"region": "it's", "n": 2}), false);
        let sql = "SELECT {{ map.index }}, {{ map.item.region }}, {{ map.item.n }}";
        assert_eq!(queried.render(sql, Syntax::Sql).unwrap(), "SELECT 3, 'it''s', 2");
        assert_eq!(queried.render("{{ map.item }}", Syntax::Text).unwrap(), r#"{"region":"it's","n":2}"#);
        let err = queried.render("{{ map.item.region | raw }}", Syntax::Sql).unwrap_err();
        assert!(err.contains("is data"), "{err}");
        let err = queried.render_argv(&argv(&["sh", "-c", "echo {{ map.item.region }}"])).unwrap_err();
        assert!(err.contains("$WEIR_MAP_ITEM_REGION"), "{err}");
        assert!(queried.env().contains(&("WEIR_MAP_INDEX".into(), "3".into())));
        let written = base.with_map(0, &serde_json::json!("orders"), true);
        assert_eq!(written.render("SELECT * FROM {{ map.item | raw }}", Syntax::Sql).unwrap(), "SELECT * FROM orders");
    }

    #[test]
    fn interpreter_code_refuses_params() {
        let c = context(serde_json::json!({"who": "world"}), serde_json::json!({"evil": "$(touch /tmp/pwned)"}));
        let err = c.render_argv(&argv(&["sh", "-c", "echo {{ params.evil }}"])).unwrap_err();
        assert!(err.contains("argument 2 (sh code)") && err.contains("\"$WEIR_PARAM_EVIL\""), "{err}");
        for code in [
            &["bash", "-ec", "echo {{ params.who }}"][..],
            &["/bin/sh", "-e", "-c", "echo {{ params.who }}"],
            &["bash", "-o", "pipefail", "-c", "echo {{ params.who }}"],
            &["env", "-i", "A=1", "sh", "-c", "echo {{ params.who }}"],
            &["/usr/bin/env", "-u", "HOME", "bash", "-c", "echo {{ params.who }}"],
            &["timeout", "60", "sh", "-c", "echo {{ params.who }}"],
            &["find", ".", "-exec", "sh", "-c", "echo {{ params.who }}", ";"],
            &["busybox", "sh", "-c", "echo {{ params.who }}"],
            &["python3", "-W", "ignore", "-c", "print('{{ params.who }}')"],
            &["python3", "-uc", "print('{{ params.who }}')"],
            &["perl", "-le", "print '{{ params.who }}'"],
            &["node", "-p", "'{{ params.who }}'"],
        ] {
            assert!(c.render_argv(&argv(code)).is_err(), "{code:?}");
        }
        // Arguments that are data: the value stays one argument, whatever it holds.
        let args = c.render_argv(&argv(&["sh", "-c", "echo \"$1\" {{ ds }}", "sh", "{{ params.evil }}"])).unwrap();
        assert_eq!(args, argv(&["sh", "-c", "echo \"$1\" 2026-11-22", "sh", "$(touch /tmp/pwned)"]));
        let args = c.render_argv(&argv(&["./extract.sh", "--who", "{{ params.evil }}"])).unwrap();
        assert_eq!(args[2], "$(touch /tmp/pwned)");
        assert_eq!(c.render_argv(&argv(&["sh", "script.sh", "{{ params.who }}"])).unwrap()[2], "world");
        let raw = c.render_argv(&argv(&["sh", "-c", "echo {{ params.who | raw }}"])).unwrap();
        assert_eq!(raw[2], "echo world", "raw from the DAG file is allowed as code");
    }
}
