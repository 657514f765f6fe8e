//! `gannet serve`: the Postgres wire protocol and the HTTP API over one open database.
//!
//! [`Server::start`] opens the data directory, binds both listeners and serves until
//! [`Server::shutdown`] (the binary calls it on SIGINT or SIGTERM). Shutting down stops
//! accepting, lets HTTP requests in flight finish, closes Postgres connections, and closes
//! the engine, which persists the write buffer; everything acknowledged was already durable
//! in the WAL.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use gannet_query::QueryEngine;
use gannet_query::onnx::{ModelRegistry, OnnxConfig};
use gannet_query::scoring::Scorer;
use gannet_storage::{Engine, EngineConfig, WriteLimits};

use crate::auth::AuthStore;
use pgwire::tokio::TlsAcceptor;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod http;
pub mod memory;
pub mod metrics;
pub mod models;
pub mod pg;
pub mod tls;

/// How the server is set up: where its data lives and where it listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub models_dir: PathBuf,
    /// The largest HTTP request body, compressed or decompressed.
    pub max_body_bytes: usize,
    /// Postgres users and HTTP tokens (default `<data-dir>/auth.json`).
    pub auth_file: PathBuf,
    /// Serve TLS on both listeners with this certificate chain and key (PEM files).
    pub tls: Option<tls::TlsFiles>,
    /// Listen on a non-loopback address without authentication.
    pub insecure_no_auth: bool,
    /// How many batches of one ONNX model may be scored at once.
    pub onnx_threads: usize,
    /// What one write may add (line length, string size, columns, tables).
    pub write_limits: WriteLimits,
    /// The write buffer's memory limit (default: a quarter of RAM, at most 8 GiB).
    pub buffer_memory: Option<usize>,
    /// How long a write waits for room in a full buffer before it gets 503.
    pub max_write_wait: Duration,
    /// Memory all running queries may hold together (default: the buffer's limit).
    pub query_memory: Option<usize>,
    /// The Postgres connections' initial `statement_timeout` (none: no limit).
    pub statement_timeout: Option<Duration>,
    /// Postgres connections open at once; more are refused with 53300.
    pub max_connections: usize,
    /// Queries running at once (Postgres and HTTP); more wait for a turn.
    pub max_concurrent_queries: usize,
}

impl ServerConfig {
    /// The embedded defaults for a data directory: Postgres on 127.0.0.1:5433, HTTP on
    /// 127.0.0.1:8181, models in `<data-dir>/models`, 10 MiB bodies.
    pub fn new(data_dir: impl Into<PathBuf>) -> ServerConfig {
        let data_dir: PathBuf = data_dir.into();
        ServerConfig {
            models_dir: data_dir.join("models"),
            auth_file: data_dir.join("auth.json"),
            data_dir,
            pg_addr: SocketAddr::from(([127, 0, 0, 1], 5433)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8181)),
            max_body_bytes: 10 * 1024 * 1024,
            tls: None,
            insecure_no_auth: false,
            onnx_threads: gannet_query::onnx::default_threads(),
            write_limits: WriteLimits::default(),
            buffer_memory: None,
            max_write_wait: Duration::from_secs(2),
            query_memory: None,
            statement_timeout: None,
            max_connections: 100,
            max_concurrent_queries: default_concurrent_queries(),
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    engine: Arc<Engine>,
    pg_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    scorer: Scorer,
}

impl Server {
    /// Opens the data directory and starts both listeners. Fails if the directory is in
    /// use, an address cannot be bound, or a non-loopback address would serve without
    /// authentication.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Server> {
        let auth = Arc::new(AuthStore::open(&config.auth_file)?);
        let users = auth.current();
        // Off loopback, authentication stays on even if the last user or token goes.
        let pg_exposed = !config.pg_addr.ip().is_loopback() && !config.insecure_no_auth;
        let http_exposed = !config.http_addr.ip().is_loopback() && !config.insecure_no_auth;
        if pg_exposed && users.users.is_empty() {
            bail!(
                "refusing to listen on {} (--pg-addr): it is not a loopback address and no \
                 Postgres user is configured, so anyone who can reach it could read and write \
                 all data. Add one with `gannet user add NAME --superuser`, listen on \
                 127.0.0.1, or pass --insecure-no-auth if the network is trusted.",
                config.pg_addr
            );
        }
        if http_exposed && users.tokens.is_empty() {
            bail!(
                "refusing to listen on {} (--http-addr): it is not a loopback address and no \
                 API token is configured, so anyone who can reach it could read and write all \
                 data. Create one with `gannet token create NAME --scope admin`, listen on \
                 127.0.0.1, or pass --insecure-no-auth if the network is trusted.",
                config.http_addr
            );
        }
        let pg_tls = config
            .tls
            .as_ref()
            .map(|files| files.acceptor(b"postgresql"))
            .transpose()?;
        let http_tls = config
            .tls
            .as_ref()
            .map(|files| files.acceptor(b"http/1.1"))
            .transpose()?;
        let pg_listener = TcpListener::bind(config.pg_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--pg-addr)", config.pg_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot listen on {} (--http-addr)", config.http_addr))?;
        let pg_addr = pg_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let mut engine_config = EngineConfig::new(&config.data_dir);
        engine_config.limits = config.write_limits;
        engine_config.max_write_wait = Some(config.max_write_wait);
        if let Some(bytes) = config.buffer_memory {
            engine_config.memory_limit = bytes;
        }
        let budget = engine_config
            .memory_limit
            .saturating_add(config.query_memory.unwrap_or(engine_config.memory_limit));
        memory::configure_allocator();
        let engine = tokio::task::spawn_blocking(move || Engine::open(engine_config))
            .await?
            .with_context(|| format!("cannot open data directory {}", config.data_dir.display()))?;
        let models = Arc::new(ModelRegistry::new(
            &config.models_dir,
            OnnxConfig {
                threads: config.onnx_threads,
            },
        ));
        let mut query = QueryEngine::with_models(engine.clone(), models.clone())
            .with_max_concurrent_queries(config.max_concurrent_queries);
        if let Some(bytes) = config.query_memory {
            query = query.with_memory_limit(bytes);
        }
        let scorer = Scorer::start(&query);
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(models::watch(models, stopped.clone()));
        tasks.spawn(memory::release_free_memory(budget as u64, stopped.clone()));

        let state = Arc::new(http::HttpState {
            engine: engine.clone(),
            query: query.clone(),
            metrics: Arc::new(metrics::Metrics::default()),
            max_body_bytes: config.max_body_bytes,
            auth: http::HttpAuth::new(auth.clone(), http_exposed),
            // Room for the bodies of several concurrent writers.
            bodies: gannet_storage::pool::BufferPool::new(32 << 20),
        });
        let app = http::router(state);
        match http_tls {
            Some(tls) => tasks.spawn(serve_http(
                tls::TlsListener::new(http_listener, tls)?,
                app,
                stopped.clone(),
            )),
            None => tasks.spawn(serve_http(http_listener, app, stopped.clone())),
        };

        let pg_auth = Arc::new(pg::auth::PgAuth::new(auth, pg_exposed));
        let mut handlers = pg::PgHandlers::new(query.clone(), pg_auth);
        handlers.statement_timeout = config.statement_timeout;
        let handlers = Arc::new(handlers);
        tasks.spawn(
            handlers
                .notifications
                .clone()
                .forward_alerts(query.scoring().clone(), stopped.clone()),
        );
        let (pg_tls_note, scheme) = match &pg_tls {
            Some(_) => (" (TLS)", "https"),
            None => ("", "http"),
        };
        tasks.spawn(serve_pg(
            pg_listener,
            handlers,
            pg_tls,
            config.max_connections,
            stopped,
        ));
        tracing::info!("HTTP API listening on {scheme}://{http_addr}");
        tracing::info!("Postgres wire protocol listening on {pg_addr}{pg_tls_note}");

        Ok(Server {
            engine,
            pg_addr,
            http_addr,
            stop,
            tasks,
            scorer,
        })
    }

    pub fn pg_addr(&self) -> SocketAddr {
        self.pg_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }

    /// Stops accepting, finishes HTTP requests in flight, closes Postgres connections and
    /// closes the engine (persisting the buffer).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let drained = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), drained)
            .await
            .is_err()
        {
            tracing::warn!("requests still running after 30 s; closing anyway");
            self.tasks.abort_all();
        }
        let engine = self.engine.clone();
        let mut scorer = self.scorer;
        tokio::task::spawn_blocking(move || {
            scorer.stop();
            engine.close()
        })
        .await?
        .context("closing the database")?;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// Four queries per core: enough to keep the cores busy while some wait on I/O or clients.
fn default_concurrent_queries() -> usize {
    4 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Serves HTTP until told to stop, then lets the requests in flight finish.
async fn serve_http<L>(listener: L, app: axum::Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let shutdown = async move { until_stopped(&mut stop).await };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Accepts Postgres connections until told to stop, then drops the open ones.
async fn serve_pg(
    listener: TcpListener,
    handlers: Arc<pg::PgHandlers>,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) if connections.len() >= max_connections => {
                    tracing::warn!(%peer, max_connections, "refusing a Postgres connection: too many open");
                    connections.spawn(pg::refuse(socket, max_connections));
                }
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let (handlers, tls) = (handlers.clone(), tls.clone());
                    connections.spawn(async move {
                        if let Err(e) = pg::notify::serve_connection(socket, handlers, tls).await {
                            tracing::debug!(%peer, error = %e, "Postgres connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Postgres connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = until_stopped(&mut stop) => break,
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
