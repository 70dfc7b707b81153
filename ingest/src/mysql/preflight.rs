//! Before a first capture (`weir init`): every reason a MySQL/MariaDB server cannot feed CDC yet,
//! each with the statement or `my.cnf` line that fixes it — binary logging, the binlog format,
//! row image and row metadata, the user's privileges, the replica server id, the tables to
//! capture. Unlike the source's own start-up check ([`super::stream::check`]), which stops at
//! the first problem, this lists them all.

use mysql_async::{Conn, prelude::Queryable};

use super::MysqlSourceConfig;

/// One thing to change on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub what: String,
    /// SQL that fixes it on the running server, if any.
    pub sql: Option<String>,
    /// The `[mysqld]` line of the server's configuration that keeps it fixed after a restart.
    pub config: Option<String>,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `@@version`.
    pub version: String,
    /// Whether the server is MariaDB.
    pub mariadb: bool,
    /// A replica server id nobody uses (the one asked for when it is free).
    pub server_id: u32,
    /// The tables the patterns match, as `db.table`.
    pub tables: Vec<String>,
    /// Everything to fix, in the order to fix it.
    pub problems: Vec<Problem>,
    /// What the check chose by itself (another server id), to tell the user.
    pub notes: Vec<String>,
}

fn variable(what: &str, name: &str, want: &str) -> Problem {
    Problem {
        what: what.to_string(),
        sql: Some(format!("SET GLOBAL {name} = '{want}';")),
        config: Some(format!("{name} = {want}")),
    }
}

/// Checks the server `conn` is connected to for the capture `config` describes (its tables, its
/// replica server id).
pub async fn check(conn: &mut Conn, config: &MysqlSourceConfig) -> Result<Report, mysql_async::Error> {
    type Variables = (Option<String>, String, String, Option<String>, u32, String);
    let (log_bin, format, row_image, row_metadata, own_id, version): Variables = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = 'BINLOG_ROW_METADATA'), \
             @@server_id, @@version",
        )
        .await?
        .unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let mut problems = binlog_problems(log_bin.as_deref(), &format, &row_image, row_metadata.as_deref(), &version);
    if let Some(p) = privileges(conn, mariadb).await? {
        problems.push(p);
    }
    let (server_id, clash) = free_server_id(conn, own_id, config.server_id).await;
    let notes = clash
        .map(|taken| format!("server_id {taken} is taken on this server (its own or a replica's): using {server_id}"))
        .into_iter()
        .collect();
    let tables = captured_tables(conn, config).await?;
    if tables.is_empty() {
        let include = &config.include_tables;
        problems.push(Problem {
            what: format!(
                "no table this user can see matches {}",
                if include.is_empty() { "(any pattern)".to_string() } else { include.join(", ") }
            ),
            sql: None,
            config: None,
        });
    }
    Ok(Report { version, mariadb, server_id, tables, problems, notes })
}

/// What the binlog variables lack for CDC: `log_bin` on, `binlog_format=ROW`,
/// `binlog_row_image=FULL`, `binlog_row_metadata=FULL`.
fn binlog_problems(
    log_bin: Option<&str>,
    format: &str,
    row_image: &str,
    row_metadata: Option<&str>,
    version: &str,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !matches!(log_bin, Some("1" | "ON")) {
        problems.push(Problem {
            what: "binary logging is off (log_bin); it can only be turned on at start-up".into(),
            sql: None,
            config: Some("log_bin = mysql-bin".into()),
        });
    }
    if !format.eq_ignore_ascii_case("ROW") {
        problems.push(variable(&format!("binlog_format is {format}, not ROW"), "binlog_format", "ROW"));
    }
    if !row_image.eq_ignore_ascii_case("FULL") {
        problems.push(variable(&format!("binlog_row_image is {row_image}, not FULL"), "binlog_row_image", "FULL"));
    }
    match row_metadata {
        Some(m) if m.eq_ignore_ascii_case("FULL") => {}
        Some(m) => {
            problems.push(variable(&format!("binlog_row_metadata is {m}, not FULL"), "binlog_row_metadata", "FULL"))
        }
        None => problems.push(Problem {
            what: format!("{version} has no binlog_row_metadata: Weir needs MySQL 8.0.1+ or MariaDB 10.5+"),
            sql: None,
            config: None,
        }),
    }
    problems
}

/// What the user lacks of SELECT, RELOAD (the snapshot's global read lock), REPLICATION SLAVE
/// (the binlog stream) and REPLICATION CLIENT (MariaDB: BINLOG MONITOR; listing binlogs).
async fn privileges(conn: &mut Conn, mariadb: bool) -> Result<Option<Problem>, mysql_async::Error> {
    let user: String = conn.query_first("SELECT CURRENT_USER()").await?.unwrap_or_default();
    let grants: Vec<String> = conn.query("SHOW GRANTS FOR CURRENT_USER()").await?;
    let global: String =
        grants.iter().filter(|g| g.contains(" ON *.* ")).map(|g| g.to_ascii_uppercase()).collect::<Vec<_>>().join(" ");
    let has = |p: &str| global.contains("ALL PRIVILEGES") || global.contains(p);
    let monitor = if mariadb { "BINLOG MONITOR" } else { "REPLICATION CLIENT" };
    let mut missing: Vec<&str> = ["SELECT", "RELOAD", "REPLICATION SLAVE"].into_iter().filter(|p| !has(p)).collect();
    // MariaDB 10.5 renamed REPLICATION CLIENT to BINLOG MONITOR and keeps the old name as an alias.
    if !has(monitor) && !has("REPLICATION CLIENT") && !has("SUPER") {
        missing.push(monitor);
    }
    if missing.is_empty() {
        return Ok(None);
    }
    let (name, host) = user.rsplit_once('@').unwrap_or((&user, "%"));
    Ok(Some(Problem {
        what: format!("{user} lacks {}", missing.join(", ")),
        sql: Some(format!("GRANT {} ON *.* TO '{name}'@'{host}';", missing.join(", "))),
        config: None,
    }))
}

/// `wanted` if neither the server nor a connected replica uses it, else the next free id above
/// it, with the id that was taken. The replica list needs a privilege the user may lack; then
/// only the server's own id is compared.
async fn free_server_id(conn: &mut Conn, own: u32, wanted: u32) -> (u32, Option<u32>) {
    let mut taken = vec![own];
    let hosts: Result<Vec<mysql_async::Row>, _> = conn.query("SHOW SLAVE HOSTS").await;
    for row in hosts.unwrap_or_default() {
        if let Some(Ok(id)) = row.get_opt::<u32, _>(0) {
            taken.push(id);
        }
    }
    if !taken.contains(&wanted) {
        return (wanted, None);
    }
    let free = (wanted..=u32::MAX).find(|id| !taken.contains(id)).unwrap_or(wanted);
    (free, Some(wanted))
}

/// The base tables the user can see that `config` captures.
async fn captured_tables(conn: &mut Conn, config: &MysqlSourceConfig) -> Result<Vec<String>, mysql_async::Error> {
    let all: Vec<(String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' \
             ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    Ok(all.into_iter().filter(|(db, t)| config.captures(db, t)).map(|(db, t)| format!("{db}.{t}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_binlog_setting_gets_its_fix() {
        let ok = binlog_problems(Some("ON"), "ROW", "FULL", Some("FULL"), "10.11.6-MariaDB");
        assert!(ok.is_empty(), "{ok:?}");
        let all = binlog_problems(Some("OFF"), "MIXED", "MINIMAL", Some("MINIMAL"), "10.11.6-MariaDB");
        let what: Vec<&str> = all.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(what.len(), 4, "{what:?}");
        assert!(
            what[0].contains("log_bin")
                && all[0].sql.is_none()
                && all[0].config.as_deref() == Some("log_bin = mysql-bin")
        );
        assert_eq!(all[1].sql.as_deref(), Some("SET GLOBAL binlog_format = 'ROW';"));
        assert_eq!(all[2].config.as_deref(), Some("binlog_row_image = FULL"));
        assert_eq!(all[3].sql.as_deref(), Some("SET GLOBAL binlog_row_metadata = 'FULL';"));
        let old = binlog_problems(Some("1"), "ROW", "FULL", None, "10.3.39-MariaDB");
        assert!(old[0].what.contains("MariaDB 10.5+"), "{old:?}");
    }
}
