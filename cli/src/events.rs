//! `weir events tail`: the orchestrator's event stream (`weir.flow.events`) as JSON lines.

use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use weir_bus::{ConsumerConfig, TopicPartition, next_offsets};
use weir_flow::events::{EVENTS_TOPIC, FlowEvent};

use crate::config::Config;

/// `weir events …`.
#[derive(Subcommand)]
pub enum EventsCommand {
    /// Print DAG-run and task state changes, one JSON object per line, as they happen.
    Tail(TailArgs),
}

/// `weir events tail`.
#[derive(Args)]
pub struct TailArgs {
    /// Only this DAG's events.
    #[arg(long)]
    dag: Option<String>,
    /// Start at this offset of the topic (default: where `--group` stopped, else the end).
    #[arg(long)]
    from_offset: Option<i64>,
    /// A consumer group that keeps its own position: a later tail with it resumes after the
    /// last event printed.
    #[arg(long)]
    group: Option<String>,
    /// Stop once every event published so far is printed.
    #[arg(long)]
    once: bool,
}

/// Runs a `weir events` command.
pub async fn run(config: &Config, command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Tail(args) = command;
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let end = match bus.end_offsets(EVENTS_TOPIC).await {
        Ok(e) => e.first().copied().unwrap_or(0),
        Err(weir_bus::BusError::UnknownTopic(_)) if args.once => return Ok(()),
        Err(weir_bus::BusError::UnknownTopic(_)) => 0,
        Err(e) => return Err(e).context("reading weir.flow.events (is a scheduler publishing?)"),
    };
    let group = args.group.clone().unwrap_or_else(|| format!("weir-events-tail-{}", std::process::id()));
    let mut consumer = bus.consumer(ConsumerConfig::new(&group)).await?;
    let tp = TopicPartition::new(EVENTS_TOPIC, 0);
    consumer.assign(std::slice::from_ref(&tp)).await?;
    let start = match (args.from_offset, &args.group) {
        (Some(o), _) => o,
        (None, Some(_)) => consumer.committed(std::slice::from_ref(&tp)).await?.first().copied().flatten().unwrap_or(0),
        (None, None) => end,
    };
    consumer.seek(&tp, start).await?;
    let mut next = start;
    let stdout = std::io::stdout();
    loop {
        if args.once && next >= end {
            return Ok(());
        }
        let batch = consumer.poll(Duration::from_millis(500)).await?;
        if batch.is_empty() {
            continue;
        }
        let mut out = stdout.lock();
        for m in &batch {
            next = m.offset + 1;
            let Some(value) = &m.value else { continue };
            let event: FlowEvent = match serde_json::from_slice(value) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(offset = m.offset, error = %e, "not an orchestrator event; skipped");
                    continue;
                }
            };
            if args.dag.as_ref().is_some_and(|d| *d != event.dag_id) {
                continue;
            }
            writeln!(out, "{}", serde_json::to_string(&event)?)?;
        }
        out.flush()?;
        drop(out);
        if args.group.is_some() {
            consumer.commit(&next_offsets(&batch)).await?;
        }
    }
}
