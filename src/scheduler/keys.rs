//! The run's key pool: each API key with its own budget and submit gate,
//! and the choice of which key submits next.
//!
//! The Horde counts concurrency, lost-answer look-ups (`find_user`) and kudos
//! per key, so each [`PoolKey`] carries its own [`Budget`] and [`SubmitGate`];
//! the per-IP limits (submit pacing, `Retry-After` of the IP-keyed endpoints)
//! stay in the engine's one shared `Pacer`. A submit goes to the active key
//! with the most free room, so every key is kept full. A key the Horde
//! refuses (invalid, out of kudos, expired shared key) is retired while
//! another key is still active; the last active key is never retired, so a
//! pool of one behaves exactly like a single key.
//!
//! Keys are known here only through their clients and fingerprints: this
//! module must never log, print or store a key, only its [`fingerprint`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use serde::Serialize;
use tokio::sync::Notify;

use super::{Budget, Lease, SubmitGate};
use crate::horde::HordeClient;
use crate::store::RequestRecord;

/// A fixed namespace, so that a fingerprint means nothing outside horde-batch.
const FINGERPRINT_DOMAIN: &str = "horde-batch key fingerprint v1";

/// RFC 4122's URL namespace, under which the fingerprint namespace is named.
const URL_NAMESPACE: u128 = 0x6ba7_b811_9dad_11d1_80b4_00c0_4fd4_30c8;

/// The non-reversible fingerprint of an API key: 12 hex digits of the name
/// digest ([`crate::digest`]) of the key under a fixed horde-batch namespace.
/// It tells keys apart in the ledger and in logs; it cannot give the key back.
pub fn fingerprint(key: &str) -> String {
    use crate::digest::{name_digest, to_hex};
    let namespace = u128::from_be_bytes(name_digest(URL_NAMESPACE, FINGERPRINT_DOMAIN.as_bytes()));
    // The first 6 bytes are hash output only (no version or variant bits).
    to_hex(name_digest(namespace, key.as_bytes()))[..12].to_owned()
}

/// One API key of the run.
#[derive(Debug)]
pub struct PoolKey {
    /// See [`fingerprint`].
    pub fingerprint: String,
    /// The client that sends this key (submit, `find_user`).
    pub client: HordeClient,
    /// This key's images allowed to wait on the Horde at once.
    pub budget: Arc<Budget>,
    /// One POST at a time per key, none while one of its lost answers is open.
    pub(super) gate: SubmitGate,
    retired: Mutex<Option<String>>,
}

impl PoolKey {
    /// Why the key was retired, if it was.
    pub fn retired(&self) -> Option<String> {
        self.retired.lock().clone()
    }

    fn is_active(&self) -> bool {
        self.retired().is_none()
    }
}

/// What one key of the pool did in a run (in the summary when the pool has
/// several), folded from the run's events (`events::RunStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyUsage {
    pub fingerprint: String,
    pub submits: u64,
    pub images_saved: u64,
    pub kudos: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired: Option<String>,
}

/// The keys of a run, first the primary one (records without a fingerprint are its).
#[derive(Debug)]
pub struct KeyPool {
    keys: Vec<Arc<PoolKey>>,
    /// Shared by every key's budget, and woken when a key is retired.
    changed: Arc<Notify>,
    retiring: Mutex<()>,
    /// Leases waiting for room now (see [`KeyPool::submit_waits`]).
    waiting: AtomicUsize,
}

/// Counts a lease as waiting for room while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl KeyPool {
    /// A pool of `(client, capacity)`, in order; a key given twice is kept once.
    /// An empty pool leases nothing (`lease` answers `None`).
    pub fn new(keys: Vec<(HordeClient, u32)>) -> Self {
        let changed = Arc::new(Notify::new());
        let mut pool: Vec<Arc<PoolKey>> = Vec::new();
        for (client, capacity) in keys {
            let fingerprint = fingerprint(client.api_key().expose_secret());
            if pool.iter().any(|k| k.fingerprint == fingerprint) {
                continue;
            }
            pool.push(Arc::new(PoolKey {
                fingerprint,
                client,
                budget: Budget::with_notify(capacity, Arc::clone(&changed)),
                gate: SubmitGate::new(0),
                retired: Mutex::new(None),
            }));
        }
        Self {
            keys: pool,
            changed,
            retiring: Mutex::new(()),
            waiting: AtomicUsize::new(0),
        }
    }

    /// A pool of one key.
    pub fn single(client: HordeClient, capacity: u32) -> Self {
        Self::new(vec![(client, capacity)])
    }

    /// Every key, retired ones included, primary first.
    pub fn keys(&self) -> &[Arc<PoolKey>] {
        &self.keys
    }

    /// The primary key (the first given).
    pub fn primary(&self) -> Option<&Arc<PoolKey>> {
        self.keys.first()
    }

    /// The key with this fingerprint; `None` means the primary key (a record
    /// from before key pools). `None` back when the pool has no such key.
    pub fn by_fingerprint(&self, fingerprint: Option<&str>) -> Option<&Arc<PoolKey>> {
        match fingerprint {
            None => self.primary(),
            Some(fp) => self.keys.iter().find(|k| k.fingerprint == fp),
        }
    }

    /// The key that made the record's latest submit, if it is in the pool.
    pub fn for_record(&self, record: &RequestRecord) -> Option<&Arc<PoolKey>> {
        self.by_fingerprint(record.key_fingerprint.as_deref())
    }

    /// True while a submit waits for room on the keys: their concurrency,
    /// not the Horde's workers, is what holds the run back now (`poll`).
    pub fn submit_waits(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Keys not retired.
    pub fn active(&self) -> usize {
        self.keys.iter().filter(|k| k.is_active()).count()
    }

    /// Retires `key` for `reason` unless it is the last active key (then the
    /// caller fails as a single-key run would). True when it was retired now.
    pub fn retire(&self, key: &PoolKey, reason: &str) -> bool {
        // One decision at a time, so two keys failing at once cannot both be
        // retired as "not the last".
        let _one_at_a_time = self.retiring.lock();
        if !key.is_active() || self.active() <= 1 {
            return false;
        }
        *key.retired.lock() = Some(reason.to_owned());
        tracing::warn!(
            key = %key.fingerprint,
            keys_left = self.active(),
            %reason,
            "retired an API key; the run goes on with the others"
        );
        self.changed.notify_waiters();
        true
    }

    /// Takes `key` out of the run for `reason` unless it is the last active
    /// key: true when it is out, retired now or already (another slot's
    /// refusal got there first, while this slot's submit was on its way).
    pub fn take_out(&self, key: &PoolKey, reason: &str) -> bool {
        !key.is_active() || self.retire(key, reason)
    }

    /// Waits until some active key has room for `images` (clamped to its
    /// capacity), or, when `split`, for at least [`smallest_part`] of them,
    /// and leases what fits, up to `images`, from the key with the most free
    /// room. A key whose free room is smaller than a request is still filled:
    /// the request goes as a part now, and the slot asks for the rest later
    /// (30 = 20 + 10). The lease is [`Lease::pressed`] when it waited or is a
    /// part. `None` when every key is retired.
    pub async fn lease(&self, images: u32, split: bool) -> Option<(Arc<PoolKey>, Lease)> {
        let mut waited: Option<Waiting<'_>> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut best: Option<(&Arc<PoolKey>, u32)> = None;
            for key in self.keys.iter().filter(|k| k.is_active()) {
                let free = key.budget.free();
                if best.is_none_or(|(_, most)| free > most) {
                    best = Some((key, free));
                }
            }
            let (key, free) = best?;
            let wanted = images.clamp(1, key.budget.capacity());
            // An empty budget takes the whole request (`Budget::try_lease`).
            let take = if split && free >= smallest_part(wanted) {
                free.min(wanted)
            } else {
                wanted
            };
            if let Some(mut lease) = key.budget.try_lease(take) {
                if waited.is_some() || take < wanted {
                    lease.mark_pressed();
                }
                return Some((Arc::clone(key), lease));
            }
            waited.get_or_insert_with(|| {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                Waiting(&self.waiting)
            });
            notified.await;
        }
    }
}

/// The fewest images worth a request of their own when a key has less room
/// than a request of `wanted` images needs: half of them, rounded up. Smaller
/// parts would cost a submit, checks and a status read for a handful of images.
pub fn smallest_part(wanted: u32) -> u32 {
    wanted.div_ceil(2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::horde::{ApiKey, ClientConfig};
    use std::time::Duration;

    fn client(key: &str) -> HordeClient {
        let url = reqwest::Url::parse("http://127.0.0.1:9/api/").expect("a loopback URL");
        HordeClient::new(ClientConfig::new(url, ApiKey::new(key))).expect("a client")
    }

    #[test]
    fn fingerprints_are_what_earlier_versions_stored() {
        // Ledgers written before the digest module hold these fingerprints.
        for key in [
            "secret-key-1",
            "0000000000",
            "a much longer key with spaces",
        ] {
            let namespace =
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, FINGERPRINT_DOMAIN.as_bytes());
            let old = uuid::Uuid::new_v5(&namespace, key.as_bytes())
                .simple()
                .to_string();
            assert_eq!(fingerprint(key), old[..12]);
        }
    }

    #[test]
    fn fingerprints_are_stable_short_and_not_the_key() {
        let fp = fingerprint("secret-key-1");
        assert_eq!(fp.len(), 12);
        assert_eq!(fp, fingerprint("secret-key-1"));
        assert_ne!(fp, fingerprint("secret-key-2"));
        assert!(!fp.contains("secret"));
    }

    #[tokio::test]
    async fn leases_go_to_the_key_with_most_room_and_the_last_key_is_never_retired() {
        let pool = KeyPool::new(vec![
            (client("k1"), 10),
            (client("k2"), 10),
            (client("k1"), 5),
        ]);
        assert_eq!(pool.keys().len(), 2, "a key given twice is kept once");
        let (first, _a) = pool.lease(6, true).await.expect("room");
        let (second, _b) = pool.lease(6, true).await.expect("room");
        assert_ne!(
            first.fingerprint, second.fingerprint,
            "the emptier key is chosen"
        );
        assert!(pool.retire(&first, "401"));
        assert!(!pool.retire(&second, "401"), "the last active key stays");
        // A second refusal of a key already retired (two submits were on
        // their way) still takes its request to another key; the last
        // active key is never taken out.
        assert!(pool.take_out(&first, "401 again"));
        assert!(!pool.take_out(&second, "401"));
        assert_eq!(pool.active(), 1);
        let (third, _c) = pool.lease(2, true).await.expect("room on the active key");
        assert_eq!(third.fingerprint, second.fingerprint);
        assert_eq!(
            pool.by_fingerprint(None).map(|k| &k.fingerprint),
            Some(&first.fingerprint)
        );
    }

    #[tokio::test]
    async fn a_key_with_less_room_than_a_request_is_filled_with_a_part() {
        let pool = KeyPool::single(client("k1"), 30);
        let (_, whole) = pool.lease(20, true).await.expect("room");
        assert_eq!(whole.held(), 20);
        assert!(!whole.pressed(), "the key had room for all of it");
        let (_, part) = pool.lease(20, true).await.expect("room for a part");
        assert_eq!(part.held(), 10, "30 = 20 + 10: the free room is used");
        assert!(
            part.pressed(),
            "a part is held back by the key's concurrency"
        );
        // 0 free: nothing fits, not even the smallest part.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), pool.lease(20, true))
                .await
                .is_err()
        );
        drop(part);
        let (_, again) = pool.lease(20, true).await.expect("room for a part again");
        assert_eq!(again.held(), 10);
    }

    #[tokio::test]
    async fn a_part_smaller_than_half_the_request_is_not_sent() {
        let pool = KeyPool::single(client("k1"), 30);
        let (_, mut first) = pool.lease(20, true).await.expect("room");
        let (_, second) = pool.lease(20, true).await.expect("a part of 10");
        first.shrink_to(16);
        drop(second);
        // 30 - 16 = 14 free: a part of 14 for a request of 20 (at least 10).
        let (_, part) = pool.lease(20, true).await.expect("a part of 14");
        assert_eq!(part.held(), 14);
        drop(part);
        first.grow_to(26).await;
        // 4 free is less than half of 20: the request waits for room.
        let waiting = pool.lease(20, true);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err()
        );
        first.shrink_to(0);
        let (_, whole) = waiting.await.expect("room after the first drained");
        assert_eq!(whole.held(), 20);
        assert!(whole.pressed(), "it waited for room");
    }
}
