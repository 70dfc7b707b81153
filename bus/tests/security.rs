//! Kafka over TLS and SASL against the test broker that takes only SCRAM logins behind TLS
//! (`WEIR_TEST_KAFKA_SASL_SSL`): both SCRAM mechanisms log in; a wrong CA, a wrong password and a
//! plaintext client each fail within `connect_timeout` with librdkafka's own reason, and no error
//! shows a password.

use std::time::{Duration, Instant};

use weir_bus::{
    Bus, BusError,
    config::{KafkaConfig, SaslMechanism, SecurityProtocol},
    kafka::KafkaBus,
};

mod common;
use common::{sasl_ssl_brokers, sasl_ssl_config, tls_dir};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with `config` (and a short timeout), expecting a failure; returns its message.
async fn refused(config: KafkaConfig) -> String {
    let started = Instant::now();
    let config = KafkaConfig { connect_timeout: TIMEOUT, ..config };
    let err = match KafkaBus::connect(&sasl_ssl_brokers(), config).await {
        Ok(_) => panic!("connected"),
        Err(e) => e,
    };
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(3), "took {:?}: {err}", started.elapsed());
    assert!(matches!(err, BusError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    let password = std::env::var("WEIR_TEST_KAFKA_PASSWORD").unwrap();
    assert!(!text.contains(&password), "the password is in the error: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_scram_mechanisms_log_in_over_tls() {
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let config = KafkaConfig { sasl_mechanism: Some(mechanism), ..sasl_ssl_config() };
        let bus = KafkaBus::connect(&sasl_ssl_brokers(), config).await.unwrap();
        bus.list_topics().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_naming_the_certificate() {
    let text = refused(KafkaConfig { ca_file: Some(tls_dir().join("other-ca.pem")), ..sasl_ssl_config() }).await;
    assert!(text.contains("certificate verify failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_naming_the_login() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "not-the-password").unwrap();
    let config = KafkaConfig { sasl_password_env: None, sasl_password_file: Some(file), ..sasl_ssl_config() };
    let text = refused(config).await;
    assert!(text.contains("SASL") && text.contains("uthentication"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_the_tls_listener_is_told_so() {
    let text = refused(KafkaConfig { connect_timeout: TIMEOUT, ..KafkaConfig::default() }).await;
    assert!(text.contains("bus.kafka.security_protocol to SSL or SASL_SSL"), "the setting is named: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_with_a_plaintext_protocol_stop_before_connecting() {
    let config = KafkaConfig { security_protocol: Some(SecurityProtocol::Plaintext), ..sasl_ssl_config() };
    let err = KafkaBus::connect(&sasl_ssl_brokers(), config).await.err().expect("refused");
    assert!(matches!(err, BusError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("security_protocol is PLAINTEXT"), "{err}");
}
