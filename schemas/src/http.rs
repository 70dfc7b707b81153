//! The one outgoing HTTP client every Weir role uses (webhooks, Slack, Jira, `notify` tasks,
//! Alertmanager receivers, the schema registry client): https through rustls, trusting the
//! Mozilla roots and the system's store plus any private CA of `[http] ca_file`, with bounded
//! connect and request times and a bounded number of redirects. `weir` configures it once at
//! start-up ([`configure`]); everything else takes [`client`].

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use serde::{Deserialize, Serialize};

/// `[http]` in `weir.toml`: how Weir calls other services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// PEM file with CA certificates to trust besides the built-in ones (a company's private CA).
    pub ca_file: Option<PathBuf>,
    /// How long a connection (with its TLS handshake) may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a whole request may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Redirects followed at most (`0`: none).
    pub max_redirects: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            max_redirects: 3,
        }
    }
}

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The CA file cannot be read.
    #[error("http.ca_file: cannot read {}: {source}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("http.ca_file: {}: {reason}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The client itself could not be built.
    #[error("building the HTTP client: {0}")]
    Build(String),
    /// [`configure`] was called after the client was in use.
    #[error("the HTTP client was configured twice")]
    Configured,
}

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

impl HttpConfig {
    /// A client with these settings.
    pub fn build(&self) -> Result<reqwest::Client, HttpError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .redirect(match self.max_redirects {
                0 => reqwest::redirect::Policy::none(),
                n => reqwest::redirect::Policy::limited(n),
            });
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path).map_err(|source| HttpError::CaFile { path: path.clone(), source })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| HttpError::BadCa { path: path.clone(), reason: e.to_string() })?;
            if certs.is_empty() {
                return Err(HttpError::BadCa { path: path.clone(), reason: "no PEM certificate in it".into() });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().map_err(|e| HttpError::Build(e.to_string()))
    }
}

/// Sets the process's client from `config`; call it once, at start-up, before any request.
pub fn configure(config: &HttpConfig) -> Result<(), HttpError> {
    let client = config.build()?;
    CLIENT.set(client).map_err(|_| HttpError::Configured)
}

/// The process's client (with the default settings if [`configure`] was not called).
pub fn client() -> reqwest::Client {
    CLIENT.get_or_init(|| HttpConfig::default().build().expect("the default HTTP client builds")).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = HttpConfig { ca_file: Some(dir.path().join("nope.pem")), ..HttpConfig::default() };
        let err = missing.build().unwrap_err().to_string();
        assert!(err.starts_with("http.ca_file: cannot read ") && err.contains("nope.pem"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = HttpConfig { ca_file: Some(junk), ..HttpConfig::default() }.build().unwrap_err().to_string();
        assert!(err.contains("junk.pem") && err.contains("no PEM certificate"), "{err}");
    }
}
