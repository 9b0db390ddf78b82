//! Everything horde-batch writes into the user's output directory.
//!
//! `<dir>/<name>.webp` (verified, written atomically), `<dir>/<name>.json`
//! (the [`Sidecar`]), `metadata.jsonl` (the dataset index, one [`IndexRow`]
//! per image), and `results.jsonl` / `errors.jsonl` (one [`JobResult`] or
//! [`JobError`] per job). Names come from a [`FilenameTemplate`]. Alchemy
//! results land here too (`alchemy`): derived images
//! `<name>.<form>.webp`, the sidecar's `alchemy`, kohya `.txt` captions and
//! the index's alchemy columns.
//!
//! The guarantees (ARCHITECTURE.md, invariants 1 and 3): a file appears under its
//! final name only complete; nothing is ever overwritten; writing the same
//! image or row again after a crash is a no-op rather than a duplicate.
//!
//! Opening must not read the whole folder: a resumed run of a million jobs
//! has to reach its first submit at once. So opening repairs the tails of
//! the JSON Lines files and reads the keys of `results.jsonl` (asked for
//! every job at the start); the temp files of a killed run are swept by a
//! thread of its own once the caller owns the folder, which everything that
//! creates a temp file waits for first; the keys of `metadata.jsonl` and `errors.jsonl` are read only when
//! something needs them. The index's keys are needed only for an image some
//! of whose files were already there (a retry after a crash): a row is made
//! durable after its files, so a row can name a new file only if that file
//! was deleted by hand, and the engine drops the row of an image it finds
//! deleted ([`OutputDir::forget_image`]). A normal run never reads the index.
//!
//! This module receives plain data. It must not know the scheduler, HTTP or
//! the ledger. All methods block on file I/O and fsync: call them from
//! `tokio::task::spawn_blocking`, not directly on the async runtime.

pub mod a1111;
mod alchemy;
mod atomic;
mod index;
mod sidecar;
mod sink;
mod strays;
mod webp;

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::thread::JoinHandle;

pub use crate::layout::naming::{
    check_relative_name, sanitize_value, FilenameTemplate, NameFields, PathEscape, Placeholder,
    TemplateError, MAX_COMPONENT_BYTES, MAX_VALUE_BYTES,
};
pub use alchemy::{
    apply_alchemy_to_index, derived_file_name, folder_images, is_derived_image, AlchemyColumns,
    AlchemyOutcome, IndexChange, MAX_FOLDER_IMAGES, MAX_INDEX_COLUMNS,
};
pub use atomic::{sync_dir, syncs_on_this_thread, SyncedTemp, TempWriter, TEMP_PREFIX};
pub use index::{
    IndexRow, JobError, JobResult, TornLine, ERRORS_FILE, INDEX_FILE, RESULTS_FILE,
    SHARD_INDEX_FILE,
};
pub use sidecar::{
    format_timestamp, Labels, Sidecar, SidecarSourceFile, SidecarSources, HORDE_BATCH_VERSION,
};
pub use sink::{Dataset, GeneratedImage, ImagePreviews, ImageSink, MemorySink, Outcome, Stored};
pub use strays::{find_strays, Strays};
pub use webp::{verify_webp, verify_webp_decoded, DecodedWebp, WebpError, WebpInfo, MAX_PIXELS};

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

    /// A folder holds more images than one command takes on.
    #[error("{} holds more than {limit} images", root.display())]
    #[diagnostic(
        code(horde_batch::output::too_many_images),
        help("run on a smaller folder, or on its subfolders one by one")
    )]
    TooManyImages {
        /// The folder.
        root: PathBuf,
        /// The most images taken ([`MAX_FOLDER_IMAGES`]).
        limit: usize,
    },

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

/// What [`OutputDir::open`] cleaned up after an earlier run (the temp files
/// are counted once the sweep has finished).
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
/// ledger's lock ensures that for a run): the sweep treats any temp file it
/// finds as a leftover, so it starts only once the caller holds that lock
/// ([`OutputDir::start_sweep`]) or at the first write.
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
    /// The sweep of a killed run's temp files (see [`OutputDir::start_sweep`]).
    sweep: Mutex<Sweep>,
    torn_lines: Vec<TornLine>,
    /// Filled when first asked for, after the sweep.
    recovery: OnceLock<Recovery>,
}

/// Removing the temp files a killed run left. Walking a folder of a million
/// files takes a second, so it runs on its own thread once the caller owns
/// the folder ([`OutputDir::start_sweep`], after the ledger's lock: a process
/// refused the lock must not take a running run's temp files for leftovers),
/// and everything that creates a temp file waits for it first (so a temp
/// file of this run is never taken for a leftover), sweeping then if nobody
/// started it. Writes come only after a request's images are back, long
/// after the sweep has usually finished.
#[derive(Debug)]
enum Sweep {
    NotStarted,
    Running(JoinHandle<io::Result<usize>>),
    /// How many files were removed, or why the sweep failed (an `io::Error`
    /// cannot be cloned, so each waiter gets a copy of kind and message).
    Done(Result<usize, (io::ErrorKind, String)>),
}

impl OutputDir {
    /// Opens (creating if needed) an output directory: checks it is writable,
    /// repairs torn JSON Lines rows and loads which jobs are already recorded
    /// (`results.jsonl`; the other files' keys are read when first needed,
    /// and a damaged line in them is reported then). Temp files a killed run
    /// left are removed later: see [`OutputDir::start_sweep`].
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] naming the path that could not be created, read
    /// or written; [`OutputError::CorruptLog`] for a damaged `results.jsonl`.
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

        let mut torn_lines = Vec::new();
        let mut open_log = |name: &str, key_field| -> Result<JsonlLog, OutputError> {
            let (log, torn) = JsonlLog::open(root.join(name), key_field)?;
            torn_lines.extend(torn);
            Ok(log)
        };
        let index = open_log(index_name, "file_name")?;
        let mut results = open_log(RESULTS_FILE, "job_key")?;
        let errors = open_log(ERRORS_FILE, "job_key")?;
        // `has_result` is asked for every job right away and cannot report an
        // error (a `false` would make the job run again): read these keys now.
        results.load()?;

        Ok(OutputDir {
            inner: Arc::new(Inner {
                root,
                index_name,
                index: Mutex::new(index),
                results: Mutex::new(results),
                errors: Mutex::new(errors),
                sweep: Mutex::new(Sweep::NotStarted),
                torn_lines,
                recovery: OnceLock::new(),
            }),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Starts removing the temp files a killed run left, on a thread of its
    /// own. Call it once this process owns the folder (holds the ledger's
    /// lock); without it, the first write sweeps before it writes.
    pub fn start_sweep(&self) {
        let mut sweep = self.inner.sweep.lock();
        if matches!(*sweep, Sweep::NotStarted) {
            *sweep = spawn_sweep(self.root().to_path_buf());
        }
    }

    /// What opening cleaned up after an earlier run. Waits for the sweep
    /// of temp files (sweeping now if it was not started).
    pub fn recovery(&self) -> &Recovery {
        self.inner.recovery.get_or_init(|| Recovery {
            // A failed sweep was logged; the next write reports it.
            removed_temp_files: self.finish_sweep().unwrap_or(0),
            torn_lines: self.inner.torn_lines.clone(),
        })
    }

    /// Waits for the sweep of temp files that opening started: call before
    /// creating any temp file. Returns how many it removed.
    fn finish_sweep(&self) -> Result<usize, OutputError> {
        self.sweep_outcome()
            .map_err(|(kind, message)| self.sweep_error(kind, &message))
    }

    fn sweep_error(&self, kind: io::ErrorKind, message: &str) -> OutputError {
        OutputError::io(
            "clean up temp files in",
            self.root(),
            io::Error::new(kind, message.to_owned()),
        )
    }

    /// [`OutputDir::finish_sweep`] with the error as kind and message.
    fn sweep_outcome(&self) -> Result<usize, (io::ErrorKind, String)> {
        let mut sweep = self.inner.sweep.lock();
        if matches!(*sweep, Sweep::NotStarted) {
            // Nobody started it: sweep now (joined just below).
            *sweep = spawn_sweep(self.root().to_path_buf());
        }
        if matches!(*sweep, Sweep::Running(_)) {
            let Sweep::Running(handle) = std::mem::replace(&mut *sweep, Sweep::Done(Ok(0))) else {
                unreachable!("matched Running just above");
            };
            let outcome = match handle.join() {
                Ok(Ok(removed)) => {
                    if removed > 0 {
                        tracing::info!(
                            dir = %self.root().display(),
                            removed_temp_files = removed,
                            "removed partial files left by an interrupted run"
                        );
                    }
                    Ok(removed)
                }
                Ok(Err(e)) => Err((e.kind(), e.to_string())),
                Err(_) => Err((io::ErrorKind::Other, "the sweep panicked".to_owned())),
            };
            if let Err((_, message)) = &outcome {
                tracing::error!(dir = %self.root().display(), %message, "cannot clean up temp files");
            }
            *sweep = Sweep::Done(outcome);
        }
        match &*sweep {
            Sweep::Done(outcome) => outcome.clone(),
            Sweep::NotStarted | Sweep::Running(_) => {
                unreachable!("the sweep was run or joined just above")
            }
        }
    }

    /// Whether `metadata.jsonl` has a row for this file name (with extension).
    /// Reads the index's keys on first use; `false` if it cannot be read
    /// (the error is logged, and reported by the next write that needs them).
    pub fn has_index_row(&self, file_name: &str) -> bool {
        contains_or_log(&self.inner.index, file_name)
    }

    /// Whether `results.jsonl` has a row for this job key.
    pub fn has_result(&self, job_key: &str) -> bool {
        // Cannot fail: open read these keys.
        contains_or_log(&self.inner.results, job_key)
    }

    /// Whether `errors.jsonl` has a row for this job key. Reads its keys on
    /// first use; `false` if it cannot be read (the error is logged).
    pub fn has_error(&self, job_key: &str) -> bool {
        contains_or_log(&self.inner.errors, job_key)
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
        self.write_images_with(images, None)
    }

    /// [`OutputDir::write_images`], handing each new image's decoded
    /// pixels to `previews` once its bytes are written.
    pub fn write_images_with(
        &self,
        images: Vec<NewImage<'_>>,
        previews: Option<&dyn ImagePreviews>,
    ) -> Vec<Result<WrittenImage, OutputError>> {
        if let Err((kind, message)) = self.sweep_outcome() {
            return images
                .iter()
                .map(|_| Err(self.sweep_error(kind, &message)))
                .collect();
        }
        let mut created_dirs = HashSet::new();
        let mut prepared: Vec<Result<Prepared, OutputError>> = images
            .iter()
            .map(|image| self.prepare(image, &mut created_dirs, previews))
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
            // Only an image some of whose files were there may have its row
            // already (a row is durable only after its files): only then are
            // the index's keys read.
            let keyed: Vec<(&str, &IndexRow, bool)> = rows
                .iter()
                .map(|(i, row)| {
                    let may_exist = match &prepared[*i] {
                        Ok(p) => p.written.already_present || p.sidecar_existed,
                        Err(_) => true,
                    };
                    (row.file_name.as_str(), row, may_exist)
                })
                .collect();
            if let Err(error) = self.inner.index.lock().append_many(&keyed) {
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
        previews: Option<&dyn ImagePreviews>,
    ) -> Result<Prepared, OutputError> {
        let rel_name = image.rel_name;
        check_relative_name(rel_name)?;
        let root = self.root();
        let file_name = format!("{rel_name}.{IMAGE_EXTENSION}");
        let image_path = root.join(&file_name);
        let sidecar_path = root.join(format!("{rel_name}.{SIDECAR_EXTENSION}"));

        let decoded = verify_webp_decoded(image.webp).map_err(|error| OutputError::Webp {
            path: image_path.clone(),
            error,
        })?;
        let info = decoded.info;
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
            let temp = atomic::write_synced_temp(&dir, image.webp)
                .map_err(|e| OutputError::io("write", &image_path, e))?;
            // Only for an image whose bytes are written: a failed write makes no preview.
            if let Some(previews) = previews {
                previews.make(&file_name, image.sidecar.image_index, decoded);
            }
            Some(temp)
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
            sidecar_existed: sidecar_exists,
        })
    }

    /// Appends a row to `metadata.jsonl` unless its `file_name` is already
    /// there. Returns whether it was written; the row is durable on return.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`] (the file is left without a partial line).
    pub fn append_index(&self, row: &IndexRow) -> Result<bool, OutputError> {
        self.inner.index.lock().append(&row.file_name, row)
    }

    /// Appends a row to `results.jsonl` unless its job key is already there.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn append_result(&self, result: &JobResult) -> Result<bool, OutputError> {
        self.inner.results.lock().append(&result.job_key, result)
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
        self.finish_sweep()?; // dropping the row rewrites the index through a temp file
        let stem = file_name
            .strip_suffix(&format!(".{IMAGE_EXTENSION}"))
            .unwrap_or(file_name);
        let sidecar = self.root().join(format!("{stem}.{SIDECAR_EXTENSION}"));
        match fs::remove_file(&sidecar) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(OutputError::io("remove", &sidecar, e)),
        }
        self.inner.index.lock().remove(file_name)
    }

    /// Makes `result` the one line of its job in `results.jsonl`: a job that
    /// grew or was retried gets its line rewritten, not a second one.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn put_result(&self, result: &JobResult) -> Result<(), OutputError> {
        self.finish_sweep()?; // replacing a line rewrites the file through a temp file
        self.inner.results.lock().replace(&result.job_key, result)
    }

    /// Appends a failure to `errors.jsonl`, which keeps every job's history.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn record_error(&self, error: &JobError) -> Result<(), OutputError> {
        self.inner.errors.lock().push(&error.job_key, error)
    }

    /// Appends a row to `errors.jsonl` unless its job key is already there.
    ///
    /// # Errors
    ///
    /// [`OutputError::Io`].
    pub fn append_error(&self, error: &JobError) -> Result<bool, OutputError> {
        self.inner.errors.lock().append(&error.job_key, error)
    }
}

/// Whether the log has a row for `key`; `false`, logged, if its keys cannot be read.
fn contains_or_log(log: &Mutex<JsonlLog>, key: &str) -> bool {
    log.lock().contains(key).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot read the keys of a JSON Lines file");
        false
    })
}

/// Starts removing the temp files a killed run left under `root`.
fn spawn_sweep(root: PathBuf) -> Sweep {
    let spawned = std::thread::Builder::new()
        .name("hb-temp-sweep".into())
        .spawn({
            let root = root.clone();
            move || atomic::remove_temp_leftovers(&root)
        });
    match spawned {
        Ok(handle) => Sweep::Running(handle),
        // No thread to be had: sweep now, as before.
        Err(_) => {
            Sweep::Done(atomic::remove_temp_leftovers(&root).map_err(|e| (e.kind(), e.to_string())))
        }
    }
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
    /// Whether a sidecar was there before (with or without its image).
    sidecar_existed: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn one_image() -> Vec<u8> {
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out)
            .encode(&[9; 2 * 2 * 3], 2, 2, image_webp::ColorType::Rgb8)
            .expect("encoding a 2x2 image into memory cannot fail");
        out
    }

    fn sweep_done(out: &OutputDir) -> bool {
        matches!(*out.inner.sweep.lock(), Sweep::Done(_))
    }

    #[test]
    fn the_first_write_waits_for_the_sweep_and_open_does_not() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".hb-tmp-left"), b"partial").unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        // Nobody has waited for the sweep yet (it may or may not have run).
        assert!(!sweep_done(&out));
        // Questions and appends create no temp file and do not wait.
        assert!(!out.has_result("k"));
        assert!(!out.has_index_row("a.webp"));
        assert!(!sweep_done(&out));

        let sidecar: Sidecar = serde_json::from_value(serde_json::json!({
            "schema": Sidecar::SCHEMA, "file_name": "", "manifest": "m", "manifest_name": "m",
            "job": "j", "job_key": "k", "image_index": 0, "prompt_template": "p", "prompt": "p",
            "negative_prompt": null, "model": "m", "params": {}, "request": {}, "seed": "1",
            "batch_index": 0, "horde_request_id": "r", "generation_id": "g", "worker_id": "w",
            "worker_name": "w", "censored": false, "gen_metadata": [], "kudos": 1.0,
            "submitted_at": "t", "completed_at": "t", "horde_batch_version": "v"
        }))
        .unwrap();
        out.write_image("a", &one_image(), &sidecar).unwrap();
        // The write joined the sweep before creating its temp files.
        assert!(matches!(*out.inner.sweep.lock(), Sweep::Done(Ok(1))));
        assert_eq!(out.recovery().removed_temp_files, 1);
    }

    #[test]
    fn open_leaves_temp_files_alone_until_the_caller_owns_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(".hb-tmp-left");
        fs::write(&leftover, b"partial").unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        assert!(matches!(*out.inner.sweep.lock(), Sweep::NotStarted));
        assert!(leftover.exists(), "open alone sweeps nothing");
        out.start_sweep();
        assert_eq!(out.recovery().removed_temp_files, 1);
        assert!(!leftover.exists());
    }

    #[test]
    fn rewriting_a_result_waits_for_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::open(dir.path()).unwrap();
        assert!(!sweep_done(&out));
        let result = JobResult {
            job_key: "k".into(),
            job: "j".into(),
            images: vec![],
            kudos: 0.0,
            attempts: 1,
            completed_at: "t".into(),
            id: None,
        };
        out.put_result(&result).unwrap();
        assert!(sweep_done(&out));
        let out = OutputDir::open(dir.path()).unwrap();
        out.forget_image("gone.webp").unwrap();
        assert!(sweep_done(&out));
    }
}
