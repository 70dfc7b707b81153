//! Real-time views: every results topic of the speed layer (`weir.stream.<pipeline>`) read from
//! its start into an upsert table — the latest result per key and window — that queries see as
//! `realtime.<pipeline>`, and `weir.alerts` into `realtime.alerts`, the latest state change of
//! each alert. Records older than the retention (by record time, behind the newest) are dropped.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
    sync::{Arc, Mutex},
    time::Duration,
};

use deltalake::arrow::{
    array::RecordBatch,
    compute::cast,
    datatypes::{DataType, Field, Schema, TimeUnit},
    json::{ReaderBuilder, reader::infer_json_schema_from_seekable},
};
use weir_bus::{Bus, BusError};

/// The prefix of the speed layer's results topics.
pub const RESULTS_PREFIX: &str = "weir.stream.";
/// The speed layer's alert state changes.
pub const ALERTS_TOPIC: &str = "weir.alerts";

#[derive(Default)]
struct View {
    /// Record key (key columns + window start) → (window end in ms, value JSON).
    rows: HashMap<Vec<u8>, (i64, Vec<u8>)>,
    /// The batch of `rows`, rebuilt when they change.
    cached: Option<RecordBatch>,
}

/// Alert state changes kept in order for `GET /api/v1/alerts/history`.
pub const ALERT_HISTORY: usize = 1000;

/// Every real-time view, shared by the followers that fill them and the queries that read them.
#[derive(Default)]
pub struct Realtime {
    views: Mutex<BTreeMap<String, View>>,
    /// The last [`ALERT_HISTORY`] alert state changes, oldest first (the `alerts` view keeps only
    /// the latest per alert).
    alert_history: Mutex<std::collections::VecDeque<Vec<u8>>>,
    retention_ms: i64,
}

impl Realtime {
    /// Empty views that keep `retention` of results.
    pub fn new(retention: Duration) -> Realtime {
        Realtime {
            views: Mutex::default(),
            alert_history: Mutex::default(),
            retention_ms: retention.as_millis() as i64,
        }
    }

    /// Applies one result record of `pipeline` (`alerts`: one alert state change, also kept in
    /// the history).
    pub fn upsert(&self, pipeline: &str, key: Vec<u8>, value: Vec<u8>, window_end_ms: i64) {
        if pipeline == "alerts" {
            let mut history = self.alert_history.lock().expect("not poisoned");
            if history.len() == ALERT_HISTORY {
                history.pop_front();
            }
            history.push_back(value.clone());
        }
        let mut views = self.views.lock().expect("not poisoned");
        let view = views.entry(pipeline.to_string()).or_default();
        view.rows.insert(key, (window_end_ms, value));
        view.cached = None;
    }

    /// The alert state changes kept, newest first.
    pub fn alert_history(&self) -> Vec<serde_json::Value> {
        let history = self.alert_history.lock().expect("not poisoned");
        history.iter().rev().filter_map(|v| serde_json::from_slice(v).ok()).collect()
    }

    /// The pipelines with a view.
    pub fn pipelines(&self) -> Vec<String> {
        self.views.lock().expect("not poisoned").keys().cloned().collect()
    }

    /// `view`'s records as JSON values (the latest per key), in no particular order.
    pub fn records(&self, view: &str) -> Vec<serde_json::Value> {
        let views = self.views.lock().expect("not poisoned");
        let Some(view) = views.get(view) else { return Vec::new() };
        view.rows.values().filter_map(|(_, v)| serde_json::from_slice(v).ok()).collect()
    }

    /// `pipeline`'s rows as one batch (window bounds as UTC timestamps), `None` without rows.
    pub fn batch(&self, pipeline: &str) -> Option<RecordBatch> {
        let mut views = self.views.lock().expect("not poisoned");
        let view = views.get_mut(pipeline)?;
        if let Some(newest) = view.rows.values().map(|(end, _)| *end).max() {
            let before = view.rows.len();
            view.rows.retain(|_, (end, _)| *end > newest - self.retention_ms);
            if view.rows.len() != before {
                view.cached = None;
            }
        }
        if view.cached.is_none() && !view.rows.is_empty() {
            view.cached = to_batch(view.rows.values().map(|(_, v)| v.as_slice()));
        }
        view.cached.clone()
    }
}

/// Result records (JSON objects) as one batch: the schema inferred from the records, window
/// bounds cast to timestamps.
fn to_batch<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<RecordBatch> {
    let (mut text, mut rows) = (Vec::new(), 0);
    for v in values {
        text.extend_from_slice(v);
        text.push(b'\n');
        rows += 1;
    }
    let (schema, _) = infer_json_schema_from_seekable(Cursor::new(&text), None).ok()?;
    let schema = Arc::new(schema);
    let mut reader = ReaderBuilder::new(schema.clone()).with_batch_size(rows).build(Cursor::new(&text)).ok()?;
    let batch = reader.next()?.ok()?;
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in schema.fields().iter().zip(batch.columns()) {
        if matches!(f.name().as_str(), "window_start" | "window_end") && f.data_type() == &DataType::Utf8 {
            columns.push(cast(c, &ts).ok()?);
            fields.push(Field::new(f.name(), ts.clone(), true));
        } else {
            columns.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).ok()
}

/// Follows every results topic (new ones are found every `discover` interval) into `realtime`
/// until `stop` turns true.
pub async fn follow(
    bus: Arc<dyn Bus>,
    realtime: Arc<Realtime>,
    discover: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BusError> {
    let mut followed: BTreeMap<String, tokio::task::JoinHandle<Result<(), BusError>>> = BTreeMap::new();
    loop {
        for t in bus.list_topics().await? {
            // Results become realtime.<pipeline>; alert state changes realtime.alerts (the
            // latest change of each alert).
            let view = if t.name == ALERTS_TOPIC { Some("alerts") } else { t.name.strip_prefix(RESULTS_PREFIX) };
            if let Some(pipeline) = view
                && !followed.contains_key(&t.name)
            {
                let task = tokio::spawn(follow_topic(
                    bus.clone(),
                    realtime.clone(),
                    t.name.clone(),
                    pipeline.to_string(),
                    t.partitions,
                    stop.clone(),
                ));
                followed.insert(t.name, task);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(discover) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, task) in followed {
        task.await.unwrap_or(Ok(()))?;
    }
    Ok(())
}

async fn follow_topic(
    bus: Arc<dyn Bus>,
    realtime: Arc<Realtime>,
    topic: String,
    pipeline: String,
    partitions: u32,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), BusError> {
    tracing::info!(topic, "following results");
    // Every serving process builds the whole view.
    let group = format!("weir-serving-{topic}");
    weir_bus::follow_from_start(bus.as_ref(), &topic, partitions, &group, Duration::from_millis(200), stop, |m| {
        if let (Some(k), Some(v)) = (m.key, m.value) {
            realtime.upsert(&pipeline, k.to_vec(), v.to_vec(), m.timestamp_ms);
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_result_per_key_wins_and_old_windows_expire() {
        let r = Realtime::new(Duration::from_secs(120));
        let row = |m: i64, start: &str, n: i64| {
            format!(r#"{{"m":{m},"window_start":"{start}","window_end":"{start}","final":true,"n":{n}}}"#).into_bytes()
        };
        r.upsert("p", b"k1".to_vec(), row(1, "2026-01-01T00:00:00Z", 1), 60_000);
        r.upsert("p", b"k1".to_vec(), row(1, "2026-01-01T00:00:00Z", 5), 60_000);
        r.upsert("p", b"k2".to_vec(), row(2, "2026-01-01T00:00:00Z", 7), 60_000);
        let b = r.batch("p").unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(
            b.schema().field_with_name("window_start").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        r.upsert("p", b"k3".to_vec(), row(3, "2026-01-01T00:05:00Z", 1), 360_000);
        assert_eq!(r.batch("p").unwrap().num_rows(), 1, "windows ending 5 minutes before the newest are dropped");
        assert!(r.batch("q").is_none());
    }
}
