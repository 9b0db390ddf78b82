//! Reading and cancelling a request: `GET /v2/generate/check/{id}`,
//! `GET /v2/generate/status/{id}` and `DELETE /v2/generate/status/{id}`,
//! with the queue position and wait estimate, and the bookkeeping of what a
//! status answer hands out (which decides retrieved and orphaned requests).
//!
//! It must not queue or generate anything; a cancel only stops new pickups,
//! as on the real server, so images in flight still land and are charged.

use uuid::Uuid;

use super::super::clock;
use super::super::wire::{CheckBody, GenerationBody, MetadataEntry, StatusBody};
use super::{ApiError, Horde, Request};

impl Horde {
    /// `GET /v2/generate/check/{id}`.
    pub(crate) fn check(&self, id: &str) -> Result<CheckBody, ApiError> {
        let request = self
            .find(id)
            .ok_or_else(|| ApiError::not_found("Check", id))?;
        Ok(self.check_body(request))
    }

    /// `GET /v2/generate/status/{id}`.
    pub(crate) fn status(&mut self, id: &str) -> Result<StatusBody, ApiError> {
        let uuid = self
            .find(id)
            .map(|request| request.id)
            .ok_or_else(|| ApiError::not_found("Status", id))?;
        Ok(self.status_body(uuid))
    }

    /// `DELETE /v2/generate/status/{id}`: answers the status from before the
    /// cancel, then stops new pickups. In-flight images still land.
    pub(crate) fn cancel(&mut self, id: &str) -> Result<StatusBody, ApiError> {
        let uuid = self
            .find(id)
            .map(|request| request.id)
            .ok_or_else(|| ApiError::not_found("Delete", id))?;
        let body = self.status_body(uuid);
        let request = self.requests.get_mut(&uuid).expect("found just above");
        request.waiting.clear();
        self.queue.remove(&request.seq);
        if !request.cancelled {
            request.cancelled = true;
            self.stats.requests_cancelled += 1;
        }
        self.release_hold_if_done(uuid);
        Ok(body)
    }

    /// The check fields. `queue_position` counts the queued requests ahead of
    /// this one (0 when first, or when nothing of it waits); `wait_time` is
    /// the megapixel-steps ahead plus its own waiting ones over the workers'
    /// advertised speed, rounded down, as the real server derives it. Neither
    /// knows how long an image really takes, so both are hints, not a schedule.
    fn check_body(&self, request: &Request) -> CheckBody {
        let waiting = request.waiting.len() as u64;
        let (queue_position, mps_ahead) = if self.queue.contains_key(&request.seq) {
            self.queue
                .range(..request.seq)
                .filter_map(|(_, id)| self.requests.get(id))
                .fold((0u64, 0.0f64), |(count, mps), other| {
                    (
                        count + 1,
                        mps + other.waiting.len() as f64 * other.mps_per_image,
                    )
                })
        } else {
            (0, 0.0)
        };
        // Other users' images ahead of it wait too (taken to be the same size).
        let (queue_position, mps_ahead) = if self.queue.contains_key(&request.seq) {
            let ahead = self.background.range(..request.seq).count() as u64;
            (
                queue_position + ahead,
                mps_ahead + ahead as f64 * request.mps_per_image,
            )
        } else {
            (queue_position, mps_ahead)
        };
        let done = request.is_done();
        let speed = self.total_speed();
        let wait_time = if done || waiting == 0 || speed <= 0.0 {
            0
        } else {
            ((mps_ahead + waiting as f64 * request.mps_per_image) / speed).floor() as u64
        };
        CheckBody {
            finished: request.generations.len() as u32,
            processing: request.processing,
            restarted: request.restarted,
            waiting: waiting as u32,
            done,
            faulted: request.faulted,
            wait_time,
            queue_position,
            kudos: request.kudos,
            is_possible: self.is_possible(request),
        }
    }

    /// Builds a full status and records what it hands out.
    fn status_body(&mut self, id: Uuid) -> StatusBody {
        let request = &self.requests[&id];
        let check = self.check_body(request);
        let now_epoch = clock::epoch_now();
        let expires = (now_epoch + self.settings.r2_ttl.as_secs_f64()).floor() as u64;
        let mut sent_base64 = Vec::new();
        let generations = request
            .generations
            .iter()
            .map(|generation| {
                let img = if request.r2 {
                    self.r2_url(generation.id, expires)
                } else {
                    sent_base64.push(generation.id);
                    self.r2_base64(generation.id)
                };
                let worker = &self.workers[generation.worker];
                let mut gen_metadata = vec![MetadataEntry {
                    kind: "batch_index",
                    value: "see_ref",
                    reference: Some(generation.batch_index.to_string()),
                }];
                if generation.censored {
                    gen_metadata.push(MetadataEntry {
                        kind: "censorship",
                        value: if request.nsfw { "csam" } else { "nsfw" },
                        reference: None,
                    });
                }
                GenerationBody {
                    worker_id: worker.id.to_string(),
                    worker_name: worker.name.clone(),
                    model: generation.model.clone(),
                    state: "ok",
                    img,
                    seed: generation.seed.clone(),
                    id: generation.id.to_string(),
                    censored: generation.censored,
                    gen_metadata,
                }
            })
            .collect();
        let shared = request.shared;
        let body = StatusBody {
            check,
            generations,
            shared,
        };
        for generation_id in sent_base64 {
            self.mark_image_retrieved(generation_id);
        }
        let request = self.requests.get_mut(&id).expect("read just above");
        for generation in &mut request.generations {
            generation.handed_out = true;
        }
        if body.check.done {
            request.status_seen_done = true;
        }
        body
    }
}
