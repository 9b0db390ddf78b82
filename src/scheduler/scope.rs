//! Which jobs a run is for, and what it may assume before looking: the
//! shard or `--retry-failed` filter, the settled prefix of earlier runs, and
//! the models no worker serves.
//!
//! Reads only the run's [`RunConfig`](super::RunConfig); must not submit,
//! count or report.

use super::{prefix, Engine};
use crate::manifest::Job;

impl Engine {
    /// The manifest's jobs this run is for (all of them, a shard's, or the
    /// ones `--retry-failed` names).
    pub(super) fn own_jobs(&self) -> impl Iterator<Item = Job> + '_ {
        let own = self.own_job_filter();
        self.manifest.jobs().filter(move |job| own(job))
    }

    /// Whether the run is for some of the manifest's jobs only.
    pub(super) fn is_partial(&self) -> bool {
        self.config.shard.is_some() || self.config.only.is_some()
    }

    /// Whether a job is this run's (see `own_jobs`).
    pub(super) fn own_job_filter(&self) -> impl Fn(&Job) -> bool + 'static {
        let shard = self.config.shard;
        let only = self.config.only.clone();
        move |job| {
            shard.is_none_or(|shard| shard.includes(job.key))
                && only.as_ref().is_none_or(|keys| keys.contains(&job.key))
        }
    }

    /// The prefix an earlier run settled, and the file to keep this run's in
    /// (none with `--retry-failed`, which looks at a few jobs only).
    pub(super) fn settled_before(&self) -> (Option<prefix::PrefixFile>, prefix::SettledPrefix) {
        let file = self.prefix_file();
        let loaded = file.and_then(prefix::PrefixFile::load);
        (file.cloned(), loaded.unwrap_or_default())
    }

    fn prefix_file(&self) -> Option<&prefix::PrefixFile> {
        self.config
            .prefix_file
            .as_ref()
            .filter(|_| self.config.only.is_none())
    }

    /// A job needs nothing more of this run: the settled prefix may grow.
    pub(super) fn settle(
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

    pub(super) fn write_prefix(
        &self,
        settled: prefix::SettledPrefix,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let file = self.prefix_file()?.clone();
        Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = file.store(&settled) {
                tracing::warn!(%error, "cannot write the settled prefix; the next run starts from the first job");
            }
        }))
    }

    /// Why no worker can serve `job`, if none can: its models and the served
    /// models closest to them.
    pub(super) fn unserved(&self, job: &Job) -> Option<String> {
        let served = self.config.served_models.as_ref()?;
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
}
