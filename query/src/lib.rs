//! Gannet's query engine: SQL over the storage engine with Apache DataFusion.
//!
//! Each database is a DataFusion schema in the catalog `gannet` ([`catalog`]); each table a
//! [`table::GannetTable`] that reads one consistent snapshot of the table (buffer and
//! segments, last write winning). [`QueryEngine::sql`] runs a statement with the given
//! database as the default schema.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use gannet_query::QueryEngine;
//! use gannet_storage::{Engine, EngineConfig, Precision};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::test_config(dir.path()))?;
//! engine.write_lp("metrics", b"cpu,host=a usage=0.5 1\ncpu,host=b usage=1.5 1", Precision::Second)?;
//! let query = QueryEngine::new(engine);
//! let batches = query.sql("metrics", "SELECT count(*) AS n FROM cpu").await?;
//! assert_eq!(batches[0].num_rows(), 1);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use datafusion::execution::context::{SessionConfig, SessionContext};
use gannet_storage::Engine;

pub mod catalog;
pub mod table;

pub use datafusion;

/// The name of the DataFusion catalog that holds Gannet's databases.
pub const CATALOG: &str = "gannet";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// Runs SQL against the databases of one storage engine.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    engine: Arc<Engine>,
}

impl QueryEngine {
    pub fn new(engine: Arc<Engine>) -> QueryEngine {
        QueryEngine { engine }
    }

    /// A DataFusion session whose default schema is database `db`.
    pub fn session(&self, db: &str) -> Result<SessionContext, QueryError> {
        if self.engine.catalog().database(db).is_none() {
            return Err(QueryError::UnknownDatabase(db.to_owned()));
        }
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG, db)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        ctx.register_catalog(
            CATALOG,
            Arc::new(catalog::GannetCatalog::new(self.engine.clone())),
        );
        Ok(ctx)
    }

    /// Runs one SQL statement in database `db` and collects its result.
    pub async fn sql(&self, db: &str, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        let ctx = self.session(db)?;
        let frame = ctx.sql(sql).await?;
        Ok(frame.collect().await?)
    }
}

#[cfg(test)]
mod tests;
