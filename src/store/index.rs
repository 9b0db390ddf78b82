//! The in-flight index: a second sled tree (`in_flight`) holding the encoded
//! key of every record that may be in flight (Submitting or Submitted), so
//! [`Store::in_flight`] reads a few hundred records instead of the whole ledger
//! before a resumed run's first submit.
//!
//! This module owns that tree, its marker in the `meta` tree and the per-key
//! write locks. It must never write the `requests` tree; it only says, around
//! each record write in `mod.rs`, what the index needs before and after it.
//!
//! Invariant: while the marker matches, the index is a SUPERSET of the keys
//! of in-flight records, also after a crash. Writes keep it by ordering, not by
//! cross-tree transactions: a key is indexed before its record may become in
//! flight and unindexed only after its record left flight. That order survives
//! a crash because sled 0.34.7 recovers a prefix of its log: every write
//! reserves the next log position (LSN) when it is made, all trees share that
//! one log, and recovery replays it up to the first torn or missing message
//! (`pagecache/iterator.rs`, `check_contiguity_in_unstable_tail`), so a write
//! is never recovered without every write made before it by the same thread.
//! Stale entries (a key whose record is no longer in flight) are harmless and
//! are dropped by the next [`Store::in_flight`].
//!
//! Per-key locks make "index, write the record, unindex" one step for writers
//! of the same key: without them a writer that just finished a request could
//! unindex a key another writer had meanwhile made in flight again.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use parking_lot::{Mutex, MutexGuard};

use super::{record, Store, StoreError, RUN_META_KEY};

/// The tree of indexed keys (values are empty).
pub(super) const IN_FLIGHT_TREE: &str = "in_flight";
/// Key of the index marker in the `meta` tree; see [`marker_for`].
pub(super) const INDEX_MARKER_KEY: &str = "in_flight_index";
/// The index's format. Bump it when the index's meaning changes: a ledger
/// whose marker names another format gets its index rebuilt at open.
pub(super) const INDEX_FORMAT: u32 = 1;

/// The marker that says "the index is complete" for a ledger whose stored
/// `RunMeta` is `run_meta` (its raw bytes, `None` before the first run).
///
/// Why the run metadata is part of it: a horde-batch older than the index
/// writes records without indexing them, and would leave our marker behind
/// looking valid. The only way such a binary makes a record newly in flight is
/// a run, and every run records its start (`record_run_start`, flushed before
/// any submit) in `RunMeta`, whose run count only grows. We update the marker
/// with every `RunMeta` we write, so a `RunMeta` written by anyone else makes
/// the marker stale and the next open rebuilds the index. An old `cancel` or
/// `--rebuild-state` writes no `RunMeta`, but only takes records out of flight,
/// which leaves the index a superset.
pub(super) fn marker_for(run_meta: Option<&[u8]>) -> Vec<u8> {
    let mut marker = INDEX_FORMAT.to_be_bytes().to_vec();
    if let Some(run_meta) = run_meta {
        marker.extend_from_slice(run_meta);
    }
    marker
}

/// How many locks the keys are spread over: far more than writers of a run
/// ever run at once, so unrelated keys rarely wait on each other.
const KEY_LOCKS: usize = 64;

/// Locks that serialize the writes of one key (spread over [`KEY_LOCKS`]).
pub(super) struct KeyLocks(Vec<Mutex<()>>);

impl KeyLocks {
    pub(super) fn new() -> KeyLocks {
        KeyLocks((0..KEY_LOCKS).map(|_| Mutex::new(())).collect())
    }

    /// Holds the lock of `encoded_key` until the guard drops. Never held across
    /// an await: every user is a synchronous sled call.
    pub(super) fn lock(&self, encoded_key: &[u8]) -> MutexGuard<'_, ()> {
        let mut hasher = DefaultHasher::new();
        encoded_key.hash(&mut hasher);
        // The modulo keeps the index below the length, which is KEY_LOCKS.
        let slot = (hasher.finish() % KEY_LOCKS as u64) as usize;
        // The lock guards no data, so a panic elsewhere leaves nothing broken.
        self.0[slot].lock()
    }
}

/// Which tree a write went to, for the test journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TreeName {
    Requests,
    InFlight,
    Meta,
}

/// One write made through the store, recorded in test builds so tests can
/// replay every prefix of a history, i.e. every state a crash could leave.
#[cfg(test)]
#[derive(Debug, Clone)]
pub(super) struct JournalEntry {
    pub tree: TreeName,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

impl Store {
    /// Records a write in the test journal; nothing outside tests.
    #[cfg(test)]
    pub(super) fn journal(&self, tree: TreeName, key: &[u8], value: Option<&[u8]>) {
        self.inner.journal.lock().push(JournalEntry {
            tree,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        });
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn journal(&self, _tree: TreeName, _key: &[u8], _value: Option<&[u8]>) {}

    /// Every key the index holds, collected first: removing entries while
    /// iterating the tree would race the iterator.
    pub(super) fn indexed_keys(&self) -> Result<Vec<sled::IVec>, StoreError> {
        self.inner
            .in_flight
            .iter()
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|error| self.backend_error(error))
    }

    /// Indexes `encoded_key`; call (under the key's lock) before its record may
    /// become in flight.
    pub(super) fn index_add(&self, encoded_key: &[u8]) -> Result<(), StoreError> {
        let index = &self.inner.in_flight;
        // Already indexed keys (a Submitting record becoming Submitted) cost no write.
        if !index
            .contains_key(encoded_key)
            .map_err(|error| self.backend_error(error))?
        {
            index
                .insert(encoded_key, &[][..])
                .map_err(|error| self.backend_error(error))?;
            self.journal(TreeName::InFlight, encoded_key, Some(&[]));
        }
        Ok(())
    }

    /// Unindexes `encoded_key`; call (under the key's lock) only after its
    /// record is no longer in flight.
    pub(super) fn index_remove(&self, encoded_key: &[u8]) -> Result<(), StoreError> {
        let index = &self.inner.in_flight;
        // Most records written are not indexed: a read instead of a write.
        if index
            .contains_key(encoded_key)
            .map_err(|error| self.backend_error(error))?
        {
            index
                .remove(encoded_key)
                .map_err(|error| self.backend_error(error))?;
            self.journal(TreeName::InFlight, encoded_key, None);
        }
        Ok(())
    }

    /// Drops an index entry [`Store::in_flight`] found stale, unless a writer
    /// made the record in flight again since.
    pub(super) fn drop_stale(&self, encoded_key: &[u8]) -> Result<(), StoreError> {
        let _key = self.inner.key_locks.lock(encoded_key);
        let raw = self
            .inner
            .requests
            .get(encoded_key)
            .map_err(|error| self.backend_error(error))?;
        let out_of_flight = match raw {
            None => true,
            Some(raw) => record::probe_in_flight(&raw) == Some(false),
        };
        if out_of_flight {
            self.index_remove(encoded_key)?;
        }
        Ok(())
    }

    /// The marker matching the `RunMeta` stored now.
    pub(super) fn current_marker(&self) -> Result<Vec<u8>, StoreError> {
        let run_meta = self
            .inner
            .meta
            .get(RUN_META_KEY)
            .map_err(|error| self.backend_error(error))?;
        Ok(marker_for(run_meta.as_deref()))
    }

    /// Stores `marker`; call only once the index is complete for it.
    pub(super) fn set_marker(&self, marker: &[u8]) -> Result<(), StoreError> {
        self.inner
            .meta
            .insert(INDEX_MARKER_KEY, marker)
            .map_err(|error| self.backend_error(error))?;
        self.journal(TreeName::Meta, INDEX_MARKER_KEY.as_bytes(), Some(marker));
        Ok(())
    }

    /// At open: keeps the index if its marker matches, else rebuilds it with one
    /// full scan (a ledger from before the index, or one an older horde-batch
    /// ran on since). Returns whether it rebuilt.
    pub(super) fn ensure_index(&self) -> Result<bool, StoreError> {
        let wanted = self.current_marker()?;
        let stored = self
            .inner
            .meta
            .get(INDEX_MARKER_KEY)
            .map_err(|error| self.backend_error(error))?;
        if stored.as_deref() == Some(wanted.as_slice()) {
            return Ok(false);
        }

        // The stored marker does not match, so a crash anywhere below leaves
        // it unmatched and the next open rebuilds again.
        for key in self.indexed_keys()? {
            self.index_remove(&key)?;
        }
        for entry in self.inner.requests.iter() {
            let (key, value) = entry.map_err(|error| self.backend_error(error))?;
            // A record that cannot be read may be in flight: index it, so
            // `in_flight` reports it as the full scan did.
            if record::probe_in_flight(&value) != Some(false) {
                self.index_add(&key)?;
            }
        }
        // Last, so the marker is never recovered without the index above.
        self.set_marker(&wanted)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;
    use crate::store::{RequestKey, RequestRecord, RequestState, RunMeta, Versioned};

    /// 0 Submitting, 1 Submitted, 2 Done, 3 Failed, 4+ Cancelled.
    fn state(kind: u8) -> RequestState {
        match kind {
            0 => RequestState::Submitting {
                attempt: 1,
                n: 2,
                since_ms: 1,
            },
            1 => RequestState::Submitted {
                horde_id: "h".to_owned(),
                n: 2,
                submitted_ms: 2,
            },
            2 => RequestState::Done,
            3 => RequestState::Failed {
                class: "permanent".to_owned(),
                message: "no".to_owned(),
            },
            _ => RequestState::Cancelled {
                horde_id: "h".to_owned(),
                cancelled_ms: 3,
            },
        }
    }

    fn key(slot: u32) -> RequestKey {
        RequestKey::new("abcdef0123456789", slot)
    }

    fn record_in(slot: u32, kind: u8) -> RequestRecord {
        let mut record = RequestRecord::first_attempt(&key(slot), slot * 2, 2, 0);
        record.transition(state(kind), 1);
        record
    }

    /// The keys in the index tree, decoded.
    fn indexed(store: &Store) -> BTreeSet<String> {
        store
            .inner
            .in_flight
            .iter()
            .keys()
            .map(|key| String::from_utf8(key.unwrap().to_vec()).unwrap())
            .collect()
    }

    /// What `in_flight` answered before the index: a full scan.
    fn scanned(store: &Store) -> Vec<(RequestKey, RequestRecord)> {
        store
            .iter()
            .map(Result::unwrap)
            .filter(|(_, record)| record.is_in_flight())
            .collect()
    }

    fn in_flight_keys(store: &Store) -> BTreeSet<String> {
        scanned(store)
            .into_iter()
            .map(|(key, _)| key.to_string())
            .collect()
    }

    fn names(keys: &[u32]) -> BTreeSet<String> {
        keys.iter().map(|slot| key(*slot).to_string()).collect()
    }

    #[test]
    fn the_index_follows_every_transition_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let set = |slot: u32, kind: u8| {
            store
                .update(&key(slot), |_| Some(record_in(slot, kind)))
                .unwrap();
        };

        store.put(&key(0), &record_in(0, 0)).unwrap();
        assert_eq!(indexed(&store), names(&[0]), "put Submitting");
        set(0, 1);
        assert_eq!(indexed(&store), names(&[0]), "update to Submitted");
        set(0, 2);
        assert_eq!(indexed(&store), names(&[]), "update to Done");

        store.put(&key(1), &record_in(1, 1)).unwrap();
        store.put(&key(2), &record_in(2, 0)).unwrap();
        store.put(&key(3), &record_in(3, 1)).unwrap();
        assert_eq!(indexed(&store), names(&[1, 2, 3]));
        store.put(&key(1), &record_in(1, 3)).unwrap();
        assert_eq!(indexed(&store), names(&[2, 3]), "put Failed");
        set(2, 4);
        assert_eq!(indexed(&store), names(&[3]), "update to Cancelled");
        set(2, 0);
        assert_eq!(indexed(&store), names(&[2, 3]), "a resubmit after a cancel");
        assert_eq!(store.update(&key(3), |_| None).unwrap(), None);
        assert_eq!(
            indexed(&store),
            names(&[2]),
            "delete of an in-flight record"
        );
        // Deleting a pending slot writes nothing to the index.
        assert_eq!(store.update(&key(9), |_| None).unwrap(), None);
        assert_eq!(indexed(&store), names(&[2]));

        assert_eq!(store.in_flight().unwrap(), scanned(&store));
        assert_eq!(store.in_flight().unwrap().len(), 1);
    }

    #[test]
    fn in_flight_answers_from_the_index_and_drops_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for slot in 0..5 {
            store.put(&key(slot), &record_in(slot, 2)).unwrap();
        }
        store.put(&key(7), &record_in(7, 1)).unwrap();
        // Stale entries as a crash between the two writes leaves them: a key
        // indexed whose record never became in flight, and one with no record.
        store.index_add(key(2).encode().as_bytes()).unwrap();
        store.index_add(key(8).encode().as_bytes()).unwrap();
        // A record written around the store is not found: the answer comes
        // from the index, not from a scan.
        let unindexed = record_in(9, 0);
        store
            .inner
            .requests
            .insert(key(9).encode(), unindexed.encode())
            .unwrap();

        let found = store.in_flight().unwrap();
        assert_eq!(found, vec![(key(7), record_in(7, 1))]);
        assert_eq!(indexed(&store), names(&[7]), "stale entries dropped");
    }

    /// Replays `writes` into maps, as the ledger a crash after them would leave.
    fn replay(writes: &[JournalEntry]) -> [BTreeMap<Vec<u8>, Vec<u8>>; 3] {
        let mut trees: [BTreeMap<Vec<u8>, Vec<u8>>; 3] = Default::default();
        for write in writes {
            let tree = &mut trees[write.tree as usize];
            match &write.value {
                Some(value) => tree.insert(write.key.clone(), value.clone()),
                None => tree.remove(&write.key),
            };
        }
        trees
    }

    /// A history touching every write path, single-threaded so its journal is
    /// the order sled logged the writes in.
    fn scripted_history(store: &Store) {
        store.record_run_start("0.1.0", "m.yaml", "m").unwrap();
        let set = |slot: u32, kind: u8| {
            store
                .update(&key(slot), |_| Some(record_in(slot, kind)))
                .unwrap();
        };
        set(0, 0);
        set(0, 1);
        set(0, 2);
        store.put(&key(1), &record_in(1, 0)).unwrap();
        store.put(&key(1), &record_in(1, 1)).unwrap();
        store.put(&key(1), &record_in(1, 3)).unwrap();
        set(2, 0);
        store.update(&key(2), |_| None).unwrap();
        store.put(&key(3), &record_in(3, 1)).unwrap();
        set(3, 4);
        store.put(&key(3), &record_in(3, 0)).unwrap();
        store.record_run_start("0.1.0", "m.yaml", "m").unwrap();
        store.put(&key(4), &record_in(4, 2)).unwrap();
        set(5, 1);
    }

    #[test]
    fn a_crash_after_any_write_leaves_the_index_a_superset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        scripted_history(&store);
        let journal = store.inner.journal.lock().clone();
        drop(store);
        assert!(journal.len() > 20, "{journal:?}");

        for end in 0..=journal.len() {
            let prefix = &journal[..end];
            let [requests, index, meta] = replay(prefix);
            let marker = meta.get(INDEX_MARKER_KEY.as_bytes());
            let wanted = marker_for(meta.get(RUN_META_KEY.as_bytes()).map(Vec::as_slice));
            if marker == Some(&wanted) {
                for (key, value) in &requests {
                    if record::probe_in_flight(value) != Some(false) {
                        assert!(
                            index.contains_key(key),
                            "after write {end}: {} in flight but not indexed",
                            String::from_utf8_lossy(key)
                        );
                    }
                }
            }

            // The same state as a real ledger: reopening answers as a scan does.
            let crashed = tempfile::tempdir().unwrap();
            {
                let fresh = Store::open(crashed.path()).unwrap();
                fresh.inner.meta.remove(INDEX_MARKER_KEY).unwrap();
                for write in prefix {
                    let tree = match write.tree {
                        TreeName::Requests => &fresh.inner.requests,
                        TreeName::InFlight => &fresh.inner.in_flight,
                        TreeName::Meta => &fresh.inner.meta,
                    };
                    match &write.value {
                        Some(value) => tree.insert(&write.key, value.as_slice()),
                        None => tree.remove(&write.key),
                    }
                    .unwrap();
                }
                fresh.inner.db.flush().unwrap();
            }
            let reopened = Store::open(crashed.path()).unwrap();
            assert_eq!(
                reopened.in_flight().unwrap(),
                scanned(&reopened),
                "after write {end}"
            );
        }
    }

    /// Removes the index and its marker, as in a ledger written before them.
    fn strip_index(store: &Store) {
        store.inner.in_flight.clear().unwrap();
        store.inner.meta.remove(INDEX_MARKER_KEY).unwrap();
    }

    #[test]
    fn a_ledger_without_the_index_gets_it_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let store = Store::open(dir.path()).unwrap();
            store.record_run_start("0.1.0", "m.yaml", "m").unwrap();
            for slot in 0..30 {
                store
                    .put(&key(slot), &record_in(slot, (slot % 5) as u8))
                    .unwrap();
            }
            let before = store.in_flight().unwrap();
            assert_eq!(before.len(), 12);
            strip_index(&store);
            // A leftover entry of a record that is not in flight.
            store.index_add(key(2).encode().as_bytes()).unwrap();
            before
        };

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(indexed(&store), in_flight_keys(&store));
        assert_eq!(store.in_flight().unwrap(), before);
        assert_eq!(
            store.inner.meta.get(INDEX_MARKER_KEY).unwrap().as_deref(),
            Some(store.current_marker().unwrap().as_slice())
        );
        assert!(!store.ensure_index().unwrap(), "once rebuilt, trusted");

        // A marker of another format is not trusted either.
        let mut other_format = store.current_marker().unwrap();
        other_format[..4].copy_from_slice(&(INDEX_FORMAT + 1).to_be_bytes());
        store.set_marker(&other_format).unwrap();
        store.inner.in_flight.clear().unwrap();
        assert!(store.ensure_index().unwrap());
        assert_eq!(store.in_flight().unwrap(), before);
    }

    #[test]
    fn a_run_by_a_binary_without_the_index_makes_the_next_open_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_run_start("0.2.0", "m.yaml", "m").unwrap();
            store.put(&key(0), &record_in(0, 1)).unwrap();
        }
        {
            // What an older horde-batch's run writes: its run start, then
            // records the index never hears of.
            let store = Store::open(dir.path()).unwrap();
            let meta = store.run_meta().unwrap();
            let next = RunMeta::next_run(meta, "0.1.0", "m.yaml", "m", 5);
            store
                .inner
                .meta
                .insert(RUN_META_KEY, next.encode())
                .unwrap();
            store
                .inner
                .requests
                .insert(key(1).encode(), record_in(1, 0).encode())
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.in_flight().unwrap(),
            vec![(key(0), record_in(0, 1)), (key(1), record_in(1, 0))]
        );
        assert_eq!(indexed(&store), names(&[0, 1]));
    }

    #[test]
    fn concurrent_writers_of_one_key_never_leave_it_unindexed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for round in 0..20u32 {
            let threads: Vec<_> = (0..4u8)
                .map(|thread| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        for step in 0..50u32 {
                            // Threads disagree on whether the record is in flight.
                            let kind = ((u32::from(thread) + step + round) % 3) as u8 * 2;
                            let slot = step % 2;
                            if step % 3 == 0 {
                                store.put(&key(slot), &record_in(slot, kind)).unwrap();
                            } else {
                                store
                                    .update(&key(slot), |_| Some(record_in(slot, kind)))
                                    .unwrap();
                            }
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            let indexed = indexed(&store);
            assert!(
                in_flight_keys(&store).is_subset(&indexed),
                "round {round}: {indexed:?}"
            );
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u32, u8),
        Update(u32, Option<u8>),
        RunStart,
        Reopen,
        InFlight,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..6u32, 0..5u8).prop_map(|(slot, kind)| Op::Put(slot, kind)),
            4 => (0..6u32, proptest::option::of(0..5u8))
                .prop_map(|(slot, kind)| Op::Update(slot, kind)),
            1 => Just(Op::RunStart),
            1 => Just(Op::Reopen),
            1 => Just(Op::InFlight),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn in_flight_equals_a_full_scan_on_random_histories(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Some(Store::open(dir.path()).unwrap());
            for op in ops {
                let current = store.as_ref().unwrap();
                match op {
                    Op::Put(slot, kind) => current.put(&key(slot), &record_in(slot, kind)).unwrap(),
                    Op::Update(slot, kind) => {
                        current.update(&key(slot), |_| kind.map(|kind| record_in(slot, kind))).unwrap();
                    }
                    Op::RunStart => {
                        current.record_run_start("0.1.0", "m.yaml", "m").unwrap();
                    }
                    Op::Reopen => {
                        drop(store.take());
                        store = Some(Store::open(dir.path()).unwrap());
                    }
                    Op::InFlight => {
                        prop_assert_eq!(current.in_flight().unwrap(), scanned(current));
                    }
                }
                let current = store.as_ref().unwrap();
                prop_assert!(in_flight_keys(current).is_subset(&indexed(current)));
            }
            let current = store.as_ref().unwrap();
            prop_assert_eq!(current.in_flight().unwrap(), scanned(current));
            prop_assert_eq!(indexed(current), in_flight_keys(current));
        }
    }
}
