//! `horde-batch cancel`: cancelling every request the ledger shows on the
//! Horde, lost submits included (found first with the key that sent them).
//!
//! Owns the cancel sweep and its report; the cancel call itself, and what
//! is kept of its answer, is the slot's (`follow`). Must not submit.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{adopt, Abort, Engine};
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState};

/// What `horde-batch cancel` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelReport {
    /// Requests cancelled (or already gone from the Horde).
    pub cancelled: u32,
    /// Requests the Horde did not confirm cancelled: still in the ledger.
    pub failed: u32,
    /// Submits whose answer was lost and whose request could not be found.
    pub not_found: u32,
    /// Lost submits left alone because their key is not among this run's
    /// keys: (fingerprint, requests). Only that key's `find_user` lists them.
    pub missing_keys: Vec<(String, u32)>,
}

impl CancelReport {
    fn count(&mut self, cancelled: bool) {
        if cancelled {
            self.cancelled += 1;
        } else {
            self.failed += 1;
        }
    }
}
impl Engine {
    /// Cancels every request the ledger shows on the Horde (`horde-batch cancel`),
    /// saving the images their cancel answers hold.
    pub async fn cancel_in_flight(self: &Arc<Self>) -> CancelReport {
        let records = match self.ledger.in_flight() {
            Ok(records) => records,
            Err(error) => {
                self.abort(Abort::Ledger(error.to_string()));
                return CancelReport::default();
            }
        };
        let mut wanted: HashMap<String, Vec<(RequestKey, RequestRecord)>> = HashMap::new();
        for (key, record) in records {
            wanted
                .entry(key.job_key.clone())
                .or_default()
                .push((key, record));
        }
        let mut report = CancelReport::default();
        for job in self.manifest.jobs() {
            let Some(slots) = wanted.remove(&job.key.to_string()) else {
                continue;
            };
            for (key, mut record) in slots {
                match record.state.clone() {
                    RequestState::Submitted { horde_id, .. } => {
                        report.count(
                            self.cancel_request(&job, &key, &mut record, &horde_id)
                                .await,
                        );
                    }
                    RequestState::Submitting { n, .. } => {
                        // The POST's answer never arrived: find the request, if it reached the
                        // Horde. Only the key that sent it can list it.
                        let Some(pool_key) = self.keys.for_record(&record).cloned() else {
                            let fingerprint =
                                record.key_fingerprint.clone().unwrap_or_else(|| "?".into());
                            tracing::warn!(request = %key, key = %fingerprint, "a lost submit was sent with a key that is not among this run's keys; it was left alone");
                            match report
                                .missing_keys
                                .iter_mut()
                                .find(|(fp, _)| *fp == fingerprint)
                            {
                                Some((_, count)) => *count += 1,
                                None => report.missing_keys.push((fingerprint, 1)),
                            }
                            continue;
                        };
                        let found = self
                            .find_lost_submit(
                                &pool_key,
                                &key.to_string(),
                                (n, record.submit_seed),
                                tokio::time::Instant::now(),
                                // The user waits: a candidate with no image yet is not waited for.
                                std::time::Duration::ZERO,
                                &CancellationToken::new(),
                            )
                            .await;
                        match found {
                            Some(adopt::Lost::Adopted(horde_id)) => {
                                record.transition(
                                    RequestState::Submitted {
                                        horde_id: horde_id.clone(),
                                        n,
                                        submitted_ms: record.updated_ms,
                                    },
                                    now_ms(),
                                );
                                report.count(
                                    self.cancel_request(&job, &key, &mut record, &horde_id)
                                        .await,
                                );
                            }
                            Some(adopt::Lost::NotOnHorde) => {
                                record.transition(
                                    RequestState::Cancelled {
                                        horde_id: String::new(),
                                        cancelled_ms: now_ms(),
                                    },
                                    now_ms(),
                                );
                                if let Err(e) = self.ledger.put_durable(&key, &record).await {
                                    self.abort(Abort::Ledger(e.to_string()));
                                }
                            }
                            Some(adopt::Lost::Unresolved) | None => report.not_found += 1,
                        }
                    }
                    _ => {}
                }
            }
            if wanted.is_empty() {
                break;
            }
        }
        for (job_key, _) in wanted {
            tracing::warn!(%job_key, "the ledger has a request for a job the manifest no longer has; it was left alone");
        }
        report
    }
}
