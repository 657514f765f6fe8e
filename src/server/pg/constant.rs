//! Constant statements planned once: a prepared `SELECT 1` (a driver's or a load
//! balancer's health check) and the like read no table, take no parameter and call no
//! function whose result may change, so the same logical plan always makes the same
//! physical plan. Planning it again for every execution (DataFusion's optimizer, physical
//! planner and physical optimizer, a copy of the session state) costs far more than running
//! it; the plan is kept instead, per database, by logical plan and the connection's
//! settings, and each execution runs a fresh copy of its state.
//!
//! Anything that reads a table is planned every time: a scan takes its snapshot of the
//! table when it is planned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::prelude::SessionContext;

/// How many constant plans a database keeps; past it, they are all let go and planned
/// again as they come (a server sees few distinct constant statements).
const CAPACITY: usize = 256;

/// A planned constant statement and the task context it runs in.
#[derive(Debug)]
struct Planned {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
}

/// The constant plans of one database, by logical plan and connection settings. (Not by
/// statement text: the logical plan, made at Parse, depends on the settings then, such
/// as the time zone a `timestamptz` literal gets, and the client was told its types.)
#[derive(Debug, Default)]
pub(super) struct ConstantPlans(Mutex<HashMap<(LogicalPlan, String), Arc<Planned>>>);

impl ConstantPlans {
    /// Runs `plan` from its kept physical plan, planning and keeping it first, if it is
    /// constant. `None` if it is not: the caller plans it as usual. `settings` gives the connection's settings, asked for only then.
    pub(super) async fn execute(
        &self,
        plan: &LogicalPlan,
        settings: impl FnOnce() -> String,
        context: &SessionContext,
    ) -> Option<Result<SendableRecordBatchStream>> {
        if !is_constant(plan) {
            return None;
        }
        let key = (plan.clone(), settings());
        let kept = self
            .0
            .lock()
            .expect("constant plans lock")
            .get(&key)
            .cloned();
        let planned = match kept {
            Some(planned) => planned,
            None => match plan_it(plan, context).await {
                Ok(planned) => {
                    let mut plans = self.0.lock().expect("constant plans lock");
                    if plans.len() >= CAPACITY {
                        plans.clear();
                    }
                    plans.entry(key).or_insert(planned).clone()
                }
                Err(e) => return Some(Err(e)),
            },
        };
        Some(
            reset_plan_states(planned.plan.clone()).and_then(|plan| {
                datafusion::physical_plan::execute_stream(plan, planned.task.clone())
            }),
        )
    }
}

async fn plan_it(plan: &LogicalPlan, context: &SessionContext) -> Result<Arc<Planned>> {
    let frame = context.execute_logical_plan(plan.clone()).await?;
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    Ok(Arc::new(Planned { plan, task }))
}

/// Whether `plan` makes the same rows whenever it runs: it reads no table (directly or in
/// a subquery), has no parameter, and calls only immutable functions (`now()` is stable:
/// DataFusion folds it into the plan when it optimizes).
fn is_constant(plan: &LogicalPlan) -> bool {
    let mut constant = true;
    let _ = plan.apply_with_subqueries(|node| {
        let allowed = matches!(
            node,
            LogicalPlan::Projection(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::EmptyRelation(_)
                | LogicalPlan::Values(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::Distinct(_)
        );
        if !allowed {
            constant = false;
            return Ok(TreeNodeRecursion::Stop);
        }
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                let fixed = match e {
                    Expr::Placeholder(_) => false,
                    Expr::ScalarFunction(f) => {
                        f.func.signature().volatility == Volatility::Immutable
                    }
                    Expr::AggregateFunction(f) => {
                        f.func.signature().volatility == Volatility::Immutable
                    }
                    Expr::WindowFunction(_) => false,
                    _ => true,
                };
                if fixed {
                    Ok(TreeNodeRecursion::Continue)
                } else {
                    constant = false;
                    Ok(TreeNodeRecursion::Stop)
                }
            })
        })
    });
    constant
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_constant_statement_is_planned_once_and_runs_every_time() {
        let context = SessionContext::new();
        let plans = ConstantPlans::default();
        let sql = "SELECT 1 AS one";
        let plan = context.state().create_logical_plan(sql).await.unwrap();
        for _ in 0..3 {
            let rows = plans
                .execute(&plan, String::new, &context)
                .await
                .expect("constant")
                .unwrap();
            let batches = datafusion::physical_plan::common::collect(rows)
                .await
                .unwrap();
            let shown = arrow::util::pretty::pretty_format_batches(&batches).unwrap();
            assert!(shown.to_string().contains("| 1   |"), "{shown}");
        }
        assert_eq!(plans.0.lock().unwrap().len(), 1);
        // Another connection's settings make another plan.
        plans
            .execute(
                &plan,
                || "datafusion.execution.batch_size=10\n".into(),
                &context,
            )
            .await
            .expect("constant")
            .unwrap();
        assert_eq!(plans.0.lock().unwrap().len(), 2);
        let clock = context
            .state()
            .create_logical_plan("SELECT now()")
            .await
            .unwrap();
        assert!(plans.execute(&clock, String::new, &context).await.is_none());
    }

    async fn logical(sql: &str) -> LogicalPlan {
        let context = SessionContext::new();
        context
            .sql("CREATE TABLE t (x INT) AS VALUES (1)")
            .await
            .unwrap();
        context.state().create_logical_plan(sql).await.unwrap()
    }

    #[tokio::test]
    async fn only_plans_that_always_make_the_same_rows_are_constant() {
        for sql in [
            "SELECT 1",
            "SELECT 1 AS a, 'x' || 'y', abs(-2.5)",
            "SELECT * FROM (VALUES (1), (2)) AS v(a) ORDER BY a DESC LIMIT 1",
            "SELECT count(*) FROM (VALUES (1), (2)) AS v(a)",
        ] {
            assert!(is_constant(&logical(sql).await), "{sql}");
        }
        for sql in [
            "SELECT * FROM t",
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM t)",
            "SELECT (SELECT max(x) FROM t)",
            "SELECT now()",
            "SELECT random()",
            "SELECT $1::int",
            "INSERT INTO t VALUES (2)",
            "SELECT * FROM generate_series(1, 3)",
            "EXPLAIN SELECT 1",
        ] {
            assert!(!is_constant(&logical(sql).await), "{sql}");
        }
    }
}
