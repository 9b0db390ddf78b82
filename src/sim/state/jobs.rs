//! Work for the simulated workers: handing out the oldest image a worker may
//! serve (ours and `--background-load` images of other users, in arrival
//! order), and landing the outcome — a fault re-queued or dropped, or a
//! finished image uploaded to R2 and charged.
//!
//! Each job's latency, fault and censorship are drawn from the seed when it
//! is handed out, so a run is reproducible. It must not sleep or render
//! under the lock: `sim::workers` waits out the latency and calls
//! [`Job::render`] outside it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::super::det::Part;
use super::super::images;
use super::{Generation, Horde, Request, Settings};

/// Faulted attempts after which an image is dropped instead of re-queued.
const MAX_IMAGE_FAULTS: u32 = 2;

/// One image handed to a worker, with its outcome already drawn from the
/// seed (so the worker can draw the image outside the lock).
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub request: Uuid,
    pub batch_index: u32,
    pub attempt: u32,
    pub worker: usize,
    pub latency: Duration,
    /// The attempt faults instead of delivering an image.
    pub fault: bool,
    pub censored: bool,
    pub prompt: String,
    /// The seed in the job's payload: the image is drawn from it, and the
    /// generation reports it (so tests can draw the image again from a sidecar).
    pub seed: String,
    pub width: u32,
    pub height: u32,
    /// An image of another user (`--background-load`): it only keeps the worker busy.
    pub background: bool,
}

impl Job {
    /// The WebP a successful attempt uploads (none for a fault). Pure CPU work:
    /// callers run it outside the state lock.
    pub(crate) fn render(&self) -> Option<Vec<u8>> {
        if self.fault || self.background {
            return None;
        }
        let pixels = if self.censored {
            images::censored_pixels_sized(self.width, self.height)
        } else {
            images::render_pixels_sized(
                &self.prompt,
                &self.seed,
                self.batch_index,
                self.width,
                self.height,
            )
        };
        Some(images::encode_webp(&pixels, self.width, self.height))
    }
}

/// The seed the server puts in the payload of image `batch_index` of
/// `request`, on its `attempt`-th try (`get_job_payload`): the client's seed
/// plus `seed_variation` for every job popped before it (shifted right by 32
/// bits while it is 2³² or more, as the server does); without a client seed,
/// a fresh random one per job. The server counts pops in the order workers
/// take them; here a job's place is its index, and a faulted image's retry
/// comes after the request's other images, so a seeded run repeats exactly.
fn job_seed(request: &Request, settings: &Settings, batch_index: u32, attempt: u32) -> String {
    let n = request.n;
    let place = u64::from(batch_index) + u64::from(attempt) * u64::from(n);
    if !request.client_seed {
        let parts = [Part::Id(request.id), Part::Num(place)];
        return (settings.det.hash("job seed", &parts) % (1 << 32)).to_string();
    }
    let mut seed = seed_to_int(&request.seed);
    if let Some(variation) = request.seed_variation {
        seed += u64::from(variation) * place;
        while seed >= 1 << 32 {
            seed >>= 32;
        }
    }
    seed.to_string()
}

/// The server's `seed_to_int`: digits as a number, any other text as its
/// little-endian bytes; shifted right by 32 bits while 2³² or more.
fn seed_to_int(seed: &str) -> u64 {
    let mut n: u128 = if !seed.is_empty() && seed.bytes().all(|b| b.is_ascii_digit()) {
        seed.parse().unwrap_or(u128::MAX)
    } else {
        seed.bytes()
            .take(16)
            .rev()
            .fold(0u128, |n, b| (n << 8) | u128::from(b))
    };
    while n >= 1 << 32 {
        n >>= 32;
    }
    n as u64
}

impl Horde {
    /// Hands the oldest waiting image `worker` may serve to it.
    pub(crate) fn pop_job(&mut self, worker: usize) -> Option<Job> {
        let ours = self
            .queue
            .iter()
            .map(|(&seq, &id)| (seq, id))
            .find(|(_, id)| {
                self.requests
                    .get(id)
                    .is_some_and(|request| request.workers.allows(worker))
            });
        // Another user's image that arrived first is served first (same priority).
        if let Some(&first) = self.background.first() {
            if ours.is_none_or(|(seq, _)| first < seq) {
                return Some(self.pop_background(first, worker));
            }
        }
        let (seq, id) = ours?;
        let settings = Arc::clone(&self.settings);
        let request = self
            .requests
            .get_mut(&id)
            .expect("the queue only holds ids of live requests");
        let batch_index = request
            .waiting
            .pop_front()
            .expect("the queue only holds requests with waiting images");
        if request.waiting.is_empty() {
            self.queue.remove(&seq);
        }
        request.processing += 1;
        request.expiry = Instant::now() + settings.expiry;
        let attempt = request
            .faults_per_image
            .get(&batch_index)
            .copied()
            .unwrap_or(0);
        let seed = job_seed(request, &settings, batch_index, attempt);
        let parts = [
            Part::Id(id),
            Part::Num(u64::from(batch_index)),
            Part::Num(u64::from(attempt)),
        ];
        Some(Job {
            request: id,
            batch_index,
            attempt,
            worker,
            latency: settings.latency.pick(settings.det.unit("latency", &parts)),
            fault: settings.det.chance(settings.fault_rate, "fault", &parts),
            censored: settings.det.chance(settings.censor_rate, "censor", &parts),
            prompt: request.prompt.clone(),
            seed,
            width: request.width,
            height: request.height,
            background: false,
        })
    }

    /// Hands another user's image to `worker`; that user queues the next one
    /// at the back, so the background load stays the same.
    fn pop_background(&mut self, seq: u64, worker: usize) -> Job {
        self.background.remove(&seq);
        self.background.insert(self.next_seq);
        self.next_seq += 1;
        let settings = &self.settings;
        let parts = [Part::Num(seq)];
        Job {
            request: Uuid::nil(),
            batch_index: 0,
            attempt: 0,
            worker,
            latency: settings
                .latency
                .pick(settings.det.unit("background", &parts)),
            fault: false,
            censored: false,
            prompt: String::new(),
            seed: String::new(),
            width: 64,
            height: 64,
            background: true,
        }
    }

    /// Lands a job: a fault (re-queue or drop) or a finished image. `webp` is
    /// what [`Job::render`] made (drawn here when the caller did not).
    pub(crate) fn finish_job(&mut self, job: Job, webp: Option<Vec<u8>>) {
        if job.background {
            self.background_served += 1;
            return;
        }
        let settings = Arc::clone(&self.settings);
        let Some(request) = self.requests.get_mut(&job.request) else {
            // The request expired while the image was being made (the real
            // worker's submit would get 404 InvalidJobID).
            return;
        };
        request.processing -= 1;
        if job.fault {
            request.restarted += 1;
            request.faulted_jobs += 1;
            self.stats.images_faulted += 1;
            let faults = request.faults_per_image.entry(job.batch_index).or_insert(0);
            *faults += 1;
            if *faults < MAX_IMAGE_FAULTS && !request.cancelled && !request.faulted {
                request.waiting.push_front(job.batch_index);
                let possible = request.served_model.is_some();
                let (seq, id) = (request.seq, request.id);
                if possible {
                    self.queue.insert(seq, id);
                }
            } else {
                self.stats.images_dropped += 1;
            }
            self.release_hold_if_done(job.request);
            return;
        }

        let parts = [
            Part::Id(job.request),
            Part::Num(u64::from(job.batch_index)),
            Part::Num(u64::from(job.attempt)),
        ];
        let generation_id = settings.det.uuid("generation", &parts);
        let Some(webp) = webp.or_else(|| job.render()) else {
            return;
        };
        // The image still lands on a request that was flagged faulted or
        // cancelled meanwhile (the real worker submits it all the same).
        request.generations.push(Generation {
            id: generation_id,
            batch_index: job.batch_index,
            worker: job.worker,
            model: request.served_model.clone().unwrap_or_default(),
            censored: job.censored,
            seed: job.seed.clone(),
            handed_out: false,
        });
        request.expiry = Instant::now() + settings.expiry;
        let amount = request.per_image_kudos;
        let owner = request.owner;
        self.store_in_r2(generation_id, webp);
        self.stats.images_generated += 1;
        if job.censored {
            self.stats.images_censored += 1;
        }
        self.users[owner].images_received += 1;
        self.charge(job.request, amount);
        self.release_hold_if_done(job.request);
    }

    pub(super) fn release_hold_if_done(&mut self, id: Uuid) {
        if let Some(request) = self.requests.get_mut(&id) {
            if request.is_done() {
                request.upfront_hold = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::sim::state::{SubmitOutcome, ANON_API_KEY};
    use crate::sim::validate::parse_generate;
    use crate::sim::SimConfig;

    fn queue_one(horde: &mut Horde, body: Value) -> Uuid {
        let input = parse_generate(&body).unwrap();
        match horde.submit(ANON_API_KEY, "tests:1:none", input) {
            Ok(SubmitOutcome::Queued(accepted)) => Uuid::parse_str(&accepted.id).unwrap(),
            _ => panic!("expected a queued request"),
        }
    }

    #[test]
    fn a_request_flagged_faulted_mid_image_still_gets_that_image() {
        let config = SimConfig {
            workers: 2,
            ..SimConfig::default()
        };
        let mut horde = Horde::new(&config, 5, "http://127.0.0.1:1/".to_owned());
        let id = queue_one(&mut horde, json!({"prompt": "x", "params": {"n": 4}}));
        let text = id.to_string();
        // Worker 1 holds image 1 for the whole story; worker 0 faults three times.
        let mut held = horde.pop_job(1).unwrap();
        for _ in 0..3 {
            let mut job = horde.pop_job(0).unwrap();
            job.fault = true;
            horde.finish_job(job, None);
        }
        let check = horde.check(&text).unwrap();
        assert!(!check.done && !check.faulted, "{check:?}");

        // The periodic pass flags it: done at once, one image still processing.
        horde.cleanup();
        let check = horde.check(&text).unwrap();
        assert!(check.done && check.faulted, "{check:?}");
        assert_eq!((check.processing, check.finished), (1, 0));
        assert!(horde.pop_job(0).is_none(), "no pickups after the flag");
        // A client that fetches status at `done` gets nothing, and moves on.
        assert!(horde.status(&text).unwrap().generations.is_empty());
        assert_eq!(horde.snapshot().requests_retrieved, 1);

        // The image in flight lands: paid for, never handed out.
        held.fault = false;
        horde.finish_job(held, None);
        let stats = horde.snapshot();
        assert_eq!(
            (
                stats.images_generated,
                stats.requests_retrieved,
                stats.requests_never_retrieved,
                stats.requests_orphaned
            ),
            (1, 0, 1, 1)
        );
        assert_eq!(horde.check(&text).unwrap().finished, 1);

        // A later status call hands it out, which accounts for the request.
        let status = horde.status(&text).unwrap();
        assert_eq!(status.generations.len(), 1);
        assert!(status.check.done && status.check.faulted);
        let stats = horde.snapshot();
        assert_eq!(
            (
                stats.requests_retrieved,
                stats.requests_never_retrieved,
                stats.requests_orphaned
            ),
            (1, 0, 0)
        );
    }

    #[test]
    fn images_are_drawn_at_the_requested_size() {
        let mut horde = Horde::new(&SimConfig::default(), 5, "http://127.0.0.1:1/".to_owned());
        queue_one(
            &mut horde,
            json!({"prompt": "x", "params": {"width": 192, "height": 128}}),
        );
        let mut job = horde.pop_job(0).unwrap();
        job.fault = false;
        let webp = job.render().unwrap();
        let decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(webp)).unwrap();
        assert_eq!(decoder.dimensions(), (192, 128));
    }
}
