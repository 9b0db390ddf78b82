//! Alchemy (interrogation) requests as the simulated Horde keeps them: the
//! records, their settings and the simulated alchemists' identities, the
//! request state derived on every read, status and DELETE, and expiry
//! (docs/horde-api.md §10 (alchemy)). The POST's checks are in `submit`;
//! handing forms to alchemists, delivery, costs and the R2 results in `work`.
//!
//! Rule: never kinder than the real server: forms are listed in a new order
//! on every read, a form nobody serves waits silently until expiry, and a
//! form cancelled while processing is paid for in full. Runs under the
//! state lock: it must not await, sleep or do I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::super::config::SimConfig;
use super::super::det::{Det, Part};
use super::super::stats::SimStats;
use super::{ApiError, Horde};

mod submit;
mod work;

pub(crate) use work::{AlchemyJob, AlchemyOutcome};

/// How long a post-processed image stays in R2 (as the image results do).
const R2_RETENTION: Duration = Duration::from_secs(120 * 60);

/// Settings of the alchemy side, fixed at start.
pub(crate) struct AlchemySettings {
    /// Time per form (per 512² tile for a post-processor).
    pub form_time: Duration,
    /// Forms the alchemists serve.
    pub forms: Vec<String>,
    /// Forms the alchemists always fault.
    pub fault_forms: Vec<String>,
    pub expiry: Duration,
    /// Validity of a post-processor's result URL from its delivery.
    pub url_ttl: Duration,
}

impl AlchemySettings {
    fn from_config(config: &SimConfig) -> Self {
        Self {
            form_time: config.alchemy_form_time,
            forms: config.alchemy_forms.clone(),
            fault_forms: config.alchemy_fault_form.clone(),
            expiry: config.alchemy_expiry,
            url_ttl: config.alchemy_url_ttl,
        }
    }
}

/// Identity of a simulated alchemist.
pub(super) struct AlchemistInfo {
    id: Uuid,
    name: String,
    forms_done: u64,
    kudos_rewards: f64,
}

/// State of one form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FormState {
    Waiting,
    Processing,
    Done,
    Faulted,
    Cancelled,
}

impl FormState {
    fn name(self) -> &'static str {
        match self {
            FormState::Waiting => "waiting",
            FormState::Processing => "processing",
            FormState::Done => "done",
            FormState::Faulted => "faulted",
            FormState::Cancelled => "cancelled",
        }
    }

    fn is_open(self) -> bool {
        matches!(self, FormState::Waiting | FormState::Processing)
    }
}

/// One form of an interrogation request.
pub(super) struct Form {
    id: Uuid,
    name: String,
    payload: Option<Value>,
    state: FormState,
    result: Option<Value>,
    /// Faulted attempts so far (the 4th makes the form faulted for good).
    faults: u32,
    /// Its result appeared in a status or DELETE answer.
    handed_out: bool,
}

/// An interrogation request (`POST /v2/interrogate/async`) until it expires.
pub(super) struct Interrogation {
    id: Uuid,
    seq: u64,
    owner: usize,
    slow_workers: bool,
    /// Only trusted alchemists may serve it; the simulated ones are not
    /// trusted, so it waits until it expires, as on the real Horde.
    trusted_workers: bool,
    /// Lowercase hex SHA-256 of the source bytes as the client sent them.
    client_sha256: String,
    /// The server's re-encoding: what alchemists get.
    worker_source: Arc<Vec<u8>>,
    width: u32,
    height: u32,
    tiles: u32,
    forms: Vec<Form>,
    expiry: Instant,
    cancelled: bool,
    /// Status answers so far (each lists the forms in a new order).
    reads: u64,
}

impl Interrogation {
    /// The request state, derived from its forms in the server's order.
    fn state(&self) -> &'static str {
        let all = |state| self.forms.iter().all(|form| form.state == state);
        let any = |state| self.forms.iter().any(|form| form.state == state);
        if all(FormState::Faulted) {
            "faulted"
        } else if all(FormState::Done) {
            "done"
        } else if any(FormState::Processing) {
            "processing"
        } else if any(FormState::Waiting) {
            "waiting"
        } else {
            "partial"
        }
    }
}

/// A post-processed image in R2, served by `GET /sim/r2/<form id>.webp`.
struct AlchemyObject {
    webp: Arc<Vec<u8>>,
    uploaded: Instant,
}

/// Everything the Horde knows about alchemy.
pub(crate) struct Alchemy {
    settings: AlchemySettings,
    alchemists: Vec<AlchemistInfo>,
    requests: HashMap<Uuid, Interrogation>,
    /// Live requests by arrival, oldest first (alchemists serve them in this order).
    order: BTreeMap<u64, Uuid>,
    objects: HashMap<Uuid, AlchemyObject>,
    next_seq: u64,
    /// Delivered forms of expired requests that no answer ever listed.
    expired_unretrieved: u64,
}

impl Alchemy {
    pub(crate) fn new(config: &SimConfig, det: Det) -> Self {
        let alchemists = (0..config.alchemists)
            .map(|index| AlchemistInfo {
                id: det.uuid("alchemist", &[Part::Num(index as u64)]),
                name: format!("sim-alchemist-{index}"),
                forms_done: 0,
                kudos_rewards: 0.0,
            })
            .collect();
        Self {
            settings: AlchemySettings::from_config(config),
            alchemists,
            requests: HashMap::new(),
            order: BTreeMap::new(),
            objects: HashMap::new(),
            next_seq: 0,
            expired_unretrieved: 0,
        }
    }
}

/// 404 `RequestNotFound` in the words of the interrogation status route.
fn not_found(id: &str) -> ApiError {
    ApiError::rc(
        404,
        "RequestNotFound",
        format!(
            "Interrogation with ID '{id}' not found. You have requested this URI \
             [/api/v2/interrogate/status/{id}] but did you mean \
             /api/v2/interrogate/status/<string:id> ?"
        ),
    )
}

impl Horde {
    /// `GET /v2/interrogate/status/{id}`.
    pub(crate) fn interrogation_status(&mut self, id: &str) -> Result<Value, ApiError> {
        let uuid = self.live_interrogation(id)?;
        Ok(self.interrogation_body(uuid))
    }

    /// `DELETE /v2/interrogate/status/{id}`: every form not done is
    /// cancelled and loses its result; one that was processing is charged
    /// in full. Idempotent; the request stays readable until it expires.
    pub(crate) fn cancel_interrogation(&mut self, id: &str) -> Result<Value, ApiError> {
        let uuid = self.live_interrogation(id)?;
        let mut charge_for = Vec::new();
        if let Some(request) = self.alchemy.requests.get_mut(&uuid) {
            for (index, form) in request.forms.iter_mut().enumerate() {
                if form.state == FormState::Processing {
                    charge_for.push(index);
                }
                if form.state != FormState::Done {
                    form.state = FormState::Cancelled;
                    form.result = None;
                }
            }
            if !request.cancelled && !request.forms.iter().all(|f| f.state == FormState::Done) {
                request.cancelled = true;
                self.stats.alchemy_requests_cancelled += 1;
            }
        }
        for index in charge_for {
            self.charge_form(uuid, index);
        }
        Ok(self.interrogation_body(uuid))
    }

    fn live_interrogation(&self, id: &str) -> Result<Uuid, ApiError> {
        Uuid::parse_str(id)
            .ok()
            .filter(|uuid| self.alchemy.requests.contains_key(uuid))
            .ok_or_else(|| not_found(id))
    }

    /// The status body: the derived state and the forms in a fresh order,
    /// each with `form`, `state` and, once done, `result`.
    fn interrogation_body(&mut self, uuid: Uuid) -> Value {
        let det = self.settings.det;
        let Some(request) = self.alchemy.requests.get_mut(&uuid) else {
            return json!({"state": "faulted", "forms": []});
        };
        request.reads += 1;
        let mut order: Vec<usize> = (0..request.forms.len()).collect();
        // Fisher-Yates, seeded by the request and the read.
        for last in (1..order.len()).rev() {
            let parts = [
                Part::Id(uuid),
                Part::Num(request.reads),
                Part::Num(last as u64),
            ];
            let pick = (det.hash("alchemy form order", &parts) % (last as u64 + 1)) as usize;
            order.swap(last, pick);
        }
        let forms: Vec<Value> = order
            .into_iter()
            .map(|index| {
                let form = &mut request.forms[index];
                let mut entry = Map::new();
                entry.insert("form".to_owned(), json!(form.name));
                entry.insert("state".to_owned(), json!(form.state.name()));
                if let Some(result) = &form.result {
                    entry.insert("result".to_owned(), result.clone());
                    form.handed_out = true;
                }
                Value::Object(entry)
            })
            .collect();
        json!({"state": request.state(), "forms": forms})
    }

    /// The cleaner's share: deletes expired interrogation requests, done or
    /// not (then 404), and prunes post-processed images older than the retention.
    pub(super) fn delete_expired_interrogations(&mut self, now: Instant) {
        let expired: Vec<Uuid> = self
            .alchemy
            .requests
            .values()
            .filter(|request| request.expiry <= now)
            .map(|request| request.id)
            .collect();
        for id in expired {
            if let Some(request) = self.alchemy.requests.remove(&id) {
                self.alchemy.order.remove(&request.seq);
                self.alchemy.expired_unretrieved += request
                    .forms
                    .iter()
                    .filter(|form| form.state == FormState::Done && !form.handed_out)
                    .count() as u64;
            }
        }
        self.alchemy
            .objects
            .retain(|_, object| now.duration_since(object.uploaded) < R2_RETENTION);
    }

    /// Fills the derived alchemy counters of a snapshot.
    pub(super) fn alchemy_snapshot(&self, stats: &mut SimStats) {
        let forms = || self.alchemy.requests.values().flat_map(|r| r.forms.iter());
        stats.alchemy_forms_open = forms().filter(|form| form.state.is_open()).count() as u64;
        stats.alchemy_forms_unretrieved = forms()
            .filter(|form| form.state == FormState::Done && !form.handed_out)
            .count() as u64
            + self.alchemy.expired_unretrieved;
    }

    /// The alchemists as `GET /v2/workers` lists them.
    pub(crate) fn alchemist_list(&self) -> Vec<Value> {
        let settings = &self.alchemy.settings;
        self.alchemy
            .alchemists
            .iter()
            .map(|alchemist| {
                json!({
                    "type": "interrogation",
                    "name": alchemist.name,
                    "id": alchemist.id.to_string(),
                    "online": true,
                    "threads": 1,
                    "max_pixels": 0,
                    "forms": settings.forms,
                    "models": [],
                    "performance": format!("{:.1} seconds per form", settings.form_time.as_secs_f64()),
                    "requests_fulfilled": alchemist.forms_done,
                    "kudos_rewards": alchemist.kudos_rewards,
                    "trusted": false,
                    "maintenance_mode": false,
                    "nsfw": true,
                    "img2img": false,
                    "painting": false,
                    "post-processing": false,
                    "lora": false,
                })
            })
            .collect()
    }
}
