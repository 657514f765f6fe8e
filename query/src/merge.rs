//! Merging runs of a table when the plan runs, not when it is made.
//!
//! A run (see [`crate::table`]) is a set of segments and buffered writes that may hold
//! versions of the same points. [`MergeExec`] reads and deduplicates each run on the
//! blocking pool, so a merge neither holds up planning nor the async threads that serve
//! connections, and spreads the runs over the session's target partitions. What it holds
//! while its rows stream on is reserved in the query memory pool; merges kept for later
//! queries are the [`MergedWindows`] cache's, which has its own share of the query memory
//! limit.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::StreamExt;
use gannet_storage::TableSnapshot;
use gannet_storage::buffer::{Buffered, widen};
use gannet_storage::catalog::SegmentMeta;

use crate::table::{Cached, MergedWindows, RunContents, RunKey};
use crate::tag_index::{Indexes, Selection, select};

/// One run to merge: what it holds and how the cache knows it.
#[derive(Debug)]
pub(crate) struct MergeRun {
    pub key: RunKey,
    pub contents: RunContents,
    /// Oldest writes first.
    pub segments: Vec<SegmentMeta>,
    pub buffered: Vec<Arc<Buffered>>,
    /// The run is buffered writes that hold no point twice between them: concatenate them,
    /// nothing to sort or deduplicate.
    pub concatenate: bool,
}

/// Merges runs of one table snapshot, the runs spread over its partitions.
#[derive(Debug)]
pub(crate) struct MergeExec {
    shared: Arc<Shared>,
    partitions: Vec<Vec<Arc<MergeRun>>>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

#[derive(Debug)]
struct Shared {
    /// Holds the segment files on disk until the plan is gone.
    snapshot: Arc<TableSnapshot>,
    cache: Arc<MergedWindows>,
    /// The table's schema when the query was planned; the snapshot's may be wider.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    /// Tag equalities of the query's filters: only those rows go on.
    selection: Selection,
}

impl MergeExec {
    pub fn new(
        snapshot: Arc<TableSnapshot>,
        cache: Arc<MergedWindows>,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        selection: Selection,
        runs: Vec<MergeRun>,
        target_partitions: usize,
    ) -> Result<MergeExec> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        // Largest runs first, each to the partition with the fewest rows so far.
        let count = target_partitions.clamp(1, runs.len().max(1));
        let mut partitions: Vec<(usize, Vec<Arc<MergeRun>>)> = vec![(0, Vec::new()); count];
        let mut runs: Vec<(usize, MergeRun)> = runs.into_iter().map(|r| (r.rows(), r)).collect();
        runs.sort_by_key(|(rows, _)| std::cmp::Reverse(*rows));
        for (rows, run) in runs {
            let emptiest = partitions
                .iter_mut()
                .min_by_key(|(total, _)| *total)
                .expect("at least one partition");
            emptiest.0 += rows;
            emptiest.1.push(Arc::new(run));
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(count),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(MergeExec {
            shared: Arc::new(Shared {
                snapshot,
                cache,
                schema,
                projection,
                selection,
            }),
            partitions: partitions.into_iter().map(|(_, runs)| runs).collect(),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }
}

impl MergeRun {
    /// The rows the run holds before merging.
    fn rows(&self) -> usize {
        let segments: u64 = self.segments.iter().map(|s| s.rows).sum();
        segments as usize
            + self
                .buffered
                .iter()
                .map(|b| b.batch.num_rows())
                .sum::<usize>()
    }
}

impl Shared {
    /// The run merged, widened to the planned schema, narrowed to the rows the query's tag
    /// equalities select and to the projected columns, and whether the cache keeps the merge.
    fn merge(&self, run: &MergeRun) -> Result<(RecordBatch, bool)> {
        let (merged, indexes) = self.merge_whole(run)?;
        let selected = select(
            &merged,
            &self.selection,
            indexes.as_deref(),
            self.projection.as_deref(),
        )?;
        Ok((selected, indexes.is_some()))
    }

    /// As [`Shared::merge`], if the cache keeps the run's merge whole.
    fn kept(&self, run: &MergeRun) -> Option<Result<(RecordBatch, bool)>> {
        let Some(Cached::Whole(batch, indexes)) = self.cache.get(&run.key, &run.contents) else {
            return None;
        };
        let batch = widen(&batch, &self.schema);
        Some(
            select(
                &batch,
                &self.selection,
                Some(&indexes),
                self.projection.as_deref(),
            )
            .map(|selected| (selected, true)),
        )
    }

    /// The run merged and widened, and the tag indexes kept with it if the cache keeps it.
    fn merge_whole(&self, run: &MergeRun) -> Result<(RecordBatch, Option<Arc<Indexes>>)> {
        let external = |e: gannet_storage::Error| DataFusionError::External(Box::new(e));
        let schema = &self.snapshot.schema;
        let concatenated = |first: Option<&RecordBatch>, rest: &[Arc<Buffered>]| {
            let batches: Vec<RecordBatch> = first
                .into_iter()
                .chain(rest.iter().map(|b| &b.batch))
                .map(|b| widen(b, schema))
                .collect();
            arrow::compute::concat_batches(schema, &batches)
        };
        let merged = match (self.cache.get(&run.key, &run.contents), run.concatenate) {
            (Some(Cached::Whole(batch, indexes)), _) => {
                return Ok((widen(&batch, &self.schema), Some(indexes)));
            }
            (Some(Cached::Prefix(batch, n)), true) => {
                concatenated(Some(&batch), &run.buffered[n..])?
            }
            (Some(Cached::Prefix(batch, n)), false) => self
                .snapshot
                .merge_newer(batch, run.buffered[n..].iter().map(|b| &b.batch))
                .map_err(external)?,
            (None, true) => concatenated(None, &run.buffered)?,
            (None, false) => self
                .snapshot
                .read_merged_unordered(&run.segments, run.buffered.iter().map(|b| &b.batch))
                .map_err(external)?,
        };
        let indexes = self
            .cache
            .put(run.key.clone(), run.contents.clone(), &merged);
        Ok((widen(&merged, &self.schema), indexes))
    }
}

impl DisplayAs for MergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&Arc<MergeRun>> = self.partitions.iter().flatten().collect();
        let (concatenated, runs): (Vec<&Arc<MergeRun>>, Vec<&Arc<MergeRun>>) =
            all.iter().partition(|r| r.concatenate);
        let segments: usize = runs.iter().map(|r| r.segments.len()).sum();
        let buffered: usize = runs.iter().map(|r| r.buffered.len()).sum();
        let appended: usize = concatenated.iter().map(|r| r.buffered.len()).sum();
        write!(
            f,
            "MergeExec: table={}, partitions={}, runs={}, segments={segments}, \
             buffered_writes={buffered}, unmerged_writes={appended}",
            self.shared.snapshot.table,
            self.partitions.len(),
            runs.len(),
        )?;
        if let Some(p) = &self.shared.projection {
            let names: Vec<&str> = p
                .iter()
                .map(|&i| self.shared.schema.field(i).name().as_str())
                .collect();
            write!(f, ", projection=[{}]", names.join(", "))?;
        }
        if !self.shared.selection.is_empty() {
            let tags: Vec<String> = self
                .shared
                .selection
                .iter()
                .map(|(tag, values)| format!("{tag} in ({})", values.join(", ")))
                .collect();
            write!(f, ", tag_index=[{}]", tags.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for MergeExec {
    fn name(&self) -> &str {
        "MergeExec"
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let runs = self.partitions.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("MergeExec has no partition {partition}"))
        })?;
        let shared = self.shared.clone();
        let batch_size = context.session_config().batch_size().max(1);
        let reservation =
            MemoryConsumer::new(format!("MergeExec[{partition}]")).register(context.memory_pool());
        let schema = self.properties.eq_properties.schema().clone();
        let output = BaselineMetrics::new(&self.metrics, partition);
        let merged = futures::stream::iter(runs)
            .then(move |run| {
                let merging = shared.clone();
                async move {
                    // A kept merge only needs its rows picked: no need for the blocking pool.
                    if let Some(done) = merging.kept(&run) {
                        return done;
                    }
                    tokio::task::spawn_blocking(move || merging.merge(&run))
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?
                }
            })
            .map(move |merged| {
                // What this partition holds until its next run: the merge, unless the
                // cache keeps it (and counts it) anyway.
                let (batch, cached) = merged?;
                if cached {
                    reservation.free();
                } else {
                    reservation.try_resize(batch.get_array_memory_size())?;
                }
                output.record_output(batch.num_rows());
                let slices: Vec<Result<RecordBatch>> = (0..batch.num_rows())
                    .step_by(batch_size)
                    .map(
                        |offset| Ok(batch.slice(offset, batch_size.min(batch.num_rows() - offset))),
                    )
                    .collect();
                Ok::<_, DataFusionError>(slices)
            })
            .flat_map(|slices| {
                futures::stream::iter(match slices {
                    Ok(slices) => slices,
                    Err(e) => vec![Err(e)],
                })
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, merged)))
    }
}
