//! `[lake]` in `weir.toml`: where the lake's tables live.

use std::{path::PathBuf, str::FromStr};

use serde::{Deserialize, Serialize};

/// `[lake]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeConfig {
    /// `file://<dir>` for a local directory, `s3://<bucket>/<prefix>` for S3-compatible storage.
    pub url: LakeUrl,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig { url: LakeUrl::File(PathBuf::from("./weir-data/lake")) }
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
