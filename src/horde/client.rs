//! The HTTP side of the client: one `reqwest::Client`, one method per endpoint.
//!
//! Every call sends one request and reports what happened. It never retries,
//! sleeps or persists anything; the scheduler decides about retries from
//! [`HordeError::class`]. Bodies are read as bytes first and then decoded as the
//! success or the error shape, so an error answer always keeps its `rc` and
//! message (no `error_for_status`).
//!
//! The `apikey` header is attached only to the calls that need it (submit, dry
//! run, find_user, shared-key changes); polling, cancel and status reads work
//! with the request id alone, and image downloads go to object storage, which
//! must never see the key.

use std::borrow::Cow;
use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::config::{ApiKey, ClientConfig};
use super::error::{
    ClientBuildError, Endpoint, HordeError, HordeErrorKind, Operation, TransportStage,
};
use super::time::HordeTime;
use super::types::{
    DryRunEstimate, GenerationRequest, Heartbeat, MessageReply, ModelStatus, RequestCheck,
    RequestStatus, SharedKeyDetails, SharedKeyInput, SubmitAccepted, UserDetails,
};

/// The largest API reply the client will read. A status with twenty inline
/// base64 images stays far below it; anything larger is not a Horde reply.
pub const MAX_API_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How much of an undecodable body is kept in the error.
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
    /// Builds the client: default `Client-Agent` header, connect and read timeouts.
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        let client_agent = config.client_agent();
        let ClientConfig {
            mut base_url,
            api_key,
            contact,
            connect_timeout,
            read_timeout,
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
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .build()
            .map_err(ClientBuildError::Http)?;
        Ok(HordeClient {
            inner: Arc::new(Inner {
                http,
                base_url,
                api_key,
                api_key_header,
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
    pub async fn shared_key(&self, id: &ApiKey) -> Result<SharedKeyDetails, HordeError> {
        let endpoint = Endpoint::new(Operation::GetSharedKey);
        let url = self.url("v2/sharedkeys", Some(id.expose_secret()));
        self.call(endpoint, self.request(Method::GET, url)).await
    }

    /// Changes a shared key (`PATCH /v2/sharedkeys/{id}`); only set fields change.
    pub async fn update_shared_key(
        &self,
        id: &ApiKey,
        input: &SharedKeyInput,
    ) -> Result<SharedKeyDetails, HordeError> {
        let endpoint = Endpoint::new(Operation::UpdateSharedKey);
        let url = self.url("v2/sharedkeys", Some(id.expose_secret()));
        let builder = self.request(Method::PATCH, url).json(input);
        self.call(endpoint, self.with_key(builder)).await
    }

    /// Deletes a shared key (`DELETE /v2/sharedkeys/{id}`).
    pub async fn delete_shared_key(&self, id: &ApiKey) -> Result<(), HordeError> {
        let endpoint = Endpoint::new(Operation::DeleteSharedKey);
        let url = self.url("v2/sharedkeys", Some(id.expose_secret()));
        let builder = self.request(Method::DELETE, url);
        let _: MessageReply = self.call(endpoint, self.with_key(builder)).await?;
        Ok(())
    }

    /// Downloads an image from a URL that `/status` handed out (presigned R2).
    ///
    /// Only `http` and `https` are fetched; the body is streamed and abandoned as
    /// soon as it passes `max_bytes`; `timeout` bounds the whole exchange. The API
    /// key is not sent. The URL (which embeds a signature) never appears in errors.
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
        let response = send(&endpoint, builder).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error(endpoint, response).await);
        }
        read_body(&endpoint, response, max_bytes).await
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.inner.http.request(method, url)
    }

    fn with_key(&self, builder: RequestBuilder) -> RequestBuilder {
        builder.header(APIKEY_HEADER, self.inner.api_key_header.clone())
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
    async fn call<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        builder: RequestBuilder,
    ) -> Result<T, HordeError> {
        let response = send(&endpoint, builder).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(api_error(endpoint, response).await);
        }
        let body = read_body(&endpoint, response, MAX_API_BODY_BYTES).await?;
        serde_json::from_slice(&body).map_err(|err| {
            HordeError::new(
                endpoint,
                HordeErrorKind::Decode {
                    status: status.as_u16(),
                    reason: err.to_string(),
                    snippet: snippet(&body),
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

/// Turns a non-success response into [`HordeErrorKind::Api`], keeping whatever
/// the body says even when it is not the usual JSON.
async fn api_error(endpoint: Endpoint, response: Response) -> HordeError {
    let status = response.status();
    let retry_after = parse_retry_after(response.headers(), SystemTime::now());
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
        .or_else(|| (!body.is_empty()).then(|| snippet(&body)))
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

/// `Retry-After` as delta-seconds or as an HTTP date (relative to `now`).
fn parse_retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = HordeTime::parse(value).ok()?.system_time();
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
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

/// The first [`SNIPPET_CHARS`] characters of a body, lossily decoded.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut snippet: String = text.chars().take(SNIPPET_CHARS).collect();
    if text.chars().nth(SNIPPET_CHARS).is_some() {
        snippet.push('…');
    }
    snippet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_609_459_200);
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers, now), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("60"));
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(60))
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Fri, 01 Jan 2021 00:00:30 GMT"),
        );
        assert_eq!(
            parse_retry_after(&headers, now),
            Some(Duration::from_secs(30))
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Thu, 31 Dec 2020 00:00:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&headers, now), None);
    }

    #[test]
    fn snippet_is_bounded_and_lossy() {
        assert_eq!(snippet(b"{\"oops"), "{\"oops");
        let long = "x".repeat(500);
        let cut = snippet(long.as_bytes());
        assert_eq!(cut.chars().count(), SNIPPET_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(snippet(&[0xff, b'a']), "\u{fffd}a");
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
