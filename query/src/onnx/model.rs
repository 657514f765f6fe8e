//! One loaded version of a model: what it takes and gives, a pool of ONNX Runtime sessions, and
//! scoring a batch of rows.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, StringArray,
    UInt32Array, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{cast, filter, take};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float32Type, Float64Type, Int32Type, Int64Type,
};
use ort::environment::Environment;
use ort::session::{OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use super::{ModelError, ModelErrorKind};

/// How often a model was used, kept across its versions.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub rows: AtomicU64,
}

/// What identifies a version of a model file on disk: a replaced file differs in one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

/// A model input: a tensor of numbers, `[N]` (one feature) or `[N, k]` (k features).
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub value_type: ValueType,
}

impl Input {
    /// How many features (SQL arguments) this input takes per row: `Ok(None)` when its shape
    /// leaves that open.
    fn width(&self) -> Result<Option<usize>, String> {
        let ValueType::Tensor { ty, shape, .. } = &self.value_type else {
            return Err(format!(
                "input {} is a {}, not a tensor of numbers",
                self.name,
                describe(&self.value_type)
            ));
        };
        if element(*ty).is_none() {
            return Err(format!(
                "input {} takes {} elements; Gannet feeds float32, float64, int32 and int64 inputs",
                self.name,
                type_name(*ty)
            ));
        }
        match shape.as_ref() {
            [_] => Ok(Some(1)),
            [_, k] if *k > 0 => Ok(Some(*k as usize)),
            [_, _] => Ok(None),
            _ => Err(format!(
                "input {} has shape {}; Gannet feeds inputs of shape [N] or [N, k]",
                self.name,
                describe(&self.value_type)
            )),
        }
    }
}

/// The SQL type an output becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    /// One value per row (`[N]` or `[N, 1]`): double precision, bigint, text or boolean.
    Value(DataType),
    /// `k` values per row (`[N, k]`): an array.
    Array(DataType),
    /// Something Gannet cannot turn into a column, and why.
    Unsupported(String),
}

impl OutputKind {
    pub fn data_type(&self) -> Option<DataType> {
        match self {
            OutputKind::Value(t) => Some(t.clone()),
            OutputKind::Array(t) => Some(DataType::new_list(t.clone(), true)),
            OutputKind::Unsupported(_) => None,
        }
    }

    fn of(value_type: &ValueType) -> OutputKind {
        let ValueType::Tensor { ty, shape, .. } = value_type else {
            let hint = if matches!(value_type, ValueType::Sequence(_)) {
                " (a scikit-learn classifier's ZipMap: convert it with \
                 options={'zipmap': False} to get an array of probabilities)"
            } else {
                ""
            };
            return OutputKind::Unsupported(format!("it is a {}{hint}", describe(value_type)));
        };
        let Some(sql) = output_type(*ty) else {
            return OutputKind::Unsupported(format!("its elements are {}", type_name(*ty)));
        };
        match shape.as_ref() {
            [_] | [_, 1] => OutputKind::Value(sql),
            [_, _] => OutputKind::Array(sql),
            _ => OutputKind::Unsupported(format!("its shape is {}", describe(value_type))),
        }
    }
}

/// A model output.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub value_type: ValueType,
    pub kind: OutputKind,
}

/// One loaded version of a model file.
pub struct Model {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub loaded_at: SystemTime,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub(crate) stamp: FileStamp,
    pub(crate) stats: Arc<Stats>,
    sessions: SessionPool,
    /// How long ONNX Runtime took to make a session of this model.
    pub load_time: Duration,
}

/// A model's sessions, all `most` of them made when the model is loaded. `Session::run` needs
/// its session to itself, so a scoring call takes an idle one and puts it back, or waits for
/// one when all are busy. Each session runs on its caller's thread: DataFusion's partitions are
/// the parallelism (ONNX Runtime's own threads help little on batches of a few thousand rows,
/// and would compete with DataFusion's).
#[derive(Debug)]
struct SessionPool {
    /// Idle sessions.
    idle: Mutex<Vec<Session>>,
    returned: Condvar,
}

impl SessionPool {
    fn take(&self) -> Session {
        let mut idle = self.idle.lock().expect("session pool lock");
        loop {
            if let Some(session) = idle.pop() {
                return session;
            }
            idle = self.returned.wait(idle).expect("session pool lock");
        }
    }

    fn put(&self, session: Session) {
        self.idle.lock().expect("session pool lock").push(session);
        self.returned.notify_one();
    }
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads a model from the bytes of its file: fails with ONNX Runtime's reason when they are
    /// not a model it can run.
    pub(crate) fn load(
        name: &str,
        path: PathBuf,
        stamp: FileStamp,
        bytes: Vec<u8>,
        environment: &'static Environment,
        sessions: usize,
        stats: Arc<Stats>,
    ) -> Result<Model, String> {
        // All of the model's sessions at once, side by side: ONNX Runtime can take seconds
        // to prepare one (a tree ensemble), which a query should not wait for later.
        let started = Instant::now();
        let most = sessions.max(1);
        let made: Vec<Session> = if most == 1 {
            vec![new_session(environment, &bytes)?]
        } else {
            std::thread::scope(|scope| {
                let making: Vec<_> = (0..most)
                    .map(|_| scope.spawn(|| new_session(environment, &bytes)))
                    .collect();
                making
                    .into_iter()
                    .map(|m| {
                        m.join()
                            .unwrap_or_else(|_| Err("ONNX Runtime panicked".to_owned()))
                    })
                    .collect::<Result<_, _>>()
            })?
        };
        let load_time = started.elapsed();
        let session = made.last().expect("at least one session");
        let inputs = session
            .inputs()
            .iter()
            .map(|i| Input {
                name: i.name().to_owned(),
                value_type: i.dtype().clone(),
            })
            .collect();
        let outputs: Vec<Output> = session
            .outputs()
            .iter()
            .map(|o| Output {
                name: o.name().to_owned(),
                value_type: o.dtype().clone(),
                kind: OutputKind::of(o.dtype()),
            })
            .collect();
        if outputs.is_empty() {
            return Err("the model has no outputs".to_owned());
        }
        Ok(Model {
            name: name.to_owned(),
            path,
            size: bytes.len() as u64,
            loaded_at: SystemTime::now(),
            inputs,
            outputs,
            stamp,
            stats,
            sessions: SessionPool {
                idle: Mutex::new(made),
                returned: Condvar::new(),
            },
            load_time,
        })
    }

    /// How often this model (in any version) was called, and on how many rows.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.stats.calls.load(Ordering::Relaxed),
            self.stats.rows.load(Ordering::Relaxed),
        )
    }

    /// The inputs as text: `X: float32[N,3]`.
    pub fn describe_inputs(&self) -> String {
        join(self.inputs.iter().map(|i| (&i.name, &i.value_type)))
    }

    /// The outputs as text: `label: int64[N,1], scores: float32[N,1]`.
    pub fn describe_outputs(&self) -> String {
        join(self.outputs.iter().map(|o| (&o.name, &o.value_type)))
    }

    /// The output called `name`.
    pub fn output(&self, name: &str) -> Result<usize, ModelError> {
        self.outputs
            .iter()
            .position(|o| o.name == name)
            .ok_or_else(|| {
                ModelError::new(
                    ModelErrorKind::UnknownOutput,
                    format!(
                        "model \"{}\" has no output \"{name}\"; its outputs are {}",
                        self.name,
                        self.describe_outputs()
                    ),
                )
            })
    }

    /// The SQL type of output `output`, for `features` arguments: fails when the model takes
    /// a different number of features, or cannot feed them or give that output.
    pub fn return_type(&self, output: usize, features: usize) -> Result<DataType, ModelError> {
        self.layout(features)?;
        let out = &self.outputs[output];
        match &out.kind {
            OutputKind::Unsupported(why) => Err(ModelError::new(
                ModelErrorKind::Unsupported,
                format!(
                    "model \"{}\": output \"{}\" cannot be returned: {why}",
                    self.name, out.name
                ),
            )),
            kind => Ok(kind.data_type().expect("a supported output has a type")),
        }
    }

    /// How many of `features` arguments each input takes, in order.
    fn layout(&self, features: usize) -> Result<Vec<usize>, ModelError> {
        let widths: Vec<Option<usize>> = self
            .inputs
            .iter()
            .map(Input::width)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                ModelError::new(
                    ModelErrorKind::Unsupported,
                    format!("model \"{}\": {e}", self.name),
                )
            })?;
        let fixed: usize = widths.iter().flatten().sum();
        let open = widths.iter().filter(|w| w.is_none()).count();
        let layout = match open {
            0 if fixed == features => Some(widths.iter().flatten().copied().collect()),
            1 if features > fixed => Some(
                widths
                    .iter()
                    .map(|w| w.unwrap_or(features - fixed))
                    .collect(),
            ),
            _ => None,
        };
        layout.ok_or_else(|| {
            let takes = match open {
                0 => format!("{fixed} feature{}", if fixed == 1 { "" } else { "s" }),
                _ => format!("more than {fixed} features"),
            };
            ModelError::new(
                ModelErrorKind::BadArguments,
                format!(
                    "model \"{}\" takes {takes} ({}), but {features} {} given",
                    self.name,
                    self.describe_inputs(),
                    if features == 1 { "was" } else { "were" }
                ),
            )
        })
    }

    /// Scores `rows` rows: `features[j]` holds feature j of every row. A row with a NULL
    /// feature scores NULL. Returns output `output` as an array of [`Model::return_type`].
    pub fn score(
        &self,
        output: usize,
        features: &[ArrayRef],
        rows: usize,
    ) -> Result<ArrayRef, ModelError> {
        let fail = |e: &dyn std::fmt::Display| {
            ModelError::new(
                ModelErrorKind::Scoring,
                format!("model \"{}\": {e}", self.name),
            )
        };
        let layout = self.layout(features.len())?;
        let return_type = self.return_type(output, features.len())?;
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(rows as u64, Ordering::Relaxed);

        // Rows with a NULL feature are left out of the tensors and come back NULL.
        let nulls = features.iter().fold(None, |acc, f| {
            NullBuffer::union(acc.as_ref(), f.logical_nulls().as_ref())
        });
        let (features, scatter) = match nulls {
            Some(nulls) if nulls.null_count() > 0 => {
                let keep = BooleanArray::new(nulls.inner().clone(), None);
                let kept = features
                    .iter()
                    .map(|f| filter(f, &keep))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(&e))?;
                let mut next = 0u32;
                let index: UInt32Array = nulls
                    .iter()
                    .map(|valid| {
                        valid.then(|| {
                            next += 1;
                            next - 1
                        })
                    })
                    .collect();
                (kept, Some(index))
            }
            _ => (features.to_vec(), None),
        };
        let n = features.first().map_or(rows, |f| f.len());
        if n == 0 {
            return Ok(new_null_array(&return_type, rows));
        }

        let mut tensors: Vec<(String, SessionInputValue<'static>)> = Vec::new();
        let mut columns = features.as_slice();
        for (input, width) in self.inputs.iter().zip(layout) {
            let (these, rest) = columns.split_at(width);
            columns = rest;
            let ValueType::Tensor { ty, shape, .. } = &input.value_type else {
                unreachable!("layout() accepted only tensor inputs")
            };
            let tensor = match element(*ty) {
                Some(DataType::Float32) => tensor::<Float32Type>(these, n, shape.len()),
                Some(DataType::Float64) => tensor::<Float64Type>(these, n, shape.len()),
                Some(DataType::Int32) => tensor::<Int32Type>(these, n, shape.len()),
                Some(DataType::Int64) => tensor::<Int64Type>(these, n, shape.len()),
                _ => unreachable!("layout() accepted only these element types"),
            }
            .map_err(|e| fail(&e))?;
            tensors.push((input.name.clone(), tensor));
        }

        let wanted = &self.outputs[output];
        let options = RunOptions::new()
            .map_err(|e| fail(&e))?
            .with_outputs(OutputSelector::no_default().with(&wanted.name));
        let result = run_blocking(|| {
            let mut session = self.sessions.take();
            let scored = session
                .run_with_options(tensors, &options)
                .map_err(|e| fail(&e))
                .and_then(|outputs| {
                    let value = outputs.get(&wanted.name).ok_or_else(|| {
                        fail(&format!("ONNX Runtime gave no output {}", wanted.name))
                    })?;
                    to_arrow(value, &wanted.kind, n).map_err(|e| fail(&e))
                });
            self.sessions.put(session);
            scored
        });
        let scores = result?;
        match scatter {
            Some(index) => take(&scores, &index, None).map_err(|e| fail(&e)),
            None => Ok(scores),
        }
    }
}

/// A session that runs on its caller's thread.
fn new_session(environment: &Environment, bytes: &[u8]) -> Result<Session, String> {
    Session::builder(environment)
        .and_then(|b| Ok(b.with_intra_threads(1)?.with_inter_threads(1)?))
        .map_err(|e| e.to_string())?
        .commit_from_memory(bytes)
        .map_err(|e| e.to_string())
}

/// Runs CPU-heavy scoring without holding up the other tasks of the tokio worker thread it is
/// called on (in a multi-threaded runtime; elsewhere it simply runs).
fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The rows of `columns` as one tensor of `T`: row-major `[n, columns.len()]`, or `[n]` for an
/// input of rank 1.
fn tensor<T>(
    columns: &[ArrayRef],
    n: usize,
    rank: usize,
) -> Result<SessionInputValue<'static>, Box<dyn std::error::Error>>
where
    T: ArrowPrimitiveType,
    T::Native: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
{
    let width = columns.len();
    let mut data: Vec<T::Native> = vec![T::Native::default(); n * width];
    for (j, column) in columns.iter().enumerate() {
        let column = cast(column, &T::DATA_TYPE)?;
        let values = column.as_primitive::<T>().values();
        if width == 1 {
            data.copy_from_slice(values);
        } else {
            for (row, value) in data.chunks_exact_mut(width).zip(values.iter()) {
                row[j] = *value;
            }
        }
    }
    let shape = if rank == 1 {
        vec![n as i64]
    } else {
        vec![n as i64, width as i64]
    };
    Ok(Tensor::from_array((shape, data))?.into_dyn().into())
}

/// An output tensor of `n` rows as an Arrow array of `kind`.
fn to_arrow(value: &DynValue, kind: &OutputKind, n: usize) -> Result<ArrayRef, String> {
    let e = |e: ort::Error| e.to_string();
    let (shape, flat): (Vec<i64>, ArrayRef) = match value.dtype().tensor_type() {
        // The usual cases, converted in one pass.
        Some(TensorElementType::Float32) => {
            let (shape, v) = value.try_extract_tensor::<f32>().map_err(e)?;
            let values = Float64Array::from_iter_values(v.iter().map(|x| f64::from(*x)));
            (shape.to_vec(), std::sync::Arc::new(values))
        }
        Some(TensorElementType::Float64) => {
            let (shape, v) = value.try_extract_tensor::<f64>().map_err(e)?;
            (
                shape.to_vec(),
                std::sync::Arc::new(Float64Array::from(v.to_vec())),
            )
        }
        Some(TensorElementType::Int64) => {
            let (shape, v) = value.try_extract_tensor::<i64>().map_err(e)?;
            (
                shape.to_vec(),
                std::sync::Arc::new(Int64Array::from(v.to_vec())),
            )
        }
        Some(TensorElementType::Int32) => {
            let (shape, v) = value.try_extract_tensor::<i32>().map_err(e)?;
            let values = Int64Array::from_iter_values(v.iter().map(|x| i64::from(*x)));
            (shape.to_vec(), std::sync::Arc::new(values))
        }
        Some(TensorElementType::Bool) => {
            let (shape, v) = value.try_extract_tensor::<bool>().map_err(e)?;
            (
                shape.to_vec(),
                std::sync::Arc::new(BooleanArray::from(v.to_vec())),
            )
        }
        Some(TensorElementType::String) => {
            let (shape, v) = value.try_extract_strings().map_err(e)?;
            (shape.to_vec(), std::sync::Arc::new(StringArray::from(v)))
        }
        other => return Err(format!("cannot read an output of {other:?}")),
    };
    if shape.first().copied() != Some(n as i64) {
        return Err(format!("gave an output of shape {shape:?} for {n} rows"));
    }
    let width = flat.len() / n;
    match kind {
        OutputKind::Value(t) if width == 1 => cast(&flat, t).map_err(|e| e.to_string()),
        OutputKind::Array(t) => {
            let values = cast(&flat, t).map_err(|e| e.to_string())?;
            let field = std::sync::Arc::new(Field::new_list_field(t.clone(), true));
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(width, n));
            Ok(std::sync::Arc::new(ListArray::new(
                field, offsets, values, None,
            )))
        }
        _ => Err(format!(
            "gave {width} values per row where one was expected"
        )),
    }
}

/// The Arrow type features are cast to for an input of element type `ty`.
fn element(ty: TensorElementType) -> Option<DataType> {
    match ty {
        TensorElementType::Float32 => Some(DataType::Float32),
        TensorElementType::Float64 => Some(DataType::Float64),
        TensorElementType::Int32 => Some(DataType::Int32),
        TensorElementType::Int64 => Some(DataType::Int64),
        _ => None,
    }
}

/// The SQL type of an output of element type `ty`.
fn output_type(ty: TensorElementType) -> Option<DataType> {
    use TensorElementType as T;
    match ty {
        T::Float32 | T::Float64 => Some(DataType::Float64),
        T::Int32 | T::Int64 => Some(DataType::Int64),
        T::Bool => Some(DataType::Boolean),
        T::String => Some(DataType::Utf8),
        _ => None,
    }
}

/// ONNX element types in the words of numpy and scikit-learn.
fn type_name(ty: TensorElementType) -> String {
    use TensorElementType as T;
    match ty {
        T::Float32 => "float32".to_owned(),
        T::Float64 => "float64".to_owned(),
        T::Float16 => "float16".to_owned(),
        T::Int8 => "int8".to_owned(),
        T::Int16 => "int16".to_owned(),
        T::Int32 => "int32".to_owned(),
        T::Int64 => "int64".to_owned(),
        T::Uint8 => "uint8".to_owned(),
        T::Uint16 => "uint16".to_owned(),
        T::Uint32 => "uint32".to_owned(),
        T::Uint64 => "uint64".to_owned(),
        T::Bool => "bool".to_owned(),
        T::String => "string".to_owned(),
        other => other.to_string(),
    }
}

/// A value type as text: `float32[N,3]`, `seq(map(int64,float32))`.
pub fn describe(value_type: &ValueType) -> String {
    match value_type {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => {
            let mut text = type_name(*ty);
            text.push('[');
            for (i, dim) in shape.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                match dimension_symbols.get(i).filter(|s| !s.is_empty()) {
                    Some(symbol) if *dim < 0 => text.push_str(symbol),
                    _ if *dim < 0 => text.push('?'),
                    _ => {
                        let _ = write!(text, "{dim}");
                    }
                }
            }
            text.push(']');
            text
        }
        ValueType::Sequence(inner) => format!("seq({})", describe(inner)),
        ValueType::Map { key, value } => format!("map({},{})", type_name(*key), type_name(*value)),
        ValueType::Optional(inner) => format!("optional({})", describe(inner)),
    }
}

fn join<'a>(items: impl Iterator<Item = (&'a String, &'a ValueType)>) -> String {
    items
        .map(|(name, t)| format!("{name}: {}", describe(t)))
        .collect::<Vec<_>>()
        .join(", ")
}
