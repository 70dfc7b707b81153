//! A client of any Confluent-compatible schema registry over its REST API.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{RegisteredSchema, RegistryError, SchemaRegistry, Version, server::CONTENT_TYPE};
use crate::secret::Secret;

/// A remote registry at a base URL such as `http://127.0.0.1:8081`.
#[derive(Clone)]
pub struct HttpRegistry {
    base: String,
    client: reqwest::Client,
    timeout: Duration,
    /// HTTP basic credentials (Confluent Cloud: an API key and its secret).
    basic_auth: Option<(String, Secret)>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

impl HttpRegistry {
    /// A client of the registry at `base_url` (through the process's [`crate::http::client`]),
    /// each request bounded by `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, RegistryError> {
        Ok(HttpRegistry {
            base: base_url.trim_end_matches('/').to_string(),
            client: crate::http::client(),
            timeout,
            basic_auth: None,
        })
    }

    /// Sends HTTP basic credentials with every request.
    pub fn with_basic_auth(mut self, username: &str, password: Secret) -> Self {
        self.basic_auth = Some((username.to_string(), password));
        self
    }

    fn remote(&self, reason: impl std::fmt::Display, retriable: bool) -> RegistryError {
        RegistryError::Remote { url: self.base.clone(), reason: reason.to_string(), retriable }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        context: Context<'_>,
    ) -> Result<T, RegistryError> {
        let mut request = request.header(reqwest::header::ACCEPT, CONTENT_TYPE).timeout(self.timeout);
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user, Some(password.expose()));
        }
        let response = request.send().await.map_err(|e| self.remote(e, true))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.remote(e, true))?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| self.remote(format!("unexpected answer {text:?}: {e}"), false));
        }
        let Ok(err) = serde_json::from_str::<ErrorBody>(&text) else {
            return Err(self.remote(format!("HTTP {status}: {text}"), status.is_server_error()));
        };
        Err(match err.error_code {
            40401 => RegistryError::SubjectNotFound(context.subject.unwrap_or_default().to_string()),
            40402 => RegistryError::VersionNotFound {
                subject: context.subject.unwrap_or_default().to_string(),
                version: context.version.unwrap_or_default(),
            },
            40403 => RegistryError::SchemaNotFound(context.id.unwrap_or(err.message)),
            42201 => RegistryError::InvalidSchema(err.message),
            42202 => RegistryError::InvalidVersion(context.version.unwrap_or_default()),
            // Another registry's words for why: kept whole, with the subject it was about.
            409 => RegistryError::Incompatible {
                subject: context.subject.unwrap_or_default().to_string(),
                level: String::new(),
                reasons: vec![err.message],
            },
            _ => self.remote(
                format!("error {}: {}", err.error_code, err.message),
                status == StatusCode::SERVICE_UNAVAILABLE || status.is_server_error(),
            ),
        })
    }

    fn subject_url(&self, subject: &str) -> String {
        format!("{}/subjects/{}", self.base, encode_path(subject))
    }
}

/// What a request was about, to build precise errors.
#[derive(Default)]
struct Context<'a> {
    subject: Option<&'a str>,
    version: Option<String>,
    id: Option<String>,
}

/// Percent-encodes a path segment.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct IdBody {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
}

#[async_trait]
impl SchemaRegistry for HttpRegistry {
    async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let request =
            self.client.post(format!("{}/versions", self.subject_url(subject))).json(&json!({"schema": schema}));
        let body: IdBody = self.call(request, Context { subject: Some(subject), ..Context::default() }).await?;
        Ok(body.id)
    }

    async fn lookup(&self, subject: &str, schema: &str) -> Result<RegisteredSchema, RegistryError> {
        let request = self.client.post(self.subject_url(subject)).json(&json!({"schema": schema}));
        self.call(request, Context { subject: Some(subject), ..Context::default() }).await
    }

    async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let request = self.client.get(format!("{}/schemas/ids/{id}", self.base));
        let body: SchemaBody = self.call(request, Context { id: Some(id.to_string()), ..Context::default() }).await?;
        Ok(body.schema)
    }

    async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        self.call(self.client.get(format!("{}/subjects", self.base)), Context::default()).await
    }

    async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let request = self.client.get(format!("{}/versions", self.subject_url(subject)));
        self.call(request, Context { subject: Some(subject), ..Context::default() }).await
    }

    async fn version(&self, subject: &str, version: Version) -> Result<RegisteredSchema, RegistryError> {
        let v = version.to_string();
        let request = self.client.get(format!("{}/versions/{v}", self.subject_url(subject)));
        self.call(request, Context { subject: Some(subject), version: Some(v), ..Context::default() }).await
    }
}
