//! Progress and status: what a run is doing, for people and for scripts.
//!
//! A reporter task samples the engine's counters every few seconds and shows
//! them as live bars on a terminal, or as one JSON line on stderr otherwise;
//! each sample is also written to `<state>/status.json`, which `horde-batch
//! status` reads while the run holds the ledger's lock. `status` without an
//! active run computes the same report from the ledger. Decides nothing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::scheduler::Engine;
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
    pub jobs: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    /// Set when the run has ended.
    pub finished: bool,
}

impl StatusReport {
    /// A sample of a live run.
    pub fn from_engine(engine: &Engine) -> Self {
        let s = &engine.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let saved = load(&s.images_saved_before) + load(&s.images_saved);
        let wanted = load(&s.images_wanted);
        let kudos = s.kudos();
        let failures = s
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        StatusReport {
            active: true,
            pid: Some(std::process::id()),
            updated_ms: now_ms(),
            images_wanted: wanted,
            images_saved: saved,
            requests_in_flight: load(&s.requests_in_flight),
            images_in_flight: load(&s.images_in_flight),
            requests_by_state: BTreeMap::new(),
            in_flight: Vec::new(),
            failures: failures
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), *v))
                .collect(),
            kudos_charged: kudos,
            kudos_estimated_remaining: estimate(
                kudos,
                load(&s.images_saved),
                wanted.saturating_sub(saved),
            ),
            queue_position: load(&s.queue_position),
            eta_seconds: load(&s.wait_time),
            rate_limited_429s: load(&s.rate_limited) + load(&s.concurrency_full),
            jobs: load(&s.jobs),
            jobs_done: load(&s.jobs_done),
            jobs_failed: load(&s.jobs_failed),
            finished: false,
        }
    }

    /// The report of a batch no run holds, from its ledger; `images_wanted` from the plan.
    pub fn from_ledger(store: &Store, images_wanted: u64) -> Result<Self, StoreError> {
        let mut report = StatusReport {
            updated_ms: now_ms(),
            images_wanted,
            ..StatusReport::default()
        };
        let now = now_ms();
        for entry in store.iter() {
            let (key, record) = entry?;
            *report
                .requests_by_state
                .entry(record.state.name().to_owned())
                .or_default() += 1;
            report.images_saved += record
                .images
                .values()
                .filter(|i| !i.file_name.is_empty())
                .count() as u64;
            report.kudos_charged += record.kudos_charged;
            match &record.state {
                RequestState::Failed { class, .. } => {
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
        report.kudos_estimated_remaining = estimate(
            report.kudos_charged,
            report.images_saved,
            images_wanted.saturating_sub(report.images_saved),
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

/// The running reporter; `finish` prints the last sample and stops it.
pub struct Reporter {
    task: tokio::task::JoinHandle<()>,
    stop: tokio_util::sync::CancellationToken,
}

impl Reporter {
    /// Starts sampling `engine` every `interval`.
    pub fn start(
        engine: Arc<Engine>,
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
            let bar = (mode == ProgressMode::Bars).then(new_bar);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let finished = tokio::select! {
                    _ = ticker.tick() => false,
                    () = token.cancelled() => true,
                };
                let mut report = StatusReport::from_engine(&engine);
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
                    break;
                }
            }
        });
        Reporter { task, stop }
    }

    /// Emits the final sample and waits for the reporter to end.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
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
