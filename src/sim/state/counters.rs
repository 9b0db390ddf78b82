//! The simulated Horde's counters (`/sim/stats`): every answered API call
//! by endpoint and status, and a snapshot with the derived figures (requests
//! retrieved, never retrieved and orphaned, images waiting and in progress).
//!
//! Read-only over requests: it must not change a request or the queue, so
//! reading the counters never changes what a client sees.

use super::super::stats::SimStats;
use super::{Horde, Request};

impl Horde {
    /// Records one answered API call.
    pub(crate) fn record_call(&mut self, endpoint: String, status: u16) {
        *self
            .stats
            .calls
            .entry(endpoint)
            .or_default()
            .entry(status)
            .or_insert(0) += 1;
    }

    /// The raw counters, for the layers that count their own events (rate limits, chaos).
    pub(crate) fn stats_mut(&mut self) -> &mut SimStats {
        &mut self.stats
    }

    /// A snapshot with the derived fields filled in.
    pub(crate) fn snapshot(&self) -> SimStats {
        let mut stats = self.stats.clone();
        let count = |keep: fn(&Request) -> bool| {
            self.requests
                .values()
                .filter(|request| keep(request))
                .count() as u64
        };
        stats.requests_retrieved = count(Request::is_retrieved) + self.expired_retrieved;
        stats.requests_never_retrieved =
            count(|request| !request.is_retrieved() && !request.cancelled)
                + self.expired_never_retrieved;
        stats.requests_orphaned = count(Request::is_orphaned) + self.expired_orphaned;
        stats.images_never_retrieved = stats.images_generated - stats.images_retrieved;
        stats.waiting_images = self
            .requests
            .values()
            .map(|request| request.waiting.len() as u64)
            .sum();
        stats.processing_images = self
            .requests
            .values()
            .map(|request| u64::from(request.processing))
            .sum();
        stats.live_requests = self.requests.len() as u64;
        self.alchemy_snapshot(&mut stats);
        stats
    }
}
