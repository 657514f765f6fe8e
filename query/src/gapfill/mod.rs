//! Gap filling, as InfluxDB 3 does it: `date_bin_gapfill` (and TimescaleDB's
//! `time_bucket_gapfill`) in `GROUP BY` makes one row per time bucket and series over the
//! query's time range, whether or not the bucket holds data; `locf(agg)` and
//! `interpolate(agg)` fill the aggregates those added rows lack.
//!
//! ```sql
//! SELECT date_bin_gapfill(INTERVAL '1 minute', time) AS minute, host,
//!        avg(usage) AS raw, locf(avg(usage)) AS carried, interpolate(avg(usage)) AS linear
//! FROM cpu
//! WHERE time >= '2026-11-22T10:00:00Z' AND time < '2026-11-22T11:00:00Z'
//! GROUP BY 1, 2
//! ```
//!
//! How: the analyzer rule [`HandleGapFill`] turns the aggregate's `date_bin_gapfill` into
//! `date_bin` and puts a [`plan::GapFill`] node above the aggregate, which takes the range from
//! the `WHERE` clause's bounds on the time column. `locf(x)` and `interpolate(x)` in the
//! `SELECT` list become columns the node adds next to `x`. The node runs as
//! [`exec::GapFillExec`] over the aggregate's rows sorted by series and time.
//!
//! The functions themselves never run: a query that uses them elsewhere is refused at
//! planning, saying where they belong.

pub mod exec;
pub mod plan;

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue, plan_err};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, ColumnarValue, Expr, ExprSchemable, Extension, Filter, LogicalPlan,
    Operator, Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use datafusion::optimizer::AnalyzerRule;

use plan::{Bound, FillStrategy, GapFill};

/// Registers the gap-filling functions in a session. The session also needs the analyzer
/// rule and the planner for the node ([`crate::session_state`] installs them).
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(Marker::bucket(
        DATE_BIN_GAPFILL,
        datafusion::functions::datetime::date_bin(),
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(Marker::bucket(
        TIME_BUCKET_GAPFILL,
        crate::functions::time_bucket(),
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(Marker::fill(LOCF)));
    ctx.register_udf(ScalarUDF::new_from_impl(Marker::fill(INTERPOLATE)));
}

const DATE_BIN_GAPFILL: &str = "date_bin_gapfill";
const TIME_BUCKET_GAPFILL: &str = "time_bucket_gapfill";
const LOCF: &str = "locf";
const INTERPOLATE: &str = "interpolate";

/// A function that only marks where gap filling goes: it plans (types check as its
/// bucketing function's do, or as its argument's) but never runs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Marker {
    name: &'static str,
    /// The bucketing function a gap-filling bucket stands for; `None` for the fills.
    bucket: Option<Arc<ScalarUDF>>,
    signature: Signature,
}

impl Marker {
    fn bucket(name: &'static str, function: Arc<ScalarUDF>) -> Marker {
        Marker {
            name,
            signature: function.signature().clone(),
            bucket: Some(function),
        }
    }

    fn fill(name: &'static str) -> Marker {
        Marker {
            name,
            bucket: None,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Marker {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match &self.bucket {
            Some(function) => function.coerce_types(arg_types),
            None => Ok(arg_types.to_vec()),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &self.bucket {
            Some(function) => function.return_type(arg_types),
            None => Ok(arg_types[0].clone()),
        }
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Err(misplaced(self.name))
    }
}

/// The error for a gap-filling function outside the place it works in.
fn misplaced(name: &str) -> DataFusionError {
    DataFusionError::Plan(match name {
        LOCF | INTERPOLATE => format!(
            "{name}() fills the rows date_bin_gapfill adds: use it on an aggregate in the \
             SELECT list of a query that groups by date_bin_gapfill, as in {name}(avg(x))"
        ),
        _ => format!(
            "{name}() works only as a GROUP BY expression of an aggregate query with a time \
             range in WHERE, as in SELECT {name}(INTERVAL '1 minute', time) AS t, avg(x) \
             FROM m WHERE time >= now() - INTERVAL '1 hour' AND time < now() GROUP BY t"
        ),
    })
}

/// The name of the gap-filling function `expr` calls at its top, if it does.
fn marker_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::ScalarFunction(f) => match f.func.name() {
            name @ (DATE_BIN_GAPFILL | TIME_BUCKET_GAPFILL | LOCF | INTERPOLATE) => Some(name),
            _ => None,
        },
        _ => None,
    }
}

fn is_bucket(expr: &Expr) -> bool {
    matches!(
        marker_name(expr),
        Some(DATE_BIN_GAPFILL | TIME_BUCKET_GAPFILL)
    )
}

fn is_fill(expr: &Expr) -> bool {
    matches!(marker_name(expr), Some(LOCF | INTERPOLATE))
}

fn contains(expr: &Expr, found: fn(&Expr) -> bool) -> bool {
    expr.exists(|e| Ok(found(e))).unwrap_or(false)
}

/// Rewrites aggregates grouped by `date_bin_gapfill` into [`GapFill`] over `date_bin`, and
/// `locf`/`interpolate` above them into the node's filled columns.
#[derive(Debug, Default)]
pub struct HandleGapFill;

impl AnalyzerRule for HandleGapFill {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let plan = plan
            .transform_up_with_subqueries(|node| match node {
                LogicalPlan::Aggregate(aggregate)
                    if aggregate.group_expr.iter().any(|e| contains(e, is_bucket)) =>
                {
                    gap_fill_aggregate(aggregate).map(Transformed::yes)
                }
                LogicalPlan::Projection(projection)
                    if projection.expr.iter().any(|e| contains(e, is_fill)) =>
                {
                    fill_projection(projection).map(Transformed::yes)
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        // Whatever is left is in a place gap filling does not reach.
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| match marker_name(e) {
                    Some(name) => Err(misplaced(name)),
                    None => Ok(TreeNodeRecursion::Continue),
                })
            })
        })?;
        Ok(plan)
    }

    fn name(&self) -> &str {
        "handle_gap_fill"
    }
}

/// `Aggregate(group by date_bin_gapfill(..), ..)` → `GapFill(Aggregate(group by date_bin(..)))`.
fn gap_fill_aggregate(aggregate: Aggregate) -> Result<LogicalPlan> {
    let mut found = None;
    for (i, expr) in aggregate.group_expr.iter().enumerate() {
        if matches!(expr, Expr::GroupingSet(_)) {
            return plan_err!("date_bin_gapfill does not work with GROUPING SETS, ROLLUP or CUBE");
        }
        let bare = unalias(expr);
        if !is_bucket(bare) {
            // Nested in another expression, the bucket would not be the group's time.
            if contains(bare, is_bucket) {
                return plan_err!(
                    "date_bin_gapfill must be a GROUP BY expression of its own, not part of \
                     {bare}"
                );
            }
            continue;
        }
        if found.is_some() {
            return plan_err!("a query can group by only one date_bin_gapfill");
        }
        found = Some(i);
    }
    let time_index = found.expect("called for aggregates that group by date_bin_gapfill");
    let Expr::ScalarFunction(bucket) = unalias(&aggregate.group_expr[time_index]) else {
        unreachable!("is_bucket matched a function call")
    };
    let input_schema = aggregate.input.schema().clone();
    let (stride, time, origin) = match (bucket.func.name(), bucket.args.as_slice()) {
        (DATE_BIN_GAPFILL, [stride, time]) => (stride, time, None),
        (DATE_BIN_GAPFILL, [stride, time, origin]) => (stride, time, Some(origin.clone())),
        (TIME_BUCKET_GAPFILL, [stride, time]) => {
            let tz = match time.get_type(&input_schema)? {
                DataType::Timestamp(_, tz) => tz,
                _ => None,
            };
            let origin =
                ScalarValue::TimestampNanosecond(Some(crate::functions::TIMESCALE_ORIGIN_NS), tz);
            (stride, time, Some(lit(origin)))
        }
        (name, args) => {
            return plan_err!(
                "{name} takes an interval, a time column and (date_bin_gapfill) an origin, \
                 not {} arguments",
                args.len()
            );
        }
    };
    if !stride.column_refs().is_empty() {
        return plan_err!("date_bin_gapfill's interval must be a constant, not {stride}");
    }
    let Some(time_column) = column_of(time) else {
        return plan_err!("date_bin_gapfill's second argument must be a time column, not {time}");
    };
    let (lower, upper) = time_bounds(&aggregate.input, time_column)?;
    let Some(upper) = upper else {
        return plan_err!(
            "date_bin_gapfill needs an upper bound on {time_column} in WHERE to know where to \
             stop filling, as in WHERE {time_column} >= now() - INTERVAL '1 hour' AND \
             {time_column} < now()"
        );
    };

    // The aggregate groups by date_bin itself, under the name the query knows the bucket by.
    let name = aggregate.schema.field(time_index).name().clone();
    let date_bin = datafusion::functions::datetime::date_bin();
    let mut args = vec![stride.clone(), time.clone()];
    args.extend(origin.clone());
    let mut group_expr = aggregate.group_expr.clone();
    group_expr[time_index] =
        Expr::ScalarFunction(ScalarFunction::new_udf(date_bin, args)).alias(name);
    let input = Aggregate::try_new(aggregate.input.clone(), group_expr, aggregate.aggr_expr)?;
    let series = (0..input.group_expr.len())
        .filter(|&i| i != time_index)
        .collect();
    let origin = origin.unwrap_or_else(|| lit(ScalarValue::TimestampNanosecond(Some(0), None)));
    let node = GapFill::try_new(
        Arc::new(LogicalPlan::Aggregate(input)),
        time_index,
        series,
        stride.clone(),
        origin,
        lower,
        upper,
        Vec::new(),
    )?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

/// A projection with `locf(x)` or `interpolate(x)` over a [`GapFill`] (directly, or through
/// a `HAVING` filter): the node fills a copy of `x`, and the projection reads that.
fn fill_projection(projection: Projection) -> Result<LogicalPlan> {
    let (gap_fill, having) = match projection.input.as_ref() {
        LogicalPlan::Extension(e) => (gap_fill_of(e), None),
        LogicalPlan::Filter(f) => match f.input.as_ref() {
            LogicalPlan::Extension(e) => (gap_fill_of(e), Some(f.predicate.clone())),
            _ => (None, None),
        },
        _ => (None, None),
    };
    let Some(gap_fill) = gap_fill else {
        let name = projection
            .expr
            .iter()
            .find_map(|e| {
                let mut name = None;
                e.apply(|x| {
                    name = marker_name(x);
                    Ok(match name {
                        Some(_) => TreeNodeRecursion::Stop,
                        None => TreeNodeRecursion::Continue,
                    })
                })
                .ok()?;
                name
            })
            .unwrap_or(LOCF);
        return Err(misplaced(name));
    };
    let mut gap_fill = gap_fill.clone();
    let preserver = NamePreserver::new_for_projection();
    let mut exprs = Vec::with_capacity(projection.expr.len());
    for expr in projection.expr {
        let saved = preserver.save(&expr);
        let expr = expr
            .transform_up(|e| {
                let strategy = match marker_name(&e) {
                    Some(LOCF) => FillStrategy::Locf,
                    Some(INTERPOLATE) => FillStrategy::Interpolate,
                    _ => return Ok(Transformed::no(e)),
                };
                let name = e.schema_name().to_string();
                let Expr::ScalarFunction(call) = e else {
                    unreachable!("marker_name matched a function call")
                };
                let [argument] = call.args.as_slice() else {
                    return plan_err!("{} takes one argument", call.func.name());
                };
                gap_fill.add_fill(argument, strategy, &name)?;
                Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
                    name,
                ))))
            })?
            .data;
        exprs.push(saved.restore(expr));
    }
    let mut input = LogicalPlan::Extension(Extension {
        node: Arc::new(gap_fill.rebuilt()?),
    });
    if let Some(predicate) = having {
        input = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?);
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(input),
    )?))
}

fn gap_fill_of(extension: &Extension) -> Option<&GapFill> {
    extension.node.as_any().downcast_ref::<GapFill>()
}

pub(crate) fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(alias) => unalias(&alias.expr),
        other => other,
    }
}

/// The column `expr` reads, under any casts.
fn column_of(expr: &Expr) -> Option<&Column> {
    match expr {
        Expr::Column(c) => Some(c),
        Expr::Cast(c) => column_of(&c.expr),
        Expr::TryCast(c) => column_of(&c.expr),
        _ => None,
    }
}

/// The lower and upper bounds on `time` in the filters right under an aggregate:
/// comparisons of the column with constants (`time >= X`, `X > time`, `BETWEEN`, `=`).
fn time_bounds(input: &LogicalPlan, time: &Column) -> Result<(Option<Bound>, Option<Bound>)> {
    let mut lower: Option<Bound> = None;
    let mut upper: Option<Bound> = None;
    let set = |slot: &mut Option<Bound>, which: &str, expr: &Expr, inclusive: bool| {
        if slot.is_some() {
            return plan_err!(
                "date_bin_gapfill takes one {which} bound on {time} from WHERE, and this \
                 query has more; keep one"
            );
        }
        *slot = Some(Bound {
            expr: expr.clone(),
            inclusive,
        });
        Ok(())
    };
    let mut node = input;
    while let LogicalPlan::Filter(filter) = node {
        for conjunct in split_conjunction(&filter.predicate) {
            let is_time = |e: &Expr| column_of(e) == Some(time);
            let constant = |e: &Expr| e.column_refs().is_empty();
            match conjunct {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (op, bound) = if is_time(left) && constant(right) {
                        (*op, right.as_ref())
                    } else if is_time(right) && constant(left) {
                        match op.swap() {
                            Some(op) => (op, left.as_ref()),
                            None => continue,
                        }
                    } else {
                        continue;
                    };
                    match op {
                        Operator::Gt => set(&mut lower, "lower", bound, false)?,
                        Operator::GtEq => set(&mut lower, "lower", bound, true)?,
                        Operator::Lt => set(&mut upper, "upper", bound, false)?,
                        Operator::LtEq => set(&mut upper, "upper", bound, true)?,
                        Operator::Eq => {
                            set(&mut lower, "lower", bound, true)?;
                            set(&mut upper, "upper", bound, true)?;
                        }
                        _ => {}
                    }
                }
                Expr::Between(between)
                    if !between.negated
                        && is_time(&between.expr)
                        && constant(&between.low)
                        && constant(&between.high) =>
                {
                    set(&mut lower, "lower", &between.low, true)?;
                    set(&mut upper, "upper", &between.high, true)?;
                }
                _ => {}
            }
        }
        node = filter.input.as_ref();
    }
    Ok((lower, upper))
}
