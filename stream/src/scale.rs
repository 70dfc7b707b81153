//! Scale-out: one pipeline shared by several `weir stream` processes through the bus's consumer
//! groups, as Kafka Streams shares an application.
//!
//! Each process runs a [`Member`] of the pipeline, made of two stages:
//!
//! 1. The **repartitioner** (group `weir-stream-<id>-repartition`) reads its share of the source
//!    topic's partitions, computes each event's group-by key from the source's columns and sends
//!    the record, unchanged, to the pipeline's by-key topic `weir.stream.<id>.by-key` keyed by it
//!    (same partition count as the source), with its source partition, offset and key in headers.
//!    It commits the source offsets once the by-key topic has acknowledged the records.
//! 2. The **shards** (group `weir-stream-<id>`) read the member's share of the by-key topic's
//!    partitions: one [`Engine`] per partition, each with its windows, watermark (per source
//!    partition), joins, alert rules and its own checkpoint. All records of a key are in one
//!    partition, so each key's windows live in one place.
//!
//! When the group moves a partition (a process starts, stops or dies), the member that loses it
//! drops its shard and the one that gains it restores the shard's last checkpoint and reads the
//! partition from the offset stored there. Exactly once holds because a checkpoint holds state
//! and offsets together, and because a shard skips a record whose source offset it has taken
//! already: a repartitioner that dies between sending and committing sends the same records,
//! in the same order and to the same partitions, again.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use weir_bus::{Bus, BusError, Consumer, ConsumerConfig, Message, Producer, Record, TopicPartition};
use weir_lake::Lake;
use weir_schemas::registry::SchemaRegistry;

use crate::{
    Engine, EngineConfig, EngineError, Pipeline, Stats,
    alert::RuleSet,
    decode::Decoder,
    engine::{SOURCE_KEY, SOURCE_OFFSET, SOURCE_PARTITION},
    eval::RouteKeys,
};

/// The topic a scale-out pipeline's events are repartitioned through.
pub fn by_key_topic(pipeline: &str) -> String {
    format!("weir.stream.{pipeline}.by-key")
}

/// Makes the alert rules of one shard (a shard's series are those of its keys).
pub type RulesFactory = Arc<dyn Fn() -> RuleSet + Send + Sync>;

/// This process's part of a scale-out pipeline.
pub struct Member {
    repartitioner: Repartitioner,
    shards: Shards,
}

impl Member {
    /// Joins pipeline `p`'s groups: creates its by-key topic if it is not there and subscribes
    /// to the source and by-key topics. Partitions arrive with the first polls.
    pub async fn open(
        p: Pipeline,
        config: EngineConfig,
        bus: Arc<dyn Bus>,
        registry: Option<Arc<dyn SchemaRegistry>>,
        lake: Lake,
        rules: RulesFactory,
    ) -> Result<Member, EngineError> {
        if p.interval.is_some() {
            let reason = crate::engine::SCALE_OUT_INTERVAL.into();
            return Err(EngineError::Unsupported { pipeline: p.id.clone(), reason });
        }
        let bus_err = |source| EngineError::Bus { pipeline: p.id.clone(), source };
        let source = bus.topic(&p.source.topic).await.map_err(bus_err)?;
        let by_key = by_key_topic(&p.id);
        match bus.create_topic(&by_key, source.partitions).await {
            Ok(()) => {
                tracing::info!(pipeline = %p.id, topic = %by_key, partitions = source.partitions, "created the by-key topic")
            }
            Err(BusError::TopicExists(_)) => {}
            Err(e) => return Err(bus_err(e)),
        }
        let partitions = bus.topic(&by_key).await.map_err(bus_err)?.partitions;
        let producer: Arc<dyn Producer> = bus.producer().await.map_err(bus_err)?.into();
        let mut reader =
            bus.consumer(ConsumerConfig::new(format!("weir-stream-{}-repartition", p.id))).await.map_err(bus_err)?;
        reader.subscribe(&[&p.source.topic]).await.map_err(bus_err)?;
        let mut consumer = bus.consumer(ConsumerConfig::new(format!("weir-stream-{}", p.id))).await.map_err(bus_err)?;
        consumer.subscribe(&[&by_key]).await.map_err(bus_err)?;
        // Reads the repartitioners' committed offsets, without joining their group.
        let progress =
            bus.consumer(ConsumerConfig::new(format!("weir-stream-{}-repartition", p.id))).await.map_err(bus_err)?;
        Ok(Member {
            repartitioner: Repartitioner {
                decoder: Decoder::new(&p.source, registry.clone()),
                route: None,
                consumer: reader,
                producer: producer.clone(),
                by_key: by_key.clone(),
                partitions,
                p: p.clone(),
            },
            shards: Shards {
                consumer,
                progress,
                quiet_checked: None,
                sources: source.partitions,
                topic: by_key,
                engines: BTreeMap::new(),
                committed: BTreeMap::new(),
                unsought: BTreeSet::new(),
                p,
                config,
                bus,
                registry,
                lake,
                rules,
                producer,
            },
        })
    }

    /// The by-key partitions whose shards this member holds now.
    pub fn shards(&self) -> Vec<u32> {
        self.shards.engines.keys().copied().collect()
    }

    /// The counters of the shards this member holds (each restored with its checkpoint).
    pub fn stats(&self) -> Stats {
        self.shards.engines.values().map(Engine::stats).fold(Stats::default(), sum)
    }

    /// Runs until `shutdown` resolves, then checkpoints the shards it holds.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<Stats, EngineError> {
        let Member { mut repartitioner, mut shards } = self;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let work = async {
            tokio::try_join!(repartitioner.run(stopped.clone()), shards.run(stopped.clone()))?;
            shards.checkpoint().await?;
            Ok::<_, EngineError>(shards.engines.values().map(Engine::stats).fold(Stats::default(), sum))
        };
        tokio::pin!(shutdown, work);
        tokio::select! {
            r = &mut work => r,
            _ = &mut shutdown => {
                let _ = stop.send(true);
                work.await
            }
        }
    }

    /// Polls each stage once and processes what came (no checkpoint unless one is due); returns
    /// how many records the two stages read. Only the shards' poll waits (up to the poll
    /// interval), and only when the repartitioner found nothing to send.
    pub async fn poll_once(&mut self) -> Result<usize, EngineError> {
        let polled = self.repartitioner.poll(Duration::ZERO).await?;
        let n = polled.len();
        self.repartitioner.step(polled).await?;
        let wait = if n > 0 { Duration::ZERO } else { self.shards.config.poll_interval };
        let polled = self.shards.poll(wait).await?;
        let m = polled.len();
        self.shards.step(polled).await?;
        Ok(n + m)
    }

    /// Checkpoints the shards this member holds now.
    pub async fn checkpoint(&mut self) -> Result<(), EngineError> {
        self.shards.checkpoint().await
    }

    /// Repartitions what is on the source now, then processes it in the shards this member
    /// holds, closes every window the (idle-advanced) watermark passes and checkpoints; for
    /// `weir stream --once`, tests and benchmarks. A member alone in its groups processes every
    /// partition; one of several, its share.
    pub async fn drain(&mut self) -> Result<Stats, EngineError> {
        let (bus, id) = (self.shards.bus.clone(), self.shards.p.id.clone());
        let end = |topic: String| {
            let (bus, id) = (bus.clone(), id.clone());
            async move { bus.end_offsets(&topic).await.map_err(|source| EngineError::Bus { pipeline: id, source }) }
        };
        let r = &mut self.repartitioner;
        let ends = end(r.p.source.topic.clone()).await?;
        loop {
            let polled = r.poll(Duration::from_millis(100)).await?;
            let n = polled.len();
            r.step(polled).await?;
            if n == 0 && r.reached(&ends).await? {
                break;
            }
        }
        let s = &mut self.shards;
        let ends = end(s.topic.clone()).await?;
        loop {
            let polled = s.poll(s.config.poll_interval).await?;
            let n = polled.len();
            s.step(polled).await?;
            let assigned = s.consumer.assignment();
            let done = !assigned.is_empty()
                && assigned.iter().all(|tp| {
                    let end = ends.get(tp.partition as usize).copied().unwrap_or(0);
                    s.engines.get(&tp.partition).and_then(Engine::shard_next).is_some_and(|(next, _)| next >= end)
                });
            if n == 0 && done {
                break;
            }
        }
        // Every shard has read its partition to the end: look at which sources are quiet now.
        s.quiet_checked = None;
        s.step(Vec::new()).await?;
        s.checkpoint().await?;
        Ok(self.stats())
    }
}

/// Two counters added.
pub(crate) fn sum(a: Stats, b: Stats) -> Stats {
    Stats {
        events: a.events + b.events,
        aggregated: a.aggregated + b.aggregated,
        late: a.late + b.late,
        dead_letters: a.dead_letters + b.dead_letters,
        results: a.results + b.results,
        checkpoints: a.checkpoints + b.checkpoints,
        unjoined: a.unjoined + b.unjoined,
    }
}

/// Stage 1: source partitions → the by-key topic.
struct Repartitioner {
    p: Pipeline,
    decoder: Decoder,
    route: Option<RouteKeys>,
    consumer: Box<dyn Consumer>,
    producer: Arc<dyn Producer>,
    by_key: String,
    partitions: u32,
}

impl Repartitioner {
    fn bus_err(&self, source: BusError) -> EngineError {
        EngineError::Bus { pipeline: self.p.id.clone(), source }
    }

    async fn poll(&mut self, wait: Duration) -> Result<Vec<Message>, EngineError> {
        let polled = self.consumer.poll(wait).await;
        polled.map_err(|e| self.bus_err(e))
    }

    /// Whether the group has committed, for every partition this member reads, at least `ends`.
    async fn reached(&mut self, ends: &[i64]) -> Result<bool, EngineError> {
        let assigned = self.consumer.assignment();
        if assigned.is_empty() {
            return Ok(false);
        }
        let committed = self.consumer.committed(&assigned).await.map_err(|e| self.bus_err(e))?;
        Ok(assigned
            .iter()
            .zip(committed)
            .all(|(tp, c)| c.unwrap_or(0) >= ends.get(tp.partition as usize).copied().unwrap_or(0)))
    }

    async fn run(&mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), EngineError> {
        loop {
            let polled = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                polled = self.poll(Duration::from_millis(100)) => polled?,
            };
            self.step(polled).await?;
        }
    }

    /// Sends `polled` to the by-key topic, then commits their source offsets.
    async fn step(&mut self, polled: Vec<Message>) -> Result<(), EngineError> {
        if polled.is_empty() {
            return Ok(());
        }
        let decoded = self
            .decoder
            .decode(&polled)
            .await
            .map_err(|source| EngineError::Registry { pipeline: self.p.id.clone(), source })?;
        let mut keys: Vec<Option<Bytes>> = vec![None; polled.len()];
        for d in decoded.batches {
            if self.route.as_ref().is_none_or(|r| r.schema() != &d.batch.schema()) {
                self.route = Some(RouteKeys::new(&self.p, d.batch.schema())?);
            }
            let texts = self.route.as_ref().expect("compiled above").texts(&d.batch)?;
            for (text, &msg) in texts.into_iter().zip(&d.rows) {
                keys[msg] = Some(Bytes::from(text));
            }
        }
        let n = polled.len() as u64;
        let offsets = weir_bus::next_offsets(&polled);
        let records: Vec<Record> = polled
            .into_iter()
            .zip(keys)
            .map(|(m, key)| {
                let mut headers = m.headers;
                headers.push((SOURCE_PARTITION.into(), Bytes::from(m.partition.to_string())));
                headers.push((SOURCE_OFFSET.into(), Bytes::from(m.offset.to_string())));
                if let Some(k) = m.key {
                    headers.push((SOURCE_KEY.into(), k));
                }
                // An event that could not be decoded has no key: it goes where its source
                // partition says, every time, and the shard dead-letters it.
                let partition = key.is_none().then(|| m.partition % self.partitions);
                Record { key, value: m.value, headers, partition, timestamp_ms: Some(m.timestamp_ms) }
            })
            .collect();
        self.producer.send(&self.by_key, records).await.map_err(|e| self.bus_err(e))?;
        metrics::counter!("weir_stream_repartitioned_total", "pipeline" => self.p.id.clone()).increment(n);
        if let Err(e) = self.consumer.commit(&offsets).await {
            // The partition moved to another member meanwhile: it sends these records again and
            // the shards skip them.
            tracing::warn!(pipeline = %self.p.id, error = %e, "could not commit the repartitioned offsets");
        }
        Ok(())
    }
}

/// Stage 2: the member's partitions of the by-key topic, one engine each.
struct Shards {
    p: Pipeline,
    config: EngineConfig,
    bus: Arc<dyn Bus>,
    registry: Option<Arc<dyn SchemaRegistry>>,
    lake: Lake,
    rules: RulesFactory,
    producer: Arc<dyn Producer>,
    consumer: Box<dyn Consumer>,
    /// A consumer of the repartitioners' group that never joins it: their committed offsets.
    progress: Box<dyn Consumer>,
    /// When the source partitions were last looked at for being quiet.
    quiet_checked: Option<std::time::Instant>,
    /// The source topic's partition count.
    sources: u32,
    topic: String,
    engines: BTreeMap<u32, Engine>,
    /// The offset committed (or found) for each partition held.
    committed: BTreeMap<u32, i64>,
    /// Gained partitions not yet sought to their shard's offset (a partition cannot be sought
    /// until the consumer fetches it): their records are left until it is.
    unsought: BTreeSet<u32>,
}

impl Shards {
    fn bus_err(&self, source: BusError) -> EngineError {
        EngineError::Bus { pipeline: self.p.id.clone(), source }
    }

    async fn poll(&mut self, wait: Duration) -> Result<Vec<Message>, EngineError> {
        let polled = self.consumer.poll(wait).await;
        polled.map_err(|e| self.bus_err(e))
    }

    async fn run(&mut self, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<(), EngineError> {
        loop {
            let polled = tokio::select! {
                _ = stop.wait_for(|s| *s) => return Ok(()),
                polled = self.poll(self.config.poll_interval) => polled?,
            };
            self.step(polled).await?;
        }
    }

    /// Follows the group's assignment: drops the shards of partitions it lost, opens (from
    /// their checkpoints) those of partitions it gained.
    async fn sync(&mut self) -> Result<(), EngineError> {
        let now: BTreeSet<u32> =
            self.consumer.assignment().into_iter().filter(|tp| tp.topic == self.topic).map(|tp| tp.partition).collect();
        let lost: Vec<u32> = self.engines.keys().filter(|p| !now.contains(p)).copied().collect();
        for p in lost {
            self.engines.remove(&p);
            self.committed.remove(&p);
            self.unsought.remove(&p);
            tracing::info!(pipeline = %self.p.id, partition = p, "partition moved to another member: its shard resumes there from its checkpoint");
        }
        let gained: Vec<u32> = now.iter().filter(|p| !self.engines.contains_key(p)).copied().collect();
        for p in gained {
            let engine = Engine::open_shard(
                self.p.clone(),
                self.config.clone(),
                self.bus.clone(),
                self.registry.clone(),
                self.lake.clone(),
                (self.rules)(),
                self.producer.clone(),
                p,
            )
            .await?;
            let (next, _) = engine.shard_next().expect("a shard");
            // The group's committed offset, where the consumer starts, can be behind the
            // checkpoint (a crash between the two) or ahead of it (the partition's previous
            // holder checkpointed and committed after this one read its checkpoint): either way
            // reading starts at the checkpoint's offset, sought before any record is taken.
            self.unsought.insert(p);
            tracing::info!(pipeline = %self.p.id, partition = p, next, "partition gained: its shard resumes from its checkpoint");
            self.committed.insert(p, next);
            self.engines.insert(p, engine);
        }
        metrics::gauge!("weir_stream_shards", "pipeline" => self.p.id.clone()).set(self.engines.len() as f64);
        Ok(())
    }

    /// Tells each shard which source partitions are quiet (see [`Engine::set_quiet`]), at most
    /// every poll interval and only when one of them has a silent source partition.
    async fn check_quiet(&mut self) -> Result<(), EngineError> {
        if !self.engines.values().any(Engine::may_be_idle)
            || self
                .quiet_checked
                .is_some_and(|at| at.elapsed() < self.config.poll_interval.max(Duration::from_millis(200)))
        {
            return Ok(());
        }
        self.quiet_checked = Some(std::time::Instant::now());
        let bus_err = |source| EngineError::Bus { pipeline: self.p.id.clone(), source };
        let source = &self.p.source.topic;
        let ends = self.bus.end_offsets(source).await.map_err(bus_err)?;
        let tps: Vec<TopicPartition> = (0..self.sources).map(|n| TopicPartition::new(source.clone(), n)).collect();
        let committed = self.progress.committed(&tps).await.map_err(bus_err)?;
        let repartitioned: std::collections::BTreeSet<u32> = (0..self.sources)
            .filter(|&n| {
                let end = ends.get(n as usize).copied().unwrap_or(0);
                committed.get(n as usize).copied().flatten().unwrap_or(0) >= end
            })
            .collect();
        // Read after the source's: what was repartitioned is in these ends.
        let by_key_ends = self.bus.end_offsets(&self.topic).await.map_err(bus_err)?;
        for (&p, engine) in &mut self.engines {
            let (next, _) = engine.shard_next().expect("a shard");
            let read_all = next >= by_key_ends.get(p as usize).copied().unwrap_or(0);
            engine.set_quiet(if read_all { repartitioned.clone() } else { Default::default() });
        }
        Ok(())
    }

    async fn step(&mut self, polled: Vec<Message>) -> Result<(), EngineError> {
        self.sync().await?;
        let mut by_partition: BTreeMap<u32, Vec<Message>> = BTreeMap::new();
        for m in polled {
            by_partition.entry(m.partition).or_default().push(m);
        }
        self.check_quiet().await?;
        let mut commits = Vec::new();
        for (&p, engine) in &mut self.engines {
            let mut messages = by_partition.remove(&p).unwrap_or_default();
            let (next, _) = engine.shard_next().expect("a shard");
            if self.unsought.contains(&p) {
                // Records polled before the seek are read again after it.
                messages.clear();
                match self.consumer.seek(&TopicPartition::new(self.topic.clone(), p), next).await {
                    Ok(()) => {
                        self.unsought.remove(&p);
                    }
                    Err(e) => tracing::debug!(pipeline = %self.p.id, partition = p, error = %e, "not sought yet"),
                }
            }
            engine.step(messages).await?;
            let (_, checkpointed) = engine.shard_next().expect("a shard");
            if self.committed.get(&p) != Some(&checkpointed) {
                commits.push((TopicPartition::new(self.topic.clone(), p), checkpointed));
                self.committed.insert(p, checkpointed);
            }
        }
        self.commit(commits).await;
        Ok(())
    }

    /// Commits the shards' checkpointed offsets: they show the group's lag and keep the
    /// embedded log's retention from deleting what a shard would read again.
    async fn commit(&mut self, offsets: Vec<(TopicPartition, i64)>) {
        if offsets.is_empty() {
            return;
        }
        if let Err(e) = self.consumer.commit(&offsets).await {
            tracing::warn!(pipeline = %self.p.id, error = %e, "could not commit the shards' offsets (their checkpoints keep them)");
        }
    }

    async fn checkpoint(&mut self) -> Result<(), EngineError> {
        let mut commits = Vec::new();
        for (&p, engine) in &mut self.engines {
            engine.checkpoint().await?;
            let (_, checkpointed) = engine.shard_next().expect("a shard");
            commits.push((TopicPartition::new(self.topic.clone(), p), checkpointed));
        }
        self.commit(commits).await;
        Ok(())
    }
}
