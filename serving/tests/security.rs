//! The serving endpoints over TLS, checked by clients Weir did not write — curl with `--cacert`
//! and psql with `sslmode=verify-full` — with the certificate the test CA made for 127.0.0.1;
//! and token scopes: a `read` token queries but cannot operate (403 naming the scope needed), an
//! `ingest` token cannot read.

use std::{sync::Arc, time::Duration};

use axum::routing::get;
use weir_lake::{Lake, LakeConfig, LakeUrl};
use weir_schemas::tokens::Tokens;
use weir_serving::{ServingConfig, catalog::Catalog, config::TlsConfig, http, pg, realtime::Realtime, tls};

struct Server {
    _dir: tempfile::TempDir,
    https: u16,
    pg: u16,
    ca: String,
}

const TOKENS: &str = "read:reader-token, operate:operator-token, ingest:ingest-token";

async fn server() -> Server {
    let certs =
        std::path::PathBuf::from(std::env::var("WEIR_TEST_TLS_DIR").expect("WEIR_TEST_TLS_DIR: run scripts/test"));
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::new(&LakeConfig { url: LakeUrl::File(dir.path().join("lake")), ..LakeConfig::default() });
    let catalog =
        Arc::new(Catalog::new(lake, Arc::new(Realtime::new(Duration::from_secs(60))), ServingConfig::default()));
    catalog.refresh().await.unwrap();
    let tokens = Arc::new(Tokens::from_text(TOKENS).unwrap());
    let acceptor =
        tls::acceptor(&TlsConfig { cert_file: certs.join("server.pem"), key_file: certs.join("server.key") }).unwrap();
    // A route of another crate behind the same tokens, as the orchestrator's are.
    let operated =
        axum::Router::new().route("/api/v1/dags/{dag}/runs", get(|| async { "runs" }).post(|| async { "triggered" }));
    let app = http::router(catalog.clone(), tokens.clone()).merge(http::protect(operated, tokens.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = listener.local_addr().unwrap().port();
    let listener = tls::TlsListener::new(listener, acceptor.clone()).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let pg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pg = pg_listener.local_addr().unwrap().port();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(pg::serve(pg_listener, catalog, "weir".into(), tokens, Some(acceptor), stop));
    std::mem::forget(stop_tx);
    Server { _dir: dir, https, pg, ca: certs.join("ca.pem").display().to_string() }
}

/// curl (the Debian client): (HTTP status or 0, body, stderr).
async fn curl(s: &Server, args: &[&str]) -> (u16, String, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let _ = s;
    (code.trim().parse().unwrap_or(0), body.to_string(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn https_with_the_test_ca_and_scopes() {
    let s = server().await;
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", s.https);
    let query = url("/api/v1/query");
    let sql = r#"{"sql": "SELECT 41 + 1 AS answer"}"#;
    let (code, body, err) =
        curl(&s, &["--cacert", &s.ca, "-H", "Authorization: Bearer reader-token", "-d", sql, &query]).await;
    assert_eq!(code, 200, "{body} {err}");
    assert!(body.contains("42"), "{body}");

    // Without the CA, curl refuses the certificate; in plain HTTP the server does not answer.
    let (code, _, err) = curl(&s, &["-H", "Authorization: Bearer reader-token", "-d", sql, &query]).await;
    assert_eq!(code, 0);
    assert!(err.contains("certificate"), "{err}");
    let (code, _, _) = curl(&s, &["-d", sql, &format!("http://127.0.0.1:{}/api/v1/query", s.https)]).await;
    assert_ne!(code, 200);

    // Scopes: read may read, not operate; operate may both; ingest may not read.
    let runs = url("/api/v1/dags/d/runs");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let (code, _, _) = curl(&s, &["--cacert", &s.ca, "-H", &bearer("reader-token"), &runs]).await;
    assert_eq!(code, 200);
    let (code, body, _) = curl(&s, &["--cacert", &s.ca, "-H", &bearer("reader-token"), "-X", "POST", &runs]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("scope is read; POST /api/v1/dags/d/runs needs operate"), "{body}");
    let (code, body, _) = curl(&s, &["--cacert", &s.ca, "-H", &bearer("operator-token"), "-X", "POST", &runs]).await;
    assert_eq!((code, body.as_str()), (200, "triggered"));
    let (code, body, _) = curl(&s, &["--cacert", &s.ca, "-H", &bearer("ingest-token"), "-d", sql, &query]).await;
    assert_eq!(code, 403, "{body}");
    let (code, _, _) = curl(&s, &["--cacert", &s.ca, "-H", &bearer("wrong"), "-d", sql, &query]).await;
    assert_eq!(code, 401);
}

/// psql (the Debian client): (success, stdout, stderr).
async fn psql(s: &Server, password: &str, ssl: &str) -> (bool, String, String) {
    let url = format!("postgresql://weir:{password}@127.0.0.1:{}/weir?{ssl}", s.pg);
    let out = tokio::process::Command::new("psql")
        .args([url.as_str(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 6 * 7"])
        .output()
        .await
        .expect("psql");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn psql_verifies_the_server_and_plain_connections_are_refused() {
    let s = server().await;
    let verified = format!("sslmode=verify-full&sslrootcert={}", s.ca);
    let (ok, out, err) = psql(&s, "reader-token", &verified).await;
    assert!(ok && out.trim() == "42", "{out} {err}");
    let (ok, _, err) = psql(&s, "reader-token", "sslmode=disable").await;
    assert!(!ok && err.contains("TLS connections only"), "{err}");
    let (ok, _, err) = psql(&s, "ingest-token", &verified).await;
    assert!(!ok && err.contains("Password authentication failed"), "an ingest token cannot read: {err}");
    let other = format!("sslmode=verify-full&sslrootcert={}", s.ca.replace("ca.pem", "other-ca.pem"));
    let (ok, _, err) = psql(&s, "reader-token", &other).await;
    assert!(!ok && err.contains("certificate verify failed"), "{err}");
}
