//! `POST /v2/generate/async` after schema validation: the real server's
//! checks in its order (caller and shared key, request options, worker
//! list, concurrency, source images, payload limits, client agent, price,
//! shared-key limits), then a dry-run answer or a new queued request.
//!
//! Each check is a named step; the order is the server's and decides which
//! error a request with several faults gets, so keep it. It must not be
//! kinder than the server, and must not answer in HTTP terms (`routes` does).

use std::collections::HashMap;

use tokio::time::Instant;
use uuid::Uuid;

use super::super::det::Part;
use super::super::stats::SourceSeen;
use super::super::validate::{check_sources, decode_sources, GenerateInput, KNOWN_UPSCALERS};
use super::super::wire::{RequestAsync, Warning};
use super::kudos::{base_kudos, per_image_kudos, HORDE_TAX};
use super::{ApiError, Caller, Horde, Request, WorkerFilter};

/// Worker ids a request may name; the server silently keeps the first 5.
const MAX_WORKER_IDS: usize = 5;

const NO_AVAILABLE_WORKER: &str = "Warning: No available workers can fulfill this request. \
It will expire in 20 minutes unless a worker appears. \
Please confider reducing its size of the request or choosing a different model.";

/// What a valid submit turns into.
pub(crate) enum SubmitOutcome {
    DryRun { kudos: f64 },
    Queued(RequestAsync),
}

impl Horde {
    /// Runs the checks of `POST /v2/generate/async` after schema validation, in
    /// the real server's order, and queues the request.
    pub(crate) fn submit(
        &mut self,
        apikey: &str,
        client_agent: &str,
        mut input: GenerateInput,
    ) -> Result<SubmitOutcome, ApiError> {
        let caller = self.caller_for_generate(apikey)?;
        let caller = self.shared_key_submitter(caller, input.allow_downgrade)?;
        check_options(&input)?;
        let workers = self.worker_filter(&input.workers, input.worker_blacklist)?;
        self.check_concurrency(&caller, &input)?;
        check_sources(&input)?;
        check_payload(&input, client_agent)?;
        let price = self.price(&caller, &mut input)?;
        if let Some(key_id) = caller.shared_key {
            self.check_shared_key_limits(key_id, &input.params)?;
        }

        if input.dry_run {
            return Ok(SubmitOutcome::DryRun {
                kudos: price.required,
            });
        }
        // The image drawn stays a function of prompt and seed (tests recompute
        // it from the sidecar), so an img2img image is as deterministic as any.
        let seen = decode_sources(&input)?;
        let queued = self.activate(caller, input, price.upfront_hold, workers);
        if let Some(seen) = seen {
            self.record_source(seen);
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

    /// The user's concurrency, counted in images not yet handed to a worker
    /// (for the anonymous user, only the requests sharing a model with this one).
    fn check_concurrency(
        &mut self,
        caller: &Caller,
        input: &GenerateInput,
    ) -> Result<(), ApiError> {
        let user = &self.users[caller.user];
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
        if total <= u64::from(user.concurrency) {
            return Ok(());
        }
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
        // The real server was seen sending `Retry-After: 0` here (docs/horde-api.md §9.1).
        let mut error = ApiError::rc(429, "TooManyPrompts", message);
        error.retry_after = Some(0);
        Err(error)
    }

    /// Creates the request, queues it when some worker can serve it, takes
    /// the Horde tax, and answers the 202.
    fn activate(
        &mut self,
        caller: Caller,
        input: GenerateInput,
        upfront_hold: f64,
        workers: WorkerFilter,
    ) -> RequestAsync {
        let owner = caller.user;
        if self.settings.busy_key > 0 && !self.users[owner].anon && !self.users[owner].busy {
            self.users[owner].busy = true;
            let n = input.params.n;
            self.add_other_clients_requests(owner, n, input.params.width, input.params.height);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let estimate = base_kudos(&input.params).round();
        let request = self.new_request(seq, caller, input, upfront_hold, workers);
        let id = request.id;
        let possible = self.is_possible(&request);
        self.requests.insert(id, request);
        if possible {
            self.queue.insert(seq, id);
        }
        self.charge(id, HORDE_TAX);
        self.users[owner].requests_made += 1;
        self.stats.requests_created += 1;
        accepted(id, estimate, possible)
    }

    /// The record of a new request, arrival number `seq`: its id and (unless
    /// the client chose one) its seed are drawn from the simulator's seed.
    fn new_request(
        &self,
        seq: u64,
        caller: Caller,
        input: GenerateInput,
        upfront_hold: f64,
        workers: WorkerFilter,
    ) -> Request {
        let det = self.settings.det;
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
        let client_seed = input.params.seed.is_some();
        let has_source = input.source_image.is_some();
        let seed =
            input.params.seed.clone().unwrap_or_else(|| {
                (det.hash("seed", &[Part::Num(seq)]) % 4_294_967_295).to_string()
            });
        let seed_variation = input.params.seed_variation;
        let per_image_kudos = per_image_kudos(&input);
        let params = &input.params;
        let mps_per_image =
            f64::from(params.width) * f64::from(params.height) * f64::from(params.steps) / 1e6;
        let (width, height) = (params.width, params.height);
        Request {
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
            client_seed,
            seed_variation,
            n: input.params.n,
            has_source,
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
        }
    }

    /// Counts the source images a queued request brought (`/sim/stats`).
    fn record_source(&mut self, seen: SourceSeen) {
        self.stats.source_images_received += 1;
        self.stats.masks_received += u64::from(seen.mask_format.is_some());
        self.stats.extra_source_images_received += seen.extra.len() as u64;
        self.stats.last_source = Some(seen);
    }
}

/// The request options only special accounts may use, and the webhook's scheme.
fn check_options(input: &GenerateInput) -> Result<(), ApiError> {
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
    Ok(())
}

/// The payload limits of the server's `validate()` that follow the source
/// checks (loras, TIs, prompt size, upscalers, cfg decimals), and the
/// client agent it bans.
fn check_payload(input: &GenerateInput, client_agent: &str) -> Result<(), ApiError> {
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
    Ok(())
}

/// The 202 answer: the per-image estimate, with the server's warning when
/// no worker can serve the request.
fn accepted(id: Uuid, estimate: f64, possible: bool) -> RequestAsync {
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
