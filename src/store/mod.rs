//! The ledger: a sled database in the run's state directory that checkpoints
//! every Horde request of a batch run, so a killed run resumes where it stopped
//! and a run can be cancelled.
//!
//! This module owns the state directory (`<dir>/ledger/`, `<dir>/ledger.id`,
//! `<dir>/run.pid`) and nothing else. It never talks HTTP, never writes images,
//! and knows a manifest only through opaque job keys. Everything sled-specific
//! stays in here so the backend could become redb or SQLite without touching
//! callers.
//!
//! Durability contract: [`Store::put`] lands in memory (sled fsyncs on its own
//! about every 500 ms); [`Store::flush`] and [`Store::put_durable`] return only
//! once every earlier write would survive a crash. Callers flush before any step
//! with an effect outside the process (a submit, a cancel) and after writing
//! image files, as ARCHITECTURE.md's ledger invariants require.
//!
//! A slot with no record is pending, so a plan of a million jobs writes nothing
//! up front. The keys of in-flight records are also kept in a small index (see
//! `index.rs`), so finding them never reads the whole ledger.

pub mod alchemy;
mod error;
mod index;
mod ledger;
mod pidfile;
pub mod prefix;
mod record;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use error::StoreError;
pub use ledger::{Ledger, MemoryLedger};
pub use record::{
    now_ms, RecordedError, RequestKey, RequestRecord, RequestState, Reroll, RunMeta, SavedImage,
    StateCounts, SCHEMA_VERSION,
};

use index::{KeyLocks, TreeName};
use pidfile::PidFile;
use record::Versioned;

/// The database directory inside the state directory.
const LEDGER_DIR: &str = "ledger";
/// Tree of request records, keyed by [`RequestKey`].
const REQUESTS_TREE: &str = "requests";
/// Tree of run-wide values.
const META_TREE: &str = "meta";
/// Key of the [`RunMeta`] in [`META_TREE`].
const RUN_META_KEY: &str = "run";
/// Key of the ledger's random id in [`META_TREE`]; see [`check_ledger_identity`].
const LEDGER_ID_KEY: &str = "ledger_id";
/// The file beside the ledger that repeats its id.
const LEDGER_ID_FILE: &str = "ledger.id";

/// A handle on an open ledger. Cheap to clone; the database closes, and the
/// pidfile goes, when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    // Fields drop in declaration order: the pidfile is removed while the
    // database below still holds the lock, so no newer owner's pidfile is
    // ever deleted.
    _pidfile: PidFile,
    dir: PathBuf,
    db: sled::Db,
    requests: sled::Tree,
    meta: sled::Tree,
    /// Keys of records that may be in flight; see `index.rs`.
    in_flight: sled::Tree,
    /// One record per image that alchemy forms were asked for; see `alchemy.rs`.
    alchemy: sled::Tree,
    /// Serialize the writes of one key, so the index stays a superset.
    key_locks: KeyLocks,
    /// Writes made so far, and how many of them a finished flush covers.
    writes: AtomicU64,
    flushed: AtomicU64,
    /// One flush at a time: sled's `flush_async` runs on its small IO thread
    /// pool, and more concurrent flushes than it has threads deadlock it (each
    /// waits for a write queued behind the others). Callers that wait here
    /// usually find their writes already covered by the flush before them.
    flushing: tokio::sync::Mutex<()>,
    /// Every write made through the store, in order (tests only).
    #[cfg(test)]
    journal: parking_lot::Mutex<Vec<index::JournalEntry>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the ledger in `state_dir` and records our pid
    /// in `<state_dir>/run.pid`.
    ///
    /// Blocks while sled recovers its log (and, for a handle of this process
    /// still closing, up to half a second; and, once for a ledger last written
    /// without the in-flight index, while one read of every record rebuilds
    /// it); call it before the async work starts
    /// or through `spawn_blocking`. Fails with [`StoreError::Locked`] if another
    /// handle (in any process) has the ledger open, and with
    /// [`StoreError::Damaged`] if the ledger cannot be read or lost its contents.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let dir = state_dir.to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            dir: dir.clone(),
            action: "create the directory",
            source,
        })?;

        let db = open_sled(&dir)?;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|error| StoreError::from_sled(&dir, error))
        };
        let requests = open_tree(REQUESTS_TREE)?;
        let meta = open_tree(META_TREE)?;
        check_ledger_identity(&dir, &db, &meta)?;
        // Only after the identity check, so a damaged ledger gets no new tree.
        let in_flight = open_tree(index::IN_FLIGHT_TREE)?;
        let alchemy = open_tree(alchemy::ALCHEMY_TREE)?;

        let pidfile = PidFile::claim(&dir).map_err(|source| StoreError::Io {
            dir: dir.clone(),
            action: "write the pidfile run.pid",
            source,
        })?;
        let store = Store {
            inner: Arc::new(Inner {
                _pidfile: pidfile,
                dir,
                db,
                requests,
                meta,
                in_flight,
                alchemy,
                key_locks: KeyLocks::new(),
                writes: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                flushing: tokio::sync::Mutex::new(()),
                #[cfg(test)]
                journal: parking_lot::Mutex::new(Vec::new()),
            }),
        };
        // Not flushed: a rebuild lost in a crash is redone at the next open.
        store.ensure_index()?;
        Ok(store)
    }

    /// The state directory this ledger lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The record of `key`, or `None` if the slot is pending.
    pub fn get(&self, key: &RequestKey) -> Result<Option<RequestRecord>, StoreError> {
        let encoded = key.encode();
        let raw = self
            .inner
            .requests
            .get(&encoded)
            .map_err(|error| self.backend_error(error))?;
        raw.map(|raw| self.decode_record(&encoded, &raw))
            .transpose()
    }

    /// Stores `record` under `key`, in memory until the next [`Store::flush`].
    ///
    /// Fails with [`StoreError::BadRecord`] if the record belongs to another key.
    pub fn put(&self, key: &RequestKey, record: &RequestRecord) -> Result<(), StoreError> {
        self.check_belongs(key, record)?;
        let encoded = key.encode();
        let value = record.encode();
        let _key = self.inner.key_locks.lock(encoded.as_bytes());
        let in_flight = record.is_in_flight();
        if in_flight {
            self.index_add(encoded.as_bytes())?;
        }
        self.inner
            .requests
            .insert(encoded.as_bytes(), value.as_slice())
            .map_err(|error| self.backend_error(error))?;
        self.journal(TreeName::Requests, encoded.as_bytes(), Some(&value));
        if !in_flight {
            self.index_remove(encoded.as_bytes())?;
        }
        self.wrote();
        Ok(())
    }

    /// Waits until every earlier write is on disk (fsynced). Runs on sled's own
    /// IO threads, so it never blocks the async runtime.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let wanted = inner.writes.load(Ordering::SeqCst);
        let _turn = inner.flushing.lock().await;
        if inner.flushed.load(Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        // Every write counted here was made before this flush starts.
        let covered = inner.writes.load(Ordering::SeqCst);
        inner
            .db
            .flush_async()
            .await
            .map_err(|error| self.backend_error(error))?;
        inner.flushed.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// Counts a write, for [`Store::flush`] to know what it covers. Called
    /// after the write is made.
    fn wrote(&self) {
        self.inner.writes.fetch_add(1, Ordering::SeqCst);
    }

    /// [`Store::put`] then [`Store::flush`]: the record survives a crash once this returns.
    pub async fn put_durable(
        &self,
        key: &RequestKey,
        record: &RequestRecord,
    ) -> Result<(), StoreError> {
        self.put(key, record)?;
        self.flush().await
    }

    /// Atomically replaces the record of `key` with `change(current)`; `None`
    /// on either side means "pending" (no record). Returns the stored result.
    ///
    /// `change` may run more than once if another task writes the same key
    /// concurrently, so it must not have side effects. Not flushed.
    pub fn update<F>(
        &self,
        key: &RequestKey,
        mut change: F,
    ) -> Result<Option<RequestRecord>, StoreError>
    where
        F: FnMut(Option<RequestRecord>) -> Option<RequestRecord>,
    {
        let encoded = key.encode();
        let requests = &self.inner.requests;
        // Writers through the store wait here; the compare-and-swap below
        // still guards against anything writing the tree without the lock.
        let _key = self.inner.key_locks.lock(encoded.as_bytes());
        let mut current = requests
            .get(&encoded)
            .map_err(|error| self.backend_error(error))?;
        loop {
            let decoded = current
                .as_deref()
                .map(|raw| self.decode_record(&encoded, raw))
                .transpose()?;
            let next = change(decoded);
            if let Some(next) = &next {
                self.check_belongs(key, next)?;
            }
            let in_flight = next.as_ref().is_some_and(RequestRecord::is_in_flight);
            if in_flight {
                self.index_add(encoded.as_bytes())?;
            }
            let value = next.as_ref().map(Versioned::encode);
            let swapped = requests
                .compare_and_swap(&encoded, current.as_deref(), value.as_deref())
                .map_err(|error| self.backend_error(error))?;
            match swapped {
                Ok(()) => {
                    self.journal(TreeName::Requests, encoded.as_bytes(), value.as_deref());
                    if !in_flight {
                        self.index_remove(encoded.as_bytes())?;
                    }
                    self.wrote();
                    return Ok(next);
                }
                Err(conflict) => current = conflict.current,
            }
        }
    }

    /// Every recorded slot of `job_key`, in slot order. Pending slots are absent.
    pub fn job_slots(&self, job_key: &str) -> Result<Vec<(RequestKey, RequestRecord)>, StoreError> {
        let mut slots = Vec::new();
        for entry in self
            .inner
            .requests
            .scan_prefix(RequestKey::job_prefix(job_key))
        {
            let (key, record) = self.decode_entry(entry)?;
            // A job key containing '/' could share another job's prefix.
            if key.job_key == job_key {
                slots.push((key, record));
            }
        }
        // Keys sort by slot only below slot 1 000 000; make the order hold everywhere.
        slots.sort_by_key(|(key, _)| key.slot);
        Ok(slots)
    }

    /// Every record, in key order (by job key, then slot). The iterator keeps the
    /// ledger open while it lives.
    pub fn iter(
        &self,
    ) -> impl Iterator<Item = Result<(RequestKey, RequestRecord), StoreError>> + Send + 'static
    {
        let store = self.clone();
        self.inner
            .requests
            .iter()
            .map(move |entry| store.decode_entry(entry))
    }

    /// Every slot the Horde may be working on (Submitting or Submitted), in key
    /// order: what a resumed run re-attaches to and what `cancel` deletes.
    ///
    /// Reads only the records the in-flight index names (see `index.rs`), and
    /// drops the index entries it finds stale.
    pub fn in_flight(&self) -> Result<Vec<(RequestKey, RequestRecord)>, StoreError> {
        let mut in_flight = Vec::new();
        let mut stale = Vec::new();
        for raw_key in self.indexed_keys()? {
            let raw_value = self
                .inner
                .requests
                .get(&raw_key)
                .map_err(|error| self.backend_error(error))?;
            let Some(raw_value) = raw_value else {
                stale.push(raw_key);
                continue;
            };
            let key = self.decode_key(&raw_key)?;
            if record::probe_in_flight(&raw_value) == Some(false) {
                stale.push(raw_key);
                continue;
            }
            let record = self.decode_record(&key.to_string(), &raw_value)?;
            if record.is_in_flight() {
                in_flight.push((key, record));
            } else {
                stale.push(raw_key);
            }
        }
        for raw_key in stale {
            self.drop_stale(&raw_key)?;
        }
        Ok(in_flight)
    }

    /// Records per state, images saved and kudos charged, over the whole ledger.
    pub fn counts(&self) -> Result<StateCounts, StoreError> {
        let mut counts = StateCounts::default();
        for entry in self.iter() {
            counts.add(&entry?.1);
        }
        Ok(counts)
    }

    /// How many slots have a record. Walks the whole ledger (without decoding).
    pub fn len(&self) -> usize {
        self.inner.requests.len()
    }

    /// Whether no slot has a record yet.
    pub fn is_empty(&self) -> bool {
        self.inner.requests.is_empty()
    }

    /// The stored run metadata, or `None` before the first run.
    pub fn run_meta(&self) -> Result<Option<RunMeta>, StoreError> {
        let raw = self
            .inner
            .meta
            .get(RUN_META_KEY)
            .map_err(|error| self.backend_error(error))?;
        raw.map(|raw| RunMeta::decode(&raw).map_err(|error| self.bad_record(RUN_META_KEY, error)))
            .transpose()
    }

    /// Stores the run metadata, in memory until the next [`Store::flush`].
    pub fn put_run_meta(&self, meta: &RunMeta) -> Result<(), StoreError> {
        let value = meta.encode();
        self.inner
            .meta
            .insert(RUN_META_KEY, value.as_slice())
            .map_err(|error| self.backend_error(error))?;
        self.journal(TreeName::Meta, RUN_META_KEY.as_bytes(), Some(&value));
        // The index stayed complete while this process had the ledger open
        // (rebuilt at open if needed): the marker may name the new metadata.
        // A crash before this write only costs a rebuild at the next open.
        self.set_marker(&index::marker_for(Some(&value)))?;
        self.wrote();
        Ok(())
    }

    /// Records that a run starts now (see [`RunMeta::next_run`]) and returns the
    /// new metadata. Not flushed.
    pub fn record_run_start(
        &self,
        tool_version: &str,
        manifest_path: &str,
        manifest_name: &str,
    ) -> Result<RunMeta, StoreError> {
        let meta = RunMeta::next_run(
            self.run_meta()?,
            tool_version,
            manifest_path,
            manifest_name,
            now_ms(),
        );
        self.put_run_meta(&meta)?;
        Ok(meta)
    }

    fn decode_entry(
        &self,
        entry: sled::Result<(sled::IVec, sled::IVec)>,
    ) -> Result<(RequestKey, RequestRecord), StoreError> {
        let (raw_key, raw_value) = entry.map_err(|error| self.backend_error(error))?;
        let key = self.decode_key(&raw_key)?;
        let record = self.decode_record(&key.to_string(), &raw_value)?;
        Ok((key, record))
    }

    fn decode_key(&self, raw_key: &[u8]) -> Result<RequestKey, StoreError> {
        RequestKey::decode(raw_key).ok_or_else(|| StoreError::BadRecord {
            dir: self.inner.dir.clone(),
            key: String::from_utf8_lossy(raw_key).into_owned(),
            detail: "the key is not `<job key>/<slot number>`".to_owned(),
        })
    }

    fn decode_record(&self, key: &str, raw: &[u8]) -> Result<RequestRecord, StoreError> {
        RequestRecord::decode(raw).map_err(|error| self.bad_record(key, error))
    }

    fn check_belongs(&self, key: &RequestKey, record: &RequestRecord) -> Result<(), StoreError> {
        if record.job_key == key.job_key && record.slot == key.slot {
            return Ok(());
        }
        Err(StoreError::BadRecord {
            dir: self.inner.dir.clone(),
            key: key.to_string(),
            detail: format!(
                "refusing to store the record of {} under this key",
                record.key()
            ),
        })
    }

    fn bad_record(&self, key: &str, error: impl std::fmt::Display) -> StoreError {
        StoreError::BadRecord {
            dir: self.inner.dir.clone(),
            key: key.to_owned(),
            detail: error.to_string(),
        }
    }

    fn backend_error(&self, error: sled::Error) -> StoreError {
        StoreError::from_sled(&self.inner.dir, error)
    }
}

/// How long [`open_sled`] keeps retrying a lock that no other process claims.
/// sled's IO threads let go of the file lock a few milliseconds after the last
/// handle is dropped (16 ms worst seen in 200 in-process reopens), so an
/// immediate reopen in the same process would otherwise fail spuriously.
const LOCK_RELEASE_GRACE: Duration = Duration::from_millis(500);
const LOCK_RELEASE_POLL: Duration = Duration::from_millis(5);

/// Opens the sled database in `<dir>/ledger`, turning its lock and corruption
/// failures into [`StoreError::Locked`] and [`StoreError::Damaged`].
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let started = Instant::now();
    loop {
        match try_open_sled(dir) {
            Err(SledOpenError::Locked) => {
                let holder = PidFile::read(dir);
                let other_process = holder.is_some_and(|pid| pid != std::process::id());
                if other_process || started.elapsed() >= LOCK_RELEASE_GRACE {
                    return Err(StoreError::Locked {
                        dir: dir.to_path_buf(),
                        pid: holder,
                    });
                }
                std::thread::sleep(LOCK_RELEASE_POLL);
            }
            Err(SledOpenError::Failed(error)) => return Err(error),
            Ok(db) => return Ok(db),
        }
    }
}

enum SledOpenError {
    Locked,
    Failed(StoreError),
}

fn try_open_sled(dir: &Path) -> Result<sled::Db, SledOpenError> {
    let config = sled::Config::new().path(dir.join(LEDGER_DIR));
    let damaged = |detail: String| {
        SledOpenError::Failed(StoreError::Damaged {
            dir: dir.to_path_buf(),
            detail,
        })
    };
    // sled 0.34 panics on some malformed files instead of returning an error;
    // a damaged ledger must be a clear error, never a crash. Unwind safety holds
    // because nothing touched by a panicking open is used afterwards.
    let open = std::panic::AssertUnwindSafe(|| config.open());
    let opened = std::panic::catch_unwind(open).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        damaged(format!("the database panicked while opening: {message}"))
    })?;
    opened.map_err(|error| match error {
        // sled reports a held flock only as text:
        // `could not acquire lock on "<dir>/ledger/db": Os { .. kind: WouldBlock .. }`.
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            SledOpenError::Locked
        }
        sled::Error::Io(source) => SledOpenError::Failed(StoreError::Io {
            dir: dir.to_path_buf(),
            action: "open the ledger",
            source,
        }),
        other => damaged(describe_sled(&other)),
    })
}

/// sled's own text for corruption is "Read corrupted data at file offset None backtrace ()".
pub(crate) fn describe_sled(error: &sled::Error) -> String {
    match error {
        sled::Error::Corruption { at: Some(at), .. } => format!("corrupted data at {at:?}"),
        sled::Error::Corruption { at: None, .. } => "corrupted data".to_owned(),
        other => other.to_string(),
    }
}

/// Makes sure the database is the ledger this state directory was created
/// with, since sled opens a ledger whose files were emptied or overwritten as
/// an empty database instead of reporting it. A random id lives both in the
/// `meta` tree and in `<dir>/ledger.id`; a fresh directory gets one.
fn check_ledger_identity(dir: &Path, db: &sled::Db, meta: &sled::Tree) -> Result<(), StoreError> {
    let id_path = dir.join(LEDGER_ID_FILE);
    let damaged = |detail: String| StoreError::Damaged {
        dir: dir.to_path_buf(),
        detail,
    };
    let io_error = |action: &'static str| {
        move |source| StoreError::Io {
            dir: dir.to_path_buf(),
            action,
            source,
        }
    };

    let in_file = match std::fs::read_to_string(&id_path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io_error("read ledger.id")(error)),
    };
    let in_db = meta
        .get(LEDGER_ID_KEY)
        .map_err(|error| StoreError::from_sled(dir, error))?
        .map(|raw| String::from_utf8_lossy(&raw).into_owned());

    let id = match (in_db, in_file) {
        (Some(in_db), Some(in_file)) if in_db == in_file => return Ok(()),
        (Some(in_db), Some(in_file)) => {
            return Err(damaged(format!(
                "the ledger has id {in_db} but {LEDGER_ID_FILE} says {in_file}: \
                 the ledger directory was replaced"
            )))
        }
        (None, Some(_)) => {
            return Err(damaged(format!(
                "the ledger is empty although {LEDGER_ID_FILE} shows this directory held one: \
                 its files were lost or overwritten"
            )))
        }
        // Created by an open that stopped before writing the file.
        (Some(in_db), None) => in_db,
        (None, None) => {
            let id = uuid::Uuid::new_v4().to_string();
            meta.insert(LEDGER_ID_KEY, id.as_bytes())
                .map_err(|error| StoreError::from_sled(dir, error))?;
            // Durable before the file exists, so the file never names an id the
            // database lost. One small fsync, once per state directory.
            db.flush()
                .map_err(|error| StoreError::from_sled(dir, error))?;
            id
        }
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(io_error("write ledger.id"))?;
    writeln!(temp, "{id}").map_err(io_error("write ledger.id"))?;
    temp.as_file()
        .sync_all()
        .map_err(io_error("write ledger.id"))?;
    temp.persist(&id_path)
        .map_err(|error| io_error("write ledger.id")(error.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many slots flushing at once (a 1,000-row run with 40 in flight) once
    /// left sled's IO threads all waiting on each other: every flush must end.
    #[test]
    fn many_concurrent_flushes_all_finish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let done = runtime.block_on(async {
            let tasks: Vec<_> = (0..64u32)
                .map(|slot| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for round in 0..20u64 {
                            let key = RequestKey::new(format!("{slot:016x}"), 0);
                            let record = RequestRecord::first_attempt(&key, 0, 1, round);
                            store.put_durable(&key, &record).await.unwrap();
                        }
                    })
                })
                .collect();
            tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(tasks)).await
        });
        runtime.shutdown_background();
        if done.is_err() {
            // A deadlocked sled never closes: leak it rather than hang the test.
            std::mem::forget(store);
            panic!("flushes did not finish within 30 s");
        }
        let flushed = store.inner.flushed.load(Ordering::SeqCst);
        assert_eq!(flushed, store.inner.writes.load(Ordering::SeqCst));
    }

    #[test]
    fn a_record_with_an_unknown_schema_is_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = RequestKey::new("feedface00000000", 3);
        store
            .inner
            .requests
            .insert(
                key.encode(),
                &br#"{"schema": 99, "job_key": "feedface00000000"}"#[..],
            )
            .unwrap();

        let error = store.get(&key).unwrap_err();
        match &error {
            StoreError::BadRecord {
                key: shown,
                detail,
                dir: in_dir,
            } => {
                assert_eq!(shown, "feedface00000000/000003");
                assert!(detail.contains("schema version 99"), "{detail}");
                assert_eq!(in_dir, dir.path());
            }
            other => panic!("expected BadRecord, got {other:?}"),
        }
        assert!(matches!(
            store.iter().next(),
            Some(Err(StoreError::BadRecord { .. }))
        ));
        assert!(matches!(store.counts(), Err(StoreError::BadRecord { .. })));
        assert!(matches!(
            store.update(&key, |current| current),
            Err(StoreError::BadRecord { .. })
        ));
    }

    #[test]
    fn a_key_that_is_not_job_slot_is_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .inner
            .requests
            .insert("no-slot-here", &b"{}"[..])
            .unwrap();
        match store.iter().next() {
            Some(Err(StoreError::BadRecord { key, .. })) => assert_eq!(key, "no-slot-here"),
            other => panic!("expected BadRecord, got {other:?}"),
        }
    }

    #[test]
    fn unknown_run_meta_schema_is_a_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .inner
            .meta
            .insert(RUN_META_KEY, &br#"{"schema": 2}"#[..])
            .unwrap();
        assert!(matches!(
            store.run_meta(),
            Err(StoreError::BadRecord { .. })
        ));
    }
}
