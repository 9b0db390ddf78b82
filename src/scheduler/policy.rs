//! The failure policy: one table that says what the engine does after a call
//! to the Horde failed.
//!
//! Every call site (submit, `/check`, `/status`, cancel) asks [`Policy::decide`]
//! with the call, the error and how many times in a row that call has failed,
//! and does what the returned [`Action`] says. Nothing else in the engine
//! chooses a delay or a retry limit, so the rules below are the whole story:
//!
//! | call | failure class | action |
//! | --- | --- | --- |
//! | any | rate limited (429) | wait `Retry-After` (capped) for every task of that endpoint; give up after [`Policy::rate_limit_attempts`] in a row |
//! | submit | concurrency full | wait `Retry-After`, at least 2 s (capped), for this slot; the caller lowers the budget |
//! | any | auth (401/403) | stop the run |
//! | any | redirected | stop the run (a redirect could carry the key elsewhere) |
//! | submit | permanent, kudos | fail the job (nothing is on the Horde) |
//! | check, status | permanent, kudos | give up: cancel the request, fail the job |
//! | check, status | expired | resubmit the missing images |
//! | submit, cancel | expired | give up (a submit cannot expire; a cancelled request that is gone is gone) |
//! | any | transient, maintenance, IP timeout | wait (server's `Retry-After` capped, else exponential back-off with jitter); give up after [`Policy::transient_attempts`] in a row |
//! | cancel | anything else | retry after 0.3 s (the user is waiting to exit), at most [`CANCEL_ATTEMPTS`] times |
//!
//! Every wait it returns is bounded by [`Policy::max_wait`]: a `Retry-After` of
//! 2^64−1 seconds or an HTTP date in 2100 becomes that cap, with a warning.
//! "Give up" always means: cancel what is on the Horde, then fail the job; the
//! engine does both. The policy itself never sleeps, sends or records anything.

use std::time::Duration;

use crate::horde::{FailureClass, HordeError};

use super::EndpointClass;

/// The calls whose failures the policy decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Submit,
    Check,
    Status,
    Cancel,
}

impl Call {
    /// The endpoint class whose shared back-off a rate limit on this call pushes.
    pub fn endpoint_class(self) -> EndpointClass {
        match self {
            Call::Submit => EndpointClass::Submit,
            Call::Check => EndpointClass::Check,
            Call::Status | Call::Cancel => EndpointClass::Status,
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
    /// Stop the whole run.
    StopRun(StopCause),
}

/// Cancels are sent while the user waits for the process to exit: a few quick tries only.
pub const CANCEL_ATTEMPTS: u32 = 3;
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
            (_, FailureClass::Auth) => Action::StopRun(StopCause::Auth),
            (_, FailureClass::Redirected) => Action::StopRun(StopCause::Redirected),
            (Call::Cancel, FailureClass::Expired) => Action::GiveUp { class },
            (Call::Cancel, _) if attempt >= CANCEL_ATTEMPTS => Action::GiveUp { class },
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
