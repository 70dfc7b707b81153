//! The connection to the metadata database, the one place where Weir keeps state that is not on
//! the bus or in the lake: SQLite (embedded default) or PostgreSQL (production), through sqlx's
//! `Any` driver. The schema registry keeps its tables there; so will the orchestrator.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::{AnyPool, any::AnyPoolOptions};

/// A pool on the metadata database.
pub type Pool = AnyPool;

/// `[metadata]` in `weir.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// `sqlite://<file>` (embedded) or `postgres://user[:password]@host:port/db`.
    pub url: String,
    /// How long to wait for a connection before failing.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig { url: "sqlite://./weir-data/weir.db".to_string(), connect_timeout: Duration::from_secs(10) }
    }
}

impl MetadataConfig {
    /// Checks the URL's scheme, so a typo fails at start-up with the key named.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let ok = ["sqlite://", "postgres://", "postgresql://"].iter().any(|p| self.url.starts_with(p));
        if !ok {
            return Err(MetadataError::UnsupportedUrl(self.url.clone()));
        }
        check_tls(&self.url)
    }

    /// Opens the pool (see [`connect`]).
    pub async fn connect(&self) -> Result<AnyPool, MetadataError> {
        connect(&self.url, self.connect_timeout).await
    }
}

/// Why the metadata database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The URL names no supported database.
    #[error("metadata.url {0:?}: unsupported (expected sqlite://<file> or postgres://…)")]
    UnsupportedUrl(String),
    /// The URL's TLS settings cannot work, or could fall back to plain text.
    #[error("metadata.url: {0}")]
    Tls(String),
    /// The SQLite file's directory could not be created.
    #[error("metadata.url: creating directory {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A database could not be created.
    #[error("creating database {name}: {source}")]
    CreateDatabase {
        /// The database.
        name: String,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// Connecting failed.
    #[error("metadata.url {url}: cannot connect within {timeout_s} s: {source}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// The time limit.
        timeout_s: u64,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
}

/// Opens a pool on `url` (`sqlite://path/to/weir.db` or `postgres://user@host:port/db`), creating
/// a SQLite file and its directory if needed, failing within `timeout` if the server is unreachable.
pub async fn connect(url: &str, timeout: Duration) -> Result<AnyPool, MetadataError> {
    sqlx::any::install_default_drivers();
    let (connect_url, max_connections) = if let Some(path) = url.strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or_default();
        if let Some(dir) = std::path::Path::new(file).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| MetadataError::CreateDir { dir: dir.display().to_string(), source })?;
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        (format!("{url}{sep}mode=rwc"), 4)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        check_tls(url)?;
        (url.to_string(), 16)
    } else {
        return Err(MetadataError::UnsupportedUrl(url.to_string()));
    };
    let sqlite = url.starts_with("sqlite://");
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout)
        // A connection to a local file cannot go stale: no ping (a round trip to the
        // connection's thread) before each use. A server's connection is checked.
        .test_before_acquire(!sqlite)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    // Write-ahead log: readers do not block the writer; NORMAL sync is safe
                    // against corruption and loses nothing when the process crashes (only a
                    // power cut can drop the last commits). Writers wait for the lock instead
                    // of failing at once.
                    sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                }
                Ok(())
            })
        })
        .connect(&connect_url)
        .await
        .map_err(|source| MetadataError::Connect { url: redact(url), timeout_s: timeout.as_secs(), source })
}

/// A PostgreSQL URL's TLS settings, as libpq spells them, checked before connecting: `sslmode`
/// `prefer` and `allow` are refused (they fall back to plain text when the server has no TLS),
/// certificate files need an `sslmode` that uses them, and must be readable. Other URLs pass.
fn check_tls(url: &str) -> Result<(), MetadataError> {
    let Some(query) = url.split_once('?').map(|(_, q)| q) else { return Ok(()) };
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.replace('-', ""), v.into_owned())).collect();
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let mode = get("sslmode").map(str::to_ascii_lowercase);
    match mode.as_deref() {
        None | Some("disable" | "require" | "verify-ca" | "verify-full") => {}
        Some(m @ ("prefer" | "allow")) => {
            return Err(MetadataError::Tls(format!(
                "sslmode={m} can fall back to plain text: use verify-full, verify-ca, require or disable"
            )));
        }
        Some(m) => return Err(MetadataError::Tls(format!("sslmode={m} is not one of libpq's modes"))),
    }
    for key in ["sslrootcert", "sslcert", "sslkey"] {
        let Some(path) = get(key) else { continue };
        if matches!(mode.as_deref(), None | Some("disable")) {
            return Err(MetadataError::Tls(format!("{key} is given but sslmode is not: add sslmode=verify-full")));
        }
        crate::secret::readable(key, std::path::Path::new(path)).map_err(MetadataError::Tls)?;
    }
    Ok(())
}

/// Creates database `name` on the PostgreSQL server of `server_url` (a URL naming any database
/// there) and returns the new database's URL. For tests and benchmarks that need a fresh one.
pub async fn create_postgres_database(server_url: &str, name: &str) -> Result<String, MetadataError> {
    let admin = connect(server_url, Duration::from_secs(10)).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .map_err(|source| MetadataError::CreateDatabase { name: name.to_string(), source })?;
    admin.close().await;
    let base = server_url.rsplit_once('/').map_or(server_url, |(b, _)| b);
    Ok(format!("{base}/{name}"))
}

/// Runs `migrator` on `pool`, next to other components' migrations in the same database.
///
/// Two processes starting on a fresh database (say `weir scheduler` and `weir dags trigger`) can
/// both see a migration as missing; one applies it, the other fails on its tables. The loser
/// runs the migrator again, which then finds the migration applied.
pub async fn migrate(mut migrator: sqlx::migrate::Migrator, pool: &AnyPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator.set_ignore_missing(true);
    let mut attempt = 0;
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "migration raced with another process; trying again");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://weir:secret@db:5432/weir"), "postgres://weir:***@db:5432/weir");
        assert_eq!(redact("postgres://weir@db/weir"), "postgres://weir@db/weir");
        assert_eq!(redact("sqlite://./weir-data/weir.db"), "sqlite://./weir-data/weir.db");
    }

    #[test]
    fn tls_settings_that_cannot_work_or_could_fall_back_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let url = |q: &str| format!("postgres://weir@db/weir?{q}");
        let ok = url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
        assert!(check_tls(&ok).is_ok());
        assert!(check_tls("postgres://weir@db/weir").is_ok());
        let err = |q: &str| check_tls(&url(q)).unwrap_err().to_string();
        assert!(err("sslmode=prefer").contains("fall back to plain text"));
        assert!(err("sslmode=verify_full").contains("not one of libpq's modes"));
        assert!(err(&format!("sslrootcert={}", ca.display())).contains("sslmode is not"));
        assert!(err("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").contains("cannot read /nonexistent/ca.pem"));
    }

    #[tokio::test]
    async fn refuses_unknown_schemes_by_name() {
        let err = connect("mysql://x", Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().starts_with("metadata.url \"mysql://x\""), "{err}");
    }

    #[tokio::test]
    async fn unreachable_postgres_fails_in_bounded_time() {
        let started = std::time::Instant::now();
        let err = connect("postgres://weir@127.0.0.1:1/weir", Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, MetadataError::Connect { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
