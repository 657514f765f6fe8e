//! The Postgres wire protocol: pgwire, with datafusion-postgres for the query protocol and
//! datafusion-pg-catalog for `pg_catalog`.
//!
//! A connection's database name selects a Gannet database, as in PostgreSQL. Each database
//! gets one DataFusion session with `pg_catalog` installed, shared by its connections and
//! built on first use. What datafusion-postgres does not do, Gannet adds here: routing by
//! database, refusing unknown databases with 3D000, SQLSTATEs for DataFusion's errors, and
//! the functions and statements clients send that DataFusion lacks ([`compat`]), and
//! cancellation of running statements ([`cancel`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::common::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::Sink;
use gannet_query::QueryEngine;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, METADATA_DATABASE,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;

pub mod auth;
mod cancel;
mod compat;
mod constant;
mod cork;
pub mod notify;
mod parse;
mod rows;
mod sasl_check;
mod settings;

use auth::{PgAuth, UserStatement};
use cancel::{Canceller, Running};
use compat::{
    GannetStatementsHook, override_catalog_tables, register_functions, rewrite_grafana_search_path,
};

/// The database a connection gets when it names none, and which always exists (empty until
/// written to), as PostgreSQL's `postgres` does: tools connect to it by default.
pub const DEFAULT_DATABASE: &str = "postgres";

/// The prefix of the connection metadata keys Gannet keeps its own state in.
const GANNET_METADATA: &str = "gannet.";

/// The PostgreSQL version Gannet reports; clients pick their SQL dialect by it.
const SERVER_VERSION: &str = "16.6";
const SERVER_VERSION_NUM: &str = "160006";

type Statement = (String, Option<(sqlparser::ast::Statement, LogicalPlan)>);

/// All of the pgwire handlers of one server.
#[derive(Debug)]
pub struct PgHandlers {
    query: Arc<QueryRouter>,
    sessions: Arc<Sessions>,
    connections: Arc<ConnectionManager>,
    auth: Arc<PgAuth>,
    /// Every connection's initial `statement_timeout`.
    pub statement_timeout: Option<std::time::Duration>,
    cancel: Arc<Canceller>,
    /// `NOTIFY`s and alerts, for the connections that `LISTEN`.
    pub notifications: notify::Notifications,
}

impl PgHandlers {
    pub fn new(query: QueryEngine, auth: Arc<PgAuth>) -> PgHandlers {
        let notifications = notify::Notifications::default();
        let sessions = Arc::new(Sessions {
            query,
            services: Mutex::new(HashMap::new()),
            notifications: notifications.clone(),
            parser: parse::SqlParser::default(),
        });
        let connections = Arc::new(ConnectionManager::new());
        let running = Arc::new(Running::default());
        PgHandlers {
            query: Arc::new(QueryRouter {
                parser: Arc::new(RoutingParser {
                    sessions: sessions.clone(),
                }),
                sessions: sessions.clone(),
                running: running.clone(),
                auth: auth.clone(),
            }),
            sessions,
            connections: connections.clone(),
            auth,
            statement_timeout: None,
            cancel: Arc::new(Canceller {
                planning: DefaultCancelHandler::new(connections),
                running,
            }),
            notifications,
        }
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }

    /// A new one for each connection: it holds the connection's authentication state.
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(auth::Startup {
            sessions: self.sessions.clone(),
            connections: self.connections.clone(),
            auth: self.auth.clone(),
            statement_timeout: self.statement_timeout,
            sasl: tokio::sync::Mutex::new(pgwire::api::auth::sasl::SASLState::Initial),
        })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStateErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// Refuses a connection over the limit as PostgreSQL does: reads its start-up (declining
/// TLS or GSS encryption if asked first), answers FATAL 53300, closes. Everything is read
/// before closing, so that the client gets the message rather than a reset.
pub async fn refuse(mut socket: tokio::net::TcpStream, max_connections: usize) {
    use pgwire::messages::Message as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const SSL_REQUEST: u32 = 80877103;
    const GSSENC_REQUEST: u32 = 80877104;
    let exchange = async {
        for _ in 0..3 {
            let length = socket.read_u32().await? as usize;
            if !(8..=10_000).contains(&length) {
                break;
            }
            let code = socket.read_u32().await?;
            let mut rest = vec![0; length - 8];
            socket.read_exact(&mut rest).await?;
            if code != SSL_REQUEST && code != GSSENC_REQUEST {
                break;
            }
            socket.write_all(b"N").await?;
        }
        let error = ErrorInfo::new(
            "FATAL".to_owned(),
            "53300".to_owned(),
            format!(
                "sorry, too many clients already (the limit is {max_connections}, \
                 --max-connections)"
            ),
        );
        let mut buf = bytes::BytesMut::new();
        pgwire::messages::response::ErrorResponse::from(error)
            .encode(&mut buf)
            .map_err(std::io::Error::other)?;
        socket.write_all(&buf).await?;
        socket.shutdown().await?;
        let mut rest = [0; 512];
        while socket.read(&mut rest).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), exchange).await;
}

/// One DataFusion session per database, built on first use.
struct Sessions {
    query: QueryEngine,
    services: Mutex<HashMap<String, Arc<Session>>>,
    notifications: notify::Notifications,
    parser: parse::SqlParser,
}

/// A database's DataFusion session with `pg_catalog`, the statements Gannet answers itself
/// (hooks, in order), and datafusion-postgres's service, which runs extended-protocol
/// portals. Gannet parses and plans itself ([`parse`]).
struct Session {
    context: Arc<SessionContext>,
    hooks: Vec<Arc<dyn QueryHook>>,
    service: DfSessionService,
    constants: constant::ConstantPlans,
}

impl Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Session {
    /// The hooks that may answer `statement`: none for `SHOW datafusion.*`, which
    /// DataFusion answers from the connection's settings.
    fn hooks_for(&self, statement: &sqlparser::ast::Statement) -> &[Arc<dyn QueryHook>] {
        if settings::is_show(statement) {
            &[]
        } else {
            &self.hooks
        }
    }
}

impl Sessions {
    fn exists(&self, db: &str) -> bool {
        db == DEFAULT_DATABASE || self.query.engine().catalog().database(db).is_some()
    }

    fn service(&self, client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Arc<Session>> {
        let db = database_of(client);
        if let Some(service) = self.services.lock().expect("sessions lock").get(db) {
            return Ok(service.clone());
        }
        if !self.exists(db) {
            return Err(unknown_database(db, "ERROR"));
        }
        let ctx = self.query.new_session(db);
        setup_pg_catalog(&ctx, db, EmptyContextProvider)
            .map_err(|e| PgWireError::ApiError(Box::new(*e)))?;
        register_functions(&ctx);
        override_catalog_tables(&ctx, db).map_err(api_error)?;
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(GannetStatementsHook {
                query: self.query.clone(),
                notifications: self.notifications.clone(),
            }),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let context = Arc::new(ctx);
        let service = Arc::new(Session {
            service: DfSessionService::new_with_hooks(context.clone(), hooks.clone()),
            context,
            hooks,
            constants: constant::ConstantPlans::default(),
        });
        let mut services = self.services.lock().expect("sessions lock");
        Ok(services.entry(db.to_owned()).or_insert(service).clone())
    }
}

fn database_of(client: &(impl ClientInfo + ?Sized)) -> &str {
    client
        .metadata()
        .get(METADATA_DATABASE)
        .map(String::as_str)
        .filter(|db| !db.is_empty())
        .unwrap_or(DEFAULT_DATABASE)
}

fn unknown_database(db: &str, severity: &str) -> PgWireError {
    user_error(
        severity,
        "3D000",
        format!("database \"{db}\" does not exist"),
    )
}

fn user_error(severity: &str, code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message,
    )))
}

/// Sends each query to its connection's database, and makes its results cancellable.
#[derive(Debug)]
struct QueryRouter {
    sessions: Arc<Sessions>,
    parser: Arc<RoutingParser>,
    running: Arc<Running>,
    auth: Arc<PgAuth>,
}

#[async_trait]
impl SimpleQueryHandler for QueryRouter {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        auth::admitted(client)?;
        auth::check_copy_to_file(&self.auth, client, query)?;
        if let Some(response) = self.scoring_statement(client, query).await {
            return Ok(vec![response?]);
        }
        if let Some(response) = self.user_statement(client, query) {
            return Ok(vec![response?]);
        }
        let service = self.sessions.service(client)?;
        let query = rewrite_grafana_search_path(query);
        let logged = self.sessions.query.log().start(database_of(client), &query);
        let turn = self.sessions.query.turn().await;
        let control = self.running.start(client, logged, turn);
        let responses = self
            .simple_query(&service, client, &query)
            .await
            .inspect_err(|e| control.fail(e))?;
        Ok(responses
            .into_iter()
            .map(|response| control.watch(response))
            .collect())
    }
}

impl QueryRouter {
    /// The statements of one simple-protocol query, one response each.
    async fn simple_query<C>(
        &self,
        session: &Session,
        client: &mut C,
        query: &str,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.sessions.parser.parse(query).map_err(api_error)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        'statements: for statement in statements {
            if let Some(response) = settings::set(&statement, &session.context, client)
                .or_else(|| settings::show(&statement, client))
            {
                responses.push(response?);
                continue;
            }
            let context = settings::session_for(client, &session.context)?.into_owned();
            for hook in session.hooks_for(&statement) {
                if let Some(response) = hook.handle_simple_query(&statement, &context, client).await
                {
                    responses.push(response?);
                    continue 'statements;
                }
            }
            let insert = matches!(statement, sqlparser::ast::Statement::Insert(_));
            let plan = plan(client, &context, statement).await?;
            let frame = context
                .execute_logical_plan(plan)
                .await
                .map_err(api_error)?;
            if insert {
                responses.push(rows_inserted(frame).await?);
            } else {
                let options = FormatOptions::from_client_metadata(client.metadata());
                let response =
                    rows::encode_frame(frame, &Format::UnifiedText, Some(Arc::new(options)))
                        .await?;
                responses.push(Response::Query(response));
            }
        }
        Ok(responses)
    }

    /// Carries out `sql` if it creates, changes or drops a user. Logged without the
    /// password.
    fn user_statement(
        &self,
        client: &(impl ClientInfo + ?Sized),
        sql: &str,
    ) -> Option<PgWireResult<Response>> {
        let statement = UserStatement::parse(sql)?;
        let db = database_of(client);
        let result = match statement {
            Err(message) => {
                let logged = self
                    .sessions
                    .query
                    .log()
                    .start(db, "CREATE/ALTER/DROP USER ...");
                logged.finish(Err(message.clone()));
                Err(user_error("ERROR", "42601", message))
            }
            Ok(statement) => {
                let logged = self.sessions.query.log().start(db, &statement.redacted());
                let result = statement
                    .execute(&self.auth, client)
                    .map(|tag| Response::Execution(Tag::new(tag)));
                logged.finish(match &result {
                    Ok(_) => Ok(0),
                    Err(e) => Err(e.to_string()),
                });
                result
            }
        };
        Some(result)
    }

    /// Carries out `sql` if it is a scoring-rule statement (which DataFusion's parser does
    /// not know).
    async fn scoring_statement(
        &self,
        client: &(impl ClientInfo + ?Sized),
        sql: &str,
    ) -> Option<PgWireResult<Response>> {
        let statement = gannet_query::scoring::statement::parse(sql)?;
        let db = database_of(client);
        let logged = self.sessions.query.log().start(db, sql);
        let result = match statement {
            Err(message) => Err(user_error("ERROR", "42601", message)),
            Ok(statement) => match self.sessions.query.execute_scoring(db, statement).await {
                Ok(tag) => Ok(Response::Execution(Tag::new(tag))),
                Err(e) => Err(query_error(&e)),
            },
        };
        logged.finish(match &result {
            Ok(_) => Ok(0),
            Err(e) => Err(e.to_string()),
        });
        Some(result)
    }
}

/// A query engine error as PostgreSQL reports it.
fn query_error(e: &gannet_query::QueryError) -> PgWireError {
    use gannet_query::QueryError;
    match e {
        QueryError::UnknownDatabase(db) => unknown_database(db, "ERROR"),
        _ => user_error("ERROR", e.sqlstate(), e.message()),
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryRouter {
    type Statement = Statement;
    type QueryParser = RoutingParser;

    fn query_parser(&self) -> Arc<RoutingParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        // Rows stream as the client reads them; a portal is not suspended.
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        auth::admitted(client)?;
        auth::check_copy_to_file(&self.auth, client, &portal.statement.statement.0)?;
        if let Some(response) = self
            .scoring_statement(client, &portal.statement.statement.0)
            .await
        {
            return response;
        }
        if let Some(response) = self.user_statement(client, &portal.statement.statement.0) {
            return response;
        }
        let service = self.sessions.service(client)?;
        let logged = self
            .sessions
            .query
            .log()
            .start(database_of(client), &portal.statement.statement.0);
        let turn = self.sessions.query.turn().await;
        let control = self.running.start(client, logged, turn);
        let response = self
            .execute_portal(&service, client, portal)
            .await
            .inspect_err(|e| control.fail(e))?;
        Ok(control.watch(response))
    }
}

impl QueryRouter {
    /// Runs an extended-protocol portal: its statement, planned at Parse, with the values
    /// bound to its parameters.
    async fn execute_portal<C>(
        &self,
        session: &Session,
        client: &mut C,
        portal: &Portal<Statement>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, Some((statement, plan))) = &portal.statement.statement else {
            return Ok(Response::EmptyQuery);
        };
        if let Some(response) = settings::set(statement, &session.context, client)
            .or_else(|| settings::show(statement, client))
        {
            return response;
        }
        let context = settings::session_for(client, &session.context)?.into_owned();
        let parameters = parameters(session, portal, plan)?;
        for hook in session.hooks_for(statement) {
            if let Some(response) = hook
                .handle_extended_query(statement, plan, &parameters, &context, client)
                .await
            {
                return response;
            }
        }
        let options = Some(Arc::new(FormatOptions::from_client_metadata(
            client.metadata(),
        )));
        if let Some(rows) = session
            .constants
            .execute(plan, || settings::fingerprint(client), &context)
            .await
        {
            let rows = rows.map_err(api_error)?;
            let response = rows::encode_stream(rows, &portal.result_column_format, options)?;
            return Ok(Response::Query(response));
        }
        let plan = plan
            .clone()
            .replace_params_with_values(&parameters)
            .map_err(api_error)?;
        let frame = context
            .execute_logical_plan(plan)
            .await
            .map_err(api_error)?;
        if matches!(statement, sqlparser::ast::Statement::Insert(_)) {
            return rows_inserted(frame).await;
        }
        let response = rows::encode_frame(frame, &portal.result_column_format, options).await?;
        Ok(Response::Query(response))
    }
}

/// The values bound to a portal's parameters, decoded by the types the client gave at
/// Parse, else those the server described, and coerced to the types the plan infers.
fn parameters(
    session: &Session,
    portal: &Portal<Statement>,
    plan: &LogicalPlan,
) -> PgWireResult<datafusion::common::ParamValues> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Expr;
    use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters_with_server_types;

    let described = session
        .service
        .query_parser()
        .get_parameter_types(&portal.statement.statement)?;
    let mut inferred = plan.get_parameter_types().map_err(api_error)?;
    // A placeholder DataFusion cannot type from its context takes the type it is cast to.
    if inferred.values().any(Option::is_none) {
        let _ = plan.apply(|node| {
            for expr in node.expressions() {
                let _ = expr.apply(|e| {
                    if let Expr::Cast(cast) = e
                        && let Expr::Placeholder(placeholder) = cast.expr.as_ref()
                        && let Some(slot @ None) = inferred.get_mut(&placeholder.id)
                    {
                        *slot = Some(cast.field.data_type().clone());
                    }
                    Ok(TreeNodeRecursion::Continue)
                });
            }
            Ok(TreeNodeRecursion::Continue)
        });
    }
    let mut inferred: Vec<(u32, Option<datafusion::arrow::datatypes::DataType>)> = inferred
        .into_iter()
        .map(|(id, ty)| (id.trim_start_matches('$').parse().unwrap_or(u32::MAX), ty))
        .collect();
    inferred.sort_by_key(|(id, _)| *id);
    let inferred: Vec<_> = inferred.iter().map(|(_, ty)| ty.as_ref()).collect();
    let described: Vec<_> = described.iter().map(Some).collect();
    deserialize_parameters_with_server_types(portal, &inferred, &described)
}

/// Parses (and plans) extended-protocol statements in the connection's database.
#[derive(Debug)]
struct RoutingParser {
    sessions: Arc<Sessions>,
}

#[async_trait]
impl QueryParser for RoutingParser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        auth::admitted(client)?;
        if gannet_query::scoring::statement::parse(sql).is_some()
            || UserStatement::parse(sql).is_some()
        {
            // Carried out when executed (QueryRouter::scoring_statement).
            return Ok(Some((sql.to_owned(), None)));
        }
        let session = self.sessions.service(client)?;
        let sql = rewrite_grafana_search_path(sql);
        let mut statements = self.sessions.parser.parse(&sql).map_err(api_error)?;
        if statements.is_empty() {
            return Ok(None);
        }
        // One statement per Parse message, as datafusion-postgres does.
        let statement = statements.swap_remove(0);
        let query = statement.to_string();
        if settings::is_set(&statement) {
            // Carried out when executed.
            return Ok(Some((query, Some((statement, empty_plan())))));
        }
        let context = settings::session_for(client, &session.context)?.into_owned();
        for hook in session.hooks_for(&statement) {
            if let Some(plan) = hook
                .handle_extended_parse_query(&statement, &context, client)
                .await
            {
                return Ok(Some((query, Some((statement, plan?)))));
            }
        }
        let plan = plan(client, &context, statement.clone()).await?;
        Ok(Some((query, Some((statement, plan)))))
    }

    fn get_parameter_types(&self, stmt: &Statement) -> PgWireResult<Vec<Type>> {
        // Planning is done; the types come from the plan alone, whatever the database.
        self.any_parser()?.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.any_parser()?.get_result_schema(stmt, column_format)
    }
}

impl RoutingParser {
    fn any_parser(&self) -> PgWireResult<Arc<Parser>> {
        let services = self.sessions.services.lock().expect("sessions lock");
        match services.values().next() {
            Some(session) => Ok(session.service.query_parser()),
            None => Err(user_error(
                "ERROR",
                "26000",
                "no statement has been prepared".to_owned(),
            )),
        }
    }
}

/// The plan of a statement Gannet carries out itself, with no rows.
fn empty_plan() -> LogicalPlan {
    LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
        produce_one_row: false,
        schema: Arc::new(datafusion::common::DFSchema::empty()),
    })
}

fn api_error(e: impl std::error::Error + Send + Sync + 'static) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

/// The logical plan of `statement`, within the connection's `statement_timeout` (57014
/// beyond it, as the statement's execution gets).
async fn plan(
    client: &(impl ClientInfo + ?Sized),
    context: &SessionContext,
    statement: sqlparser::ast::Statement,
) -> PgWireResult<LogicalPlan> {
    let state = context.state();
    let planning = state.statement_to_plan(datafusion::sql::parser::Statement::Statement(
        Box::new(statement),
    ));
    let timeout = client
        .metadata()
        .get("statement_timeout_ms")
        .and_then(|ms| ms.parse().ok())
        .filter(|&ms: &u64| ms > 0)
        .map(std::time::Duration::from_millis);
    let planned = match timeout {
        None => planning.await,
        Some(timeout) => tokio::time::timeout(timeout, planning).await.map_err(|_| {
            user_error(
                "ERROR",
                "57014",
                "canceling statement due to statement timeout".to_owned(),
            )
        })?,
    };
    planned.map_err(api_error)
}

/// The response to an INSERT: its tag with the number of rows written.
async fn rows_inserted(frame: datafusion::dataframe::DataFrame) -> PgWireResult<Response> {
    use datafusion::arrow::array::{Array, UInt64Array};
    let batches = frame.collect().await.map_err(api_error)?;
    let rows = batches
        .first()
        .and_then(|batch| batch.column_by_name("count"))
        .and_then(|count| count.as_any().downcast_ref::<UInt64Array>())
        .filter(|count| !count.is_empty())
        .map_or(0, |count| count.value(0) as usize);
    Ok(Response::Execution(
        Tag::new("INSERT").with_oid(0).with_rows(rows),
    ))
}

/// Gives DataFusion's errors the SQLSTATEs PostgreSQL would use, so drivers and tools
/// recognise them (42601 syntax, 42P01 unknown table, 42703 unknown column, ...).
#[derive(Debug)]
struct SqlStateErrors;

impl ErrorHandler for SqlStateErrors {
    fn on_error<C>(&self, _client: &C, error: &mut PgWireError)
    where
        C: ClientInfo,
    {
        let PgWireError::ApiError(inner) = error else {
            return;
        };
        let (code, message) = if let Some(e) = inner.downcast_ref::<DataFusionError>() {
            (
                gannet_query::error::sqlstate(e),
                gannet_query::error::message(e),
            )
        } else if let Some(e) = inner.downcast_ref::<sqlparser::parser::ParserError>() {
            ("42601", e.to_string())
        } else {
            ("XX000", inner.to_string())
        };
        tracing::debug!(code, %message, "query failed");
        *error = user_error("ERROR", code, message);
    }
}
