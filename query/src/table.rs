//! A Gannet table as a DataFusion [`TableProvider`].
//!
//! A scan takes one consistent snapshot of the table (buffered batches, segments,
//! tombstones) and reads it with [`TableSnapshot::read_all`]: every point once, the last
//! write winning field by field, deleted rows gone. This first version reads the whole table
//! into memory at plan time; pruning segments by time and tags and streaming Parquet scans
//! of windows that need no merging come next (see docs/architecture.md, "Not yet").
//!
//! [`TableSnapshot::read_all`]: gannet_storage::TableSnapshot::read_all

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use gannet_storage::Engine;

#[derive(Debug)]
pub struct GannetTable {
    engine: Arc<Engine>,
    db: String,
    table: String,
    schema: SchemaRef,
}

impl GannetTable {
    pub fn new(engine: Arc<Engine>, db: &str, table: &str, schema: SchemaRef) -> Self {
        GannetTable {
            engine,
            db: db.to_owned(),
            table: table.to_owned(),
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for GannetTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.engine.snapshot(&self.db, &self.table).ok_or_else(|| {
            DataFusionError::Plan(format!("table \"{}\" no longer exists", self.table))
        })?;
        let batch = snapshot
            .read_all()
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        // The snapshot's schema may have grown since planning began: keep the planned one.
        let batch = gannet_storage::buffer::widen(&batch, &self.schema);
        let plan = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(plan)
    }
}
