//! Who the client is and where it talks to: the API key, the base URL, the contact
//! string sent in `Client-Agent`, and the transport timeouts (connect, per read,
//! and a total bound per API call).
//!
//! The key is kept in [`ApiKey`], whose `Debug` and `Display` never show it; the
//! only way to read it back is [`ApiKey::expose_secret`], which the client calls
//! when it builds the `apikey` header (marked sensitive).

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderValue, InvalidHeaderValue};
use reqwest::Url;
use serde::{Deserialize, Deserializer};

/// The public AI Horde API root. Endpoints are appended as `v2/...`, the same form
/// as horde_sdk's `AI_HORDE_URL`.
pub const DEFAULT_BASE_URL: &str = "https://aihorde.net/api/";

/// How long to wait for a TCP/TLS connection before giving up.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a single read may stall before the request fails.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest one API call may take from connecting to the last body byte. A
/// read timeout alone is defeated by a server that trickles a byte at a time.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The contact part of `Client-Agent` when the user gave none.
pub const DEFAULT_CONTACT: &str = "unset";

/// An AI Horde API key (a user key, the anonymous key, or a shared-key id).
///
/// `Debug` and `Display` print `ApiKey(***)`, or `anonymous` for the anonymous
/// key, so a key can sit inside any struct that gets logged. There is
/// deliberately no `Serialize`: nothing should write a key to disk.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(String);

impl ApiKey {
    /// The anonymous key understood by every Horde: ten zeros.
    pub const ANONYMOUS: &'static str = "0000000000";

    /// Wraps a key. Surrounding whitespace (a trailing newline from a key file)
    /// is dropped because it can never be part of a key.
    pub fn new(key: impl Into<String>) -> Self {
        let key = key.into();
        let trimmed = key.trim();
        if trimmed.len() == key.len() {
            ApiKey(key)
        } else {
            ApiKey(trimmed.to_owned())
        }
    }

    /// The anonymous key, `0000000000`.
    pub fn anonymous() -> Self {
        ApiKey(Self::ANONYMOUS.to_owned())
    }

    /// Whether this is the anonymous key.
    pub fn is_anonymous(&self) -> bool {
        self.0 == Self::ANONYMOUS
    }

    /// Whether the key looks like a shared-key id: a hyphenated UUID
    /// (`8-4-4-4-12` hex digits), the only form the Horde hands out. User keys are
    /// not UUIDs, so a user key never goes into a `/v2/sharedkeys/{id}` path (and
    /// from there into access logs).
    pub fn is_shared_key_shaped(&self) -> bool {
        self.0.len() == 36 && uuid::Uuid::try_parse(&self.0).is_ok()
    }

    /// The key itself. Only for putting it into a request; never log the result.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// The `apikey` header value, marked sensitive so that `http`'s `Debug` hides it.
    pub(crate) fn header_value(&self) -> Result<HeaderValue, InvalidHeaderValue> {
        let mut value = HeaderValue::from_str(&self.0)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_anonymous() {
            f.write_str("anonymous")
        } else {
            f.write_str("ApiKey(***)")
        }
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        ApiKey::new(key)
    }
}

impl<'de> Deserialize<'de> for ApiKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ApiKey::new)
    }
}

/// Everything needed to build a [`HordeClient`](super::HordeClient).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The API root, e.g. `https://aihorde.net/api/`; a missing trailing slash is tolerated.
    pub base_url: Url,
    /// The key sent in the `apikey` header of the calls that need one.
    pub api_key: ApiKey,
    /// How to reach whoever runs this client (email or URL), sent in `Client-Agent`.
    pub contact: String,
    /// Connect timeout for every request.
    pub connect_timeout: Duration,
    /// Per-read timeout for every request.
    pub read_timeout: Duration,
    /// Total time one API call may take, connect to last body byte (image
    /// downloads carry their own total timeout instead).
    pub request_timeout: Duration,
}

impl ClientConfig {
    /// A configuration with the default timeouts and contact `unset`.
    pub fn new(base_url: Url, api_key: ApiKey) -> Self {
        ClientConfig {
            base_url,
            api_key,
            contact: DEFAULT_CONTACT.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// [`DEFAULT_BASE_URL`] as a parsed URL.
    pub fn default_base_url() -> Url {
        Url::parse(DEFAULT_BASE_URL).expect("DEFAULT_BASE_URL is a valid constant URL")
    }

    /// The `Client-Agent` header value: `horde-batch:<version>:<contact>`.
    pub fn client_agent(&self) -> String {
        format!("horde-batch:{}:{}", env!("CARGO_PKG_VERSION"), self.contact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_keys_are_redacted_and_anonymous_is_named() {
        let key = ApiKey::new("s3cr3t-key-value");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(key.to_string(), "ApiKey(***)");
        assert!(!key.is_anonymous());

        let anon = ApiKey::anonymous();
        assert_eq!(anon.expose_secret(), "0000000000");
        assert_eq!(anon.to_string(), "anonymous");
        assert_eq!(format!("{anon:?}"), "anonymous");
        assert!(anon.is_anonymous());
        assert!(ApiKey::new("0000000000\n").is_anonymous());
    }

    #[test]
    fn only_hyphenated_uuids_are_shared_key_shaped() {
        for shaped in [
            "11111111-2222-4333-8444-555555555555",
            "5B4D8E2A-0000-4000-8000-00000000ABCD",
            " 11111111-2222-4333-8444-555555555555\n",
        ] {
            assert!(ApiKey::new(shaped).is_shared_key_shaped(), "{shaped:?}");
        }
        for not_shaped in [
            "",
            ApiKey::ANONYMOUS,
            "s3cr3t-key-value",
            "Abc123_-xyzXYZ0123456A",
            "11111111222243338444555555555555",
            "{11111111-2222-4333-8444-555555555555}",
            "urn:uuid:11111111-2222-4333-8444-555555555555",
            "11111111-2222-4333-8444-55555555555g",
        ] {
            assert!(
                !ApiKey::new(not_shaped).is_shared_key_shaped(),
                "{not_shaped:?}"
            );
        }
    }

    #[test]
    fn header_value_is_sensitive() {
        let value = ApiKey::new("s3cr3t").header_value().unwrap();
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cr3t"));
    }

    #[test]
    fn config_debug_hides_the_key() {
        let config = ClientConfig::new(ClientConfig::default_base_url(), ApiKey::new("s3cr3t"));
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("ApiKey(***)"), "{debug}");
        assert_eq!(
            config.client_agent(),
            format!("horde-batch:{}:unset", env!("CARGO_PKG_VERSION"))
        );
    }
}
