//! The alchemists' side: handing out the oldest waiting form an alchemist
//! serves, landing its outcome (a fault re-queues it, the 4th fault makes it
//! faulted for good; a result is stored, post-processed images in R2 behind
//! a URL signed once at delivery), the charge per delivered form, and the
//! downloads of those URLs.
//!
//! The work itself (decoding, scaling, encoding) happens in
//! `sim::alchemists` outside the lock; this only decides and records.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::super::super::alchemy_forms::{client_cost, form_kudos, is_post_processor};
use super::super::super::clock;
use super::super::super::det::{stable_hash, Part};
use super::super::Horde;
use super::{AlchemyObject, FormState};

/// Faulted attempts after which a form is faulted for good.
const MAX_FORM_FAULTS: u32 = 4;

/// `slow_workers: false` requests go only to alchemists faster than this per form.
const SLOW_WORKER_LIMIT: Duration = Duration::from_secs(10);

/// The stand-in access key id of the signed URLs.
const ACCESS_KEY_ID: &str = "simaccesskey";

/// An S3-style refusal of a download: HTTP status, error code, message.
pub(crate) type S3Refusal = (u16, &'static str, &'static str);

/// One form handed to an alchemist.
#[derive(Debug, Clone)]
pub(crate) struct AlchemyJob {
    pub request: Uuid,
    pub form_id: Uuid,
    pub form: String,
    /// The request's `payload` for this form (a real worker reads it).
    pub payload: Option<Value>,
    /// The re-encoded source, as the server hands it to workers.
    pub source: Arc<Vec<u8>>,
    pub width: u32,
    pub height: u32,
    /// How long the alchemist works on it.
    pub duration: Duration,
    /// The alchemist faults this form (`--alchemy-fault-form`).
    pub fault: bool,
}

/// What an alchemist submits for a job.
pub(crate) enum AlchemyOutcome {
    Faulted,
    /// An inline result such as `{"caption": "..."}`.
    Text(Value),
    /// A post-processed WebP to put in R2.
    Image(Vec<u8>),
}

impl Horde {
    /// Hands the oldest waiting form the alchemists serve to one of them.
    pub(crate) fn pop_form(&mut self) -> Option<AlchemyJob> {
        let settings = &self.alchemy.settings;
        let fast = settings.form_time < SLOW_WORKER_LIMIT;
        let (request_id, index) = self.alchemy.order.values().find_map(|id| {
            let request = self.alchemy.requests.get(id)?;
            if (!request.slow_workers && !fast) || request.trusted_workers {
                return None;
            }
            let index = request.forms.iter().position(|form| {
                form.state == FormState::Waiting && settings.forms.contains(&form.name)
            })?;
            Some((*id, index))
        })?;
        let expiry = Instant::now() + settings.expiry;
        let (form_time, fault_forms) = (settings.form_time, settings.fault_forms.clone());
        let request = self.alchemy.requests.get_mut(&request_id)?;
        request.expiry = expiry;
        let form = &mut request.forms[index];
        form.state = FormState::Processing;
        let units = if is_post_processor(&form.name) {
            request.tiles
        } else {
            1
        };
        Some(AlchemyJob {
            request: request_id,
            form_id: form.id,
            form: form.name.clone(),
            payload: form.payload.clone(),
            source: Arc::clone(&request.worker_source),
            width: request.width,
            height: request.height,
            duration: form_time * units,
            fault: fault_forms.contains(&form.name),
        })
    }

    /// Lands `alchemist`'s outcome for `job`. A form that is no longer
    /// processing (cancelled, or its request expired) refuses the submit.
    pub(crate) fn submit_form(
        &mut self,
        alchemist: usize,
        job: &AlchemyJob,
        outcome: AlchemyOutcome,
    ) {
        let expiry = Instant::now() + self.alchemy.settings.expiry;
        let url_ttl = self.alchemy.settings.url_ttl;
        let Some(index) = self.alchemy.requests.get(&job.request).and_then(|request| {
            request
                .forms
                .iter()
                .position(|form| form.id == job.form_id && form.state == FormState::Processing)
        }) else {
            return;
        };
        let result = match outcome {
            AlchemyOutcome::Faulted => {
                if let Some(request) = self.alchemy.requests.get_mut(&job.request) {
                    let form = &mut request.forms[index];
                    form.faults += 1;
                    form.state = if form.faults >= MAX_FORM_FAULTS {
                        FormState::Faulted
                    } else {
                        FormState::Waiting
                    };
                }
                return;
            }
            AlchemyOutcome::Text(result) => result,
            AlchemyOutcome::Image(webp) => {
                let expires = clock::epoch_now() as u64 + url_ttl.as_secs();
                self.alchemy.objects.insert(
                    job.form_id,
                    AlchemyObject {
                        webp: Arc::new(webp),
                        uploaded: Instant::now(),
                    },
                );
                json!({ job.form.clone(): self.alchemy_url(job.form_id, expires) })
            }
        };
        let Some(request) = self.alchemy.requests.get_mut(&job.request) else {
            return;
        };
        request.expiry = expiry;
        let form = &mut request.forms[index];
        form.state = FormState::Done;
        form.result = Some(result);
        let reward = form_kudos(&form.name, request.tiles);
        if let Some(info) = self.alchemy.alchemists.get_mut(alchemist) {
            info.forms_done += 1;
            info.kudos_rewards += reward;
        }
        self.stats.alchemy_forms_delivered += 1;
        self.charge_form(job.request, index);
    }

    /// Charges the owner for form `index` of `request`: form kudos + 1, + 1
    /// more with `slow_workers`; counted by the client's source hash.
    pub(super) fn charge_form(&mut self, request: Uuid, index: usize) {
        let Some(request) = self.alchemy.requests.get(&request) else {
            return;
        };
        let Some(form) = request.forms.get(index) else {
            return;
        };
        let amount = client_cost(&form.name, request.tiles, request.slow_workers);
        self.users[request.owner].kudos -= amount;
        self.stats.alchemy_kudos_charged += amount;
        *self
            .stats
            .alchemy_charged
            .entry(request.client_sha256.clone())
            .or_default()
            .entry(form.name.clone())
            .or_insert(0) += 1;
    }

    /// A presigned-looking (SigV2-style) URL of an alchemy object, valid
    /// until `expires` (epoch seconds).
    fn alchemy_url(&self, form_id: Uuid, expires: u64) -> String {
        format!(
            "{}sim/r2/{form_id}.webp?AWSAccessKeyId={ACCESS_KEY_ID}&Signature={}&Expires={expires}",
            self.settings.origin,
            self.alchemy_signature(form_id, expires)
        )
    }

    /// URL-safe base64 of a seeded hash of the object and its expiry.
    fn alchemy_signature(&self, form_id: Uuid, expires: u64) -> String {
        let parts = [Part::Id(form_id), Part::Num(expires)];
        let high = self.settings.det.hash("alchemy signature", &parts);
        let low = stable_hash(&[&high.to_le_bytes()]);
        let mut bytes = high.to_be_bytes().to_vec();
        bytes.extend_from_slice(&low.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Serves `GET /sim/r2/<id>.webp` for a post-processed image: `None`
    /// when `id` is not one (the image store answers then); else the bytes,
    /// or the S3-style refusal (status, code, message).
    pub(crate) fn alchemy_download(
        &mut self,
        id: &str,
        access_key: Option<&str>,
        signature: Option<&str>,
        expires: Option<u64>,
    ) -> Option<Result<Arc<Vec<u8>>, S3Refusal>> {
        let form_id = Uuid::parse_str(id).ok()?;
        let object = self.alchemy.objects.get(&form_id)?;
        let webp = Arc::clone(&object.webp);
        let (Some(_), Some(signature), Some(expires)) = (access_key, signature, expires) else {
            return Some(Err((
                403,
                "AccessDenied",
                "Query-string authentication requires the Signature, Expires and AWSAccessKeyId parameters",
            )));
        };
        if access_key != Some(ACCESS_KEY_ID)
            || signature != self.alchemy_signature(form_id, expires)
        {
            return Some(Err((
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )));
        }
        if (expires as f64) < clock::epoch_now() {
            self.stats.alchemy_urls_expired += 1;
            return Some(Err((403, "AccessDenied", "Request has expired")));
        }
        Some(Ok(webp))
    }
}
