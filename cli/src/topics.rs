//! `weir topics create|list|describe`.

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;

/// Topic administration.
#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name (`[a-zA-Z0-9._-]`, at most 249 characters).
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A topic-level config, `key=value` (Kafka's names: `retention.ms=604800000`,
        /// `cleanup.policy=compact`, …); repeatable.
        #[arg(long = "topic-config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
    },
    /// List topics as `name<TAB>partitions`.
    List,
    /// Show a topic: each partition's offsets (first, next) and size, and its configs.
    Describe {
        /// Topic name.
        name: String,
    },
}

fn parse_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

pub async fn run(config: &Config, command: TopicsCommand) -> anyhow::Result<()> {
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    match command {
        TopicsCommand::Create { name, partitions, configs } => {
            let topic_config: weir_bus::TopicConfig = configs.into_iter().collect();
            bus.create_topic_with(&name, partitions, &topic_config).await?;
            eprintln!("created topic {name} with {partitions} partition(s) on {}", config.bus.url);
        }
        TopicsCommand::Describe { name } => {
            let info = bus.topic(&name).await?;
            let stats = bus.partition_stats(&name).await?;
            println!("topic\t{}\npartitions\t{}", info.name, info.partitions);
            for (p, s) in stats.iter().enumerate() {
                let size = s.bytes.map(|b| format!("\t{b} bytes")).unwrap_or_default();
                println!("partition {p}\toffsets {}..{}{size}", s.start, s.end);
            }
            for (k, v) in bus.topic_config(&name).await? {
                println!("config\t{k}={v}");
            }
        }
        TopicsCommand::List => {
            for t in bus.list_topics().await? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
    }
    Ok(())
}
