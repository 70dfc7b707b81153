//! `[serving]` in `weir.toml`: where `weir serve` listens, who may query, and the limits every
//! query runs under.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// `[serving]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// The HTTP API (and /healthz, /readyz, /metrics).
    pub listen: SocketAddr,
    /// The PostgreSQL wire endpoint.
    pub pg_listen: SocketAddr,
    /// The PostgreSQL user; its password is any API token of scope `read` or wider.
    pub pg_user: String,
    /// Environment variable holding the API's bearer tokens, `scope:token` separated by commas
    /// ([`weir_schemas::tokens`]; tokens never sit in `weir.toml`).
    pub tokens_env: String,
    /// A file of tokens (one `scope:token` a line), read again when it changes: tokens rotate
    /// without a restart. With neither, the API refuses every request.
    pub tokens_file: Option<PathBuf>,
    /// TLS for the HTTP API and the PostgreSQL wire: both refuse plain connections when set.
    pub tls: Option<TlsConfig>,
    /// A query running longer is cancelled.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Rows a query returns at most (the answer says when it was cut).
    pub max_rows: usize,
    /// Memory one query may use for sorts, joins and aggregations.
    pub query_memory_bytes: usize,
    /// How often new lake versions and real-time results are picked up.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Real-time results older than this (by window end, behind the newest) are dropped.
    #[serde(with = "humantime_serde")]
    pub realtime_retention: Duration,
    /// Memory for in-memory copies of `views.*` and `current.*` tables, which answer point
    /// lookups through indexes built on first use (0: none; bigger tables are read from the lake).
    pub hot_table_bytes: usize,
    /// Column that orders batch and real-time rows in `serving.*` views.
    pub time_column: String,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            pg_listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            pg_user: "weir".into(),
            tokens_env: "WEIR_SERVING_TOKENS".into(),
            tokens_file: None,
            tls: None,
            query_timeout: Duration::from_secs(30),
            max_rows: 100_000,
            query_memory_bytes: 1 << 30,
            refresh_interval: Duration::from_secs(2),
            realtime_retention: Duration::from_secs(86_400),
            hot_table_bytes: 512 << 20,
            time_column: "window_start".into(),
        }
    }
}

/// `[serving.tls]`: the server's certificate chain and key (PEM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's own first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}
