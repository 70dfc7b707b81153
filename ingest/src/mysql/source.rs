//! The running MySQL/MariaDB source: checks the server, replays the schema history, snapshots
//! when needed, then follows the binlog, producing change events in batches and saving the offset
//! after each batch the bus acknowledges.
//!
//! Batches are flushed when full (`max_batch`) or as soon as the binlog has nothing more ready,
//! so under load batches are large and when quiet an event waits for no timer.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{FutureExt, StreamExt};
use mysql_async::{
    BinlogStream, Conn,
    binlog::{
        EventType,
        events::{EventData, RowsEventData, TableMapEvent},
    },
    prelude::Queryable,
};
use weir_bus::{Bus, BusError, ConsumerConfig, Producer, Record, TopicPartition};
use weir_schemas::{
    envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TransactionMeta},
    history::ChangeKind,
    metadata::redact,
    serializer::{AvroSerializer, EventEncoder},
};

use super::{
    EventFormat, MysqlError, MysqlSourceConfig, SnapshotMode,
    columns::{InfoColumn, TableDef},
    ddl::Named,
    events::{MetadataEvents, RowChange, SchemaChangeEvents, TableEvents},
    history::{HistoryRecord, TableChange},
    incremental::{Incremental, SnapshotQueue},
    offset::{self, Offset},
    replay::{self, Position, Replayed},
    signal,
    stream::{self, MARIADB_ANNOTATE_ROWS, MARIADB_GTID, MARIADB_GTID_LIST, ServerInfo},
};

/// `(db, table)`.
pub(super) type TableName = (String, String);

/// A transaction being read.
#[derive(Debug, Clone)]
struct Txn {
    file: String,
    start: u64,
    gtid: Option<String>,
    standalone: bool,
    /// Row changes of captured tables seen so far (skipped ones included).
    rows: u64,
    query: Option<String>,
    thread: Option<i64>,
    /// `server_id` of the server that wrote it (a replica's binlog keeps the primary's).
    server_id: Option<u32>,
    /// Transaction metadata, from its first captured change (`provide_transaction_metadata`).
    meta: Option<TransactionMeta>,
}

impl Txn {
    fn new(file: &str, start: u64, gtid: Option<String>, standalone: bool) -> Txn {
        Txn {
            file: file.to_string(),
            start,
            gtid,
            standalone,
            rows: 0,
            query: None,
            thread: None,
            server_id: None,
            meta: None,
        }
    }

    /// Debezium's transaction id: the GTID, or the binlog position of the transaction's start.
    fn id(&self) -> String {
        self.gtid.clone().unwrap_or_else(|| format!("file={},pos={}", self.file, self.start))
    }
}

/// What a catch-up run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Rows read by a snapshot.
    pub snapshot_rows: u64,
    /// Row changes read from the binlog (and produced, unless skipped).
    pub changes: u64,
    /// Records produced (events, tombstones, schema changes).
    pub records: u64,
}

/// A running MySQL/MariaDB CDC source.
pub struct MysqlSource {
    pub(super) config: MysqlSourceConfig,
    /// How to reach the server (TLS, password), resolved from `config`.
    pub(super) opts: mysql_async::Opts,
    pub(super) bus: Arc<dyn Bus>,
    pub(super) producer: Box<dyn Producer>,
    pub(super) encoder: EventEncoder,
    pub(super) info: ServerInfo,
    pub(super) flavor: BinlogFlavor,
    pub(super) meta: Conn,
    /// Latest known definition per captured table (snapshot, history, DDL).
    pub(super) known: BTreeMap<TableName, TableDef>,
    /// Event builders of the binlog's table ids, with the table map they were built from.
    by_id: HashMap<u64, (TableMapEvent<'static>, Arc<TableEvents>)>,
    /// Event builders by name (snapshot, truncates).
    pub(super) by_name: HashMap<TableName, Arc<TableEvents>>,
    pub(super) topics: HashSet<String>,
    pub(super) schema_changes: SchemaChangeEvents,
    metadata: MetadataEvents,
    /// When the last heartbeat record was queued.
    last_heartbeat: Option<std::time::Instant>,
    pub(super) offset: Offset,
    pub(super) offset_path: PathBuf,
    pub(super) pending: Vec<(String, Record)>,
    /// Changes on the bus already, to skip while the binlog is read again after a restart.
    replayed: Replayed,
    /// Snapshots asked for by signals (saved with the offset).
    pub(super) snapshots: SnapshotQueue,
    /// The chunk or blocking snapshot in progress.
    pub(super) incremental: Incremental,
    /// The next signal-topic record to act on (saved with the offset).
    pub(super) signal_next: i64,
    /// The MariaDB GTID position to resume after, when the saved offset names another server's
    /// binlog (a failover to a replica).
    gtid_start: Option<String>,
    pub(super) stats: RunStats,
}

/// Microseconds since the epoch, now.
pub(super) fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl MysqlSource {
    /// Connects, checks the server's binlog settings and privileges, and replays the schema
    /// history.
    pub async fn new(
        config: MysqlSourceConfig,
        bus: Arc<dyn Bus>,
        serializer: Arc<AvroSerializer>,
    ) -> Result<Self, MysqlError> {
        let name = config.name.clone();
        let server = |action: &str| {
            let name = name.clone();
            let action = action.to_string();
            move |error| MysqlError::Server { source_name: name, action, error: Box::new(error) }
        };
        let opts = super::connection::opts(&config)
            .map_err(|reason| MysqlError::Setup { source_name: name.clone(), reason })?;
        let mut meta =
            stream::connect(&opts).await.map_err(server(&format!("connecting to {}", redact(&config.url))))?;
        let info = stream::check(&mut meta)
            .await
            .map_err(server("checking the server"))?
            .map_err(|reason| MysqlError::Setup { source_name: name.clone(), reason })?;
        let flavor = if info.mariadb { BinlogFlavor::Mariadb } else { BinlogFlavor::Mysql };
        let setup = |reason: String| MysqlError::Setup { source_name: name.clone(), reason };
        if config.read_only && !info.mariadb {
            return Err(setup(
                "read_only = true needs MariaDB (whose consistent snapshots report their binlog position); on MySQL \
                 set signal_data_collection for incremental snapshots' watermarks instead"
                    .into(),
            ));
        }
        if let Some(c) = &config.signal_data_collection
            && c.split_once('.').is_none_or(|(db, t)| db.is_empty() || t.is_empty())
        {
            return Err(setup(format!("signal_data_collection {c:?} is not of the form db.table")));
        }
        tracing::info!(source = %name, version = %info.version, server_id = info.server_id, "connected");
        let offset_path = offset::path(&config.state_dir, &config.name);
        let offset = offset::load(&offset_path)
            .map_err(|e| MysqlError::Io { source_name: name.clone(), action: e.action, path: e.path, error: e.error })?
            .unwrap_or_default();
        let producer = bus.producer().await.map_err(|e| MysqlError::Bus(Box::new(e), name.clone()))?;
        let schema_changes = SchemaChangeEvents::new(&config.topic_prefix, flavor);
        let metadata = MetadataEvents::new(&config.topic_prefix);
        let encoder = match config.format {
            EventFormat::Avro => EventEncoder::Avro(serializer),
            EventFormat::Json => EventEncoder::Json,
        };
        let snapshots = offset.snapshots.clone();
        let signal_next = offset.signal_offset;
        let mut source = MysqlSource {
            config,
            opts,
            bus,
            producer,
            encoder,
            info,
            flavor,
            meta,
            known: BTreeMap::new(),
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            topics: HashSet::new(),
            schema_changes,
            metadata,
            last_heartbeat: None,
            offset,
            offset_path,
            pending: Vec::new(),
            replayed: Replayed::default(),
            snapshots,
            incremental: Incremental::default(),
            signal_next,
            gtid_start: None,
            stats: RunStats::default(),
        };
        source.replay_history().await?;
        Ok(source)
    }

    /// The saved (or, before the first save, initial) offset.
    pub fn offset(&self) -> &Offset {
        &self.offset
    }

    pub(super) fn history_topic(&self) -> String {
        format!("{}.schema-history", self.config.topic_prefix)
    }

    pub(super) fn bus_error(&self, e: BusError) -> MysqlError {
        MysqlError::Bus(Box::new(e), self.config.name.clone())
    }

    pub(super) fn server_error<A: Into<String>>(
        &self,
        action: A,
    ) -> impl FnOnce(mysql_async::Error) -> MysqlError + use<A> {
        let source_name = self.config.name.clone();
        let action = action.into();
        move |error| MysqlError::Server { source_name, action, error: Box::new(error) }
    }

    pub(super) fn decode_error(&self, file: &str, pos: u64, reason: impl std::fmt::Display) -> MysqlError {
        MysqlError::Decode { source_name: self.config.name.clone(), file: file.into(), pos, reason: reason.to_string() }
    }

    /// Creates `topic` (with `partitions` and `config`) unless this source already has.
    pub(super) async fn ensure_topic(
        &mut self,
        topic: &str,
        partitions: u32,
        config: &weir_bus::TopicConfig,
    ) -> Result<(), MysqlError> {
        if self.topics.contains(topic) {
            return Ok(());
        }
        match self.bus.create_topic_with(topic, partitions, config).await {
            Ok(()) | Err(BusError::TopicExists(_)) => {}
            Err(e) => return Err(self.bus_error(e)),
        }
        self.topics.insert(topic.to_string());
        Ok(())
    }

    /// Creates the schema-history topic keeping every record (without it the source's table
    /// definitions cannot be recovered), or warns when an existing one may lose records.
    async fn ensure_history_topic(&mut self) -> Result<String, MysqlError> {
        let topic = self.history_topic();
        if self.topics.contains(&topic) {
            return Ok(topic);
        }
        self.ensure_topic(&topic, 1, &weir_bus::keep_forever()).await?;
        let config = self.bus.topic_config(&topic).await.map_err(|e| self.bus_error(e))?;
        for key in ["retention.ms", "retention.bytes"] {
            if let Some(value) = config.get(key).filter(|v| v.as_str() != "-1") {
                tracing::warn!(
                    source = %self.config.name, topic, key, value,
                    "the schema-history topic's records expire: once they do, the source cannot recover its tables' \
                     definitions; set {key}=-1 on it"
                );
            }
        }
        if let Some(policy) = config.get("cleanup.policy").filter(|p| p.contains("compact")) {
            tracing::warn!(source = %self.config.name, topic, policy, "the schema-history topic is compacted: it needs every record; set cleanup.policy=delete");
        }
        Ok(topic)
    }

    /// Reads `<prefix>.schema-history` from the start: the last definition of every table.
    async fn replay_history(&mut self) -> Result<(), MysqlError> {
        let topic = self.ensure_history_topic().await?;
        let end = self.bus.end_offsets(&topic).await.map_err(|e| self.bus_error(e))?.first().copied().unwrap_or(0);
        if end == 0 {
            return Ok(());
        }
        let mut consumer = self
            .bus
            .consumer(ConsumerConfig::new(format!("weir-mysql-history-{}", self.config.name)))
            .await
            .map_err(|e| self.bus_error(e))?;
        let tp = TopicPartition::new(topic.clone(), 0);
        consumer.assign(std::slice::from_ref(&tp)).await.map_err(|e| self.bus_error(e))?;
        consumer.seek(&tp, 0).await.map_err(|e| self.bus_error(e))?;
        let mut next = 0;
        let mut records = 0;
        while next < end {
            let batch = consumer.poll(Duration::from_secs(5)).await.map_err(|e| self.bus_error(e))?;
            if batch.is_empty() {
                return Err(self.decode_error(&topic, next as u64, "schema history ended before its end offset"));
            }
            for m in batch {
                next = m.offset + 1;
                let Some(value) = m.value else { continue };
                let record = HistoryRecord::from_json(&value)
                    .map_err(|e| self.decode_error(&topic, m.offset as u64, format!("schema history record: {e}")))?;
                self.apply_history(&record);
                records += 1;
            }
        }
        tracing::info!(source = %self.config.name, records, tables = self.known.len(), "schema history replayed");
        Ok(())
    }

    fn apply_history(&mut self, record: &HistoryRecord) {
        for change in &record.table_changes {
            let name = (change.table.db.clone(), change.table.table.clone());
            match change.change {
                ChangeKind::Drop => self.known.remove(&name),
                ChangeKind::Create | ChangeKind::Alter => self.known.insert(name, change.table.clone()),
            };
        }
    }

    /// Queues a history record and its schema-change event.
    pub(super) async fn record_history(
        &mut self,
        record: HistoryRecord,
        source: &BinlogSource,
    ) -> Result<(), MysqlError> {
        self.apply_history(&record);
        for change in &record.table_changes {
            let name = (change.table.db.clone(), change.table.table.clone());
            self.chunk_schema_changed(&name);
            self.by_name.remove(&name);
        }
        let topic = self.history_topic();
        let doc = record.to_doc(&self.config.topic_prefix, self.info.server_id);
        let json = serde_json::to_vec(&doc).expect("history records serialize");
        self.pending.push((topic, Record { value: Some(json.into()), partition: Some(0), ..Record::default() }));
        let sc_topic = self.schema_changes.topic.clone();
        self.ensure_topic(&sc_topic, 1, &weir_bus::TopicConfig::new()).await?;
        let event = self
            .schema_changes
            .record(&self.encoder, &doc, source)
            .await
            .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
        self.pending.push((sc_topic, event));
        Ok(())
    }

    /// Every captured table's definition per `information_schema` now.
    pub(super) async fn load_definitions(&mut self) -> Result<BTreeMap<TableName, TableDef>, MysqlError> {
        let result = load_definitions(&mut self.meta, &self.config).await;
        result.map_err(|e| self.load_error(e))
    }

    pub(super) fn load_error(&self, e: LoadError) -> MysqlError {
        match e {
            LoadError::Server(err) => (self.server_error("reading information_schema"))(err),
            LoadError::Column(err) => self.decode_error("information_schema", 0, err),
        }
    }

    /// The event builder of a table by name (latest known definition, else `information_schema`).
    pub(super) async fn events_by_name(&mut self, name: &TableName) -> Result<Option<Arc<TableEvents>>, MysqlError> {
        if let Some(e) = self.by_name.get(name) {
            return Ok(Some(e.clone()));
        }
        if !self.known.contains_key(name) {
            let defs = self.load_definitions().await?;
            self.known.extend(defs);
        }
        let Some(def) = self.known.get(name).cloned() else { return Ok(None) };
        let events = self.build_events(def).await?;
        self.by_name.insert(name.clone(), events.clone());
        Ok(Some(events))
    }

    pub(super) async fn build_events(&mut self, def: TableDef) -> Result<Arc<TableEvents>, MysqlError> {
        let (db, table) = (def.db.clone(), def.table.clone());
        let events = TableEvents::new(&self.config.topic_prefix, self.flavor, def)
            .map_err(|e| self.decode_error(&format!("{db}.{table}"), 0, e))?;
        let topic = events.topic.clone();
        let config = self.config.topic_config.clone();
        self.ensure_topic(&topic, self.config.partitions, &config).await?;
        Ok(Arc::new(events))
    }

    /// The event builder for a rows event's table map (built once per table id and map).
    async fn events_for_map(
        &mut self,
        tme: &TableMapEvent<'static>,
        file: &str,
        pos: u64,
    ) -> Result<Arc<TableEvents>, MysqlError> {
        if let Some((map, events)) = self.by_id.get(&tme.table_id())
            && map == tme
        {
            return Ok(events.clone());
        }
        let name = (tme.database_name().to_string(), tme.table_name().to_string());
        let json = self.known.get(&name).map(TableDef::json_columns).unwrap_or_default();
        let def = TableDef::from_table_map(tme, &json).map_err(|e| self.decode_error(file, pos, e))?;
        if self.known.get(&name) != Some(&def) {
            // A definition the history has not seen (a DDL on a table outside the last refresh):
            // record it so a restart knows it.
            let change = if self.known.contains_key(&name) { ChangeKind::Alter } else { ChangeKind::Create };
            tracing::info!(source = %self.config.name, table = %format!("{}.{}", name.0, name.1), ?change, "new table definition in the binlog");
            let record = HistoryRecord {
                file: file.into(),
                pos,
                ts_ms: now_us() / 1000,
                database: name.0.clone(),
                ddl: String::new(),
                snapshot: false,
                table_changes: vec![TableChange { change, table: def.clone() }],
            };
            let source = self.source_block(&name.0, Some(&name.1), file, pos, now_us(), None, SnapshotMarker::False);
            self.record_history(record, &source).await?;
        }
        let events = self.build_events(def).await?;
        self.by_id.insert(tme.table_id(), (tme.clone(), events.clone()));
        Ok(events)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn source_block(
        &self,
        db: &str,
        table: Option<&str>,
        file: &str,
        pos: u64,
        ts_us: i64,
        gtid: Option<&str>,
        snapshot: SnapshotMarker,
    ) -> BinlogSource {
        BinlogSource {
            flavor: self.flavor,
            name: self.config.topic_prefix.clone(),
            ts_us,
            snapshot,
            db: db.into(),
            table: table.map(Into::into),
            server_id: i64::from(self.info.server_id),
            gtid: gtid.map(Into::into),
            file: file.into(),
            pos: pos as i64,
            row: 0,
            thread: None,
            query: None,
        }
    }

    /// Sends everything pending, then saves `offset` (with the snapshot queue and signal-topic
    /// position as they are now).
    pub(super) async fn flush(&mut self, mut offset: Offset) -> Result<(), MysqlError> {
        // While catching up the binlog is always ready: give the runtime's other tasks (and
        // timers) their turn once per batch.
        tokio::task::yield_now().await;
        offset.snapshots = self.snapshots.clone();
        offset.signal_offset = self.signal_next;
        if !offset.file.is_empty() {
            offset.server_id = Some(self.info.server_id);
        }
        let skipped = self.replayed.filter(&mut self.pending);
        replay::tag_server(&mut self.pending, self.info.server_id);
        if skipped > 0 {
            tracing::info!(source = %self.config.name, skipped, "skipped changes the bus already held");
            metrics::counter!("weir_ingest_mysql_replayed_skipped_total", "source" => self.config.name.clone())
                .increment(skipped as u64);
        }
        if !self.pending.is_empty() {
            let n = crate::produce::send_grouped(self.producer.as_ref(), &mut self.pending)
                .await
                .map_err(|e| self.bus_error(e))?;
            self.stats.records += n as u64;
            metrics::counter!("weir_ingest_mysql_records_total", "source" => self.config.name.clone())
                .increment(n as u64);
        } else if offset == self.offset {
            return Ok(());
        }
        offset::save(&self.offset_path, &offset).map_err(|e| MysqlError::Io {
            source_name: self.config.name.clone(),
            action: e.action,
            path: e.path,
            error: e.error,
        })?;
        self.offset = offset;
        Ok(())
    }

    /// Snapshots if the mode and offset call for it; returns whether streaming should follow.
    async fn prepare(&mut self) -> Result<bool, MysqlError> {
        let files = stream::binlog_files(&mut self.meta).await.map_err(self.server_error("SHOW BINARY LOGS"))?;
        // An offset from another server of the topology (a replica promoted after a failover):
        // its file and position mean nothing here, its GTID position does.
        self.gtid_start = match (&self.offset.gtid_position, self.offset.server_id) {
            (Some(position), Some(id)) if self.info.mariadb && id != self.info.server_id => {
                tracing::warn!(
                    source = %self.config.name, saved_server_id = id, server_id = self.info.server_id, gtid = %position,
                    "the saved offset is another server's: resuming by GTID"
                );
                Some(position.clone())
            }
            _ => None,
        };
        let purged = self.gtid_start.is_none() && !self.offset.file.is_empty() && !files.contains(&self.offset.file);
        let mode = self.config.snapshot_mode;
        let snapshot = match mode {
            SnapshotMode::Never | SnapshotMode::Recovery => false,
            SnapshotMode::Initial | SnapshotMode::InitialOnly => !self.offset.snapshot_completed,
            SnapshotMode::WhenNeeded => !self.offset.snapshot_completed || purged,
        };
        if purged && !snapshot {
            return Err(MysqlError::Purged {
                source_name: self.config.name.clone(),
                file: self.offset.file.clone(),
                offset_file: self.offset_path.clone(),
            });
        }
        if mode == SnapshotMode::Recovery {
            self.recover_history().await?;
        }
        if snapshot {
            if purged {
                tracing::warn!(source = %self.config.name, file = %self.offset.file, "saved binlog position purged: snapshotting again");
            }
            self.snapshot().await?;
        } else if self.gtid_start.is_none() {
            self.replayed =
                Replayed::load(self.bus.as_ref(), &self.config.topic_prefix, &self.offset, &files, self.info.server_id)
                    .await
                    .map_err(|e| self.bus_error(e))?;
        }
        Ok(mode != SnapshotMode::InitialOnly)
    }

    /// Snapshots if needed, then reads the binlog up to the server's position at the time of
    /// the call and finishes the incremental or blocking snapshots the signals sent so far ask
    /// for (unless paused), and returns (for `weir ingest --once` and benchmarks).
    pub async fn catch_up(&mut self) -> Result<RunStats, MysqlError> {
        self.stats = RunStats::default();
        if self.prepare().await? {
            let target = self.master_position().await?;
            self.stream(Some(target), std::future::pending()).await?;
        }
        Ok(self.stats.clone())
    }

    /// Runs until `shutdown` resolves (or, with `initial_only`, until the snapshot is done).
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), MysqlError> {
        if self.prepare().await? {
            self.stream(None, shutdown).await?;
        }
        Ok(())
    }

    /// The server's current binlog file and position.
    pub(super) async fn master_position(&mut self) -> Result<(String, u64), MysqlError> {
        let query = if self.info.mariadb || self.info.version.as_str() < "8.4" {
            "SHOW MASTER STATUS"
        } else {
            "SHOW BINARY LOG STATUS"
        };
        let row: Option<mysql_async::Row> = self.meta.query_first(query).await.map_err(self.server_error(query))?;
        let row = row.ok_or_else(|| MysqlError::Setup {
            source_name: self.config.name.clone(),
            reason: format!("{query} returned nothing: is log_bin on?"),
        })?;
        let file: String = row.get(0).unwrap_or_default();
        let pos: u64 = row.get(1).unwrap_or_default();
        Ok((file, pos))
    }

    /// The offset to save now. `committed.skip_rows` is non-zero only until the transaction a
    /// restart resumes inside has been read past its skipped rows and committed.
    fn offset_now(&self, txn: Option<&Txn>, committed: &Offset) -> Offset {
        match txn {
            Some(t) if t.rows > 0 || committed.skip_rows > 0 => Offset {
                file: t.file.clone(),
                pos: t.start,
                skip_rows: t.rows.max(committed.skip_rows),
                gtid: committed.gtid.clone(),
                ..committed.clone()
            },
            _ => committed.clone(),
        }
    }

    /// Follows the binlog from the offset until `until` (file, pos) is reached with no
    /// transaction open, or `shutdown` resolves.
    async fn stream(
        &mut self,
        until: Option<(String, u64)>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), MysqlError> {
        tokio::pin!(shutdown);
        let mut committed = self.offset.clone();
        let mut file = committed.file.clone();
        let gtid_start = self.gtid_start.take();
        let start = match &gtid_start {
            Some(position) => stream::Start::Gtid(position),
            None => stream::Start::Position(&file, committed.pos),
        };
        let mut binlog: BinlogStream =
            stream::open(&self.opts, &self.info, self.config.server_id, start.clone(), self.config.heartbeat_interval)
                .await
                .map_err(self.server_error(format!("starting replication at {start:?}")))?;
        // Until the server names the file it starts in, the position is unknown: nothing is
        // saved or reached meanwhile.
        let mut positioned = gtid_start.is_none();
        if positioned && self.info.mariadb && !file.is_empty() {
            match stream::gtid_position_at(&mut self.meta, &file, committed.pos).await {
                Ok(Some(position)) => committed.gtid_position = Some(position),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(source = %self.config.name, error = %e, "BINLOG_GTID_POS: the GTID position stays unknown until the next transaction")
                }
            }
        }
        tracing::info!(source = %self.config.name, ?start, skip = committed.skip_rows, "streaming the binlog");
        let signal_topic = signal::topic(&self.config.topic_prefix);
        self.ensure_topic(&signal_topic, 1, &weir_bus::TopicConfig::new()).await?;
        let signal_end = self.bus.end_offsets(&signal_topic).await.map_err(|e| self.bus_error(e))?;
        let mut signals = signal::Reader::spawn(self.bus.clone(), signal_topic, self.signal_next, &self.config.name);
        if until.is_some() {
            // Catching up: the signals already sent count as "what is there now".
            while self.signal_next < signal_end.first().copied().unwrap_or(0) {
                let message = signals.next().await;
                self.on_topic_signal(message).await?;
            }
        }
        let mut txn: Option<Txn> = None;
        let mut seen_fde = false;
        let reached = |file: &str, pos: u64, txn: &Option<Txn>| match &until {
            Some((f, p)) => txn.is_none() && (file > f.as_str() || (file == f && pos >= *p)),
            None => false,
        };
        loop {
            if positioned && reached(&file, committed.pos, &txn) && !self.snapshot_busy() {
                let offset = self.offset_now(None, &committed);
                self.flush(offset).await?;
                return Ok(());
            }
            while let Some(message) = signals.try_next() {
                self.on_topic_signal(message).await?;
            }
            // Between transactions the stream is at `committed`; snapshot chunks go out only there.
            let between = (positioned && txn.is_none() && committed.skip_rows == 0).then(|| Position {
                file: committed.file.clone(),
                pos: committed.pos,
                row: 0,
            });
            if self.snapshot_pending() {
                self.snapshot_step(between.as_ref()).await?;
            }
            let next = match binlog.next().now_or_never() {
                Some(next) => next,
                None => {
                    if positioned {
                        let offset = self.offset_now(txn.as_ref(), &committed);
                        self.flush(offset).await?;
                    }
                    if self.snapshot_ready() {
                        continue;
                    }
                    tokio::select! {
                        next = binlog.next() => next,
                        message = signals.next() => {
                            self.on_topic_signal(message).await?;
                            continue;
                        }
                        _ = &mut shutdown => {
                            if positioned {
                                let offset = self.offset_now(txn.as_ref(), &committed);
                                self.flush(offset).await?;
                            }
                            return Ok(());
                        }
                    }
                }
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    return Err((self.server_error(format!("reading the binlog at {file}:{}", committed.pos)))(e));
                }
                None => {
                    return Err(self.decode_error(&file, committed.pos, "the server closed the replication stream"));
                }
            };
            let header = event.header();
            let end = u64::from(header.log_pos());
            let start = end.saturating_sub(u64::from(header.event_size()));
            let ts_us = i64::from(header.timestamp()) * 1_000_000;
            match header.event_type_raw() {
                MARIADB_GTID => {
                    let g = stream::mariadb_gtid(event.data(), header.server_id())
                        .ok_or_else(|| self.decode_error(&file, start, "short MariaDB GTID event"))?;
                    let mut t = Txn::new(&file, start, Some(g.gtid), g.standalone);
                    t.server_id = Some(header.server_id());
                    txn = Some(t);
                    continue;
                }
                MARIADB_GTID_LIST => {
                    // The GTID state at the start of a binlog file: the position's GTIDs until a
                    // transaction of ours commits.
                    let list = stream::mariadb_gtid_list(event.data())
                        .ok_or_else(|| self.decode_error(&file, start, "short MariaDB GTID list event"))?;
                    if txn.is_none() && !list.is_empty() {
                        committed.gtid = Some(list.join(","));
                    }
                    advance(&mut committed, &txn, &file, end, MARIADB_GTID_LIST);
                    continue;
                }
                MARIADB_ANNOTATE_ROWS => {
                    if let Some(t) = txn.as_mut() {
                        t.query = Some(String::from_utf8_lossy(event.data()).into_owned());
                    }
                    continue;
                }
                _ => {}
            }
            let data = event.read_data().map_err(|e| self.decode_error(&file, start, e))?;
            match data {
                Some(EventData::RotateEvent(r)) => {
                    file = stream::rotate_name(r.name_raw(), !seen_fde, self.info.checksums);
                    if txn.is_none() {
                        committed.file = file.clone();
                        committed.pos = r.position();
                        if !positioned {
                            tracing::info!(source = %self.config.name, file = %file, pos = committed.pos, "resumed by GTID at this position");
                            positioned = true;
                        }
                    }
                }
                Some(EventData::FormatDescriptionEvent(_)) => seen_fde = true,
                Some(EventData::GtidEvent(g)) => {
                    let gtid = format!("{}:{}", uuid_text(&g.sid()), g.gno());
                    let mut t = Txn::new(&file, start, Some(gtid), false);
                    t.server_id = Some(header.server_id());
                    txn = Some(t);
                }
                Some(EventData::QueryEvent(q)) => {
                    let sql = q.query().trim().to_string();
                    if sql.eq_ignore_ascii_case("BEGIN") {
                        let t = txn.get_or_insert_with(|| Txn::new(&file, start, None, false));
                        t.thread = Some(i64::from(q.thread_id()));
                        t.server_id.get_or_insert(header.server_id());
                    } else if sql.eq_ignore_ascii_case("COMMIT") {
                        self.commit(&mut txn, &mut committed, &file, (start, end), ts_us).await?;
                    } else {
                        let gtid = txn.as_ref().and_then(|t| t.gtid.clone());
                        self.ddl(&q.schema(), &sql, &file, start, ts_us, gtid).await?;
                        if txn.as_ref().is_none_or(|t| t.standalone || t.rows == 0) {
                            self.commit(&mut txn, &mut committed, &file, (start, end), ts_us).await?;
                        }
                    }
                }
                Some(EventData::XidEvent(_)) => {
                    self.commit(&mut txn, &mut committed, &file, (start, end), ts_us).await?;
                }
                Some(EventData::RowsQueryEvent(q)) => {
                    if let Some(t) = txn.as_mut() {
                        t.query = Some(q.query().to_string());
                    }
                }
                Some(EventData::RowsEvent(rows)) => {
                    let Some(tme) = binlog.get_tme(rows.table_id()) else {
                        return Err(self.decode_error(
                            &file,
                            start,
                            format!("rows event for unknown table id {}", rows.table_id()),
                        ));
                    };
                    let (db, table) = (tme.database_name().to_string(), tme.table_name().to_string());
                    if self.is_signal_table(&db, &table) {
                        let found = super::incremental::signal_rows(&rows, tme)
                            .map_err(|e| self.decode_error(&file, start, format!("signal table row: {e}")))?;
                        for (row, (id, kind, data)) in found.into_iter().enumerate() {
                            let at = Position { file: file.clone(), pos: start, row: row as u64 };
                            self.on_signal(&id, &kind, &data, Some(&at)).await?;
                        }
                    }
                    if !self.config.captures(&db, &table) {
                        continue;
                    }
                    let tme = tme.clone();
                    let txn = txn.get_or_insert_with(|| Txn::new(&file, start, None, false));
                    self.rows(&rows, &tme, &file, start, ts_us, txn, committed.skip_rows).await?;
                    metrics::gauge!("weir_ingest_mysql_lag_seconds", "source" => self.config.name.clone())
                        .set((now_us() - ts_us).max(0) as f64 / 1e6);
                }
                Some(EventData::HeartbeatEvent) if txn.is_none() => {
                    metrics::gauge!("weir_ingest_mysql_lag_seconds", "source" => self.config.name.clone()).set(0.0);
                    self.heartbeat_if_due().await?;
                }
                _ => {}
            }
            advance(&mut committed, &txn, &file, end, header.event_type_raw());
            if positioned && self.pending.len() >= self.config.max_batch {
                let offset = self.offset_now(txn.as_ref(), &committed);
                self.flush(offset).await?;
            }
        }
    }

    /// Ends the transaction at the event `[start, end)` of `file`: the offset moves past it, and
    /// its `END` record (if its `BEGIN` went out) and a due heartbeat are queued.
    async fn commit(
        &mut self,
        txn: &mut Option<Txn>,
        committed: &mut Offset,
        file: &str,
        (start, end): (u64, u64),
        ts_us: i64,
    ) -> Result<(), MysqlError> {
        let done = txn.take();
        committed.file = file.to_string();
        committed.pos = end;
        committed.skip_rows = 0;
        if let Some(done) = done {
            if let Some(gtid) = done.gtid {
                if self.info.mariadb {
                    committed.gtid_position =
                        Some(stream::gtid_position_after(committed.gtid_position.as_deref(), &gtid));
                }
                committed.gtid = Some(gtid);
            }
            if let Some(meta) = done.meta {
                let position = Position { file: file.to_string(), pos: start, row: 0 };
                self.queue_transaction_record(&meta, true, ts_us / 1000, &position).await?;
            }
        }
        self.heartbeat_if_due().await
    }

    /// Queues the `BEGIN` or `END` record of `meta`, tagged with `position` for the replay filter.
    async fn queue_transaction_record(
        &mut self,
        meta: &TransactionMeta,
        end: bool,
        ts_ms: i64,
        position: &Position,
    ) -> Result<(), MysqlError> {
        let topic = self.metadata.transaction_topic.clone();
        self.ensure_topic(&topic, 1, &weir_bus::TopicConfig::new()).await?;
        let record = self
            .metadata
            .transaction(&self.encoder, meta, end, ts_ms)
            .await
            .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
        self.pending.push((topic, record));
        let last = self.pending.len() - 1;
        replay::tag(&mut self.pending[last..], position);
        Ok(())
    }

    /// Queues a heartbeat record (and runs the action query) when `heartbeat_topic` is set and
    /// `heartbeat_interval` has passed since the last one.
    async fn heartbeat_if_due(&mut self) -> Result<(), MysqlError> {
        let Some(topic) = self.config.heartbeat_topic.clone() else { return Ok(()) };
        if self.last_heartbeat.is_some_and(|t| t.elapsed() < self.config.heartbeat_interval) {
            return Ok(());
        }
        self.last_heartbeat = Some(std::time::Instant::now());
        if let Some(query) = self.config.heartbeat_action_query.clone() {
            self.meta.query_drop(&query).await.map_err(self.server_error(format!("heartbeat action query {query}")))?;
        }
        self.ensure_topic(&topic, 1, &weir_bus::TopicConfig::new()).await?;
        let record = self
            .metadata
            .heartbeat(&self.encoder, &topic, now_us() / 1000)
            .await
            .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
        self.pending.push((topic, record));
        metrics::counter!("weir_ingest_mysql_heartbeats_total", "source" => self.config.name.clone()).increment(1);
        Ok(())
    }

    /// Turns one rows event into change events.
    #[allow(clippy::too_many_arguments)]
    async fn rows(
        &mut self,
        rows: &RowsEventData<'_>,
        tme: &TableMapEvent<'static>,
        file: &str,
        start: u64,
        ts_us: i64,
        txn: &mut Txn,
        skip: u64,
    ) -> Result<(), MysqlError> {
        let events = self.events_for_map(tme, file, start).await?;
        let op = match rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Op::Create,
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => Op::Update,
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Op::Delete,
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(self.decode_error(
                    file,
                    start,
                    "partial JSON update rows: set binlog_row_value_options='' so updates carry full rows",
                ));
            }
        };
        let emit = self.config.emits(op.code());
        let processed = now_us();
        let convert = |row: Option<mysql_async::binlog::row::BinlogRow>| -> Result<Option<Vec<_>>, String> {
            let Some(row) = row else { return Ok(None) };
            let mut values = Vec::with_capacity(events.def.columns.len());
            for (i, column) in events.def.columns.iter().enumerate() {
                let value =
                    row.as_ref(i).ok_or_else(|| format!("column {} missing from the row image", column.name))?;
                values.push(column.binlog_value(value)?);
            }
            Ok(Some(values))
        };
        let with_meta = self.config.provide_transaction_metadata;
        let watched = self.chunk_watches(&(events.def.db.clone(), events.def.table.clone()));
        for (index, row) in rows.rows(tme).enumerate() {
            let (before, after) = row.map_err(|e| self.decode_error(file, start, e))?;
            txn.rows += 1;
            self.stats.changes += 1;
            let produced = emit && (txn.rows > skip || with_meta);
            if !produced && !watched {
                continue;
            }
            let before = convert(before).map_err(|e| self.decode_error(file, start, e))?;
            let after = convert(after).map_err(|e| self.decode_error(file, start, e))?;
            if watched {
                self.chunk_saw(before.as_deref(), after.as_deref());
            }
            if !produced {
                continue;
            }
            let position = Position { file: file.to_string(), pos: start, row: index as u64 };
            if with_meta && txn.meta.is_none() {
                // BEGIN goes out with the first change (again after a restart inside the
                // transaction: the replay filter drops it if the topic holds it).
                let meta = TransactionMeta::new(txn.id());
                self.queue_transaction_record(&meta, false, ts_us / 1000, &position).await?;
                txn.meta = Some(meta);
            }
            if txn.rows <= skip {
                // Already on the bus: count its events so later orders match the first run's.
                let count = events.event_count(op, before.as_deref(), after.as_deref());
                let meta = txn.meta.as_mut().expect("set above");
                for _ in 0..count {
                    meta.next(events.collection());
                }
                continue;
            }
            let mut source = self.source_block(
                &events.def.db,
                Some(&events.def.table),
                file,
                start,
                ts_us,
                txn.gtid.as_deref(),
                SnapshotMarker::False,
            );
            source.row = index as i32;
            source.thread = txn.thread;
            if let Some(id) = txn.server_id {
                source.server_id = i64::from(id);
            }
            if self.config.include_query {
                source.query = txn.query.clone();
            }
            let change = RowChange { op, before, after, source };
            let first = self.pending.len();
            events
                .records(
                    &self.encoder,
                    change,
                    self.config.tombstones_on_delete,
                    processed,
                    &mut self.pending,
                    txn.meta.as_mut(),
                )
                .await
                .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
            replay::tag(&mut self.pending[first..], &position);
        }
        Ok(())
    }

    /// A statement other than `BEGIN`/`COMMIT`: truncates become `t` events; DDL refreshes the
    /// captured tables' definitions and is recorded in the schema history.
    async fn ddl(
        &mut self,
        db: &str,
        sql: &str,
        file: &str,
        pos: u64,
        ts_us: i64,
        gtid: Option<String>,
    ) -> Result<(), MysqlError> {
        let words: Vec<String> = sql.split_whitespace().take(3).map(|w| w.to_ascii_uppercase()).collect();
        let first = words.first().map(String::as_str).unwrap_or_default();
        if first == "TRUNCATE" {
            let raw = if words.get(1).map(String::as_str) == Some("TABLE") {
                sql.split_whitespace().nth(2)
            } else {
                sql.split_whitespace().nth(1)
            };
            let Some(raw) = raw else { return Ok(()) };
            let unquoted = raw.trim_end_matches(';').replace('`', "");
            let name = match unquoted.split_once('.') {
                Some((d, t)) => (d.to_string(), t.to_string()),
                None => (db.to_string(), unquoted),
            };
            if self.config.captures(&name.0, &name.1)
                && self.config.emits("t")
                && let Some(events) = self.events_by_name(&name).await?
            {
                let source =
                    self.source_block(&name.0, Some(&name.1), file, pos, ts_us, gtid.as_deref(), SnapshotMarker::False);
                let change = RowChange { op: Op::Truncate, before: None, after: None, source };
                let first = self.pending.len();
                events
                    .records(&self.encoder, change, false, now_us(), &mut self.pending, None)
                    .await
                    .map_err(|e| MysqlError::Serialize(Box::new(e), self.config.name.clone()))?;
                replay::tag(&mut self.pending[first..], &Position { file: file.to_string(), pos, row: 0 });
            }
            return Ok(());
        }
        if !matches!(first, "CREATE" | "ALTER" | "DROP" | "RENAME") {
            return Ok(());
        }
        // DDL on databases and tables this source does not capture (another application's, on
        // the same server) is none of its schema changes. Reading the definitions for it would
        // also file, under its statement, a captured table's change made after it on the server
        // (the definitions are read now, not as of the statement's binlog position).
        if let Some(named) = super::ddl::named(db, sql)
            && !named.iter().any(|n| match n {
                Named::Database(d) => self.config.may_capture_database(d),
                Named::Table(d, t) => self.config.captures(d, t),
            })
        {
            tracing::debug!(source = %self.config.name, ddl = %sql, "DDL on what this source does not capture: skipped");
            return Ok(());
        }
        let now = self.load_definitions().await?;
        let mut changes = Vec::new();
        for (name, def) in &now {
            match self.known.get(name) {
                Some(old) if old == def => {}
                old => changes.push(TableChange {
                    change: if old.is_some() { ChangeKind::Alter } else { ChangeKind::Create },
                    table: def.clone(),
                }),
            }
        }
        for (name, old) in &self.known {
            if !now.contains_key(name) {
                changes.push(TableChange { change: ChangeKind::Drop, table: old.clone() });
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        tracing::info!(source = %self.config.name, ddl = %sql, changes = changes.len(), "schema change");
        let record = HistoryRecord {
            file: file.into(),
            pos,
            ts_ms: ts_us / 1000,
            database: db.into(),
            ddl: sql.into(),
            snapshot: false,
            table_changes: changes,
        };
        let source = self.source_block(db, None, file, pos, ts_us, gtid.as_deref(), SnapshotMarker::False);
        self.record_history(record, &source).await
    }
}

/// Outside transactions every event moves the position on (a rotation's format description,
/// GTID list, heartbeats), so catching up to a position with no transaction after it ends. Never
/// while a resumed transaction's skipped rows are still ahead, never backwards, and not for a
/// rotate event (whose position belongs to the file it ends).
fn advance(committed: &mut Offset, txn: &Option<Txn>, file: &str, end: u64, event_type: u8) {
    if txn.is_none()
        && committed.skip_rows == 0
        && end > 0
        && event_type != EventType::ROTATE_EVENT as u8
        && committed.file == file
        && end > committed.pos
    {
        committed.pos = end;
    }
}

/// A 16-byte server uuid as text.
fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Why definitions could not be loaded.
pub(super) enum LoadError {
    Server(mysql_async::Error),
    Column(super::columns::ColumnError),
}

/// Every captured table's definition per `information_schema` (on `conn`'s view of it).
pub(super) async fn load_definitions(
    conn: &mut Conn,
    config: &MysqlSourceConfig,
) -> Result<BTreeMap<TableName, TableDef>, LoadError> {
    let quote = |d: &str| format!("'{}'", d.replace('\\', "\\\\").replace('\'', "''"));
    let system = super::SYSTEM_DATABASES.map(quote).join(",");
    // Only the databases captured, when the include patterns name them.
    let only = match config.captured_databases() {
        Some(dbs) => format!(" IN ({})", dbs.iter().map(|d| quote(d)).collect::<Vec<_>>().join(",")),
        None => format!(" NOT IN ({system})"),
    };
    type ColumnRow =
        (String, String, String, String, String, String, Option<u64>, Option<u64>, Option<u64>, Option<String>);
    let rows: Vec<ColumnRow> = conn
        .query(format!(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, c.IS_NULLABLE, \
             c.NUMERIC_PRECISION, c.NUMERIC_SCALE, c.DATETIME_PRECISION, c.CHARACTER_SET_NAME \
             FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
               ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE t.TABLE_TYPE = 'BASE TABLE' AND c.TABLE_SCHEMA{only} \
             ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"
        ))
        .await
        .map_err(LoadError::Server)?;
    let keys: Vec<(String, String, String)> = conn
        .query(format!(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE CONSTRAINT_NAME = 'PRIMARY' AND TABLE_SCHEMA{only} \
             ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION"
        ))
        .await
        .map_err(LoadError::Server)?;
    // MariaDB declares JSON as LONGTEXT with a json_valid() check; MySQL before 8.0.16 has no such view.
    let checks: Vec<(String, String, String)> = conn
        .query(format!(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA{only}"
        ))
        .await
        .unwrap_or_default();
    let mut json: HashSet<(String, String, String)> = HashSet::new();
    for (db, table, clause) in checks {
        if let Some(rest) = clause.strip_prefix("json_valid(`")
            && let Some(column) = rest.strip_suffix("`)")
        {
            json.insert((db, table, column.to_string()));
        }
    }
    let mut key_names: HashMap<TableName, Vec<String>> = HashMap::new();
    for (db, table, column) in keys {
        key_names.entry((db, table)).or_default().push(column);
    }
    let mut grouped: BTreeMap<TableName, Vec<InfoColumn>> = BTreeMap::new();
    for (db, table, name, data_type, column_type, nullable, precision, scale, datetime_precision, charset) in rows {
        if !config.captures(&db, &table) {
            continue;
        }
        let json_checked = json.contains(&(db.clone(), table.clone(), name.clone()));
        grouped.entry((db, table)).or_default().push(InfoColumn {
            name,
            data_type,
            column_type,
            nullable: nullable == "YES",
            precision,
            scale,
            datetime_precision,
            charset,
            json_checked,
        });
    }
    let mut defs = BTreeMap::new();
    for ((db, table), columns) in grouped {
        let key = key_names.get(&(db.clone(), table.clone())).cloned().unwrap_or_default();
        let def = TableDef::from_information_schema(&db, &table, &columns, &key).map_err(LoadError::Column)?;
        defs.insert((db, table), def);
    }
    Ok(defs)
}

/// Logs progress of long work at most every `every`.
pub(super) struct Progress {
    every: Duration,
    last: Instant,
}

impl Progress {
    pub(super) fn new(every: Duration) -> Self {
        Progress { every, last: Instant::now() }
    }

    /// Whether it is time to log again.
    pub(super) fn due(&mut self) -> bool {
        if self.last.elapsed() >= self.every {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_uuids_as_text() {
        assert_eq!(uuid_text(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
    }
}
