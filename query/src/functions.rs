//! Gannet's time-series SQL functions, next to DataFusion's own:
//!
//! - `time_bucket(interval, time)`: TimescaleDB's argument order and alignment (buckets of
//!   a week or less start from Monday 2000-01-03, as TimescaleDB's do); rewritten to
//!   DataFusion's `date_bin` before execution.
//! - `first(value, time)` and `last(value, time)`: the value at the earliest or latest
//!   time of a group, as TimescaleDB's selectors. Rows whose time is NULL are skipped.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type, IntervalUnit, TimeUnit};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, Expr, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};

/// Registers Gannet's functions in a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(TimeBucket::new()));
    ctx.register_udaf(AggregateUDF::new_from_impl(Selector::new(Pick::First)));
    ctx.register_udaf(AggregateUDF::new_from_impl(Selector::new(Pick::Last)));
    crate::first_last::register(ctx);
    crate::runs::register(ctx);
    crate::gapfill::register(ctx);
}

/// `time_bucket`, for gap filling's `time_bucket_gapfill`.
pub(crate) fn time_bucket() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(TimeBucket::new()))
}

/// TimescaleDB's origin for buckets: Monday, 2000-01-03T00:00:00Z.
pub(crate) const TIMESCALE_ORIGIN_NS: i64 = 946_857_600_000_000_000;

#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeBucket {
    signature: Signature,
}

impl TimeBucket {
    fn new() -> Self {
        TimeBucket {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    fn origin(time_type: &DataType) -> ScalarValue {
        let tz = match time_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        ScalarValue::TimestampNanosecond(Some(TIMESCALE_ORIGIN_NS), tz)
    }
}

impl ScalarUDFImpl for TimeBucket {
    fn name(&self) -> &str {
        "time_bucket"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [interval, time] = arg_types else {
            return plan_err!("time_bucket takes two arguments: time_bucket(interval, time)");
        };
        let interval = match interval {
            DataType::Interval(_) => interval.clone(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {
                DataType::Interval(IntervalUnit::MonthDayNano)
            }
            other => {
                return plan_err!("time_bucket's first argument is an interval, not {other}");
            }
        };
        let time = match time {
            DataType::Timestamp(_, _) => time.clone(),
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Date32
            | DataType::Date64
            | DataType::Null => DataType::Timestamp(TimeUnit::Nanosecond, None),
            other => return plan_err!("time_bucket's second argument is a timestamp, not {other}"),
        };
        Ok(vec![interval, time])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[1].clone())
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let [interval, time] = <[Expr; 2]>::try_from(args).map_err(|_| {
            datafusion::error::DataFusionError::Plan("time_bucket takes two arguments".into())
        })?;
        let origin = Self::origin(&info.get_data_type(&time)?);
        let date_bin = datafusion::functions::datetime::date_bin();
        Ok(ExprSimplifyResult::Simplified(date_bin.call(vec![
            interval,
            time,
            lit(origin),
        ])))
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Normally rewritten to date_bin by `simplify`; this serves plans that skip it.
        let origin = Self::origin(args.arg_fields[1].data_type());
        args.arg_fields
            .push(Arc::new(Field::new("origin", origin.data_type(), false)));
        args.args.push(ColumnarValue::Scalar(origin));
        datafusion::functions::datetime::date_bin().invoke_with_args(args)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pick {
    First,
    Last,
}

/// `first(value, time)` / `last(value, time)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Selector {
    pick: Pick,
    signature: Signature,
}

impl Selector {
    fn new(pick: Pick) -> Self {
        Selector {
            pick,
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Selector {
    fn name(&self) -> &str {
        match self.pick {
            Pick::First => "first",
            Pick::Last => "last",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[1] {
            DataType::Timestamp(..) | DataType::Int64 | DataType::Int32 | DataType::Date32 => {
                Ok(arg_types[0].clone())
            }
            other => plan_err!(
                "{}(value, time) orders by a timestamp or integer, not {other}",
                self.name()
            ),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SelectorAccumulator {
            pick: self.pick,
            value: ScalarValue::try_from(args.return_field.data_type())?,
            time: None,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format!("{}[value]", args.name),
                args.return_field.data_type().clone(),
                true,
            )),
            Arc::new(Field::new(
                format!("{}[time]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }
}

/// The value at the best time so far.
#[derive(Debug)]
struct SelectorAccumulator {
    pick: Pick,
    value: ScalarValue,
    time: Option<i64>,
}

impl SelectorAccumulator {
    /// Takes the row of `values` at the best time of `times` if it beats the current one.
    /// Ties keep the row seen first (`first`) or last (`last`).
    fn take_best(&mut self, values: &ArrayRef, times: &ArrayRef) -> Result<()> {
        let times = cast(times, &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let mut best: Option<(usize, i64)> = None;
        for (row, time) in times.iter().enumerate() {
            let Some(time) = time else { continue };
            let better = match (best, self.pick) {
                (None, _) => true,
                (Some((_, t)), Pick::First) => time < t,
                (Some((_, t)), Pick::Last) => time >= t,
            };
            if better {
                best = Some((row, time));
            }
        }
        let Some((row, time)) = best else {
            return Ok(());
        };
        let replace = match (self.time, self.pick) {
            (None, _) => true,
            (Some(t), Pick::First) => time < t,
            (Some(t), Pick::Last) => time >= t,
        };
        if replace {
            self.value = ScalarValue::try_from_array(values, row)?;
            self.time = Some(time);
        }
        Ok(())
    }
}

impl Accumulator for SelectorAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [value, time] = values else {
            return exec_err!("first/last take two arguments");
        };
        self.take_best(value, time)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.update_batch(states)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value.clone(), ScalarValue::Int64(self.time)])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value.clone())
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.size() - std::mem::size_of_val(&self.value)
    }
}
