//! `onnx_predict('model', x1, ..., xn)` and `onnx_predict_output('model', 'output', x1, ...)`.
//!
//! Each call scores a whole Arrow batch in one ONNX Runtime run. The function registered in a
//! session ([`OnnxPredict`]) looks its model up while the query is planned, which fixes the
//! result type, and the optimizer then swaps it for one bound to that version of the model
//! ([`BoundPredict`]): a model replaced while a query runs does not change that query.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::prelude::SessionContext;

use super::{Model, ModelError, ModelErrorKind, ModelRegistry};

/// Registers `onnx_predict` and `onnx_predict_output` on `ctx`.
pub fn register(ctx: &SessionContext, registry: &Arc<ModelRegistry>) {
    for named_output in [false, true] {
        ctx.register_udf(ScalarUDF::new_from_impl(OnnxPredict {
            registry: registry.clone(),
            named_output,
            signature: Signature::user_defined(Volatility::Stable),
        }));
    }
}

fn function_name(named_output: bool) -> &'static str {
    if named_output {
        "onnx_predict_output"
    } else {
        "onnx_predict"
    }
}

/// How many leading arguments name things (the model, and the output) rather than features.
fn names(named_output: bool) -> usize {
    if named_output { 2 } else { 1 }
}

/// The function as registered: resolves its model by name.
#[derive(Debug)]
struct OnnxPredict {
    registry: Arc<ModelRegistry>,
    named_output: bool,
    signature: Signature,
}

impl PartialEq for OnnxPredict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.registry, &other.registry) && self.named_output == other.named_output
    }
}

impl Eq for OnnxPredict {}

impl Hash for OnnxPredict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.registry).hash(state);
        self.named_output.hash(state);
    }
}

impl OnnxPredict {
    /// The model and output the constant leading arguments name.
    fn resolve(&self, constants: &[Option<&ScalarValue>]) -> Result<(Arc<Model>, usize)> {
        let name = self.name();
        let text = |i: usize, what: &str| match constants.get(i) {
            Some(Some(value)) => match value.try_as_str() {
                Some(Some(text)) => Ok(text.to_owned()),
                _ => plan_err!("{name}: the {what} must be a string, not {value}"),
            },
            _ => plan_err!("{name}: the {what} must be a constant string"),
        };
        let model = self.registry.get(&text(0, "model name")?)?;
        let output = if self.named_output {
            model.output(&text(1, "output name")?)?
        } else {
            0
        };
        Ok((model, output))
    }
}

impl ScalarUDFImpl for OnnxPredict {
    fn name(&self) -> &str {
        function_name(self.named_output)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        // Names become text and numbers stay as they are; anything else is refused with the
        // model's own words in return_field_from_args.
        let names = names(self.named_output);
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| match t {
                _ if i < names => DataType::Utf8,
                DataType::Null => DataType::Float64,
                DataType::Dictionary(_, v) if v.is_numeric() => (**v).clone(),
                t => t.clone(),
            })
            .collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        internal_err!("{} has its return type from its arguments", self.name())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        let names = names(self.named_output);
        if args.arg_fields.len() <= names {
            let usage = if self.named_output {
                "onnx_predict_output('model', 'output', x1, ..., xn)"
            } else {
                "onnx_predict('model', x1, ..., xn)"
            };
            return Err(bad_arguments(format!(
                "{} takes a model name and features: {usage}",
                self.name()
            )));
        }
        for (i, field) in args.arg_fields.iter().enumerate().skip(names) {
            if !field.data_type().is_numeric() {
                return Err(bad_arguments(format!(
                    "{}: feature {} is {}; features must be numbers",
                    self.name(),
                    i + 1 - names,
                    sql_type(field.data_type())
                )));
            }
        }
        let (model, output) = self.resolve(args.scalar_arguments)?;
        let features = args.arg_fields.len() - names;
        let return_type = model.return_type(output, features)?;
        Ok(Arc::new(Field::new(self.name(), return_type, true)))
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let constants: Vec<Option<ScalarValue>> = args
            .iter()
            .take(names(self.named_output))
            .map(|e| match e {
                Expr::Literal(value, _) => Some(value.clone()),
                _ => None,
            })
            .collect();
        let constants: Vec<Option<&ScalarValue>> = constants.iter().map(Option::as_ref).collect();
        let (model, output) = self.resolve(&constants)?;
        let bound = BoundPredict {
            model,
            output,
            named_output: self.named_output,
            signature: self.signature.clone(),
        };
        Ok(ExprSimplifyResult::Simplified(Expr::ScalarFunction(
            ScalarFunction::new_udf(Arc::new(ScalarUDF::new_from_impl(bound)), args),
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // Reached only when a plan was not simplified: resolve the model for this batch.
        let names = names(self.named_output);
        let mut constants = Vec::new();
        for arg in &args.args[..names] {
            match arg {
                ColumnarValue::Scalar(value) => constants.push(Some(value.clone())),
                ColumnarValue::Array(_) => {
                    return exec_err!("{}: the model name must be a constant", self.name());
                }
            }
        }
        let constants: Vec<Option<&ScalarValue>> = constants.iter().map(Option::as_ref).collect();
        let (model, output) = self.resolve(&constants)?;
        score(&model, output, names, args)
    }
}

fn bad_arguments(message: String) -> datafusion::error::DataFusionError {
    ModelError::new(ModelErrorKind::BadArguments, message).into()
}

/// A type as SQL users know it.
fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".to_owned(),
        DataType::Dictionary(_, v) => sql_type(v),
        DataType::Boolean => "boolean".to_owned(),
        DataType::Timestamp(..) => "a timestamp".to_owned(),
        DataType::Date32 | DataType::Date64 => "a date".to_owned(),
        DataType::Interval(_) => "an interval".to_owned(),
        other => other.to_string(),
    }
}

/// The function bound to one version of a model, for the rest of a query.
#[derive(Debug)]
struct BoundPredict {
    model: Arc<Model>,
    output: usize,
    named_output: bool,
    signature: Signature,
}

impl PartialEq for BoundPredict {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.model, &other.model)
            && self.output == other.output
            && self.named_output == other.named_output
    }
}

impl Eq for BoundPredict {}

impl Hash for BoundPredict {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.model).hash(state);
        self.output.hash(state);
        self.named_output.hash(state);
    }
}

impl ScalarUDFImpl for BoundPredict {
    fn name(&self) -> &str {
        function_name(self.named_output)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(arg_types.to_vec())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        internal_err!("{} has its return type from its arguments", self.name())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        let features = args.arg_fields.len() - names(self.named_output);
        let return_type = self.model.return_type(self.output, features)?;
        Ok(Arc::new(Field::new(self.name(), return_type, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        score(&self.model, self.output, names(self.named_output), args)
    }
}

/// Scores one batch: the arguments after the `names` leading ones are the features.
fn score(
    model: &Model,
    output: usize,
    names: usize,
    args: ScalarFunctionArgs,
) -> Result<ColumnarValue> {
    let rows = args.number_rows;
    let features = args.args[names..]
        .iter()
        .map(|arg| arg.to_array(rows))
        .collect::<Result<Vec<_>>>()?;
    Ok(ColumnarValue::Array(model.score(output, &features, rows)?))
}
