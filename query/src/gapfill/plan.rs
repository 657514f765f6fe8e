//! The logical gap-filling node and its physical planning.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use async_trait::async_trait;
use datafusion::common::{DFSchema, DFSchemaRef, ScalarValue, plan_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::exec::{GapFillExec, Range};
use super::unalias;

/// How a filled column gets values for the rows gap filling adds (and for NULL aggregates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FillStrategy {
    /// The last non-NULL value of the series before the row.
    Locf,
    /// Linear in time between the non-NULL values either side; NULL before the first and
    /// after the last.
    Interpolate,
}

impl FillStrategy {
    fn name(self) -> &'static str {
        match self {
            FillStrategy::Locf => "locf",
            FillStrategy::Interpolate => "interpolate",
        }
    }
}

/// One end of the range to fill: a constant expression, inclusive or not.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub struct Bound {
    pub expr: Expr,
    pub inclusive: bool,
}

/// A filled copy of an input column, added to the output as `name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub struct Fill {
    pub column: usize,
    pub strategy: FillStrategy,
    pub name: String,
}

/// Fills the gaps in an aggregate grouped by a time bucket: for every series (the other
/// group columns) one row per bucket from the lower bound (or the series' first bucket) to
/// the upper bound. The output is the input's columns, then one per [`Fill`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GapFill {
    pub input: Arc<LogicalPlan>,
    /// The bucket column of the input.
    pub time: usize,
    /// The columns that tell series apart.
    pub series: Vec<usize>,
    pub stride: Expr,
    pub origin: Expr,
    pub lower: Option<Bound>,
    pub upper: Bound,
    pub fills: Vec<Fill>,
    schema: DFSchemaRef,
}

impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let key = |g: &GapFill| {
            (
                g.input.clone(),
                g.time,
                g.series.clone(),
                g.stride.clone(),
                g.origin.clone(),
                g.lower.clone(),
                g.upper.clone(),
                g.fills.clone(),
            )
        };
        key(self).partial_cmp(&key(other))
    }
}

impl GapFill {
    #[allow(clippy::too_many_arguments)]
    pub fn try_new(
        input: Arc<LogicalPlan>,
        time: usize,
        series: Vec<usize>,
        stride: Expr,
        origin: Expr,
        lower: Option<Bound>,
        upper: Bound,
        fills: Vec<Fill>,
    ) -> Result<GapFill> {
        let input_schema = input.schema();
        // Added rows have no aggregates: those columns are nullable whatever the input.
        let mut fields: Vec<_> = input_schema
            .iter()
            .enumerate()
            .map(|(i, (qualifier, field))| {
                let field = if i == time || series.contains(&i) || field.is_nullable() {
                    field.clone()
                } else {
                    Arc::new(field.as_ref().clone().with_nullable(true))
                };
                (qualifier.cloned(), field)
            })
            .collect();
        for fill in &fills {
            let source = input_schema.field(fill.column);
            fields.push((
                None,
                Arc::new(Field::new(&fill.name, source.data_type().clone(), true)),
            ));
        }
        let schema = DFSchema::new_with_metadata(fields, input_schema.metadata().clone())?;
        Ok(GapFill {
            input,
            time,
            series,
            stride,
            origin,
            lower,
            upper,
            fills,
            schema: Arc::new(schema),
        })
    }

    /// Has the node fill a copy of `argument` (an aggregate of the input) with `strategy`,
    /// as the column `name`.
    pub fn add_fill(&mut self, argument: &Expr, strategy: FillStrategy, name: &str) -> Result<()> {
        if self.fills.iter().any(|f| f.name == name) {
            return Ok(());
        }
        let what = strategy.name();
        let Expr::Column(column) = argument else {
            return plan_err!("{what}() takes an aggregate, as in {what}(avg(x)), not {argument}");
        };
        let Some(index) = self.input.schema().maybe_index_of_column(column) else {
            return plan_err!(
                "{what}() takes an aggregate of the query, as in {what}(avg(x)); {column} is not one"
            );
        };
        if index == self.time || self.series.contains(&index) {
            return plan_err!(
                "{what}() fills aggregates; {column} is a GROUP BY column, which gap filling \
                 sets itself"
            );
        }
        if strategy == FillStrategy::Interpolate {
            let data_type = self.input.schema().field(index).data_type();
            if !data_type.is_numeric() {
                return plan_err!("interpolate() works on numbers; {column} is {data_type}");
            }
        }
        self.fills.push(Fill {
            column: index,
            strategy,
            name: name.to_owned(),
        });
        Ok(())
    }

    /// The node again, its schema recomputed (after [`GapFill::add_fill`]).
    pub fn rebuilt(self) -> Result<GapFill> {
        GapFill::try_new(
            self.input,
            self.time,
            self.series,
            self.stride,
            self.origin,
            self.lower,
            self.upper,
            self.fills,
        )
    }

    fn column_name(&self, index: usize) -> &str {
        self.schema.field(index).name()
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![self.input.as_ref()]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    /// Stride, origin, upper bound, then the lower bound if there is one: constants the
    /// optimizer simplifies (`now() - INTERVAL '1 hour'` becomes a timestamp).
    fn expressions(&self) -> Vec<Expr> {
        let mut exprs = vec![
            self.stride.clone(),
            self.origin.clone(),
            self.upper.expr.clone(),
        ];
        exprs.extend(self.lower.as_ref().map(|b| b.expr.clone()));
        exprs
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GapFill: time={}, stride={}, origin={}, range={}{}, {}{}",
            self.column_name(self.time),
            self.stride,
            self.origin,
            match &self.lower {
                Some(b) if b.inclusive => "[",
                _ => "(",
            },
            match &self.lower {
                Some(b) => unalias(&b.expr).to_string(),
                None => "first row".to_owned(),
            },
            unalias(&self.upper.expr),
            if self.upper.inclusive { "]" } else { ")" },
        )?;
        let series: Vec<_> = self.series.iter().map(|&i| self.column_name(i)).collect();
        write!(f, ", series=[{}]", series.join(", "))?;
        if !self.fills.is_empty() {
            let fills: Vec<_> = self.fills.iter().map(|f| f.name.as_str()).collect();
            write!(f, ", fill=[{}]", fills.join(", "))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [input] = <[LogicalPlan; 1]>::try_from(inputs)
            .map_err(|_| DataFusionError::Internal("GapFill has one input".into()))?;
        let mut exprs = exprs.into_iter();
        let (Some(stride), Some(origin), Some(upper)) = (exprs.next(), exprs.next(), exprs.next())
        else {
            return Err(DataFusionError::Internal(
                "GapFill has stride, origin and bounds".into(),
            ));
        };
        let lower = match (&self.lower, exprs.next()) {
            (Some(b), Some(expr)) => Some(Bound {
                expr,
                inclusive: b.inclusive,
            }),
            _ => None,
        };
        GapFill::try_new(
            Arc::new(input),
            self.time,
            self.series.clone(),
            stride,
            origin,
            lower,
            Bound {
                expr: upper,
                inclusive: self.upper.inclusive,
            },
            self.fills.clone(),
        )
    }
}

/// Plans [`GapFill`] nodes as [`GapFillExec`].
pub(crate) struct GapFillPlanner;

#[async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn datafusion::catalog::Session,
        planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(gap_fill) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let input_schema = logical_inputs[0].schema();
        let constant = |expr: &Expr| -> Result<ScalarValue> {
            let physical =
                planner.create_physical_expr(expr, input_schema, session, planning_ctx)?;
            let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
            match physical.evaluate(&empty)? {
                ColumnarValue::Scalar(value) => Ok(value),
                ColumnarValue::Array(_) => {
                    plan_err!("date_bin_gapfill needs a constant here, not {expr}")
                }
            }
        };
        let stride = stride_nanos(&constant(&gap_fill.stride)?)?;
        let origin = timestamp_nanos(&constant(&gap_fill.origin)?, "origin")?;
        let bucket = |t: i64| bucket_of(t, origin, stride);
        let first = match &gap_fill.lower {
            None => None,
            Some(b) => {
                let t = timestamp_nanos(&constant(&b.expr)?, "lower time bound")?;
                Some(bucket(if b.inclusive { t } else { t.saturating_add(1) }))
            }
        };
        let t = timestamp_nanos(&constant(&gap_fill.upper.expr)?, "upper time bound")?;
        let last = bucket(if gap_fill.upper.inclusive {
            t
        } else {
            t.saturating_sub(1)
        });
        let fills = gap_fill
            .fills
            .iter()
            .map(|f| (f.column, f.strategy))
            .collect();
        let exec = GapFillExec::try_new(
            physical_inputs[0].clone(),
            Arc::new(gap_fill.schema.as_arrow().clone()),
            gap_fill.time,
            gap_fill.series.clone(),
            fills,
            Range {
                stride,
                first,
                last,
            },
        )?;
        Ok(Some(Arc::new(exec)))
    }
}

/// The start of the bucket `t` is in: `origin + k * stride` for the largest such `k`.
pub fn bucket_of(t: i64, origin: i64, stride: i64) -> i64 {
    let offset = (t as i128 - origin as i128).div_euclid(stride as i128) * stride as i128;
    (origin as i128 + offset).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn stride_nanos(value: &ScalarValue) -> Result<i64> {
    const DAY: i128 = 86_400_000_000_000;
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            v.days as i128 * DAY + v.nanoseconds as i128
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            v.days as i128 * DAY + v.milliseconds as i128 * 1_000_000
        }
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalYearMonth(Some(_)) => {
            return plan_err!(
                "date_bin_gapfill's interval must be a fixed length (days or less), not months"
            );
        }
        other => return plan_err!("date_bin_gapfill's interval must be an interval, not {other}"),
    };
    match i64::try_from(nanos) {
        Ok(n) if n > 0 => Ok(n),
        _ => plan_err!("date_bin_gapfill's interval must be positive, not {value}"),
    }
}

fn timestamp_nanos(value: &ScalarValue, what: &str) -> Result<i64> {
    match value.cast_to(&DataType::Timestamp(TimeUnit::Nanosecond, None)) {
        Ok(ScalarValue::TimestampNanosecond(Some(t), _)) => Ok(t),
        Ok(_) => plan_err!("date_bin_gapfill's {what} is NULL"),
        Err(_) => plan_err!("date_bin_gapfill's {what} must be a timestamp, not {value}"),
    }
}
