//! Append-only JSON Lines files: the dataset index `metadata.jsonl` and the
//! per-job `results.jsonl` / `errors.jsonl`.
//!
//! Owns the row types and [`JsonlLog`], which keeps each file valid across
//! crashes: a torn last line (a kill mid-append) is repaired on open, every
//! append (one row, or all the rows of a request) is one `write` followed by
//! one `fdatasync`, a failed write is rolled back, and
//! a row whose key is already in the file is not written again. Row types are
//! typed structs, never free-form maps, so a key has the same JSON type in
//! every row (Hugging Face's loader fails otherwise). Must not know where the
//! values come from.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::atomic::{sync_dir, sync_file, sync_file_data};
use super::OutputError;

/// Name of the dataset index in the output directory.
pub const INDEX_FILE: &str = "metadata.jsonl";
/// Name of a shard's part of the index, in its `shard-I-of-N` folder. Not
/// `metadata.jsonl`: `datasets` reads every `metadata.jsonl` under the folder
/// it loads, so a shard's next to the merged one would count each image twice.
pub const SHARD_INDEX_FILE: &str = "shard-metadata.jsonl";
/// Name of the per-job results file.
pub const RESULTS_FILE: &str = "results.jsonl";
/// Name of the per-job errors file.
pub const ERRORS_FILE: &str = "errors.jsonl";

/// One line of `metadata.jsonl`: an image as a Hugging Face `imagefolder` row.
///
/// `file_name` must stay the first field. Numbers that can be fractional are
/// `f64` so they always serialise as floats; the seed is always a string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexRow {
    /// The image's path relative to the output directory, with extension.
    pub file_name: String,
    /// The positive prompt the image was generated from (the caption column).
    /// Empty, and then not written, when the manifest names the caption
    /// column otherwise (`output.metadata.caption`): the prompt is in
    /// `columns` under that name. A prompt is never empty (the Horde refuses one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    /// The negative prompt, `""` when there was none.
    pub negative_prompt: String,
    /// The job's name.
    pub job: String,
    /// The job's stable key.
    pub job_key: String,
    /// Index of the image within its job.
    pub image_index: u32,
    /// The model.
    pub model: String,
    /// The seed, always a string.
    pub seed: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Sampling steps.
    pub steps: u32,
    /// Classifier-free guidance scale (always written as a float).
    pub cfg_scale: f64,
    /// The sampler.
    pub sampler_name: String,
    /// Whether the Horde censored the image.
    pub censored: bool,
    /// The Horde's request id.
    pub horde_request_id: String,
    /// The Horde's generation id.
    pub generation_id: String,
    /// The LoRAs requested, `name` or `name:weight`, comma-separated; `""` when none.
    #[serde(default)]
    pub loras: String,
    /// The post-processors requested, comma-separated; `""` when none.
    #[serde(default)]
    pub post_processing: String,
    /// One column per label of the manifest (the value each axis, wildcard and
    /// row variable took; `null` in rows of jobs without it) and per extra
    /// column the manifest chose.
    #[serde(flatten)]
    pub columns: serde_json::Map<String, serde_json::Value>,
}

impl IndexRow {
    /// The built-in columns, which labels and extra columns may not be named
    /// after (`text` is the caption column's default name).
    pub const BUILT_IN_COLUMNS: &'static [&'static str] = &[
        "file_name",
        "text",
        "negative_prompt",
        "job",
        "job_key",
        "image_index",
        "model",
        "seed",
        "width",
        "height",
        "steps",
        "cfg_scale",
        "sampler_name",
        "censored",
        "horde_request_id",
        "generation_id",
        "loras",
        "post_processing",
    ];
}

/// One line of `results.jsonl`: a job that got all the images it asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job's stable key.
    pub job_key: String,
    /// The job's name.
    pub job: String,
    /// The images' file names, relative to the output directory.
    pub images: Vec<String>,
    /// Kudos spent on the job.
    pub kudos: f64,
    /// Horde requests it took, retries included.
    pub attempts: u32,
    /// When the job finished (RFC 3339).
    pub completed_at: String,
    /// The row's id, for a job from a `rows:` table with an id column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One line of `errors.jsonl`: a job that ended without all its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// The job's stable key.
    pub job_key: String,
    /// The job's name.
    pub job: String,
    /// The failure class (e.g. `permanent`, `kudos`, `no_worker`).
    pub class: String,
    /// What went wrong, for a human.
    pub message: String,
    /// Images saved before the job failed.
    pub images_saved: u32,
    /// Images the job asked for.
    pub images_wanted: u32,
    /// When the job failed (RFC 3339).
    pub at: String,
}

/// What [`JsonlLog::open`] had to repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornLine {
    /// The file.
    pub path: PathBuf,
    /// Bytes of the incomplete last line that were dropped.
    pub dropped_bytes: u64,
}

/// An append-only JSON Lines file whose rows are unique by one string key.
#[derive(Debug)]
pub struct JsonlLog {
    path: PathBuf,
    /// The field of each row holding its key (`file_name`, `job_key`).
    key_field: &'static str,
    keys: HashSet<String>,
    /// Opened on the first append, so a run without errors leaves no
    /// `errors.jsonl` behind.
    file: Option<File>,
    /// Length of the valid content; a failed append is truncated back to it.
    len: u64,
}

impl JsonlLog {
    /// Loads the keys of an existing file (if any), repairing a torn last line.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] if the file cannot be read or repaired;
    /// [`OutputError::CorruptLog`] if a complete line is not a JSON object
    /// with a string `key_field` (that is damage we must not paper over).
    pub fn open(
        path: PathBuf,
        key_field: &'static str,
    ) -> Result<(Self, Option<TornLine>), OutputError> {
        let io_error = |action, source| OutputError::io(action, &path, source);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let log = JsonlLog {
                    path,
                    key_field,
                    keys: HashSet::new(),
                    file: None,
                    len: 0,
                };
                return Ok((log, None));
            }
            Err(e) => return Err(io_error("open", e)),
        };

        let mut reader = BufReader::new(file);
        let mut keys = HashSet::new();
        let mut line = Vec::new();
        let mut valid_len: u64 = 0;
        let mut line_number = 0;
        let mut torn = None;
        let mut unterminated = false;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| io_error("read", e))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            let complete = line.last() == Some(&b'\n');
            unterminated = !complete;
            match row_key(&line, key_field) {
                Ok(Some(key)) => {
                    keys.insert(key);
                }
                Ok(None) => {} // blank line
                // Rows are appended whole, so only the last line can be torn.
                Err(_) if !complete => {
                    torn = Some(read as u64);
                    break;
                }
                Err(message) => {
                    return Err(OutputError::CorruptLog {
                        path,
                        line: line_number,
                        message,
                    })
                }
            }
            valid_len += read as u64;
        }

        let mut log = JsonlLog {
            path,
            key_field,
            keys,
            file: None,
            len: valid_len,
        };
        let mut repaired = None;
        if let Some(dropped_bytes) = torn {
            let file = log.open_for_append()?;
            file.set_len(valid_len)
                .and_then(|()| sync_file(file))
                .map_err(|e| OutputError::io("repair", &log.path, e))?;
            tracing::warn!(
                path = %log.path.display(),
                dropped_bytes,
                "dropped the incomplete last line of an interrupted append"
            );
            repaired = Some(TornLine {
                path: log.path.clone(),
                dropped_bytes,
            });
        } else if unterminated {
            // A complete row without its newline (e.g. saved by an editor):
            // keep it and terminate it, so the next row starts on its own line.
            log.write_row_bytes(b"\n")?;
        }
        Ok((log, repaired))
    }

    /// Whether a row with this key is already in the file.
    pub fn contains(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Appends `row` as one line unless a row with `key` is already there.
    /// Returns whether it was written. The line is durable when this returns.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`]; the file is then truncated back to its previous
    /// length so a partial line does not corrupt later appends.
    pub fn append<T: Serialize>(&mut self, key: &str, row: &T) -> Result<bool, OutputError> {
        if self.contains(key) {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(row)
            .expect("row types are plain structs with string keys; serialising cannot fail");
        debug_assert_eq!(
            row_key(&line, self.key_field).ok().flatten().as_deref(),
            Some(key),
            "the key passed to append must be the row's {}",
            self.key_field
        );
        line.push(b'\n');
        self.write_row_bytes(&line)?;
        self.keys.insert(key.to_owned());
        Ok(true)
    }

    /// Appends every row whose key is not in the file yet (nor earlier in
    /// `rows`) with one `write` and one `fdatasync`: a request's rows cost
    /// one flush, not one each. Returns how many were written; they are
    /// durable when this returns.
    ///
    /// # Errors
    ///
    /// As [`JsonlLog::append`]: on error none of them is recorded, and the
    /// file is truncated back (a kill mid-write tears at most the last line,
    /// which the next open drops).
    pub fn append_many<T: Serialize>(&mut self, rows: &[(&str, &T)]) -> Result<usize, OutputError> {
        let mut buffer = Vec::new();
        let mut new_keys: Vec<&str> = Vec::new();
        for (key, row) in rows {
            if self.contains(key) || new_keys.contains(key) {
                continue;
            }
            let start = buffer.len();
            serde_json::to_writer(&mut buffer, row)
                .expect("row types are plain structs with string keys; serialising cannot fail");
            debug_assert_eq!(
                row_key(&buffer[start..], self.key_field)
                    .ok()
                    .flatten()
                    .as_deref(),
                Some(*key),
                "the key passed to append_many must be the row's {}",
                self.key_field
            );
            buffer.push(b'\n');
            new_keys.push(key);
        }
        if new_keys.is_empty() {
            return Ok(0);
        }
        self.write_row_bytes(&buffer)?;
        self.keys.extend(new_keys.iter().map(|k| (*k).to_owned()));
        Ok(new_keys.len())
    }

    /// Appends `row` as one line even if its key is already there (a history).
    ///
    /// # Errors
    ///
    /// As [`JsonlLog::append`].
    pub fn push<T: Serialize>(&mut self, key: &str, row: &T) -> Result<(), OutputError> {
        let mut line = serde_json::to_vec(row)
            .expect("row types are plain structs with string keys; serialising cannot fail");
        line.push(b'\n');
        self.write_row_bytes(&line)?;
        self.keys.insert(key.to_owned());
        Ok(())
    }

    /// Makes `row` the one line for `key`: appended if the key is new, else
    /// the file is rewritten with the old line replaced (atomically: a new
    /// file, synced, renamed over the old one).
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`]; the old file is then left as it was.
    pub fn replace<T: Serialize>(&mut self, key: &str, row: &T) -> Result<(), OutputError> {
        if !self.contains(key) {
            self.append(key, row)?;
            return Ok(());
        }
        let mut line = serde_json::to_vec(row)
            .expect("row types are plain structs with string keys; serialising cannot fail");
        line.push(b'\n');
        self.rewrite_without(key, &line)
    }

    /// Drops the line(s) of `key`, if any (the file is rewritten atomically).
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`]; the old file is then left as it was.
    pub fn remove(&mut self, key: &str) -> Result<(), OutputError> {
        if !self.contains(key) {
            return Ok(());
        }
        self.rewrite_without(key, b"")?;
        self.keys.remove(key);
        Ok(())
    }

    /// Rewrites the file without the lines of `key`, then `tail`.
    fn rewrite_without(&mut self, key: &str, tail: &[u8]) -> Result<(), OutputError> {
        let old = std::fs::read(&self.path).map_err(|e| OutputError::io("read", &self.path, e))?;
        let mut new = Vec::with_capacity(old.len() + tail.len());
        for line in old.split_inclusive(|b| *b == b'\n') {
            let ours = row_key(line, self.key_field).ok().flatten().as_deref() == Some(key);
            if !ours {
                new.extend_from_slice(line);
            }
        }
        new.extend_from_slice(tail);
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let temp = dir.join(format!(
            "{}{}",
            super::TEMP_PREFIX,
            self.path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        let written = std::fs::write(&temp, &new)
            .and_then(|()| sync_file(&File::open(&temp)?))
            .and_then(|()| std::fs::rename(&temp, &self.path))
            .and_then(|()| sync_dir(&dir));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(OutputError::io("rewrite", &self.path, e));
        }
        // The handle points at the replaced file: reopen on the next append.
        self.file = None;
        self.len = new.len() as u64;
        Ok(())
    }

    fn write_row_bytes(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        let len = self.len;
        let file = self.open_for_append()?;
        // One write call for the whole line, so a kill tears at most this line.
        let result = file.write_all(bytes).and_then(|()| sync_file_data(file));
        if let Err(e) = result {
            // Best effort: the original error is the one worth reporting.
            let _ = file.set_len(len);
            return Err(OutputError::io("append to", &self.path, e));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn open_for_append(&mut self) -> Result<&mut File, OutputError> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)
                .map_err(|e| OutputError::io("open", &self.path, e))?;
            if !existed {
                let dir = self.path.parent().unwrap_or(Path::new("."));
                sync_dir(dir).map_err(|e| OutputError::io("sync", dir, e))?;
            }
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("the file was opened just above"))
    }
}

/// The string value of `key_field` in one line; `None` for a blank line.
fn row_key(line: &[u8], key_field: &str) -> Result<Option<String>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // Only the key is kept; the rest of the row is checked for syntax and skipped,
    // so reopening a large index stays cheap (it runs before a resumed run's first submit).
    let mut deserializer = serde_json::Deserializer::from_slice(line);
    let key = serde::de::DeserializeSeed::deserialize(KeyOf(key_field), &mut deserializer)
        .map_err(|e| format!("not valid JSON: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("not valid JSON: {e}"))?;
    key.map(Some)
}

/// Reads one string field of a JSON object, skipping the others.
struct KeyOf<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyOf<'_> {
    type Value = Result<String, String>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyOf<'_> {
    type Value = Result<String, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if name == self.0 && found.is_none() {
                found = Some(match map.next_value::<serde_json::Value>()? {
                    serde_json::Value::String(key) => Ok(key),
                    _ => Err(format!("`{}` is not a string", self.0)),
                });
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found.unwrap_or_else(|| Err(format!("no `{}` field", self.0))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn appends_once_per_key_and_remembers_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert!(torn.is_none());
        assert!(!path.exists(), "opening must not create the file");
        assert!(log.append("a", &json!({"k": "a"})).unwrap());
        assert!(!log.append("a", &json!({"k": "a"})).unwrap());
        drop(log);

        let (mut log, _) = JsonlLog::open(path.clone(), "k").unwrap();
        assert!(log.contains("a"));
        assert!(!log.append("a", &json!({"k": "a"})).unwrap());
        assert!(log.append("b", &json!({"k": "b"})).unwrap());
        assert_eq!(lines(&path), [r#"{"k":"a"}"#, r#"{"k":"b"}"#]);
    }

    #[test]
    fn a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "{\"k\":\"a\"}\n{\"k\":\"b").unwrap();
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert_eq!(torn.unwrap().dropped_bytes, 7);
        assert!(!log.contains("b"));
        log.append("c", &json!({"k": "c"})).unwrap();
        assert_eq!(lines(&path), [r#"{"k":"a"}"#, r#"{"k":"c"}"#]);
    }

    #[test]
    fn a_complete_last_line_without_newline_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "{\"k\":\"a\"}").unwrap();
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert!(torn.is_none());
        log.append("b", &json!({"k": "b"})).unwrap();
        assert_eq!(lines(&path), [r#"{"k":"a"}"#, r#"{"k":"b"}"#]);
    }

    #[test]
    fn damage_in_the_middle_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "{\"k\":\"a\"}\n\n{\"k\":1}\n{\"k\":\"b\"}\n").unwrap();
        let err = JsonlLog::open(path.clone(), "k").unwrap_err();
        match err {
            OutputError::CorruptLog { line, message, .. } => {
                assert_eq!(line, 3);
                assert!(message.contains("not a string"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
