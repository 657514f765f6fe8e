//! `gannet serve`: run the Postgres and HTTP servers until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use gannet::server::tls::TlsFiles;
use gannet::server::{Server, ServerConfig};
use gannet::storage::WriteLimits;

#[derive(Debug, Parser)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Data directory: write-ahead log, Parquet segments and catalog. Created if missing.
    #[arg(long, env = "GANNET_DATA_DIR", default_value = "./gannet-data")]
    pub data_dir: PathBuf,
    /// Address of the Postgres wire protocol listener (psql, Grafana, drivers).
    #[arg(long, env = "GANNET_PG_ADDR", default_value = "127.0.0.1:5433")]
    pub pg_addr: SocketAddr,
    /// Address of the HTTP listener (line-protocol writes, queries, /metrics).
    #[arg(long, env = "GANNET_HTTP_ADDR", default_value = "127.0.0.1:8181")]
    pub http_addr: SocketAddr,
    /// Directory of ONNX models: `<name>.onnx` files, callable as onnx_predict('<name>', ...),
    /// picked up while running. ONNX Runtime is loaded from .venv/onnxruntime/ (see
    /// scripts/install-onnxruntime) or ORT_DYLIB_PATH [default: <data-dir>/models].
    #[arg(long, env = "GANNET_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Largest HTTP request body in bytes, before and after gzip decompression.
    #[arg(long, env = "GANNET_MAX_BODY_BYTES", value_parser = parse_bytes, default_value = "10MiB")]
    pub max_body_bytes: usize,
    /// How many batches of one ONNX model may be scored at once, each on its own thread and
    /// ONNX Runtime session [default: one per core].
    #[arg(long, env = "GANNET_ONNX_THREADS")]
    pub onnx_threads: Option<usize>,
    /// Postgres users and HTTP API tokens, managed with `gannet user` and `gannet token`
    /// (or CREATE USER in SQL). Once a user exists, Postgres clients must log in with a
    /// password (SCRAM-SHA-256); once a token exists, HTTP requests must send one. Changes
    /// apply without a restart [default: <data-dir>/auth.json].
    #[arg(long, env = "GANNET_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Certificate chain (PEM) to serve TLS with on both listeners: Postgres clients may
    /// then use sslmode=require or verify-full, and HTTP is served as https.
    #[arg(long, env = "GANNET_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "GANNET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The longest line of line protocol; longer lines are rejected (the others written).
    #[arg(long, env = "GANNET_MAX_LINE_BYTES", value_parser = parse_bytes, default_value = "256KiB")]
    pub max_line_bytes: usize,
    /// The longest string field value.
    #[arg(long, env = "GANNET_MAX_STRING_BYTES", value_parser = parse_bytes, default_value = "64KiB")]
    pub max_string_bytes: usize,
    /// Columns of one table (time, tags and fields); lines that would add more are rejected.
    #[arg(long, env = "GANNET_MAX_COLUMNS_PER_TABLE", default_value_t = 1000)]
    pub max_columns_per_table: usize,
    /// Tables of one database; lines that would create more are rejected.
    #[arg(long, env = "GANNET_MAX_TABLES_PER_DATABASE", default_value_t = 10_000)]
    pub max_tables_per_database: usize,
    /// Memory of the write buffer. Past half of it the largest windows are flushed early;
    /// when it is full, writes wait up to --max-write-wait, then get 503 with Retry-After
    /// [default: a quarter of RAM, at most 8GiB].
    #[arg(long, env = "GANNET_BUFFER_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub buffer_memory_limit: Option<usize>,
    /// How long a write waits for room in a full write buffer before it gets 503.
    #[arg(long, env = "GANNET_MAX_WRITE_WAIT", value_parser = humantime::parse_duration, default_value = "2s")]
    pub max_write_wait: Duration,
    /// Memory all running queries may hold together (sorts, joins, aggregations; what can
    /// spill to disk spills first). A query that needs more fails with SQLSTATE 53200
    /// [default: the write buffer's limit].
    #[arg(long, env = "GANNET_QUERY_MEMORY_LIMIT", value_parser = parse_bytes)]
    pub query_memory_limit: Option<usize>,
    /// Initial statement_timeout of Postgres connections (e.g. 30s, 5m); a statement running
    /// longer is cancelled with 57014. Clients may SET their own. 0 means none.
    #[arg(long, env = "GANNET_STATEMENT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "0s")]
    pub statement_timeout: Duration,
    /// Postgres connections open at once; more are refused with 53300.
    #[arg(long, env = "GANNET_MAX_CONNECTIONS", default_value_t = 100)]
    pub max_connections: usize,
    /// Queries running at once, over Postgres and HTTP; more wait for a turn
    /// [default: four per core].
    #[arg(long, env = "GANNET_MAX_CONCURRENT_QUERIES")]
    pub max_concurrent_queries: Option<usize>,
    /// Allow listening on a non-loopback address with no user (Postgres) or no token
    /// (HTTP) configured, letting anyone who can reach it in. Without it, Gannet refuses to
    /// start that way.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(&args.data_dir);
    config.pg_addr = args.pg_addr;
    config.http_addr = args.http_addr;
    if let Some(models_dir) = args.models_dir {
        config.models_dir = models_dir;
    }
    config.max_body_bytes = args.max_body_bytes;
    config.insecure_no_auth = args.insecure_no_auth;
    if let Some(auth_file) = args.auth_file {
        config.auth_file = auth_file;
    }
    config.write_limits = WriteLimits {
        max_line_bytes: args.max_line_bytes,
        max_string_bytes: args.max_string_bytes,
        max_columns_per_table: args.max_columns_per_table,
        max_tables_per_database: args.max_tables_per_database,
    };
    config.buffer_memory = args.buffer_memory_limit;
    config.max_write_wait = args.max_write_wait;
    config.query_memory = args.query_memory_limit;
    config.statement_timeout = Some(args.statement_timeout).filter(|t| !t.is_zero());
    config.max_connections = args.max_connections;
    if let Some(n) = args.max_concurrent_queries {
        config.max_concurrent_queries = n.max(1);
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(TlsFiles { cert, key });
    }
    if let Some(threads) = args.onnx_threads {
        config.onnx_threads = threads.max(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gannet")
        .build()?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
        server.run_until(shutdown_signal()).await
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// A size in bytes: a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB; case and
/// spaces do not matter): `10485760`, `10MiB`, `512 kb`.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().map_err(|_| {
        format!("'{s}' is not a size: expected a number with an optional unit like 64MiB")
    })?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit '{other}': use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    Ok((number * multiplier) as usize)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_bytes("10485760"), Ok(10 << 20));
        assert_eq!(parse_bytes("10MiB"), Ok(10 << 20));
        assert_eq!(parse_bytes("512 kb"), Ok(512_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("10 parsecs").is_err());
    }
}
