//! TLS for the serving endpoints. `[serving.tls]` is loaded once, at start-up, into one rustls
//! acceptor that the HTTP API and the PostgreSQL wire share; a file that cannot be read, holds no
//! certificate or key, or a key that does not match stops `weir serve` there, naming the file.
//! With TLS on, the HTTP listener speaks only TLS and the PostgreSQL wire refuses connections that
//! do not ask for it.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be read or parsed.
    #[error("serving.tls.{setting}: {}: {reason}", path.display())]
    File {
        /// `cert_file` or `key_file`.
        setting: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate and key do not make a server configuration.
    #[error("serving.tls: {0}")]
    Config(String),
}

/// The acceptor for `config`.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let file_error = |setting, path: &Path, reason: String| TlsError::File { setting, path: path.into(), reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|e| file_error("cert_file", &config.cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("cert_file", &config.cert_file, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| file_error("key_file", &config.key_file, e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("the key does not fit the certificate: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A listener whose connections have finished their TLS handshake; handshakes run side by side
/// (a slow client holds up only itself) and give up after ten seconds.
pub struct TlsListener {
    local: SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Accepts TCP connections on `tcp` and TLS on them with `acceptor`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (socket, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, accepted })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let config = TlsConfig { cert_file: dir.path().join("cert.pem"), key_file: dir.path().join("key.pem") };
        let err = acceptor(&config).err().unwrap().to_string();
        assert!(err.starts_with("serving.tls.cert_file: ") && err.contains("cert.pem"), "{err}");
        std::fs::write(&config.cert_file, "not pem").unwrap();
        let err = acceptor(&config).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
