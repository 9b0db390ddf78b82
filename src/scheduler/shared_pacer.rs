//! Submit slots shared by the processes of one host: so that three shards (or
//! any runs) that reach one Horde from one address stay, together, inside
//! that address's submit limits (2 a second and 90 a minute per IP,
//! docs/horde-api.md §3.1) instead of each pacing alone.
//!
//! Design: one small file per Horde URL (named by a digest of the URL) holds
//! the next free submit instant, in milliseconds since the epoch. A process
//! that wants to submit takes an advisory lock on the file (`fs4`: `flock` on
//! Unix, `LockFileEx` on Windows), reads the instant, takes
//! `max(instant, its own earliest)` as its slot, writes `slot + spacing` back
//! and unlocks, then sleeps until its slot. The lock is held for a read and a
//! write of a few bytes, never while sleeping. A `Retry-After` one process
//! hears pushes the instant for all of them.
//!
//! Why a "next free slot" and not a token bucket: the limits are fixed
//! windows, which a bucket's burst could overrun; evenly spaced slots never
//! do, and one timestamp is all the state there is.
//!
//! Why no file per API key: every submit from the host takes a slot of the
//! per-IP file, whose spacing (the run's submit interval, 700 ms by default)
//! is wider than the per-key limit's (2 a second), so a per-key file on the
//! same host could never be the one that binds. Across hosts nothing can be
//! shared; there the adaptive rule of `pacing` (slow down on a 429) keeps
//! both the per-IP and the per-key limit. Keys therefore leave no trace here,
//! not even a fingerprint.
//!
//! Robust by construction: an advisory lock dies with its holder, so a killed
//! process blocks nobody; an instant in the past is simply "free now"; a file
//! that does not parse (corrupt, foreign, empty) counts as empty and is
//! rewritten; an instant more than [`MAX_AHEAD`] in the future (a clock set
//! back, garbage) counts as empty too. A lock not had within
//! [`LOCK_PATIENCE`] (a holder stopped with Ctrl-Z) gives up on sharing for
//! that submit only.
//!
//! Where it does not work: on NFS and some other network file systems
//! `flock` may be ignored or emulated per host, so processes on different
//! hosts sharing the folder may not exclude each other (they then pace with
//! little more than their own spacing plus the adaptive rule). The folder is
//! `$HORDE_BATCH_PACER_DIR` if set, else `$XDG_RUNTIME_DIR/horde-batch`, else
//! `horde-batch-<user>` in the system temp dir (made private, and refused if
//! it is a symlink or others can write to it). `HORDE_BATCH_SHARED_PACING=off`
//! turns sharing off: each process then paces alone, as separate hosts do.
//!
//! Must not sleep, decide intervals or know about 429s: `pacing` does.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The folder for the slot files, when set (tests give each test its own).
pub const PACER_DIR_ENV: &str = "HORDE_BATCH_PACER_DIR";
/// `off` (or `0`, `false`, `no`) turns sharing off.
pub const SHARED_PACING_ENV: &str = "HORDE_BATCH_SHARED_PACING";

/// The first line of a slot file; anything else is not ours.
const HEADER: &str = "horde-batch submit slot v1";
/// A slot file is a few dozen bytes; reading more means it is not ours.
const MAX_FILE_BYTES: u64 = 256;
/// How far ahead a stored instant may be and still be believed: queued slots
/// of many waiting processes fit well inside it, a clock set back by hours
/// does not.
pub const MAX_AHEAD: Duration = Duration::from_secs(10 * 60);
/// How long to try for the lock before pacing this submit alone.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// Between two tries for the lock (held for microseconds at a time).
const LOCK_RETRY: Duration = Duration::from_millis(3);
/// Namespace of the file-name digest, so it means nothing elsewhere.
const FILE_NAMESPACE: u128 = 0x6f1c_2b7e_5a43_4d0e_9b7c_8e21_44d3_a9f0;

/// Why a slot could not be shared (logged once; the process paces alone).
#[derive(Debug, thiserror::Error)]
pub enum SharedSlotError {
    #[error("cannot use the pacing folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pacing folder {0} is a symlink or others can write to it")]
    Unsafe(PathBuf),
    #[error("cannot use the pacing file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pacing file {0} stayed locked for {LOCK_PATIENCE:?}")]
    Busy(PathBuf),
}

/// The shared submit slots of one Horde URL.
#[derive(Debug)]
pub struct SharedSlots {
    path: PathBuf,
    /// Set after the first failure is logged, so a broken folder warns once.
    warned: AtomicBool,
}

impl SharedSlots {
    /// The slots of `horde_url` as the environment says: `None` when sharing
    /// is turned off or no folder can be found.
    pub fn from_env(horde_url: &str) -> Option<SharedSlots> {
        if std::env::var(SHARED_PACING_ENV)
            .is_ok_and(|v| matches!(v.trim(), "off" | "0" | "false" | "no"))
        {
            return None;
        }
        let folder = match std::env::var_os(PACER_DIR_ENV).filter(|d| !d.is_empty()) {
            Some(dir) => PacerFolder::Chosen(PathBuf::from(dir)),
            None => PacerFolder::Default(default_folder()?),
        };
        match folder.prepare() {
            Ok(dir) => Some(SharedSlots::in_folder(&dir, horde_url)),
            Err(error) => {
                tracing::warn!(%error, "submits are paced by this process alone");
                None
            }
        }
    }

    /// The slots of `horde_url` in `dir` (which must exist).
    pub fn in_folder(dir: &Path, horde_url: &str) -> SharedSlots {
        let digest = crate::digest::name_digest(FILE_NAMESPACE, horde_url.as_bytes());
        let name = format!("submit-{}.slot", &crate::digest::to_hex(digest)[..16]);
        SharedSlots {
            path: dir.join(name),
            warned: AtomicBool::new(false),
        }
    }

    /// The file behind these slots.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the first free slot at or after `earliest` and keeps the next
    /// `spacing` for this process: the slot's instant, or `None` when it
    /// could not be shared (the caller paces alone for this submit).
    pub async fn reserve(&self, earliest: SystemTime, spacing: Duration) -> Option<SystemTime> {
        let take = |stored: Option<SystemTime>| {
            let slot = stored.map_or(earliest, |free| free.max(earliest));
            (slot, slot + spacing)
        };
        let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match self.try_update(take) {
                Ok(Some(slot)) => return Some(slot),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(LOCK_RETRY).await;
                }
                Ok(None) => return self.gave_up(SharedSlotError::Busy(self.path.clone())),
                Err(error) => return self.gave_up(error),
            }
        }
    }

    /// Nobody on this host submits before `until` (a `Retry-After`). Best
    /// effort and without waiting: if the file is locked just now, its holder
    /// is taking a slot, and the 429 it may get tells it the same.
    pub fn hold_until(&self, until: SystemTime) {
        let hold = |stored: Option<SystemTime>| {
            let free = stored.map_or(until, |free| free.max(until));
            (free, free)
        };
        if let Err(error) = self.try_update(hold) {
            self.gave_up(error);
        }
    }

    fn gave_up(&self, error: SharedSlotError) -> Option<SystemTime> {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "submits are paced by this process alone for now");
        }
        None
    }

    /// One try under the lock: `change` gets the stored instant (`None` if
    /// none is believable) and returns (its answer, the instant to store).
    /// `Ok(None)` when another process holds the lock.
    fn try_update(
        &self,
        change: impl FnOnce(Option<SystemTime>) -> (SystemTime, SystemTime),
    ) -> Result<Option<SystemTime>, SharedSlotError> {
        let file_error = |source| SharedSlotError::File {
            path: self.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(file_error)?;
        // Fully qualified: std's own `File::try_lock` is newer than the MSRV.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => return Ok(None),
            Err(fs4::TryLockError::Error(source)) => return Err(file_error(source)),
        }
        // The lock is released when `file` is closed, on every path out.
        let stored = read_instant(&mut file).map_err(file_error)?;
        let believable = stored.filter(|at| *at <= SystemTime::now() + MAX_AHEAD);
        let (answer, store) = change(believable);
        write_instant(&mut file, store).map_err(file_error)?;
        Ok(Some(answer))
    }
}

/// Where the slot files go.
enum PacerFolder {
    /// Named by the user: used as it is.
    Chosen(PathBuf),
    /// Ours to make private.
    Default(PathBuf),
}

impl PacerFolder {
    fn prepare(self) -> Result<PathBuf, SharedSlotError> {
        match self {
            PacerFolder::Chosen(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| SharedSlotError::Folder {
                    path: dir.clone(),
                    source,
                })?;
                Ok(dir)
            }
            PacerFolder::Default(dir) => {
                make_private_folder(&dir).map_err(|source| SharedSlotError::Folder {
                    path: dir.clone(),
                    source,
                })?;
                if !is_private_folder(&dir) {
                    return Err(SharedSlotError::Unsafe(dir));
                }
                Ok(dir)
            }
        }
    }
}

/// `$XDG_RUNTIME_DIR/horde-batch`, else `horde-batch-<user>` in the temp dir.
fn default_folder() -> Option<PathBuf> {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if runtime.is_absolute() {
            return Some(runtime.join("horde-batch"));
        }
    }
    let user = ["USER", "USERNAME", "LOGNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok())
        .filter(|user| {
            !user.is_empty()
                && user
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .unwrap_or_else(|| "user".to_owned());
    Some(std::env::temp_dir().join(format!("horde-batch-{user}")))
}

#[cfg(unix)]
fn make_private_folder(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(not(unix))]
fn make_private_folder(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A real folder (not a symlink) that no one else may write to.
fn is_private_folder(dir: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_dir() && meta.permissions().mode() & 0o022 == 0
    }
    #[cfg(not(unix))]
    {
        meta.is_dir()
    }
}

/// The stored instant, or `None` for an empty or foreign file.
fn read_instant(file: &mut File) -> std::io::Result<Option<SystemTime>> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0))?;
    if Read::by_ref(file)
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)
        .is_err()
    {
        return Ok(None); // not UTF-8: not ours
    }
    Ok(parse_instant(&text))
}

fn parse_instant(text: &str) -> Option<SystemTime> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let millis: u64 = lines.next()?.strip_prefix("next_free_ms ")?.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(millis))
}

fn write_instant(file: &mut File, at: SystemTime) -> std::io::Result<()> {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let text = format!("{HEADER}\nnext_free_ms {millis}\n");
    file.seek(SeekFrom::Start(0))?;
    file.set_len(0)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:7001/api/";
    const SPACING: Duration = Duration::from_millis(700);

    fn ms(at: SystemTime) -> u128 {
        at.duration_since(UNIX_EPOCH).unwrap().as_millis()
    }

    #[tokio::test]
    async fn slots_are_spaced_across_holders_of_one_url() {
        let dir = tempfile::tempdir().unwrap();
        let first = SharedSlots::in_folder(dir.path(), URL);
        let second = SharedSlots::in_folder(dir.path(), URL);
        let now = SystemTime::now();
        let a = first.reserve(now, SPACING).await.unwrap();
        let b = second.reserve(now, SPACING).await.unwrap();
        let c = first.reserve(now, SPACING).await.unwrap();
        assert_eq!(ms(b) - ms(a), 700);
        assert_eq!(ms(c) - ms(b), 700);
        let other_url = SharedSlots::in_folder(dir.path(), "http://127.0.0.1:7002/api/");
        assert_ne!(other_url.path(), first.path());
        assert_eq!(ms(other_url.reserve(now, SPACING).await.unwrap()), ms(now));
    }

    #[tokio::test]
    async fn a_slot_is_never_before_the_asked_instant() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SharedSlots::in_folder(dir.path(), URL);
        let now = SystemTime::now();
        slots.reserve(now, SPACING).await.unwrap();
        let later = now + Duration::from_secs(5);
        assert_eq!(slots.reserve(later, SPACING).await, Some(later));
    }

    #[tokio::test]
    async fn a_retry_after_holds_every_holder() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SharedSlots::in_folder(dir.path(), URL);
        let now = SystemTime::now();
        slots.hold_until(now + Duration::from_secs(2));
        let other = SharedSlots::in_folder(dir.path(), URL);
        let slot = other.reserve(now, SPACING).await.unwrap();
        assert_eq!(ms(slot), ms(now + Duration::from_secs(2)));
    }

    #[tokio::test]
    async fn a_stale_instant_is_free_now() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SharedSlots::in_folder(dir.path(), URL);
        let now = SystemTime::now();
        write_instant_at(slots.path(), now - Duration::from_secs(3600));
        assert_eq!(ms(slots.reserve(now, SPACING).await.unwrap()), ms(now));
    }

    #[tokio::test]
    async fn a_corrupt_foreign_or_far_future_file_counts_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SharedSlots::in_folder(dir.path(), URL);
        let far = SystemTime::now() + Duration::from_secs(24 * 3600);
        let far_ms = ms(far);
        for junk in [
            b"".to_vec(),
            b"\xff\xfe not text".to_vec(),
            b"{\"next\": 1}".to_vec(),
            format!("{HEADER}\nnext_free_ms -5\n").into_bytes(),
            format!("{HEADER}\nnext_free_ms {far_ms}\n").into_bytes(),
            vec![b'9'; 10_000],
        ] {
            std::fs::write(slots.path(), &junk).unwrap();
            let now = SystemTime::now();
            let slot = slots.reserve(now, SPACING).await.unwrap();
            assert_eq!(ms(slot), ms(now), "{:?}", String::from_utf8_lossy(&junk));
            let text = std::fs::read_to_string(slots.path()).unwrap();
            assert!(text.starts_with(HEADER), "rewritten: {text}");
        }
    }

    #[tokio::test]
    async fn a_held_lock_is_waited_for_then_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SharedSlots::in_folder(dir.path(), URL);
        slots.reserve(SystemTime::now(), SPACING).await.unwrap();
        let holder = File::open(slots.path()).unwrap();
        fs4::FileExt::lock(&holder).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(slots.reserve(SystemTime::now(), SPACING).await, None);
        assert!(started.elapsed() >= LOCK_PATIENCE);
        // Released (as it is when its holder dies): shared again.
        drop(holder);
        assert!(slots.reserve(SystemTime::now(), SPACING).await.is_some());
    }

    #[test]
    fn the_file_name_carries_no_url() {
        let dir = Path::new("/x");
        let slots = SharedSlots::in_folder(dir, "https://user:secret@aihorde.net/api/");
        let name = slots.path().file_name().unwrap().to_string_lossy();
        assert!(
            name.starts_with("submit-") && name.ends_with(".slot"),
            "{name}"
        );
        assert!(!name.contains("aihorde") && !name.contains("secret"));
    }

    #[test]
    #[cfg(unix)]
    fn a_folder_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            PacerFolder::Default(open).prepare(),
            Err(SharedSlotError::Unsafe(_))
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert!(matches!(
            PacerFolder::Default(link).prepare(),
            Err(SharedSlotError::Unsafe(_))
        ));
        let private = dir.path().join("private");
        assert!(PacerFolder::Default(private).prepare().is_ok());
    }

    fn write_instant_at(path: &Path, at: SystemTime) {
        let mut file = File::create(path).unwrap();
        write_instant(&mut file, at).unwrap();
    }
}
