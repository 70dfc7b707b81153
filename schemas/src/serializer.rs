//! Encodes Connect values for a topic as Confluent-framed Avro, registering each schema once, or
//! as Connect JSON.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{
    avro::{AvroError, AvroSchema},
    connect::{ConnectSchema, Value},
    registry::{RegistryError, SchemaRegistry, subject},
    wire,
};

/// Why a value could not be serialized.
#[derive(Debug, thiserror::Error)]
pub enum SerializeError {
    /// The value does not fit its schema.
    #[error(transparent)]
    Avro(#[from] AvroError),
    /// The schema could not be registered.
    #[error("registering the schema of subject {subject}: {source}")]
    Registry {
        /// Subject.
        subject: String,
        /// Cause.
        #[source]
        source: RegistryError,
    },
}

/// Serializes keys and values of topics with the registry's ids (TopicNameStrategy subjects).
pub struct AvroSerializer {
    registry: Arc<dyn SchemaRegistry>,
    /// (schema fingerprint, is key) → topic → id. Looked up for every message without copying
    /// or hashing the schema text.
    ids: Mutex<HashMap<(u128, bool), HashMap<String, u32>>>,
}

impl AvroSerializer {
    /// A serializer registering schemas in `registry`.
    pub fn new(registry: Arc<dyn SchemaRegistry>) -> Self {
        AvroSerializer { registry, ids: Mutex::new(HashMap::new()) }
    }

    /// The id of `schema` under the topic's key or value subject, registering it the first time.
    pub async fn schema_id(&self, topic: &str, is_key: bool, schema: &AvroSchema) -> Result<u32, SerializeError> {
        let cached = self.ids.lock().unwrap().get(&(schema.fingerprint, is_key)).and_then(|t| t.get(topic)).copied();
        if let Some(id) = cached {
            return Ok(id);
        }
        let subject = subject(topic, is_key);
        let id = self
            .registry
            .register(&subject, &schema.json)
            .await
            .map_err(|source| SerializeError::Registry { subject, source })?;
        self.ids.lock().unwrap().entry((schema.fingerprint, is_key)).or_default().insert(topic.to_string(), id);
        Ok(id)
    }

    /// `value` of `schema` as a framed message for `topic`'s keys (`is_key`) or values.
    pub async fn serialize(
        &self,
        topic: &str,
        is_key: bool,
        schema: &AvroSchema,
        value: &Value,
    ) -> Result<Vec<u8>, SerializeError> {
        let id = self.schema_id(topic, is_key, schema).await?;
        let mut out = Vec::with_capacity(256);
        out.push(wire::MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        schema.encode_into(value, &mut out)?;
        Ok(out)
    }
}

/// How a source encodes its events: Avro with registry ids (Debezium with Confluent's Avro
/// converter) or Connect JSON with the schema embedded (Debezium with the JSON converter).
#[derive(Clone)]
pub enum EventEncoder {
    /// Confluent wire format, schemas in the registry.
    Avro(Arc<AvroSerializer>),
    /// `{"schema": …, "payload": …}`.
    Json,
}

impl EventEncoder {
    /// `value` for `topic`'s keys (`is_key`) or values; `connect` and `avro` are the same schema.
    pub async fn encode(
        &self,
        topic: &str,
        is_key: bool,
        connect: &ConnectSchema,
        avro: &AvroSchema,
        value: &Value,
    ) -> Result<Vec<u8>, SerializeError> {
        match self {
            EventEncoder::Avro(s) => s.serialize(topic, is_key, avro, value).await,
            EventEncoder::Json => Ok(crate::json::encode(connect, value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::{
        connect::{ConnectSchema, Field, schema},
        registry::{RegisteredSchema, Version},
    };

    /// Counts registrations; everything else is out of scope for the cache test.
    #[derive(Default)]
    struct Counting(AtomicU32);

    #[async_trait]
    impl SchemaRegistry for Counting {
        async fn register(&self, _: &str, _: &str) -> Result<u32, RegistryError> {
            Ok(self.0.fetch_add(1, Ordering::SeqCst) + 1)
        }
        async fn lookup(&self, s: &str, _: &str) -> Result<RegisteredSchema, RegistryError> {
            Err(RegistryError::SubjectNotFound(s.into()))
        }
        async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
            Err(RegistryError::SchemaNotFound(id.to_string()))
        }
        async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
            Ok(Vec::new())
        }
        async fn versions(&self, s: &str) -> Result<Vec<u32>, RegistryError> {
            Err(RegistryError::SubjectNotFound(s.into()))
        }
        async fn version(&self, s: &str, _: Version) -> Result<RegisteredSchema, RegistryError> {
            Err(RegistryError::SubjectNotFound(s.into()))
        }
    }

    #[tokio::test]
    async fn registers_once_per_topic_role_and_schema() {
        let registry = Arc::new(Counting::default());
        let serializer = AvroSerializer::new(registry.clone());
        let a = AvroSchema::new(ConnectSchema::struct_of("A", vec![Field::new("x", schema::int32())])).unwrap();
        let b = AvroSchema::new(ConnectSchema::struct_of("B", vec![Field::new("x", schema::int32())])).unwrap();
        let v = Value::Struct(vec![Value::Int32(7)]);
        for _ in 0..3 {
            let framed = serializer.serialize("t1", false, &a, &v).await.unwrap();
            assert_eq!(wire::unframe(&framed).unwrap(), (1, &[14u8][..]));
        }
        assert_eq!(serializer.schema_id("t1", true, &a).await.unwrap(), 2, "keys are their own subject");
        assert_eq!(serializer.schema_id("t2", false, &a).await.unwrap(), 3, "another topic, another subject");
        assert_eq!(serializer.schema_id("t1", false, &b).await.unwrap(), 4, "a new schema version");
        assert_eq!(serializer.schema_id("t1", false, &a).await.unwrap(), 1);
        assert_eq!(registry.0.load(Ordering::SeqCst), 4);
    }
}
