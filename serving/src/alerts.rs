//! The alert routes: `GET /api/v1/alerts` (the latest state of every alert, from `weir.alerts`,
//! with the silences that hold it now), `GET /api/v1/alerts/history` (the last state changes,
//! newest first), and silences in Alertmanager's API v2 shape —
//! `GET /api/v1/silences`, `POST /api/v1/silences` (`{"matchers": [{"name", "value",
//! "isEqual"}], "startsAt", "endsAt", "createdBy", "comment"}` → `{"silenceID"}`; an `id` that
//! exists updates it), `DELETE /api/v1/silence/{id}` (expires it now). Silences go to
//! `weir.alerts.silences`, which every stream process follows ([`weir_stream::silence`]).
//! Mount behind the API's tokens ([`crate::http::protect`]).

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use serde::Deserialize;
use serde_json::{Value, json};
use weir_bus::Producer;
use weir_stream::silence::{self, Silence, SilenceError, Silences};

use crate::{http::error, realtime::Realtime};

struct Alerts {
    realtime: Arc<Realtime>,
    silences: Arc<Silences>,
    producer: Arc<dyn Producer>,
}

/// The alert and silence routes over `realtime` (which follows `weir.alerts`) and `silences`
/// (which [`silence::follow`] keeps current), publishing silences with `producer`.
pub fn router(realtime: Arc<Realtime>, silences: Arc<Silences>, producer: Arc<dyn Producer>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/history", get(alert_history))
        .route("/api/v1/silences", get(list_silences).post(post_silence))
        .route("/api/v1/silence/{id}", delete(expire_silence))
        .with_state(Arc::new(Alerts { realtime, silences, producer }))
}

#[derive(Deserialize)]
struct AlertFilter {
    /// Only alerts in this state (`pending`, `firing`, `resolved`, `inactive`).
    state: Option<String>,
}

async fn list_alerts(State(api): State<Arc<Alerts>>, Query(filter): Query<AlertFilter>) -> Response {
    let now = SystemTime::now();
    let mut alerts: Vec<Value> = api
        .realtime
        .records("alerts")
        .into_iter()
        .filter(|a| filter.state.as_deref().is_none_or(|s| a["state"] == s))
        .map(|mut a| {
            let labels = serde_json::from_value(a["labels"].clone()).unwrap_or_default();
            let by = api.silences.matching(&labels, now);
            a["silenced_by"] = json!(by);
            a
        })
        .collect();
    alerts.sort_by_key(|a| (a["alert"].to_string(), a["labels"].to_string()));
    Json(json!({"alerts": alerts})).into_response()
}

async fn alert_history(State(api): State<Arc<Alerts>>) -> Response {
    Json(json!({"changes": api.realtime.alert_history()})).into_response()
}

fn with_state(s: &Silence, now: SystemTime) -> Value {
    let mut v = serde_json::to_value(s).expect("a silence is JSON");
    v["status"] = json!({"state": s.state(now)});
    v
}

async fn list_silences(State(api): State<Arc<Alerts>>) -> Response {
    let now = SystemTime::now();
    Json(Value::Array(api.silences.list().iter().map(|s| with_state(s, now)).collect())).into_response()
}

async fn post_silence(State(api): State<Arc<Alerts>>, body: axum::body::Bytes) -> Response {
    let mut s: Silence = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a silence: {e}")),
    };
    if s.id.is_empty() {
        s.id = new_id();
    } else if api.silences.get(&s.id).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no silence {:?} to update", s.id));
    }
    let id = s.id.clone();
    match silence::publish(api.producer.as_ref(), &api.silences, s).await {
        Ok(()) => Json(json!({"silenceID": id})).into_response(),
        Err(e @ SilenceError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn expire_silence(State(api): State<Arc<Alerts>>, Path(id): Path<String>) -> Response {
    let Some(mut s) = api.silences.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("no silence {id:?}"));
    };
    let now = SystemTime::now();
    if s.state(now) == "expired" {
        return StatusCode::OK.into_response();
    }
    // Expired now; a silence that had not started yet keeps a valid (empty) span.
    s.starts_at = s.starts_at.min(now - std::time::Duration::from_millis(1));
    s.ends_at = now;
    match silence::publish(api.producer.as_ref(), &api.silences, s).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// A new silence id: 128 random bits, hex in the UUID layout.
fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
