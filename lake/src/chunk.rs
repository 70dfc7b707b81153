//! A chunk: consumed records of one envelope schema, decoded together into one Arrow batch by
//! whichever Parquet writer task takes it ([`crate::files`]), so that decoding runs on every core
//! instead of on the writer's own task alone. Records whose body does not follow the schema come
//! back as dead letters with the reason.

use std::sync::Arc;

use deltalake::arrow::record_batch::RecordBatch;
use weir_bus::Message;
use weir_schemas::wire;

use crate::avro_arrow::Layout;

/// Records of one schema id, in the order they were consumed.
pub struct Chunk {
    id: u32,
    layout: Arc<Layout>,
    topic: Arc<str>,
    records: Vec<Message>,
}

/// A decoded chunk.
pub struct Decoded {
    /// The change-log rows (tombstones and envelopes without a row image add none).
    pub batch: RecordBatch,
    /// The records that could not be decoded, each with the reason.
    pub dead: Vec<(Message, String)>,
}

impl Chunk {
    /// An empty chunk for up to about `capacity` records of schema `id`, which `layout` decodes.
    pub fn new(id: u32, layout: Arc<Layout>, topic: Arc<str>, capacity: usize) -> Chunk {
        Chunk { id, layout, topic, records: Vec::with_capacity(capacity) }
    }

    /// The schema id of its records.
    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// The decoding plan of its records.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a record whose value is framed with this chunk's schema id.
    pub fn push(&mut self, record: Message) {
        self.records.push(record);
    }

    /// Takes the records out, leaving an empty chunk of the same schema and capacity.
    pub fn take(&mut self) -> Chunk {
        let capacity = self.records.capacity();
        Chunk {
            id: self.id,
            layout: self.layout.clone(),
            topic: self.topic.clone(),
            records: std::mem::replace(&mut self.records, Vec::with_capacity(capacity)),
        }
    }

    /// Decodes every record into one batch of the layout's schema.
    pub fn decode(self) -> Decoded {
        let mut builder = self.layout.batch(self.records.len());
        let mut dead = Vec::new();
        for m in self.records {
            let body = m.value.as_deref().map(wire::unframe);
            let decoded = match body {
                Some(Ok((_, body))) => {
                    self.layout.append(body, &self.topic, m.partition as i32, m.offset, &mut builder).map(drop)
                }
                None => Ok(()), // a tombstone: no row
                Some(Err(e)) => {
                    dead.push((m, format!("not the Confluent wire format: {e}")));
                    continue;
                }
            };
            if let Err(e) = decoded {
                dead.push((m, format!("schema id {}: {e}", self.id)));
            }
        }
        Decoded { batch: builder.finish(self.layout.schema()), dead }
    }
}
