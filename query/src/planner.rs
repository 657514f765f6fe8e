//! Gannet's query planner: DataFusion's, with latest-row queries narrowed to the rows that
//! can matter ([`crate::latest`]) and gap filling ([`crate::gapfill`]).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use crate::gapfill::plan::GapFillPlanner;
use crate::newest::{NarrowToNewestBuckets, NewestBucketsPlanner};

#[derive(Debug, Default)]
struct GannetQueryPlanner;

#[async_trait]
impl QueryPlanner for GannetQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Narrowing runs a query of its own; if that fails, the plan as it is still answers.
        let narrowed = crate::latest::narrow(logical_plan, session)
            .await
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "latest-row narrowing skipped");
                None
            });
        DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(GapFillPlanner),
            Arc::new(NewestBucketsPlanner),
        ])
        .create_physical_plan(narrowed.as_ref().unwrap_or(logical_plan), session)
        .await
    }
}

/// `state` with Gannet's analyzer rule for gap filling and its query planner.
pub fn install(state: SessionState) -> SessionState {
    SessionStateBuilder::new_from_existing(state)
        .with_analyzer_rule(Arc::new(crate::gapfill::HandleGapFill))
        .with_optimizer_rule(Arc::new(NarrowToNewestBuckets))
        .with_optimizer_rule(Arc::new(crate::group_keys::GroupTagsAsViews))
        .with_query_planner(Arc::new(GannetQueryPlanner))
        .build()
}
