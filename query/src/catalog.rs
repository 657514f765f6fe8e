//! Gannet's catalog as DataFusion sees it. A session belongs to one database, as a
//! PostgreSQL connection does: the database is the session's catalog, and its tables live in
//! the schema `public`. Looked up live, so tables created by writes appear at once.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::error::Result;
use gannet_storage::Engine;

use crate::table::{GannetTable, MergedWindows};

/// The schema that holds a database's tables.
pub const TABLES_SCHEMA: &str = "public";

/// One database as a DataFusion catalog: its tables, and the schemas a session adds
/// (`pg_catalog` for the Postgres server, `system`).
#[derive(Debug)]
pub struct DatabaseCatalog {
    tables: Arc<DatabaseSchema>,
    others: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl DatabaseCatalog {
    pub fn new(engine: Arc<Engine>, db: &str, merged: Arc<MergedWindows>) -> Self {
        DatabaseCatalog {
            tables: Arc::new(DatabaseSchema {
                engine,
                db: db.to_owned(),
                merged,
            }),
            others: RwLock::default(),
        }
    }
}

impl CatalogProvider for DatabaseCatalog {
    fn schema_names(&self) -> Vec<String> {
        let others = self.others.read().expect("schemas lock");
        std::iter::once(TABLES_SCHEMA.to_owned())
            .chain(others.keys().cloned())
            .collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == TABLES_SCHEMA {
            return Some(self.tables.clone());
        }
        self.others.read().expect("schemas lock").get(name).cloned()
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        if name == TABLES_SCHEMA {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "schema '{TABLES_SCHEMA}' holds the database's tables and cannot be replaced"
            )));
        }
        let mut others = self.others.write().expect("schemas lock");
        Ok(others.insert(name.to_owned(), schema))
    }
}

/// One database's tables.
#[derive(Debug)]
pub struct DatabaseSchema {
    engine: Arc<Engine>,
    db: String,
    merged: Arc<MergedWindows>,
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
            self.merged.clone(),
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.engine.catalog().table(&self.db, name).is_some()
    }
}
