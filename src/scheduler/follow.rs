//! Following a request on the Horde: check it when the poll planner
//! expects it done, read its status once, and cancel it when the run stops
//! or gives up on it (keeping the images the cancel's answer holds).
//!
//! Must not submit; saving the images is `save`'s.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::policy::{Action, Call};
use super::poll::Ticket;
use super::save::submitted_n;
use super::slot::{Followed, Halt};
use super::{Abort, EndpointClass, Engine, Event, FailureKind, Lease, OnStop};
use crate::horde::WorkerSummary;
use crate::horde::{
    Endpoint, FailureClass, HordeError, HordeErrorKind, Operation, RequestStatus, TransportStage,
};
use crate::manifest::source::SourceProcessing;
use crate::manifest::Job;
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState};
use std::sync::atomic::Ordering;

impl Engine {
    /// Polls a submitted request until done, then saves its images.
    pub(super) async fn follow(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        lease: &mut Option<Lease>,
    ) -> Followed {
        let n = submitted_n(record);
        self.emit(Event::Following {
            key: key.to_string(),
            horde_id: id.to_owned(),
            images: n,
        });
        self.accounting
            .images_in_flight
            .fetch_add(u64::from(n), Ordering::Relaxed);
        let pressed = lease.as_ref().is_some_and(Lease::pressed);
        // A part of the slot (its key had less room) keeps room for the rest
        // as its images leave the queue, so the rest goes as soon as it is
        // back instead of losing the room to the next slot.
        let reserve = (record.missing_indices().len() as u32).saturating_sub(n);
        let mut ticket = self.planner.register(n, pressed);
        if reserve > 0 {
            // The slot's rest waits for this part: a submit held back by it.
            self.planner.holds_back_a_submit(&mut ticket);
        }
        let followed = match self
            .poll_until_done(job, id, (lease, reserve), &mut ticket)
            .await
        {
            Ok(()) => {
                if let Some(l) = lease.as_mut() {
                    l.shrink_to(reserve);
                }
                if reserve == 0 {
                    *lease = None;
                }
                match self.fetch_status(id).await {
                    Ok(status) => {
                        // The Horde drops an image whose attempts all faulted; the request still ends done.
                        for _ in status.generations.len()..n as usize {
                            self.emit(Event::Failure(FailureKind::Faulted));
                        }
                        self.saved_or_halted(job, key, record, id, &status).await
                    }
                    Err(halt) => self.followed_after(halt, job, key, record, id).await,
                }
            }
            Err(halt) => self.followed_after(halt, job, key, record, id).await,
        };
        self.planner.unregister(&ticket);
        self.emit(Event::Released {
            key: key.to_string(),
        });
        self.accounting
            .images_in_flight
            .fetch_sub(u64::from(n), Ordering::Relaxed);
        followed
    }

    pub(super) async fn followed_after(
        &self,
        halt: Halt,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
    ) -> Followed {
        match halt {
            Halt::Stopped => self.stop_request(job, key, record, id).await,
            Halt::Resubmit => Followed::Expired,
            Halt::Failed(kind, message) => Followed::Failed(kind, message),
        }
    }

    /// Checks the request until the Horde has nothing left to make for it.
    pub(super) async fn poll_until_done(
        &self,
        job: &Job,
        id: &str,
        (lease, reserve): (&mut Option<Lease>, u32),
        ticket: &mut Ticket,
    ) -> Result<(), Halt> {
        let mut failures = 0u32;
        let mut hint = 0u32;
        let mut retry_wait: Option<Duration> = None;
        let mut no_worker_since: Option<Instant> = None;
        let mut late_since: Option<Instant> = None;
        loop {
            match retry_wait.take() {
                Some(wait) => self.pause(wait, &self.stop).await?,
                None => self.wait_for_check(ticket, hint).await?,
            }
            self.paced(EndpointClass::Check, &self.stop).await?;
            let answer = tokio::select! {
                answer = self.client.check(id) => answer,
                () = self.stop.cancelled() => return Err(Halt::Stopped),
            };
            let check = match answer {
                Ok(check) => {
                    self.heard_from_horde();
                    check
                }
                Err(error) => {
                    retry_wait = self.after_failure(Call::Check, &error, &mut failures, None)?;
                    continue;
                }
            };
            failures = 0;
            tracing::debug!(
                id,
                waiting = check.waiting,
                processing = check.processing,
                finished = check.finished,
                done = check.done,
                "checked"
            );
            hint = check.wait_time;
            if let Some(l) = lease.as_mut() {
                l.shrink_to(check.waiting.max(reserve));
            }
            self.emit(Event::Checked {
                queue_position: check.queue_position,
                wait_time: check.wait_time,
            });
            self.planner
                .observe(ticket, check.finished, check.waiting, check.processing);
            if check.done || check.faulted {
                if check.processing == 0 {
                    return Ok(());
                }
                // A faulted request reads done while an image is still being made (docs/horde-api.md
                // §9.1); that image is paid for and arrives seconds later.
                let since = *late_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.tuning().late_image_wait {
                    tracing::warn!(id, processing = check.processing, "the Horde still reports images processing for a finished request; reading its status without them");
                    return Ok(());
                }
                tracing::info!(
                    id,
                    processing = check.processing,
                    "the request reads done while an image is still being made; waiting for it"
                );
                continue;
            }
            if check.is_possible {
                no_worker_since = None;
            } else {
                if no_worker_since.is_none() {
                    // Said at once, not after the timeout: a night is long to wait for nothing.
                    let why = self.why_no_worker(job).await;
                    tracing::warn!(
                        job = %job.name,
                        id,
                        reason = %why,
                        timeout = %humantime::format_duration(self.manifest.run.no_worker_timeout),
                        "the Horde says no worker can serve this request now; it waits up to \
                         run.timeouts.no_worker, then the job fails"
                    );
                }
                let since = *no_worker_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.manifest.run.no_worker_timeout {
                    let message = format!(
                        "no worker could serve the request for {}",
                        humantime::format_duration(self.manifest.run.no_worker_timeout)
                    );
                    return Err(Halt::Failed(FailureKind::NoWorker, message));
                }
            }
        }
    }

    /// Sleeps until the planner's time for the next check, planning again
    /// whenever it learns something (the time may move earlier).
    pub(super) async fn wait_for_check(&self, ticket: &Ticket, hint: u32) -> Result<(), Halt> {
        // A little jitter, so that many requests do not check in step.
        let jitter = self.tuning().poll_floor.mul_f64(fastrand::f64() * 0.2);
        loop {
            let seen = self.planner.version();
            let held_back = self.keys.submit_waits();
            let at = self.planner.next_check(ticket, hint, held_back) + jitter;
            tokio::select! {
                () = tokio::time::sleep_until(at) => return Ok(()),
                () = self.planner.changed_since(seen) => {}
                () = self.stop.cancelled() => return Err(Halt::Stopped),
            }
        }
    }

    /// Saves a finished request's images.
    pub(super) async fn saved_or_halted(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        status: &RequestStatus,
    ) -> Followed {
        match self.save_generations(job, key, record, id, status).await {
            Ok(()) => Followed::Retrieved,
            Err(halt) => self.followed_after(halt, job, key, record, id).await,
        }
    }

    /// `GET /status`, retried as the failure policy says.
    pub(super) async fn fetch_status(&self, id: &str) -> Result<RequestStatus, Halt> {
        let mut failures = 0u32;
        loop {
            self.paced(EndpointClass::Status, &self.stop).await?;
            self.emit(Event::StatusRead);
            let answer = tokio::select! {
                answer = self.client.status(id) => answer,
                () = self.stop.cancelled() => return Err(Halt::Stopped),
            };
            match answer {
                Ok(status) => {
                    self.heard_from_horde();
                    return Ok(status);
                }
                Err(error) => {
                    if let Some(wait) =
                        self.after_failure(Call::Status, &error, &mut failures, None)?
                    {
                        self.pause(wait, &self.stop).await?;
                    }
                }
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
        if !self.cancel_request(job, key, record, id).await {
            tracing::warn!(key = %key, id, "could not cancel; a later run or `cancel` will retry");
        }
        Followed::Stopped
    }

    /// Cancels a request whose id the ledger could not record (one try, bounded).
    pub(super) async fn cancel_untracked(&self, id: &str) {
        self.emit(Event::CancelSent);
        match tokio::time::timeout(self.tuning().cancel_timeout, self.client.cancel(id)).await {
            Ok(Ok(_)) => tracing::warn!(id, "cancelled a request the ledger could not record"),
            Ok(Err(error)) => {
                tracing::error!(id, %error, "a request the ledger could not record could not be cancelled either; it expires on the Horde")
            }
            Err(_) => tracing::error!(id, "cancelling a request the ledger could not record timed out; it expires on the Horde"),
        }
    }

    /// `DELETE`s the request, each try bounded by the cancel timeout, keeps the
    /// images its answer holds (they are paid for) and records the cancel.
    /// Returns false when the request may still be on the Horde.
    pub(super) async fn cancel_request(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
    ) -> bool {
        let mut attempt = 0;
        let status = loop {
            attempt += 1;
            self.emit(Event::CancelSent);
            let timeout = self.tuning().cancel_timeout;
            let error = match tokio::time::timeout(timeout, self.client.cancel(id)).await {
                Ok(Ok(status)) => {
                    self.heard_from_horde();
                    break Some(status);
                }
                Ok(Err(error)) => error,
                Err(_elapsed) => cancel_timed_out(timeout),
            };
            match self.tuning().policy.decide(Call::Cancel, &error, attempt) {
                Action::Retry { after, .. } => {
                    tracing::info!(id, %error, "cancel failed; trying again");
                    tokio::time::sleep(after).await;
                }
                // Gone already: nothing is left to cancel.
                Action::GiveUp {
                    class: FailureClass::Expired,
                } => break None,
                _ => {
                    tracing::warn!(id, %error, "cancel failed");
                    return false;
                }
            }
        };
        if let Some(status) = status {
            // Images the cancel answer already holds are paid for: keep them.
            let _ = self.save_generations(job, key, record, id, &status).await;
        }
        record.transition(
            RequestState::Cancelled {
                horde_id: id.to_owned(),
                cancelled_ms: now_ms(),
            },
            now_ms(),
        );
        if let Err(e) = self.ledger.put_durable(key, record).await {
            tracing::error!(error = %e, "cannot record a cancel");
        }
        tracing::info!(key = %key, id, "cancelled");
        true
    }
}

impl Engine {
    /// The Horde's worker list, read at most once a minute.
    async fn workers_online(&self) -> Result<Arc<Vec<WorkerSummary>>, HordeError> {
        const FRESH_FOR: Duration = Duration::from_secs(60);
        let mut seen = self.workers_seen.lock().await;
        if let Some((at, workers)) = seen.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return Ok(Arc::clone(workers));
            }
        }
        let workers = Arc::new(self.client.workers().await?);
        *seen = Some((Instant::now(), Arc::clone(&workers)));
        Ok(workers)
    }

    /// Why no worker can take `job`, from what the workers online say they
    /// serve (`/v2/workers`): a model nobody serves, a kind of source image,
    /// a size, post-processing or LoRAs nobody takes.
    async fn why_no_worker(&self, job: &Job) -> String {
        let workers = match self.workers_online().await {
            Ok(workers) => workers,
            Err(error) => return format!("the worker list could not be read ({error})"),
        };
        let models = job.models.join(" or ");
        let serving: Vec<&WorkerSummary> = workers
            .iter()
            .filter(|w| w.online && !w.maintenance_mode)
            .filter(|w| job.models.iter().any(|model| w.models.contains(model)))
            .collect();
        if serving.is_empty() {
            return format!("no worker online serves {models}");
        }
        let takes = |flag: fn(&WorkerSummary) -> Option<bool>| {
            serving.iter().any(|w| flag(w) != Some(false))
        };
        if let Some(sources) = &job.sources {
            let (kind, flag): (&str, fn(&WorkerSummary) -> Option<bool>) = match sources.processing
            {
                SourceProcessing::Inpainting | SourceProcessing::Outpainting => {
                    ("inpainting or outpainting", |w| w.painting)
                }
                _ => ("source images (img2img)", |w| w.img2img),
            };
            if !takes(flag) {
                return format!("no worker serving {models} takes {kind}");
            }
        }
        let number = |name: &str| job.params.get(name).and_then(serde_json::Value::as_u64);
        if let (Some(width), Some(height)) = (number("width"), number("height")) {
            let pixels = width * height;
            if serving
                .iter()
                .all(|w| w.max_pixels.is_some_and(|max| max < pixels))
            {
                return format!("no worker serving {models} takes {width}×{height} images");
            }
        }
        let asks = |name: &str| {
            job.params
                .get(name)
                .and_then(serde_json::Value::as_array)
                .is_some_and(|list| !list.is_empty())
        };
        if asks("post_processing") && !takes(|w| w.post_processing) {
            return format!("no worker serving {models} does post-processing");
        }
        if asks("loras") && !takes(|w| w.lora) {
            return format!("no worker serving {models} takes LoRAs");
        }
        format!(
            "{} worker(s) serve {models}, but none can take this request now (trusted or \
             chosen workers only, NSFW, or another restriction)",
            serving.len()
        )
    }
}

/// The error a cancel that got no answer within `timeout` counts as.
fn cancel_timed_out(timeout: Duration) -> HordeError {
    HordeError::new(
        Endpoint::new(Operation::Cancel),
        HordeErrorKind::Transport {
            stage: TransportStage::AwaitingResponse,
            timed_out: true,
            detail: format!("no answer within {}", humantime::format_duration(timeout)),
        },
    )
}
