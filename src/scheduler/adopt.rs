//! Submits whose answer was lost: finding the request on the Horde instead of
//! paying for it twice.
//!
//! A submit can reach the Horde and lose its answer (a dropped connection, a
//! 5xx from a gateway, a kill between the POST and recording the id). The
//! ledger then holds a `Submitting` record and the Horde a request nobody will
//! retrieve, which also holds the key's concurrency. For a registered key,
//! `find_user` lists every unexpired request of the key, but it is cached 30 s
//! per key (docs/horde-api.md §9.1), so the list is only complete once that long has
//! passed since the POST. Then the ids the ledger does not know are the
//! candidates; exactly one, whose image count fits, is adopted. Anything less
//! certain could be another client's request on the same key: it is reported
//! and left alone.
//!
//! To keep "exactly one" meaningful, submits go through the [`SubmitGate`]:
//! one POST at a time, and none while a lost answer is being resolved. Each
//! key of a pool has its own gate and is looked up with its own `find_user`:
//! another key's submits cannot show up in (or hide from) that key's list.
//! This module decides nothing about retries: a failed look-up is retried as
//! the failure table says (`policy`, call `Lookup`), and the slot acts on [`Lost`].

use std::time::Duration;

use tokio::sync::{watch, Mutex, MutexGuard};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::policy::{Action, Call};
use super::Engine;

/// Extra time on top of the `find_user` cache before its list is trusted
/// (2 s on the real server's 30 s cache), for clocks and slow answers.
fn cache_margin(cache: Duration) -> Duration {
    cache / 15 + Duration::from_millis(100)
}

/// One POST at a time, and none while a lost answer is unresolved.
#[derive(Debug)]
pub struct SubmitGate {
    post: Mutex<()>,
    doubts: watch::Sender<u32>,
}

impl SubmitGate {
    /// A gate with `doubts` lost answers already open.
    pub fn new(doubts: u32) -> Self {
        Self {
            post: Mutex::new(()),
            doubts: watch::channel(doubts).0,
        }
    }

    /// Waits until no lost answer is unresolved, then holds the POST slot.
    pub async fn enter(&self) -> MutexGuard<'_, ()> {
        loop {
            let mut doubts = self.doubts.subscribe();
            // The sender lives in `self`, so this only ends when the count changes.
            let _ = doubts.wait_for(|open| *open == 0).await;
            let guard = self.post.lock().await;
            if *self.doubts.borrow() == 0 {
                return guard;
            }
        }
    }

    /// A lost answer is now unresolved; submits wait until the guard is dropped.
    pub fn open(&self) -> Doubt<'_> {
        self.doubts.send_modify(|open| *open += 1);
        Doubt { gate: self }
    }

    /// Holds submits for `count` lost answers of an earlier run; each slot that
    /// looks for one takes it over with [`SubmitGate::adopt_initial`].
    pub fn hold(&self, count: u32) {
        self.doubts.send_modify(|open| *open += count);
    }

    /// Takes over one of the doubts the gate was created or held with.
    pub fn adopt_initial(&self) -> Doubt<'_> {
        Doubt { gate: self }
    }

    /// Releases `count` initial doubts nobody took over (their jobs left the manifest).
    pub fn release(&self, count: u32) {
        if count > 0 {
            self.doubts
                .send_modify(|open| *open = open.saturating_sub(count));
        }
    }

    /// Lost answers not yet resolved.
    pub fn open_doubts(&self) -> u32 {
        *self.doubts.borrow()
    }
}

/// An unresolved lost answer; dropping it lets submits go on.
#[must_use = "submits stay blocked until the doubt is dropped"]
pub struct Doubt<'a> {
    gate: &'a SubmitGate,
}

impl Drop for Doubt<'_> {
    fn drop(&mut self) {
        self.gate.release(1);
    }
}

/// What became of a submit whose answer was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The Horde holds it under this id: follow it.
    Adopted(String),
    /// The Horde holds no request of ours that could be it: submit again.
    NotOnHorde,
    /// It cannot be told apart (anonymous key, another client's requests, an
    /// unreadable list): it was reported; submit again.
    Unresolved,
}

impl Engine {
    /// Looks for the request of a submit of `n` images whose answer was lost at
    /// `lost_at` (or, for an earlier run's, at the latest before `lost_at`).
    /// `None` when `interrupt` fired while waiting.
    pub(super) async fn find_lost_submit(
        &self,
        key: &super::PoolKey,
        what: &str,
        n: u32,
        lost_at: Instant,
        interrupt: &CancellationToken,
    ) -> Option<Lost> {
        if key.client.is_anonymous() {
            tracing::warn!(
                request = what,
                "a submit's answer was lost; with the anonymous key the Horde cannot tell which \
                 requests are this run's, so that request (if it reached the Horde) cannot be \
                 retrieved or cancelled and runs unretrieved; use a registered key to avoid this"
            );
            return Some(Lost::Unresolved);
        }
        let cache = self.tuning().find_user_cache;
        let ready = lost_at + cache + cache_margin(cache);
        tracing::info!(
            request = what,
            wait = %humantime::format_duration(ready.saturating_duration_since(Instant::now())),
            "a submit's answer was lost; waiting for the Horde's list of this key's requests to \
             be fresh, then looking for it (no other submit meanwhile)"
        );
        tokio::select! {
            () = tokio::time::sleep_until(ready) => {}
            () = interrupt.cancelled() => return None,
        }
        let listed = match self.retried(interrupt, || key.client.find_user()).await? {
            Ok(user) => user.active_generations.image,
            Err(error) => {
                tracing::warn!(request = what, key = %key.fingerprint, %error, "cannot list the key's requests; a request whose submit answer was lost may run unretrieved");
                return Some(Lost::Unresolved);
            }
        };
        let known = match self.ledger.horde_ids() {
            Ok(known) => known,
            Err(error) => {
                self.abort(super::Abort::Ledger(error.to_string()));
                return None;
            }
        };
        let unknown: Vec<String> = listed
            .into_iter()
            .filter(|id| !known.contains(id))
            .collect();
        let [candidate] = unknown.as_slice() else {
            if unknown.is_empty() {
                tracing::info!(
                    request = what,
                    "the lost submit never reached the Horde; submitting again"
                );
                return Some(Lost::NotOnHorde);
            }
            tracing::warn!(
                request = what,
                ids = ?unknown,
                "the Horde holds several requests of this key that no ledger knows (another \
                 client, or earlier lost submits); they were left alone"
            );
            return Some(Lost::Unresolved);
        };
        let check = self
            .retried(interrupt, || self.client.check(candidate))
            .await?;
        match check {
            Ok(check) => {
                let total = check.finished + check.processing + check.waiting;
                // Images whose attempts all faulted are dropped, so a done request may hold fewer.
                if total == n || (check.done && total <= n) {
                    tracing::info!(request = what, id = %candidate, "found the request of a submit whose answer was lost; following it");
                    Some(Lost::Adopted(candidate.clone()))
                } else {
                    tracing::warn!(request = what, id = %candidate, images = total, expected = n, "the one request no ledger knows has another image count; it was left alone");
                    Some(Lost::Unresolved)
                }
            }
            Err(error) => {
                tracing::warn!(request = what, id = %candidate, %error, "cannot check the request no ledger knows; it was left alone");
                Some(Lost::Unresolved)
            }
        }
    }

    /// Calls `call` until it answers or the failure table gives up on it
    /// (call `Lookup`). `None` when `interrupt` fired.
    async fn retried<T, F, Fut>(
        &self,
        interrupt: &CancellationToken,
        call: F,
    ) -> Option<Result<T, crate::horde::HordeError>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::horde::HordeError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let answer = tokio::select! {
                answer = call() => answer,
                () = interrupt.cancelled() => return None,
            };
            if answer.is_ok() {
                self.heard_from_horde();
            }
            let wait = match &answer {
                Err(error) => match self.tuning().policy.decide(Call::Lookup, error, attempt) {
                    Action::Retry { after, .. } => after,
                    _ => return Some(answer),
                },
                Ok(_) => return Some(answer),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = interrupt.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn submits_wait_while_a_doubt_is_open() {
        let gate = std::sync::Arc::new(SubmitGate::new(0));
        let doubt = gate.open();
        let entered = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move {
                let _guard = gate.enter().await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!entered.is_finished(), "no submit while a doubt is open");
        drop(doubt);
        entered
            .await
            .expect("the submit goes on once the doubt is resolved");
        assert_eq!(gate.open_doubts(), 0);
    }

    #[tokio::test]
    async fn initial_doubts_are_released_by_their_slots_or_in_bulk() {
        let gate = SubmitGate::new(3);
        drop(gate.adopt_initial());
        assert_eq!(gate.open_doubts(), 2);
        gate.release(2);
        assert_eq!(gate.open_doubts(), 0);
        let _guard = gate.enter().await;
    }

    #[tokio::test]
    async fn one_post_at_a_time() {
        let gate = std::sync::Arc::new(SubmitGate::new(0));
        let first = gate.enter().await;
        let second = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move {
                let _guard = gate.enter().await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        second
            .await
            .expect("the second POST goes once the first is answered");
    }
}
