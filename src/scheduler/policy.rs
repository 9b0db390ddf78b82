//! The failure policy: one table that says what the engine does after a call
//! to the Horde failed.
//!
//! Every call site (submit, `/check`, `/status`, cancel, an image download,
//! the look-ups for a lost submit) asks [`Policy::decide`] with the call, the
//! error and how many times in a row that call has failed, and does what the
//! returned [`Action`] says; a slot asks [`Policy::after_short`] before it
//! resubmits. Nothing else in the engine chooses a delay, a retry limit or a
//! give-up, so the rules below are the whole story (first matching row wins):
//!
//! | call | failure class | action |
//! | --- | --- | --- |
//! | lookup (`find_user`, `/check` of a lost submit's candidate) | transient | back off; after [`LOOKUP_ATTEMPTS`] in a row, give up: the lost submit stays unresolved (reported) |
//! | lookup | anything else | give up: the lost submit stays unresolved (reported) |
//! | download | expired (the signed URL lapsed), from a status older than this save | [`Action::Refetch`]: read a fresh status for new URLs, download again |
//! | download | anything else, or expired again | [`Action::Remake`]: drop the image; the slot asks the Horde for it again |
//! | submit by a key of a pool with another active key | auth, kudos | [`Action::RetireKey`]: retire that key; another key submits the request |
//! | any | rate limited (429) | wait `Retry-After` (capped) for every task of that endpoint; give up after [`Policy::rate_limit_attempts`] in a row |
//! | submit | concurrency full | wait `Retry-After`, at least 2 s (capped), for this slot; the caller lowers the budget |
//! | any | auth (401/403) | stop the run |
//! | any | redirected | stop the run (a redirect could carry the key elsewhere) |
//! | submit | permanent, kudos | fail the job (nothing is on the Horde) |
//! | check, status | permanent, kudos | give up: cancel the request, fail the job |
//! | check, status | expired | resubmit the missing images |
//! | submit, cancel | expired | give up (a submit cannot expire; a cancelled request that is gone is gone) |
//! | any | transient, maintenance, IP timeout | wait (server's `Retry-After` capped, else exponential back-off with jitter); give up after [`Policy::transient_attempts`] in a row |
//! | cancel | timed out | retry at once, at most [`CANCEL_ATTEMPTS`] times |
//! | cancel | anything else | retry after 0.3 s (the user is waiting to exit), at most [`CANCEL_ATTEMPTS`] times |
//! | resubmit (a request came back short or expired) | — | at most `run.retries` resubmits per slot, then fail the job as incomplete |
//!
//! Every wait it returns is bounded by [`Policy::max_wait`]: a `Retry-After` of
//! 2^64−1 seconds or an HTTP date in 2100 becomes that cap, with a warning.
//! "Give up" always means: cancel what is on the Horde, then fail the job; the
//! engine does both. The policy itself never sleeps, sends or records anything.

use std::time::Duration;

use crate::horde::{FailureClass, HordeError};

use super::{EndpointClass, FailureKind};

/// The calls whose failures the policy decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Submit,
    /// A submit by one key of a pool that has another active key.
    SubmitFromPool,
    Check,
    Status,
    Cancel,
    /// Downloading one image from its URL.
    Download,
    /// Looking for the request of a submit whose answer was lost
    /// (`find_user`, then `/check` of the candidate).
    Lookup,
}

impl Call {
    /// The endpoint class whose shared back-off a rate limit on this call pushes.
    pub fn endpoint_class(self) -> EndpointClass {
        match self {
            Call::Submit | Call::SubmitFromPool => EndpointClass::Submit,
            Call::Check | Call::Lookup => EndpointClass::Check,
            Call::Status | Call::Cancel | Call::Download => EndpointClass::Status,
        }
    }
}

/// Who waits before the call is made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitScope {
    /// Only the task that made the call.
    Task,
    /// Every task calling the same endpoint class (a rate limit is per key or IP).
    Endpoint(EndpointClass),
}

/// Why the whole run must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The Horde refused the key.
    Auth,
    /// The server answered with a redirect: the URL is wrong, and following it could leak the key.
    Redirected,
}

/// What to do after a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait `after`, then make the same call again.
    Retry { after: Duration, scope: WaitScope },
    /// The request is gone from the Horde: submit its missing images again.
    Resubmit,
    /// Give up on this request: cancel it if it is on the Horde, fail its job as `class`.
    GiveUp { class: FailureClass },
    /// Fail the job as `kind` (its request has nothing left on the Horde).
    Fail(FailureKind),
    /// The image's URL lapsed: read the request's status again for fresh URLs.
    Refetch,
    /// Drop this image: the slot asks the Horde for it again.
    Remake,
    /// Take this key out of the pool; another key submits the request.
    RetireKey,
    /// Stop the whole run.
    StopRun(StopCause),
}

/// Cancels are sent while the user waits for the process to exit: a few quick tries only.
pub const CANCEL_ATTEMPTS: u32 = 3;
/// Tries of a look-up for a lost submit that fails transiently.
pub const LOOKUP_ATTEMPTS: u32 = 5;
/// The pause between cancel tries.
const CANCEL_RETRY: Duration = Duration::from_millis(300);
/// The shortest wait after `TooManyPrompts`: the queue must drain a little first
/// (the real server sends `Retry-After: 0` there).
const CONCURRENCY_WAIT: Duration = Duration::from_secs(2);
/// What a 429 without a usable `Retry-After` waits: the limiter windows are 1 s
/// for submit and check, 1 minute for status.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);
const STATUS_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// The policy's numbers. `Policy::default()` is what users get; tests scale the
/// durations down through the run's hidden tuning flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// The first back-off after a transient error; it doubles per attempt.
    pub backoff_base: Duration,
    /// The longest back-off between transient errors.
    pub backoff_cap: Duration,
    /// The longest any single wait may be, whatever the server asks for.
    pub max_wait: Duration,
    /// Transient failures of one call in a row before giving up.
    pub transient_attempts: u32,
    /// Rate-limit answers to one call in a row before giving up.
    pub rate_limit_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(300),
            transient_attempts: 12,
            rate_limit_attempts: 60,
        }
    }
}

impl Policy {
    /// What to do after `call` failed with `error`, the `attempt`-th failure of
    /// that call in a row (1 for the first).
    pub fn decide(&self, call: Call, error: &HordeError, attempt: u32) -> Action {
        let class = error.class();
        match (call, class) {
            (Call::Lookup, FailureClass::Transient) if attempt < LOOKUP_ATTEMPTS => Action::Retry {
                after: self.backoff(attempt),
                scope: WaitScope::Task,
            },
            (Call::Lookup, _) => Action::GiveUp { class },
            (Call::Download, FailureClass::Expired) if attempt <= 1 => Action::Refetch,
            (Call::Download, _) => Action::Remake,
            (Call::SubmitFromPool, FailureClass::Auth | FailureClass::Kudos) => Action::RetireKey,
            (Call::SubmitFromPool, _) => self.decide(Call::Submit, error, attempt),
            (_, FailureClass::Auth) => Action::StopRun(StopCause::Auth),
            (_, FailureClass::Redirected) => Action::StopRun(StopCause::Redirected),
            (Call::Cancel, FailureClass::Expired) => Action::GiveUp { class },
            (Call::Cancel, _) if attempt >= CANCEL_ATTEMPTS => Action::GiveUp { class },
            (Call::Cancel, _) if error.is_timeout() => Action::Retry {
                after: Duration::ZERO,
                scope: WaitScope::Task,
            },
            (Call::Cancel, _) => Action::Retry {
                after: CANCEL_RETRY.min(self.max_wait),
                scope: WaitScope::Task,
            },
            (_, FailureClass::RateLimited) if attempt >= self.rate_limit_attempts => {
                Action::GiveUp { class }
            }
            (_, FailureClass::RateLimited) => {
                let default = if call == Call::Status {
                    STATUS_RATE_LIMIT_WAIT
                } else {
                    RATE_LIMIT_WAIT
                };
                Action::Retry {
                    after: self.bounded(error.retry_after(), default),
                    scope: WaitScope::Endpoint(call.endpoint_class()),
                }
            }
            (Call::Submit, FailureClass::ConcurrencyFull) => Action::Retry {
                after: self.bounded(
                    error.retry_after().map(|after| after.max(CONCURRENCY_WAIT)),
                    CONCURRENCY_WAIT,
                ),
                scope: WaitScope::Task,
            },
            (Call::Submit, FailureClass::Expired) => Action::GiveUp { class },
            (_, FailureClass::Expired) => Action::Resubmit,
            (_, FailureClass::Permanent | FailureClass::Kudos) => Action::GiveUp { class },
            (
                _,
                FailureClass::Transient
                | FailureClass::Maintenance
                | FailureClass::Timeout
                | FailureClass::ConcurrencyFull,
            ) => {
                if attempt >= self.transient_attempts {
                    Action::GiveUp { class }
                } else {
                    Action::Retry {
                        after: self.bounded(error.retry_after(), self.backoff(attempt)),
                        scope: WaitScope::Task,
                    }
                }
            }
        }
    }

    /// After a request came back short or expired, with `retries_used`
    /// resubmits of the slot so far (this one included) and `allowed` by the
    /// manifest (`run.retries`): resubmit, or fail the job as incomplete.
    pub fn after_short(&self, retries_used: u32, allowed: u32) -> Action {
        if retries_used > allowed {
            Action::Fail(FailureKind::Incomplete)
        } else {
            Action::Resubmit
        }
    }

    /// Exponential back-off with jitter (±25 %) for the `attempt`-th failure in a row.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doubled = self
            .backoff_base
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        doubled
            .min(self.backoff_cap)
            .mul_f64(fastrand::f64() * 0.5 + 0.75)
            .min(self.max_wait)
    }

    /// The server's wait if it named one, else `default`; never above `max_wait`.
    pub fn bounded(&self, asked: Option<Duration>, default: Duration) -> Duration {
        let wanted = asked.unwrap_or(default);
        if wanted > self.max_wait {
            tracing::warn!(
                asked = %humantime::format_duration(wanted),
                waiting = %humantime::format_duration(self.max_wait),
                "the Horde asked for a very long wait; waiting the cap instead"
            );
            self.max_wait
        } else {
            wanted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::horde::{Endpoint, HordeErrorKind, Operation, TransportStage};

    fn api(status: u16, rc: Option<&str>, retry_after: Option<Duration>) -> HordeError {
        HordeError::new(
            Endpoint::new(Operation::Submit),
            HordeErrorKind::Api {
                status,
                rc: rc.map(str::to_owned),
                message: "m".into(),
                errors: Default::default(),
                retry_after,
            },
        )
    }

    fn transport() -> HordeError {
        HordeError::new(
            Endpoint::new(Operation::Check),
            HordeErrorKind::Transport {
                stage: TransportStage::Connect,
                timed_out: false,
                detail: "refused".into(),
            },
        )
    }

    const ALL: [Call; 4] = [Call::Submit, Call::Check, Call::Status, Call::Cancel];

    fn timed_out() -> HordeError {
        HordeError::new(
            Endpoint::new(Operation::Cancel),
            HordeErrorKind::Transport {
                stage: TransportStage::AwaitingResponse,
                timed_out: true,
                detail: "no answer".into(),
            },
        )
    }

    #[test]
    fn a_lookup_retries_only_transient_errors_and_never_stops_the_run() {
        let policy = Policy::default();
        let first = wait_of(policy.decide(Call::Lookup, &transport(), 1));
        assert!(first <= policy.backoff_cap.mul_f64(1.25));
        assert_eq!(
            policy.decide(Call::Lookup, &transport(), LOOKUP_ATTEMPTS),
            Action::GiveUp {
                class: FailureClass::Transient
            }
        );
        // A refused key while looking leaves the lost submit unresolved; the
        // next submit with that key is what stops the run.
        assert!(matches!(
            policy.decide(Call::Lookup, &api(401, Some("InvalidAPIKey"), None), 1),
            Action::GiveUp { .. }
        ));
        assert!(matches!(
            policy.decide(Call::Lookup, &api(429, None, None), 1),
            Action::GiveUp { .. }
        ));
    }

    #[test]
    fn an_expired_download_refetches_once_then_remakes_the_image() {
        let policy = Policy::default();
        let lapsed = HordeError::new(
            Endpoint::new(Operation::DownloadImage),
            HordeErrorKind::Api {
                status: 403,
                rc: None,
                message: "expired".into(),
                errors: Default::default(),
                retry_after: None,
            },
        );
        assert_eq!(lapsed.class(), FailureClass::Expired);
        assert_eq!(policy.decide(Call::Download, &lapsed, 1), Action::Refetch);
        assert_eq!(policy.decide(Call::Download, &lapsed, 2), Action::Remake);
        assert_eq!(
            policy.decide(Call::Download, &transport(), 1),
            Action::Remake
        );
    }

    #[test]
    fn a_refused_key_of_a_pool_is_retired_not_the_run_stopped() {
        let policy = Policy::default();
        for error in [
            api(401, Some("InvalidAPIKey"), None),
            api(403, Some("KudosUpfront"), None),
        ] {
            assert_eq!(
                policy.decide(Call::SubmitFromPool, &error, 1),
                Action::RetireKey
            );
        }
        // Anything else is decided as for any submit.
        assert_eq!(
            policy.decide(Call::SubmitFromPool, &api(400, None, None), 1),
            policy.decide(Call::Submit, &api(400, None, None), 1)
        );
        assert_eq!(
            policy.decide(Call::Submit, &api(401, Some("InvalidAPIKey"), None), 1),
            Action::StopRun(StopCause::Auth)
        );
    }

    #[test]
    fn a_cancel_that_times_out_is_tried_again_at_once_then_given_up() {
        let policy = Policy::default();
        assert_eq!(
            wait_of(policy.decide(Call::Cancel, &timed_out(), 1)),
            Duration::ZERO
        );
        assert!(matches!(
            policy.decide(Call::Cancel, &timed_out(), CANCEL_ATTEMPTS),
            Action::GiveUp { .. }
        ));
    }

    #[test]
    fn a_slot_resubmits_up_to_the_manifests_retries_then_fails_incomplete() {
        let policy = Policy::default();
        assert_eq!(policy.after_short(1, 2), Action::Resubmit);
        assert_eq!(policy.after_short(2, 2), Action::Resubmit);
        assert_eq!(
            policy.after_short(3, 2),
            Action::Fail(FailureKind::Incomplete)
        );
        assert_eq!(
            policy.after_short(1, 0),
            Action::Fail(FailureKind::Incomplete)
        );
    }

    fn wait_of(action: Action) -> Duration {
        match action {
            Action::Retry { after, .. } => after,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn auth_stops_the_run_from_any_call() {
        for call in ALL {
            assert_eq!(
                Policy::default().decide(call, &api(401, Some("InvalidAPIKey"), None), 1),
                Action::StopRun(StopCause::Auth)
            );
        }
    }

    #[test]
    fn a_redirect_stops_the_run_from_any_call() {
        let error = HordeError::new(
            Endpoint::new(Operation::Submit),
            HordeErrorKind::Redirect {
                status: 307,
                location: Some("http://elsewhere/".into()),
            },
        );
        for call in ALL {
            assert_eq!(
                Policy::default().decide(call, &error, 1),
                Action::StopRun(StopCause::Redirected)
            );
        }
    }

    #[test]
    fn a_rate_limit_waits_for_the_whole_endpoint_then_gives_up() {
        let policy = Policy::default();
        let error = api(429, None, Some(Duration::from_secs(1)));
        assert_eq!(
            policy.decide(Call::Submit, &error, 1),
            Action::Retry {
                after: Duration::from_secs(1),
                scope: WaitScope::Endpoint(EndpointClass::Submit)
            }
        );
        assert_eq!(
            policy.decide(Call::Check, &error, 1),
            Action::Retry {
                after: Duration::from_secs(1),
                scope: WaitScope::Endpoint(EndpointClass::Check)
            }
        );
        let no_header = api(429, None, None);
        assert_eq!(
            wait_of(policy.decide(Call::Status, &no_header, 1)),
            STATUS_RATE_LIMIT_WAIT
        );
        assert_eq!(
            policy.decide(Call::Check, &error, policy.rate_limit_attempts),
            Action::GiveUp {
                class: FailureClass::RateLimited
            }
        );
    }

    #[test]
    fn concurrency_full_waits_at_least_two_seconds_on_this_slot() {
        // The real server sends `Retry-After: 0` with TooManyPrompts.
        let error = api(429, Some("TooManyPrompts"), Some(Duration::ZERO));
        assert_eq!(
            Policy::default().decide(Call::Submit, &error, 1),
            Action::Retry {
                after: CONCURRENCY_WAIT,
                scope: WaitScope::Task
            }
        );
    }

    #[test]
    fn permanent_and_kudos_give_up_at_once() {
        for (status, rc) in [(400, None), (403, Some("KudosUpfront"))] {
            for call in [Call::Submit, Call::Check, Call::Status] {
                let action = Policy::default().decide(call, &api(status, rc, None), 1);
                assert!(
                    matches!(action, Action::GiveUp { .. }),
                    "{call:?}: {action:?}"
                );
            }
        }
    }

    #[test]
    fn an_expired_request_is_resubmitted() {
        let error = api(404, Some("RequestNotFound"), None);
        for call in [Call::Check, Call::Status] {
            assert_eq!(Policy::default().decide(call, &error, 1), Action::Resubmit);
        }
        assert!(matches!(
            Policy::default().decide(Call::Cancel, &error, 1),
            Action::GiveUp { .. }
        ));
    }

    #[test]
    fn transient_errors_back_off_then_give_up() {
        let policy = Policy::default();
        for call in [Call::Submit, Call::Check, Call::Status] {
            let first = wait_of(policy.decide(call, &transport(), 1));
            assert!(first >= Duration::from_millis(1500) && first <= Duration::from_millis(2500));
            let late = wait_of(policy.decide(call, &transport(), 11));
            assert!(late <= policy.backoff_cap.mul_f64(1.25), "{late:?}");
            assert_eq!(
                policy.decide(call, &transport(), policy.transient_attempts),
                Action::GiveUp {
                    class: FailureClass::Transient
                }
            );
        }
    }

    #[test]
    fn maintenance_waits_the_servers_minute() {
        let error = api(400, Some("MaintenanceMode"), None);
        assert_eq!(
            wait_of(Policy::default().decide(Call::Submit, &error, 1)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn cancel_retries_quickly_and_briefly() {
        let policy = Policy::default();
        assert_eq!(
            wait_of(policy.decide(Call::Cancel, &transport(), 1)),
            CANCEL_RETRY
        );
        assert!(matches!(
            policy.decide(Call::Cancel, &transport(), CANCEL_ATTEMPTS),
            Action::GiveUp { .. }
        ));
    }

    #[test]
    fn every_retry_after_gives_a_bounded_wait() {
        let policy = Policy::default();
        // `Retry-After: Fri, 01 Jan 2100 00:00:00 GMT`, as the client turns it into a wait.
        let in_2100 = std::time::UNIX_EPOCH
            .checked_add(Duration::from_secs(4_102_444_800))
            .and_then(|date| date.duration_since(std::time::SystemTime::now()).ok());
        let asked = [
            Some(Duration::ZERO),
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(60)),
            Some(Duration::from_secs(1_000_000_000)),
            Some(Duration::from_secs(u64::MAX)),
            Some(Duration::MAX),
            in_2100,
        ];
        for retry_after in asked {
            for (status, rc) in [(429, None), (429, Some("TooManyPrompts")), (503, None)] {
                for call in ALL {
                    let action = policy.decide(call, &api(status, rc, retry_after), 1);
                    if let Action::Retry { after, .. } = action {
                        assert!(
                            after <= policy.max_wait,
                            "{call:?} {status} {retry_after:?}: {after:?}"
                        );
                        // The wait is usable as a deadline without overflow.
                        let _ = tokio::time::Instant::now() + after;
                    }
                }
            }
        }
        assert!(in_2100.is_some(), "an HTTP date in 2100 parses");
    }
}
