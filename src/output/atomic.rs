//! Crash-safe file creation: a file appears under its final name complete or not at all.
//!
//! Owns the temp-file → `sync_all` → no-clobber rename → directory fsync sequence
//! (invariant 1 of ARCHITECTURE.md), durable directory creation, and the removal of
//! temp files a killed run left behind. The steps are also offered apart
//! ([`write_synced_temp`], [`SyncedTemp::persist_noclobber`], [`sync_dir`]) so
//! a caller can place many files and flush their directory once. Every flush
//! goes through here and is counted per thread ([`syncs_on_this_thread`]).
//! Returns plain `io::Error`s; callers attach the path and decide what an
//! existing file means. Must not know about images, sidecars or the index.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path};

/// Prefix of every temp file we create, so leftovers of a killed run are recognisable.
pub const TEMP_PREFIX: &str = ".hb-tmp-";

thread_local! {
    static SYNCS: Cell<u64> = const { Cell::new(0) };
}

/// How many `fsync`/`fdatasync` calls the output code made on this thread so
/// far: lets tests and measurements count flushes per image exactly (a batch
/// is written on one thread).
pub fn syncs_on_this_thread() -> u64 {
    SYNCS.with(Cell::get)
}

fn counted<T>(result: T) -> T {
    SYNCS.with(|c| c.set(c.get() + 1));
    result
}

/// `fsync` of a file's data and metadata, counted.
pub fn sync_file(file: &File) -> io::Result<()> {
    counted(file.sync_all())
}

/// `fdatasync` of a file, counted.
pub fn sync_file_data(file: &File) -> io::Result<()> {
    counted(file.sync_data())
}

/// A complete file flushed to disk under a temp name in its final directory,
/// not yet visible under its final name. Dropped unplaced, it is deleted.
#[derive(Debug)]
pub struct SyncedTemp(tempfile::NamedTempFile);

/// Writes `bytes` to a new temp file in `dir` and flushes it (`fsync`).
///
/// The flush must come before the rename: otherwise a crash after the rename
/// could leave the final name pointing at a file whose data never reached
/// the disk (a zero-length or partial `.webp`).
pub fn write_synced_temp(dir: &Path, bytes: &[u8]) -> io::Result<SyncedTemp> {
    let mut temp = temp_builder().tempfile_in(dir)?;
    temp.write_all(bytes)?;
    sync_file(temp.as_file())?;
    Ok(SyncedTemp(temp))
}

impl SyncedTemp {
    /// Renames the file to `path` unless something already has that name
    /// ([`io::ErrorKind::AlreadyExists`]; the temp file is then removed).
    /// The new directory entry is not flushed: call [`sync_dir`] before
    /// relying on it.
    pub fn persist_noclobber(self, path: &Path) -> io::Result<()> {
        // On failure the PersistError owns the temp file; dropping it deletes it.
        self.0
            .persist_noclobber(path)
            .map(drop)
            .map_err(|e| e.error)
    }

    /// Renames the file to `path`, replacing a file of that name in one
    /// step: for files rewritten whole (an index gaining columns, a sidecar
    /// gaining a field), never for images. Not flushed: call [`sync_dir`].
    pub fn persist_replacing(self, path: &Path) -> io::Result<()> {
        self.0.persist(path).map(drop).map_err(|e| e.error)
    }
}

/// A temp file in its final directory being written piece by piece (a
/// rewritten index streamed line by line): [`write_synced_temp`] for content
/// too big to hold at once. Dropped unfinished, it is deleted.
#[derive(Debug)]
pub struct TempWriter(io::BufWriter<tempfile::NamedTempFile>);

impl TempWriter {
    /// Creates a new temp file in `dir`.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let temp = temp_builder().tempfile_in(dir)?;
        Ok(TempWriter(io::BufWriter::with_capacity(256 * 1024, temp)))
    }

    /// Writes what is buffered and flushes the file to disk (`fsync`).
    pub fn finish(self) -> io::Result<SyncedTemp> {
        let temp = self
            .0
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        sync_file(temp.as_file())?;
        Ok(SyncedTemp(temp))
    }
}

impl Write for TempWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Creates `path` holding exactly `bytes`, never replacing an existing file.
///
/// The data is written to a temp file in the same directory, flushed to disk,
/// renamed into place without clobbering, and the directory entry is flushed,
/// so after `Ok` the file survives a power loss and before it no partial file
/// is visible under `path`.
///
/// # Errors
///
/// Any I/O error; [`io::ErrorKind::AlreadyExists`] when `path` already exists
/// (nothing is written then, and the temp file is removed).
#[cfg(test)] // production code places files in batches (OutputDir::write_images)
pub fn create_new_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_synced_temp(parent_dir(path), bytes)?.persist_noclobber(path)?;
    sync_dir(parent_dir(path))
}

/// Checks that a temp file can be created in `dir` (and removes it again).
///
/// Run before any work is done, so a read-only or missing directory is
/// reported before kudos are spent on images that could not be saved.
pub fn probe_writable(dir: &Path) -> io::Result<()> {
    temp_builder().tempfile_in(dir).map(drop)
}

/// Creates the directory `root/relative` and any missing parents, flushing
/// each new directory entry so it survives a crash along with the files in it.
///
/// `relative` must be a plain relative path (only normal components).
pub fn create_dirs_durably(root: &Path, relative: &Path) -> io::Result<()> {
    let mut current = root.to_path_buf();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "directory path must be relative without `..`",
            ));
        };
        let parent = current.clone();
        current.push(name);
        match fs::create_dir(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::metadata(&current)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a directory",
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Flushes a directory's entries (new, renamed or removed files) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        sync_file(&File::open(dir)?)
    }
    // Windows cannot open a directory as a file; NTFS journals renames itself.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Removes every `.hb-tmp-*` file under `root`, returning how many were removed.
///
/// Descends into subdirectories (templates may create them) but not into
/// hidden ones such as the ledger's state folder, and never follows symlinks.
/// Only call this from the process that owns the output directory: a temp
/// file is "left over" only if no one is writing it.
pub fn remove_temp_leftovers(root: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut removed_here = false;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let file_type = entry.file_type()?;
            if name.starts_with(TEMP_PREFIX) && file_type.is_file() {
                fs::remove_file(entry.path())?;
                removed += 1;
                removed_here = true;
            } else if file_type.is_dir() && !name.starts_with('.') {
                pending.push(entry.path());
            }
        }
        if removed_here {
            sync_dir(&dir)?;
        }
    }
    Ok(removed)
}

fn temp_builder() -> tempfile::Builder<'static, 'static> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    // tempfile defaults to 0600; dataset files should be as readable as any
    // other file the user creates (the umask still applies).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o644));
    }
    builder
}

/// The directory a file lives in; `.` for a bare file name.
#[cfg(test)]
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        create_new_durably(&path, b"hello").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        assert_eq!(names_in(dir.path()), ["a.bin"]);
    }

    #[test]
    fn never_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        fs::write(&path, b"first").unwrap();
        let err = create_new_durably(&path, b"second").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names_in(dir.path()), ["a.bin"]);
    }

    #[cfg(unix)]
    #[test]
    fn created_files_are_not_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        create_new_durably(&path, b"x").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_ne!(
            mode & 0o044,
            0,
            "mode {mode:o} should be readable by others"
        );
    }

    #[test]
    fn creates_nested_directories_and_refuses_a_file_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        create_dirs_durably(dir.path(), Path::new("a/b/c")).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
        create_dirs_durably(dir.path(), Path::new("a/b")).unwrap();

        fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dirs_durably(dir.path(), Path::new("f/g")).is_err());
        assert!(create_dirs_durably(dir.path(), Path::new("../x")).is_err());
    }

    #[test]
    fn removes_leftovers_recursively_but_not_in_hidden_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(root.join(".horde-batch")).unwrap();
        fs::write(root.join(".hb-tmp-abc"), b"partial").unwrap();
        fs::write(root.join("sub/deeper/.hb-tmp-x"), b"partial").unwrap();
        fs::write(root.join(".horde-batch/.hb-tmp-keep"), b"state").unwrap();
        fs::write(root.join("keep.webp"), b"image").unwrap();

        assert_eq!(remove_temp_leftovers(root).unwrap(), 2);
        assert!(!root.join(".hb-tmp-abc").exists());
        assert!(!root.join("sub/deeper/.hb-tmp-x").exists());
        assert!(root.join(".horde-batch/.hb-tmp-keep").exists());
        assert!(root.join("keep.webp").exists());
        assert_eq!(remove_temp_leftovers(root).unwrap(), 0);
    }
}
