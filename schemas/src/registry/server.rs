//! The Confluent Schema Registry REST API subset served over any [`SchemaRegistry`]:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /subjects` | `["orders-value", …]` |
//! | `GET /subjects/{subject}/versions` | `[1, 2]` |
//! | `POST /subjects/{subject}/versions` `{"schema": "…"}` | `{"id": 1}` |
//! | `POST /subjects/{subject}` `{"schema": "…"}` | `{"subject", "id", "version", "schema"}` |
//! | `GET /subjects/{subject}/versions/{n or latest}` | `{"subject", "id", "version", "schema"}` |
//! | `GET /subjects/{subject}/versions/{n or latest}/schema` | the schema itself |
//! | `GET /schemas/ids/{id}` | `{"schema": "…"}` |
//! | `GET /config` | `{"compatibilityLevel": "NONE"}` (no compatibility checks yet) |
//!
//! Errors are `{"error_code": 40401, "message": "…"}` with the matching HTTP status.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use super::{RegistryError, SchemaRegistry, Version};

/// The media type Confluent's registry answers with.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared = Arc<dyn SchemaRegistry>;

/// The REST routes over `registry`.
pub fn router(registry: Shared) -> Router {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", axum::routing::post(lookup))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version))
        .route("/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/config", get(|| async { reply(json!({"compatibilityLevel": "NONE"})) }))
        .with_state(registry)
}

struct ApiError(RegistryError);

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.0.codes();
        if status >= 500 {
            tracing::warn!(error = %self.0, "schema registry request failed");
        }
        let mut response = reply(json!({"error_code": code, "message": self.0.to_string()}));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    }
}

fn reply(body: serde_json::Value) -> Response {
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
}

fn check_type(body: &SchemaBody) -> Result<(), ApiError> {
    match body.schema_type.as_deref() {
        None | Some("AVRO") => Ok(()),
        Some(other) => {
            Err(RegistryError::InvalidSchema(format!("schema type {other} is not supported (only AVRO)")).into())
        }
    }
}

fn parse_version(v: &str) -> Result<Version, ApiError> {
    match v {
        "latest" | "-1" => Ok(Version::Latest),
        n => match n.parse::<u32>() {
            Ok(n) if n >= 1 && n <= i32::MAX as u32 => Ok(Version::Number(n)),
            _ => Err(RegistryError::InvalidVersion(v.to_string()).into()),
        },
    }
}

async fn subjects(State(r): State<Shared>) -> Result<Response, ApiError> {
    Ok(reply(json!(r.subjects().await?)))
}

async fn versions(State(r): State<Shared>, Path(subject): Path<String>) -> Result<Response, ApiError> {
    Ok(reply(json!(r.versions(&subject).await?)))
}

async fn register(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, ApiError> {
    check_type(&body)?;
    Ok(reply(json!({"id": r.register(&subject, &body.schema).await?})))
}

async fn lookup(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, ApiError> {
    check_type(&body)?;
    Ok(reply(json!(r.lookup(&subject, &body.schema).await?)))
}

async fn version(State(r): State<Shared>, Path((subject, v)): Path<(String, String)>) -> Result<Response, ApiError> {
    Ok(reply(json!(r.version(&subject, parse_version(&v)?).await?)))
}

async fn version_schema(
    State(r): State<Shared>,
    Path((subject, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let found = r.version(&subject, parse_version(&v)?).await?;
    let schema: serde_json::Value =
        serde_json::from_str(&found.schema).unwrap_or(serde_json::Value::String(found.schema));
    Ok(reply(schema))
}

async fn schema_by_id(State(r): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: u32 = id.parse().map_err(|_| RegistryError::SchemaNotFound(id.clone()))?;
    Ok(reply(json!({"schema": r.schema_by_id(id).await?})))
}
