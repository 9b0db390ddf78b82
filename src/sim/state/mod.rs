//! The simulated Horde's memory: users, shared keys, requests, the image
//! queue, the R2 object store and the counters, with every rule that
//! changes them (submit checks, kudos, concurrency, worker pickup and
//! completion, cancel, expiry, the `find_user` cache, the wait estimate).
//!
//! Everything here is synchronous and runs under one mutex held for
//! microseconds; it must not await, sleep or do I/O. HTTP shapes belong to
//! `routes`, timing to `workers`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::clock;
use super::config::{LatencySpec, SimConfig};
use super::det::{Det, Part};
use super::images;
use super::stats::SimStats;
use super::validate::{GenParams, GenerateInput, KNOWN_UPSCALERS};
use super::wire::{CheckBody, GenerationBody, MetadataEntry, RequestAsync, StatusBody, Warning};

mod catalog;
mod cleaner;
mod counters;
mod error;
mod jobs;
mod kudos;
mod r2;
mod request;
mod shared_keys;
mod status;
mod users;

use catalog::{simulated_workers, WorkerInfo};
use error::invalid_api_key;
pub(crate) use jobs::Job;
use r2::R2Object;
use request::{Generation, Request, WorkerFilter};
use shared_keys::SharedKey;
use users::{registered_users, Caller, User};
use kudos::{
    base_kudos, downgrade, dry_run_kudos, max_free_resolution, needs_upfront_kudos, per_image_kudos,
    HORDE_TAX,
};
pub(crate) use error::ApiError;

/// The anonymous API key (ten zeros), always known.
pub(crate) const ANON_API_KEY: &str = "0000000000";

/// Worker ids a request may name; the server silently keeps the first 5.
const MAX_WORKER_IDS: usize = 5;

const NO_AVAILABLE_WORKER: &str = "Warning: No available workers can fulfill this request. \
It will expire in 20 minutes unless a worker appears. \
Please confider reducing its size of the request or choosing a different model.";

/// Settings fixed at start.
pub(crate) struct Settings {
    pub det: Det,
    pub workers: usize,
    pub latency: LatencySpec,
    pub fault_rate: f64,
    pub censor_rate: f64,
    pub served_models: Vec<String>,
    pub expiry: Duration,
    pub r2_ttl: Duration,
    /// Megapixel-steps per second each worker advertises (for `wait_time`).
    pub worker_speed_mps: f64,
    /// How long a `find_user` answer is served from the cache.
    pub find_user_cache: Duration,
    /// `http://127.0.0.1:P/`, for R2 URLs.
    pub origin: String,
}

/// What a valid submit turns into.
pub(crate) enum SubmitOutcome {
    DryRun { kudos: f64 },
    Queued(RequestAsync),
}

/// Everything the simulated server knows.
pub(crate) struct Horde {
    pub settings: Arc<Settings>,
    users: Vec<User>,
    keys: HashMap<String, usize>,
    shared_keys: HashMap<Uuid, SharedKey>,
    requests: HashMap<Uuid, Request>,
    /// Requests with waiting images a worker can serve, oldest first.
    queue: BTreeMap<u64, Uuid>,
    r2: HashMap<Uuid, R2Object>,
    workers: Vec<WorkerInfo>,
    next_seq: u64,
    next_shared_key: u64,
    stats: SimStats,
    /// `find_user` answers by API key, with the time they were made.
    find_user_cache: HashMap<String, (Instant, Value)>,
    /// Expired requests that had been neither retrieved nor cancelled.
    expired_never_retrieved: u64,
    /// Expired requests that had been retrieved.
    expired_retrieved: u64,
    /// Expired requests that were orphaned (see `SimStats::requests_orphaned`).
    expired_orphaned: u64,
    /// Arrival numbers of the other users' images waiting now (`--background-load`).
    background: BTreeSet<u64>,
    /// Other users' images the workers made.
    background_served: u64,
    /// Users whose key was revoked (`POST /sim/revoke`).
    revoked: Vec<usize>,
}

impl Horde {
    pub(crate) fn new(config: &SimConfig, seed: u64, origin: String) -> Self {
        let det = Det::new(seed);
        let settings = Arc::new(Settings {
            det,
            workers: config.workers,
            latency: config.latency,
            fault_rate: config.fault_rate,
            censor_rate: config.censor_rate,
            served_models: config
                .models
                .iter()
                .map(|model| model.trim().to_owned())
                .collect(),
            expiry: config.expiry,
            r2_ttl: config.r2_ttl,
            worker_speed_mps: config.worker_speed_mps,
            find_user_cache: config.find_user_cache,
            origin,
        });
        let (users, keys) = registered_users(config);
        let workers = simulated_workers(det, config.workers);
        // Other users' images are already queued when ours arrive.
        let background: BTreeSet<u64> = (0..u64::from(config.background_load)).collect();
        Self {
            settings,
            users,
            keys,
            shared_keys: HashMap::new(),
            requests: HashMap::new(),
            queue: BTreeMap::new(),
            r2: HashMap::new(),
            workers,
            next_seq: background.len() as u64,
            next_shared_key: 0,
            stats: SimStats::default(),
            find_user_cache: HashMap::new(),
            expired_never_retrieved: 0,
            expired_retrieved: 0,
            expired_orphaned: 0,
            background,
            background_served: 0,
            revoked: Vec::new(),
        }
    }

    // ----- submit -----

    /// Runs the checks of `POST /v2/generate/async` after schema validation, in
    /// the real server's order, and queues the request.
    pub(crate) fn submit(
        &mut self,
        apikey: &str,
        client_agent: &str,
        mut input: GenerateInput,
    ) -> Result<SubmitOutcome, ApiError> {
        let mut caller = self.caller_for_generate(apikey)?;
        let now_epoch = clock::epoch_now() as i64;

        if let Some(key_id) = caller.shared_key {
            let key = &self.shared_keys[&key_id];
            if key.kudos == 0.0 {
                if !input.allow_downgrade {
                    return Err(ApiError::rc(
                        403,
                        "SharedKeyEmpty",
                        "This shared key is empty.",
                    ));
                }
                // An empty shared key with allow_downgrade runs as the anonymous user.
                caller = Caller {
                    user: 0,
                    shared_key: None,
                };
            } else if key.expiry.is_some_and(|expiry| expiry <= now_epoch) {
                return Err(ApiError::rc(
                    403,
                    "SharedKeyExpired",
                    "This shared key has expired",
                ));
            }
        }
        let user = &self.users[caller.user];

        if input.proxied_account.is_some() {
            return Err(ApiError::rc(
                400,
                "OnlyServiceAccountProxy",
                "Only service accounts can proxy other accounts.",
            ));
        }
        if input.disable_batching && input.params.n > 1 {
            return Err(ApiError::rc(
                400,
                "RequiresTrust",
                "Only trusted users can disable batching for requests with n > 1.",
            ));
        }
        if let Some(webhook) = &input.webhook {
            if !webhook.starts_with("https://") {
                return Err(ApiError::rc(
                    400,
                    "BadRequest",
                    "webhooks need to point to an https endpoint.",
                ));
            }
        }

        let worker_filter = self.worker_filter(&input.workers, input.worker_blacklist)?;

        // Concurrency, counted in images not yet handed to a worker.
        let waiting_now: u64 = self
            .requests
            .values()
            .filter(|request| request.owner == caller.user && !request.faulted)
            .filter(|request| {
                !user.anon
                    || request
                        .models
                        .iter()
                        .any(|model| input.models.contains(model))
            })
            .map(|request| request.waiting.len() as u64)
            .sum();
        let total = waiting_now + u64::from(input.params.n);
        if total > u64::from(user.concurrency) {
            self.stats.too_many_prompts += 1;
            let message = if user.anon {
                format!(
                    "Parallel requests ({total}) exceeded user limit ({}). Please try again later \
                     or register an account to increase your concurrency.",
                    user.concurrency
                )
            } else {
                format!(
                    "Parallel requests ({total}) exceeded user limit ({}). Please try again later \
                     or request to increase your concurrency.",
                    user.concurrency
                )
            };
            // The real server was seen sending `Retry-After: 0` here (facts §9.1).
            let mut error = ApiError::rc(429, "TooManyPrompts", message);
            error.retry_after = Some(0);
            return Err(error);
        }

        super::validate::check_sources(&input)?;
        let params = &input.params;
        if params.loras > 5 {
            return Err(ApiError::rc(
                400,
                "TooManyLoras",
                "You cannot request more than 5 loras per generation.",
            ));
        }
        if params.tis > 20 {
            return Err(ApiError::rc(
                400,
                "TooManyTIs",
                "You cannot request more than 20 Textual Inversions per generation.",
            ));
        }
        if input.prompt.split_whitespace().count() > 7500 {
            return Err(ApiError::rc(
                400,
                "InvalidPromptSize",
                "Too large prompt. Please reduce the amount of tokens contained.",
            ));
        }
        let upscalers = params
            .post_processing
            .iter()
            .filter(|processor| KNOWN_UPSCALERS.contains(&processor.as_str()))
            .count();
        if upscalers > 1 {
            return Err(ApiError::rc(
                400,
                "TooManyUpscalers",
                "Cannot use more than 1 upscaler at a time.",
            ));
        }
        if (params.cfg_scale * 100.0).round() / 100.0 != params.cfg_scale {
            return Err(ApiError::rc(
                400,
                "BadCFGDecimals",
                "cfg_scale must be rounded to 2 decimal places",
            ));
        }
        if client_agent == "My-Project:v0.0.1:My-Contact" {
            return Err(ApiError::rc(
                403,
                "BannedClientAgent",
                "This Client-Agent appears badly designed and is causing too many warnings. \
                 First ensure it provides a proper name and contact details. \
                 Then contact us on Discord to discuss the issue it's creating.",
            ));
        }

        // Upfront kudos (AH stable.py initiate_waiting_prompt).
        let queued_requests = self
            .requests
            .values()
            .filter(|request| !request.waiting.is_empty())
            .count();
        let max_res = max_free_resolution(self.settings.workers, queued_requests, &input.models);
        let needs_upfront = needs_upfront_kudos(&input, max_res);
        let mut required = dry_run_kudos(&input);
        if let Some(key_id) = caller.shared_key {
            let key = &self.shared_keys[&key_id];
            if key.kudos != -1.0 && required > key.kudos && !input.allow_downgrade {
                return Err(ApiError::rc(
                    403,
                    "SharedKeyInsufficientKudos",
                    format!(
                        "This shared key does not have enough remaining kudos ({}) to fulfill this request ({}).",
                        key.kudos, required
                    ),
                ));
            }
        }
        let mut upfront_hold = 0.0;
        if needs_upfront {
            let holds: f64 = self
                .requests
                .values()
                .filter(|request| request.owner == caller.user)
                .map(|request| request.upfront_hold)
                .sum();
            let available = user.kudos - user.floor - holds;
            if required > available {
                if input.allow_downgrade {
                    downgrade(&mut input.params, max_res);
                    required = dry_run_kudos(&input);
                } else {
                    return Err(ApiError::rc(
                        403,
                        "KudosUpfront",
                        format!(
                            "Due to heavy demand, for requests over {max_res}x{max_res} or over 50 steps \
                             (10 steps for LCM work, 30 steps for Stable Cascade, and half those steps for \
                             k_heun, dpmpp_sde, and dpm_2*) the client needs to already have the required \
                             kudos. This request requires {required} kudos to fulfil."
                        ),
                    ));
                }
            } else {
                upfront_hold = required;
            }
        }
        if let Some(key_id) = caller.shared_key {
            let key = &self.shared_keys[&key_id];
            let pixels = i64::from(input.params.width) * i64::from(input.params.height);
            if key.max_image_pixels != -1 && pixels > key.max_image_pixels {
                return Err(ApiError::rc(
                    400,
                    "BadRequest",
                    format!(
                        "This shared key is limited to {} pixels per job. You requested {pixels} pixels.",
                        key.max_image_pixels
                    ),
                ));
            }
            let steps = i64::from(input.params.steps);
            if key.max_image_steps != -1 && steps > key.max_image_steps {
                return Err(ApiError::rc(
                    400,
                    "BadRequest",
                    format!(
                        "This shared key is limited to {} steps per job. You requested {steps} steps.",
                        key.max_image_steps
                    ),
                ));
            }
        }

        if input.dry_run {
            return Ok(SubmitOutcome::DryRun { kudos: required });
        }
        // The image drawn stays a function of prompt and seed (tests recompute
        // it from the sidecar), so an img2img image is as deterministic as any.
        let seen = super::validate::decode_sources(&input)?;
        let queued = self.activate(caller, input, upfront_hold, worker_filter);
        if let Some(seen) = seen {
            self.stats.source_images_received += 1;
            self.stats.masks_received += u64::from(seen.mask_format.is_some());
            self.stats.extra_source_images_received += seen.extra.len() as u64;
            self.stats.last_source = Some(seen);
        }
        Ok(SubmitOutcome::Queued(queued))
    }

    /// `workers` as worker indexes: an unknown id is 404 `WorkerNotFound`.
    fn worker_filter(&self, ids: &[String], blacklist: bool) -> Result<WorkerFilter, ApiError> {
        if ids.is_empty() {
            return Ok(WorkerFilter::Any);
        }
        let mut indexes = Vec::new();
        for id in ids.iter().take(MAX_WORKER_IDS) {
            let found = Uuid::parse_str(id)
                .ok()
                .and_then(|uuid| self.workers.iter().position(|worker| worker.id == uuid));
            match found {
                Some(index) => indexes.push(index),
                None => {
                    return Err(ApiError::rc(
                        404,
                        "WorkerNotFound",
                        format!("Worker with ID '{id}' not found."),
                    ))
                }
            }
        }
        Ok(if blacklist {
            WorkerFilter::Except(indexes)
        } else {
            WorkerFilter::Only(indexes)
        })
    }


    fn activate(
        &mut self,
        caller: Caller,
        input: GenerateInput,
        upfront_hold: f64,
        workers: WorkerFilter,
    ) -> RequestAsync {
        let det = self.settings.det;
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = det.uuid("request", &[Part::Num(seq)]);
        let served_model = if input.models.is_empty() {
            self.settings.served_models.first().cloned()
        } else {
            input
                .models
                .iter()
                .find(|model| self.settings.served_models.contains(model))
                .cloned()
        };
        let seed =
            input.params.seed.clone().unwrap_or_else(|| {
                (det.hash("seed", &[Part::Num(seq)]) % 4_294_967_295).to_string()
            });
        let per_image_kudos = per_image_kudos(&input);
        let estimate = base_kudos(&input.params).round();
        let params = &input.params;
        let mps_per_image =
            f64::from(params.width) * f64::from(params.height) * f64::from(params.steps) / 1e6;
        let (width, height) = (params.width, params.height);
        let request = Request {
            id,
            seq,
            owner: caller.user,
            shared_key: caller.shared_key,
            prompt: input.prompt,
            models: input.models,
            served_model,
            nsfw: input.nsfw,
            r2: input.r2,
            shared: input.shared,
            seed,
            width,
            height,
            mps_per_image,
            workers,
            waiting: (0..input.params.n).collect(),
            faults_per_image: HashMap::new(),
            processing: 0,
            generations: Vec::new(),
            restarted: 0,
            faulted_jobs: 0,
            faulted: false,
            cancelled: false,
            kudos: 0.0,
            per_image_kudos,
            upfront_hold,
            expiry: Instant::now() + self.settings.expiry,
            status_seen_done: false,
        };
        let possible = self.is_possible(&request);
        self.requests.insert(id, request);
        if possible {
            self.queue.insert(seq, id);
        }
        self.charge(id, HORDE_TAX);
        self.users[caller.user].requests_made += 1;
        self.stats.requests_created += 1;

        let (message, warnings) = if possible {
            (None, Vec::new())
        } else {
            (
                Some(NO_AVAILABLE_WORKER),
                vec![Warning {
                    code: "NoAvailableWorker",
                    message: NO_AVAILABLE_WORKER,
                }],
            )
        };
        RequestAsync {
            id: id.to_string(),
            kudos: estimate,
            message,
            warnings,
        }
    }

}
