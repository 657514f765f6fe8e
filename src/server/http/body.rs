//! Write bodies, read into buffers kept for the next write ([`BufferPool`]).

use std::io::Read as _;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt as _;
use gannet_storage::pool::{BufferPool, PooledBuf};

use super::ApiError;

/// Reads a write's body, gunzipped if `Content-Encoding: gzip`: at most `limit` bytes
/// either way (413 beyond it, before anything is parsed).
pub async fn read(
    body: axum::body::Body,
    headers: &HeaderMap,
    limit: usize,
    buffers: &Arc<BufferPool>,
) -> Result<PooledBuf, ApiError> {
    let too_large = |what: &str| ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("{what} is larger than the limit of {limit} bytes"),
    };
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => false,
        Some("gzip") | Some("x-gzip") => true,
        Some(other) => {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                message: format!("unsupported Content-Encoding '{other}': send identity or gzip"),
            });
        }
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large("the request body"));
    }
    let mut raw = buffers.take(announced.unwrap_or(0));
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        if raw.len() + chunk.len() > limit {
            return Err(too_large("the request body"));
        }
        raw.extend_from_slice(&chunk);
    }
    if !gzip {
        return Ok(raw);
    }
    let mut out = buffers.take(raw.len().saturating_mul(4).min(limit));
    let read = flate2::read::MultiGzDecoder::new(&raw[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request(format!("invalid gzip body: {e}")))?;
    if read > limit {
        return Err(too_large("the decompressed body"));
    }
    Ok(out)
}
