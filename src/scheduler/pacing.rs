//! Request pacing: stay inside the Horde's rate limits instead of hitting them.
//!
//! Submits are spaced evenly below both limits that apply to them: 2 per
//! second per key and IP, and 90 per minute per IP (docs/horde-api.md §3.1).
//! Three rules, from the nearest to the farthest neighbour:
//!
//! - **In the process**: one submit per interval (700 ms by default), taken
//!   as slots one after the other by whichever task is ready.
//! - **On the host**: with [`SharedSlots`], the slot is taken from a file that
//!   every process submitting to the same Horde URL shares, so shards on one
//!   host together keep one interval (see `shared_pacer`).
//! - **Across hosts** (one NAT address, nothing to share): a rate-limit 429
//!   on a submit doubles this process's interval (at most once a second, up to [`MAX_SLOWDOWN`] times the configured one); each
//!   accepted submit raises the submit rate by [`RECOVERY_SHARE`] of the
//!   configured rate again (additive in rate, so an interval stretched 8×
//!   comes back within a few dozen submits, not hundreds), never going below
//!   the configured interval; each slot adds a little random jitter. N processes
//!   that share an address thus settle near their share of it, and their
//!   retries do not fall in step.
//!
//! Status and check calls are limited per request id, which the callers
//! already respect by polling no faster than the server's 1 s cache and
//! fetching `/status` once; they only share the back-off below. When the
//! server answers 429 anyway, its `Retry-After` pushes a "not before" instant
//! that every task of that endpoint class honours (and, for submits, every
//! process of the host).

use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

pub use super::shared_pacer::SharedSlots;

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

/// How far a run of rate-limit 429s may stretch the submit interval: 8×
/// the default is one submit per 5.6 s, room for eight processes behind one
/// address.
pub const MAX_SLOWDOWN: u32 = 8;

/// What each accepted submit adds to a slowed-down submit rate, as a share
/// of the configured rate.
pub const RECOVERY_SHARE: f64 = 0.05;

/// Shared pacing state for one run.
#[derive(Debug)]
pub struct Pacer {
    submit: tokio::sync::Mutex<SubmitPace>,
    /// The current submit interval, readable without waiting for a slot.
    interval: Mutex<Adaptive>,
    shared: Option<SharedSlots>,
    not_before: Mutex<[Option<Instant>; 3]>,
}

/// Where this process's next submit slot is.
#[derive(Debug)]
struct SubmitPace {
    next: Instant,
}

/// The submit interval as 429s and successes move it.
#[derive(Debug, Clone, Copy)]
struct Adaptive {
    configured: Duration,
    current: Duration,
    last_slowdown: Option<Instant>,
}

impl Adaptive {
    fn new(configured: Duration) -> Self {
        let configured = configured.max(Duration::from_millis(1));
        Self {
            configured,
            current: configured,
            last_slowdown: None,
        }
    }

    /// A rate-limit 429: double, unless this burst of 429s already did (the
    /// answers to submits sent before the last slowdown say nothing new).
    fn slow_down(&mut self, now: Instant) {
        // The limiter's windows are a second long: a 429 in a later window is news.
        let settle = Duration::from_secs(1);
        if self
            .last_slowdown
            .is_some_and(|last| now.duration_since(last) < settle)
        {
            return;
        }
        self.current = (self.current * 2).min(self.configured * MAX_SLOWDOWN);
        self.last_slowdown = Some(now);
    }

    fn recover(&mut self) {
        let rate =
            1.0 / self.current.as_secs_f64() + RECOVERY_SHARE / self.configured.as_secs_f64();
        self.current = Duration::from_secs_f64(1.0 / rate).max(self.configured);
    }

    /// The spacing after one slot: the interval plus up to 5 % of jitter.
    fn spacing(&self) -> Duration {
        self.current + self.current.mul_f64(fastrand::f64() * 0.05)
    }
}

impl Pacer {
    /// Paces submits at one per `submit_interval`, in this process alone.
    pub fn new(submit_interval: Duration) -> Self {
        Self {
            submit: tokio::sync::Mutex::new(SubmitPace {
                next: Instant::now(),
            }),
            interval: Mutex::new(Adaptive::new(submit_interval)),
            shared: None,
            not_before: Mutex::new([None; 3]),
        }
    }

    /// Also takes each submit slot from `shared`, the slots of every process
    /// of this host that submits to the same Horde.
    pub fn sharing(mut self, shared: Option<SharedSlots>) -> Self {
        self.shared = shared;
        self
    }

    /// The submit interval now (the configured one, or longer after 429s).
    pub fn submit_interval(&self) -> Duration {
        self.interval.lock().current
    }

    /// Waits until a request of `class` may be sent.
    pub async fn ready(&self, class: EndpointClass) {
        self.wait_not_before(class).await;
        if class == EndpointClass::Submit {
            // Held until the slot comes: a process keeps at most one slot
            // reserved ahead, so one that is killed leaves at most one gap.
            let mut pace = self.submit.lock().await;
            self.wait_not_before(class).await;
            let slot = self.take_submit_slot(&mut pace).await;
            tokio::time::sleep_until(slot).await;
        }
    }

    async fn wait_not_before(&self, class: EndpointClass) {
        loop {
            let wait_until = self.lock()[class.slot()];
            match wait_until {
                Some(at) if at > Instant::now() => tokio::time::sleep_until(at).await,
                _ => break,
            }
        }
    }

    /// The next submit slot of this process, from the host's shared slots
    /// when there are some.
    async fn take_submit_slot(&self, pace: &mut SubmitPace) -> Instant {
        let spacing = self.interval.lock().spacing();
        let now = Instant::now();
        let mut slot = pace.next.max(now);
        if let Some(shared) = &self.shared {
            let wall_now = SystemTime::now();
            let earliest = wall_now + (slot - now);
            if let Some(at) = shared.reserve(earliest, spacing).await {
                let ahead = at.duration_since(SystemTime::now()).unwrap_or_default();
                slot = slot.max(Instant::now() + ahead);
            }
        }
        pace.next = slot + spacing;
        slot
    }

    /// A submit was accepted: a stretched interval recovers a step.
    pub fn submit_accepted(&self) {
        self.interval.lock().recover();
    }

    /// The server said 429: nobody sends `class` for `delay` (plus up to a
    /// quarter second of jitter, a submit interval for submits, so clients
    /// sharing an address do not retry in step). For submits, the interval also stretches, and the other
    /// processes of the host hold off too.
    pub fn back_off(&self, class: EndpointClass, delay: Duration) {
        let now = Instant::now();
        // Submits retry spread over one interval: the processes that hit the
        // same full window must not all come back at its first instant.
        let spread = match class {
            EndpointClass::Submit => self.submit_interval().max(Duration::from_millis(250)),
            EndpointClass::Check | EndpointClass::Status => Duration::from_millis(250),
        };
        let jitter = spread.mul_f64(fastrand::f64());
        let until = now + delay + jitter;
        {
            let mut slots = self.lock();
            let slot = &mut slots[class.slot()];
            if slot.is_none_or(|current| current < until) {
                *slot = Some(until);
            }
        }
        if class == EndpointClass::Submit {
            let interval = {
                let mut adaptive = self.interval.lock();
                adaptive.slow_down(now);
                adaptive.current
            };
            tracing::debug!(?interval, "rate-limited submit; spacing submits wider");
            if let Some(shared) = &self.shared {
                shared.hold_until(SystemTime::now() + delay);
            }
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, [Option<Instant>; 3]> {
        self.not_before.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(700);

    #[test]
    fn a_rate_limit_doubles_once_per_burst_and_caps() {
        let mut adaptive = Adaptive::new(BASE);
        let start = Instant::now();
        adaptive.slow_down(start);
        assert_eq!(adaptive.current, BASE * 2);
        // The other answers of the same burst change nothing.
        adaptive.slow_down(start + Duration::from_millis(300));
        assert_eq!(adaptive.current, BASE * 2);
        let mut at = start;
        for _ in 0..10 {
            at += Duration::from_secs(1);
            adaptive.slow_down(at);
        }
        assert_eq!(adaptive.current, BASE * MAX_SLOWDOWN);
    }

    #[test]
    fn successes_recover_additively_down_to_the_configured_interval() {
        let mut adaptive = Adaptive::new(BASE);
        adaptive.slow_down(Instant::now());
        adaptive.recover();
        let once = adaptive.current;
        assert!(once < BASE * 2 && once > BASE, "{once:?}");
        // From the slowest, back to the configured pace within a few dozen submits.
        let mut slowest = Adaptive::new(BASE);
        let mut at = Instant::now();
        for _ in 0..4 {
            slowest.slow_down(at);
            at += Duration::from_secs(1);
        }
        assert_eq!(slowest.current, BASE * MAX_SLOWDOWN);
        let mut submits = 0;
        while slowest.current > BASE {
            slowest.recover();
            submits += 1;
        }
        assert!((10..=30).contains(&submits), "{submits} submits to recover");
    }

    #[test]
    fn spacing_is_the_interval_plus_a_little_jitter() {
        let adaptive = Adaptive::new(BASE);
        for _ in 0..100 {
            let spacing = adaptive.spacing();
            assert!(
                spacing >= BASE && spacing <= BASE.mul_f64(1.05),
                "{spacing:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn submits_of_one_process_are_spaced_by_the_interval() {
        let pacer = Pacer::new(BASE);
        let start = Instant::now();
        for i in 0..4u32 {
            pacer.ready(EndpointClass::Submit).await;
            let elapsed = start.elapsed();
            assert!(elapsed >= BASE * i, "submit {i} at {elapsed:?}");
            assert!(
                elapsed <= BASE.mul_f64(1.05) * i,
                "submit {i} at {elapsed:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_submit_back_off_waits_and_widens_the_spacing() {
        let pacer = Pacer::new(BASE);
        pacer.ready(EndpointClass::Submit).await;
        pacer.back_off(EndpointClass::Submit, Duration::from_secs(1));
        assert_eq!(pacer.submit_interval(), BASE * 2);
        let start = Instant::now();
        pacer.ready(EndpointClass::Submit).await;
        assert!(start.elapsed() >= Duration::from_secs(1));
        let second = Instant::now();
        pacer.ready(EndpointClass::Submit).await;
        assert!(second.elapsed() >= BASE * 2);
        pacer.submit_accepted();
        let interval = pacer.submit_interval();
        assert!(interval < BASE * 2 && interval > BASE, "{interval:?}");
    }

    #[tokio::test]
    async fn two_pacers_sharing_slots_keep_one_interval() {
        let dir = tempfile::tempdir().unwrap();
        let url = "http://127.0.0.1:7003/api/";
        let interval = Duration::from_millis(100);
        let a = Pacer::new(interval).sharing(Some(SharedSlots::in_folder(dir.path(), url)));
        let b = Pacer::new(interval).sharing(Some(SharedSlots::in_folder(dir.path(), url)));
        let start = std::time::Instant::now();
        for _ in 0..3 {
            tokio::join!(
                a.ready(EndpointClass::Submit),
                b.ready(EndpointClass::Submit)
            );
        }
        // Six submits between two pacers: five intervals at least.
        assert!(start.elapsed() >= interval * 5, "{:?}", start.elapsed());
    }
}
