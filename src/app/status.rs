//! `horde-batch status`: the state of a batch, from a live run's status file
//! or, when no run is active, from [`batch_report`]: the one function that
//! `status`, the final `status.json`, the report page and `failures` agree
//! through. A batch run in shards (`shard-I-of-N/` folders, no ledger of its
//! own) is shown shard by shard, each by the same function, with the total.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;

use super::config::Batch;
use super::AppError;
use crate::cli::StatusArgs;
use crate::plan::Shard;
use crate::progress::{LastRun, PlannedJob, ShardState, ShardStatus, ShardedStatus, StatusReport};
use crate::store::Store;
use crate::terminal::escaped;

/// `horde-batch status`.
pub fn status(args: &StatusArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    // Without --shard or --state, a batch with no ledger of its own but shard
    // folders was run in shards: show them all.
    let unsharded = batch.shard.is_some()
        || args.places.state.is_some()
        || batch.state_dir.join("ledger").exists();
    let found = if unsharded {
        Vec::new()
    } else {
        super::merge::shard_folders(&batch.out_dir)?
            .into_iter()
            .map(|(shard, _)| shard)
            .collect::<Vec<_>>()
    };
    if !found.is_empty() {
        let sharded = shards_status(&batch, &found)?;
        if args.json {
            print_json(&sharded)?;
        } else {
            print_shards(&sharded);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = batch_status(&batch)?;
    if args.json {
        print_json(&report)?;
    } else {
        match (report.active, report.pid) {
            (true, Some(pid)) => println!("a run is active (pid {pid})"),
            (true, None) => println!("a run is active"),
            _ => println!("no run is active"),
        }
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(value: &impl serde::Serialize) -> Result<(), AppError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| AppError::Stdout(std::io::Error::other(e)))?;
    println!("{text}");
    Ok(())
}

/// A report: its line, then its requests, failures and kudos.
fn print_report(report: &StatusReport) {
    println!("{}", report.line());
    // Names and ids below come from the ledger, a status file and the
    // Horde's answers: printed escaped.
    for (state, count) in &report.requests_by_state {
        println!("  {}: {count} request(s)", escaped(state));
    }
    for request in &report.in_flight {
        println!(
            "  in flight: {} {} ({}s)",
            escaped(&request.key),
            escaped(request.horde_id.as_deref().unwrap_or("(no id yet)")),
            request.age_seconds
        );
    }
    for (class, count) in &report.failures {
        println!("  failed ({}): {count}", escaped(class));
    }
    println!(
        "  kudos: {:.1} charged, about {:.1} to go",
        report.kudos_charged, report.kudos_estimated_remaining
    );
    if let Some(alchemy) = &report.alchemy {
        println!("  {}", super::alchemy::summary_line(alchemy));
    }
}

/// Every shard, one line each, then the total as one run's report.
fn print_shards(sharded: &ShardedStatus) {
    let count = sharded.shards.first().map_or(0, |s| s.count);
    let states = [
        ShardState::Running,
        ShardState::Finished,
        ShardState::Unfinished,
        ShardState::Missing,
    ]
    .map(|state| format!("{} {}", sharded.count(state), state.name()));
    println!(
        "a batch run in {count} shards: {} ({} hold jobs)",
        states.join(", "),
        sharded.shards.len()
    );
    for part in &sharded.shards {
        let report = &part.report;
        let state = match (part.state, report.pid) {
            (ShardState::Running, Some(pid)) => format!("running (pid {pid})"),
            (ShardState::Missing, _) => "missing (no folder yet)".to_owned(),
            (state, _) => state.name().to_owned(),
        };
        println!(
            "  shard {}: {state}, {}/{} images, {}/{} jobs done, {} failed, {:.0} kudos",
            part.shard,
            report.images_saved,
            report.images_wanted,
            report.jobs_done,
            report.jobs,
            report.jobs_failed,
            report.kudos_charged,
        );
    }
    print!("total: ");
    print_report(&sharded.total);
}

/// Every shard of a batch whose output folder holds the shard folders
/// `found`: each with a folder from its own ledger or live status file (as
/// `status --shard I/N` shows it), each that holds jobs but has no folder as
/// missing; and the total. The manifest is expanded once, for every shard.
fn shards_status(batch: &Batch, found: &[Shard]) -> Result<ShardedStatus, AppError> {
    let count = found.first().map_or(1, |shard| shard.count);
    if found.iter().any(|shard| shard.count != count) {
        return Err(AppError::Config(format!(
            "{} holds shards of different counts; give --shard I/N",
            batch.out_dir.display()
        )));
    }
    let mut planned = planned_by_shard(batch, count);
    let present: BTreeSet<u32> = found.iter().map(|shard| shard.index).collect();
    let indices: BTreeSet<u32> = present.iter().chain(planned.keys()).copied().collect();
    let mut shards = Vec::with_capacity(indices.len());
    for index in indices {
        let shard = Shard { index, count };
        let jobs = planned.remove(&index).unwrap_or_default();
        let (state, report) = if present.contains(&index) {
            let report = status_of(&batch.for_shard(shard, None), &jobs)?;
            let state = match (report.active, report.finished) {
                (true, _) => ShardState::Running,
                (false, true) => ShardState::Finished,
                (false, false) => ShardState::Unfinished,
            };
            (state, report)
        } else {
            (ShardState::Missing, planned_report(&jobs))
        };
        shards.push(ShardStatus {
            shard: format!("{index}/{count}"),
            index,
            count,
            state,
            report,
        });
    }
    Ok(ShardedStatus::of(shards))
}

/// The jobs of each shard of `count` that holds any, in one pass over the manifest.
fn planned_by_shard(batch: &Batch, count: u32) -> BTreeMap<u32, HashMap<String, PlannedJob>> {
    let max_n = batch.compiled.run.max_n;
    let mut by_shard: BTreeMap<u32, HashMap<String, PlannedJob>> = BTreeMap::new();
    for job in batch.compiled.jobs() {
        // Below count + 1 <= MAX_COUNT + 1: fits u32 (as Shard::includes decides).
        let index = (job.key.0 % u64::from(count)) as u32 + 1;
        let planned = PlannedJob {
            images: job.images,
            slots: crate::plan::slot_count(&job, max_n) as u32,
        };
        by_shard
            .entry(index)
            .or_default()
            .insert(job.key.to_string(), planned);
    }
    by_shard
}

/// What `jobs` want, before anything is done.
fn planned_report(jobs: &HashMap<String, PlannedJob>) -> StatusReport {
    StatusReport {
        images_wanted: jobs.values().map(|job| u64::from(job.images)).sum(),
        jobs: jobs.len() as u64,
        updated_ms: crate::store::now_ms(),
        ..StatusReport::default()
    }
}

/// The state of `batch`: from a live run's status file while a run holds the
/// ledger, else from the ledger (also for `report`).
pub(super) fn batch_status(batch: &Batch) -> Result<StatusReport, AppError> {
    status_of(batch, &planned_jobs(batch))
}

/// [`batch_status`], with the jobs of `batch` (of its shard) given.
fn status_of(batch: &Batch, jobs: &HashMap<String, PlannedJob>) -> Result<StatusReport, AppError> {
    let state_dir = &batch.state_dir;
    let report = if !state_dir.join("ledger").exists() {
        planned_report(jobs)
    } else {
        match Store::open(state_dir) {
            Ok(store) => {
                // The latest run's own figures (429s, errors) are in the
                // status file it left; the rest is the ledger's.
                let last_run =
                    crate::progress::read_status_file(state_dir).and_then(|r| r.last_run);
                report_of(batch, &store, last_run, jobs)?
            }
            Err(crate::store::StoreError::Locked { pid, .. }) => {
                // A run that has not written its first sample yet wants
                // what the plan says.
                let mut report = crate::progress::read_status_file(state_dir)
                    .unwrap_or_else(|| planned_report(jobs));
                report.active = true;
                report.pid = pid.or(report.pid);
                report
            }
            Err(other) => return Err(other.into()),
        }
    };
    Ok(report)
}

/// The state of `batch` (of its shard), the one source of its figures when no
/// run is active: what is saved and on the Horde from the ledger in `store`,
/// the failed jobs as `failures` lists them, and what the latest run did
/// (`last_run`, whose 429s the report shows).
pub(super) fn batch_report(
    batch: &Batch,
    store: &Store,
    last_run: Option<LastRun>,
) -> Result<StatusReport, AppError> {
    report_of(batch, store, last_run, &planned_jobs(batch))
}

/// [`batch_report`], with the jobs of `batch` (of its shard) given.
fn report_of(
    batch: &Batch,
    store: &Store,
    last_run: Option<LastRun>,
    jobs: &HashMap<String, PlannedJob>,
) -> Result<StatusReport, AppError> {
    let failed = super::failures::failed_jobs(batch)?;
    let mut report = StatusReport::from_ledger(store, jobs, &failed)?;
    if let Some(run) = &last_run {
        report.rate_limited_429s = run.rate_limited_429s + run.concurrency_429s;
    }
    report.last_run = last_run;
    Ok(report)
}

/// Every job of `batch` (of its shard) with the images and slots it wants.
fn planned_jobs(batch: &Batch) -> HashMap<String, PlannedJob> {
    let max_n = batch.compiled.run.max_n;
    batch
        .compiled
        .jobs()
        .filter(|job| batch.shard.is_none_or(|shard| shard.includes(job.key)))
        .map(|job| {
            let planned = PlannedJob {
                images: job.images,
                slots: crate::plan::slot_count(&job, max_n) as u32,
            };
            (job.key.to_string(), planned)
        })
        .collect()
}
