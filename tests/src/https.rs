//! An HTTPS receiver (`tests/peers/https_receiver.py`: Python's `http.server` behind its `ssl`
//! module, i.e. OpenSSL) serving the test CA's certificate for 127.0.0.1, recording every request.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The directory of `scripts/services`' certificates: `ca.pem` (the test CA), `other-ca.pem` (an
/// unrelated CA), `server.pem` and `server.key` (127.0.0.1 and localhost, signed by the test CA).
pub fn tls_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("WEIR_TEST_TLS_DIR")
            .expect("WEIR_TEST_TLS_DIR is not set: run scripts/test, which makes the test certificates"),
    )
}

/// One request the receiver got.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Request {
    /// `GET`, `POST`.
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The `Authorization` header, if sent.
    pub authorization: Option<String>,
    /// The body as text.
    pub body: String,
}

/// A running receiver; killed when dropped.
pub struct Receiver {
    child: Child,
    port: u16,
    requests: mpsc::Receiver<Request>,
}

impl Receiver {
    /// Starts one on a free loopback port.
    pub fn start() -> Receiver {
        let python = std::env::var("WEIR_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers/https_receiver.py");
        let dir = tls_dir();
        let mut child = Command::new(python)
            .arg(script)
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the HTTPS receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("the receiver printed nothing").unwrap();
        let port = first.strip_prefix("port ").and_then(|p| p.parse().ok()).expect("`port N` first");
        let (tx, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).expect("a request line")).is_err() {
                    break;
                }
            }
        });
        Receiver { child, port, requests }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// Waits up to `limit` for `n` more requests.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Request> {
        let until = Instant::now() + limit;
        let mut got = Vec::new();
        while got.len() < n {
            let left = until.saturating_duration_since(Instant::now());
            match self.requests.recv_timeout(left) {
                Ok(r) => got.push(r),
                Err(_) => panic!("{} of {n} requests within {limit:?}: {got:?}", got.len()),
            }
        }
        got
    }

    /// The requests received so far and not yet taken.
    pub fn taken(&self) -> Vec<Request> {
        self.requests.try_iter().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
