//! Rate limits as the real server's flask-limiter applies them: fixed
//! windows that start at the first hit, counted per key, several limits per
//! route checked in order.
//!
//! Owns the counters and the numbers that go into `Retry-After` and
//! `X-RateLimit-*`. It must not know routes: `routes` decides which limits
//! and keys apply to a call.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::clock;

/// One flask-limiter rate such as "2 per 1 second".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    pub amount: u32,
    pub per: Per,
}

/// Window length of a [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Per {
    Second,
    Minute,
}

impl Per {
    fn duration(self) -> Duration {
        match self {
            Per::Second => Duration::from_secs(1),
            Per::Minute => Duration::from_secs(60),
        }
    }
}

impl Rate {
    pub(crate) const fn per_second(amount: u32) -> Self {
        Self {
            amount,
            per: Per::Second,
        }
    }

    pub(crate) const fn per_minute(amount: u32) -> Self {
        Self {
            amount,
            per: Per::Minute,
        }
    }
}

impl fmt::Display for Rate {
    /// The text flask-limiter puts in a 429 body: `2 per 1 second`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per {
            Per::Second => "second",
            Per::Minute => "minute",
        };
        write!(f, "{} per 1 {unit}", self.amount)
    }
}

/// One limit to apply to a call: a rate and the key it is counted under.
pub(crate) struct LimitCheck {
    pub rate: Rate,
    pub key: String,
}

/// Values of the `X-RateLimit-*` and `Retry-After` headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Epoch seconds (flask-limiter adds one second to the window's end).
    pub reset: u64,
    pub retry_after: u64,
}

/// Outcome of checking a call against its limits.
pub(crate) enum Verdict {
    /// Let through; the headers of the tightest limit, if any limit applied.
    Allowed(Option<RateHeaders>),
    /// Rejected by `rate`: answer 429 `{"message": "<rate>"}` with these headers.
    Limited { rate: Rate, headers: RateHeaders },
}

struct Window {
    started: Instant,
    started_epoch: f64,
    hits: u32,
}

/// All fixed-window counters of one simulated server.
pub(crate) struct Limiter {
    enabled: bool,
    windows: HashMap<String, Window>,
    calls_since_prune: u32,
}

impl Limiter {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            windows: HashMap::new(),
            calls_since_prune: 0,
        }
    }

    /// Counts one hit on each limit in order, stopping at the first one that
    /// is exceeded (as flask-limiter does: later limits are not counted then).
    pub(crate) fn check(&mut self, checks: &[LimitCheck]) -> Verdict {
        self.check_at(checks, Instant::now(), clock::epoch_now())
    }

    fn check_at(&mut self, checks: &[LimitCheck], now: Instant, now_epoch: f64) -> Verdict {
        if !self.enabled || checks.is_empty() {
            return Verdict::Allowed(None);
        }
        self.prune_now_and_then(now);

        let mut tightest: Option<RateHeaders> = None;
        for check in checks {
            let window_key = format!("{}/{}", check.rate, check.key);
            let period = check.rate.per.duration();
            let window = self
                .windows
                .entry(window_key)
                .and_modify(|window| {
                    if now.duration_since(window.started) >= period {
                        *window = Window {
                            started: now,
                            started_epoch: now_epoch,
                            hits: 0,
                        };
                    }
                })
                .or_insert(Window {
                    started: now,
                    started_epoch: now_epoch,
                    hits: 0,
                });
            window.hits += 1;
            let window_end = window.started_epoch + period.as_secs_f64();
            let reset_in = 1.0 + window_end;
            let headers = RateHeaders {
                limit: check.rate.amount,
                remaining: check.rate.amount.saturating_sub(window.hits),
                reset: reset_in as u64,
                retry_after: (reset_in - now_epoch).max(0.0) as u64,
            };
            if window.hits > check.rate.amount {
                return Verdict::Limited {
                    rate: check.rate,
                    headers,
                };
            }
            if tightest.is_none_or(|best| headers.remaining < best.remaining) {
                tightest = Some(headers);
            }
        }
        Verdict::Allowed(tightest)
    }

    /// Drops finished windows so a long run does not grow the map forever.
    fn prune_now_and_then(&mut self, now: Instant) {
        self.calls_since_prune += 1;
        if self.calls_since_prune < 10_000 {
            return;
        }
        self.calls_since_prune = 0;
        self.windows
            .retain(|_, window| now.duration_since(window.started) < Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rate: Rate, key: &str) -> LimitCheck {
        LimitCheck {
            rate,
            key: key.to_owned(),
        }
    }

    #[test]
    fn fixed_window_starts_at_first_hit_and_resets() {
        let mut limiter = Limiter::new(true);
        let rate = Rate::per_second(2);
        let start = Instant::now();
        let epoch = 1_000.25;
        let hit = |limiter: &mut Limiter, key: &str, after_ms: u64| {
            let elapsed = Duration::from_millis(after_ms);
            limiter.check_at(
                &[check(rate, key)],
                start + elapsed,
                epoch + elapsed.as_secs_f64(),
            )
        };
        assert!(matches!(hit(&mut limiter, "k", 0), Verdict::Allowed(Some(h)) if h.remaining == 1));
        assert!(
            matches!(hit(&mut limiter, "k", 300), Verdict::Allowed(Some(h)) if h.remaining == 0)
        );
        match hit(&mut limiter, "k", 600) {
            Verdict::Limited { rate, headers } => {
                assert_eq!(rate.to_string(), "2 per 1 second");
                assert_eq!(headers.limit, 2);
                assert_eq!(headers.remaining, 0);
                assert_eq!(headers.reset, 1_002);
                assert_eq!(headers.retry_after, 1);
            }
            Verdict::Allowed(_) => panic!("third hit in one second must be limited"),
        }
        assert!(matches!(
            hit(&mut limiter, "other", 700),
            Verdict::Allowed(_)
        ));
        assert!(
            matches!(hit(&mut limiter, "k", 1001), Verdict::Allowed(Some(h)) if h.remaining == 1)
        );
    }

    #[test]
    fn disabled_limiter_allows_everything() {
        let mut limiter = Limiter::new(false);
        for _ in 0..10 {
            assert!(matches!(
                limiter.check(&[check(Rate::per_second(1), "k")]),
                Verdict::Allowed(None)
            ));
        }
    }
}
