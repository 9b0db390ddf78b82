//! The in-flight budget: how many images may wait on the Horde at once.
//!
//! The Horde refuses a submit (429 `TooManyPrompts`) when the images of a
//! user's requests that no worker has picked up yet, plus the new request's
//! `n`, exceed the user's concurrency. The budget mirrors that rule on the
//! client side so the limit is respected before it is hit: a request leases
//! `n` images before it is sent and gives them back as `/check` reports them
//! picked up. The capacity can be lowered when the server says it is smaller
//! than we thought (another client is using the same key).

use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::Notify;

/// Shared image budget.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
    /// Woken on every change; a key pool shares one among its keys' budgets.
    changed: Arc<Notify>,
}

#[derive(Debug)]
struct State {
    capacity: u32,
    in_use: u32,
}

impl Budget {
    /// A budget of `capacity` images (at least 1).
    pub fn new(capacity: u32) -> Arc<Self> {
        Self::with_notify(capacity, Arc::new(Notify::new()))
    }

    /// A budget of `capacity` images that wakes `changed` whenever room may have
    /// appeared (shared by the budgets of a key pool, so a wait can cover them all).
    pub fn with_notify(capacity: u32, changed: Arc<Notify>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                capacity: capacity.max(1),
                in_use: 0,
            }),
            changed,
        })
    }

    /// Images that may still be leased now (0 when full or over).
    pub fn free(&self) -> u32 {
        let state = self.lock();
        state.capacity.saturating_sub(state.in_use)
    }

    /// Leases `images` if they fit now (the same rule as [`Budget::lease`]).
    pub fn try_lease(self: &Arc<Self>, images: u32) -> Option<Lease> {
        let mut state = self.lock();
        let fits = state.in_use + images <= state.capacity || state.in_use == 0;
        if !fits {
            return None;
        }
        state.in_use += images;
        Some(Lease {
            budget: Arc::clone(self),
            held: images,
            pressed: false,
        })
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Images the budget allows at once.
    pub fn capacity(&self) -> u32 {
        self.lock().capacity
    }

    /// Images currently leased.
    pub fn in_use(&self) -> u32 {
        self.lock().in_use
    }

    /// Sets a new capacity (at least 1); leases above it drain naturally.
    pub fn set_capacity(&self, capacity: u32) {
        self.lock().capacity = capacity.max(1);
        self.changed.notify_waiters();
    }

    /// Waits until `images` more fit, then leases them. A request larger than
    /// the whole capacity waits for an empty budget and then goes alone.
    pub async fn lease(self: &Arc<Self>, images: u32) -> Lease {
        loop {
            let notified = self.changed.notified();
            {
                let mut state = self.lock();
                let fits = state.in_use + images <= state.capacity || state.in_use == 0;
                if fits {
                    state.in_use += images;
                    return Lease {
                        budget: Arc::clone(self),
                        held: images,
                        pressed: false,
                    };
                }
            }
            notified.await;
        }
    }

    /// Leases `images` at once, even past the capacity: for requests already on
    /// the Horde (a resumed run), whose waiting images count whether we like it or not.
    pub fn lease_now(self: &Arc<Self>, images: u32) -> Lease {
        self.lock().in_use += images;
        Lease {
            budget: Arc::clone(self),
            held: images,
            pressed: false,
        }
    }

    fn release(&self, images: u32) {
        if images == 0 {
            return;
        }
        let mut state = self.lock();
        state.in_use = state.in_use.saturating_sub(images);
        drop(state);
        self.changed.notify_waiters();
    }
}

/// Images leased from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<Budget>,
    held: u32,
    /// The key's concurrency held the request back (see [`Lease::pressed`]).
    pressed: bool,
}

impl Lease {
    /// Images this lease holds.
    pub fn held(&self) -> u32 {
        self.held
    }

    /// True when the key's concurrency held this request back: it waited for
    /// room, or got only part of the images it wanted. Such a key's
    /// throughput is its concurrency, so its requests are worth noticing
    /// done sooner (`poll`).
    pub fn pressed(&self) -> bool {
        self.pressed
    }

    /// Marks the lease as held back by its key's concurrency.
    pub(super) fn mark_pressed(&mut self) {
        self.pressed = true;
    }

    /// Keeps at most `images`, giving the rest back (images a worker picked up
    /// no longer count against the user's concurrency).
    pub fn shrink_to(&mut self, images: u32) {
        if images < self.held {
            self.budget.release(self.held - images);
            self.held = images;
        }
    }

    /// Grows this lease to `images`, waiting for room.
    pub async fn grow_to(&mut self, images: u32) {
        if images > self.held {
            let mut extra = self.budget.lease(images - self.held).await;
            // Move the extra images into this lease; the emptied one releases nothing.
            self.held += std::mem::take(&mut extra.held);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_wait_for_room_and_shrink_releases() {
        let budget = Budget::new(10);
        let mut first = budget.lease(8).await;
        assert_eq!(budget.in_use(), 8);
        let waiter = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.lease(5).await.held() })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "8 + 5 does not fit in 10");
        first.shrink_to(3);
        assert_eq!(waiter.await.unwrap(), 5);
        drop(first);
        assert_eq!(budget.in_use(), 0, "dropped leases give everything back");
    }

    #[tokio::test]
    async fn an_oversized_request_goes_alone_and_capacity_can_drop() {
        let budget = Budget::new(4);
        let big = budget.lease(20).await;
        assert_eq!(big.held(), 20);
        drop(big);
        budget.set_capacity(0);
        assert_eq!(budget.capacity(), 1);
        let mut lease = budget.lease(1).await;
        lease.grow_to(1).await;
        assert_eq!(budget.in_use(), 1);
    }
}
