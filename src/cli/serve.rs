//! `gannet serve`: run the Postgres and HTTP servers until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use gannet::server::tls::TlsFiles;
use gannet::server::{Server, ServerConfig};

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
    #[arg(long, env = "GANNET_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
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
