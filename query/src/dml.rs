//! `INSERT` and `DELETE` on Gannet tables.
//!
//! `INSERT INTO t (...) VALUES (...)` (or `... SELECT`) writes through the same path as line
//! protocol: the rows become line protocol and go to [`Engine::write_lp_with`], so they are
//! validated, made durable in the WAL and deduplicated exactly as written points are. The
//! statement is all or nothing: one bad row rejects it.
//!
//! `DELETE FROM t WHERE ...` takes a time range and tag equalities (`host = 'a'`), the
//! predicates a tombstone can hold; it hides the rows at once and compaction removes them.

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, TimestampNanosecondType, UInt64Type,
};
use async_trait::async_trait;
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::datasource::sink::DataSink;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use gannet_storage::catalog::COLUMN_KIND_KEY;
use gannet_storage::lineproto::{Element, escape_into};
use gannet_storage::{DeletePredicate, Engine, Precision};

use crate::error::SqlError;
use crate::table::TimeRange;

/// Writes inserted rows as line protocol.
#[derive(Debug)]
pub struct LineProtocolSink {
    pub engine: Arc<Engine>,
    pub db: String,
    pub table: String,
    pub schema: SchemaRef,
}

impl DisplayAs for LineProtocolSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LineProtocolSink: table={}", self.table)
    }
}

#[async_trait]
impl DataSink for LineProtocolSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let mut body = String::new();
        let mut rows = 0;
        while let Some(batch) = data.next().await {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            to_line_protocol(&self.table, &self.schema, &batch, &mut body)?;
        }
        if rows == 0 {
            return Ok(0);
        }
        let engine = self.engine.clone();
        let db = self.db.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            engine.write_lp_with(&db, body.as_bytes(), Precision::Nanosecond, false)
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if let Some(error) = outcome.errors.first() {
            return Err(SqlError::new(
                "22023",
                format!(
                    "row {} of the INSERT was rejected: {}",
                    error.line_number, error.message
                ),
            )
            .into());
        }
        Ok(rows)
    }
}

/// Appends one line per row of `batch` (columns as in `schema`, the table's) to `out`.
fn to_line_protocol(
    table: &str,
    schema: &Schema,
    batch: &RecordBatch,
    out: &mut String,
) -> Result<()> {
    use std::fmt::Write as _;

    let mut tags: Vec<(&str, ArrayRef)> = Vec::new();
    let mut fields: Vec<(&str, &ArrayRef)> = Vec::new();
    let mut time = None;
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.metadata().get(COLUMN_KIND_KEY).map(String::as_str) {
            Some("tag") => tags.push((field.name(), cast(column, &DataType::Utf8)?)),
            Some("time") => {
                time = Some(cast(
                    column,
                    &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
                )?)
            }
            _ => fields.push((field.name(), column)),
        }
    }
    let Some(time) = time else {
        return plan_err!("table {table} has no time column");
    };
    let time = time.as_primitive::<TimestampNanosecondType>();
    for row in 0..batch.num_rows() {
        escape_into(out, table, Element::Measurement);
        for (name, values) in &tags {
            let values = values.as_string::<i32>();
            if values.is_null(row) || values.value(row).is_empty() {
                continue;
            }
            out.push(',');
            escape_into(out, name, Element::Key);
            out.push('=');
            escape_into(out, values.value(row), Element::Key);
        }
        let mut first = true;
        for (name, values) in &fields {
            if values.is_null(row) {
                continue;
            }
            out.push(if first { ' ' } else { ',' });
            first = false;
            escape_into(out, name, Element::Key);
            out.push('=');
            match values.data_type() {
                DataType::Float64 => {
                    let v = values.as_primitive::<Float64Type>().value(row);
                    if !v.is_finite() {
                        return Err(SqlError::new(
                            "22023",
                            format!("row {}: {name} is {v}, which cannot be stored", row + 1),
                        )
                        .into());
                    }
                    let _ = write!(out, "{v:?}");
                }
                DataType::Int64 => {
                    let _ = write!(out, "{}i", values.as_primitive::<Int64Type>().value(row));
                }
                DataType::UInt64 => {
                    let _ = write!(out, "{}u", values.as_primitive::<UInt64Type>().value(row));
                }
                DataType::Boolean => {
                    let _ = write!(out, "{}", values.as_boolean().value(row));
                }
                DataType::Utf8 => {
                    out.push('"');
                    escape_into(
                        out,
                        values.as_string::<i32>().value(row),
                        Element::StringValue,
                    );
                    out.push('"');
                }
                other => return exec_err!("column {name} has unsupported type {other}"),
            }
        }
        if first {
            return Err(SqlError::new(
                "23502",
                format!("row {}: a point needs at least one field value", row + 1),
            )
            .into());
        }
        if time.is_null(row) {
            return Err(
                SqlError::new("23502", format!("row {}: time must not be NULL", row + 1)).into(),
            );
        }
        let _ = writeln!(out, " {}", time.value(row));
    }
    Ok(())
}

/// What `DELETE ... WHERE <filters>` removes, as a tombstone's predicate.
pub fn delete_predicate(filters: &[Expr], schema: &Schema) -> Result<DeletePredicate> {
    let range = TimeRange::from_filters(filters);
    let mut predicate = DeletePredicate {
        min_time: range.min,
        max_time: range.max,
        tags: Vec::new(),
    };
    for filter in filters {
        collect_tags(filter, schema, &mut predicate.tags)?;
    }
    Ok(predicate)
}

fn collect_tags(expr: &Expr, schema: &Schema, tags: &mut Vec<(String, String)>) -> Result<()> {
    let unsupported = || {
        plan_err!(
            "DELETE supports conjunctions (AND) of time comparisons and tag equalities \
             (tag = 'value'); not: {expr}"
        )
    };
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return match expr {
            Expr::Between(b) if !b.negated && is_time(&b.expr) => Ok(()),
            _ => unsupported(),
        };
    };
    match op {
        Operator::And => {
            collect_tags(left, schema, tags)?;
            collect_tags(right, schema, tags)
        }
        Operator::Gt | Operator::GtEq | Operator::Lt | Operator::LtEq | Operator::Eq
            if is_time(left) || is_time(right) =>
        {
            Ok(())
        }
        _ => {
            let (column, value) = match (&**left, &**right) {
                (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => {
                    (c, v)
                }
                _ => return unsupported(),
            };
            let is_tag = schema
                .field_with_name(&column.name)
                .ok()
                .and_then(|f| f.metadata().get(COLUMN_KIND_KEY))
                .is_some_and(|kind| kind == "tag");
            if !is_tag {
                return plan_err!(
                    "DELETE can match tags and time only; {} is a field",
                    column.name
                );
            }
            let value = match value {
                ScalarValue::Utf8(Some(v))
                | ScalarValue::Utf8View(Some(v))
                | ScalarValue::LargeUtf8(Some(v)) => v.clone(),
                ScalarValue::Dictionary(_, inner) => match &**inner {
                    ScalarValue::Utf8(Some(v)) => v.clone(),
                    _ => return unsupported(),
                },
                _ => return unsupported(),
            };
            if *op != Operator::Eq {
                return unsupported();
            }
            tags.push((column.name.clone(), value));
            Ok(())
        }
    }
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "time")
}

/// Records a delete when executed; answers the number of rows it hid.
#[derive(Debug)]
pub struct DeleteExec {
    engine: Arc<Engine>,
    db: String,
    table: String,
    predicate: DeletePredicate,
    properties: Arc<PlanProperties>,
}

impl DeleteExec {
    pub fn new(engine: Arc<Engine>, db: &str, table: &str, predicate: DeletePredicate) -> Self {
        let schema = count_schema();
        DeleteExec {
            engine,
            db: db.to_owned(),
            table: table.to_owned(),
            predicate,
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(schema),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
        }
    }

    /// Deletes, and counts the rows deleted (those visible just before).
    fn run(engine: &Engine, db: &str, table: &str, predicate: DeletePredicate) -> Result<u64> {
        let external = |e: gannet_storage::Error| DataFusionError::External(Box::new(e));
        let mut count = 0;
        if let Some(snapshot) = engine.snapshot(db, table) {
            let all = snapshot.read_all().map_err(external)?;
            count = predicate.matches(&all).true_count() as u64;
        }
        engine.delete(db, table, predicate).map_err(external)?;
        Ok(count)
    }
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

impl DisplayAs for DeleteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeleteExec: table={} predicate={:?}",
            self.table, self.predicate
        )
    }
}

impl ExecutionPlan for DeleteExec {
    fn name(&self) -> &str {
        "DeleteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let (engine, db, table) = (self.engine.clone(), self.db.clone(), self.table.clone());
        let predicate = self.predicate.clone();
        let schema = count_schema();
        let batch_schema = schema.clone();
        let deleted = futures::stream::once(async move {
            let count =
                tokio::task::spawn_blocking(move || Self::run(&engine, &db, &table, predicate))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))??;
            Ok(RecordBatch::try_new(
                batch_schema,
                vec![Arc::new(UInt64Array::from(vec![count]))],
            )?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, deleted)))
    }
}
