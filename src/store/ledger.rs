//! The ledger as the engine sees it: a small trait over request records, with
//! the sled [`Store`] and an in-memory [`MemoryLedger`] behind it.
//!
//! The engine needs only these operations, so it never holds a concrete store
//! and can be driven against memory in tests, including a ledger that starts
//! failing after a number of writes.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;

use super::{RequestKey, RequestRecord, Store, StoreError};

/// Where the engine checkpoints every request.
pub trait Ledger: Send + Sync {
    /// The record of `key`, if any.
    fn get(&self, key: &RequestKey) -> Result<Option<RequestRecord>, StoreError>;
    /// Writes a record; durable at the next flush.
    fn put(&self, key: &RequestKey, record: &RequestRecord) -> Result<(), StoreError>;
    /// Writes a record and flushes: it survives a crash once this returns.
    fn put_durable<'a>(
        &'a self,
        key: &'a RequestKey,
        record: &'a RequestRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Makes every write so far durable.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Every record the Horde may be working on (Submitting or Submitted).
    fn in_flight(&self) -> Result<Vec<(RequestKey, RequestRecord)>, StoreError>;
    /// Every Horde id any record has ever had.
    fn horde_ids(&self) -> Result<HashSet<String>, StoreError>;
    /// Where it lives, for messages.
    fn location(&self) -> String;
}

impl Ledger for Store {
    fn get(&self, key: &RequestKey) -> Result<Option<RequestRecord>, StoreError> {
        Store::get(self, key)
    }

    fn put(&self, key: &RequestKey, record: &RequestRecord) -> Result<(), StoreError> {
        Store::put(self, key, record)
    }

    fn put_durable<'a>(
        &'a self,
        key: &'a RequestKey,
        record: &'a RequestRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::put_durable(self, key, record))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::flush(self))
    }

    fn in_flight(&self) -> Result<Vec<(RequestKey, RequestRecord)>, StoreError> {
        Store::in_flight(self)
    }

    fn horde_ids(&self) -> Result<HashSet<String>, StoreError> {
        let mut ids = HashSet::new();
        for entry in self.iter() {
            let (_, record) = entry?;
            ids.extend(record.horde_ids);
        }
        Ok(ids)
    }

    fn location(&self) -> String {
        self.dir().display().to_string()
    }
}

/// A ledger in memory, for tests of the engine. It can be told to fail every
/// write after a number of them, as a full disk would.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    records: Mutex<BTreeMap<RequestKey, RequestRecord>>,
    writes: AtomicUsize,
    fail_after: Option<usize>,
}

impl MemoryLedger {
    /// An empty ledger that never fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty ledger whose writes fail once `writes` have succeeded.
    pub fn failing_after(writes: usize) -> Self {
        Self {
            fail_after: Some(writes),
            ..Self::default()
        }
    }

    /// Every record, in key order.
    pub fn records(&self) -> Vec<(RequestKey, RequestRecord)> {
        self.lock()
            .iter()
            .map(|(key, record)| (key.clone(), record.clone()))
            .collect()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeMap<RequestKey, RequestRecord>> {
        self.records.lock()
    }

    fn write(&self, key: &RequestKey, record: &RequestRecord) -> Result<(), StoreError> {
        let done = self.writes.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|limit| done >= limit) {
            return Err(StoreError::Io {
                dir: PathBuf::from("(memory)"),
                action: "write a record",
                source: std::io::Error::other("no space left on device (simulated)"),
            });
        }
        self.lock().insert(key.clone(), record.clone());
        Ok(())
    }
}

impl Ledger for MemoryLedger {
    fn get(&self, key: &RequestKey) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn put(&self, key: &RequestKey, record: &RequestRecord) -> Result<(), StoreError> {
        self.write(key, record)
    }

    fn put_durable<'a>(
        &'a self,
        key: &'a RequestKey,
        record: &'a RequestRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.write(key, record) })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn in_flight(&self) -> Result<Vec<(RequestKey, RequestRecord)>, StoreError> {
        Ok(self
            .records()
            .into_iter()
            .filter(|(_, record)| record.is_in_flight())
            .collect())
    }

    fn horde_ids(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .lock()
            .values()
            .flat_map(|record| record.horde_ids.iter().cloned())
            .collect())
    }

    fn location(&self) -> String {
        "(memory)".to_owned()
    }
}
