//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, which `scripts/deps`
//! installs and `scripts/services` names in `WEIR_TEST_ALERTMANAGER`) on a free loopback port, with
//! a test's own configuration, clustering off; killed when dropped.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value as Json, json};

use crate::harness::{Proc, free_port};

/// A running Alertmanager.
pub struct Alertmanager {
    dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
    client: reqwest::Client,
}

impl Alertmanager {
    /// Starts one with `config` (its YAML) and waits until it is ready.
    pub async fn start(config: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
        let mut am = Alertmanager { dir, port: free_port(), proc: None, client: reqwest::Client::new() };
        am.spawn().await;
        am
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: the alerts it holds in memory are gone) and starts it again on the same port.
    pub async fn crash_and_restart(&mut self) {
        drop(self.proc.take());
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let binary = std::env::var_os("WEIR_TEST_ALERTMANAGER").map(PathBuf::from).unwrap_or_else(|| {
            panic!("WEIR_TEST_ALERTMANAGER is not set: run scripts/test (or scripts/services start and source .weir-test/env), which names Debian's prometheus-alertmanager")
        });
        let log = std::fs::File::create(self.dir.path().join("alertmanager.log")).unwrap();
        self.proc = Some(Proc::spawn(
            Command::new(binary)
                .arg(format!("--config.file={}", self.dir.path().join("alertmanager.yml").display()))
                .arg(format!("--storage.path={}", self.dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
                .arg("--cluster.listen-address=")
                .stdout(Stdio::null())
                .stderr(log),
        ));
        let started = Instant::now();
        loop {
            if let Ok(r) = self.client.get(format!("{}/-/ready", self.url())).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(status) = self.proc.as_mut().unwrap().try_wait().unwrap() {
                panic!("Alertmanager exited with {status}: {}", self.log());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "Alertmanager not ready in 30 s: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }

    /// `GET /api/v2/alerts`, matching `filter` (`merchant_id="3"`) if not empty.
    pub async fn alerts(&self, filter: &str) -> Vec<Json> {
        let mut request = self.client.get(format!("{}/api/v2/alerts", self.url()));
        if !filter.is_empty() {
            request = request.query(&[("filter", filter)]);
        }
        request.send().await.unwrap().error_for_status().unwrap().json().await.unwrap()
    }

    /// Creates a silence for an hour of alerts whose labels equal `matchers`; returns its id.
    pub async fn silence(&self, matchers: &[(&str, &str)], comment: &str) -> String {
        let now = chrono::Utc::now();
        let body = json!({
            "matchers": matchers.iter().map(|(name, value)| json!({"name": name, "value": value, "isRegex": false, "isEqual": true})).collect::<Vec<_>>(),
            "startsAt": now.to_rfc3339(),
            "endsAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
            "createdBy": "weir tests",
            "comment": comment,
        });
        let r: Json = self
            .client
            .post(format!("{}/api/v2/silences", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        r["silenceID"].as_str().expect("a silence id").to_string()
    }
}
