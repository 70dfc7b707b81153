//! Alert rules over pipeline results, with Prometheus semantics. A rule's `expr` (a SQL
//! expression over the result columns) is evaluated on every result row; each key of the
//! pipeline is its own series (labels: `alertname`, `pipeline`, the key columns and the rule's
//! labels). A series that turns true is `pending` until it has held for `for`, then `firing`;
//! when it turns false (or has no result for a whole window) it stays firing for
//! `keep_firing_for`, then `resolved`. Time is event time: the result's window end (or the
//! watermark, for an early result of a window still open).
//!
//! Every state change goes to `weir.alerts` (JSON); changes to firing and resolved are grouped by
//! the file's `group_by` labels and sent to the rule's receivers, unless a silence matches. A
//! receiver with `alertmanager:` also hands every alert to Prometheus Alertmanager, silenced
//! or not, resent while it fires and again after a restart (`weir_notify::alertmanager`), so
//! Alertmanager's routing, grouping, silences and inhibitions act on it; each alert links back to
//! the console's streams page when the file sets `external_url`.
//!
//! ```yaml
//! rules:
//!   - alert: PaymentFailuresHigh
//!     pipeline: payment_failures
//!     expr: "failed * 1.0 / payments > 0.2"
//!     value: "failed * 1.0 / payments"
//!     for: 1m
//!     labels: {severity: page}
//!     annotations: {summary: "{{ $value }} of payments failed at merchant {{ $labels.merchant_id }}"}
//! receivers:
//!   - {name: oncall, webhook: "http://127.0.0.1:9093/hook"}
//!   - {name: am, alertmanager: {urls: ["http://127.0.0.1:9093"], resend_every: 1m}}
//! group_by: [alertname]
//! external_url: "https://weir.example.com"
//! silences:
//!   - {matchers: {merchant_id: "7"}, ends_at: "2026-12-01T00:00:00Z", comment: "migration"}
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use deltalake::{
    arrow::{
        array::{Array, AsArray, RecordBatch},
        compute::cast,
        datatypes::{DataType, Float64Type, SchemaRef, TimestampMillisecondType},
        util::display::ArrayFormatter,
    },
    datafusion::{common::DFSchema, physical_plan::PhysicalExpr, prelude::SessionContext},
};
use serde::{Deserialize, Serialize};
use weir_bus::{Producer, Record};
use weir_notify::{Alert, Notification, Notifier, Receiver};

use crate::{
    engine::fmt_ms,
    pipeline::{Pipeline, PipelineError, Window},
    silence::{Matcher, Silence, Silences},
    sketch::stable_hash,
};

/// Label name → value.
type Labels = BTreeMap<String, String>;

/// The topic every alert state change goes to.
pub const ALERTS_TOPIC: &str = "weir.alerts";

/// A checked alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `alertname`.
    pub name: String,
    /// The pipeline whose results it watches.
    pub pipeline: String,
    /// Boolean SQL expression over the result columns.
    pub expr: String,
    /// Numeric SQL expression giving `$value` (default: none).
    pub value: Option<String>,
    /// How long the condition holds before the alert fires.
    pub for_: Duration,
    /// How long a firing alert stays firing after the condition clears.
    pub keep_firing_for: Duration,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates (`{{ $value }}`, `{{ $labels.<name> }}`).
    pub annotations: BTreeMap<String, String>,
    /// Receivers to notify (default: every receiver).
    pub receivers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    alert: String,
    pipeline: String,
    expr: String,
    value: Option<String>,
    #[serde(default, rename = "for", with = "humantime_serde")]
    for_: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    keep_firing_for: Option<Duration>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    receivers: Vec<String>,
}

/// A silence in an alert file: alerts whose labels match every matcher are not notified until
/// `ends_at` (the API's silences: [`crate::silence`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSilence {
    /// label → required value.
    matchers: BTreeMap<String, String>,
    /// RFC 3339 end.
    #[serde(with = "humantime_serde")]
    ends_at: SystemTime,
    /// Why.
    #[serde(default)]
    comment: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsFile {
    #[serde(default)]
    rules: Vec<RuleFile>,
    #[serde(default)]
    receivers: Vec<Receiver>,
    #[serde(default)]
    group_by: Option<Vec<String>>,
    #[serde(default)]
    silences: Vec<FileSilence>,
    #[serde(default)]
    external_url: Option<String>,
}

/// Everything the `alerts/` folder defines.
#[derive(Debug, Clone, Default)]
pub struct AlertConfig {
    /// The rules.
    pub rules: Vec<Rule>,
    /// The receivers.
    pub receivers: Vec<Arc<Receiver>>,
    /// Labels notifications are grouped by (default `alertname`).
    pub group_by: Vec<String>,
    /// The files' silences and those published through the API.
    pub silences: Arc<Silences>,
    /// Where Weir's console is for the people alerted (`external_url`): alerts link to its
    /// streams page.
    pub external_url: Option<String>,
}

/// Reads every `*.yaml` in `dir`; a bad file is reported and the others still load.
pub fn load_dir(dir: &Path) -> (AlertConfig, Vec<PipelineError>) {
    let mut config = AlertConfig { group_by: vec!["alertname".into()], ..AlertConfig::default() };
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(e) => {
            e.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml")).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (config, errors),
        Err(e) => {
            errors.push(PipelineError {
                file: dir.display().to_string(),
                line: None,
                reason: format!("cannot list: {e}"),
            });
            return (config, errors);
        }
    };
    files.sort();
    let mut silences = Vec::new();
    for path in files {
        let err = |line, reason| PipelineError { file: path.display().to_string(), line, reason };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(err(None, format!("cannot read: {e}")));
                continue;
            }
        };
        let f: AlertsFile = match serde_yaml_ng::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                errors.push(err(e.location().map(|l| l.line()), e.to_string()));
                continue;
            }
        };
        if let Some(g) = f.group_by {
            config.group_by = g;
        }
        if let Some(url) = f.external_url {
            config.external_url = Some(url);
        }
        silences.extend(f.silences.into_iter().enumerate().map(|(n, s)| {
            Silence {
                id: format!("file:{}#{n}", path.display()),
                matchers: s
                    .matchers
                    .into_iter()
                    .map(|(name, value)| Matcher { name, value, is_equal: true, is_regex: false })
                    .collect(),
                starts_at: SystemTime::UNIX_EPOCH,
                ends_at: s.ends_at,
                created_by: path.display().to_string(),
                comment: s.comment,
            }
        }));
        for r in f.receivers {
            match r.check() {
                Ok(()) => config.receivers.push(Arc::new(r)),
                Err(e) => errors.push(err(None, e)),
            }
        }
        for r in f.rules {
            config.rules.push(Rule {
                name: r.alert,
                pipeline: r.pipeline,
                expr: r.expr,
                value: r.value,
                for_: r.for_.unwrap_or_default(),
                keep_firing_for: r.keep_firing_for.unwrap_or_default(),
                labels: r.labels,
                annotations: r.annotations,
                receivers: r.receivers,
            });
        }
    }
    let known: Vec<String> = config.receivers.iter().map(|r| r.name.clone()).collect();
    config.rules.retain(|r| match r.receivers.iter().find(|n| !known.contains(n)) {
        Some(unknown) => {
            errors.push(PipelineError {
                file: dir.display().to_string(),
                line: None,
                reason: format!("rule {}: no receiver named {unknown:?}", r.name),
            });
            false
        }
        None => true,
    });
    config.silences = Arc::new(Silences::with_files(silences));
    (config, errors)
}

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not active (only reported when a pending alert clears).
    Inactive,
    /// True, waiting for `for`.
    Pending,
    /// Firing.
    Firing,
    /// Was firing, no longer.
    Resolved,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Instance {
    rule: usize,
    labels: BTreeMap<String, String>,
    state: State,
    active_at: i64,
    fired_at: Option<i64>,
    last_true: i64,
    /// End of the last window with a result for this series.
    last_end: i64,
    value: Option<f64>,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Rule name.
    pub alert: String,
    /// The new state.
    pub state: State,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Expanded annotations.
    pub annotations: BTreeMap<String, String>,
    /// `$value` at the change.
    pub value: Option<f64>,
    /// Event time of the evaluation (RFC 3339).
    pub evaluated_at: String,
    /// When the condition became true (RFC 3339).
    pub active_at: String,
    /// When it fired, if it did.
    pub fired_at: Option<String>,
    /// Stable identity (rule + labels).
    pub fingerprint: String,
    /// Whether a silence held back its notification.
    pub silenced: bool,
    #[serde(skip)]
    rule: usize,
}

struct CompiledRule {
    schema: SchemaRef,
    expr: Arc<dyn PhysicalExpr>,
    value: Option<Arc<dyn PhysicalExpr>>,
}

/// The rules over one pipeline's results and their alerts' states.
pub struct RuleSet {
    rules: Vec<Rule>,
    compiled: Vec<Option<CompiledRule>>,
    instances: HashMap<String, Instance>,
    /// How long a series may go without a result before it counts as false.
    staleness: i64,
    config: Arc<AlertConfig>,
    notifier: Option<Notifier>,
    key_columns: Vec<String>,
}

impl RuleSet {
    /// The rules of `config` over `pipeline`, whose key columns are `key_columns` and whose
    /// windows close every `staleness` (window size, hop or session gap).
    pub fn new(
        pipeline: &str,
        key_columns: Vec<String>,
        staleness: Duration,
        config: Arc<AlertConfig>,
        notifier: Option<Notifier>,
    ) -> RuleSet {
        let rules: Vec<Rule> = config.rules.iter().filter(|r| r.pipeline == pipeline).cloned().collect();
        RuleSet {
            compiled: rules.iter().map(|_| None).collect(),
            rules,
            instances: HashMap::new(),
            staleness: staleness.as_millis() as i64,
            config,
            notifier,
            key_columns,
        }
    }

    /// The rules of `config` over pipeline `p`'s results.
    pub fn for_pipeline(p: &Pipeline, config: Arc<AlertConfig>, notifier: Option<Notifier>) -> RuleSet {
        let staleness = match p.window {
            Window::Tumbling(size) => size,
            Window::Hopping { slide, .. } => slide,
            Window::Session { gap } => gap,
        };
        RuleSet::new(&p.id, p.key.clone(), staleness, config, notifier)
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// No rules.
    pub fn empty() -> RuleSet {
        RuleSet::new("", Vec::new(), Duration::ZERO, Arc::new(AlertConfig::default()), None)
    }

    /// The alerts' states, for a checkpoint.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::to_value(&self.instances).unwrap_or_default()
    }

    /// Restores states from a checkpoint (rules that no longer exist are dropped).
    pub fn restore(&mut self, v: serde_json::Value) {
        let instances: HashMap<String, Instance> = serde_json::from_value(v).unwrap_or_default();
        self.instances = instances.into_iter().filter(|(_, i)| i.rule < self.rules.len()).collect();
    }

    fn compile(&mut self, i: usize, schema: &SchemaRef) -> Result<(), String> {
        if self.compiled[i].as_ref().is_some_and(|c| &c.schema == schema) {
            return Ok(());
        }
        let rule = &self.rules[i];
        let ctx = SessionContext::new();
        let df = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let compile = |sql: &str| {
            ctx.parse_sql_expr(sql, &df)
                .and_then(|e| ctx.create_physical_expr(e, &df))
                .map_err(|e| format!("alert {}: {sql:?}: {e}", rule.name))
        };
        let expr = compile(&rule.expr)?;
        let value = rule.value.as_deref().map(compile).transpose()?;
        self.compiled[i] = Some(CompiledRule { schema: schema.clone(), expr, value });
        Ok(())
    }

    /// Evaluates every rule on a batch of results (see [`crate::engine`]) at watermark `wm`.
    pub fn on_results(&mut self, batch: &RecordBatch, wm: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.rules.is_empty() || batch.num_rows() == 0 {
            return changes;
        }
        let ends = batch.column_by_name("window_end").map(|c| c.as_primitive::<TimestampMillisecondType>().clone());
        let finals = batch.column_by_name("final").map(|c| c.as_boolean().clone());
        let (Some(ends), Some(finals)) = (ends, finals) else { return changes };
        let key_strings: Vec<Vec<String>> = self
            .key_columns
            .iter()
            .filter_map(|k| batch.column_by_name(k))
            .map(|c| {
                let f = ArrayFormatter::try_new(c.as_ref(), &Default::default()).expect("displayable");
                (0..batch.num_rows()).map(|i| f.value(i).to_string()).collect()
            })
            .collect();
        for r in 0..self.rules.len() {
            if let Err(e) = self.compile(r, &batch.schema()) {
                tracing::error!(error = %e, "alert rule does not compile; skipped");
                continue;
            }
            let c = self.compiled[r].as_ref().expect("compiled");
            let truth = match c.expr.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())) {
                Ok(a) if a.data_type() == &DataType::Boolean => a.as_boolean().clone(),
                Ok(a) => {
                    tracing::error!(alert = %self.rules[r].name, "expr gives {}, not a boolean", a.data_type());
                    continue;
                }
                Err(e) => {
                    tracing::error!(alert = %self.rules[r].name, error = %e, "expr failed");
                    continue;
                }
            };
            let values = c.value.as_ref().and_then(|v| {
                let a = v.evaluate(batch).and_then(|v| v.into_array(batch.num_rows())).ok()?;
                cast(&a, &DataType::Float64).ok().map(|a| a.as_primitive::<Float64Type>().clone())
            });
            for row in 0..batch.num_rows() {
                let end = ends.value(row);
                let t = if finals.value(row) { end } else { end.min(wm) };
                let mut labels = self.rules[r].labels.clone();
                labels.insert("alertname".into(), self.rules[r].name.clone());
                labels.insert("pipeline".into(), self.rules[r].pipeline.clone());
                for (k, strings) in self.key_columns.iter().zip(&key_strings) {
                    labels.insert(k.clone(), strings[row].clone());
                }
                let value = values.as_ref().and_then(|v| v.is_valid(row).then(|| v.value(row)));
                let is_true = truth.is_valid(row) && truth.value(row);
                self.observe(r, labels, is_true, value, t, end, &mut changes);
            }
        }
        changes
    }

    #[allow(clippy::too_many_arguments)]
    fn observe(
        &mut self,
        r: usize,
        labels: BTreeMap<String, String>,
        is_true: bool,
        value: Option<f64>,
        t: i64,
        end: i64,
        changes: &mut Vec<Change>,
    ) {
        let fp = fingerprint(&labels);
        let rule = &self.rules[r];
        let (for_, keep) = (rule.for_.as_millis() as i64, rule.keep_firing_for.as_millis() as i64);
        match (self.instances.get_mut(&fp), is_true) {
            (None, false) => {}
            (None, true) => {
                let state = if for_ == 0 { State::Firing } else { State::Pending };
                let i = Instance {
                    rule: r,
                    labels,
                    state,
                    active_at: t,
                    fired_at: (state == State::Firing).then_some(t),
                    last_true: t,
                    last_end: end,
                    value,
                };
                changes.push(self.change(&i, &fp, t));
                self.instances.insert(fp, i);
            }
            (Some(i), true) => {
                i.last_true = i.last_true.max(t);
                i.last_end = i.last_end.max(end);
                i.value = value;
                if i.state == State::Pending && t - i.active_at >= for_ {
                    i.state = State::Firing;
                    i.fired_at = Some(t);
                    let i = i.clone();
                    changes.push(self.change(&i, &fp, t));
                }
            }
            (Some(i), false) => {
                i.last_end = i.last_end.max(end);
                i.value = value;
                let i = i.clone();
                self.clear(&fp, i, t, keep, changes);
            }
        }
    }

    /// The condition is false for `i` at `t`: a pending alert goes inactive; a firing one
    /// resolves once `keep_firing_for` has passed since it was last true.
    fn clear(&mut self, fp: &str, mut i: Instance, t: i64, keep: i64, changes: &mut Vec<Change>) {
        match i.state {
            State::Pending => i.state = State::Inactive,
            State::Firing if t - i.last_true >= keep => i.state = State::Resolved,
            _ => return,
        }
        changes.push(self.change(&i, fp, t));
        self.instances.remove(fp);
    }

    /// Series without a result for a whole window count as false at watermark `wm`.
    pub fn on_watermark(&mut self, wm: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        if self.instances.is_empty() || self.staleness == 0 {
            return changes;
        }
        let stale: Vec<(String, Instance)> = self
            .instances
            .iter()
            .filter(|(_, i)| wm >= i.last_end + self.staleness)
            .map(|(fp, i)| (fp.clone(), i.clone()))
            .collect();
        for (fp, i) in stale {
            let keep = self.rules[i.rule].keep_firing_for.as_millis() as i64;
            self.clear(&fp, i, wm, keep, &mut changes);
        }
        changes
    }

    fn change(&self, i: &Instance, fp: &str, t: i64) -> Change {
        let rule = &self.rules[i.rule];
        Change {
            alert: rule.name.clone(),
            state: i.state,
            annotations: rule.annotations.iter().map(|(k, v)| (k.clone(), expand(v, &i.labels, i.value))).collect(),
            labels: i.labels.clone(),
            value: i.value,
            evaluated_at: fmt_ms(t),
            active_at: fmt_ms(i.active_at),
            fired_at: i.fired_at.map(fmt_ms),
            fingerprint: fp.to_string(),
            silenced: self.config.silences.silenced(&i.labels),
            rule: i.rule,
        }
    }

    /// Writes `changes` to `weir.alerts` and hands firing/resolved ones to the notifier,
    /// grouped per receiver and group-by labels.
    pub async fn publish(&self, changes: Vec<Change>, producer: &dyn Producer) -> Result<(), weir_bus::BusError> {
        if changes.is_empty() {
            return Ok(());
        }
        let records = changes
            .iter()
            .map(|c| Record {
                key: Some(c.fingerprint.clone().into_bytes().into()),
                value: Some(serde_json::to_vec(c).expect("JSON").into()),
                ..Record::default()
            })
            .collect();
        producer.send(ALERTS_TOPIC, records).await?;
        for c in &changes {
            tracing::info!(alert = %c.alert, state = ?c.state, labels = ?c.labels, value = ?c.value, silenced = c.silenced, "alert");
            metrics::counter!("weir_stream_alert_changes_total", "alert" => c.alert.clone(), "state" => format!("{:?}", c.state).to_lowercase()).increment(1);
        }
        let Some(notifier) = &self.notifier else { return Ok(()) };
        // An alert that changes twice in one batch (fired and resolved) is notified twice, in
        // order: the n-th change of an alert goes out in the n-th round.
        let mut rounds: Vec<BTreeMap<(String, Labels), Vec<Alert>>> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        // Silenced ones too: the notifier keeps them from all but Alertmanagers.
        for c in changes.iter().filter(|c| matches!(c.state, State::Firing | State::Resolved)) {
            let round = seen.entry(c.fingerprint.as_str()).or_default();
            if rounds.len() <= *round {
                rounds.push(BTreeMap::new());
            }
            let groups = &mut rounds[*round];
            *round += 1;
            self.group(c, groups, |_| true);
        }
        for ((name, group_labels), alerts) in rounds.into_iter().flatten() {
            notifier.send(Notification { receiver: self.receiver(&name), group_labels, alerts, ongoing: true });
        }
        Ok(())
    }

    /// Hands the alerts firing in a restored checkpoint to the Alertmanager receivers, which
    /// hold and resend what fires (an Alertmanager that restarted meanwhile knows nothing of
    /// them); the other receivers were notified when they fired.
    pub fn announce_restored(&self) {
        let Some(notifier) = &self.notifier else { return };
        let mut groups = BTreeMap::new();
        for (fp, i) in self.instances.iter().filter(|(_, i)| i.state == State::Firing) {
            let c = self.change(i, fp, i.last_true);
            self.group(&c, &mut groups, |r| r.alertmanager.is_some());
        }
        for ((name, group_labels), alerts) in groups {
            notifier.restored(Notification { receiver: self.receiver(&name), group_labels, alerts, ongoing: true });
        }
    }

    /// Adds the alert of change `c` to `groups`, by receiver (of its rule's, those `wanted`) and
    /// group-by labels.
    fn group(
        &self,
        c: &Change,
        groups: &mut BTreeMap<(String, Labels), Vec<Alert>>,
        wanted: impl Fn(&Receiver) -> bool,
    ) {
        let rule = &self.rules[c.rule];
        let group: Labels =
            self.config.group_by.iter().filter_map(|l| c.labels.get(l).map(|v| (l.clone(), v.clone()))).collect();
        let alert = Alert {
            status: if c.state == State::Firing { "firing".into() } else { "resolved".into() },
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            // As Prometheus sends it: since when it fires (not since when it was pending).
            starts_at: c.fired_at.clone().unwrap_or_else(|| c.active_at.clone()),
            ends_at: if c.state == State::Resolved { c.evaluated_at.clone() } else { "0001-01-01T00:00:00Z".into() },
            fingerprint: c.fingerprint.clone(),
            generator_url: self
                .config
                .external_url
                .as_ref()
                .map(|u| format!("{}/#/streams", u.trim_end_matches('/')))
                .unwrap_or_default(),
            silenced: c.silenced,
        };
        for receiver in self
            .config
            .receivers
            .iter()
            .filter(|x| (rule.receivers.is_empty() || rule.receivers.contains(&x.name)) && wanted(x))
        {
            groups.entry((receiver.name.clone(), group.clone())).or_default().push(alert.clone());
        }
    }

    fn receiver(&self, name: &str) -> Arc<Receiver> {
        self.config.receivers.iter().find(|r| r.name == name).expect("grouped by a known receiver").clone()
    }
}

fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let text: String = labels.iter().map(|(k, v)| format!("{k}\u{1}{v}\u{2}")).collect();
    format!("{:016x}", stable_hash(text.as_bytes()))
}

/// Expands `{{ $value }}` and `{{ $labels.<name> }}` in an annotation.
fn expand(template: &str, labels: &BTreeMap<String, String>, value: Option<f64>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let expr = rest[open + 2..open + close].trim();
        let (name, function) = match expr.split_once('|') {
            Some((n, f)) => (n.trim(), Some(f.trim())),
            None => (expr, None),
        };
        match name {
            "$value" => out.push_str(&value.map(|v| humanize(v, function)).unwrap_or_default()),
            _ => match name.strip_prefix("$labels.") {
                Some(l) => out.push_str(labels.get(l).map(String::as_str).unwrap_or_default()),
                None => out.push_str(&rest[open..open + close + 2]),
            },
        }
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    out
}

/// A value as a person reads it: four significant digits (`0.2037`, `1234`), or, with
/// Prometheus's `humanizePercentage`, a percentage (`20.37 %`).
fn humanize(v: f64, function: Option<&str>) -> String {
    let (v, unit) = match function {
        Some("humanizePercentage") => (v * 100.0, " %"),
        _ => (v, ""),
    };
    if !v.is_finite() || v == 0.0 {
        return format!("{v}{unit}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let text = format!("{v:.digits$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}{unit}")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn values_read_as_a_person_would() {
        use super::humanize;
        assert_eq!(humanize(0.2037037037037037, None), "0.2037");
        assert_eq!(humanize(0.2037037037037037, Some("humanizePercentage")), "20.37 %");
        assert_eq!(humanize(0.5, Some("humanizePercentage")), "50 %");
        assert_eq!(humanize(1234.5678, None), "1235");
        assert_eq!(humanize(3.0, None), "3");
        assert_eq!(humanize(0.0, None), "0");
        assert_eq!(humanize(-0.00012346, None), "-0.0001235");
    }

    use deltalake::arrow::{
        array::{BooleanArray, Float64Array, Int64Array, TimestampMillisecondArray},
        datatypes::{Field, Schema, TimeUnit},
    };

    use super::*;

    fn rule(for_: u64, keep: u64) -> Arc<AlertConfig> {
        Arc::new(AlertConfig {
            rules: vec![Rule {
                name: "High".into(),
                pipeline: "p".into(),
                expr: "rate > 0.5".into(),
                value: Some("rate".into()),
                for_: Duration::from_secs(for_),
                keep_firing_for: Duration::from_secs(keep),
                labels: [("severity".to_string(), "page".to_string())].into(),
                annotations: [("summary".to_string(), "{{ $labels.m }} at {{ $value }}".to_string())].into(),
                receivers: vec![],
            }],
            group_by: vec!["alertname".into()],
            ..AlertConfig::default()
        })
    }

    /// One final result per key for the window ending at `end` seconds.
    fn results(end: i64, rows: &[(i64, f64)]) -> RecordBatch {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let schema = Schema::new(vec![
            Field::new("m", DataType::Int64, true),
            Field::new("window_end", ts, false),
            Field::new("final", DataType::Boolean, false),
            Field::new("rate", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMillisecondArray::from_iter_values(rows.iter().map(|_| end * 1000)).with_timezone("UTC"),
                ),
                Arc::new(BooleanArray::from(vec![true; rows.len()])),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    fn states(changes: &[Change]) -> Vec<(String, State)> {
        changes.iter().map(|c| (c.labels["m"].clone(), c.state)).collect()
    }

    #[test]
    fn pending_then_firing_then_resolved() {
        let mut s = RuleSet::new("p", vec!["m".into()], Duration::from_secs(60), rule(120, 0), None);
        let c = s.on_results(&results(60, &[(1, 0.9), (2, 0.1)]), 60_000);
        assert_eq!(states(&c), vec![("1".into(), State::Pending)]);
        assert_eq!(c[0].annotations["summary"], "1 at 0.9");
        assert_eq!(c[0].labels["severity"], "page");
        assert_eq!(c[0].labels["alertname"], "High");
        assert!(states(&s.on_results(&results(120, &[(1, 0.8)]), 120_000)).is_empty(), "60 s < for");
        let c = s.on_results(&results(180, &[(1, 0.7)]), 180_000);
        assert_eq!(states(&c), vec![("1".into(), State::Firing)]);
        assert_eq!(c[0].fired_at.as_deref(), Some("1970-01-01T00:03:00.000Z"));
        let c = s.on_results(&results(240, &[(1, 0.2)]), 240_000);
        assert_eq!(states(&c), vec![("1".into(), State::Resolved)]);
        assert!(s.instances.is_empty());
    }

    #[test]
    fn a_pending_alert_that_clears_goes_inactive() {
        let mut s = RuleSet::new("p", vec!["m".into()], Duration::from_secs(60), rule(120, 0), None);
        s.on_results(&results(60, &[(1, 0.9)]), 60_000);
        let c = s.on_results(&results(120, &[(1, 0.1)]), 120_000);
        assert_eq!(states(&c), vec![("1".into(), State::Inactive)]);
    }

    #[test]
    fn keep_firing_for_and_missing_results() {
        let mut s = RuleSet::new("p", vec!["m".into()], Duration::from_secs(60), rule(0, 120), None);
        let c = s.on_results(&results(60, &[(1, 0.9)]), 60_000);
        assert_eq!(states(&c), vec![("1".into(), State::Firing)], "for: 0 fires at once");
        // False 60 s after it was last true: keep_firing_for (120 s) holds it.
        assert!(s.on_results(&results(120, &[(1, 0.1)]), 120_000).is_empty());
        // No result at all for the series; at 180 s it was last true 120 s ago: resolved.
        let c = s.on_watermark(180_000);
        assert_eq!(states(&c), vec![("1".into(), State::Resolved)]);
    }

    #[test]
    fn state_survives_a_checkpoint_and_silences_hold_notifications() {
        let mut config = (*rule(0, 0)).clone();
        config.silences = Arc::new(Silences::default());
        config.silences.apply(Silence {
            id: "s".into(),
            matchers: vec![Matcher { name: "m".into(), value: "2".into(), is_equal: true, is_regex: false }],
            starts_at: SystemTime::now(),
            ends_at: SystemTime::now() + Duration::from_secs(3600),
            created_by: String::new(),
            comment: String::new(),
        });
        let config = Arc::new(config);
        let mut s = RuleSet::new("p", vec!["m".into()], Duration::from_secs(60), config.clone(), None);
        let c = s.on_results(&results(60, &[(1, 0.9), (2, 0.9)]), 60_000);
        assert_eq!(c.iter().map(|c| c.silenced).collect::<Vec<_>>(), vec![false, true]);
        let mut back = RuleSet::new("p", vec!["m".into()], Duration::from_secs(60), config, None);
        back.restore(s.snapshot());
        assert!(back.on_results(&results(120, &[(1, 0.9), (2, 0.9)]), 120_000).is_empty(), "still firing");
        assert_eq!(back.on_results(&results(180, &[(1, 0.0), (2, 0.0)]), 180_000).len(), 2);
    }

    #[test]
    fn templates_expand_known_names_only() {
        let labels = [("m".to_string(), "7".to_string())].into();
        assert_eq!(expand("m={{ $labels.m }} v={{$value}} {{ other }}", &labels, Some(0.5)), "m=7 v=0.5 {{ other }}");
        assert_eq!(expand("open {{ end", &labels, None), "open {{ end");
    }
}
