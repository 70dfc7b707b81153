//! `{{ name }}` templating of SQL, command arguments and environment values with a run's
//! context: `ds`, `ds_nodash`, `ts`, `logical_date`, `data_interval_start`, `data_interval_end`,
//! `run_id`, `dag_id`, `task_id`, `try_number` and `params.<key>` (the DAG's params, overridden by
//! a manual run's conf). An unknown name is an error that names it; `{{{{` writes `{{`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

/// The values a task's templates can use.
#[derive(Debug, Clone, Default)]
pub struct Context {
    vars: BTreeMap<String, String>,
}

impl Context {
    /// The context of one try of a task.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        try_number: u32,
        logical_date: DateTime<Utc>,
        interval: (DateTime<Utc>, DateTime<Utc>),
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Context {
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut vars = BTreeMap::new();
        vars.insert("ds".into(), logical_date.format("%Y-%m-%d").to_string());
        vars.insert("ds_nodash".into(), logical_date.format("%Y%m%d").to_string());
        vars.insert("ts".into(), ts(logical_date));
        vars.insert("logical_date".into(), ts(logical_date));
        vars.insert("data_interval_start".into(), ts(interval.0));
        vars.insert("data_interval_end".into(), ts(interval.1));
        vars.insert("run_id".into(), run_id.into());
        vars.insert("dag_id".into(), dag_id.into());
        vars.insert("task_id".into(), task_id.into());
        vars.insert("try_number".into(), try_number.to_string());
        for (k, v) in params {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vars.insert(format!("params.{k}"), text);
        }
        Context { vars }
    }

    /// The variables as environment variables for scripts: `WEIR_DS`, `WEIR_RUN_ID`,
    /// `WEIR_PARAM_<KEY>`…
    pub fn env(&self) -> Vec<(String, String)> {
        self.vars
            .iter()
            .map(|(k, v)| {
                let name = match k.strip_prefix("params.") {
                    Some(p) => format!("WEIR_PARAM_{}", p.to_ascii_uppercase()),
                    None => format!("WEIR_{}", k.to_ascii_uppercase()),
                };
                (name, v.clone())
            })
            .collect()
    }

    /// Renders `text`.
    pub fn render(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            if let Some(stripped) = after.strip_prefix("{{") {
                out.push_str("{{");
                rest = stripped;
                continue;
            }
            let end = after.find("}}").ok_or_else(|| format!("unclosed {{{{ in {text:?}"))?;
            let name = after[..end].trim();
            let value = self.vars.get(name).ok_or_else(|| {
                let known: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                format!("unknown template variable {name:?} (known: {})", known.join(", "))
            })?;
            out.push_str(value);
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dates_params_and_names_unknown_variables() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let mut params = serde_json::Map::new();
        params.insert("region".into(), "eu".into());
        params.insert("limit".into(), 10.into());
        let c = Context::new(
            "d",
            "scheduled__2026-11-22",
            "t",
            2,
            t("2026-11-22T00:00:00Z"),
            (t("2026-11-22T00:00:00Z"), t("2026-11-23T00:00:00Z")),
            &params,
        );
        let sql = "SELECT * FROM x WHERE day = '{{ ds }}' AND ts < '{{data_interval_end}}' AND r = '{{ params.region }}' LIMIT {{ params.limit }} -- {{{{";
        assert_eq!(
            c.render(sql).unwrap(),
            "SELECT * FROM x WHERE day = '2026-11-22' AND ts < '2026-11-23T00:00:00Z' AND r = 'eu' LIMIT 10 -- {{"
        );
        assert!(c.render("{{ dss }}").unwrap_err().contains("\"dss\""));
        assert!(c.render("{{ ds ").unwrap_err().contains("unclosed"));
        assert!(c.env().contains(&("WEIR_PARAM_REGION".into(), "eu".into())));
        assert!(c.env().contains(&("WEIR_TRY_NUMBER".into(), "2".into())));
    }
}
