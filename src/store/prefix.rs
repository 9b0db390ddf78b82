//! The settled-prefix file (`<state>/settled-prefix`): how many jobs, in
//! expansion order, earlier runs settled, and their keys. What the prefix
//! means and how a run counts it is the scheduler's (`scheduler::prefix`);
//! this module owns only the file: its format, checksum and atomic replace.
//!
//! The file is a hint and nothing more: it decides the order in which jobs
//! are looked at, never whether a job is done. A missing, stale, torn or
//! foreign file only costs the time of a start from the first job. So it is
//! written without `fsync`, and anything that does not check out is ignored.
//! Must not read the ledger or the output folder.

use std::path::{Path, PathBuf};

/// The file's name in the state folder.
pub const PREFIX_FILE: &str = "settled-prefix";

const MAGIC: &[u8] = b"horde-batch settled prefix v1\n";
/// A fingerprint is a UUID in text form.
const FINGERPRINT_LEN: usize = 36;
const HEADER_LEN: usize = MAGIC.len() + FINGERPRINT_LEN + 3 * 8;
/// The checksum at the end: the first 8 bytes of the name digest of the rest.
const CHECKSUM_LEN: usize = 8;
const CHECKSUM_NAMESPACE: u128 = 0x3b7e_51a2_9c40_4f1d_8e26_70d4_a9c3_152b;

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
    let digest = crate::digest::name_digest(CHECKSUM_NAMESPACE, bytes);
    let mut sum = [0; CHECKSUM_LEN];
    sum.copy_from_slice(&digest[..CHECKSUM_LEN]);
    sum
}

/// Where a run keeps its prefix, and for which expansion.
#[derive(Debug, Clone)]
pub struct PrefixFile {
    path: PathBuf,
    fingerprint: String,
}

impl PrefixFile {
    /// The file of a run whose jobs, and the part of them it runs, are
    /// named by `run` (the scheduler's expansion fingerprint and shard).
    pub fn new(state_dir: &Path, run: &str) -> PrefixFile {
        PrefixFile {
            path: state_dir.join(PREFIX_FILE),
            fingerprint: crate::digest::to_hyphenated(crate::digest::name_digest(
                CHECKSUM_NAMESPACE,
                run.as_bytes(),
            )),
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

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "0b5b5c4e-8f5e-5b0c-9e0f-3d1f2a7c6e11";

    #[test]
    fn a_prefix_survives_the_round_trip_and_nothing_else_passes() {
        let dir = tempfile::tempdir().unwrap();
        let file = PrefixFile::new(dir.path(), FINGERPRINT);
        assert_eq!(file.load(), None, "no file: no prefix");
        let prefix = SettledPrefix {
            keys: vec![7, u64::MAX, 0, 42],
            jobs_done: 3,
            images_saved: 12,
        };
        file.store(&prefix).unwrap();
        assert_eq!(file.load(), Some(prefix.clone()));

        let other = PrefixFile::new(dir.path(), &FINGERPRINT.replace('0', "1"));
        assert_eq!(other.load(), None, "another expansion's prefix is ignored");

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
}
