use std::sync::Arc;

use crate::catalog::CatalogError;
use crate::segment::SegmentError;
use crate::wal::WalError;

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Wal(#[from] Arc<WalError>),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("data directory {dir} is in use by another Gannet process{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { dir: String, pid: Option<u32> },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("table '{table}' does not exist in database '{db}'")]
    NoSuchTable { db: String, table: String },
    #[error(
        "cannot drop table '{table}': scoring rule '{rule}' scores it; drop the rule first \
         (DROP SCORING RULE {rule})"
    )]
    TableInUse { table: String, rule: String },
    #[error("the engine is shut down")]
    Closed,
    #[error(
        "the write buffer is full ({limit} bytes) and flushing to segments has not freed \
         room for {waited:?}; retry later"
    )]
    BufferFull {
        limit: usize,
        waited: std::time::Duration,
    },
}

impl From<WalError> for Error {
    fn from(e: WalError) -> Self {
        Error::Wal(Arc::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
