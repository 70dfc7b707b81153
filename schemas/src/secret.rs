//! Secrets that never need to be written in `weir.toml`: a password, token or key is named by the
//! environment variable (`<setting>_env`) or the file (`<setting>_file`) that holds it, read once
//! at start-up, and kept in a [`Secret`], which prints as `***` in logs, errors and `Debug` output.
//! Key and certificate files are checked for readability at start-up too ([`readable`]).

use std::path::{Path, PathBuf};

/// A secret value; `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Why a secret could not be read; names the setting and where it looked, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not Unicode).
    #[error("{setting}_env: environment variable {var} is not set")]
    MissingEnv {
        /// The setting, e.g. `bus.kafka.sasl_password`.
        setting: String,
        /// The variable named.
        var: String,
    },
    /// The file cannot be read.
    #[error("{setting}_file: cannot read {}: {source}", path.display())]
    File {
        /// The setting.
        setting: String,
        /// The file named.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The variable or file holds nothing.
    #[error("{setting}: {place} is empty")]
    Empty {
        /// The setting.
        setting: String,
        /// The variable or file.
        place: String,
    },
    /// Both forms were given.
    #[error("{setting}: give {setting}_env or {setting}_file, not both")]
    Both {
        /// The setting.
        setting: String,
    },
}

/// Checks that the key, certificate or CA file `setting` names can be read, so a wrong path stops
/// start-up with `<setting>: cannot read <path>: <cause>` rather than failing a handshake later.
pub fn readable(setting: &str, path: &Path) -> Result<(), String> {
    std::fs::File::open(path).map(drop).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))
}

/// Reads the secret `setting` from the environment variable `env` or the file `file` (at most one
/// of them; neither gives `None`). A file's trailing line break is not part of the secret.
pub fn load(setting: &str, env: Option<&str>, file: Option<&Path>) -> Result<Option<Secret>, SecretError> {
    let value = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(SecretError::Both { setting: setting.into() }),
        (Some(var), None) => {
            let value =
                std::env::var(var).map_err(|_| SecretError::MissingEnv { setting: setting.into(), var: var.into() })?;
            (value, format!("environment variable {var}"))
        }
        (None, Some(path)) => {
            let mut value = std::fs::read_to_string(path).map_err(|source| SecretError::File {
                setting: setting.into(),
                path: path.into(),
                source,
            })?;
            let kept = value.trim_end_matches(['\n', '\r']).len();
            value.truncate(kept);
            (value, path.display().to_string())
        }
    };
    match value {
        (v, place) if v.is_empty() => Err(SecretError::Empty { setting: setting.into(), place }),
        (v, _) => Ok(Some(Secret(v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_env_or_file_and_never_prints_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        let s = load("x.password", None, Some(&file)).unwrap().unwrap();
        assert_eq!(s.expose(), "hunter2", "the trailing line break is dropped");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert!(load("x.password", None, None).unwrap().is_none());
        let err = load("x.password", Some("WEIR_TEST_SURELY_UNSET_VAR"), None).unwrap_err().to_string();
        assert_eq!(err, "x.password_env: environment variable WEIR_TEST_SURELY_UNSET_VAR is not set");
        let err = load("x.password", Some("A"), Some(&file)).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let missing = dir.path().join("missing");
        let err = load("x.password", None, Some(&missing)).unwrap_err().to_string();
        assert!(err.starts_with("x.password_file: cannot read ") && err.contains("missing"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        assert!(load("x.password", None, Some(&file)).unwrap_err().to_string().contains("is empty"));
    }
}
