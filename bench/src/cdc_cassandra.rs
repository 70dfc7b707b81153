//! `weir bench cdc-cassandra`: commit-log decoding throughput on one core, over the real segments
//! of `shared/fixtures/cassandra-commitlog` decoded again and again.

use std::{path::PathBuf, time::Instant};

use clap::Args;
use serde_json::{Value, json};
use weir_ingest::cassandra::{fixtures::Fixture, read_segment};

use super::{Progress, machine};

/// `weir bench cdc-cassandra`.
#[derive(Args)]
pub struct CdcCassandraArgs {
    /// The fixtures: one folder per Cassandra version with a segment and hash.txt.
    #[arg(long, default_value = "../shared/fixtures/cassandra-commitlog")]
    fixtures: PathBuf,
    /// Times each segment is decoded.
    #[arg(long, default_value_t = 2000)]
    repeat: usize,
}

pub fn run(args: CdcCassandraArgs) -> anyhow::Result<Value> {
    let fixtures = Fixture::load_all(&args.fixtures)
        .map_err(|e| anyhow::anyhow!("{}: {e} (pass --fixtures DIR)", args.fixtures.display()))?;
    let mut segments = Vec::new();
    for f in fixtures {
        segments.push((f.version.clone(), std::fs::read(&f.segment)?, f.tables()));
    }
    anyhow::ensure!(!segments.is_empty(), "no segments under {}", args.fixtures.display());
    let mut results = serde_json::Map::new();
    let (mut all_bytes, mut all_mutations, mut all_secs) = (0u64, 0usize, 0f64);
    for (version, data, tables) in &segments {
        let mut progress = Progress::new(format!("cassandra {version}"), args.repeat);
        let (mut bytes, mut mutations, mut cells) = (0u64, 0usize, 0usize);
        let started = Instant::now();
        for i in 0..args.repeat {
            let stats = read_segment(version, data, tables, |_, u| {
                cells += u.rows.iter().map(|r| r.cells.len()).sum::<usize>()
            })?;
            bytes += stats.bytes;
            mutations += stats.mutations;
            progress.update(i + 1);
        }
        let secs = started.elapsed().as_secs_f64();
        results.insert(
            version.clone(),
            json!({
                "segment_bytes_used": bytes / args.repeat as u64,
                "mb_per_s": (bytes as f64 / 1e6 / secs * 10.0).round() / 10.0,
                "mutations_per_s": (mutations as f64 / secs).round(),
                "cells_per_s": (cells as f64 / secs).round(),
            }),
        );
        all_bytes += bytes;
        all_mutations += mutations;
        all_secs += secs;
    }
    Ok(json!({
        "benchmark": "cdc-cassandra",
        "threads": 1,
        "repeat": args.repeat,
        "mb_per_s": (all_bytes as f64 / 1e6 / all_secs * 10.0).round() / 10.0,
        "mutations_per_s": (all_mutations as f64 / all_secs).round(),
        "segments": results,
        "machine": machine(),
    }))
}
