//! Model management over HTTP (`PUT`, `GET` and `DELETE /api/v1/models/{name}`, and
//! `GET /api/v1/models`), and the watcher that keeps the registry in step with the models
//! directory.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gannet_query::onnx::{Model, ModelError, ModelErrorKind, ModelRegistry};
use serde_json::json;
use tokio::sync::watch;

use super::http::HttpState;

/// The largest model upload.
pub const MAX_MODEL_BYTES: usize = 512 * 1024 * 1024;

/// How often the models directory is looked at for added, replaced and removed files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/api/v1/models", get(list)).route(
        "/api/v1/models/{name}",
        get(show)
            .put(upload)
            .delete(remove)
            .layer(DefaultBodyLimit::max(MAX_MODEL_BYTES)),
    )
}

fn registry(state: &HttpState) -> Arc<ModelRegistry> {
    state.query.models().clone()
}

/// Runs blocking registry work (file I/O, ONNX Runtime loading a model) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ModelError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error(&e)),
        Err(e) => Err(error(&ModelError::new(ModelErrorKind::Io, e.to_string()))),
    }
}

fn error(e: &ModelError) -> Response {
    let status = match e.kind {
        ModelErrorKind::Unknown => StatusCode::NOT_FOUND,
        ModelErrorKind::BadName | ModelErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ModelErrorKind::NoRuntime => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, axum::Json(json!({ "error": e.message }))).into_response()
}

/// A model as JSON: what `GET /api/v1/models` lists.
fn describe(model: &Model) -> serde_json::Value {
    let loaded_at = chrono::DateTime::<chrono::Utc>::from(model.loaded_at);
    let (calls, rows) = model.usage();
    let values = |items: Vec<(String, String)>| {
        items
            .into_iter()
            .map(|(name, t)| json!({ "name": name, "type": t }))
            .collect::<Vec<_>>()
    };
    json!({
        "name": model.name,
        "path": model.path.display().to_string(),
        "size_bytes": model.size,
        "inputs": values(model.inputs.iter().map(|i| (i.name.clone(), gannet_query::onnx::model::describe(&i.value_type))).collect()),
        "outputs": values(model.outputs.iter().map(|o| (o.name.clone(), gannet_query::onnx::model::describe(&o.value_type))).collect()),
        "loaded_at": loaded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "calls": calls,
        "rows_scored": rows,
    })
}

async fn list(State(state): State<Arc<HttpState>>) -> Response {
    let registry = registry(&state);
    match blocking(move || registry.list()).await {
        Ok(models) => {
            axum::Json(models.iter().map(|m| describe(m)).collect::<Vec<_>>()).into_response()
        }
        Err(response) => response,
    }
}

async fn show(State(state): State<Arc<HttpState>>, Path(name): Path<String>) -> Response {
    let registry = registry(&state);
    match blocking(move || registry.get(&name)).await {
        Ok(model) => axum::Json(describe(&model)).into_response(),
        Err(response) => response,
    }
}

/// Stores the body as model `name`: 201 for a new model, 200 for a replaced one, 400 when
/// ONNX Runtime cannot load it (nothing is stored then).
async fn upload(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let registry = registry(&state);
    let existed = registry.dir().join(format!("{name}.onnx")).is_file();
    match blocking(move || registry.put(&name, body.to_vec())).await {
        Ok(model) => {
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, axum::Json(describe(&model))).into_response()
        }
        Err(response) => response,
    }
}

async fn remove(State(state): State<Arc<HttpState>>, Path(name): Path<String>) -> Response {
    let registry = registry(&state);
    let message = format!("model \"{name}\" does not exist");
    match blocking(move || registry.remove(&name)).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => error(&ModelError::new(ModelErrorKind::Unknown, message)),
        Err(response) => response,
    }
}

/// Loads the models directory now, then looks at it every [`WATCH_INTERVAL`] until `stopped`:
/// new and replaced files are loaded (and a file that is not a model is named in a warning),
/// removed ones are forgotten.
pub async fn watch(registry: Arc<ModelRegistry>, mut stopped: watch::Receiver<bool>) {
    let mut runtime_warned = false;
    loop {
        let scan = registry.clone();
        match tokio::task::spawn_blocking(move || scan.list()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind == ModelErrorKind::NoRuntime => {
                if !runtime_warned {
                    tracing::warn!(
                        "{e}; the ONNX functions are unavailable until it is installed \
                         and Gannet restarted"
                    );
                    runtime_warned = true;
                }
            }
            Ok(Err(e)) => tracing::warn!("models directory: {e}"),
            Err(e) => tracing::warn!("models directory watcher: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stopped.changed() => return,
        }
    }
}
