//! The `gannet` command: parse flags, build the configuration, run.

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod cli;

/// Gannet: an embedded time-series analytics database.
#[derive(Debug, Parser)]
#[command(name = "gannet", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Postgres wire protocol and the HTTP API on a data directory.
    Serve(Box<cli::serve::ServeArgs>),
    /// Bulk-load line-protocol files (plain or .gz) into a database.
    Import(cli::import::ImportArgs),
    /// Run one SQL query against a data directory and print the result.
    Sql(cli::sql::SqlArgs),
    /// Manage Postgres users (SCRAM-SHA-256 passwords).
    User(cli::auth::UserArgs),
    /// Manage HTTP API tokens (read, write or admin).
    Token(cli::auth::TokenArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("GANNET_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Args::parse().command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Import(args) => cli::import::run(args),
        Command::Sql(args) => cli::sql::run(args),
        Command::User(args) => cli::auth::run_user(args),
        Command::Token(args) => cli::auth::run_token(args),
    }
}
