//! The settled prefix: how a resumed run starts submitting at once instead of
//! first walking every job that earlier runs finished.
//!
//! A run goes through its jobs in manifest order, so what it leaves behind is
//! mostly a prefix of settled jobs (done or failed) followed by the rest. The
//! engine keeps count of that prefix and writes it now and then to
//! `<state>/settled-prefix`: how many jobs, and their keys (a later job whose
//! content repeats an earlier one's takes its key from them). The next run
//! with the same expansion (`CompiledManifest::expansion_fingerprint`) starts
//! with the jobs after the prefix and checks the prefix's jobs last, against
//! the ledger and the folder like any other job.
//!
//! The file is a hint and nothing more: it decides the order in which jobs
//! are looked at, never whether a job is done. A missing, stale, torn or
//! foreign file only costs the time of a start from the first job. So it is
//! written without `fsync`, and anything that does not check out is ignored.
//! This module owns the counting; the file's format is `store::prefix`'s.
//! It must not read the ledger or the output folder.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

pub use crate::store::prefix::{PrefixFile, SettledPrefix, PREFIX_FILE};

/// How often a run writes its prefix while it goes on.
pub const WRITE_EVERY: Duration = Duration::from_secs(30);

/// The prefix file of a run whose jobs expand as `expansion` says
/// (`CompiledManifest::expansion_fingerprint`), as the part `shard`.
pub fn file_for(
    state_dir: &Path,
    expansion: &str,
    shard: Option<crate::plan::Shard>,
) -> PrefixFile {
    PrefixFile::new(state_dir, &format!("{expansion}\nshard {shard:?}"))
}

/// Counts, while a run goes on, how far the settled prefix reaches.
///
/// Jobs are numbered by their place in the expansion (the shard's and
/// everyone else's). `seen` is called for every job in order; `settled` when
/// a job needs nothing more of this run (done, failed, or another shard's).
#[derive(Debug)]
pub struct PrefixTracker {
    /// Keys of the jobs seen so far, by place.
    keys: Vec<u64>,
    /// The first job not known settled.
    frontier: u64,
    /// Settled jobs beyond the frontier, with their images if they are done.
    ahead: BTreeMap<u64, Option<u64>>,
    /// Done jobs and their images before the frontier.
    jobs_done: u64,
    images_saved: u64,
    /// The prefix last written (or loaded), in jobs.
    written: u64,
    last_write: Instant,
}

impl PrefixTracker {
    /// Starts after a prefix an earlier run settled (empty for a first run).
    pub fn after(prefix: SettledPrefix) -> PrefixTracker {
        let frontier = prefix.jobs();
        PrefixTracker {
            keys: prefix.keys,
            frontier,
            ahead: BTreeMap::new(),
            jobs_done: prefix.jobs_done,
            images_saved: prefix.images_saved,
            written: frontier,
            last_write: Instant::now(),
        }
    }

    /// The job at `place` has key `key`. Places come in order, from the end
    /// of the prefix this tracker started after.
    pub fn seen(&mut self, place: u64, key: u64) {
        if place == self.keys.len() as u64 {
            self.keys.push(key);
            self.advance();
        }
    }

    /// The job at `place` is settled: done with `Some(images)`, or failed
    /// or not this run's with `None`.
    pub fn settled(&mut self, place: u64, done_images: Option<u64>) {
        if place < self.frontier {
            return;
        }
        self.ahead.insert(place, done_images);
        self.advance();
    }

    fn advance(&mut self) {
        while self.frontier < self.keys.len() as u64 {
            let Some(done) = self.ahead.remove(&self.frontier) else {
                break;
            };
            if let Some(images) = done {
                self.jobs_done += 1;
                self.images_saved += images;
            }
            self.frontier += 1;
        }
    }

    /// The jobs settled so far, counted from the first.
    pub fn frontier(&self) -> u64 {
        self.frontier
    }

    /// The prefix to write now, if it grew and the last write is `every` ago
    /// (or `force`).
    pub fn due(&mut self, every: Duration, force: bool) -> Option<SettledPrefix> {
        if self.frontier <= self.written || !(force || self.last_write.elapsed() >= every) {
            return None;
        }
        self.written = self.frontier;
        self.last_write = Instant::now();
        let end = usize::try_from(self.frontier)
            .expect("the frontier never passes the keys held in memory");
        Some(SettledPrefix {
            keys: self.keys[..end].to_vec(),
            jobs_done: self.jobs_done,
            images_saved: self.images_saved,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_prefix_is_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let whole = file_for(dir.path(), "expansion", None);
        whole
            .store(&SettledPrefix {
                keys: vec![1, 2],
                jobs_done: 2,
                images_saved: 4,
            })
            .unwrap();
        assert!(whole.load().is_some());
        let shard = "2/3".parse().unwrap();
        assert_eq!(file_for(dir.path(), "expansion", Some(shard)).load(), None);
    }

    #[test]
    fn the_frontier_stops_at_the_first_unsettled_job() {
        let mut tracker = PrefixTracker::after(SettledPrefix {
            keys: vec![10, 11],
            jobs_done: 2,
            images_saved: 8,
        });
        for (place, key) in [(2, 12), (3, 13), (4, 14), (5, 15)] {
            tracker.seen(place, key);
        }
        tracker.settled(1, Some(4)); // inside the loaded prefix: nothing changes
        tracker.settled(3, None);
        tracker.settled(5, Some(4));
        assert_eq!(tracker.frontier(), 2);
        assert_eq!(
            tracker.due(Duration::ZERO, true),
            None,
            "nothing new to write"
        );
        tracker.settled(2, Some(4));
        assert_eq!(tracker.frontier(), 4, "2 and 3 settled, 4 not");
        assert_eq!(
            tracker.due(Duration::from_secs(3600), false),
            None,
            "not due yet"
        );
        assert_eq!(
            tracker.due(Duration::from_secs(3600), true),
            Some(SettledPrefix {
                keys: vec![10, 11, 12, 13],
                jobs_done: 3,
                images_saved: 12,
            }),
            "job 3 failed: it is settled, not done"
        );
        tracker.settled(4, Some(1));
        assert_eq!(tracker.frontier(), 6);
        // A job settled before the stream reached it (a request re-attached
        // first) waits for its key.
        tracker.settled(7, None);
        tracker.seen(6, 16);
        tracker.settled(6, None);
        assert_eq!(tracker.frontier(), 7, "place 7's key is not known yet");
        tracker.seen(7, 17);
        assert_eq!(tracker.frontier(), 8, "now it is");
        tracker.settled(9, None); // unseen, and 8 is not settled
        assert_eq!(tracker.frontier(), 8);
    }
}
