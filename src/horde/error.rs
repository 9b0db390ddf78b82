//! Typed errors of the Horde client and the one classification the scheduler acts on.
//!
//! A [`HordeError`] names the endpoint it came from and what went wrong
//! ([`HordeErrorKind`]): an API answer (status, `rc`, message, validation errors,
//! `Retry-After`), a refused redirect, a transport failure (with how far the
//! request got), an undecodable body, an oversized body, or a refused URL. [`HordeError::class`]
//! maps every error onto a [`FailureClass`] following `ARCHITECTURE.md` ("Failure classes")
//! and the `rc` lists in docs/horde-api.md §3.4; the scheduler decides what to do with it.
//!
//! Errors never carry the API key, a shared-key id, or a presigned image URL.
//! The server can echo the key back (find_user's 404 does), so the client passes
//! every error built from an answer through [`Redactor`] before returning it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which client call failed. Each names its method and path template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /v2/generate/async`.
    Submit,
    /// `POST /v2/generate/async` with `dry_run: true`.
    DryRun,
    /// `GET /v2/generate/check/{id}`.
    Check,
    /// `GET /v2/generate/status/{id}`.
    Status,
    /// `DELETE /v2/generate/status/{id}`.
    Cancel,
    /// `GET /v2/find_user`.
    FindUser,
    /// `GET /v2/status/models`.
    Models,
    /// `GET /v2/workers`.
    Workers,
    /// `GET /v2/status/heartbeat`.
    Heartbeat,
    /// `PUT /v2/sharedkeys`.
    CreateSharedKey,
    /// `GET /v2/sharedkeys/{id}`.
    GetSharedKey,
    /// `PATCH /v2/sharedkeys/{id}`.
    UpdateSharedKey,
    /// `DELETE /v2/sharedkeys/{id}`.
    DeleteSharedKey,
    /// `GET` of an image URL handed out by `/status` (R2 object storage).
    DownloadImage,
    /// `POST /v2/interrogate/async` (alchemy).
    Interrogate,
    /// `GET /v2/interrogate/status/{id}`.
    InterrogationStatus,
    /// `DELETE /v2/interrogate/status/{id}`.
    CancelInterrogation,
}

impl Operation {
    /// The HTTP method.
    pub fn method(self) -> &'static str {
        match self {
            Operation::Submit | Operation::DryRun | Operation::Interrogate => "POST",
            Operation::CreateSharedKey => "PUT",
            Operation::UpdateSharedKey => "PATCH",
            Operation::Cancel | Operation::DeleteSharedKey | Operation::CancelInterrogation => {
                "DELETE"
            }
            Operation::Check
            | Operation::Status
            | Operation::FindUser
            | Operation::Models
            | Operation::Workers
            | Operation::Heartbeat
            | Operation::GetSharedKey
            | Operation::DownloadImage
            | Operation::InterrogationStatus => "GET",
        }
    }

    /// The path template, as in the API docs.
    pub fn path_template(self) -> &'static str {
        match self {
            Operation::Submit | Operation::DryRun => "/v2/generate/async",
            Operation::Check => "/v2/generate/check/{id}",
            Operation::Status | Operation::Cancel => "/v2/generate/status/{id}",
            Operation::FindUser => "/v2/find_user",
            Operation::Models => "/v2/status/models",
            Operation::Workers => "/v2/workers",
            Operation::Heartbeat => "/v2/status/heartbeat",
            Operation::CreateSharedKey => "/v2/sharedkeys",
            Operation::GetSharedKey | Operation::UpdateSharedKey | Operation::DeleteSharedKey => {
                "/v2/sharedkeys/{id}"
            }
            Operation::DownloadImage => "<image url>",
            Operation::Interrogate => "/v2/interrogate/async",
            Operation::InterrogationStatus | Operation::CancelInterrogation => {
                "/v2/interrogate/status/{id}"
            }
        }
    }

    /// Whether repeating the call after an unknown outcome is harmless.
    /// A submit (of images or of alchemy forms) queues and bills a new request
    /// each time; creating a shared key makes a new key each time.
    pub fn is_idempotent(self) -> bool {
        !matches!(
            self,
            Operation::Submit | Operation::CreateSharedKey | Operation::Interrogate
        )
    }
}

/// Where an error happened: the operation, and the Horde request id when the
/// path holds one. Shared-key ids are credentials and are never recorded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The call.
    pub operation: Operation,
    /// The generation request id in the path, if any.
    pub request_id: Option<String>,
}

impl Endpoint {
    /// An endpoint without an id in its path (or whose id must not be shown).
    pub fn new(operation: Operation) -> Self {
        Endpoint {
            operation,
            request_id: None,
        }
    }

    /// An endpoint about one generation request.
    pub fn for_request(operation: Operation, request_id: &str) -> Self {
        Endpoint {
            operation,
            request_id: Some(request_id.to_owned()),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.operation.method(),
            self.operation.path_template()
        )?;
        if self.operation == Operation::DryRun {
            f.write_str(" (dry run)")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (id {id})")?;
        }
        Ok(())
    }
}

/// How far a request got before its transport failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportStage {
    /// No connection was made; the server never saw the request.
    Connect,
    /// Connected, but no response head arrived; the server may have acted on it.
    AwaitingResponse,
    /// The response head arrived and the body was lost; the server acted on it.
    ReadingBody,
}

impl TransportStage {
    /// Whether the server may have received (and acted on) the request.
    pub fn may_have_reached_server(self) -> bool {
        self != TransportStage::Connect
    }
}

impl fmt::Display for TransportStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportStage::Connect => "could not connect",
            TransportStage::AwaitingResponse => {
                "no response (the request may have reached the server)"
            }
            TransportStage::ReadingBody => "connection lost while reading the response",
        })
    }
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error, miette::Diagnostic)]
pub enum HordeErrorKind {
    /// The server answered with a non-success status.
    #[error("HTTP {status}{}: {message}{}", rc_part(.rc), errors_part(.errors))]
    #[diagnostic(code(horde::api))]
    Api {
        /// HTTP status.
        status: u16,
        /// The Horde return code (`TooManyPrompts`, `KudosUpfront`, ...); absent on
        /// limiter 429s, schema-validation 400s and unhandled 500s.
        rc: Option<String>,
        /// The server's message (or a snippet of a non-JSON body).
        message: String,
        /// Schema-validation errors, field path → reason.
        errors: BTreeMap<String, String>,
        /// The `Retry-After` header, when sent.
        retry_after: Option<Duration>,
    },
    /// The server answered with a redirect, which is never followed.
    #[error(
        "HTTP {status} redirect to {}; redirects are refused so that the API key is never sent to another host",
        location.as_deref().unwrap_or("no Location given")
    )]
    #[diagnostic(code(horde::redirect))]
    Redirect {
        /// HTTP status (3xx).
        status: u16,
        /// The `Location` header, with the API key redacted (and, for image
        /// downloads, without its query, which holds a signature).
        location: Option<String>,
    },
    /// The connection failed or timed out.
    #[error("{stage}{}: {detail}", if *.timed_out { " (timed out)" } else { "" })]
    #[diagnostic(code(horde::transport))]
    Transport {
        /// How far the request got.
        stage: TransportStage,
        /// Whether a timeout (connect, read or total) caused it.
        timed_out: bool,
        /// The underlying error chain, without URLs.
        detail: String,
    },
    /// A success status whose body is not the expected JSON.
    #[error("HTTP {status} with a body that is not the expected JSON ({reason}): {snippet:?}")]
    #[diagnostic(code(horde::decode))]
    Decode {
        /// HTTP status.
        status: u16,
        /// What the decoder objected to.
        reason: String,
        /// The start of the body.
        snippet: String,
    },
    /// The body exceeded the size limit; reading stopped there.
    #[error("response body is larger than the limit of {limit} bytes")]
    #[diagnostic(code(horde::body_too_large))]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The URL was refused before any request was made.
    #[error("refused URL: {reason}")]
    #[diagnostic(code(horde::bad_url))]
    BadUrl {
        /// Why.
        reason: String,
    },
}

fn rc_part(rc: &Option<String>) -> String {
    rc.as_ref().map(|rc| format!(" {rc}")).unwrap_or_default()
}

fn errors_part(errors: &BTreeMap<String, String>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = errors
        .iter()
        .map(|(field, reason)| format!("{field}: {reason}"))
        .collect();
    format!(" ({})", listed.join("; "))
}

/// An error from one client call.
#[derive(Clone, Debug, PartialEq, thiserror::Error, miette::Diagnostic)]
#[error("{endpoint}: {kind}")]
#[diagnostic(forward(kind))]
pub struct HordeError {
    /// The call that failed.
    pub endpoint: Endpoint,
    /// What went wrong.
    pub kind: HordeErrorKind,
}

/// What the scheduler should make of a failure. See the failure-class table in
/// `ARCHITECTURE.md` ("Failure classes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// flask-limiter 429 (no `rc`): wait `Retry-After`, slow that endpoint down.
    RateLimited,
    /// 429 `TooManyPrompts`: wait for queued images to drain, lower the budget.
    ConcurrencyFull,
    /// The payload is wrong (schema errors, a payload `rc`, unknown worker): never retry.
    Permanent,
    /// The key is invalid or the client is banned: stop the run.
    Auth,
    /// Not enough kudos (upfront, or on a shared key): fail, or downgrade if allowed.
    Kudos,
    /// The request (or an image link) is gone: resubmit, or re-fetch the status.
    Expired,
    /// The Horde is in maintenance: retry later (60 s).
    Maintenance,
    /// This IP is in an abuse timeout (403 `TimeoutIP`): wait it out.
    Timeout,
    /// 5xx, transport or decode trouble: retry with backoff.
    Transient,
    /// A 3xx answer: the base URL (or a proxy) points elsewhere. Never followed,
    /// since following would send the key to another host: stop the run.
    Redirected,
}

impl FailureClass {
    /// Classifies an API answer by HTTP status and `rc`.
    pub fn of_response(status: u16, rc: Option<&str>) -> FailureClass {
        match (status, rc) {
            (429, Some("TooManyPrompts")) => FailureClass::ConcurrencyFull,
            (429, _) => FailureClass::RateLimited,
            // The swagger says 503; the server really sends 400.
            (_, Some("MaintenanceMode")) => FailureClass::Maintenance,
            (_, Some("TimeoutIP")) => FailureClass::Timeout,
            (_, Some(rc)) if rc == "KudosUpfront" || rc.starts_with("SharedKey") => {
                FailureClass::Kudos
            }
            (_, Some("RequestNotFound" | "RequestExpired")) => FailureClass::Expired,
            // find_user with an unknown key answers 404 UserNotFound.
            (_, Some("InvalidAPIKey" | "UserNotFound")) => FailureClass::Auth,
            (401 | 403, _) => FailureClass::Auth,
            (408, _) => FailureClass::Transient,
            (400..=499, _) => FailureClass::Permanent,
            (500..=599, _) => FailureClass::Transient,
            (300..=399, _) => FailureClass::Redirected,
            // An informational status that reached the caller is a misconfiguration.
            _ => FailureClass::Permanent,
        }
    }

    /// A stable snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::ConcurrencyFull => "concurrency_full",
            FailureClass::Permanent => "permanent",
            FailureClass::Auth => "auth",
            FailureClass::Kudos => "kudos",
            FailureClass::Expired => "expired",
            FailureClass::Maintenance => "maintenance",
            FailureClass::Timeout => "timeout",
            FailureClass::Transient => "transient",
            FailureClass::Redirected => "redirected",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long maintenance mode asks clients to stay away (the server class's
/// `retry_after = 60`, which it does not send as a header).
pub const MAINTENANCE_RETRY_AFTER: Duration = Duration::from_secs(60);

impl HordeError {
    /// Builds an error.
    pub fn new(endpoint: Endpoint, kind: HordeErrorKind) -> Self {
        HordeError { endpoint, kind }
    }

    /// The one classification the scheduler acts on.
    pub fn class(&self) -> FailureClass {
        match &self.kind {
            HordeErrorKind::Api { status, rc, .. } => {
                if self.endpoint.operation == Operation::DownloadImage {
                    classify_download(*status)
                } else {
                    FailureClass::of_response(*status, rc.as_deref())
                }
            }
            HordeErrorKind::Redirect { .. } => FailureClass::Redirected,
            HordeErrorKind::Transport { .. } | HordeErrorKind::Decode { .. } => {
                FailureClass::Transient
            }
            HordeErrorKind::BodyTooLarge { .. } | HordeErrorKind::BadUrl { .. } => {
                FailureClass::Permanent
            }
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            HordeErrorKind::Api { status, .. }
            | HordeErrorKind::Decode { status, .. }
            | HordeErrorKind::Redirect { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Horde return code, when the answer had one.
    pub fn rc(&self) -> Option<&str> {
        match &self.kind {
            HordeErrorKind::Api { rc, .. } => rc.as_deref(),
            _ => None,
        }
    }

    /// The server's message, when it answered with an error.
    pub fn message(&self) -> Option<&str> {
        match &self.kind {
            HordeErrorKind::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// How long to wait before trying again: the `Retry-After` header of a 429 or
    /// 503 (the server sends one on 200s and other answers too, where it means
    /// nothing); else 60 s in maintenance mode; else the seconds a `TimeoutIP`
    /// message states. Returned as sent (saturated, never capped): capping is
    /// the scheduler's policy.
    pub fn retry_after(&self) -> Option<Duration> {
        let HordeErrorKind::Api {
            retry_after,
            message,
            ..
        } = &self.kind
        else {
            return None;
        };
        retry_after.or_else(|| match self.class() {
            FailureClass::Maintenance => Some(MAINTENANCE_RETRY_AFTER),
            FailureClass::Timeout => timeout_ip_seconds(message).map(Duration::from_secs),
            _ => None,
        })
    }

    /// The user's concurrency limit, from a `TooManyPrompts` message such as
    /// "Parallel requests (32) exceeded user limit (30). ...".
    pub fn concurrency_limit(&self) -> Option<u32> {
        match &self.kind {
            HordeErrorKind::Api {
                rc: Some(rc),
                message,
                ..
            } if rc == "TooManyPrompts" => number_after(message, "user limit ("),
            _ => None,
        }
    }

    /// Whether the request may have taken effect although the caller cannot tell:
    /// a non-idempotent call (submit, shared-key creation) that was possibly
    /// received but whose answer was lost (transport failure after connecting),
    /// failed on the server side (5xx, e.g. a gateway timeout after the Horde
    /// queued it), or succeeded with a body that could not be read. Re-sending
    /// such a submit may queue and bill the images twice.
    pub fn outcome_unknown(&self) -> bool {
        if self.endpoint.operation.is_idempotent() {
            return false;
        }
        match &self.kind {
            HordeErrorKind::Transport { stage, .. } => stage.may_have_reached_server(),
            HordeErrorKind::Api { status, .. } => *status >= 500,
            HordeErrorKind::Decode { status, .. } => (200..300).contains(status),
            HordeErrorKind::BodyTooLarge { .. } => true,
            // Whatever answered with a redirect is not the Horde endpoint, and the
            // client never went where it pointed.
            HordeErrorKind::Redirect { .. } | HordeErrorKind::BadUrl { .. } => false,
        }
    }

    /// Whether a timeout caused this error.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            HordeErrorKind::Transport {
                timed_out: true,
                ..
            }
        )
    }
}

/// Object storage answers 403 (signature expired) or 404 (object pruned) for a
/// link that is no longer usable: the images must be fetched from a fresh status.
fn classify_download(status: u16) -> FailureClass {
    match status {
        403 | 404 | 410 => FailureClass::Expired,
        429 => FailureClass::RateLimited,
        408 | 500..=599 => FailureClass::Transient,
        _ => FailureClass::Permanent,
    }
}

/// "...put into timeout for 123 more seconds..." → 123 (saturating: all digits
/// that overflow `u64` are still a very long wait).
fn timeout_ip_seconds(message: &str) -> Option<u64> {
    let (_, after) = message.split_once("timeout for ")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(digits.parse().unwrap_or(u64::MAX))
}

/// What replaces the client's own API key wherever a server answer repeats it.
pub const REDACTED: &str = "[redacted]";

/// Removes the client's API key from everything an error holds. Built once per
/// client from its key; the anonymous key is public and left alone.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    /// The key as it may appear: raw, JSON-escaped, percent-encoded (upper- and
    /// lowercase hex), longest first so a longer form is never half-replaced.
    forms: Vec<String>,
}

impl Redactor {
    pub(crate) fn new(key: &str) -> Self {
        if key.is_empty() || key == super::ApiKey::ANONYMOUS {
            return Redactor::default();
        }
        let json = serde_json::to_string(key)
            .ok()
            .and_then(|quoted| {
                quoted
                    .strip_prefix('"')
                    .and_then(|rest| rest.strip_suffix('"'))
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| key.to_owned());
        let upper = percent_encode(key, true);
        let lower = percent_encode(key, false);
        let mut forms = vec![key.to_owned(), json, upper, lower];
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        forms.dedup();
        Redactor { forms }
    }

    /// `text` with every form of the key replaced by [`REDACTED`].
    pub(crate) fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        self.in_place(&mut text);
        text
    }

    fn in_place(&self, text: &mut String) {
        for form in &self.forms {
            if text.contains(form.as_str()) {
                *text = text.replace(form.as_str(), REDACTED);
            }
        }
    }

    /// The error with every string it holds redacted.
    pub(crate) fn error(&self, mut error: HordeError) -> HordeError {
        if self.forms.is_empty() {
            return error;
        }
        if let Some(id) = &mut error.endpoint.request_id {
            self.in_place(id);
        }
        match &mut error.kind {
            HordeErrorKind::Api {
                rc,
                message,
                errors,
                ..
            } => {
                if let Some(rc) = rc {
                    self.in_place(rc);
                }
                self.in_place(message);
                *errors = std::mem::take(errors)
                    .into_iter()
                    .map(|(field, reason)| (self.text(&field), self.text(&reason)))
                    .collect();
            }
            HordeErrorKind::Redirect { location, .. } => {
                if let Some(location) = location {
                    self.in_place(location);
                }
            }
            HordeErrorKind::Transport { detail, .. } => self.in_place(detail),
            HordeErrorKind::Decode {
                reason, snippet, ..
            } => {
                self.in_place(reason);
                self.in_place(snippet);
            }
            HordeErrorKind::BadUrl { reason } => self.in_place(reason),
            HordeErrorKind::BodyTooLarge { .. } => {}
        }
        error
    }
}

/// Every byte outside RFC 3986's unreserved set as `%XX`.
fn percent_encode(text: &str, uppercase: bool) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else if uppercase {
            encoded.push_str(&format!("%{byte:02X}"));
        } else {
            encoded.push_str(&format!("%{byte:02x}"));
        }
    }
    encoded
}

/// The integer right after `marker` in `text`.
fn number_after(text: &str, marker: &str) -> Option<u32> {
    let (_, after) = text.split_once(marker)?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Why a [`HordeClient`](super::HordeClient) could not be built.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ClientBuildError {
    /// The base URL cannot take `v2/...` paths.
    #[error("the Horde base URL must be an http or https URL, not scheme {scheme:?}")]
    #[diagnostic(code(horde::config::base_url))]
    BaseUrl {
        /// The scheme that was given.
        scheme: String,
    },
    /// The key has characters an HTTP header cannot carry.
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    #[diagnostic(code(horde::config::api_key))]
    ApiKey,
    /// The contact has characters an HTTP header cannot carry.
    #[error("the contact {contact:?} contains characters that cannot be sent in an HTTP header")]
    #[diagnostic(code(horde::config::contact))]
    Contact {
        /// The contact that was given.
        contact: String,
    },
    /// reqwest could not build its client (TLS setup).
    #[error("could not build the HTTP client")]
    #[diagnostic(code(horde::config::http))]
    Http(#[source] reqwest::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(operation: Operation, status: u16, rc: Option<&str>, message: &str) -> HordeError {
        HordeError::new(
            Endpoint::new(operation),
            HordeErrorKind::Api {
                status,
                rc: rc.map(str::to_owned),
                message: message.to_owned(),
                errors: BTreeMap::new(),
                retry_after: None,
            },
        )
    }

    #[test]
    fn classification_table() {
        use FailureClass::*;
        let cases: &[(u16, Option<&str>, FailureClass)] = &[
            (429, None, RateLimited),
            (429, Some("TooManyPrompts"), ConcurrencyFull),
            (400, None, Permanent),
            (400, Some("InvalidPromptSize"), Permanent),
            (400, Some("BadRequest"), Permanent),
            (400, Some("RequiresTrust"), Permanent),
            (400, Some("MaintenanceMode"), Maintenance),
            (503, Some("MaintenanceMode"), Maintenance),
            (401, Some("InvalidAPIKey"), Auth),
            (401, None, Auth),
            (403, Some("BannedClientAgent"), Auth),
            (403, Some("DeletedUser"), Auth),
            (403, Some("Forbidden"), Auth),
            (403, Some("KudosUpfront"), Kudos),
            (403, Some("SharedKeyEmpty"), Kudos),
            (403, Some("SharedKeyExpired"), Kudos),
            (403, Some("SharedKeyInsufficientKudos"), Kudos),
            (403, Some("SharedKeyAssignedStyles"), Kudos),
            (403, Some("TimeoutIP"), Timeout),
            (404, Some("RequestNotFound"), Expired),
            (410, Some("RequestExpired"), Expired),
            (404, Some("WorkerNotFound"), Permanent),
            (404, Some("UserNotFound"), Auth),
            (404, None, Permanent),
            (408, None, Transient),
            (500, None, Transient),
            (502, None, Transient),
            (503, None, Transient),
            (504, None, Transient),
        ];
        for &(status, rc, expected) in cases {
            assert_eq!(
                FailureClass::of_response(status, rc),
                expected,
                "{status} {rc:?}"
            );
        }
    }

    #[test]
    fn download_errors_are_classified_as_storage_answers() {
        let expired = api(Operation::DownloadImage, 403, None, "Request has expired");
        assert_eq!(expired.class(), FailureClass::Expired);
        assert_eq!(
            api(Operation::DownloadImage, 404, None, "NoSuchKey").class(),
            FailureClass::Expired
        );
        assert_eq!(
            api(Operation::DownloadImage, 503, None, "").class(),
            FailureClass::Transient
        );
        assert_eq!(
            api(Operation::DownloadImage, 400, None, "").class(),
            FailureClass::Permanent
        );
    }

    #[test]
    fn concurrency_limit_is_read_from_too_many_prompts_only() {
        let message = "Parallel requests (32) exceeded user limit (30). Please try again later or request to increase your concurrency.";
        let err = api(Operation::Submit, 429, Some("TooManyPrompts"), message);
        assert_eq!(err.concurrency_limit(), Some(30));
        assert_eq!(
            api(Operation::Submit, 429, None, message).concurrency_limit(),
            None
        );
        let garbled = api(Operation::Submit, 429, Some("TooManyPrompts"), "busy");
        assert_eq!(garbled.concurrency_limit(), None);
    }

    #[test]
    fn retry_after_falls_back_for_maintenance_and_timeout_ip() {
        let maintenance = api(
            Operation::Submit,
            400,
            Some("MaintenanceMode"),
            "AI Horde has entered maintenance mode. Please try again later.",
        );
        assert_eq!(maintenance.retry_after(), Some(Duration::from_secs(60)));
        let timeout = api(
            Operation::Check,
            403,
            Some("TimeoutIP"),
            "Due to abuse prevention, your IP address has been put into timeout for 97 more seconds. Please try again later, or contact us on discord if you think this was an error.",
        );
        assert_eq!(timeout.retry_after(), Some(Duration::from_secs(97)));
        let vague = api(
            Operation::Check,
            403,
            Some("TimeoutIP"),
            "put into timeout. Please try again later",
        );
        assert_eq!(vague.retry_after(), None);
        assert_eq!(api(Operation::Submit, 500, None, "").retry_after(), None);
    }

    #[test]
    fn outcome_unknown_only_for_non_idempotent_calls_that_may_have_landed() {
        let transport = |operation, stage| {
            HordeError::new(
                Endpoint::new(operation),
                HordeErrorKind::Transport {
                    stage,
                    timed_out: false,
                    detail: "reset".into(),
                },
            )
        };
        assert!(transport(Operation::Submit, TransportStage::AwaitingResponse).outcome_unknown());
        assert!(transport(Operation::Submit, TransportStage::ReadingBody).outcome_unknown());
        assert!(!transport(Operation::Submit, TransportStage::Connect).outcome_unknown());
        assert!(!transport(Operation::Check, TransportStage::AwaitingResponse).outcome_unknown());
        assert!(!transport(Operation::DryRun, TransportStage::AwaitingResponse).outcome_unknown());
        assert!(api(Operation::Submit, 504, None, "Gateway Timeout").outcome_unknown());
        assert!(!api(Operation::Submit, 429, None, "2 per 1 second").outcome_unknown());
        let undecodable = HordeError::new(
            Endpoint::new(Operation::Submit),
            HordeErrorKind::Decode {
                status: 202,
                reason: "missing field `id`".into(),
                snippet: "{}".into(),
            },
        );
        assert!(undecodable.outcome_unknown());
    }

    #[test]
    fn display_names_endpoint_status_rc_message_and_errors() {
        let mut errors = BTreeMap::new();
        errors.insert(
            "params.n".to_owned(),
            "21 is greater than the maximum of 20".to_owned(),
        );
        errors.insert(
            "params.steps".to_owned(),
            "0 is less than the minimum of 1".to_owned(),
        );
        let err = HordeError::new(
            Endpoint::new(Operation::Submit),
            HordeErrorKind::Api {
                status: 400,
                rc: None,
                message: "Input payload validation failed".into(),
                errors,
                retry_after: None,
            },
        );
        assert_eq!(
            err.to_string(),
            "POST /v2/generate/async: HTTP 400: Input payload validation failed \
             (params.n: 21 is greater than the maximum of 20; params.steps: 0 is less than the minimum of 1)"
        );
        let err = HordeError::new(
            Endpoint::for_request(Operation::Check, "abc"),
            HordeErrorKind::Api {
                status: 404,
                rc: Some("RequestNotFound".into()),
                message: "gone".into(),
                errors: BTreeMap::new(),
                retry_after: None,
            },
        );
        assert_eq!(
            err.to_string(),
            "GET /v2/generate/check/{id} (id abc): HTTP 404 RequestNotFound: gone"
        );
        let err = HordeError::new(
            Endpoint::new(Operation::DryRun),
            HordeErrorKind::Transport {
                stage: TransportStage::Connect,
                timed_out: true,
                detail: "tcp connect error".into(),
            },
        );
        assert_eq!(
            err.to_string(),
            "POST /v2/generate/async (dry run): could not connect (timed out): tcp connect error"
        );
    }

    #[test]
    fn diagnostic_codes_are_forwarded_from_the_kind() {
        use miette::Diagnostic;
        let err = api(Operation::Submit, 429, None, "2 per 1 second");
        assert_eq!(
            err.code().map(|code| code.to_string()).as_deref(),
            Some("horde::api")
        );
        let err = HordeError::new(
            Endpoint::new(Operation::DownloadImage),
            HordeErrorKind::BodyTooLarge { limit: 10 },
        );
        assert_eq!(
            err.code().map(|code| code.to_string()).as_deref(),
            Some("horde::body_too_large")
        );
    }

    #[test]
    fn redirects_are_their_own_class() {
        for status in [300, 301, 302, 303, 307, 308] {
            assert_eq!(
                FailureClass::of_response(status, None),
                FailureClass::Redirected
            );
        }
        let err = HordeError::new(
            Endpoint::new(Operation::Submit),
            HordeErrorKind::Redirect {
                status: 307,
                location: Some("http://elsewhere.invalid/v2/generate/async".into()),
            },
        );
        assert_eq!(err.class(), FailureClass::Redirected);
        assert_eq!(err.status(), Some(307));
        assert!(!err.outcome_unknown());
        assert_eq!(err.retry_after(), None);
        assert_eq!(
            err.to_string(),
            "POST /v2/generate/async: HTTP 307 redirect to http://elsewhere.invalid/v2/generate/async; \
             redirects are refused so that the API key is never sent to another host"
        );
        assert_eq!(FailureClass::Redirected.as_str(), "redirected");
        assert_eq!(
            serde_json::to_string(&FailureClass::Redirected).unwrap(),
            "\"redirected\""
        );
    }

    #[test]
    fn redactor_replaces_every_form_of_the_key_everywhere() {
        let key = "k3y/with\"odd&chars";
        let redactor = Redactor::new(key);
        let mut errors = BTreeMap::new();
        errors.insert(format!("field {key}"), format!("reason {key}"));
        let err = HordeError::new(
            Endpoint::for_request(Operation::Check, key),
            HordeErrorKind::Api {
                status: 404,
                rc: Some(key.into()),
                message: format!(
                    "raw {key} json {} url k3y%2Fwith%22odd%26chars url k3y%2fwith%22odd%26chars",
                    serde_json::to_string(key).unwrap()
                ),
                errors,
                retry_after: None,
            },
        );
        let redacted = redactor.error(err);
        let shown = format!("{redacted} {redacted:?} {redacted:#?}");
        for leak in ["k3y", "odd"] {
            assert!(!shown.contains(leak), "{shown}");
        }
        assert!(shown.contains(REDACTED), "{shown}");
        // The public anonymous key and an empty key change nothing.
        for key in [crate::horde::ApiKey::ANONYMOUS, ""] {
            let text = "Parallel requests (0000000000) exceeded user limit (30).";
            assert_eq!(Redactor::new(key).text(text), text);
        }
    }

    #[test]
    fn timeout_ip_seconds_saturate() {
        assert_eq!(
            timeout_ip_seconds("timeout for 99999999999999999999999 more seconds"),
            Some(u64::MAX)
        );
        assert_eq!(timeout_ip_seconds("timeout for some more seconds"), None);
    }

    #[test]
    fn failure_class_serializes_snake_case() {
        assert_eq!(
            serde_json::to_string(&FailureClass::ConcurrencyFull).unwrap(),
            "\"concurrency_full\""
        );
        assert_eq!(FailureClass::RateLimited.to_string(), "rate_limited");
    }
}
