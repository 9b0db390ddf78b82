//! Counters of the simulated Horde, read by tests and benchmarks through
//! `GET /sim/stats` or `SimHandle::stats()`.
//!
//! Owns the [`SimStats`] snapshot type and its field definitions. Other
//! people's tests assert on these numbers: change a field's meaning only
//! together with its doc comment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A snapshot of everything the simulator counted since it started.
///
/// "Request" means a Horde generation request (one `POST generate/async`
/// that got a 202), "call" means one HTTP call.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SimStats {
    /// HTTP calls answered, by endpoint (`"<METHOD> <route template>"`, e.g.
    /// `"GET /api/v2/generate/check/{id}"`; unknown paths as `"<METHOD> <unmatched>"`)
    /// and then by the status code actually sent. Chaos answers count under
    /// their chaos status; dropped connections under status 0. `/sim/*`
    /// calls (stats, R2 downloads) are not counted here.
    pub calls: BTreeMap<String, BTreeMap<u16, u64>>,
    /// 429s sent by the rate limiter (body `{"message": "2 per 1 second"}`, no rc).
    pub rate_limited: u64,
    /// 429s with rc `TooManyPrompts` (the per-user concurrency limit).
    pub too_many_prompts: u64,
    /// Requests accepted with a 202 (dry runs excluded).
    pub requests_created: u64,
    /// Requests cancelled with `DELETE generate/status/{id}` (each counted once).
    pub requests_cancelled: u64,
    /// Requests retrieved: a GET or DELETE status call was answered while the
    /// request was done, and every image it has generated was listed in such
    /// an answer. An image that lands after the last status call (one in
    /// flight when a request turned faulted) makes it unretrieved again.
    pub requests_retrieved: u64,
    /// Requests created that were neither retrieved nor cancelled (so far,
    /// including ones still running and ones that expired).
    pub requests_never_retrieved: u64,
    /// Requests not cancelled with at least one generated (paid-for) image
    /// that no status or DELETE answer ever listed: images a client left
    /// behind. Includes running requests whose images nobody asked for yet;
    /// at the end of a run it should be 0.
    pub requests_orphaned: u64,
    /// Requests the cleaner deleted because they expired.
    pub requests_expired: u64,
    /// Requests the cleaner marked `faulted: true` (more than 2 faulted jobs).
    pub requests_faulted: u64,
    /// Images completed by a worker (censored ones included).
    pub images_generated: u64,
    /// Faulted image attempts (each fault counts; the image is re-queued once, then dropped).
    pub images_faulted: u64,
    /// Images dropped after their second faulted attempt (they never appear).
    pub images_dropped: u64,
    /// Generated images that came back censored.
    pub images_censored: u64,
    /// Generated images whose bytes reached a client: as base64 in a status or
    /// DELETE answer (`r2: false`) or through a successful R2 download.
    pub images_retrieved: u64,
    /// `images_generated - images_retrieved`.
    pub images_never_retrieved: u64,
    /// Successful R2 downloads (repeated downloads of one image all count).
    pub r2_downloads: u64,
    /// R2 downloads refused: expired or tampered URL (403), unknown object (404).
    pub r2_refused: u64,
    /// Kudos charged to users: 3 tax per request plus each finished image.
    pub kudos_charged: f64,
    /// Images currently waiting for a worker (over all live requests, even ones no worker can serve).
    pub waiting_images: u64,
    /// Images a worker is generating right now.
    pub processing_images: u64,
    /// Requests currently held by the server (not yet expired).
    pub live_requests: u64,
    /// What the chaos knobs did.
    pub chaos: ChaosStats,
    /// Queued requests (202, dry runs excluded) that carried a `source_image`
    /// the sim decoded.
    #[serde(default)]
    pub source_images_received: u64,
    /// Queued requests that carried a decoded `source_mask`.
    #[serde(default)]
    pub masks_received: u64,
    /// Decoded `extra_source_images` over all queued requests.
    #[serde(default)]
    pub extra_source_images_received: u64,
    /// What the last queued request with a source image sent.
    #[serde(default)]
    pub last_source: Option<SourceSeen>,
    /// Interrogation requests accepted with a 202 (`POST interrogate/async`).
    #[serde(default)]
    pub alchemy_requests_created: u64,
    /// Interrogation requests a DELETE cancelled something of (each counted
    /// once; a DELETE on a request whose forms are all done counts nothing).
    #[serde(default)]
    pub alchemy_requests_cancelled: u64,
    /// Forms an alchemist delivered (done, with a result).
    #[serde(default)]
    pub alchemy_forms_delivered: u64,
    /// Kudos charged for forms: each delivered form, and each form cancelled
    /// while processing (docs/horde-api.md §10 (alchemy) cost table).
    #[serde(default)]
    pub alchemy_kudos_charged: f64,
    /// Forms charged, by the lowercase hex SHA-256 of the source image bytes
    /// as the client sent them (base64-decoded), then by form name: how many
    /// times each form was paid for that image.
    #[serde(default)]
    pub alchemy_charged: BTreeMap<String, BTreeMap<String, u64>>,
    /// Forms waiting or processing right now.
    #[serde(default)]
    pub alchemy_forms_open: u64,
    /// Delivered forms whose result no status GET or DELETE answer has shown
    /// yet ("left on the Horde"), those of expired requests included.
    #[serde(default)]
    pub alchemy_forms_unretrieved: u64,
    /// Post-processor result downloads refused because their URL had expired.
    #[serde(default)]
    pub alchemy_urls_expired: u64,
}

/// The source images of one request, as the sim decoded them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SourceSeen {
    /// `source_processing` as applied (`img2img` when the request left it out).
    pub processing: String,
    /// Format of the decoded `source_image`: `webp`, `png` or `jpeg`.
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// The source image has an alpha channel.
    pub has_alpha: bool,
    /// Format of the decoded `source_mask`, if one was sent.
    pub mask_format: Option<String>,
    /// Formats of the decoded `extra_source_images`, with their strengths.
    pub extra: Vec<(String, Option<f64>)>,
}

/// Counters of the chaos knobs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ChaosStats {
    /// Calls answered with a 5xx by `--chaos-5xx`.
    pub server_errors: u64,
    /// Calls whose connection was closed without an answer by `--chaos-drop`.
    pub dropped: u64,
    /// Calls delayed by `--chaos-slow`.
    pub slowed: u64,
    /// Calls answered with a 200 and broken JSON by `--chaos-malformed`.
    pub malformed: u64,
    /// Calls carried out in full whose connection was then closed without an
    /// answer by `--chaos-lost-answer`.
    pub lost_answers: u64,
    /// Of the 5xx, dropped and lost-answer calls, those whose effect happened
    /// anyway (the server processed the call, then the answer was lost).
    pub processed_then_lost: u64,
}

impl SimStats {
    /// Calls to `endpoint` (e.g. `"POST /api/v2/generate/async"`) answered with `status`.
    pub fn calls_with_status(&self, endpoint: &str, status: u16) -> u64 {
        self.calls
            .get(endpoint)
            .and_then(|by_status| by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// All calls to `endpoint`, whatever the status.
    pub fn calls_to(&self, endpoint: &str) -> u64 {
        self.calls
            .get(endpoint)
            .map_or(0, |by_status| by_status.values().sum())
    }
}
