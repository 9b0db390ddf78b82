//! Where alchemy results land in the output folder: derived images
//! `<stem>.<form>.webp`, the sidecar's `alchemy` field, kohya-style `<stem>.txt`
//! captions, and (in [`index`]) the columns they add to `metadata.jsonl`, and
//! (in [`folder`]) which images of a folder alchemy may run over.
//!
//! Alchemy is the Horde's interrogation API (docs/horde-api.md §10 (alchemy)):
//! text forms (`caption`, `nsfw`, `interrogation`, `aesthetic`, …) answer
//! values, post-processors (`RealESRGAN_x2plus`, …) answer images. This module
//! takes them as plain values ([`AlchemyOutcome`]): it must not know the
//! Horde, the ledger or the scheduler, nor which form names exist (callers
//! pass the post-processors' names).

mod folder;
mod index;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{
    atomic, check_relative_name, verify_webp, OutputDir, OutputError, PathEscape, Sidecar,
    IMAGE_EXTENSION, SIDECAR_EXTENSION,
};

pub use folder::{folder_images, MAX_FOLDER_IMAGES};
pub use index::{apply_alchemy_to_index, AlchemyColumns, IndexChange, MAX_INDEX_COLUMNS};

/// Extension of kohya-style caption files.
const CAPTION_EXTENSION: &str = "txt";

/// What one image's alchemy gave: plain values, keyed by form name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlchemyOutcome {
    /// The image, relative to the output folder (its metadata.jsonl `file_name`).
    pub source: String,
    /// Text forms: form name → the value the Horde gave under that name
    /// (`result[form]`): caption → string, nsfw → bool, interrogation →
    /// object `{tags: [{text, confidence}], artists: [...], ...}`,
    /// aesthetic → number, others as given.
    pub results: BTreeMap<String, Value>,
    /// Post-processors: form name → the derived image's file name
    /// (relative), already written.
    pub derived: BTreeMap<String, String>,
    /// Forms that failed for good: form name → why (one line).
    pub failed: BTreeMap<String, String>,
}

/// `<dir>/<stem>.<form>.webp` for source `<dir>/<stem>.<ext>` (a source
/// without extension keeps its whole name as the stem).
pub fn derived_file_name(source: &str, form: &str) -> String {
    format!("{}.{form}.{IMAGE_EXTENSION}", stem_of(source))
}

/// Whether `file_name` is a derived image: `<stem>.<form>.webp` with `form`
/// one of `post_processors` and a non-empty stem.
pub fn is_derived_image(file_name: &str, post_processors: &[&str]) -> bool {
    let Some(rest) = file_name.strip_suffix(&format!(".{IMAGE_EXTENSION}")) else {
        return false;
    };
    post_processors.iter().any(|form| {
        rest.strip_suffix(form)
            .and_then(|before| before.strip_suffix('.'))
            .is_some_and(|stem| !stem.is_empty() && !stem.ends_with('/'))
    })
}

/// `source` without the extension of its last component (`a/b.c.png` → `a/b.c`).
fn stem_of(source: &str) -> &str {
    let name_start = source.rfind('/').map_or(0, |slash| slash + 1);
    match source[name_start..].rfind('.') {
        // A leading dot starts a hidden name, not an extension.
        Some(dot) if dot > 0 => &source[..name_start + dot],
        _ => source,
    }
}

/// Refuses a form name that would make a derived file name leave its
/// source's folder or be hidden (form names come from a list the caller
/// checked; this is the last line of defence).
fn check_form_name(form: &str) -> Result<(), PathEscape> {
    let reason = if form.is_empty() {
        Some("the form name is empty")
    } else if form.contains(['/', '\\']) || form.chars().any(char::is_control) {
        Some("a form name may not hold `/`, `\\` or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PathEscape {
            name: form.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// One value of a JSON object read back from a file: the exact text it had
/// (so a rewrite keeps every other field byte for byte), or a value made now.
#[derive(Debug, Clone)]
enum Cell {
    Raw(Box<RawValue>),
    Made(Value),
}

impl Cell {
    /// The value as JSON (parses a raw cell; an unparsable one reads as null,
    /// which cannot happen for text serde_json accepted as a value).
    fn value(&self) -> Value {
        match self {
            Cell::Raw(raw) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            Cell::Made(value) => value.clone(),
        }
    }

    fn is_null(&self) -> bool {
        match self {
            Cell::Raw(raw) => raw.get().trim() == "null",
            Cell::Made(value) => value.is_null(),
        }
    }
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Raw(raw) => raw.serialize(serializer),
            Cell::Made(value) => value.serialize(serializer),
        }
    }
}

/// A JSON object in its key order, each value as it was written.
type Object = IndexMap<String, Cell>;

/// Parses a JSON object keeping its key order and each value's exact text.
fn parse_object(text: &str) -> Result<Object, serde_json::Error> {
    let raw: IndexMap<String, Box<RawValue>> = serde_json::from_str(text)?;
    Ok(raw.into_iter().map(|(k, v)| (k, Cell::Raw(v))).collect())
}

/// Sets `key` to `value`: in place when the key is there, else at the end.
fn set(object: &mut Object, key: &str, value: Cell) {
    match object.get_mut(key) {
        Some(cell) => *cell = value,
        None => {
            object.insert(key.to_owned(), value);
        }
    }
}

impl OutputDir {
    /// Verifies `bytes` as a WebP (the same checks as any image) and writes it
    /// atomically at [`derived_file_name`]`(source, form)`; returns its
    /// (width, height). Idempotent: the same bytes already there are success.
    /// Different bytes replace the file in one step: the ledger asks for a
    /// form again only when its source changed (a reroll) or its earlier
    /// result was lost, so the newest delivery is the one that belongs.
    ///
    /// # Errors
    ///
    /// [`OutputError::Escape`] for a name that would leave the folder,
    /// [`OutputError::Webp`], or [`OutputError::Io`].
    pub fn write_derived_image(
        &self,
        source: &str,
        form: &str,
        bytes: &[u8],
    ) -> Result<(u32, u32), OutputError> {
        check_relative_name(source)?;
        check_form_name(form)?;
        let name = derived_file_name(source, form);
        check_relative_name(&name)?;
        let path = self.root().join(&name);
        let info = verify_webp(bytes).map_err(|error| OutputError::Webp {
            path: path.clone(),
            error,
        })?;
        let size = (info.width, info.height);
        self.finish_sweep()?;
        match std::fs::read(&path) {
            Ok(existing) if existing == bytes => return Ok(size),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OutputError::io("read", &path, e)),
        }
        let relative_dir = Path::new(&name).parent().unwrap_or(Path::new(""));
        let dir = self.root().join(relative_dir);
        atomic::create_dirs_durably(self.root(), relative_dir)
            .map_err(|e| OutputError::io("create directory", &dir, e))?;
        atomic::write_synced_temp(&dir, bytes)
            .and_then(|temp| temp.persist_replacing(&path))
            .map_err(|e| OutputError::io("write", &path, e))?;
        atomic::sync_dir(&dir).map_err(|e| OutputError::io("sync", &dir, e))?;
        Ok(size)
    }

    /// The (width, height) of the derived image of `source` by `form` if it
    /// is already written, so a resumed caller does not pay for it twice.
    ///
    /// # Errors
    ///
    /// [`OutputError::Escape`], [`OutputError::Webp`] for a file there that
    /// is not a complete WebP, or [`OutputError::Io`].
    pub fn existing_derived_image(
        &self,
        source: &str,
        form: &str,
    ) -> Result<Option<(u32, u32)>, OutputError> {
        check_relative_name(source)?;
        check_form_name(form)?;
        let path = self.root().join(derived_file_name(source, form));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OutputError::io("read", &path, e)),
        };
        let info = verify_webp(&bytes).map_err(|error| OutputError::Webp { path, error })?;
        Ok(Some((info.width, info.height)))
    }

    /// Adds the outcome to the `alchemy` object of the image's sidecar
    /// `<stem>.json` (`{"caption": …, "nsfw": …, "interrogation": {…},
    /// "<post-processor>": "<derived file name>", "failed": {form: why}}`),
    /// rewritten atomically; every other field keeps its exact text. Forms
    /// of an earlier outcome that this one does not name are kept; a form
    /// that now has a value leaves `failed`; a failure does not replace a
    /// value an earlier run got. No sidecar (or a `.json` that is not this
    /// image's sidecar): nothing is written. Unchanged: nothing is written.
    ///
    /// # Errors
    ///
    /// [`OutputError::Escape`] or [`OutputError::Io`].
    pub fn record_alchemy_in_sidecar(&self, outcome: &AlchemyOutcome) -> Result<(), OutputError> {
        check_relative_name(&outcome.source)?;
        let path = self
            .root()
            .join(format!("{}.{SIDECAR_EXTENSION}", stem_of(&outcome.source)));
        let old = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidData
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(OutputError::io("read", &path, e)),
        };
        let ours = serde_json::from_str::<Sidecar>(&old)
            .is_ok_and(|sidecar| sidecar.file_name == outcome.source);
        let fields = if ours { parse_object(&old).ok() } else { None };
        let Some(mut fields) = fields else {
            tracing::debug!(path = %path.display(), "not this image's sidecar; alchemy not recorded in it");
            return Ok(());
        };
        let existing = match fields.get("alchemy").map(Cell::value) {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        set(
            &mut fields,
            "alchemy",
            Cell::Made(Value::Object(merged_alchemy(existing, outcome))),
        );
        let mut new =
            serde_json::to_vec_pretty(&fields).expect("a JSON object with string keys serialises");
        new.push(b'\n');
        if new == old.as_bytes() {
            return Ok(());
        }
        self.replace_file(&path, &new)
    }

    /// Writes `<stem>.txt`, the kohya-style caption file: the caption as one
    /// line of UTF-8 (line breaks and other control characters become
    /// spaces; no trailing newline), atomically. A caption file is text
    /// derived from the image, so a new caption replaces the old one; the
    /// same caption writes nothing.
    ///
    /// # Errors
    ///
    /// [`OutputError::Escape`] or [`OutputError::Io`].
    pub fn write_caption_file(&self, source: &str, caption: &str) -> Result<(), OutputError> {
        check_relative_name(source)?;
        let path = self
            .root()
            .join(format!("{}.{CAPTION_EXTENSION}", stem_of(source)));
        let line: String = caption
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let line = line.trim();
        let relative_dir = Path::new(source).parent().unwrap_or(Path::new(""));
        atomic::create_dirs_durably(self.root(), relative_dir)
            .map_err(|e| OutputError::io("create directory", &self.root().join(relative_dir), e))?;
        match fs::read(&path) {
            Ok(old) if old == line.as_bytes() => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OutputError::io("read", &path, e)),
        }
        self.replace_file(&path, line.as_bytes())
    }

    /// [`apply_alchemy_to_index`] on this folder's index, holding it so no
    /// append of this process lands in the file being replaced; the index's
    /// keys are read afresh afterwards.
    ///
    /// # Errors
    ///
    /// As [`apply_alchemy_to_index`].
    pub fn apply_alchemy(
        &self,
        outcomes: &BTreeMap<String, AlchemyOutcome>,
        columns: &AlchemyColumns,
    ) -> Result<IndexChange, OutputError> {
        self.finish_sweep()?; // the rewrite goes through a temp file
        let mut log = self.inner.index.lock();
        let change =
            apply_alchemy_to_index(&self.root().join(self.inner.index_name), outcomes, columns);
        // Replaced or not, the file may have changed under the log's handle.
        log.file_replaced()?;
        change
    }

    /// Replaces the file at `path` with `bytes` in one step (temp file,
    /// fsync, rename, directory fsync).
    fn replace_file(&self, path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
        self.finish_sweep()?;
        let dir = path.parent().unwrap_or(self.root());
        atomic::write_synced_temp(dir, bytes)
            .and_then(|temp| temp.persist_replacing(path))
            .map_err(|e| OutputError::io("write", path, e))?;
        atomic::sync_dir(dir).map_err(|e| OutputError::io("sync", dir, e))
    }
}

/// The sidecar's `alchemy` object: `existing` with the outcome's forms.
fn merged_alchemy(mut alchemy: Map<String, Value>, outcome: &AlchemyOutcome) -> Map<String, Value> {
    let mut failed = match alchemy.remove("failed") {
        Some(Value::Object(failed)) => failed,
        _ => Map::new(),
    };
    for (form, value) in &outcome.results {
        alchemy.insert(form.clone(), value.clone());
        failed.remove(form);
    }
    for (form, file_name) in &outcome.derived {
        alchemy.insert(form.clone(), Value::String(file_name.clone()));
        failed.remove(form);
    }
    for (form, why) in &outcome.failed {
        if !alchemy.contains_key(form) {
            failed.insert(form.clone(), Value::String(why.clone()));
        }
    }
    if !failed.is_empty() {
        alchemy.insert("failed".to_owned(), Value::Object(failed));
    }
    alchemy
}

#[cfg(test)]
mod tests;
