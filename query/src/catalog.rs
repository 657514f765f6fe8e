//! Gannet's catalog as DataFusion sees it: the catalog `gannet`, a schema per database, a
//! table per measurement. Looked up live, so tables created by writes appear at once.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::Result;
use gannet_storage::Engine;

use crate::table::GannetTable;

#[derive(Debug)]
pub struct GannetCatalog {
    engine: Arc<Engine>,
}

impl GannetCatalog {
    pub fn new(engine: Arc<Engine>) -> Self {
        GannetCatalog { engine }
    }
}

impl CatalogProvider for GannetCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.engine.catalog().databases.keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.engine.catalog().database(name)?;
        Some(Arc::new(DatabaseSchema {
            engine: self.engine.clone(),
            db: name.to_owned(),
        }))
    }
}

/// One database's tables.
#[derive(Debug)]
pub struct DatabaseSchema {
    engine: Arc<Engine>,
    db: String,
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        let catalog = self.engine.catalog();
        catalog
            .database(&self.db)
            .map(|d| d.tables.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self
            .engine
            .catalog()
            .table(&self.db, name)
            .map(|t| t.schema())
        else {
            return Ok(None);
        };
        Ok(Some(Arc::new(GannetTable::new(
            self.engine.clone(),
            &self.db,
            name,
            table,
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.catalog().table(&self.db, name).is_some()
    }
}
