//! Finding and starting ONNX Runtime.
//!
//! Gannet loads ONNX Runtime as a shared library when the first model is used (ort's
//! `load-dynamic`), so the server starts and serves everything else without it. The library is
//! looked for, in order:
//!
//! 1. `ORT_DYLIB_PATH`, if set (ort's own convention);
//! 2. `.venv/onnxruntime/libonnxruntime.so`, where `scripts/install-onnxruntime` puts it, under the
//!    working directory, the directories above the executable, and the source tree Gannet was
//!    built from;
//! 3. the system library directories.
//!
//! Only one ONNX Runtime environment can exist in a process; it is started once and kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::logging::LogLevel;

/// The library's file name on this platform.
const LIBRARY: &str = if cfg!(target_os = "macos") {
    "libonnxruntime.dylib"
} else if cfg!(windows) {
    "onnxruntime.dll"
} else {
    "libonnxruntime.so"
};

/// How to install the runtime, for error messages.
pub const INSTALL_HINT: &str = "run scripts/install-onnxruntime (it puts the onnxruntime==1.31.1 \
     wheel's library in .venv/onnxruntime/), or set ORT_DYLIB_PATH to a libonnxruntime 1.31 \
     shared library";

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The process's ONNX Runtime environment, started on first use. Fails, with a message that
/// says how to install it, when the library cannot be found or loaded.
pub fn environment() -> Result<&'static Environment, String> {
    ENVIRONMENT
        .get_or_init(start)
        .as_ref()
        .map_err(Clone::clone)
}

fn start() -> Result<Environment, String> {
    let path = find_library().ok_or_else(|| {
        format!("ONNX Runtime is not installed ({LIBRARY} not found): {INSTALL_HINT}")
    })?;
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "ONNX Runtime at {} could not be started: {e}; {INSTALL_HINT}",
            path.display()
        )
    };
    let environment = ort::init_from(&path)
        .map_err(|e| fail(&e))?
        .with_name("gannet")
        .with_logger(Arc::new(log))
        .build()
        .map_err(|e| fail(&e))?;
    tracing::info!(library = %path.display(), "ONNX Runtime started");
    Ok(environment)
}

/// Where ONNX Runtime's shared library is, if anywhere this looks.
pub fn find_library() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(".venv").join("onnxruntime").join(LIBRARY);
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    // The workspace this crate was built in: `cargo run` and `cargo test` find the library
    // that scripts/install-onnxruntime put there, whatever the working directory.
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let system = [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
    ];
    roots
        .iter()
        .map(|root| root.join(&venv))
        .chain(system.iter().map(|dir| Path::new(dir).join(LIBRARY)))
        .find(|candidate| candidate.is_file())
}

/// ONNX Runtime's own log lines, into Gannet's log.
fn log(level: LogLevel, category: &str, _id: &str, location: &str, message: &str) {
    match level {
        LogLevel::Fatal | LogLevel::Error => {
            tracing::error!(target: "onnxruntime", category, location, "{message}")
        }
        LogLevel::Warning => tracing::warn!(target: "onnxruntime", category, "{message}"),
        LogLevel::Info => tracing::debug!(target: "onnxruntime", category, "{message}"),
        LogLevel::Verbose => tracing::trace!(target: "onnxruntime", category, "{message}"),
    }
}
