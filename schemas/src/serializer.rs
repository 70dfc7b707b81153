//! Encodes Connect values for a topic as Confluent-framed Avro, registering each schema once.

use std::{collections::HashMap, sync::Arc};

use tokio::sync::Mutex;

use crate::{
    avro::{AvroError, AvroSchema},
    connect::Value,
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
    /// (subject, schema JSON) → id.
    ids: Mutex<HashMap<(String, String), u32>>,
}

impl AvroSerializer {
    /// A serializer registering schemas in `registry`.
    pub fn new(registry: Arc<dyn SchemaRegistry>) -> Self {
        AvroSerializer { registry, ids: Mutex::new(HashMap::new()) }
    }

    /// The id of `schema` under the topic's key or value subject, registering it the first time.
    pub async fn schema_id(&self, topic: &str, is_key: bool, schema: &AvroSchema) -> Result<u32, SerializeError> {
        let subject = subject(topic, is_key);
        let cache_key = (subject, schema.json.clone());
        if let Some(id) = self.ids.lock().await.get(&cache_key) {
            return Ok(*id);
        }
        let id = self
            .registry
            .register(&cache_key.0, &schema.json)
            .await
            .map_err(|source| SerializeError::Registry { subject: cache_key.0.clone(), source })?;
        self.ids.lock().await.insert(cache_key, id);
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
