//! `horde-batch failures`: the jobs whose latest outcome is a failure, from
//! `errors.jsonl` (every failure) and `results.jsonl` (every success), and the
//! set `run --retry-failed` runs.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::ExitCode;

use super::config::Batch;
use super::AppError;
use crate::cli::FailuresArgs;
use crate::output::{JobError, JobResult, ERRORS_FILE, RESULTS_FILE};
use crate::terminal::escaped;

pub use crate::progress::FailedJob;

/// The jobs of `batch` whose latest outcome is a failure, in the order they last failed.
pub(super) fn failed_jobs(batch: &Batch) -> Result<Vec<FailedJob>, AppError> {
    let read = |name: &str| -> Result<String, AppError> {
        match std::fs::read_to_string(batch.out_dir.join(name)) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(AppError::Config(format!("cannot read {name}: {e}"))),
        }
    };
    let succeeded: HashSet<String> = read(RESULTS_FILE)?
        .lines()
        .filter_map(|line| serde_json::from_str::<JobResult>(line).ok())
        .map(|result| result.job_key)
        .collect();
    let mut failed: BTreeMap<String, FailedJob> = BTreeMap::new();
    for error in read(ERRORS_FILE)?
        .lines()
        .filter_map(|line| serde_json::from_str::<JobError>(line).ok())
        .filter(|error| !succeeded.contains(&error.job_key))
    {
        let times = failed.get(&error.job_key).map_or(0, |f| f.failures);
        failed.insert(
            error.job_key.clone(),
            FailedJob {
                job_key: error.job_key,
                job: error.job,
                class: error.class,
                message: error.message,
                failures: times + 1,
                images_saved: error.images_saved,
                images_wanted: error.images_wanted,
                at: error.at,
            },
        );
    }
    let mut jobs: Vec<FailedJob> = failed.into_values().collect();
    jobs.sort_by(|a, b| a.at.cmp(&b.at));
    Ok(jobs)
}

/// `horde-batch failures`.
pub fn failures(args: &FailuresArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    let jobs = failed_jobs(&batch)?;
    let mut out = std::io::stdout().lock();
    let write = |result: std::io::Result<()>| match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(AppError::Stdout(e)),
        _ => Ok(()),
    };
    for job in &jobs {
        if args.json {
            let line = serde_json::to_string(job).map_err(|e| AppError::Stdout(e.into()))?;
            write(writeln!(out, "{line}"))?;
        } else {
            write(writeln!(
                out,
                "{} {} ({} of {} images): {} — {} (failed {} time(s), last at {})",
                escaped(&job.job_key),
                escaped(&job.job),
                job.images_saved,
                job.images_wanted,
                escaped(&job.class),
                escaped(&job.message),
                job.failures,
                escaped(&job.at)
            ))?;
        }
    }
    if !args.json {
        write(writeln!(
            out,
            "{} failed job(s); `horde-batch run --retry-failed` retries only them",
            jobs.len()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
