//! Submits whose answer was lost: finding the request on the Horde instead of
//! paying for it twice.
//!
//! A submit can reach the Horde and lose its answer (a dropped connection, a
//! 5xx from a gateway, a kill between the POST and recording the id). The
//! ledger then holds a `Submitting` record and the Horde a request nobody will
//! retrieve, which also holds the key's concurrency. For a registered key,
//! `find_user` lists every unexpired request of the key, but it is cached 30 s
//! per key (docs/horde-api.md §9.1), so the list is only complete once that
//! long has passed since the POST. Then the ids the ledger does not know are
//! the candidates, and a key is rarely idle: a team shares it, yesterday's
//! batch is still listed. So every submit asks for a seed the client chose
//! and recorded before the POST (`submit`); the candidate whose image count
//! fits and whose images carry those seeds is adopted, the others are
//! another client's and left alone (named in the log). A candidate with no
//! image yet is looked at again until the request would have expired. For a
//! record with no seed (written before seeds were recorded), exactly one
//! candidate whose count fits is adopted, as before.
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

/// Images of a request whose seed is more than this past the first one's are
/// not its own: room for images a worker faulted and made again.
const SEED_SLACK: u64 = 64;

/// Whether a generation's seed belongs to a request that asked for `seed`
/// with `n` images (`seed_variation: 1`).
fn is_ours(generation_seed: u64, seed: u64, n: u32) -> bool {
    (seed..seed + u64::from(n) + SEED_SLACK).contains(&generation_seed)
}

/// What a request no ledger knows shows of itself.
enum Candidate {
    Seeds(Vec<u64>),
    OtherSize,
    NoImageYet,
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
    /// `lost_at` (or, for an earlier run's, at the latest before `lost_at`),
    /// recognised by `seed` (the seed the submit asked for) when it has one.
    /// `patience` bounds how long a candidate with no image yet (so no seed to
    /// read) is waited for. `None` when `interrupt` fired while waiting.
    pub(super) async fn find_lost_submit(
        &self,
        key: &super::PoolKey,
        what: &str,
        (n, seed): (u32, Option<u64>),
        lost_at: Instant,
        patience: Duration,
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
        if unknown.is_empty() {
            tracing::info!(
                request = what,
                "the lost submit never reached the Horde; submitting again"
            );
            return Some(Lost::NotOnHorde);
        }
        match seed {
            Some(seed) => {
                let deadline = Instant::now() + patience;
                self.find_by_seed(what, unknown, (n, seed), deadline, interrupt)
                    .await
            }
            None => self.find_the_only_one(what, unknown, n, interrupt).await,
        }
    }

    /// Finds, among requests no ledger knows, the one whose images have the
    /// seeds a submit asked for (`seed` to `seed + n` and a little more, for
    /// images a worker faulted and made again). A request of another size, or
    /// whose images have other seeds, is another client's and left alone; one
    /// with no image yet is looked at again until `deadline`.
    async fn find_by_seed(
        &self,
        what: &str,
        mut undecided: Vec<String>,
        (n, seed): (u32, u64),
        deadline: Instant,
        interrupt: &CancellationToken,
    ) -> Option<Lost> {
        let mut others: Vec<String> = Vec::new();
        loop {
            let mut still = Vec::new();
            for id in undecided {
                match self.seeds_of(&id, n, interrupt).await? {
                    Candidate::Seeds(seeds) if seeds.iter().any(|s| is_ours(*s, seed, n)) => {
                        if !others.is_empty() {
                            tracing::info!(request = what, other_clients = ?others, "requests of another client on this key were left alone");
                        }
                        tracing::info!(request = what, %id, "found the request of a submit whose answer was lost by its seeds; following it");
                        return Some(Lost::Adopted(id));
                    }
                    Candidate::Seeds(_) | Candidate::OtherSize => others.push(id),
                    Candidate::NoImageYet => still.push(id),
                }
            }
            if still.is_empty() {
                if !others.is_empty() {
                    tracing::info!(request = what, other_clients = ?others, "the key holds requests of another client (left alone); the lost submit is not among them, so it never reached the Horde: submitting again");
                }
                return Some(Lost::NotOnHorde);
            }
            if Instant::now() >= deadline {
                tracing::warn!(request = what, undecided = ?still, images = n, "a lost submit could not be told apart from requests with no image yet before it would expire; they were left alone (if one is this run's, its images are paid for and not retrieved)");
                return Some(Lost::Unresolved);
            }
            let wait = self.tuning().poll_cap.min(deadline - Instant::now());
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = interrupt.cancelled() => return None,
            }
            undecided = still;
        }
    }

    /// What a request no ledger knows shows of itself: its images' seeds, or
    /// that it is of another size, or that it has no image yet. `None` when
    /// `interrupt` fired.
    async fn seeds_of(&self, id: &str, n: u32, interrupt: &CancellationToken) -> Option<Candidate> {
        let check = match self.retried(interrupt, || self.client.check(id)).await? {
            Ok(check) => check,
            // Unreadable: not a request this run can follow.
            Err(_) => return Some(Candidate::OtherSize),
        };
        let total = check.finished + check.processing + check.waiting;
        // Images whose attempts all faulted are dropped, so a done request may hold fewer.
        if !(total == n || (check.done && total <= n)) {
            return Some(Candidate::OtherSize);
        }
        if check.finished == 0 {
            return Some(Candidate::NoImageYet);
        }
        let status = match self.retried(interrupt, || self.client.status(id)).await? {
            Ok(status) => status,
            Err(_) => return Some(Candidate::NoImageYet),
        };
        let seeds: Vec<u64> = status
            .generations
            .iter()
            .filter_map(|generation| generation.seed.parse().ok())
            .collect();
        Some(if seeds.is_empty() {
            Candidate::NoImageYet
        } else {
            Candidate::Seeds(seeds)
        })
    }

    /// For a submit with no recorded seed (a ledger from before seeds were
    /// recorded): adopts the only request no ledger knows, if its image count
    /// fits; anything less certain is left alone.
    async fn find_the_only_one(
        &self,
        what: &str,
        unknown: Vec<String>,
        n: u32,
        interrupt: &CancellationToken,
    ) -> Option<Lost> {
        let [candidate] = unknown.as_slice() else {
            tracing::warn!(
                request = what,
                ids = ?unknown,
                "the Horde holds several requests of this key that no ledger knows (another \
                 client, or earlier lost submits) and this submit's seed is not recorded; they \
                 were left alone"
            );
            return Some(Lost::Unresolved);
        };
        let check = self
            .retried(interrupt, || self.client.check(candidate))
            .await?;
        match check {
            Ok(check) => {
                let total = check.finished + check.processing + check.waiting;
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

    #[test]
    fn a_requests_images_are_known_by_their_seeds() {
        // seed_variation 1: image k gets seed + k; re-made images a little more.
        assert!(is_ours(1_000, 1_000, 4));
        assert!(is_ours(1_003, 1_000, 4));
        assert!(is_ours(1_000 + 4 + SEED_SLACK - 1, 1_000, 4));
        assert!(!is_ours(999, 1_000, 4));
        assert!(!is_ours(1_000 + 4 + SEED_SLACK, 1_000, 4));
    }

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
