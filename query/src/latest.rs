//! Latest-row queries read only the newest rows.
//!
//! `SELECT DISTINCT ON (hostname) * FROM cpu ORDER BY hostname, time DESC` (TSBS's
//! lastpoint), `last(usage, time) ... GROUP BY host`, `first_value(usage ORDER BY time DESC)`:
//! each group's answer comes from its rows at its newest time. No group's newest time is
//! older than `T0`, the oldest of them, so rows older than `T0` cannot change the answer.
//! Before such an aggregate is planned, Gannet asks for `T0` with a query that reads only
//! the group columns and the time (`SELECT min(m) FROM (SELECT max(time) AS m ... GROUP BY
//! groups)`), and puts `time >= T0` under the aggregate; optimized again, that filter
//! reaches the table scan, which skips every segment and buffered window older than `T0`.
//! Series that report together (TSBS: every host every 10 s) leave one instant to read.
//!
//! Only an aggregate whose every function picks the newest row by the same non-NULL column
//! qualifies (the selectors above, and `max` of that column), over a single Gannet table
//! (scans, filters, projections; no joins, limits or volatile functions), without `IGNORE
//! NULLS`, `DISTINCT` or `FILTER`: each of those could take a value from an older row. The
//! oldest-row forms (`first(v, time)`) could be narrowed the same way from the other end,
//! but the oldest rows are what retention drops, possibly between the two reads.
//!
//! The two reads take two snapshots of the table: a `DELETE` of a group's newest rows that
//! lands between them can leave that group out of the answer.

use std::sync::Arc;

use arrow::array::Array;
use datafusion::catalog::Session;
use datafusion::catalog::default_table_source::source_as_provider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{max, min};
use datafusion::logical_expr::expr::{AggregateFunction, NullTreatment};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, lit};

use crate::gapfill::unalias;
use crate::table::GannetTable;

/// Which end of each group's rows its aggregate picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Newest,
    Oldest,
}

/// `plan` with the first latest-row (or earliest-row) aggregate's input narrowed to the
/// rows that can matter, optimized again; `None` if it has no such aggregate.
pub(crate) async fn narrow(
    plan: &LogicalPlan,
    session: &dyn Session,
) -> Result<Option<LogicalPlan>> {
    let Some((aggregate, column, end)) = find(plan) else {
        return Ok(None);
    };
    let Some(bound) = bound(&aggregate, &column, end, session).await? else {
        return Ok(None);
    };
    let time = Expr::Column(column);
    let keep = match end {
        End::Newest => time.gt_eq(lit(bound)),
        End::Oldest => time.lt_eq(lit(bound)),
    };
    let input = LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
        .filter(keep)?
        .build()?;
    let narrowed = LogicalPlan::Aggregate(Aggregate::try_new_with_schema(
        Arc::new(input),
        aggregate.group_expr.clone(),
        aggregate.aggr_expr.clone(),
        aggregate.schema.clone(),
    )?);
    let target = LogicalPlan::Aggregate(aggregate);
    let mut replacement = Some(narrowed);
    let rewritten = plan
        .clone()
        .transform_down(|node| {
            if node == target
                && let Some(narrowed) = replacement.take()
            {
                return Ok(Transformed::new(narrowed, true, TreeNodeRecursion::Stop));
            }
            Ok(Transformed::no(node))
        })?
        .data;
    session.optimize(&rewritten).map(Some)
}

/// The first aggregate in `plan` that picks each group's newest or oldest row by a column.
fn find(plan: &LogicalPlan) -> Option<(Aggregate, Column, End)> {
    let mut found = None;
    plan.apply(|node| {
        if let LogicalPlan::Aggregate(aggregate) = node
            && let Some((column, end)) = picks_by(aggregate)
        {
            found = Some((aggregate.clone(), column, end));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .ok()?;
    found
}

/// The column and end by which every function of `aggregate` picks its rows, if they all
/// agree, at least one is a selector, the column is never NULL and the input one table.
fn picks_by(aggregate: &Aggregate) -> Option<(Column, End)> {
    if aggregate
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
        || !one_table(&aggregate.input)
    {
        return None;
    }
    let mut picked: Option<(Column, End)> = None;
    let mut selects = false;
    for expr in &aggregate.aggr_expr {
        let Expr::AggregateFunction(function) = unalias(expr) else {
            return None;
        };
        let (column, end, selector) = pick_of(function, &aggregate.group_expr)?;
        selects |= selector;
        match &picked {
            None => picked = Some((column, end)),
            Some(p) if *p == (column.clone(), end) => {}
            Some(_) => return None,
        }
    }
    // The oldest rows are what retention drops, and it may drop them between the two
    // reads: only the newest end is narrowed.
    let (column, end) = picked.filter(|&(_, end)| selects && end == End::Newest)?;
    let (_, field) = aggregate
        .input
        .schema()
        .qualified_field_from_column(&column)
        .ok()?;
    (!field.is_nullable()).then_some((column, end))
}

/// How one aggregate function picks: by which column, from which end, and whether it is a
/// selector (returns a value of the picked row) rather than `max`/`min` of the column.
fn pick_of(function: &AggregateFunction, groups: &[Expr]) -> Option<(Column, End, bool)> {
    let params = &function.params;
    if params.distinct
        || params.filter.is_some()
        || matches!(params.null_treatment, Some(NullTreatment::IgnoreNulls))
    {
        return None;
    }
    let column = |expr: &Expr| match unalias(expr) {
        Expr::Column(c) => Some(c.clone()),
        _ => None,
    };
    match function.func.name() {
        name @ ("first_value" | "last_value") => {
            // Sort keys that are group keys are constant within a group: the first other
            // one decides.
            let sort = params.order_by.iter().find(|s| !groups.contains(&s.expr))?;
            let newest = (name == "first_value") != sort.asc;
            let end = if newest { End::Newest } else { End::Oldest };
            Some((column(&sort.expr)?, end, true))
        }
        "last" => Some((column(params.args.get(1)?)?, End::Newest, true)),
        "first" => Some((column(params.args.get(1)?)?, End::Oldest, true)),
        "max" => Some((column(params.args.first()?)?, End::Newest, false)),
        "min" => Some((column(params.args.first()?)?, End::Oldest, false)),
        _ => None,
    }
}

/// Whether `plan` reads one Gannet table through filters and projections only, with no
/// volatile expression (`random()`): it is read twice, and both reads must agree.
fn one_table(plan: &LogicalPlan) -> bool {
    if plan.expressions().iter().any(Expr::is_volatile) {
        return false;
    }
    match plan {
        LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)
            .is_ok_and(|provider| provider.downcast_ref::<GannetTable>().is_some()),
        LogicalPlan::Filter(_) | LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {
            plan.inputs().iter().all(|input| one_table(input))
        }
        _ => false,
    }
}

/// The oldest of the groups' newest times (or the newest of their oldest): `None` when the
/// input has no rows.
async fn bound(
    aggregate: &Aggregate,
    column: &Column,
    end: End,
    session: &dyn Session,
) -> Result<Option<ScalarValue>> {
    let (per_group, overall) = match end {
        End::Newest => (max(Expr::Column(column.clone())), min as fn(Expr) -> Expr),
        End::Oldest => (min(Expr::Column(column.clone())), max as fn(Expr) -> Expr),
    };
    let plan = LogicalPlanBuilder::from(aggregate.input.as_ref().clone())
        .aggregate(
            aggregate.group_expr.clone(),
            vec![per_group.alias("gannet_group_end")],
        )?
        .aggregate(
            Vec::<Expr>::new(),
            vec![overall(Expr::Column(Column::from_name("gannet_group_end")))],
        )?
        .build()?;
    let physical = session.create_physical_plan(&plan).await?;
    let batches = datafusion::physical_plan::collect(physical, session.task_ctx()).await?;
    let Some(values) = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(0))
    else {
        return Ok(None);
    };
    if values.is_null(0) {
        return Ok(None);
    }
    ScalarValue::try_from_array(values, 0).map(Some)
}
