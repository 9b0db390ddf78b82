//! Which images of a folder alchemy may run over: every WebP, PNG and JPEG
//! under it, but not hidden files and folders (the state folder, `.report/`,
//! `.rejected/`) nor the images alchemy itself derived.
//!
//! Never follows a symbolic link (so never leaves the folder) and stops at
//! [`MAX_FOLDER_IMAGES`] rather than growing without end. Must not decide
//! which forms run.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde::Deserialize;

use super::is_derived_image;
use crate::output::{OutputError, INDEX_FILE, SHARD_INDEX_FILE};

/// The most images [`folder_images`] lists (10 million: a list of 10 million
/// names takes about a gigabyte; a bigger folder is run in parts).
pub const MAX_FOLDER_IMAGES: usize = 10_000_000;

/// Extensions of the images alchemy takes, lower case.
const IMAGE_EXTENSIONS: &[&str] = &["webp", "png", "jpg", "jpeg"];

/// The images of a folder that alchemy may run forms over: every `.webp`,
/// `.png`, `.jpg` and `.jpeg` file under `root` (any case of extension),
/// recursively, sorted, as relative paths with `/`. Skipped: hidden files and
/// folders (names starting with `.`: `.horde-batch/`, `.report/`), symbolic
/// links (never followed), names that are not UTF-8, and derived images:
/// `<stem>.<form>.webp` for a form in `post_processors`, and the rows of the
/// folder's index with an `alchemy_of`.
///
/// # Errors
///
/// [`OutputError::TooManyImages`] past [`MAX_FOLDER_IMAGES`];
/// [`OutputError::CorruptLog`] for a damaged index line;
/// [`OutputError::Io`].
pub fn folder_images(root: &Path, post_processors: &[&str]) -> Result<Vec<String>, OutputError> {
    let derived_rows = derived_rows(root)?;
    let mut images = Vec::new();
    let mut pending = vec![String::new()];
    while let Some(relative_dir) = pending.pop() {
        let dir = root.join(&relative_dir);
        let entries = fs::read_dir(&dir).map_err(|e| OutputError::io("read directory", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| OutputError::io("read directory", &dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(dir = %dir.display(), name = ?entry.file_name(), "skipping a name that is not UTF-8");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            // Not followed: a symbolic link reads as neither file nor directory here.
            let file_type = entry
                .file_type()
                .map_err(|e| OutputError::io("read directory", &dir, e))?;
            let relative = if relative_dir.is_empty() {
                name.clone()
            } else {
                format!("{relative_dir}/{name}")
            };
            if file_type.is_dir() {
                pending.push(relative);
            } else if file_type.is_file()
                && has_image_extension(&name)
                && !is_derived_image(&relative, post_processors)
                && !derived_rows.contains(&relative)
            {
                if images.len() == MAX_FOLDER_IMAGES {
                    return Err(OutputError::TooManyImages {
                        root: root.to_path_buf(),
                        limit: MAX_FOLDER_IMAGES,
                    });
                }
                images.push(relative);
            }
        }
    }
    images.sort_unstable();
    Ok(images)
}

fn has_image_extension(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(stem, extension)| {
        !stem.is_empty()
            && IMAGE_EXTENSIONS
                .iter()
                .any(|known| extension.eq_ignore_ascii_case(known))
    })
}

/// What [`derived_rows`] reads of a row.
#[derive(Deserialize)]
struct RowOrigin {
    file_name: String,
    #[serde(default)]
    alchemy_of: Option<String>,
}

/// The file names of the derived images the folder's index lists.
fn derived_rows(root: &Path) -> Result<HashSet<String>, OutputError> {
    let mut derived = HashSet::new();
    for name in [INDEX_FILE, SHARD_INDEX_FILE] {
        let path = root.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(OutputError::io("read", &path, e)),
        };
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut line = Vec::new();
        let mut line_number = 0;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| OutputError::io("read", &path, e))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let row: RowOrigin =
                serde_json::from_slice(&line).map_err(|e| OutputError::CorruptLog {
                    path: path.clone(),
                    line: line_number,
                    message: format!("not a row: {e}"),
                })?;
            if row.alchemy_of.is_some() {
                derived.insert(row.file_name);
            }
        }
    }
    Ok(derived)
}
