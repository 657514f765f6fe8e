//! The `system` schema: Gannet's state as tables, read when queried.
//!
//! - `system.tables`: every table of every database, its columns, segments and buffered rows.
//! - `system.segments`: the Parquet segments: path, table, time window and range, rows, bytes.
//! - `system.queries`: the most recent queries, with their duration and outcome.
//! - `system.models`: the ONNX models, their inputs and outputs, and how often they ran.
//! - `system.scoring_rules`: the scoring rules of every database, how far each has scored.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use gannet_storage::Engine;

use crate::onnx::ModelRegistry;
use crate::scoring::ScoringState;

/// The name of the schema.
pub const SYSTEM_SCHEMA: &str = "system";

/// How many finished queries `system.queries` keeps.
const QUERY_LOG_LEN: usize = 1000;

/// The `system` schema of a session.
#[derive(Debug)]
pub struct SystemSchema {
    engine: Arc<Engine>,
    log: QueryLog,
    models: Arc<ModelRegistry>,
    scoring: Arc<ScoringState>,
}

impl SystemSchema {
    pub fn new(
        engine: Arc<Engine>,
        log: QueryLog,
        models: Arc<ModelRegistry>,
        scoring: Arc<ScoringState>,
    ) -> Self {
        SystemSchema {
            engine,
            log,
            models,
            scoring,
        }
    }
}

const TABLES: [&str; 5] = ["models", "queries", "scoring_rules", "segments", "tables"];

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| (*t).to_owned()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let which = match name {
            "tables" => Which::Tables,
            "segments" => Which::Segments,
            "queries" => Which::Queries,
            "models" => Which::Models,
            "scoring_rules" => Which::ScoringRules,
            _ => return Ok(None),
        };
        Ok(Some(Arc::new(SystemTable {
            which,
            schema: which.schema(),
            engine: self.engine.clone(),
            log: self.log.clone(),
            models: self.models.clone(),
            scoring: self.scoring.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}

#[derive(Debug, Clone, Copy)]
enum Which {
    Tables,
    Segments,
    Queries,
    Models,
    ScoringRules,
}

fn timestamp(name: &str) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Nanosecond, None), true)
}

impl Which {
    fn schema(self) -> SchemaRef {
        let text = |name| Field::new(name, DataType::Utf8, false);
        let int = |name| Field::new(name, DataType::Int64, false);
        Arc::new(Schema::new(match self {
            Which::Tables => vec![
                text("database"),
                text("table_name"),
                int("tags"),
                int("fields"),
                int("segments"),
                int("segment_rows"),
                int("segment_bytes"),
                int("tombstones"),
            ],
            Which::Segments => vec![
                text("database"),
                text("table_name"),
                text("path"),
                timestamp("window_start"),
                timestamp("min_time"),
                timestamp("max_time"),
                int("rows"),
                int("bytes"),
            ],
            Which::Queries => vec![
                timestamp("started"),
                text("database"),
                text("query"),
                Field::new("duration_ms", DataType::Float64, true),
                Field::new("rows", DataType::Int64, true),
                text("status"),
                Field::new("error", DataType::Utf8, true),
            ],
            Which::Models => vec![
                text("name"),
                text("path"),
                int("size_bytes"),
                text("inputs"),
                text("outputs"),
                timestamp("loaded_at"),
                int("calls"),
                int("rows_scored"),
            ],
            Which::ScoringRules => vec![
                text("database"),
                text("name"),
                text("table_name"),
                text("expression"),
                Field::new("condition", DataType::Utf8, true),
                Field::new("webhook", DataType::Utf8, true),
                timestamp("created_at"),
                int("scored_seq"),
                int("rows_scored"),
                int("alerts"),
                Field::new("last_error", DataType::Utf8, true),
            ],
        }))
    }
}

/// One system table, built from the engine's state (or the query log) when scanned.
#[derive(Debug)]
struct SystemTable {
    which: Which,
    schema: SchemaRef,
    engine: Arc<Engine>,
    log: QueryLog,
    models: Arc<ModelRegistry>,
    scoring: Arc<ScoringState>,
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns = match self.which {
            Which::Tables => self.tables(),
            Which::Segments => self.segments(),
            Which::Queries => self.log.columns(),
            Which::Models => self.models()?,
            Which::ScoringRules => self.scoring_rules(),
        };
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let exec = MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?;
        Ok(exec)
    }
}

impl SystemTable {
    fn tables(&self) -> Vec<ArrayRef> {
        let catalog = self.engine.catalog();
        let (mut db, mut name) = (StringBuilder::new(), StringBuilder::new());
        let mut ints: [Int64Builder; 6] = Default::default();
        for (db_name, database) in &catalog.databases {
            for (table_name, table) in &database.tables {
                db.append_value(db_name);
                name.append_value(table_name);
                let schema = table.schema();
                let kind = |k: &str| {
                    schema
                        .fields()
                        .iter()
                        .filter(|f| {
                            f.metadata()
                                .get(gannet_storage::catalog::COLUMN_KIND_KEY)
                                .is_some_and(|v| v == k)
                        })
                        .count() as i64
                };
                let values = [
                    kind("tag"),
                    kind("field"),
                    table.segments.len() as i64,
                    table.segments.iter().map(|s| s.rows as i64).sum(),
                    table.segments.iter().map(|s| s.bytes as i64).sum(),
                    table.tombstones.len() as i64,
                ];
                for (builder, value) in ints.iter_mut().zip(values) {
                    builder.append_value(value);
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(db.finish()), Arc::new(name.finish())];
        columns.extend(ints.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns
    }

    fn models(&self) -> Result<Vec<ArrayRef>> {
        let models = self.models.list()?;
        let mut text: [StringBuilder; 4] = Default::default();
        let mut loaded_at = TimestampNanosecondBuilder::new();
        let mut ints: [Int64Builder; 3] = Default::default();
        for model in &models {
            text[0].append_value(&model.name);
            text[1].append_value(model.path.display().to_string());
            text[2].append_value(model.describe_inputs());
            text[3].append_value(model.describe_outputs());
            loaded_at.append_value(
                model
                    .loaded_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64),
            );
            let (calls, rows) = model.usage();
            ints[0].append_value(model.size as i64);
            ints[1].append_value(calls as i64);
            ints[2].append_value(rows as i64);
        }
        let [name, path, inputs, outputs] = text.map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let [size, calls, rows] = ints.map(|mut b| Arc::new(b.finish()) as ArrayRef);
        Ok(vec![
            name,
            path,
            size,
            inputs,
            outputs,
            Arc::new(loaded_at.finish()),
            calls,
            rows,
        ])
    }

    fn scoring_rules(&self) -> Vec<ArrayRef> {
        let catalog = self.engine.catalog();
        let mut text: [StringBuilder; 7] = Default::default();
        let mut created = TimestampNanosecondBuilder::new();
        let mut ints: [Int64Builder; 3] = Default::default();
        for (db, database) in &catalog.databases {
            for rule in database.scoring_rules.values() {
                let stats = self.scoring.stats(db, &rule.name);
                let last_error = stats.last_error.lock().expect("stats lock").clone();
                text[0].append_value(db);
                text[1].append_value(&rule.name);
                text[2].append_value(&rule.table);
                text[3].append_value(&rule.expression);
                text[4].append_option(rule.condition.as_deref());
                text[5].append_option(rule.webhook.as_deref());
                text[6].append_option(last_error);
                created.append_value(rule.created_at);
                let scored = self.engine.scored(db, &rule.name).unwrap_or(rule.from_seq);
                ints[0].append_value(scored as i64);
                ints[1].append_value(stats.rows.load(std::sync::atomic::Ordering::Relaxed) as i64);
                ints[2]
                    .append_value(stats.alerts.load(std::sync::atomic::Ordering::Relaxed) as i64);
            }
        }
        let [db, name, table, expression, condition, webhook, error] =
            text.map(|mut b| Arc::new(b.finish()) as ArrayRef);
        let [scored, rows, alerts] = ints.map(|mut b| Arc::new(b.finish()) as ArrayRef);
        vec![
            db,
            name,
            table,
            expression,
            condition,
            webhook,
            Arc::new(created.finish()),
            scored,
            rows,
            alerts,
            error,
        ]
    }

    fn segments(&self) -> Vec<ArrayRef> {
        let catalog = self.engine.catalog();
        let mut text: [StringBuilder; 3] = Default::default();
        let mut times: [TimestampNanosecondBuilder; 3] = Default::default();
        let mut ints: [Int64Builder; 2] = Default::default();
        for (db_name, database) in &catalog.databases {
            for (table_name, table) in &database.tables {
                for segment in &table.segments {
                    text[0].append_value(db_name);
                    text[1].append_value(table_name);
                    text[2].append_value(&segment.path);
                    times[0].append_value(segment.window_start);
                    times[1].append_value(segment.min_time);
                    times[2].append_value(segment.max_time);
                    ints[0].append_value(segment.rows as i64);
                    ints[1].append_value(segment.bytes as i64);
                }
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::new();
        columns.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(times.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(ints.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns
    }
}

/// The most recent queries, shared by every session of a [`crate::QueryEngine`].
#[derive(Debug, Clone, Default)]
pub struct QueryLog {
    done: Arc<Mutex<VecDeque<QueryRecord>>>,
}

#[derive(Debug, Clone)]
struct QueryRecord {
    started: i64,
    database: String,
    query: String,
    duration_ms: f64,
    rows: Option<i64>,
    error: Option<String>,
}

/// A query in progress; [`RunningQuery::finish`] logs it.
#[derive(Debug)]
pub struct RunningQuery {
    log: QueryLog,
    started_at: Instant,
    started: i64,
    database: String,
    query: String,
}

impl QueryLog {
    /// Notes that a query starts now.
    pub fn start(&self, database: &str, query: &str) -> RunningQuery {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        RunningQuery {
            log: self.clone(),
            started_at: Instant::now(),
            started,
            database: database.to_owned(),
            query: redact_passwords(query),
        }
    }

    fn columns(&self) -> Vec<ArrayRef> {
        let done = self.done.lock().expect("query log lock");
        let mut started = TimestampNanosecondBuilder::new();
        let (mut db, mut query, mut status, mut error) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        let mut duration = arrow::array::Float64Builder::new();
        let mut rows = Int64Builder::new();
        for record in done.iter() {
            started.append_value(record.started);
            db.append_value(&record.database);
            query.append_value(&record.query);
            duration.append_value(record.duration_ms);
            rows.append_option(record.rows);
            status.append_value(if record.error.is_some() {
                "error"
            } else {
                "ok"
            });
            error.append_option(record.error.as_deref());
        }
        vec![
            Arc::new(started.finish()),
            Arc::new(db.finish()),
            Arc::new(query.finish()),
            Arc::new(duration.finish()),
            Arc::new(rows.finish()),
            Arc::new(status.finish()),
            Arc::new(error.finish()),
        ]
    }
}

impl RunningQuery {
    /// Logs the query as finished, with the rows it returned or the error it ended with.
    pub fn finish(self, outcome: Result<usize, String>) {
        let (rows, error) = match outcome {
            Ok(rows) => (Some(rows as i64), None),
            Err(e) => (None, Some(e)),
        };
        let record = QueryRecord {
            started: self.started,
            database: self.database,
            query: self.query,
            duration_ms: self.started_at.elapsed().as_secs_f64() * 1e3,
            rows,
            error,
        };
        let mut done = self.log.done.lock().expect("query log lock");
        if done.len() == QUERY_LOG_LEN {
            done.pop_front();
        }
        done.push_back(record);
    }
}

/// `sql` as it may be kept in the query log: when it mentions a password, every string
/// literal in it becomes `'***'`.
pub fn redact_passwords(sql: &str) -> String {
    if !sql.to_ascii_lowercase().contains("password") {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len());
    let mut in_string = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (false, '\'') => {
                in_string = true;
                out.push_str("'***");
            }
            // '' inside a literal is a quote, not its end.
            (true, '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
            }
            (true, '\'') => {
                in_string = false;
                out.push('\'');
            }
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_kept_in_the_query_log() {
        use super::redact_passwords;
        assert_eq!(
            redact_passwords("ALTER USER a WITH PASSWORD 'it''s secret'; SELECT 'x'"),
            "ALTER USER a WITH PASSWORD '***'; SELECT '***'"
        );
        assert_eq!(redact_passwords("SELECT 'x'"), "SELECT 'x'");
        assert_eq!(
            redact_passwords("create role r password 'unterminated"),
            "create role r password '***"
        );
    }
}
