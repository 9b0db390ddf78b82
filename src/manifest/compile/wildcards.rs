//! Wildcards: `__name__` and `__glob*__` resolved to their values, from the
//! manifest's `wildcards:` or from `.txt` files in the wildcards folder
//! (one value per line, regular files of at most 16 MiB), each read once
//! per compile.
//!
//! This is the only part of compiling that reads wildcard files. It does not
//! turn values into axes (`templates` does) and does not expand template
//! syntax inside values: a value holding any is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Context, VALUE_SYNTAX_HELP};
use crate::manifest::error::excerpt;
use crate::manifest::input::{self, InputError};
use crate::manifest::template;

/// Wildcard files larger than this are refused: a wildcard of a million
/// values is 16 MiB of short lines, and a file that is not meant as one
/// (a log, a link to a device) is stopped before it fills memory.
const MAX_WILDCARD_FILE_BYTES: u64 = 16 * 1024 * 1024;

const WILDCARD_HELP: &str =
    "define it under `wildcards:` in the manifest, or as a text file with one value per line";

/// A wildcard's values, or why it cannot be used (message and help).
pub(super) type Wildcard = Result<Arc<[String]>, (String, &'static str)>;

impl Context<'_> {
    /// The values of the wildcard `name` (a name or a glob).
    pub(super) fn wildcard(&mut self, name: &str) -> Wildcard {
        if let Some(cached) = self.wildcard_cache.get(name) {
            return cached.clone();
        }
        let result = if template::is_wildcard_glob(name) {
            self.wildcard_glob(name)
        } else if let Some(values) = self.file.manifest.wildcards.get(name) {
            manifest_wildcard(name, values)
        } else {
            file_wildcard(name, &self.wildcards_dir())
        };
        self.wildcard_cache.insert(name.to_owned(), result.clone());
        result
    }

    /// Every wildcard name a glob matches, sorted, with their values one
    /// after the other (as sd-dynamic-prompts does: fnmatch over the names of
    /// the manifest's wildcards and of the files in the wildcards folder and
    /// its sub-folders, `*` crossing `/`).
    fn wildcard_glob(&mut self, glob: &str) -> Wildcard {
        let Ok(pattern) = glob::Pattern::new(glob) else {
            return Err((format!("`__{glob}__` is not a valid glob"), WILDCARD_HELP));
        };
        let dir = self.wildcards_dir();
        let mut names: std::collections::BTreeSet<String> = self
            .file
            .manifest
            .wildcards
            .keys()
            .filter(|name| pattern.matches(name))
            .cloned()
            .collect();
        for file in walk_txt_files(&dir) {
            let Ok(relative) = file.strip_prefix(&dir) else {
                continue;
            };
            let name = relative
                .with_extension("")
                .to_string_lossy()
                .replace('\\', "/");
            if template::is_wildcard_name(&name) && pattern.matches(&name) {
                names.insert(name);
            }
        }
        if names.is_empty() {
            return Err((
                format!(
                    "the wildcard glob `__{glob}__` matches no wildcard: none under `wildcards:` and no file in {}",
                    dir.display()
                ),
                WILDCARD_HELP,
            ));
        }
        let mut values = Vec::new();
        for name in names {
            values.extend(self.wildcard(&name)?.iter().cloned());
        }
        Ok(Arc::from(values))
    }

    /// The folder wildcard files are read from.
    fn wildcards_dir(&self) -> PathBuf {
        let manifest = &self.file.manifest;
        self.file
            .base_dir
            .join(manifest.wildcards_dir.as_deref().unwrap_or("wildcards"))
    }
}

/// A wildcard defined under the manifest's `wildcards:`.
fn manifest_wildcard(name: &str, values: &[String]) -> Wildcard {
    if values.is_empty() {
        return Err((
            format!("wildcard `__{name}__` has no values"),
            WILDCARD_HELP,
        ));
    }
    let placed = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("`wildcards.{name}[{i}]`"), v.clone()));
    plain_values(name, placed)
}

/// A wildcard read from `<name>.txt` in `dir`: one value per line, blank
/// lines and `#` comments skipped.
fn file_wildcard(name: &str, dir: &Path) -> Wildcard {
    let file = dir.join(format!("{name}.txt"));
    match input::read_regular_text(&file, MAX_WILDCARD_FILE_BYTES) {
        Ok(text) => {
            let values: Vec<(String, String)> = text
                .lines()
                .enumerate()
                .map(|(i, l)| (i, l.trim()))
                .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
                .map(|(i, l)| (format!("{}:{}", file.display(), i + 1), l.to_owned()))
                .collect();
            if values.is_empty() {
                Err((
                    format!("wildcard file {} has no values", file.display()),
                    WILDCARD_HELP,
                ))
            } else {
                plain_values(name, values.into_iter())
            }
        }
        Err(InputError::NotFound) => Err((format!(
            "wildcard `__{name}__` is not defined: no `wildcards.{name}` in the manifest and no file {}",
            file.display()
        ), WILDCARD_HELP)),
        Err(e) => Err((format!("cannot read wildcard file {}: {e}", file.display()), "")),
    }
}

/// The `.txt` files under `dir` and its sub-folders (none if it cannot be read).
fn walk_txt_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() && path.extension().is_some_and(|e| e == "txt") => {
                    files.push(path)
                }
                _ => {}
            }
        }
    }
    files
}

/// Wildcard values (with where each was written), refused when one holds
/// template syntax: values are inserted as text, so a `{a|b}` or a
/// `<lora:…>` there would reach the Horde as words.
fn plain_values(name: &str, values: impl Iterator<Item = (String, String)>) -> Wildcard {
    let mut out = Vec::new();
    for (place, value) in values {
        if let Some(what) = template::syntax_in_value(&value) {
            return Err((
                format!("wildcard `__{name}__`: the value `{}` ({place}) holds {what}, which is not expanded inside wildcard values", excerpt(&value)),
                VALUE_SYNTAX_HELP,
            ));
        }
        out.push(value);
    }
    Ok(Arc::from(out))
}
