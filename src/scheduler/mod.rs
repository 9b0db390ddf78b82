//! The engine: drives every request slot of a run from submit to files on disk.
//!
//! `Engine::run` plans each job against the ledger (`plan::resume_slot`),
//! spawns a task per unfinished slot and joins them. A slot is a small state
//! machine (look for a lost submit → submit → follow → finish, or fail): lease
//! images from the budget, wait for the pacer, record the intent in the ledger,
//! submit (one POST at a time), record the Horde id, check it when the poll
//! planner expects it done, read `/status` once, and hand each image to the
//! sink before recording it saved.
//!
//! Jobs are started in expansion order, after the prefix of jobs that earlier
//! runs settled ([`prefix`]); that prefix is planned last, so a resumed run
//! of a big batch submits at once.
//!
//! What to do after a failed call is decided in one place, [`policy`]; when
//! to check a request, in [`poll`]; what became of a submit whose answer was
//! lost, in `adopt`. Every wait selects on the run's stop token, so a stop is
//! prompt. The engine holds a [`crate::store::Ledger`] and an
//! [`crate::output::ImageSink`], never a concrete store or a file
//! format.
//!
//! The engine must not print or count for reports: it sends [`Event`]s, whose
//! one fold ([`events::RunStats`]) gives every figure, the summary and the
//! [`Ending`]; it logs through tracing.
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | the [`Engine`], built once from a resolved [`RunConfig`]; stop, abort, `--max-kudos` |
//! | `run.rs` | a run from first job to last: planning jobs, spawning and ending slots |
//! | `scope.rs` | which jobs are the run's (shard, `--retry-failed`, settled prefix, unserved models) |
//! | `slot.rs` | one slot's state machine and how it gives up or fails |
//! | `submit.rs` | one submit: lease, pace, intent, POST, the Horde id; the request body |
//! | `follow.rs` | checking a request until done, reading its status, cancelling it |
//! | `save.rs` | a finished request's images: assign, download, hand to the sink, record |
//! | `cancel.rs` | `horde-batch cancel` |
//! | `adopt.rs` | submits whose answer was lost |
//! | `policy.rs` | the failure table: every retry, wait and give-up |
//!
//! A run may hold several API keys ([`keys`]): each slot leases from the key
//! with the most room, submits and looks for lost answers with that key, and
//! records its fingerprint, so a resumed run or `cancel` acts with the key the
//! request belongs to. Keyless calls (check, status, cancel, downloads) go
//! through the primary client.

mod adopt;
mod budget;
mod cancel;
pub mod events;
mod failure;
mod follow;
pub mod keys;
mod pacing;
pub mod policy;
pub mod poll;
pub mod prefix;
mod run;
mod save;
mod scope;
mod shared_pacer;
mod slot;
mod submit;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::exit::{Abort, Closed, Ending};
pub use adopt::SubmitGate;
pub use budget::{Budget, Lease};
pub use cancel::CancelReport;
pub use events::{Event, EventSender, RunStats, RunSummary, Stamped};
pub use failure::FailureKind;
pub use keys::{fingerprint, KeyPool, KeyUsage, PoolKey};
pub use pacing::{EndpointClass, Pacer, SharedSlots, DEFAULT_SUBMIT_INTERVAL};
pub use policy::Policy;
pub use poll::PollPlanner;
/// The Horde request for `n` images of a job, the first being image `first_index`.
pub use submit::build_request as request_for;

use crate::horde::HordeClient;
use crate::manifest::{CompiledManifest, Job};
use crate::output::ImageSink;
use crate::plan::Slot;
use crate::store::{Ledger, RequestKey, RequestRecord};

/// What to do with requests still on the Horde when the run is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Cancel them (`DELETE`), saving the images their answer already holds.
    Cancel,
    /// Leave them for a later resume to pick up.
    Detach,
}

/// The durations and limits of a run. `Tuning::default()` is what users get;
/// tests and rehearsals scale them down through `run`'s hidden flags.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// What to do after a failed call, and how long to wait.
    pub policy: Policy,
    /// The spacing of submits (under both of the Horde's submit limits).
    pub submit_interval: Duration,
    /// The shortest and longest time between two checks of one request.
    pub poll_floor: Duration,
    pub poll_cap: Duration,
    /// How long the Horde caches `find_user` per key (30 s on the real server).
    pub find_user_cache: Duration,
    /// How long one cancel (`DELETE`) may take while the run stops.
    pub cancel_timeout: Duration,
    /// How long a request that reads done while an image is still processing is followed.
    pub late_image_wait: Duration,
    /// How long the Horde may give no successful answer before the run stops.
    pub unreachable_after: Duration,
    /// How long a request with no activity lives on the Horde (20 minutes).
    pub request_expiry: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            policy: Policy::default(),
            submit_interval: DEFAULT_SUBMIT_INTERVAL,
            poll_floor: Duration::from_secs(1),
            poll_cap: Duration::from_secs(30),
            find_user_cache: Duration::from_secs(30),
            cancel_timeout: Duration::from_secs(3),
            late_image_wait: Duration::from_secs(300),
            unreachable_after: Duration::from_secs(300),
            request_expiry: Duration::from_secs(20 * 60),
        }
    }
}

/// Everything a run is asked to do, resolved before the engine is built
/// (from the command line, the manifest and the Horde's answers): the engine
/// never learns a setting later.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub tuning: Tuning,
    /// What happens to requests on the Horde when the run is stopped.
    pub on_stop: OnStop,
    /// Kudos the whole batch may spend (`--max-kudos`).
    pub max_kudos: Option<f64>,
    /// Kudos earlier runs of this batch were charged: `--max-kudos` bounds the
    /// batch, not one invocation.
    pub kudos_spent_before: f64,
    /// Kudos per image before real charges are known (a dry run's estimate).
    pub kudos_per_image_estimate: Option<f64>,
    /// The models some worker serves, when known: a job for none of them
    /// fails at once instead of waiting for a worker that is not there.
    pub served_models: Option<HashSet<String>>,
    /// With `--shard`: only this part of the manifest's jobs is run.
    pub shard: Option<crate::plan::Shard>,
    /// With `--retry-failed`: only these jobs (by key) are run.
    pub only: Option<Arc<HashSet<crate::manifest::JobKey>>>,
    /// Where the settled prefix is kept (`prefix`); none in tests with a
    /// ledger in memory.
    pub prefix_file: Option<prefix::PrefixFile>,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            tuning: Tuning::default(),
            on_stop: OnStop::Cancel,
            max_kudos: None,
            kudos_spent_before: 0.0,
            kudos_per_image_estimate: None,
            served_models: None,
            shard: None,
            only: None,
            prefix_file: None,
        }
    }
}

/// What the engine works with: the Horde, the ledger, the output, the
/// manifest, and where its events go.
pub struct Parts {
    /// The primary key's client, for calls that need no key.
    pub client: HordeClient,
    pub keys: KeyPool,
    pub ledger: Arc<dyn Ledger>,
    pub sink: Arc<dyn ImageSink>,
    pub manifest: Arc<CompiledManifest>,
    pub events: EventSender,
}

/// Everything a slot task needs, shared by all of them.
pub struct Engine {
    /// The primary key's client, for calls that need no key (check, status,
    /// cancel, downloads, models).
    pub client: HordeClient,
    /// Every key of the run, each with its budget and submit gate.
    pub keys: KeyPool,
    /// Where every request is checkpointed.
    ledger: Arc<dyn Ledger>,
    /// Where images and job outcomes go.
    sink: Arc<dyn ImageSink>,
    pub manifest: Arc<CompiledManifest>,
    /// Per-IP pacing, shared by every key (and by the host's other runs).
    pub pacer: Pacer,
    config: RunConfig,
    planner: PollPlanner,
    /// Cancelled on Ctrl-C / SIGTERM / a fatal error: stop everything.
    pub stop: CancellationToken,
    /// Cancelled when no new request may be submitted (a child of `stop`).
    submits: CancellationToken,
    detach_on_stop: AtomicBool,
    accounting: Accounting,
    events: EventSender,
    /// When the Horde last answered a call successfully (ms since the epoch).
    last_answer_ms: AtomicU64,
    abort: Mutex<Option<Abort>>,
    closed: Mutex<Option<Closed>>,
    /// The Horde's worker list and when it was read: one read explains every
    /// request no worker can serve for a while, however many there are.
    workers_seen:
        tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<Vec<crate::horde::WorkerSummary>>)>>,
}

/// What the engine itself needs to know to decide (`--max-kudos`). These
/// figures are never reported: every reported figure is folded from events.
#[derive(Debug, Default)]
struct Accounting {
    images_saved: AtomicU64,
    kudos_millis: AtomicU64,
    /// Images of the requests being followed.
    images_in_flight: AtomicU64,
}

impl Accounting {
    fn kudos(&self) -> f64 {
        self.kudos_millis.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// How one slot ended in this run.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotOutcome {
    Done {
        files: Vec<String>,
        kudos: f64,
        attempts: u32,
    },
    Failed {
        kind: FailureKind,
        message: String,
        images_saved: u32,
    },
    /// Stopped before finishing (cancelled or detached); resumable.
    Stopped,
}

impl Engine {
    /// The engine of one run (or `cancel`), stopped by `stop`.
    pub fn new(parts: Parts, config: RunConfig, stop: CancellationToken) -> Arc<Self> {
        let Parts {
            client,
            keys,
            ledger,
            sink,
            manifest,
            events,
        } = parts;
        // Shards and other runs on this host that submit to the same Horde share its limits.
        let pacer = Pacer::new(config.tuning.submit_interval)
            .sharing(SharedSlots::from_env(client.base_url().as_str()));
        Arc::new(Self {
            client,
            keys,
            ledger,
            sink,
            manifest,
            pacer,
            planner: PollPlanner::new(config.tuning.poll_floor, config.tuning.poll_cap),
            submits: stop.child_token(),
            stop,
            detach_on_stop: AtomicBool::new(config.on_stop == OnStop::Detach),
            accounting: Accounting::default(),
            events,
            last_answer_ms: AtomicU64::new(crate::store::now_ms()),
            abort: Mutex::new(None),
            closed: Mutex::new(None),
            workers_seen: tokio::sync::Mutex::new(None),
            config,
        })
    }

    /// The durations and limits of this run.
    pub fn tuning(&self) -> &Tuning {
        &self.config.tuning
    }

    /// What happens to requests on the Horde when the run stops.
    pub fn on_stop(&self) -> OnStop {
        if self.detach_on_stop.load(Ordering::Relaxed) {
            OnStop::Detach
        } else {
            OnStop::Cancel
        }
    }

    /// Stops the run, cancelling or detaching what is on the Horde.
    pub fn stop_with(&self, on_stop: OnStop) {
        self.detach_on_stop
            .store(on_stop == OnStop::Detach, Ordering::Relaxed);
        self.stop.cancel();
    }

    /// No new submits from now on; requests on the Horde are still followed.
    pub fn close_submits(&self, reason: Closed) {
        let mut closed = self.closed.lock();
        if closed.is_none() {
            tracing::warn!(?reason, "no more submits");
            *closed = Some(reason);
            self.emit(Event::SubmitsClosed(reason));
        }
        drop(closed);
        self.submits.cancel();
    }

    /// Why submitting was closed, if it was.
    pub fn closed(&self) -> Option<Closed> {
        *self.closed.lock()
    }

    /// True when a request of `images` may still be submitted under `--max-kudos`.
    pub(crate) fn kudos_allow(&self, images: u32) -> bool {
        let Some(max) = self.config.max_kudos else {
            return true;
        };
        let saved = self.accounting.images_saved.load(Ordering::Relaxed);
        let charged = self.accounting.kudos();
        let learned = (saved > 0).then(|| charged / saved as f64);
        let per_image = learned
            .or(self.config.kudos_per_image_estimate)
            .unwrap_or(0.0);
        let pending = self.accounting.images_in_flight.load(Ordering::Relaxed) + u64::from(images);
        self.config.kudos_spent_before + charged + per_image * pending as f64 <= max
    }

    /// Ends the run early for `reason` (the first reason wins).
    pub fn abort(&self, reason: Abort) {
        let mut abort = self.abort.lock();
        if abort.is_none() {
            tracing::error!(?reason, "stopping the run");
            self.emit(Event::Aborted(reason.clone()));
            *abort = Some(reason);
        }
        drop(abort);
        self.stop.cancel();
    }

    /// Why the run was aborted, if it was.
    pub fn aborted(&self) -> Option<Abort> {
        self.abort.lock().clone()
    }

    /// The Horde answered a call successfully: it is reachable.
    pub(crate) fn heard_from_horde(&self) {
        self.last_answer_ms
            .store(crate::store::now_ms(), Ordering::Relaxed);
    }

    /// Stops the run once the Horde has given no successful answer for
    /// `tuning.unreachable_after` (checked every few seconds until the run ends).
    pub(super) async fn watch_reachability(&self) {
        let limit = self.config.tuning.unreachable_after;
        let every = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.stop.cancelled() => return,
            }
            let silent =
                crate::store::now_ms().saturating_sub(self.last_answer_ms.load(Ordering::Relaxed));
            if silent >= limit.as_millis() as u64 {
                self.abort(Abort::Unreachable(format!(
                    "the Horde at {} gave no successful answer for {}; check the URL and the \
                     network, then rerun the same command to resume",
                    self.client.base_url(),
                    humantime::format_duration(Duration::from_secs(silent / 1000))
                )));
                return;
            }
        }
    }

    /// Tells the world what happened (nobody listening is fine).
    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(Stamped::now(event));
    }
}

/// A slot's record on first submit.
pub(crate) fn fresh_record(job: &Job, slot: Slot) -> RequestRecord {
    let key = RequestKey::of_job(job.key, slot.slot);
    RequestRecord::first_attempt(&key, slot.first_index, slot.n, crate::store::now_ms())
}
