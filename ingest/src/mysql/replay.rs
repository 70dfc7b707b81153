//! No change produced twice when the source was stopped (`kill -9`) between a batch's
//! acknowledgement and its offset save. Every change record carries its binlog position in the
//! header [`POSITION_HEADER`] (`file:pos:row`). A restarting source reads the last record of
//! each partition of its topics; while it reads the binlog again from its saved offset, it drops
//! each change that its partition already holds (its position is at or before that partition's
//! last one). A partition's entry goes as soon as a newer change reaches it, so only the replayed
//! window is filtered.
//!
//! Within one topic partition the source appends in binlog order, so "at or before the last
//! one" means "already there", even when a crash cut a batch between two topics. Only tails at or
//! after the saved offset, in a binlog file the server still has, count: a tail from before a
//! re-snapshot or a `RESET MASTER` filters nothing.

use std::collections::HashMap;

use weir_bus::{Bus, BusError, ConsumerConfig, Record, TopicPartition, partitioner::partition_for_key};

pub use weir_schemas::position::Position;

use super::offset::Offset;

/// The header holding a change record's binlog position.
pub const POSITION_HEADER: &str = "weir.pos";
/// The header holding the `@@server_id` whose binlog the position is in (positions of two servers
/// of a replication topology do not compare).
pub const SERVER_HEADER: &str = "weir.server";

/// Adds the server header to the records of `pending` that carry a position.
pub fn tag_server(pending: &mut [(String, Record)], server_id: u32) {
    let value = bytes::Bytes::from(server_id.to_string());
    for (_, record) in pending {
        if record.headers.iter().any(|(name, _)| name == POSITION_HEADER) {
            record.headers.push((SERVER_HEADER.to_string(), value.clone()));
        }
    }
}

/// Tags `pending`, the records of one change, with the change's position.
pub fn tag(pending: &mut [(String, Record)], position: &Position) {
    let value = position.encode();
    for (_, record) in pending {
        record.headers.push((POSITION_HEADER.to_string(), value.clone()));
    }
}

/// The last position each topic partition of the source holds, while the replay has not passed
/// it.
#[derive(Debug, Default)]
pub struct Replayed {
    tails: HashMap<TopicPartition, Position>,
    partitions: HashMap<String, u32>,
}

impl Replayed {
    /// Reads the last record of every partition of the topics named `<prefix>.<db>.<table>`,
    /// keeping the positions at or after `from` in one of the server's binlog `files`.
    /// Tails another server wrote (header [`SERVER_HEADER`]) are not this server's positions.
    pub async fn load(
        bus: &dyn Bus,
        prefix: &str,
        from: &Offset,
        files: &[String],
        server_id: u32,
    ) -> Result<Replayed, BusError> {
        if from.file.is_empty() {
            // Nothing saved yet: nothing of this source can be on the bus past it.
            return Ok(Replayed::default());
        }
        let start = Position { file: from.file.clone(), pos: from.pos, row: 0 };
        let ours = format!("{prefix}.");
        let mut tails = Vec::new();
        let mut partitions = HashMap::new();
        for t in bus.list_topics().await? {
            if !t.name.starts_with(&ours) || t.name.ends_with(".dlq") || t.name.ends_with(".schema-history") {
                continue;
            }
            for (p, end) in bus.end_offsets(&t.name).await?.into_iter().enumerate() {
                if end > 0 {
                    tails.push((TopicPartition::new(t.name.clone(), p as u32), end - 1));
                }
            }
            partitions.insert(t.name, t.partitions);
        }
        let mut replayed = Replayed { tails: HashMap::new(), partitions };
        if tails.is_empty() {
            return Ok(replayed);
        }
        let mut consumer = bus.consumer(ConsumerConfig::new(format!("{prefix}.replay-check"))).await?;
        let assigned: Vec<TopicPartition> = tails.iter().map(|(tp, _)| tp.clone()).collect();
        consumer.assign(&assigned).await?;
        for (tp, last) in &tails {
            consumer.seek(tp, *last).await?;
        }
        let mut waiting: HashMap<TopicPartition, i64> = tails.into_iter().collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
            for m in consumer.poll(std::time::Duration::from_millis(500)).await? {
                let tp = TopicPartition::new(m.topic.to_string(), m.partition);
                if waiting.get(&tp) != Some(&m.offset) {
                    continue;
                }
                waiting.remove(&tp);
                let other_server =
                    m.header(SERVER_HEADER).is_some_and(|s| s.as_ref() != server_id.to_string().as_bytes());
                let position = m.header(POSITION_HEADER).and_then(|h| Position::parse(h)).filter(|_| !other_server);
                if let Some(position) = position.filter(|p| *p >= start && files.contains(&p.file)) {
                    replayed.tails.insert(tp, position);
                }
            }
        }
        if !waiting.is_empty() {
            return Err(BusError::InvalidArgument(format!(
                "could not read the last record of {} partition(s) of the source's topics within 30 s",
                waiting.len()
            )));
        }
        if !replayed.tails.is_empty() {
            tracing::info!(
                partitions = replayed.tails.len(),
                "changes after the saved offset are on the bus already: they are skipped while the binlog is read again"
            );
        }
        Ok(replayed)
    }

    /// Drops from `pending` the changes their partition already holds; returns how many.
    pub fn filter(&mut self, pending: &mut Vec<(String, Record)>) -> usize {
        if self.tails.is_empty() {
            return 0;
        }
        let before = pending.len();
        pending.retain(|(topic, record)| {
            let header = record.headers.iter().find(|(name, _)| name == POSITION_HEADER);
            let Some(position) = header.and_then(|(_, value)| Position::parse(value)) else { return true };
            let partition = match (record.partition, &record.key, self.partitions.get(topic)) {
                (Some(p), _, _) => p,
                (None, Some(key), Some(&n)) => partition_for_key(key, n),
                _ => return true,
            };
            let tp = TopicPartition::new(topic.clone(), partition);
            match self.tails.get(&tp) {
                Some(last) if position <= *last => false,
                Some(_) => {
                    self.tails.remove(&tp);
                    true
                }
                None => true,
            }
        });
        before - pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replayed_window_is_dropped_per_partition_and_then_nothing() {
        let at = |pos| Position { file: "b.000001".into(), pos, row: 0 };
        let record = |partition, pos| {
            let mut r = Record {
                partition: Some(partition),
                value: Some(bytes::Bytes::from_static(b"v")),
                ..Record::default()
            };
            r.headers.push((POSITION_HEADER.into(), at(pos).encode()));
            ("t".to_string(), r)
        };
        let mut replayed = Replayed::default();
        replayed.tails.insert(TopicPartition::new("t", 0), at(300));
        replayed.tails.insert(TopicPartition::new("t", 1), at(100));
        // Partition 0 holds changes up to 300, partition 1 up to 100 (a batch cut between them).
        let mut pending = vec![record(0, 100), record(1, 100), record(0, 200), record(1, 200), record(0, 300)];
        assert_eq!(replayed.filter(&mut pending), 4);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].1.partition, Some(1));
        // Partition 0 is past its tail after the next change; from then on nothing is dropped.
        let mut later = vec![record(0, 400), record(0, 250), record(1, 50)];
        assert_eq!(replayed.filter(&mut later), 0);
        assert!(replayed.tails.is_empty());
    }
}
