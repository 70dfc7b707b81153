//! How a source reaches its server: the `url` (`mysql://user[:password]@host:port`, with TLS as
//! MySQL's clients spell it: `?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/weir/db-ca.pem`), the password
//! from `password_env` / `password_file` instead of the URL, TLS through rustls. Resolved once when
//! the source starts; a setting that cannot work stops it here, naming the setting.
//!
//! `ssl-mode`: `DISABLED` (the default), `REQUIRED` (encrypted, certificate not checked — said
//! explicitly, and logged), `VERIFY_CA` (the certificate chains to `ssl-ca` or a built-in root),
//! `VERIFY_IDENTITY` (and names the host). `PREFERRED` is refused: it can fall back to plain text.

use std::path::PathBuf;

use mysql_async::{Opts, OptsBuilder, SslOpts};
use weir_schemas::secret;

use super::MysqlSourceConfig;

/// The connection options of `config`, or what is wrong with them.
pub fn opts(config: &MysqlSourceConfig) -> Result<Opts, String> {
    let mut url = url::Url::parse(&config.url).map_err(|e| format!("url: {e}"))?;
    let (mut mode, mut ca) = (None, None);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(k, v)| match k.replace('_', "-").to_ascii_lowercase().as_str() {
            "ssl-mode" | "sslmode" => {
                mode = Some(v.to_ascii_uppercase());
                None
            }
            "ssl-ca" | "sslca" => {
                ca = Some(PathBuf::from(v.as_ref()));
                None
            }
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
    let has_password = url.password().is_some();
    let opts = Opts::from_url(url.as_str()).map_err(|e| format!("url: {e}"))?;
    let mut builder = OptsBuilder::from_opts(opts);

    let password = secret::load("password", config.password_env.as_deref(), config.password_file.as_deref())
        .map_err(|e| e.to_string())?;
    if let Some(password) = password {
        if has_password {
            return Err("the url has a password and password_env/password_file is set: keep one".into());
        }
        builder = builder.pass(Some(password.expose()));
    }

    let ssl = match mode.as_deref() {
        None | Some("DISABLED") => None,
        Some("REQUIRED") => {
            tracing::warn!(source = %config.name, "ssl-mode=REQUIRED: the connection is encrypted but the server's certificate is not checked; use VERIFY_IDENTITY");
            Some(SslOpts::default().with_danger_accept_invalid_certs(true))
        }
        Some("VERIFY_CA") => Some(SslOpts::default().with_danger_skip_domain_validation(true)),
        Some("VERIFY_IDENTITY") => Some(SslOpts::default()),
        Some("PREFERRED") => {
            return Err("url: ssl-mode=PREFERRED can fall back to plain text; use VERIFY_IDENTITY, VERIFY_CA, REQUIRED or DISABLED".into());
        }
        Some(other) => {
            return Err(format!("url: ssl-mode={other} is not DISABLED, REQUIRED, VERIFY_CA or VERIFY_IDENTITY"));
        }
    };
    let ssl = match (ssl, ca) {
        (None, Some(_)) => return Err("url: ssl-ca is given but ssl-mode is not: add ssl-mode=VERIFY_IDENTITY".into()),
        (Some(ssl), Some(ca)) => {
            secret::readable("url: ssl-ca", &ca)?;
            Some(ssl.with_root_certs(vec![ca.into()]))
        }
        (ssl, None) => ssl,
    };
    if ssl.is_some() {
        // rustls needs one process-wide crypto provider when more than one is built in.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    Ok(builder.ssl_opts(ssl).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> MysqlSourceConfig {
        MysqlSourceConfig::new("src", url, "shop")
    }

    #[test]
    fn tls_settings_are_read_as_mysql_clients_spell_them() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let url = format!("mysql://cdc@db:3306/?ssl-mode=verify_identity&ssl-ca={}&prefer_socket=false", ca.display());
        let opts = opts(&config(&url)).unwrap();
        let ssl = opts.ssl_opts().expect("TLS on");
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        assert_eq!(ssl.root_certs().len(), 1);
        assert_eq!(opts.ip_or_hostname(), "db");
        let ssl = opts_of("mysql://cdc@db/?ssl-mode=VERIFY_CA").ssl_opts().cloned().unwrap();
        assert!(ssl.skip_domain_validation() && !ssl.accept_invalid_certs());
        assert!(opts_of("mysql://cdc@db/?ssl-mode=REQUIRED").ssl_opts().unwrap().accept_invalid_certs());
        assert!(opts_of("mysql://cdc@db/").ssl_opts().is_none());
    }

    fn opts_of(url: &str) -> Opts {
        opts(&config(url)).unwrap()
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let err = |url: &str| opts(&config(url)).unwrap_err();
        assert!(err("mysql://cdc@db/?ssl-mode=PREFERRED").contains("fall back to plain text"));
        assert!(err("mysql://cdc@db/?ssl-mode=ON").contains("ssl-mode=ON is not"));
        assert!(err("mysql://cdc@db/?ssl-ca=/x.pem").contains("ssl-mode is not"));
        assert!(
            err("mysql://cdc@db/?ssl-mode=VERIFY_CA&ssl-ca=/nonexistent.pem").contains("cannot read /nonexistent.pem")
        );
        let mut c = config("mysql://cdc:inline@db/");
        c.password_env = Some("WEIR_TEST_SURELY_UNSET_PW".into());
        assert!(opts(&c).unwrap_err().contains("password_env"));
        c.url = "mysql://cdc@db/".into();
        assert_eq!(opts(&c).unwrap_err(), "password_env: environment variable WEIR_TEST_SURELY_UNSET_PW is not set");
    }

    #[test]
    fn the_password_comes_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut c = config("mysql://cdc@db:3306");
        c.password_file = Some(file);
        let opts = opts(&c).unwrap();
        assert_eq!(opts.pass(), Some("s3cret"));
        assert_eq!(opts.user(), Some("cdc"));
    }
}
