//! Consumer lag: how far each reader of a topic is behind the end of its log, per partition —
//! the lake writer (the next offsets in the `txn` actions of the topic's `raw.*` table, which
//! commit with the data) and each streaming pipeline (the offsets of its last checkpoint). Both
//! positions are durable ones: after a crash, reading resumes there. `GET /api/v1/lag` answers
//! it, and every answer also sets the `weir_consumer_lag` gauge. `GET /api/v1/pipelines` is the
//! streaming pipelines' status: lag, checkpoint age, watermark, counters and real-time results.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::json;
use weir_bus::Bus;
use weir_lake::{Lake, writer};

use weir_stream::engine::{Position, fmt_ms, now_ms};

use crate::{http::error, realtime::Realtime};

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionLag {
    /// Partition number.
    pub partition: u32,
    /// The next offset the consumer reads.
    pub position: i64,
    /// The offset the next record will get.
    pub end: i64,
    /// `end - position`.
    pub lag: i64,
}

/// One consumer of one topic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerLag {
    /// `lake` or `stream`.
    pub consumer: String,
    /// The table (`raw.…`) or the pipeline it feeds.
    pub target: String,
    /// The topic it reads.
    pub topic: String,
    /// Records behind, over all partitions.
    pub lag: i64,
    /// Age of the position: of the pipeline's checkpoint (`None` for the lake writer, whose
    /// position moves with every commit).
    pub position_age_s: Option<f64>,
    /// Per partition.
    pub partitions: Vec<PartitionLag>,
}

fn lag_of(consumer: &str, target: String, topic: &str, next: &BTreeMap<u32, i64>, ends: &[i64]) -> ConsumerLag {
    let partitions: Vec<PartitionLag> = ends
        .iter()
        .enumerate()
        .map(|(p, &end)| {
            let position = next.get(&(p as u32)).copied().unwrap_or(0);
            PartitionLag { partition: p as u32, position, end, lag: (end - position).max(0) }
        })
        .collect();
    ConsumerLag {
        consumer: consumer.into(),
        target,
        topic: topic.into(),
        lag: partitions.iter().map(|p| p.lag).sum(),
        position_age_s: None,
        partitions,
    }
}

/// The lag of every lake writer and streaming pipeline, by topic.
pub async fn lag(bus: &dyn Bus, lake: &Lake) -> Result<Vec<ConsumerLag>, String> {
    Ok(lag_and_positions(bus, lake).await?.0)
}

/// [`lag`], and the pipelines' checkpoint positions it was computed from.
async fn lag_and_positions(bus: &dyn Bus, lake: &Lake) -> Result<(Vec<ConsumerLag>, Vec<Position>), String> {
    let mut out = Vec::new();
    let mut ends: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for t in bus.list_topics().await.map_err(|e| e.to_string())? {
        let end = bus.end_offsets(&t.name).await.map_err(|e| e.to_string())?;
        if let Some(next) = writer::committed_offsets(lake, &t.name, t.partitions).await.map_err(|e| e.to_string())? {
            out.push(lag_of("lake", writer::table_name(&t.name), &t.name, &next, &end));
        }
        ends.insert(t.name, end);
    }
    let now_ms = now_ms();
    let positions = weir_stream::engine::positions(lake).await.map_err(|e| e.to_string())?;
    for p in &positions {
        let Some(end) = ends.get(&p.topic) else { continue };
        let mut l = lag_of("stream", p.pipeline.clone(), &p.topic, &p.next, end);
        l.position_age_s = Some((now_ms - p.taken_at_ms).max(0) as f64 / 1000.0);
        out.push(l);
    }
    for l in &out {
        metrics::gauge!("weir_consumer_lag", "consumer" => l.consumer.clone(), "target" => l.target.clone(), "topic" => l.topic.clone())
            .set(l.lag as f64);
    }
    Ok((out, positions))
}

struct LagApi {
    bus: Arc<dyn Bus>,
    lake: Lake,
    realtime: Arc<Realtime>,
}

/// `GET /api/v1/lag` and `GET /api/v1/pipelines` over `bus`, `lake` and the real-time views
/// (mount behind the API's tokens).
pub fn router(bus: Arc<dyn Bus>, lake: Lake, realtime: Arc<Realtime>) -> Router {
    Router::new()
        .route("/api/v1/lag", get(get_lag))
        .route("/api/v1/pipelines", get(get_pipelines))
        .with_state(Arc::new(LagApi { bus, lake, realtime }))
}

async fn get_lag(State(api): State<Arc<LagApi>>) -> Response {
    match lag(api.bus.as_ref(), &api.lake).await {
        Ok(consumers) => Json(json!({"consumers": consumers})).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn get_pipelines(State(api): State<Arc<LagApi>>) -> Response {
    let (consumers, positions) = match lag_and_positions(api.bus.as_ref(), &api.lake).await {
        Ok(got) => got,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let now_ms = now_ms();
    let pipelines: Vec<_> = positions
        .iter()
        .map(|p| {
            let lag = consumers.iter().find(|c| c.consumer == "stream" && c.target == p.pipeline).map(|c| c.lag);
            json!({
                "pipeline": p.pipeline,
                "topic": p.topic,
                "results_topic": format!("{}{}", crate::realtime::RESULTS_PREFIX, p.pipeline),
                "lag": lag,
                "checkpoint_age_s": (now_ms - p.taken_at_ms).max(0) as f64 / 1000.0,
                "watermark": (p.watermark > 0).then(|| fmt_ms(p.watermark)),
                "stats": p.stats,
                "realtime_rows": api.realtime.batch(&p.pipeline).map_or(0, |b| b.num_rows()),
            })
        })
        .collect();
    Json(json!({"pipelines": pipelines})).into_response()
}
