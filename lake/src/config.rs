//! `[lake]` in `weir.toml`: where the lake's tables live.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

/// `[lake]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeConfig {
    /// `file://<dir>` for a local directory, `s3://<bucket>/<prefix>` for S3-compatible storage.
    pub url: LakeUrl,
    /// Commit a table's buffered rows when this many have gathered…
    pub flush_rows: usize,
    /// … or when their encoded size reaches this many bytes…
    pub flush_bytes: usize,
    /// … or when the oldest is this old (the lake's freshness bound).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// How to reach S3-compatible storage (for `s3://` lakes).
    pub s3: S3Options,
    /// Where `weir lake run` serves /healthz and /metrics.
    pub listen: SocketAddr,
}

/// `[lake.s3]`. Credentials are never read from the file: they come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), as every AWS tool reads
/// them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// The service endpoint (`http://127.0.0.1:9000` for a local server); AWS when unset.
    pub endpoint: Option<String>,
    /// The region the bucket lives in.
    pub region: String,
    /// Allow `http://` endpoints (local servers).
    pub allow_http: bool,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options { endpoint: None, region: "us-east-1".into(), allow_http: false }
    }
}

impl LakeConfig {
    /// The writers' flush policy.
    pub fn flush_policy(&self) -> crate::writer::FlushPolicy {
        crate::writer::FlushPolicy { rows: self.flush_rows, bytes: self.flush_bytes, age: self.flush_interval }
    }
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig {
            url: LakeUrl::File(PathBuf::from("./weir-data/lake")),
            flush_rows: 200_000,
            flush_bytes: 128 << 20,
            flush_interval: Duration::from_secs(30),
            s3: S3Options::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 9095)),
        }
    }
}

impl LakeUrl {
    /// The lake's root as a URL (a local directory is created and made absolute).
    pub fn root_url(&self) -> Result<url::Url, String> {
        match self {
            LakeUrl::File(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let abs = dir.canonicalize().map_err(|e| format!("{}: {e}", dir.display()))?;
                url::Url::from_directory_path(&abs).map_err(|()| format!("{} is not an absolute path", abs.display()))
            }
            LakeUrl::S3 { bucket, prefix } if prefix.is_empty() => {
                url::Url::parse(&format!("s3://{bucket}/")).map_err(|e| e.to_string())
            }
            LakeUrl::S3 { bucket, prefix } => {
                url::Url::parse(&format!("s3://{bucket}/{prefix}/")).map_err(|e| e.to_string())
            }
        }
    }

    /// Where table `name` (`raw.shop_inv_orders`) lives: `<lake>/raw/shop_inv_orders/`. Local
    /// directories are created.
    pub fn table_url(&self, name: &str) -> Result<url::Url, String> {
        let rel = name.replace('.', "/");
        match self {
            LakeUrl::File(dir) => {
                let path = dir.join(&rel);
                std::fs::create_dir_all(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
                let abs = path.canonicalize().map_err(|e| format!("{}: {e}", path.display()))?;
                url::Url::from_directory_path(&abs).map_err(|()| format!("{} is not an absolute path", abs.display()))
            }
            LakeUrl::S3 { bucket, prefix } => {
                let key = if prefix.is_empty() { rel } else { format!("{prefix}/{rel}") };
                url::Url::parse(&format!("s3://{bucket}/{key}/")).map_err(|e| e.to_string())
            }
        }
    }
}

/// The storage a lake URL names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LakeUrl {
    /// A local directory.
    File(PathBuf),
    /// A bucket and a key prefix (possibly empty).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix without leading or trailing `/`.
        prefix: String,
    },
}

impl FromStr for LakeUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("file://") {
            if dir.is_empty() {
                return Err(format!("{s:?}: file:// needs a directory, as in file://./weir-data/lake"));
            }
            return Ok(LakeUrl::File(PathBuf::from(dir)));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !valid {
                return Err(format!("{s:?}: {bucket:?} is not a valid S3 bucket name"));
            }
            return Ok(LakeUrl::S3 { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string() });
        }
        Err(format!("{s:?}: unsupported lake URL (expected file://<dir> or s3://<bucket>/<prefix>)"))
    }
}

impl TryFrom<String> for LakeUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LakeUrl> for String {
    fn from(url: LakeUrl) -> String {
        url.to_string()
    }
}

impl std::fmt::Display for LakeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LakeUrl::File(dir) => write!(f, "file://{}", dir.display()),
            LakeUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            LakeUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("file://./x".parse(), Ok(LakeUrl::File("./x".into())));
        assert_eq!("s3://lake/a/b/".parse(), Ok(LakeUrl::S3 { bucket: "lake".into(), prefix: "a/b".into() }));
        assert!("s3://Bad_Bucket/x".parse::<LakeUrl>().unwrap_err().contains("not a valid S3 bucket"));
        assert!("hdfs://x".parse::<LakeUrl>().unwrap_err().contains("unsupported lake URL"));
    }
}
