//! When to check a request next: from what this run observes, not from the
//! server's `wait_time`.
//!
//! The Horde derives `wait_time` from its workers' megapixel-steps throughput,
//! so it reads 0 while images still wait (facts §9.1). Polling "when
//! `wait_time` says so" then means polling every second. Instead, the planner
//! learns how many images per second finish for this key (from the `finished`
//! counts `/check` reports) and expects a request to be done when the images
//! ahead of it in this run's queue and its own are through. `wait_time` is
//! used only while nothing has been learned yet.
//!
//! Until the first image finishes, only the oldest request checks, on a
//! doubling schedule; the others wait for the first figure (or the longest
//! interval). Every interval is at least `floor`, growing by half with each
//! check of the same request, and at most `cap`, so a request is checked a
//! small bounded number of times whatever the estimates say.
//!
//! The planner only computes durations; it never sleeps or calls anything.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The first interval of the blind schedule, which doubles per check.
const BLIND_START: Duration = Duration::from_secs(2);

/// Poll pacing for one run.
#[derive(Debug)]
pub struct PollPlanner {
    floor: Duration,
    cap: Duration,
    state: Mutex<State>,
    /// Turns true when the first finished image has been observed.
    learned: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// When the first request of this run started being followed.
    since: Option<Instant>,
    /// Images seen finished by this run's checks.
    finished: u64,
    /// Images not yet finished, per followed request, in the order they were submitted.
    left: BTreeMap<u64, u32>,
}

/// One request's place in the planner's queue.
#[derive(Debug)]
pub struct Ticket {
    seq: u64,
    /// `finished` as last reported for this request.
    finished: u32,
    /// Checks made for this request.
    checks: u32,
}

/// What a request should do before its next check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextCheck {
    /// Check after this long.
    After(Duration),
    /// Nothing is known yet: wait for the first figure, at most this long.
    WhenLearned(Duration),
}

impl PollPlanner {
    /// A planner whose intervals stay within `floor..=cap`.
    pub fn new(floor: Duration, cap: Duration) -> Self {
        let floor = floor.max(Duration::from_millis(1));
        Self {
            floor,
            cap: cap.max(floor),
            state: Mutex::new(State::default()),
            learned: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters: a poisoned lock still holds usable numbers.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request of `images` images starts being followed.
    pub fn register(&self, images: u32) -> Ticket {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.since.get_or_insert_with(Instant::now);
        state.left.insert(seq, images);
        Ticket {
            seq,
            finished: 0,
            checks: 0,
        }
    }

    /// The request is no longer followed.
    pub fn unregister(&self, ticket: &Ticket) {
        self.lock().left.remove(&ticket.seq);
    }

    /// A check of the request reported `finished` images done and `left` not yet done.
    pub fn observe(&self, ticket: &mut Ticket, finished: u32, left: u32) {
        ticket.checks += 1;
        let new = finished.saturating_sub(ticket.finished);
        ticket.finished = ticket.finished.max(finished);
        let mut state = self.lock();
        state.finished += u64::from(new);
        if let Some(entry) = state.left.get_mut(&ticket.seq) {
            *entry = left;
        }
        let first = state.finished > 0;
        drop(state);
        if first {
            self.learned
                .send_if_modified(|learned| !std::mem::replace(learned, true));
        }
    }

    /// Images finished per second for this key, once one has been seen.
    fn rate(state: &State) -> Option<f64> {
        let elapsed = state.since?.elapsed().as_secs_f64();
        (state.finished > 0 && elapsed > 0.0).then(|| state.finished as f64 / elapsed)
    }

    /// When to check the request next; `hint` is the server's last `wait_time` (seconds).
    pub fn next(&self, ticket: &Ticket, hint: u32) -> NextCheck {
        let floor = self
            .floor
            .mul_f64(1.5f64.powi(ticket.checks.min(32) as i32))
            .min(self.cap);
        let state = self.lock();
        let bounded = |wait: Duration| wait.clamp(floor, self.cap);
        if let Some(rate) = Self::rate(&state) {
            let ahead: u64 = state
                .left
                .range(..=ticket.seq)
                .map(|(_, left)| u64::from(*left))
                .sum();
            let seconds = (ahead as f64 / rate).min(self.cap.as_secs_f64());
            return NextCheck::After(bounded(Duration::from_secs_f64(seconds)));
        }
        if hint > 0 {
            return NextCheck::After(bounded(Duration::from_secs(u64::from(hint))));
        }
        let is_oldest = state.left.keys().next() == Some(&ticket.seq);
        if is_oldest {
            let blind = BLIND_START.saturating_mul(1 << ticket.checks.min(16));
            NextCheck::After(bounded(blind))
        } else {
            NextCheck::WhenLearned(self.cap)
        }
    }

    /// Resolves once the first finished image has been seen.
    pub async fn learned(&self) {
        let mut learned = self.learned.subscribe();
        // The sender lives as long as `self`, so the wait ends only by a change.
        let _ = learned.wait_for(|learned| *learned).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner() -> PollPlanner {
        PollPlanner::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_oldest_request_checks_before_anything_is_known() {
        let planner = planner();
        let first = planner.register(10);
        let second = planner.register(10);
        assert_eq!(planner.next(&first, 0), NextCheck::After(BLIND_START));
        assert_eq!(
            planner.next(&second, 0),
            NextCheck::WhenLearned(Duration::from_secs(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_time_of_zero_does_not_mean_poll_every_second() {
        let planner = planner();
        let mut first = planner.register(10);
        let mut checks = 0;
        // Nothing finishes for a minute: the blind schedule doubles.
        let mut waited = Duration::ZERO;
        while waited < Duration::from_secs(60) {
            let NextCheck::After(wait) = planner.next(&first, 0) else {
                panic!("the oldest request always has a time")
            };
            tokio::time::advance(wait).await;
            waited += wait;
            planner.observe(&mut first, 0, 10);
            checks += 1;
        }
        assert!(checks <= 5, "{checks} checks in a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_follows_the_observed_rate_and_the_queue_ahead() {
        let planner = planner();
        let mut first = planner.register(10);
        let mut second = planner.register(10);
        tokio::time::advance(Duration::from_secs(5)).await;
        // 10 images in 5 s: 2 per second.
        planner.observe(&mut first, 10, 0);
        planner.unregister(&first);
        planner.observe(&mut second, 0, 10);
        let NextCheck::After(wait) = planner.next(&second, 0) else {
            panic!("the rate is known")
        };
        assert!(
            (Duration::from_millis(4900)..=Duration::from_millis(5100)).contains(&wait),
            "{wait:?}"
        );
        let third = planner.register(10);
        let NextCheck::After(wait) = planner.next(&third, 0) else {
            panic!("the rate is known")
        };
        // Twenty images (the second request's and its own) at 2 per second.
        assert!(wait >= Duration::from_secs(9), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_stay_within_the_floor_and_cap() {
        let planner = planner();
        let mut ticket = planner.register(1000);
        tokio::time::advance(Duration::from_secs(1)).await;
        planner.observe(&mut ticket, 1, 999);
        assert_eq!(
            planner.next(&ticket, 0),
            NextCheck::After(Duration::from_secs(30)),
            "a long estimate is capped"
        );
        let mut fast = planner.register(1);
        for _ in 0..20 {
            planner.observe(&mut fast, 0, 1);
        }
        assert_eq!(
            planner.next(&fast, 0),
            NextCheck::After(Duration::from_secs(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn learning_wakes_the_waiting_requests() {
        let planner = std::sync::Arc::new(planner());
        let mut first = planner.register(2);
        let waiter = {
            let planner = std::sync::Arc::clone(&planner);
            tokio::spawn(async move { planner.learned().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        planner.observe(&mut first, 1, 1);
        waiter
            .await
            .expect("the waiter ends once a figure is known");
    }
}
