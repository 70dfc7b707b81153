//! `[stream]` in `weir.toml`: where pipeline and alert files are, where the role serves its
//! health and metrics, and how often it checkpoints.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;

/// `[stream]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Folder of pipeline files.
    pub pipelines_dir: PathBuf,
    /// Folder of alert rule files.
    pub alerts_dir: PathBuf,
    /// Where `weir stream` serves /healthz and /metrics.
    pub listen: SocketAddr,
    /// Checkpoint window state and offsets this often.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Longest wait for new events before watermarks and timers are looked at.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often a pipeline looks for a newer version of a lake table it joins.
    #[serde(with = "humantime_serde")]
    pub table_refresh: Duration,
    /// Run each pipeline as one member of its consumer groups ([`crate::scale`]): the `weir
    /// stream` processes with the same pipelines on the same bus share each pipeline's
    /// partitions, repartitioned by its key, and take over those of a member that stops or dies.
    pub scale_out: bool,
}

impl StreamConfig {
    /// How each pipeline runs.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            checkpoint_interval: self.checkpoint_interval,
            poll_interval: self.poll_interval,
            table_refresh: self.table_refresh,
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            pipelines_dir: PathBuf::from("pipelines"),
            alerts_dir: PathBuf::from("alerts"),
            listen: SocketAddr::from(([127, 0, 0, 1], 9097)),
            checkpoint_interval: EngineConfig::default().checkpoint_interval,
            poll_interval: EngineConfig::default().poll_interval,
            table_refresh: EngineConfig::default().table_refresh,
            scale_out: false,
        }
    }
}
