//! Append-only JSON Lines files: the dataset index `metadata.jsonl` and the
//! per-job `results.jsonl` / `errors.jsonl`.
//!
//! Owns the row types and [`JsonlLog`], which keeps each file valid across
//! crashes: a torn last line (a kill mid-append) is repaired on open, every
//! append (one row, or all the rows of a request) is one `write` followed by
//! one `fdatasync`, a failed write is rolled back, and
//! a row whose key is already in the file is not written again. Opening
//! reads only the last line; the keys are read on first use (a damaged line
//! in the middle is reported then), so opening a big index costs nothing. Row types are
//! typed structs, never free-form maps, so a key has the same JSON type in
//! every row (Hugging Face's loader fails otherwise). Must not know where the
//! values come from.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
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
    pub const BUILT_IN_COLUMNS: &'static [&'static str] = crate::layout::BUILT_IN_COLUMNS;
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
    /// The keys in the file; `None` until first needed, because reading a
    /// big file (a 230 MB index) must not delay a resumed run's start.
    /// Appends made before the load need not be added: the load reads them.
    keys: Option<HashSet<String>>,
    /// A damaged line a load found (line number, what is wrong), so every
    /// later use reports it again without rereading the file.
    corrupt: Option<(usize, String)>,
    /// Opened on the first append, so a run without errors leaves no
    /// `errors.jsonl` behind.
    file: Option<File>,
    /// Length of the valid content; a failed append is truncated back to it.
    len: u64,
}

/// How an existing file ends.
enum Tail {
    /// Empty, or its last line ends with a newline.
    Terminated,
    /// The last line is a valid row (or blank) without its newline.
    Unterminated,
    /// The last line is an incomplete row of this many bytes.
    Torn(u64),
}

impl JsonlLog {
    /// Opens a file (which may not exist yet), repairing a torn last line.
    ///
    /// Only the file's last line is read here; the keys are read on first
    /// use (see [`JsonlLog::load`]).
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] if the file cannot be read or repaired.
    pub fn open(
        path: PathBuf,
        key_field: &'static str,
    ) -> Result<(Self, Option<TornLine>), OutputError> {
        let io_error = |action, source| OutputError::io(action, &path, source);
        let (len, tail) = match File::open(&path) {
            Ok(mut file) => {
                let len = file.metadata().map_err(|e| io_error("read", e))?.len();
                let tail = read_tail(&mut file, len, key_field).map_err(|e| io_error("read", e))?;
                (len, tail)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let log = JsonlLog {
                    path,
                    key_field,
                    keys: Some(HashSet::new()),
                    corrupt: None,
                    file: None,
                    len: 0,
                };
                return Ok((log, None));
            }
            Err(e) => return Err(io_error("open", e)),
        };

        let mut log = JsonlLog {
            path,
            key_field,
            keys: None,
            corrupt: None,
            file: None,
            len,
        };
        let mut repaired = None;
        match tail {
            Tail::Terminated => {}
            Tail::Torn(dropped_bytes) => {
                let valid_len = len - dropped_bytes;
                log.len = valid_len;
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
            }
            Tail::Unterminated => {
                // A complete row without its newline (e.g. saved by an editor):
                // keep it and terminate it, so the next row starts on its own line.
                log.write_row_bytes(b"\n")?;
            }
        }
        Ok((log, repaired))
    }

    /// Reads the keys of the file, once; later calls return at once.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] if the file cannot be read;
    /// [`OutputError::CorruptLog`] if a complete line is not a JSON object
    /// with a string `key_field` (that is damage we must not paper over).
    /// A damaged line is reported again by every later call.
    pub fn load(&mut self) -> Result<&mut HashSet<String>, OutputError> {
        if let Some((line, message)) = &self.corrupt {
            return Err(OutputError::CorruptLog {
                path: self.path.clone(),
                line: *line,
                message: message.clone(),
            });
        }
        if self.keys.is_none() {
            match read_keys(&self.path, self.len, self.key_field) {
                Ok(Ok(keys)) => self.keys = Some(keys),
                Ok(Err((line, message))) => {
                    self.corrupt = Some((line, message.clone()));
                    return Err(OutputError::CorruptLog {
                        path: self.path.clone(),
                        line,
                        message,
                    });
                }
                Err(e) => return Err(OutputError::io("read", &self.path, e)),
            }
        }
        Ok(self
            .keys
            .as_mut()
            .expect("the keys were loaded just above or before"))
    }

    /// Whether a row with this key is already in the file (reads the keys
    /// on first use).
    ///
    /// # Errors
    ///
    /// As [`JsonlLog::load`].
    pub fn contains(&mut self, key: &str) -> Result<bool, OutputError> {
        Ok(self.load()?.contains(key))
    }

    /// Appends `row` as one line unless a row with `key` is already there.
    /// Returns whether it was written. The line is durable when this returns.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`]; the file is then truncated back to its previous
    /// length so a partial line does not corrupt later appends.
    pub fn append<T: Serialize>(&mut self, key: &str, row: &T) -> Result<bool, OutputError> {
        if self.contains(key)? {
            return Ok(false);
        }
        let mut line = serde_json::to_vec(row)
            .expect("row types are plain structs with string keys; serialising cannot fail");
        debug_assert_eq!(
            line_key(&line, self.key_field).ok().flatten().as_deref(),
            Some(key),
            "the key passed to append must be the row's {}",
            self.key_field
        );
        line.push(b'\n');
        self.write_row_bytes(&line)?;
        self.remember(key);
        Ok(true)
    }

    /// Appends every row whose key is not in the file yet (nor earlier in
    /// `rows`) with one `write` and one `fdatasync`: a request's rows cost
    /// one flush, not one each. Returns how many were written; they are
    /// durable when this returns.
    ///
    /// Each row says whether its key may already be in the file. The keys
    /// are read (see [`JsonlLog::load`]) only if one may; a row the caller
    /// knows to be new is checked only against keys already read, so a
    /// batch of new rows never reads the file.
    ///
    /// # Errors
    ///
    /// As [`JsonlLog::append`], and as [`JsonlLog::load`] when the keys had
    /// to be read: on error none of them is recorded, and the file is
    /// truncated back (a kill mid-write tears at most the last line, which
    /// the next open drops).
    pub fn append_many<T: Serialize>(
        &mut self,
        rows: &[(&str, &T, bool)],
    ) -> Result<usize, OutputError> {
        if rows.iter().any(|(_, _, may_exist)| *may_exist) {
            self.load()?;
        }
        let mut buffer = Vec::new();
        let mut new_keys: Vec<&str> = Vec::new();
        for (key, row, _) in rows {
            let known = self.keys.as_ref().is_some_and(|keys| keys.contains(*key));
            if known || new_keys.contains(key) {
                continue;
            }
            let start = buffer.len();
            serde_json::to_writer(&mut buffer, row)
                .expect("row types are plain structs with string keys; serialising cannot fail");
            debug_assert_eq!(
                line_key(&buffer[start..], self.key_field)
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
        for key in &new_keys {
            self.remember(key);
        }
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
        self.remember(key);
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
        if !self.contains(key)? {
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
        if !self.contains(key)? {
            return Ok(());
        }
        self.rewrite_without(key, b"")?;
        self.load()?.remove(key);
        Ok(())
    }

    /// Forgets what it knew of the file after something else replaced it
    /// whole (the index gaining alchemy columns): the next append reopens
    /// it, the next question reads its keys again.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] if its new length cannot be read.
    pub fn file_replaced(&mut self) -> Result<(), OutputError> {
        self.file = None;
        self.keys = None;
        self.corrupt = None;
        self.len = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.keys = Some(HashSet::new());
                0
            }
            Err(e) => return Err(OutputError::io("read", &self.path, e)),
        };
        Ok(())
    }

    /// Adds a key just written to the key set, if it was read already (if
    /// not, the load will find the row in the file).
    fn remember(&mut self, key: &str) {
        if let Some(keys) = &mut self.keys {
            keys.insert(key.to_owned());
        }
    }

    /// Rewrites the file without the lines of `key`, then `tail`.
    fn rewrite_without(&mut self, key: &str, tail: &[u8]) -> Result<(), OutputError> {
        let old = std::fs::read(&self.path).map_err(|e| OutputError::io("read", &self.path, e))?;
        let mut new = Vec::with_capacity(old.len() + tail.len());
        for line in old.split_inclusive(|b| *b == b'\n') {
            let ours = line_key(line, self.key_field).ok().flatten().as_deref() == Some(key);
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

/// Reads how a file of `len` bytes ends: only its last line is read.
fn read_tail(file: &mut File, len: u64, key_field: &str) -> io::Result<Tail> {
    if len == 0 {
        return Ok(Tail::Terminated);
    }
    // Read backwards in chunks until the newline before the last line.
    const CHUNK: u64 = 64 * 1024;
    let mut last_line: Vec<u8> = Vec::new();
    let mut end = len;
    loop {
        let start = end.saturating_sub(CHUNK);
        let mut chunk = vec![0; usize::try_from(end - start).unwrap_or(usize::MAX)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(Tail::Terminated);
        }
        chunk.extend_from_slice(&last_line);
        last_line = chunk;
        let newline_in_chunk = last_line[..usize::try_from(end - start).unwrap_or(usize::MAX)]
            .iter()
            .rposition(|b| *b == b'\n');
        if let Some(newline) = newline_in_chunk {
            last_line.drain(..=newline);
            break;
        }
        if start == 0 {
            break;
        }
        end = start;
    }
    // Rows are appended whole, so only the last line can be torn. Checked
    // in full, not by the key-first fast path: a torn row can end in `}`
    // (inside a prompt, or after a nested value) and must not be kept.
    Ok(match row_key(&last_line, key_field) {
        Ok(_) => Tail::Unterminated,
        Err(_) => Tail::Torn(last_line.len() as u64),
    })
}

/// Reads the keys of the first `len` bytes of the file at `path`, every
/// line of which is complete. `Ok(Err((line, message)))` names a damaged line.
fn read_keys(
    path: &Path,
    len: u64,
    key_field: &str,
) -> io::Result<Result<HashSet<String>, (usize, String)>> {
    let file = File::open(path)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file.take(len));
    // Sized from the lines in the first buffer: growing a set of 500,000
    // keys step by step takes longer than reading them.
    let first = reader.fill_buf()?;
    let lines_in_first = first.iter().filter(|b| **b == b'\n').count().max(1) as u64;
    let estimate = (len.saturating_mul(lines_in_first) / (first.len().max(1) as u64))
        // Blank or tiny lines (a hand-edited file) must not reserve gigabytes.
        .min(len / 64)
        .min(1 << 21);
    let mut keys = HashSet::with_capacity(usize::try_from(estimate).unwrap_or(0));
    let mut line = Vec::new();
    let mut line_number = 0;
    loop {
        line.clear();
        // read_until finds the newline with the platform's memchr.
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(Ok(keys));
        }
        line_number += 1;
        match line_key(&line, key_field) {
            Ok(Some(key)) => {
                keys.insert(key);
            }
            Ok(None) => {} // blank line
            Err(message) => return Ok(Err((line_number, message))),
        }
    }
}

/// The string value of `key_field` in one line; `None` for a blank line.
///
/// Rows written by us start with their key (`{"file_name":"…"`): that prefix
/// is read directly, which makes loading a 500,000-row file several times
/// faster. Any other line (escapes or control characters in the key, other
/// field order, spaces, a hand-edited file) goes through serde, which gives
/// the same key. The fast path checks the key and that the line closes the
/// object, not the syntax of the fields after the key.
fn line_key(line: &[u8], key_field: &str) -> Result<Option<String>, String> {
    match fast_key(line, key_field) {
        Some(key) => Ok(Some(key.to_owned())),
        None => row_key(line, key_field),
    }
}

/// The key of a line `{"<key_field>":"<key>"…}` whose key has no escape and
/// no control character; `None` for any other line.
fn fast_key<'a>(line: &'a [u8], key_field: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(b"{\"")?;
    let rest = rest.strip_prefix(key_field.as_bytes())?;
    let rest = rest.strip_prefix(b"\":\"")?;
    // The first byte that ends (or may escape) the string: only a plain `"`
    // ends it with the bytes before it as the exact key.
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'"' | b'\\' | 0..=0x1f))?;
    if rest[end] != b'"' {
        return None;
    }
    let after = &rest[end + 1..];
    // The object goes on (`,`) or ends (`}`) and the line ends with `}`.
    if !matches!(after.first(), Some(b',' | b'}')) || after.trim_ascii_end().last() != Some(&b'}') {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

/// The string value of `key_field` in one line through serde; `None` for a blank line.
fn row_key(line: &[u8], key_field: &str) -> Result<Option<String>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    // Only the key is kept; the rest of the row is checked for syntax and skipped.
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
        assert!(log.contains("a").unwrap());
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
        assert!(log.keys.is_none(), "open must not read the keys");
        assert_eq!(fs::read(&path).unwrap(), b"{\"k\":\"a\"}\n", "cut at open");
        assert!(!log.contains("b").unwrap());
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
    fn damage_in_the_middle_is_reported_with_its_line_at_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "{\"k\":\"a\"}\n\n{\"k\":1}\n{\"k\":\"b\"}\n").unwrap();
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert!(torn.is_none());
        // Every use that needs the keys reports it, not only the first.
        for _ in 0..2 {
            match log.contains("a").unwrap_err() {
                OutputError::CorruptLog { line, message, .. } => {
                    assert_eq!(line, 3);
                    assert!(message.contains("not a string"), "{message}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(log.append("c", &json!({"k": "c"})).is_err());
        assert!(log.replace("c", &json!({"k": "c"})).is_err());
        assert!(log.remove("a").is_err());
        // Nothing was written past the damage.
        assert_eq!(lines(&path).len(), 4);
    }

    #[test]
    fn a_torn_tail_longer_than_a_read_chunk_is_cut_and_a_long_complete_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let long = "x".repeat(200_000);
        let row = format!("{{\"k\":\"b\",\"t\":\"{long}\"}}");
        // Torn: everything but the closing `}` of a 200 kB row.
        fs::write(&path, format!("{{\"k\":\"a\"}}\n{}", &row[..row.len() - 1])).unwrap();
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert_eq!(torn.unwrap().dropped_bytes, row.len() as u64 - 1);
        assert!(!log.contains("b").unwrap());
        assert!(log.contains("a").unwrap());

        // Complete but without its newline: kept and terminated.
        fs::write(&path, format!("{{\"k\":\"a\"}}\n{row}")).unwrap();
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert!(torn.is_none());
        assert!(log.contains("b").unwrap());
        assert!(fs::read(&path).unwrap().ends_with(b"}\n"));
        // One line, no newline at all: the whole file is the tail.
        fs::write(&path, &row[..100_001]).unwrap();
        let (_, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert_eq!(torn.unwrap().dropped_bytes, 100_001);
        assert_eq!(fs::read(&path).unwrap(), b"");
    }

    #[test]
    fn a_torn_tail_ending_in_a_brace_is_still_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        // Cut right after a `}` inside the prompt: it starts like a whole
        // row, and only the full parse sees it is not.
        fs::write(&path, "{\"k\":\"a\"}\n{\"k\":\"b\",\"text\":\"a {x}").unwrap();
        let (mut log, torn) = JsonlLog::open(path.clone(), "k").unwrap();
        assert!(torn.is_some());
        assert!(!log.contains("b").unwrap());
    }

    #[test]
    fn appends_before_the_keys_are_read_are_found_by_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        fs::write(&path, "{\"k\":\"a\"}\n").unwrap();
        let (mut log, _) = JsonlLog::open(path.clone(), "k").unwrap();
        log.push("b", &json!({"k": "b"})).unwrap();
        let row = json!({"k": "c"});
        // Known to be new: written without reading the file.
        assert_eq!(log.append_many(&[("c", &row, false)]).unwrap(), 1);
        assert!(
            log.keys.is_none(),
            "new rows must not make the log read its keys"
        );
        // May exist: the keys are read, and a second `c` is not written.
        assert_eq!(log.append_many(&[("c", &row, true)]).unwrap(), 0);
        assert!(log.contains("a").unwrap() && log.contains("b").unwrap());
        assert_eq!(lines(&path).len(), 3);
    }

    /// Keys as serde_json writes them, with escapes, quotes, control
    /// characters and non-ASCII text.
    const AWKWARD_KEYS: &[&str] = &[
        "cats/a.webp",
        "",
        "a \"quoted\" name.webp",
        "back\\slash\\dir/x.webp",
        "tab\there\nnewline",
        "\u{1}\u{1f}control",
        "ünïcödé/猫/🐈.webp",
        "slash/ and } brace { and , comma",
        "\u{2028}line separator",
    ];

    #[test]
    fn the_fast_key_path_gives_the_serde_key() {
        for key in AWKWARD_KEYS {
            for row in [
                json!({"k": key}),
                json!({"k": key, "x": 1, "y": {"z": [1, "}"]}}),
            ] {
                let mut line = serde_json::to_vec(&row).unwrap();
                line.push(b'\n');
                let serde = row_key(&line, "k").unwrap();
                assert_eq!(serde.as_deref(), Some(*key));
                assert_eq!(line_key(&line, "k").unwrap(), serde, "{key:?}");
                let plain = !key.contains(['"', '\\']) && !key.chars().any(|c| c < ' ');
                assert_eq!(fast_key(&line, "k").is_some(), plain, "{key:?}");
            }
        }
        // Lines that do not start with the key go through serde.
        for line in [
            "{\"x\":1,\"k\":\"a\"}\n",
            "{ \"k\": \"a\" }\n",
            "{\"k\":\"\\u0061\"}\n",
            " {\"k\":\"a\"}\r\n",
        ] {
            assert_eq!(fast_key(line.as_bytes(), "k"), None, "{line}");
            assert_eq!(
                line_key(line.as_bytes(), "k").unwrap().as_deref(),
                Some("a"),
                "{line}"
            );
        }
        // Not a row, either way.
        for line in [
            "{\"k\":\"a\"",
            "{\"k\":\"a\"x}",
            "{\"k\":1}",
            "{\"kk\":\"a\"}",
            "[]",
        ] {
            assert!(line_key(line.as_bytes(), "k").is_err(), "{line}");
        }
        // Invalid UTF-8 in the key is refused, as serde does.
        assert!(line_key(b"{\"k\":\"\xff\"}\n", "k").is_err());
    }

    #[test]
    fn keys_read_from_a_file_equal_the_written_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let (mut log, _) = JsonlLog::open(path.clone(), "k").unwrap();
        for key in AWKWARD_KEYS {
            assert!(log.append(key, &json!({"k": key, "n": 1})).unwrap());
        }
        let (mut log, _) = JsonlLog::open(path.clone(), "k").unwrap();
        let read: HashSet<String> = log.load().unwrap().clone();
        let written: HashSet<String> = AWKWARD_KEYS.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(read, written);
    }

    proptest::proptest! {
        #[test]
        fn fast_and_serde_paths_agree_on_any_key(key in "\\PC*|[\\x00-\\x7f]*", tail in proptest::bool::ANY) {
            let row = if tail { json!({"k": key, "t": key}) } else { json!({"k": key}) };
            let line = serde_json::to_vec(&row).unwrap();
            proptest::prop_assert_eq!(line_key(&line, "k").unwrap(), Some(key.clone()));
            proptest::prop_assert_eq!(row_key(&line, "k").unwrap(), Some(key));
        }
    }
}
