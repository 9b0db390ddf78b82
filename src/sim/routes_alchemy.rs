//! HTTP surface of the simulated Horde's alchemy: `POST
//! /v2/interrogate/async`, `GET` and `DELETE /v2/interrogate/status/{id}`,
//! with the real server's limits (90 per minute per address on the POST,
//! counted before validation; 10 per second per address and path on the
//! status), bodies and error answers (docs/horde-api.md §10 (alchemy)).
//!
//! Owns parsing and the order of the POST's steps: limit, JSON, schema,
//! `apikey` header, `source_image`, the state's checks, decoding the source
//! off the lock, creating the request, `--submit-latency`, the 202. Rules
//! live in `state`; this module must not duplicate them.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::alchemy_results::store_source;
use super::limits::{LimitCheck, Rate};
use super::routes::{
    add_rate_headers, add_retry_after, header_str, json_response, missing_apikey_error, App,
};
use super::state::ApiError;
use super::validate::{missing_source_image, parse_interrogate};

const ASYNC_PATH: &str = "/api/v2/interrogate/async";

/// Largest POST body read: the server takes base64 sources up to 3072×3072
/// pixels, which can be tens of megabytes (axum's default is 2 MB).
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// `Retry-After` on answers the limiter let through, per window length.
const RETRY_AFTER_PER_MINUTE: u64 = 60;
const RETRY_AFTER_PER_SECOND: u64 = 1;

/// `POST /v2/interrogate/async`.
pub(crate) async fn interrogate_async(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate_headers = match app.limit(&[LimitCheck {
        rate: Rate::per_minute(90),
        key: format!("{}@POST@{ASYNC_PATH}", peer.ip()),
    }]) {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let (mut response, created) =
        match interrogate_inner(&app, header_str(&headers, "apikey"), &body).await {
            Ok(id) => {
                app.shared.work_available.notify_waiters();
                (
                    json_response(StatusCode::ACCEPTED, &json!({ "id": id })),
                    true,
                )
            }
            Err(error) => (error.into_response(), false),
        };
    if created && !app.submit_latency.is_zero() {
        // The request exists already; only the answer is late.
        tokio::time::sleep(app.submit_latency).await;
    }
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_MINUTE);
    response
}

/// The POST's steps after the limiter; the new request's id.
async fn interrogate_inner(
    app: &App,
    apikey: Option<&str>,
    body: &[u8],
) -> Result<String, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|err| ApiError {
        status: 400,
        message: format!("Failed to decode JSON object: {err}"),
        rc: None,
        errors: None,
        retry_after: None,
    })?;
    let input = parse_interrogate(&value).map_err(ApiError::validation)?;
    let Some(apikey) = apikey else {
        return Err(missing_apikey_error());
    };
    let Some(source_image) = input.source_image.clone() else {
        return Err(ApiError::validation(missing_source_image()));
    };
    app.shared.lock().check_interrogate(apikey, &input)?;
    // Decoding and re-encoding a large image takes a while: off the lock.
    let stored = tokio::task::spawn_blocking(move || store_source(&source_image))
        .await
        .map_err(|_| ApiError::rc(500, "InternalServerError", "Internal Server Error"))?
        .map_err(|refused| ApiError::rc(400, refused.rc, refused.message))?;
    let id = app
        .shared
        .lock()
        .create_interrogation(apikey, input, stored)?;
    Ok(id.to_string())
}

/// `GET /v2/interrogate/status/{id}` (no authentication).
pub(crate) async fn interrogation_status(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    status_or_cancel(&app, peer, &id, Method::GET)
}

/// `DELETE /v2/interrogate/status/{id}` (no authentication: anyone with the id may cancel).
pub(crate) async fn interrogation_cancel(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    status_or_cancel(&app, peer, &id, Method::DELETE)
}

fn status_or_cancel(app: &App, peer: SocketAddr, id: &str, method: Method) -> Response {
    let rate_headers = match app.limit(&[LimitCheck {
        rate: Rate::per_second(10),
        key: format!("{}@{method}@/api/v2/interrogate/status/{id}", peer.ip()),
    }]) {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let result = if method == Method::DELETE {
        app.shared.lock().cancel_interrogation(id)
    } else {
        app.shared.lock().interrogation_status(id)
    };
    let mut response = match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => error.into_response(),
    };
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_SECOND);
    response
}
