//! Progress and status: what a run is doing, for people and for scripts.
//!
//! A reporter task folds the engine's events into one
//! [`RunStats`](crate::scheduler::RunStats) and, every few seconds, shows it
//! as live bars on a terminal, or as one JSON line on stderr otherwise; each
//! sample is also written to `<state>/status.json`, which `horde-batch status`
//! reads while the run holds the ledger's lock. The same fold gives the final
//! summary and the run's `Ending`. `status` without an active run computes
//! the same report from the ledger. Decides nothing, counts nothing itself.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::scheduler::{Ending, RunStats, Stamped};
use crate::store::{now_ms, RequestState, Store, StoreError};
use crate::ui::ProgressMode;

/// The file an active run keeps its latest progress in.
pub const STATUS_FILE: &str = "status.json";

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
    /// Jobs whose latest outcome is a failure (what `failures` lists) and that
    /// are not done since.
    pub jobs_failed: u64,
    /// Every image the manifest (or the shard) asks for is saved, and no
    /// alchemy form is still owed to one. Never true while a run is active.
    pub finished: bool,
    /// What the latest run did, as its summary said it; kept after it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// The alchemy forms of the batch's images, from the ledger's alchemy
    /// tree; absent when no form was ever asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alchemy: Option<crate::store::alchemy::AlchemyCounts>,
}

/// What one run did, from its events: the figures of its summary that the
/// ledger does not hold (429s, errors, resubmits), kept in `status.json`
/// after the run ends so that `status` shows them too.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LastRun {
    /// How it ended (`complete`, `jobs_failed`, `interrupted`, `max_runtime`,
    /// `max_kudos`, `aborted`).
    pub ending: String,
    /// Unix milliseconds when it ended.
    pub ended_ms: u64,
    pub images_saved: u64,
    pub jobs_done: u64,
    pub jobs_failed: u64,
    pub rate_limited_429s: u64,
    pub concurrency_429s: u64,
    pub transient_errors: u64,
    pub resubmits: u64,
    pub kudos_charged: f64,
}

impl LastRun {
    /// The figures of the run whose events folded into `stats`.
    pub fn of(stats: &RunStats) -> LastRun {
        let summary = stats.summary();
        LastRun {
            ending: stats.ending().name().to_owned(),
            ended_ms: now_ms(),
            images_saved: summary.images_saved_now,
            jobs_done: summary.jobs_done,
            jobs_failed: summary.jobs_failed,
            rate_limited_429s: stats.rate_limited,
            concurrency_429s: stats.concurrency_full,
            transient_errors: stats.transient_errors,
            resubmits: stats.resubmits,
            kudos_charged: stats.kudos,
        }
    }
}

impl StatusReport {
    /// The report of a batch no run holds: what is saved and on the Horde
    /// from its ledger, and which jobs failed from `failed` (the jobs whose
    /// latest outcome in `errors.jsonl`/`results.jsonl` is a failure, with
    /// their class: what `failures` lists). `jobs` is the manifest's plan:
    /// each job key with the images and request slots it needs. Records of
    /// other manifests' jobs (a shared state folder) are not counted.
    pub fn from_ledger(
        store: &Store,
        jobs: &std::collections::HashMap<String, PlannedJob>,
        failed: &[FailedJob],
    ) -> Result<Self, StoreError> {
        #[derive(Default)]
        struct Seen {
            saved: u64,
            done_slots: u32,
        }
        let mut report = StatusReport {
            updated_ms: now_ms(),
            images_wanted: jobs.values().map(|job| u64::from(job.images)).sum(),
            jobs: jobs.len() as u64,
            alchemy: store.alchemy_counts()?,
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
            // An image `reroll` set aside is not on disk: it is wanted again.
            let rerolled = record
                .images
                .iter()
                .filter(|(index, image)| record.is_rerolled(**index, &image.generation_id))
                .count();
            job.saved += record
                .images
                .values()
                .filter(|i| !i.file_name.is_empty())
                .count()
                .saturating_sub(rerolled) as u64;
            report.kudos_charged += record.kudos_charged;
            match &record.state {
                RequestState::Done if record.missing_indices().is_empty() && rerolled == 0 => {
                    job.done_slots += 1
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
        let mut done = std::collections::HashSet::new();
        for (job_key, job) in &seen {
            let planned = &jobs[*job_key];
            // A job whose `images` was lowered keeps its extra files; they are not wanted.
            report.images_saved += job.saved.min(u64::from(planned.images));
            if job.done_slots >= planned.slots && job.saved >= u64::from(planned.images) {
                done.insert(*job_key);
            }
        }
        report.jobs_done = done.len() as u64;
        for job in failed {
            if jobs.contains_key(&job.job_key) && !done.contains(job.job_key.as_str()) {
                report.jobs_failed += 1;
                *report.failures.entry(job.class.clone()).or_default() += 1;
            }
        }
        // Forms still owed to an image keep the batch unfinished.
        let forms_owed = report
            .alchemy
            .as_ref()
            .is_some_and(|alchemy| alchemy.forms_wanted > 0 || alchemy.requests_on_horde > 0);
        report.finished = report.images_saved >= report.images_wanted && !forms_owed;
        report.kudos_estimated_remaining = estimate(
            report.kudos_charged,
            report.images_saved,
            report.images_wanted.saturating_sub(report.images_saved),
        );
        Ok(report)
    }

    /// One line for logs and the terminal.
    pub fn line(&self) -> String {
        let alchemy = self.alchemy.as_ref().map_or_else(String::new, |alchemy| {
            format!(
                "; alchemy {}/{} images, {} forms to go",
                alchemy.images_done, alchemy.images, alchemy.forms_wanted
            )
        });
        format!(
            "{}/{} images, {} requests in flight ({} images), queue #{}, eta {}s, {:.0} kudos, {} 429s, {} failures{alchemy}",
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

impl StatusReport {
    /// A sample of a live run, from its events.
    pub fn live(stats: &RunStats) -> StatusReport {
        let saved = stats.images_saved_before + stats.images_saved;
        let left = stats.images_wanted.saturating_sub(saved);
        let now = now_ms();
        let elapsed = now.saturating_sub(stats.started_ms) as f64 / 1000.0;
        // Observed throughput: images saved by this run per second so far.
        let eta_seconds = if stats.images_saved > 0 && elapsed > 0.0 {
            (left as f64 / (stats.images_saved as f64 / elapsed)).round() as u64
        } else {
            0
        };
        let mut requests_by_state = BTreeMap::new();
        if !stats.in_flight.is_empty() {
            requests_by_state.insert("submitted".to_owned(), stats.in_flight.len() as u64);
        }
        StatusReport {
            active: true,
            pid: Some(std::process::id()),
            updated_ms: now,
            images_wanted: stats.images_wanted,
            images_saved: saved,
            requests_in_flight: stats.in_flight.len() as u64,
            images_in_flight: stats.in_flight.values().map(|f| u64::from(f.images)).sum(),
            requests_by_state,
            in_flight: stats
                .in_flight
                .iter()
                .map(|(key, flight)| InFlight {
                    key: key.clone(),
                    horde_id: Some(flight.horde_id.clone()),
                    state: "submitted".to_owned(),
                    age_seconds: now.saturating_sub(flight.since_ms) / 1000,
                })
                .collect(),
            failures: stats
                .failures
                .iter()
                .map(|(kind, count)| (kind.as_str().to_owned(), *count))
                .collect(),
            kudos_charged: stats.kudos,
            kudos_estimated_remaining: estimate(stats.kudos, stats.images_saved, left),
            queue_position: stats.queue_position,
            eta_seconds,
            rate_limited_429s: stats.rate_limited + stats.concurrency_full,
            waiting_seconds: stats.waiting_seconds,
            jobs: stats.jobs,
            jobs_done: stats.jobs_done,
            jobs_failed: stats.jobs_failed,
            finished: false,
            last_run: None,
            // The engine's events do not carry alchemy: the Reporter adds the pass's counts.
            alchemy: None,
        }
    }
}

/// Where one shard of a batch run in shards (`run --shard I/N`) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// A run holds its ledger now.
    Running,
    /// Every image it asks for is saved.
    Finished,
    /// It has a folder, no run holds it, and images are still wanted.
    Unfinished,
    /// It holds jobs but has no folder yet: no run of it ever started.
    Missing,
}

impl ShardState {
    pub fn name(self) -> &'static str {
        match self {
            ShardState::Running => "running",
            ShardState::Finished => "finished",
            ShardState::Unfinished => "unfinished",
            ShardState::Missing => "missing",
        }
    }
}

/// One shard in `status` over shards: its state and its own report (for a
/// missing shard, only what it wants).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// `I/N`, as `--shard` takes it.
    pub shard: String,
    pub index: u32,
    pub count: u32,
    pub state: ShardState,
    #[serde(flatten)]
    pub report: StatusReport,
}

/// `status` of a batch run in shards: the total in the top-level fields
/// (the same fields, with the same meaning, as one run's report, so scripts
/// reading `images_saved` read the batch's) and every shard under `shards`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardedStatus {
    #[serde(flatten)]
    pub total: StatusReport,
    pub shards: Vec<ShardStatus>,
}

impl ShardedStatus {
    /// The total of `shards`, each counted once: sums of what adds up, the
    /// longest of the waits, and the estimate made again from the sums. The
    /// batch is finished when every shard is (no shard missing, none running).
    pub fn of(shards: Vec<ShardStatus>) -> ShardedStatus {
        let mut total = StatusReport {
            updated_ms: now_ms(),
            ..StatusReport::default()
        };
        for part in &shards {
            let report = &part.report;
            total.active |= report.active;
            total.images_wanted += report.images_wanted;
            total.images_saved += report.images_saved;
            total.requests_in_flight += report.requests_in_flight;
            total.images_in_flight += report.images_in_flight;
            for (state, count) in &report.requests_by_state {
                *total.requests_by_state.entry(state.clone()).or_default() += count;
            }
            total.in_flight.extend(report.in_flight.iter().cloned());
            for (class, count) in &report.failures {
                *total.failures.entry(class.clone()).or_default() += count;
            }
            total.kudos_charged += report.kudos_charged;
            total.queue_position = total.queue_position.max(report.queue_position);
            total.eta_seconds = total.eta_seconds.max(report.eta_seconds);
            total.rate_limited_429s += report.rate_limited_429s;
            total.waiting_seconds = total.waiting_seconds.max(report.waiting_seconds);
            total.jobs += report.jobs;
            total.jobs_done += report.jobs_done;
            total.jobs_failed += report.jobs_failed;
            if let Some(alchemy) = &report.alchemy {
                let sum = total.alchemy.get_or_insert_with(Default::default);
                sum.images += alchemy.images;
                sum.images_done += alchemy.images_done;
                sum.forms_done += alchemy.forms_done;
                sum.forms_failed += alchemy.forms_failed;
                sum.forms_wanted += alchemy.forms_wanted;
                sum.requests_on_horde += alchemy.requests_on_horde;
                sum.lost_answers += alchemy.lost_answers;
                sum.kudos += alchemy.kudos;
            }
        }
        total.finished = shards.iter().all(|s| s.state == ShardState::Finished);
        total.kudos_estimated_remaining = estimate(
            total.kudos_charged,
            total.images_saved,
            total.images_wanted.saturating_sub(total.images_saved),
        );
        ShardedStatus { total, shards }
    }

    /// How many shards are in `state`.
    pub fn count(&self, state: ShardState) -> usize {
        self.shards.iter().filter(|s| s.state == state).count()
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
/// The alchemy pass's counts as it changes them (see `alchemy::Alchemy::live_counts`).
pub type LiveAlchemy = std::sync::Arc<parking_lot::Mutex<crate::store::alchemy::AlchemyCounts>>;

pub struct Reporter {
    task: tokio::task::JoinHandle<RunStats>,
    stop: tokio_util::sync::CancellationToken,
}

impl Reporter {
    /// Starts folding `events` and showing a sample every `interval`.
    pub fn start(
        mut events: mpsc::UnboundedReceiver<Stamped>,
        mode: ProgressMode,
        interval: Duration,
        state_dir: PathBuf,
        alchemy: Option<LiveAlchemy>,
    ) -> Self {
        let mode = match mode {
            // `-q` is errors only: no progress on stderr (status.json is still written).
            _ if crate::logging::messages() == crate::logging::Messages::Quiet => {
                ProgressMode::None
            }
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Json,
            other => other,
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut stats = RunStats::default();
            let bar = (mode == ProgressMode::Bars).then(new_bar);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let finished = tokio::select! {
                    Some(event) = events.recv() => {
                        stats.apply(&event);
                        continue;
                    }
                    _ = ticker.tick() => false,
                    () = token.cancelled() => true,
                };
                if finished {
                    // What the engine sent before it ended is part of the last sample.
                    while let Ok(event) = events.try_recv() {
                        stats.apply(&event);
                    }
                } else if !stats.planned {
                    // No sample before the plan's totals are known: it would say 0 of 0.
                    continue;
                }
                let mut report = StatusReport::live(&stats);
                report.active = !finished;
                report.alchemy = alchemy.as_ref().map(|live| live.lock().clone());
                // The final status file is the batch's, from the ledger: the
                // command writes it when the run is over.
                if !finished {
                    if let Err(error) = write_status_file(&state_dir, &report) {
                        tracing::debug!(%error, "cannot write the status file");
                    }
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
                        // A line a cron log keeps: the counts, not every request
                        // in flight (status.json lists those).
                        let line = StatusReport {
                            in_flight: Vec::new(),
                            ..report.clone()
                        };
                        if let Ok(line) = serde_json::to_string(&line) {
                            crate::say!("{line}");
                        }
                    }
                    _ => {}
                }
                if finished {
                    return stats;
                }
            }
        });
        Reporter { task, stop }
    }

    /// Emits the final sample, waits for the reporter to end, and returns what it folded.
    pub async fn finish(self) -> RunStats {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// The final summary on stderr: jobs, images, calls, failures by class,
/// each key's share when the run had several, and why the run ended early
/// if it did. Every figure and the ending come from the one fold, `stats`.
pub fn print_summary(stats: &RunStats, out: &Path) {
    let p = stats;
    let summary = stats.summary();
    let ending = &stats.ending();
    let mut classes: Vec<_> = p.failures.iter().collect();
    classes.sort_by_key(|(kind, _)| kind.as_str());
    let early = match ending {
        Ending::MaxRuntime | Ending::MaxKudos => Some(format!(
            "submitting stopped ({}); rerun the same command to resume",
            match ending {
                Ending::MaxRuntime => "--max-runtime reached",
                _ => "--max-kudos would be passed",
            }
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
                    "keys": summary.keys,
                    "ending": ending,
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
            for key in &summary.keys {
                crate::say!(
                    "horde-batch: key {}: {} submits, {} images, {:.1} kudos{}",
                    key.fingerprint,
                    key.submits,
                    key.images_saved,
                    key.kudos,
                    key.retired
                        .as_deref()
                        .map(|why| format!("; retired: {why}"))
                        .unwrap_or_default()
                );
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
    use crate::horde::FailureClass;
    use crate::scheduler::{Event, FailureKind};

    fn folded(events: Vec<Event>) -> RunStats {
        let stamped: Vec<Stamped> = events.into_iter().map(Stamped::now).collect();
        RunStats::folded(&stamped)
    }

    #[test]
    fn requests_in_flight_are_listed_with_their_ids_while_followed() {
        let stats = folded(vec![
            Event::Started {
                jobs: 2,
                images_wanted: 8,
                keys: vec![],
            },
            Event::SubmitSent { key: "k".into() },
            Event::Following {
                key: "k/000000".into(),
                horde_id: "id-1".into(),
                images: 4,
            },
            Event::SubmitSent { key: "k".into() },
            Event::Following {
                key: "j/000000".into(),
                horde_id: "id-2".into(),
                images: 4,
            },
            Event::Released {
                key: "j/000000".into(),
            },
        ]);
        let status = StatusReport::live(&stats);
        assert_eq!((status.requests_in_flight, status.images_in_flight), (1, 4));
        assert_eq!(status.in_flight[0].horde_id.as_deref(), Some("id-1"));
        assert_eq!(status.requests_by_state.get("submitted"), Some(&1));
        assert_eq!(stats.submits, 2);
    }

    #[test]
    fn the_summary_counts_and_the_status_agree_on_429s_and_failures() {
        let stats = folded(vec![
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
        let status = StatusReport::live(&stats);
        assert_eq!(
            status.rate_limited_429s,
            stats.rate_limited + stats.concurrency_full
        );
        assert_eq!(status.rate_limited_429s, 2);
        assert_eq!(stats.transient_errors, 1);
        assert_eq!(
            status.waiting_seconds, 4,
            "the back-off in progress is visible"
        );
        assert_eq!(status.failures.get("censored"), Some(&2));
        assert_eq!(status.jobs_failed, stats.summary().jobs_failed);
        assert_eq!(status.jobs_failed, 1);
    }

    #[test]
    fn images_saved_count_this_run_and_earlier_ones() {
        let mut stats = folded(vec![
            Event::Started {
                jobs: 1,
                images_wanted: 10,
                keys: vec![],
            },
            Event::SavedBefore { images: 4 },
            Event::ImageSaved {
                already_present: false,
                key: None,
            },
            Event::ImageSaved {
                already_present: true,
                key: None,
            },
            Event::Charged {
                kudos: 12.5,
                key: None,
            },
        ]);
        let status = StatusReport::live(&stats);
        assert_eq!(status.images_saved, 5);
        assert_eq!(stats.images_already_present, 1);
        assert!((status.kudos_charged - 12.5).abs() < 1e-9);
        // One image in 10 s with 5 left: the ETA is from this run's observed throughput.
        stats.started_ms = now_ms() - 10_000;
        let eta = StatusReport::live(&stats).eta_seconds;
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
