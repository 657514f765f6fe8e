//! Gannet's storage engine.
//!
//! A line of line protocol travels: [`lineproto`] (parse, zero-copy) -> [`validate`]
//! (catalog types, Arrow batches) -> [`wal`] (group commit, fsync, then acknowledge) ->
//! [`buffer`] (queryable at once) -> [`segment`] (sorted, deduplicated Parquet) recorded in
//! the [`catalog`]. [`engine::Engine`] owns a data directory and runs that path.
//!
//! ```
//! use gannet_storage::{Engine, EngineConfig, Precision};
//!
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::test_config(dir.path()))?;
//! let outcome = engine.write_lp("metrics", b"cpu,host=a usage=0.5 1", Precision::Second)?;
//! assert_eq!(outcome.rows, 1);
//! let table = engine.snapshot("metrics", "cpu").unwrap().read_all()?;
//! assert_eq!(table.num_rows(), 1);
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod buffer;
pub mod catalog;
mod compact;
pub mod config;
pub mod dedup;
pub mod delete;
pub mod engine;
mod error;
pub mod lineproto;
pub mod paths;
pub mod pool;
pub mod precision;
mod retire;
pub mod segment;
pub mod validate;
pub mod wal;

pub use config::{EngineConfig, WriteLimits};
pub use delete::DeletePredicate;
pub use engine::{BufferStats, Engine, TableSnapshot, WriteOutcome};
pub use error::{Error, Result};
pub use lineproto::LineError;
pub use precision::Precision;
