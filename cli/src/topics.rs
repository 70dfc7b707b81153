//! `weir topics create|list`.

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
    },
    /// List topics as `name<TAB>partitions`.
    List,
}

pub async fn run(config: &Config, command: TopicsCommand) -> anyhow::Result<()> {
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    match command {
        TopicsCommand::Create { name, partitions } => {
            bus.create_topic(&name, partitions).await?;
            eprintln!("created topic {name} with {partitions} partition(s) on {}", config.bus.url);
        }
        TopicsCommand::List => {
            for t in bus.list_topics().await? {
                println!("{}\t{}", t.name, t.partitions);
            }
        }
    }
    Ok(())
}
