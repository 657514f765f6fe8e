//! A Gannet table as a DataFusion [`TableProvider`].
//!
//! A scan takes one consistent snapshot of the table (buffered batches, segments,
//! tombstones) and plans it window by window (storage partitions time into windows, and a
//! point's versions all live in its window):
//!
//! - Windows and segments outside the query's time range are dropped before anything is
//!   opened ([`TimeRange`], from the pushed-down filters).
//! - A window held by one segment alone, with no buffered rows and no delete hiding any of
//!   its rows, is read straight from Parquet: one `DataSourceExec` over all such files, with
//!   the query's filters as the Parquet predicate (row groups and pages pruned by their
//!   statistics) and its projection.
//! - Every other window is merged at plan time ([`TableSnapshot::read_merged`]): all its
//!   segments and buffered batches, deletes applied, each point once with the last write
//!   winning field by field. The merge is kept ([`MergedWindows`]) and reused by later
//!   queries for as long as the window holds the same segments, writes and deletes.
//!
//! The Parquet reader holds the snapshot, so compaction cannot delete a file the plan will
//! read.
//!
//! [`TableSnapshot::read_merged`]: gannet_storage::TableSnapshot::read_merged

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{
    DefaultParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use gannet_storage::buffer::Buffered;
use gannet_storage::catalog::SegmentMeta;
use gannet_storage::{Engine, TableSnapshot};

#[derive(Debug)]
pub struct GannetTable {
    engine: Arc<Engine>,
    db: String,
    table: String,
    schema: SchemaRef,
    merged: Arc<MergedWindows>,
}

impl GannetTable {
    pub fn new(
        engine: Arc<Engine>,
        db: &str,
        table: &str,
        schema: SchemaRef,
        merged: Arc<MergedWindows>,
    ) -> Self {
        GannetTable {
            engine,
            db: db.to_owned(),
            table: table.to_owned(),
            schema,
            merged,
        }
    }
}

/// Merged windows kept between queries: merging a window (sorting and deduplicating its
/// segments and buffered batches) is the costly part of a scan, and a window no longer
/// written to merges to the same rows every time. An entry is used only while the window
/// holds exactly what it was merged from (same segments, same buffered writes, no newer
/// delete); the cache holds at most `limit` bytes.
#[derive(Debug)]
pub struct MergedWindows {
    entries: Mutex<HashMap<WindowKey, (WindowContents, RecordBatch)>>,
    limit: usize,
}

/// A window of a table: (database, table, window start).
type WindowKey = (String, String, i64);

/// What a merged window was made of.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WindowContents {
    segments: Vec<u64>,
    buffered: Vec<(u64, usize)>,
    newest_delete: Option<u64>,
}

impl MergedWindows {
    pub fn new(limit: usize) -> Self {
        MergedWindows {
            entries: Mutex::default(),
            limit,
        }
    }

    fn get(&self, key: &WindowKey, contents: &WindowContents) -> Option<RecordBatch> {
        let entries = self.entries.lock().expect("merged windows lock");
        entries
            .get(key)
            .filter(|(c, _)| c == contents)
            .map(|(_, batch)| batch.clone())
    }

    fn put(&self, key: WindowKey, contents: WindowContents, batch: &RecordBatch) {
        let size = batch.get_array_memory_size();
        if size > self.limit / 4 {
            return;
        }
        let mut entries = self.entries.lock().expect("merged windows lock");
        entries.remove(&key);
        let mut total: usize = entries
            .values()
            .map(|(_, b)| b.get_array_memory_size())
            .sum();
        while total + size > self.limit {
            let Some(evict) = entries.keys().next().cloned() else {
                break;
            };
            if let Some((_, b)) = entries.remove(&evict) {
                total -= b.get_array_memory_size();
            }
        }
        entries.insert(key, (contents, batch.clone()));
    }
}

#[async_trait]
impl TableProvider for GannetTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter is used to prune (time ranges) or as a Parquet predicate, but none
    /// exactly: DataFusion still filters the rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    /// `INSERT`: the rows go through the line-protocol write path.
    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::NotImplemented(format!(
                "INSERT {insert_op}: Gannet tables take appends; writing a point again \
                 overwrites the fields it carries"
            )));
        }
        let sink = crate::dml::LineProtocolSink {
            engine: self.engine.clone(),
            db: self.db.clone(),
            table: self.table.clone(),
            schema: self.schema.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    /// `DELETE`: a tombstone over a time range and tag values.
    async fn delete_from(
        &self,
        _state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicate = crate::dml::delete_predicate(&filters, &self.schema)?;
        Ok(Arc::new(crate::dml::DeleteExec::new(
            self.engine.clone(),
            &self.db,
            &self.table,
            predicate,
        )))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let snapshot = self.engine.snapshot(&self.db, &self.table).ok_or_else(|| {
            DataFusionError::Plan(format!("table \"{}\" no longer exists", self.table))
        })?;
        let snapshot = Arc::new(snapshot);
        let range = TimeRange::from_filters(filters);
        let plan = WindowPlan::new(&snapshot, range);

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !plan.direct.is_empty() {
            inputs.push(self.parquet_scan(
                state,
                &snapshot,
                &plan.direct,
                projection,
                filters,
                limit,
            )?);
        }
        if !plan.merged.is_empty() {
            let newest_delete = snapshot.tombstones.iter().map(|t| t.seq).max();
            let mut batches = Vec::new();
            for (window, (segments, buffered)) in &plan.merged {
                let key = (self.db.clone(), self.table.clone(), *window);
                let contents = WindowContents {
                    segments: segments.iter().map(|s| s.id.0).collect(),
                    buffered: buffered
                        .iter()
                        .map(|b| (b.seq, b.batch.num_rows()))
                        .collect(),
                    newest_delete,
                };
                let merged = match self.merged.get(&key, &contents) {
                    Some(merged) => merged,
                    None => {
                        let merged = snapshot
                            .read_merged(
                                segments.iter().copied(),
                                buffered.iter().map(|b| &b.batch),
                            )
                            .map_err(|e| DataFusionError::External(Box::new(e)))?;
                        self.merged.put(key, contents, &merged);
                        merged
                    }
                };
                // The snapshot's schema may have grown since planning began: keep the planned one.
                batches.push(gannet_storage::buffer::widen(&merged, &self.schema));
            }
            inputs.push(MemorySourceConfig::try_new_exec(
                &[batches],
                self.schema.clone(),
                projection.cloned(),
            )?);
        }
        Ok(match inputs.len() {
            0 => {
                let schema = match projection {
                    Some(p) => Arc::new(self.schema.project(p)?),
                    None => self.schema.clone(),
                };
                Arc::new(EmptyExec::new(schema))
            }
            1 => inputs.pop().expect("one input"),
            _ => UnionExec::try_new(inputs)?,
        })
    }
}

impl GannetTable {
    /// One Parquet scan over the segments that need no merging, spread over the session's
    /// target partitions.
    fn parquet_scan(
        &self,
        state: &dyn Session,
        snapshot: &Arc<TableSnapshot>,
        segments: &[&SegmentMeta],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let url = ObjectStoreUrl::local_filesystem();
        let store = state.runtime_env().object_store(&url)?;
        let reader = PinningReaderFactory {
            inner: DefaultParquetFileReaderFactory::new(store),
            _snapshot: snapshot.clone(),
        };
        let mut source = ParquetSource::new(self.schema.clone())
            .with_parquet_file_reader_factory(Arc::new(reader))
            .with_enable_page_index(true);
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.schema.clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let partitions = state.config().target_partitions().max(1);
        let group_count = partitions.min(segments.len());
        let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); group_count];
        for (i, segment) in segments.iter().enumerate() {
            let path = snapshot.segment_path(segment);
            let file = PartitionedFile::new(path.to_string_lossy(), segment.bytes);
            groups[i % group_count].push(file);
        }
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// Reads Parquet files through DataFusion's default reader while holding the snapshot whose
/// pins keep those files on disk.
#[derive(Debug)]
struct PinningReaderFactory {
    inner: DefaultParquetFileReaderFactory,
    _snapshot: Arc<TableSnapshot>,
}

impl ParquetFileReaderFactory for PinningReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )
    }
}

/// What a scan reads, window by window, within its time range.
#[derive(Debug, Default)]
struct WindowPlan<'a> {
    /// Segments read straight from Parquet: each alone in its window.
    direct: Vec<&'a SegmentMeta>,
    /// Windows merged in memory: all their segments and buffered batches, oldest first
    /// (whole windows, so that a merge serves every query that touches the window).
    #[allow(clippy::type_complexity)]
    merged: BTreeMap<i64, (Vec<&'a SegmentMeta>, Vec<&'a Buffered>)>,
}

impl<'a> WindowPlan<'a> {
    fn new(snapshot: &'a TableSnapshot, range: TimeRange) -> WindowPlan<'a> {
        let mut windows: BTreeMap<i64, (Vec<&SegmentMeta>, Vec<&Buffered>)> = BTreeMap::new();
        let mut touched = std::collections::BTreeSet::new();
        for segment in &snapshot.segments {
            windows
                .entry(segment.window_start)
                .or_default()
                .0
                .push(segment);
            if range.overlaps(segment.min_time, segment.max_time) {
                touched.insert(segment.window_start);
            }
        }
        for buffered in &snapshot.buffer {
            windows.entry(buffered.window).or_default().1.push(buffered);
            let last = buffered.window.saturating_add(snapshot.window - 1);
            if range.overlaps(buffered.window, last) {
                touched.insert(buffered.window);
            }
        }
        let mut plan = WindowPlan::default();
        for (window, (segments, buffered)) in windows {
            if !touched.contains(&window) {
                continue;
            }
            match (segments.as_slice(), buffered.is_empty()) {
                ([only], true) if !snapshot.has_deletes(only) => plan.direct.push(only),
                _ => {
                    plan.merged.insert(window, (segments, buffered));
                }
            }
        }
        plan
    }
}

/// The times (nanoseconds, inclusive) a query's filters allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub min: i64,
    pub max: i64,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        min: i64::MIN,
        max: i64::MAX,
    };

    /// The range the conjunction of `filters` allows for the column `time`: comparisons
    /// of `time` with timestamp literals and `BETWEEN`, under `AND`. Anything else allows
    /// every time.
    pub fn from_filters(filters: &[Expr]) -> TimeRange {
        let mut range = TimeRange::ALL;
        for filter in filters {
            range.narrow(filter);
        }
        range
    }

    fn narrow(&mut self, expr: &Expr) {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    self.narrow(left);
                    self.narrow(right);
                } else if let (Some(()), Some(t)) = (time_column(left), timestamp(right)) {
                    self.apply(*op, t);
                } else if let (Some(t), Some(()), Some(op)) =
                    (timestamp(left), time_column(right), op.swap())
                {
                    self.apply(op, t);
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if time_column(expr).is_some() => {
                if let Some(low) = timestamp(low) {
                    self.apply(Operator::GtEq, low);
                }
                if let Some(high) = timestamp(high) {
                    self.apply(Operator::LtEq, high);
                }
            }
            _ => {}
        }
    }

    fn apply(&mut self, op: Operator, t: i64) {
        match op {
            Operator::Gt => self.min = self.min.max(t.saturating_add(1)),
            Operator::GtEq => self.min = self.min.max(t),
            Operator::Lt => self.max = self.max.min(t.saturating_sub(1)),
            Operator::LtEq => self.max = self.max.min(t),
            Operator::Eq => {
                self.min = self.min.max(t);
                self.max = self.max.min(t);
            }
            _ => {}
        }
    }

    fn overlaps(&self, min: i64, max: i64) -> bool {
        min <= self.max && max >= self.min
    }
}

fn time_column(expr: &Expr) -> Option<()> {
    match expr {
        Expr::Column(c) if c.name == "time" => Some(()),
        _ => None,
    }
}

/// A timestamp literal in nanoseconds.
fn timestamp(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}
