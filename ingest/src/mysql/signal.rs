//! Debezium signals: what a user asks a running source to do (`execute-snapshot`,
//! `stop-snapshot`, `pause-snapshot`, `resume-snapshot`), from either channel Debezium offers.
//!
//! - The **signal table** (`signal_data_collection = "db.debezium_signal"`, Debezium's
//!   `signal.data.collection`): a row `(id, type, data)` inserted into it reaches the source
//!   through the binlog, in order with the changes around it. The same table carries the
//!   incremental snapshot's window watermarks (types `snapshot-window-open`/`-close`).
//! - The **signal topic** `<prefix>.signals` on the bus (Debezium's Kafka channel): key the topic
//!   prefix, value `{"type": …, "data": {…}}`. It needs no write to the source database, so it is
//!   the channel of read-only sources. `weir ingest snapshot` writes there.
//!
//! Which signals have been acted on is saved with the source's offset (the table's through the
//! binlog position, the topic's as `signal_offset`), so a restart neither repeats nor loses one.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;
use tokio::{sync::mpsc, task::JoinHandle};
use weir_bus::{Bus, ConsumerConfig, Message, Record, TopicPartition};

/// The type of the incremental snapshot's window-opening watermark rows.
pub const WINDOW_OPEN: &str = "snapshot-window-open";
/// The type of the window-closing watermark rows.
pub const WINDOW_CLOSE: &str = "snapshot-window-close";

/// What a signal asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Snapshot these tables (`db.table` names or regular expressions matching them).
    Execute {
        /// Data collections, as given.
        collections: Vec<String>,
        /// `blocking` (streaming waits) rather than `incremental` (chunks between changes).
        blocking: bool,
        /// Per-collection `WHERE` conditions (`additional-conditions`).
        conditions: Vec<(String, String)>,
    },
    /// Stop snapshotting these collections (all when empty).
    Stop {
        /// Data collections, as given.
        collections: Vec<String>,
    },
    /// Read no more chunks until resumed.
    Pause,
    /// Read chunks again.
    Resume,
    /// A watermark of an incremental snapshot window (not an order).
    Watermark,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct SnapshotData {
    #[serde(default)]
    data_collections: Vec<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    additional_conditions: Vec<Condition>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Condition {
    data_collection: String,
    filter: String,
}

/// Parses a signal of type `kind` with JSON `data` (empty for none).
pub fn parse(kind: &str, data: &str) -> Result<Action, String> {
    let snapshot = || -> Result<SnapshotData, String> {
        let data = if data.trim().is_empty() { "{}" } else { data };
        serde_json::from_str(data).map_err(|e| format!("signal {kind}: data {data:?}: {e}"))
    };
    let blocking = |kind: Option<&str>| match kind.map(str::to_ascii_lowercase).as_deref() {
        None | Some("incremental") => Ok(false),
        Some("blocking") => Ok(true),
        Some(other) => Err(format!("signal {kind:?}: snapshot type {other:?} is neither incremental nor blocking")),
    };
    match kind {
        "execute-snapshot" => {
            let d = snapshot()?;
            if d.data_collections.is_empty() {
                return Err("signal execute-snapshot: data-collections is empty".into());
            }
            Ok(Action::Execute {
                collections: d.data_collections,
                blocking: blocking(d.kind.as_deref())?,
                conditions: d.additional_conditions.into_iter().map(|c| (c.data_collection, c.filter)).collect(),
            })
        }
        "stop-snapshot" => Ok(Action::Stop { collections: snapshot()?.data_collections }),
        "pause-snapshot" => Ok(Action::Pause),
        "resume-snapshot" => Ok(Action::Resume),
        WINDOW_OPEN | WINDOW_CLOSE => Ok(Action::Watermark),
        other => Err(format!(
            "unknown signal type {other:?} (expected execute-snapshot, stop-snapshot, pause-snapshot or resume-snapshot)"
        )),
    }
}

/// The `<prefix>.signals` topic.
pub fn topic(prefix: &str) -> String {
    format!("{prefix}.signals")
}

/// A signal-topic record for the source with topic prefix `prefix`, as Debezium's Kafka channel
/// reads it.
pub fn record(prefix: &str, kind: &str, data: &serde_json::Value) -> Record {
    let value = serde_json::json!({ "type": kind, "data": data });
    Record::keyed(prefix.to_string(), serde_json::to_vec(&value).expect("JSON serializes"))
}

/// Reads a signal-topic record: `(type, data)`; `None` when it is addressed to another source.
pub fn from_record(prefix: &str, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Option<(String, String)>, String> {
    if key.is_some_and(|k| k != prefix.as_bytes()) {
        return Ok(None);
    }
    let Some(value) = value else { return Ok(None) };
    #[derive(Deserialize)]
    struct Body {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        data: serde_json::Value,
    }
    let body: Body = serde_json::from_slice(value).map_err(|e| format!("signal record: {e}"))?;
    let data = if body.data.is_null() { String::new() } else { body.data.to_string() };
    Ok(Some((body.kind, data)))
}

/// Reads the signal topic in a task of its own, from a given offset, for the streaming loop.
pub struct Reader {
    rx: mpsc::Receiver<Message>,
    task: JoinHandle<()>,
    closed: bool,
}

impl Reader {
    /// Starts reading partition 0 of `topic` at `from`. Bus errors are logged and retried; the
    /// source streams on meanwhile.
    pub fn spawn(bus: Arc<dyn Bus>, topic: String, from: i64, source: &str) -> Reader {
        let (tx, rx) = mpsc::channel(64);
        let source = source.to_string();
        let task = tokio::spawn(async move {
            let mut next = from;
            loop {
                let read = async {
                    let mut consumer =
                        bus.consumer(ConsumerConfig::new(format!("weir-mysql-signals-{source}"))).await?;
                    let tp = TopicPartition::new(topic.clone(), 0);
                    consumer.assign(std::slice::from_ref(&tp)).await?;
                    consumer.seek(&tp, next).await?;
                    loop {
                        for m in consumer.poll(Duration::from_secs(1)).await? {
                            next = m.offset + 1;
                            if tx.send(m).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                };
                let result: Result<(), weir_bus::BusError> = read.await;
                match result {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::error!(source = %source, topic = %topic, %error, "reading the signal topic; retrying in 5 s");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        });
        Reader { rx, task, closed: false }
    }

    /// A signal record that has arrived, if any.
    pub fn try_next(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// The next signal record (never returns once the reader has stopped).
    pub async fn next(&mut self) -> Message {
        if !self.closed {
            match self.rx.recv().await {
                Some(m) => return m,
                None => self.closed = true,
            }
        }
        std::future::pending().await
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `collection` (a `db.table` name or a regular expression over such names) names
/// `db.table`; an invalid expression matches only itself.
pub fn matches(collection: &str, db: &str, table: &str) -> bool {
    let name = format!("{db}.{table}");
    if collection == name {
        return true;
    }
    regex::Regex::new(&format!("^(?:{collection})$")).is_ok_and(|re| re.is_match(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debeziums_signal_documents() {
        let data = r#"{"data-collections": ["shop.orders", "shop\\.pay.*"], "type": "incremental",
            "additional-conditions": [{"data-collection": "shop.orders", "filter": "id > 10"}]}"#;
        assert_eq!(
            parse("execute-snapshot", data).unwrap(),
            Action::Execute {
                collections: vec!["shop.orders".into(), "shop\\.pay.*".into()],
                blocking: false,
                conditions: vec![("shop.orders".into(), "id > 10".into())],
            }
        );
        let blocking = parse("execute-snapshot", r#"{"data-collections": ["a.b"], "type": "BLOCKING"}"#).unwrap();
        assert!(matches!(blocking, Action::Execute { blocking: true, .. }));
        assert_eq!(parse("stop-snapshot", "").unwrap(), Action::Stop { collections: vec![] });
        assert_eq!(parse("pause-snapshot", "").unwrap(), Action::Pause);
        assert_eq!(parse(WINDOW_CLOSE, "{}").unwrap(), Action::Watermark);
        let err = parse("execute-snapshot", r#"{"data-collections": ["a.b"], "type": "full"}"#).unwrap_err();
        assert!(err.contains("\"full\""), "{err}");
        assert!(parse("execute-snapshot", "{}").unwrap_err().contains("data-collections"));
        assert!(parse("explode", "").unwrap_err().contains("explode"));
    }

    #[test]
    fn topic_records_round_trip_and_are_addressed() {
        let r = record("shop", "execute-snapshot", &serde_json::json!({"data-collections": ["s.t"]}));
        let (kind, data) = from_record("shop", r.key.as_deref(), r.value.as_deref()).unwrap().unwrap();
        assert_eq!(kind, "execute-snapshot");
        assert!(matches!(parse(&kind, &data).unwrap(), Action::Execute { .. }));
        assert_eq!(from_record("other", r.key.as_deref(), r.value.as_deref()).unwrap(), None);
        assert!(from_record("shop", None, Some(b"{")).is_err());
    }

    #[test]
    fn collections_match_names_and_expressions() {
        assert!(matches("shop.orders", "shop", "orders"));
        assert!(matches("shop\\..*", "shop", "payments"));
        assert!(!matches("shop.order", "shop", "orders"), "expressions match whole names");
        assert!(!matches("(", "shop", "orders"));
    }
}
