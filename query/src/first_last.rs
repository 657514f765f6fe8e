//! `first_value` and `last_value` that keep their fast path on dictionary columns.
//!
//! DataFusion's `first_value`/`last_value` have a vectorized groups accumulator for
//! primitive, string and binary values, but not for dictionaries, which is what Gannet's
//! tags are: over a tag they fall back to one `ScalarValue` per row. `SELECT DISTINCT ON
//! (hostname) * ... ORDER BY hostname, time DESC` (the lastpoint query) becomes
//! `first_value` over every column, so every tag took the slow path. The wrappers here
//! decode a dictionary batch to its value type, run the vectorized accumulator, and encode
//! what it returns back to the dictionary type; everything else is DataFusion's function,
//! unchanged. They replace the built-in functions by name in every Gannet session.

use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::Result;
use datafusion::functions_aggregate::first_last::{first_value_udaf, last_value_udaf};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    ReversedUDAF, Signature,
};
use datafusion::prelude::SessionContext;

/// Registers the wrapped `first_value` and `last_value` in `ctx`.
pub fn register(ctx: &SessionContext) {
    for inner in [first_value_udaf(), last_value_udaf()] {
        let inner = AggregateUDF::new_from_shared_impl(inner.inner().clone());
        ctx.register_udaf(AggregateUDF::new_from_impl(DictionaryAware { inner }));
    }
}

/// An order-sensitive aggregate whose groups accumulator runs on the dictionary's values.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DictionaryAware {
    inner: AggregateUDF,
}

/// The value type of a dictionary type.
fn values_of(data_type: &DataType) -> Option<&DataType> {
    match data_type {
        DataType::Dictionary(_, values) => Some(values),
        _ => None,
    }
}

impl AggregateUDFImpl for DictionaryAware {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs<'_>) -> bool {
        match values_of(args.return_field.data_type()) {
            Some(values) => {
                let field = Arc::new(Field::new(
                    args.return_field.name(),
                    values.clone(),
                    args.return_field.is_nullable(),
                ));
                self.inner.groups_accumulator_supported(AccumulatorArgs {
                    return_field: field,
                    ..args
                })
            }
            None => self.inner.groups_accumulator_supported(args),
        }
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let Some(values) = values_of(args.return_field.data_type()) else {
            return self.inner.create_groups_accumulator(args);
        };
        let dictionary = args.return_field.data_type().clone();
        let field = Arc::new(Field::new(
            args.return_field.name(),
            values.clone(),
            args.return_field.is_nullable(),
        ));
        let inner = self.inner.create_groups_accumulator(AccumulatorArgs {
            return_field: field,
            ..args
        })?;
        Ok(Box::new(DecodingAccumulator {
            inner,
            values: values.clone(),
            dictionary,
        }))
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        let inner = self
            .inner
            .clone()
            .with_beneficial_ordering(beneficial_ordering)?;
        Ok(inner.map(|inner| Arc::new(DictionaryAware { inner }) as Arc<dyn AggregateUDFImpl>))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.reverse_udf() {
            ReversedUDAF::Reversed(reversed) => {
                ReversedUDAF::Reversed(Arc::new(AggregateUDF::new_from_impl(DictionaryAware {
                    inner: reversed.as_ref().clone(),
                })))
            }
            other => other,
        }
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// Runs a groups accumulator built for a dictionary's value type on dictionary input.
struct DecodingAccumulator {
    inner: Box<dyn GroupsAccumulator>,
    values: DataType,
    dictionary: DataType,
}

impl DecodingAccumulator {
    /// `columns` with the first (the aggregated value) decoded from its dictionary.
    fn decoded(&self, columns: &[ArrayRef]) -> Result<Vec<ArrayRef>> {
        let mut decoded = columns.to_vec();
        if let Some(first) = decoded.first_mut()
            && first.data_type() != &self.values
        {
            *first = cast(first, &self.values)?;
        }
        Ok(decoded)
    }

    /// `columns` with the first encoded back to the dictionary type.
    fn encoded(&self, mut columns: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        if let Some(first) = columns.first_mut() {
            *first = cast(first, &self.dictionary)?;
        }
        Ok(columns)
    }
}

impl GroupsAccumulator for DecodingAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let values = self.decoded(values)?;
        self.inner
            .update_batch(&values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let value = self.inner.evaluate(emit_to)?;
        Ok(cast(&value, &self.dictionary)?)
    }

    /// The state keeps the dictionary type that `state_fields` declares.
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let state = self.inner.state(emit_to)?;
        self.encoded(state)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let values = self.decoded(values)?;
        self.inner
            .merge_batch(&values, group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let values = self.decoded(values)?;
        self.encoded(self.inner.convert_to_state(&values, opt_filter)?)
    }

    fn size(&self) -> usize {
        self.inner.size()
    }
}
