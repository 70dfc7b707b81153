//! `weir cassandra dump`: decode commit-log segments and print their mutations as JSON lines.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use weir_ingest::cassandra::{json::update_to_json, mutation::Tables, read_segment, schema::TableSchema};

/// Cassandra tools.
#[derive(Subcommand)]
pub enum CassandraCommand {
    /// Print the mutations of captured tables in commit-log segments, one JSON object per line.
    Dump {
        /// Segment files (`CommitLog-<version>-<id>.log`).
        #[arg(required = true)]
        segments: Vec<PathBuf>,
        /// CQL file with the captured tables' `CREATE TABLE … WITH ID = <uuid>` statements.
        #[arg(long)]
        schema: PathBuf,
    },
}

/// Reads the captured tables from a CQL file.
pub fn load_tables(path: &std::path::Path) -> anyhow::Result<Tables> {
    let cql = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let tables = TableSchema::parse_all(&cql).with_context(|| format!("{}", path.display()))?;
    anyhow::ensure!(!tables.is_empty(), "{}: no CREATE TABLE statement", path.display());
    Ok(Tables::new(tables))
}

pub fn run(command: CassandraCommand) -> anyhow::Result<()> {
    match command {
        CassandraCommand::Dump { segments, schema } => {
            let tables = load_tables(&schema)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for path in segments {
                let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let name = path.display().to_string();
                let mut write_error = None;
                let stats = read_segment(&name, &data, &tables, |position, update| {
                    let line = update_to_json(&name, position, update);
                    if let Err(e) = serde_json::to_writer(&mut out, &line)
                        .map_err(std::io::Error::from)
                        .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
                    {
                        write_error.get_or_insert(e);
                    }
                })?;
                if let Some(e) = write_error {
                    return Err(e).context("writing to stdout");
                }
                eprintln!(
                    "{name}: {} mutations, {} of tables not captured, {} partition updates",
                    stats.mutations, stats.skipped, stats.updates
                );
            }
            std::io::Write::flush(&mut out)?;
            Ok(())
        }
    }
}
