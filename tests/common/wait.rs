//! Bounded waiting: a condition polled until it holds or a deadline passes.
//!
//! A test waits for something observable, never for a fixed time: a sleep is
//! either too short on a loaded machine or wasted on an idle one, and a loop
//! without a deadline hangs the suite. This file owns the polling loop of
//! the blocking tests (the async tests of the in-process sim, `sim.rs` and
//! `client_sim.rs`, poll with deadlines of their own); it knows nothing of
//! processes or the sim.

use std::time::{Duration, Instant};

/// How long a wait sleeps between two looks at its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it holds; fails the test, naming `what` and the
/// time waited, once `deadline` (from now) passes without it.
#[track_caller]
pub fn wait_until(what: &str, deadline: Duration, condition: impl FnMut() -> bool) {
    if let Err(waited) = poll_until(deadline, condition) {
        panic!("timed out after {waited:.1?} (deadline {deadline:?}) waiting for {what}");
    }
}

/// Polls `condition` until it holds (`Ok`) or `deadline` passes (`Err` with
/// the time waited). For helpers that must clean up before failing, as
/// [`crate::common::wait_exit`] kills the child it gave up on; tests call
/// [`wait_until`].
pub fn poll_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> Result<(), Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Ok(());
        }
        let waited = start.elapsed();
        if waited >= deadline {
            return Err(waited);
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - waited));
    }
}
