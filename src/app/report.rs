//! `horde-batch report` and the report written at the end of every run:
//! gathers the plan, the failed jobs and the batch's status, and hands them
//! to [`crate::gallery`], which owns the page and its grids. Works on
//! an output folder in any state, also while a run writes it.

use std::process::ExitCode;
use std::sync::Arc;

use super::config::Batch;
use super::AppError;
use crate::cli::ReportArgs;
use crate::gallery::{self, GridChoice, PlanJob, Previews, ReportInput, Written};
use crate::progress::StatusReport;

/// `horde-batch report`.
pub fn report(args: &ReportArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    let status = super::status::batch_status(&batch)?;
    let written = write(&batch, Some(status), None)?;
    println!("{}", written.page.display());
    crate::say!(
        "horde-batch: report of {} image(s) ({} grid(s), {} image(s) decoded) at {}",
        written.images,
        written.grids.len(),
        written.decoded,
        written.page.display()
    );
    if written.unreadable > 0 {
        crate::say!(
            "horde-batch: {} image(s) could not be read; their grid cells are grey",
            written.unreadable
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the report of `batch`'s output folder, with the `previews` a run
/// made as it saved its images. Blocking (file I/O, image coding).
pub(super) fn write(
    batch: &Batch,
    status: Option<StatusReport>,
    previews: Option<Arc<Previews>>,
) -> Result<Written, AppError> {
    let plan = batch
        .compiled
        .jobs()
        .filter(|job| batch.shard.is_none_or(|shard| shard.includes(job.key)))
        .map(|job| PlanJob {
            key: job.key.to_string(),
            name: job.name.to_string(),
            combination: job.combination,
            images: job.images,
            prompt: job.prompt.clone(),
            models: job.models.to_vec(),
            params: (*job.params).clone(),
            labels: job.labels.clone(),
        })
        .collect();
    let failures = super::failures::failed_jobs(batch)?;
    let grids = batch
        .compiled
        .jobs
        .iter()
        .map(|job| {
            let choice = match job.grid_axes() {
                Some((x, y)) => GridChoice::Axes {
                    x: x.to_owned(),
                    y: y.map(str::to_owned),
                },
                None if job.grid_off() => GridChoice::Off,
                None => GridChoice::Auto,
            };
            (job.name.to_string(), choice)
        })
        .collect();
    let input = ReportInput {
        manifest: batch.compiled.file.path.display().to_string(),
        title: batch.compiled.name().to_owned(),
        status,
        plan,
        failures,
        caption_column: batch.compiled.output.caption_column.clone(),
        grids,
        previews,
    };
    let written = gallery::write_report(&batch.out_dir, &input)?;
    tracing::debug!(
        images = written.images,
        decoded = written.decoded,
        grids = written.grids.len(),
        "report written"
    );
    Ok(written)
}
