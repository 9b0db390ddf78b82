//! The simulated Horde's error answers: a status with an `rc` code and a
//! message (`{"message", "rc"}`), or a schema failure with an `errors` map.
//!
//! Owns only the shape and the messages the real server words the same way
//! everywhere (not found, invalid API key). It must not decide when an error
//! happens: that is for the rule that raises it, and the HTTP body is built
//! in `routes`.

use std::collections::BTreeMap;

/// An error answer: `{"message", "rc"}` (or a validation `errors` map).
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub rc: Option<&'static str>,
    pub errors: Option<BTreeMap<String, String>>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn rc(status: u16, rc: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            rc: Some(rc),
            errors: None,
            retry_after: None,
        }
    }

    pub(crate) fn validation(errors: BTreeMap<String, String>) -> Self {
        Self {
            status: 400,
            message: "Input payload validation failed".to_owned(),
            rc: None,
            errors: Some(errors),
            retry_after: None,
        }
    }

    pub(super) fn not_found(kind: &str, id: &str) -> Self {
        Self::rc(
            404,
            "RequestNotFound",
            format!("Image Waiting Prompt ({kind}) with ID '{id}' not found."),
        )
    }
}
/// 401 `InvalidAPIKey`: the key matches no user (the real server's wording).
pub(super) fn invalid_api_key() -> ApiError {
    ApiError::rc(
        401,
        "InvalidAPIKey",
        "No user matching sent API Key. Have you remembered to register at https://aihorde.net/register ?",
    )
}
