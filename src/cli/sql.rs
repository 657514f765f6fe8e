//! `gannet sql`: one query against a data directory, without a server.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use gannet::arrow::record_batch::RecordBatch;
use gannet::{EngineConfig, Gannet};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// A table, as psql prints it.
    Pretty,
    Csv,
    /// One JSON array of objects.
    Json,
}

#[derive(Debug, Parser)]
pub struct SqlArgs {
    /// Data directory to query (it must not be open in a running server).
    #[arg(long, env = "GANNET_DATA_DIR", default_value = "./gannet-data")]
    pub data_dir: PathBuf,
    /// Database whose tables the query names without a schema. Optional when the data
    /// directory holds a single database.
    #[arg(long, env = "GANNET_DB")]
    pub db: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// The SQL statement.
    pub sql: String,
}

pub fn run(args: SqlArgs) -> anyhow::Result<()> {
    if !args.data_dir.is_dir() {
        bail!("{}: no such data directory", args.data_dir.display());
    }
    let mut config = EngineConfig::new(&args.data_dir);
    config.background_flush = false;
    let db = Gannet::open_with(config)
        .with_context(|| format!("opening {}", args.data_dir.display()))?;
    let name = match args.db {
        Some(name) => name,
        None => {
            let databases: Vec<String> = db.engine().catalog().databases.keys().cloned().collect();
            match databases.as_slice() {
                [only] => only.clone(),
                [] => bail!("{} holds no database yet", args.data_dir.display()),
                many => bail!("choose a database with --db: {}", many.join(", ")),
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let batches = runtime.block_on(db.sql(&name, &args.sql))?;
    print(&batches, args.format)?;
    Ok(())
}

fn print(batches: &[RecordBatch], format: Format) -> anyhow::Result<()> {
    let stdout = std::io::stdout().lock();
    match format {
        Format::Pretty => {
            println!(
                "{}",
                gannet::arrow::util::pretty::pretty_format_batches(batches)?
            );
            let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
            println!("({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        Format::Csv => {
            let mut writer = gannet::arrow::csv::Writer::new(stdout);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = gannet::arrow::json::ArrayWriter::new(stdout);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            println!();
        }
    }
    Ok(())
}
