//! `weir.toml` and its environment overrides, layered: built-in defaults → the file → `WEIR_*`.
//!
//! A bad value fails at start-up with an error naming the key and where it came from
//! (`weir.toml: bus.url: …` or `WEIR_BUS_URL (bus.url): …`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use weir_bus::BusConfig;
use weir_flow::scheduler::FlowConfig;
use weir_ingest::{IngestConfig, SourceConfig};
use weir_lake::LakeConfig;
use weir_schemas::{http::HttpConfig, metadata::MetadataConfig};
use weir_serving::ServingConfig;
use weir_stream::StreamConfig;

/// Environment variables that override one key each.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("WEIR_BUS_URL", "bus.url"),
    ("WEIR_LAKE_URL", "lake.url"),
    ("WEIR_METADATA_URL", "metadata.url"),
    ("WEIR_REGISTRY_URL", "registry.url"),
    ("WEIR_REGISTRY_LISTEN", "registry.listen"),
    ("WEIR_BATCH_ENGINE", "batch.engine"),
];

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[bus]`.
    pub bus: BusConfig,
    /// `[lake]`.
    pub lake: LakeConfig,
    /// `[metadata]`.
    pub metadata: MetadataConfig,
    /// `[registry]`.
    pub registry: RegistryConfig,
    /// `[ingest]`.
    pub ingest: IngestConfig,
    /// `[[sources]]`: what `weir ingest` captures.
    pub sources: Vec<SourceConfig>,
    /// `[flow]`: the orchestrator.
    pub flow: FlowConfig,
    /// `[batch]`: where SQL tasks run (in-process DataFusion or a Ballista cluster).
    pub batch: weir_batch::engine::BatchConfig,
    /// `[stream]`: the speed layer.
    pub stream: StreamConfig,
    /// `[serving]`: the query API.
    pub serving: ServingConfig,
    /// `[http]`: the outgoing HTTP client (webhooks, Slack, Jira, the registry client).
    pub http: HttpConfig,
    /// `[up]`: `weir up` and `weir demo`.
    pub up: crate::up::UpConfig,
}

/// `[registry]`: the schema registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Where `weir registry` serves the embedded registry.
    pub listen: SocketAddr,
    /// An external Confluent-compatible registry to use instead of the embedded one.
    pub url: Option<String>,
    /// The user (Confluent Cloud: the API key) for HTTP basic authentication with `url`…
    pub username: Option<String>,
    /// … and the environment variable holding its password (the API secret)…
    pub password_env: Option<String>,
    /// … or the file holding it.
    pub password_file: Option<PathBuf>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            url: None,
            username: None,
            password_env: None,
            password_file: None,
        }
    }
}

/// Loads the configuration. `path` given: that file must exist; not given: `./weir.toml` if present.
pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let (file, required) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from("weir.toml"), false),
    };
    let mut table = if file.exists() {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        text.parse::<toml::Table>().map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
    } else if required {
        bail!("config file {} does not exist", file.display());
    } else {
        toml::Table::new()
    };
    let mut from_env = Vec::new();
    for (var, key) in ENV_OVERRIDES {
        if let Ok(value) = std::env::var(var) {
            set(&mut table, key, value);
            from_env.push((*var, *key));
        }
    }
    let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let source = from_env
            .iter()
            .find(|(_, k)| *k == key)
            .map_or_else(|| file.display().to_string(), |(var, k)| format!("{var} ({k})"));
        // The deserializer's message may repeat the key on a second line; the first says it all.
        let message = e.inner().to_string();
        anyhow::anyhow!("{source}: {key}: {}", message.lines().next().unwrap_or_default())
    })?;
    config.metadata.validate().map_err(|e| anyhow::anyhow!("{}: {e}", source_of(&from_env, "metadata.url", &file)))?;
    // The orchestrator runs SQL tasks on the engine `[batch]` names.
    config.flow.batch = config.batch.clone();
    Ok(config)
}

fn source_of(from_env: &[(&str, &str)], key: &str, file: &Path) -> String {
    from_env.iter().find(|(_, k)| *k == key).map_or_else(|| file.display().to_string(), |(var, _)| var.to_string())
}

fn set(table: &mut toml::Table, dotted: &str, value: String) {
    let (section, key) = dotted.split_once('.').expect("override keys are section.key");
    let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_string(), toml::Value::String(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path))
    }

    #[test]
    fn defaults_are_embedded() {
        let c = load_text("").unwrap();
        assert_eq!(c.bus.url.to_string(), "local:./weir-data/bus");
        assert_eq!(c.lake.url.to_string(), "file://./weir-data/lake");
        assert_eq!(c.metadata.url, "sqlite://./weir-data/weir.db");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load_text("[bus]\nurl = \"http://x\"\n").unwrap_err().to_string();
        assert!(err.contains("weir.toml: bus.url: \"http://x\": unsupported bus URL"), "{err}");
        let err = load_text("[bus.kafka]\nconnect_timeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("bus.kafka.connect_timeout"), "{err}");
        let err = load_text("[bus]\nurll = \"local:x\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `urll`"), "{err}");
        let err = load_text("[metadata]\nurl = \"mysql://x\"\n").unwrap_err().to_string();
        assert!(err.contains("metadata.url \"mysql://x\": unsupported"), "{err}");
        let err = load_text("[lake]\nurl = \"s3://UPPER\"\n").unwrap_err().to_string();
        assert!(err.contains("lake.url"), "{err}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = load(Some(Path::new("/nonexistent/weir.toml"))).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
