//! The HTTP API: `POST /api/v1/query` (JSON or Arrow IPC), `GET /api/v1/tables`, the OpenAPI
//! document at `GET /api/v1/openapi.json`, and `/readyz`. Every `/api` route but the spec wants
//! `Authorization: Bearer <token>` of a scope that allows it ([`weir_schemas::tokens`]): 401
//! without a valid token, 403 naming the scope needed; errors are JSON `{"error": "…"}` with a
//! fitting status.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use deltalake::arrow::{
    ipc::writer::StreamWriter,
    json::{WriterBuilder, writer::JsonArray},
};
use serde::Deserialize;
use serde_json::{Value, json};

use weir_schemas::tokens::{Scope, Tokens};

use crate::catalog::{Catalog, QueryError};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

struct Api {
    catalog: Arc<Catalog>,
    tokens: Arc<Tokens>,
}

/// The API's routes over `catalog`, accepting these bearer `tokens`, and the operator console at `/`.
pub fn router(catalog: Arc<Catalog>, tokens: Arc<Tokens>) -> Router {
    router_with_paths(catalog, tokens, json!({}))
}

/// [`router`], with the OpenAPI `paths` of routes other crates own added to the published spec.
pub fn router_with_paths(catalog: Arc<Catalog>, tokens: Arc<Tokens>, other_paths: Value) -> Router {
    let api = Arc::new(Api { catalog, tokens });
    let mut spec = openapi();
    if let (Some(paths), Value::Object(more)) = (spec["paths"].as_object_mut(), other_paths) {
        paths.extend(more);
    }
    let spec = Arc::new(spec);
    Router::new()
        .route("/", get(|| async { axum::response::Html(CONSOLE_HTML) }))
        .route(
            "/console.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], CONSOLE_JS) }),
        )
        .route("/console.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CONSOLE_CSS) }))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/query", post(query))
        .route("/api/v1/tables", get(tables))
        .route("/api/v1/openapi.json", get(move || async move { Json(spec.as_ref().clone()) }))
        .route("/readyz", get(readyz))
        .with_state(api)
}

/// The operator console: one page, its script and its style, compiled into the binary (no
/// build step, nothing fetched from elsewhere); it calls this API with the token it is given.
const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// `routes` behind the same bearer tokens as the query API (for routes other crates own, such
/// as the orchestrator's): a `GET` needs `read`, any other method (trigger, clear, pause,
/// silences) `operate`.
pub fn protect(routes: Router, tokens: Arc<Tokens>) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(tokens, check_token))
}

async fn check_token(
    State(tokens): State<Arc<Tokens>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().clone();
    let needed = if method == axum::http::Method::GET || method == axum::http::Method::HEAD {
        Scope::Read
    } else {
        Scope::Operate
    };
    let what = format!("{method} {}", request.uri().path());
    match refused(&tokens, request.headers(), needed, &what) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// An error answer: `{"error": message}` with `status`.
pub(crate) fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({"error": message.to_string()}))).into_response()
}

/// The answer refusing a request for `what`, which needs `needed`, if it is refused: 401 without
/// a valid token, 403 when its scope does not allow it.
fn refused(tokens: &Tokens, headers: &HeaderMap, needed: Scope, what: &str) -> Option<Response> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    tokens.check(header, needed, what).err().map(|e| error(e.status(), e))
}

/// `GET /api/v1/whoami`: the scope of the caller's token, so the console offers only what it
/// may do (the API checks every request anyway).
async fn whoami(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match api.tokens.check(header, Scope::Read, "GET /api/v1/whoami") {
        Ok(scope) => Json(json!({"scope": scope.as_str(), "operate": scope.allows(Scope::Operate)})).into_response(),
        Err(e) => error(e.status(), e),
    }
}

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if api.catalog.ready() {
        "ready\n".into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "loading the catalogue")
    }
}

async fn tables(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Some(refused) = refused(&api.tokens, &headers, Scope::Read, "GET /api/v1/tables") {
        return refused;
    }
    let tables: Vec<Value> = api
        .catalog
        .tables()
        .await
        .into_iter()
        .map(|t| {
            let columns: Vec<Value> = t.columns.into_iter().map(|(n, ty)| json!({"name": n, "type": ty})).collect();
            json!({"name": t.name, "columns": columns})
        })
        .collect();
    Json(json!({"tables": tables})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

async fn query(State(api): State<Arc<Api>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = refused(&api.tokens, &headers, Scope::Read, "POST /api/v1/query") {
        return refused;
    }
    let body: QueryBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"sql\": \"…\", \"format\": \"json\"|\"arrow\"}}: {e}"),
            );
        }
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let arrow = match body.format.as_deref() {
        Some("arrow") => true,
        Some("json") => false,
        Some(other) => return error(StatusCode::BAD_REQUEST, format!("format {other:?}: use json or arrow")),
        None => accept.contains(ARROW_STREAM),
    };
    let answer = match api.catalog.query(&body.sql).await {
        Ok(a) => a,
        Err(e) => {
            let (status, outcome) = match &e {
                QueryError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
                QueryError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
                QueryError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
            };
            metrics::counter!("weir_serving_queries_total", "outcome" => outcome).increment(1);
            return error(status, e);
        }
    };
    metrics::counter!("weir_serving_queries_total", "outcome" => "ok").increment(1);
    metrics::histogram!("weir_serving_query_seconds").record(answer.elapsed.as_secs_f64());
    if arrow {
        let mut out = Vec::new();
        let written = StreamWriter::try_new(&mut out, &answer.schema).and_then(|mut w| {
            for b in &answer.batches {
                w.write(b)?;
            }
            w.finish()
        });
        if let Err(e) = written {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        let truncated = if answer.truncated { "true" } else { "false" };
        return (
            [(header::CONTENT_TYPE, ARROW_STREAM), (header::HeaderName::from_static("x-weir-truncated"), truncated)],
            out,
        )
            .into_response();
    }
    let rows = match rows_json(&answer.batches) {
        Ok(rows) => rows,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let columns: Vec<Value> =
        answer.schema.fields().iter().map(|f| json!({"name": f.name(), "type": f.data_type().to_string()})).collect();
    Json(json!({
        "columns": columns,
        "rows": rows,
        "row_count": answer.rows,
        "truncated": answer.truncated,
        "elapsed_ms": answer.elapsed.as_secs_f64() * 1000.0,
    }))
    .into_response()
}

/// Record batches as a JSON array of row objects (nulls written out).
pub(crate) fn rows_json(
    batches: &[deltalake::arrow::array::RecordBatch],
) -> Result<Value, deltalake::arrow::error::ArrowError> {
    let mut writer = WriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(Vec::new());
    for b in batches {
        writer.write(b)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(json!([]));
    }
    serde_json::from_slice(&bytes).map_err(|e| deltalake::arrow::error::ArrowError::JsonError(e.to_string()))
}

/// The OpenAPI 3.0 description of this API.
pub fn openapi() -> Value {
    let error = json!({"type": "object", "properties": {"error": {"type": "string"}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Weir serving API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": error},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/query": {"post": {
                "summary": "Run one read-only SQL query (DataFusion dialect) over raw.*, current.*, views.*, realtime.*, serving.*",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["sql"],
                    "properties": {"sql": {"type": "string"}, "format": {"type": "string", "enum": ["json", "arrow"]}}
                }}}},
                "responses": {
                    "200": {"description": "rows", "content": {
                        "application/json": {"schema": {"type": "object", "properties": {
                            "columns": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"}}}},
                            "rows": {"type": "array", "items": {"type": "object"}},
                            "row_count": {"type": "integer"},
                            "truncated": {"type": "boolean"},
                            "elapsed_ms": {"type": "number"}
                        }}},
                        ARROW_STREAM: {"schema": {"type": "string", "format": "binary"}}
                    }},
                    "400": {"description": "invalid or not read-only SQL", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "401": {"description": "missing or wrong bearer token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                    "504": {"description": "cancelled at the query timeout", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                }
            }},
            "/api/v1/whoami": {"get": {
                "summary": "The scope of the caller's bearer token (read, operate, ingest, admin) and whether it may operate",
                "responses": {"200": {"description": "{\"scope\": \"read\", \"operate\": false}"}, "401": {"description": "missing or wrong bearer token"}}
            }},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document: every route of the API with its methods, parameters and answers",
                "responses": {"200": {"description": "OpenAPI 3.0"}, "401": {"description": "missing or wrong bearer token"}}
            }},
            "/api/v1/tables": {"get": {
                "summary": "The catalogue: every table and view with its columns",
                "responses": {"200": {"description": "tables"}, "401": {"description": "missing or wrong bearer token"}}
            }},
            "/api/v1/alerts": {"get": {
                "summary": "The latest state of every alert (from weir.alerts) with the ids of the silences holding it now",
                "parameters": [{"name": "state", "in": "query", "schema": {"type": "string", "enum": ["pending", "firing", "resolved", "inactive"]}}],
                "responses": {"200": {"description": "{\"alerts\": [...]}"}, "401": {"description": "missing or wrong bearer token"}}
            }},
            "/api/v1/alerts/history": {"get": {
                "summary": "The last 1,000 alert state changes (pending, firing, resolved), newest first",
                "responses": {"200": {"description": "{\"changes\": [{alert, state, labels, value, evaluated_at, active_at, fired_at, silenced}]}"}, "401": {"description": "missing or wrong bearer token"}}
            }},
            "/api/v1/silences": {
                "get": {"summary": "Every silence (alert files' and the API's) with status.state pending|active|expired", "responses": {"200": {"description": "silences"}}},
                "post": {
                    "summary": "Create a silence (Alertmanager API v2 shape); with an existing id, update it",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["matchers", "endsAt"],
                        "properties": {
                            "id": {"type": "string"},
                            "matchers": {"type": "array", "items": {"type": "object", "required": ["name", "value"], "properties": {
                                "name": {"type": "string"}, "value": {"type": "string"}, "isEqual": {"type": "boolean", "default": true}, "isRegex": {"type": "boolean", "enum": [false]}
                            }}},
                            "startsAt": {"type": "string", "format": "date-time"},
                            "endsAt": {"type": "string", "format": "date-time"},
                            "createdBy": {"type": "string"},
                            "comment": {"type": "string"}
                        }
                    }}}},
                    "responses": {
                        "200": {"description": "{\"silenceID\": \"…\"}"},
                        "400": {"description": "not a valid silence", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                        "404": {"description": "the id to update does not exist"}
                    }
                }
            },
            "/api/v1/silence/{id}": {"delete": {
                "summary": "Expire a silence now",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "expired"}, "404": {"description": "no such silence"}}
            }},
            "/api/v1/lag": {"get": {
                "summary": "Consumer lag per topic and partition: lake writers (positions in the tables' txn actions) and streaming pipelines (positions in their checkpoints)",
                "responses": {"200": {"description": "{\"consumers\": [{consumer, target, topic, lag, position_age_s, partitions: [{partition, position, end, lag}]}]}"}}
            }},
            "/api/v1/lag/history": {"get": {
                "summary": "The last measurements of consumer lag (per consumer, `lake:<table>` or `stream:<pipeline>`) and watermark delay (per pipeline), oldest first",
                "responses": {"200": {"description": "{\"samples\": [{at_ms, lag: {...}, watermark_delay_ms: {...}}]}"}}
            }},
            "/api/v1/lake/tables": {"get": {
                "summary": "Every lake table with its latest version, data files, bytes and last commit time",
                "responses": {"200": {"description": "{\"tables\": [{name, version, files, bytes, last_commit_ms}]}"}}
            }},
            "/api/v1/lake/tables/{name}": {"get": {
                "summary": "One lake table at its latest version or `version`: schema, files, bytes, partition columns, commit history, the first 50 rows, and for current.* how far it is behind its change log",
                "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "version", "in": "query", "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "the table"}, "404": {"description": "no such table or version"}}
            }},
            "/api/v1/pipelines": {"get": {
                "summary": "Streaming pipelines' status from their checkpoints: topic, lag, checkpoint age, watermark, counters, real-time rows",
                "responses": {"200": {"description": "{\"pipelines\": [...]}"}}
            }},
            "/readyz": {"get": {"summary": "200 once the catalogue is loaded", "security": [], "responses": {"200": {"description": "ready"}, "503": {"description": "loading"}}}},
            "/healthz": {"get": {"summary": "the process is up", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text format"}}}}
        }
    })
}
