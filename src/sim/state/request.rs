//! The record of one image request as the simulated Horde keeps it: what
//! was asked, which workers may serve it, its images waiting, in progress
//! and generated, its faults, kudos and expiry, and the predicates the
//! counters read (done, retrieved, orphaned).
//!
//! Plain data with no rules of its own: it must not change itself. Submit,
//! jobs, status and the cleaner change it under the state lock.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;
use uuid::Uuid;

use super::Horde;

/// One image a worker generated for a request.
pub(super) struct Generation {
    pub(super) id: Uuid,
    pub(super) batch_index: u32,
    pub(super) worker: usize,
    pub(super) model: String,
    pub(super) censored: bool,
    /// The seed the worker was given for it, as the worker reports it.
    pub(super) seed: String,
    /// Listed in a status or DELETE answer (as a URL or as base64).
    pub(super) handed_out: bool,
}

/// Which workers may serve a request (`workers` / `worker_blacklist`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum WorkerFilter {
    Any,
    Only(Vec<usize>),
    Except(Vec<usize>),
}

impl WorkerFilter {
    pub(super) fn allows(&self, worker: usize) -> bool {
        match self {
            WorkerFilter::Any => true,
            WorkerFilter::Only(workers) => workers.contains(&worker),
            WorkerFilter::Except(workers) => !workers.contains(&worker),
        }
    }
}

/// An image request (`POST /v2/generate/async`) from submit until expiry.
pub(super) struct Request {
    pub(super) id: Uuid,
    pub(super) seq: u64,
    pub(super) owner: usize,
    pub(super) shared_key: Option<Uuid>,
    pub(super) prompt: String,
    pub(super) models: Vec<String>,
    /// The model workers generate with (none when no worker serves the request).
    pub(super) served_model: Option<String>,
    pub(super) nsfw: bool,
    pub(super) r2: bool,
    pub(super) shared: bool,
    pub(super) seed: String,
    /// The client sent the seed (else each job gets a random one).
    pub(super) client_seed: bool,
    /// `params.seed_variation`: each job popped after the first gets the
    /// previous job's seed plus this (docs/horde-api.md §9.1).
    pub(super) seed_variation: Option<u32>,
    /// Images the request asked for (`n`).
    pub(super) n: u32,
    /// It brought a source image (img2img, painting, remix).
    pub(super) has_source: bool,
    pub(super) width: u32,
    pub(super) height: u32,
    /// Megapixel-steps of one image (`width·height·steps / 10⁶`).
    pub(super) mps_per_image: f64,
    pub(super) workers: WorkerFilter,
    pub(super) waiting: VecDeque<u32>,
    pub(super) faults_per_image: HashMap<u32, u32>,
    pub(super) processing: u32,
    pub(super) generations: Vec<Generation>,
    pub(super) restarted: u32,
    pub(super) faulted_jobs: u32,
    pub(super) faulted: bool,
    pub(super) cancelled: bool,
    pub(super) kudos: f64,
    pub(super) per_image_kudos: f64,
    pub(super) upfront_hold: f64,
    pub(super) expiry: Instant,
    /// A status (or DELETE) call was answered while the request was done.
    pub(super) status_seen_done: bool,
}

impl Request {
    /// Faulted, or no image left waiting or in progress.
    pub(super) fn is_done(&self) -> bool {
        self.faulted || (self.waiting.is_empty() && self.processing == 0)
    }

    /// A status call answered while done, and every image generated so far
    /// was handed out (an image landing after that call undoes it).
    pub(super) fn is_retrieved(&self) -> bool {
        self.status_seen_done && self.generations.iter().all(|g| g.handed_out)
    }

    /// Not cancelled, with an image a client was never handed.
    pub(super) fn is_orphaned(&self) -> bool {
        !self.cancelled && self.generations.iter().any(|g| !g.handed_out)
    }
}

impl Horde {
    /// The live request with id `id` (none for a malformed or unknown id).
    pub(super) fn find(&self, id: &str) -> Option<&Request> {
        let uuid = Uuid::parse_str(id).ok()?;
        self.requests.get(&uuid)
    }
}
