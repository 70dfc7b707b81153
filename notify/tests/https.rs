//! Alert notifications over https to a real TLS server (Python's `ssl`) holding a certificate of
//! the test CA, trusted through `[http] ca_file`: the Alertmanager webhook and the Slack message
//! both arrive.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use weir_e2e::https::{Receiver, tls_dir};
use weir_notify::{self as notify, Alert, Notification, Notifier, Retry};
use weir_schemas::http::{self, HttpConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_https_receivers_through_a_private_ca() {
    http::configure(&HttpConfig { ca_file: Some(tls_dir().join("ca.pem")), ..HttpConfig::default() }).unwrap();
    let receiver = Receiver::start();
    let notifier = Notifier::start(Retry { initial: Duration::from_millis(50), ..Retry::default() });
    let labels = BTreeMap::from([("alertname".to_string(), "PaymentFailures".to_string())]);
    notifier.send(Notification {
        receiver: Arc::new(notify::Receiver {
            name: "oncall".into(),
            webhook: Some(receiver.url("/alertmanager")),
            slack: Some(receiver.url("/slack")),
            ..notify::Receiver::default()
        }),
        group_labels: labels.clone(),
        alerts: vec![Alert {
            status: "firing".into(),
            labels,
            annotations: BTreeMap::from([("summary".to_string(), "card payments failing".to_string())]),
            starts_at: "2026-12-04T10:00:00Z".into(),
            ends_at: "0001-01-01T00:00:00Z".into(),
            fingerprint: "f1".into(),
            generator_url: String::new(),
            silenced: false,
        }],
        ongoing: true,
    });
    let mut got = receiver.wait_for(2, Duration::from_secs(20));
    got.sort_by(|a, b| a.path.cmp(&b.path));
    assert_eq!(got[0].path, "/alertmanager");
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["status"], "firing");
    assert_eq!(body["alerts"][0]["labels"]["alertname"], "PaymentFailures");
    assert_eq!(got[1].path, "/slack");
    assert!(got[1].body.contains("card payments failing"), "{}", got[1].body);
}
