//! Progress and status: what a run is doing, for people and for scripts.
//!
//! A reporter task folds the engine's events into [`Progress`] and, every few
//! seconds, shows it as live bars on a terminal, or as one JSON line on stderr
//! otherwise; each sample is also written to `<state>/status.json`, which
//! `horde-batch status` reads while the run holds the ledger's lock. The same
//! fold gives the final summary. `status` without an active run computes the
//! same report from the ledger. Decides nothing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::horde::FailureClass;
use crate::scheduler::{Ending, Event, FailureKind, RunSummary};
use crate::store::{now_ms, RequestState, Store, StoreError};

/// The file an active run keeps its latest progress in.
pub const STATUS_FILE: &str = "status.json";

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, JSON lines otherwise.
    Auto,
    Bars,
    Json,
    None,
}

/// What the plan asks of one job, for a report from the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedJob {
    pub images: u32,
    /// Request slots the job is split into.
    pub slots: u32,
}

/// A request still on the Horde.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InFlight {
    pub key: String,
    pub horde_id: Option<String>,
    pub state: String,
    pub age_seconds: u64,
}

/// The state of a batch: the same shape from a live run and from the ledger.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// True when a run holds the ledger right now.
    pub active: bool,
    pub pid: Option<u32>,
    /// Unix milliseconds of this report.
    pub updated_ms: u64,
    pub images_wanted: u64,
    pub images_saved: u64,
    pub requests_in_flight: u64,
    pub images_in_flight: u64,
    /// Ledger records by state (from the ledger only).
    pub requests_by_state: BTreeMap<String, u64>,
    pub in_flight: Vec<InFlight>,
    pub failures: BTreeMap<String, u64>,
    pub kudos_charged: f64,
    /// Charged per saved image times the images still wanted.
    pub kudos_estimated_remaining: f64,
    pub queue_position: u64,
    pub eta_seconds: u64,
    pub rate_limited_429s: u64,
    /// The wait the run is in after a failed call (seconds; 0 when none), so a
    /// long back-off is never silent.
    #[serde(default)]
    pub waiting_seconds: u64,
    pub jobs: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// From a live run: the run has ended. From the ledger: every image the
    /// manifest asks for is saved.
    pub finished: bool,
}

impl StatusReport {
    /// The report of a batch no run holds, from its ledger. `jobs` is the
    /// manifest's plan: each job key with the images and request slots it
    /// needs. Records of other manifests' jobs (a shared state folder) are not
    /// counted.
    pub fn from_ledger(
        store: &Store,
        jobs: &std::collections::HashMap<String, PlannedJob>,
    ) -> Result<Self, StoreError> {
        #[derive(Default)]
        struct Seen {
            saved: u64,
            done_slots: u32,
            failed: bool,
        }
        let mut report = StatusReport {
            updated_ms: now_ms(),
            images_wanted: jobs.values().map(|job| u64::from(job.images)).sum(),
            jobs: jobs.len() as u64,
            ..StatusReport::default()
        };
        let now = now_ms();
        let mut seen: std::collections::HashMap<&str, Seen> = std::collections::HashMap::new();
        for entry in store.iter() {
            let (key, record) = entry?;
            let Some((job_key, _)) = jobs.get_key_value(&key.job_key) else {
                continue;
            };
            let job = seen.entry(job_key.as_str()).or_default();
            *report
                .requests_by_state
                .entry(record.state.name().to_owned())
                .or_default() += 1;
            job.saved += record
                .images
                .values()
                .filter(|i| !i.file_name.is_empty())
                .count() as u64;
            report.kudos_charged += record.kudos_charged;
            match &record.state {
                RequestState::Done if record.missing_indices().is_empty() => job.done_slots += 1,
                RequestState::Failed { class, .. } => {
                    job.failed = true;
                    *report.failures.entry(class.clone()).or_default() += 1
                }
                state if state.is_in_flight() => {
                    report.requests_in_flight += 1;
                    report.images_in_flight += u64::from(record.n);
                    report.in_flight.push(InFlight {
                        key: key.to_string(),
                        horde_id: state.horde_id().map(str::to_owned),
                        state: state.name().to_owned(),
                        age_seconds: now.saturating_sub(record.updated_ms) / 1000,
                    });
                }
                _ => {}
            }
        }
        for (job_key, job) in &seen {
            let planned = &jobs[*job_key];
            // A job whose `images` was lowered keeps its extra files; they are not wanted.
            report.images_saved += job.saved.min(u64::from(planned.images));
            if job.done_slots >= planned.slots && job.saved >= u64::from(planned.images) {
                report.jobs_done += 1;
            } else if job.failed {
                report.jobs_failed += 1;
            }
        }
        report.finished = report.jobs_done == report.jobs;
        report.kudos_estimated_remaining = estimate(
            report.kudos_charged,
            report.images_saved,
            report.images_wanted.saturating_sub(report.images_saved),
        );
        Ok(report)
    }

    /// One line for logs and the terminal.
    pub fn line(&self) -> String {
        format!(
            "{}/{} images, {} requests in flight ({} images), queue #{}, eta {}s, {:.0} kudos, {} 429s, {} failures",
            self.images_saved,
            self.images_wanted,
            self.requests_in_flight,
            self.images_in_flight,
            self.queue_position,
            self.eta_seconds,
            self.kudos_charged,
            self.rate_limited_429s,
            self.failures.values().sum::<u64>(),
        )
    }
}

fn estimate(charged: f64, images_priced: u64, images_left: u64) -> f64 {
    if images_priced == 0 {
        0.0
    } else {
        charged / images_priced as f64 * images_left as f64
    }
}

/// A request being followed, as the events told it.
#[derive(Debug, Clone)]
struct Flight {
    horde_id: String,
    images: u32,
    since_ms: u64,
}

/// Everything a run's events told, folded: what the progress reports, the
/// status file and the final summary show.
#[derive(Debug, Clone)]
pub struct Progress {
    pub jobs: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub images_wanted: u64,
    pub images_saved_before: u64,
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
    /// The longest wait the engine is in because of a failed call (seconds), if any.
    pub waiting_seconds: u64,
    in_flight: BTreeMap<String, Flight>,
    started: Instant,
    /// The plan's totals have arrived (`Event::Started`).
    planned: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            jobs: 0,
            jobs_done: 0,
            jobs_failed: 0,
            images_wanted: 0,
            images_saved_before: 0,
            images_saved: 0,
            images_already_present: 0,
            images_gone: 0,
            submits: 0,
            checks: 0,
            status_calls: 0,
            cancels: 0,
            downloads: 0,
            rate_limited: 0,
            concurrency_full: 0,
            transient_errors: 0,
            resubmits: 0,
            kudos: 0.0,
            failures: BTreeMap::new(),
            queue_position: 0,
            waiting_seconds: 0,
            in_flight: BTreeMap::new(),
            started: Instant::now(),
            planned: false,
        }
    }
}

impl Progress {
    /// Folds one event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Started {
                jobs,
                images_wanted,
            } => {
                self.jobs = *jobs;
                self.images_wanted = *images_wanted;
                self.started = Instant::now();
                self.planned = true;
            }
            Event::SavedBefore { images } => self.images_saved_before += u64::from(*images),
            Event::SettledBefore { jobs_done, images } => {
                self.jobs_done += jobs_done;
                self.images_saved_before += images;
            }
            Event::SubmitSent => self.submits += 1,
            Event::Following {
                key,
                horde_id,
                images,
            } => {
                let flight = Flight {
                    horde_id: horde_id.clone(),
                    images: *images,
                    since_ms: now_ms(),
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
            Event::ImageSaved { already_present } => {
                if *already_present {
                    self.images_already_present += 1;
                } else {
                    self.images_saved += 1;
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
            Event::Charged { kudos } => self.kudos += kudos,
            Event::JobEnded { done: true } => self.jobs_done += 1,
            Event::JobEnded { done: false } => self.jobs_failed += 1,
        }
    }

    /// A sample of the live run.
    pub fn status(&self) -> StatusReport {
        let saved = self.images_saved_before + self.images_saved;
        let left = self.images_wanted.saturating_sub(saved);
        let elapsed = self.started.elapsed().as_secs_f64();
        // Observed throughput: images saved by this run per second so far.
        let eta_seconds = if self.images_saved > 0 && elapsed > 0.0 {
            (left as f64 / (self.images_saved as f64 / elapsed)).round() as u64
        } else {
            0
        };
        let now = now_ms();
        let mut requests_by_state = BTreeMap::new();
        if !self.in_flight.is_empty() {
            requests_by_state.insert("submitted".to_owned(), self.in_flight.len() as u64);
        }
        StatusReport {
            active: true,
            pid: Some(std::process::id()),
            updated_ms: now,
            images_wanted: self.images_wanted,
            images_saved: saved,
            requests_in_flight: self.in_flight.len() as u64,
            images_in_flight: self.in_flight.values().map(|f| u64::from(f.images)).sum(),
            requests_by_state,
            in_flight: self
                .in_flight
                .iter()
                .map(|(key, flight)| InFlight {
                    key: key.clone(),
                    horde_id: Some(flight.horde_id.clone()),
                    state: "submitted".to_owned(),
                    age_seconds: now.saturating_sub(flight.since_ms) / 1000,
                })
                .collect(),
            failures: self
                .failures
                .iter()
                .map(|(kind, count)| (kind.as_str().to_owned(), *count))
                .collect(),
            kudos_charged: self.kudos,
            kudos_estimated_remaining: estimate(self.kudos, self.images_saved, left),
            queue_position: self.queue_position,
            eta_seconds,
            rate_limited_429s: self.rate_limited + self.concurrency_full,
            waiting_seconds: self.waiting_seconds,
            jobs: self.jobs,
            jobs_done: self.jobs_done,
            jobs_failed: self.jobs_failed,
            finished: false,
        }
    }
}

/// Writes `report` to `<state>/status.json` atomically (a reader never sees half a file).
pub fn write_status_file(state_dir: &Path, report: &StatusReport) -> std::io::Result<()> {
    let path = state_dir.join(STATUS_FILE);
    let temp = state_dir.join(format!(".{STATUS_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, &path)
}

/// Reads the status file an active run keeps.
pub fn read_status_file(state_dir: &Path) -> Option<StatusReport> {
    serde_json::from_slice(&std::fs::read(state_dir.join(STATUS_FILE)).ok()?).ok()
}

/// The running reporter; `finish` prints the last sample, stops it and
/// hands back everything it folded.
pub struct Reporter {
    task: tokio::task::JoinHandle<Progress>,
    stop: tokio_util::sync::CancellationToken,
}

impl Reporter {
    /// Starts folding `events` and showing a sample every `interval`.
    pub fn start(
        mut events: mpsc::UnboundedReceiver<Event>,
        mode: ProgressMode,
        interval: Duration,
        state_dir: PathBuf,
    ) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Json,
            other => other,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut progress = Progress::default();
            let bar = (mode == ProgressMode::Bars).then(new_bar);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let finished = tokio::select! {
                    Some(event) = events.recv() => {
                        progress.apply(&event);
                        continue;
                    }
                    _ = ticker.tick() => false,
                    () = token.cancelled() => true,
                };
                if finished {
                    // What the engine sent before it ended is part of the last sample.
                    while let Ok(event) = events.try_recv() {
                        progress.apply(&event);
                    }
                } else if !progress.planned {
                    // No sample before the plan's totals are known: it would say 0 of 0.
                    continue;
                }
                let mut report = progress.status();
                report.finished = finished;
                report.active = !finished;
                if let Err(error) = write_status_file(&state_dir, &report) {
                    tracing::debug!(%error, "cannot write the status file");
                }
                match (&bar, mode) {
                    (Some(bar), _) => {
                        bar.set_length(report.images_wanted.max(1));
                        bar.set_position(report.images_saved);
                        bar.set_message(report.line());
                        if finished {
                            bar.finish();
                        }
                    }
                    (None, ProgressMode::Json) => {
                        if let Ok(line) = serde_json::to_string(&report) {
                            crate::say!("{line}");
                        }
                    }
                    _ => {}
                }
                if finished {
                    return progress;
                }
            }
        });
        Reporter { task, stop }
    }

    /// Emits the final sample, waits for the reporter to end, and returns what it folded.
    pub async fn finish(self) -> Progress {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The final summary on stderr: jobs, images, calls, failures by class, and
/// why the run ended early if it did.
pub fn print_summary(progress: &Progress, summary: &RunSummary, ending: &Ending, out: &Path) {
    let p = progress;
    let mut classes: Vec<_> = p.failures.iter().collect();
    classes.sort_by_key(|(kind, _)| kind.as_str());
    let early = match ending {
        Ending::MaxRuntime | Ending::MaxKudos => Some(format!(
            "submitting stopped ({ending:?}); rerun the same command to resume"
        )),
        Ending::Aborted(abort) => Some(format!(
            "stopped early: {abort}; fix that, then rerun the same command to resume"
        )),
        Ending::Complete | Ending::JobsFailed | Ending::Interrupted => None,
    };
    match crate::logging::messages() {
        // `-q`: errors only, and a run that stopped early is one.
        crate::logging::Messages::Quiet => {
            if let (Ending::Aborted(_), Some(early)) = (ending, &early) {
                crate::say!("horde-batch: {early}");
            }
        }
        crate::logging::Messages::Json => {
            let failures: BTreeMap<&str, u64> = classes
                .iter()
                .map(|(kind, n)| (kind.as_str(), **n))
                .collect();
            let object = serde_json::json!({
                "summary": {
                    "jobs": summary.jobs,
                    "jobs_done": summary.jobs_done,
                    "jobs_failed": summary.jobs_failed,
                    "jobs_unfinished": summary.jobs_unfinished,
                    "images_saved_now": summary.images_saved_now,
                    "images_saved_before": summary.images_saved_before,
                    "output": out.display().to_string(),
                    "requests": {
                        "submit": p.submits,
                        "check": p.checks,
                        "status": p.status_calls,
                        "cancel": p.cancels,
                        "download": p.downloads,
                    },
                    "rate_limited_429s": p.rate_limited,
                    "concurrency_429s": p.concurrency_full,
                    "transient_errors": p.transient_errors,
                    "resubmits": p.resubmits,
                    "images_gone": p.images_gone,
                    "kudos": p.kudos,
                    "failures": failures,
                    "ending": format!("{ending:?}"),
                    "message": early,
                }
            });
            crate::say!("{object}");
        }
        crate::logging::Messages::Text => {
            crate::say!(
                "horde-batch: {} of {} jobs done, {} failed, {} unfinished; {} images saved now, {} before; output in {}",
                summary.jobs_done,
                summary.jobs,
                summary.jobs_failed,
                summary.jobs_unfinished,
                summary.images_saved_now,
                summary.images_saved_before,
                out.display(),
            );
            crate::say!(
                "horde-batch: requests: {} submit, {} check, {} status, {} cancel, {} download; 429s: {} rate limit, {} concurrency; {} transient errors; {} resubmits; {:.1} kudos",
                p.submits,
                p.checks,
                p.status_calls,
                p.cancels,
                p.downloads,
                p.rate_limited,
                p.concurrency_full,
                p.transient_errors,
                p.resubmits,
                p.kudos,
            );
            if !classes.is_empty() {
                let text: Vec<String> = classes
                    .iter()
                    .map(|(kind, count)| format!("{kind}: {count}"))
                    .collect();
                crate::say!("horde-batch: failures by class: {}", text.join(", "));
            }
            if p.images_gone > 0 {
                crate::say!(
                    "horde-batch: {} image(s) saved earlier were gone from the output folder and were made again",
                    p.images_gone
                );
            }
            if let Some(early) = early {
                crate::say!("horde-batch: {early}");
            }
        }
    }
}

fn new_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(1);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} images  {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(events: &[Event]) -> Progress {
        let mut progress = Progress::default();
        for event in events {
            progress.apply(event);
        }
        progress
    }

    #[test]
    fn requests_in_flight_are_listed_with_their_ids_while_followed() {
        let progress = folded(&[
            Event::Started {
                jobs: 2,
                images_wanted: 8,
            },
            Event::SubmitSent,
            Event::Following {
                key: "k/000000".into(),
                horde_id: "id-1".into(),
                images: 4,
            },
            Event::SubmitSent,
            Event::Following {
                key: "j/000000".into(),
                horde_id: "id-2".into(),
                images: 4,
            },
            Event::Released {
                key: "j/000000".into(),
            },
        ]);
        let status = progress.status();
        assert_eq!((status.requests_in_flight, status.images_in_flight), (1, 4));
        assert_eq!(status.in_flight[0].horde_id.as_deref(), Some("id-1"));
        assert_eq!(status.requests_by_state.get("submitted"), Some(&1));
        assert_eq!(progress.submits, 2);
    }

    #[test]
    fn the_summary_counts_and_the_status_agree_on_429s_and_failures() {
        let progress = folded(&[
            Event::CallFailed {
                class: FailureClass::RateLimited,
                seconds: 1,
            },
            Event::CallFailed {
                class: FailureClass::ConcurrencyFull,
                seconds: 2,
            },
            Event::CallFailed {
                class: FailureClass::Transient,
                seconds: 4,
            },
            Event::Failure(FailureKind::Censored),
            Event::Failure(FailureKind::Censored),
            Event::JobEnded { done: false },
        ]);
        let status = progress.status();
        assert_eq!(
            status.rate_limited_429s,
            progress.rate_limited + progress.concurrency_full
        );
        assert_eq!(status.rate_limited_429s, 2);
        assert_eq!(progress.transient_errors, 1);
        assert_eq!(
            status.waiting_seconds, 4,
            "the back-off in progress is visible"
        );
        assert_eq!(status.failures.get("censored"), Some(&2));
        assert_eq!(status.jobs_failed, 1);
    }

    #[test]
    fn images_saved_count_this_run_and_earlier_ones() {
        let mut progress = folded(&[
            Event::Started {
                jobs: 1,
                images_wanted: 10,
            },
            Event::SavedBefore { images: 4 },
            Event::ImageSaved {
                already_present: false,
            },
            Event::ImageSaved {
                already_present: true,
            },
            Event::Charged { kudos: 12.5 },
        ]);
        let status = progress.status();
        assert_eq!(status.images_saved, 5);
        assert_eq!(progress.images_already_present, 1);
        assert!((status.kudos_charged - 12.5).abs() < 1e-9);
        // One image in 10 s with 5 left: the ETA is from this run's observed throughput.
        progress.started = Instant::now() - Duration::from_secs(10);
        let eta = progress.status().eta_seconds;
        assert!((49..=51).contains(&eta), "{eta}");
    }
}

/// A job that failed and has not succeeded since (`failures`, the report page).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedJob {
    pub job_key: String,
    pub job: String,
    /// The latest failure's class and message.
    pub class: String,
    pub message: String,
    /// How many times it failed (runs that gave up on it).
    pub failures: u32,
    pub images_saved: u32,
    pub images_wanted: u32,
    /// When it last failed (RFC 3339).
    pub at: String,
}
