//! Gannet's query engine: SQL over the storage engine with Apache DataFusion.
//!
//! A session belongs to one database, as a PostgreSQL connection does: the database is the
//! session's only catalog, its tables are in the schema `public` ([`catalog`]), and each table
//! is a [`table::GannetTable`] that reads one consistent snapshot of the table (buffer and
//! segments, last write winning). [`QueryEngine::sql`] runs a statement in one database.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::record_batch::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::sql::sqlparser::ast::Statement;
use gannet_storage::Engine;

pub mod catalog;
pub mod dml;
pub mod error;
mod first_last;
pub mod functions;
pub mod gapfill;
mod group_keys;
mod latest;
mod merge;
mod newest;
pub mod onnx;
mod planner;
mod runs;
pub mod scoring;
pub mod system;
pub mod table;
mod tag_index;

pub use datafusion;

/// What a statement may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anything: queries, writes (INSERT, DELETE), DDL, scoring rules.
    ReadWrite,
    /// Queries only.
    ReadOnly,
}

impl Access {
    /// What DataFusion's planner may accept with this access.
    fn sql_options(self) -> SQLOptions {
        match self {
            Access::ReadWrite => SQLOptions::new(),
            Access::ReadOnly => SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error("database \"{0}\" already exists")]
    DatabaseExists(String),
    #[error(transparent)]
    Storage(#[from] gannet_storage::Error),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

impl QueryError {
    /// The SQLSTATE PostgreSQL would answer with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            QueryError::DataFusion(e) => error::sqlstate(e),
            QueryError::UnknownDatabase(_) => "3D000",
            QueryError::DatabaseExists(_) => "42P04",
            QueryError::Storage(gannet_storage::Error::Catalog(
                gannet_storage::catalog::CatalogError::InvalidName { .. },
            )) => "42602",
            QueryError::Storage(gannet_storage::Error::NoSuchTable { .. }) => "42P01",
            QueryError::Storage(gannet_storage::Error::TableInUse { .. }) => "2BP01",
            QueryError::Storage(_) => "XX000",
        }
    }

    /// The message for users, without DataFusion's prefixes.
    pub fn message(&self) -> String {
        match self {
            QueryError::DataFusion(e) => error::message(e),
            other => other.to_string(),
        }
    }
}

/// What planning a statement gave.
enum Planned {
    /// Carried out already (Gannet's own statements): no rows.
    Done,
    /// To run, with the turn it holds.
    Frame(
        Box<datafusion::dataframe::DataFrame>,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

/// The rows of a query as they are computed (see [`QueryEngine::sql_stream`]).
pub struct QueryStream {
    inner: datafusion::execution::SendableRecordBatchStream,
    _turn: Option<tokio::sync::OwnedSemaphorePermit>,
    running: Option<system::RunningQuery>,
    rows: usize,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl QueryStream {
    /// The schema of the batches.
    pub fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.inner.schema()
    }
}

impl futures::Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let polled = self.inner.as_mut().poll_next(cx);
        match polled {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows();
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = QueryError::from(e);
                if let Some(running) = self.running.take() {
                    running.finish(Err(e.to_string()));
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(running) = self.running.take() {
                    running.finish(Ok(self.rows));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for QueryStream {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.finish(Err("canceled: the client went away".to_owned()));
        }
    }
}

/// Runs SQL against the databases of one storage engine.
#[derive(Debug, Clone)]
pub struct QueryEngine {
    engine: Arc<Engine>,
    log: system::QueryLog,
    /// A ready session state per database: a query starts from a copy of it, rather than
    /// registering catalogs and functions anew.
    states: Arc<Mutex<HashMap<String, Arc<SessionState>>>>,
    merged: Arc<table::MergedWindows>,
    models: Arc<onnx::ModelRegistry>,
    scoring: Arc<scoring::ScoringState>,
    /// Shared by every session: its memory pool bounds what all running queries hold.
    runtime: Arc<RuntimeEnv>,
    /// Turns to run a query: at most this many run at once, the others wait.
    turns: Arc<tokio::sync::Semaphore>,
}

impl QueryEngine {
    /// A query engine over `engine`, with the models in `<data dir>/models`.
    pub fn new(engine: Arc<Engine>) -> QueryEngine {
        let models = onnx::ModelRegistry::new(
            engine.config().data_dir.join("models"),
            onnx::OnnxConfig::default(),
        );
        QueryEngine::with_models(engine, Arc::new(models))
    }

    /// A query engine over `engine` whose ONNX functions use `models`.
    pub fn with_models(engine: Arc<Engine>, models: Arc<onnx::ModelRegistry>) -> QueryEngine {
        let (merged, runtime) = query_memory(engine.config().memory_limit);
        QueryEngine {
            engine,
            log: system::QueryLog::default(),
            states: Arc::default(),
            merged,
            models,
            scoring: Arc::default(),
            runtime,
            turns: Arc::new(tokio::sync::Semaphore::new(DEFAULT_CONCURRENT_QUERIES)),
        }
    }

    /// Lets at most `n` queries run at once; the others wait for a turn ([`QueryEngine::turn`]).
    pub fn with_max_concurrent_queries(mut self, n: usize) -> QueryEngine {
        self.turns = Arc::new(tokio::sync::Semaphore::new(n.max(1)));
        self
    }

    /// Waits for a turn to run a query; the turn lasts until the permit is dropped.
    pub async fn turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.turns
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Bounds the memory all running queries may hold together (sorts, joins, aggregates;
    /// what can spill to disk spills first). A query that needs more fails with SQLSTATE
    /// 53200, naming the limit and the largest consumers. An eighth of the limit goes to
    /// merges of buffered and overlapping data kept for later queries. The default is the
    /// write buffer's memory limit.
    pub fn with_memory_limit(mut self, bytes: usize) -> QueryEngine {
        (self.merged, self.runtime) = query_memory(bytes);
        self.states.lock().expect("session states lock").clear();
        self
    }

    /// The memory queries hold now, in bytes: (reserved in the pool of running queries,
    /// held by merges kept between queries).
    pub fn memory_held(&self) -> (usize, usize) {
        (self.runtime.memory_pool.reserved(), self.merged.held())
    }

    /// Scoring rules' counts and alert feed.
    pub fn scoring(&self) -> &Arc<scoring::ScoringState> {
        &self.scoring
    }

    /// A session with Gannet's functions and models but no database: for SQL over batches
    /// registered in it.
    pub fn scratch_session(&self) -> SessionContext {
        let ctx = session_context(SessionConfig::new(), self.runtime.clone());
        functions::register(&ctx);
        onnx::udf::register(&ctx, &self.models);
        ctx
    }

    /// The models the ONNX functions run.
    pub fn models(&self) -> &Arc<onnx::ModelRegistry> {
        &self.models
    }

    /// The recent queries, as `system.queries` shows them.
    pub fn log(&self) -> &system::QueryLog {
        &self.log
    }

    /// The storage engine this queries.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// A DataFusion session on database `db`: catalog `db`, tables in schema `public`.
    /// Fails if the database does not exist.
    pub fn session(&self, db: &str) -> Result<SessionContext, QueryError> {
        let state = self.state(db)?;
        Ok(SessionContext::new_with_state(Arc::unwrap_or_clone(state)))
    }

    /// The ready session state of database `db`, shared: a query copies it once.
    fn state(&self, db: &str) -> Result<Arc<SessionState>, QueryError> {
        if self.engine.catalog().database(db).is_none() {
            return Err(QueryError::UnknownDatabase(db.to_owned()));
        }
        let mut states = self.states.lock().expect("session states lock");
        let state = states
            .entry(db.to_owned())
            .or_insert_with(|| Arc::new(self.new_session(db).state()));
        Ok(state.clone())
    }

    /// A session on database `db` whether or not it exists yet: a database that does not
    /// exist has no tables until something is written to it.
    pub fn new_session(&self, db: &str) -> SessionContext {
        let config = SessionConfig::new()
            .with_default_catalog_and_schema(db, catalog::TABLES_SCHEMA)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(true);
        let ctx = session_context(config, self.runtime.clone());
        let catalog = catalog::DatabaseCatalog::new(self.engine.clone(), db, self.merged.clone());
        let system = system::SystemSchema::new(
            self.engine.clone(),
            self.log.clone(),
            self.models.clone(),
            self.scoring.clone(),
        );
        datafusion::catalog::CatalogProvider::register_schema(
            &catalog,
            system::SYSTEM_SCHEMA,
            Arc::new(system),
        )
        .expect("the system schema is not the tables' schema");
        ctx.register_catalog(db, Arc::new(catalog));
        functions::register(&ctx);
        onnx::udf::register(&ctx, &self.models);
        ctx
    }

    /// Runs one SQL statement in database `db` and collects its result.
    pub async fn sql(&self, db: &str, sql: &str) -> Result<Vec<RecordBatch>, QueryError> {
        self.sql_with(db, sql, Access::ReadWrite).await
    }

    /// Runs one SQL statement in database `db` with `access`: a read-only statement may
    /// query but not write, create, drop or copy to files (SQLSTATE 42501 otherwise).
    pub async fn sql_with(
        &self,
        db: &str,
        sql: &str,
        access: Access,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        let running = self.log.start(db, sql);
        let result = self.run(db, sql, access).await;
        running.finish(match &result {
            Ok(batches) => Ok(batches.iter().map(|b| b.num_rows()).sum()),
            Err(e) => Err(e.to_string()),
        });
        result
    }

    /// Runs one SQL statement in database `db` with `access`, its rows streamed batch by
    /// batch as they are computed: a result of millions of rows is never held whole. The
    /// query keeps its turn among the concurrent queries, and is logged in
    /// `system.queries`, until the stream ends or is dropped.
    pub async fn sql_stream(
        &self,
        db: &str,
        sql: &str,
        access: Access,
    ) -> Result<QueryStream, QueryError> {
        let running = self.log.start(db, sql);
        let planned = match self.plan(db, sql, access).await {
            Ok(planned) => planned,
            Err(e) => {
                running.finish(Err(e.to_string()));
                return Err(e);
            }
        };
        let (inner, turn) = match planned {
            Planned::Done => {
                let schema = Arc::new(arrow::datatypes::Schema::empty());
                let empty = datafusion::physical_plan::EmptyRecordBatchStream::new(schema);
                let inner: datafusion::execution::SendableRecordBatchStream = Box::pin(empty);
                (inner, None)
            }
            Planned::Frame(frame, turn) => match frame.execute_stream().await {
                Ok(inner) => (inner, Some(turn)),
                Err(e) => {
                    let e = QueryError::from(e);
                    running.finish(Err(e.to_string()));
                    return Err(e);
                }
            },
        };
        Ok(QueryStream {
            inner,
            _turn: turn,
            running: Some(running),
            rows: 0,
        })
    }

    async fn run(
        &self,
        db: &str,
        sql: &str,
        access: Access,
    ) -> Result<Vec<RecordBatch>, QueryError> {
        match self.plan(db, sql, access).await? {
            Planned::Done => Ok(Vec::new()),
            Planned::Frame(frame, _turn) => Ok(frame.collect().await?),
        }
    }

    /// Carries out Gannet's own statements; plans the others, holding a turn for them.
    async fn plan(&self, db: &str, sql: &str, access: Access) -> Result<Planned, QueryError> {
        let read_only = read_only_refused;
        // One parse, as `SessionContext::sql` makes it (same dialect and limits), serves
        // the check for Gannet's own statements and the planning.
        let statement = match parse_statement(sql) {
            Ok(statement) => statement,
            // DataFusion's parser does not read scoring rules.
            Err(e) => {
                let Some(statement) = scoring::statement::parse(sql) else {
                    return Err(e.into());
                };
                if access == Access::ReadOnly {
                    return Err(read_only().into());
                }
                let statement = statement.map_err(|e| error::SqlError::new("42601", e))?;
                self.execute_scoring(db, statement).await?;
                return Ok(Planned::Done);
            }
        };
        if let datafusion::sql::parser::Statement::Statement(own) = &statement
            && let Some(done) = self.execute_own_with(db, own, access)
        {
            done?;
            return Ok(Planned::Done);
        }
        // One copy of the database's ready state, as `SessionContext::state` makes: it holds
        // this query's start time (`now()`).
        let mut state = Arc::unwrap_or_clone(self.state(db)?);
        state.mark_start_execution();
        let turn = self.turn().await;
        let plan = state.statement_to_plan(statement).await?;
        access
            .sql_options()
            .verify_plan(&plan)
            .map_err(refused_or)?;
        let frame = match plan {
            // SET, PREPARE, CREATE VIEW and the like change or read the session: the
            // context carries them out.
            datafusion::logical_expr::LogicalPlan::Ddl(_)
            | datafusion::logical_expr::LogicalPlan::Statement(_) => {
                SessionContext::new_with_state(state)
                    .execute_logical_plan(plan)
                    .await?
            }
            plan => datafusion::dataframe::DataFrame::new(state, plan),
        };
        Ok(Planned::Frame(Box::new(frame), turn))
    }

    /// Carries out the statements that are Gannet's rather than DataFusion's, in database
    /// `db`: `CREATE DATABASE [IF NOT EXISTS] name` and `DROP TABLE [IF EXISTS] name, ...`.
    /// Returns `None` for any other statement, and the command tag of one it carried out.
    pub fn execute_own(
        &self,
        db: &str,
        statement: &Statement,
    ) -> Option<Result<&'static str, QueryError>> {
        self.execute_own_with(db, statement, Access::ReadWrite)
    }

    fn execute_own_with(
        &self,
        db: &str,
        statement: &Statement,
        access: Access,
    ) -> Option<Result<&'static str, QueryError>> {
        use datafusion::sql::sqlparser::ast::ObjectType;
        let ours = matches!(statement, Statement::CreateDatabase { .. })
            || matches!(
                statement,
                Statement::Drop {
                    object_type: ObjectType::Table,
                    ..
                }
            );
        if ours && access == Access::ReadOnly {
            return Some(Err(read_only_refused().into()));
        }
        match statement {
            Statement::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                ..
            } => Some(
                self.drop_tables(db, names, *if_exists)
                    .map(|()| "DROP TABLE"),
            ),
            Statement::CreateDatabase {
                db_name,
                if_not_exists,
                ..
            } => {
                let name = match db_name.0.as_slice() {
                    [part] => part.as_ident().map(|i| i.value.clone()),
                    _ => None,
                };
                let Some(name) = name else {
                    return Some(Err(QueryError::DataFusion(
                        datafusion::error::DataFusionError::Plan(format!(
                            "CREATE DATABASE takes a plain name, not {db_name}"
                        )),
                    )));
                };
                Some(match self.engine.create_database(&name) {
                    Ok(true) => Ok("CREATE DATABASE"),
                    Ok(false) if *if_not_exists => Ok("CREATE DATABASE"),
                    Ok(false) => Err(QueryError::DatabaseExists(name)),
                    Err(e) => Err(e.into()),
                })
            }
            _ => None,
        }
    }
}

impl QueryEngine {
    /// `DROP TABLE`: every table named must exist (unless `IF EXISTS`) before any is
    /// dropped. Names are `table`, `public.table` or `db.public.table`, unquoted ones
    /// lowercased as in every other statement.
    fn drop_tables(
        &self,
        db: &str,
        names: &[datafusion::sql::sqlparser::ast::ObjectName],
        if_exists: bool,
    ) -> Result<(), QueryError> {
        use error::SqlError;
        let mut tables = Vec::with_capacity(names.len());
        for name in names {
            let parts: Option<Vec<String>> = name
                .0
                .iter()
                .map(|part| {
                    part.as_ident().map(|ident| match ident.quote_style {
                        Some(_) => ident.value.clone(),
                        None => ident.value.to_lowercase(),
                    })
                })
                .collect();
            let table = match parts.as_deref() {
                Some([table]) => table.clone(),
                Some([schema, table]) if schema == catalog::TABLES_SCHEMA => table.clone(),
                Some([catalog, schema, table])
                    if catalog == db && schema == catalog::TABLES_SCHEMA =>
                {
                    table.clone()
                }
                Some([schema, _]) | Some([_, schema, _]) if schema == system::SYSTEM_SCHEMA => {
                    return Err(SqlError::new(
                        "42501",
                        format!("{name} is a system table and cannot be dropped"),
                    )
                    .into());
                }
                Some([catalog, _, _]) if catalog != db => {
                    return Err(SqlError::new(
                        "0A000",
                        format!(
                            "cross-database references are not implemented: {name} (this \
                             session is in database \"{db}\")"
                        ),
                    )
                    .into());
                }
                _ => {
                    return Err(SqlError::new(
                        "3F000",
                        format!("no schema has table {name}: tables are in \"public\""),
                    )
                    .into());
                }
            };
            let exists = self.engine.catalog().table(db, &table).is_some();
            if !exists && !if_exists {
                return Err(
                    SqlError::new("42P01", format!("table \"{table}\" does not exist")).into(),
                );
            }
            if exists {
                tables.push(table);
            }
        }
        for table in tables {
            match self.engine.drop_table(db, &table) {
                // Dropped meanwhile by someone else: gone either way.
                Ok(()) | Err(gannet_storage::Error::NoSuchTable { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            self.merged.forget_table(db, &table);
        }
        Ok(())
    }
}

impl QueryEngine {
    /// Carries out `CREATE SCORING RULE` and `DROP SCORING RULE` in database `db`; returns
    /// the command tag. A rule is checked before it is made: its table must exist, its
    /// expression must give a number for the table's rows (so its model must exist and take
    /// the arguments given), and its condition must be true or false.
    pub async fn execute_scoring(
        &self,
        db: &str,
        statement: scoring::statement::ScoringStatement,
    ) -> Result<&'static str, QueryError> {
        use error::SqlError;
        use scoring::statement::ScoringStatement;
        match statement {
            ScoringStatement::Drop { name, if_exists } => {
                if !self.engine.drop_scoring_rule(db, &name)? && !if_exists {
                    return Err(SqlError::new(
                        "42704",
                        format!("scoring rule \"{name}\" does not exist"),
                    )
                    .into());
                }
                Ok("DROP SCORING RULE")
            }
            ScoringStatement::Create {
                name,
                if_not_exists,
                table,
                expression,
                condition,
                webhook,
            } => {
                gannet_storage::catalog::validate_name(&name)
                    .map_err(gannet_storage::Error::from)?;
                if table == scoring::ALERTS_TABLE || table.ends_with("_scores") {
                    return Err(SqlError::new(
                        "0A000",
                        format!(
                            "cannot score table \"{table}\": scoring writes to \"alerts\" \
                             and \"<rule>_scores\", and a rule on them would score its own output"
                        ),
                    )
                    .into());
                }
                let ctx = self.session(db)?;
                let quoted = format!("\"{}\"", table.replace('"', "\"\""));
                let scored = format!("SELECT *, ({expression}) AS score FROM {quoted}");
                let frame = ctx.sql(&format!("{scored} LIMIT 0")).await?;
                let score_type = frame
                    .schema()
                    .field_with_unqualified_name("score")
                    .map(|f| f.data_type().clone())?;
                if !(score_type.is_numeric() || score_type == arrow::datatypes::DataType::Boolean) {
                    return Err(SqlError::new(
                        "42804",
                        format!("a score must be a number, and {expression} gives {score_type}"),
                    )
                    .into());
                }
                if let Some(condition) = &condition {
                    let frame = ctx
                        .sql(&format!(
                            "SELECT ({condition}) AS alert FROM ({scored}) LIMIT 0"
                        ))
                        .await?;
                    let alert_type = frame.schema().field(0).data_type().clone();
                    if alert_type != arrow::datatypes::DataType::Boolean {
                        return Err(SqlError::new(
                            "42804",
                            format!(
                                "a rule's condition must be true or false, and {condition} \
                                 gives {alert_type}"
                            ),
                        )
                        .into());
                    }
                }
                let rule = gannet_storage::catalog::ScoringRule {
                    name: name.clone(),
                    table,
                    expression: expression.to_string(),
                    condition: condition.map(|c| c.to_string()),
                    webhook,
                    from_seq: 0,
                    created_at: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i64),
                };
                if !self.engine.create_scoring_rule(db, rule)? && !if_not_exists {
                    return Err(SqlError::new(
                        "42710",
                        format!("scoring rule \"{name}\" already exists"),
                    )
                    .into());
                }
                Ok("CREATE SCORING RULE")
            }
        }
    }
}

/// `sql` as one statement, parsed as `SessionState::sql_to_statement` parses it for
/// `SessionContext::sql`, with the sessions' dialect and recursion limit (DataFusion's
/// defaults: sessions do not change them), and its errors.
fn parse_statement(sql: &str) -> datafusion::error::Result<datafusion::sql::parser::Statement> {
    use datafusion::error::DataFusionError;
    use datafusion::sql::parser::DFParserBuilder;
    let options = datafusion::config::ConfigOptions::default().sql_parser;
    let dialect = datafusion::sql::sqlparser::dialect::dialect_from_str(options.dialect)
        .ok_or_else(|| {
            DataFusionError::Plan(format!("unsupported SQL dialect {}", options.dialect))
        })?;
    let mut statements = DFParserBuilder::new(sql)
        .with_dialect(dialect.as_ref())
        .with_recursion_limit(options.recursion_limit.get())
        .build()?
        .parse_statements()?;
    if statements.len() > 1 {
        return Err(DataFusionError::NotImplemented(
            "The context currently only supports a single SQL statement".to_owned(),
        ));
    }
    statements.pop_front().ok_or_else(|| {
        DataFusionError::Plan("No SQL statements were provided in the query string".to_owned())
    })
}

#[cfg(test)]
mod tests;

/// Queries running at once unless told otherwise.
const DEFAULT_CONCURRENT_QUERIES: usize = 64;

/// A runtime whose memory pool holds at most `bytes` (DataFusion's greedy pool, reporting
/// its top consumers when a query runs out).
/// The query memory limit shared out: an eighth for merges kept between queries, the rest
/// for the memory pool of running queries.
fn query_memory(bytes: usize) -> (Arc<table::MergedWindows>, Arc<RuntimeEnv>) {
    let cache = bytes / 8;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(bytes - cache, 1.0)
        .build_arc()
        .expect("a runtime with default disk and cache settings builds");
    (Arc::new(table::MergedWindows::new(cache)), runtime)
}

/// The error of a statement that would write on a read-only connection.
fn read_only_refused() -> error::SqlError {
    error::SqlError::new(
        "42501",
        "permission denied: this connection may only read (SELECT, EXPLAIN, SHOW)",
    )
}

/// A planning error as the query's error: 42501 if the statement writes where only reading
/// is allowed.
fn refused_or(e: datafusion::error::DataFusionError) -> QueryError {
    if is_refused_by_options(&e) {
        read_only_refused().into()
    } else {
        e.into()
    }
}

/// Whether DataFusion refused a statement for the [`SQLOptions`] of a read-only query.
fn is_refused_by_options(e: &datafusion::error::DataFusionError) -> bool {
    let message = e.to_string();
    [
        "DDL not supported",
        "DML not supported",
        "Statement not supported",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// A session with Gannet's planning extensions (gap filling, latest-row narrowing) on
/// DataFusion's defaults.
fn session_context(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    let state = datafusion::execution::session_state::SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .build();
    SessionContext::new_with_state(planner::install(state))
}
