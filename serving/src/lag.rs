//! Consumer lag: how far each reader of a topic is behind the end of its log, per partition —
//! the lake writer (the next offsets in the `txn` actions of the topic's `raw.*` table, which
//! commit with the data) and each streaming pipeline (the offsets of its last checkpoint). Both
//! positions are durable ones: after a crash, reading resumes there. A [`LagTracker`] measures
//! it every interval (keeping the lake's tables open, so each measurement reads only new
//! commits) and sets the `weir_consumer_lag` gauge; `GET /api/v1/lag` answers the latest
//! measurement, `GET /api/v1/lag/history` the last [`HISTORY`] measurements as samples (lag per
//! consumer, watermark delay per pipeline) for charts, and `GET /api/v1/pipelines` the streaming pipelines' status from it: lag,
//! checkpoint age, watermark, counters and real-time results.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use deltalake::DeltaTable;
use serde::Serialize;
use serde_json::json;
use weir_bus::Bus;
use weir_lake::{Lake, OpenTables, writer};

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

/// One measurement: the lag of every lake writer and pipeline, and the pipelines' positions.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// When it was taken (ms since the epoch).
    pub at_ms: i64,
    /// Every lake writer and streaming pipeline, by topic.
    pub consumers: Vec<ConsumerLag>,
    /// The pipelines' checkpoint positions.
    pub positions: Vec<Position>,
}

/// Measurements kept for `GET /api/v1/lag/history` (an hour at the default 5 s interval).
pub const HISTORY: usize = 720;

/// One measurement, reduced to what a chart over time shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// When it was taken (ms since the epoch).
    pub at_ms: i64,
    /// Records behind per consumer, keyed `lake:<table>` or `stream:<pipeline>`.
    pub lag: BTreeMap<String, i64>,
    /// Per pipeline: how far its watermark trails the measurement (ms).
    pub watermark_delay_ms: BTreeMap<String, i64>,
}

/// Measures consumer lag over a bus and a lake and keeps the latest measurement and a short
/// history of samples.
pub struct LagTracker {
    bus: Arc<dyn Bus>,
    lake: Lake,
    open: OpenTables,
    latest: std::sync::RwLock<Option<Arc<Measurement>>>,
    history: std::sync::Mutex<std::collections::VecDeque<Sample>>,
}

impl LagTracker {
    /// A tracker with no measurement yet.
    pub fn new(bus: Arc<dyn Bus>, lake: Lake) -> LagTracker {
        LagTracker { bus, lake, open: OpenTables::default(), latest: Default::default(), history: Default::default() }
    }

    /// The samples kept, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history.lock().expect("not poisoned").iter().cloned().collect()
    }

    /// The latest measurement, if one was taken.
    pub fn latest(&self) -> Option<Arc<Measurement>> {
        self.latest.read().expect("not poisoned").clone()
    }

    /// Measures now: keeps the result and sets the `weir_consumer_lag` gauges.
    pub async fn measure(&self) -> Result<Arc<Measurement>, String> {
        let tables: BTreeMap<String, DeltaTable> =
            self.open.refresh(&self.lake).await.map_err(|e| e.to_string())?.into_iter().collect();
        let mut consumers = Vec::new();
        let mut ends: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for t in self.bus.list_topics().await.map_err(|e| e.to_string())? {
            let end = self.bus.end_offsets(&t.name).await.map_err(|e| e.to_string())?;
            let name = writer::table_name(&t.name);
            if let Some(table) = tables.get(&name) {
                let next = writer::committed_offsets(table, &t.name, t.partitions).await.map_err(|e| e.to_string())?;
                consumers.push(lag_of("lake", name, &t.name, &next, &end));
            }
            ends.insert(t.name, end);
        }
        let at_ms = now_ms();
        let positions = weir_stream::engine::positions(&self.lake).await.map_err(|e| e.to_string())?;
        for p in &positions {
            let Some(end) = ends.get(&p.topic) else { continue };
            let mut l = lag_of("stream", p.pipeline.clone(), &p.topic, &p.next, end);
            l.position_age_s = Some((at_ms - p.taken_at_ms).max(0) as f64 / 1000.0);
            consumers.push(l);
        }
        for l in &consumers {
            metrics::gauge!("weir_consumer_lag", "consumer" => l.consumer.clone(), "target" => l.target.clone(), "topic" => l.topic.clone())
                .set(l.lag as f64);
        }
        let sample = Sample {
            at_ms,
            lag: consumers.iter().map(|c| (format!("{}:{}", c.consumer, c.target), c.lag)).collect(),
            watermark_delay_ms: positions
                .iter()
                .filter(|p| p.watermark > 0)
                .map(|p| (p.pipeline.clone(), (at_ms - p.watermark).max(0)))
                .collect(),
        };
        {
            let mut history = self.history.lock().expect("not poisoned");
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(sample);
        }
        let measured = Arc::new(Measurement { at_ms, consumers, positions });
        *self.latest.write().expect("not poisoned") = Some(measured.clone());
        Ok(measured)
    }

    /// Measures now and then every `every` until `stop` turns true; a failed measurement is
    /// logged and the previous one stays.
    pub async fn keep_measuring(self: Arc<Self>, every: Duration, stop: tokio::sync::watch::Receiver<bool>) {
        crate::every(every, stop, || {
            let this = self.clone();
            async move {
                if let Err(e) = this.measure().await {
                    tracing::warn!(error = %e, "measuring consumer lag failed");
                }
            }
        })
        .await
    }
}

struct LagApi {
    tracker: Arc<LagTracker>,
    realtime: Arc<Realtime>,
}

/// `GET /api/v1/lag` and `GET /api/v1/pipelines` from `tracker`'s latest measurement and the
/// real-time views (mount behind the API's tokens).
pub fn router(tracker: Arc<LagTracker>, realtime: Arc<Realtime>) -> Router {
    Router::new()
        .route("/api/v1/lag", get(get_lag))
        .route("/api/v1/lag/history", get(get_history))
        .route("/api/v1/pipelines", get(get_pipelines))
        .with_state(Arc::new(LagApi { tracker, realtime }))
}

fn not_yet() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "consumer lag has not been measured yet")
}

async fn get_lag(State(api): State<Arc<LagApi>>) -> Response {
    let Some(m) = api.tracker.latest() else { return not_yet() };
    Json(json!({"measured_at": fmt_ms(m.at_ms), "consumers": m.consumers})).into_response()
}

async fn get_history(State(api): State<Arc<LagApi>>) -> Response {
    Json(json!({"samples": api.tracker.history()})).into_response()
}

async fn get_pipelines(State(api): State<Arc<LagApi>>) -> Response {
    let Some(m) = api.tracker.latest() else { return not_yet() };
    let (consumers, positions, now_ms) = (&m.consumers, &m.positions, m.at_ms);
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
    Json(json!({"measured_at": fmt_ms(m.at_ms), "pipelines": pipelines})).into_response()
}
