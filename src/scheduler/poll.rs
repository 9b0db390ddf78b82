//! When to check a request next: from what this run observes, not from the
//! server's `wait_time`.
//!
//! The Horde derives `wait_time` from its workers' megapixel-steps throughput,
//! so it reads 0 while images still wait (docs/horde-api.md §9.1). Polling "when
//! `wait_time` says so" then means polling every second. Instead, the planner
//! learns how many images per second finish for this key (from the `finished`
//! counts `/check` reports) and expects a request to be done when the images
//! ahead of it in this run's queue and its own are through. Because a check
//! only sees what finished by the time it is made, that figure lags behind
//! a fast Horde: when a request is found already done at its first check, the
//! estimates are halved (down to a thirty-second), and a check that finds a
//! request unfinished raises them again. `wait_time` is used only while
//! nothing has been learned yet.
//!
//! Until the first image finishes, only the oldest request checks, on a
//! doubling schedule; the others wait for the first figure (or the longest
//! interval). A request's next check is planned from its last one: at least
//! `floor` later (growing by half with each check of the same request) and at
//! most `cap` later, so it is checked a small bounded number of times
//! whatever the estimates say. Whenever the planner learns something, waiting
//! requests plan again and may check sooner.
//!
//! A request whose key's concurrency held it back (it waited for room, or
//! went as a part: [`super::Lease::pressed`]) is different: that key's images
//! spend their time waiting in the Horde's queue, and once a worker holds
//! them they are done in about one generation, while the run's rate (set by
//! the concurrency, not the workers) says a queue's worth. Two rules follow:
//!
//! - While a submit waits for room on the run's keys (or for the request
//!   itself: the rest of its slot), the images still waiting hold the
//!   concurrency and the next request cannot go, so every request with
//!   waiting images is checked when the run's requests are seen leaving the
//!   queue, a tenth early, then on the floor schedule until it leaves. Once
//!   a held-back request has been seen leaving the queue this holds for
//!   every request (the last ones of a run, sent with room, wait in the
//!   same queue, and the run ends when they are noticed done). That wait is learned from every check: the shortest time from
//!   being followed to a check that finds no image waiting, raised by any
//!   check that finds one still waiting later than that.
//! - Once a check finds every image with a worker, it is checked again on the
//!   floor schedule counted from that check, not the estimate: otherwise the
//!   last requests of a concurrency-bound run are noticed done a queue's wait
//!   late. Once the run has seen a held-back request leave the queue, this
//!   holds for each of its requests (the last ones of a run went with room to
//!   spare, yet wait in the same queue).
//!
//! A run whose keys have room to spare keeps the estimates, and its few
//! checks per image.
//!
//! The planner only computes instants; it never sleeps or calls anything.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The first interval of the blind schedule, which doubles per check.
const BLIND_START: Duration = Duration::from_secs(2);
/// The smallest factor on estimates, after many requests found done at once.
const MIN_SCALE: f64 = 1.0 / 32.0;

/// Poll pacing for one run.
#[derive(Debug)]
pub struct PollPlanner {
    floor: Duration,
    cap: Duration,
    state: Mutex<State>,
    /// Bumped whenever an estimate may have changed.
    version: watch::Sender<u64>,
}

#[derive(Debug)]
struct State {
    next_seq: u64,
    /// When the first request of this run started being followed.
    since: Option<Instant>,
    /// Images seen finished by this run's checks.
    finished: u64,
    /// The factor on estimates (see the module doc).
    scale: f64,
    /// Images not yet finished, per followed request, in the order they were submitted.
    left: BTreeMap<u64, u32>,
    /// How long this run's requests wait in the Horde's queue, from being
    /// followed until no image waits (module doc).
    queue_wait: Option<Duration>,
    /// A request held back by its key's concurrency has been seen leaving the queue.
    held_back_seen_out: bool,
}

/// One request's place in the planner's queue.
#[derive(Debug)]
pub struct Ticket {
    seq: u64,
    /// `finished` as last reported for this request.
    finished: u32,
    /// Checks made for this request.
    checks: u32,
    /// When it was last checked (or registered).
    last_check: Instant,
    /// When it started being followed.
    registered: Instant,
    /// A submit waits for this request itself (the rest of its slot).
    holds_back_a_submit: bool,
    /// Checks made after it was expected to leave the queue, while it still waited.
    overdue_checks: u32,
    /// Its key's concurrency held it back (see the module doc).
    pressed: bool,
    /// `checks` when a check first found every image with a worker.
    with_workers_at: Option<u32>,
}

impl PollPlanner {
    /// A planner whose intervals stay within `floor..=cap`.
    pub fn new(floor: Duration, cap: Duration) -> Self {
        let floor = floor.max(Duration::from_millis(1));
        Self {
            floor,
            cap: cap.max(floor),
            state: Mutex::new(State {
                next_seq: 0,
                since: None,
                finished: 0,
                scale: 1.0,
                left: BTreeMap::new(),
                queue_wait: None,
                held_back_seen_out: false,
            }),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// A request of `images` images starts being followed; `pressed` when its
    /// key's concurrency held it back (see the module doc).
    pub fn register(&self, images: u32, pressed: bool) -> Ticket {
        let now = Instant::now();
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.since.get_or_insert(now);
        state.left.insert(seq, images);
        Ticket {
            seq,
            finished: 0,
            checks: 0,
            last_check: now,
            registered: now,
            overdue_checks: 0,
            holds_back_a_submit: false,
            pressed,
            with_workers_at: None,
        }
    }

    /// A submit waits for this request to be done (the rest of its slot, when
    /// it is a part): it is checked as if a submit waited for room.
    pub fn holds_back_a_submit(&self, ticket: &mut Ticket) {
        ticket.holds_back_a_submit = true;
    }

    /// The request is no longer followed.
    pub fn unregister(&self, ticket: &Ticket) {
        self.lock().left.remove(&ticket.seq);
        self.changed();
    }

    /// A check of the request reported `finished` images done, `waiting` not
    /// yet given to a worker and `processing` with one.
    pub fn observe(&self, ticket: &mut Ticket, finished: u32, waiting: u32, processing: u32) {
        let left = waiting + processing;
        let first_check = ticket.checks == 0;
        ticket.checks += 1;
        let now = Instant::now();
        ticket.last_check = now;
        let new = finished.saturating_sub(ticket.finished);
        ticket.finished = ticket.finished.max(finished);
        let mut state = self.lock();
        if ticket.with_workers_at.is_none() {
            let queued = now - ticket.registered;
            if waiting > 0 {
                // Still in the queue: the wait is at least this long.
                if state.queue_wait.is_some_and(|wait| wait < queued) {
                    state.queue_wait = Some(queued);
                }
                if Self::expected_out(&state, ticket).is_some_and(|out| now >= out) {
                    ticket.overdue_checks += 1;
                }
            } else {
                // Out of the queue since the last check at the latest: the
                // shortest such time is the closest to the wait.
                state.queue_wait = Some(state.queue_wait.map_or(queued, |wait| wait.min(queued)));
                state.held_back_seen_out |= ticket.pressed;
            }
        }
        if waiting == 0 && ticket.with_workers_at.is_none() {
            ticket.with_workers_at = Some(ticket.checks);
        }
        state.finished += u64::from(new);
        if let Some(entry) = state.left.get_mut(&ticket.seq) {
            *entry = left;
        }
        if left == 0 && first_check {
            // Done before it was first looked at: the estimates are too long.
            state.scale = (state.scale / 2.0).max(MIN_SCALE);
        } else if left > 0 {
            state.scale = (state.scale * 1.5).min(1.0);
        }
        drop(state);
        self.changed();
    }

    fn changed(&self) {
        self.version.send_modify(|version| *version += 1);
    }

    /// Images finished per second for this key, once one has been seen.
    fn rate(state: &State) -> Option<f64> {
        let elapsed = state.since?.elapsed().as_secs_f64();
        (state.finished > 0 && elapsed > 0.0).then(|| state.finished as f64 / elapsed)
    }

    /// When a request held back by its key's concurrency should leave the
    /// queue: a tenth before the learned wait, so it is seldom seen late.
    fn expected_out(state: &State, ticket: &Ticket) -> Option<Instant> {
        let wait = state.queue_wait?;
        Some(ticket.registered + wait.mul_f64(0.9))
    }

    /// `floor`, grown by half for each of `checks`, at most `cap`.
    fn floor_after(&self, checks: u32) -> Duration {
        self.floor
            .mul_f64(1.5f64.powi(checks.min(32) as i32))
            .min(self.cap)
    }

    /// When to check the request next; `hint` is the server's last
    /// `wait_time` (seconds); `held_back` while a submit waits for room on
    /// the run's keys (`KeyPool::submit_waits`).
    pub fn next_check(&self, ticket: &Ticket, hint: u32, held_back: bool) -> Instant {
        if let Some(since) = ticket.with_workers_at {
            if ticket.pressed || self.lock().held_back_seen_out {
                // Workers hold all of it: done in about one generation (see the module doc).
                return ticket.last_check + self.floor_after(ticket.checks - since);
            }
        }
        // Once a held-back request was seen leaving the queue, the run is bound
        // by its keys: the last requests (sent with room) wait in the same queue.
        let bound = held_back || ticket.holds_back_a_submit || self.lock().held_back_seen_out;
        if bound {
            let expected = Self::expected_out(&self.lock(), ticket);
            if let Some(out) = expected {
                // Its waiting images hold the key's concurrency: look when it should leave the queue.
                let at = if ticket.overdue_checks > 0 || Instant::now() >= out {
                    ticket.last_check + self.floor_after(ticket.overdue_checks)
                } else {
                    out
                };
                return at.min(self.planned(ticket, hint));
            }
        }
        self.planned(ticket, hint)
    }

    /// The estimate of the module doc, kept within the floor and the cap.
    fn planned(&self, ticket: &Ticket, hint: u32) -> Instant {
        let floor = self.floor_after(ticket.checks);
        let earliest = ticket.last_check + floor;
        let latest = ticket.last_check + self.cap;
        let now = Instant::now();
        let state = self.lock();
        let planned = if let Some(rate) = Self::rate(&state) {
            let ahead: u64 = state
                .left
                .range(..=ticket.seq)
                .map(|(_, left)| u64::from(*left))
                .sum();
            let seconds = (ahead as f64 / rate * state.scale).min(self.cap.as_secs_f64());
            now + Duration::from_secs_f64(seconds)
        } else if hint > 0 {
            now + Duration::from_secs(u64::from(hint)).min(self.cap)
        } else if state.left.keys().next() == Some(&ticket.seq) {
            // The oldest request: nothing is known, so look on a doubling schedule.
            ticket.last_check + BLIND_START.saturating_mul(1 << ticket.checks.min(16))
        } else {
            latest
        };
        planned.clamp(earliest, latest)
    }

    /// Resolves when an estimate may have changed since `seen` (a value from [`PollPlanner::version`]).
    pub async fn changed_since(&self, seen: u64) {
        let mut version = self.version.subscribe();
        // The sender lives as long as `self`, so the wait ends only by a change.
        let _ = version.wait_for(|version| *version != seen).await;
    }

    /// The current version of the estimates.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner() -> PollPlanner {
        PollPlanner::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    fn wait_held_back(planner: &PollPlanner, ticket: &Ticket) -> Duration {
        planner
            .next_check(ticket, 0, true)
            .saturating_duration_since(Instant::now())
    }

    fn wait(planner: &PollPlanner, ticket: &Ticket) -> Duration {
        planner
            .next_check(ticket, 0, false)
            .saturating_duration_since(Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_oldest_request_checks_before_anything_is_known() {
        let planner = planner();
        let first = planner.register(10, false);
        let second = planner.register(10, false);
        assert_eq!(wait(&planner, &first), BLIND_START);
        assert_eq!(wait(&planner, &second), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_time_of_zero_does_not_mean_poll_every_second() {
        let planner = planner();
        let mut first = planner.register(10, false);
        let mut checks = 0;
        let start = Instant::now();
        // Nothing finishes for a minute: the blind schedule doubles.
        while start.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep_until(planner.next_check(&first, 0, false)).await;
            planner.observe(&mut first, 0, 10, 0);
            checks += 1;
        }
        assert!(checks <= 5, "{checks} checks in a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_follows_the_observed_rate_and_the_queue_ahead() {
        let planner = planner();
        let mut first = planner.register(10, false);
        let mut second = planner.register(10, false);
        tokio::time::advance(Duration::from_secs(5)).await;
        // 10 images in 5 s: 2 per second. The first check of the first request
        // finds it unfinished, so the estimates are taken at face value.
        planner.observe(&mut first, 4, 6, 0);
        planner.observe(&mut first, 10, 0, 0);
        planner.unregister(&first);
        planner.observe(&mut second, 0, 10, 0);
        let wait = wait(&planner, &second);
        assert!(
            (Duration::from_millis(4900)..=Duration::from_millis(5100)).contains(&wait),
            "{wait:?}"
        );
        let third = planner.register(10, false);
        // Twenty images (the second request's and its own) at 2 per second.
        assert!(wait_of(&planner, &third) >= Duration::from_secs(9));
    }

    fn wait_of(planner: &PollPlanner, ticket: &Ticket) -> Duration {
        wait(planner, ticket)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_found_done_at_once_shorten_the_estimates() {
        let planner = planner();
        let mut first = planner.register(10, false);
        let third_party = planner.register(10, false);
        tokio::time::advance(Duration::from_secs(2)).await;
        let before = wait(&planner, &third_party);
        planner.observe(&mut first, 10, 0, 0);
        planner.unregister(&first);
        let after = wait(&planner, &third_party);
        assert!(after < before, "{after:?} < {before:?}");
        let mut second = planner.register(10, false);
        planner.observe(&mut second, 10, 0, 0);
        assert!(wait(&planner, &third_party) < after);
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_stay_within_the_floor_and_cap() {
        let planner = planner();
        let mut ticket = planner.register(1000, false);
        tokio::time::advance(Duration::from_secs(1)).await;
        planner.observe(&mut ticket, 1, 999, 0);
        assert_eq!(
            wait(&planner, &ticket),
            Duration::from_secs(30),
            "a long estimate is capped"
        );
        let mut fast = planner.register(1, false);
        for _ in 0..20 {
            planner.observe(&mut fast, 0, 1, 0);
        }
        assert_eq!(wait(&planner, &fast), Duration::from_secs(30));
    }

    /// A run of one key whose concurrency holds it back: requests queue for
    /// 30 s, then workers make them in a second. Returns how long after its
    /// images went to workers the last request is checked again.
    async fn wait_once_with_workers(pressed: bool) -> Duration {
        let planner = planner();
        let mut earlier = planner.register(30, false);
        let mut last = planner.register(10, pressed);
        planner.observe(&mut last, 0, 10, 0);
        // 30 images in 30 s: the concurrency's rate, 1 a second.
        tokio::time::advance(Duration::from_secs(30)).await;
        planner.observe(&mut earlier, 30, 0, 0);
        planner.unregister(&earlier);
        // The last request's images are all with workers now.
        planner.observe(&mut last, 0, 0, 10);
        wait(&planner, &last)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pressed_request_with_workers_is_checked_on_the_floor_schedule() {
        let relaxed = wait_once_with_workers(false).await;
        let pressed = wait_once_with_workers(true).await;
        assert_eq!(
            pressed,
            Duration::from_secs(1),
            "the floor, from that check"
        );
        assert!(
            relaxed > Duration::from_secs(5),
            "a key with room keeps the estimate: {relaxed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pressed_request_still_waiting_keeps_the_estimate() {
        let planner = planner();
        let mut first = planner.register(10, true);
        let blind = wait(&planner, &first);
        planner.observe(&mut first, 0, 10, 0);
        assert!(first.with_workers_at.is_none());
        assert_eq!(blind, BLIND_START);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_checked_when_the_learned_queue_wait_ends_while_a_submit_waits() {
        let planner = planner();
        // Sent with room: it teaches the queue's wait, not that the run is bound.
        let mut first = planner.register(10, false);
        tokio::time::advance(Duration::from_secs(10)).await;
        planner.observe(&mut first, 0, 10, 0);
        tokio::time::advance(Duration::from_secs(5)).await;
        // Out of the queue within 15 s of being followed.
        planner.observe(&mut first, 0, 0, 10);
        let mut pressed = planner.register(10, false);
        assert_eq!(
            wait(&planner, &pressed),
            Duration::from_secs(30),
            "no submit waits for room: the cap"
        );
        assert_eq!(
            wait_held_back(&planner, &pressed),
            Duration::from_millis(13_500),
            "a submit waits: a tenth before the learned 15 s"
        );
        tokio::time::advance(Duration::from_millis(13_500)).await;
        // Still waiting: from now on the floor schedule, until it leaves.
        planner.observe(&mut pressed, 0, 10, 0);
        assert_eq!(
            wait_held_back(&planner, &pressed),
            Duration::from_millis(1500)
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        planner.observe(&mut pressed, 0, 10, 0);
        assert_eq!(
            wait_held_back(&planner, &pressed),
            Duration::from_millis(2250)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn once_a_held_back_request_left_the_queue_the_last_requests_follow_its_wait() {
        let planner = planner();
        let mut held_back = planner.register(10, true);
        tokio::time::advance(Duration::from_secs(20)).await;
        planner.observe(&mut held_back, 0, 0, 10);
        // The run's last request went with room, and nothing waits to be submitted.
        let last = planner.register(10, false);
        assert_eq!(wait(&planner, &last), Duration::from_secs(18));
    }

    #[tokio::test(start_paused = true)]
    async fn learning_wakes_the_waiting_requests() {
        let planner = std::sync::Arc::new(planner());
        let mut first = planner.register(2, false);
        let seen = planner.version();
        let waiter = {
            let planner = std::sync::Arc::clone(&planner);
            tokio::spawn(async move { planner.changed_since(seen).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        planner.observe(&mut first, 1, 1, 0);
        waiter
            .await
            .expect("the waiter ends once something is learned");
    }
}
