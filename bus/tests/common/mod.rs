//! The SASL_SSL test broker that `scripts/services` starts: where it is and how to log in.

use std::path::PathBuf;

use weir_bus::config::{KafkaConfig, SaslMechanism, SecurityProtocol};

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run scripts/test, which starts the test services"))
}

/// The directory of the test CA (`ca.pem`), an unrelated CA (`other-ca.pem`) and the server's certificate.
pub fn tls_dir() -> PathBuf {
    PathBuf::from(env("WEIR_TEST_TLS_DIR"))
}

/// The broker behind TLS that requires SCRAM logins.
pub fn sasl_ssl_brokers() -> String {
    env("WEIR_TEST_KAFKA_SASL_SSL")
}

/// Settings that log in to it: SCRAM-SHA-512, the password from `WEIR_TEST_KAFKA_PASSWORD`, the test CA.
pub fn sasl_ssl_config() -> KafkaConfig {
    KafkaConfig {
        security_protocol: Some(SecurityProtocol::SaslSsl),
        sasl_mechanism: Some(SaslMechanism::ScramSha512),
        sasl_username: Some(env("WEIR_TEST_KAFKA_USER")),
        sasl_password_env: Some("WEIR_TEST_KAFKA_PASSWORD".into()),
        ca_file: Some(tls_dir().join("ca.pem")),
        ..KafkaConfig::default()
    }
}
