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
//! The engine must not print or count for reports: it sends [`Event`]s, which
//! `report` folds, and logs through tracing.
//!
//! A run may hold several API keys ([`keys`]): each slot leases from the key
//! with the most room, submits and looks for lost answers with that key, and
//! records its fingerprint, so a resumed run or `cancel` acts with the key the
//! request belongs to. Keyless calls (check, status, cancel, downloads) go
//! through the primary client.

mod adopt;
mod budget;
pub mod events;
mod failure;
pub mod keys;
mod pacing;
pub mod policy;
pub mod poll;
pub mod prefix;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use adopt::SubmitGate;
pub use budget::{Budget, Lease};
pub use events::{Event, EventSender};
pub use failure::FailureKind;
pub use keys::{fingerprint, KeyPool, KeyUsage, PoolKey};
pub use pacing::{EndpointClass, Pacer, DEFAULT_SUBMIT_INTERVAL};
pub use policy::Policy;
pub use poll::PollPlanner;
/// The Horde request for `n` images of a job, the first being image `first_index`.
pub use slot::build_request as request_for;

use crate::horde::HordeClient;
use crate::manifest::{CompiledManifest, Job, JobKey};
use crate::output::ImageSink;
use crate::plan::{self, ResumeError, Slot, SlotPlan};
use crate::store::{Ledger, RequestKey, RequestRecord, RequestState};

/// What `horde-batch cancel` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelReport {
    /// Requests cancelled (or already gone from the Horde).
    pub cancelled: u32,
    /// Requests the Horde did not confirm cancelled: still in the ledger.
    pub failed: u32,
    /// Submits whose answer was lost and whose request could not be found.
    pub not_found: u32,
    /// Lost submits left alone because their key is not among this run's
    /// keys: (fingerprint, requests). Only that key's `find_user` lists them.
    pub missing_keys: Vec<(String, u32)>,
}

impl CancelReport {
    fn count(&mut self, cancelled: bool) {
        if cancelled {
            self.cancelled += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// What to do with requests still on the Horde when the run is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Cancel them (`DELETE`), saving the images their answer already holds.
    Cancel,
    /// Leave them for a later resume to pick up.
    Detach,
}

/// Why a run ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Abort {
    #[error("the Horde refused the API key: {0}")]
    /// The Horde refused the API key.
    Auth(String),
    /// A file could not be written (disk full, read-only, ...).
    #[error("an output file could not be written: {0}")]
    Output(String),
    /// The ledger could not be read or written, or disagrees with the files on disk.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The server answered with a redirect, which is never followed (it could carry the key elsewhere).
    #[error("{0}")]
    Redirected(String),
    /// The Horde gave no successful answer for too long.
    #[error("{0}")]
    Unreachable(String),
}

/// Why a run ended: the one fact its exit code is made from ([`crate::exit::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every job asked for is done.
    Complete,
    /// The run went through, but some jobs failed or could not finish.
    JobsFailed,
    /// Stopped by a signal.
    Interrupted,
    /// `--max-runtime` was reached.
    MaxRuntime,
    /// `--max-kudos` would have been passed.
    MaxKudos,
    /// Something made going on pointless.
    Aborted(Abort),
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
        }
    }
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
    /// Per-IP pacing, shared by every key.
    pub pacer: Pacer,
    pub tuning: Tuning,
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
    /// The models some worker serves, when known: a job for none of them
    /// fails at once instead of waiting for a worker that is not there.
    served_models: Mutex<Option<Arc<HashSet<String>>>>,
    /// With `--shard`: only this part of the manifest's jobs is run.
    shard: Mutex<Option<crate::plan::Shard>>,
    /// With `--retry-failed`: only these jobs (by key) are run.
    only: Mutex<Option<Arc<HashSet<String>>>>,
    /// Where the settled prefix is kept (`prefix`); none in tests with a
    /// ledger in memory.
    prefix_file: Mutex<Option<prefix::PrefixFile>>,
    /// Kudos the run may spend (`--max-kudos`), and the per-image estimate used before submitting.
    max_kudos: Option<f64>,
    kudos_per_image: Mutex<Option<f64>>,
    abort: Mutex<Option<Abort>>,
    closed: Mutex<Option<Closed>>,
}

/// Why submitting stopped while the run went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// `--max-runtime` was reached.
    MaxRuntime,
    /// The next request would pass `--max-kudos`.
    MaxKudos,
}

/// What the engine itself needs to know to decide (`--max-kudos`): the rest
/// of a run's figures are told through events and counted by `report`.
#[derive(Debug, Default)]
struct Accounting {
    images_saved: AtomicU64,
    kudos_millis: AtomicU64,
    /// Kudos earlier runs of this batch were charged (from the ledger).
    kudos_before_millis: AtomicU64,
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

/// The outcome of a whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunSummary {
    pub jobs: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub jobs_unfinished: u64,
    pub images_wanted: u64,
    pub images_saved_before: u64,
    pub images_saved_now: u64,
    pub slots_skipped_done: u64,
    pub interrupted: bool,
    pub abort: Option<String>,
    /// What each key did, when the run had several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyUsage>,
}

/// What `Engine::run` carries from job to job.
#[derive(Default)]
struct RunState {
    summary: RunSummary,
    progress: HashMap<JobKey, JobProgress>,
    tasks: JoinSet<(JobKey, SlotOutcome)>,
    /// Lost submits of an earlier run whose slots were started (each looks
    /// for its request), by key fingerprint.
    doubts_taken: HashMap<String, u32>,
    /// How far the settled prefix reaches, when the run keeps one.
    prefix: Option<prefix::PrefixTracker>,
    /// Jobs of the settled prefix found done again, and their images.
    prefix_done_seen: (u64, u64),
}

/// Per-job bookkeeping while its slots run.
struct JobProgress {
    job: Arc<Job>,
    /// The job's place in the expansion.
    place: u64,
    slots_left: u32,
    files: Vec<String>,
    kudos: f64,
    attempts: u32,
    failure: Option<(FailureKind, String)>,
    images_saved: u32,
    stopped: bool,
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: HordeClient,
        keys: KeyPool,
        ledger: Arc<dyn Ledger>,
        sink: Arc<dyn ImageSink>,
        manifest: Arc<CompiledManifest>,
        tuning: Tuning,
        stop: CancellationToken,
        on_stop: OnStop,
        max_kudos: Option<f64>,
        events: EventSender,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            keys,
            ledger,
            sink,
            manifest,
            pacer: Pacer::new(tuning.submit_interval),
            planner: PollPlanner::new(tuning.poll_floor, tuning.poll_cap),
            tuning,
            submits: stop.child_token(),
            stop,
            detach_on_stop: AtomicBool::new(on_stop == OnStop::Detach),
            accounting: Accounting::default(),
            events,
            last_answer_ms: AtomicU64::new(crate::store::now_ms()),
            served_models: Mutex::new(None),
            shard: Mutex::new(None),
            only: Mutex::new(None),
            prefix_file: Mutex::new(None),
            max_kudos,
            kudos_per_image: Mutex::new(None),
            abort: Mutex::new(None),
            closed: Mutex::new(None),
        })
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
        let mut closed = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if closed.is_none() {
            tracing::warn!(?reason, "no more submits");
            *closed = Some(reason);
        }
        drop(closed);
        self.submits.cancel();
    }

    /// Why submitting was closed, if it was.
    pub fn closed(&self) -> Option<Closed> {
        *self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Kudos earlier runs of this batch were charged: `--max-kudos` bounds the
    /// whole batch, not one invocation.
    pub fn set_kudos_spent_before(&self, kudos: f64) {
        self.accounting
            .kudos_before_millis
            .store((kudos.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Sets the per-image kudos estimate used by `--max-kudos` until real charges are known.
    pub fn set_kudos_estimate(&self, per_image: f64) {
        *self
            .kudos_per_image
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(per_image);
    }

    /// True when a request of `images` may still be submitted under `--max-kudos`.
    pub(crate) fn kudos_allow(&self, images: u32) -> bool {
        let Some(max) = self.max_kudos else {
            return true;
        };
        let saved = self.accounting.images_saved.load(Ordering::Relaxed);
        let charged = self.accounting.kudos();
        let learned = (saved > 0).then(|| charged / saved as f64);
        let guess = *self
            .kudos_per_image
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_image = learned.or(guess).unwrap_or(0.0);
        let pending = self.accounting.images_in_flight.load(Ordering::Relaxed) + u64::from(images);
        let before = self.accounting.kudos_before_millis.load(Ordering::Relaxed) as f64 / 1000.0;
        before + charged + per_image * pending as f64 <= max
    }

    /// Ends the run early for `reason` (the first reason wins).
    pub fn abort(&self, reason: Abort) {
        let mut abort = self
            .abort
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if abort.is_none() {
            tracing::error!(?reason, "stopping the run");
            *abort = Some(reason);
        }
        drop(abort);
        self.stop.cancel();
    }

    /// Images of the record whose files are gone (deleted since they were
    /// saved) are forgotten: the slot then asks for exactly those again.
    fn forget_missing_images(&self, key: &RequestKey, record: &mut RequestRecord) {
        let gone: Vec<u32> = record
            .images
            .iter()
            .filter(|(_, image)| {
                !image.file_name.is_empty() && self.sink.is_missing(&image.file_name)
            })
            .map(|(index, _)| *index)
            .collect();
        for index in gone {
            let Some(image) = record.images.remove(&index) else {
                continue;
            };
            tracing::warn!(key = %key, file = %image.file_name, "the image is gone from the output folder; it will be made again");
            self.emit(Event::ImageGone);
            if let Err(error) = self.sink.forget(&image.file_name) {
                tracing::error!(%error, "cannot forget a missing image");
            }
        }
    }

    /// Runs only this part of the manifest's jobs.
    pub fn set_shard(&self, shard: crate::plan::Shard) {
        *self
            .shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(shard);
    }

    /// Keeps the settled prefix in this file, and starts after the one an
    /// earlier run of the same expansion left there.
    pub fn set_prefix_file(&self, file: prefix::PrefixFile) {
        *self
            .prefix_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
    }

    /// Runs only the jobs with these keys (`--retry-failed`).
    pub fn set_only(&self, job_keys: HashSet<String>) {
        *self
            .only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(job_keys));
    }

    /// The manifest's jobs this run is for (all of them, a shard's, or the
    /// ones `--retry-failed` names).
    fn own_jobs(&self) -> impl Iterator<Item = Job> + '_ {
        let own = self.own_job_filter();
        self.manifest.jobs().filter(move |job| own(job))
    }

    /// Whether a job is this run's (see `own_jobs`).
    fn own_job_filter(&self) -> impl Fn(&Job) -> bool + 'static {
        let shard = *self
            .shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let only = self
            .only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        move |job| {
            shard.is_none_or(|shard| shard.includes(job.key))
                && only
                    .as_ref()
                    .is_none_or(|keys| keys.contains(&job.key.to_string()))
        }
    }

    /// The prefix an earlier run settled, and the file to keep this run's in
    /// (none with `--retry-failed`, which looks at a few jobs only).
    fn settled_before(&self) -> (Option<prefix::PrefixFile>, prefix::SettledPrefix) {
        let retrying = self
            .only
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        let file = self
            .prefix_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .filter(|_| !retrying);
        let loaded = file.as_ref().and_then(prefix::PrefixFile::load);
        (file, loaded.unwrap_or_default())
    }

    /// A job needs nothing more of this run: the settled prefix may grow.
    fn settle(
        &self,
        tracker: &mut Option<prefix::PrefixTracker>,
        place: u64,
        done_images: Option<u64>,
    ) {
        let Some(tracker) = tracker.as_mut() else {
            return;
        };
        tracker.settled(place, done_images);
        if let Some(settled) = tracker.due(prefix::WRITE_EVERY, false) {
            // Not awaited: the file is a hint, and the next write replaces it.
            drop(self.write_prefix(settled));
        }
    }

    fn write_prefix(&self, settled: prefix::SettledPrefix) -> Option<tokio::task::JoinHandle<()>> {
        let file = self
            .prefix_file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = file.store(&settled) {
                tracing::warn!(%error, "cannot write the settled prefix; the next run starts from the first job");
            }
        }))
    }

    /// The models some worker serves (from `/v2/status/models`).
    pub fn set_served_models(&self, served: HashSet<String>) {
        *self
            .served_models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(served));
    }

    /// Why no worker can serve `job`, if none can: its models and the served
    /// models closest to them.
    fn unserved(&self, job: &Job) -> Option<String> {
        let served = self
            .served_models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()?;
        if job.models.iter().any(|model| served.contains(model)) {
            return None;
        }
        let mut closest: Vec<(f64, &String)> = served
            .iter()
            .map(|name| {
                let score = job
                    .models
                    .iter()
                    .map(|model| strsim::jaro_winkler(&model.to_lowercase(), &name.to_lowercase()))
                    .fold(0.0, f64::max);
                (score, name)
            })
            .collect();
        closest.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let names: Vec<&str> = closest.iter().take(3).map(|(_, n)| n.as_str()).collect();
        Some(format!(
            "no worker serves {}; the served models closest to it: {}",
            job.models.join(" or "),
            if names.is_empty() {
                "(none)".to_owned()
            } else {
                names.join(", ")
            }
        ))
    }

    /// The Horde answered a call successfully: it is reachable.
    pub(crate) fn heard_from_horde(&self) {
        self.last_answer_ms
            .store(crate::store::now_ms(), Ordering::Relaxed);
    }

    /// Stops the run once the Horde has given no successful answer for
    /// `tuning.unreachable_after` (checked every few seconds until the run ends).
    async fn watch_reachability(&self) {
        let limit = self.tuning.unreachable_after;
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
        let _ = self.events.send(event);
    }

    /// Why the run ended, given its summary.
    pub fn ending(&self, summary: &RunSummary) -> Ending {
        match (self.aborted(), self.closed()) {
            (Some(abort), _) => Ending::Aborted(abort),
            (None, Some(Closed::MaxRuntime)) => Ending::MaxRuntime,
            (None, Some(Closed::MaxKudos)) => Ending::MaxKudos,
            (None, None) if summary.interrupted => Ending::Interrupted,
            (None, None) if summary.jobs_failed > 0 || summary.jobs_unfinished > 0 => {
                Ending::JobsFailed
            }
            (None, None) => Ending::Complete,
        }
    }

    /// Why the run was aborted, if it was.
    pub fn aborted(&self) -> Option<Abort> {
        self.abort
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs every job of the manifest to completion (or until stopped).
    pub async fn run(self: &Arc<Self>) -> RunSummary {
        self.heard_from_horde();
        let watchdog = {
            let engine = Arc::clone(self);
            tokio::spawn(async move { engine.watch_reachability().await })
        };
        let summary = self.run_jobs().await;
        watchdog.abort();
        summary
    }

    async fn run_jobs(self: &Arc<Self>) -> RunSummary {
        let mut run = RunState::default();
        // Known up front, so progress reports are right from the first sample.
        let sharded = self
            .shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
            || self
                .only
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some();
        let (jobs, images_wanted) = if sharded {
            self.own_jobs().fold((0, 0), |(jobs, images), job| {
                (jobs + 1, images + u64::from(job.images))
            })
        } else {
            (self.manifest.total_jobs(), self.manifest.total_images())
        };
        self.emit(Event::Started {
            jobs,
            images_wanted,
        });

        // Requests already on the Horde go first: they expire 20 minutes after
        // their last activity, and their images are already paid for.
        let records = match self.ledger.in_flight() {
            Ok(records) => records,
            Err(error) => {
                self.abort(Abort::Ledger(error.to_string()));
                Vec::new()
            }
        };
        // Lost submits by the key that sent them: only that key's submits wait.
        let mut doubtful: HashMap<String, u32> = HashMap::new();
        for (key, record) in &records {
            if !matches!(record.state, RequestState::Submitting { .. }) {
                continue;
            }
            match self.keys.for_record(record) {
                Some(pool_key) => *doubtful.entry(pool_key.fingerprint.clone()).or_default() += 1,
                None => tracing::warn!(
                    request = %key,
                    key = record.key_fingerprint.as_deref().unwrap_or("?"),
                    "a lost submit of an earlier run was sent with a key that is not among this \
                     run's keys; it cannot be looked for and is left in the ledger (run with that \
                     key to resolve it)"
                ),
            }
        }
        for pool_key in self.keys.keys() {
            let count = doubtful.get(&pool_key.fingerprint).copied().unwrap_or(0);
            if count > 0 {
                // No new submit with that key until each is found or known lost: see `adopt`.
                pool_key.gate.hold(count);
                tracing::warn!(
                    submits = count,
                    key = %pool_key.fingerprint,
                    "an earlier run was stopped between submitting and recording the Horde's \
                     answer; looking for those requests before this key submits anything new"
                );
            }
        }
        let in_flight: HashSet<String> = records.into_iter().map(|(key, _)| key.job_key).collect();
        // Jobs go in expansion order, starting after the prefix that earlier
        // runs settled; that prefix is looked at last (see `prefix`).
        let (prefix_file, settled) = self.settled_before();
        let start = settled.jobs();
        if start > 0 {
            tracing::info!(
                jobs = start,
                "starting after the jobs earlier runs settled; they are checked last"
            );
            self.emit(Event::SettledBefore {
                jobs_done: settled.jobs_done,
                images: settled.images_saved,
            });
        }
        let settled_keys = settled.keys.clone();
        let (settled_done, settled_images) = (settled.jobs_done, settled.images_saved);
        let after_prefix = || {
            self.manifest
                .jobs_from(start, settled_keys.iter().copied())
                .zip(start..)
        };
        let in_prefix = || {
            let take = usize::try_from(start).unwrap_or(usize::MAX);
            self.manifest.jobs().take(take).zip(0..)
        };
        run.prefix = prefix_file.map(|_| prefix::PrefixTracker::after(settled));
        let own = self.own_job_filter();
        let mut going = true;
        if !in_flight.is_empty() {
            tracing::info!(
                requests = in_flight.len(),
                "re-attaching to requests still on the Horde"
            );
            let mut unfound = in_flight.clone();
            // Requests in flight are rarely in the settled prefix: it is read only if one is missing.
            for (job, place) in after_prefix().chain(in_prefix()) {
                if !going || unfound.is_empty() {
                    break;
                }
                if own(&job) && unfound.remove(&job.key.to_string()) {
                    going = self.start_job(job, place, false, &mut run).await;
                }
            }
        }
        // Lost submits of jobs the manifest no longer has cannot be looked for here.
        for pool_key in self.keys.keys() {
            let held = doubtful.get(&pool_key.fingerprint).copied().unwrap_or(0);
            let taken = run
                .doubts_taken
                .get(&pool_key.fingerprint)
                .copied()
                .unwrap_or(0);
            pool_key.gate.release(held.saturating_sub(taken));
        }
        going = going && !self.stop.is_cancelled();
        for (job, place) in after_prefix() {
            if !going {
                break;
            }
            if let Some(tracker) = run.prefix.as_mut() {
                tracker.seen(place, job.key.0);
            }
            if !own(&job) {
                // Another shard's: nothing for this run to do.
                self.settle(&mut run.prefix, place, None);
                continue;
            }
            if !in_flight.contains(&job.key.to_string()) {
                going = self.start_job(job, place, false, &mut run).await;
            }
        }
        // The prefix last: each job is still checked against the ledger and
        // the folder, so an image deleted since is made again.
        let mut looked_at = 0;
        for (job, place) in in_prefix() {
            if !going {
                break;
            }
            looked_at += 1;
            if own(&job) && !in_flight.contains(&job.key.to_string()) {
                going = self.start_job(job, place, true, &mut run).await;
            }
        }
        if looked_at < start {
            // Stopped before the prefix was looked at again: the done jobs of
            // it not seen again count as done in the summary, as it says.
            let (done_seen, images_seen) = run.prefix_done_seen;
            let summary = &mut run.summary;
            let done_unseen = settled_done.saturating_sub(done_seen);
            summary.jobs += done_unseen;
            summary.jobs_done += done_unseen;
            summary.images_saved_before += settled_images.saturating_sub(images_seen);
        }
        while let Some(joined) = run.tasks.join_next().await {
            self.finish_slot(joined, &mut run.progress, &mut run.summary, &mut run.prefix);
        }
        if let Some(settled) = run
            .prefix
            .as_mut()
            .and_then(|t| t.due(Duration::ZERO, true))
        {
            if let Some(written) = self.write_prefix(settled) {
                let _ = written.await;
            }
        }
        let mut summary = run.summary;
        summary.jobs_unfinished += run.progress.len() as u64;
        summary.images_saved_now = self.accounting.images_saved.load(Ordering::Relaxed);
        summary.interrupted =
            self.stop.is_cancelled() && self.aborted().is_none() && self.closed().is_none();
        summary.abort = self.aborted().map(|a| a.to_string());
        if self.keys.keys().len() > 1 {
            summary.keys = self.keys.keys().iter().map(|k| k.usage()).collect();
            for usage in &summary.keys {
                tracing::info!(
                    key = %usage.fingerprint,
                    submits = usage.submits,
                    images = usage.images_saved,
                    kudos = usage.kudos,
                    retired = usage.retired.as_deref().unwrap_or("no"),
                    "key used"
                );
            }
        }
        if let Err(error) = self.ledger.flush().await {
            tracing::error!(%error, "final ledger flush failed");
        }
        summary
    }

    /// Plans one job's slots against the ledger and spawns a task for each
    /// unfinished one. Returns false when no further job should be started.
    ///
    /// `place` is the job's place in the expansion; `counted_before` says
    /// that progress already counted the job as done (it is in the settled
    /// prefix), so finding it done again tells progress nothing new.
    async fn start_job(
        self: &Arc<Self>,
        job: Job,
        place: u64,
        counted_before: bool,
        run: &mut RunState,
    ) -> bool {
        let summary = &mut run.summary;
        summary.jobs += 1;
        summary.images_wanted += u64::from(job.images);
        if let Some(message) = self.unserved(&job) {
            // Nothing is submitted for it: it fails now, the rest of the run goes on.
            tracing::warn!(job = %job.name, %message, "job failed");
            summary.jobs_failed += 1;
            self.emit(Event::Failure(FailureKind::NoWorker));
            self.emit(Event::JobEnded { done: false });
            if let Err(e) = self
                .sink
                .job_failed(&job, FailureKind::NoWorker.as_str(), &message, 0)
            {
                tracing::error!(error = %e, "cannot record a job error");
            }
            self.settle(&mut run.prefix, place, None);
            return !self.stop.is_cancelled();
        }
        let max_n = self.manifest.run.max_n;
        let mut cut_short = false;
        let job = Arc::new(job);
        let job_key = job.key;
        let mut slots_left = 0;
        let mut saved_before = 0u32;
        let mut files_before = Vec::new();
        let mut kudos_before = 0.0;
        for slot in plan::slots(&job, max_n) {
            let key = RequestKey::new(job.key.to_string(), slot.slot);
            let record = match self.ledger.get(&key) {
                Ok(record) => record,
                Err(error) => {
                    self.abort(Abort::Ledger(error.to_string()));
                    break;
                }
            };
            let mut record = record;
            if let Some(r) = record.as_mut() {
                self.forget_missing_images(&key, r);
            }
            saved_before += record.as_ref().map_or(0, |r| r.images.len() as u32);
            let finished_before =
                slot.slot == 0 && record.is_none() && self.sink.has_result(&key.job_key);
            let slot_plan = match plan::resume_slot(slot, record, finished_before) {
                Ok(slot_plan) => slot_plan,
                Err(ResumeError::StaleLedger) => {
                    self.abort(Abort::Ledger(format!(
                        "job {} is finished in {} but unknown to the ledger in {}; run with --rebuild-state",
                        key.job_key,
                        self.sink.location(),
                        self.ledger.location()
                    )));
                    break;
                }
            };
            let lease = match &slot_plan {
                SlotPlan::Done { files, kudos } => {
                    run.summary.slots_skipped_done += 1;
                    files_before.extend(files.iter().cloned());
                    kudos_before += kudos;
                    continue;
                }
                // Already on the Horde: its waiting images count against its key's budget.
                SlotPlan::Follow { n, record } => match self.keys.for_record(record) {
                    Some(pool_key) => Some((Arc::clone(pool_key), pool_key.budget.lease_now(*n))),
                    None => {
                        // Checks and status reads need no key: its images are still collected.
                        tracing::warn!(
                            request = %key,
                            key = record.key_fingerprint.as_deref().unwrap_or("?"),
                            "a request on the Horde was submitted with a key that is not among \
                             this run's keys; following it by id (its images are paid for)"
                        );
                        None
                    }
                },
                // A lost submit leases when it submits again, if it must.
                SlotPlan::FindLost { record } => {
                    if let Some(pool_key) = self.keys.for_record(record) {
                        *run.doubts_taken
                            .entry(pool_key.fingerprint.clone())
                            .or_default() += 1;
                    }
                    None
                }
                SlotPlan::Submit { images, .. } => {
                    if self.submits.is_cancelled() {
                        cut_short = true;
                        break;
                    }
                    // Hold new submits until some key has room, finishing tasks meanwhile.
                    let wanted = *images;
                    let lease = loop {
                        tokio::select! {
                            lease = self.keys.lease(wanted) => break lease,
                            Some(joined) = run.tasks.join_next() => {
                                self.finish_slot(joined, &mut run.progress, &mut run.summary, &mut run.prefix)
                            }
                            () = self.submits.cancelled() => break None,
                        }
                    };
                    if lease.is_none() {
                        cut_short = true;
                        break;
                    }
                    lease
                }
            };
            slots_left += 1;
            let engine = Arc::clone(self);
            let job_for_task = Arc::clone(&job);
            run.tasks.spawn(async move {
                let outcome = engine.drive(&job_for_task, slot, slot_plan, lease).await;
                (job_for_task.key, outcome)
            });
        }
        let summary = &mut run.summary;
        summary.images_saved_before += u64::from(saved_before);
        let done_before = slots_left == 0 && !cut_short;
        // A job of the settled prefix that is only partly there now is counted
        // twice in progress (not in the summary): rare, and only until the end.
        if saved_before > 0 && !(counted_before && done_before) {
            self.emit(Event::SavedBefore {
                images: saved_before,
            });
        }
        if slots_left == 0 {
            if cut_short {
                summary.jobs_unfinished += 1;
            } else {
                summary.jobs_done += 1;
                if counted_before {
                    run.prefix_done_seen.0 += 1;
                    run.prefix_done_seen.1 += u64::from(saved_before);
                } else {
                    self.emit(Event::JobEnded { done: true });
                }
                // Finished before this run: its line is only written if it is missing.
                if !self.sink.has_result(&job.key.to_string()) {
                    self.record_result(&job, files_before, kudos_before, 0);
                }
                self.settle(&mut run.prefix, place, Some(u64::from(saved_before)));
            }
            return !self.stop.is_cancelled();
        }
        run.progress.insert(
            job_key,
            JobProgress {
                place,
                job,
                slots_left,
                files: files_before,
                kudos: kudos_before,
                attempts: 0,
                failure: None,
                images_saved: saved_before,
                stopped: false,
            },
        );
        !self.stop.is_cancelled()
    }

    fn finish_slot(
        &self,
        joined: Result<(JobKey, SlotOutcome), tokio::task::JoinError>,
        progress: &mut HashMap<JobKey, JobProgress>,
        summary: &mut RunSummary,
        prefix: &mut Option<prefix::PrefixTracker>,
    ) {
        let (job_key, outcome) = match joined {
            Ok(done) => done,
            Err(error) => {
                // A panicking slot task is a bug; the ledger still holds its last durable state.
                tracing::error!(%error, "a request task ended abnormally");
                return;
            }
        };
        let Some(entry) = progress.get_mut(&job_key) else {
            return;
        };
        entry.slots_left -= 1;
        match outcome {
            SlotOutcome::Done {
                files,
                kudos,
                attempts,
            } => {
                entry.images_saved += files.len() as u32;
                entry.files.extend(files);
                entry.kudos += kudos;
                entry.attempts += attempts;
            }
            SlotOutcome::Failed {
                kind,
                message,
                images_saved,
            } => {
                entry.images_saved += images_saved;
                entry.failure.get_or_insert((kind, message));
            }
            SlotOutcome::Stopped => entry.stopped = true,
        }
        if entry.slots_left > 0 {
            return;
        }
        let Some(entry) = progress.remove(&job_key) else {
            return;
        };
        if let Some((kind, message)) = entry.failure {
            summary.jobs_failed += 1;
            self.emit(Event::JobEnded { done: false });
            if let Err(e) =
                self.sink
                    .job_failed(&entry.job, kind.as_str(), &message, entry.images_saved)
            {
                tracing::error!(error = %e, "cannot record a job error");
            }
            self.settle(prefix, entry.place, None);
        } else if entry.stopped {
            summary.jobs_unfinished += 1;
        } else {
            summary.jobs_done += 1;
            self.emit(Event::JobEnded { done: true });
            self.record_result(&entry.job, entry.files, entry.kudos, entry.attempts);
            self.settle(prefix, entry.place, Some(u64::from(entry.images_saved)));
        }
    }

    fn record_result(&self, job: &Job, files: Vec<String>, kudos: f64, attempts: u32) {
        if let Err(e) = self.sink.job_done(job, files, kudos, attempts) {
            tracing::error!(error = %e, "cannot record a job result");
        }
    }
}

/// A slot's record on first submit.
pub(crate) fn fresh_record(job: &Job, slot: Slot) -> RequestRecord {
    let key = RequestKey::new(job.key.to_string(), slot.slot);
    RequestRecord::first_attempt(&key, slot.first_index, slot.n, crate::store::now_ms())
}

impl Engine {
    /// Cancels every request the ledger shows on the Horde (`horde-batch cancel`),
    /// saving the images their cancel answers hold.
    pub async fn cancel_in_flight(self: &Arc<Self>) -> CancelReport {
        let records = match self.ledger.in_flight() {
            Ok(records) => records,
            Err(error) => {
                self.abort(Abort::Ledger(error.to_string()));
                return CancelReport::default();
            }
        };
        let mut wanted: HashMap<String, Vec<(RequestKey, RequestRecord)>> = HashMap::new();
        for (key, record) in records {
            wanted
                .entry(key.job_key.clone())
                .or_default()
                .push((key, record));
        }
        let mut report = CancelReport::default();
        for job in self.manifest.jobs() {
            let Some(slots) = wanted.remove(&job.key.to_string()) else {
                continue;
            };
            for (key, mut record) in slots {
                match record.state.clone() {
                    RequestState::Submitted { horde_id, .. } => {
                        report.count(
                            self.cancel_request(&job, &key, &mut record, &horde_id)
                                .await,
                        );
                    }
                    RequestState::Submitting { n, .. } => {
                        // The POST's answer never arrived: find the request, if it reached the
                        // Horde. Only the key that sent it can list it.
                        let Some(pool_key) = self.keys.for_record(&record).cloned() else {
                            let fingerprint =
                                record.key_fingerprint.clone().unwrap_or_else(|| "?".into());
                            tracing::warn!(request = %key, key = %fingerprint, "a lost submit was sent with a key that is not among this run's keys; it was left alone");
                            match report
                                .missing_keys
                                .iter_mut()
                                .find(|(fp, _)| *fp == fingerprint)
                            {
                                Some((_, count)) => *count += 1,
                                None => report.missing_keys.push((fingerprint, 1)),
                            }
                            continue;
                        };
                        let found = self
                            .find_lost_submit(
                                &pool_key,
                                &key.to_string(),
                                n,
                                tokio::time::Instant::now(),
                                &CancellationToken::new(),
                            )
                            .await;
                        match found {
                            Some(adopt::Lost::Adopted(horde_id)) => {
                                record.transition(
                                    RequestState::Submitted {
                                        horde_id: horde_id.clone(),
                                        n,
                                        submitted_ms: record.updated_ms,
                                    },
                                    crate::store::now_ms(),
                                );
                                report.count(
                                    self.cancel_request(&job, &key, &mut record, &horde_id)
                                        .await,
                                );
                            }
                            Some(adopt::Lost::NotOnHorde) => {
                                record.transition(
                                    RequestState::Cancelled {
                                        horde_id: String::new(),
                                        cancelled_ms: crate::store::now_ms(),
                                    },
                                    crate::store::now_ms(),
                                );
                                if let Err(e) = self.ledger.put_durable(&key, &record).await {
                                    self.abort(Abort::Ledger(e.to_string()));
                                }
                            }
                            Some(adopt::Lost::Unresolved) | None => report.not_found += 1,
                        }
                    }
                    _ => {}
                }
            }
            if wanted.is_empty() {
                break;
            }
        }
        for (job_key, _) in wanted {
            tracing::warn!(%job_key, "the ledger has a request for a job the manifest no longer has; it was left alone");
        }
        report
    }
}
