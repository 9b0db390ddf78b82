//! Crash-safe placement of exported files, on `output`'s temp writer (as the
//! output folder does, invariant 1): each file is written under a temp name in
//! its final folder, flushed, renamed over its final name, and the folder is
//! flushed; a folder of files (the Hub layout's) is built under a temp name
//! and renamed whole. Temp names start with [`TEMP_PREFIX`], so a rerun
//! after a kill sweeps what the killed one left. Must not know formats.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::output::sync_dir;
use crate::output::{TempWriter, TEMP_PREFIX};

use super::Fault;

/// Bytes the export may still write (`Fault::FullAfterBytes`); unlimited otherwise.
static ROOM: AtomicU64 = AtomicU64::new(u64::MAX);

/// Arms (or disarms) the injected full disk.
pub fn set_fault(fault: Option<Fault>) {
    let room = match fault {
        Some(Fault::FullAfterBytes(bytes)) => bytes,
        _ => u64::MAX,
    };
    ROOM.store(room, Ordering::SeqCst);
}

/// Takes `len` bytes of room, or fails as a full disk does.
fn take_room(len: usize) -> io::Result<()> {
    let len = len as u64;
    ROOM.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |room| {
        room.checked_sub(len)
    })
    .map(drop)
    .map_err(|_| io::Error::from(io::ErrorKind::StorageFull))
}

/// A file being written under a temp name in its final folder
/// (`output::TempWriter`, with the injected full disk). Dropped unplaced, it
/// is deleted.
pub struct TempFile {
    writer: TempWriter,
    len: u64,
}

impl TempFile {
    pub fn new(dir: &Path) -> io::Result<TempFile> {
        Ok(TempFile {
            writer: TempWriter::new(dir)?,
            len: 0,
        })
    }

    /// Flushes the file to disk and renames it to `path`, replacing what was
    /// there; its length. The folder is not flushed: call [`sync_dir`].
    pub fn place(self, path: &Path) -> io::Result<u64> {
        self.writer.finish()?.persist_replacing(path)?;
        Ok(self.len)
    }
}

impl Write for TempFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        take_room(bytes.len())?;
        let written = self.writer.write(bytes)?;
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// Writes `bytes` to `path` through a temp file (see [`TempFile::place`]).
pub fn place_bytes(path: &Path, bytes: &[u8]) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = TempFile::new(dir)?;
    temp.write_all(bytes)?;
    temp.place(path)
}

/// A folder being filled under a temp name beside its final one.
pub struct TempDir {
    path: PathBuf,
    placed: bool,
}

impl TempDir {
    pub fn new(parent: &Path) -> io::Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir_in(parent)?;
        Ok(TempDir {
            path: dir.keep(),
            placed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the file `name` in the folder (flushed by [`TempDir::place`]).
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        take_room(bytes.len())?;
        let mut file = File::create_new(self.path.join(name))?;
        file.write_all(bytes)?;
        if !cfg!(target_os = "linux") {
            file.sync_all()?;
        }
        Ok(())
    }

    /// Flushes the folder's files and entries, then renames it to `path`; a
    /// folder already there (an earlier export of other rows) is moved aside
    /// first and removed.
    pub fn place(mut self, path: &Path) -> io::Result<()> {
        // One syncfs flushes every file written into the folder: 10,000
        // fsyncs took 25 s on ext4, this about one.
        #[cfg(target_os = "linux")]
        rustix::fs::syncfs(File::open(&self.path)?)?;
        sync_dir(&self.path)?;
        if path.exists() {
            let parent = path.parent().unwrap_or(Path::new("."));
            let aside = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempdir_in(parent)?
                .keep();
            fs::rename(path, aside.join("old"))?;
            fs::remove_dir_all(&aside)?;
        }
        fs::rename(&self.path, path)?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes temp files and folders a killed export left in `dir`; how many.
pub fn sweep(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
        removed += 1;
    }
    Ok(removed)
}
