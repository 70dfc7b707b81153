//! A topic's dead-letter topic, `<topic>.dlq`: records the lake writer cannot decode, as they
//! were, with the reason and their origin in headers (`weir.dlq.reason`, `weir.dlq.topic`,
//! `weir.dlq.partition`, `weir.dlq.offset`).

use std::sync::Arc;

use weir_bus::{Bus, BusError, Message, Producer, Record};

/// Sends a topic's dead letters. Cheap to clone.
#[derive(Clone)]
pub struct Dlq {
    bus: Arc<dyn Bus>,
    producer: Arc<dyn Producer>,
    topic: Arc<str>,
}

impl Dlq {
    /// The dead-letter topic of `topic`.
    pub async fn new(bus: Arc<dyn Bus>, topic: &str) -> Result<Dlq, BusError> {
        let producer = Arc::from(bus.producer().await?);
        Ok(Dlq { bus, producer, topic: topic.into() })
    }

    /// Sends `dead` (record, reason) to `<topic>.dlq`, creating it if needed.
    pub async fn send(&self, dead: &[(Message, String)]) -> Result<(), BusError> {
        if dead.is_empty() {
            return Ok(());
        }
        let dlq = format!("{}.dlq", self.topic);
        match self.bus.create_topic(&dlq, 1).await {
            Ok(()) | Err(BusError::TopicExists(_)) => {}
            Err(e) => return Err(e),
        }
        let records = dead
            .iter()
            .map(|(m, reason)| {
                tracing::warn!(topic = %self.topic, partition = m.partition, offset = m.offset, reason, "record sent to the DLQ");
                Record { key: m.key.clone(), value: m.value.clone(), ..Record::default() }
                    .with_header("weir.dlq.reason", reason.clone())
                    .with_header("weir.dlq.topic", self.topic.to_string())
                    .with_header("weir.dlq.partition", m.partition.to_string())
                    .with_header("weir.dlq.offset", m.offset.to_string())
            })
            .collect();
        self.producer.send(&dlq, records).await?;
        metrics::counter!("weir_lake_dead_letters_total", "topic" => self.topic.to_string())
            .increment(dead.len() as u64);
        Ok(())
    }
}
