//! Top-n queries over time buckets read only the newest buckets.
//!
//! `SELECT date_trunc('minute', time), max(usage_user) FROM cpu WHERE time < T GROUP BY 1
//! ORDER BY 1 DESC LIMIT 5` (TSBS's groupby-orderby-limit; a dashboard's "last five
//! minutes") wants five groups, and DataFusion aggregates every row before the limit. But
//! a bucket function `f` (`date_trunc`, `date_bin`, and `time_bucket`, which becomes
//! `date_bin`) is a floor: for a bucket start `B`, `f(t) >= B` exactly when `t >= B`. So
//! `time >= B` under the aggregate keeps whole every group whose bucket starts at or after
//! `B` and drops the others, which all sort after the groups kept. If the query narrowed so
//! still fills its limit, its answer is the whole query's (the rows it skips with `OFFSET`
//! are also among the groups kept).
//!
//! [`NarrowToNewestBuckets`], an optimizer rule, finds a limit over a sort whose first key
//! is such a bucket, descending, of an aggregate's group. It guesses `B`: the start of the
//! n-th bucket back from the newest time the query can see (the table's newest time, or the
//! `WHERE` clause's upper bound if that is lower). Both queries are planned under a
//! [`NewestBuckets`] node; its [`NewestBucketsExec`] runs the narrowed one and, if it comes
//! back short (the newest buckets have gaps, or `HAVING` dropped groups), runs the whole
//! one. A guess older than anything the query can see gains nothing, and the plan is left
//! as it is.
//!
//! The rule does not look at what the aggregate computes: the groups it keeps have all
//! their rows, whatever the functions are. Ascending sorts (the oldest buckets) are not
//! narrowed.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchemaRef, DataFusionError, ScalarValue};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::functions::datetime::date_bin::DateBinFunc;
use datafusion::functions::datetime::date_trunc::DateTruncFunc;
use datafusion::logical_expr::logical_plan::{FetchType, SkipType};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{
    Aggregate, Expr, Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, lit,
};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::{LexRequirement, OrderingRequirements};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

use crate::gapfill::exec::timestamp;
use crate::gapfill::unalias;
use crate::table::{GannetTable, TimeRange};

/// How many buckets back the guess walks one by one; past that, it steps back by the
/// width of the buckets walked so far.
const WALKED_BUCKETS: usize = 64;

/// Wraps each limit over a descending time-bucket aggregate in a [`NewestBuckets`] node
/// (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct NarrowToNewestBuckets;

impl OptimizerRule for NarrowToNewestBuckets {
    fn name(&self) -> &str {
        "gannet_newest_buckets"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_down(|node| {
            if let LogicalPlan::Extension(extension) = &node
                && extension.node.as_any().is::<NewestBuckets>()
            {
                // Already narrowed (the optimizer runs its rules more than once).
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            // Narrowing is only a guess: if anything in it fails, the plan stays.
            let Some((narrowed, fetch, from)) = narrow(&node, config).ok().flatten() else {
                return Ok(Transformed::no(node));
            };
            let wrapped = LogicalPlan::Extension(Extension {
                node: Arc::new(NewestBuckets {
                    narrowed,
                    whole: node,
                    fetch,
                    from,
                }),
            });
            Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump))
        })
    }
}

/// A limited query over a time-bucket aggregate and the same query reading only the
/// newest buckets: the narrowed one answers if it fills the limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Hash)]
pub(crate) struct NewestBuckets {
    narrowed: LogicalPlan,
    whole: LogicalPlan,
    /// The limit: the narrowed query answers if it returns this many rows.
    fetch: usize,
    /// The oldest bucket start the narrowed query reads (nanoseconds), for `EXPLAIN`.
    from: i64,
}

impl UserDefinedLogicalNodeCore for NewestBuckets {
    fn name(&self) -> &str {
        "NewestBuckets"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.narrowed, &self.whole]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.whole.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NewestBuckets: fetch={}, from={} (the first input if it returns {} rows, else \
             the second)",
            self.fetch,
            timestamp(self.from),
            self.fetch
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [narrowed, whole] = <[LogicalPlan; 2]>::try_from(inputs)
            .map_err(|_| DataFusionError::Internal("NewestBuckets has two inputs".into()))?;
        Ok(NewestBuckets {
            narrowed,
            whole,
            fetch: self.fetch,
            from: self.from,
        })
    }
}

/// `node` narrowed to its newest buckets, its limit and the oldest bucket start read, if it
/// is a limit over a descending time-bucket aggregate and narrowing can skip anything.
fn narrow(
    node: &LogicalPlan,
    config: &dyn OptimizerConfig,
) -> Result<Option<(LogicalPlan, usize, i64)>> {
    let Some(target) = Target::find(node) else {
        return Ok(None);
    };
    let input = target.aggregate.input.as_ref();
    let Some((oldest, newest)) = visible_times(input) else {
        return Ok(None);
    };
    if !target.never_null_within(oldest, newest) {
        return Ok(None);
    }
    let Some(from) = target.guess(oldest, newest, config)? else {
        return Ok(None);
    };
    let time = Expr::Column(target.time.clone());
    let bound = lit(ScalarValue::TimestampNanosecond(
        Some(from),
        target.time_zone.clone(),
    ));
    let mut keep = time.clone().gt_eq(bound);
    if target.time_nullable && target.nulls_first {
        // The NULL bucket sorts first: keep it too.
        keep = keep.or(time.is_null());
    }
    let narrowed_input = LogicalPlanBuilder::from(input.clone())
        .filter(keep)?
        .build()?;
    let aggregate = &target.aggregate;
    let narrowed_aggregate = LogicalPlan::Aggregate(Aggregate::try_new_with_schema(
        Arc::new(narrowed_input),
        aggregate.group_expr.clone(),
        aggregate.aggr_expr.clone(),
        aggregate.schema.clone(),
    )?);
    // The path from the limit down to the aggregate has one input at each step: the first
    // aggregate on the way down is the target.
    let mut replacement = Some(narrowed_aggregate);
    let narrowed = node
        .clone()
        .transform_down(|n| {
            if matches!(n, LogicalPlan::Aggregate(_))
                && let Some(narrowed) = replacement.take()
            {
                return Ok(Transformed::new(narrowed, true, TreeNodeRecursion::Stop));
            }
            Ok(Transformed::no(n))
        })?
        .data;
    Ok(Some((narrowed, target.fetch, from)))
}

/// What narrowing needs of a limit over a descending time-bucket aggregate.
struct Target {
    fetch: usize,
    /// How many buckets back the narrowed query reads: the limit and the offset.
    depth: usize,
    aggregate: Aggregate,
    /// The bucket expression, one of the aggregate's group expressions.
    bucket: Expr,
    /// The aggregate input's column the bucket is of.
    time: Column,
    time_zone: Option<Arc<str>>,
    time_nullable: bool,
    nulls_first: bool,
}

impl Target {
    /// `node` as a limit (`LIMIT n` or a sort with a fetch) over a sort whose first key is
    /// a time bucket of an aggregate's group, descending, through projections, aliases and
    /// (under the sort) filters.
    fn find(node: &LogicalPlan) -> Option<Target> {
        let (fetch, skip, below) = match node {
            LogicalPlan::Limit(limit) => {
                match (limit.get_fetch_type().ok()?, limit.get_skip_type().ok()?) {
                    (FetchType::Literal(Some(fetch)), SkipType::Literal(skip)) => {
                        (fetch, skip, limit.input.as_ref())
                    }
                    _ => return None,
                }
            }
            LogicalPlan::Sort(sort) => (sort.fetch?, 0, node),
            _ => return None,
        };
        if fetch == 0 {
            return None;
        }
        let mut plan = below;
        let sort = loop {
            match plan {
                LogicalPlan::Sort(sort) => break sort,
                LogicalPlan::Projection(p) => plan = &p.input,
                LogicalPlan::SubqueryAlias(a) => plan = &a.input,
                _ => return None,
            }
        };
        let first = sort.expr.first()?;
        if first.asc {
            return None;
        }
        let Expr::Column(column) = &first.expr else {
            return None;
        };
        // Follow the sort key down to the aggregate's output.
        let mut column = column.clone();
        let mut plan = sort.input.as_ref();
        let aggregate = loop {
            match plan {
                LogicalPlan::Aggregate(aggregate) => break aggregate,
                LogicalPlan::Projection(p) => {
                    let index = p.schema.index_of_column(&column).ok()?;
                    let Expr::Column(inner) = unalias(&p.expr[index]) else {
                        return None;
                    };
                    column = inner.clone();
                    plan = &p.input;
                }
                LogicalPlan::SubqueryAlias(a) => {
                    let index = a.schema.index_of_column(&column).ok()?;
                    let (qualifier, field) = a.input.schema().qualified_field(index);
                    column = Column::from((qualifier, field));
                    plan = &a.input;
                }
                LogicalPlan::Filter(f) => plan = &f.input,
                _ => return None,
            }
        };
        if aggregate
            .group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            return None;
        }
        // Group columns come first in an aggregate's output.
        let index = aggregate.schema.index_of_column(&column).ok()?;
        let bucket = unalias(aggregate.group_expr.get(index)?).clone();
        let time = bucket_column(&bucket)?;
        let (_, field) = aggregate
            .input
            .schema()
            .qualified_field_from_column(&time)
            .ok()?;
        let DataType::Timestamp(TimeUnit::Nanosecond, time_zone) = field.data_type() else {
            return None;
        };
        Some(Target {
            fetch,
            depth: fetch.checked_add(skip)?,
            bucket,
            time_zone: time_zone.clone(),
            time_nullable: field.is_nullable(),
            nulls_first: first.nulls_first,
            time,
            aggregate: aggregate.clone(),
        })
    }

    /// Whether the bucket of every non-NULL time from `oldest` to `newest` is non-NULL.
    /// `date_bin` gives NULL where the distance from its origin overflows (about 292
    /// years in nanoseconds); such a NULL group would sort first and not be narrowed in.
    fn never_null_within(&self, oldest: i64, newest: i64) -> bool {
        const SAFE_DISTANCE: u64 = 250 * 366 * 86_400 * 1_000_000_000;
        let Expr::ScalarFunction(function) = &self.bucket else {
            return false;
        };
        if !function.func.inner().is::<DateBinFunc>() {
            return true;
        }
        let origin = match function.args.get(2) {
            None => 0,
            Some(Expr::Literal(ScalarValue::TimestampNanosecond(Some(origin), _), _)) => *origin,
            Some(_) => return false,
        };
        let near = |t: i64| {
            t.checked_sub(origin)
                .is_some_and(|d| d.unsigned_abs() < SAFE_DISTANCE)
        };
        near(oldest) && near(newest)
    }

    /// The start of the `depth`-th bucket back from `newest`, if it is after `oldest` (else
    /// narrowing would skip nothing).
    fn guess(&self, oldest: i64, newest: i64, config: &dyn OptimizerConfig) -> Result<Option<i64>> {
        let context = SimplifyContext::builder()
            .with_config_options(config.options())
            .with_query_execution_start_time(config.query_execution_start_time())
            .build();
        let simplifier = ExprSimplifier::new(context);
        let bucket_of = |t: i64| -> Result<Option<i64>> {
            let at = lit(ScalarValue::TimestampNanosecond(
                Some(t),
                self.time_zone.clone(),
            ));
            let expr = self
                .bucket
                .clone()
                .transform(|e| match e {
                    Expr::Column(c) if c == self.time => Ok(Transformed::yes(at.clone())),
                    other => Ok(Transformed::no(other)),
                })?
                .data;
            Ok(match simplifier.simplify(expr)? {
                Expr::Literal(ScalarValue::TimestampNanosecond(Some(start), _), _)
                    if start <= t =>
                {
                    Some(start)
                }
                _ => None,
            })
        };
        let Some(last) = bucket_of(newest)? else {
            return Ok(None);
        };
        let mut from = last;
        let walked = (self.depth - 1).min(WALKED_BUCKETS);
        for _ in 0..walked {
            if from <= oldest {
                return Ok(None);
            }
            match bucket_of(from - 1)? {
                Some(previous) if previous < from => from = previous,
                _ => return Ok(None),
            }
        }
        let left = (self.depth - 1 - walked) as i64;
        if left > 0 {
            let Some(back) = last
                .checked_sub(from)
                .map(|span| span / walked as i64)
                .and_then(|width| left.checked_mul(width))
                .and_then(|step| from.checked_sub(step))
            else {
                return Ok(None);
            };
            match bucket_of(back.max(oldest))? {
                Some(start) => from = start,
                None => return Ok(None),
            }
        }
        if from <= oldest {
            return Ok(None);
        }
        // `from` must be where a bucket starts, and the time before it in an earlier
        // bucket: a bucket function that is not a floor (`date_bin` with a negative
        // stride rounds up before its origin) is not narrowed.
        let starts_here = bucket_of(from)? == Some(from);
        let floor_below = matches!(bucket_of(from - 1)?, Some(previous) if previous < from);
        Ok((starts_here && floor_below).then_some(from))
    }
}

/// The column of a bucket function of a column and constants: `date_trunc('minute',
/// time)`, `date_bin(INTERVAL '5 minutes', time[, origin])`.
fn bucket_column(bucket: &Expr) -> Option<Column> {
    let Expr::ScalarFunction(function) = bucket else {
        return None;
    };
    let inner = function.func.inner();
    let (time_arg, arity) = if inner.is::<DateTruncFunc>() {
        (1, 2..=2)
    } else if inner.is::<DateBinFunc>() {
        (1, 2..=3)
    } else {
        return None;
    };
    let args = &function.args;
    if !arity.contains(&args.len()) {
        return None;
    }
    let constants = args
        .iter()
        .enumerate()
        .all(|(i, a)| i == time_arg || matches!(a, Expr::Literal(..)));
    match (&args[time_arg], constants) {
        (Expr::Column(c), true) => Some(c.clone()),
        _ => None,
    }
}

/// The oldest and newest times `input` can see: the bounds of the one Gannet table it reads,
/// narrowed by the time ranges of its filters. `None` if it reads no Gannet table or more
/// than one, or sees nothing.
fn visible_times(input: &LogicalPlan) -> Option<(i64, i64)> {
    let mut tables = Vec::new();
    let mut filters = Vec::new();
    input
        .apply(|node| {
            match node {
                LogicalPlan::TableScan(scan) => {
                    tables.push(source_as_provider(&scan.source)?);
                    filters.extend(scan.filters.iter().cloned());
                }
                LogicalPlan::Filter(filter) => filters.push(filter.predicate.clone()),
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .ok()?;
    let [table] = tables.as_slice() else {
        return None;
    };
    let (oldest, newest) = table.downcast_ref::<GannetTable>()?.time_span()?;
    let range = TimeRange::from_filters(&filters);
    let (oldest, newest) = (oldest.max(range.min), newest.min(range.max));
    (oldest <= newest).then_some((oldest, newest))
}

/// Plans a [`NewestBuckets`] node as a [`NewestBucketsExec`].
#[derive(Debug, Default)]
pub(crate) struct NewestBucketsPlanner;

#[async_trait]
impl ExtensionPlanner for NewestBucketsPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<NewestBuckets>() else {
            return Ok(None);
        };
        let [narrowed, whole] = physical_inputs else {
            return Err(DataFusionError::Internal(
                "NewestBuckets has two inputs".into(),
            ));
        };
        Ok(Some(Arc::new(NewestBucketsExec::new(
            narrowed.clone(),
            whole.clone(),
            node.fetch,
        ))))
    }
}

/// Runs the narrowed query; if it returns fewer than `fetch` rows, runs the whole one.
#[derive(Debug)]
pub(crate) struct NewestBucketsExec {
    narrowed: Arc<dyn ExecutionPlan>,
    whole: Arc<dyn ExecutionPlan>,
    fetch: usize,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl NewestBucketsExec {
    fn new(
        narrowed: Arc<dyn ExecutionPlan>,
        whole: Arc<dyn ExecutionPlan>,
        fetch: usize,
    ) -> NewestBucketsExec {
        let properties = PlanProperties::new(
            whole.equivalence_properties().clone(),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        NewestBucketsExec {
            narrowed,
            whole,
            fetch,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for NewestBucketsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewestBucketsExec: fetch={}", self.fetch)
    }
}

impl ExecutionPlan for NewestBucketsExec {
    fn name(&self) -> &str {
        "NewestBucketsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.narrowed, &self.whole]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition; 2]
    }

    /// Each input keeps the order it makes: its rows are the answer.
    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        self.children()
            .into_iter()
            .map(|child| {
                child.output_ordering().map(|ordering| {
                    OrderingRequirements::new(LexRequirement::from(ordering.clone()))
                })
            })
            .collect()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true; 2]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; 2]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [narrowed, whole] = <[Arc<dyn ExecutionPlan>; 2]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("NewestBucketsExec has two inputs".into()))?;
        Ok(Arc::new(NewestBucketsExec::new(
            narrowed, whole, self.fetch,
        )))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "NewestBucketsExec has one partition, not {partition}"
            )));
        }
        let narrowed = self.narrowed.execute(0, context.clone())?;
        let whole = self.whole.clone();
        let fetch = self.fetch;
        let whole_runs = MetricBuilder::new(&self.metrics).counter("whole_runs", partition);
        let answer = futures::stream::once(async move {
            // At most `fetch` rows: the narrowed query ends in the limit.
            let batches: Vec<_> = narrowed.try_collect().await?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            if rows >= fetch {
                return Ok(futures::stream::iter(batches.into_iter().map(Ok)).boxed());
            }
            whole_runs.add(1);
            Ok::<_, DataFusionError>(whole.execute(0, context)?.boxed())
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.properties.eq_properties.schema().clone(),
            answer,
        )))
    }
}

#[cfg(test)]
mod tests;
