//! A run from first job to last: plan each job against the ledger, start a
//! task per unfinished slot, and end each job as its slots end.
//!
//! Jobs go in expansion order after the settled prefix (`prefix`), requests
//! already on the Horde first. Owns the per-job bookkeeping while slots run;
//! tells progress only through events and must not count for reports.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::{prefix, Abort, Engine, Event, FailureKind, SlotOutcome};
use crate::manifest::{Job, JobKey};
use crate::plan::{self, ResumeError, SlotPlan};
use crate::store::{RequestKey, RequestRecord, RequestState};

/// What `Engine::run` carries from job to job.
#[derive(Default)]
struct RunState {
    progress: HashMap<JobKey, JobProgress>,
    tasks: JoinSet<(JobKey, SlotOutcome)>,
    /// Lost submits of an earlier run whose slots were started (each looks
    /// for its request), by key fingerprint.
    doubts_taken: HashMap<String, u32>,
    /// How far the settled prefix reaches, when the run keeps one.
    prefix: Option<prefix::PrefixTracker>,
    /// Images of the run's slots not yet reached by `start_job`.
    images_left: u64,
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
    /// Runs every job of the manifest to completion (or until stopped).
    pub async fn run(self: &Arc<Self>) {
        self.heard_from_horde();
        let watchdog = {
            let engine = Arc::clone(self);
            tokio::spawn(async move { engine.watch_reachability().await })
        };
        self.run_jobs().await;
        watchdog.abort();
        self.emit(Event::Ended {
            stopped: self.stop.is_cancelled(),
        });
    }

    async fn run_jobs(self: &Arc<Self>) {
        let mut run = RunState::default();
        // Known up front, so progress reports are right from the first sample.
        let (jobs, images_wanted) = if self.is_partial() {
            self.own_jobs().fold((0, 0), |(jobs, images), job| {
                (jobs + 1, images + u64::from(job.images))
            })
        } else {
            (self.manifest.total_jobs(), self.manifest.total_images())
        };
        run.images_left = images_wanted;
        self.emit(Event::Started {
            jobs,
            images_wanted,
            keys: self
                .keys
                .keys()
                .iter()
                .map(|k| k.fingerprint.clone())
                .collect(),
        });
        for key in self.keys.keys() {
            if let Some(reason) = key.retired() {
                self.emit(Event::KeyRetired {
                    key: key.fingerprint.clone(),
                    reason,
                });
            }
        }

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
        // Records of keys horde-batch does not write belong to no job of the manifest.
        let in_flight: HashSet<JobKey> = records.iter().filter_map(|(key, _)| key.job()).collect();
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
                if own(&job) && unfound.remove(&job.key) {
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
            if !in_flight.contains(&job.key) {
                going = self.start_job(job, place, false, &mut run).await;
            }
        }
        // The prefix last: each job is still checked against the ledger and
        // the folder, so an image deleted since is made again.
        for (job, place) in in_prefix() {
            if !going {
                break;
            }
            if own(&job) && !in_flight.contains(&job.key) {
                going = self.start_job(job, place, true, &mut run).await;
            }
        }
        while let Some(joined) = run.tasks.join_next().await {
            self.finish_slot(joined, &mut run.progress, &mut run.prefix);
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
        if self.keys.keys().len() > 1 {
            for key in self.keys.keys() {
                tracing::info!(
                    key = %key.fingerprint,
                    retired = key.retired().as_deref().unwrap_or("no"),
                    "key of the pool"
                );
            }
        }
        if let Err(error) = self.ledger.flush().await {
            tracing::error!(%error, "final ledger flush failed");
        }
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
        if let Some(message) = self.unserved(&job) {
            // Nothing is submitted for it: it fails now, the rest of the run goes on.
            tracing::warn!(job = %job.name, %message, "job failed");
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
        // What the ledger said before images gone from the folder were
        // forgotten: a job of the settled prefix was counted done with these.
        let mut recorded_images = 0u32;
        let mut recorded_done = true;
        let mut files_before = Vec::new();
        let mut kudos_before = 0.0;
        for slot in plan::slots(&job, max_n) {
            run.images_left = run.images_left.saturating_sub(u64::from(slot.n));
            let key = RequestKey::of_job(job.key, slot.slot);
            let record = match self.ledger.get(&key) {
                Ok(record) => record,
                Err(error) => {
                    self.abort(Abort::Ledger(error.to_string()));
                    break;
                }
            };
            let mut record = record;
            recorded_images += record.as_ref().map_or(0, |r| r.images.len() as u32);
            recorded_done &= record.as_ref().is_some_and(|r| {
                matches!(r.state, RequestState::Done) && r.missing_indices().is_empty()
            });
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
                    // A wait cut short by a finishing task starts the lease again:
                    // whether it waited at all is kept here.
                    let mut waited = false;
                    // A part leaves its rest for a later cycle of the queue: worth it
                    // only while later slots can fill the room meanwhile, not at the
                    // end of the run, where the rest would make the run a cycle longer.
                    let split = run.images_left >= u64::from(wanted);
                    let mut lease = loop {
                        tokio::select! {
                            biased;
                            lease = self.keys.lease(wanted, split) => break lease,
                            Some(joined) = run.tasks.join_next() => {
                                waited = true;
                                self.finish_slot(joined, &mut run.progress, &mut run.prefix)
                            }
                            () = self.submits.cancelled() => break None,
                        }
                    };
                    let Some((_, held)) = lease.as_mut() else {
                        cut_short = true;
                        break;
                    };
                    if waited {
                        held.mark_pressed();
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
        let done_before = slots_left == 0 && !cut_short;
        if counted_before && recorded_done && !done_before {
            // Counted done from the settled prefix, but images are gone or the
            // run stopped first: it counts from what is there now instead.
            self.emit(Event::Unsettled {
                images: u64::from(recorded_images),
            });
        }
        if saved_before > 0 && !(counted_before && done_before) {
            self.emit(Event::SavedBefore {
                images: saved_before,
            });
        }
        if slots_left == 0 {
            if !cut_short {
                if !counted_before {
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
            self.emit(Event::JobEnded { done: false });
            if let Err(e) =
                self.sink
                    .job_failed(&entry.job, kind.as_str(), &message, entry.images_saved)
            {
                tracing::error!(error = %e, "cannot record a job error");
            }
            self.settle(prefix, entry.place, None);
        } else if !entry.stopped {
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

    /// Images of the record whose files are gone (deleted since they were
    /// saved, or set aside by `horde-batch reroll`) are forgotten: the slot
    /// then asks for exactly those again. The sink learns the seeds a reroll
    /// chose for the images still to make.
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
            if record.is_rerolled(index, &image.generation_id) {
                // Set aside by `horde-batch reroll`: asked for, not lost.
                tracing::info!(
                    key = %key,
                    seed = record.reroll_seed(index).unwrap_or("the job's"),
                    "rerolled image {} is made again",
                    image.file_name
                );
            } else {
                tracing::warn!(key = %key, file = %image.file_name, "the image is gone from the output folder; it will be made again");
                self.emit(Event::ImageGone);
            }
            if let Err(error) = self.sink.forget(&image.file_name) {
                tracing::error!(%error, "cannot forget a missing image");
            }
        }
        // Images still to make with a seed a reroll chose: their sidecars record it.
        for (index, seed) in record
            .rerolls
            .iter()
            .filter(|(index, _)| !record.images.contains_key(index))
            .filter_map(|(index, reroll)| Some((*index, reroll.seed.as_deref()?)))
        {
            self.sink.reseeded(&record.job_key, index, seed);
        }
    }
}
