//! `weir produce` and `weir consume`: the bus from a terminal, like Kafka's console tools.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use tokio::io::AsyncBufReadExt;
use weir_bus::{ConsumerConfig, OffsetReset, Record, next_offsets};

use crate::config::Config;

/// Most records sent in one batch.
const PRODUCE_BATCH: usize = 10_000;

/// `weir produce`.
#[derive(Args)]
pub struct ProduceArgs {
    /// Topic to produce to (must exist).
    topic: String,
}

/// `weir consume`.
#[derive(Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    topic: String,
    /// Consumer group; its committed offsets say where to resume.
    #[arg(long)]
    group: String,
    /// Stop after this many records.
    #[arg(long)]
    max: Option<usize>,
    /// Stop when no record arrives for this long (milliseconds).
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Where a group without committed offsets starts.
    #[arg(long, value_enum, default_value_t = From::Earliest)]
    from: From,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum From {
    Earliest,
    Latest,
}

/// Parses one input line: `key<TAB>value`, or a value without a key.
fn parse_line(line: &str) -> Record {
    match line.split_once('\t') {
        Some((key, value)) => Record::keyed(key.to_string(), value.to_string()),
        None => Record { value: Some(Bytes::from(line.to_string())), ..Record::default() },
    }
}

pub async fn produce(config: &Config, args: ProduceArgs) -> anyhow::Result<()> {
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    bus.topic(&args.topic).await?;
    let producer = bus.producer().await?;
    let mut input = tokio::io::BufReader::new(tokio::io::stdin());
    let mut batch = Vec::new();
    let mut line = String::new();
    let mut total = 0usize;
    loop {
        line.clear();
        let n = input.read_line(&mut line).await.context("reading stdin")?;
        if n > 0 {
            let trimmed = line.strip_suffix('\n').unwrap_or(&line);
            batch.push(parse_line(trimmed.strip_suffix('\r').unwrap_or(trimmed)));
        }
        // Send when the batch is full, at the end, or when no more input is waiting (interactive use).
        if !batch.is_empty() && (n == 0 || batch.len() >= PRODUCE_BATCH || input.buffer().is_empty()) {
            total += batch.len();
            producer.send(&args.topic, std::mem::take(&mut batch)).await?;
        }
        if n == 0 {
            break;
        }
    }
    eprintln!("produced {total} record(s) to {}", args.topic);
    Ok(())
}

/// A key or value for one output line: `null` when absent, control characters and backslashes
/// escaped (`\n`, `\t`, `\u{1b}`, `\\`) and bytes that are not UTF-8 as `\xNN`, so every record
/// stays on one line and distinct byte strings print distinctly (Avro keys included).
fn text(b: &Option<Bytes>) -> String {
    let Some(b) = b else { return "null".to_string() };
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

pub async fn consume(config: &Config, args: ConsumeArgs) -> anyhow::Result<()> {
    let bus = weir_bus::open(&config.bus).await.with_context(|| format!("opening bus {}", config.bus.url))?;
    let max = args.max.unwrap_or(usize::MAX);
    let mut consumer_config = ConsumerConfig::new(&args.group);
    consumer_config.max_poll_records = max.clamp(1, 10_000);
    consumer_config.offset_reset = match args.from {
        From::Earliest => OffsetReset::Earliest,
        From::Latest => OffsetReset::Latest,
    };
    let mut consumer = bus.consumer(consumer_config).await?;
    consumer.subscribe(&[&args.topic]).await?;
    let idle = Duration::from_millis(args.timeout_ms);
    // Joining a Kafka group can take a few seconds; that wait does not count as idle time.
    let join_deadline = Instant::now() + Duration::from_secs(30);
    let mut last_activity = Instant::now();
    let mut printed = 0usize;
    let stdout = std::io::stdout();
    while printed < max {
        let wait = idle.saturating_sub(last_activity.elapsed()).min(Duration::from_millis(500));
        let batch = consumer.poll(wait).await?;
        if batch.is_empty() {
            let joining = consumer.assignment().is_empty() && Instant::now() < join_deadline;
            if joining {
                last_activity = Instant::now();
            } else if last_activity.elapsed() >= idle {
                break;
            }
            continue;
        }
        let batch = &batch[..batch.len().min(max - printed)];
        let mut out = stdout.lock();
        for m in batch {
            writeln!(out, "{}\t{}\t{}\t{}", m.partition, m.offset, text(&m.key), text(&m.value))?;
        }
        out.flush()?;
        drop(out);
        consumer.commit(&next_offsets(batch)).await?;
        printed += batch.len();
        last_activity = Instant::now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_tab() {
        let r = parse_line("k1\tvalue\twith tab");
        assert_eq!(r.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"value\twith tab"[..]));
        let r = parse_line("no key");
        assert_eq!((r.key, r.value.as_deref()), (None, Some(&b"no key"[..])));
    }

    #[test]
    fn binary_values_stay_on_one_line() {
        assert_eq!(text(&Some(Bytes::from_static(b"plain text"))), "plain text");
        assert_eq!(text(&Some(Bytes::from_static(b"a\nb\tc\\d\x00"))), "a\\nb\\tc\\\\d\\u{0}");
        assert_eq!(text(&None), "null");
        assert_eq!(text(&Some(Bytes::from_static(b"\x00\xff\xfeok\xc3\xa9"))), "\\u{0}\\xff\\xfeok\u{e9}");
    }
}
