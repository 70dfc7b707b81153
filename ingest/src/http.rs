//! HTTP event ingestion: services POST JSON events and get them acknowledged on a bus topic.
//!
//! `POST /topics/{topic}` takes, by `Content-Type`:
//! - `application/vnd.kafka.json.v2+json` (Confluent REST Proxy v2):
//!   `{"records": [{"key": …, "value": {…}, "partition": n}]}`;
//! - `application/x-ndjson`: one JSON object per line;
//! - anything else: a JSON object or an array of objects.
//!
//! `?key=<field>` keys each event by that field (one entity's events stay in order on one
//! partition). The answer comes after the bus acknowledged every record: `{"offsets":
//! [{"partition", "offset"}]}` as the REST Proxy answers. A batch with one bad event is refused
//! whole with a 400 naming it, so a client never wonders which part landed.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use weir_bus::{Bus, BusError, Producer, Record};
use weir_schemas::tokens::{Scope, Tokens};

/// `[ingest.http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpIngestConfig {
    /// Where `weir ingest http` listens.
    pub listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Create a topic on its first event (with this many partitions); 0 refuses unknown topics.
    pub create_partitions: u32,
    /// Environment variable with the tokens that may post (`ingest:token` or `admin:token`,
    /// comma-separated; [`weir_schemas::tokens`]).
    pub tokens_env: String,
    /// A file of such tokens, read again when it changes. With no token in either, anyone who
    /// reaches the listener may post (a warning says so at start-up).
    pub tokens_file: Option<std::path::PathBuf>,
    /// Whether `weir up` runs this endpoint among its roles (`weir ingest http` runs it anyway).
    pub enabled: bool,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        HttpIngestConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            max_body_bytes: 8 << 20,
            create_partitions: 3,
            tokens_env: "WEIR_INGEST_TOKENS".into(),
            tokens_file: None,
            enabled: false,
        }
    }
}

struct Ingest {
    bus: Arc<dyn Bus>,
    producer: Box<dyn Producer>,
    create_partitions: u32,
    /// Who may post; `None`: anyone.
    tokens: Option<Arc<Tokens>>,
}

/// The ingestion routes over `bus`; with `tokens`, a request needs a bearer token of scope
/// `ingest` (or `admin`).
pub async fn router(
    bus: Arc<dyn Bus>,
    config: &HttpIngestConfig,
    tokens: Option<Arc<Tokens>>,
) -> Result<Router, BusError> {
    let state =
        Arc::new(Ingest { producer: bus.producer().await?, bus, create_partitions: config.create_partitions, tokens });
    Ok(Router::new()
        .route("/topics/{topic}", post(produce))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state))
}

#[derive(Deserialize)]
struct Params {
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyBody {
    records: Vec<ProxyRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyRecord {
    #[serde(default)]
    key: Option<Value>,
    value: Value,
    #[serde(default)]
    partition: Option<u32>,
}

/// A refusal: HTTP status, REST-Proxy-style error code, message.
fn refuse(status: StatusCode, code: u32, message: String) -> Response {
    metrics::counter!("weir_ingest_http_refused_total", "status" => status.as_u16().to_string()).increment(1);
    (status, Json(json!({"error_code": code, "message": message}))).into_response()
}

async fn produce(
    State(state): State<Arc<Ingest>>,
    Path(topic): Path<String>,
    Query(params): Query<Params>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(tokens) = &state.tokens {
        let header = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(e) = tokens.check(header, Scope::Ingest, &format!("POST /topics/{topic}")) {
            // REST Proxy's codes: 40101 unauthorized, 40301 forbidden.
            let code = if e.status() == StatusCode::UNAUTHORIZED { 40_101 } else { 40_301 };
            return refuse(e.status(), code, e.to_string());
        }
    }
    if let Err(e) = weir_bus::validate_topic_name(&topic) {
        return refuse(StatusCode::BAD_REQUEST, 40_001, e.to_string());
    }
    if topic.starts_with("weir.") || topic.starts_with("__") || topic.ends_with(".dlq") {
        return refuse(StatusCode::FORBIDDEN, 40_301, format!("{topic} is one of Weir's own topics"));
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let records = match parse(&body, content_type, params.key.as_deref()) {
        Ok(r) => r,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, 42_201, message),
    };
    if records.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, 42_202, "no events in the request".into());
    }
    match state.bus.topic(&topic).await {
        Ok(_) => {}
        Err(BusError::UnknownTopic(_)) if state.create_partitions > 0 => {
            match state.bus.create_topic(&topic, state.create_partitions).await {
                Ok(()) | Err(BusError::TopicExists(_)) => tracing::info!(topic, "created on its first event"),
                Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, 50_301, e.to_string()),
            }
        }
        Err(BusError::UnknownTopic(_)) => {
            return refuse(StatusCode::NOT_FOUND, 40_401, format!("topic {topic} does not exist"));
        }
        Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, 50_301, e.to_string()),
    }
    let n = records.len();
    match state.producer.send(&topic, records).await {
        Ok(delivered) => {
            metrics::counter!("weir_ingest_http_events_total", "topic" => topic).increment(n as u64);
            let offsets: Vec<Value> =
                delivered.iter().map(|d| json!({"partition": d.partition, "offset": d.offset})).collect();
            Json(json!({"offsets": offsets})).into_response()
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, 50_302, format!("the bus did not acknowledge: {e}")),
    }
}

/// The records of a request body, or why it is refused (naming the event).
fn parse(body: &[u8], content_type: &str, key_field: Option<&str>) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let record = |what: String, value: Value, key: Option<Value>, partition| -> Result<Record, String> {
        let Value::Object(obj) = value else { return Err(format!("{what}: an event is a JSON object")) };
        let key = match (key, key_field) {
            (Some(k), _) => Some(k),
            (None, Some(field)) => {
                Some(obj.get(field).cloned().ok_or_else(|| format!("{what}: no field {field:?} to key by"))?)
            }
            (None, None) => None,
        };
        let key = key.map(|k| match k {
            Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        });
        Ok(Record {
            key: key.map(Into::into),
            value: Some(serde_json::to_vec(&Value::Object(obj)).expect("JSON").into()),
            partition,
            ..Record::default()
        })
    };
    if content_type.starts_with("application/vnd.kafka.json.v2+json") {
        let b: ProxyBody = serde_json::from_slice(body).map_err(|e| format!("not a REST Proxy v2 body: {e}"))?;
        for (i, r) in b.records.into_iter().enumerate() {
            out.push(record(format!("records[{i}]"), r.value, r.key, r.partition)?);
        }
    } else if content_type.starts_with("application/x-ndjson") {
        let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            out.push(record(format!("line {}", i + 1), v, None, None)?);
        }
    } else {
        match serde_json::from_slice::<Value>(body).map_err(|e| format!("not JSON: {e}"))? {
            Value::Array(items) => {
                for (i, v) in items.into_iter().enumerate() {
                    out.push(record(format!("events[{i}]"), v, None, None)?);
                }
            }
            v @ Value::Object(_) => out.push(record("the event".into(), v, None, None)?),
            _ => return Err("expected a JSON object or an array of objects".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_body_forms_parse_and_key_by_a_field() {
        let r = parse(br#"[{"id": 1, "m": "a"}, {"id": 2, "m": "b"}]"#, "application/json", Some("m")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].key.as_deref(), Some(&b"b"[..]));
        let r = parse(b"{\"id\": 1}\n\n{\"id\": 2}\n", "application/x-ndjson", None).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].key.is_none());
        let body = br#"{"records": [{"key": 7, "value": {"x": 1}, "partition": 2}]}"#;
        let r = parse(body, "application/vnd.kafka.json.v2+json", None).unwrap();
        assert_eq!((r[0].key.as_deref(), r[0].partition), (Some(&b"7"[..]), Some(2)));
    }

    #[test]
    fn a_bad_event_is_named() {
        let e = parse(br#"[{"id": 1}, 5]"#, "application/json", None).unwrap_err();
        assert_eq!(e, "events[1]: an event is a JSON object");
        let e = parse(b"{\"id\": 1}\n{oops}\n", "application/x-ndjson", None).unwrap_err();
        assert!(e.starts_with("line 2: "), "{e}");
        let e = parse(br#"[{"id": 1}]"#, "application/json", Some("m")).unwrap_err();
        assert_eq!(e, "events[0]: no field \"m\" to key by");
        assert!(parse(b"[1", "application/json", None).unwrap_err().starts_with("not JSON"));
    }
}
