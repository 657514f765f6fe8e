//! Gannet: an embedded time-series analytics database.
//!
//! Events arrive as InfluxDB line protocol, are made durable in a write-ahead log, buffered
//! as Arrow, flushed to Parquet segments, and queried with SQL (Apache DataFusion). This
//! crate is the facade: open a data directory, write, query, close. It re-exports the
//! `arrow` and `datafusion` it is built with.
//!
//! ```
//! use gannet::{Gannet, Precision};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let dir = dir.path();
//! let db = Gannet::open(dir)?;
//! db.write_lp("metrics", "cpu,host=a usage=0.5 1700000000000000000", Precision::Nanosecond)?;
//! let batches: Vec<gannet::arrow::record_batch::RecordBatch> =
//!     db.sql("metrics", "SELECT host, avg(usage) FROM cpu GROUP BY host").await?;
//! println!("{}", gannet::arrow::util::pretty::pretty_format_batches(&batches)?);
//! db.close()?;
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::sync::Arc;

pub use arrow;
pub use gannet_query as query;
pub use gannet_query::datafusion;
pub use gannet_storage as storage;
pub use gannet_storage::DeletePredicate;
pub use gannet_storage::{EngineConfig, LineError, Precision, TableSnapshot, WriteOutcome};

use arrow::record_batch::RecordBatch;

pub mod auth;
pub mod server;
use gannet_storage::Engine;

/// Errors of the Gannet facade.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] gannet_storage::Error),
    #[error(transparent)]
    Query(#[from] gannet_query::QueryError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open Gannet database: one data directory, owned by this process while open.
/// Clones share the database; when the last one is dropped without [`Gannet::close`], the
/// background work stops and the directory is released (acknowledged writes are in the WAL).
#[derive(Debug, Clone)]
pub struct Gannet {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    engine: Arc<Engine>,
    query: gannet_query::QueryEngine,
    /// Scores writes by the scoring rules, while the database is open.
    scorer: std::sync::Mutex<Option<gannet_query::scoring::Scorer>>,
}

impl Handle {
    fn stop_scoring(&self) {
        if let Some(mut scorer) = self.scorer.lock().expect("scorer lock").take() {
            scorer.stop();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop_scoring();
        self.engine.stop_background();
    }
}

impl Gannet {
    /// Opens (or creates) the data directory `dir` with the default configuration.
    pub fn open(dir: impl AsRef<Path>) -> Result<Gannet> {
        Self::open_with(EngineConfig::new(dir.as_ref()))
    }

    pub fn open_with(config: EngineConfig) -> Result<Gannet> {
        let engine = Engine::open(config)?;
        let query = gannet_query::QueryEngine::new(engine.clone());
        let scorer = gannet_query::scoring::Scorer::start(&query);
        Ok(Gannet {
            handle: Arc::new(Handle {
                engine,
                query,
                scorer: std::sync::Mutex::new(Some(scorer)),
            }),
        })
    }

    /// Writes line protocol to database `db`; returns once the accepted lines are durable.
    /// Bad lines are reported in [`WriteOutcome::errors`] and do not stop the others.
    pub fn write_lp(
        &self,
        db: &str,
        body: impl AsRef<[u8]>,
        precision: Precision,
    ) -> Result<WriteOutcome> {
        Ok(self.handle.engine.write_lp(db, body.as_ref(), precision)?)
    }

    /// One consistent view of a table (its segments and buffered batches).
    pub fn snapshot(&self, db: &str, table: &str) -> Option<TableSnapshot> {
        self.handle.engine.snapshot(db, table)
    }

    /// Reads a whole table, one row per point, sorted by tags and time.
    pub fn read_table(&self, db: &str, table: &str) -> Result<Option<RecordBatch>> {
        match self.handle.engine.snapshot(db, table) {
            Some(snapshot) => Ok(Some(snapshot.read_all()?)),
            None => Ok(None),
        }
    }

    /// Runs one SQL statement in database `db` (its tables are in schema `public`) and
    /// collects the result.
    pub async fn sql(&self, db: &str, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.handle.query.sql(db, sql).await?)
    }

    /// Deletes the rows of `db.table` that `predicate` matches; durable on return.
    pub fn delete(&self, db: &str, table: &str, predicate: DeletePredicate) -> Result<()> {
        self.handle.engine.delete(db, table, predicate)?;
        Ok(())
    }

    /// Persists everything buffered to Parquet segments.
    pub fn flush(&self) -> Result<()> {
        Ok(self.handle.engine.flush()?)
    }

    /// Flushes and releases the data directory (once scoring has caught up).
    pub fn close(self) -> Result<()> {
        self.handle.stop_scoring();
        Ok(self.handle.engine.close()?)
    }

    /// The query engine: SQL sessions on the databases.
    pub fn query(&self) -> &gannet_query::QueryEngine {
        &self.handle.query
    }

    /// The ONNX models the SQL functions run (`<data dir>/models`).
    pub fn models(&self) -> &Arc<gannet_query::onnx::ModelRegistry> {
        self.handle.query.models()
    }

    /// The storage engine, for the query layer and servers.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.handle.engine
    }
}
