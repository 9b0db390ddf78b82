//! The simulated workers and the cleaner: the tasks that move time forward.
//!
//! Each worker takes the oldest waiting image it can serve, spends the
//! configured latency on it, then lands it (finished, censored or faulted,
//! as `state` decides from the seed). The cleaner runs every
//! `--cleanup-interval` like the real server's background thread. Neither
//! decides anything itself: the rules live in `state`.

use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::state::Horde;

/// State shared by the HTTP handlers and the background tasks.
pub(crate) struct Shared {
    pub horde: Mutex<Horde>,
    /// Woken when images become available to workers.
    pub work_available: Notify,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Locks the state.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Horde> {
        self.horde.lock()
    }
}

/// Upper bound on how long an idle worker sleeps without being woken.
const IDLE_RECHECK: Duration = Duration::from_millis(500);

/// One simulated worker thread: pick, generate, land, repeat until shutdown.
pub(crate) async fn run_worker(shared: Arc<Shared>, worker: usize) {
    loop {
        // Register for a wake-up before looking at the queue, so a submit
        // between the look and the wait is not missed.
        let notified = shared.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let job = shared.lock().pop_job(worker);
        match job {
            Some(job) => {
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(job.latency) => {}
                }
                // Drawing and encoding a large image takes a while: off the
                // lock and off the async threads.
                let webp = {
                    let job = job.clone();
                    tokio::task::spawn_blocking(move || job.render())
                        .await
                        .ok()
                        .flatten()
                };
                shared.lock().finish_job(job, webp);
                // A faulted image may have gone back to the queue.
                shared.work_available.notify_waiters();
            }
            None => {
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = &mut notified => {}
                    () = tokio::time::sleep(IDLE_RECHECK) => {}
                }
            }
        }
    }
}

/// The cleaner: flags faulted requests and deletes expired ones.
pub(crate) async fn run_cleaner(shared: Arc<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => shared.lock().cleanup(),
        }
    }
}
