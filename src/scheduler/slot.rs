//! One request slot's life: submit, poll, retrieve, save, retry.
//!
//! Every failure goes through [`Policy::decide`](super::policy::Policy::decide);
//! every wait selects on the run's stop token (or, before a submit, on the
//! token that closes submits), so a stop is never held up by a back-off, a
//! frozen server or a slow answer. Giving up on a request that is on the
//! Horde cancels it first.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::adopt::Lost;
use super::policy::{Action, Call, StopCause, WaitScope, CANCEL_ATTEMPTS};
use super::poll::Ticket;
use super::{
    fresh_record, Abort, EndpointClass, Engine, Event, FailureKind, Lease, OnStop, PoolKey,
    SlotOutcome,
};
use crate::horde::{
    Base64Image, ExtraSourceImage, FailureClass, Generation, GenerationParams, GenerationRequest,
    HordeError, ImageSource, RequestStatus,
};
use crate::manifest::{CensoredPolicy, Job};
use crate::output::{GeneratedImage, OutputError};
use crate::plan::{Slot, SlotPlan};
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState, SavedImage};

/// Largest image accepted from an R2 URL.
const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;
/// Waits at least this long are logged, so a long pause is never silent.
const VISIBLE_WAIT: Duration = Duration::from_secs(10);

/// How following a submitted request ended.
pub(super) enum Followed {
    /// `/status` was read and its images saved (maybe fewer than asked).
    Retrieved,
    /// The request is gone from the Horde (expired or never existed).
    Expired,
    /// The run is stopping.
    Stopped,
    /// Given up: the caller cancels the request and fails the job.
    Failed(FailureKind, String),
}

/// Why a step could not go on.
pub(super) enum Halt {
    Stopped,
    /// The request is gone from the Horde: submit the missing images again.
    Resubmit,
    Failed(FailureKind, String),
}

/// Where a slot is in its life: submit → follow → finish, or fail on the way.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// An earlier run's submit lost its answer: look for its request first.
    FindLost,
    /// Submit the missing images.
    Submit,
    /// Follow the request with this id until its images are saved.
    Follow(String),
    /// Every image is saved: record the slot done.
    Finish,
}

/// The step after a record turned (or was found) `Submitted`.
fn following(record: &RequestRecord) -> Step {
    match &record.state {
        RequestState::Submitted { horde_id, .. } => Step::Follow(horde_id.clone()),
        _ => Step::Submit,
    }
}

/// Every image of the slot is saved.
fn is_complete(record: &RequestRecord) -> bool {
    record.missing_indices().is_empty() && record.assigned.is_empty()
}

impl Engine {
    /// Drives one slot until its images are on disk, it fails, or the run stops.
    pub(super) async fn drive(
        self: &Arc<Self>,
        job: &Job,
        slot: Slot,
        plan: SlotPlan,
        leased: Option<(Arc<PoolKey>, Lease)>,
    ) -> SlotOutcome {
        let key = RequestKey::new(job.key.to_string(), slot.slot);
        // The key the slot's images are leased from (and its next submit goes with).
        let (mut pool_key, mut lease) = match leased {
            Some((pool_key, lease)) => (Some(pool_key), Some(lease)),
            None => (None, None),
        };
        let (mut record, mut step) = match plan {
            SlotPlan::Done { files, kudos } => {
                return SlotOutcome::Done {
                    files,
                    kudos,
                    attempts: 0,
                }
            }
            SlotPlan::Follow { record, .. } => {
                let step = following(&record);
                (Some(record), step)
            }
            SlotPlan::FindLost { record } => (Some(record), Step::FindLost),
            SlotPlan::Submit { record, .. } => (record, Step::Submit),
        };
        let mut retries_used = 0u32;
        let mut submit_failures = 0u32;
        loop {
            step = match step {
                Step::FindLost => {
                    let r = record
                        .as_mut()
                        .expect("a lost submit comes with its record");
                    // An earlier run sent this submit and never recorded the answer;
                    // only the key that sent it can find it (reported when it is missing).
                    let Some(sender) = self.keys.for_record(r).cloned() else {
                        return SlotOutcome::Stopped;
                    };
                    let doubt = sender.gate.adopt_initial();
                    let found = self.resolve_lost_submit(&sender, &key, r).await;
                    drop(doubt);
                    match found {
                        Ok(true) => {
                            if let RequestState::Submitted { n, .. } = r.state {
                                lease = Some(sender.budget.lease_now(n));
                                pool_key = Some(sender);
                            }
                            following(r)
                        }
                        Ok(false) => Step::Submit,
                        Err(halt) => return self.halted(job, slot, &key, record, halt).await,
                    }
                }
                Step::Submit => {
                    let submitted = self
                        .submit(
                            job,
                            slot,
                            &key,
                            &mut record,
                            (&mut pool_key, &mut lease),
                            &mut submit_failures,
                        )
                        .await;
                    match submitted {
                        Ok(true) => {
                            submit_failures = 0;
                            following(record.as_ref().expect("a submitted slot has its record"))
                        }
                        Ok(false) => Step::Submit,
                        Err(halt) => return self.halted(job, slot, &key, record, halt).await,
                    }
                }
                Step::Follow(horde_id) => {
                    let r = record.as_mut().expect("a followed slot has its record");
                    if is_complete(r) {
                        // Every image was saved before the run stopped to record it.
                        Step::Finish
                    } else {
                        let followed = self.follow(job, &key, r, &horde_id, &mut lease).await;
                        match followed {
                            Followed::Retrieved if is_complete(r) => Step::Finish,
                            Followed::Retrieved => {
                                tracing::info!(job = %job.name, key = %key, missing = r.missing_indices().len(), "request came back short; resubmitting the missing images");
                                retries_used += 1;
                                self.emit(Event::Resubmitting);
                                Step::Submit
                            }
                            Followed::Expired => {
                                tracing::warn!(job = %job.name, key = %key, id = %horde_id, "request expired on the Horde; resubmitting");
                                retries_used += 1;
                                self.emit(Event::Resubmitting);
                                self.emit(Event::Failure(FailureKind::Expired));
                                Step::Submit
                            }
                            Followed::Stopped => return SlotOutcome::Stopped,
                            Followed::Failed(kind, message) => {
                                return self.give_up(job, &key, r, kind, message).await
                            }
                        }
                    }
                }
                Step::Finish => {
                    let r = record.take().unwrap_or_else(|| fresh_record(job, slot));
                    return self.finish(&key, r).await;
                }
            };
            if step == Step::Submit && retries_used > self.manifest.run.retries {
                let r = record.as_mut().expect("a resubmitted slot has its record");
                let message = format!(
                    "gave up after {} attempts: {} of {} images",
                    r.attempts,
                    r.images.len(),
                    r.n
                );
                return self.fail(&key, r, FailureKind::Incomplete, message).await;
            }
        }
    }

    /// Ends a slot whose step could not go on.
    async fn halted(
        &self,
        job: &Job,
        slot: Slot,
        key: &RequestKey,
        record: Option<RequestRecord>,
        halt: Halt,
    ) -> SlotOutcome {
        match halt {
            Halt::Stopped => SlotOutcome::Stopped,
            // A submit cannot expire; treat it as a failure of the job.
            Halt::Resubmit => {
                let mut r = record.unwrap_or_else(|| fresh_record(job, slot));
                self.fail(
                    key,
                    &mut r,
                    FailureKind::Expired,
                    "the request vanished".into(),
                )
                .await
            }
            Halt::Failed(kind, message) => {
                let mut r = record.unwrap_or_else(|| fresh_record(job, slot));
                self.give_up(job, key, &mut r, kind, message).await
            }
        }
    }

    async fn finish(&self, key: &RequestKey, mut record: RequestRecord) -> SlotOutcome {
        if !matches!(record.state, RequestState::Done) {
            record.transition(RequestState::Done, now_ms());
            if let Err(e) = self.ledger.put_durable(key, &record).await {
                self.abort(Abort::Ledger(e.to_string()));
            }
        }
        SlotOutcome::Done {
            files: record.file_names(),
            kudos: record.kudos_charged,
            attempts: record.attempts,
        }
    }

    /// Gives up on the slot: cancels its request if it is on the Horde, then fails it.
    async fn give_up(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        kind: FailureKind,
        mut message: String,
    ) -> SlotOutcome {
        if let RequestState::Submitted { horde_id, .. } = record.state.clone() {
            if self.cancel_request(job, key, record, &horde_id).await {
                message = format!("{message}; its request {horde_id} was cancelled");
            } else {
                // Left as `Submitted`, so the next run or `horde-batch cancel` deals with it.
                message = format!(
                    "{message}; cancelling its request {horde_id} failed: the next run or \
                     `horde-batch cancel` retries"
                );
                tracing::warn!(key = %key, %kind, %message, "request failed");
                self.emit(Event::Failure(kind));
                return SlotOutcome::Failed {
                    kind,
                    message,
                    images_saved: record.images.len() as u32,
                };
            }
        }
        self.fail(key, record, kind, message).await
    }

    async fn fail(
        &self,
        key: &RequestKey,
        record: &mut RequestRecord,
        kind: FailureKind,
        message: String,
    ) -> SlotOutcome {
        tracing::warn!(key = %key, %kind, %message, "request failed");
        self.emit(Event::Failure(kind));
        record.transition(
            RequestState::Failed {
                class: kind.as_str().to_owned(),
                message: message.clone(),
            },
            now_ms(),
        );
        if let Err(e) = self.ledger.put_durable(key, record).await {
            self.abort(Abort::Ledger(e.to_string()));
        }
        SlotOutcome::Failed {
            kind,
            message,
            images_saved: record.images.len() as u32,
        }
    }

    /// Applies the failure policy to a failed call: counts it, pushes a shared
    /// back-off, lowers the budget, or stops the run. `Ok(Some(wait))` asks the
    /// caller to wait that long (on its own stop token) before trying again.
    fn after_failure(
        &self,
        call: Call,
        error: &HordeError,
        failures: &mut u32,
        pool_key: Option<&PoolKey>,
    ) -> Result<Option<Duration>, Halt> {
        *failures += 1;
        let wait = match self.tuning.policy.decide(call, error, *failures) {
            Action::Retry { after, scope } => {
                self.emit(Event::CallFailed {
                    class: error.class(),
                    seconds: after.as_secs(),
                });
                if error.class() == FailureClass::ConcurrencyFull {
                    if let (Some(limit), Some(pool_key)) = (error.concurrency_limit(), pool_key) {
                        let budget = &pool_key.budget;
                        let lower = limit.min(budget.capacity().saturating_sub(1)).max(1);
                        tracing::info!(
                            limit,
                            budget = lower,
                            key = %pool_key.fingerprint,
                            "the Horde's concurrency limit is lower than the budget; lowering it"
                        );
                        budget.set_capacity(lower);
                    }
                }
                if after >= VISIBLE_WAIT {
                    tracing::warn!(?call, %error, wait = %humantime::format_duration(after), "waiting before trying again");
                }
                match scope {
                    WaitScope::Endpoint(class) => {
                        self.pacer.back_off(class, after);
                        None
                    }
                    WaitScope::Task => Some(after),
                }
            }
            Action::Resubmit => return Err(Halt::Resubmit),
            Action::GiveUp { class } => {
                self.emit(Event::CallFailed {
                    class: error.class(),
                    seconds: 0,
                });
                let message = format!("{error} (gave up after {failures} tries)");
                return Err(Halt::Failed(class.into(), message));
            }
            Action::StopRun(StopCause::Auth) => {
                self.abort(Abort::Auth(error.to_string()));
                return Err(Halt::Stopped);
            }
            Action::StopRun(StopCause::Redirected) => {
                self.abort(Abort::Redirected(error.to_string()));
                return Err(Halt::Stopped);
            }
        };
        if error.class() != FailureClass::RateLimited {
            tracing::info!(?call, %error, "call failed; trying again");
        }
        Ok(wait)
    }

    /// Sleeps `delay`, or ends early with `Halt::Stopped` when `token` fires.
    async fn pause(&self, delay: Duration, token: &CancellationToken) -> Result<(), Halt> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = token.cancelled() => Err(Halt::Stopped),
        }
    }

    /// Waits for the pacer's go for `class`, or `Halt::Stopped` when `token` fires.
    async fn paced(&self, class: EndpointClass, token: &CancellationToken) -> Result<(), Halt> {
        tokio::select! {
            () = self.pacer.ready(class) => Ok(()),
            () = token.cancelled() => Err(Halt::Stopped),
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
                let n = wanted.min(sender.budget.capacity());
                tokio::select! {
                    () = l.grow_to(n) => {}
                    () = self.submits.cancelled() => return Err(Halt::Stopped),
                }
                (Arc::clone(sender), n)
            }
            _ => {
                let leased = tokio::select! {
                    leased = self.keys.lease(wanted) => leased,
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
        let request = build_request(job, n, missing[0])
            .map_err(|e| Halt::Failed(FailureKind::Permanent, e.to_string()))?;
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
            None => record.insert(fresh_record(job, slot)),
        };
        // Which key sends it, so a later run looks for it (or cancels it) with that key.
        r.key_fingerprint = Some(sender.fingerprint.clone());
        self.ledger
            .put_durable(key, r)
            .await
            .map_err(|e| self.ledger_halt(e))?;

        self.emit(Event::SubmitSent);
        let answer = tokio::select! {
            answer = sender.client.submit(&request) => answer,
            // The POST may have reached the Horde: the record stays `Submitting`,
            // and the next run looks for its request before submitting again.
            () = self.submits.cancelled() => return Err(Halt::Stopped),
        };
        match answer {
            Ok(accepted) => {
                self.heard_from_horde();
                drop(gate);
                sender.submitted();
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
                if matches!(error.class(), FailureClass::Auth | FailureClass::Kudos)
                    && self.keys.take_out(&sender, &error.to_string())
                {
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
    async fn resolve_lost_submit(
        &self,
        sender: &PoolKey,
        key: &RequestKey,
        record: &mut RequestRecord,
    ) -> Result<bool, Halt> {
        let RequestState::Submitting { n, .. } = record.state else {
            return Ok(false);
        };
        let found = self
            .find_lost_submit(sender, &key.to_string(), n, Instant::now(), &self.stop)
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
        let n = submitted_n(record);
        self.emit(Event::Following {
            key: key.to_string(),
            horde_id: id.to_owned(),
            images: n,
        });
        self.accounting
            .images_in_flight
            .fetch_add(u64::from(n), Ordering::Relaxed);
        let mut ticket = self.planner.register(n);
        let followed = match self.poll_until_done(id, lease, &mut ticket).await {
            Ok(()) => {
                *lease = None;
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

    async fn followed_after(
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
    async fn poll_until_done(
        &self,
        id: &str,
        lease: &mut Option<Lease>,
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
            hint = check.wait_time;
            if let Some(l) = lease.as_mut() {
                l.shrink_to(check.waiting);
            }
            self.emit(Event::Checked {
                queue_position: check.queue_position,
                wait_time: check.wait_time,
            });
            self.planner
                .observe(ticket, check.finished, check.waiting + check.processing);
            if check.done || check.faulted {
                if check.processing == 0 {
                    return Ok(());
                }
                // A faulted request reads done while an image is still being made (facts
                // §9.1); that image is paid for and arrives seconds later.
                let since = *late_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.tuning.late_image_wait {
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
    async fn wait_for_check(&self, ticket: &Ticket, hint: u32) -> Result<(), Halt> {
        // A little jitter, so that many requests do not check in step.
        let jitter = self.tuning.poll_floor.mul_f64(fastrand::f64() * 0.2);
        loop {
            let seen = self.planner.version();
            let at = self.planner.next_check(ticket, hint) + jitter;
            tokio::select! {
                () = tokio::time::sleep_until(at) => return Ok(()),
                () = self.planner.changed_since(seen) => {}
                () = self.stop.cancelled() => return Err(Halt::Stopped),
            }
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
            Err(halt) => self.followed_after(halt, job, key, record, id).await,
        }
    }

    /// `GET /status`, retried as the failure policy says.
    async fn fetch_status(&self, id: &str) -> Result<RequestStatus, Halt> {
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
    async fn cancel_untracked(&self, id: &str) {
        self.emit(Event::CancelSent);
        match tokio::time::timeout(self.tuning.cancel_timeout, self.client.cancel(id)).await {
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
            let answer = tokio::time::timeout(self.tuning.cancel_timeout, self.client.cancel(id));
            match answer.await {
                Ok(Ok(status)) => {
                    self.heard_from_horde();
                    break Some(status);
                }
                Ok(Err(error)) => match self.tuning.policy.decide(Call::Cancel, &error, attempt) {
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
                },
                Err(_elapsed) if attempt < CANCEL_ATTEMPTS => {
                    tracing::info!(id, "cancel timed out; trying again");
                }
                Err(_elapsed) => {
                    tracing::warn!(id, "cancel timed out");
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

    /// Assigns the request's new generations to missing image indices,
    /// fetches them all, hands them to the sink in one batch (one group
    /// commit: the files are durable when it answers), then records each
    /// image saved.
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
        let sender = self.keys.for_record(record).cloned();
        if let Some(sender) = &sender {
            sender.charged(kudos);
        }
        self.accounting
            .kudos_millis
            .fetch_add((kudos * 1000.0) as u64, Ordering::Relaxed);
        if kudos > 0.0 {
            self.emit(Event::Charged { kudos });
        }

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
                self.emit(Event::Failure(FailureKind::Censored));
                continue;
            }
            let Some(index) = free.pop() else { break };
            new_assignments.push((index, generation.id.clone()));
        }
        if !new_assignments.is_empty() {
            // Which generation goes to which index is durable before any file is written,
            // so a crash in between resolves to the same names.
            record.assigned.extend(new_assignments);
            self.ledger
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
        let mut fetched: Vec<(u32, Generation, Vec<u8>)> = Vec::new();
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
                    match self.fetch_status(id).await {
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
                    self.emit(Event::Failure(FailureKind::Download));
                    record.assigned.remove(&index);
                    continue;
                }
            };
            fetched.push((index, generation, bytes));
        }

        // All of the request's images go to the sink at once, so it can flush once for all
        // of them; each answer is durable before the record says the image is saved.
        let n = submitted_n(record);
        let submitted = submitted_ms(record);
        let (fetched, all_bytes): (Vec<(u32, Generation)>, Vec<Vec<u8>>) = fetched
            .into_iter()
            .map(|(index, generation, bytes)| ((index, generation), bytes))
            .unzip();
        let images = fetched
            .iter()
            .zip(all_bytes)
            .map(|((index, generation), bytes)| GeneratedImage {
                job,
                generation,
                request_id: id,
                index: *index,
                n,
                submitted_ms: submitted,
                kudos: status.check.kudos,
                bytes,
            })
            .collect();
        let answers = self.sink.save_all(images).await;
        let mut fatal = None;
        for ((index, generation), answer) in fetched.iter().zip(answers) {
            match answer {
                Ok(stored) => {
                    if !stored.already_present {
                        self.accounting.images_saved.fetch_add(1, Ordering::Relaxed);
                        if let Some(sender) = &sender {
                            sender.saved(1);
                        }
                    }
                    self.emit(Event::ImageSaved {
                        already_present: stored.already_present,
                    });
                    let saved = SavedImage {
                        generation_id: generation.id.clone(),
                        file_name: stored.file_name,
                        censored: generation.censored,
                    };
                    record.save_image(*index, saved, now_ms());
                }
                Err(OutputError::Webp { error, .. }) => {
                    tracing::warn!(%error, generation = %generation.id, "the Horde sent a broken image; it will be asked for again");
                    self.emit(Event::Failure(FailureKind::BadImage));
                    record.assigned.remove(index);
                }
                Err(error @ OutputError::Collision { .. }) => {
                    // A different image already has this name: the ledger lost track of it.
                    fatal.get_or_insert(Abort::Ledger(format!(
                        "{error}; the ledger does not know this file: run with --rebuild-state"
                    )));
                }
                Err(error) => {
                    fatal.get_or_insert(Abort::Output(error.to_string()));
                }
            }
        }
        if let Some(abort) = fatal {
            // The images that were saved stay recorded; the run stops.
            self.abort(abort);
            let _ = self.ledger.put_durable(key, record).await;
            return Err(Halt::Stopped);
        }
        // Not flushed here: the next step of this slot (done, resubmit, fail, cancel)
        // writes and flushes the record anyway, and the files are already durable, so
        // a crash before then only makes the resumed run rewrite them idempotently.
        self.ledger
            .put(key, record)
            .map_err(|e| self.ledger_halt(e))
    }

    async fn image_bytes(&self, generation: &Generation) -> Result<Vec<u8>, HordeError> {
        match generation.image_source() {
            ImageSource::Base64(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| unusable_image(format!("image is not base64: {e}"))),
            ImageSource::Url(url) => {
                self.emit(Event::Downloaded);
                self.client
                    .download_image(&url, MAX_IMAGE_BYTES, self.manifest.run.download_timeout)
                    .await
            }
            ImageSource::Unavailable => Err(unusable_image(
                "the Horde could not provide the image (N/A)".into(),
            )),
        }
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

/// When the request on the Horde was submitted: every image of it shares the time.
fn submitted_ms(record: &RequestRecord) -> u64 {
    match record.state {
        RequestState::Submitted { submitted_ms, .. } => submitted_ms,
        _ => record.updated_ms,
    }
}

/// Images the request on the Horde was asked for.
fn submitted_n(record: &RequestRecord) -> u32 {
    match record.state {
        RequestState::Submitted { n, .. } => n,
        _ => record.n,
    }
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
