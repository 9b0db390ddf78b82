//! The cleaner's periodic pass over the simulated Horde: a request whose
//! jobs faulted too often is flagged faulted, a request past its expiry is
//! deleted (with what it leaves in the counters), interrogation requests
//! past their expiry are deleted, and R2 objects older than the retention
//! are pruned.
//!
//! `sim::workers` decides when the pass runs; this only applies it. It must
//! not keep a request the real server would already have dropped.

use tokio::time::Instant;
use uuid::Uuid;

use super::Horde;

/// Faulted jobs above which the cleaner marks a request faulted.
const MAX_REQUEST_FAULTS: u32 = 2;

impl Horde {
    /// The periodic pass: flag requests with too many faulted jobs, delete
    /// expired requests, prune old R2 objects.
    pub(crate) fn cleanup(&mut self) {
        let now = Instant::now();
        self.flag_faulted_requests();
        self.delete_expired_requests(now);
        self.delete_expired_interrogations(now);
        self.prune_r2(now);
    }

    /// A flagged request is done at once: no more pickups, no upfront hold.
    fn flag_faulted_requests(&mut self) {
        for request in self.requests.values_mut() {
            if !request.faulted && request.faulted_jobs > MAX_REQUEST_FAULTS {
                request.faulted = true;
                request.upfront_hold = 0.0;
                self.queue.remove(&request.seq);
                self.stats.requests_faulted += 1;
            }
        }
    }

    /// Deletes the requests past their expiry, keeping what the counters
    /// need to know about them.
    fn delete_expired_requests(&mut self, now: Instant) {
        let expired: Vec<Uuid> = self
            .requests
            .values()
            .filter(|request| request.expiry <= now)
            .map(|request| request.id)
            .collect();
        for id in expired {
            if let Some(request) = self.requests.remove(&id) {
                self.queue.remove(&request.seq);
                self.stats.requests_expired += 1;
                if request.is_retrieved() {
                    self.expired_retrieved += 1;
                } else if !request.cancelled {
                    self.expired_never_retrieved += 1;
                }
                if request.is_orphaned() {
                    self.expired_orphaned += 1;
                }
            }
        }
    }
}
