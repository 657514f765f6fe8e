//! A Gannet table as a DataFusion [`TableProvider`].
//!
//! A scan takes one consistent snapshot of the table (buffered batches, segments,
//! tombstones) and plans it window by window (storage partitions time into windows, and a
//! point's versions all live in its window and share its time):
//!
//! - Each window is cut into runs: segments and buffered writes whose time spans overlap,
//!   and so may hold versions of the same point ([`ScanPlan`]). Runs outside the query's
//!   time range ([`TimeRange`], from the pushed-down filters) are dropped before anything
//!   is opened.
//! - A run of one segment that no delete touches is read straight from Parquet: one
//!   `DataSourceExec` over all such files, with its projection; DataFusion's physical
//!   filter pushdown gives it the query's filters as the Parquet predicate (row groups and
//!   pages pruned by their statistics and the page index).
//! - Runs of one buffered write in which no point appears twice need no merging: a
//!   window's such writes are only concatenated (data written in time order is all read
//!   this way), by [`MergeExec`] too, and kept like merges.
//! - Every other run is merged when the plan runs ([`MergeExec`]): its segments and
//!   buffered batches, deletes applied, each point once with the last write winning field
//!   by field. The merge is kept ([`MergedWindows`]) and reused by later queries for as
//!   long as the run holds the same segments, writes and deletes; a run that only gained
//!   writes merges them into the kept rows.
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
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use futures::future::BoxFuture;
use gannet_storage::buffer::Buffered;
use gannet_storage::catalog::SegmentMeta;
use gannet_storage::{Engine, TableSnapshot};

use crate::merge::{MergeExec, MergeRun};
use crate::tag_index::Indexes;

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

    /// The oldest and newest times the table holds, from its segments' and buffered
    /// writes' bounds ([`Engine::time_span`]).
    pub fn time_span(&self) -> Option<(i64, i64)> {
        self.engine.time_span(&self.db, &self.table)
    }
}

/// Merges kept between queries: merging (sorting and deduplicating a run's segments and
/// buffered batches) is the costly part of a scan, and a run no longer written to merges to
/// the same rows every time. An entry is used whole only while its run holds exactly what
/// it was merged from (same segments, same buffered writes, no newer delete); a run that
/// only gained writes since is merged from the entry and the new writes. The cache holds
/// at most `limit` bytes.
#[derive(Debug)]
pub struct MergedWindows {
    entries: Mutex<HashMap<RunKey, Kept>>,
    limit: usize,
}

/// A kept merge: what it was made of, its rows, and the tag indexes built over them.
type Kept = (RunContents, RecordBatch, Arc<Indexes>);

/// A run of a table: (database, table, window start, the run's oldest segment, or with the
/// top bit set, its oldest buffered write).
pub(crate) type RunKey = (String, String, i64, u64);

/// What a merged run was made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunContents {
    segments: Vec<u64>,
    buffered: Vec<(u64, usize)>,
    newest_delete: Option<u64>,
}

/// What the cache holds for a run.
pub(crate) enum Cached {
    /// The merge of exactly what the run holds, and its tag indexes.
    Whole(RecordBatch, Arc<Indexes>),
    /// The merge of the run's segments and its first `n` buffered writes.
    Prefix(RecordBatch, usize),
}

impl MergedWindows {
    pub fn new(limit: usize) -> Self {
        MergedWindows {
            entries: Mutex::default(),
            limit,
        }
    }

    /// The bytes the cache may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The bytes the kept merges hold now.
    pub fn held(&self) -> usize {
        let entries = self.entries.lock().expect("merged windows lock");
        entries
            .values()
            .map(|(_, b, _)| b.get_array_memory_size())
            .sum()
    }

    pub(crate) fn get(&self, key: &RunKey, contents: &RunContents) -> Option<Cached> {
        let entries = self.entries.lock().expect("merged windows lock");
        let (cached, batch, indexes) = entries.get(key)?;
        if cached == contents {
            Some(Cached::Whole(batch.clone(), indexes.clone()))
        } else if cached.segments == contents.segments
            && cached.newest_delete == contents.newest_delete
            && contents.buffered.starts_with(&cached.buffered)
        {
            Some(Cached::Prefix(batch.clone(), cached.buffered.len()))
        } else {
            None
        }
    }

    /// Lets go of a dropped table's merges.
    pub fn forget_table(&self, db: &str, table: &str) {
        self.entries
            .lock()
            .expect("merged windows lock")
            .retain(|(d, t, _, _), _| d != db || t != table);
    }

    /// Keeps `batch` if it fits; returns the tag indexes kept with it if it did.
    pub(crate) fn put(
        &self,
        key: RunKey,
        contents: RunContents,
        batch: &RecordBatch,
    ) -> Option<Arc<Indexes>> {
        let size = batch.get_array_memory_size();
        if size > self.limit / 4 {
            return None;
        }
        let mut entries = self.entries.lock().expect("merged windows lock");
        entries.remove(&key);
        let mut total: usize = entries
            .values()
            .map(|(_, b, _)| b.get_array_memory_size())
            .sum();
        while total + size > self.limit {
            let Some(evict) = entries.keys().next().cloned() else {
                break;
            };
            if let Some((_, b, _)) = entries.remove(&evict) {
                total -= b.get_array_memory_size();
            }
        }
        let indexes = Arc::new(Indexes::default());
        entries.insert(key, (contents, batch.clone(), indexes.clone()));
        Some(indexes)
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
        let plan = ScanPlan::new(&snapshot, range);

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !plan.direct.is_empty() {
            inputs.push(self.parquet_scan(state, &snapshot, &plan.direct, projection, limit)?);
        }
        if !plan.merged.is_empty() || !plan.concatenated.is_empty() {
            let newest_delete = snapshot.tombstones.iter().map(|t| t.seq).max();
            let key = |window: i64, id: u64| (self.db.clone(), self.table.clone(), window, id);
            let contents = |segments: Vec<u64>, buffered: &[&Arc<Buffered>]| RunContents {
                segments,
                buffered: buffered
                    .iter()
                    .map(|b| (b.seq, b.batch.num_rows()))
                    .collect(),
                newest_delete,
            };
            let mut runs: Vec<MergeRun> = plan
                .merged
                .iter()
                .map(|run| MergeRun {
                    key: key(
                        run.window,
                        match (run.segments.first(), run.buffered.first()) {
                            (Some((_, segment)), _) => segment.id.0,
                            (None, Some(write)) => write.seq | 1 << 63,
                            (None, None) => u64::MAX,
                        },
                    ),
                    contents: contents(run.segments().map(|s| s.id.0).collect(), &run.buffered),
                    segments: run.segments().cloned().collect(),
                    buffered: run.buffered.iter().map(|&b| b.clone()).collect(),
                    concatenate: false,
                })
                .collect();
            runs.extend(plan.concatenated.iter().map(|(&window, writes)| MergeRun {
                key: key(window, u64::MAX),
                contents: contents(Vec::new(), writes),
                segments: Vec::new(),
                buffered: writes.iter().map(|&b| b.clone()).collect(),
                concatenate: true,
            }));
            let partitions = state.config().target_partitions().max(1);
            inputs.push(Arc::new(MergeExec::new(
                snapshot.clone(),
                self.merged.clone(),
                self.schema.clone(),
                projection.cloned(),
                crate::tag_index::selection(filters, &self.schema),
                runs,
                partitions,
            )?));
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
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let url = ObjectStoreUrl::local_filesystem();
        let store = state.runtime_env().object_store(&url)?;
        // Footers and page indexes stay in the runtime's metadata cache: a one-series query
        // over 36 segments otherwise spends most of its time opening them. Segment files
        // never change once written (a new id for every rewrite), so an entry never goes
        // stale.
        let metadata = state.runtime_env().cache_manager.get_file_metadata_cache();
        let reader = PinningReaderFactory {
            inner: CachedParquetFileReaderFactory::new(store, metadata),
            _snapshot: snapshot.clone(),
        };
        let source = ParquetSource::new(self.schema.clone())
            .with_parquet_file_reader_factory(Arc::new(reader))
            .with_enable_page_index(true);
        // No predicate here: DataFusion's physical filter pushdown hands the scan the
        // filters above it (setting them here too made every conjunct appear twice).
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
    inner: CachedParquetFileReaderFactory,
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
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(PageIndexedReader { inner }))
    }
}

/// Asks for a file's metadata with its page index, so that the metadata cache keeps the
/// page index too. DataFusion's Parquet opener asks for the footer alone and loads the page
/// index afterwards through the reader, past the cache: every query over a segment would
/// read and decode its page index again (for a one-series query over a few segments, most
/// of the time spent opening them). Segments always have one, and queries almost always
/// use it (a time range or a tag equality).
struct PageIndexedReader {
    inner: Box<dyn AsyncFileReader + Send>,
}

impl AsyncFileReader for PageIndexedReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<bytes::Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<bytes::Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        let options = options
            .cloned()
            .unwrap_or_default()
            .with_page_index_policy(PageIndexPolicy::Optional);
        Box::pin(async move { self.inner.get_metadata(Some(&options)).await })
    }
}

/// What a scan reads within its time range.
///
/// A point's versions share its time, so only segments and buffered writes whose time spans
/// overlap can hold versions of the same point. The table is cut into runs of overlapping
/// spans (segments compacted from several windows span them all; everything else lies in
/// one window). A run of one segment that no
/// delete touches, or of one buffered write that repeats no point, is read as it is; every
/// other run is merged. Data written in time order (each write after the one before, as
/// most writers send it) makes runs of one: nothing to merge.
#[derive(Debug, Default)]
struct ScanPlan<'a> {
    /// Segments read straight from Parquet.
    direct: Vec<&'a SegmentMeta>,
    /// Per window, buffered writes that need no merging, oldest first: concatenated into
    /// one batch (writes are often small, and each has its own dictionaries).
    concatenated: BTreeMap<i64, Vec<&'a Arc<Buffered>>>,
    merged: Vec<Run<'a>>,
}

/// Segments and buffered writes whose time spans overlap.
#[derive(Debug)]
struct Run<'a> {
    /// The window of its first span: with the oldest segment, a name for the run.
    window: i64,
    min_time: i64,
    max_time: i64,
    /// With their places in the snapshot (oldest writes first).
    segments: Vec<(usize, &'a SegmentMeta)>,
    buffered: Vec<&'a Arc<Buffered>>,
    /// Must be merged even alone: a buffered write that repeats a point, a segment with
    /// deletes, or overlapping spans that may hold versions of one point.
    must_merge: bool,
}

impl<'a> Run<'a> {
    fn absorb(&mut self, other: Run<'a>) {
        self.max_time = self.max_time.max(other.max_time);
        self.segments.extend(other.segments);
        self.buffered.extend(other.buffered);
        self.must_merge = true;
    }

    /// The run's segments and buffered writes, each oldest first.
    fn segments(&self) -> impl Iterator<Item = &'a SegmentMeta> + '_ {
        self.segments.iter().map(|(_, s)| *s)
    }
}

impl<'a> ScanPlan<'a> {
    fn new(snapshot: &'a TableSnapshot, range: TimeRange) -> ScanPlan<'a> {
        let mut spans: Vec<Run<'a>> = Vec::new();
        for (i, segment) in snapshot.segments.iter().enumerate() {
            spans.push(Run {
                window: segment.window_start,
                min_time: segment.min_time,
                max_time: segment.max_time,
                segments: vec![(i, segment)],
                buffered: Vec::new(),
                must_merge: snapshot.has_deletes(segment),
            });
        }
        for write in &snapshot.buffer {
            if write.batch.num_rows() == 0 {
                continue;
            }
            spans.push(Run {
                window: write.window,
                min_time: write.min_time,
                max_time: write.max_time,
                segments: Vec::new(),
                buffered: vec![write],
                must_merge: false,
            });
        }

        let mut plan = ScanPlan::default();
        spans.sort_by_key(|run| run.min_time);
        let mut runs: Vec<Run<'a>> = Vec::new();
        for span in spans {
            match runs.last_mut() {
                Some(last) if span.min_time <= last.max_time => last.absorb(span),
                _ => runs.push(span),
            }
        }
        for mut run in runs {
            if !range.overlaps(run.min_time, run.max_time) {
                continue;
            }
            match (run.segments.as_slice(), run.buffered.as_slice()) {
                ([(_, only)], []) if !run.must_merge => plan.direct.push(only),
                ([], [only]) if only.has_unique_points() => {
                    plan.concatenated.entry(run.window).or_default().push(only)
                }
                _ => {
                    run.segments.sort_by_key(|(i, _)| *i);
                    run.buffered.sort_by_key(|b| b.seq);
                    plan.merged.push(run);
                }
            }
        }
        for writes in plan.concatenated.values_mut() {
            writes.sort_by_key(|b| b.seq);
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
