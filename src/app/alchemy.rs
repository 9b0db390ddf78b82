//! Alchemy in the commands: the settings `run` and `caption` give the pass,
//! the images a batch still owes forms (read from its index, so a resumed
//! run catches up on images saved before it was killed), and the lines that
//! report it — from the ledger's alchemy tree, as `status` reads it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::AppError;
use crate::alchemy::{AlchemyConfig, AlchemyEnd, Work};
use crate::cli::TuningArgs;
use crate::manifest::{AlchemySpec, CompiledManifest};
use crate::plan::Shard;
use crate::store::alchemy::AlchemyCounts;

/// The pass's settings: the defaults, with the hidden tuning flags applied.
pub(super) fn config(tuning: &TuningArgs, detach_on_stop: bool) -> AlchemyConfig {
    let engine = tuning.resolve();
    let mut config = AlchemyConfig {
        poll_floor: engine.poll_floor,
        poll_cap: engine.poll_cap,
        retry_base: engine.policy.backoff_base,
        max_wait: engine.policy.max_wait,
        cancel_timeout: engine.cancel_timeout,
        detach_on_stop,
        // As for jobs, a plain rerun asks again for what failed.
        retry_failed: true,
        ..AlchemyConfig::default()
    };
    if let Some(interval) = tuning.alchemy_submit_interval {
        config.submit_interval = interval;
    }
    if let Some(form_time) = tuning.alchemy_form_time {
        config.form_time = form_time;
    }
    if let Some(stale_after) = tuning.alchemy_stale_after {
        config.stale_after = stale_after;
    }
    config
}

/// The `alchemy:` of every job of `compiled` (of `shard`) that has one, by job key.
pub(super) fn specs_by_job(
    compiled: &CompiledManifest,
    shard: Option<Shard>,
) -> HashMap<String, Arc<AlchemySpec>> {
    compiled
        .jobs()
        .filter(|job| shard.is_none_or(|shard| shard.includes(job.key)))
        .filter_map(|job| job.alchemy.clone().map(|spec| (job.key.to_string(), spec)))
        .collect()
}

/// One row of an index, as far as alchemy reads it.
#[derive(Deserialize)]
struct IndexRow {
    file_name: String,
    #[serde(default)]
    job_key: Option<String>,
    #[serde(default)]
    alchemy_of: Option<String>,
}

/// The images of the index at `index` whose job asks for alchemy (`specs`),
/// or every image with `every` when it is given; post-processed images never.
/// A missing index has none; a line that is not a row is skipped.
pub(super) fn indexed_images(
    index: &Path,
    specs: &HashMap<String, Arc<AlchemySpec>>,
    every: Option<&Arc<AlchemySpec>>,
) -> Result<Vec<Work>, AppError> {
    let file = match std::fs::File::open(index) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(AppError::Config(format!(
                "cannot read {}: {error}",
                index.display()
            )))
        }
    };
    let mut work = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|error| {
            AppError::Config(format!("cannot read {}: {error}", index.display()))
        })?;
        let Ok(row) = serde_json::from_str::<IndexRow>(&line) else {
            continue;
        };
        if row.alchemy_of.is_some() {
            continue;
        }
        let spec = match every {
            Some(spec) => Some(Arc::clone(spec)),
            None => row.job_key.as_ref().and_then(|key| specs.get(key).cloned()),
        };
        if let Some(spec) = spec {
            work.push(Work {
                source: row.file_name,
                spec,
                fresh: false,
            });
        }
    }
    Ok(work)
}

/// The index a batch's alchemy columns go to.
pub(super) fn index_path(out_dir: &Path, shard: Option<Shard>) -> PathBuf {
    out_dir.join(match shard {
        Some(_) => crate::output::SHARD_INDEX_FILE,
        None => crate::output::INDEX_FILE,
    })
}

/// The summary's alchemy line (text) or fields (JSON messages).
pub(super) fn print_summary(counts: &AlchemyCounts, end: &AlchemyEnd) {
    let calls = end.calls.api_calls();
    match crate::logging::messages() {
        crate::logging::Messages::Quiet => {}
        crate::logging::Messages::Json => tracing::info!(
            images = counts.images,
            images_done = counts.images_done,
            forms_done = counts.forms_done,
            forms_failed = counts.forms_failed,
            forms_wanted = counts.forms_wanted,
            kudos = counts.kudos,
            lost_answers = counts.lost_answers,
            api_calls = calls,
            "alchemy summary"
        ),
        crate::logging::Messages::Text => {
            crate::say!("{}", summary_line(counts));
            if counts.lost_answers > 0 {
                crate::say!(
                    "  {} alchemy submit(s) lost their answer and were sent again: the Horde may have charged those forms twice",
                    counts.lost_answers
                );
            }
        }
    }
}

/// One line of what the alchemy tree holds (also `status`'s).
pub(super) fn summary_line(counts: &AlchemyCounts) -> String {
    format!(
        "alchemy: {}/{} images done, {} forms delivered, {} failed, {} to go; {:.0} kudos",
        counts.images_done,
        counts.images,
        counts.forms_done,
        counts.forms_failed,
        counts.forms_wanted,
        counts.kudos
    )
}

/// The exit code a run or `caption` ends with once its alchemy is counted:
/// `code` unless it is success and some form failed or is still owed.
pub(super) fn exit_code(code: u8, counts: Option<&AlchemyCounts>, failed: bool) -> u8 {
    let owed = counts.is_some_and(|c| c.forms_failed > 0 || c.forms_wanted > 0);
    if code == crate::exit::SUCCESS && (owed || failed) {
        crate::exit::JOBS_FAILED
    } else {
        code
    }
}
