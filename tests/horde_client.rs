//! The Horde client against a real HTTP server on loopback.
//!
//! Each test starts a tiny axum server on 127.0.0.1:0 that answers with canned
//! bodies and headers (the SDK fixtures, and the exact error bodies observed on
//! the live server, docs/horde-api.md §9) and records what the client sent. Nothing here
//! reaches the internet.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use futures::stream::{self, StreamExt};
use horde_batch::horde::{
    ApiKey, ClientConfig, FailureClass, GenerationParams, GenerationRequest, HordeClient,
    HordeError, HordeErrorKind, Operation, RequestCheck, RequestStatus, SharedKeyDetails,
    SharedKeyInput, SubmitAccepted, TransportStage, UserDetails, REDACTED,
};
use reqwest::Url;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const KEY: &str = "test-key-3f9c1a77";
const CONTACT: &str = "tests@example.org";
const REQUEST_ID: &str = "5b4d8e2a-0000-4000-8000-00000000abcd";

// ---------------------------------------------------------------------------
// The fake server
// ---------------------------------------------------------------------------

/// How the canned body is delivered.
#[derive(Clone)]
enum Delivery {
    /// In one piece, with a Content-Length.
    Whole,
    /// As a stream without a Content-Length.
    Chunked,
    /// The first chunk, then nothing ever again.
    StallAfterFirstChunk,
    /// No response head at all.
    NeverAnswer,
}

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delivery: Delivery,
}

impl Reply {
    fn json(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
            delivery: Delivery::Whole,
        }
    }

    fn fixture(status: u16, name: &str) -> Self {
        Reply::json(status, &read_fixture(name))
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn delivered(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the client sent JSON")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }
}

#[derive(Default)]
struct ServerState {
    routes: HashMap<(Method, String), Reply>,
    seen: Mutex<Vec<Seen>>,
}

struct FakeServer {
    base: Url,
    state: Arc<ServerState>,
}

impl FakeServer {
    async fn start(routes: Vec<(Method, &str, Reply)>) -> FakeServer {
        let state = Arc::new(ServerState {
            routes: routes
                .into_iter()
                .map(|(method, path, reply)| ((method, path.to_owned()), reply))
                .collect(),
            seen: Mutex::default(),
        });
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeServer {
            base: Url::parse(&format!("http://{address}/api")).unwrap(),
            state,
        }
    }

    /// A server with a single route.
    async fn one(method: Method, path: &str, reply: Reply) -> FakeServer {
        FakeServer::start(vec![(method, path, reply)]).await
    }

    fn client(&self) -> HordeClient {
        client_for(self.base.clone())
    }

    fn url(&self, path: &str) -> String {
        let origin = self.base.origin().ascii_serialization();
        format!("{origin}{path}")
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn only_request(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "expected exactly one request, got {seen:?}");
        seen.into_iter().next().unwrap()
    }
}

async fn answer(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers,
        body: body.to_vec(),
    });
    let Some(reply) = state.routes.get(&(method, uri.path().to_owned())).cloned() else {
        return Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .body(Body::from("no such route in this test"))
            .unwrap();
    };
    let body = match reply.delivery {
        Delivery::Whole => Body::from(reply.body),
        Delivery::Chunked => Body::from_stream(stream::iter(
            reply
                .body
                .chunks(1024)
                .map(|chunk| Ok::<_, Infallible>(Bytes::copy_from_slice(chunk)))
                .collect::<Vec<_>>(),
        )),
        Delivery::StallAfterFirstChunk => Body::from_stream(
            stream::iter([Ok::<_, Infallible>(Bytes::from(reply.body))]).chain(stream::pending()),
        ),
        Delivery::NeverAnswer => futures::future::pending().await,
    };
    let mut response = Response::builder().status(reply.status);
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    response.body(body).unwrap()
}

/// A server that accepts connections, reads the whole request, and closes the
/// socket without answering.
async fn start_dropping_server() -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            read_one_request(&mut socket).await;
            drop(socket);
        }
    });
    Url::parse(&format!("http://{address}/api/")).unwrap()
}

/// Reads one HTTP/1.1 request (head plus Content-Length body) from the socket.
async fn read_one_request(socket: &mut tokio::net::TcpStream) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(head_end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if received.len() >= head_end + 4 + length {
                return;
            }
        }
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => received.extend_from_slice(&buffer[..read]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// An address nothing listens on: bind, note the port, close.
async fn refused_url() -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    Url::parse(&format!("http://{address}/api/")).unwrap()
}

fn client_for(base: Url) -> HordeClient {
    let mut config = ClientConfig::new(base, ApiKey::new(KEY));
    config.contact = CONTACT.to_owned();
    config.connect_timeout = Duration::from_secs(5);
    config.read_timeout = Duration::from_secs(10);
    HordeClient::new(config).unwrap()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/horde-sdk")
}

fn read_fixture(name: &str) -> String {
    let path = fixture_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn response_fixture(name: &str) -> String {
    read_fixture(&format!("example_responses/{name}"))
}

fn sample_request() -> GenerationRequest {
    let params = GenerationParams::new(4)
        .with("steps", 25)
        .with("width", 512)
        .with("height", 512)
        .with("sampler_name", "k_euler_a")
        .with("cfg_scale", 7.5);
    GenerationRequest::new(
        GenerationRequest::join_prompt("a ginger cat in a top hat", Some("blurry, lowres")),
        vec!["stable_diffusion".to_owned()],
        params,
    )
}

// ---------------------------------------------------------------------------
// Fixtures decode
// ---------------------------------------------------------------------------

/// Example responses this client decodes, with the type (or call) that does it.
const DECODED: &[&str] = &[
    "_v2_find_user_get_200.json",
    "_v2_generate_async_post_200.json",
    "_v2_generate_async_post_202.json",
    "_v2_generate_check_id_get_200.json",
    "_v2_generate_status_id_delete_200.json",
    "_v2_generate_status_id_get_200.json",
    "_v2_sharedkeys_put_200.json",
    "_v2_sharedkeys_sharedkey_id_delete_200.json",
    "_v2_sharedkeys_sharedkey_id_get_200.json",
    "_v2_sharedkeys_sharedkey_id_patch_200.json",
    "_v2_status_heartbeat_get_200.json",
    "_v2_status_models_get_200.json",
    "_v2_status_models_model_name_get_200.json",
];

/// Example responses of endpoints a batch client never calls.
const NOT_DECODED: &[&str] = &[
    "_v2_generate_pop_post_200.json",      // worker side
    "_v2_generate_submit_post_200.json",   // worker side
    "_v2_status_modes_get_200.json",       // no client method (heartbeat covers liveness)
    "_v2_status_performance_get_200.json", // no client method
];

#[test]
fn every_example_response_is_accounted_for() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir().join("example_responses"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = DECODED
        .iter()
        .chain(NOT_DECODED)
        .map(|name| name.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "a fixture is neither decoded nor listed as skipped"
    );
}

#[test]
fn example_responses_decode_into_the_public_types() {
    let user: UserDetails =
        serde_json::from_str(&response_fixture("_v2_find_user_get_200.json")).unwrap();
    assert_eq!(
        user.active_generations.image,
        ["00000000-0000-0000-0000-000000000000"]
    );
    assert!(!user.trusted);

    let accepted: SubmitAccepted =
        serde_json::from_str(&response_fixture("_v2_generate_async_post_202.json")).unwrap();
    assert_eq!(accepted.id, "00000000-0000-0000-0000-000000000000");
    assert!(accepted.has_no_available_worker());

    let check: RequestCheck =
        serde_json::from_str(&response_fixture("_v2_generate_check_id_get_200.json")).unwrap();
    assert!(check.is_possible && !check.done);

    for name in [
        "_v2_generate_status_id_get_200.json",
        "_v2_generate_status_id_delete_200.json",
    ] {
        let status: RequestStatus = serde_json::from_str(&response_fixture(name)).unwrap();
        assert_eq!(status.generations.len(), 1, "{name}");
        let generation = &status.generations[0];
        assert_eq!(generation.gen_metadata[0].kind, "lora");
        assert_eq!(generation.gen_metadata[0].value, "download_failed");
        assert!(generation.gen_metadata[0].reference.is_some());
        assert_eq!(generation.state, "ok");
        assert_eq!(generation.batch_index(), None);
    }

    for name in [
        "_v2_sharedkeys_put_200.json",
        "_v2_sharedkeys_sharedkey_id_get_200.json",
        "_v2_sharedkeys_sharedkey_id_patch_200.json",
    ] {
        let key: SharedKeyDetails = serde_json::from_str(&response_fixture(name)).unwrap();
        let expiry = key.expiry.expect("fixture has an expiry").system_time();
        assert_eq!(
            expiry,
            UNIX_EPOCH + Duration::from_secs(1_609_459_200),
            "{name}"
        );
    }

    let heartbeat: horde_batch::horde::Heartbeat =
        serde_json::from_str(&response_fixture("_v2_status_heartbeat_get_200.json")).unwrap();
    assert_eq!(heartbeat.message, "OK");

    for name in [
        "_v2_status_models_get_200.json",
        "_v2_status_models_model_name_get_200.json",
    ] {
        let models: Vec<horde_batch::horde::ModelStatus> =
            serde_json::from_str(&response_fixture(name)).unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(models[0].kind, "image");
    }
}

/// Service-account fields: not modelled, dropped on purpose. (The img2img
/// fields `source_*` and `extra_source_images` are modelled and round-trip.)
const UNMODELLED_REQUEST_FIELDS: &[&str] = &["proxied_account"];

#[test]
fn async_payload_fixture_round_trips_except_unmodelled_fields() {
    let mut fixture: Value = serde_json::from_str(&read_fixture(
        "example_payloads/_v2_generate_async_post.json",
    ))
    .unwrap();
    let request: GenerationRequest = serde_json::from_value(fixture.clone()).unwrap();
    assert_eq!(request.params.n, 1);
    assert_eq!(request.params.extra["sampler_name"], "k_dpm_2_a");
    assert!(request.validated_backends && !request.censor_nsfw);

    let object = fixture.as_object_mut().unwrap();
    for field in UNMODELLED_REQUEST_FIELDS {
        assert!(
            object.remove(*field).is_some(),
            "fixture no longer has {field}"
        );
    }
    assert_eq!(serde_json::to_value(&request).unwrap(), fixture);
}

#[test]
fn shared_key_payload_fixtures_round_trip() {
    for name in [
        "example_payloads/_v2_sharedkeys_put.json",
        "example_payloads/_v2_sharedkeys_sharedkey_id_patch.json",
    ] {
        let fixture: Value = serde_json::from_str(&read_fixture(name)).unwrap();
        let input: SharedKeyInput = serde_json::from_value(fixture.clone()).unwrap();
        assert_eq!(input.expiry, Some(30), "{name}");
        assert_eq!(serde_json::to_value(&input).unwrap(), fixture, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Requests on the wire
// ---------------------------------------------------------------------------

#[tokio::test]
async fn submit_sends_every_flag_the_joined_prompt_and_identity_headers() {
    let server = FakeServer::one(
        Method::POST,
        "/api/v2/generate/async",
        Reply::fixture(202, "example_responses/_v2_generate_async_post_202.json"),
    )
    .await;
    let mut request = sample_request();
    request.dry_run = true; // submit must force it off
    let accepted = server.client().submit(&request).await.unwrap();
    assert_eq!(accepted.id, "00000000-0000-0000-0000-000000000000");
    assert!(accepted.has_no_available_worker());

    let seen = server.only_request();
    assert_eq!(seen.header("apikey"), Some(KEY));
    assert_eq!(
        seen.header("client-agent").map(str::to_owned),
        Some(format!(
            "horde-batch:{}:{CONTACT}",
            env!("CARGO_PKG_VERSION")
        ))
    );
    assert_eq!(
        seen.json(),
        json!({
            "prompt": "a ginger cat in a top hat ### blurry, lowres",
            "params": {"n": 4, "steps": 25, "width": 512, "height": 512,
                       "sampler_name": "k_euler_a", "cfg_scale": 7.5},
            "models": ["stable_diffusion"],
            "nsfw": false, "censor_nsfw": true, "trusted_workers": false,
            "validated_backends": false, "slow_workers": true, "extra_slow_workers": false,
            "worker_blacklist": false, "r2": true, "shared": false,
            "replacement_filter": true, "dry_run": false, "allow_downgrade": false,
            "disable_batching": false,
        })
    );
}

#[tokio::test]
async fn dry_run_forces_the_flag_and_returns_the_estimate() {
    let server = FakeServer::one(
        Method::POST,
        "/api/v2/generate/async",
        Reply::fixture(200, "example_responses/_v2_generate_async_post_200.json"),
    )
    .await;
    let kudos = server.client().dry_run(&sample_request()).await.unwrap();
    assert_eq!(kudos, 10.0);
    let seen = server.only_request();
    assert_eq!(seen.json()["dry_run"], true);
    assert_eq!(seen.header("apikey"), Some(KEY));
}

#[tokio::test]
async fn polling_cancel_and_status_reads_hit_their_paths_without_the_key() {
    let check_path = format!("/api/v2/generate/check/{REQUEST_ID}");
    let status_path = format!("/api/v2/generate/status/{REQUEST_ID}");
    let server = FakeServer::start(vec![
        (
            Method::GET,
            &check_path,
            Reply::fixture(200, "example_responses/_v2_generate_check_id_get_200.json"),
        ),
        (
            Method::GET,
            &status_path,
            Reply::fixture(200, "example_responses/_v2_generate_status_id_get_200.json"),
        ),
        (
            Method::DELETE,
            &status_path,
            Reply::fixture(
                200,
                "example_responses/_v2_generate_status_id_delete_200.json",
            ),
        ),
        (
            Method::GET,
            "/api/v2/status/models",
            Reply::fixture(200, "example_responses/_v2_status_models_get_200.json"),
        ),
        (
            Method::GET,
            "/api/v2/status/heartbeat",
            Reply::fixture(200, "example_responses/_v2_status_heartbeat_get_200.json"),
        ),
    ])
    .await;
    let client = server.client();
    assert!(!client.check(REQUEST_ID).await.unwrap().done);
    assert_eq!(
        client.status(REQUEST_ID).await.unwrap().generations.len(),
        1
    );
    assert_eq!(
        client.cancel(REQUEST_ID).await.unwrap().generations.len(),
        1
    );
    assert_eq!(client.models().await.unwrap()[0].kind, "image");
    assert_eq!(client.heartbeat().await.unwrap().version, "4.34.1");

    let seen = server.seen();
    let calls: Vec<(Method, &str, Option<&str>)> = seen
        .iter()
        .map(|seen| {
            (
                seen.method.clone(),
                seen.path.as_str(),
                seen.query.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        [
            (Method::GET, check_path.as_str(), None),
            (Method::GET, status_path.as_str(), None),
            (Method::DELETE, status_path.as_str(), None),
            (Method::GET, "/api/v2/status/models", Some("type=image")),
            (Method::GET, "/api/v2/status/heartbeat", None),
        ]
    );
    for request in &seen {
        assert_eq!(
            request.header("apikey"),
            None,
            "{} {}",
            request.method,
            request.path
        );
        assert!(request
            .header("client-agent")
            .unwrap()
            .starts_with("horde-batch:"));
    }
}

#[tokio::test]
async fn find_user_and_shared_keys_send_the_key() {
    let shared_id = "11111111-2222-4333-8444-555555555555";
    let key_path = format!("/api/v2/sharedkeys/{shared_id}");
    let details = "example_responses/_v2_sharedkeys_sharedkey_id_get_200.json";
    let server = FakeServer::start(vec![
        (
            Method::GET,
            "/api/v2/find_user",
            Reply::fixture(200, "example_responses/_v2_find_user_get_200.json"),
        ),
        (
            Method::PUT,
            "/api/v2/sharedkeys",
            Reply::fixture(200, "example_responses/_v2_sharedkeys_put_200.json"),
        ),
        (Method::GET, &key_path, Reply::fixture(200, details)),
        (
            Method::PATCH,
            &key_path,
            Reply::fixture(
                200,
                "example_responses/_v2_sharedkeys_sharedkey_id_patch_200.json",
            ),
        ),
        (
            Method::DELETE,
            &key_path,
            Reply::fixture(
                200,
                "example_responses/_v2_sharedkeys_sharedkey_id_delete_200.json",
            ),
        ),
    ])
    .await;
    let client = server.client();
    let shared = ApiKey::new(shared_id);
    let input = SharedKeyInput {
        kudos: Some(5000),
        name: Some("batch friends".into()),
        ..SharedKeyInput::default()
    };

    assert_eq!(client.find_user().await.unwrap().concurrency, 0);
    let created = client.create_shared_key(&input).await.unwrap();
    assert_eq!(created.max_image_steps, 0);
    client.shared_key(&shared).await.unwrap();
    client.update_shared_key(&shared, &input).await.unwrap();
    client.delete_shared_key(&shared).await.unwrap();

    let seen = server.seen();
    assert_eq!(seen.len(), 5);
    for request in &seen {
        let expect_key = request.method != Method::GET || request.path.ends_with("find_user");
        assert_eq!(
            request.header("apikey"),
            expect_key.then_some(KEY),
            "{} {}",
            request.method,
            request.path
        );
    }
    assert_eq!(
        seen[1].json(),
        json!({"kudos": 5000, "name": "batch friends"})
    );
    assert_eq!(
        seen[3].json(),
        json!({"kudos": 5000, "name": "batch friends"})
    );
}

#[tokio::test]
async fn debug_output_never_contains_the_key() {
    let server = FakeServer::one(
        Method::GET,
        "/api/v2/find_user",
        Reply::json(
            401,
            r#"{"message": "No user matching sent API Key. Have you remembered to register at https://stablehorde.net/register ?", "rc": "InvalidAPIKey"}"#,
        ),
    )
    .await;
    let mut config = ClientConfig::new(server.base.clone(), ApiKey::new(KEY));
    config.contact = CONTACT.into();
    let client = HordeClient::new(config.clone()).unwrap();
    let error = client.find_user().await.unwrap_err();
    for text in [
        format!("{client:?}"),
        format!("{config:?}"),
        format!("{:?}", config.api_key),
        config.api_key.to_string(),
        error.to_string(),
        format!("{error:?}"),
    ] {
        assert!(!text.contains(KEY), "key leaked into {text:?}");
    }
    assert!(format!("{client:?}").contains("ApiKey(***)"));
    assert_eq!(server.only_request().header("apikey"), Some(KEY));
}

// ---------------------------------------------------------------------------
// Error classification over real HTTP
// ---------------------------------------------------------------------------

/// Everything the scheduler reads from an error.
#[derive(Debug, PartialEq)]
struct Observed {
    class: FailureClass,
    status: Option<u16>,
    rc: Option<String>,
    message: Option<String>,
    retry_after: Option<Duration>,
    concurrency_limit: Option<u32>,
    outcome_unknown: bool,
    display: String,
}

impl Observed {
    fn of(error: &HordeError) -> Self {
        Observed {
            class: error.class(),
            status: error.status(),
            rc: error.rc().map(str::to_owned),
            message: error.message().map(str::to_owned),
            retry_after: error.retry_after(),
            concurrency_limit: error.concurrency_limit(),
            outcome_unknown: error.outcome_unknown(),
            display: error.to_string(),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn expected(
    class: FailureClass,
    status: u16,
    rc: Option<&str>,
    message: &str,
    retry_after: Option<u64>,
    concurrency_limit: Option<u32>,
    outcome_unknown: bool,
    display: &str,
) -> Observed {
    Observed {
        class,
        status: Some(status),
        rc: rc.map(str::to_owned),
        message: Some(message.to_owned()),
        retry_after: retry_after.map(Duration::from_secs),
        concurrency_limit,
        outcome_unknown,
        display: display.to_owned(),
    }
}

async fn submit_error(reply: Reply) -> HordeError {
    let server = FakeServer::one(Method::POST, "/api/v2/generate/async", reply).await;
    server.client().submit(&sample_request()).await.unwrap_err()
}

async fn check_error(reply: Reply) -> HordeError {
    let path = format!("/api/v2/generate/check/{REQUEST_ID}");
    let server = FakeServer::one(Method::GET, &path, reply).await;
    server.client().check(REQUEST_ID).await.unwrap_err()
}

fn limiter_429(message: &str, retry_after: u64, limit: u32) -> Reply {
    let body = json!({ "message": message }).to_string();
    Reply::json(429, &body)
        .header("retry-after", retry_after.to_string())
        .header("x-ratelimit-limit", limit.to_string())
        .header("x-ratelimit-remaining", "0")
        .header("x-ratelimit-reset", "1767225600")
}

#[tokio::test]
async fn limiter_429_without_rc_is_rate_limited_with_retry_after() {
    let error = submit_error(limiter_429("2 per 1 second", 1, 2)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::RateLimited,
            429,
            None,
            "2 per 1 second",
            Some(1),
            None,
            false,
            "POST /v2/generate/async: HTTP 429: 2 per 1 second",
        )
    );

    let path = format!("/api/v2/generate/status/{REQUEST_ID}");
    let server = FakeServer::one(Method::GET, &path, limiter_429("10 per 1 minute", 60, 10)).await;
    let error = server.client().status(REQUEST_ID).await.unwrap_err();
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::RateLimited,
            429,
            None,
            "10 per 1 minute",
            Some(60),
            None,
            false,
            &format!("GET /v2/generate/status/{{id}} (id {REQUEST_ID}): HTTP 429: 10 per 1 minute"),
        )
    );
    assert_eq!(error.endpoint.request_id.as_deref(), Some(REQUEST_ID));
}

#[tokio::test]
async fn too_many_prompts_is_concurrency_full_with_the_limit() {
    let message = "Parallel requests (32) exceeded user limit (30). Please try again later or request to increase your concurrency.";
    let body = json!({ "message": message, "rc": "TooManyPrompts" }).to_string();
    let error = submit_error(Reply::json(429, &body).header("retry-after", "1")).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::ConcurrencyFull,
            429,
            Some("TooManyPrompts"),
            message,
            Some(1),
            Some(30),
            false,
            &format!("POST /v2/generate/async: HTTP 429 TooManyPrompts: {message}"),
        )
    );
}

#[tokio::test]
async fn validation_400_is_permanent_and_keeps_the_errors_map() {
    let body = r#"{"errors": {"params.n": "21 is greater than the maximum of 20"}, "message": "Input payload validation failed"}"#;
    let error = submit_error(Reply::json(400, body)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::Permanent,
            400,
            None,
            "Input payload validation failed",
            None,
            None,
            false,
            "POST /v2/generate/async: HTTP 400: Input payload validation failed \
             (params.n: 21 is greater than the maximum of 20)",
        )
    );
    let HordeErrorKind::Api { errors, .. } = &error.kind else {
        panic!("expected an API error, got {error:?}");
    };
    assert_eq!(
        errors,
        &BTreeMap::from([(
            "params.n".to_owned(),
            "21 is greater than the maximum of 20".to_owned()
        )])
    );
}

#[tokio::test]
async fn payload_rc_400_is_permanent() {
    let error = submit_error(Reply::fixture(400, "RequestErrorResponse.json")).await;
    assert_eq!(error.class(), FailureClass::Permanent);
    assert_eq!(error.rc(), Some("SDK_API_TEST_ERROR"));
}

#[tokio::test]
async fn invalid_api_key_is_auth() {
    let message = "No user matching sent API Key. Have you remembered to register at https://stablehorde.net/register ?";
    let body = json!({ "message": message, "rc": "InvalidAPIKey" }).to_string();
    let error = submit_error(Reply::json(401, &body)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::Auth,
            401,
            Some("InvalidAPIKey"),
            message,
            None,
            None,
            false,
            &format!("POST /v2/generate/async: HTTP 401 InvalidAPIKey: {message}"),
        )
    );
}

#[tokio::test]
async fn kudos_upfront_is_kudos() {
    let message = "Due to heavy demand, for requests over 1024x1024 or over 50 steps (25 for k_heun and k_dpm_2*), the client needs to already have the required kudos. This request requires 37.05 kudos to fulfil.";
    let body = json!({ "message": message, "rc": "KudosUpfront" }).to_string();
    let error = submit_error(Reply::json(403, &body)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::Kudos,
            403,
            Some("KudosUpfront"),
            message,
            None,
            None,
            false,
            &format!("POST /v2/generate/async: HTTP 403 KudosUpfront: {message}"),
        )
    );
}

#[tokio::test]
async fn request_not_found_is_expired() {
    let message = format!("Image Waiting Prompt (Check) with ID '{REQUEST_ID}' not found.");
    let body = json!({ "message": message, "rc": "RequestNotFound" }).to_string();
    let error = check_error(Reply::json(404, &body)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::Expired,
            404,
            Some("RequestNotFound"),
            &message,
            None,
            None,
            false,
            &format!(
                "GET /v2/generate/check/{{id}} (id {REQUEST_ID}): HTTP 404 RequestNotFound: {message}"
            ),
        )
    );
    assert_eq!(error.endpoint.operation, Operation::Check);
}

#[tokio::test]
async fn maintenance_400_retries_after_a_minute() {
    let message = "AI Horde has entered maintenance mode. Please try again later.";
    let body = json!({ "message": message, "rc": "MaintenanceMode" }).to_string();
    let error = submit_error(Reply::json(400, &body)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::Maintenance,
            400,
            Some("MaintenanceMode"),
            message,
            Some(60),
            None,
            false,
            &format!("POST /v2/generate/async: HTTP 400 MaintenanceMode: {message}"),
        )
    );
}

#[tokio::test]
async fn timeout_ip_waits_the_stated_seconds() {
    let message = "Due to abuse prevention, your IP address has been put into timeout for 120 more seconds. Please try again later, or contact us on discord if you think this was an error.";
    let body = json!({ "message": message, "rc": "TimeoutIP" }).to_string();
    let error = submit_error(Reply::json(403, &body)).await;
    assert_eq!(error.class(), FailureClass::Timeout);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn server_errors_are_transient_and_leave_a_submit_unknown() {
    let error = submit_error(Reply::json(500, r#"{"message": "Internal Server Error"}"#)).await;
    assert_eq!(
        Observed::of(&error),
        expected(
            FailureClass::Transient,
            500,
            None,
            "Internal Server Error",
            None,
            None,
            true,
            "POST /v2/generate/async: HTTP 500: Internal Server Error",
        )
    );

    // A proxy error page is not JSON; its text becomes the message.
    let mut html = Reply::json(502, "<html><body>502 Bad Gateway</body></html>");
    html.headers = vec![("content-type", "text/html".into())];
    let error = check_error(html).await;
    assert_eq!(error.class(), FailureClass::Transient);
    assert_eq!(
        error.message(),
        Some("<html><body>502 Bad Gateway</body></html>")
    );
    assert!(!error.outcome_unknown(), "a check can simply be repeated");

    let error = check_error(Reply::json(503, "")).await;
    assert_eq!(error.message(), Some("Service Unavailable"));
}

#[tokio::test]
async fn malformed_success_body_is_a_transient_decode_error() {
    let error = check_error(Reply::json(200, r#"{"finished": 0, "done": tru"#)).await;
    assert_eq!(error.class(), FailureClass::Transient);
    assert_eq!(error.status(), Some(200));
    assert!(!error.outcome_unknown());
    let HordeErrorKind::Decode { snippet, .. } = &error.kind else {
        panic!("expected a decode error, got {error:?}");
    };
    assert_eq!(snippet, r#"{"finished": 0, "done": tru"#);
    assert!(
        error.to_string().starts_with(&format!(
            "GET /v2/generate/check/{{id}} (id {REQUEST_ID}): HTTP 200 with a body that is not the expected JSON ("
        )),
        "{error}"
    );

    // A 202 without an id: the request was queued but cannot be tracked.
    let error = submit_error(Reply::json(202, r#"{"kudos": 6}"#)).await;
    assert!(matches!(
        error.kind,
        HordeErrorKind::Decode { status: 202, .. }
    ));
    assert!(error.outcome_unknown());
}

#[tokio::test]
async fn dropped_connection_is_transient_and_unknown_for_submit_only() {
    let client = client_for(start_dropping_server().await);

    let error = client.submit(&sample_request()).await.unwrap_err();
    assert_eq!(error.class(), FailureClass::Transient);
    assert!(
        matches!(
            error.kind,
            HordeErrorKind::Transport {
                stage: TransportStage::AwaitingResponse,
                timed_out: false,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.outcome_unknown());
    assert_eq!(error.status(), None);
    assert!(
        error.to_string().starts_with(
            "POST /v2/generate/async: no response (the request may have reached the server): "
        ),
        "{error}"
    );

    let error = client.check(REQUEST_ID).await.unwrap_err();
    assert_eq!(error.class(), FailureClass::Transient);
    assert!(!error.outcome_unknown());
}

#[tokio::test]
async fn refused_connection_never_reached_the_server() {
    let client = client_for(refused_url().await);
    let error = client.submit(&sample_request()).await.unwrap_err();
    assert_eq!(error.class(), FailureClass::Transient);
    assert!(
        matches!(
            error.kind,
            HordeErrorKind::Transport {
                stage: TransportStage::Connect,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        !error.outcome_unknown(),
        "nothing was sent, resubmitting is safe"
    );
}

// ---------------------------------------------------------------------------
// Image downloads
// ---------------------------------------------------------------------------

const IMAGE_PATH: &str = "/r2/0c6f0d8e.webp";
const SIGNED_QUERY: &str = "?X-Amz-Signature=deadbeef&X-Amz-Expires=1800";

fn image_reply(bytes: usize) -> Reply {
    Reply {
        status: 200,
        headers: vec![("content-type", "image/webp".into())],
        body: vec![b'w'; bytes],
        delivery: Delivery::Whole,
    }
}

#[tokio::test]
async fn download_returns_the_bytes_without_sending_the_key() {
    let server = FakeServer::one(Method::GET, IMAGE_PATH, image_reply(3000)).await;
    let url = server.url(&format!("{IMAGE_PATH}{SIGNED_QUERY}"));
    let bytes = server
        .client()
        .download_image(&url, 3000, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(bytes.len(), 3000);
    let seen = server.only_request();
    assert_eq!(seen.header("apikey"), None);
    assert_eq!(seen.query.as_deref(), Some(&SIGNED_QUERY[1..]));
}

#[tokio::test]
async fn download_stops_past_the_size_cap() {
    for delivery in [Delivery::Whole, Delivery::Chunked] {
        let server = FakeServer::one(
            Method::GET,
            IMAGE_PATH,
            image_reply(10_000).delivered(delivery),
        )
        .await;
        let url = server.url(IMAGE_PATH);
        let error = server
            .client()
            .download_image(&url, 4096, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(error.kind, HordeErrorKind::BodyTooLarge { limit: 4096 });
        assert_eq!(error.class(), FailureClass::Permanent);
        assert_eq!(error.endpoint.operation, Operation::DownloadImage);
    }
}

#[tokio::test]
async fn download_refuses_non_http_urls_without_a_request() {
    let server = FakeServer::one(Method::GET, IMAGE_PATH, image_reply(10)).await;
    let client = server.client();
    for url in [
        "file:///etc/passwd",
        "ftp://example.org/x.webp",
        "data:image/webp;base64,UklG",
        "not a url",
    ] {
        let error = client
            .download_image(url, 1024, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(error.kind, HordeErrorKind::BadUrl { .. }),
            "{url}: {error:?}"
        );
        assert_eq!(error.class(), FailureClass::Permanent, "{url}");
    }
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn download_timeouts_are_transient() {
    let server = FakeServer::start(vec![
        (
            Method::GET,
            "/stalls-mid-body.webp",
            image_reply(100).delivered(Delivery::StallAfterFirstChunk),
        ),
        (
            Method::GET,
            "/never-answers.webp",
            image_reply(100).delivered(Delivery::NeverAnswer),
        ),
    ])
    .await;
    let client = server.client();
    // Both run at once; the timeout is generous so that a loaded machine still
    // delivers the first chunk of the stalled body before it fires.
    let timeout = Duration::from_secs(1);
    let stalled_url = server.url("/stalls-mid-body.webp");
    let silent_url = server.url("/never-answers.webp");
    let (stalled, silent) = tokio::join!(
        client.download_image(&stalled_url, 1 << 20, timeout),
        client.download_image(&silent_url, 1 << 20, timeout),
    );
    let cases = [
        (stalled.unwrap_err(), TransportStage::ReadingBody),
        (silent.unwrap_err(), TransportStage::AwaitingResponse),
    ];
    for (error, stage) in cases {
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(error.class(), FailureClass::Transient, "{error:?}");
        assert!(
            matches!(error.kind, HordeErrorKind::Transport { stage: got, .. } if got == stage),
            "expected {stage:?}: {error:?}"
        );
    }
}

#[tokio::test]
async fn expired_image_link_is_expired_and_hides_the_signature() {
    let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>";
    let mut reply = Reply::json(403, body);
    reply.headers = vec![("content-type", "application/xml".into())];
    let server = FakeServer::one(Method::GET, IMAGE_PATH, reply).await;
    let url = server.url(&format!("{IMAGE_PATH}{SIGNED_QUERY}"));
    let error = server
        .client()
        .download_image(&url, 1 << 20, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(error.class(), FailureClass::Expired);
    assert_eq!(error.status(), Some(403));
    assert!(!error.to_string().contains("deadbeef"), "{error}");
    assert!(
        error.to_string().starts_with("GET <image url>: HTTP 403: "),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// Hostile servers
// ---------------------------------------------------------------------------

/// Every way an error is shown to a person or a log.
fn all_renderings(error: &HordeError) -> Vec<String> {
    let mut shown = vec![
        error.to_string(),
        format!("{error:?}"),
        format!("{error:#?}"),
        error.message().unwrap_or_default().to_owned(),
    ];
    if let HordeErrorKind::Api { errors, .. } = &error.kind {
        shown.extend(
            errors
                .iter()
                .map(|(field, reason)| format!("{field}={reason}")),
        );
    }
    shown
}

fn assert_no_key(error: &HordeError) {
    for text in all_renderings(error) {
        assert!(!text.contains(KEY), "key leaked into {text:?}");
        // Nor half of it, left by a cut.
        assert!(
            !text.contains(&KEY[..8]),
            "part of the key leaked into {text:?}"
        );
    }
}

#[tokio::test]
async fn a_key_echoed_by_the_server_never_reaches_an_error() {
    let status_path = format!("/api/v2/generate/status/{REQUEST_ID}");
    let check_path = format!("/api/v2/generate/check/{REQUEST_ID}");
    // The key straddles the snippet's 200-character cut.
    let html = format!(
        "<html><body>{}{KEY} is not welcome here</body></html>",
        "x".repeat(185)
    );
    let server = FakeServer::start(vec![
        (
            Method::GET,
            "/api/v2/find_user",
            Reply::json(
                404,
                &json!({"message": format!("User with api_key '{KEY}' not found."), "rc": "UserNotFound"})
                    .to_string(),
            ),
        ),
        (
            Method::POST,
            "/api/v2/generate/async",
            Reply::json(
                400,
                &json!({"message": format!("Input payload validation failed for {KEY}"),
                        "errors": {(KEY): format!("apikey {KEY} is not allowed here")}})
                .to_string(),
            ),
        ),
        (Method::GET, &check_path, Reply::json(502, &html)),
        (
            Method::GET,
            &status_path,
            Reply::json(200, &format!("{{\"done\": true, \"echo\": \"{KEY}")),
        ),
        (
            Method::DELETE,
            &status_path,
            Reply::json(302, "").header("location", format!("http://elsewhere.invalid/?apikey={KEY}")),
        ),
    ])
    .await;
    let client = server.client();

    let error = client.find_user().await.unwrap_err();
    assert_no_key(&error);
    assert_eq!(
        error.message(),
        Some(format!("User with api_key '{REDACTED}' not found.").as_str())
    );
    assert_eq!(
        (error.rc(), error.class()),
        (Some("UserNotFound"), FailureClass::Auth)
    );

    let error = client.submit(&sample_request()).await.unwrap_err();
    assert_no_key(&error);
    let HordeErrorKind::Api { errors, .. } = &error.kind else {
        panic!("{error:?}");
    };
    assert_eq!(
        errors.get(REDACTED).map(String::as_str),
        Some(format!("apikey {REDACTED} is not allowed here").as_str())
    );

    let error = client.check(REQUEST_ID).await.unwrap_err();
    assert_no_key(&error);
    assert_eq!(error.status(), Some(502));
    // Redacted first, then cut: the cut falls inside the marker.
    assert!(error.message().unwrap().ends_with("[re…"), "{error}");

    let error = client.status(REQUEST_ID).await.unwrap_err();
    assert_no_key(&error);
    assert!(
        matches!(error.kind, HordeErrorKind::Decode { status: 200, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(REDACTED), "{error}");

    let error = client.cancel(REQUEST_ID).await.unwrap_err();
    assert_no_key(&error);
    assert_eq!(error.class(), FailureClass::Redirected);
    assert!(
        error
            .to_string()
            .contains(&format!("http://elsewhere.invalid/?apikey={REDACTED}")),
        "{error}"
    );
}

/// A listener that only counts the connections it gets.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            read_one_request(&mut socket).await;
        }
    });
    (format!("http://{address}"), connections)
}

#[tokio::test]
async fn redirects_are_refused_and_their_target_never_contacted() {
    let (target, connections) = counting_listener().await;
    let check_path = format!("/api/v2/generate/check/{REQUEST_ID}");
    let status_path = format!("/api/v2/generate/status/{REQUEST_ID}");
    for status in [302, 307] {
        let paths = [
            (Method::GET, "/api/v2/find_user"),
            (Method::POST, "/api/v2/generate/async"),
            (Method::GET, check_path.as_str()),
            (Method::GET, status_path.as_str()),
            (Method::DELETE, status_path.as_str()),
            (Method::GET, IMAGE_PATH),
        ];
        let routes = paths
            .iter()
            .map(|(method, path)| {
                let location = format!("{target}/stolen{path}?apikey={KEY}");
                (
                    method.clone(),
                    *path,
                    Reply::json(status, "").header("location", location),
                )
            })
            .collect();
        let server = FakeServer::start(routes).await;
        let client = server.client();
        let errors = [
            client.find_user().await.map(drop),
            client.submit(&sample_request()).await.map(drop),
            client.check(REQUEST_ID).await.map(drop),
            client.status(REQUEST_ID).await.map(drop),
            client.cancel(REQUEST_ID).await.map(drop),
            client
                .download_image(&server.url(IMAGE_PATH), 1 << 20, Duration::from_secs(5))
                .await
                .map(drop),
        ];
        for ((_, path), result) in paths.iter().zip(errors) {
            let error = result.unwrap_err();
            let HordeErrorKind::Redirect {
                status: got,
                location: Some(location),
            } = &error.kind
            else {
                panic!("{path}: {error:?}");
            };
            assert_eq!(*got, status, "{path}");
            assert!(
                location.starts_with(&format!("{target}/stolen{path}?")),
                "{location}"
            );
            assert_eq!(error.class(), FailureClass::Redirected, "{path}");
            assert!(!error.outcome_unknown(), "{path}");
            let shown = error.to_string();
            assert!(
                shown.contains(&format!("HTTP {status} redirect to {target}/stolen")),
                "{shown}"
            );
            assert!(shown.contains("redirects are refused"), "{shown}");
            assert!(!format!("{shown} {error:?}").contains(KEY), "{shown}");
        }
        assert_eq!(server.seen().len(), paths.len());
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
}

#[tokio::test]
async fn retry_after_means_wait_only_on_429_and_503() {
    // The real server sends Retry-After on successes: they stay plain successes.
    let status_path = format!("/api/v2/generate/status/{REQUEST_ID}");
    let check_path = format!("/api/v2/generate/check/{REQUEST_ID}");
    let server = FakeServer::start(vec![
        (
            Method::GET,
            &status_path,
            Reply::fixture(200, "example_responses/_v2_generate_status_id_get_200.json")
                .header("retry-after", "60"),
        ),
        (
            Method::GET,
            &check_path,
            Reply::fixture(200, "example_responses/_v2_generate_check_id_get_200.json")
                .header("retry-after", "1"),
        ),
    ])
    .await;
    server.client().status(REQUEST_ID).await.unwrap();
    server.client().check(REQUEST_ID).await.unwrap();

    let not_found = json!({"message": "gone", "rc": "RequestNotFound"}).to_string();
    let validation =
        json!({"message": "Input payload validation failed", "errors": {"params.n": "too big"}})
            .to_string();
    for (status, body) in [
        (404, not_found.as_str()),
        (400, validation.as_str()),
        (500, "{}"),
        (502, ""),
    ] {
        let error = check_error(Reply::json(status, body).header("retry-after", "60")).await;
        assert_eq!(error.retry_after(), None, "{status}: {error:?}");
        assert!(
            matches!(
                error.kind,
                HordeErrorKind::Api {
                    retry_after: None,
                    ..
                }
            ),
            "{status}: {error:?}"
        );
    }
    let error = check_error(Reply::json(503, "").header("retry-after", "5")).await;
    assert_eq!(error.retry_after(), Some(Duration::from_secs(5)));

    for (value, expected) in [
        ("0", Duration::ZERO),
        ("1", Duration::from_secs(1)),
        ("60", Duration::from_secs(60)),
        ("1000000000", Duration::from_secs(1_000_000_000)),
        ("18446744073709551615", Duration::from_secs(u64::MAX)),
        ("1.5", Duration::from_millis(1500)),
        ("Sat, 01 Jan 2011 00:00:00 GMT", Duration::ZERO),
    ] {
        let reply =
            Reply::json(429, r#"{"message": "10 per 1 second"}"#).header("retry-after", value);
        let error = check_error(reply).await;
        assert_eq!(error.retry_after(), Some(expected), "{value}");
        assert_eq!(error.class(), FailureClass::RateLimited, "{value}");
    }
    let year_2100 = UNIX_EPOCH + Duration::from_secs(4_102_444_800);
    let before = SystemTime::now();
    let reply = Reply::json(429, r#"{"message": "10 per 1 second"}"#)
        .header("retry-after", "Fri, 01 Jan 2100 00:00:00 GMT");
    let wait = check_error(reply).await.retry_after().unwrap();
    let after = SystemTime::now();
    assert!(
        wait <= year_2100.duration_since(before).unwrap(),
        "{wait:?}"
    );
    assert!(wait >= year_2100.duration_since(after).unwrap(), "{wait:?}");
}

#[tokio::test]
async fn shared_key_lookups_never_put_a_user_key_into_a_path() {
    let shared_id = "11111111-2222-4333-8444-555555555555";
    let key_path = format!("/api/v2/sharedkeys/{shared_id}");
    let server = FakeServer::one(
        Method::GET,
        &key_path,
        Reply::fixture(
            200,
            "example_responses/_v2_sharedkeys_sharedkey_id_get_200.json",
        ),
    )
    .await;
    let user = server.client();
    assert_eq!(user.own_shared_key().await.unwrap(), None);
    let anonymous =
        HordeClient::new(ClientConfig::new(server.base.clone(), ApiKey::anonymous())).unwrap();
    assert_eq!(anonymous.own_shared_key().await.unwrap(), None);
    // Asking explicitly with a user key is refused before any request, too.
    let input = SharedKeyInput {
        kudos: Some(1),
        ..SharedKeyInput::default()
    };
    let user_key = ApiKey::new(KEY);
    let refusals = [
        user.shared_key(&user_key).await.map(drop),
        user.update_shared_key(&user_key, &input).await.map(drop),
        user.delete_shared_key(&user_key).await.map(drop),
    ];
    for result in refusals {
        let error = result.unwrap_err();
        assert!(
            matches!(error.kind, HordeErrorKind::BadUrl { .. }),
            "{error:?}"
        );
        assert_eq!(error.class(), FailureClass::Permanent);
    }
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    let mut config = ClientConfig::new(server.base.clone(), ApiKey::new(shared_id));
    config.contact = CONTACT.into();
    let shared = HordeClient::new(config).unwrap();
    let details = shared
        .own_shared_key()
        .await
        .unwrap()
        .expect("a shared key");
    assert_eq!(
        details.id.expose_secret(),
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(server.only_request().path, key_path);
}

/// A server that reads one request, then writes `head` and then `trickle` one
/// byte every 20 ms: never idle long enough for a read timeout. It stops when
/// the client hangs up, or after 100 s.
async fn start_trickling_server(head: &'static str, trickle: u8) -> Url {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_one_request(&mut socket).await;
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..5_000 {
                    if socket.write_all(&[trickle]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    });
    Url::parse(&format!("http://{address}/api/")).unwrap()
}

#[tokio::test]
async fn a_trickling_server_is_cut_off_at_the_request_timeout() {
    // The head never ends: an endless header line.
    let endless_head = start_trickling_server("HTTP/1.1 200 OK\r\nx-pad: ", b'a').await;
    // The head arrives, the declared body never does.
    let endless_body = start_trickling_server(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n",
        b' ',
    )
    .await;
    let read_timeout = Duration::from_secs(10);
    let client = |base: &Url| {
        let mut config = ClientConfig::new(base.clone(), ApiKey::new(KEY));
        config.read_timeout = read_timeout;
        config.request_timeout = Duration::from_millis(500);
        HordeClient::new(config).unwrap()
    };
    let started = Instant::now();
    let image_url = endless_body.join("image.webp").unwrap();
    let body_client = client(&endless_body);
    let head_client = client(&endless_head);
    let request = sample_request();
    let (head, body, submit, download) = tokio::join!(
        head_client.status(REQUEST_ID),
        body_client.status(REQUEST_ID),
        body_client.submit(&request),
        // Downloads have their own total timeout.
        body_client.download_image(image_url.as_str(), 1 << 20, Duration::from_millis(500)),
    );
    assert!(started.elapsed() < read_timeout, "{:?}", started.elapsed());
    let cases = [
        (head.unwrap_err(), TransportStage::AwaitingResponse),
        (body.unwrap_err(), TransportStage::ReadingBody),
        (submit.unwrap_err(), TransportStage::ReadingBody),
        (download.unwrap_err(), TransportStage::ReadingBody),
    ];
    for (error, stage) in cases {
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(error.class(), FailureClass::Transient, "{error:?}");
        assert!(
            matches!(error.kind, HordeErrorKind::Transport { stage: got, .. } if got == stage),
            "expected {stage:?}: {error:?}"
        );
    }
}

#[tokio::test]
async fn cancel_within_gives_up_on_a_frozen_server() {
    const ANSWERED_ID: &str = "5b4d8e2a-0000-4000-8000-00000000beef";
    let frozen_path = format!("/api/v2/generate/status/{REQUEST_ID}");
    let answered_path = format!("/api/v2/generate/status/{ANSWERED_ID}");
    let server = FakeServer::start(vec![
        (
            Method::DELETE,
            &frozen_path,
            Reply::json(200, "{}").delivered(Delivery::NeverAnswer),
        ),
        (
            Method::DELETE,
            &answered_path,
            Reply::fixture(
                200,
                "example_responses/_v2_generate_status_id_delete_200.json",
            ),
        ),
    ])
    .await;
    // client_for reads with a 10 s timeout and bounds calls at the 120 s default.
    let client = server.client();
    let answered = client
        .cancel_within(ANSWERED_ID, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answered.generations.len(), 1);

    let mut short = ClientConfig::new(server.base.clone(), ApiKey::new(KEY));
    short.request_timeout = Duration::from_millis(300);
    let short = HordeClient::new(short).unwrap();
    let started = Instant::now();
    let (limited, capped) = tokio::join!(
        client.cancel_within(REQUEST_ID, Duration::from_millis(300)),
        // A limit longer than the client's request timeout does not lift it.
        short.cancel_within(REQUEST_ID, Duration::from_secs(60)),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for error in [limited.unwrap_err(), capped.unwrap_err()] {
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(error.class(), FailureClass::Transient);
        assert_eq!(error.endpoint.operation, Operation::Cancel);
        assert!(
            matches!(
                error.kind,
                HordeErrorKind::Transport {
                    stage: TransportStage::AwaitingResponse,
                    ..
                }
            ),
            "{error:?}"
        );
    }
    let deletes = server
        .seen()
        .iter()
        .filter(|seen| seen.method == Method::DELETE && seen.path == frozen_path)
        .count();
    assert_eq!(deletes, 2);
}
