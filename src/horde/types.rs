//! Wire types of the AI Horde v2 image API: the bodies the client sends and the
//! responses it decodes.
//!
//! The shapes follow the live server (`docs/horde-api.md`), not the
//! swagger. Every request flag is sent explicitly because the server's defaults
//! differ from the documented ones, and the response types accept what the server
//! really produces (a seed as a number or a string, optional `ref`, RFC 822 dates).
//! Nothing here validates generation parameters: the manifest layer owns that, and
//! [`GenerationParams`] only carries them.

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::ApiKey;
use super::time::HordeTime;

/// What separates the positive from the negative prompt; the worker splits on the first one.
pub const NEGATIVE_PROMPT_SEPARATOR: &str = "###";

/// The warning code the Horde attaches when no online worker can serve a request.
pub const NO_AVAILABLE_WORKER: &str = "NoAvailableWorker";

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

/// The body of `POST /v2/generate/async`.
///
/// Every boolean flag is serialized, always: the server's real defaults (e.g.
/// `nsfw: true`) differ from the swagger's, so nothing is left to them.
/// Source images (`source_image`, `source_mask`, `extra_source_images`) travel
/// as base64 WebP in [`Base64Image`], whose `Debug` shows only the length, so a
/// logged request never carries the image. `proxied_account` is not modelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationRequest {
    /// Positive prompt, optionally followed by `###` and the negative prompt
    /// (see [`GenerationRequest::join_prompt`]).
    pub prompt: String,
    /// Generation parameters (`n`, `steps`, `width`, ...).
    pub params: GenerationParams,
    /// Models any of which may serve the request.
    pub models: Vec<String>,
    /// Allow only workers that accept NSFW requests.
    #[serde(default)]
    pub nsfw: bool,
    /// Ask workers to censor NSFW output (effective when `nsfw` is false).
    #[serde(default = "yes")]
    pub censor_nsfw: bool,
    /// Only trusted workers.
    #[serde(default)]
    pub trusted_workers: bool,
    /// Only workers with validated backends.
    #[serde(default)]
    pub validated_backends: bool,
    /// Allow slow workers; false costs more kudos and always needs them up front.
    #[serde(default = "yes")]
    pub slow_workers: bool,
    /// Allow extra-slow workers.
    #[serde(default)]
    pub extra_slow_workers: bool,
    /// Worker whitelist (or blacklist with `worker_blacklist`); omitted when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// Treat `workers` as a blacklist.
    #[serde(default)]
    pub worker_blacklist: bool,
    /// Deliver images as presigned R2 URLs (true) or inline base64 WebP (false).
    #[serde(default = "yes")]
    pub r2: bool,
    /// Share the images with LAION (effectively ignored by the server).
    #[serde(default)]
    pub shared: bool,
    /// Let the server rewrite suspicious prompts instead of rejecting them.
    #[serde(default = "yes")]
    pub replacement_filter: bool,
    /// Price the request without queueing it.
    #[serde(default)]
    pub dry_run: bool,
    /// Let the server shrink the request when upfront kudos are missing.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Ask that the `n` images are not batched on one worker.
    #[serde(default)]
    pub disable_batching: bool,
    /// HTTPS URL to call when the request finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// Style id or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// The image to start from (img2img, inpainting, outpainting, remix, ControlNet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<Base64Image>,
    /// `img2img` (the server's default), `inpainting`, `outpainting` or `remix`;
    /// sent only with a source image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_processing: Option<String>,
    /// Inpainting/outpainting mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mask: Option<Base64Image>,
    /// Up to 5 more images (remix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_source_images: Vec<ExtraSourceImage>,
}

/// A base64-encoded WebP as the API takes source images. `Debug` prints only
/// its length: requests may be logged, images must not be.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Base64Image(pub String);

impl std::fmt::Debug for Base64Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64Image({} chars)", self.0.len())
    }
}

/// One of `extra_source_images`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtraSourceImage {
    /// Base64 WebP.
    pub image: Base64Image,
    /// Strength of this image (the server's default is 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
}

impl GenerationRequest {
    /// A request with explicit, conservative defaults: `nsfw` false, `censor_nsfw`,
    /// `slow_workers`, `r2` and `replacement_filter` true, every other flag false.
    pub fn new(prompt: impl Into<String>, models: Vec<String>, params: GenerationParams) -> Self {
        GenerationRequest {
            prompt: prompt.into(),
            params,
            models,
            nsfw: false,
            censor_nsfw: true,
            trusted_workers: false,
            validated_backends: false,
            slow_workers: true,
            extra_slow_workers: false,
            workers: Vec::new(),
            worker_blacklist: false,
            r2: true,
            shared: false,
            replacement_filter: true,
            dry_run: false,
            allow_downgrade: false,
            disable_batching: false,
            webhook: None,
            style: None,
            source_image: None,
            source_processing: None,
            source_mask: None,
            extra_source_images: Vec::new(),
        }
    }

    /// Joins a positive and an optional negative prompt the way the Horde expects:
    /// `positive ### negative`. An empty or blank negative adds nothing.
    ///
    /// The server splits on the *first* `###`, so a positive prompt containing
    /// `###` would be misread; the manifest layer rejects such prompts.
    pub fn join_prompt(positive: &str, negative: Option<&str>) -> String {
        match negative.map(str::trim) {
            Some(negative) if !negative.is_empty() => {
                format!("{positive} {NEGATIVE_PROMPT_SEPARATOR} {negative}")
            }
            _ => positive.to_owned(),
        }
    }
}

/// The `params` object of a generation request: `n` plus whatever else the
/// manifest resolved, carried verbatim.
///
/// `extra` must not contain `n`; if it does, the typed field wins when serializing.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct GenerationParams {
    /// Images in this request (1..=20 on the public Horde).
    #[serde(default = "one")]
    pub n: u32,
    /// Every other parameter (`steps`, `width`, `sampler_name`, `loras`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GenerationParams {
    /// `n` images and no other parameters.
    pub fn new(n: u32) -> Self {
        GenerationParams {
            n,
            extra: Map::new(),
        }
    }

    /// Adds or replaces one parameter (builder style).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }
}

impl Serialize for GenerationParams {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written by hand so that a stray "n" in `extra` cannot produce a duplicate key.
        let extra = self.extra.iter().filter(|(name, _)| name.as_str() != "n");
        let mut map = serializer.serialize_map(Some(1 + extra.clone().count()))?;
        for (name, value) in extra {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("n", &self.n)?;
        map.end()
    }
}

/// One warning attached to an accepted request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    /// Machine-readable code, e.g. `NoAvailableWorker`, `StepsTooFew`.
    pub code: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// The 202 answer to a submit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubmitAccepted {
    /// The request id to poll, fetch and cancel.
    pub id: String,
    /// The server's per-image estimate, *not* the total charge (see docs/horde-api.md §1.1).
    pub kudos: f64,
    /// Present when no online worker can serve the request.
    #[serde(default)]
    pub message: Option<String>,
    /// Informational warnings; the request is queued regardless.
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

impl SubmitAccepted {
    /// Whether the server warned that no online worker can serve this request
    /// (it will expire unqueued unless one appears).
    pub fn has_no_available_worker(&self) -> bool {
        self.warnings
            .iter()
            .any(|warning| warning.code == NO_AVAILABLE_WORKER)
    }
}

/// The reply to a dry run: the extrapolated total cost.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub(crate) struct DryRunEstimate {
    pub(crate) kudos: f64,
}

/// A bare `{"message": ...}` reply (shared-key deletion).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub(crate) struct MessageReply {
    #[allow(dead_code)] // Decoded to check the reply's shape; the text itself is always "OK".
    pub(crate) message: String,
}

/// The lite status of a request (`GET /v2/generate/check/{id}`); every field is
/// always present on the live server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestCheck {
    /// Jobs completed or faulted.
    #[serde(deserialize_with = "count")]
    pub finished: u32,
    /// Jobs on a worker right now.
    #[serde(deserialize_with = "count")]
    pub processing: u32,
    /// Jobs that timed out or faulted and were re-queued.
    #[serde(deserialize_with = "count")]
    pub restarted: u32,
    /// Jobs not yet picked up.
    #[serde(deserialize_with = "count")]
    pub waiting: u32,
    /// Every job has a result, or the request faulted. Count the generations
    /// anyway: a request can end done with fewer images than `n`.
    pub done: bool,
    /// The request failed for good (three or more faulted jobs).
    pub faulted: bool,
    /// Estimated seconds until done.
    #[serde(deserialize_with = "count")]
    pub wait_time: u32,
    /// Position in the queue; 0 once nothing is queued.
    #[serde(deserialize_with = "count")]
    pub queue_position: u32,
    /// Kudos consumed so far.
    pub kudos: f64,
    /// False when no online worker can serve the request right now.
    pub is_possible: bool,
}

/// The full status of a request (`GET` or `DELETE /v2/generate/status/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestStatus {
    /// The same counters as `/check`.
    #[serde(flatten)]
    pub check: RequestCheck,
    /// Completed generations only; faulted ones never appear.
    #[serde(default)]
    pub generations: Vec<Generation>,
    /// Whether the images were shared.
    #[serde(default)]
    pub shared: bool,
}

/// One finished image in a status reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// A presigned URL (`r2: true`), base64 WebP (`r2: false`), or `N/A`.
    pub img: String,
    /// The seed the worker reports; the live server sends a string.
    #[serde(default, deserialize_with = "seed_string")]
    pub seed: String,
    /// The generation id (also the R2 object key).
    pub id: String,
    /// Whether the worker censored this image.
    #[serde(default)]
    pub censored: bool,
    /// Per-image notes: censorship, batch index, failed LoRA downloads, ...
    #[serde(default)]
    pub gen_metadata: Vec<GenMetadata>,
    /// The worker that made it.
    #[serde(default)]
    pub worker_id: String,
    /// That worker's name.
    #[serde(default)]
    pub worker_name: String,
    /// The model used.
    #[serde(default)]
    pub model: String,
    /// Obsolete; always "ok" in practice.
    #[serde(default = "ok_state")]
    pub state: String,
}

fn ok_state() -> String {
    "ok".to_owned()
}

/// Where an image's bytes are to be found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// Fetch this URL (presigned R2, valid about 30 minutes after the status call).
    Url(String),
    /// Decode this base64 WebP.
    Base64(String),
    /// The server could not provide the image (`N/A`, empty, or the bare `R2` marker).
    Unavailable,
}

impl Generation {
    /// Classifies [`Generation::img`].
    pub fn image_source(&self) -> ImageSource {
        let img = self.img.trim();
        if img.is_empty() || img == "N/A" || img == "R2" {
            ImageSource::Unavailable
        } else if img.contains("://") {
            // Any URL, whatever its scheme: `download_image` refuses the ones it must not follow.
            ImageSource::Url(img.to_owned())
        } else {
            ImageSource::Base64(img.to_owned())
        }
    }

    /// The position of this image within its worker batch, from the
    /// `batch_index` metadata entry (`ref` holds the number; `value` is `see_ref`).
    pub fn batch_index(&self) -> Option<u32> {
        let entry = self
            .gen_metadata
            .iter()
            .find(|entry| entry.kind == "batch_index")?;
        entry
            .reference
            .as_deref()
            .and_then(|reference| reference.trim().parse().ok())
            .or_else(|| entry.value.trim().parse().ok())
    }
}

/// One `gen_metadata` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenMetadata {
    /// `lora`, `ti`, `censorship`, `batch_index`, `information`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// `download_failed`, `nsfw`, `csam`, `see_ref`, ...
    pub value: String,
    /// Extra detail, e.g. the batch index or the LoRA name.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// The user a key belongs to (`GET /v2/find_user`). Missing fields take defaults
/// because what is shown depends on the caller's privileges.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserDetails {
    /// `alias#id`.
    pub username: String,
    /// Numeric user id.
    pub id: u64,
    /// Current balance.
    pub kudos: f64,
    /// Images that may wait in the queue at once.
    pub concurrency: u32,
    /// Trusted users get more limits lifted.
    pub trusted: bool,
    /// Request ids still held by the Horde for this user.
    pub active_generations: ActiveGenerations,
}

/// Request ids a user still has on the Horde.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ActiveGenerations {
    /// Image request ids; lets a crashed run recover ids it never recorded.
    pub image: Vec<String>,
    /// Text request ids.
    pub text: Vec<String>,
}

/// What one worker serves (`GET /v2/workers`): the part a client needs to
/// say why no worker can take a request. Fields a server leaves out read as
/// "does not say" (`None`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSummary {
    pub name: String,
    #[serde(default)]
    pub online: bool,
    #[serde(default)]
    pub maintenance_mode: bool,
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default)]
    pub max_pixels: Option<u64>,
    #[serde(default)]
    pub img2img: Option<bool>,
    #[serde(default)]
    pub painting: Option<bool>,
    #[serde(default, rename = "post-processing")]
    pub post_processing: Option<bool>,
    #[serde(default)]
    pub lora: Option<bool>,
}

/// One model's load (`GET /v2/status/models`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Model name.
    pub name: String,
    /// Worker threads serving it.
    #[serde(default, deserialize_with = "count")]
    pub count: u32,
    /// Recent throughput.
    #[serde(default)]
    pub performance: f64,
    /// Queued megapixelsteps.
    #[serde(default)]
    pub queued: f64,
    /// Queued jobs.
    #[serde(default)]
    pub jobs: f64,
    /// Estimated seconds to clear the queue.
    #[serde(default, deserialize_with = "count")]
    pub eta: u32,
    /// `image` or `text`.
    #[serde(rename = "type", default = "image_kind")]
    pub kind: String,
}

fn image_kind() -> String {
    "image".to_owned()
}

/// `GET /v2/status/heartbeat`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `OK`, `DOWN` or `OVERLOADED`.
    pub message: String,
    /// Server version.
    #[serde(default)]
    pub version: String,
}

/// A shared key as the Horde describes it.
///
/// `id` *is* a credential (it can be sent as an `apikey`), hence [`ApiKey`] and
/// no `Serialize`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SharedKeyDetails {
    /// The shared key itself.
    pub id: ApiKey,
    /// The owner.
    #[serde(default)]
    pub username: String,
    /// The key's label.
    #[serde(default)]
    pub name: String,
    /// Remaining kudos; -1 is unlimited.
    pub kudos: i64,
    /// When the key stops working; absent when it never expires.
    #[serde(default)]
    pub expiry: Option<HordeTime>,
    /// Kudos spent through it so far.
    #[serde(default)]
    pub utilized: i64,
    /// Pixel cap per image; -1 is none.
    #[serde(default = "unlimited")]
    pub max_image_pixels: i64,
    /// Step cap per image; -1 is none.
    #[serde(default = "unlimited")]
    pub max_image_steps: i64,
    /// Token cap per text request; -1 is none.
    #[serde(default = "unlimited")]
    pub max_text_tokens: i64,
}

fn unlimited() -> i64 {
    -1
}

/// The body of `PUT /v2/sharedkeys` and `PATCH /v2/sharedkeys/{id}`; `None`
/// fields are left out (the server's defaults apply on create, and stay
/// unchanged on update).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedKeyInput {
    /// Kudos the key may spend; -1 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kudos: Option<i64>,
    /// Days until it expires; -1 is never (and clears an expiry on update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<i64>,
    /// Label, 3 to 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pixel cap per image; -1 is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_pixels: Option<i64>,
    /// Step cap per image; -1 is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_image_steps: Option<i64>,
    /// Token cap per text request; -1 is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_text_tokens: Option<i64>,
}

/// A non-negative count or estimate. The server marshals these as integers;
/// a float or negative value is clamped rather than failing a whole poll.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct CountVisitor;

    impl Visitor<'_> for CountVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative number")
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
            Ok(u32::try_from(value).unwrap_or(u32::MAX))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
            Ok(u32::try_from(value.max(0)).unwrap_or(u32::MAX))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<u32, E> {
            if value.is_nan() {
                return Err(E::custom("NaN is not a count"));
            }
            // `as` saturates: negatives become 0 and huge values u32::MAX.
            Ok(value as u32)
        }
    }

    deserializer.deserialize_any(CountVisitor)
}

/// A seed: the live server sends a string, older servers and fakes a number.
fn seed_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct SeedVisitor;

    impl Visitor<'_> for SeedVisitor {
        type Value = String;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a seed as a string or an integer")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_owned())
        }

        fn visit_string<E: de::Error>(self, value: String) -> Result<String, E> {
            Ok(value)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
            Ok(value.to_string())
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
            Ok(value.to_string())
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
            // Only integral floats are seeds; print them without a fraction.
            if value.fract() == 0.0 && value.is_finite() {
                Ok(format!("{value:.0}"))
            } else {
                Err(E::custom(format!("seed {value} is not an integer")))
            }
        }

        fn visit_unit<E: de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }

    deserializer.deserialize_any(SeedVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn generation(value: Value) -> Generation {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn source_images_serialize_as_the_api_names_them_and_never_debug_print() {
        let mut request = GenerationRequest::new("p", vec!["m".into()], GenerationParams::new(1));
        let plain = serde_json::to_value(&request).unwrap();
        for field in [
            "source_image",
            "source_processing",
            "source_mask",
            "extra_source_images",
        ] {
            assert!(plain.get(field).is_none(), "{field} sent without a source");
        }
        request.source_image = Some(Base64Image("UklGRsecret".into()));
        request.source_processing = Some("inpainting".into());
        request.source_mask = Some(Base64Image("UklGRmask".into()));
        request.extra_source_images = vec![ExtraSourceImage {
            image: Base64Image("UklGRextra".into()),
            strength: Some(0.5),
        }];
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["source_image"], "UklGRsecret");
        assert_eq!(value["source_processing"], "inpainting");
        assert_eq!(value["source_mask"], "UklGRmask");
        assert_eq!(
            value["extra_source_images"],
            json!([{"image": "UklGRextra", "strength": 0.5}])
        );
        let debug = format!("{request:?}");
        assert!(!debug.contains("UklGR"), "{debug}");
        assert!(debug.contains("Base64Image(11 chars)"), "{debug}");
        let back: GenerationRequest = serde_json::from_value(value).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn join_prompt_uses_the_separator_only_with_a_negative() {
        assert_eq!(
            GenerationRequest::join_prompt("a cat", Some("blurry, lowres")),
            "a cat ### blurry, lowres"
        );
        assert_eq!(GenerationRequest::join_prompt("a cat", None), "a cat");
        assert_eq!(GenerationRequest::join_prompt("a cat", Some("  ")), "a cat");
    }

    #[test]
    fn new_request_has_the_documented_defaults_and_serializes_every_flag() {
        let request = GenerationRequest::new("p", vec!["m".into()], GenerationParams::new(2));
        let value = serde_json::to_value(&request).unwrap();
        let expected = json!({
            "prompt": "p", "params": {"n": 2}, "models": ["m"],
            "nsfw": false, "censor_nsfw": true, "trusted_workers": false,
            "validated_backends": false, "slow_workers": true, "extra_slow_workers": false,
            "worker_blacklist": false, "r2": true, "shared": false,
            "replacement_filter": true, "dry_run": false, "allow_downgrade": false,
            "disable_batching": false,
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn missing_flags_deserialize_to_the_constructor_defaults() {
        let request: GenerationRequest =
            serde_json::from_value(json!({"prompt": "p", "params": {}, "models": []})).unwrap();
        assert_eq!(
            request,
            GenerationRequest::new("p", vec![], GenerationParams::new(1))
        );
    }

    #[test]
    fn params_never_serialize_a_duplicate_n() {
        let mut params = GenerationParams::new(3).with("steps", 20);
        params.extra.insert("n".into(), json!(99));
        let text = serde_json::to_string(&params).unwrap();
        assert_eq!(text.matches("\"n\"").count(), 1, "{text}");
        let back: GenerationParams = serde_json::from_str(&text).unwrap();
        assert_eq!(back, GenerationParams::new(3).with("steps", 20));
    }

    #[test]
    fn image_source_classifies_img() {
        let mut gen = generation(json!({"img": "https://r2.example/x.webp?sig=1", "id": "g"}));
        assert_eq!(
            gen.image_source(),
            ImageSource::Url("https://r2.example/x.webp?sig=1".into())
        );
        gen.img = "UklGRiQAAABXRUJQ".into();
        assert_eq!(
            gen.image_source(),
            ImageSource::Base64("UklGRiQAAABXRUJQ".into())
        );
        for unavailable in ["N/A", "", "R2"] {
            gen.img = unavailable.into();
            assert_eq!(
                gen.image_source(),
                ImageSource::Unavailable,
                "{unavailable:?}"
            );
        }
    }

    #[test]
    fn seed_accepts_strings_and_numbers() {
        let gen = generation(json!({"img": "", "id": "g", "seed": "42"}));
        assert_eq!(gen.seed, "42");
        let gen = generation(json!({"img": "", "id": "g", "seed": 3_141_592_653u64}));
        assert_eq!(gen.seed, "3141592653");
        let gen = generation(json!({"img": "", "id": "g", "seed": 7.0}));
        assert_eq!(gen.seed, "7");
        assert!(
            serde_json::from_value::<Generation>(json!({"img": "", "id": "g", "seed": 1.5}))
                .is_err()
        );
        let gen = generation(json!({"img": "", "id": "g"}));
        assert_eq!((gen.seed.as_str(), gen.state.as_str()), ("", "ok"));
    }

    #[test]
    fn batch_index_reads_ref_then_value() {
        let gen = generation(json!({"img": "", "id": "g", "gen_metadata": [
            {"type": "lora", "value": "download_failed", "ref": "7"},
            {"type": "batch_index", "value": "see_ref", "ref": "3"},
        ]}));
        assert_eq!(gen.batch_index(), Some(3));
        let gen = generation(json!({"img": "", "id": "g", "gen_metadata": [
            {"type": "batch_index", "value": "2"},
        ]}));
        assert_eq!(gen.batch_index(), Some(2));
        let gen = generation(json!({"img": "", "id": "g", "gen_metadata": [
            {"type": "censorship", "value": "nsfw"},
        ]}));
        assert_eq!(gen.batch_index(), None);
    }

    #[test]
    fn counts_are_clamped_not_rejected() {
        let check: RequestCheck = serde_json::from_value(json!({
            "finished": 1, "processing": 2.0, "restarted": -1, "waiting": 0,
            "done": false, "faulted": false, "wait_time": 12.7, "queue_position": 5,
            "kudos": 3, "is_possible": true,
        }))
        .unwrap();
        assert_eq!(
            (
                check.processing,
                check.restarted,
                check.wait_time,
                check.kudos
            ),
            (2, 0, 12, 3.0)
        );
        assert!(serde_json::from_value::<RequestCheck>(json!({"finished": "1"})).is_err());
    }

    #[test]
    fn submit_accepted_flags_no_available_worker() {
        let accepted: SubmitAccepted =
            serde_json::from_value(json!({"id": "x", "kudos": 6})).unwrap();
        assert!(!accepted.has_no_available_worker());
        assert!(accepted.warnings.is_empty() && accepted.message.is_none());
        let accepted: SubmitAccepted = serde_json::from_value(json!({
            "id": "x", "kudos": 6.0, "message": "will expire in 20 minutes",
            "warnings": [{"code": "NoAvailableWorker", "message": "no worker"}],
        }))
        .unwrap();
        assert!(accepted.has_no_available_worker());
    }

    #[test]
    fn shared_key_details_hide_the_key_and_read_rfc822_expiry() {
        let details: SharedKeyDetails = serde_json::from_value(json!({
            "id": "a1b2c3d4-secret", "username": "me#1", "name": "friends", "kudos": -1,
            "expiry": "Sat, 01 Jan 2011 00:00:00 -0000", "utilized": 5,
            "max_image_pixels": -1, "max_image_steps": 50, "max_text_tokens": -1,
        }))
        .unwrap();
        assert_eq!(details.id.expose_secret(), "a1b2c3d4-secret");
        assert!(!format!("{details:?}").contains("a1b2c3d4"));
        assert!(details.expiry.is_some());
        let no_expiry: SharedKeyDetails =
            serde_json::from_value(json!({"id": "k", "kudos": 10, "expiry": null})).unwrap();
        assert_eq!((no_expiry.expiry, no_expiry.max_image_steps), (None, -1));
    }

    #[test]
    fn shared_key_input_skips_unset_fields() {
        let input = SharedKeyInput {
            kudos: Some(100),
            name: Some("batch".into()),
            ..SharedKeyInput::default()
        };
        assert_eq!(
            serde_json::to_value(&input).unwrap(),
            json!({"kudos": 100, "name": "batch"})
        );
    }
}
