//! `horde-batch status`: the state of a batch, from a live run's status file
//! or, when no run is active, from [`batch_report`]: the one function that
//! `status`, the final `status.json`, the report page and `failures` agree
//! through.

use std::collections::HashMap;
use std::process::ExitCode;

use super::config::Batch;
use super::AppError;
use crate::cli::StatusArgs;
use crate::progress::{LastRun, PlannedJob, StatusReport};
use crate::store::Store;
use crate::terminal::escaped;

/// `horde-batch status`.
pub fn status(args: &StatusArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    let report = batch_status(&batch)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| AppError::Stdout(std::io::Error::other(e)))?
        );
    } else {
        match (report.active, report.pid) {
            (true, Some(pid)) => println!("a run is active (pid {pid})"),
            (true, None) => println!("a run is active"),
            _ => println!("no run is active"),
        }
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
    Ok(ExitCode::SUCCESS)
}

/// The state of `batch`: from a live run's status file while a run holds the
/// ledger, else from the ledger (also for `report`).
pub(super) fn batch_status(batch: &Batch) -> Result<StatusReport, AppError> {
    let state_dir = &batch.state_dir;
    let jobs = planned_jobs(batch);
    let report = if !state_dir.join("ledger").exists() {
        StatusReport {
            images_wanted: jobs.values().map(|job| u64::from(job.images)).sum(),
            jobs: jobs.len() as u64,
            updated_ms: crate::store::now_ms(),
            ..StatusReport::default()
        }
    } else {
        match Store::open(state_dir) {
            Ok(store) => {
                // The latest run's own figures (429s, errors) are in the
                // status file it left; the rest is the ledger's.
                let last_run =
                    crate::progress::read_status_file(state_dir).and_then(|r| r.last_run);
                batch_report(batch, &store, last_run)?
            }
            Err(crate::store::StoreError::Locked { pid, .. }) => {
                let mut report = crate::progress::read_status_file(state_dir).unwrap_or_default();
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
    let failed = super::failures::failed_jobs(batch)?;
    let mut report = StatusReport::from_ledger(store, &planned_jobs(batch), &failed)?;
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
