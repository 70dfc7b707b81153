//! `weir query`: SQL over the lake's tables, printed as a table, JSON lines or CSV.

use clap::{Args, ValueEnum};
use weir_lake::Lake;

use crate::config::Config;

/// `weir query`.
#[derive(Args)]
pub struct QueryArgs {
    /// The SQL (`SELECT … FROM raw.<t> [VERSION AS OF n] JOIN current.<t> …`).
    sql: String,
    /// Read every table as of this Delta version.
    #[arg(long)]
    version: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

pub async fn run(config: &Config, args: QueryArgs) -> anyhow::Result<()> {
    use deltalake::arrow;
    let lake = Lake::new(&config.lake);
    let batches = weir_lake::query::run(&lake, &args.sql, args.version).await?;
    let stdout = std::io::stdout().lock();
    match args.format {
        Format::Table => println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?),
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(stdout);
            w.write_batches(&batches.iter().collect::<Vec<_>>())?;
            w.finish()?;
        }
        Format::Csv => {
            let mut w = arrow::csv::Writer::new(stdout);
            for b in &batches {
                w.write(b)?;
            }
        }
    }
    Ok(())
}
