//! `NNNNN_stats.json`: what one exported shard holds (img2dataset's stats
//! file, without timestamps so a rerun writes the same bytes), and the
//! digest of what it was made from. A shard whose stats file matches what
//! would be written, and whose files are all there at their sizes, is
//! complete: a rerun skips it. Must not write files.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The layout version of exported shards: a change of any file's content
/// for the same rows bumps it, so older shards are rewritten, not kept.
pub const FORMAT_VERSION: u32 = 1;

/// One shard's stats file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Index rows in the shard.
    pub count: u64,
    /// Images exported.
    pub successes: u64,
    /// Rows whose image file was not there (deleted since, or rejected).
    pub failed_to_export: u64,
    /// Bytes of the shard's files.
    pub bytes: u64,
    /// The key of its first and last row.
    pub start_key: String,
    pub end_key: String,
    /// `webdataset`, `parquet` or `hub`.
    pub format: String,
    pub format_version: u32,
    /// SHA-256 of the rows, the image and sidecar sizes, the columns and the options.
    pub digest: String,
    /// The shard's files (relative to the export folder) and their sizes; a
    /// folder (the Hub layout's) is named with a trailing `/` and counted in entries.
    pub files: BTreeMap<String, u64>,
}

impl ShardStats {
    /// Whether `self` (read from disk) says the shard `expected` describes
    /// is there: same rows and digest, every file at its size.
    pub fn completes(&self, expected: &ShardStats, root: &Path) -> bool {
        let same = self.count == expected.count
            && self.successes == expected.successes
            && self.failed_to_export == expected.failed_to_export
            && self.start_key == expected.start_key
            && self.end_key == expected.end_key
            && self.format == expected.format
            && self.format_version == expected.format_version
            && self.digest == expected.digest;
        same && !self.files.is_empty()
            && self
                .files
                .iter()
                .all(|(name, size)| match name.strip_suffix('/') {
                    Some(folder) => std::fs::read_dir(root.join(folder))
                        .is_ok_and(|entries| entries.count() as u64 == *size),
                    None => std::fs::metadata(root.join(name)).is_ok_and(|m| m.len() == *size),
                })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain fields cannot fail.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// The running digest of one shard's rows.
#[derive(Default, Clone)]
pub struct ShardDigest(Sha256);

impl ShardDigest {
    /// Takes in a row's line and the sizes of its image and sidecar (`None`: missing).
    pub fn row(&mut self, line: &str, image: Option<u64>, sidecar: Option<u64>) {
        self.0.update((line.len() as u64).to_le_bytes());
        self.0.update(line.as_bytes());
        for size in [image, sidecar] {
            self.0.update(size.map_or([0xff; 9], |s| {
                let mut b = [0; 9];
                b[1..].copy_from_slice(&s.to_le_bytes());
                b
            }));
        }
    }

    /// The hex digest, with what applies to every shard (`common`: the
    /// format, options and columns) folded in.
    pub fn finish(self, common: &[u8]) -> String {
        let rows = self.0.finalize();
        let mut all = Sha256::new();
        all.update(common);
        all.update(rows);
        all.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> ShardStats {
        ShardStats {
            count: 2,
            successes: 2,
            failed_to_export: 0,
            bytes: 3,
            start_key: "a".into(),
            end_key: "b".into(),
            format: "webdataset".into(),
            format_version: FORMAT_VERSION,
            digest: "d".into(),
            files: BTreeMap::from([("00000.tar".to_owned(), 3)]),
        }
    }

    #[test]
    fn a_shard_is_complete_only_with_the_same_digest_and_every_file_at_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let on_disk = stats();
        assert!(!on_disk.completes(&stats(), dir.path()), "no file yet");
        std::fs::write(dir.path().join("00000.tar"), b"abc").unwrap();
        assert!(on_disk.completes(&stats(), dir.path()));
        let other = ShardStats {
            digest: "e".into(),
            ..stats()
        };
        assert!(!on_disk.completes(&other, dir.path()));
        std::fs::write(dir.path().join("00000.tar"), b"ab").unwrap();
        assert!(!on_disk.completes(&stats(), dir.path()), "a cut file");
    }

    #[test]
    fn a_digest_changes_with_any_row_or_size() {
        let of = |line: &str, image| {
            let mut d = ShardDigest::default();
            d.row(line, image, Some(1));
            d.finish(b"c")
        };
        assert_eq!(of("x", Some(1)), of("x", Some(1)));
        assert_ne!(of("x", Some(1)), of("y", Some(1)));
        assert_ne!(of("x", Some(1)), of("x", Some(2)));
        assert_ne!(of("x", Some(1)), of("x", None));
    }
}
