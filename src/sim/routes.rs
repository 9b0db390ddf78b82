//! HTTP surface of the simulated Horde: the `/api/v2` endpoints with the
//! real server's paths, status codes, bodies and rate limits, plus the
//! simulator's own `/sim/stats` and `/sim/r2/...` (the stand-in object store).
//!
//! Owns request parsing, which limits apply to which call, the 1 s cache of
//! `/check`, the headers of every answer (`Retry-After` on every answer of a
//! rate-limited route, as flask-limiter sends it, whether or not the limit
//! was hit), and turning state results into responses. Rules about requests,
//! users and kudos live in `state`; this module must not duplicate them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{middleware, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::chaos::{self, ChaosSettings};
use super::det::stable_hash;
use super::limits::{LimitCheck, Limiter, Rate, RateHeaders, Verdict};
use super::routes_alchemy;
use super::state::{ApiError, SubmitOutcome, ANON_API_KEY};
use super::validate::parse_generate;
use super::wire::{ErrorBody, ValidationBody};
use super::workers::Shared;

/// How long `/check` answers are cached per path (`@cache.cached(timeout=1)`).
const CHECK_CACHE_TTL: Duration = Duration::from_secs(1);

/// Version the heartbeat reports (the server version the facts were read from).
const HORDE_VERSION: &str = "5.1.5";

/// What the real server sends as the JSON content type (docs/horde-api.md §9.1).
const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// `Retry-After` on answers of a route limited per second (async, check).
const RETRY_AFTER_PER_SECOND: u64 = 1;

/// `Retry-After` on answers of a route limited per minute (status, default limit).
const RETRY_AFTER_PER_MINUTE: u64 = 60;

/// Everything the handlers share.
#[derive(Clone)]
pub(crate) struct App {
    pub shared: Arc<Shared>,
    pub limiter: Arc<Mutex<Limiter>>,
    check_cache: Arc<Mutex<HashMap<String, (Instant, Bytes)>>>,
    pub chaos: Arc<ChaosSettings>,
    /// Delay between queuing a request and answering its submit.
    pub submit_latency: Duration,
}

impl App {
    pub(crate) fn new(
        shared: Arc<Shared>,
        limiter: Limiter,
        chaos: ChaosSettings,
        submit_latency: Duration,
    ) -> Self {
        Self {
            shared,
            limiter: Arc::new(Mutex::new(limiter)),
            check_cache: Arc::new(Mutex::new(HashMap::new())),
            chaos: Arc::new(chaos),
            submit_latency,
        }
    }

    /// Applies `checks`; on rejection returns what the limiter's 429 needs.
    pub(crate) fn limit(&self, checks: &[LimitCheck]) -> Result<Option<RateHeaders>, Limited> {
        let verdict = self.limiter.lock().check(checks);
        match verdict {
            Verdict::Allowed(headers) => Ok(headers),
            Verdict::Limited { rate, headers } => {
                self.shared.lock().stats_mut().rate_limited += 1;
                Err(Limited { rate, headers })
            }
        }
    }
}

/// A flask-limiter rejection: 429 `{"message": "<rate>"}` (no rc) with
/// `Retry-After` and `X-RateLimit-*`.
pub(crate) struct Limited {
    rate: Rate,
    headers: RateHeaders,
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            message: self.rate.to_string(),
            rc: None,
        };
        let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
        add_rate_headers(&mut response, Some(self.headers));
        set_header(
            &mut response,
            "retry-after",
            self.headers.retry_after.to_string(),
        );
        response
    }
}

/// Builds the router: `/api/v2/*` behind the chaos and accounting layer, `/sim/*` outside it.
pub(crate) fn router(app: App) -> Router {
    let api = Router::new()
        .route("/api/v2/generate/async", post(generate_async))
        .route("/api/v2/generate/check/{id}", get(check))
        .route("/api/v2/generate/status/{id}", get(status).delete(cancel))
        .route(
            "/api/v2/interrogate/async",
            post(routes_alchemy::interrogate_async)
                .layer(DefaultBodyLimit::max(routes_alchemy::MAX_BODY)),
        )
        .route(
            "/api/v2/interrogate/status/{id}",
            get(routes_alchemy::interrogation_status).delete(routes_alchemy::interrogation_cancel),
        )
        .route("/api/v2/find_user", get(find_user))
        .route("/api/v2/status/models", get(models))
        .route("/api/v2/status/heartbeat", get(heartbeat))
        .route("/api/v2/workers", get(workers))
        .route("/api/v2/sharedkeys", put(create_shared_key))
        .route(
            "/api/v2/sharedkeys/{id}",
            get(shared_key)
                .patch(modify_shared_key)
                .delete(delete_shared_key),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            app.clone(),
            chaos::api_layer,
        ));
    Router::new()
        .route("/sim/stats", get(sim_stats))
        .route("/sim/users", get(sim_users))
        .route("/sim/owner/{id}", get(sim_owner))
        .route("/sim/revoke", post(sim_revoke))
        .route("/sim/r2/{file}", get(r2_download))
        .merge(api)
        .with_state(app)
}

// ----- generate -----

async fn generate_async(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = "/api/v2/generate/async";
    let apikey = header_str(&headers, "apikey");
    let key_for_limit = apikey.unwrap_or(ANON_API_KEY);
    let per_key = if key_for_limit == ANON_API_KEY {
        Rate::per_second(60)
    } else {
        Rate::per_second(2)
    };
    let ip = peer.ip();
    let rate_headers = match app.limit(&[
        LimitCheck {
            rate: Rate::per_minute(90),
            key: format!("{ip}@POST@{path}"),
        },
        LimitCheck {
            rate: Rate::per_second(2),
            key: format!("{ip}@POST@{path}"),
        },
        LimitCheck {
            rate: per_key,
            key: format!(
                "{:016x}@POST@{path}",
                stable_hash(&[key_for_limit.as_bytes()])
            ),
        },
    ]) {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };

    let (mut response, queued) = generate_async_inner(&app, &headers, apikey, &body);
    if queued && !app.submit_latency.is_zero() {
        // The request exists already; only the answer is late.
        tokio::time::sleep(app.submit_latency).await;
    }
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_SECOND);
    response
}

/// The submit itself; true with the answer when a request was queued.
fn generate_async_inner(
    app: &App,
    headers: &HeaderMap,
    apikey: Option<&str>,
    body: &[u8],
) -> (Response, bool) {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(err) => {
            let error = ApiError {
                status: 400,
                message: format!("Failed to decode JSON object: {err}"),
                rc: None,
                errors: None,
                retry_after: None,
            };
            return (error.into_response(), false);
        }
    };
    let input = match parse_generate(&value) {
        Ok(input) => input,
        Err(errors) => return (ApiError::validation(errors).into_response(), false),
    };
    let Some(apikey) = apikey else {
        return (missing_apikey(), false);
    };
    let client_agent = header_str(headers, "client-agent").unwrap_or("unknown:0:unknown");
    let outcome = app.shared.lock().submit(apikey, client_agent, input);
    match outcome {
        Ok(SubmitOutcome::DryRun { kudos }) => (
            json_response(StatusCode::OK, &json!({ "kudos": kudos })),
            false,
        ),
        Ok(SubmitOutcome::Queued(accepted)) => {
            app.shared.work_available.notify_waiters();
            (json_response(StatusCode::ACCEPTED, &accepted), true)
        }
        Err(error) => (error.into_response(), false),
    }
}

async fn check(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/api/v2/generate/check/{id}");
    let rate_headers = match app.limit(&[LimitCheck {
        rate: Rate::per_second(10),
        key: format!("{}@GET@{path}", peer.ip()),
    }]) {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let cached = {
        let mut cache = app.check_cache.lock();
        let now = Instant::now();
        if cache.len() > 10_000 {
            cache.retain(|_, (stored, _)| now.duration_since(*stored) < CHECK_CACHE_TTL);
        }
        cache
            .get(&path)
            .filter(|(stored, _)| now.duration_since(*stored) < CHECK_CACHE_TTL)
            .map(|(_, body)| body.clone())
    };
    let mut response = match cached {
        Some(body) => raw_json_response(StatusCode::OK, body),
        None => {
            let result = app.shared.lock().check(&id);
            match result {
                Ok(body) => {
                    let bytes =
                        Bytes::from(serde_json::to_vec(&body).expect("CheckBody serializes"));
                    app.check_cache
                        .lock()
                        .insert(path, (Instant::now(), bytes.clone()));
                    raw_json_response(StatusCode::OK, bytes)
                }
                Err(error) => error.into_response(),
            }
        }
    };
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_SECOND);
    response
}

async fn status(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    status_or_cancel(app, peer, id, Method::GET)
}

async fn cancel(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    status_or_cancel(app, peer, id, Method::DELETE)
}

fn status_or_cancel(app: App, peer: SocketAddr, id: String, method: Method) -> Response {
    let rate_headers = match app.limit(&[LimitCheck {
        rate: Rate::per_minute(10),
        key: format!("{}@{method}@/api/v2/generate/status/{id}", peer.ip()),
    }]) {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let result = if method == Method::DELETE {
        app.shared.lock().cancel(&id)
    } else {
        app.shared.lock().status(&id)
    };
    let mut response = match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => error.into_response(),
    };
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_MINUTE);
    response
}

// ----- user, models, heartbeat, workers -----

/// The default limit (90/minute per address, counted per endpoint).
fn default_limit(
    app: &App,
    peer: SocketAddr,
    endpoint: &str,
) -> Result<Option<RateHeaders>, Limited> {
    app.limit(&[LimitCheck {
        rate: Rate::per_minute(90),
        key: format!("{}@{endpoint}", peer.ip()),
    }])
}

async fn find_user(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let rate_headers = match default_limit(&app, peer, "find_user") {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let result = app.shared.lock().find_user(header_str(&headers, "apikey"));
    with_rate_headers(result, rate_headers)
}

#[derive(Deserialize)]
struct ModelsQuery {
    #[serde(rename = "type")]
    model_type: Option<String>,
    model_state: Option<String>,
    min_count: Option<u64>,
    max_count: Option<u64>,
}

async fn models(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<ModelsQuery>,
) -> Response {
    let rate_headers = match default_limit(&app, peer, "models") {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    if let Some(state) = &query.model_state {
        if !["known", "custom", "all"].contains(&state.as_str()) {
            return ApiError::rc(
                400,
                "BadRequest",
                "'model_state' needs to be one of ['known', 'custom', 'all']",
            )
            .into_response();
        }
    }
    let models: Vec<Value> = app
        .shared
        .lock()
        .models(query.model_type.as_deref().unwrap_or("image"))
        .into_iter()
        .filter(|model| {
            let count = model["count"].as_u64().unwrap_or(0);
            query.min_count.is_none_or(|min| count >= min)
                && query.max_count.is_none_or(|max| count <= max)
        })
        .collect();
    let mut response = json_response(StatusCode::OK, &models);
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_MINUTE);
    response
}

#[derive(Deserialize)]
struct WorkersQuery {
    #[serde(rename = "type")]
    worker_type: Option<String>,
}

/// `GET /v2/workers`: the simulated workers with their ids and names; every
/// type without `?type=`, else image workers or alchemists (`interrogation`).
async fn workers(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<WorkersQuery>,
) -> Response {
    let rate_headers = match default_limit(&app, peer, "workers") {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let workers = {
        let horde = app.shared.lock();
        match query.worker_type.as_deref() {
            None | Some("") => {
                let mut all = horde.worker_list();
                all.extend(horde.alchemist_list());
                all
            }
            Some("image") => horde.worker_list(),
            Some("interrogation") => horde.alchemist_list(),
            Some(_) => Vec::new(),
        }
    };
    let mut response = json_response(StatusCode::OK, &workers);
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_MINUTE);
    response
}

async fn heartbeat() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"message": "OK", "version": HORDE_VERSION}),
    )
}

// ----- shared keys -----

async fn create_shared_key(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate_headers = match app.limit(&[LimitCheck {
        rate: Rate::per_minute(5),
        key: format!("{}@PUT@/api/v2/sharedkeys", peer.ip()),
    }]) {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(apikey) = header_str(&headers, "apikey") else {
        return missing_apikey();
    };
    let body = parse_optional_json(&body);
    let result = app.shared.lock().create_shared_key(apikey, &body);
    with_rate_headers(result, rate_headers)
}

async fn shared_key(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Response {
    let rate_headers = match default_limit(&app, peer, "sharedkey_single") {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let result = app.shared.lock().shared_key(&id);
    with_rate_headers(result, rate_headers)
}

async fn modify_shared_key(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rate_headers = match default_limit(&app, peer, "sharedkey_single") {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(apikey) = header_str(&headers, "apikey") else {
        return missing_apikey();
    };
    let body = parse_optional_json(&body);
    let result = app.shared.lock().modify_shared_key(apikey, &id, &body);
    with_rate_headers(result, rate_headers)
}

async fn delete_shared_key(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let rate_headers = match default_limit(&app, peer, "sharedkey_single") {
        Ok(headers) => headers,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(apikey) = header_str(&headers, "apikey") else {
        return missing_apikey();
    };
    let result = app.shared.lock().delete_shared_key(apikey, &id);
    with_rate_headers(result, rate_headers)
}

// ----- fallbacks -----

async fn not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"message": "The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again."}),
    )
}

async fn method_not_allowed() -> Response {
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({"message": "The method is not allowed for the requested URL."}),
    )
}

// ----- simulator endpoints -----

async fn sim_stats(State(app): State<App>) -> Response {
    let stats = app.shared.lock().snapshot();
    json_response(StatusCode::OK, &stats)
}

/// `GET /sim/users`: per-user figures (requests made, images received,
/// images waiting, revoked) and the background load's.
async fn sim_users(State(app): State<App>) -> Response {
    let users = app.shared.lock().users_report();
    json_response(StatusCode::OK, &users)
}

/// `GET /sim/owner/{id}`: the id of the user who made request `id` (0: anonymous).
async fn sim_owner(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.shared.lock().owner_of(&id) {
        Some(user) => json_response(StatusCode::OK, &json!({ "user": user })),
        None => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "no such request" }),
        ),
    }
}

#[derive(Deserialize)]
struct RevokeBody {
    apikey: String,
}

/// `POST /sim/revoke` `{"apikey": "..."}`: the key is invalid from now on
/// (every call with it gets 401 `InvalidAPIKey`); a test's way to lose a key mid-run.
async fn sim_revoke(State(app): State<App>, body: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<RevokeBody>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({ "message": "expected {\"apikey\": \"...\"}" }),
        );
    };
    if app.shared.lock().revoke(&body.apikey) {
        json_response(StatusCode::OK, &json!({ "revoked": true }))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            &json!({ "message": "no user has that key" }),
        )
    }
}

#[derive(Deserialize)]
struct R2Query {
    expires: Option<u64>,
    signature: Option<String>,
    /// The SigV2-style query of a post-processed image's URL.
    #[serde(rename = "AWSAccessKeyId")]
    access_key: Option<String>,
    #[serde(rename = "Signature")]
    sig_v2: Option<String>,
    #[serde(rename = "Expires")]
    expires_v2: Option<u64>,
}

/// `GET /sim/r2/<generation id>.webp?expires=..&signature=..`: the presigned-URL stand-in;
/// a post-processed image (`<form id>.webp?AWSAccessKeyId=..&Signature=..&Expires=..`) too.
async fn r2_download(
    State(app): State<App>,
    Path(file): Path<String>,
    Query(query): Query<R2Query>,
) -> Response {
    let generation_id = file.strip_suffix(".webp").unwrap_or(&file);
    let result = {
        let mut horde = app.shared.lock();
        let alchemy = horde.alchemy_download(
            generation_id,
            query.access_key.as_deref(),
            query.sig_v2.as_deref(),
            query.expires_v2,
        );
        alchemy.unwrap_or_else(|| {
            horde.r2_download(
                generation_id,
                query.expires.unwrap_or(0),
                query.signature.as_deref().unwrap_or(""),
            )
        })
    };
    match result {
        Ok(webp) => {
            let mut response = Response::new(Body::from(webp.as_ref().clone()));
            set_header(&mut response, "content-type", "image/webp".to_owned());
            response
        }
        Err((status, code, message)) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            );
            let mut response = Response::new(Body::from(xml));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            set_header(&mut response, "content-type", "application/xml".to_owned());
            response
        }
    }
}

// ----- helpers -----

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = match self.errors {
            Some(errors) => json_response(
                status,
                &ValidationBody {
                    errors,
                    message: "Input payload validation failed",
                },
            ),
            None => json_response(
                status,
                &ErrorBody {
                    message: self.message,
                    rc: self.rc,
                },
            ),
        };
        if let Some(seconds) = self.retry_after {
            set_header(&mut response, "retry-after", seconds.to_string());
        }
        response
    }
}

fn missing_apikey() -> Response {
    missing_apikey_error().into_response()
}

/// The reqparse 400 for a missing `apikey` header.
pub(crate) fn missing_apikey_error() -> ApiError {
    let errors = [(
        "apikey".to_owned(),
        "A User API key Missing required parameter in the HTTP headers".to_owned(),
    )]
    .into();
    ApiError::validation(errors)
}

/// The answer of a route under the default (per-minute) limit.
fn with_rate_headers(
    result: Result<Value, ApiError>,
    rate_headers: Option<RateHeaders>,
) -> Response {
    let mut response = match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => error.into_response(),
    };
    add_rate_headers(&mut response, rate_headers);
    add_retry_after(&mut response, RETRY_AFTER_PER_MINUTE);
    response
}

/// flask-limiter's `Retry-After` on an answer the limiter let through. An
/// answer that set its own (`TooManyPrompts` sends 0) keeps it.
pub(crate) fn add_retry_after(response: &mut Response, seconds: u64) {
    if !response.headers().contains_key(header::RETRY_AFTER) {
        set_header(response, "retry-after", seconds.to_string());
    }
}

fn parse_optional_json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|_| json!({}))
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes =
        serde_json::to_vec(body).expect("simulator bodies are plain data that always serialize");
    raw_json_response(status, Bytes::from(bytes))
}

fn raw_json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

pub(crate) fn add_rate_headers(response: &mut Response, rate_headers: Option<RateHeaders>) {
    if let Some(headers) = rate_headers {
        set_header(response, "x-ratelimit-limit", headers.limit.to_string());
        set_header(
            response,
            "x-ratelimit-remaining",
            headers.remaining.to_string(),
        );
        set_header(response, "x-ratelimit-reset", headers.reset.to_string());
    }
}

pub(crate) fn set_header(response: &mut Response, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}
