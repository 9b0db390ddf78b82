//! Everything horde-batch writes into the user's output directory.
//!
//! `<dir>/<name>.webp` (verified, written atomically), `<dir>/<name>.json`
//! (the [`Sidecar`]), `metadata.jsonl` (the dataset index, one [`IndexRow`]
//! per image), and `results.jsonl` / `errors.jsonl` (one [`JobResult`] or
//! [`JobError`] per job). Names come from a [`FilenameTemplate`].
//!
//! The guarantees (DESIGN.md invariants 1 and 3): a file appears under its
//! final name only complete; nothing is ever overwritten; writing the same
//! image or row again after a crash is a no-op rather than a duplicate.
//!
//! This module receives plain data. It must not know the scheduler, HTTP or
//! the ledger. All methods block on file I/O and fsync: call them from
//! `tokio::task::spawn_blocking`, not directly on the async runtime.

pub mod a1111;
mod atomic;
mod index;
mod naming;
mod sidecar;
mod sink;
mod strays;
mod webp;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use atomic::{syncs_on_this_thread, TEMP_PREFIX};
pub use index::{
    IndexRow, JobError, JobResult, TornLine, ERRORS_FILE, INDEX_FILE, RESULTS_FILE,
    SHARD_INDEX_FILE,
};
pub use naming::{
    check_relative_name, sanitize_value, FilenameTemplate, NameFields, PathEscape, Placeholder,
    TemplateError, MAX_COMPONENT_BYTES, MAX_VALUE_BYTES,
};
pub use sidecar::{
    format_timestamp, Labels, Sidecar, SidecarSourceFile, SidecarSources, HORDE_BATCH_VERSION,
};
pub use sink::{Dataset, GeneratedImage, ImageSink, MemorySink, Outcome, Stored};
pub use strays::{find_strays, Strays};
pub use webp::{verify_webp, WebpError, WebpInfo, MAX_PIXELS};

use index::JsonlLog;

/// Extension of image files.
pub const IMAGE_EXTENSION: &str = "webp";
/// Extension of sidecar files.
pub const SIDECAR_EXTENSION: &str = "json";

/// Something that went wrong writing the output directory. Every variant
/// names the file or directory involved.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum OutputError {
    /// A file system operation failed (permissions, disk full, read-only
    /// file system, a file where a directory should be, …).
    // The io::Error is part of the message because logs print Display only;
    // it is not also `source()` so reports do not print it twice.
    // `io_kind()` exposes its kind.
    #[error("cannot {action} {}: {error}", path.display())]
    #[diagnostic(
        code(horde_batch::output::io),
        help("check that the output directory is writable and its disk is not full")
    )]
    Io {
        /// What we were doing (`write`, `create directory`, …).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        error: io::Error,
    },

    /// A different file already has this name; nothing was written.
    #[error("refusing to overwrite {}: it already exists with different content", path.display())]
    #[diagnostic(
        code(horde_batch::output::collision),
        help("two images rendered the same file name; include {{key}} and {{index}} in the filename template")
    )]
    Collision {
        /// The existing file.
        path: PathBuf,
    },

    /// The image bytes are not a complete WebP; nothing was written.
    #[error("invalid WebP image for {}: {error}", path.display())]
    #[diagnostic(code(horde_batch::output::webp))]
    Webp {
        /// Where the image would have been written.
        path: PathBuf,
        /// What is wrong with it.
        error: WebpError,
    },

    /// A filename template was refused.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Template(#[from] TemplateError),

    /// A name would leave the output directory or is unusable.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Escape(#[from] PathEscape),

    /// A complete line of a JSON Lines file is not a valid row.
    #[error("{}:{line}: {message}", path.display())]
    #[diagnostic(
        code(horde_batch::output::corrupt_log),
        help("this file was edited or damaged; fix or delete that line (only a torn last line is repaired automatically)")
    )]
    CorruptLog {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
}

impl OutputError {
    fn io(action: &'static str, path: &Path, error: io::Error) -> Self {
        OutputError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    }

    /// The kind of the underlying I/O error, if this is an I/O error
    /// (e.g. [`io::ErrorKind::StorageFull`], [`io::ErrorKind::ReadOnlyFilesystem`]).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            OutputError::Io { error, .. } => Some(error.kind()),
            _ => None,
        }
    }
}

/// What [`OutputDir::open`] cleaned up after an earlier run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// `.hb-tmp-*` files (partial writes of a killed run) removed.
    pub removed_temp_files: usize,
    /// JSON Lines files whose incomplete last line was dropped.
    pub torn_lines: Vec<TornLine>,
}

/// Where [`OutputDir::write_image`] put an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenImage {
    /// The image's path relative to the output directory, with extension:
    /// the `file_name` of its sidecar and index row.
    pub file_name: String,
    /// Full path of the `.webp`.
    pub image_path: PathBuf,
    /// Full path of the `.json` sidecar.
    pub sidecar_path: PathBuf,
    /// `true` if an identical image was already there (a retry after a
    /// crash); nothing new was written except possibly a missing sidecar.
    pub already_present: bool,
    /// The verified image's properties.
    pub info: WebpInfo,
}

/// The output directory of a run. Cheap to clone; clones share state and may
/// be used from several threads at once.
///
/// Only one process should write a given output directory at a time (the
/// ledger's lock ensures that for a run): `open` treats any temp file it finds
/// as a leftover.
#[derive(Debug, Clone)]
pub struct OutputDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// The index's file name: [`INDEX_FILE`], or [`SHARD_INDEX_FILE`] in a shard's folder.
    index_name: &'static str,
    index: Mutex<JsonlLog>,
    results: Mutex<JsonlLog>,
    errors: Mutex<JsonlLog>,
    recovery: Recovery,
}

impl OutputDir {
    /// Opens (creating if needed) an output directory: checks it is writable,
    /// removes partial files left by a killed run, repairs torn JSON Lines
    /// rows and loads which images and jobs are already recorded.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] naming the path that could not be created, read
    /// or written; [`OutputError::CorruptLog`] for a damaged index file.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, OutputError> {
        Self::open_with_index(dir, INDEX_FILE)
    }

    /// [`OutputDir::open`] with the index under another name (a shard's
    /// folder keeps [`SHARD_INDEX_FILE`]).
    pub fn open_with_index(
        dir: impl Into<PathBuf>,
        index_name: &'static str,
    ) -> Result<Self, OutputError> {
        let root: PathBuf = dir.into();
        if !root.is_dir() {
            fs::create_dir_all(&root).map_err(|e| OutputError::io("create directory", &root, e))?;
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                atomic::sync_dir(parent).map_err(|e| OutputError::io("sync", parent, e))?;
            }
        }
        atomic::probe_writable(&root).map_err(|e| OutputError::io("create files in", &root, e))?;
        let removed_temp_files = atomic::remove_temp_leftovers(&root)
            .map_err(|e| OutputError::io("clean up temp files in", &root, e))?;
        if removed_temp_files > 0 {
            tracing::info!(
                dir = %root.display(),
                removed_temp_files,
                "removed partial files left by an interrupted run"
            );
        }

        let mut torn_lines = Vec::new();
        let mut open_log = |name: &str, key_field| -> Result<Mutex<JsonlLog>, OutputError> {
            let (log, torn) = JsonlLog::open(root.join(name), key_field)?;
            torn_lines.extend(torn);
            Ok(Mutex::new(log))
        };
        let index = open_log(index_name, "file_name")?;
        let results = open_log(RESULTS_FILE, "job_key")?;
        let errors = open_log(ERRORS_FILE, "job_key")?;

        Ok(OutputDir {
            inner: Arc::new(Inner {
                root,
                index_name,
                index,
                results,
                errors,
                recovery: Recovery {
                    removed_temp_files,
                    torn_lines,
                },
            }),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// What opening cleaned up after an earlier run.
    pub fn recovery(&self) -> &Recovery {
        &self.inner.recovery
    }

    /// Whether `metadata.jsonl` has a row for this file name (with extension).
    pub fn has_index_row(&self, file_name: &str) -> bool {
        lock(&self.inner.index).contains(file_name)
    }

    /// Whether `results.jsonl` has a row for this job key.
    pub fn has_result(&self, job_key: &str) -> bool {
        lock(&self.inner.results).contains(job_key)
    }

    /// Whether `errors.jsonl` has a row for this job key.
    pub fn has_error(&self, job_key: &str) -> bool {
        lock(&self.inner.errors).contains(job_key)
    }

    /// Writes `<rel_name>.webp` and its sidecar `<rel_name>.json`: a batch of
    /// one, see [`OutputDir::write_images`].
    ///
    /// # Errors
    ///
    /// [`OutputError::Escape`], [`OutputError::Webp`],
    /// [`OutputError::Collision`] or [`OutputError::Io`].
    pub fn write_image(
        &self,
        rel_name: &str,
        webp: &[u8],
        sidecar: &Sidecar,
    ) -> Result<WrittenImage, OutputError> {
        let image = NewImage {
            rel_name,
            webp,
            sidecar,
            index_row: None,
        };
        self.write_images(vec![image])
            .pop()
            .expect("write_images answers once per image")
    }

    /// Writes a request's images, each as `<rel_name>.webp` with its sidecar
    /// `<rel_name>.json` and, if given, its `metadata.jsonl` row; answers
    /// once per image, in order. An image that fails (a broken WebP, a
    /// collision) does not stop the others.
    ///
    /// `rel_name` is a rendered template (relative, `/`-separated, no
    /// extension); missing subdirectories are created. The sidecar and row
    /// get `file_name` set to the image's relative path. Each image is
    /// verified first; files never replace an existing file:
    /// - an identical `.webp` already there (a retry after a crash) is
    ///   success with `already_present`, and a missing sidecar is added;
    /// - a different `.webp`, or a sidecar for another generation without
    ///   its image, is [`OutputError::Collision`] and nothing is written.
    ///
    /// Flushes per batch, not per image (group commit): every file is
    /// written to a temp file and `fsync`ed, all are renamed (no-clobber),
    /// each directory touched is flushed once, then all the rows are
    /// appended with one `write` and one `fdatasync`. So `Ok` means the
    /// files and the row are durable, a row never exists without its files,
    /// and a crash at any point leaves only complete files or temp files
    /// (which [`OutputDir::open`] removes).
    pub fn write_images(
        &self,
        images: Vec<NewImage<'_>>,
    ) -> Vec<Result<WrittenImage, OutputError>> {
        let mut created_dirs = HashSet::new();
        let mut prepared: Vec<Result<Prepared, OutputError>> = images
            .iter()
            .map(|image| self.prepare(image, &mut created_dirs))
            .collect();

        // Renames, then one flush per directory for every image placed or found.
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for (slot, image) in prepared.iter_mut().zip(&images) {
            if let Ok(p) = slot {
                match place(p, image.webp) {
                    Ok(()) => {
                        dirs.insert(p.dir.clone());
                    }
                    Err(e) => *slot = Err(e),
                }
            }
        }
        for dir in &dirs {
            if let Err(error) = atomic::sync_dir(dir) {
                for slot in &mut prepared {
                    if matches!(slot, Ok(p) if p.dir == *dir) {
                        *slot = Err(copy_io("sync", dir, &error));
                    }
                }
            }
        }

        // The rows go last, so a row is never durable before its files.
        let rows: Vec<(usize, IndexRow)> = prepared
            .iter()
            .zip(images)
            .enumerate()
            .filter_map(|(i, (slot, image))| match (slot, image.index_row) {
                (Ok(p), Some(row)) => Some((
                    i,
                    IndexRow {
                        file_name: p.written.file_name.clone(),
                        ..row
                    },
                )),
                _ => None,
            })
            .collect();
        if !rows.is_empty() {
            let keyed: Vec<(&str, &IndexRow)> = rows
                .iter()
                .map(|(_, row)| (row.file_name.as_str(), row))
                .collect();
            if let Err(error) = lock(&self.inner.index).append_many(&keyed) {
                let path = self.root().join(self.inner.index_name);
                let cause = match &error {
                    OutputError::Io { error, .. } => {
                        io::Error::new(error.kind(), error.to_string())
                    }
                    other => io::Error::other(other.to_string()),
                };
                for (i, _) in &rows {
                    prepared[*i] = Err(copy_io("append to", &path, &cause));
                }
            }
        }
        prepared
            .into_iter()
            .map(|slot| slot.map(|p| p.written))
            .collect()
    }

    /// Checks one image, compares it with what is on disk, and writes its
    /// files to flushed temp files (not yet renamed).
    fn prepare(
        &self,
        image: &NewImage<'_>,
        created_dirs: &mut HashSet<PathBuf>,
    ) -> Result<Prepared, OutputError> {
        let rel_name = image.rel_name;
        check_relative_name(rel_name)?;
        let root = self.root();
        let file_name = format!("{rel_name}.{IMAGE_EXTENSION}");
        let image_path = root.join(&file_name);
        let sidecar_path = root.join(format!("{rel_name}.{SIDECAR_EXTENSION}"));

        let info = verify_webp(image.webp).map_err(|error| OutputError::Webp {
            path: image_path.clone(),
            error,
        })?;
        let sidecar = Sidecar {
            file_name: file_name.clone(),
            ..image.sidecar.clone()
        };
        let mut sidecar_json = serde_json::to_vec_pretty(&sidecar)
            .expect("a sidecar has string keys only; serialising cannot fail");
        sidecar_json.push(b'\n');

        let relative_dir = Path::new(rel_name).parent().unwrap_or(Path::new(""));
        let dir = root.join(relative_dir);
        // One mkdir walk per directory per batch, not per image.
        if !relative_dir.as_os_str().is_empty() && created_dirs.insert(dir.clone()) {
            atomic::create_dirs_durably(root, relative_dir)
                .map_err(|e| OutputError::io("create directory", &dir, e))?;
        }

        let already_present = same_file_content(&image_path, image.webp)?;
        let sidecar_exists = if already_present {
            fs::symlink_metadata(&sidecar_path).is_ok()
        } else {
            // The image is not there. An orphan sidecar (its image deleted) may
            // stay only if it describes this very generation.
            match read_sidecar(&sidecar_path)? {
                Some(existing) if !existing.same_generation(&sidecar) => {
                    return Err(OutputError::Collision { path: sidecar_path });
                }
                Some(_) => true,
                None => false,
            }
        };
        let image_temp = if already_present {
            None
        } else {
            Some(
                atomic::write_synced_temp(&dir, image.webp)
                    .map_err(|e| OutputError::io("write", &image_path, e))?,
            )
        };
        let sidecar_temp = if sidecar_exists {
            None
        } else {
            Some(
                atomic::write_synced_temp(&dir, &sidecar_json)
                    .map_err(|e| OutputError::io("write", &sidecar_path, e))?,
            )
        };
        Ok(Prepared {
            written: WrittenImage {
                file_name,
                image_path,
                sidecar_path,
                already_present,
                info,
            },
            dir,
            image_temp,
            sidecar_temp,
        })
    }

    /// Appends a row to `metadata.jsonl` unless its `file_name` is already
    /// there. Returns whether it was written; the row is durable on return.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] (the file is left without a partial line).
    pub fn append_index(&self, row: &IndexRow) -> Result<bool, OutputError> {
        lock(&self.inner.index).append(&row.file_name, row)
    }

    /// Appends a row to `results.jsonl` unless its job key is already there.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn append_result(&self, result: &JobResult) -> Result<bool, OutputError> {
        lock(&self.inner.results).append(&result.job_key, result)
    }

    /// Whether the image `file_name` (relative, as recorded) is gone from disk.
    pub fn image_missing(&self, file_name: &str) -> bool {
        check_relative_name(file_name).is_ok() && !self.root().join(file_name).exists()
    }

    /// Forgets an image whose file is gone: its sidecar (which describes it)
    /// is removed and its `metadata.jsonl` row dropped, so the image made in
    /// its place is described afresh under the same name.
    ///
    /// # Errors
    ///
    /// [`OutputError::Escape`] or [`OutputError::Io`].
    pub fn forget_image(&self, file_name: &str) -> Result<(), OutputError> {
        check_relative_name(file_name)?;
        let stem = file_name
            .strip_suffix(&format!(".{IMAGE_EXTENSION}"))
            .unwrap_or(file_name);
        let sidecar = self.root().join(format!("{stem}.{SIDECAR_EXTENSION}"));
        match fs::remove_file(&sidecar) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OutputError::io("remove", &sidecar, e)),
        }
        lock(&self.inner.index).remove(file_name)
    }

    /// Makes `result` the one line of its job in `results.jsonl`: a job that
    /// grew or was retried gets its line rewritten, not a second one.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn put_result(&self, result: &JobResult) -> Result<(), OutputError> {
        lock(&self.inner.results).replace(&result.job_key, result)
    }

    /// Appends a failure to `errors.jsonl`, which keeps every job's history.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn record_error(&self, error: &JobError) -> Result<(), OutputError> {
        lock(&self.inner.errors).push(&error.job_key, error)
    }

    /// Appends a row to `errors.jsonl` unless its job key is already there.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn append_error(&self, error: &JobError) -> Result<bool, OutputError> {
        lock(&self.inner.errors).append(&error.job_key, error)
    }
}

/// Locks a log. A panic while appending leaves at worst a key missing from
/// the in-memory set (it is inserted only after the write), so a poisoned
/// lock is safe to keep using.
fn lock(log: &Mutex<JsonlLog>) -> MutexGuard<'_, JsonlLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether `path` exists with exactly `bytes`; `false` if it does not exist,
/// [`OutputError::Collision`] if it exists but is not a regular file.
fn same_file_content(path: &Path, bytes: &[u8]) -> Result<bool, OutputError> {
    match fs::read(path) {
        Ok(existing) if existing == bytes => Ok(true),
        Ok(_) => Err(OutputError::Collision {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory || path.is_dir() => {
            Err(OutputError::Collision {
                path: path.to_path_buf(),
            })
        }
        Err(e) => Err(OutputError::io("read", path, e)),
    }
}

/// Reads an existing sidecar; `None` if there is none. A file that is not a
/// sidecar is somebody else's: a collision.
fn read_sidecar(path: &Path) -> Result<Option<Sidecar>, OutputError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| OutputError::Collision {
                path: path.to_path_buf(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OutputError::io("read", path, e)),
    }
}

/// One image for [`OutputDir::write_images`].
#[derive(Debug, Clone)]
pub struct NewImage<'a> {
    /// The rendered template: relative, `/`-separated, without extension.
    pub rel_name: &'a str,
    /// The WebP bytes, as received.
    pub webp: &'a [u8],
    /// Its sidecar (`file_name` is filled in by the writer).
    pub sidecar: &'a Sidecar,
    /// Its `metadata.jsonl` row (`file_name` filled in by the writer), or
    /// `None` when the manifest turned the index off.
    pub index_row: Option<IndexRow>,
}

/// An image checked and written to flushed temp files, not yet renamed.
struct Prepared {
    written: WrittenImage,
    /// The directory of its files.
    dir: PathBuf,
    /// `None` when an identical image is already there.
    image_temp: Option<atomic::SyncedTemp>,
    /// `None` when a sidecar is already there.
    sidecar_temp: Option<atomic::SyncedTemp>,
}

/// Renames an image's temp files to their final names: the image first, so
/// a sidecar never appears for an image that did not (a crash in between
/// leaves an image without sidecar, which the retry completes).
fn place(p: &mut Prepared, webp: &[u8]) -> Result<(), OutputError> {
    if let Some(temp) = p.image_temp.take() {
        match temp.persist_noclobber(&p.written.image_path) {
            Ok(()) => {}
            // Another writer won the race for this name: fine if it wrote the same image.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !same_file_content(&p.written.image_path, webp)? {
                    return Err(OutputError::Collision {
                        path: p.written.image_path.clone(),
                    });
                }
                p.written.already_present = true;
            }
            Err(e) => return Err(OutputError::io("write", &p.written.image_path, e)),
        }
    }
    if let Some(temp) = p.sidecar_temp.take() {
        match temp.persist_noclobber(&p.written.sidecar_path) {
            // An existing sidecar for this image is kept: it recorded the first retrieval.
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(OutputError::io("write", &p.written.sidecar_path, e)),
        }
    }
    Ok(())
}

/// An I/O error for each image of a batch that one failed flush affects
/// (`io::Error` cannot be cloned).
fn copy_io(action: &'static str, path: &Path, error: &io::Error) -> OutputError {
    OutputError::io(
        action,
        path,
        io::Error::new(error.kind(), error.to_string()),
    )
}
