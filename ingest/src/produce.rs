//! Sending a source's pending events to the bus: one send per topic, in order within each topic.

use weir_bus::{BusError, Producer, Record};

/// Sends `pending` (drained) grouped by topic, keeping each topic's order; returns how many.
pub(crate) async fn send_grouped(
    producer: &dyn Producer,
    pending: &mut Vec<(String, Record)>,
) -> Result<usize, BusError> {
    let n = pending.len();
    let mut by_topic: Vec<(String, Vec<Record>)> = Vec::new();
    for (topic, record) in pending.drain(..) {
        match by_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, records)) => records.push(record),
            None => by_topic.push((topic, vec![record])),
        }
    }
    for (topic, records) in by_topic {
        producer.send(&topic, records).await?;
    }
    Ok(n)
}
