//! Opening the replication stream and reading what `mysql_common` leaves to us: MariaDB's own
//! events (GTID, GTID list, annotate-rows), which it does not parse.
//!
//! MariaDB sends its GTID events only to a replica that announces capability 4
//! (`@mariadb_slave_capability`); the stream asks for heartbeats so a quiet binlog still shows the
//! source is alive and how far it is.

use std::time::Duration;

use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, prelude::Queryable};

/// MariaDB `ANNOTATE_ROWS_EVENT`: the statement behind the following rows events.
pub const MARIADB_ANNOTATE_ROWS: u8 = 0xa0;
/// MariaDB `GTID_EVENT`: starts a transaction (or a standalone DDL).
pub const MARIADB_GTID: u8 = 0xa2;
/// MariaDB `GTID_LIST_EVENT`: the GTID state at the start of a binlog file.
pub const MARIADB_GTID_LIST: u8 = 0xa3;

/// Flag of a MariaDB GTID event: the transaction is one statement with no `BEGIN`/`COMMIT`.
const FL_STANDALONE: u8 = 1;

/// A decoded MariaDB GTID event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MariadbGtid {
    /// `domain-server-sequence`.
    pub gtid: String,
    /// A single statement (DDL) without `BEGIN`/`COMMIT`.
    pub standalone: bool,
}

/// Parses a MariaDB GTID event's body (`seq_no` u64, `domain_id` u32, flags u8, …); the server
/// id comes from the event header.
pub fn mariadb_gtid(data: &[u8], server_id: u32) -> Option<MariadbGtid> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some(MariadbGtid { gtid: format!("{domain}-{server_id}-{seq}"), standalone: flags & FL_STANDALONE != 0 })
}

/// Parses a MariaDB GTID list event: `count` (low 28 bits) then `(domain u32, server u32, seq u64)`.
pub fn mariadb_gtid_list(data: &[u8]) -> Option<Vec<String>> {
    let count = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) & 0x0fff_ffff;
    (0..count as usize)
        .map(|i| {
            let e = data.get(4 + i * 16..4 + (i + 1) * 16)?;
            let domain = u32::from_le_bytes(e[0..4].try_into().ok()?);
            let server = u32::from_le_bytes(e[4..8].try_into().ok()?);
            let seq = u64::from_le_bytes(e[8..16].try_into().ok()?);
            Some(format!("{domain}-{server}-{seq}"))
        })
        .collect()
}

/// The binlog file name of a rotate event. The rotate event the server sends first comes before
/// the format description, so the reader does not yet know events carry a checksum and leaves its
/// four bytes on the name: `before_fde` with checksums on strips them.
pub fn rotate_name(raw: &[u8], before_fde: bool, checksums: bool) -> String {
    let raw = if before_fde && checksums { &raw[..raw.len().saturating_sub(4)] } else { raw };
    String::from_utf8_lossy(raw).into_owned()
}

/// What the server is and how its binlog is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// MariaDB rather than MySQL.
    pub mariadb: bool,
    /// `@@server_id`.
    pub server_id: u32,
    /// `@@version`.
    pub version: String,
    /// Events carry a checksum (`binlog_checksum` is not `NONE`).
    pub checksums: bool,
}

/// Connects (with the session in UTC, so `TIMESTAMP` values read as UTC).
pub async fn connect(opts: &Opts) -> Result<Conn, mysql_async::Error> {
    let mut conn = Conn::new(opts.clone()).await?;
    conn.query_drop("SET SESSION time_zone = '+00:00'").await?;
    Ok(conn)
}

/// The server variables that decide whether it can feed CDC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogSettings {
    /// `@@log_bin` (`1`/`ON` when on).
    pub log_bin: Option<String>,
    /// `@@binlog_format`.
    pub format: String,
    /// `@@binlog_row_image`.
    pub row_image: String,
    /// `binlog_row_metadata` (absent on servers without it).
    pub row_metadata: Option<String>,
    /// `@@server_id`.
    pub server_id: u32,
    /// `@@version`.
    pub version: String,
    /// `@@global.binlog_checksum`.
    pub checksum: String,
}

impl BinlogSettings {
    /// The server's description, or what to change (naming the variable).
    pub fn verdict(self) -> Result<ServerInfo, String> {
        if !matches!(self.log_bin.as_deref(), Some("1" | "ON")) {
            return Err("binary logging is off: start the server with log_bin".into());
        }
        if !self.format.eq_ignore_ascii_case("ROW") {
            return Err(format!("binlog_format is {}: set binlog_format=ROW", self.format));
        }
        if !self.row_image.eq_ignore_ascii_case("FULL") {
            return Err(format!("binlog_row_image is {}: set binlog_row_image=FULL", self.row_image));
        }
        match self.row_metadata {
            Some(m) if m.eq_ignore_ascii_case("FULL") => {}
            other => {
                return Err(format!(
                    "binlog_row_metadata is {}: set binlog_row_metadata=FULL (MySQL 8.0.1+, MariaDB 10.5+)",
                    other.unwrap_or_else(|| "not supported by this server".into())
                ));
            }
        }
        Ok(ServerInfo {
            mariadb: self.version.to_ascii_lowercase().contains("mariadb"),
            server_id: self.server_id,
            checksums: !self.checksum.eq_ignore_ascii_case("NONE"),
            version: self.version,
        })
    }
}

/// Checks that the server can feed CDC; the error names the variable or privilege to fix.
pub async fn check(conn: &mut Conn) -> Result<Result<ServerInfo, String>, mysql_async::Error> {
    type Variables = (Option<String>, String, String, Option<String>, u32, String, String);
    let row: Option<Variables> = conn
        .query_first(
            "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = 'BINLOG_ROW_METADATA'), \
             @@server_id, @@version, @@global.binlog_checksum",
        )
        .await?;
    let Some((log_bin, format, row_image, row_metadata, server_id, version, checksum)) = row else {
        return Ok(Err("the server answered no rows to a variables query".into()));
    };
    let settings = BinlogSettings { log_bin, format, row_image, row_metadata, server_id, version, checksum };
    let info = match settings.verdict() {
        Ok(info) => info,
        Err(reason) => return Ok(Err(reason)),
    };
    // Replication privileges: listing the binlogs needs REPLICATION CLIENT (MariaDB: BINLOG MONITOR).
    if let Err(e) = binlog_files(conn).await {
        return Ok(Err(format!(
            "cannot list binary logs ({e}): grant the user REPLICATION SLAVE and REPLICATION CLIENT \
             (MariaDB: BINLOG MONITOR, REPLICATION SLAVE), and SELECT on the captured tables"
        )));
    }
    Ok(Ok(info))
}

/// `SHOW BINARY LOGS`: the files the server still has, oldest first.
pub async fn binlog_files(conn: &mut Conn) -> Result<Vec<String>, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    Ok(rows.into_iter().filter_map(|r| r.get::<String, _>(0)).collect())
}

/// `position` (MariaDB GTIDs `domain-server-seq`, comma-separated) after the transaction `gtid`:
/// its domain's entry replaced (or added), the others kept, in domain order.
pub fn gtid_position_after(position: Option<&str>, gtid: &str) -> String {
    let domain = |g: &str| g.split('-').next().and_then(|d| d.parse::<u32>().ok()).unwrap_or(0);
    let mut entries: Vec<&str> = position
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty() && domain(g) != domain(gtid))
        .collect();
    entries.push(gtid);
    entries.sort_by_key(|g| domain(g));
    entries.join(",")
}

/// Where replication starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start<'a> {
    /// At a binlog file and position of this server (an empty file: the oldest binlog).
    Position(&'a str, u64),
    /// After a MariaDB GTID position: on any server of the topology (a promoted replica too).
    Gtid(&'a str),
}

/// Starts replication at `start`.
pub async fn open(
    opts: &Opts,
    info: &ServerInfo,
    replica_id: u32,
    start: Start<'_>,
    heartbeat: Duration,
) -> Result<BinlogStream, mysql_async::Error> {
    let mut conn = connect(opts).await?;
    if info.mariadb {
        conn.query_drop("SET @mariadb_slave_capability = 4").await?;
    }
    if let Start::Gtid(position) = start {
        // MariaDB starts a dump after this state, whatever file and position come with it; the
        // first event is a rotate naming the file it starts in.
        conn.exec_drop("SET @slave_connect_state = ?", (position,)).await?;
        conn.query_drop("SET @slave_gtid_strict_mode = 1").await?;
    }
    let period = heartbeat.as_nanos().max(1_000_000);
    conn.query_drop(format!("SET @master_heartbeat_period = {period}")).await?;
    let mut request = BinlogStreamRequest::new(replica_id);
    if let Start::Position(file, pos) = start
        && !file.is_empty()
    {
        request = request.with_filename(file.as_bytes()).with_pos(pos.max(4));
    }
    conn.get_binlog_stream(request).await
}

/// MariaDB's GTID position at `file`/`pos` of its binlog (`BINLOG_GTID_POS`), if it has one.
pub async fn gtid_position_at(conn: &mut Conn, file: &str, pos: u64) -> Result<Option<String>, mysql_async::Error> {
    let row: Option<Option<String>> = conn.exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos)).await?;
    Ok(row.flatten().filter(|p| !p.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_feed_cdc_name_the_variable() {
        let good = BinlogSettings {
            log_bin: Some("1".into()),
            format: "ROW".into(),
            row_image: "FULL".into(),
            row_metadata: Some("FULL".into()),
            server_id: 1,
            version: "10.11.14-MariaDB-0+deb12u2-log".into(),
            checksum: "CRC32".into(),
        };
        let info = good.clone().verdict().unwrap();
        assert!(info.mariadb && info.checksums);
        let fails = |f: fn(&mut BinlogSettings)| {
            let mut s = good.clone();
            f(&mut s);
            s.verdict().unwrap_err()
        };
        assert!(fails(|s| s.log_bin = Some("0".into())).contains("log_bin"));
        assert!(fails(|s| s.format = "MIXED".into()).contains("binlog_format=ROW"));
        assert!(fails(|s| s.row_image = "MINIMAL".into()).contains("binlog_row_image=FULL"));
        assert!(fails(|s| s.row_metadata = Some("MINIMAL".into())).contains("binlog_row_metadata=FULL"));
        assert!(fails(|s| s.row_metadata = None).contains("not supported"));
    }

    #[test]
    fn the_first_rotate_loses_its_checksum() {
        let raw = b"mysql-bin.000001\x12\x9a.7";
        assert_eq!(rotate_name(raw, true, true), "mysql-bin.000001");
        assert_eq!(rotate_name(&raw[..16], false, true), "mysql-bin.000001");
        assert_eq!(rotate_name(&raw[..16], true, false), "mysql-bin.000001");
    }

    #[test]
    fn gtid_positions_keep_one_gtid_per_domain() {
        assert_eq!(gtid_position_after(None, "0-1-5"), "0-1-5");
        assert_eq!(gtid_position_after(Some("0-1-5,2-3-9"), "0-2-6"), "0-2-6,2-3-9");
        assert_eq!(gtid_position_after(Some("2-3-9"), "1-1-1"), "1-1-1,2-3-9");
    }

    #[test]
    fn mariadb_gtid_events() {
        let mut body = 42u64.to_le_bytes().to_vec();
        body.extend(0u32.to_le_bytes());
        body.push(FL_STANDALONE);
        assert_eq!(mariadb_gtid(&body, 7), Some(MariadbGtid { gtid: "0-7-42".into(), standalone: true }));
        assert_eq!(mariadb_gtid(&body[..5], 7), None);
        let mut list = 2u32.to_le_bytes().to_vec();
        for (d, s, n) in [(0u32, 1u32, 10u64), (1, 2, 3)] {
            list.extend(d.to_le_bytes());
            list.extend(s.to_le_bytes());
            list.extend(n.to_le_bytes());
        }
        assert_eq!(mariadb_gtid_list(&list).unwrap(), ["0-1-10", "1-2-3"]);
        assert_eq!(mariadb_gtid_list(&list[..20]), None);
    }
}
