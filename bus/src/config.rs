//! Configuration of the bus: which backend the URL chooses, and each backend's settings.

use std::{collections::BTreeMap, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// `[bus]` in `weir.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `local:<dir>` for the embedded log, `kafka://host:port[,host:port…]` for Kafka.
    pub url: BusUrl,
    /// Settings of the embedded log.
    pub local: LocalConfig,
    /// Settings of the Kafka client.
    pub kafka: KafkaConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            url: BusUrl::Local(PathBuf::from("./weir-data/bus")),
            local: LocalConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// The backend a bus URL names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BusUrl {
    /// The embedded log in this directory.
    Local(PathBuf),
    /// A Kafka cluster with these bootstrap servers (`host:port,host:port`).
    Kafka(String),
}

impl FromStr for BusUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("local:") {
            let dir = dir.strip_prefix("//").unwrap_or(dir);
            if dir.is_empty() {
                return Err(format!("{s:?}: local: needs a directory, as in local:./weir-data/bus"));
            }
            return Ok(BusUrl::Local(PathBuf::from(dir)));
        }
        if let Some(brokers) = s.strip_prefix("kafka://") {
            let brokers = brokers.trim_end_matches('/');
            if brokers.is_empty() {
                return Err(format!("{s:?}: kafka:// needs host:port, as in kafka://127.0.0.1:9092"));
            }
            for broker in brokers.split(',') {
                let port = broker.rsplit_once(':').map(|(_, p)| p);
                if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                    return Err(format!("{s:?}: broker {broker:?} is not host:port"));
                }
            }
            return Ok(BusUrl::Kafka(brokers.to_string()));
        }
        Err(format!("{s:?}: unsupported bus URL (expected local:<dir> or kafka://host:port)"))
    }
}

impl TryFrom<String> for BusUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BusUrl> for String {
    fn from(url: BusUrl) -> String {
        url.to_string()
    }
}

impl std::fmt::Display for BusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusUrl::Local(dir) => write!(f, "local:{}", dir.display()),
            BusUrl::Kafka(brokers) => write!(f, "kafka://{brokers}"),
        }
    }
}

/// When the embedded log calls `fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Never: an acknowledged record is in the operating system's page cache, which survives a
    /// crash of the process (`kill -9`) but not of the machine.
    #[default]
    Never,
    /// Before every acknowledgement: survives power loss, at the cost of a disk flush per batch.
    Always,
}

/// `[bus.local]`: the embedded log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// A partition starts a new segment file once the current one reaches this size.
    pub segment_bytes: u64,
    /// When to flush to disk.
    pub fsync: Fsync,
    /// How long records are kept: the defaults of topics created without their own
    /// `retention.ms`/`retention.bytes`.
    pub retention: RetentionConfig,
}

impl Default for LocalConfig {
    fn default() -> Self {
        LocalConfig { segment_bytes: 256 * 1024 * 1024, fsync: Fsync::Never, retention: RetentionConfig::default() }
    }
}

/// `[bus.local.retention]`: when the embedded log deletes a partition's oldest segments.
///
/// A sealed segment goes once it is older than `age` or the partition is larger than `bytes`
/// without it, but never while a durable consumer still needs it: every consumer group that
/// committed offsets on the partition (the lake writers and stream pipelines commit theirs after
/// each lake commit and checkpoint) holds the segments from its committed offset on, until it
/// has committed nothing for `idle_group_expiry`. The segment being written is never deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Default age after which a sealed segment may go (Kafka's `retention.ms`); unset keeps
    /// records forever.
    #[serde(with = "humantime_serde")]
    pub age: Option<Duration>,
    /// Default size a partition may keep (Kafka's `retention.bytes`); unset: no limit.
    pub bytes: Option<u64>,
    /// How often the owning process looks for segments to delete.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// A group that committed nothing for this long no longer holds records back (Kafka's
    /// `offsets.retention.minutes`).
    #[serde(with = "humantime_serde")]
    pub idle_group_expiry: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            age: None,
            bytes: None,
            check_interval: Duration::from_secs(60),
            idle_group_expiry: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// `[bus.kafka]`: the Kafka client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// How long to wait for the cluster to answer before failing.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a produced record may wait for its acknowledgement.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    /// Replicas of each topic Weir creates (1 suits a single broker; use 3 in production).
    pub replication_factor: i32,
    /// How the connection is secured; `PLAINTEXT` when unset.
    pub security_protocol: Option<SecurityProtocol>,
    /// The SASL mechanism (with `SASL_SSL` or `SASL_PLAINTEXT`).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// The SASL user (PLAIN, SCRAM).
    pub sasl_username: Option<String>,
    /// The environment variable that holds the SASL password…
    pub sasl_password_env: Option<String>,
    /// … or the file that holds it.
    pub sasl_password_file: Option<PathBuf>,
    /// The CA certificates (PEM) that the brokers' certificates must chain to; the system's
    /// store when unset.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (PEM), for brokers that authenticate clients by certificate.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// Extra librdkafka properties (`"linger.ms" = "5"`, …); they override the settings above.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            connect_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(30),
            replication_factor: 1,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password_env: None,
            sasl_password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            properties: BTreeMap::new(),
        }
    }
}

/// Kafka's `security.protocol`, spelled as Kafka spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    /// TLS.
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    /// SASL authentication without TLS (the password crosses the network unencrypted with PLAIN).
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    /// SASL authentication over TLS: what managed Kafka services ask for.
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The name librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }
}

/// Kafka's `sasl.mechanism`: the ones librdkafka speaks without Kerberos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// User and password sent as they are (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens (configured through librdkafka's `sasl.oauthbearer.*` properties).
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    /// The name librdkafka takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!("local:./weir-data/bus".parse::<BusUrl>(), Ok(BusUrl::Local("./weir-data/bus".into())));
        assert_eq!("local:///tmp/bus".parse::<BusUrl>(), Ok(BusUrl::Local("/tmp/bus".into())));
        assert_eq!("kafka://a:9092,b:9093".parse::<BusUrl>(), Ok(BusUrl::Kafka("a:9092,b:9093".into())));
    }

    #[test]
    fn rejects_bad_urls_naming_them() {
        let err = "http://x".parse::<BusUrl>().unwrap_err();
        assert!(err.contains("http://x") && err.contains("unsupported"), "{err}");
        let err = "kafka://host".parse::<BusUrl>().unwrap_err();
        assert!(err.contains("\"host\" is not host:port"), "{err}");
        assert!("local:".parse::<BusUrl>().is_err());
    }
}
