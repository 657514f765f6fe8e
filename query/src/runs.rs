//! `avg` and `sum` that fold runs of rows of one group before accumulating.
//!
//! Segments are sorted by series and time, so an aggregate grouped by series (and hour, or
//! minute) sees each group's rows one after the other: hundreds of rows in a row for the
//! same group. DataFusion's groups accumulators add each row to `sums[group]` in memory;
//! when consecutive rows hit the same group, each load waits for the store before it, a
//! chain of dependent additions through memory. In TSBS double-groupby-all (ten `avg`s by
//! host and hour) that loop was the hottest function, a fifth of the query's CPU.
//!
//! The wrappers here find the runs of equal group indices in a batch, sum each run in
//! registers (four lanes), and hand DataFusion's own accumulator one partial state per run
//! through `merge_batch`, the path that combines partial aggregates. Batches whose runs are
//! short (rows in arrival order, where groups alternate at every row) go to `update_batch`
//! unchanged, and so does anything with nulls or a filter. `min` and `max` are left alone:
//! they store only when a value beats the one kept, so there is no chain to break.
//!
//! Everything else is DataFusion's function; the wrappers replace the built-ins by name in
//! every Gannet session.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, PrimitiveArray};
use arrow::datatypes::{DataType, FieldRef, Float64Type, UInt64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::functions_aggregate::average::avg_udaf;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{
    AggregateFunction, AggregateFunctionParams, WindowFunctionParams,
};
use datafusion::logical_expr::function::StateFieldsArgs;
use datafusion::logical_expr::function::{AccumulatorArgs, AggregateFunctionSimplification};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, Expr, GroupsAccumulator,
    Operator, ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};
use datafusion::prelude::SessionContext;

/// Batches shorter than this go to the accumulator as they are.
const MIN_ROWS: usize = 64;

/// Folding pays once runs are at least this long on average.
const MIN_AVERAGE_RUN: usize = 8;

/// Registers the folding `avg` and `sum` in `ctx`.
pub fn register(ctx: &SessionContext) {
    for (udaf, fold) in [(avg_udaf(), Fold::Avg), (sum_udaf(), Fold::Sum)] {
        let inner = AggregateUDF::new_from_shared_impl(udaf.inner().clone());
        ctx.register_udaf(AggregateUDF::new_from_impl(RunFolding { inner, fold }));
    }
}

/// What one run of values reduces to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fold {
    /// `[count, sum]`, `avg`'s state.
    Avg,
    Sum,
}

impl Fold {
    /// Whether runs of `input` can be folded: the types whose state this module builds.
    fn folds(self, input: &DataType) -> bool {
        input == &DataType::Float64
    }

    /// The partial state of each run of `values` (no nulls), in the order of the aggregate's
    /// state fields; `None` if `values` is not of a type this fold handles.
    fn state(self, values: &ArrayRef, runs: &Runs) -> Option<Vec<ArrayRef>> {
        let state: Vec<ArrayRef> = match (self, values.data_type()) {
            (Fold::Avg, DataType::Float64) => {
                let values = values.as_primitive::<Float64Type>();
                let counts = runs.lengths(values.len()).map(|n| n as u64);
                let counts = PrimitiveArray::<UInt64Type>::from_iter_values(counts);
                vec![Arc::new(counts), Arc::new(sums(values, runs))]
            }
            (Fold::Sum, DataType::Float64) => {
                vec![Arc::new(sums(values.as_primitive::<Float64Type>(), runs))]
            }
            _ => return None,
        };
        Some(state)
    }
}

/// The sum of each run, four lanes at a time (an f64 sum in one register is a chain of
/// dependent additions).
fn sums(values: &PrimitiveArray<Float64Type>, runs: &Runs) -> PrimitiveArray<Float64Type> {
    let data = values.values();
    PrimitiveArray::from_iter_values(runs.ranges(data.len()).map(|(start, end)| {
        let run = &data[start..end];
        let mut lanes = [0.0f64; 4];
        let chunks = run.chunks_exact(4);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (lane, value) in lanes.iter_mut().zip(chunk) {
                *lane += value;
            }
        }
        let tail: f64 = rest.iter().sum();
        (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
    }))
}

/// The runs of equal group indices in a batch: where each starts, and its group.
#[derive(Debug, Default)]
struct Runs {
    starts: Vec<usize>,
    groups: Vec<usize>,
}

impl Runs {
    /// Finds the runs of `group_indices`; false (and nothing found) when they are too short
    /// on average to be worth folding.
    fn find(&mut self, group_indices: &[usize]) -> bool {
        self.starts.clear();
        self.groups.clear();
        let rows = group_indices.len();
        if rows < MIN_ROWS {
            return false;
        }
        // Rows in arrival order change group at almost every row: the first rows tell.
        let head = &group_indices[..MIN_ROWS];
        let changes = head.windows(2).filter(|w| w[0] != w[1]).count();
        if (changes + 1) * MIN_AVERAGE_RUN > 2 * MIN_ROWS {
            return false;
        }
        let most = rows / MIN_AVERAGE_RUN;
        let mut previous = group_indices[0];
        self.starts.push(0);
        self.groups.push(previous);
        for (row, &group) in group_indices.iter().enumerate().skip(1) {
            if group != previous {
                if self.starts.len() == most {
                    self.starts.clear();
                    self.groups.clear();
                    return false;
                }
                self.starts.push(row);
                self.groups.push(group);
                previous = group;
            }
        }
        true
    }

    /// Each run's rows, `start..end`, in a batch of `rows` rows.
    fn ranges(&self, rows: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let ends = self.starts.iter().skip(1).copied().chain([rows]);
        self.starts.iter().copied().zip(ends)
    }

    /// Each run's length.
    fn lengths(&self, rows: usize) -> impl Iterator<Item = usize> + '_ {
        self.ranges(rows).map(|(start, end)| end - start)
    }
}

/// One of DataFusion's aggregates whose groups accumulator folds runs first.
#[derive(Debug, PartialEq, Eq, Hash)]
struct RunFolding {
    inner: AggregateUDF,
    fold: Fold,
}

impl RunFolding {
    fn inner(&self) -> &Arc<dyn AggregateUDFImpl> {
        self.inner.inner()
    }

    fn wrap(&self, inner: Arc<dyn AggregateUDFImpl>) -> Arc<dyn AggregateUDFImpl> {
        Arc::new(RunFolding {
            inner: AggregateUDF::new_from_shared_impl(inner),
            fold: self.fold,
        })
    }
}

impl AggregateUDFImpl for RunFolding {
    fn name(&self) -> &str {
        self.inner().name()
    }

    fn aliases(&self) -> &[String] {
        self.inner().aliases()
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner().schema_name(params)
    }

    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner().human_display(params)
    }

    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner().window_function_schema_name(params)
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner().display_name(params)
    }

    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner().window_function_display_name(params)
    }

    fn signature(&self) -> &Signature {
        self.inner().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner().return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner().return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner().is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        self.inner().accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        self.inner().state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs<'_>) -> bool {
        self.inner().groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let folds = !args.is_distinct
            && args.exprs.len() == 1
            && args
                .expr_fields
                .first()
                .is_some_and(|field| self.fold.folds(field.data_type()));
        let inner = self.inner().create_groups_accumulator(args)?;
        if !folds {
            return Ok(inner);
        }
        Ok(Box::new(FoldingAccumulator {
            inner,
            fold: self.fold,
            runs: Runs::default(),
        }))
    }

    fn create_sliding_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn Accumulator>> {
        self.inner().create_sliding_accumulator(args)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = self
            .inner()
            .clone()
            .with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| self.wrap(inner)))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner().order_sensitivity()
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.inner().simplify()
    }

    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.inner()
            .simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner().reverse_expr() {
            ReversedUDAF::Reversed(reversed) => ReversedUDAF::Reversed(Arc::new(
                AggregateUDF::new_from_shared_impl(self.wrap(reversed.inner().clone())),
            )),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner().coerce_types(arg_types)
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner().is_descending()
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs<'_>) -> Option<ScalarValue> {
        self.inner().value_from_stats(statistics_args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner().default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner().supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner().supports_within_group_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner().documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner().set_monotonicity(data_type)
    }
}

/// DataFusion's groups accumulator, given one partial state per run where runs are long.
struct FoldingAccumulator {
    inner: Box<dyn GroupsAccumulator>,
    fold: Fold,
    runs: Runs,
}

impl GroupsAccumulator for FoldingAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if let [value] = values
            && opt_filter.is_none()
            && value.null_count() == 0
            && self.runs.find(group_indices)
            && let Some(state) = self.fold.state(value, &self.runs)
        {
            return self
                .inner
                .merge_batch(&state, &self.runs.groups, total_num_groups);
        }
        self.inner
            .update_batch(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.inner.evaluate(emit_to)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.inner.state(emit_to)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.inner
            .merge_batch(values, group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        self.inner.convert_to_state(values, opt_filter)
    }

    fn size(&self) -> usize {
        self.inner.size()
            + (self.runs.starts.capacity() + self.runs.groups.capacity()) * size_of::<usize>()
    }
}

#[cfg(test)]
mod tests;
