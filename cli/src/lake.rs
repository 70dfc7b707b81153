//! `weir lake`: the lake role (change-event topics → `raw.*` Delta tables) and its tools.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use clap::Subcommand;
use weir_lake::writer::{FlushPolicy, TopicWriter, table_name};

use crate::{config::Config, ingest::registry};

/// `weir lake …`.
#[derive(Subcommand)]
pub enum LakeCommand {
    /// Write change-event topics into their `raw.*` Delta tables, exactly once.
    Run {
        /// Write what is on the topics now, then exit.
        #[arg(long)]
        once: bool,
        /// Only these topics (default: every change-event topic `<prefix>.<db>.<table>`).
        #[arg(long = "topic")]
        topics: Vec<String>,
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
    match command {
        LakeCommand::Run { once, topics } => write(config, once, topics).await,
    }
}

async fn write(config: &Config, once: bool, topics: Vec<String>) -> anyhow::Result<()> {
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let registry = registry(config).await?;
    let topics = if topics.is_empty() {
        bus.list_topics().await?.into_iter().map(|t| t.name).filter(|n| is_change_topic(n)).collect()
    } else {
        topics
    };
    anyhow::ensure!(!topics.is_empty(), "no change-event topics on {} to write", config.bus.url);
    let policy = FlushPolicy { rows: config.lake.flush_rows, age: config.lake.flush_interval };
    let mut writers = Vec::new();
    for topic in &topics {
        let name = table_name(topic);
        let url = config.lake.url.table_url(&name).map_err(|e| anyhow::anyhow!("table {name}: {e}"))?;
        writers.push((name, TopicWriter::open(bus.clone(), Arc::clone(&registry), topic, None, url, policy).await?));
    }
    if once {
        for (name, mut w) in writers {
            let stats = w.drain(Duration::from_millis(500)).await?;
            println!(
                "{name}: {} row(s) in {} commit(s), {} to the DLQ; version {}",
                stats.rows,
                stats.commits,
                stats.dead_letters,
                w.table().version().map_or("none".into(), |v| v.to_string())
            );
        }
        return Ok(());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (_, w) in writers {
        let mut stopped = stopped.clone();
        tasks.spawn(w.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    tracing::info!(tables = tasks.len(), lake = %config.lake.url, "lake writers running");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(result) = tasks.join_next() => result??,
    }
    let _ = stop.send(true);
    while let Some(result) = tasks.join_next().await {
        result??;
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
