//! One request slot's life: find a lost submit → submit → follow → finish,
//! or fail; and how a slot gives up, fails or waits after a failed call.
//!
//! The steps live beside it: `submit`, `follow` (checks, status, cancels) and
//! `save` (a finished request's images). Every failure goes through
//! [`Policy::decide`](super::policy::Policy::decide); every wait selects on
//! the run's stop token (or, before a submit, on the token that closes
//! submits), so a stop is never held up by a back-off, a frozen server or a
//! slow answer. Giving up on a request that is on the Horde cancels it first.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::policy::{Action, Call, StopCause, WaitScope};
use super::save::submitted_n;
use super::{
    fresh_record, Abort, EndpointClass, Engine, Event, FailureKind, Lease, PoolKey, SlotOutcome,
};
use crate::horde::{FailureClass, HordeError};
use crate::manifest::Job;
use crate::plan::{Slot, SlotPlan};
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState};

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
pub(super) enum Step {
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
pub(super) fn following(record: &RequestRecord) -> Step {
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
        let key = RequestKey::of_job(job.key, slot.slot);
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
        let mut resubmits = 0u32;
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
                        // A request may carry only part of the slot's images (the key had
                        // less room): bringing all it asked for is not coming back short.
                        let asked = submitted_n(r) as usize;
                        let missing_before = r.missing_indices().len();
                        let followed = self.follow(job, &key, r, &horde_id, &mut lease).await;
                        let brought = missing_before.saturating_sub(r.missing_indices().len());
                        match followed {
                            Followed::Retrieved if is_complete(r) => Step::Finish,
                            Followed::Retrieved if brought >= asked && r.assigned.is_empty() => {
                                tracing::debug!(job = %job.name, key = %key, missing = r.missing_indices().len(), "submitting the rest of the slot");
                                Step::Submit
                            }
                            Followed::Retrieved => {
                                tracing::info!(job = %job.name, key = %key, missing = r.missing_indices().len(), "request came back short; resubmitting the missing images");
                                resubmits += 1;
                                self.emit(Event::Resubmitting);
                                Step::Submit
                            }
                            Followed::Expired => {
                                tracing::warn!(job = %job.name, key = %key, id = %horde_id, "request expired on the Horde; resubmitting");
                                resubmits += 1;
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
            if step == Step::Submit && resubmits > 0 {
                let policy = &self.tuning().policy;
                if let Action::Fail(kind) = policy.after_short(resubmits, self.manifest.run.retries)
                {
                    let r = record.as_mut().expect("a resubmitted slot has its record");
                    let message = format!(
                        "gave up after {} attempts: {} of {} images",
                        r.attempts,
                        r.images.len(),
                        r.n
                    );
                    return self.fail(&key, r, kind, message).await;
                }
            }
        }
    }

    /// Ends a slot whose step could not go on.
    pub(super) async fn halted(
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

    pub(super) async fn finish(&self, key: &RequestKey, mut record: RequestRecord) -> SlotOutcome {
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
    pub(super) async fn give_up(
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

    pub(super) async fn fail(
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
    pub(super) fn after_failure(
        &self,
        call: Call,
        error: &HordeError,
        failures: &mut u32,
        pool_key: Option<&PoolKey>,
    ) -> Result<Option<Duration>, Halt> {
        *failures += 1;
        let wait = match self.tuning().policy.decide(call, error, *failures) {
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
            // Refetch, Remake and RetireKey answer other calls (download, a
            // pool's submit, see `submit`); here they give up like any failure.
            action @ (Action::GiveUp { .. }
            | Action::Fail(_)
            | Action::Refetch
            | Action::Remake
            | Action::RetireKey) => {
                self.emit(Event::CallFailed {
                    class: error.class(),
                    seconds: 0,
                });
                let kind = match action {
                    Action::GiveUp { class } => class.into(),
                    Action::Fail(kind) => kind,
                    _ => error.class().into(),
                };
                let message = format!("{error} (gave up after {failures} tries)");
                return Err(Halt::Failed(kind, message));
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
    pub(super) async fn pause(
        &self,
        delay: Duration,
        token: &CancellationToken,
    ) -> Result<(), Halt> {
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = token.cancelled() => Err(Halt::Stopped),
        }
    }

    /// Waits for the pacer's go for `class`, or `Halt::Stopped` when `token` fires.
    pub(super) async fn paced(
        &self,
        class: EndpointClass,
        token: &CancellationToken,
    ) -> Result<(), Halt> {
        tokio::select! {
            () = self.pacer.ready(class) => Ok(()),
            () = token.cancelled() => Err(Halt::Stopped),
        }
    }
}
