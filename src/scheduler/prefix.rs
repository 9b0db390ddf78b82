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
//! This module owns the file format and the counting; it must not read the
//! ledger or the output folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file's name in the state folder.
pub const PREFIX_FILE: &str = "settled-prefix";

const MAGIC: &[u8] = b"horde-batch settled prefix v1\n";
/// A fingerprint is a UUID in text form.
const FINGERPRINT_LEN: usize = 36;
const HEADER_LEN: usize = MAGIC.len() + FINGERPRINT_LEN + 3 * 8;
/// The checksum at the end: the first 8 bytes of a UUIDv5 of the rest.
const CHECKSUM_LEN: usize = 8;
const CHECKSUM_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x3b7e_51a2_9c40_4f1d_8e26_70d4_a9c3_152b);

/// How often a run writes its prefix while it goes on.
pub const WRITE_EVERY: Duration = Duration::from_secs(30);

/// The first `keys.len()` jobs of the expansion are settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettledPrefix {
    pub keys: Vec<u64>,
    /// Of those, the jobs that were done (the others failed or were another
    /// shard's), and their images: what progress shows before the prefix's
    /// jobs are looked at again.
    pub jobs_done: u64,
    pub images_saved: u64,
}

impl SettledPrefix {
    /// How many jobs the prefix holds.
    pub fn jobs(&self) -> u64 {
        self.keys.len() as u64
    }

    fn encode(&self, fingerprint: &str) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.keys.len() * 8 + CHECKSUM_LEN);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(fingerprint.as_bytes());
        for count in [self.jobs(), self.jobs_done, self.images_saved] {
            bytes.extend_from_slice(&count.to_le_bytes());
        }
        for key in &self.keys {
            bytes.extend_from_slice(&key.to_le_bytes());
        }
        let checksum = checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        bytes
    }

    fn decode(bytes: &[u8], fingerprint: &str) -> Option<SettledPrefix> {
        let body_len = bytes.len().checked_sub(CHECKSUM_LEN)?;
        let (body, sum) = bytes.split_at(body_len);
        if sum != checksum(body) || !body.starts_with(MAGIC) || body.len() < HEADER_LEN {
            return None;
        }
        let (stored_fingerprint, rest) = body[MAGIC.len()..].split_at(FINGERPRINT_LEN);
        if stored_fingerprint != fingerprint.as_bytes() {
            return None;
        }
        let mut words = rest.chunks_exact(8).map(|chunk| {
            u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8) gives 8 bytes"))
        });
        let (count, jobs_done, images_saved) = (words.next()?, words.next()?, words.next()?);
        if rest.len() as u64 != count.checked_add(3)?.checked_mul(8)? {
            return None;
        }
        Some(SettledPrefix {
            keys: words.collect(),
            jobs_done,
            images_saved,
        })
    }
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = uuid::Uuid::new_v5(&CHECKSUM_NAMESPACE, bytes);
    let mut sum = [0; CHECKSUM_LEN];
    sum.copy_from_slice(&digest.as_bytes()[..CHECKSUM_LEN]);
    sum
}

/// Where a run keeps its prefix, and for which expansion.
#[derive(Debug, Clone)]
pub struct PrefixFile {
    path: PathBuf,
    fingerprint: String,
}

impl PrefixFile {
    /// The file of a run whose jobs expand as `expansion` says
    /// (`CompiledManifest::expansion_fingerprint`), as the part `shard`.
    pub fn new(state_dir: &Path, expansion: &str, shard: Option<crate::plan::Shard>) -> PrefixFile {
        let run = format!("{expansion}\nshard {shard:?}");
        PrefixFile {
            path: state_dir.join(PREFIX_FILE),
            fingerprint: uuid::Uuid::new_v5(&CHECKSUM_NAMESPACE, run.as_bytes()).to_string(),
        }
    }

    /// The prefix an earlier run of the same expansion wrote, if any checks out.
    pub fn load(&self) -> Option<SettledPrefix> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return None,
            Err(error) => {
                tracing::debug!(path = %self.path.display(), %error, "settled prefix unreadable; starting from the first job");
                return None;
            }
        };
        let prefix = SettledPrefix::decode(&bytes, &self.fingerprint);
        if prefix.is_none() {
            tracing::debug!(path = %self.path.display(), "settled prefix of another expansion or damaged; starting from the first job");
        }
        prefix
    }

    /// Replaces the file (temp file and rename: a reader sees the old or the new one).
    pub fn store(&self, prefix: &SettledPrefix) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut temp = tempfile::Builder::new()
            .prefix(".settled-prefix.")
            .tempfile_in(dir)?;
        std::io::Write::write_all(&mut temp, &prefix.encode(&self.fingerprint))?;
        temp.persist(&self.path).map_err(|error| error.error)?;
        Ok(())
    }
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

    const FINGERPRINT: &str = "0b5b5c4e-8f5e-5b0c-9e0f-3d1f2a7c6e11";

    #[test]
    fn a_prefix_survives_the_round_trip_and_nothing_else_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = PrefixFile::new(dir.path(), FINGERPRINT, None);
        assert_eq!(file.load(), None, "no file: no prefix");
        let prefix = SettledPrefix {
            keys: vec![7, u64::MAX, 0, 42],
            jobs_done: 3,
            images_saved: 12,
        };
        file.store(&prefix).unwrap();
        assert_eq!(file.load(), Some(prefix.clone()));

        let other = PrefixFile::new(dir.path(), &FINGERPRINT.replace('0', "1"), None);
        assert_eq!(other.load(), None, "another expansion's prefix is ignored");
        let shard = "2/3".parse().unwrap();
        let other = PrefixFile::new(dir.path(), FINGERPRINT, Some(shard));
        assert_eq!(other.load(), None, "a shard's prefix is its own");

        let bytes = std::fs::read(dir.path().join(PREFIX_FILE)).unwrap();
        for cut in [0, 1, HEADER_LEN, bytes.len() - 1] {
            std::fs::write(dir.path().join(PREFIX_FILE), &bytes[..cut]).unwrap();
            assert_eq!(file.load(), None, "torn at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        std::fs::write(dir.path().join(PREFIX_FILE), &flipped).unwrap();
        assert_eq!(file.load(), None, "a flipped bit fails the checksum");
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
