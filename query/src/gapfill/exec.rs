//! `GapFillExec`: adds the missing buckets to an aggregate's rows, series by series.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, TimestampNanosecondArray, UInt32Array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{SortOptions, cast, concat_batches, is_not_null, partition, take};
use arrow::datatypes::{DataType, Float64Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexRequirement, OrderingRequirements, PhysicalExpr,
    PhysicalSortRequirement,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};

use super::plan::FillStrategy;

/// The buckets to fill, in nanoseconds: `first` (or each series' first row), `first +
/// stride`, ... up to and including `last`.
#[derive(Debug, Clone, Copy)]
pub struct Range {
    pub stride: i64,
    pub first: Option<i64>,
    pub last: i64,
}

/// Fills gaps in its input, which it takes in one partition sorted by series and time.
#[derive(Debug)]
pub struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    time: usize,
    series: Vec<usize>,
    fills: Vec<(usize, FillStrategy)>,
    range: Range,
    properties: Arc<PlanProperties>,
}

impl GapFillExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        schema: SchemaRef,
        time: usize,
        series: Vec<usize>,
        fills: Vec<(usize, FillStrategy)>,
        range: Range,
    ) -> Result<GapFillExec> {
        if !matches!(
            input.schema().field(time).data_type(),
            DataType::Timestamp(..)
        ) {
            return Err(DataFusionError::Plan(format!(
                "date_bin_gapfill buckets timestamps, not {}",
                input.schema().field(time).data_type()
            )));
        }
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(GapFillExec {
            input,
            time,
            series,
            fills,
            range,
            properties: Arc::new(properties),
        })
    }

    /// Series columns, then time, all ascending with NULLs first.
    fn sort_requirement(&self) -> Option<LexRequirement> {
        let schema = self.input.schema();
        let column = |i: usize| -> Arc<dyn PhysicalExpr> {
            Arc::new(Column::new(schema.field(i).name(), i))
        };
        LexRequirement::new(
            self.series
                .iter()
                .chain(std::iter::once(&self.time))
                .map(|&i| PhysicalSortRequirement::new(column(i), Some(SortOptions::default()))),
        )
    }
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schema = self.input.schema();
        let name = |i: usize| schema.field(i).name().clone();
        let series: Vec<_> = self.series.iter().map(|&i| name(i)).collect();
        write!(
            f,
            "GapFillExec: time={}, stride={}s, first={}, last={}, series=[{}]",
            name(self.time),
            std::time::Duration::from_nanos(self.range.stride as u64).as_secs_f64(),
            self.range
                .first
                .map_or_else(|| "first row".to_owned(), timestamp),
            timestamp(self.range.last),
            series.join(", ")
        )?;
        if !self.fills.is_empty() {
            let fills: Vec<_> = self
                .fills
                .iter()
                .map(|(i, s)| format!("{s:?}({})", name(*i)).to_lowercase())
                .collect();
            write!(f, ", fill=[{}]", fills.join(", "))?;
        }
        Ok(())
    }
}

pub(crate) fn timestamp(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .format("%Y-%m-%dT%H:%M:%S%.fZ")
        .to_string()
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &str {
        "GapFillExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![self.sort_requirement().map(OrderingRequirements::new)]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[Arc<dyn ExecutionPlan>; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("GapFillExec has one input".into()))?;
        Ok(Arc::new(GapFillExec {
            input,
            time: self.time,
            series: self.series.clone(),
            fills: self.fills.clone(),
            range: self.range,
            properties: self.properties.clone(),
        }))
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "GapFillExec has one partition, not {partition}"
            )));
        }
        let input = self.input.execute(0, context.clone())?;
        let input_schema = self.input.schema();
        let schema = self.properties.eq_properties.schema().clone();
        let batch_size = context.session_config().batch_size().max(1);
        let reservation = MemoryConsumer::new("GapFillExec").register(context.memory_pool());
        let (time, series, fills, range) = (
            self.time,
            self.series.clone(),
            self.fills.clone(),
            self.range,
        );
        let output_schema = schema.clone();
        let filled = futures::stream::once(async move {
            // The aggregate's rows: one per series and bucket that has data, so far
            // fewer than the rows aggregated.
            let reservation = reservation;
            let batches: Vec<RecordBatch> = input
                .and_then(|batch| {
                    let grown = reservation.try_grow(batch.get_array_memory_size());
                    futures::future::ready(grown.map(|()| batch))
                })
                .try_collect()
                .await?;
            let rows = concat_batches(&input_schema, &batches)?;
            drop(batches);
            Filler::new(
                output_schema,
                rows,
                time,
                &series,
                fills,
                range,
                batch_size,
                reservation,
            )
        })
        .map(|filler| match filler {
            Ok(filler) => futures::stream::iter(filler).left_stream(),
            Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, filled)))
    }
}

/// Where the walk over a series is.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// At the start of the series: rows without a time come first.
    Start,
    /// At bucket `t`.
    Bucket(i64),
    /// Past the last bucket: whatever rows are left.
    Tail,
}

/// A filled column's source and state.
enum FillColumn {
    Locf {
        /// The last row of the series with a value.
        last: Option<u32>,
        rows: Vec<Option<u32>>,
    },
    Interpolate {
        values: Float64Array,
        /// The time and value of the series' last row with a value.
        previous: Option<(i64, f64)>,
        /// For each row of the current series (and one past it): the next row at or after
        /// it that has a value and a time.
        next: Vec<Option<u32>>,
        filled: Vec<Option<f64>>,
    },
}

/// Produces the output batch by batch from the sorted input rows.
struct Filler {
    schema: SchemaRef,
    rows: RecordBatch,
    /// The input's bucket column, as nanoseconds.
    times: TimestampNanosecondArray,
    time: usize,
    series_columns: Vec<usize>,
    /// Each series' rows: `[start, end)`.
    series: Vec<(usize, usize)>,
    fill_columns: Vec<usize>,
    fills: Vec<FillColumn>,
    range: Range,
    batch_size: usize,
    _reservation: MemoryReservation,
    // The walk.
    current: usize,
    row: usize,
    cursor: Cursor,
    // The batch being made: per output row, the series' first row, the time, and the input
    // row it copies (`None` for an added row).
    out_series: Vec<u32>,
    out_times: Vec<Option<i64>>,
    out_rows: Vec<Option<u32>>,
}

impl Filler {
    #[allow(clippy::too_many_arguments)]
    fn new(
        schema: SchemaRef,
        rows: RecordBatch,
        time: usize,
        series_columns: &[usize],
        fills: Vec<(usize, FillStrategy)>,
        range: Range,
        batch_size: usize,
        reservation: MemoryReservation,
    ) -> Result<Filler> {
        if rows.num_rows() > u32::MAX as usize {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "gap filling takes at most {} aggregated rows, not {}",
                u32::MAX,
                rows.num_rows()
            )));
        }
        let tz = match rows.schema().field(time).data_type() {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let times = cast(
            rows.column(time),
            &DataType::Timestamp(TimeUnit::Nanosecond, tz),
        )?
        .as_primitive::<TimestampNanosecondType>()
        .clone();
        let series = if series_columns.is_empty() {
            // One series, even without rows when the range has a start: every bucket.
            if rows.num_rows() > 0 || range.first.is_some() {
                vec![(0, rows.num_rows())]
            } else {
                Vec::new()
            }
        } else if rows.num_rows() == 0 {
            Vec::new()
        } else {
            let columns: Vec<ArrayRef> = series_columns
                .iter()
                .map(|&i| rows.column(i).clone())
                .collect();
            partition(&columns)?
                .ranges()
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect()
        };
        let fill_columns = fills.iter().map(|(c, _)| *c).collect();
        let fills = fills
            .into_iter()
            .map(|(column, strategy)| {
                Ok(match strategy {
                    FillStrategy::Locf => FillColumn::Locf {
                        last: None,
                        rows: Vec::new(),
                    },
                    FillStrategy::Interpolate => FillColumn::Interpolate {
                        values: cast(rows.column(column), &DataType::Float64)?
                            .as_primitive::<Float64Type>()
                            .clone(),
                        previous: None,
                        next: Vec::new(),
                        filled: Vec::new(),
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Filler {
            schema,
            rows,
            times,
            time,
            series_columns: series_columns.to_vec(),
            series,
            fill_columns,
            fills,
            range,
            batch_size,
            _reservation: reservation,
            current: 0,
            row: 0,
            cursor: Cursor::Start,
            out_series: Vec::new(),
            out_times: Vec::new(),
            out_rows: Vec::new(),
        })
    }

    fn time_of(&self, row: usize) -> Option<i64> {
        self.times.is_valid(row).then(|| self.times.value(row))
    }

    /// Walks on until the batch is full or the input is done.
    fn walk(&mut self) {
        while self.out_rows.len() < self.batch_size {
            let Some(&(start, end)) = self.series.get(self.current) else {
                return;
            };
            match self.cursor {
                Cursor::Start => {
                    if self.row == start {
                        self.start_series(start, end);
                    }
                    if self.row < end && self.time_of(self.row).is_none() {
                        self.copy_row(start, self.row);
                        self.row += 1;
                        continue;
                    }
                    let first = self
                        .range
                        .first
                        .or_else(|| (self.row < end).then(|| self.time_of(self.row)).flatten());
                    self.cursor = first.map_or(Cursor::Tail, Cursor::Bucket);
                }
                Cursor::Bucket(t) => {
                    let next = (self.row < end).then(|| self.time_of(self.row)).flatten();
                    match next {
                        // A row off the grid (it should not happen): kept, in time order.
                        Some(row_time) if row_time < t => {
                            self.copy_row(start, self.row);
                            self.row += 1;
                        }
                        _ if t > self.range.last => self.cursor = Cursor::Tail,
                        Some(row_time) if row_time == t => {
                            self.copy_row(start, self.row);
                            self.row += 1;
                            self.advance(t);
                        }
                        _ => {
                            self.add_row(start, t);
                            self.advance(t);
                        }
                    }
                }
                Cursor::Tail => {
                    if self.row < end {
                        self.copy_row(start, self.row);
                        self.row += 1;
                    } else {
                        self.current += 1;
                        self.cursor = Cursor::Start;
                    }
                }
            }
        }
    }

    fn advance(&mut self, t: i64) {
        self.cursor = match t.checked_add(self.range.stride) {
            Some(next) => Cursor::Bucket(next),
            None => Cursor::Tail,
        };
    }

    fn start_series(&mut self, start: usize, end: usize) {
        for fill in &mut self.fills {
            match fill {
                FillColumn::Locf { last, .. } => *last = None,
                FillColumn::Interpolate {
                    values,
                    previous,
                    next,
                    ..
                } => {
                    *previous = None;
                    next.clear();
                    next.resize(end - start + 1, None);
                    for row in (start..end).rev() {
                        next[row - start] = if values.is_valid(row) && self.times.is_valid(row) {
                            Some(row as u32)
                        } else {
                            next[row - start + 1]
                        };
                    }
                }
            }
        }
    }

    /// Outputs input row `row` of the series starting at `start`.
    fn copy_row(&mut self, start: usize, row: usize) {
        let time = self.time_of(row);
        self.out_series.push(start as u32);
        self.out_times.push(time);
        self.out_rows.push(Some(row as u32));
        for (i, fill) in self.fills.iter_mut().enumerate() {
            match fill {
                FillColumn::Locf { last, rows } => {
                    if self.rows.column(self.fill_columns[i]).is_valid(row) {
                        *last = Some(row as u32);
                    }
                    rows.push(*last);
                }
                FillColumn::Interpolate {
                    values,
                    previous,
                    next,
                    filled,
                } => match time {
                    Some(t) if values.is_valid(row) => {
                        *previous = Some((t, values.value(row)));
                        filled.push(None);
                    }
                    Some(t) => {
                        let after = next[row + 1 - start];
                        filled.push(interpolate(*previous, after, t, values, &self.times));
                    }
                    None => filled.push(None),
                },
            }
        }
    }

    /// Outputs an added row at bucket `t` for the series starting at `start`.
    fn add_row(&mut self, start: usize, t: i64) {
        self.out_series.push(start as u32);
        self.out_times.push(Some(t));
        self.out_rows.push(None);
        let row = self.row;
        for fill in &mut self.fills {
            match fill {
                FillColumn::Locf { last, rows } => rows.push(*last),
                FillColumn::Interpolate {
                    values,
                    previous,
                    next,
                    filled,
                } => {
                    let after = next[row - start];
                    filled.push(interpolate(*previous, after, t, values, &self.times));
                }
            }
        }
    }

    /// The batch of the rows walked so far.
    fn take_batch(&mut self) -> Result<RecordBatch> {
        let series = UInt32Array::from(std::mem::take(&mut self.out_series));
        let rows = UInt32Array::from(std::mem::take(&mut self.out_rows));
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for (i, column) in self.rows.columns().iter().enumerate() {
            columns.push(if i == self.time {
                let times = TimestampNanosecondArray::from(std::mem::take(&mut self.out_times))
                    .with_timezone_opt(self.times.timezone().map(Arc::<str>::from));
                cast(&times, column.data_type())?
            } else if self.series_columns.contains(&i) {
                take(column, &series, None)?
            } else {
                take(column, &rows, None)?
            });
        }
        for (i, fill) in self.fills.iter_mut().enumerate() {
            let column = self.rows.column(self.fill_columns[i]);
            columns.push(match fill {
                FillColumn::Locf { rows, .. } => {
                    take(column, &UInt32Array::from(std::mem::take(rows)), None)?
                }
                FillColumn::Interpolate { filled, .. } => {
                    let own = take(column, &rows, None)?;
                    let filled = Float64Array::from(std::mem::take(filled));
                    let filled = cast(&filled, column.data_type())?;
                    zip(&is_not_null(&own)?, &own, &filled)?
                }
            });
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// The value at `t` on the line from `previous` to the row `after`, if both exist.
fn interpolate(
    previous: Option<(i64, f64)>,
    after: Option<u32>,
    t: i64,
    values: &Float64Array,
    times: &TimestampNanosecondArray,
) -> Option<f64> {
    let (t0, v0) = previous?;
    let after = after? as usize;
    let (t1, v1) = (times.value(after), values.value(after));
    if t1 == t0 {
        return Some(v0);
    }
    Some(v0 + (v1 - v0) * ((t - t0) as f64 / (t1 - t0) as f64))
}

impl Iterator for Filler {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.walk();
        if self.out_rows.is_empty() {
            return None;
        }
        Some(self.take_batch())
    }
}
