//! One submit: lease images from a key, wait for the pacer, write the
//! intent to the ledger, POST, and make the Horde id durable before anything
//! depends on it; a lost answer is resolved (`adopt`) before the key submits
//! again. Also the request body a job's images are asked with.
//!
//! Must not follow or save: the slot goes on to `follow` with the id.

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::adopt::Lost;
use super::keys::smallest_part;
use super::policy::{Action, Call};
use super::slot::Halt;
use super::{fresh_record, Abort, EndpointClass, Engine, Event, FailureKind, Lease, PoolKey};
use crate::horde::{
    Base64Image, ExtraSourceImage, GenerationParams, GenerationRequest, HordeError,
};
use crate::manifest::Job;
use crate::plan::Slot;
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState};

impl Engine {
    /// Sends one submit for the slot's missing images: `Ok(true)` when the record is
    /// now `Submitted`, `Ok(false)` after a failure worth another try (already waited out).
    pub(super) async fn submit(
        &self,
        job: &Job,
        slot: Slot,
        key: &RequestKey,
        record: &mut Option<RequestRecord>,
        (pool_key, lease): (&mut Option<Arc<PoolKey>>, &mut Option<Lease>),
        failures: &mut u32,
    ) -> Result<bool, Halt> {
        if self.submits.is_cancelled() {
            return Err(Halt::Stopped);
        }
        let missing = record.as_ref().map_or_else(
            || (slot.first_index..slot.first_index + slot.n).collect(),
            RequestRecord::missing_indices,
        );
        let wanted = (missing.len() as u32).clamp(1, 20);
        if pool_key.as_ref().is_some_and(|k| k.retired().is_some()) {
            // Its key was retired meanwhile: another key takes the slot.
            *lease = None;
            *pool_key = None;
        }
        let (sender, n) = match (pool_key.as_ref(), lease.as_mut()) {
            (Some(sender), Some(l)) => {
                let whole = wanted.min(sender.budget.capacity());
                if l.held() < smallest_part(whole) {
                    // Drained (a request that expired) or never enough: wait for room.
                    tokio::select! {
                        () = l.grow_to(whole) => {}
                        () = self.submits.cancelled() => return Err(Halt::Stopped),
                    }
                }
                // What the lease holds is what goes: the whole request, or the
                // part that fitted in the key's free room (the rest follows later).
                (Arc::clone(sender), l.held().min(whole))
            }
            _ => {
                let leased = tokio::select! {
                    leased = self.keys.lease(wanted, true) => leased,
                    () = self.submits.cancelled() => return Err(Halt::Stopped),
                };
                let Some((sender, l)) = leased else {
                    self.abort(Abort::Auth("no API key of the run is left".into()));
                    return Err(Halt::Stopped);
                };
                let n = l.held();
                *lease = Some(l);
                *pool_key = Some(Arc::clone(&sender));
                (sender, n)
            }
        };
        self.paced(EndpointClass::Submit, &self.submits).await?;
        if !self.kudos_allow(n) {
            self.close_submits(super::Closed::MaxKudos);
            return Err(Halt::Stopped);
        }
        // Before the intent is written: a source that cannot be sent fails the job, never a request.
        let fixed_seed = request_seed(job, record.as_ref(), missing[0]);
        let mut request = request_seeded(job, n, fixed_seed.clone())
            .map_err(|e| Halt::Failed(FailureKind::Permanent, e.to_string()))?;
        let seed = recognisable_seed(fixed_seed.as_deref(), &mut request);
        let gate = tokio::select! {
            gate = sender.gate.enter() => gate,
            () = self.submits.cancelled() => return Err(Halt::Stopped),
        };
        // Write the intent before the POST: a crash now leaves a `Submitting` record.
        let r = match record {
            Some(r) => {
                r.begin_attempt(n, now_ms());
                r
            }
            None => {
                let r = record.insert(fresh_record(job, slot));
                if n != slot.n {
                    // A part of the slot: the intent names what is asked for now.
                    r.state = RequestState::Submitting {
                        attempt: r.attempts,
                        n,
                        since_ms: now_ms(),
                    };
                }
                r
            }
        };
        // Which key sends it, so a later run looks for it (or cancels it) with that key,
        // and its seed, by which the request is told from others on the key.
        r.key_fingerprint = Some(sender.fingerprint.clone());
        r.submit_seed = seed;
        self.ledger
            .put_durable(key, r)
            .await
            .map_err(|e| self.ledger_halt(e))?;

        self.emit(Event::SubmitSent {
            key: sender.fingerprint.clone(),
        });
        let answer = tokio::select! {
            answer = sender.client.submit(&request) => answer,
            // The POST may have reached the Horde: the record stays `Submitting`,
            // and the next run looks for its request before submitting again.
            () = self.submits.cancelled() => return Err(Halt::Stopped),
        };
        match answer {
            Ok(accepted) => {
                self.heard_from_horde();
                self.pacer.submit_accepted();
                drop(gate);
                if accepted.has_no_available_worker() {
                    tracing::warn!(job = %job.name, models = ?job.models, "the Horde has no worker for this request right now");
                }
                r.transition(
                    RequestState::Submitted {
                        horde_id: accepted.id.clone(),
                        n,
                        submitted_ms: now_ms(),
                    },
                    now_ms(),
                );
                // The id is durable before the first poll. If it cannot be made
                // durable, no later run could find the request: cancel it now.
                if let Err(error) = self.ledger.put_durable(key, r).await {
                    let halt = self.ledger_halt(error);
                    self.cancel_untracked(&accepted.id).await;
                    return Err(halt);
                }
                tracing::debug!(job = %job.name, key = %key, id = %accepted.id, n, "submitted");
                Ok(true)
            }
            Err(error) if error.outcome_unknown() => {
                // No other submit until this one's request is found or known lost.
                let doubt = sender.gate.open();
                drop(gate);
                tracing::warn!(job = %job.name, key = %key, %error, "the answer to a submit was lost");
                let adopted = self.resolve_lost_submit(&sender, key, r).await?;
                drop(doubt);
                if adopted {
                    return Ok(true);
                }
                if let Some(wait) =
                    self.after_failure(Call::Submit, &error, failures, Some(&sender))?
                {
                    self.pause(wait, &self.submits).await?;
                }
                Ok(false)
            }
            Err(error) => {
                drop(gate);
                if self.retire_refused_key(&sender, &error, *failures + 1) {
                    // The key is out, not the request: another key submits it.
                    *lease = None;
                    *pool_key = None;
                    return Ok(false);
                }
                if let Some(wait) =
                    self.after_failure(Call::Submit, &error, failures, Some(&sender))?
                {
                    self.pause(wait, &self.submits).await?;
                }
                Ok(false)
            }
        }
    }

    /// Looks for the request of a `Submitting` record; `Ok(true)` when it was
    /// found and the record is now `Submitted` (durably).
    pub(super) async fn resolve_lost_submit(
        &self,
        sender: &PoolKey,
        key: &RequestKey,
        record: &mut RequestRecord,
    ) -> Result<bool, Halt> {
        let RequestState::Submitting { n, .. } = record.state else {
            return Ok(false);
        };
        let found = self
            .find_lost_submit(
                sender,
                &key.to_string(),
                (n, record.submit_seed),
                Instant::now(),
                self.until_expiry(record),
                &self.stop,
            )
            .await;
        match found {
            None => Err(Halt::Stopped),
            Some(Lost::Adopted(horde_id)) => {
                record.transition(
                    RequestState::Submitted {
                        horde_id,
                        n,
                        submitted_ms: record.updated_ms,
                    },
                    now_ms(),
                );
                self.ledger
                    .put_durable(key, record)
                    .await
                    .map_err(|e| self.ledger_halt(e))?;
                Ok(true)
            }
            Some(Lost::NotOnHorde | Lost::Unresolved) => Ok(false),
        }
    }

    /// Retires a key of a pool that the Horde refused, when the failure table
    /// says so and another key is still active (the last one never is).
    fn retire_refused_key(&self, key: &PoolKey, error: &HordeError, attempt: u32) -> bool {
        let pooled = self.keys.keys().len() > 1;
        if !pooled
            || self
                .tuning()
                .policy
                .decide(Call::SubmitFromPool, error, attempt)
                != Action::RetireKey
            || !self.keys.take_out(key, &error.to_string())
        {
            return false;
        }
        self.emit(Event::KeyRetired {
            key: key.fingerprint.clone(),
            reason: key.retired().unwrap_or_else(|| error.to_string()),
        });
        true
    }

    /// How long the request of a `Submitting` record may still be on the
    /// Horde: a request expires when nothing happened to it for that long.
    fn until_expiry(&self, record: &RequestRecord) -> std::time::Duration {
        let since = std::time::Duration::from_millis(now_ms().saturating_sub(record.updated_ms));
        self.tuning().request_expiry.saturating_sub(since)
    }

    pub(super) fn ledger_halt(&self, error: crate::store::StoreError) -> Halt {
        self.abort(Abort::Ledger(error.to_string()));
        Halt::Stopped
    }
}

/// Seeds are drawn below this, so that a request's `seed + k` never wraps.
const SEED_SPACE: u64 = (1 << 32) - (1 << 20);
const _: () = assert!(SEED_SPACE + 20 + 64 < 1 << 32, "seed + k never wraps");

/// The seed a request asks for, so that its images can be told apart from any
/// other request on the key (docs/horde-api.md §9.1): `fixed` (the job's, or
/// the one a reroll chose) when the request already sends one, else a seed the
/// client draws now (with `seed_variation: 1`, the Horde gives image k of the
/// request seed + k, so the images still differ). The caller records it
/// before the POST.
fn recognisable_seed(fixed: Option<&str>, request: &mut GenerationRequest) -> Option<u64> {
    if let Some(fixed) = fixed {
        return Some(horde_seed_number(fixed));
    }
    let seed = fastrand::u64(..SEED_SPACE);
    request
        .params
        .extra
        .insert("seed".into(), Value::from(seed.to_string()));
    if request.params.n > 1 {
        request
            .params
            .extra
            .insert("seed_variation".into(), Value::from(1));
    }
    Some(seed)
}

/// The number the Horde makes of a seed text (its `seed_to_int`): digits as
/// a number, other text as its little-endian bytes, shifted right by 32 bits
/// while 2³² or more.
pub(super) fn horde_seed_number(seed: &str) -> u64 {
    let mut n: u128 = if !seed.is_empty() && seed.bytes().all(|b| b.is_ascii_digit()) {
        seed.parse().unwrap_or(u128::MAX)
    } else {
        seed.bytes()
            .take(16)
            .rev()
            .fold(0u128, |n, b| (n << 8) | u128::from(b))
    };
    while n >= 1 << 32 {
        n >>= 32;
    }
    n as u64
}

/// The Horde request for `n` images of `job`, the first being image `first_index`.
/// Source images are read now and sent as base64 lossless WebP; a source file
/// that is gone or whose bytes changed since the manifest was checked fails
/// (the job must not be generated from other bytes than its key names).
pub fn build_request(
    job: &Job,
    n: u32,
    first_index: u32,
) -> Result<GenerationRequest, crate::manifest::source::SourceError> {
    request_seeded(job, n, job.seed_for(first_index))
}

/// The seed a request whose first image is `first_index` sends: the one
/// `horde-batch reroll` chose for that image (a fixed seed would make the
/// rejected image again), else the job's; `None` leaves it to the Horde. A
/// job with fixed seeds asks for one image per request (`plan::slots`), so
/// the seed is that image's.
fn request_seed(job: &Job, record: Option<&RequestRecord>, first_index: u32) -> Option<String> {
    record
        .and_then(|record| record.reroll_seed(first_index))
        .map(str::to_owned)
        .or_else(|| job.seed_for(first_index))
}

/// [`build_request`] with the seed given.
fn request_seeded(
    job: &Job,
    n: u32,
    seed: Option<String>,
) -> Result<GenerationRequest, crate::manifest::source::SourceError> {
    let mut params = GenerationParams::new(n);
    for (name, value) in job.params.iter() {
        params.extra.insert(name.clone(), value.clone());
    }
    if let Some(seed) = seed {
        params.extra.insert("seed".into(), Value::from(seed));
    }
    let flags = &job.request;
    let mut request = GenerationRequest::new(job.wire_prompt(), job.models.to_vec(), params);
    request.nsfw = flags.nsfw;
    request.censor_nsfw = flags.censor_nsfw;
    request.trusted_workers = flags.trusted_workers;
    request.validated_backends = flags.validated_backends;
    request.slow_workers = flags.slow_workers;
    request.extra_slow_workers = flags.extra_slow_workers;
    request.r2 = flags.r2;
    request.replacement_filter = flags.replacement_filter;
    request.allow_downgrade = flags.allow_downgrade;
    request.disable_batching = flags.disable_batching;
    request.workers = flags.workers.clone();
    request.worker_blacklist = flags.worker_blacklist;
    request.webhook = flags.webhook.clone();
    request.style = flags.style.clone();
    if let Some(sources) = &job.sources {
        let wire = crate::manifest::source::wire_sources(sources)?;
        request.source_image = Some(Base64Image(wire.image));
        request.source_processing = Some(wire.processing.as_str().to_owned());
        request.source_mask = wire.mask.map(Base64Image);
        request.extra_source_images = wire
            .extra
            .into_iter()
            .map(|(image, strength)| ExtraSourceImage {
                image: Base64Image(image),
                strength: Some(strength),
            })
            .collect();
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_become_the_number_the_horde_makes_of_them() {
        assert_eq!(horde_seed_number("42"), 42);
        assert_eq!(horde_seed_number("4294967295"), 4_294_967_295);
        // 2³² and more are shifted right by 32 bits, as the server does.
        assert_eq!(horde_seed_number("4294967296"), 1);
        // Text: its little-endian bytes.
        assert_eq!(
            horde_seed_number("ab"),
            u64::from(b'a') | u64::from(b'b') << 8
        );
    }
}
