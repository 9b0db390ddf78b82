//! What the engine tells the world, as typed, time-stamped events in the
//! order things happen, and their one fold, [`RunStats`].
//!
//! The engine sends events and decides nothing from them. Every figure a run
//! reports — progress bars, JSON progress, `status.json`, the final summary,
//! its `Ending` and so the exit code — is read from one `RunStats` folded
//! from them; nothing else counts. The engine keeps a few figures of its own
//! only to decide (`--max-kudos`), never to report. A closed receiver is fine:
//! events are then dropped.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Serialize;
use tokio::sync::mpsc;

use super::keys::KeyUsage;
use super::FailureKind;
use crate::exit::{Abort, Closed, Ending};
use crate::horde::FailureClass;

/// Where the engine sends its events.
pub type EventSender = mpsc::UnboundedSender<Stamped>;

/// An event and when it happened (Unix milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    pub at_ms: u64,
    pub event: Event,
}

impl Stamped {
    /// `event`, stamped now.
    pub fn now(event: Event) -> Self {
        Stamped {
            at_ms: crate::store::now_ms(),
            event,
        }
    }
}

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The run starts: the totals of its plan, and the fingerprints of its keys.
    Started {
        jobs: u64,
        images_wanted: u64,
        keys: Vec<String>,
    },
    /// Images of a job that earlier runs saved.
    SavedBefore { images: u32 },
    /// Jobs that earlier runs finished and their images, counted from the
    /// settled prefix (`prefix`) before those jobs are looked at again.
    SettledBefore { jobs_done: u64, images: u64 },
    /// A job the settled prefix counted done is not done now (an image is
    /// gone from the folder): what `SettledBefore` counted of it is taken back,
    /// and the job counts from what is there now.
    Unsettled { images: u64 },
    /// A submit (`POST`) was sent with the key of this fingerprint.
    SubmitSent { key: String },
    /// A request is on the Horde and followed from now on.
    Following {
        key: String,
        horde_id: String,
        images: u32,
    },
    /// A `/check` answered.
    Checked { queue_position: u32, wait_time: u32 },
    /// A `/status` was read.
    StatusRead,
    /// An image was downloaded from its URL.
    Downloaded,
    /// An image is on disk (or was already, from an earlier run); `key` is the
    /// fingerprint of the key that paid for it, when known.
    ImageSaved {
        already_present: bool,
        key: Option<String>,
    },
    /// An image saved by an earlier run is gone from disk; it is made again.
    ImageGone,
    /// Something was not as asked: an image censored or faulted, a request
    /// expired, a job failed…
    Failure(FailureKind),
    /// A call failed and is tried again (after a wait, if `seconds` > 0).
    CallFailed { class: FailureClass, seconds: u64 },
    /// The missing images of a request are submitted again.
    Resubmitting,
    /// A cancel (`DELETE`) was sent.
    CancelSent,
    /// A request is no longer followed (done, cancelled, given up, or stopped).
    Released { key: String },
    /// The Horde charged this many kudos (to the key of this fingerprint, when known).
    Charged { kudos: f64, key: Option<String> },
    /// A job ended: all its images are saved, or it failed.
    JobEnded { done: bool },
    /// A key of a pool was retired (refused, out of kudos); the others go on.
    KeyRetired { key: String, reason: String },
    /// No more submits; requests on the Horde are still followed.
    SubmitsClosed(Closed),
    /// The run stops early for this reason (the first reason wins).
    Aborted(Abort),
    /// The engine is done; `stopped` when it was told to stop (a signal, a
    /// deadline, an abort) before every job ended.
    Ended { stopped: bool },
}

/// A request being followed, as the events told it.
#[derive(Debug, Clone, PartialEq)]
pub struct Flight {
    pub horde_id: String,
    pub images: u32,
    pub since_ms: u64,
}

/// Everything a run's events told, folded: the one source of the figures that
/// progress, the status file and the final summary show.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub jobs: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub images_wanted: u64,
    pub images_saved_before: u64,
    /// Images this run saved.
    pub images_saved: u64,
    pub images_already_present: u64,
    /// Images saved earlier whose files were gone: made again.
    pub images_gone: u64,
    pub submits: u64,
    pub checks: u64,
    pub status_calls: u64,
    pub cancels: u64,
    pub downloads: u64,
    pub rate_limited: u64,
    pub concurrency_full: u64,
    pub transient_errors: u64,
    pub resubmits: u64,
    pub kudos: f64,
    pub failures: BTreeMap<FailureKind, u64>,
    pub queue_position: u64,
    /// The wait the engine is in because of a failed call (seconds), if any.
    pub waiting_seconds: u64,
    /// Requests being followed, by request key.
    pub in_flight: BTreeMap<String, Flight>,
    /// What each key did, in the order the run listed them.
    pub keys: IndexMap<String, KeyUsage>,
    /// When the run started (Unix milliseconds; 0 before `Started`).
    pub started_ms: u64,
    /// The plan's totals have arrived (`Event::Started`).
    pub planned: bool,
    pub abort: Option<Abort>,
    pub closed: Option<Closed>,
    /// The engine is done (`Event::Ended`), and whether it was stopped.
    pub ended: Option<bool>,
}

/// The outcome of a whole run, as its summary shows it: derived from
/// [`RunStats`], never counted on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    pub jobs: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// Jobs neither done nor failed: stopped before they ended, or never started.
    pub jobs_unfinished: u64,
    pub images_wanted: u64,
    pub images_saved_before: u64,
    pub images_saved_now: u64,
    pub interrupted: bool,
    pub abort: Option<String>,
    /// What each key did, when the run had several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyUsage>,
}

impl RunStats {
    /// Folds a whole recorded stream.
    pub fn folded<'a>(events: impl IntoIterator<Item = &'a Stamped>) -> Self {
        let mut stats = RunStats::default();
        for event in events {
            stats.apply(event);
        }
        stats
    }

    /// Folds one event in.
    pub fn apply(&mut self, stamped: &Stamped) {
        let at_ms = stamped.at_ms;
        match &stamped.event {
            Event::Started {
                jobs,
                images_wanted,
                keys,
            } => {
                self.jobs = *jobs;
                self.images_wanted = *images_wanted;
                self.started_ms = at_ms;
                self.planned = true;
                for key in keys {
                    self.key(key);
                }
            }
            Event::SavedBefore { images } => self.images_saved_before += u64::from(*images),
            Event::SettledBefore { jobs_done, images } => {
                self.jobs_done += jobs_done;
                self.images_saved_before += images;
            }
            Event::Unsettled { images } => {
                self.jobs_done = self.jobs_done.saturating_sub(1);
                self.images_saved_before = self.images_saved_before.saturating_sub(*images);
            }
            Event::SubmitSent { key } => {
                self.submits += 1;
                self.key(key).submits += 1;
            }
            Event::Following {
                key,
                horde_id,
                images,
            } => {
                let flight = Flight {
                    horde_id: horde_id.clone(),
                    images: *images,
                    since_ms: at_ms,
                };
                self.in_flight.insert(key.clone(), flight);
            }
            Event::Checked { queue_position, .. } => {
                self.checks += 1;
                self.queue_position = u64::from(*queue_position);
                self.waiting_seconds = 0;
            }
            Event::StatusRead => self.status_calls += 1,
            Event::Downloaded => self.downloads += 1,
            Event::ImageSaved {
                already_present: true,
                ..
            } => self.images_already_present += 1,
            Event::ImageSaved {
                already_present: false,
                key,
            } => {
                self.images_saved += 1;
                if let Some(key) = key {
                    self.key(key).images_saved += 1;
                }
            }
            Event::Failure(kind) => *self.failures.entry(*kind).or_default() += 1,
            Event::ImageGone => self.images_gone += 1,
            Event::CallFailed { class, seconds } => {
                match class {
                    FailureClass::RateLimited => self.rate_limited += 1,
                    FailureClass::ConcurrencyFull => self.concurrency_full += 1,
                    _ => self.transient_errors += 1,
                }
                self.waiting_seconds = *seconds;
            }
            Event::Resubmitting => self.resubmits += 1,
            Event::CancelSent => self.cancels += 1,
            Event::Released { key } => {
                self.in_flight.remove(key);
            }
            Event::Charged { kudos, key } => {
                self.kudos += kudos;
                if let Some(key) = key {
                    self.key(key).kudos += kudos;
                }
            }
            Event::JobEnded { done: true } => self.jobs_done += 1,
            Event::JobEnded { done: false } => self.jobs_failed += 1,
            Event::KeyRetired { key, reason } => {
                self.key(key).retired.get_or_insert_with(|| reason.clone());
            }
            Event::SubmitsClosed(closed) => {
                self.closed.get_or_insert(*closed);
            }
            Event::Aborted(abort) => {
                self.abort.get_or_insert_with(|| abort.clone());
            }
            Event::Ended { stopped } => {
                self.ended = Some(*stopped);
                self.in_flight.clear();
            }
        }
    }

    fn key(&mut self, fingerprint: &str) -> &mut KeyUsage {
        self.keys
            .entry(fingerprint.to_owned())
            .or_insert_with(|| KeyUsage {
                fingerprint: fingerprint.to_owned(),
                submits: 0,
                images_saved: 0,
                kudos: 0.0,
                retired: None,
            })
    }

    /// Jobs neither done nor failed.
    pub fn jobs_unfinished(&self) -> u64 {
        self.jobs
            .saturating_sub(self.jobs_done)
            .saturating_sub(self.jobs_failed)
    }

    /// The run was stopped by a signal (not by an abort or a deadline).
    pub fn interrupted(&self) -> bool {
        self.ended == Some(true) && self.abort.is_none() && self.closed.is_none()
    }

    /// Why the run ended.
    pub fn ending(&self) -> Ending {
        Ending::of(
            self.abort.clone(),
            self.closed,
            self.ended == Some(true),
            self.jobs_failed > 0 || self.jobs_unfinished() > 0,
        )
    }

    /// The final summary.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            jobs: self.jobs,
            jobs_done: self.jobs_done,
            jobs_failed: self.jobs_failed,
            jobs_unfinished: self.jobs_unfinished(),
            images_wanted: self.images_wanted,
            images_saved_before: self.images_saved_before,
            images_saved_now: self.images_saved,
            interrupted: self.interrupted(),
            abort: self.abort.as_ref().map(ToString::to_string),
            keys: if self.keys.len() > 1 {
                self.keys.values().cloned().collect()
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: u64, event: Event) -> Stamped {
        Stamped { at_ms, event }
    }

    /// A recorded run of two keys: three jobs, one failed, one image made
    /// again, a 429, then Ctrl-C with one job left.
    fn recorded_run() -> Vec<Stamped> {
        let saved = |key: &str| Event::ImageSaved {
            already_present: false,
            key: Some(key.into()),
        };
        vec![
            at(
                1_000,
                Event::Started {
                    jobs: 4,
                    images_wanted: 10,
                    keys: vec!["aaaa".into(), "bbbb".into()],
                },
            ),
            at(1_001, Event::SavedBefore { images: 2 }),
            at(1_002, Event::JobEnded { done: true }),
            at(1_010, Event::SubmitSent { key: "aaaa".into() }),
            at(
                1_011,
                Event::CallFailed {
                    class: FailureClass::RateLimited,
                    seconds: 1,
                },
            ),
            at(1_020, Event::SubmitSent { key: "aaaa".into() }),
            at(
                1_021,
                Event::Following {
                    key: "j1/000000".into(),
                    horde_id: "id-1".into(),
                    images: 4,
                },
            ),
            at(1_030, Event::SubmitSent { key: "bbbb".into() }),
            at(
                1_031,
                Event::KeyRetired {
                    key: "bbbb".into(),
                    reason: "401".into(),
                },
            ),
            at(1_040, Event::StatusRead),
            at(
                1_041,
                Event::Charged {
                    kudos: 36.0,
                    key: Some("aaaa".into()),
                },
            ),
            at(1_042, saved("aaaa")),
            at(1_043, saved("aaaa")),
            at(1_044, saved("aaaa")),
            at(1_045, Event::Failure(FailureKind::Censored)),
            at(
                1_046,
                Event::Released {
                    key: "j1/000000".into(),
                },
            ),
            at(1_047, Event::JobEnded { done: true }),
            at(1_050, Event::Failure(FailureKind::NoWorker)),
            at(1_051, Event::JobEnded { done: false }),
            at(1_060, Event::Ended { stopped: true }),
        ]
    }

    #[test]
    fn a_recorded_stream_folds_into_its_summary_and_ending() {
        let stats = RunStats::folded(&recorded_run());
        let summary = stats.summary();
        assert_eq!(
            summary,
            RunSummary {
                jobs: 4,
                jobs_done: 2,
                jobs_failed: 1,
                jobs_unfinished: 1,
                images_wanted: 10,
                images_saved_before: 2,
                images_saved_now: 3,
                interrupted: true,
                abort: None,
                keys: vec![
                    KeyUsage {
                        fingerprint: "aaaa".into(),
                        submits: 2,
                        images_saved: 3,
                        kudos: 36.0,
                        retired: None,
                    },
                    KeyUsage {
                        fingerprint: "bbbb".into(),
                        submits: 1,
                        images_saved: 0,
                        kudos: 0.0,
                        retired: Some("401".into()),
                    },
                ],
            }
        );
        assert_eq!(stats.ending(), Ending::Interrupted);
        assert_eq!(crate::exit::code(&stats.ending()), crate::exit::INTERRUPTED);
        assert_eq!(
            (stats.submits, stats.rate_limited, stats.status_calls),
            (3, 1, 1)
        );
        assert_eq!(stats.failures.get(&FailureKind::Censored), Some(&1));
        assert!(stats.in_flight.is_empty());
    }

    #[test]
    fn the_ending_follows_abort_then_closed_then_stop_then_jobs() {
        let mut stream = recorded_run();
        let end = stream.pop().expect("the recorded run ends");
        // Every job done and not stopped: complete.
        let complete = RunStats::folded(&[
            at(
                1,
                Event::Started {
                    jobs: 1,
                    images_wanted: 1,
                    keys: vec![],
                },
            ),
            at(2, Event::JobEnded { done: true }),
            at(3, Event::Ended { stopped: false }),
        ]);
        assert_eq!(complete.ending(), Ending::Complete);
        // A failed job, not stopped: jobs failed (exit 1).
        let mut failed = stream.clone();
        failed.push(at(2_000, Event::Ended { stopped: false }));
        assert_eq!(RunStats::folded(&failed).ending(), Ending::JobsFailed);
        // A deadline closes submits before the stop: max runtime, not interrupted.
        let mut deadline = stream.clone();
        deadline.push(at(1_900, Event::SubmitsClosed(Closed::MaxRuntime)));
        deadline.push(end.clone());
        let stats = RunStats::folded(&deadline);
        assert_eq!(stats.ending(), Ending::MaxRuntime);
        assert!(!stats.summary().interrupted);
        // An abort wins over everything, and its first reason is kept.
        let mut aborted = deadline;
        aborted.insert(5, at(1_012, Event::Aborted(Abort::Ledger("full".into()))));
        aborted.push(at(1_950, Event::Aborted(Abort::Auth("later".into()))));
        let stats = RunStats::folded(&aborted);
        assert_eq!(
            stats.ending(),
            Ending::Aborted(Abort::Ledger("full".into()))
        );
        assert_eq!(stats.summary().abort.as_deref(), Some("ledger: full"));
    }

    #[test]
    fn a_flight_is_as_old_as_its_event() {
        let stats = RunStats::folded(&recorded_run()[..7]);
        assert_eq!(stats.in_flight["j1/000000"].since_ms, 1_021);
        assert_eq!(stats.started_ms, 1_000);
    }
}
