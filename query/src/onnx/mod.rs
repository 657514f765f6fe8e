//! ONNX models inside SQL.
//!
//! A model is a `*.onnx` file in the models directory, named by its file stem, or one uploaded
//! with [`ModelRegistry::put`] (which stores it there). The [`ModelRegistry`] loads a model
//! the first time a query names it and checks the file on every later use: a file that was
//! replaced is loaded again, and a removed one is gone. A query keeps the version it started
//! with to the end ([`udf`]), so replacing a model never changes a running query's answer.
//!
//! Scoring runs in ONNX Runtime, loaded as a shared library ([`runtime`]): without it Gannet
//! serves everything else, and the ONNX functions say how to install it.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub mod model;
pub mod runtime;
pub mod udf;

pub use model::Model;

/// What went wrong with a model, and so which SQLSTATE or HTTP status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelErrorKind {
    /// No such model.
    Unknown,
    /// The name cannot be a model's.
    BadName,
    /// The file is not a model ONNX Runtime can run.
    Invalid,
    /// The SQL arguments do not fit the model: their number or types.
    BadArguments,
    /// The model has no such output.
    UnknownOutput,
    /// The model takes or gives something Gannet cannot feed or return.
    Unsupported,
    /// ONNX Runtime is not installed or did not start.
    NoRuntime,
    /// ONNX Runtime failed while scoring.
    Scoring,
    /// Reading or writing the models directory failed.
    Io,
}

/// An error about a model, with a message that names it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ModelError {
    pub kind: ModelErrorKind,
    pub message: String,
}

impl ModelError {
    pub fn new(kind: ModelErrorKind, message: impl Into<String>) -> ModelError {
        ModelError {
            kind,
            message: message.into(),
        }
    }

    /// The PostgreSQL SQLSTATE for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self.kind {
            ModelErrorKind::Unknown => "42704",       // undefined_object
            ModelErrorKind::BadName => "42602",       // invalid_name
            ModelErrorKind::BadArguments => "42883",  // no such function signature
            ModelErrorKind::UnknownOutput => "22023", // invalid_parameter_value
            ModelErrorKind::Unsupported => "0A000",   // feature_not_supported
            ModelErrorKind::NoRuntime => "58P01",     // undefined_file
            ModelErrorKind::Invalid | ModelErrorKind::Scoring => "38000", // external_routine_exception
            ModelErrorKind::Io => "58030",                                // io_error
        }
    }
}

impl From<ModelError> for datafusion::error::DataFusionError {
    fn from(e: ModelError) -> Self {
        datafusion::error::DataFusionError::External(Box::new(e))
    }
}

/// How ONNX Runtime runs.
#[derive(Debug, Clone, Copy)]
pub struct OnnxConfig {
    /// How many batches of one model may be scored at once, each on its own thread (and
    /// ONNX Runtime session).
    pub threads: usize,
}

impl Default for OnnxConfig {
    fn default() -> Self {
        OnnxConfig {
            threads: default_threads(),
        }
    }
}

/// As many scoring threads as cores: DataFusion runs a query's partitions on that many
/// threads, and each scores its own batches.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A model as the registry knows it: its current version (if its file loaded), and the stamp
/// of a file that did not load, so it is not tried again until it changes.
#[derive(Debug, Default)]
struct Entry {
    model: Option<Arc<Model>>,
    failed: Option<(model::FileStamp, ModelError)>,
    stats: Arc<model::Stats>,
}

/// The models of one models directory.
#[derive(Debug)]
pub struct ModelRegistry {
    dir: PathBuf,
    config: OnnxConfig,
    entries: Mutex<HashMap<String, Entry>>,
}

impl ModelRegistry {
    /// The models in `dir`. Nothing is read until a model is used or listed; the directory is
    /// created when a model is first uploaded.
    pub fn new(dir: impl Into<PathBuf>, config: OnnxConfig) -> ModelRegistry {
        ModelRegistry {
            dir: dir.into(),
            config,
            entries: Mutex::default(),
        }
    }

    /// The models directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.onnx"))
    }

    /// The current version of model `name`: loaded when first asked for, and again when its
    /// file has changed since. A replaced file that does not load leaves the version before it
    /// in service (with a warning in the log).
    pub fn get(&self, name: &str) -> Result<Arc<Model>, ModelError> {
        if check_name(name).is_err() {
            return Err(self.unknown(name));
        }
        let path = self.path(name);
        let stamp = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => model::FileStamp::of(&meta),
            Ok(_) => return Err(self.unknown(name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(name);
                return Err(self.unknown(name));
            }
            Err(e) => return Err(io_error(&path, &e)),
        };
        let mut entries = self.lock();
        let entry = entries.entry(name.to_owned()).or_default();
        if let Some(model) = entry.model.as_ref().filter(|m| m.stamp == stamp) {
            return Ok(model.clone());
        }
        if let Some((failed, error)) = &entry.failed
            && *failed == stamp
        {
            return entry.model.clone().ok_or_else(|| error.clone());
        }
        let loaded = std::fs::read(&path)
            .map_err(|e| io_error(&path, &e))
            .and_then(|bytes| self.load(name, path.clone(), stamp, bytes, entry.stats.clone()));
        match loaded {
            Ok(model) => {
                let model = Arc::new(model);
                let verb = if entry.model.is_some() {
                    "reloaded"
                } else {
                    "loaded"
                };
                tracing::info!(
                    model = name,
                    path = %path.display(),
                    inputs = %model.describe_inputs(),
                    outputs = %model.describe_outputs(),
                    load_ms = model.load_time.as_millis() as u64,
                    "model {verb}"
                );
                entry.model = Some(model.clone());
                entry.failed = None;
                Ok(model)
            }
            Err(error) => {
                if error.kind != ModelErrorKind::NoRuntime {
                    match &entry.model {
                        Some(_) => tracing::warn!(
                            "model {name}: {error}; the version loaded before stays in use"
                        ),
                        None => tracing::warn!("model {name}: {error}"),
                    }
                }
                entry.failed = Some((stamp, error.clone()));
                entry.model.clone().ok_or(error)
            }
        }
    }

    fn load(
        &self,
        name: &str,
        path: PathBuf,
        stamp: model::FileStamp,
        bytes: Vec<u8>,
        stats: Arc<model::Stats>,
    ) -> Result<Model, ModelError> {
        let environment =
            runtime::environment().map_err(|e| ModelError::new(ModelErrorKind::NoRuntime, e))?;
        let sessions = self.config.threads.max(1);
        Model::load(
            name,
            path.clone(),
            stamp,
            bytes,
            environment,
            sessions,
            stats,
        )
        .map_err(|reason| {
            ModelError::new(
                ModelErrorKind::Invalid,
                format!(
                    "{} is not an ONNX model that ONNX Runtime can run: {reason}",
                    path.display()
                ),
            )
        })
    }

    /// Every model in the directory, loading new and changed files and forgetting removed
    /// ones. Files that do not load are left out, with a warning in the log.
    pub fn list(&self) -> Result<Vec<Arc<Model>>, ModelError> {
        let names = match std::fs::read_dir(&self.dir) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let path = e.path();
                    let stem = path.file_stem()?.to_str()?;
                    (path.extension()? == "onnx" && check_name(stem).is_ok())
                        .then(|| stem.to_owned())
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(&self.dir, &e)),
        };
        // A model uploaded since the directory was read is kept, of course.
        self.lock()
            .retain(|name, _| names.contains(name) || self.path(name).is_file());
        let mut models = Vec::new();
        for name in &names {
            match self.get(name) {
                Ok(model) => models.push(model),
                Err(e) if e.kind == ModelErrorKind::NoRuntime => return Err(e),
                Err(_) => {} // warned about in get()
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(models)
    }

    /// Stores `bytes` as model `name`, replacing any model of that name, once ONNX Runtime has
    /// loaded them. The file appears whole or not at all (written aside, synced, renamed).
    pub fn put(&self, name: &str, bytes: Vec<u8>) -> Result<Arc<Model>, ModelError> {
        check_name(name)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, &e))?;
        static UPLOADS: AtomicU64 = AtomicU64::new(0);
        let temp = self.dir.join(format!(
            ".{name}.onnx.upload-{}-{}",
            std::process::id(),
            UPLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        let result = self.put_via(name, &temp, bytes);
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    fn put_via(&self, name: &str, temp: &Path, bytes: Vec<u8>) -> Result<Arc<Model>, ModelError> {
        let mut file = std::fs::File::create(temp).map_err(|e| io_error(temp, &e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(temp, &e))?;
        // Rename keeps the file's identity: the stamp taken now is the stored model's.
        let stamp = model::FileStamp::of(&file.metadata().map_err(|e| io_error(temp, &e))?);
        drop(file);
        let path = self.path(name);
        let mut entries = self.lock();
        let stats = entries.entry(name.to_owned()).or_default().stats.clone();
        let model = Arc::new(self.load(name, path.clone(), stamp, bytes, stats)?);
        std::fs::rename(temp, &path).map_err(|e| io_error(&path, &e))?;
        sync_dir(&self.dir).map_err(|e| io_error(&self.dir, &e))?;
        let entry = entries.entry(name.to_owned()).or_default();
        entry.model = Some(model.clone());
        entry.failed = None;
        tracing::info!(
            model = name,
            path = %path.display(),
            inputs = %model.describe_inputs(),
            outputs = %model.describe_outputs(),
            "model uploaded"
        );
        Ok(model)
    }

    /// Removes model `name` and its file. Returns whether there was one.
    pub fn remove(&self, name: &str) -> Result<bool, ModelError> {
        if check_name(name).is_err() {
            return Ok(false);
        }
        let path = self.path(name);
        let mut entries = self.lock();
        entries.remove(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir).map_err(|e| io_error(&self.dir, &e))?;
                tracing::info!(model = name, path = %path.display(), "model removed");
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_error(&path, &e)),
        }
    }

    fn unknown(&self, name: &str) -> ModelError {
        ModelError::new(
            ModelErrorKind::Unknown,
            format!(
                "model \"{name}\" does not exist: there is no {name}.onnx in {} (put the file \
                 there, or upload it with PUT /api/v1/models/{name})",
                self.dir.display()
            ),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().expect("model registry lock")
    }
}

/// A model name is a file stem: letters, digits, `_`, `-` and `.`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ModelError::new(
            ModelErrorKind::BadName,
            format!(
                "\"{name}\" cannot name a model: use letters, digits, '_', '-' and '.' \
                 (not first), at most 200 of them"
            ),
        ))
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> ModelError {
    ModelError::new(ModelErrorKind::Io, format!("{}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
