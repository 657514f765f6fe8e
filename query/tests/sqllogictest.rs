//! Runs the SQL behaviour tests in `tests/slt/*.slt` (sqllogictest format), one test per
//! file, each against a fresh engine in a temporary directory.
//!
//! Besides SQL, a `statement ok` record can hold one of the harness's commands, which set up
//! what SQL cannot:
//!
//! - `write_lp [ns|us|ms|s]` and line protocol on the following lines: writes them to the
//!   current database (precision `s` when not given); any rejected line fails the record.
//! - `flush`: moves the write buffer into Parquet segments.
//! - `compact`: compacts the segments.
//! - `use <database>`: the database the following records run in (`db` to start with).
//!
//! `GANNET_SLT_COMPLETE=1 cargo nextest run -p gannet-query --test sqllogictest` rewrites the
//! files with the results the engine gives: read the diff before committing it.
//!
//! Values print as PostgreSQL's text format would, mostly: NULL as `NULL`, an empty string
//! as `(empty)`, timestamps as `2026-11-22T10:00:00`, floats as Rust prints them. The
//! engine's directory in a value (a plan's file paths) prints as `<data>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use gannet_query::QueryEngine;
use gannet_storage::{Engine, EngineConfig, Precision};
use sqllogictest::harness::{Arguments, Failed, Trial};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

fn main() {
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", root.display());
    let trials = files
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            Trial::test(name, move || run_file(&path))
        })
        .collect();
    sqllogictest::harness::run(&args, trials).exit();
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let engine = Engine::open(EngineConfig::test_config(dir.path()))?;
        let query = QueryEngine::new(engine.clone());
        let data_dir = dir
            .path()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned();
        let make = move || {
            let (engine, query, data_dir) = (engine.clone(), query.clone(), data_dir.clone());
            async move {
                Ok::<_, HarnessError>(Gannet {
                    engine,
                    query,
                    db: "db".to_owned(),
                    data_dir,
                })
            }
        };
        let mut runner = Runner::new(make);
        runner.with_validator(validate);
        if std::env::var_os("GANNET_SLT_COMPLETE").is_some() {
            runner
                .update_test_file(
                    path,
                    " ",
                    validate,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .map_err(|e| Failed::from(e.to_string()))?;
        } else {
            runner
                .run_file_async(path)
                .await
                .map_err(|e| Failed::from(e.display(true).to_string()))?;
        }
        drop(dir);
        Ok(())
    })
}

/// Compares rows as the file shows them: values joined by a space, runs of whitespace as
/// one (a plan's continuation lines have no first column).
fn validate(
    normalizer: sqllogictest::Normalizer,
    actual: &[Vec<String>],
    expected: &[String],
) -> bool {
    actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(row, line)| normalizer(&row.join(" ")) == normalizer(line))
}

/// A connection: the shared engine and the database it is in.
struct Gannet {
    engine: Arc<Engine>,
    query: QueryEngine,
    db: String,
    /// The engine's directory (without its leading `/`, as plans show paths), which
    /// results show as `<data>`: it changes from run to run.
    data_dir: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct HarnessError {
    sqlstate: Option<&'static str>,
    message: String,
}

impl HarnessError {
    fn new(message: impl ToString) -> HarnessError {
        HarnessError {
            sqlstate: None,
            message: message.to_string(),
        }
    }
}

impl From<gannet_storage::Error> for HarnessError {
    fn from(e: gannet_storage::Error) -> Self {
        HarnessError::new(e)
    }
}

#[async_trait]
impl AsyncDB for Gannet {
    type Error = HarnessError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, HarnessError> {
        let trimmed = sql.trim();
        let (first, rest) = trimmed.split_once('\n').unwrap_or((trimmed, ""));
        let words: Vec<&str> = first.split_whitespace().collect();
        match words.as_slice() {
            ["write_lp", precision @ ..] => {
                let precision = match precision {
                    [] => Precision::Second,
                    [p] => p.parse::<Precision>().map_err(HarnessError::new)?,
                    _ => return Err(HarnessError::new("write_lp takes one precision")),
                };
                let outcome = self.engine.write_lp(&self.db, rest.as_bytes(), precision)?;
                if let Some(rejected) = outcome.errors.first() {
                    return Err(HarnessError::new(format!("rejected: {rejected}")));
                }
                return Ok(DBOutput::StatementComplete(outcome.rows as u64));
            }
            ["flush"] => {
                self.engine.flush()?;
                return Ok(DBOutput::StatementComplete(0));
            }
            ["compact"] => {
                let compacted = self.engine.compact()?;
                return Ok(DBOutput::StatementComplete(compacted as u64));
            }
            ["use", db] => {
                self.db = db.to_string();
                return Ok(DBOutput::StatementComplete(0));
            }
            _ => {}
        }
        let batches = self
            .query
            .sql(&self.db, sql)
            .await
            .map_err(|e| HarnessError {
                sqlstate: Some(e.sqlstate()),
                message: e.message(),
            })?;
        let mut output = rows(&batches)?;
        if let DBOutput::Rows { rows, .. } = &mut output {
            for value in rows.iter_mut().flatten() {
                if value.contains(&self.data_dir) {
                    *value = value.replace(&self.data_dir, "<data>");
                }
            }
        }
        Ok(output)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "gannet"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await
    }

    fn error_sql_state(error: &HarnessError) -> Option<String> {
        error.sqlstate.map(str::to_owned)
    }
}

fn rows(batches: &[RecordBatch]) -> Result<DBOutput<DefaultColumnType>, HarnessError> {
    let Some(first) = batches.first() else {
        return Ok(DBOutput::StatementComplete(0));
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect();
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(HarnessError::new)?;
        for row in 0..batch.num_rows() {
            let values: Vec<String> = formatters
                .iter()
                .zip(batch.columns())
                .map(|(format, column)| {
                    let text = format.value(row).to_string().trim_end().to_owned();
                    if text.is_empty() && column.is_valid(row) {
                        "(empty)".to_owned()
                    } else {
                        text
                    }
                })
                .collect();
            // A value of several lines (a plan) is a row per line, as the file shows it.
            let height = values.iter().map(|v| v.lines().count()).max().unwrap_or(1);
            for line in 0..height.max(1) {
                rows.push(
                    values
                        .iter()
                        .map(|v| v.lines().nth(line).unwrap_or("").to_owned())
                        .collect(),
                );
            }
        }
    }
    Ok(DBOutput::Rows { types, rows })
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
            DefaultColumnType::FloatingPoint
        }
        DataType::Dictionary(_, value) => column_type(value),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}
