//! `plan --kudos`: what a manifest would cost, from the Horde's dry runs.
//!
//! A dry run is a `POST /v2/generate/async`, so the Horde rate-limits it like
//! a submit (2 a second per IP and per key): the dry runs are paced like the
//! engine's submits, and a 429 is waited out as its `Retry-After` asks, a few
//! times, before it is reported as a rate limit (never as an unreachable Horde).

use std::collections::BTreeMap;
use std::time::Duration;

use super::config::{runtime, Horde};
use super::AppError;
use crate::cli::HordeArgs;
use crate::horde::{FailureClass, GenerationRequest, HordeClient, HordeError};
use crate::manifest::CompiledManifest;
use crate::scheduler::{EndpointClass, Pacer, Policy, DEFAULT_SUBMIT_INTERVAL};

/// How many times one dry run is sent again after a 429 before the estimate
/// gives up: the limiter's windows are a second long, so a 429 that outlasts
/// these is another client on the same IP or key, not this one's pace.
const RATE_LIMITED_RETRIES: u32 = 5;

/// The longest one wait after a 429 may be, whatever `Retry-After` says: the
/// user is waiting at a prompt.
const RATE_LIMITED_MAX_WAIT: Duration = Duration::from_secs(30);

/// What a 429 without a `Retry-After` waits: the submit limiter's window.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(1);

/// `plan --kudos`: one dry run per distinct parameter set, priced per image.
pub fn kudos_estimate(
    compiled: &CompiledManifest,
    horde: &HordeArgs,
    simulate: bool,
) -> Result<(f64, Option<f64>, usize), AppError> {
    runtime()?.block_on(async {
        let connected = Horde::connect(horde, simulate).await?;
        let client = connected.client.clone();
        // Keyed by the request's text, so the dry runs go out in a stable order.
        let mut signatures: BTreeMap<String, (GenerationRequest, u64)> = BTreeMap::new();
        for job in compiled.jobs() {
            let request = crate::scheduler::request_for(&job, 1, 0)
                .map_err(|e| AppError::Config(e.to_string()))?;
            let signature = format!(
                "{:?}{}",
                request.models,
                serde_json::to_string(&request.params).unwrap_or_default()
            );
            signatures.entry(signature).or_insert((request, 0)).1 += u64::from(job.images);
        }
        let pacer = Pacer::new(DEFAULT_SUBMIT_INTERVAL);
        let mut total = 0.0;
        for (request, images) in signatures.values() {
            let per_image = paced_dry_run(&client, &pacer, request).await?;
            total += per_image * *images as f64;
        }
        let balance = if client.is_anonymous() {
            None
        } else if let Ok(Some(shared)) = client.own_shared_key().await {
            Some(shared.kudos as f64)
        } else {
            client.find_user().await.ok().map(|u| u.kudos)
        };
        connected.close().await;
        Ok((total, balance, signatures.len()))
    })
}

/// One dry run, sent when the submit pace allows and again after each 429
/// (at most [`RATE_LIMITED_RETRIES`] times).
async fn paced_dry_run(
    client: &HordeClient,
    pacer: &Pacer,
    request: &GenerationRequest,
) -> Result<f64, AppError> {
    let bound = Policy {
        max_wait: RATE_LIMITED_MAX_WAIT,
        ..Policy::default()
    };
    let mut retries = 0;
    loop {
        pacer.ready(EndpointClass::Submit).await;
        match client.dry_run(request).await {
            Ok(per_image) => return Ok(per_image),
            Err(e) if e.class() == FailureClass::RateLimited && retries < RATE_LIMITED_RETRIES => {
                retries += 1;
                let wait = bound.bounded(e.retry_after(), RATE_LIMITED_WAIT);
                tracing::info!(
                    wait = %humantime::format_duration(wait),
                    retry = retries,
                    "the dry run was rate limited; waiting as Retry-After asks"
                );
                pacer.back_off(EndpointClass::Submit, wait);
            }
            Err(e) => return Err(estimate_error(e, retries)),
        }
    }
}

/// The error that ends the estimate, by the failure's class.
fn estimate_error(e: HordeError, retries: u32) -> AppError {
    match e.class() {
        FailureClass::Auth => AppError::Auth(e.to_string()),
        FailureClass::Permanent | FailureClass::Kudos => {
            AppError::Config(format!("the kudos estimate failed: {e}"))
        }
        FailureClass::RateLimited => AppError::RateLimited(format!(
            "the kudos estimate's dry run is still rate limited after {retries} retries \
             (each after the wait its Retry-After asked): {e}"
        )),
        _ => AppError::Unreachable(format!("the kudos estimate failed: {e}")),
    }
}
