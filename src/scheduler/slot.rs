//! One request slot's life: submit, poll, retrieve, save, retry.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use super::{
    backoff, fresh_record, Abort, EndpointClass, Engine, Lease, OnStop, RunStats, SlotOutcome,
};
use crate::horde::{
    FailureClass, Generation, GenerationParams, GenerationRequest, HordeError, ImageSource,
    RequestStatus,
};
use crate::manifest::{CensoredPolicy, Job};
use crate::output::{
    format_timestamp, IndexRow, NameFields, OutputError, Sidecar, HORDE_BATCH_VERSION,
};
use crate::plan::Slot;
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState, SavedImage};

/// Consecutive transient errors one slot tolerates before it gives up.
const MAX_TRANSIENT: u32 = 12;
/// Largest image accepted from an R2 URL.
const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;
/// Polls of `/check` are never closer than the server's 1 s cache.
const MIN_POLL: Duration = Duration::from_secs(1);
const MAX_POLL: Duration = Duration::from_secs(10);

/// How following a submitted request ended.
pub(super) enum Followed {
    /// `/status` was read and its images saved (maybe fewer than asked).
    Retrieved,
    /// The request is gone from the Horde (expired or never existed).
    Expired,
    /// The run is stopping.
    Stopped,
    Failed(String, String),
}

/// Why a step could not go on.
pub(super) enum Halt {
    Stopped,
    Failed(String, String),
}

impl Engine {
    /// Drives one slot until its images are on disk, it fails, or the run stops.
    pub(super) async fn drive(
        self: &Arc<Self>,
        job: &Job,
        slot: Slot,
        record: Option<RequestRecord>,
        lease: Option<Lease>,
    ) -> SlotOutcome {
        let key = RequestKey::new(job.key.to_string(), slot.slot);
        let mut lease = lease;
        let mut record = record;
        let mut retries_used = 0u32;
        let mut transient = 0u32;
        // Set when the request on the Horde is finished with but images are missing.
        let mut resubmit = false;
        let retries = self.manifest.run.retries;
        loop {
            if let Some(r) = &record {
                if r.missing_indices().is_empty() && r.assigned.is_empty() {
                    return self
                        .finish(
                            &key,
                            record.take().unwrap_or_else(|| fresh_record(job, slot)),
                        )
                        .await;
                }
            }
            match record.as_ref().map(|r| r.state.clone()) {
                Some(RequestState::Submitted { horde_id, .. }) if !resubmit => {
                    let r = record.as_mut().expect("matched Some above");
                    match self.follow(job, &key, r, &horde_id, &mut lease).await {
                        Followed::Retrieved => {
                            if !r.missing_indices().is_empty() {
                                retries_used += 1;
                                resubmit = true;
                                RunStats::bump(&self.stats.resubmits);
                                tracing::info!(job = %job.name, key = %key, missing = r.missing_indices().len(), "request came back short; resubmitting the missing images");
                            }
                        }
                        Followed::Expired => {
                            retries_used += 1;
                            resubmit = true;
                            RunStats::bump(&self.stats.resubmits);
                            self.stats.failure("expired");
                            tracing::warn!(job = %job.name, key = %key, id = %horde_id, "request expired on the Horde; resubmitting");
                        }
                        Followed::Stopped => return SlotOutcome::Stopped,
                        Followed::Failed(class, message) => {
                            return self.fail(&key, r, class, message).await
                        }
                    }
                    if retries_used > retries {
                        let have = r.images.len();
                        let message = format!(
                            "gave up after {} attempts: {have} of {} images",
                            r.attempts, r.n
                        );
                        return self.fail(&key, r, "incomplete".into(), message).await;
                    }
                }
                _ => match self
                    .submit(job, slot, &key, &mut record, &mut lease, &mut transient)
                    .await
                {
                    Ok(submitted) => {
                        resubmit = false;
                        if submitted {
                            transient = 0;
                        }
                    }
                    Err(Halt::Stopped) => return SlotOutcome::Stopped,
                    Err(Halt::Failed(class, message)) => {
                        let mut r = record.take().unwrap_or_else(|| fresh_record(job, slot));
                        return self.fail(&key, &mut r, class, message).await;
                    }
                },
            }
        }
    }

    async fn finish(&self, key: &RequestKey, mut record: RequestRecord) -> SlotOutcome {
        if !matches!(record.state, RequestState::Done) {
            record.transition(RequestState::Done, now_ms());
            if let Err(e) = self.store.put_durable(key, &record).await {
                self.abort(Abort::Ledger(e.to_string()));
            }
        }
        SlotOutcome::Done {
            files: record
                .images
                .values()
                .map(|i| i.file_name.clone())
                .collect(),
            kudos: record.kudos_charged,
            attempts: record.attempts,
        }
    }

    async fn fail(
        &self,
        key: &RequestKey,
        record: &mut RequestRecord,
        class: String,
        message: String,
    ) -> SlotOutcome {
        tracing::warn!(key = %key, %class, %message, "request failed");
        self.stats.failure(&class);
        record.transition(
            RequestState::Failed {
                class: class.clone(),
                message: message.clone(),
            },
            now_ms(),
        );
        if let Err(e) = self.store.put_durable(key, record).await {
            self.abort(Abort::Ledger(e.to_string()));
        }
        SlotOutcome::Failed {
            class,
            message,
            images_saved: record.images.len() as u32,
        }
    }

    /// Sends one submit for the slot's missing images: `Ok(true)` when the record is
    /// now `Submitted`, `Ok(false)` after a failure worth another try (already waited out).
    async fn submit(
        &self,
        job: &Job,
        slot: Slot,
        key: &RequestKey,
        record: &mut Option<RequestRecord>,
        lease: &mut Option<Lease>,
        transient: &mut u32,
    ) -> Result<bool, Halt> {
        if self.submits.is_cancelled() {
            return Err(Halt::Stopped);
        }
        let missing = record.as_ref().map_or_else(
            || (slot.first_index..slot.first_index + slot.n).collect(),
            RequestRecord::missing_indices,
        );
        let n = (missing.len() as u32).clamp(1, self.budget.capacity().min(20));
        match lease {
            Some(l) => {
                tokio::select! {
                    () = l.grow_to(n) => {}
                    () = self.submits.cancelled() => return Err(Halt::Stopped),
                }
            }
            None => {
                tokio::select! {
                    l = self.budget.lease(n) => *lease = Some(l),
                    () = self.submits.cancelled() => return Err(Halt::Stopped),
                }
            }
        }
        tokio::select! {
            () = self.pacer.ready(EndpointClass::Submit) => {}
            () = self.submits.cancelled() => return Err(Halt::Stopped),
        }
        if !self.kudos_allow(n) {
            self.close_submits(super::Closed::MaxKudos);
            return Err(Halt::Stopped);
        }
        // Write the intent before the POST: a crash now leaves a `Submitting` record.
        let r = match record {
            Some(r) => {
                r.begin_attempt(n, now_ms());
                r
            }
            None => record.insert(fresh_record(job, slot)),
        };
        self.store
            .put_durable(key, r)
            .await
            .map_err(|e| self.ledger_halt(e))?;

        let request = build_request(job, n, missing[0]);
        RunStats::bump(&self.stats.submits);
        match self.client.submit(&request).await {
            Ok(accepted) => {
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
                // The id is durable before the first poll.
                self.store
                    .put_durable(key, r)
                    .await
                    .map_err(|e| self.ledger_halt(e))?;
                tracing::debug!(job = %job.name, key = %key, id = %accepted.id, n, "submitted");
                Ok(true)
            }
            Err(error) => self
                .submit_failed(job, error, transient)
                .await
                .map(|()| false),
        }
    }

    async fn submit_failed(
        &self,
        job: &Job,
        error: HordeError,
        transient: &mut u32,
    ) -> Result<(), Halt> {
        let class = error.class();
        match class {
            FailureClass::RateLimited => {
                RunStats::bump(&self.stats.rate_limited);
                self.pacer.back_off(
                    EndpointClass::Submit,
                    error.retry_after().unwrap_or(Duration::from_secs(1)),
                );
                Ok(())
            }
            FailureClass::ConcurrencyFull => {
                RunStats::bump(&self.stats.concurrency_full);
                if let Some(limit) = error.concurrency_limit() {
                    let lower = limit.min(self.budget.capacity().saturating_sub(1)).max(1);
                    tracing::info!(
                        limit,
                        budget = lower,
                        "the Horde's concurrency limit is lower than the budget; lowering it"
                    );
                    self.budget.set_capacity(lower);
                }
                self.pause(error.retry_after().unwrap_or(Duration::from_secs(2)))
                    .await
            }
            FailureClass::Auth => {
                self.abort(Abort::Auth(error.to_string()));
                Err(Halt::Failed(class.as_str().into(), error.to_string()))
            }
            FailureClass::Permanent
            | FailureClass::Kudos
            | FailureClass::Expired
            | FailureClass::Redirected => {
                Err(Halt::Failed(class.as_str().into(), error.to_string()))
            }
            FailureClass::Transient | FailureClass::Maintenance | FailureClass::Timeout => {
                RunStats::bump(&self.stats.transient_errors);
                if error.outcome_unknown() {
                    tracing::warn!(job = %job.name, %error, "the answer to a submit was lost; the Horde may hold a request this run cannot see");
                }
                *transient += 1;
                if *transient > MAX_TRANSIENT {
                    return Err(Halt::Failed(
                        class.as_str().into(),
                        format!("{error} (after {MAX_TRANSIENT} tries)"),
                    ));
                }
                tracing::info!(%error, "transient error on submit; backing off");
                self.pause(error.retry_after().unwrap_or_else(|| backoff(*transient)))
                    .await
            }
        }
    }

    async fn pause(&self, delay: Duration) -> Result<(), Halt> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = self.submits.cancelled() => Err(Halt::Stopped),
        }
    }

    fn ledger_halt(&self, error: crate::store::StoreError) -> Halt {
        self.abort(Abort::Ledger(error.to_string()));
        Halt::Stopped
    }

    /// Polls a submitted request until done, then saves its images.
    async fn follow(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        lease: &mut Option<Lease>,
    ) -> Followed {
        let n = match record.state {
            RequestState::Submitted { n, .. } => n,
            _ => 0,
        };
        RunStats::bump(&self.stats.requests_in_flight);
        self.stats
            .images_in_flight
            .fetch_add(u64::from(n), Ordering::Relaxed);
        let followed = self.follow_inner(job, key, record, id, lease).await;
        self.stats
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        self.stats
            .images_in_flight
            .fetch_sub(u64::from(n), Ordering::Relaxed);
        followed
    }

    async fn follow_inner(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        lease: &mut Option<Lease>,
    ) -> Followed {
        let mut interval = MIN_POLL;
        let mut transient = 0u32;
        let mut no_worker_since: Option<Instant> = None;
        loop {
            let jittered = interval.mul_f64(0.9 + fastrand::f64() * 0.2);
            tokio::select! {
                () = tokio::time::sleep(jittered) => {}
                () = self.stop.cancelled() => return self.stop_request(job, key, record, id).await,
            }
            self.pacer.ready(EndpointClass::Check).await;
            RunStats::bump(&self.stats.checks);
            match self.client.check(id).await {
                Ok(check) => {
                    transient = 0;
                    if let Some(l) = lease.as_mut() {
                        l.shrink_to(check.waiting);
                    }
                    self.stats
                        .queue_position
                        .store(u64::from(check.queue_position), Ordering::Relaxed);
                    self.stats
                        .wait_time
                        .store(u64::from(check.wait_time), Ordering::Relaxed);
                    if check.done || check.faulted {
                        break;
                    }
                    if check.is_possible {
                        no_worker_since = None;
                    } else {
                        let since = *no_worker_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > self.manifest.run.no_worker_timeout {
                            self.cancel_quietly(id).await;
                            let message = format!(
                                "no worker could serve the request for {}",
                                humantime::format_duration(self.manifest.run.no_worker_timeout)
                            );
                            return Followed::Failed("no_worker".into(), message);
                        }
                    }
                    // Poll again when the Horde expects the request to be done.
                    let estimate = Duration::from_secs(u64::from(check.wait_time));
                    interval = estimate.clamp(MIN_POLL, MAX_POLL);
                }
                Err(error) => match error.class() {
                    FailureClass::Expired => return Followed::Expired,
                    FailureClass::RateLimited => {
                        RunStats::bump(&self.stats.rate_limited);
                        self.pacer.back_off(
                            EndpointClass::Check,
                            error.retry_after().unwrap_or(Duration::from_secs(1)),
                        );
                    }
                    _ => {
                        RunStats::bump(&self.stats.transient_errors);
                        transient += 1;
                        interval = backoff(transient.min(4)).min(Duration::from_secs(30));
                        tracing::info!(%error, "polling failed; will poll again");
                    }
                },
            }
        }
        *lease = None;
        match self.fetch_status(id, false).await {
            Ok(status) if status.generations.len() < submitted_n(record) as usize => {
                // The Horde drops an image whose attempts all faulted; the request still ends done.
                for _ in status.generations.len()..submitted_n(record) as usize {
                    self.stats.failure("faulted");
                }
                self.saved_or_halted(job, key, record, id, &status).await
            }
            Ok(status) => self.saved_or_halted(job, key, record, id, &status).await,
            Err(Some(followed)) => followed,
            Err(None) => Followed::Stopped,
        }
    }

    /// Saves a finished request's images.
    async fn saved_or_halted(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        status: &RequestStatus,
    ) -> Followed {
        match self.save_generations(job, key, record, id, status).await {
            Ok(()) => Followed::Retrieved,
            Err(Halt::Stopped) => Followed::Stopped,
            Err(Halt::Failed(class, message)) => Followed::Failed(class, message),
        }
    }

    /// `GET /status` (or `DELETE` to cancel), retrying transient errors a few times.
    async fn fetch_status(
        &self,
        id: &str,
        cancel: bool,
    ) -> Result<RequestStatus, Option<Followed>> {
        let mut transient = 0u32;
        loop {
            self.pacer.ready(EndpointClass::Status).await;
            let result = if cancel {
                RunStats::bump(&self.stats.cancels);
                self.client.cancel(id).await
            } else {
                RunStats::bump(&self.stats.status_calls);
                self.client.status(id).await
            };
            match result {
                Ok(status) => return Ok(status),
                Err(error) => match error.class() {
                    FailureClass::Expired => return Err(Some(Followed::Expired)),
                    FailureClass::RateLimited => {
                        RunStats::bump(&self.stats.rate_limited);
                        let delay = error.retry_after().unwrap_or(Duration::from_secs(60));
                        self.pacer.back_off(EndpointClass::Status, delay);
                    }
                    FailureClass::Permanent | FailureClass::Auth | FailureClass::Kudos => {
                        tracing::warn!(%error, "reading the request's status failed for good");
                        return Err(Some(Followed::Failed(
                            error.class().as_str().into(),
                            error.to_string(),
                        )));
                    }
                    _ => {
                        tracing::info!(%error, "reading the request's status failed; trying again");
                        RunStats::bump(&self.stats.transient_errors);
                        transient += 1;
                        if transient > MAX_TRANSIENT {
                            return Err(Some(Followed::Failed(
                                error.class().as_str().into(),
                                error.to_string(),
                            )));
                        }
                        // Cancelling must not wait long: the user is waiting to exit.
                        let delay = if cancel {
                            Duration::from_millis(500)
                        } else {
                            backoff(transient.min(4))
                        };
                        tokio::time::sleep(delay).await;
                    }
                },
            }
        }
    }

    /// The run is stopping: cancel or detach this request.
    pub(super) async fn stop_request(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
    ) -> Followed {
        if self.on_stop() == OnStop::Detach
            || self
                .aborted()
                .is_some_and(|a| matches!(a, Abort::Ledger(_)))
        {
            return Followed::Stopped;
        }
        match self.fetch_status(id, true).await {
            Ok(status) => {
                // Images the cancel answer already holds are paid for: keep them.
                let _ = self.save_generations(job, key, record, id, &status).await;
                record.transition(
                    RequestState::Cancelled {
                        horde_id: id.to_owned(),
                        cancelled_ms: now_ms(),
                    },
                    now_ms(),
                );
                if let Err(e) = self.store.put_durable(key, record).await {
                    tracing::error!(error = %e, "cannot record a cancel");
                }
                tracing::info!(key = %key, id, "cancelled");
            }
            Err(Some(Followed::Expired)) => {
                record.transition(
                    RequestState::Cancelled {
                        horde_id: id.to_owned(),
                        cancelled_ms: now_ms(),
                    },
                    now_ms(),
                );
                let _ = self.store.put_durable(key, record).await;
            }
            Err(_) => {
                tracing::warn!(key = %key, id, "could not cancel; a later run or `cancel` will retry")
            }
        }
        Followed::Stopped
    }

    async fn cancel_quietly(&self, id: &str) {
        RunStats::bump(&self.stats.cancels);
        if let Err(error) = self.client.cancel(id).await {
            tracing::warn!(%error, "cancel failed");
        }
    }

    /// Assigns the request's new generations to missing image indices, then
    /// writes each image and sidecar and records it as saved.
    async fn save_generations(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        status: &RequestStatus,
    ) -> Result<(), Halt> {
        // The figure is what this Horde id consumed so far; a resumed run that reads the
        // same id again may count it twice, which the summary tolerates as an estimate.
        let kudos = status.check.kudos.max(0.0);
        record.kudos_charged += kudos;
        self.stats
            .kudos_millis
            .fetch_add((kudos * 1000.0) as u64, Ordering::Relaxed);

        let known: HashSet<&str> = record
            .images
            .values()
            .map(|i| i.generation_id.as_str())
            .chain(record.assigned.values().map(String::as_str))
            .collect();
        let mut free: Vec<u32> = record
            .missing_indices()
            .into_iter()
            .filter(|i| !record.assigned.contains_key(i))
            .collect();
        free.reverse();
        let mut new_assignments = Vec::new();
        for generation in &status.generations {
            if known.contains(generation.id.as_str()) {
                continue;
            }
            if generation.censored && self.manifest.run.on_censored == CensoredPolicy::Reroll {
                RunStats::bump(&self.stats.images_censored);
                self.stats.failure("censored");
                continue;
            }
            let Some(index) = free.pop() else { break };
            new_assignments.push((index, generation.id.clone()));
        }
        if !new_assignments.is_empty() {
            // Which generation goes to which index is durable before any file is written,
            // so a crash in between resolves to the same names.
            record.assigned.extend(new_assignments);
            self.store
                .put_durable(key, record)
                .await
                .map_err(|e| self.ledger_halt(e))?;
        }

        let assigned: Vec<(u32, String)> = record
            .assigned
            .iter()
            .map(|(i, g)| (*i, g.clone()))
            .collect();
        let mut status = std::borrow::Cow::Borrowed(status);
        let mut refetched = false;
        for (index, generation_id) in assigned {
            let Some(generation) = status
                .generations
                .iter()
                .find(|g| g.id == generation_id)
                .cloned()
            else {
                // The Horde no longer lists it (expired between calls): the index is missing again.
                record.assigned.remove(&index);
                continue;
            };
            if generation.censored && self.manifest.run.on_censored == CensoredPolicy::Skip {
                RunStats::bump(&self.stats.images_censored);
                let skipped = SavedImage {
                    generation_id: generation.id.clone(),
                    file_name: String::new(),
                    censored: true,
                };
                record.save_image(index, skipped, now_ms());
                continue;
            }
            let bytes = match self.image_bytes(&generation).await {
                Ok(bytes) => bytes,
                Err(error) if error.class() == FailureClass::Expired && !refetched => {
                    // The download URL lapsed (30 minutes): fresh URLs come with a new status.
                    refetched = true;
                    match self.fetch_status(id, false).await {
                        Ok(fresh) => {
                            status = std::borrow::Cow::Owned(fresh);
                            match status.generations.iter().find(|g| g.id == generation_id) {
                                Some(g) => match self.image_bytes(g).await {
                                    Ok(bytes) => bytes,
                                    Err(_) => {
                                        record.assigned.remove(&index);
                                        continue;
                                    }
                                },
                                None => {
                                    record.assigned.remove(&index);
                                    continue;
                                }
                            }
                        }
                        Err(_) => {
                            record.assigned.remove(&index);
                            continue;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, generation = %generation.id, "could not fetch an image; it will be asked for again");
                    self.stats.failure("download");
                    record.assigned.remove(&index);
                    continue;
                }
            };
            match self
                .write_image(job, record, id, index, &generation, bytes, &status)
                .await
            {
                Ok(file_name) => {
                    let saved = SavedImage {
                        generation_id: generation.id.clone(),
                        file_name,
                        censored: generation.censored,
                    };
                    record.save_image(index, saved, now_ms());
                }
                Err(OutputError::Webp { error, .. }) => {
                    tracing::warn!(%error, generation = %generation.id, "the Horde sent a broken image; it will be asked for again");
                    self.stats.failure("bad_image");
                    record.assigned.remove(&index);
                }
                Err(error @ OutputError::Collision { .. }) => {
                    // A different image already has this name: the ledger lost track of it.
                    self.abort(Abort::Ledger(format!(
                        "{error}; the ledger does not know this file: run with --rebuild-state"
                    )));
                    let _ = self.store.put_durable(key, record).await;
                    return Err(Halt::Stopped);
                }
                Err(error) => {
                    self.abort(Abort::Output(error.to_string()));
                    let _ = self.store.put_durable(key, record).await;
                    return Err(Halt::Stopped);
                }
            }
        }
        // Not flushed here: the next step of this slot (done, resubmit, fail, cancel)
        // writes and flushes the record anyway, and the files are already durable, so
        // a crash before then only makes the resumed run rewrite them idempotently.
        self.store.put(key, record).map_err(|e| self.ledger_halt(e))
    }

    async fn image_bytes(&self, generation: &Generation) -> Result<Vec<u8>, HordeError> {
        match generation.image_source() {
            ImageSource::Base64(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| unusable_image(format!("image is not base64: {e}"))),
            ImageSource::Url(url) => {
                RunStats::bump(&self.stats.downloads);
                self.client
                    .download_image(&url, MAX_IMAGE_BYTES, self.manifest.run.download_timeout)
                    .await
            }
            ImageSource::Unavailable => Err(unusable_image(
                "the Horde could not provide the image (N/A)".into(),
            )),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_image(
        &self,
        job: &Job,
        record: &RequestRecord,
        id: &str,
        index: u32,
        generation: &Generation,
        bytes: Vec<u8>,
        status: &RequestStatus,
    ) -> Result<String, OutputError> {
        let key = job.key.to_string();
        let width = param_u32(job, "width");
        let height = param_u32(job, "height");
        let manifest_name = self.manifest.name().to_owned();
        let name = self.template.render(&NameFields {
            manifest: &manifest_name,
            job: &job.name,
            key: &key,
            index,
            seed: &generation.seed,
            model: &generation.model,
            width,
            height,
        })?;
        let n = match record.state {
            RequestState::Submitted { n, .. } => n,
            _ => record.n,
        };
        let params = request_params(job, n, index);
        let now = format_timestamp(std::time::SystemTime::now());
        let submitted_at = format_timestamp(
            std::time::UNIX_EPOCH + Duration::from_millis(record.updated_ms.min(now_ms())),
        );
        let sidecar = Sidecar {
            schema: Sidecar::SCHEMA,
            file_name: String::new(),
            manifest: self.manifest.file.path.display().to_string(),
            manifest_name: manifest_name.clone(),
            job: job.name.to_string(),
            job_key: key.clone(),
            image_index: index,
            prompt_template: match &job.negative_template {
                Some(negative) => format!("{} ### {negative}", job.prompt_template),
                None => job.prompt_template.to_string(),
            },
            prompt: job.prompt.clone(),
            negative_prompt: job.negative.clone(),
            model: generation.model.clone(),
            params,
            request: request_flags_value(job),
            seed: generation.seed.clone(),
            batch_index: generation.batch_index(),
            horde_request_id: id.to_owned(),
            generation_id: generation.id.clone(),
            worker_id: generation.worker_id.clone(),
            worker_name: generation.worker_name.clone(),
            censored: generation.censored,
            gen_metadata: serde_json::to_value(&generation.gen_metadata).unwrap_or(Value::Null),
            kudos: status.check.kudos,
            submitted_at,
            completed_at: now,
            horde_batch_version: HORDE_BATCH_VERSION.to_owned(),
        };
        let output = self.output.clone();
        let index_enabled = self.manifest.output.index;
        let row_base = IndexRow {
            file_name: String::new(),
            text: job.prompt.clone(),
            negative_prompt: job.negative.clone().unwrap_or_default(),
            job: job.name.to_string(),
            job_key: key,
            image_index: index,
            model: generation.model.clone(),
            seed: generation.seed.clone(),
            width,
            height,
            steps: param_u32(job, "steps"),
            cfg_scale: job
                .params
                .get("cfg_scale")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            sampler_name: job
                .params
                .get("sampler_name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            censored: generation.censored,
            horde_request_id: id.to_owned(),
            generation_id: generation.id.clone(),
        };
        let written =
            tokio::task::spawn_blocking(move || -> Result<(String, bool), OutputError> {
                let written = output.write_image(&name, &bytes, &sidecar)?;
                if index_enabled {
                    output.append_index(&IndexRow {
                        file_name: written.file_name.clone(),
                        ..row_base
                    })?;
                }
                Ok((written.file_name, written.already_present))
            })
            .await
            .map_err(|e| OutputError::Io {
                action: "write image",
                path: self.output.root().to_owned(),
                error: std::io::Error::other(e.to_string()),
            })??;
        if written.1 {
            RunStats::bump(&self.stats.images_already_present);
        } else {
            RunStats::bump(&self.stats.images_saved);
        }
        Ok(written.0)
    }
}

/// A status answer whose image field cannot be turned into bytes.
fn unusable_image(reason: String) -> HordeError {
    HordeError::new(
        crate::horde::Endpoint::new(crate::horde::Operation::Status),
        crate::horde::HordeErrorKind::Decode {
            status: 200,
            reason,
            snippet: String::new(),
        },
    )
}

/// Images the request on the Horde was asked for.
fn submitted_n(record: &RequestRecord) -> u32 {
    match record.state {
        RequestState::Submitted { n, .. } => n,
        _ => record.n,
    }
}

fn param_u32(job: &Job, name: &str) -> u32 {
    job.params
        .get(name)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

/// Every parameter as sent for a request of `n` images starting at `first_index`.
fn request_params(job: &Job, n: u32, first_index: u32) -> Value {
    let mut params = (*job.params).clone();
    params.insert("n".into(), Value::from(n));
    if let Some(seed) = job.seed_for(first_index) {
        params.insert("seed".into(), Value::from(seed));
    }
    Value::Object(params)
}

fn request_flags_value(job: &Job) -> Value {
    serde_json::to_value(&*job.request).unwrap_or(Value::Null)
}

/// The Horde request for `n` images of `job`, the first being image `first_index`.
pub fn build_request(job: &Job, n: u32, first_index: u32) -> GenerationRequest {
    let mut params = GenerationParams::new(n);
    for (name, value) in job.params.iter() {
        params.extra.insert(name.clone(), value.clone());
    }
    if let Some(seed) = job.seed_for(first_index) {
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
    request
}
