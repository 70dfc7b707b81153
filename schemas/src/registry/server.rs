//! The Confluent Schema Registry REST API served over the embedded [`SqlRegistry`]:
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /subjects` | `["orders-value", …]` |
//! | `GET /subjects/{subject}/versions` | `[1, 2]` |
//! | `POST /subjects/{subject}/versions` `{"schema": "…"}` | `{"id": 1}`; 409 when it breaks the subject's compatibility |
//! | `POST /subjects/{subject}` `{"schema": "…"}` | `{"subject", "id", "version", "schema"}` |
//! | `GET /subjects/{subject}/versions/{n or latest}` | `{"subject", "id", "version", "schema"}` |
//! | `GET /subjects/{subject}/versions/{n or latest}/schema` | the schema itself |
//! | `DELETE /subjects/{subject}[?permanent=true]` | `[1, 2]` (soft first, then permanent) |
//! | `DELETE /subjects/{subject}/versions/{n or latest}[?permanent=true]` | `2` |
//! | `GET /schemas/ids/{id}` | `{"schema": "…"}` |
//! | `GET /schemas/ids/{id}/versions` | `[{"subject", "version"}]` |
//! | `GET /schemas/types` | `["AVRO"]` |
//! | `GET|PUT /config` `{"compatibility": "FULL"}` | `{"compatibilityLevel": "BACKWARD"}` / `{"compatibility": "FULL"}` |
//! | `GET|PUT|DELETE /config/{subject}[?defaultToGlobal=true]` | the same, per subject |
//! | `POST /compatibility/subjects/{subject}/versions[/{n or latest}][?verbose=true]` `{"schema": "…"}` | `{"is_compatible": true[, "messages": […]]}` |
//!
//! Errors are `{"error_code": 40401, "message": "…"}` with the matching HTTP status.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use super::{RegistryError, SchemaRegistry, Version, compat::Compatibility, store::SqlRegistry};

/// The media type Confluent's registry answers with.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared = Arc<SqlRegistry>;

/// The REST routes over `registry`.
pub fn router(registry: Shared) -> Router {
    Router::new()
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", axum::routing::post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route("/subjects/{subject}/versions/{version}", get(version).delete(delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(version_schema))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route("/schemas/types", get(|| async { reply(json!(["AVRO"])) }))
        .route("/config", get(global_config).put(set_global_config))
        .route("/config/{subject}", get(subject_config).put(set_subject_config).delete(delete_subject_config))
        .route("/compatibility/subjects/{subject}/versions", axum::routing::post(check_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", axum::routing::post(check_version))
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

/// Query flags. Clients write booleans as they print them (Confluent's Python client sends
/// `verbose=False`), so any case of true/false is taken.
#[derive(Deserialize, Default)]
struct Flags {
    #[serde(default, deserialize_with = "flag")]
    permanent: bool,
    #[serde(default, deserialize_with = "flag")]
    verbose: bool,
    #[serde(default, rename = "defaultToGlobal", deserialize_with = "flag")]
    default_to_global: bool,
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = String::deserialize(d)?;
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(serde::de::Error::custom(format!("{text:?} is not true or false"))),
    }
}

async fn delete_subject(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> Result<Response, ApiError> {
    Ok(reply(json!(r.delete_subject(&subject, f.permanent).await?)))
}

async fn delete_version(
    State(r): State<Shared>,
    Path((subject, v)): Path<(String, String)>,
    Query(f): Query<Flags>,
) -> Result<Response, ApiError> {
    Ok(reply(json!(r.delete_version(&subject, parse_version(&v)?, f.permanent).await?)))
}

async fn id_versions(State(r): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id: u32 = id.parse().map_err(|_| RegistryError::SchemaNotFound(id.clone()))?;
    let pairs: Vec<serde_json::Value> = r
        .id_versions(id)
        .await?
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(reply(json!(pairs)))
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: String,
}

async fn global_config(State(r): State<Shared>) -> Result<Response, ApiError> {
    let level = r.compatibility(None).await?.unwrap_or_default();
    Ok(reply(json!({"compatibilityLevel": level.as_str()})))
}

async fn set_global_config(State(r): State<Shared>, Json(body): Json<ConfigBody>) -> Result<Response, ApiError> {
    let level = Compatibility::parse(&body.compatibility)?;
    r.set_compatibility(None, level).await?;
    Ok(reply(json!({"compatibility": level.as_str()})))
}

async fn subject_config(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
) -> Result<Response, ApiError> {
    let level = match r.compatibility(Some(&subject)).await? {
        Some(level) => level,
        None if f.default_to_global => r.effective_compatibility(&subject).await?,
        None => return Err(RegistryError::NoSubjectCompatibility(subject).into()),
    };
    Ok(reply(json!({"compatibilityLevel": level.as_str()})))
}

async fn set_subject_config(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<ConfigBody>,
) -> Result<Response, ApiError> {
    let level = Compatibility::parse(&body.compatibility)?;
    r.set_compatibility(Some(&subject), level).await?;
    Ok(reply(json!({"compatibility": level.as_str()})))
}

async fn delete_subject_config(State(r): State<Shared>, Path(subject): Path<String>) -> Result<Response, ApiError> {
    let had = r.delete_compatibility(&subject).await?;
    Ok(reply(json!({"compatibilityLevel": had.as_str()})))
}

fn compatibility_answer(reasons: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({"is_compatible": reasons.is_empty()});
    if verbose {
        body["messages"] = json!(reasons);
    }
    reply(body)
}

async fn check_all(
    State(r): State<Shared>,
    Path(subject): Path<String>,
    Query(f): Query<Flags>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, ApiError> {
    check_type(&body)?;
    Ok(compatibility_answer(r.test_compatibility(&subject, &body.schema, None).await?, f.verbose))
}

async fn check_version(
    State(r): State<Shared>,
    Path((subject, v)): Path<(String, String)>,
    Query(f): Query<Flags>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, ApiError> {
    check_type(&body)?;
    let version = parse_version(&v)?;
    Ok(compatibility_answer(r.test_compatibility(&subject, &body.schema, Some(version)).await?, f.verbose))
}
