//! Which engine runs a SQL task's query: DataFusion in the task's own process (`local`), or an
//! Apache DataFusion Ballista cluster (`ballista://host:port`), whose scheduler splits the plan
//! into stages and whose executors run them, shuffling through their disks between stages.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Ballista's default scheduler port.
pub const DEFAULT_BALLISTA_PORT: u16 = 50050;

/// An engine for SQL tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Engine {
    /// In-process DataFusion.
    #[default]
    Local,
    /// The Ballista scheduler at `host:port`.
    Ballista {
        /// `host:port` of its gRPC endpoint.
        scheduler: String,
    },
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "local" {
            return Ok(Engine::Local);
        }
        let Some(rest) = s.strip_prefix("ballista://") else {
            return Err(format!("{s:?}: an engine is \"local\" or \"ballista://host:port\""));
        };
        let rest = rest.trim_end_matches('/');
        let scheduler = match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => rest.to_string(),
            None if !rest.is_empty() => format!("{rest}:{DEFAULT_BALLISTA_PORT}"),
            _ => return Err(format!("{s:?}: ballista:// needs host[:port], as in ballista://127.0.0.1:50050")),
        };
        Ok(Engine::Ballista { scheduler })
    }
}

impl TryFrom<String> for Engine {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Engine> for String {
    fn from(e: Engine) -> String {
        e.to_string()
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Local => f.write_str("local"),
            Engine::Ballista { scheduler } => write!(f, "ballista://{scheduler}"),
        }
    }
}

/// `[batch]` in `weir.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// The engine of SQL tasks that do not choose one.
    pub engine: Engine,
    /// The Ballista scheduler of tasks that say `engine: ballista` while `engine` is `local`.
    pub ballista: Option<Engine>,
}

/// What a SQL task asks for in its DAG file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// In-process DataFusion, whatever `[batch] engine` says.
    Local,
    /// The configured Ballista scheduler.
    Ballista,
}

impl BatchConfig {
    /// The engine for a task that chose `choice` (or nothing).
    pub fn engine_for(&self, choice: Option<EngineChoice>) -> Result<Engine, String> {
        match choice {
            None => Ok(self.engine.clone()),
            Some(EngineChoice::Local) => Ok(Engine::Local),
            Some(EngineChoice::Ballista) => match (&self.engine, &self.ballista) {
                (e @ Engine::Ballista { .. }, _) | (_, Some(e @ Engine::Ballista { .. })) => Ok(e.clone()),
                _ => Err("the task asks for engine: ballista, but no Ballista scheduler is configured \
                          (set [batch] engine = \"ballista://host:50050\" or [batch] ballista)"
                    .to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_and_name_what_is_wrong() {
        assert_eq!("local".parse::<Engine>(), Ok(Engine::Local));
        assert_eq!("ballista://h:1".parse::<Engine>(), Ok(Engine::Ballista { scheduler: "h:1".into() }));
        assert_eq!("ballista://h".parse::<Engine>(), Ok(Engine::Ballista { scheduler: "h:50050".into() }));
        assert!("spark://h".parse::<Engine>().unwrap_err().contains("\"spark://h\""));
        assert!("ballista://".parse::<Engine>().is_err());
        let local = BatchConfig::default();
        assert!(local.engine_for(Some(EngineChoice::Ballista)).unwrap_err().contains("no Ballista scheduler"));
        let ballista = BatchConfig { engine: "ballista://h:1".parse().unwrap(), ballista: None };
        assert_eq!(ballista.engine_for(Some(EngineChoice::Local)), Ok(Engine::Local));
        assert_eq!(ballista.engine_for(None), Ok(Engine::Ballista { scheduler: "h:1".into() }));
    }
}
