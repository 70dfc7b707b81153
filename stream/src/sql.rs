//! Pipelines written in SQL (`pipelines/*.sql`), parsed with DataFusion's SQL parser into the
//! same [`Pipeline`] a YAML file gives, so they run on the same windows, checkpoints and
//! exactly-once path. A mistake is reported at its line and column in the file.
//!
//! ```sql
//! CREATE PIPELINE payment_failures
//!   WATERMARK FOR _source_ts_ms AS _source_ts_ms - INTERVAL '2' SECOND
//!   WITH (allowed_lateness = '1m', idle_timeout = '5s', early_results = '1s')
//! AS SELECT merchant_id,
//!        COUNT(*) AS payments,
//!        SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,
//!        APPROX_PERCENTILE_CONT(amount, 0.95) AS p95_amount,
//!        APPROX_DISTINCT(id) AS customers
//! FROM "shop.shop.payments"
//! WHERE status <> 'pending'
//! GROUP BY merchant_id, TUMBLE(_source_ts_ms, INTERVAL '1' MINUTE)
//! ```
//!
//! - `GROUP BY` holds the key expressions and one window: `TUMBLE(time, size)`,
//!   `HOP(time, slide, size)` (as Flink writes it) or `SESSION(time, gap)`; `time` is the event
//!   time expression.
//! - The selected items are key expressions, or aggregates named with `AS`: `COUNT(*)`,
//!   `COUNT(x)`, `SUM`, `MIN`, `MAX`, `AVG`, `APPROX_DISTINCT(x)` (or `COUNT(DISTINCT x)`, also
//!   estimated) and `APPROX_PERCENTILE_CONT(x, q)`. Results always carry `window_start`,
//!   `window_end` and `final` too.
//! - `JOIN "topic" [FOR SYSTEM_TIME AS OF …] [AS] t ON <event column> = t.<key> [AND …]` (or `LEFT JOIN`)
//!   enriches each event with the current row of the table whose Debezium changelog `topic` is,
//!   or of a lake table (`JOIN current.shop_merchants t …`, `views.*` too) ([`crate::join`]); the table's columns are written `t.column` and added to the events under
//!   their own name (the source's may be qualified with its alias too).
//! - `WATERMARK FOR time AS time - INTERVAL …` sets the out-of-orderness; `WITH (…)` takes
//!   `format`, `ops`, `allowed_lateness`, `idle_timeout`, `early_results`, `output_topic` and
//!   `description`, as the YAML keys of the same names do.

use std::{ops::ControlFlow, path::Path, time::Duration};

use deltalake::datafusion::sql::sqlparser::{
    self,
    ast::{
        BinaryOperator, DateTimeField, DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
        GroupByExpr, JoinConstraint, JoinOperator, ObjectNamePart, SelectItem, SetExpr, Spanned, TableFactor, Value,
        visit_expressions_mut,
    },
    dialect::GenericDialect,
    parser::Parser,
    tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer},
};

use crate::pipeline::{
    self, AggFn, Aggregate, Format, IntervalJoin, Join, JoinKind, Pipeline, PipelineError, Source, TableRef, Watermark,
    Window,
};

/// A mistake at a place in the file.
struct Mistake {
    at: Location,
    reason: String,
}

fn mistake(at: impl Into<Location>, reason: impl Into<String>) -> Mistake {
    Mistake { at: at.into(), reason: reason.into() }
}

/// Reads and checks one SQL pipeline file.
pub fn load_file(path: &Path) -> Result<Pipeline, PipelineError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError {
        file: file.clone(),
        line: None,
        reason: format!("cannot read: {e}"),
    })?;
    parse(&text, path).map_err(|m| PipelineError {
        file: file.clone(),
        line: (m.at.line > 0).then_some(m.at.line as usize),
        reason: if m.at.line > 0 { format!("column {}: {}", m.at.column, m.reason) } else { m.reason },
    })
}

/// The header's tokens, meaningful ones only, each with where it is.
struct Tokens {
    tokens: Vec<TokenWithSpan>,
    next: usize,
}

impl Tokens {
    fn peek(&self) -> &TokenWithSpan {
        &self.tokens[self.next.min(self.tokens.len() - 1)]
    }

    fn take(&mut self) -> TokenWithSpan {
        let t = self.peek().clone();
        self.next += 1;
        t
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(&self.peek().token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    fn expect_word(&mut self, word: &str) -> Result<(), Mistake> {
        if self.is_word(word) {
            self.next += 1;
            Ok(())
        } else {
            Err(mistake(self.peek().span.start, format!("expected {word}, found {}", self.peek().token)))
        }
    }

    fn expect(&mut self, token: Token) -> Result<(), Mistake> {
        if self.peek().token == token {
            self.next += 1;
            Ok(())
        } else {
            Err(mistake(self.peek().span.start, format!("expected {token}, found {}", self.peek().token)))
        }
    }

    fn name(&mut self, what: &str) -> Result<(String, Location), Mistake> {
        let t = self.take();
        match t.token {
            Token::Word(w) => Ok((w.value, t.span.start)),
            other => Err(mistake(t.span.start, format!("expected {what}, found {other}"))),
        }
    }
}

fn parse(text: &str, path: &Path) -> Result<Pipeline, Mistake> {
    let dialect = GenericDialect {};
    let tokens =
        Tokenizer::new(&dialect, text).tokenize_with_location().map_err(|e| mistake(e.location, e.message.clone()))?;
    let tokens: Vec<TokenWithSpan> = tokens.into_iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).collect();
    let end = tokens.last().map(|t| t.span.end).unwrap_or(Location { line: 1, column: 1 });
    let mut h = Tokens { tokens, next: 0 };
    h.tokens.push(TokenWithSpan { token: Token::EOF, span: Span::new(end, end) });

    // CREATE PIPELINE <id> [WATERMARK FOR <time> AS <time> - INTERVAL …] [WITH (k = 'v', …)] AS
    h.expect_word("CREATE")?;
    h.expect_word("PIPELINE")?;
    let (id, id_at) = h.name("the pipeline's name")?;
    pipeline::check_id(&id).map_err(|e| mistake(id_at, format!("pipeline name {e}")))?;
    let mut watermark_for: Option<(String, Location)> = None;
    let mut watermark = Watermark::default();
    if h.is_word("WATERMARK") {
        h.next += 1;
        h.expect_word("FOR")?;
        let (column, at) = h.name("the event time column")?;
        h.expect_word("AS")?;
        let (again, again_at) = h.name("the event time column")?;
        if again != column {
            return Err(mistake(again_at, format!("the watermark is {column} minus an interval, not {again}")));
        }
        h.expect(Token::Minus)?;
        // The interval's tokens, up to WITH or AS, parsed as an expression.
        let start = h.next;
        while !(h.is_word("WITH") || h.is_word("AS") || h.peek().token == Token::EOF) {
            h.next += 1;
        }
        let expr = expression(&h.tokens[start..h.next], &dialect)?;
        watermark.max_out_of_orderness = interval(&expr)?;
        watermark_for = Some((column, at));
    }
    let mut options: Vec<(String, String, Location)> = Vec::new();
    if h.is_word("WITH") {
        h.next += 1;
        h.expect(Token::LParen)?;
        loop {
            let (key, at) = h.name("an option name")?;
            h.expect(Token::Eq)?;
            let value = h.take();
            let Token::SingleQuotedString(value) = value.token else {
                return Err(mistake(value.span.start, format!("option {key}: give its value in single quotes")));
            };
            options.push((key.to_ascii_lowercase(), value, at));
            if h.peek().token == Token::Comma {
                h.next += 1;
                continue;
            }
            h.expect(Token::RParen)?;
            break;
        }
    }
    h.expect_word("AS")?;
    let query_tokens = without_system_time(&h.tokens[h.next..])?;
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(query_tokens);
    let query = parser.parse_query().map_err(|e| parser_mistake(&e.to_string()))?;
    if parser.peek_token().token == Token::SemiColon {
        parser.next_token();
    }
    let trailing = parser.peek_token();
    if trailing.token != Token::EOF {
        return Err(mistake(trailing.span.start, format!("unexpected {} after the query", trailing.token)));
    }
    if let Some(with) = &query.with {
        return Err(mistake(with.span().start, "WITH queries are not supported in a pipeline"));
    }
    if let Some(order) = &query.order_by {
        return Err(mistake(order.span().start, "a pipeline's results have no order: remove ORDER BY"));
    }
    if let Some(limit) = &query.limit_clause {
        return Err(mistake(limit.span().start, "a pipeline has no LIMIT"));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(mistake(query.body.span().start, "a pipeline is one SELECT … FROM … GROUP BY …"));
    };
    if select.distinct.is_some() {
        return Err(mistake(select.span().start, "SELECT DISTINCT: group by the columns instead"));
    }
    if let Some(having) = &select.having {
        return Err(mistake(having.span().start, "HAVING: conditions on results belong in alert rules (alerts/)"));
    }

    // FROM: one topic, and the tables joined to it.
    let table = match select.from.as_slice() {
        [one] => one,
        [] => return Err(mistake(select.span().start, "FROM names the source topic")),
        [_, second, ..] => {
            return Err(mistake(second.span().start, "one source topic: add tables with JOIN … ON"));
        }
    };
    let (topic, names) = relation(&table.relation)?;
    let topic_at = table.relation.span().start;
    weir_bus::validate_topic_name(&topic).map_err(|e| mistake(topic_at, format!("source topic: {e}")))?;
    let mut joins: Vec<(Join, Vec<String>, Location)> = Vec::new();
    // The join that is an interval join, with its time bounds.
    let mut between: Option<(usize, Between)> = None;
    for j in &table.joins {
        let (joined, bounds) = join(j, &names)?;
        if let Some(b) = bounds {
            if between.is_some() {
                return Err(mistake(joined.2, "one interval join per pipeline"));
            }
            between = Some((joins.len(), b));
        }
        joins.push(joined);
    }
    // Qualified columns: the source's lose their qualifier, a table's are added to the events
    // under their own name.
    let mut select = select.as_ref().clone();
    let mut used: Vec<(Option<usize>, String, Location)> = Vec::new();
    let mut unqualify = |e: &mut Expr| {
        if let Expr::CompoundIdentifier(parts) = e
            && let [qualifier, column] = parts.as_slice()
        {
            let from = if names.contains(&qualifier.value) {
                None
            } else if let Some(i) = joins.iter().position(|(_, n, _)| n.contains(&qualifier.value)) {
                Some(i)
            } else {
                return ControlFlow::Break(mistake(
                    qualifier.span.start,
                    format!("{} is neither the source ({}) nor a joined table", qualifier.value, names.join(" or ")),
                ));
            };
            if !used.iter().any(|(f, c, _)| *f == from && *c == column.value) {
                used.push((from, column.value.clone(), column.span.start));
            }
            *e = Expr::Identifier(column.clone());
        }
        ControlFlow::Continue(())
    };
    for flow in [
        visit_expressions_mut(&mut select.projection, &mut unqualify),
        visit_expressions_mut(&mut select.selection, &mut unqualify),
        visit_expressions_mut(&mut select.group_by, &mut unqualify),
    ] {
        if let ControlFlow::Break(m) = flow {
            return Err(m);
        }
    }
    for (from, column, at) in &used {
        if from.is_some() && used.iter().any(|(f, c, _)| f != from && c == column) {
            return Err(mistake(*at, format!("{column} is a column of two sources: events get one of that name")));
        }
        if let Some(i) = from {
            joins[*i].0.columns.push((column.clone(), column.clone()));
        }
    }
    for (j, names, at) in &joins {
        if j.columns.is_empty() {
            return Err(mistake(
                *at,
                format!("nothing of {} is used: select or group by one of its columns", names[0]),
            ));
        }
    }
    let mut joins: Vec<Join> = joins.into_iter().map(|(j, ..)| j).collect();
    let between = between.map(|(i, b)| (joins.remove(i), b));
    pipeline::check_joins(&joins).map_err(|e| mistake(topic_at, e))?;

    // GROUP BY: keys and one window.
    let group = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs,
        _ => return Err(mistake(select.span().start, "GROUP BY the keys and TUMBLE, HOP or SESSION")),
    };
    let mut key: Vec<String> = Vec::new();
    let mut window: Option<(Window, String)> = None;
    for expr in group {
        match window_call(expr)? {
            Some(w) if window.is_some() => {
                let _ = w;
                return Err(mistake(expr.span().start, "one window per pipeline"));
            }
            Some(w) => window = Some(w),
            None => key.push(expr.to_string()),
        }
    }
    let Some((window, event_time)) = window else {
        return Err(mistake(
            select.span().start,
            "GROUP BY needs a window: TUMBLE(time, size), HOP(time, slide, size) or SESSION(time, gap)",
        ));
    };
    if let Some((column, at)) = watermark_for
        && column != event_time
    {
        return Err(mistake(at, format!("the watermark is FOR {column}, the window's time is {event_time}")));
    }

    // SELECT: keys and named aggregates.
    let mut aggregates: Vec<Aggregate> = Vec::new();
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(e) if key.contains(&e.to_string()) => {}
            SelectItem::UnnamedExpr(Expr::Identifier(i)) if pipeline::RESULT_COLUMNS.contains(&i.value.as_str()) => {}
            SelectItem::UnnamedExpr(e) if aggregate(e, "x")?.is_some() => {
                return Err(mistake(e.span().start, format!("name the aggregate: {e} AS <name>")));
            }
            SelectItem::UnnamedExpr(e) => {
                return Err(mistake(e.span().start, format!("{e} is neither a GROUP BY key nor an aggregate")));
            }
            SelectItem::ExprWithAlias { expr, alias } => match aggregate(expr, &alias.value)? {
                Some(a) => {
                    if aggregates.iter().any(|b| b.name == a.name) || key.contains(&a.name) {
                        return Err(mistake(alias.span.start, format!("{} is named twice", a.name)));
                    }
                    if pipeline::RESULT_COLUMNS.contains(&a.name.as_str()) {
                        return Err(mistake(alias.span.start, format!("{} is a reserved output column", a.name)));
                    }
                    aggregates.push(a);
                }
                None if key.contains(&expr.to_string()) => {
                    return Err(mistake(alias.span.start, "a key column keeps its name in the results: remove AS"));
                }
                None => {
                    return Err(mistake(
                        expr.span().start,
                        format!("{expr} is neither a GROUP BY key nor an aggregate"),
                    ));
                }
            },
            other => return Err(mistake(other.span().start, format!("{other}: select keys and aggregates"))),
        }
    }
    if aggregates.is_empty() {
        return Err(mistake(select.span().start, "select at least one aggregate"));
    }

    // WITH options.
    let mut source =
        Source { topic, format: Format::Debezium, fields: Default::default(), ops: pipeline::default_ops() };
    let mut description = String::new();
    let mut early_results = None;
    let mut output_topic = format!("weir.stream.{id}");
    let duration = |value: &str, key: &str, at: Location| {
        humantime::parse_duration(value).map_err(|e| mistake(at, format!("option {key} = {value:?}: {e}")))
    };
    for (key, value, at) in options {
        match key.as_str() {
            "format" => {
                source.format = match value.as_str() {
                    "debezium" => Format::Debezium,
                    "avro" => Format::Avro,
                    "json" => return Err(mistake(at, "a json source lists its fields: write it as a YAML pipeline")),
                    other => return Err(mistake(at, format!("format {other:?}: debezium or avro"))),
                }
            }
            "ops" => {
                source.ops = value.split(',').map(|o| o.trim().to_string()).collect();
                pipeline::check_ops(&source.ops).map_err(|e| mistake(at, format!("ops: {e}")))?;
            }
            "allowed_lateness" => watermark.allowed_lateness = duration(&value, &key, at)?,
            "idle_timeout" => watermark.idle_timeout = duration(&value, &key, at)?,
            "early_results" => early_results = Some(duration(&value, &key, at)?),
            "output_topic" => {
                weir_bus::validate_topic_name(&value).map_err(|e| mistake(at, format!("output_topic: {e}")))?;
                output_topic = value;
            }
            "description" => description = value,
            other => {
                return Err(mistake(
                    at,
                    format!(
                        "unknown option {other:?} (format, ops, allowed_lateness, idle_timeout, early_results, output_topic, description)"
                    ),
                ));
            }
        }
    }
    let interval = match between {
        None => None,
        Some((j, b)) => {
            if b.source_time != event_time {
                return Err(mistake(
                    b.at,
                    format!("the interval is measured from {}: the window's time is {event_time}", b.source_time),
                ));
            }
            let stream = Source { topic: j.table.name().to_string(), ..source.clone() };
            let (before, after) = (b.before, b.after);
            let join = IntervalJoin {
                stream,
                time: b.time,
                key: j.key,
                on: j.on,
                before,
                after,
                columns: j.columns,
                kind: j.kind,
            };
            pipeline::check_interval(&join, &joins).map_err(|e| mistake(b.at, e))?;
            Some(join)
        }
    };
    Ok(Pipeline {
        id,
        description,
        source,
        filter: select.selection.as_ref().map(|e| e.to_string()),
        key,
        event_time,
        window,
        aggregates,
        watermark,
        output_topic,
        early_results,
        joins,
        interval,
        file: path.to_path_buf(),
    })
}

/// The query's tokens without each `FOR SYSTEM_TIME AS OF <column>` (Flink's mark of a lookup
/// join, `<column>` its processing time, as `p.proc_time` or `PROCTIME()`), which the generic
/// dialect does not parse: a joined table is always read as it stands when the event is
/// processed.
fn without_system_time(tokens: &[TokenWithSpan]) -> Result<Vec<TokenWithSpan>, Mistake> {
    let word = |t: Option<&TokenWithSpan>, w: &str| matches!(t.map(|t| &t.token), Some(Token::Word(x)) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w));
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if !(word(tokens.get(i), "FOR")
            && word(tokens.get(i + 1), "SYSTEM_TIME")
            && word(tokens.get(i + 2), "AS")
            && word(tokens.get(i + 3), "OF"))
        {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        let at = tokens[i].span.start;
        i += 4;
        // A column, maybe qualified, or a call without arguments.
        if !matches!(tokens.get(i).map(|t| &t.token), Some(Token::Word(_))) {
            return Err(mistake(at, "FOR SYSTEM_TIME AS OF <processing time column>"));
        }
        i += 1;
        while matches!(tokens.get(i).map(|t| &t.token), Some(Token::Period))
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::Word(_)))
        {
            i += 2;
        }
        if matches!(tokens.get(i).map(|t| &t.token), Some(Token::LParen))
            && matches!(tokens.get(i + 1).map(|t| &t.token), Some(Token::RParen))
        {
            i += 2;
        }
    }
    Ok(out)
}

/// A relation's topic and the names its columns may be qualified with (its alias, else the
/// topic).
fn relation(factor: &TableFactor) -> Result<(String, Vec<String>), Mistake> {
    let TableFactor::Table { name, args: None, alias, .. } = factor else {
        return Err(mistake(factor.span().start, "FROM and JOIN name topics (as \"shop.shop.payments\")"));
    };
    let parts: Option<Vec<&str>> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i.value.as_str()),
            _ => None,
        })
        .collect();
    let topic = parts.map(|p| p.join(".")).ok_or_else(|| mistake(name.span().start, "FROM names a topic"))?;
    let names = match alias {
        Some(a) => vec![a.name.value.clone()],
        None => vec![topic.clone()],
    };
    Ok((topic, names))
}

/// An interval join's `t.time BETWEEN time - INTERVAL … AND time + INTERVAL …`.
struct Between {
    /// The joined stream's time column.
    time: String,
    /// The source's time column the bounds are measured from.
    source_time: String,
    before: Duration,
    after: Duration,
    at: Location,
}

/// A `JOIN "topic" [FOR SYSTEM_TIME AS OF …] [AS] t ON <event column> = t.<key>` (or `LEFT
/// JOIN`); the source's columns may be qualified with `source` names. Its columns are filled in
/// from what the query uses. With `AND t.time BETWEEN time - INTERVAL … AND time + INTERVAL …`
/// among the conditions, the topic is a stream to interval-join (and the bounds come back).
type Joined = ((Join, Vec<String>, Location), Option<Between>);

fn join(j: &sqlparser::ast::Join, source: &[String]) -> Result<Joined, Mistake> {
    let at = j.span().start;
    let (kind, constraint) = match &j.join_operator {
        JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
        JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
        _ => {
            return Err(mistake(
                at,
                "JOIN or LEFT JOIN a table: each event looks up its key in the table's current rows",
            ));
        }
    };
    let (name, names) = relation(&j.relation)?;
    let table = TableRef::parse(&name).map_err(|e| mistake(j.relation.span().start, format!("joined table: {e}")))?;
    let shape =
        "ON <event column> = <table>.<key> [AND …]: equalities between event columns and the table's key columns";
    let JoinConstraint::On(on) = constraint else {
        return Err(mistake(at, shape));
    };
    // The equalities of `a AND b AND …`, in order, and a BETWEEN among them.
    fn equalities<'e>(e: &'e Expr, out: &mut Vec<(&'e Expr, &'e Expr)>, between: &mut Vec<&'e Expr>) -> bool {
        match e {
            Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
                equalities(left, out, between) && equalities(right, out, between)
            }
            Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
                out.push((left, right));
                true
            }
            Expr::Between { negated: false, .. } => {
                between.push(e);
                true
            }
            Expr::Nested(inner) => equalities(inner, out, between),
            _ => false,
        }
    }
    let (mut pairs, mut betweens) = (Vec::new(), Vec::new());
    if !equalities(on, &mut pairs, &mut betweens) || betweens.len() > 1 {
        return Err(mistake(on.span().start, shape));
    }
    // Which side names the table: `t.key`; the other is the event's column, qualified or not.
    let side = |e: &Expr| -> Option<(bool, String)> {
        match e {
            Expr::Identifier(i) => Some((false, i.value.clone())),
            Expr::CompoundIdentifier(p) if p.len() == 2 && names.contains(&p[0].value) => {
                Some((true, p[1].value.clone()))
            }
            Expr::CompoundIdentifier(p) if p.len() == 2 && source.contains(&p[0].value) => {
                Some((false, p[1].value.clone()))
            }
            _ => None,
        }
    };
    let (mut key, mut on) = (Vec::new(), Vec::new());
    for (left, right) in pairs {
        match (side(left), side(right)) {
            (Some((true, k)), Some((false, o))) | (Some((false, o)), Some((true, k))) => {
                key.push(k);
                on.push(o);
            }
            _ => return Err(mistake(left.span().start, shape)),
        }
    }
    let bounds = match betweens.first() {
        None => None,
        Some(Expr::Between { expr, low, high, .. }) => {
            let b_at = expr.span().start;
            let interval_shape = "<joined>.<time> BETWEEN <time> [- INTERVAL …] AND <time> [+ INTERVAL …]";
            let Some((true, time)) = side(expr) else { return Err(mistake(b_at, interval_shape)) };
            // `time`, `time - INTERVAL …` or `time + INTERVAL …`: the source's time column and
            // the signed offset.
            let bound = |e: &Expr| -> Result<(String, i64), Mistake> {
                let (column, offset) = match e {
                    Expr::BinaryOp { left, op: op @ (BinaryOperator::Minus | BinaryOperator::Plus), right } => {
                        let d = interval(right)?.as_millis() as i64;
                        (left.as_ref(), if *op == BinaryOperator::Minus { -d } else { d })
                    }
                    other => (other, 0),
                };
                match side(column) {
                    Some((false, c)) => Ok((c, offset)),
                    _ => Err(mistake(e.span().start, interval_shape)),
                }
            };
            let ((low_time, low), (high_time, high)) = (bound(low)?, bound(high)?);
            if low_time != high_time || low > 0 || high < 0 {
                return Err(mistake(b_at, format!("{interval_shape}: the interval must contain <time>")));
            }
            let ms = |n: i64| Duration::from_millis(n.unsigned_abs());
            let (before, after) = (ms(low), ms(high));
            Some(Between { time, source_time: low_time, before, after, at: b_at })
        }
        Some(_) => unreachable!("only BETWEENs are collected"),
    };
    if bounds.is_some() && !matches!(table, TableRef::Changelog(_)) {
        return Err(mistake(j.relation.span().start, "an interval join joins a stream: a topic, not a lake table"));
    }
    Ok(((Join { table, key, on, columns: Vec::new(), kind }, names, at), bounds))
}

/// A parser error's message, with its place taken out of the text (`… at Line: 3, Column: 7`).
fn parser_mistake(message: &str) -> Mistake {
    let message = message.strip_prefix("sql parser error: ").unwrap_or(message);
    let place = message.rfind(" at Line: ").and_then(|i| {
        let (line, column) = message[i + 10..].split_once(", Column: ")?;
        Some((i, Location { line: line.trim().parse().ok()?, column: column.trim().parse().ok()? }))
    });
    match place {
        Some((i, at)) => mistake(at, &message[..i]),
        None => mistake(Location { line: 0, column: 0 }, message),
    }
}

fn expression(tokens: &[TokenWithSpan], dialect: &GenericDialect) -> Result<Expr, Mistake> {
    let mut parser = Parser::new(dialect).with_tokens_with_locations(tokens.to_vec());
    parser.parse_expr().map_err(|e| parser_mistake(&e.to_string()))
}

/// `INTERVAL '5' SECOND`, `INTERVAL '1' MINUTE`, `INTERVAL '30 seconds'`.
fn interval(e: &Expr) -> Result<Duration, Mistake> {
    let at = e.span().start;
    let Expr::Interval(i) = e else {
        return Err(mistake(at, format!("expected an INTERVAL, found {e}")));
    };
    let text = match i.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => return Err(mistake(at, format!("INTERVAL {other}: give a number"))),
        },
        other => return Err(mistake(at, format!("INTERVAL {other}: give a number"))),
    };
    let unit = match &i.leading_field {
        None => {
            return humantime::parse_duration(&text).map_err(|err| mistake(at, format!("INTERVAL '{text}': {err}")));
        }
        Some(DateTimeField::Millisecond | DateTimeField::Milliseconds) => 1,
        Some(DateTimeField::Second | DateTimeField::Seconds) => 1_000,
        Some(DateTimeField::Minute | DateTimeField::Minutes) => 60_000,
        Some(DateTimeField::Hour | DateTimeField::Hours) => 3_600_000,
        Some(DateTimeField::Day | DateTimeField::Days) => 86_400_000,
        Some(other) => {
            return Err(mistake(at, format!("INTERVAL … {other}: use MILLISECOND, SECOND, MINUTE, HOUR or DAY")));
        }
    };
    let n: u64 = text.trim().parse().map_err(|_| mistake(at, format!("INTERVAL '{text}': a whole number")))?;
    let d = Duration::from_millis(n * unit);
    if d.is_zero() {
        return Err(mistake(at, "an interval must be at least 1 ms"));
    }
    Ok(d)
}

/// A function call's name (upper case) and plain arguments.
fn call(e: &Expr) -> Option<(String, Option<DuplicateTreatment>, Vec<&FunctionArgExpr>)> {
    let Expr::Function(f) = e else { return None };
    let name = f.name.to_string().to_ascii_uppercase();
    let (distinct, args) = match &f.args {
        FunctionArguments::List(list) => (
            list.duplicate_treatment,
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(a) => Some(a),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
        ),
        FunctionArguments::None => (None, Vec::new()),
        FunctionArguments::Subquery(_) => return None,
    };
    Some((name, distinct, args))
}

/// The window a GROUP BY item declares, with its event-time expression; `None` for a key.
fn window_call(e: &Expr) -> Result<Option<(Window, String)>, Mistake> {
    let Some((name, _, args)) = call(e) else { return Ok(None) };
    let at = e.span().start;
    let exprs: Vec<&Expr> = args
        .iter()
        .map(|a| match a {
            FunctionArgExpr::Expr(e) => Ok(e),
            _ => Err(mistake(at, format!("{name}: arguments are expressions"))),
        })
        .collect::<Result<_, _>>()?;
    let (window, time) = match (name.as_str(), exprs.as_slice()) {
        ("TUMBLE", [time, size]) => (Window::Tumbling(interval(size)?), time),
        ("HOP", [time, slide, size]) => {
            let (slide, size) = (interval(slide)?, interval(size)?);
            pipeline::check_hop(size, slide).map_err(|e| mistake(at, format!("HOP(time, slide, size): {e}")))?;
            (Window::Hopping { size, slide }, time)
        }
        ("SESSION", [time, gap]) => (Window::Session { gap: interval(gap)? }, time),
        ("TUMBLE", _) => return Err(mistake(at, "TUMBLE(time, size)")),
        ("HOP", _) => return Err(mistake(at, "HOP(time, slide, size)")),
        ("SESSION", _) => return Err(mistake(at, "SESSION(time, gap)")),
        _ => return Ok(None),
    };
    Ok(Some((window, time.to_string())))
}

/// The aggregate an item computes, named `name`; `None` when it is not an aggregate call.
fn aggregate(e: &Expr, name: &str) -> Result<Option<Aggregate>, Mistake> {
    let Some((function, distinct, args)) = call(e) else { return Ok(None) };
    let at = e.span().start;
    let distinct = matches!(distinct, Some(DuplicateTreatment::Distinct));
    let one = |args: &[&FunctionArgExpr]| match args {
        [FunctionArgExpr::Expr(x)] => Ok(x.to_string()),
        _ => Err(mistake(at, format!("{function} takes one expression"))),
    };
    let (func, expr, q) = match function.as_str() {
        "COUNT" if distinct => (AggFn::CountDistinct, Some(one(&args)?), 0.0),
        "COUNT" => match args.as_slice() {
            [FunctionArgExpr::Wildcard] | [] => (AggFn::Count, None, 0.0),
            _ => (AggFn::Count, Some(one(&args)?), 0.0),
        },
        "APPROX_DISTINCT" => (AggFn::CountDistinct, Some(one(&args)?), 0.0),
        "SUM" | "MIN" | "MAX" | "AVG" if distinct => {
            return Err(mistake(at, format!("{function}(DISTINCT …) is not supported")));
        }
        "SUM" => (AggFn::Sum, Some(one(&args)?), 0.0),
        "MIN" => (AggFn::Min, Some(one(&args)?), 0.0),
        "MAX" => (AggFn::Max, Some(one(&args)?), 0.0),
        "AVG" => (AggFn::Avg, Some(one(&args)?), 0.0),
        "APPROX_PERCENTILE_CONT" => match args.as_slice() {
            [FunctionArgExpr::Expr(x), FunctionArgExpr::Expr(Expr::Value(v))] => {
                let q: f64 = match &v.value {
                    Value::Number(n, _) => n.parse().unwrap_or(f64::NAN),
                    _ => f64::NAN,
                };
                if !(q > 0.0 && q < 1.0) {
                    return Err(mistake(
                        v.span().start,
                        format!("APPROX_PERCENTILE_CONT: the quantile {v} is not in (0, 1)"),
                    ));
                }
                (AggFn::Percentile, Some(x.to_string()), q)
            }
            _ => return Err(mistake(at, "APPROX_PERCENTILE_CONT(expression, quantile)")),
        },
        _ => return Ok(None),
    };
    Ok(Some(Aggregate { name: name.to_string(), func, expr, q }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sql: &str) -> Result<Pipeline, PipelineError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.sql");
        std::fs::write(&path, sql).unwrap();
        load_file(&path)
    }

    const SQL: &str = "CREATE PIPELINE fails\n  WATERMARK FOR _source_ts_ms AS _source_ts_ms - INTERVAL '2' SECOND\n  \
        WITH (allowed_lateness = '30s', early_results = '1s')\nAS SELECT merchant_id, COUNT(*) AS n,\n  \
        APPROX_PERCENTILE_CONT(amount, 0.95) AS p95, COUNT(DISTINCT id) AS ids,\n  \
        SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed\nFROM \"shop.shop.payments\"\n\
        WHERE amount > 0\nGROUP BY merchant_id, HOP(_source_ts_ms, INTERVAL '1' MINUTE, INTERVAL '5' MINUTE);\n";

    #[test]
    fn sql_gives_the_pipeline_yaml_gives() {
        let p = load(SQL).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("fails.yaml");
        std::fs::write(
            &yaml,
            "source: {topic: shop.shop.payments}\nfilter: \"amount > 0\"\nkey: merchant_id\n\
             window: {hopping: {size: 5m, slide: 1m}}\naggregates:\n  - {name: n, fn: count}\n  \
             - {name: p95, fn: percentile, expr: amount, q: 0.95}\n  - {name: ids, fn: count_distinct, expr: id}\n  \
             - {name: failed, fn: sum, expr: \"CASE WHEN status = 'failed' THEN 1 ELSE 0 END\"}\n\
             watermark: {max_out_of_orderness: 2s, allowed_lateness: 30s}\noutput: {early_results: 1s}\n",
        )
        .unwrap();
        let from_yaml = pipeline::load_file(&yaml).unwrap();
        assert_eq!(Pipeline { file: from_yaml.file.clone(), ..p }, from_yaml);
    }

    #[test]
    fn an_interval_join_gives_the_pipeline_yaml_gives() {
        let p = load(
            "CREATE PIPELINE shipped AS\nSELECT s.carrier, COUNT(*) AS shipments, SUM(o.amount) AS amount\n\
             FROM \"shop.shop.orders\" o\n\
             JOIN \"shop.shop.shipments\" s ON s.order_id = o.id\n  \
             AND s._source_ts_ms BETWEEN o._source_ts_ms - INTERVAL '1' MINUTE AND o._source_ts_ms + INTERVAL '10' MINUTE\n\
             GROUP BY s.carrier, TUMBLE(o._source_ts_ms, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("shipped.yaml");
        std::fs::write(
            &yaml,
            "source: {topic: shop.shop.orders}\nkey: carrier\nwindow: {tumbling: 1m}\n\
             aggregates:\n  - {name: shipments, fn: count}\n  - {name: amount, fn: sum, expr: amount}\n\
             interval_join:\n  source: {topic: shop.shop.shipments}\n  key: order_id\n  on: id\n  \
             between: {before: 1m, after: 10m}\n  columns: [carrier]\n",
        )
        .unwrap();
        let from_yaml = pipeline::load_file(&yaml).unwrap();
        assert_eq!(Pipeline { file: from_yaml.file.clone(), ..p }, from_yaml);
        // From the event's time on: `BETWEEN time AND time + …`; a left join.
        let p = load(
            "CREATE PIPELINE t AS SELECT s.carrier, COUNT(*) AS n FROM \"a.b\" LEFT JOIN \"c.d\" s ON s.k = k \
             AND s.ts BETWEEN ts AND ts + INTERVAL '5' SECOND GROUP BY s.carrier, TUMBLE(ts, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        let i = p.interval.unwrap();
        assert_eq!(
            (i.before, i.after, i.kind, i.time.as_str()),
            (Duration::ZERO, Duration::from_secs(5), JoinKind::Left, "ts")
        );
        // Mistakes, at their place.
        let err = |sql: &str| load(sql).unwrap_err().to_string();
        let e = err(
            "CREATE PIPELINE t AS SELECT s.c, COUNT(*) AS n FROM \"a.b\"\nJOIN \"c.d\" s ON s.k = k AND s.ts BETWEEN other - INTERVAL '1' SECOND AND other\nGROUP BY s.c, TUMBLE(ts, INTERVAL '1' MINUTE)",
        );
        assert!(e.contains(":2:") && e.contains("the interval is measured from other: the window's time is ts"), "{e}");
        let e = err(
            "CREATE PIPELINE t AS SELECT s.c, COUNT(*) AS n FROM \"a.b\"\nJOIN \"c.d\" s ON s.k = k AND s.ts BETWEEN ts + INTERVAL '1' SECOND AND ts + INTERVAL '2' SECOND\nGROUP BY s.c, TUMBLE(ts, INTERVAL '1' MINUTE)",
        );
        assert!(e.contains(":2:") && e.contains("the interval must contain <time>"), "{e}");
        let e = err(
            "CREATE PIPELINE t AS SELECT s.c, COUNT(*) AS n FROM \"a.b\"\nJOIN current.x s ON s.k = k AND s.ts BETWEEN ts AND ts\nGROUP BY s.c, TUMBLE(ts, INTERVAL '1' MINUTE)",
        );
        assert!(e.contains("an interval join joins a stream"), "{e}");
    }

    #[test]
    fn joins_give_the_pipeline_yaml_gives() {
        let p = load(
            "CREATE PIPELINE by_city AS\nSELECT m.city, c.tier, COUNT(*) AS n, SUM(p.amount) AS amount\n\
             FROM \"shop.shop.payments\" AS p\n\
             JOIN \"shop.shop.merchants\" FOR SYSTEM_TIME AS OF p.proc_time AS m ON p.merchant_id = m.id\n\
             LEFT JOIN \"crm.crm.customers\" c ON c.id = customer_id\n\
             WHERE m.city <> 'Nowhere' AND p.status = 'paid'\n\
             GROUP BY m.city, c.tier, TUMBLE(p._source_ts_ms, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("by_city.yaml");
        std::fs::write(
            &yaml,
            "source: {topic: shop.shop.payments}\nfilter: \"city <> 'Nowhere' AND status = 'paid'\"\nkey: [city, tier]\n\
             window: {tumbling: 1m}\naggregates:\n  - {name: n, fn: count}\n  - {name: amount, fn: sum, expr: amount}\n\
             joins:\n  - {topic: shop.shop.merchants, key: id, on: merchant_id, columns: [city]}\n  \
             - {topic: crm.crm.customers, key: id, on: customer_id, columns: {tier: tier}, kind: left}\n",
        )
        .unwrap();
        let from_yaml = pipeline::load_file(&yaml).unwrap();
        assert_eq!(Pipeline { file: from_yaml.file.clone(), ..p }, from_yaml);
        assert_eq!(from_yaml.joins[1].kind, JoinKind::Left);
        // A lake table (a batch view) instead of a changelog.
        let p = load(
            "CREATE PIPELINE t AS SELECT v.tier, COUNT(*) AS n FROM \"a.b\" LEFT JOIN views.merchant_tiers v \
             ON merchant_id = v.merchant_id GROUP BY v.tier, TUMBLE(ts, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        assert_eq!(p.joins[0].table, TableRef::Lake("views.merchant_tiers".into()));
        // A composite key: one equality per key column, either way round.
        let p = load(
            "CREATE PIPELINE t AS SELECT r.label, COUNT(*) AS n FROM \"a.b\" p JOIN current.rates r \
             ON p.merchant_id = r.merchant AND (r.currency = p.currency) GROUP BY r.label, TUMBLE(ts, INTERVAL '1' MINUTE)",
        )
        .unwrap();
        assert_eq!(
            (p.joins[0].key.clone(), p.joins[0].on.clone()),
            (vec!["merchant".to_string(), "currency".into()], vec!["merchant_id".to_string(), "currency".into()])
        );
        let e = load(
            "CREATE PIPELINE t AS\nSELECT r.x, COUNT(*) AS n FROM \"a.b\"\nJOIN raw.shop_orders r ON k = r.id \
             GROUP BY r.x, TUMBLE(ts, INTERVAL '1' MINUTE)",
        )
        .unwrap_err();
        assert!(e.to_string().contains(":3: column 6: joined table: raw.shop_orders is a change log"), "{e}");
    }

    #[test]
    fn windows_and_options() {
        let p = load(
            "create pipeline s with (format = 'avro', ops = 'c, d', idle_timeout = '1m', output_topic = 'out.s')\n\
             as select count(*) as n from a.b.c group by user_id, session(_timestamp, interval '30 seconds')",
        )
        .unwrap();
        assert_eq!(p.window, Window::Session { gap: Duration::from_secs(30) });
        assert_eq!((p.source.topic.as_str(), p.source.format), ("a.b.c", Format::Avro));
        assert_eq!(p.source.ops, ["c", "d"]);
        assert_eq!(p.watermark.idle_timeout, Duration::from_secs(60));
        assert_eq!(p.watermark.max_out_of_orderness, Watermark::default().max_out_of_orderness);
        assert_eq!(
            (p.key, p.event_time, p.output_topic),
            (vec!["user_id".to_string()], "_timestamp".into(), "out.s".into())
        );
        let p =
            load("CREATE PIPELINE t AS SELECT MAX(v) AS top FROM \"x.y\" GROUP BY TUMBLE(ts, INTERVAL '10' SECOND)")
                .unwrap();
        assert_eq!(p.window, Window::Tumbling(Duration::from_secs(10)));
        assert!(p.key.is_empty());
    }

    #[test]
    fn mistakes_point_at_their_line_and_column() {
        let cases = [
            (
                "CREATE PIPELINE p AS\nSELECT COUNT(*) AS n FROM \"a.b\"\nGROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)\nHAVING n > 1",
                4,
                "alert rules",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT COUNT(*) FROM \"a.b\" GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                2,
                "name the aggregate",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT v, COUNT(*) AS n FROM \"a.b\"\nGROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)",
                2,
                "v is neither",
            ),
            ("CREATE PIPELINE p AS\nSELECT COUNT(*) AS n FROM \"a.b\" GROUP BY k", 2, "needs a window"),
            (
                "CREATE PIPELINE p AS\nSELECT COUNT(*) AS n\n  FROM \"a.b\" JOIN \"c.d\" ON x = y\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                3,
                "ON <event column> = <table>.<key>",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT m.city, COUNT(*) AS n FROM \"a.b\"\n  RIGHT JOIN \"c.d\" m ON k = m.id\nGROUP BY m.city, TUMBLE(ts, INTERVAL '1' MINUTE)",
                3,
                "JOIN or LEFT JOIN",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT x.city, COUNT(*) AS n FROM \"a.b\" JOIN \"c.d\" m ON k = m.id\nGROUP BY x.city, TUMBLE(ts, INTERVAL '1' MINUTE)",
                2,
                "x is neither the source (a.b) nor a joined table",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT COUNT(*) AS n FROM \"a.b\"\n  JOIN \"c.d\" m ON k = m.id\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                3,
                "nothing of m is used",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT p.id, m.id, COUNT(*) AS n FROM \"a.b\" p JOIN \"c.d\" m ON p.k = m.id\nGROUP BY p.id, m.id, TUMBLE(ts, INTERVAL '1' MINUTE)",
                2,
                "id is a column of two sources",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT COUNT(*) AS n FROM \"a.b\"\nGROUP BY HOP(ts, INTERVAL '2' MINUTE, INTERVAL '5' MINUTE)",
                3,
                "multiple of slide",
            ),
            (
                "CREATE PIPELINE p WITH (speed = 'fast') AS SELECT COUNT(*) AS n FROM \"a.b\" GROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                1,
                "unknown option \"speed\"",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT COUNT(*) AS n FROM \"a.b\"\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE) LIMIT",
                3,
                "Expected",
            ),
            (
                "CREATE PIPELINE p AS\nSELECT APPROX_PERCENTILE_CONT(v, 95) AS p FROM \"a.b\"\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                2,
                "not in (0, 1)",
            ),
            (
                "CREATE PIPELINE p WATERMARK FOR t AS t - INTERVAL '1' SECOND AS\nSELECT COUNT(*) AS n FROM \"a.b\"\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)",
                1,
                "the window's time is ts",
            ),
            ("CREATE TABLE p AS SELECT 1", 1, "expected PIPELINE"),
        ];
        let e = load("CREATE PIPELINE p AS\nSELECT COUNT(*) AS n FROM \"a.b\"\nGROUP BY TUMBLE(ts, INTERVAL '1' MINUTE)\nHAVING n > 1")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:4: column 8: HAVING: conditions on results belong in alert rules (alerts/)", e.file)
        );
        for (sql, line, want) in cases {
            let e = load(sql).unwrap_err();
            assert_eq!(e.line, Some(line), "{sql}: {e}");
            assert!(e.reason.contains(want), "{want:?} not in {e}");
            assert!(e.reason.starts_with("column "), "{e}");
        }
    }
}
