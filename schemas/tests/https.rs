//! The outgoing HTTP client against a real HTTPS server (Python's `ssl`) holding a certificate of
//! the test CA: trusted through `[http] ca_file`, refused without it or with another CA, and
//! redirects bounded.

use std::time::Duration;

use weir_e2e::https::{Receiver, tls_dir};
use weir_schemas::http::{self, HttpConfig};

/// An error with its causes, as `weir` prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_only_when_configured() {
    let receiver = Receiver::start();
    let trusted = HttpConfig { ca_file: Some(tls_dir().join("ca.pem")), ..HttpConfig::default() }.build().unwrap();
    let response = trusted.post(receiver.url("/hook")).body("{\"a\":1}").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let got = receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!((got[0].method.as_str(), got[0].path.as_str(), got[0].body.as_str()), ("POST", "/hook", "{\"a\":1}"));

    for config in
        [HttpConfig::default(), HttpConfig { ca_file: Some(tls_dir().join("other-ca.pem")), ..HttpConfig::default() }]
    {
        let err = config.build().unwrap().post(receiver.url("/hook")).body("x").send().await.unwrap_err();
        let text = chain(&err);
        assert!(text.contains("certificate") && text.contains("UnknownIssuer"), "{text}");
    }
    assert!(receiver.taken().is_empty(), "nothing reached the receiver without a trusted certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_bounded() {
    let receiver = Receiver::start();
    let config = HttpConfig { ca_file: Some(tls_dir().join("ca.pem")), max_redirects: 2, ..HttpConfig::default() };
    let err = config.build().unwrap().get(receiver.url("/redirect/0")).send().await.unwrap_err();
    assert!(err.is_redirect(), "{}", chain(&err));
    let paths: Vec<String> = receiver.wait_for(3, Duration::from_secs(10)).into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/redirect/0", "/redirect/1", "/redirect/2"]);
}

/// An external registry (Confluent Cloud wants an API key and secret) gets them as HTTP basic
/// credentials, over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_client_sends_basic_credentials() {
    use weir_schemas::{registry::SchemaRegistry as _, registry::http::HttpRegistry, secret::Secret};
    http::configure(&HttpConfig { ca_file: Some(tls_dir().join("ca.pem")), ..HttpConfig::default() }).unwrap();
    let receiver = Receiver::start();
    let registry = HttpRegistry::new(&receiver.url(""), Duration::from_secs(10))
        .unwrap()
        .with_basic_auth("API-KEY", Secret::new("api-secret"));
    let _ = registry.subjects().await; // the receiver answers "ok", not a registry's JSON
    let got = receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!(got[0].path, "/subjects");
    // base64("API-KEY:api-secret")
    assert_eq!(got[0].authorization.as_deref(), Some("Basic QVBJLUtFWTphcGktc2VjcmV0"));
}
