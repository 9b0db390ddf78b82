//! Request pacing: stay inside the Horde's rate limits instead of hitting them.
//!
//! Submits are spaced evenly (governor, burst 1) below both limits that apply
//! to them: 2 per second per key and IP, and 90 per minute per IP. Status and
//! check calls are limited per request id, which the callers already respect
//! by polling no faster than the server's 1 s cache and fetching `/status`
//! once; they only share the back-off below. When the server answers 429
//! anyway, its `Retry-After` pushes a "not before" instant that every task of
//! that endpoint class honours.

use parking_lot::Mutex;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota};
use tokio::time::Instant;

/// Endpoint classes that share a back-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointClass {
    Submit,
    Check,
    Status,
}

impl EndpointClass {
    fn slot(self) -> usize {
        match self {
            EndpointClass::Submit => 0,
            EndpointClass::Check => 1,
            EndpointClass::Status => 2,
        }
    }
}

/// One submit every 700 ms: under 90/minute (one per 667 ms) and 2/second,
/// with room for network jitter to bunch arrivals a little.
pub const DEFAULT_SUBMIT_INTERVAL: Duration = Duration::from_millis(700);

/// Shared pacing state for one run.
#[derive(Debug)]
pub struct Pacer {
    submit: DefaultDirectRateLimiter,
    not_before: Mutex<[Option<Instant>; 3]>,
}

impl Pacer {
    /// Paces submits at one per `submit_interval`.
    pub fn new(submit_interval: Duration) -> Self {
        let quota = Quota::with_period(submit_interval.max(Duration::from_millis(1)))
            .expect("the interval is at least 1 ms, so the quota period is non-zero")
            .allow_burst(NonZeroU32::MIN);
        Self {
            submit: governor::RateLimiter::direct(quota),
            not_before: Mutex::new([None; 3]),
        }
    }

    /// Waits until a request of `class` may be sent.
    pub async fn ready(&self, class: EndpointClass) {
        loop {
            let wait_until = self.lock()[class.slot()];
            match wait_until {
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                _ => break,
            }
        }
        if class == EndpointClass::Submit {
            self.submit
                .until_ready_with_jitter(governor::Jitter::up_to(Duration::from_millis(50)))
                .await;
        }
    }

    /// The server said 429: nobody sends `class` for `delay` (plus up to a
    /// quarter second of jitter, so clients sharing an address do not retry in step).
    pub fn back_off(&self, class: EndpointClass, delay: Duration) {
        let jitter = Duration::from_millis(fastrand::u64(0..250));
        let until = Instant::now() + delay + jitter;
        let mut slots = self.lock();
        let slot = &mut slots[class.slot()];
        if slot.is_none_or(|current| current < until) {
            *slot = Some(until);
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, [Option<Instant>; 3]> {
        self.not_before.lock()
    }
}
