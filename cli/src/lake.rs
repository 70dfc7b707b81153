//! `weir lake`: the lake role (change-event topics → `raw.*` Delta tables) and its tools
//! (tables, history, current-state snapshots, compaction, vacuum).

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Subcommand;
use weir_bus::Bus;
use weir_lake::signal::Signals;
use weir_lake::{
    Lake,
    writer::{FlushPolicy, TopicWriter, table_name},
};
use weir_schemas::registry::SchemaRegistry;

use crate::{config::Config, ingest::registry, telemetry};

/// `weir lake …`.
#[derive(Subcommand)]
pub enum LakeCommand {
    /// Write change-event topics into their `raw.*` Delta tables, exactly once.
    Run {
        /// Write what is on the topics now, then exit.
        #[arg(long)]
        once: bool,
        /// Only these topics (default: every change-event topic `<prefix>.<db>.<table>`, including
        /// ones that appear while running).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Only these partitions of each topic (default: all). Writers started with disjoint
        /// partitions share one table safely, each owning its partitions' offsets.
        #[arg(long, value_delimiter = ',')]
        partitions: Vec<u32>,
        /// Where to serve /healthz and /metrics (default: lake.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// List the lake's tables with their latest version, files and size.
    Tables,
    /// Show a table's commits, newest first.
    History {
        /// `raw.<name>`, `current.<name>` or `views.<name>`.
        table: String,
        /// At most this many commits.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Bring `current.<name>` (latest row per primary key) up to date with `raw.<name>`, from
    /// the changes since its last build; every table with a key when none is named.
    Snapshot {
        /// `raw.<name>`, `current.<name>` or `<name>`.
        table: Option<String>,
        /// Rebuild from the whole change log instead.
        #[arg(long)]
        full: bool,
    },
    /// Compact a table's small files into larger ones, as a new version.
    Optimize {
        /// The table.
        table: String,
        /// Target file size in bytes.
        #[arg(long, default_value_t = 128 << 20)]
        target_size: u64,
    },
    /// Delete files no version within the retention refers to.
    Vacuum {
        /// The table.
        table: String,
        /// Keep files removed less than this long ago (older versions stay readable that long).
        #[arg(long, default_value = "7days", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Allow a retention shorter than the table's `delta.deletedFileRetentionDuration`
        /// (7 days unless set): readers of older versions may lose files.
        #[arg(long)]
        force: bool,
    },
}

/// Whether a topic carries change events: `<prefix>.<db>.<table>`, not Weir's own topics.
fn is_change_topic(name: &str) -> bool {
    name.matches('.').count() >= 2
        && !name.ends_with(".dlq")
        && !name.ends_with(".schema-history")
        && !name.starts_with("weir.")
        && !name.starts_with("__")
}

pub async fn run(config: &Config, command: LakeCommand) -> anyhow::Result<()> {
    let lake = Lake::new(&config.lake);
    match command {
        LakeCommand::Run { once, topics, partitions, listen } => {
            let partitions = (!partitions.is_empty()).then_some(partitions);
            write(config, once, topics, partitions, listen).await
        }
        LakeCommand::Tables => {
            println!("{:<40} {:>8} {:>8} {:>14}", "table", "version", "files", "bytes");
            for t in lake.tables().await? {
                println!("{:<40} {:>8} {:>8} {:>14}", t.name, t.version, t.files, t.bytes);
            }
            Ok(())
        }
        LakeCommand::History { table, limit } => {
            for commit in lake.history(&table, limit).await?.iter().rev() {
                println!("{}", serde_json::to_string(commit)?);
            }
            Ok(())
        }
        LakeCommand::Snapshot { table, full } => {
            let names = match table {
                Some(t) => vec![t],
                None => lake.tables().await?.into_iter().map(|t| t.name).filter(|n| n.starts_with("raw.")).collect(),
            };
            for name in names {
                let stats = if full {
                    weir_lake::current::rebuild(&lake, &name).await?
                } else {
                    weir_lake::current::build(&lake, &name).await?
                };
                println!(
                    "{}: {} row(s), version {} (from {} version {}, {} {} change(s) read)",
                    stats.table,
                    stats.rows,
                    stats.version,
                    name.replace("current.", "raw."),
                    stats.raw_version,
                    if stats.incremental { "incremental," } else { "full," },
                    stats.changes
                );
            }
            Ok(())
        }
        LakeCommand::Optimize { table, target_size } => {
            let stats = lake.optimize(&table, target_size).await?;
            match stats.version {
                Some(v) => println!(
                    "{table}: {} file(s) rewritten into {}, version {v}",
                    stats.files_removed, stats.files_added
                ),
                None => println!("{table}: nothing to compact"),
            }
            Ok(())
        }
        LakeCommand::Vacuum { table, retention, dry_run, force } => {
            let files = lake.vacuum(&table, retention, dry_run, force).await?;
            for f in &files {
                println!("{f}");
            }
            let verb = if dry_run { "would delete" } else { "deleted" };
            eprintln!("{table}: {verb} {} file(s)", files.len());
            Ok(())
        }
    }
}

/// Everything a topic's writer needs.
pub struct Writers {
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<dyn SchemaRegistry>,
    pub lake: Lake,
    pub policy: FlushPolicy,
    pub partitions: Option<Vec<u32>>,
}

impl Writers {
    async fn open(&self, topic: &str) -> anyhow::Result<TopicWriter> {
        let name = table_name(topic);
        let url = self.lake.table_url(&name)?;
        let writer = TopicWriter::open(
            self.bus.clone(),
            Arc::clone(&self.registry),
            topic,
            self.partitions.clone(),
            url,
            self.policy,
        )
        .await?;
        Ok(writer)
    }

    async fn change_topics(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.bus.list_topics().await?.into_iter().map(|t| t.name).filter(|n| is_change_topic(n)).collect())
    }
}

async fn write(
    config: &Config,
    once: bool,
    only: Vec<String>,
    partitions: Option<Vec<u32>>,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let writers = Writers {
        lake: Lake::new(&config.lake).with_signals(Signals::new(bus.clone())),
        bus,
        registry: registry(config).await?,
        policy: config.lake.flush_policy(),
        partitions,
    };
    let fixed = !only.is_empty();
    let topics = if fixed { only } else { writers.change_topics().await? };
    if once {
        anyhow::ensure!(!topics.is_empty(), "no change-event topics on {} to write", config.bus.url);
        // A table that fails stops alone; the others are still written.
        let mut failed = Vec::new();
        for topic in &topics {
            let name = table_name(topic);
            let result = async {
                let mut w = writers.open(topic).await?;
                let stats = w.drain(Duration::from_millis(500)).await?;
                let version = w.table().version().map_or("none".into(), |v| v.to_string());
                anyhow::Ok((stats, version))
            }
            .await;
            match result {
                Ok((stats, version)) => println!(
                    "{name}: {} row(s) in {} commit(s), {} to the DLQ; version {version}",
                    stats.rows, stats.commits, stats.dead_letters
                ),
                Err(e) => {
                    eprintln!("weir: {name} stopped: {e:#}");
                    failed.push(name);
                }
            }
        }
        anyhow::ensure!(failed.is_empty(), "{} table(s) stopped: {}", failed.len(), failed.join(", "));
        return Ok(());
    }

    let metrics = telemetry::init_metrics()?;
    let addr = listen.unwrap_or(config.lake.listen);
    let (bound, server) = telemetry::ops_server(addr, metrics).await?;
    tracing::info!(listen = %bound, lake = %config.lake.url, "lake writers running");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = follow(writers, fixed.then_some(topics), stopped);
    tokio::pin!(run);
    tokio::select! {
        _ = telemetry::stop_signal() => {}
        result = server => result.context("health and metrics server")?,
        result = &mut run => return result,
    }
    let _ = stop.send(true);
    run.await
}

/// Runs a writer for each of `only`, or for every change-event topic (looking for new ones every
/// 10 s), until `stop`; then each commits what it holds. A table that fails stops alone (logged,
/// and `weir_lake_table_stopped` set); fails only when every table of a fixed list stopped.
pub async fn follow(
    writers: Writers,
    only: Option<Vec<String>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let fixed = only.is_some();
    let mut pending = match only {
        Some(topics) => topics,
        None => writers.change_topics().await?,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut started: HashSet<String> = HashSet::new();
    let mut running = 0usize;
    let mut rescan = tokio::time::interval(Duration::from_secs(10));
    let mut stopping = stop.clone();
    let report = |name: String, e: anyhow::Error| {
        tracing::error!(table = %name, error = %format!("{e:#}"), "lake table stopped");
        metrics::gauge!("weir_lake_table_stopped", "table" => name).set(1.0);
    };
    loop {
        for topic in pending.drain(..) {
            if !started.insert(topic.clone()) {
                continue;
            }
            let name = table_name(&topic);
            let w = match writers.open(&topic).await {
                Ok(w) => w,
                // A table that cannot be opened stops alone, like one that fails while running.
                Err(e) => {
                    report(name, e);
                    continue;
                }
            };
            let mut stopped = stop.clone();
            tasks.spawn(async move {
                let result = w
                    .run(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
                (name, result)
            });
            running += 1;
        }
        anyhow::ensure!(!fixed || running > 0, "every lake table stopped");
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|s| *s).await; } => break,
            Some(joined) = tasks.join_next() => {
                let (name, result) = joined?;
                running -= 1;
                // One table's failure (an incompatible schema change, say) stops that table only.
                if let Err(e) = result {
                    report(name, e.into());
                }
            }
            _ = rescan.tick(), if !fixed => {
                pending = writers.change_topics().await?.into_iter().filter(|t| !started.contains(t)).collect();
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (name, result) = joined?;
        if let Err(e) = result {
            report(name, e.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn change_topics() {
        assert!(super::is_change_topic("shop.inv.orders"));
        for t in ["shop.inv.orders.dlq", "shop.schema-history", "shop", "weir.flow.events", "__consumer_offsets"] {
            assert!(!super::is_change_topic(t), "{t}");
        }
    }
}
