//! Planning: how a manifest's jobs become Horde requests.
//!
//! A job's images are split into request slots of `n` up to `max_n`, each slot
//! owning a fixed range of image indices, so a slot's files keep their names
//! across crashes and resumes. Seeds left to the Horde batch freely; exact
//! per-image seeds need one request per image, because the Horde gives a batched
//! request one seed. This module only computes; it does no I/O.

use serde::Serialize;

use crate::manifest::{CompiledManifest, Job, Seeds};

/// One request slot of a job: images `first_index .. first_index + n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Slot {
    pub slot: u32,
    pub first_index: u32,
    pub n: u32,
}

/// The request slots of `job` for a largest `n` of `max_n`.
pub fn slots(job: &Job, max_n: u32) -> impl Iterator<Item = Slot> {
    let per_request = if job.seeds == Seeds::Random {
        max_n.max(1)
    } else {
        1
    };
    let images = job.images;
    (0..images.div_ceil(per_request)).map(move |slot| {
        let first_index = slot * per_request;
        Slot {
            slot,
            first_index,
            n: per_request.min(images - first_index),
        }
    })
}

/// How many request slots `job` needs (without enumerating them).
pub fn slot_count(job: &Job, max_n: u32) -> u64 {
    let per_request = if job.seeds == Seeds::Random {
        max_n.max(1)
    } else {
        1
    };
    u64::from(job.images.div_ceil(per_request))
}

/// Totals of a plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub jobs: u64,
    pub requests: u64,
    pub images: u64,
}

/// What one manifest job expands to.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub name: String,
    pub combinations: u64,
    pub images_per_combination: u32,
    pub requests: u64,
    pub images: u64,
    pub seeds: &'static str,
}

/// The plan of a whole manifest.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub manifest: String,
    pub name: String,
    pub max_n: u32,
    pub totals: Totals,
    pub jobs: Vec<JobSummary>,
}

/// Expands every job once, streaming, and counts what would be sent.
pub fn summarize(compiled: &CompiledManifest) -> PlanSummary {
    let max_n = compiled.run.max_n;
    let mut jobs: Vec<JobSummary> = compiled
        .jobs
        .iter()
        .map(|job| JobSummary {
            name: job.name.to_string(),
            combinations: 0,
            images_per_combination: job.images,
            requests: 0,
            images: 0,
            seeds: match job.seeds {
                Seeds::Random => "random",
                Seeds::Derived => "derived",
                Seeds::List(_) => "list",
            },
        })
        .collect();
    let mut totals = Totals::default();
    let mut position_of = std::collections::HashMap::new();
    for (position, job) in compiled.jobs.iter().enumerate() {
        position_of.insert(job.index, position);
    }
    for job in compiled.jobs() {
        let requests = slot_count(&job, max_n);
        let summary = &mut jobs[position_of[&job.spec_index]];
        summary.combinations += 1;
        summary.requests += requests;
        summary.images += u64::from(job.images);
        totals.jobs += 1;
        totals.requests += requests;
        totals.images += u64::from(job.images);
    }
    PlanSummary {
        manifest: compiled.file.path.display().to_string(),
        name: compiled.name().to_owned(),
        max_n,
        totals,
        jobs,
    }
}
