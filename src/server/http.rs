//! The HTTP API: InfluxDB-compatible line-protocol writes (v1, v2 and v3 paths), SQL queries,
//! liveness and Prometheus metrics. Paths, parameters and error shapes follow InfluxDB 3.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt as _;
use gannet_query::{Access, QueryEngine, QueryError};
use gannet_storage::{Engine, Precision, WriteOutcome};
use serde::Deserialize;
use serde_json::json;

use super::metrics::Metrics;
use crate::auth::{AuthStore, Scope};

mod body;

/// What the HTTP handlers share.
#[derive(Debug)]
pub struct HttpState {
    pub engine: Arc<Engine>,
    pub query: QueryEngine,
    pub metrics: Arc<Metrics>,
    /// The largest request body accepted, compressed or not (413 beyond it).
    pub max_body_bytes: usize,
    pub auth: HttpAuth,
    /// Write bodies are read into these.
    pub bodies: Arc<gannet_storage::pool::BufferPool>,
}

/// Who may use the HTTP API: holders of tokens, once any token exists (or always, off
/// loopback).
#[derive(Debug)]
pub struct HttpAuth {
    store: Arc<AuthStore>,
    always: bool,
}

impl HttpAuth {
    pub fn new(store: Arc<AuthStore>, always: bool) -> HttpAuth {
        HttpAuth { store, always }
    }
}

/// What a request needs its token to allow; `None` for liveness checks, open to all.
fn needed_scope(method: &Method, path: &str) -> Option<Scope> {
    match path {
        "/health" | "/ping" => None,
        "/api/v3/write_lp" | "/api/v2/write" | "/write" => Some(Scope::Write),
        _ if path.starts_with("/api/v1/models") && method != Method::GET => Some(Scope::Admin),
        _ => Some(Scope::Read),
    }
}

/// The token a request presents: `Authorization: Bearer T` or `Token T` (InfluxDB 2 and 3
/// clients), `Basic` with the token as the password, or InfluxDB 1's `p=T` parameter.
fn presented_token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?.trim();
        let (scheme, credentials) = value.split_once(' ')?;
        let credentials = credentials.trim();
        return match scheme.to_ascii_lowercase().as_str() {
            "bearer" | "token" => Some(credentials.to_owned()),
            "basic" => {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(credentials)
                    .ok()?;
                let decoded = String::from_utf8(decoded).ok()?;
                let (_user, password) = decoded.split_once(':')?;
                Some(password.to_owned())
            }
            _ => None,
        };
    }
    let params =
        Query::<std::collections::HashMap<String, String>>::try_from_uri(request.uri()).ok()?;
    params.0.get("p").cloned()
}

/// Refuses a request without a token (401) or whose token does not allow it (403).
async fn authorize(State(state): State<Arc<HttpState>>, request: Request, next: Next) -> Response {
    let Some(needed) = needed_scope(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let auth = &state.auth;
    let users = auth.store.current();
    if !auth.always && users.tokens.is_empty() {
        return next.run(request).await;
    }
    let refused = |status: StatusCode, message: &str| {
        state.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        let mut response = ApiError {
            status,
            message: message.to_owned(),
        }
        .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gannet\""),
            );
        }
        response
    };
    let Some(presented) = presented_token(&request) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "authentication required: send an API token as 'Authorization: Bearer <token>'",
        );
    };
    match users.token(&presented) {
        None => refused(StatusCode::UNAUTHORIZED, "invalid token"),
        Some(token) if !token.scope.allows(needed) => refused(
            StatusCode::FORBIDDEN,
            &format!(
                "token \"{}\" is {} only; this needs a {needed} token",
                token.name, token.scope
            ),
        ),
        Some(token) => {
            let scope = token.scope;
            let mut request = request;
            request.extensions_mut().insert(scope);
            next.run(request).await
        }
    }
}

pub fn router(state: Arc<HttpState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/api/v3/write_lp", post(write_v3))
        .route("/api/v2/write", post(write_v1_v2))
        .route("/write", post(write_v1_v2))
        .route("/api/v3/query_sql", get(query_get).post(query_post))
        .route("/health", get(health))
        .route("/ping", get(ping).head(ping))
        .route("/metrics", get(metrics))
        .merge(super::models::routes())
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// An error response in InfluxDB 3's JSON shape: `{"error": "..."}` (plus `data` for lines).
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        // Unavailable for now (a full write buffer): clients back off and retry.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[derive(Debug, Deserialize)]
struct V3WriteParams {
    db: Option<String>,
    precision: Option<String>,
    accept_partial: Option<bool>,
}

/// The v1 (`db`) and v2 (`bucket`) write parameters; `rp` and `org` are ignored.
#[derive(Debug, Deserialize)]
struct InfluxWriteParams {
    db: Option<String>,
    bucket: Option<String>,
    precision: Option<String>,
}

async fn write_v3(
    State(state): State<Arc<HttpState>>,
    Query(params): Query<V3WriteParams>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let db = required(params.db, "db")?;
    let precision = precision(params.precision.as_deref(), Precision::Auto)?;
    write(
        state,
        db,
        precision,
        params.accept_partial.unwrap_or(true),
        &headers,
        body,
    )
    .await
}

/// InfluxDB 1 (`/write?db=`) and 2 (`/api/v2/write?bucket=`) writes: nanoseconds unless told.
async fn write_v1_v2(
    State(state): State<Arc<HttpState>>,
    Query(params): Query<InfluxWriteParams>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let db = params.bucket.or(params.db);
    let db = required(db, "db' or 'bucket")?;
    let precision = precision(params.precision.as_deref(), Precision::Nanosecond)?;
    write(state, db, precision, true, &headers, body).await
}

fn required(value: Option<String>, name: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("missing query parameter '{name}'")))
}

fn precision(value: Option<&str>, default: Precision) -> Result<Precision, ApiError> {
    match value {
        None | Some("") => Ok(default),
        Some(p) => p.parse().map_err(ApiError::bad_request),
    }
}

/// Writes one body: 204 once durable; 400 with the rejected lines otherwise.
async fn write(
    state: Arc<HttpState>,
    db: String,
    precision: Precision,
    accept_partial: bool,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    state.metrics.write_requests.fetch_add(1, Ordering::Relaxed);
    let body = body::read(body, headers, state.max_body_bytes, &state.bodies).await?;
    state
        .metrics
        .write_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    // Parsing is CPU work and the WAL wait blocks: keep both off the async workers.
    let engine = state.engine.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        engine.write_lp_with(&db, &body, precision, accept_partial)
    })
    .await
    .map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("write task failed: {e}"),
    })?;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            state.metrics.write_errors.fetch_add(1, Ordering::Relaxed);
            return Err(storage_error(e));
        }
    };
    state
        .metrics
        .rows_written
        .fetch_add(outcome.rows as u64, Ordering::Relaxed);
    state
        .metrics
        .lines_rejected
        .fetch_add(outcome.errors.len() as u64, Ordering::Relaxed);
    if outcome.errors.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(rejected_lines(&outcome))
}

/// A rejected line as it is echoed back: its first kilobyte at most.
fn shortened(line: &str) -> String {
    const SHOWN: usize = 1024;
    if line.len() <= SHOWN {
        return line.to_owned();
    }
    let mut end = SHOWN;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &line[..end], line.len())
}

/// The 400 answer for a write with rejected lines, in InfluxDB 3's shape.
fn rejected_lines(outcome: &WriteOutcome) -> Response {
    let message = if outcome.rows > 0 {
        "partial write of line protocol occurred"
    } else {
        "parsing failed for write_lp endpoint"
    };
    let data: Vec<_> = outcome
        .errors
        .iter()
        .map(|e| {
            json!({
                "original_line": shortened(&e.original_line),
                "line_number": e.line_number,
                "error_message": e.message,
            })
        })
        .collect();
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({ "error": message, "data": data })),
    )
        .into_response()
}

fn storage_error(e: gannet_storage::Error) -> ApiError {
    use gannet_storage::Error;
    let status = match &e {
        Error::Catalog(gannet_storage::catalog::CatalogError::InvalidName { .. }) => {
            StatusCode::BAD_REQUEST
        }
        Error::Closed => StatusCode::SERVICE_UNAVAILABLE,
        Error::BufferFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ if is_disk_full(&e) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "write failed");
    }
    ApiError {
        status,
        message: e.to_string(),
    }
}

/// Whether a storage error comes from a full disk (or quota): `507 Insufficient Storage`.
fn is_disk_full(e: &gannet_storage::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        source = error.source();
    }
    false
}

#[derive(Debug, Default, Deserialize)]
struct QueryParams {
    db: Option<String>,
    q: Option<String>,
    format: Option<String>,
}

async fn query_get(
    State(state): State<Arc<HttpState>>,
    scope: Option<Extension<Scope>>,
    Query(params): Query<QueryParams>,
) -> Result<Response, ApiError> {
    query(state, params, access(scope)).await
}

/// What a query may do: anything without authentication or with an admin token; only read
/// with a read token.
fn access(scope: Option<Extension<Scope>>) -> Access {
    match scope {
        Some(Extension(scope)) if scope != Scope::Admin => Access::ReadOnly,
        _ => Access::ReadWrite,
    }
}

/// POST takes its parameters from the query string or a JSON body (`{"db", "q", "format"}`).
async fn query_post(
    State(state): State<Arc<HttpState>>,
    scope: Option<Extension<Scope>>,
    Query(mut params): Query<QueryParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || (!body.is_empty() && params.q.is_none()) {
        let from_body: QueryParams = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        params.db = params.db.or(from_body.db);
        params.q = params.q.or(from_body.q);
        params.format = params.format.or(from_body.format);
    }
    query(state, params, access(scope)).await
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Json,
    JsonLines,
    Csv,
    Pretty,
    Parquet,
}

impl Format {
    fn parse(s: Option<&str>) -> Result<Format, ApiError> {
        Ok(match s.unwrap_or("json") {
            "json" => Format::Json,
            "jsonl" => Format::JsonLines,
            "csv" => Format::Csv,
            "pretty" => Format::Pretty,
            "parquet" => Format::Parquet,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown format '{other}': expected json, jsonl, csv, pretty or parquet"
                )));
            }
        })
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::JsonLines => "application/jsonl",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Pretty => "text/plain; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// A query; `access` is read-only for a read token (only admin tokens may write with SQL).
/// The rows are streamed as they are computed, batch by batch: a result of millions of rows
/// is never held whole (`pretty`, which needs every row to size its columns, excepted). An
/// error before the first batch is a 4xx answer; a later one cuts the response short.
async fn query(
    state: Arc<HttpState>,
    params: QueryParams,
    access: Access,
) -> Result<Response, ApiError> {
    let db = required(params.db, "db")?;
    let sql = required(params.q, "q")?;
    let format = Format::parse(params.format.as_deref())?;
    let started = Instant::now();
    let failed = |state: &HttpState, e: QueryError| {
        state.metrics.query_done(started.elapsed(), false);
        query_error(e)
    };
    let mut rows = match state.query.sql_stream(&db, &sql, access).await {
        Ok(rows) => rows,
        Err(e) => return Err(failed(&state, e)),
    };
    // Most errors show up as the first batch is computed: answer those with a status.
    let first = match rows.next().await {
        Some(Err(e)) => return Err(failed(&state, e)),
        first => first.map(|batch| batch.expect("errors answered above")),
    };
    let mut encoder = Encoder::new(format);
    let head = match first.as_ref().map(|batch| encoder.write(batch)).transpose() {
        Ok(head) => head.unwrap_or_default(),
        Err(e) => {
            state.metrics.query_done(started.elapsed(), false);
            return Err(encoding_failed(e));
        }
    };
    let more = first.is_some();
    let body = futures::stream::unfold(
        Some((rows, encoder, state, more)),
        move |progress| async move {
            let (mut rows, mut encoder, state, more) = progress?;
            loop {
                let next = if more { rows.next().await } else { None };
                let chunk = match next {
                    Some(Ok(batch)) => encoder.write(&batch),
                    Some(Err(e)) => {
                        state.metrics.query_done(started.elapsed(), false);
                        tracing::warn!(error = %e, "a query failed after its first rows were sent");
                        return Some((Err(BodyError::from(e.message())), None));
                    }
                    None => {
                        state.metrics.query_done(started.elapsed(), true);
                        let last = encoder.finish().map_err(|e| BodyError::from(e.to_string()));
                        return Some((last.map(Bytes::from), None));
                    }
                };
                match chunk {
                    Ok(chunk) if chunk.is_empty() => continue,
                    Ok(chunk) => {
                        return Some((Ok(Bytes::from(chunk)), Some((rows, encoder, state, true))));
                    }
                    Err(e) => return Some((Err(BodyError::from(e.to_string())), None)),
                }
            }
        },
    );
    let body =
        futures::stream::once(async move { Ok::<_, BodyError>(Bytes::from(head)) }).chain(body);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        )],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

type BodyError = Box<dyn std::error::Error + Send + Sync>;

fn query_error(e: QueryError) -> ApiError {
    match e {
        QueryError::UnknownDatabase(_) => ApiError {
            status: StatusCode::NOT_FOUND,
            message: e.to_string(),
        },
        QueryError::DataFusion(e) if gannet_query::error::sqlstate(&e) == "42501" => ApiError {
            status: StatusCode::FORBIDDEN,
            message: gannet_query::error::message(&e),
        },
        QueryError::DataFusion(e) => ApiError::bad_request(gannet_query::error::message(&e)),
        QueryError::DatabaseExists(_) => ApiError {
            status: StatusCode::CONFLICT,
            message: e.to_string(),
        },
        QueryError::Storage(e) => storage_error(e),
    }
}

fn encoding_failed(e: BodyError) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("encoding the result failed: {e}"),
    }
}

/// Encodes a result in one format, batch by batch: each `write` returns the bytes ready to
/// send, `finish` the rest.
enum Encoder {
    Json(arrow::json::ArrayWriter<Vec<u8>>, bool),
    JsonLines(arrow::json::LineDelimitedWriter<Vec<u8>>),
    Csv { header: bool },
    Pretty(Vec<RecordBatch>),
    Parquet(Option<parquet::arrow::ArrowWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: Format) -> Encoder {
        match format {
            Format::Json => Encoder::Json(arrow::json::ArrayWriter::new(Vec::new()), false),
            Format::JsonLines => {
                Encoder::JsonLines(arrow::json::LineDelimitedWriter::new(Vec::new()))
            }
            Format::Csv => Encoder::Csv { header: true },
            Format::Pretty => Encoder::Pretty(Vec::new()),
            Format::Parquet => Encoder::Parquet(None),
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, BodyError> {
        Ok(match self {
            Encoder::Json(writer, wrote) => {
                writer.write(batch)?;
                *wrote |= batch.num_rows() > 0;
                std::mem::take(writer.get_mut())
            }
            Encoder::JsonLines(writer) => {
                writer.write(batch)?;
                std::mem::take(writer.get_mut())
            }
            Encoder::Csv { header } => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .build(Vec::new());
                writer.write(batch)?;
                *header = false;
                writer.into_inner()
            }
            Encoder::Pretty(batches) => {
                batches.push(batch.clone());
                Vec::new()
            }
            Encoder::Parquet(writer) => {
                let writer = match writer {
                    Some(writer) => writer,
                    None => writer.insert(parquet::arrow::ArrowWriter::try_new(
                        Vec::new(),
                        batch.schema(),
                        None,
                    )?),
                };
                writer.write(batch)?;
                std::mem::take(writer.inner_mut())
            }
        })
    }

    fn finish(&mut self) -> Result<Vec<u8>, BodyError> {
        Ok(match self {
            Encoder::Json(writer, wrote) => {
                if !*wrote {
                    return Ok(b"[]".to_vec());
                }
                writer.finish()?;
                std::mem::take(writer.get_mut())
            }
            Encoder::JsonLines(writer) => {
                writer.finish()?;
                std::mem::take(writer.get_mut())
            }
            Encoder::Csv { .. } => Vec::new(),
            Encoder::Pretty(batches) => {
                let table = arrow::util::pretty::pretty_format_batches(batches)?;
                format!("{table}\n").into_bytes()
            }
            Encoder::Parquet(writer) => match writer.take() {
                Some(writer) => writer.into_inner()?,
                None => Vec::new(),
            },
        })
    }
}

async fn health() -> &'static str {
    "OK"
}

/// InfluxDB's ping: 204 with the version headers its clients look for.
async fn ping() -> Response {
    let version = HeaderValue::from_static(env!("CARGO_PKG_VERSION"));
    (
        StatusCode::NO_CONTENT,
        [
            ("x-influxdb-version", version.clone()),
            ("x-gannet-version", version),
        ],
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(&state.engine, &state.query),
    )
        .into_response()
}
