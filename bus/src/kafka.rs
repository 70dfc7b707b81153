//! Kafka backend through rdkafka (librdkafka built from source by the `cmake-build` feature).
//!
//! The producer is idempotent with `acks=all` and uses librdkafka's `murmur2_random` partitioner,
//! which is the Java client's default, so keys land where the embedded log puts them. Consumers
//! never auto-commit: callers commit the next offset to read once their work is durable.
//! librdkafka's blocking calls (metadata, commits, watermarks) run on tokio's blocking pool.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::{ClientContext, DefaultClientContext},
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer},
    error::KafkaError,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    metadata::Metadata,
    producer::{FutureProducer, FutureRecord},
    types::RDKafkaErrorCode,
    util::Timeout,
};

use crate::{
    Bus, BusError, Consumer, ConsumerConfig, Delivered, Message, OffsetReset, PartitionStats, Producer, Record, Result,
    TopicConfig, TopicInfo, TopicPartition, config::KafkaConfig, validate_topic_name,
};

/// A Kafka cluster.
pub struct KafkaBus {
    brokers: String,
    config: KafkaConfig,
    /// The user's librdkafka properties: `[bus.kafka]`'s TLS and SASL settings resolved once
    /// (secrets read) at connect, then `properties`.
    properties: BTreeMap<String, String>,
    admin: Arc<AdminClient<DefaultClientContext>>,
    producer: FutureProducer<CauseContext>,
    /// What librdkafka last reported going wrong with a connection.
    cause: Arc<Mutex<Option<String>>>,
}

/// The producer's context (its polling thread delivers librdkafka's logs and errors): keeps the
/// last report of a connection failing — a TLS handshake, a refused SASL login, a plaintext peer
/// on a TLS port — which says why the brokers did not answer.
#[derive(Clone, Default)]
struct CauseContext {
    cause: Arc<Mutex<Option<String>>>,
}

impl CauseContext {
    fn note(&self, report: &str) {
        // "1/1 brokers are down" follows every specific failure and says less than it.
        if !report.contains("brokers are down") {
            *self.cause.lock().expect("cause lock") = Some(report.to_string());
        }
    }
}

impl ClientContext for CauseContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // A connection's failure is logged under FAIL, at info level when it repeats.
        if fac == "FAIL" {
            self.note(message);
        }
        // Under librdkafka's target, as its own reports are: services show them, commands do not.
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{message}");
                self.note(message);
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", fac, "{message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", %error, "{reason}");
        self.note(reason);
    }
}

/// A consumer's context: forwards librdkafka's reports to `tracing` and logs every change of
/// the partitions the group assigns it, as Kafka's own clients do (a rebalance is what an
/// operator looks for first when a consumer stops making progress).
struct GroupContext {
    group: String,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let group = &self.group;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", group, fac, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", group, fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", group, fac, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", group, fac, "{message}"),
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let group = &self.group;
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(group, partitions = %partitions_text(tpl), "group assigned partitions")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(group, partitions = %partitions_text(tpl), "group revoked partitions")
            }
            Rebalance::Error(e) => tracing::warn!(group, error = %e, "group rebalance failed"),
        }
    }
}

/// `topic[0,2] other[1]`.
fn partitions_text(tpl: &TopicPartitionList) -> String {
    let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in tpl.elements() {
        by_topic.entry(e.topic().to_string()).or_default().push(e.partition());
    }
    let parts: Vec<String> = by_topic
        .into_iter()
        .map(|(t, ps)| format!("{t}[{}]", ps.iter().map(i32::to_string).collect::<Vec<_>>().join(",")))
        .collect();
    if parts.is_empty() { "none".into() } else { parts.join(" ") }
}

impl KafkaBus {
    /// Connects to `brokers` and checks, within `connect_timeout`, that the cluster answers.
    /// Security settings that cannot work fail first, naming the setting.
    pub async fn connect(brokers: &str, config: KafkaConfig) -> Result<Self> {
        let properties = crate::security::client_properties(&config)?;
        let admin: AdminClient<DefaultClientContext> = client_config(brokers, &config, &properties, &[])
            .create()
            .map_err(|e| BusError::kafka(format!("creating admin client for {brokers}"), e))?;
        let admin = Arc::new(admin);
        let delivery_timeout = config.delivery_timeout.as_millis().to_string();
        let producer_settings = [
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("partitioner", "murmur2_random"),
            ("linger.ms", "2"),
            ("message.timeout.ms", delivery_timeout.as_str()),
        ];
        let context = CauseContext::default();
        let cause = context.cause.clone();
        let producer = client_config(brokers, &config, &properties, &producer_settings)
            // Connection failures are logged at info level: let them reach the context.
            .set_log_level(RDKafkaLogLevel::Info)
            .create_with_context(context)
            .map_err(|e| BusError::kafka(format!("creating producer for {brokers}"), e))?;
        let bus = KafkaBus { brokers: brokers.to_string(), config, properties, admin, producer, cause };
        bus.metadata(None).await?;
        tracing::debug!(brokers, "connected to Kafka");
        Ok(bus)
    }

    async fn metadata(&self, topic: Option<&str>) -> Result<Metadata> {
        let admin = self.admin.clone();
        let topic = topic.map(str::to_string);
        let timeout = self.config.connect_timeout;
        let result = tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(topic.as_deref(), timeout))
            .await
            .expect("metadata task panicked");
        result.map_err(|e| {
            let cause = self.cause.lock().expect("cause lock").clone();
            let reason = match cause {
                Some(c) => match crate::security::hint(&self.properties, &c) {
                    Some(hint) => format!("{e}; {c}; {hint}"),
                    None => format!("{e}; {c}"),
                },
                None => e.to_string(),
            };
            BusError::Unreachable { brokers: self.brokers.clone(), timeout_ms: timeout.as_millis() as u64, reason }
        })
    }
}

/// A client's settings: connection basics, then the role's `settings`, then the user's
/// `properties` (security and `bus.kafka.properties`) last, so they can override anything.
fn client_config(
    brokers: &str,
    config: &KafkaConfig,
    properties: &BTreeMap<String, String>,
    settings: &[(&str, &str)],
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", config.connect_timeout.as_millis().max(10).to_string())
        .set("log_level", "3");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

fn topic_info(metadata: &Metadata, name: &str) -> Result<TopicInfo> {
    let topic = metadata.topics().iter().find(|t| t.name() == name);
    match topic {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(TopicInfo { name: name.to_string(), partitions: t.partitions().len() as u32 })
        }
        _ => Err(BusError::UnknownTopic(name.to_string())),
    }
}

#[async_trait]
impl Bus for KafkaBus {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    async fn create_topic_with(&self, name: &str, partitions: u32, config: &TopicConfig) -> Result<()> {
        validate_topic_name(name)?;
        if partitions == 0 {
            return Err(BusError::InvalidArgument(format!("topic {name:?}: partitions must be at least 1")));
        }
        let replication = TopicReplication::Fixed(self.config.replication_factor);
        let mut new_topic = NewTopic::new(name, partitions as i32, replication);
        for (k, v) in config {
            new_topic = new_topic.set(k, v);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.config.connect_timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|e| BusError::kafka(format!("creating topic {name:?}"), e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Err(BusError::TopicExists(name.to_string())),
                Err((_, code)) => {
                    return Err(BusError::kafka(format!("creating topic {name:?}"), KafkaError::AdminOp(code)));
                }
            }
        }
        // Creation is asynchronous on the brokers: wait until the metadata shows every partition.
        let deadline = tokio::time::Instant::now() + self.config.connect_timeout;
        loop {
            if let Ok(info) = topic_info(&self.metadata(Some(name)).await?, name)
                && info.partitions == partitions
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BusError::Unreachable {
                    brokers: self.brokers.clone(),
                    timeout_ms: self.config.connect_timeout.as_millis() as u64,
                    reason: format!("topic {name:?} was created but its partitions did not appear in the metadata"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(topic = name, partitions, ?config, "created topic");
        Ok(())
    }

    async fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        self.topic(name).await?;
        let options = AdminOptions::new().request_timeout(Some(self.config.connect_timeout));
        let resource = rdkafka::admin::ResourceSpecifier::Topic(name);
        let results = self
            .admin
            .describe_configs([&resource], &options)
            .await
            .map_err(|e| BusError::kafka(format!("describing topic {name:?}"), e))?;
        let mut config = TopicConfig::new();
        for result in results {
            let resource = result
                .map_err(|code| BusError::kafka(format!("describing topic {name:?}"), KafkaError::AdminOp(code)))?;
            for entry in resource.entries {
                if let (Some(value), false) = (entry.value, entry.is_sensitive) {
                    config.insert(entry.name, value);
                }
            }
        }
        Ok(config)
    }

    async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let metadata = self.metadata(None).await?;
        let mut topics: Vec<TopicInfo> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__") && t.error().is_none())
            .map(|t| TopicInfo { name: t.name().to_string(), partitions: t.partitions().len() as u32 })
            .collect();
        topics.sort();
        Ok(topics)
    }

    async fn topic(&self, name: &str) -> Result<TopicInfo> {
        topic_info(&self.metadata(Some(name)).await?, name)
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        Ok(self.partition_stats(topic).await?.into_iter().map(|s| s.end).collect())
    }

    async fn partition_stats(&self, topic: &str) -> Result<Vec<PartitionStats>> {
        let info = self.topic(topic).await?;
        let admin = self.admin.clone();
        let name = topic.to_string();
        let timeout = self.config.connect_timeout;
        tokio::task::spawn_blocking(move || {
            (0..info.partitions as i32)
                .map(|p| {
                    admin
                        .inner()
                        .fetch_watermarks(&name, p, timeout)
                        .map(|(start, end)| PartitionStats { start, end, bytes: None })
                        .map_err(|e| BusError::kafka(format!("fetching offsets of {name}/{p}"), e))
                })
                .collect()
        })
        .await
        .expect("watermark task panicked")
    }

    async fn producer(&self) -> Result<Box<dyn Producer>> {
        Ok(Box::new(KafkaProducer { producer: self.producer.clone(), queue_timeout: self.config.delivery_timeout }))
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        let reset = match config.offset_reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        };
        let settings = [
            ("group.id", config.group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("auto.offset.reset", reset),
        ];
        let context = GroupContext { group: config.group.clone() };
        let consumer: StreamConsumer<GroupContext> =
            client_config(&self.brokers, &self.config, &self.properties, &settings)
                .create_with_context(context)
                .map_err(|e| BusError::kafka(format!("creating consumer of group {:?}", config.group), e))?;
        Ok(Box::new(KafkaConsumer {
            consumer: Arc::new(consumer),
            bus_admin: self.admin.clone(),
            brokers: self.brokers.clone(),
            timeout: self.config.connect_timeout,
            config,
            manual: None,
        }))
    }
}

/// Producer on a Kafka cluster.
struct KafkaProducer {
    producer: FutureProducer<CauseContext>,
    queue_timeout: Duration,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Delivered>> {
        let sends = records.iter().map(|r| {
            let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = &r.key {
                fr = fr.key(k.as_ref());
            }
            if let Some(v) = &r.value {
                fr = fr.payload(v.as_ref());
            }
            if let Some(p) = r.partition {
                fr = fr.partition(p as i32);
            }
            if let Some(ts) = r.timestamp_ms {
                fr = fr.timestamp(ts);
            }
            if !r.headers.is_empty() {
                let headers = r.headers.iter().fold(OwnedHeaders::new_with_capacity(r.headers.len()), |h, (k, v)| {
                    h.insert(Header { key: k, value: Some(v.as_ref()) })
                });
                fr = fr.headers(headers);
            }
            self.producer.send(fr, Timeout::After(self.queue_timeout))
        });
        let results = futures::future::join_all(sends).await;
        let mut delivered = Vec::with_capacity(results.len());
        for result in results {
            match result {
                Ok(d) => delivered.push(Delivered { partition: d.partition as u32, offset: d.offset }),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopicOrPartition), _)) => {
                    return Err(BusError::UnknownTopic(topic.to_string()));
                }
                Err((e, _)) => return Err(BusError::kafka(format!("producing to {topic:?}"), e)),
            }
        }
        let bytes: usize = records.iter().map(|r| r.value.as_ref().map_or(0, |v| v.len())).sum();
        metrics::counter!("weir_bus_produced_records_total", "backend" => "kafka").increment(records.len() as u64);
        metrics::counter!("weir_bus_produced_bytes_total", "backend" => "kafka").increment(bytes as u64);
        Ok(delivered)
    }
}

/// Consumer on a Kafka cluster.
struct KafkaConsumer {
    consumer: Arc<StreamConsumer<GroupContext>>,
    bus_admin: Arc<AdminClient<DefaultClientContext>>,
    brokers: String,
    timeout: Duration,
    config: ConsumerConfig,
    /// The partitions and start offsets of a manual assignment, to re-assign on seek.
    manual: Option<Vec<(TopicPartition, Offset)>>,
}

impl KafkaConsumer {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StreamConsumer<GroupContext>) -> T + Send + 'static,
    ) -> T {
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || f(&consumer)).await.expect("consumer task panicked")
    }

    async fn check_topics(&self, topics: Vec<String>) -> Result<()> {
        let admin = self.bus_admin.clone();
        let timeout = self.timeout;
        let brokers = self.brokers.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = admin.inner().fetch_metadata(None, timeout).map_err(|e| BusError::Unreachable {
                brokers,
                timeout_ms: timeout.as_millis() as u64,
                reason: e.to_string(),
            })?;
            topics.iter().try_for_each(|t| topic_info(&metadata, t).map(|_| ()))
        })
        .await
        .expect("metadata task panicked")
    }

    fn to_message(m: &BorrowedMessage<'_>) -> Message {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(Bytes::copy_from_slice).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        Message {
            topic: m.topic().into(),
            partition: m.partition() as u32,
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
            key: m.key().map(Bytes::copy_from_slice),
            value: m.payload().map(Bytes::copy_from_slice),
            headers,
        }
    }
}

fn partition_list(items: &[(TopicPartition, Offset)]) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(items.len());
    for (tp, offset) in items {
        tpl.add_partition_offset(&tp.topic, tp.partition as i32, *offset)
            .map_err(|e| BusError::kafka(format!("building partition list for {tp}"), e))?;
    }
    Ok(tpl)
}

#[async_trait]
impl Consumer for KafkaConsumer {
    async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        self.check_topics(topics.iter().map(|t| t.to_string()).collect()).await?;
        self.manual = None;
        self.consumer
            .subscribe(topics)
            .map_err(|e| BusError::kafka(format!("subscribing group {:?} to {topics:?}", self.config.group), e))
    }

    async fn assign(&mut self, partitions: &[TopicPartition]) -> Result<()> {
        let mut topics: Vec<String> = partitions.iter().map(|tp| tp.topic.clone()).collect();
        topics.dedup();
        self.check_topics(topics).await?;
        // `Stored` starts from the group's committed offset, else from auto.offset.reset.
        let items: Vec<_> = partitions.iter().map(|tp| (tp.clone(), Offset::Stored)).collect();
        let tpl = partition_list(&items)?;
        self.consumer.assign(&tpl).map_err(|e| BusError::kafka("assigning partitions", e))?;
        self.manual = Some(items);
        Ok(())
    }

    fn assignment(&self) -> Vec<TopicPartition> {
        let Ok(tpl) = self.consumer.assignment() else { return Vec::new() };
        let mut out: Vec<_> =
            tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition() as u32)).collect();
        out.sort();
        out
    }

    async fn poll(&mut self, timeout: Duration) -> Result<Vec<Message>> {
        let first = match tokio::time::timeout(timeout, self.consumer.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(Err(e)) => return Err(BusError::kafka(format!("consuming for group {:?}", self.config.group), e)),
            Ok(Ok(m)) => Self::to_message(&m),
        };
        let mut out = vec![first];
        while out.len() < self.config.max_poll_records {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(Self::to_message(&m)),
                Some(Err(e)) => return Err(BusError::kafka(format!("consuming for group {:?}", self.config.group), e)),
                None => break,
            }
        }
        metrics::counter!("weir_bus_consumed_records_total", "backend" => "kafka").increment(out.len() as u64);
        Ok(out)
    }

    async fn seek(&mut self, tp: &TopicPartition, offset: i64) -> Result<()> {
        let (topic, partition, timeout) = (tp.topic.clone(), tp.partition as i32, self.timeout);
        let sought = self.blocking(move |c| c.seek(&topic, partition, Offset::Offset(offset), timeout)).await;
        match (sought, &mut self.manual) {
            (Ok(()), _) => Ok(()),
            // A partition not fetched yet cannot be sought; a manual assignment can be redone instead.
            (Err(_), Some(items)) if items.iter().any(|(t, _)| t == tp) => {
                for (t, o) in items.iter_mut() {
                    if t == tp {
                        *o = Offset::Offset(offset);
                    }
                }
                let tpl = partition_list(items)?;
                self.consumer.assign(&tpl).map_err(|e| BusError::kafka(format!("seeking {tp} to {offset}"), e))
            }
            (Err(e), _) => Err(BusError::kafka(format!("seeking {tp} to {offset}"), e)),
        }
    }

    async fn commit(&mut self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let items: Vec<_> = offsets.iter().map(|(tp, o)| (tp.clone(), Offset::Offset(*o))).collect();
        let tpl = partition_list(&items)?;
        let group = self.config.group.clone();
        self.blocking(move |c| c.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| BusError::kafka(format!("committing offsets of group {group:?}"), e))
    }

    async fn committed(&mut self, partitions: &[TopicPartition]) -> Result<Vec<Option<i64>>> {
        let items: Vec<_> = partitions.iter().map(|tp| (tp.clone(), Offset::Invalid)).collect();
        let tpl = partition_list(&items)?;
        let timeout = self.timeout;
        let found = self
            .blocking(move |c| c.committed_offsets(tpl, timeout))
            .await
            .map_err(|e| BusError::kafka(format!("reading committed offsets of group {:?}", self.config.group), e))?;
        Ok(partitions
            .iter()
            .map(|tp| match found.find_partition(&tp.topic, tp.partition as i32).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect())
    }
}
