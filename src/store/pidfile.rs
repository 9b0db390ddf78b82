//! `<state dir>/run.pid`: which process holds the ledger, so a second run can
//! say "in use by pid N" instead of a bare lock error.
//!
//! The pidfile is advisory only. The ledger's own exclusive lock decides who
//! owns the directory; a stale pidfile left by a killed run is simply replaced.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE_NAME: &str = "run.pid";

/// Our pid in `<dir>/run.pid`, removed on drop if it still names us.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Atomically replaces `<dir>/run.pid` with this process's pid.
    pub(crate) fn claim(dir: &Path) -> std::io::Result<PidFile> {
        let pid = std::process::id();
        let path = dir.join(FILE_NAME);
        let mut temp = tempfile::NamedTempFile::new_in(dir)?;
        writeln!(temp, "{pid}")?;
        temp.persist(&path).map_err(|error| error.error)?;
        Ok(PidFile { path, pid })
    }

    /// The pid recorded in `<dir>/run.pid`, if the file exists and holds one.
    pub(crate) fn read(dir: &Path) -> Option<u32> {
        read_pid(&dir.join(FILE_NAME))
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Runs while the ledger lock is still held (see `Store`'s field order),
        // so no other process can have claimed the file in between.
        if read_pid(&self.path) == Some(self.pid) {
            // Best effort: a leftover pidfile is harmless, the lock decides.
            let _ = fs::remove_file(&self.path);
        }
    }
}
