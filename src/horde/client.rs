//! The HTTP side of the client: one `reqwest::Client`, one method per endpoint.
//!
//! Every call sends one request and reports what happened. It never retries,
//! sleeps or persists anything; the scheduler decides about retries from
//! [`HordeError::class`]. Bodies are read as bytes first and then decoded as the
//! success or the error shape, so an error answer always keeps its `rc` and
//! message (no `error_for_status`).
//!
//! A hostile or misconfigured server cannot steer it: redirects are never
//! followed (they become [`HordeErrorKind::Redirect`]), every call has a total
//! time bound, bodies have a size bound, and every error built from an answer
//! has the client's own key redacted before it leaves this module.
//!
//! The `apikey` header is attached only to the calls that need it (submit, dry
//! run, find_user, shared-key changes); polling, cancel and status reads work
//! with the request id alone, and image downloads go to object storage, which
//! must never see the key.

use std::borrow::Cow;
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::alchemy::{
    AlchemistSummary, InterrogationAccepted, InterrogationRequest, InterrogationStatus,
};
use super::config::{ApiKey, ClientConfig};
use super::error::{
    ClientBuildError, Endpoint, HordeError, HordeErrorKind, Operation, Redactor, TransportStage,
};
use super::time::HordeTime;
use super::types::{
    DryRunEstimate, GenerationRequest, Heartbeat, MessageReply, ModelStatus, RequestCheck,
    RequestStatus, SharedKeyDetails, SharedKeyInput, SubmitAccepted, UserDetails, WorkerSummary,
};

/// The largest API reply the client will read. A status with twenty inline
/// base64 images stays far below it; anything larger is not a Horde reply.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How much of an undecodable body (or of a redirect's `Location`) is kept in the error.
const SNIPPET_CHARS: usize = 200;

const APIKEY_HEADER: &str = "apikey";
const CLIENT_AGENT_HEADER: &str = "client-agent";

/// A typed AI Horde v2 client. Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct HordeClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The API root, always ending in `/` so that `v2/...` joins below it.
    base_url: Url,
    api_key: ApiKey,
    /// The `apikey` header, built once and marked sensitive.
    api_key_header: HeaderValue,
    /// Takes the key out of errors built from answers.
    redactor: Redactor,
    /// The client-wide total bound of an API call, for [`HordeClient::cancel_within`].
    request_timeout: Duration,
}

impl std::fmt::Debug for HordeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HordeClient")
            .field("base_url", &self.inner.base_url.as_str())
            .field("api_key", &self.inner.api_key)
            .finish_non_exhaustive()
    }
}

impl HordeClient {
    /// Builds the client: default `Client-Agent` header, connect, read and total
    /// timeouts, and no redirects.
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        let client_agent = config.client_agent();
        let ClientConfig {
            mut base_url,
            api_key,
            contact,
            connect_timeout,
            read_timeout,
            request_timeout,
        } = config;
        if !matches!(base_url.scheme(), "http" | "https") || base_url.cannot_be_a_base() {
            return Err(ClientBuildError::BaseUrl {
                scheme: base_url.scheme().to_owned(),
            });
        }
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        let api_key_header = api_key
            .header_value()
            .map_err(|_| ClientBuildError::ApiKey)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            CLIENT_AGENT_HEADER,
            HeaderValue::from_str(&client_agent)
                .map_err(|_| ClientBuildError::Contact { contact })?,
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            // reqwest would re-send the custom `apikey` header to whatever host a
            // redirect names (it strips only Authorization and cookies).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            // Connect to last body byte; a request-level timeout (downloads,
            // cancel_within) replaces it.
            .timeout(request_timeout)
            .build()
            .map_err(ClientBuildError::Http)?;
        let redactor = Redactor::new(api_key.expose_secret());
        Ok(HordeClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                api_key,
                api_key_header,
                redactor,
                request_timeout,
            }),
        })
    }

    /// The normalised API root (ends in `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base_url
    }

    /// Whether this client uses the anonymous key.
    pub fn is_anonymous(&self) -> bool {
        self.inner.api_key.is_anonymous()
    }

    /// The key this client sends (redacted in `Debug` and `Display`).
    pub fn api_key(&self) -> &ApiKey {
        &self.inner.api_key
    }

    /// Queues a generation (`POST /v2/generate/async`, 202). `dry_run` is forced
    /// off. On [`HordeError::outcome_unknown`] the request may have been queued.
    pub async fn submit(&self, request: &GenerationRequest) -> Result<SubmitAccepted, HordeError> {
        let body = if request.dry_run {
            let mut real = request.clone();
            real.dry_run = false;
            Cow::Owned(real)
        } else {
            Cow::Borrowed(request)
        };
        let endpoint = Endpoint::new(Operation::Submit);
        let builder = self
            .request(Method::POST, self.url("v2/generate/async", None))
            .json(&*body);
        self.call(endpoint, self.with_key(builder)).await
    }

    /// Prices a generation without queueing it (the same POST with `dry_run`
    /// forced on, 200 `{kudos}`): the extrapolated total for all `n` images.
    pub async fn dry_run(&self, request: &GenerationRequest) -> Result<f64, HordeError> {
        let mut priced = request.clone();
        priced.dry_run = true;
        let endpoint = Endpoint::new(Operation::DryRun);
        let builder = self
            .request(Method::POST, self.url("v2/generate/async", None))
            .json(&priced);
        let estimate: DryRunEstimate = self.call(endpoint, self.with_key(builder)).await?;
        Ok(estimate.kudos)
    }

    /// The lite status of a request (`GET /v2/generate/check/{id}`).
    pub async fn check(&self, id: &str) -> Result<RequestCheck, HordeError> {
        let endpoint = Endpoint::for_request(Operation::Check, id);
        let builder = self.request(Method::GET, self.url("v2/generate/check", Some(id)));
        self.call(endpoint, builder).await
    }

    /// The full status with the finished images (`GET /v2/generate/status/{id}`).
    pub async fn status(&self, id: &str) -> Result<RequestStatus, HordeError> {
        let endpoint = Endpoint::for_request(Operation::Status, id);
        let builder = self.request(Method::GET, self.url("v2/generate/status", Some(id)));
        self.call(endpoint, builder).await
    }

    /// Cancels a request (`DELETE /v2/generate/status/{id}`). The reply is the
    /// status from just before the cancel, with every image already finished;
    /// images in progress still arrive later.
    pub async fn cancel(&self, id: &str) -> Result<RequestStatus, HordeError> {
        let endpoint = Endpoint::for_request(Operation::Cancel, id);
        let builder = self.request(Method::DELETE, self.url("v2/generate/status", Some(id)));
        self.call(endpoint, builder).await
    }

    /// [`cancel`](Self::cancel) bounded to `limit` (or the client's request
    /// timeout, whichever is shorter), for use while a run is stopping. Running out
    /// of time is a transport error with `timed_out` set ([`FailureClass::Transient`](super::FailureClass::Transient)).
    pub async fn cancel_within(
        &self,
        id: &str,
        limit: Duration,
    ) -> Result<RequestStatus, HordeError> {
        let endpoint = Endpoint::for_request(Operation::Cancel, id);
        let builder = self
            .request(Method::DELETE, self.url("v2/generate/status", Some(id)))
            .timeout(limit.min(self.inner.request_timeout));
        self.call(endpoint, builder).await
    }

    /// The user the key belongs to (`GET /v2/find_user`).
    pub async fn find_user(&self) -> Result<UserDetails, HordeError> {
        let endpoint = Endpoint::new(Operation::FindUser);
        let builder = self.request(Method::GET, self.url("v2/find_user", None));
        self.call(endpoint, self.with_key(builder)).await
    }

    /// Image models and their load (`GET /v2/status/models?type=image`).
    pub async fn models(&self) -> Result<Vec<ModelStatus>, HordeError> {
        let mut url = self.url("v2/status/models", None);
        url.query_pairs_mut().append_pair("type", "image");
        let endpoint = Endpoint::new(Operation::Models);
        self.call(endpoint, self.request(Method::GET, url)).await
    }

    /// The image workers online and what they take (`GET /v2/workers?type=image`).
    pub async fn workers(&self) -> Result<Vec<WorkerSummary>, HordeError> {
        let mut url = self.url("v2/workers", None);
        url.query_pairs_mut().append_pair("type", "image");
        let endpoint = Endpoint::new(Operation::Workers);
        self.call(endpoint, self.request(Method::GET, url)).await
    }

    /// The alchemists online and the forms they serve
    /// (`GET /v2/workers?type=interrogation`).
    pub async fn alchemists(&self) -> Result<Vec<AlchemistSummary>, HordeError> {
        let mut url = self.url("v2/workers", None);
        url.query_pairs_mut().append_pair("type", "interrogation");
        let endpoint = Endpoint::new(Operation::Workers);
        self.call(endpoint, self.request(Method::GET, url)).await
    }

    /// Queues alchemy forms on one image (`POST /v2/interrogate/async`, 202).
    /// Nothing is charged until a form is delivered. On
    /// [`HordeError::outcome_unknown`] the request may have been queued, and
    /// nothing lists a user's interrogations to find it again.
    pub async fn interrogate(
        &self,
        request: &InterrogationRequest,
    ) -> Result<InterrogationAccepted, HordeError> {
        let endpoint = Endpoint::new(Operation::Interrogate);
        let builder = self
            .request(Method::POST, self.url("v2/interrogate/async", None))
            .json(request);
        self.call(endpoint, self.with_key(builder)).await
    }

    /// An interrogation's forms and their results
    /// (`GET /v2/interrogate/status/{id}`; there is no lighter check).
    pub async fn interrogation_status(&self, id: &str) -> Result<InterrogationStatus, HordeError> {
        let endpoint = Endpoint::for_request(Operation::InterrogationStatus, id);
        let builder = self.request(Method::GET, self.url("v2/interrogate/status", Some(id)));
        self.call(endpoint, builder).await
    }

    /// Cancels an interrogation's forms that are not done
    /// (`DELETE /v2/interrogate/status/{id}`), bounded to `limit`. The answer
    /// keeps the results of the done forms; a form cancelled while processing
    /// is still charged.
    pub async fn cancel_interrogation(
        &self,
        id: &str,
        limit: Duration,
    ) -> Result<InterrogationStatus, HordeError> {
        let endpoint = Endpoint::for_request(Operation::CancelInterrogation, id);
        let builder = self
            .request(Method::DELETE, self.url("v2/interrogate/status", Some(id)))
            .timeout(limit.min(self.inner.request_timeout));
        self.call(endpoint, builder).await
    }

    /// Whether the Horde is up (`GET /v2/status/heartbeat`, not rate limited).
    pub async fn heartbeat(&self) -> Result<Heartbeat, HordeError> {
        let endpoint = Endpoint::new(Operation::Heartbeat);
        let builder = self.request(Method::GET, self.url("v2/status/heartbeat", None));
        self.call(endpoint, builder).await
    }

    /// Creates a shared key owned by this client's key (`PUT /v2/sharedkeys`).
    /// Not idempotent: see [`HordeError::outcome_unknown`].
    pub async fn create_shared_key(
        &self,
        input: &SharedKeyInput,
    ) -> Result<SharedKeyDetails, HordeError> {
        let endpoint = Endpoint::new(Operation::CreateSharedKey);
        let builder = self
            .request(Method::PUT, self.url("v2/sharedkeys", None))
            .json(input);
        self.call(endpoint, self.with_key(builder)).await
    }

    /// Describes a shared key (`GET /v2/sharedkeys/{id}`; an unknown id is a 401).
    /// An id that is not a UUID is refused without a request ([`HordeErrorKind::BadUrl`]):
    /// it may be a user key, which must not end up in a URL path.
    pub async fn shared_key(&self, id: &ApiKey) -> Result<SharedKeyDetails, HordeError> {
        let endpoint = Endpoint::new(Operation::GetSharedKey);
        let Some(url) = self.shared_key_url(id) else {
            return Err(not_a_shared_key_id(endpoint));
        };
        self.call(endpoint, self.request(Method::GET, url)).await
    }

    /// The details of this client's own key when it is a shared key. `Ok(None)`,
    /// without any request, for the anonymous key and for keys that are not
    /// UUIDs (user keys), whose lookup would write the key into access logs.
    pub async fn own_shared_key(&self) -> Result<Option<SharedKeyDetails>, HordeError> {
        let key = &self.inner.api_key;
        if key.is_anonymous() || !key.is_shared_key_shaped() {
            return Ok(None);
        }
        self.shared_key(key).await.map(Some)
    }

    /// Changes a shared key (`PATCH /v2/sharedkeys/{id}`); only set fields change.
    pub async fn update_shared_key(
        &self,
        id: &ApiKey,
        input: &SharedKeyInput,
    ) -> Result<SharedKeyDetails, HordeError> {
        let endpoint = Endpoint::new(Operation::UpdateSharedKey);
        let Some(url) = self.shared_key_url(id) else {
            return Err(not_a_shared_key_id(endpoint));
        };
        let builder = self.request(Method::PATCH, url).json(input);
        self.call(endpoint, self.with_key(builder)).await
    }

    /// Deletes a shared key (`DELETE /v2/sharedkeys/{id}`).
    pub async fn delete_shared_key(&self, id: &ApiKey) -> Result<(), HordeError> {
        let endpoint = Endpoint::new(Operation::DeleteSharedKey);
        let Some(url) = self.shared_key_url(id) else {
            return Err(not_a_shared_key_id(endpoint));
        };
        let builder = self.request(Method::DELETE, url);
        let _: MessageReply = self.call(endpoint, self.with_key(builder)).await?;
        Ok(())
    }

    /// Downloads an image from a URL that `/status` handed out (presigned R2).
    ///
    /// Only `http` and `https` are fetched; the body is streamed and abandoned as
    /// soon as it passes `max_bytes`; `timeout` bounds the whole exchange (connect
    /// to last byte). The API key is not sent, and redirects are not followed. The
    /// URL (which embeds a signature) never appears in errors.
    pub async fn download_image(
        &self,
        url: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, HordeError> {
        let endpoint = Endpoint::new(Operation::DownloadImage);
        let parsed = Url::parse(url).map_err(|err| {
            HordeError::new(
                endpoint.clone(),
                HordeErrorKind::BadUrl {
                    reason: format!("not a valid URL ({err})"),
                },
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(HordeError::new(
                endpoint,
                HordeErrorKind::BadUrl {
                    reason: format!("scheme {:?} is not http or https", parsed.scheme()),
                },
            ));
        }
        let builder = self.request(Method::GET, parsed).timeout(timeout);
        let redactor = &self.inner.redactor;
        let result = async {
            let response = send(&endpoint, builder).await?;
            let status = response.status();
            if status.is_redirection() {
                return Err(redirect_error(endpoint.clone(), &response, redactor));
            }
            if !status.is_success() {
                return Err(api_error(endpoint.clone(), response, redactor).await);
            }
            read_body(&endpoint, response, max_bytes).await
        }
        .await;
        result.map_err(|err| redactor.error(err))
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner.http.request(method, url)
    }

    fn with_key(&self, builder: RequestBuilder) -> RequestBuilder {
        builder.header(APIKEY_HEADER, self.inner.api_key_header.clone())
    }

    /// `v2/sharedkeys/{id}`, only for an id shaped like a shared key.
    fn shared_key_url(&self, id: &ApiKey) -> Option<Url> {
        id.is_shared_key_shaped()
            .then(|| self.url("v2/sharedkeys", Some(id.expose_secret())))
    }

    /// `base_url` + `path` [+ `/` + percent-encoded `id`].
    fn url(&self, path: &str, id: Option<&str>) -> Url {
        let mut url = self
            .inner
            .base_url
            .join(path)
            .expect("endpoint paths are constant relative URLs");
        if let Some(id) = id {
            url.path_segments_mut()
                .expect("the base URL was checked to be http(s) when the client was built")
                .push(id);
        }
        url
    }

    /// Sends, reads the whole body, and decodes the success or the error shape.
    /// Every error leaves through the redactor.
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        builder: RequestBuilder,
    ) -> Result<T, HordeError> {
        let redactor = &self.inner.redactor;
        self.call_unredacted(endpoint, builder)
            .await
            .map_err(|err| redactor.error(err))
    }

    async fn call_unredacted<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        builder: RequestBuilder,
    ) -> Result<T, HordeError> {
        let redactor = &self.inner.redactor;
        let response = send(&endpoint, builder).await?;
        let status = response.status();
        if status.is_redirection() {
            return Err(redirect_error(endpoint, &response, redactor));
        }
        if !status.is_success() {
            return Err(api_error(endpoint, response, redactor).await);
        }
        let body = read_body(&endpoint, response, MAX_API_BODY_BYTES).await?;
        serde_json::from_slice(&body).map_err(|err| {
            HordeError::new(
                endpoint,
                HordeErrorKind::Decode {
                    status: status.as_u16(),
                    reason: err.to_string(),
                    snippet: snippet(&body, redactor),
                },
            )
        })
    }
}

async fn send(endpoint: &Endpoint, builder: RequestBuilder) -> Result<Response, HordeError> {
    builder.send().await.map_err(|err| {
        let kind = if err.is_builder() {
            HordeErrorKind::BadUrl {
                reason: error_chain(err),
            }
        } else {
            let stage = if err.is_connect() {
                TransportStage::Connect
            } else {
                TransportStage::AwaitingResponse
            };
            transport(stage, err)
        };
        HordeError::new(endpoint.clone(), kind)
    })
}

/// Streams the body, failing as soon as it exceeds `limit` bytes.
async fn read_body(
    endpoint: &Endpoint,
    mut response: Response,
    limit: usize,
) -> Result<Vec<u8>, HordeError> {
    let too_large = || HordeError::new(endpoint.clone(), HordeErrorKind::BodyTooLarge { limit });
    let declared = response.content_length();
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let capacity = declared.map_or(0, |length| length as usize);
    let mut body = Vec::with_capacity(capacity);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(err) => {
                return Err(HordeError::new(
                    endpoint.clone(),
                    transport(TransportStage::ReadingBody, err),
                ))
            }
        }
    }
}

/// The error shape of the Horde: `{message, rc}`, or `{message, errors}` for
/// schema validation; limiter 429s and 500s carry only `message`.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    rc: Option<String>,
    #[serde(default)]
    errors: Option<serde_json::Map<String, Value>>,
}

/// The refusal of a shared-key id that is not a UUID (it may be a user key).
fn not_a_shared_key_id(endpoint: Endpoint) -> HordeError {
    HordeError::new(
        endpoint,
        HordeErrorKind::BadUrl {
            reason: "a shared-key id is a UUID; anything else may be an API key and is not put \
                     into a URL"
                .to_owned(),
        },
    )
}

/// A 3xx answer, never followed. For an image download the `Location` loses its
/// query (a presigned URL's signature).
fn redirect_error(endpoint: Endpoint, response: &Response, redactor: &Redactor) -> HordeError {
    let location = response.headers().get(LOCATION).map(|value| {
        let raw = String::from_utf8_lossy(value.as_bytes());
        let shown = match raw.split_once('?') {
            Some((before, _)) if endpoint.operation == Operation::DownloadImage => {
                format!("{before}?…")
            }
            _ => raw.into_owned(),
        };
        bounded(&redactor.text(&shown))
    });
    HordeError::new(
        endpoint,
        HordeErrorKind::Redirect {
            status: response.status().as_u16(),
            location,
        },
    )
}

/// Turns a non-success response into [`HordeErrorKind::Api`], keeping whatever
/// the body says even when it is not the usual JSON.
async fn api_error(endpoint: Endpoint, response: Response, redactor: &Redactor) -> HordeError {
    let status = response.status();
    // Only these statuses ask the client to wait; the Horde sends `Retry-After`
    // on successes and other errors too (docs/horde-api.md §9.1).
    let retry_after = if matches!(status.as_u16(), 429 | 503) {
        parse_retry_after(response.headers(), SystemTime::now())
    } else {
        None
    };
    // An error body is small; past the limit it is not worth reading.
    let body = match read_body(&endpoint, response, MAX_API_BODY_BYTES).await {
        Ok(body) => body,
        Err(err) if matches!(err.kind, HordeErrorKind::Transport { .. }) => Vec::new(),
        Err(err) => return err,
    };
    let parsed = serde_json::from_slice::<ErrorBody>(&body).ok();
    let (message, rc, errors) = match parsed {
        Some(ErrorBody {
            message,
            rc,
            errors,
        }) => (message, rc, errors.unwrap_or_default()),
        None => (None, None, serde_json::Map::new()),
    };
    let message = message
        .or_else(|| (!body.is_empty()).then(|| snippet(&body, redactor)))
        .unwrap_or_else(|| canonical_reason(status));
    let errors = errors
        .into_iter()
        .map(|(field, reason)| match reason {
            Value::String(text) => (field, text),
            other => (field, other.to_string()),
        })
        .collect();
    HordeError::new(
        endpoint,
        HordeErrorKind::Api {
            status: status.as_u16(),
            rc,
            message,
            errors,
            retry_after,
        },
    )
}

fn canonical_reason(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("no message").to_owned()
}

/// `Retry-After` as delta-seconds (decimals tolerated, too many digits saturate)
/// or as an HTTP date relative to `now` (a past date is zero). Never panics.
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Some(delay) = delay_seconds(value) {
        return Some(delay);
    }
    let date = HordeTime::parse(value).ok()?.system_time();
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `123` or `1.5`: ASCII digits only, no sign. Whole seconds past `u64::MAX`
/// saturate; fractions past nanoseconds are cut.
fn delay_seconds(value: &str) -> Option<Duration> {
    let all_digits = |text: &str| text.bytes().all(|byte| byte.is_ascii_digit());
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // Only digits are left, so a parse failure is an overflow.
    let seconds = whole.parse::<u64>().unwrap_or(u64::MAX);
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |nanos, digit| nanos * 10 + u32::from(digit - b'0'));
    // nanos < 10^9, so no carry into the seconds: Duration::new cannot panic.
    Some(Duration::new(seconds, nanos))
}

fn transport(stage: TransportStage, err: reqwest::Error) -> HordeErrorKind {
    HordeErrorKind::Transport {
        stage,
        timed_out: err.is_timeout(),
        detail: error_chain(err),
    }
}

/// The error and its causes, joined by `: `, with the URL removed (presigned
/// URLs carry signatures, shared-key paths carry keys).
fn error_chain(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The first [`SNIPPET_CHARS`] characters of a body, lossily decoded, with the key
/// redacted before the cut (a cut must not leave half a key behind).
fn snippet(body: &[u8], redactor: &Redactor) -> String {
    // Only the start is shown; redacting all of a 64 MiB body would be wasted work.
    let head = &body[..body.len().min(SNIPPET_CHARS * 8)];
    bounded(&redactor.text(&String::from_utf8_lossy(head)))
}

/// `text` cut to [`SNIPPET_CHARS`] characters, with `…` when cut.
fn bounded(text: &str) -> String {
    let mut bounded: String = text.chars().take(SNIPPET_CHARS).collect();
    if text.chars().nth(SNIPPET_CHARS).is_some() {
        bounded.push('…');
    }
    bounded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        parse_retry_after(&headers, now)
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_609_459_200);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
        let cases: &[(&str, Option<Duration>)] = &[
            ("0", Some(Duration::ZERO)),
            ("1", Some(Duration::from_secs(1))),
            ("60", Some(Duration::from_secs(60))),
            (" 60 ", Some(Duration::from_secs(60))),
            ("1000000000", Some(Duration::from_secs(1_000_000_000))),
            ("18446744073709551615", Some(Duration::from_secs(u64::MAX))),
            // Past u64: saturated, not wrapped and not refused.
            (
                "99999999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            (
                "18446744073709551615.999999999",
                Some(Duration::new(u64::MAX, 999_999_999)),
            ),
            ("1.5", Some(Duration::from_millis(1500))),
            ("0.25", Some(Duration::from_millis(250))),
            ("2.0000000019", Some(Duration::new(2, 1))),
            ("7.", Some(Duration::from_secs(7))),
            (
                "Fri, 01 Jan 2021 00:00:30 GMT",
                Some(Duration::from_secs(30)),
            ),
            (
                "Fri, 01 Jan 2100 00:00:00 GMT",
                Some(Duration::from_secs(4_102_444_800 - 1_609_459_200)),
            ),
            (
                "Friday, 01-Jan-21 00:01:00 GMT",
                Some(Duration::from_secs(60)),
            ),
            ("Fri Jan  1 00:00:05 2021", Some(Duration::from_secs(5))),
            ("Thu, 31 Dec 2020 00:00:00 GMT", Some(Duration::ZERO)),
            ("Sat, 01 Jan 2011 00:00:00 -0000", Some(Duration::ZERO)),
            ("soon", None),
            ("", None),
            ("-1", None),
            ("+5", None),
            (".5", None),
            ("1.2.3", None),
            ("1e3", None),
            ("Mon, 01 Jan 2100 00:00:00 GMT", None),
        ];
        for (value, expected) in cases {
            assert_eq!(retry_after(value, now), *expected, "{value:?}");
        }
    }

    #[test]
    fn retry_after_is_safe_at_the_ends_of_time() {
        // A clock at the start or far end of SystemTime's range, and dates at
        // either end of what an HTTP date can say: no panic, no wrap-around.
        // A date in the past is "now" (zero), one ahead is the time until it,
        // and delay-seconds do not depend on the clock at all.
        let far_future = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        let year_2100 = Duration::from_secs(4_102_444_800);
        let longest = Duration::from_secs(u64::MAX);
        let cases = [
            (
                SystemTime::UNIX_EPOCH,
                [Some(year_2100), Some(Duration::ZERO), Some(longest)],
            ),
            (
                far_future,
                [Some(Duration::ZERO), Some(Duration::ZERO), Some(longest)],
            ),
        ];
        for (now, expected) in cases {
            let got = [
                retry_after("Fri, 01 Jan 2100 00:00:00 GMT", now),
                retry_after("Mon, 01 Jan 0001 00:00:00 GMT", now),
                retry_after("18446744073709551615", now),
            ];
            assert_eq!(got, expected, "now = {now:?}");
        }
    }

    #[test]
    fn snippet_is_bounded_lossy_and_redacted_before_the_cut() {
        let none = Redactor::default();
        assert_eq!(snippet(b"{\"oops", &none), "{\"oops");
        let long = "x".repeat(500);
        let cut = snippet(long.as_bytes(), &none);
        assert_eq!(cut.chars().count(), SNIPPET_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(snippet(&[0xff, b'a'], &none), "\u{fffd}a");
        // The key straddles the cut: no part of it may survive.
        let key = "Secret-Key-0123456789";
        let redactor = Redactor::new(key);
        let body = format!("{}{key}{}", "x".repeat(SNIPPET_CHARS - 5), "y".repeat(50));
        let cut = snippet(body.as_bytes(), &redactor);
        assert!(!cut.contains("Secre"), "{cut}");
        assert!(cut.contains("[red"), "{cut}");
    }

    #[test]
    fn urls_join_below_the_base_with_or_without_trailing_slash() {
        for base in ["https://aihorde.net/api", "https://aihorde.net/api/"] {
            let config = ClientConfig::new(Url::parse(base).unwrap(), ApiKey::anonymous());
            let client = HordeClient::new(config).unwrap();
            assert_eq!(
                client.url("v2/generate/async", None).as_str(),
                "https://aihorde.net/api/v2/generate/async"
            );
            assert_eq!(
                client.url("v2/generate/check", Some("a/b?c")).as_str(),
                "https://aihorde.net/api/v2/generate/check/a%2Fb%3Fc"
            );
        }
    }

    #[test]
    fn rejects_unusable_configuration() {
        let config = ClientConfig::new(
            Url::parse("ftp://example.org/").unwrap(),
            ApiKey::anonymous(),
        );
        assert!(matches!(
            HordeClient::new(config),
            Err(ClientBuildError::BaseUrl { .. })
        ));
        let config = ClientConfig::new(
            ClientConfig::default_base_url(),
            ApiKey::new("bad\u{7f}key"),
        );
        assert!(matches!(
            HordeClient::new(config),
            Err(ClientBuildError::ApiKey)
        ));
        let mut config = ClientConfig::new(ClientConfig::default_base_url(), ApiKey::anonymous());
        config.contact = "line\nbreak".into();
        assert!(matches!(
            HordeClient::new(config),
            Err(ClientBuildError::Contact { .. })
        ));
    }
}
