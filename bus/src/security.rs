//! How a Kafka connection is secured: the TLS and SASL settings of `[bus.kafka]` (and any
//! `security.*`, `ssl.*`, `sasl.*` in its `properties`) resolved once, at start-up, into the
//! librdkafka properties every client gets. A setting that cannot work — a password variable that
//! is not set, a CA file that cannot be read, TLS files for a plaintext protocol, SASL without a
//! mechanism — stops the role here with the setting named, before anything is sent: Weir never
//! falls back to plain text.

use std::collections::BTreeMap;

use crate::{BusError, config::KafkaConfig};

/// The user's properties for librdkafka: the first-class security settings, then `properties`
/// (which win), checked together.
pub(crate) fn client_properties(config: &KafkaConfig) -> Result<BTreeMap<String, String>, BusError> {
    let mut props = BTreeMap::new();
    if let Some(p) = config.security_protocol {
        props.insert("security.protocol".to_string(), p.as_str().to_string());
    }
    if let Some(m) = config.sasl_mechanism {
        props.insert("sasl.mechanism".to_string(), m.as_str().to_string());
    }
    if let Some(u) = &config.sasl_username {
        props.insert("sasl.username".to_string(), u.clone());
    }
    let password = weir_schemas::secret::load(
        "bus.kafka.sasl_password",
        config.sasl_password_env.as_deref(),
        config.sasl_password_file.as_deref(),
    )
    .map_err(|e| BusError::Config(e.to_string()))?;
    if let Some(pw) = password {
        props.insert("sasl.password".to_string(), pw.expose().to_string());
    }
    for (setting, file, property) in [
        ("ca_file", &config.ca_file, "ssl.ca.location"),
        ("cert_file", &config.cert_file, "ssl.certificate.location"),
        ("key_file", &config.key_file, "ssl.key.location"),
    ] {
        if let Some(path) = file {
            weir_schemas::secret::readable(&format!("bus.kafka.{setting}"), path).map_err(BusError::Config)?;
            props.insert(property.to_string(), path.display().to_string());
        }
    }
    for (k, v) in &config.properties {
        props.insert(k.clone(), v.clone());
    }
    check(&props)?;
    Ok(props)
}

/// What to check when librdkafka's `cause` looks like the two ends disagree on TLS.
pub(crate) fn hint(props: &BTreeMap<String, String>, cause: &str) -> Option<&'static str> {
    let tls = props.get("security.protocol").is_some_and(|p| p.to_ascii_lowercase().ends_with("ssl"));
    if !tls && (cause.contains("APIVERSION_QUERY") || cause.contains("SSL listener")) {
        return Some("the brokers may expect TLS: set bus.kafka.security_protocol to SSL or SASL_SSL");
    }
    let plaintext_peer = ["wrong version number", "packet length too long", "record layer failure", "unexpected eof"];
    if tls && cause.contains("SSL handshake failed") && plaintext_peer.iter().any(|p| cause.contains(p)) {
        return Some("the listener may not speak TLS: check bus.kafka.security_protocol and the port");
    }
    None
}

/// Refuses combinations that would connect less securely than the settings say, or not at all.
fn check(props: &BTreeMap<String, String>) -> Result<(), BusError> {
    let protocol = props.get("security.protocol").map_or("plaintext".to_string(), |p| p.to_ascii_lowercase());
    let (tls, sasl) = match protocol.as_str() {
        "plaintext" => (false, false),
        "ssl" => (true, false),
        "sasl_plaintext" => (false, true),
        "sasl_ssl" => (true, true),
        other => {
            return Err(BusError::Config(format!(
                "bus.kafka.security_protocol: {other:?} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
            )));
        }
    };
    let named = |prefix: &str| props.keys().filter(|k| k.starts_with(prefix)).cloned().collect::<Vec<_>>();
    let (tls_settings, sasl_settings) = (named("ssl."), named("sasl."));
    if !tls && !tls_settings.is_empty() {
        return Err(BusError::Config(format!(
            "bus.kafka.security_protocol is {}, but TLS settings are given ({}): set it to SSL or SASL_SSL \
             (Weir does not connect in plain text when TLS was asked for)",
            protocol.to_ascii_uppercase(),
            tls_settings.join(", ")
        )));
    }
    if !sasl && !sasl_settings.is_empty() {
        return Err(BusError::Config(format!(
            "bus.kafka.security_protocol is {}, but SASL settings are given ({}): set it to SASL_SSL or SASL_PLAINTEXT",
            protocol.to_ascii_uppercase(),
            sasl_settings.join(", ")
        )));
    }
    if sasl {
        let mechanism = props.get("sasl.mechanism").map(|m| m.to_ascii_uppercase());
        match mechanism.as_deref() {
            Some("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => {
                if !props.contains_key("sasl.username") {
                    return Err(BusError::Config("bus.kafka.sasl_username: required by the SASL mechanism".into()));
                }
                if !props.contains_key("sasl.password") {
                    return Err(BusError::Config(
                        "bus.kafka.sasl_password_env (or _file): required by the SASL mechanism".into(),
                    ));
                }
            }
            Some("OAUTHBEARER") => {}
            None => {
                return Err(BusError::Config(format!(
                    "bus.kafka.sasl_mechanism: required with {} (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)",
                    protocol.to_ascii_uppercase()
                )));
            }
            Some(other) => {
                return Err(BusError::Config(format!(
                    "bus.kafka.sasl_mechanism: {other:?} is not built into Weir (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)"
                )));
            }
        }
        if !tls && mechanism.as_deref() == Some("PLAIN") {
            tracing::warn!("bus.kafka: SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted; use SASL_SSL");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SaslMechanism, SecurityProtocol};

    fn err(config: &KafkaConfig) -> String {
        client_properties(config).unwrap_err().to_string()
    }

    #[test]
    fn first_class_settings_become_properties() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, pw) = (dir.path().join("ca.pem"), dir.path().join("pw"));
        std::fs::write(&ca, "pem").unwrap();
        std::fs::write(&pw, "s3cret\n").unwrap();
        let config = KafkaConfig {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("weir".into()),
            sasl_password_file: Some(pw),
            ca_file: Some(ca.clone()),
            properties: [("ssl.endpoint.identification.algorithm".to_string(), "none".to_string())].into(),
            ..KafkaConfig::default()
        };
        let props = client_properties(&config).unwrap();
        assert_eq!(props["security.protocol"], "SASL_SSL");
        assert_eq!(props["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(props["sasl.password"], "s3cret");
        assert_eq!(props["ssl.ca.location"], ca.display().to_string());
        assert_eq!(props["ssl.endpoint.identification.algorithm"], "none", "properties still override");
        assert!(client_properties(&KafkaConfig::default()).unwrap().is_empty(), "plaintext by default");
    }

    #[test]
    fn hints_name_the_setting_when_the_ends_disagree_on_tls() {
        let plain = BTreeMap::new();
        let cause =
            "127.0.0.1:19093/bootstrap: Disconnected: connection reset by peer (after 0ms in state APIVERSION_QUERY)";
        assert!(hint(&plain, cause).unwrap().contains("bus.kafka.security_protocol to SSL"));
        let tls = BTreeMap::from([("security.protocol".to_string(), "SASL_SSL".to_string())]);
        assert_eq!(hint(&tls, cause), None);
        let cause = "SSL handshake failed: error:0A00010B:SSL routines::wrong version number";
        assert!(hint(&tls, cause).unwrap().contains("may not speak TLS"));
        assert_eq!(hint(&tls, "SSL handshake failed: certificate verify failed"), None);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let tls_without_tls = KafkaConfig { ca_file: Some(ca.clone()), ..KafkaConfig::default() };
        let e = err(&tls_without_tls);
        assert!(e.contains("security_protocol is PLAINTEXT") && e.contains("ssl.ca.location"), "{e}");
        let overridden = KafkaConfig {
            security_protocol: Some(SecurityProtocol::Ssl),
            ca_file: Some(ca.clone()),
            properties: [("security.protocol".to_string(), "plaintext".to_string())].into(),
            ..KafkaConfig::default()
        };
        assert!(err(&overridden).contains("TLS settings are given"), "a property cannot quietly drop TLS");
        let missing_ca = KafkaConfig {
            security_protocol: Some(SecurityProtocol::Ssl),
            ca_file: Some(dir.path().join("nope.pem")),
            ..KafkaConfig::default()
        };
        assert!(err(&missing_ca).starts_with("bus.kafka.ca_file: cannot read "), "{}", err(&missing_ca));
        let no_mechanism = KafkaConfig { security_protocol: Some(SecurityProtocol::SaslSsl), ..KafkaConfig::default() };
        assert!(err(&no_mechanism).starts_with("bus.kafka.sasl_mechanism: required"));
        let no_password = KafkaConfig {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            sasl_mechanism: Some(SaslMechanism::Plain),
            sasl_username: Some("u".into()),
            ..KafkaConfig::default()
        };
        assert!(err(&no_password).starts_with("bus.kafka.sasl_password_env"), "{}", err(&no_password));
        let unset_env =
            KafkaConfig { sasl_password_env: Some("WEIR_TEST_SURELY_UNSET_PASSWORD".into()), ..no_password.clone() };
        assert!(err(&unset_env).contains("WEIR_TEST_SURELY_UNSET_PASSWORD is not set"), "{}", err(&unset_env));
        let sasl_without_sasl = KafkaConfig { sasl_mechanism: Some(SaslMechanism::Plain), ..KafkaConfig::default() };
        assert!(err(&sasl_without_sasl).contains("SASL settings are given (sasl.mechanism)"));
        let kerberos = KafkaConfig {
            security_protocol: Some(SecurityProtocol::SaslSsl),
            properties: [("sasl.mechanism".to_string(), "GSSAPI".to_string())].into(),
            ..KafkaConfig::default()
        };
        assert!(err(&kerberos).contains("\"GSSAPI\" is not built into Weir"));
        let typo = KafkaConfig {
            properties: [("security.protocol".to_string(), "SASL_TLS".to_string())].into(),
            ..KafkaConfig::default()
        };
        assert!(err(&typo).contains("\"sasl_tls\" is not PLAINTEXT"), "{}", err(&typo));
    }
}
