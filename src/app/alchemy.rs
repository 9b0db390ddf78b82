//! Alchemy in the commands: the settings `run` and `caption` give the pass,
//! the images a batch still owes forms (read from its ledger, so a resumed
//! run catches up on images saved before it was killed), and the lines that
//! report it — from the ledger's alchemy tree, as `status` reads it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::AppError;
use crate::alchemy::{AlchemyConfig, AlchemyEnd, Work};
use crate::cli::TuningArgs;
use crate::manifest::{AlchemySpec, CompiledManifest};
use crate::plan::Shard;
use crate::store::alchemy::AlchemyCounts;
use crate::store::Store;

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

/// The images the ledger in `store` says are saved for jobs with alchemy
/// (`specs`), or every saved image with `every`: what a run or `caption` owes
/// forms to. Read from the ledger, the one record of what is saved, so it
/// holds with `output.index: false` too; an image `reroll` set aside is not
/// there until it is made again.
pub(super) fn saved_images(
    store: &Store,
    specs: &HashMap<String, Arc<AlchemySpec>>,
    every: Option<&Arc<AlchemySpec>>,
) -> Result<Vec<Work>, AppError> {
    let mut work = Vec::new();
    for entry in store.iter() {
        let (key, record) = entry?;
        let spec = match every {
            Some(spec) => Arc::clone(spec),
            None => match specs.get(&key.job_key) {
                Some(spec) => Arc::clone(spec),
                None => continue,
            },
        };
        for (index, image) in &record.images {
            if image.file_name.is_empty() || record.is_rerolled(*index, &image.generation_id) {
                continue;
            }
            work.push(Work {
                source: image.file_name.clone(),
                spec: Arc::clone(&spec),
                fresh: false,
            });
        }
    }
    Ok(work)
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
            downloads = end.calls.downloads.load(Ordering::Relaxed),
            rate_limited_429s = end.calls.rate_limited.load(Ordering::Relaxed),
            too_many_prompts = end.calls.too_many_prompts.load(Ordering::Relaxed),
            urls_expired = end.calls.urls_expired.load(Ordering::Relaxed),
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
