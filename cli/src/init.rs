//! `weir init`: a starter project for one's own database. Checks the MySQL/MariaDB server first
//! (binary logging, row format, row image, row metadata, privileges, the replica server id, the
//! tables to capture) and prints each problem with the SQL or `my.cnf` line that fixes it; then
//! writes `weir.toml` (the source, its password left in the environment), a DAG, a pipeline and
//! an alert rule over the first captured table as starting points, and says what `weir up` will
//! do with them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use weir_ingest::mysql::{MysqlSourceConfig, connection, preflight};
use weir_lake::writer::table_name;

/// `weir init`.
#[derive(Args)]
pub struct InitArgs {
    /// The server to capture: `mysql://user[:password]@host:port` (TLS as in `weir.toml`:
    /// `?ssl-mode=VERIFY_IDENTITY&ssl-ca=…`). The password is used now and never written: put it
    /// in the environment variable `--password-env` names.
    #[arg(long)]
    mysql: String,
    /// Tables to capture: `db.table` patterns with `*` (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    tables: Vec<String>,
    /// Topic prefix (Debezium's `topic.prefix`): topics are `<prefix>.<db>.<table>`.
    #[arg(long, default_value = "weir")]
    prefix: String,
    /// The environment variable `weir up` reads the password from.
    #[arg(long, default_value = "WEIR_MYSQL_PASSWORD")]
    password_env: String,
    /// The replica server id to announce (another free one is chosen if it is taken).
    #[arg(long, default_value_t = 5400)]
    server_id: u32,
    /// Where to write the project.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Replace an existing weir.toml and starter files.
    #[arg(long)]
    force: bool,
}

/// Splits the password off a `mysql://` URL: (URL without it, password).
fn split_password(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let mut parsed = url::Url::parse(url).with_context(|| format!("--mysql {url:?} is not a URL"))?;
    anyhow::ensure!(parsed.scheme() == "mysql", "--mysql {url:?}: expected mysql://user[:password]@host:port");
    let password = parsed.password().map(|p| {
        url::form_urlencoded::parse(format!("p={p}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    });
    let _ = parsed.set_password(None);
    Ok((parsed.to_string(), password))
}

pub async fn run(args: InitArgs) -> anyhow::Result<()> {
    let (url, password) = split_password(&args.mysql)?;
    let mut source = MysqlSourceConfig::new("mysql", &url, &args.prefix);
    source.include_tables = args.tables.clone();
    source.server_id = args.server_id;
    if password.is_some() || std::env::var_os(&args.password_env).is_some() {
        source.password_env = Some(args.password_env.clone());
    }
    // Connect with the password given now; the configuration names only its variable.
    let mut now = source.clone();
    if password.is_some() {
        now.password_env = None;
        now.url = args.mysql.clone();
    }
    let opts = connection::opts(&now).map_err(|e| anyhow::anyhow!("--mysql: {e}"))?;
    println!("Checking {url} …");
    let mut conn = mysql_async::Conn::new(opts).await.with_context(|| format!("connecting to {url}"))?;
    let report = preflight::check(&mut conn, &source).await.context("checking the server")?;
    let _ = conn.disconnect().await;
    source.server_id = report.server_id;

    println!("  server   {}", report.version);
    match report.tables.len() {
        0 => println!("  tables   none"),
        n => println!("  tables   {n}: {}", abbreviate(&report.tables)),
    }
    if report.problems.is_empty() {
        println!("  ready    binary log, row format, row image, row metadata and privileges are as CDC needs them");
    }
    for note in &report.notes {
        println!("  note     {note}");
    }
    for (i, p) in report.problems.iter().enumerate() {
        println!("  problem {}: {}", i + 1, p.what);
        if let Some(sql) = &p.sql {
            println!("      fix now:          {sql}");
        }
        if let Some(line) = &p.config {
            println!("      and keep it, in the server's my.cnf under [mysqld]:  {line}");
        }
    }

    let written = write_project(&args.dir, &source, &report.tables, args.force)?;
    for path in &written {
        println!("  wrote    {}", path.display());
    }
    println!();
    if let Some(var) = &source.password_env {
        println!("  export {var}='…'        # the password; weir.toml names only the variable");
    }
    match args.dir == Path::new(".") {
        true => println!("  weir up"),
        false => println!("  cd {} && weir up", args.dir.display()),
    }
    if let Some(first) = report.tables.first() {
        let topic = topic(&args.prefix, first);
        let raw = table_name(&topic);
        println!(
            "  then: a snapshot of every captured table, then each change within a second; {raw} and {} \
             within the lake's flush interval (lake.flush_interval); the banner prints psql and console URLs;",
            raw.replacen("raw.", "current.", 1)
        );
        println!("        in a second terminal: weir topics list · weir consume {topic} --group look");
    }
    anyhow::ensure!(
        report.problems.is_empty(),
        "{} problem(s) on the server to fix before `weir up` (above)",
        report.problems.len()
    );
    Ok(())
}

/// The change-event topic of `db.table` under `prefix`.
fn topic(prefix: &str, db_table: &str) -> String {
    format!("{prefix}.{db_table}")
}

fn abbreviate(tables: &[String]) -> String {
    match tables.len() {
        0..=6 => tables.join(", "),
        n => format!("{} … and {} more", tables[..5].join(", "), n - 5),
    }
}

/// Writes `weir.toml` and starter files under `dir`; returns what it wrote. Refuses to replace
/// an existing `weir.toml` without `force`.
fn write_project(
    dir: &Path,
    source: &MysqlSourceConfig,
    tables: &[String],
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let config = dir.join("weir.toml");
    anyhow::ensure!(
        force || !config.exists(),
        "{} exists: pass --force to replace it (or --dir for a new project)",
        config.display()
    );
    let mut files = vec![(config, weir_toml(source)?)];
    if let Some(first) = tables.first() {
        let topic = topic(&source.topic_prefix, first);
        let raw = table_name(&topic);
        let name = raw.trim_start_matches("raw.").to_string();
        files.push((dir.join(format!("dags/{name}_daily.yaml")), dag(&name, &raw)));
        files.push((dir.join(format!("pipelines/{name}_changes.yaml")), pipeline(&topic)));
        files.push((dir.join(format!("alerts/{name}.yaml")), alert(&name)));
    }
    let mut written = Vec::new();
    for (path, text) in files {
        if path.exists() && !force && !path.ends_with("weir.toml") {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn weir_toml(source: &MysqlSourceConfig) -> anyhow::Result<String> {
    let mut table = toml::Table::new();
    let mut s = toml::Table::new();
    s.insert("kind".into(), "mysql".into());
    s.insert("name".into(), source.name.clone().into());
    s.insert("url".into(), source.url.clone().into());
    if let Some(var) = &source.password_env {
        s.insert("password_env".into(), var.clone().into());
    }
    s.insert("server_id".into(), i64::from(source.server_id).into());
    s.insert("topic_prefix".into(), source.topic_prefix.clone().into());
    s.insert(
        "include_tables".into(),
        toml::Value::Array(source.include_tables.iter().map(|t| t.clone().into()).collect()),
    );
    // Truncates too (Debezium skips them by default): current.* then empties with its source.
    s.insert("skipped_operations".into(), toml::Value::Array(Vec::new()));
    table.insert("sources".into(), toml::Value::Array(vec![toml::Value::Table(s)]));
    Ok(format!(
        "# Written by `weir init`; every other setting has its default (docs/configuration.md).\n\
         # Embedded by default: the bus, lake and metadata DB live under ./weir-data.\n\
         # TRUNCATE is captured too (skipped_operations = []): current.* empties with its source.\n\
         # The lake commits every 10 s here (its default is 30 s): raw.* and current.* follow that.\n\
         [lake]\nflush_interval = \"10s\"\n\n{}",
        toml::to_string(&table)?
    ))
}

fn dag(name: &str, raw: &str) -> String {
    format!(
        "# A starting point: the changes to {raw} per day and operation, into views.{name}_changes_daily.\n\
         # Edit the SQL (DataFusion) to build your own views from raw.* and current.* tables.\n\
         description: Daily changes to {raw}\n\
         schedule: \"@daily\"\n\
         start_date: {today}\n\
         catchup: false\n\
         tasks:\n\
         \x20 - id: changes\n\
         \x20   view: {name}_changes_daily\n\
         \x20   replace_where: \"day = '{{{{ ds }}}}'\"\n\
         \x20   sql: |\n\
         \x20     SELECT CAST('{{{{ ds }}}}' AS DATE) AS day, _op AS op, count(*) AS changes\n\
         \x20     FROM {raw}\n\
         \x20     WHERE to_timestamp_millis(_source_ts_ms) >= TIMESTAMP '{{{{ data_interval_start }}}}'\n\
         \x20       AND to_timestamp_millis(_source_ts_ms) < TIMESTAMP '{{{{ data_interval_end }}}}'\n\
         \x20     GROUP BY _op\n",
        today = chrono::Utc::now().format("%Y-%m-%d"),
    )
}

fn pipeline(topic: &str) -> String {
    format!(
        "# A starting point: changes to {topic} per operation (c, u, d) and minute, with running\n\
         # results every second; the rule in ../alerts watches it.\n\
         description: changes per operation and minute\n\
         source:\n\
         \x20 topic: {topic}\n\
         key: _op\n\
         window: {{tumbling: 1m}}\n\
         aggregates:\n\
         \x20 - {{name: changes, fn: count}}\n\
         watermark: {{max_out_of_orderness: 2s, idle_timeout: 5s}}\n\
         output: {{early_results: 1s}}\n"
    )
}

fn alert(name: &str) -> String {
    format!(
        "# A starting point: deletes on {name} beyond 1,000 a minute. Add a receiver (Alertmanager\n\
         # webhook, Slack, Jira) to be notified; firing alerts show in `weir up`'s status anyway.\n\
         rules:\n\
         \x20 - alert: ManyDeletes\n\
         \x20   pipeline: {name}_changes\n\
         \x20   expr: \"_op = 'd' AND changes > 1000\"\n\
         \x20   value: changes\n\
         \x20   labels: {{severity: warning}}\n\
         \x20   annotations:\n\
         \x20     summary: \"{{{{ $value }}}} deletes this minute\"\n\
         receivers: []\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_split_off_the_url() {
        let (url, password) = split_password("mysql://cdc:p%40ss@db:3306/?ssl-mode=REQUIRED").unwrap();
        assert_eq!(url, "mysql://cdc@db:3306/?ssl-mode=REQUIRED");
        assert_eq!(password.as_deref(), Some("p@ss"));
        let (url, password) = split_password("mysql://cdc@db:3306").unwrap();
        assert_eq!((url.as_str(), password), ("mysql://cdc@db:3306", None));
        assert!(split_password("postgres://x@y").is_err());
    }

    #[test]
    fn the_starter_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        let mut source = MysqlSourceConfig::new("mysql", "mysql://cdc@db:3306", "shop");
        source.include_tables = vec!["inv.*".into()];
        source.password_env = Some("WEIR_MYSQL_PASSWORD".into());
        let written = write_project(dir.path(), &source, &["inv.orders".into()], false).unwrap();
        assert_eq!(written.len(), 4);
        let config = crate::config::load(Some(&dir.path().join("weir.toml"))).unwrap();
        assert_eq!(config.sources.len(), 1);
        assert_eq!(config.sources[0].name(), "mysql");
        let (dags, errors) = weir_flow::dag::load_dir(&dir.path().join("dags"));
        assert!(errors.is_empty() && dags.len() == 1, "{errors:?}");
        let (pipelines, errors) = weir_stream::pipeline::load_dir(&dir.path().join("pipelines"));
        assert!(errors.is_empty() && pipelines.len() == 1, "{errors:?}");
        assert_eq!(pipelines[0].id, "shop_inv_orders_changes");
        let (alerts, errors) = weir_stream::alert::load_dir(&dir.path().join("alerts"));
        assert!(errors.is_empty() && alerts.rules.len() == 1, "{errors:?}");
        // A second init does not overwrite the configuration.
        let again = write_project(dir.path(), &source, &["inv.orders".into()], false).unwrap_err();
        assert!(again.to_string().contains("--force"), "{again}");
    }
}
