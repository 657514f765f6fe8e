//! The Postgres wire protocol: pgwire, with datafusion-postgres for the query protocol and
//! datafusion-pg-catalog for `pg_catalog`.
//!
//! A connection's database name selects a Gannet database, as in PostgreSQL. Each database
//! gets one DataFusion session with `pg_catalog` installed, shared by its connections and
//! built on first use. What datafusion-postgres does not do, Gannet adds here: routing by
//! database, refusing unknown databases with 3D000, SQLSTATEs for DataFusion's errors, and
//! the `current_setting()` function that Grafana and drivers call.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::{DfSessionService, Parser};
use futures::Sink;
use gannet_query::QueryEngine;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionManager, ErrorHandler, METADATA_DATABASE,
    PgWireServerHandlers, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio_util::sync::CancellationToken;

/// The database a connection gets when it names none, and which always exists (empty until
/// written to), as PostgreSQL's `postgres` does: tools connect to it by default.
pub const DEFAULT_DATABASE: &str = "postgres";

/// The PostgreSQL version Gannet reports; clients pick their SQL dialect by it.
const SERVER_VERSION: &str = "16.6";
const SERVER_VERSION_NUM: &str = "160006";

type Statement = (
    String,
    Option<(
        sqlparser::ast::Statement,
        datafusion::logical_expr::LogicalPlan,
    )>,
);

/// All of the pgwire handlers of one server.
#[derive(Debug)]
pub struct PgHandlers {
    query: Arc<QueryRouter>,
    startup: Arc<Startup>,
    cancel: Arc<Canceller>,
}

impl PgHandlers {
    pub fn new(query: QueryEngine) -> PgHandlers {
        let sessions = Arc::new(Sessions {
            query,
            services: Mutex::new(HashMap::new()),
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
            }),
            startup: Arc::new(Startup {
                sessions,
                connections: connections.clone(),
            }),
            cancel: Arc::new(Canceller {
                planning: DefaultCancelHandler::new(connections),
                running,
            }),
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

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(SqlStateErrors)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// One DataFusion session (as a datafusion-postgres service) per database, built on first use.
struct Sessions {
    query: QueryEngine,
    services: Mutex<HashMap<String, Arc<DfSessionService>>>,
}

impl Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    fn exists(&self, db: &str) -> bool {
        db == DEFAULT_DATABASE || self.query.engine().catalog().database(db).is_some()
    }

    fn service(&self, client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Arc<DfSessionService>> {
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
        register_current_setting(&ctx);
        let service = Arc::new(DfSessionService::new(Arc::new(ctx)));
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

/// Accepts any user (trust authentication; see the hardening issue for passwords) and
/// refuses a database that does not exist with 3D000, as PostgreSQL does.
#[derive(Debug)]
struct Startup {
    sessions: Arc<Sessions>,
    connections: Arc<ConnectionManager>,
}

#[async_trait]
impl NoopStartupHandler for Startup {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.connections.clone())
    }

    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let db = database_of(client);
        if self.sessions.exists(db) {
            Ok(())
        } else {
            Err(unknown_database(db, "FATAL"))
        }
    }
}

/// Sends each query to its connection's database, and makes its results cancellable.
#[derive(Debug)]
struct QueryRouter {
    sessions: Arc<Sessions>,
    parser: Arc<RoutingParser>,
    running: Arc<Running>,
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
        let service = self.sessions.service(client)?;
        let query = rewrite_grafana_search_path(query);
        let control = self.running.start(client);
        let responses =
            <DfSessionService as SimpleQueryHandler>::do_query(&service, client, &query).await?;
        Ok(responses
            .into_iter()
            .map(|response| control.watch(response))
            .collect())
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
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let service = self.sessions.service(client)?;
        let control = self.running.start(client);
        let response = <DfSessionService as ExtendedQueryHandler>::do_query(
            &service, client, portal, max_rows,
        )
        .await?;
        Ok(control.watch(response))
    }
}

/// The statement running on each connection, by the (pid, secret key) pair that a cancel
/// request names. pgwire cancels a statement while it is planned; rows are computed while
/// they are sent, after that, so Gannet stops the row stream itself: on a cancel request,
/// or when the connection's `statement_timeout` passes. Either way the client gets 57014,
/// as from PostgreSQL, and the connection stays usable.
#[derive(Debug, Default)]
struct Running {
    next_id: std::sync::atomic::AtomicU64,
    by_connection: Mutex<HashMap<(i32, bytes::Bytes), (u64, CancellationToken)>>,
}

impl Running {
    fn start(self: &Arc<Self>, client: &(impl ClientInfo + ?Sized)) -> Arc<Control> {
        let (pid, secret) = client.pid_and_secret_key();
        let key = (pid, secret.to_bytes());
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        self.by_connection
            .lock()
            .expect("running lock")
            .insert(key.clone(), (id, token.clone()));
        let timeout = client
            .metadata()
            .get("statement_timeout_ms")
            .and_then(|ms| ms.parse().ok())
            .filter(|&ms: &u64| ms > 0)
            .map(|ms| tokio::time::Instant::now() + std::time::Duration::from_millis(ms));
        Arc::new(Control {
            running: self.clone(),
            key,
            id,
            token,
            deadline: timeout,
        })
    }

    fn cancel(&self, pid: i32, secret: &pgwire::messages::startup::SecretKey) {
        let key = (pid, secret.to_bytes());
        if let Some((_, token)) = self.by_connection.lock().expect("running lock").get(&key) {
            token.cancel();
        }
    }
}

/// One statement's cancellation: a token a cancel request fires, and a deadline.
#[derive(Debug)]
struct Control {
    running: Arc<Running>,
    key: (i32, bytes::Bytes),
    id: u64,
    token: CancellationToken,
    deadline: Option<tokio::time::Instant>,
}

impl Drop for Control {
    fn drop(&mut self) {
        let mut running = self.running.by_connection.lock().expect("running lock");
        if running.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            running.remove(&self.key);
        }
    }
}

impl Control {
    /// The response with its rows ending in 57014 once cancelled or past the deadline.
    fn watch(self: &Arc<Self>, response: Response) -> Response {
        let Response::Query(query) = response else {
            return response;
        };
        let control = self.clone();
        let tag = query.command_tag().to_owned();
        let mut rows = query.data_rows;
        let mut cancelled = Box::pin(control.token.clone().cancelled_owned());
        let mut timeout = control
            .deadline
            .map(|d| Box::pin(tokio::time::sleep_until(d)));
        let mut done = false;
        let rows = futures::stream::poll_fn(move |cx| {
            use std::task::Poll;
            let _keep = &control;
            if done {
                return Poll::Ready(None);
            }
            let message = if cancelled.as_mut().poll(cx).is_ready() {
                Some("canceling statement due to user request")
            } else if timeout
                .as_mut()
                .is_some_and(|t| t.as_mut().poll(cx).is_ready())
            {
                Some("canceling statement due to statement timeout")
            } else {
                None
            };
            if let Some(message) = message {
                done = true;
                return Poll::Ready(Some(Err(user_error("ERROR", "57014", message.to_owned()))));
            }
            rows.as_mut().poll_next(cx)
        });
        let mut watched = QueryResponse::new(query.row_schema, rows);
        watched.set_command_tag(&tag);
        Response::Query(watched)
    }
}

/// Cancels a connection's statement while it is planned (pgwire) or while its rows are
/// computed (Gannet).
#[derive(Debug)]
struct Canceller {
    planning: DefaultCancelHandler,
    running: Arc<Running>,
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.running.cancel(request.pid, &request.secret_key);
        self.planning.on_cancel_request(request).await;
    }
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
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let service = self.sessions.service(client)?;
        let parser: Arc<Parser> = service.query_parser();
        let sql = rewrite_grafana_search_path(sql);
        parser.parse_sql(client, &sql, types).await
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
            Some(service) => Ok(service.query_parser()),
            None => Err(user_error(
                "ERROR",
                "26000",
                "no statement has been prepared".to_owned(),
            )),
        }
    }
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

/// Grafana lists the tables of the schemas on `search_path` with a subquery that calls a
/// scalar function in FROM (`string_to_array(...) s`), which DataFusion cannot plan.
/// datafusion-pg-catalog 0.19 replaces that subquery with `''`, which empties Grafana's
/// table list. Gannet replaces it first with the same query written with `unnest`, which
/// DataFusion runs. Matching is by tokens, so spacing and case do not matter.
const GRAFANA_SEARCH_PATH: &str = r#"SELECT
        CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
    FROM
        generate_series(
            array_lower(string_to_array(current_setting('search_path'),','),1),
            array_upper(string_to_array(current_setting('search_path'),','),1)
        ) as i,
        string_to_array(current_setting('search_path'),',') s"#;
const GRAFANA_SEARCH_PATH_UNNEST: &str = r#"SELECT
        CASE WHEN trim(p) = '"$user"' THEN current_user ELSE trim(p) END
    FROM unnest(string_to_array(current_setting('search_path'), ',')) AS search_path(p)"#;

fn rewrite_grafana_search_path(sql: &str) -> Cow<'_, str> {
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer};

    if !sql.contains("$user") {
        return Cow::Borrowed(sql);
    }
    let tokenize = |sql: &str| Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize();
    let (Ok(tokens), Ok(pattern)) = (tokenize(sql), tokenize(GRAFANA_SEARCH_PATH)) else {
        return Cow::Borrowed(sql);
    };
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    let same = |a: &Token, b: &Token| match (a, b) {
        (Token::Word(a), Token::Word(b)) => a.value.eq_ignore_ascii_case(&b.value),
        (a, b) => a == b,
    };
    let pattern: Vec<&Token> = pattern.iter().filter(|t| significant(t)).collect();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut changed = false;
    while i < tokens.len() {
        // Match the pattern's significant tokens starting at i, skipping whitespace.
        let mut j = i;
        let mut matched = 0;
        while j < tokens.len() && matched < pattern.len() {
            if !significant(&tokens[j]) {
                j += 1;
            } else if same(&tokens[j], pattern[matched]) {
                j += 1;
                matched += 1;
            } else {
                break;
            }
        }
        if matched == pattern.len() && significant(&tokens[i]) {
            out.push_str(GRAFANA_SEARCH_PATH_UNNEST);
            changed = true;
            i = j;
        } else {
            out.push_str(&tokens[i].to_string());
            i += 1;
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(sql)
    }
}

/// `current_setting(name)`: the server settings clients ask for (Grafana's version probe and
/// table listing, drivers' start-up). Unknown names are an error, as in PostgreSQL.
fn register_current_setting(ctx: &SessionContext) {
    let function = |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let names = ColumnarValue::values_to_arrays(args)?;
        let names = names[0]
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Plan("current_setting takes a text argument".into()))?;
        let mut out = StringBuilder::with_capacity(names.len(), names.len() * 8);
        for name in names {
            match name {
                None => out.append_null(),
                Some(name) => match setting(name) {
                    Some(value) => out.append_value(value),
                    None => {
                        return Err(DataFusionError::Plan(format!(
                            "unrecognized configuration parameter \"{name}\""
                        )));
                    }
                },
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(ColumnarValue::Array(array))
    };
    ctx.register_udf(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(function),
    ));
}

fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "server_version" => SERVER_VERSION,
        "server_version_num" => SERVER_VERSION_NUM,
        "search_path" => "\"$user\", public",
        "timezone" => "UTC",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "client_encoding" | "server_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "integer_datetimes" => "on",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        "max_identifier_length" => "63",
        "extra_float_digits" => "1",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "off",
        "is_superuser" => "on",
        "application_name" => "",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_search_path_subquery_is_rewritten_and_nothing_else() {
        let grafana = format!("SELECT 1 WHERE x IN ({GRAFANA_SEARCH_PATH}) AND y = '$user'");
        assert_eq!(
            rewrite_grafana_search_path(&grafana),
            format!("SELECT 1 WHERE x IN ({GRAFANA_SEARCH_PATH_UNNEST}) AND y = '$user'")
        );
        let spaced = grafana.replace("\n", " ").replace("( ", "(");
        assert!(matches!(
            rewrite_grafana_search_path(&spaced),
            Cow::Owned(_)
        ));
        for untouched in ["SELECT user", "SELECT '$user' AS user", "SELECT 1"] {
            assert!(matches!(
                rewrite_grafana_search_path(untouched),
                Cow::Borrowed(_)
            ));
        }
    }

    #[test]
    fn settings_clients_ask_for() {
        assert_eq!(setting("server_version_num"), Some(SERVER_VERSION_NUM));
        assert_eq!(setting("TimeZone"), Some("UTC"));
        assert_eq!(setting("no_such_setting"), None);
    }
}
