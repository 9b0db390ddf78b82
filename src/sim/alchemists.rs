//! The simulated alchemists (interrogation workers): tasks that take the
//! oldest waiting form they serve, spend `--alchemy-form-time` on it (per
//! tile for a post-processor), compute its result from the re-encoded
//! source the server gave them, and submit it.
//!
//! Like `workers`, they decide nothing: which form, faults, costs and
//! delivery are rules of `state`. Only the CPU work (results, scaling and
//! encoding images) happens here, off the lock and off the async threads.

use std::sync::Arc;
use std::time::Duration;

use super::alchemy_forms::is_post_processor;
use super::alchemy_results::{post_process, text_result};
use super::state::{AlchemyJob, AlchemyOutcome};
use super::workers::Shared;

/// Upper bound on how long an idle alchemist sleeps without being woken.
const IDLE_RECHECK: Duration = Duration::from_millis(200);

/// One alchemist: pop, work, submit, repeat until shutdown.
pub(crate) async fn run_alchemist(shared: Arc<Shared>, alchemist: usize) {
    loop {
        // Register for a wake-up before looking, so a POST in between is not missed.
        let notified = shared.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let job = shared.lock().pop_form();
        let Some(job) = job else {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = &mut notified => {}
                () = tokio::time::sleep(IDLE_RECHECK) => {}
            }
            continue;
        };
        tracing::debug!(form = %job.form, payload = ?job.payload, alchemist, "alchemist took a form");
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(job.duration) => {}
        }
        let outcome = {
            let job = job.clone();
            tokio::task::spawn_blocking(move || work(&job))
                .await
                .unwrap_or(AlchemyOutcome::Faulted)
        };
        shared.lock().submit_form(alchemist, &job, outcome);
        // A faulted form went back to waiting.
        shared.work_available.notify_waiters();
    }
}

/// What the alchemist submits for `job`.
fn work(job: &AlchemyJob) -> AlchemyOutcome {
    if job.fault {
        return AlchemyOutcome::Faulted;
    }
    if is_post_processor(&job.form) {
        return match post_process(&job.form, &job.source) {
            Some((webp, _, _)) => AlchemyOutcome::Image(webp),
            None => AlchemyOutcome::Faulted,
        };
    }
    AlchemyOutcome::Text(text_result(&job.form, &job.source, job.width, job.height))
}
