//! The simulated Horde's memory — users, shared keys, requests, the image
//! queue, the R2 object store and the counters — and every rule that
//! changes it. This file owns the [`Horde`] itself, its settings and its
//! construction; each rule lives in its own module:
//!
//! - `submit`: the checks of `POST /v2/generate/async`, in the server's order,
//!   and creating the request;
//! - `kudos`: the price, the upfront rule and the debit;
//! - `users` and `shared_keys`: who a key acts as, and their endpoints;
//! - `request`: the request record; `status`: check, status and cancel;
//! - `jobs`: worker pickup and completion; `catalog`: what the workers
//!   advertise; `r2`: the image store and its signed URLs;
//! - `alchemy`: interrogation requests (their submit, forms, alchemists'
//!   work, costs and result URLs);
//! - `cleaner`: faults, expiry and pruning; `counters`: `/sim/stats`;
//! - `error`: the error answers.
//!
//! Rule: the simulator is never kinder than the real server; a check copied
//! from it keeps its order, status, `rc` and message.
//! Everything here is synchronous and runs under one mutex held for
//! microseconds; it must not await, sleep or do I/O. HTTP shapes belong to
//! `routes`, timing to `workers`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::config::{LatencySpec, SimConfig};
use super::det::Det;
use super::stats::SimStats;

mod alchemy;
mod busy;
mod catalog;
mod cleaner;
mod counters;
mod error;
mod jobs;
mod kudos;
mod r2;
mod request;
mod shared_keys;
mod status;
mod submit;
mod users;

use catalog::{simulated_workers, WorkerInfo};
use error::invalid_api_key;
use r2::R2Object;
use request::{Generation, Request, WorkerFilter};
use shared_keys::SharedKey;
use users::{registered_users, Caller, User};

pub(crate) use alchemy::{AlchemyJob, AlchemyOutcome};
pub(crate) use error::ApiError;
pub(crate) use submit::SubmitOutcome;

/// The anonymous API key (ten zeros), always known.
pub(crate) const ANON_API_KEY: &str = "0000000000";

/// Settings fixed at start.
pub(crate) struct Settings {
    pub det: Det,
    pub workers: usize,
    pub latency: LatencySpec,
    pub fault_rate: f64,
    pub censor_rate: f64,
    pub served_models: Vec<String>,
    pub expiry: Duration,
    pub r2_ttl: Duration,
    /// Megapixel-steps per second each worker advertises (for `wait_time`).
    pub worker_speed_mps: f64,
    /// How long a `find_user` answer is served from the cache.
    pub find_user_cache: Duration,
    /// Other clients' requests put on each user's key at its first submit.
    pub busy_key: u32,
    /// The workers take no source images (`--no-img2img-workers`).
    pub no_img2img_workers: bool,
    /// `http://127.0.0.1:P/`, for R2 URLs.
    pub origin: String,
}

/// Everything the simulated server knows.
pub(crate) struct Horde {
    pub settings: Arc<Settings>,
    users: Vec<User>,
    keys: HashMap<String, usize>,
    shared_keys: HashMap<Uuid, SharedKey>,
    requests: HashMap<Uuid, Request>,
    /// Requests with waiting images a worker can serve, oldest first.
    queue: BTreeMap<u64, Uuid>,
    r2: HashMap<Uuid, R2Object>,
    workers: Vec<WorkerInfo>,
    next_seq: u64,
    next_shared_key: u64,
    stats: SimStats,
    /// `find_user` answers by API key, with the time they were made.
    find_user_cache: HashMap<String, (Instant, Value)>,
    /// Expired requests that had been neither retrieved nor cancelled.
    expired_never_retrieved: u64,
    /// Expired requests that had been retrieved.
    expired_retrieved: u64,
    /// Expired requests that were orphaned (see `SimStats::requests_orphaned`).
    expired_orphaned: u64,
    /// Arrival numbers of the other users' images waiting now (`--background-load`).
    background: BTreeSet<u64>,
    /// Other users' images the workers made.
    background_served: u64,
    /// Users whose key was revoked (`POST /sim/revoke`).
    revoked: Vec<usize>,
    /// Interrogation requests, their alchemists and results.
    alchemy: alchemy::Alchemy,
}

impl Horde {
    /// A fresh Horde for `config`, drawing every id and outcome from `seed`;
    /// `origin` is the server's own address, for R2 URLs.
    pub(crate) fn new(config: &SimConfig, seed: u64, origin: String) -> Self {
        let det = Det::new(seed);
        let settings = Arc::new(Settings {
            det,
            workers: config.workers,
            latency: config.latency,
            fault_rate: config.fault_rate,
            censor_rate: config.censor_rate,
            served_models: config
                .models
                .iter()
                .map(|model| model.trim().to_owned())
                .collect(),
            expiry: config.expiry,
            r2_ttl: config.r2_ttl,
            worker_speed_mps: config.worker_speed_mps,
            find_user_cache: config.find_user_cache,
            busy_key: config.busy_key,
            no_img2img_workers: config.no_img2img_workers,
            origin,
        });
        let (users, keys) = registered_users(config);
        let workers = simulated_workers(det, config.workers);
        // Other users' images are already queued when ours arrive.
        let background: BTreeSet<u64> = (0..u64::from(config.background_load)).collect();
        Self {
            settings,
            users,
            keys,
            shared_keys: HashMap::new(),
            requests: HashMap::new(),
            queue: BTreeMap::new(),
            r2: HashMap::new(),
            workers,
            next_seq: background.len() as u64,
            next_shared_key: 0,
            stats: SimStats::default(),
            find_user_cache: HashMap::new(),
            expired_never_retrieved: 0,
            expired_retrieved: 0,
            expired_orphaned: 0,
            background,
            background_served: 0,
            revoked: Vec::new(),
            alchemy: alchemy::Alchemy::new(config, det),
        }
    }
}
