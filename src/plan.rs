//! Planning: how a manifest's jobs become Horde requests.
//!
//! A job's images are split into request slots of `n` up to `max_n`, each slot
//! owning a fixed range of image indices, so a slot's files keep their names
//! across crashes and resumes. Seeds left to the Horde batch freely; exact
//! per-image seeds need one request per image, because the Horde gives a batched
//! request one seed. On resume, [`resume_slot`] decides from a slot's ledger
//! record what it needs (skip, follow, look for a lost submit, submit). This
//! module only computes; it does no I/O.

use serde::Serialize;

use crate::manifest::{CompiledManifest, Job, Seeds};
use crate::store::{RequestRecord, RequestState};

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

/// What a slot needs, given what the ledger says about it: the resume diff.
#[derive(Debug, Clone, PartialEq)]
pub enum SlotPlan {
    /// Every image was saved by an earlier run: nothing to do.
    Done { files: Vec<String>, kudos: f64 },
    /// The Horde holds its request: follow it, not pay again. Its `n` images
    /// count against the in-flight budget from the start.
    Follow { record: RequestRecord, n: u32 },
    /// An earlier run sent its submit and never recorded the answer: look for
    /// that request before anything else is submitted.
    FindLost { record: RequestRecord },
    /// Submit for its missing images (`images` of them); `record` holds what
    /// an earlier attempt saved, if any.
    Submit {
        record: Option<RequestRecord>,
        images: u32,
    },
}

/// Why a job cannot be planned against the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeError {
    /// `results.jsonl` says the job finished, yet the ledger has never heard of
    /// it: the ledger is stale (restored, truncated) and would redo paid work.
    StaleLedger,
}

/// The resume diff of one slot: `record` is what the ledger holds for it,
/// `has_result` whether the output folder records its job as finished.
pub fn resume_slot(
    slot: Slot,
    record: Option<RequestRecord>,
    has_result: bool,
) -> Result<SlotPlan, ResumeError> {
    let Some(mut record) = record else {
        if slot.slot == 0 && has_result {
            return Err(ResumeError::StaleLedger);
        }
        return Ok(SlotPlan::Submit {
            record: None,
            images: slot.n,
        });
    };
    if record.first_index == slot.first_index && record.n < slot.n {
        // The job asks for more images than when this slot was recorded: the
        // slot grows, and only the new indices are asked for.
        record.n = slot.n;
    }
    let missing = record.missing_indices().len() as u32;
    Ok(match record.state {
        RequestState::Submitted { n, .. } => SlotPlan::Follow { record, n },
        RequestState::Submitting { .. } => SlotPlan::FindLost { record },
        // Not only `Done`: a cancel's answer may have brought every image.
        _ if missing == 0 => SlotPlan::Done {
            files: record.file_names(),
            kudos: record.kudos_charged,
        },
        _ => SlotPlan::Submit {
            record: Some(record),
            images: missing,
        },
    })
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use crate::store::{RequestKey, SavedImage};

    const SLOT: Slot = Slot {
        slot: 0,
        first_index: 0,
        n: 4,
    };

    fn record(n: u32, saved: u32) -> RequestRecord {
        let mut record = RequestRecord::first_attempt(&RequestKey::new("job", 0), 0, n, 1);
        for index in 0..saved {
            let image = SavedImage {
                generation_id: format!("g{index}"),
                file_name: format!("f{index}"),
                censored: false,
            };
            record.save_image(index, image, 2);
        }
        record
    }

    fn in_state(mut record: RequestRecord, state: RequestState) -> RequestRecord {
        record.transition(state, 3);
        record
    }

    #[test]
    fn a_slot_the_ledger_never_saw_is_submitted() {
        assert_eq!(
            resume_slot(SLOT, None, false),
            Ok(SlotPlan::Submit {
                record: None,
                images: 4
            })
        );
    }

    #[test]
    fn a_finished_job_the_ledger_never_saw_means_a_stale_ledger() {
        assert_eq!(resume_slot(SLOT, None, true), Err(ResumeError::StaleLedger));
        let later = Slot { slot: 1, ..SLOT };
        assert!(matches!(
            resume_slot(later, None, true),
            Ok(SlotPlan::Submit { .. })
        ));
    }

    #[test]
    fn a_done_slot_is_skipped_with_its_files() {
        let done = in_state(record(4, 4), RequestState::Done);
        let Ok(SlotPlan::Done { files, .. }) = resume_slot(SLOT, Some(done), true) else {
            panic!("a done slot is skipped")
        };
        assert_eq!(files, ["f0", "f1", "f2", "f3"]);
    }

    #[test]
    fn a_cancelled_slot_whose_cancel_brought_every_image_is_done() {
        let cancelled = in_state(
            record(4, 4),
            RequestState::Cancelled {
                horde_id: "h".into(),
                cancelled_ms: 3,
            },
        );
        assert!(
            matches!(
                resume_slot(SLOT, Some(cancelled), true),
                Ok(SlotPlan::Done { .. })
            ),
            "nothing is missing: there is nothing to submit"
        );
        let short = in_state(
            record(4, 3),
            RequestState::Cancelled {
                horde_id: "h".into(),
                cancelled_ms: 3,
            },
        );
        assert!(matches!(
            resume_slot(SLOT, Some(short), true),
            Ok(SlotPlan::Submit { images: 1, .. })
        ));
    }

    #[test]
    fn a_done_slot_whose_job_grew_asks_for_the_new_images_only() {
        let done = in_state(record(2, 2), RequestState::Done);
        let Ok(SlotPlan::Submit { record, images }) = resume_slot(SLOT, Some(done), false) else {
            panic!("a grown slot is submitted")
        };
        assert_eq!(images, 2);
        assert_eq!(record.map(|r| r.missing_indices()), Some(vec![2, 3]));
    }

    #[test]
    fn a_request_on_the_horde_is_followed() {
        let submitted = in_state(
            record(4, 1),
            RequestState::Submitted {
                horde_id: "id".into(),
                n: 3,
                submitted_ms: 2,
            },
        );
        assert!(matches!(
            resume_slot(SLOT, Some(submitted), false),
            Ok(SlotPlan::Follow { n: 3, .. })
        ));
    }

    #[test]
    fn a_submit_without_its_answer_is_looked_for() {
        // `first_attempt` leaves the record `Submitting`, as a kill after the intent does.
        assert!(matches!(
            resume_slot(SLOT, Some(record(4, 0)), false),
            Ok(SlotPlan::FindLost { .. })
        ));
    }

    #[test]
    fn failed_and_cancelled_slots_are_submitted_for_their_missing_images() {
        for state in [
            RequestState::Failed {
                class: "transient".into(),
                message: "m".into(),
            },
            RequestState::Cancelled {
                horde_id: "id".into(),
                cancelled_ms: 3,
            },
        ] {
            let stopped = in_state(record(4, 3), state);
            assert!(matches!(
                resume_slot(SLOT, Some(stopped), false),
                Ok(SlotPlan::Submit { images: 1, .. })
            ));
        }
    }
}

/// One of N disjoint parts of a manifest's jobs (`--shard I/N`, I from 1).
/// A job belongs to the shard its key falls in, so shards stay disjoint and
/// stable when the manifest is edited (a job keeps its key, hence its shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// From 1 to `count`.
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Whether the job with this key is this shard's.
    pub fn includes(&self, key: crate::manifest::JobKey) -> bool {
        key.0 % u64::from(self.count) == u64::from(self.index - 1)
    }

    /// The folder (under the output directory) this shard writes to.
    pub fn folder(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// Reads a folder name written by [`Shard::folder`].
    pub fn from_folder(name: &str) -> Option<Shard> {
        let (index, count) = name.strip_prefix("shard-")?.split_once("-of-")?;
        format!("{index}/{count}").parse().ok()
    }
}

impl Shard {
    /// The most shards a batch is split into. Each shard is a run of its own
    /// (a host, a pod) with its own folder and ledger, so a real split is a few
    /// to a few hundred; a count past this is a typo, and `merge` reads one
    /// folder per shard. The number of jobs, the natural bound, is not known
    /// when the command line is read.
    pub const MAX_COUNT: u32 = 10_000;
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not I/N with 1 <= I <= N (e.g. 2/5)");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        if count > u64::from(Shard::MAX_COUNT) {
            return Err(format!(
                "`{text}`: at most {} shards (N in I/N); each shard is a run of its own",
                Shard::MAX_COUNT
            ));
        }
        let count = count as u32; // At most MAX_COUNT, checked above.
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod shard_tests {
    use super::*;
    use crate::manifest::JobKey;

    #[test]
    fn every_job_is_in_exactly_one_shard() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for key in (0..1000u64).map(|k| JobKey(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))) {
            assert_eq!(shards.iter().filter(|s| s.includes(key)).count(), 1);
        }
    }

    #[test]
    fn shards_parse_and_name_their_folders() {
        let shard: Shard = "2/5".parse().unwrap();
        assert_eq!(shard.folder(), "shard-2-of-5");
        assert_eq!(Shard::from_folder("shard-2-of-5"), Some(shard));
        for bad in [
            "0/3",
            "4/3",
            "1/0",
            "x/3",
            "3",
            "1/3/4",
            "1/10001",
            "1/999999999",
        ] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert!("10000/10000".parse::<Shard>().is_ok());
        assert_eq!(Shard::from_folder("shard-1-of-999999999"), None);
    }
}
