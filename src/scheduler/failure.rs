//! Why a slot failed or an image was not kept: one enum instead of strings.
//!
//! The names (`as_str`, serde) are what the ledger, `errors.jsonl`, the
//! summary's "failures by class" and `status` show, so they never change.

use serde::Serialize;

use crate::horde::FailureClass;

/// What went wrong, for the summary, `errors.jsonl` and the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The Horde answered with one of its failure classes.
    RateLimited,
    ConcurrencyFull,
    Permanent,
    Auth,
    Kudos,
    Expired,
    Maintenance,
    Timeout,
    Transient,
    Redirected,
    /// No worker could serve the request within `run.timeouts.no_worker`.
    NoWorker,
    /// The retries ran out before every image arrived.
    Incomplete,
    /// An image came back censored (and was rerolled or skipped).
    Censored,
    /// An image faulted on its worker and the Horde dropped it.
    Faulted,
    /// An image could not be downloaded.
    Download,
    /// The Horde sent bytes that are not a valid WebP.
    BadImage,
}

impl FailureKind {
    /// The stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::RateLimited => "rate_limited",
            FailureKind::ConcurrencyFull => "concurrency_full",
            FailureKind::Permanent => "permanent",
            FailureKind::Auth => "auth",
            FailureKind::Kudos => "kudos",
            FailureKind::Expired => "expired",
            FailureKind::Maintenance => "maintenance",
            FailureKind::Timeout => "timeout",
            FailureKind::Transient => "transient",
            FailureKind::Redirected => "redirected",
            FailureKind::NoWorker => "no_worker",
            FailureKind::Incomplete => "incomplete",
            FailureKind::Censored => "censored",
            FailureKind::Faulted => "faulted",
            FailureKind::Download => "download",
            FailureKind::BadImage => "bad_image",
        }
    }
}

impl From<FailureClass> for FailureKind {
    fn from(class: FailureClass) -> Self {
        match class {
            FailureClass::RateLimited => FailureKind::RateLimited,
            FailureClass::ConcurrencyFull => FailureKind::ConcurrencyFull,
            FailureClass::Permanent => FailureKind::Permanent,
            FailureClass::Auth => FailureKind::Auth,
            FailureClass::Kudos => FailureKind::Kudos,
            FailureClass::Expired => FailureKind::Expired,
            FailureClass::Maintenance => FailureKind::Maintenance,
            FailureClass::Timeout => FailureKind::Timeout,
            FailureClass::Transient => FailureKind::Transient,
            FailureClass::Redirected => FailureKind::Redirected,
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_horde_classes_and_serde() {
        for class in [
            FailureClass::RateLimited,
            FailureClass::ConcurrencyFull,
            FailureClass::Permanent,
            FailureClass::Auth,
            FailureClass::Kudos,
            FailureClass::Expired,
            FailureClass::Maintenance,
            FailureClass::Timeout,
            FailureClass::Transient,
            FailureClass::Redirected,
        ] {
            assert_eq!(FailureKind::from(class).as_str(), class.as_str());
        }
        let json = serde_json::to_string(&FailureKind::NoWorker).expect("serializes");
        assert_eq!(json, "\"no_worker\"");
    }
}
