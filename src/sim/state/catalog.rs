//! The simulated workers as the Horde advertises them: their identities,
//! `GET /v2/workers`, `GET /v2/status/models` with each model's queue, the
//! speed the wait estimates divide by, and whether any worker could serve a
//! request at all.
//!
//! Read-only over the queue: it must not hand out or finish work (`jobs`),
//! and it advertises no more than the workers really do.

use serde_json::{json, Value};
use uuid::Uuid;

use super::super::det::{Det, Part};
use super::{Horde, Request};

/// Identity of a simulated worker.
pub(super) struct WorkerInfo {
    pub(super) id: Uuid,
    pub(super) name: String,
}

/// `count` workers, named `sim-worker-N`, with ids drawn from the seed.
pub(super) fn simulated_workers(det: Det, count: usize) -> Vec<WorkerInfo> {
    (0..count)
        .map(|index| WorkerInfo {
            id: det.uuid("worker", &[Part::Num(index as u64)]),
            name: format!("sim-worker-{index}"),
        })
        .collect()
}

impl Horde {
    /// Megapixel-steps per second the workers advertise together.
    pub(super) fn total_speed(&self) -> f64 {
        self.workers.len() as f64 * self.settings.worker_speed_mps
    }

    /// Whether some worker could serve `request` (its model, its worker list).
    pub(super) fn is_possible(&self, request: &Request) -> bool {
        request.served_model.is_some()
            && !(request.has_source && self.settings.no_img2img_workers)
            && (0..self.workers.len()).any(|worker| request.workers.allows(worker))
    }

    /// `GET /v2/workers`: the simulated workers (a small part of the real shape).
    pub(crate) fn worker_list(&self) -> Vec<Value> {
        let max_pixels = 4096u64 * 4096;
        self.workers
            .iter()
            .map(|worker| {
                json!({
                    "type": "image",
                    "name": worker.name,
                    "id": worker.id.to_string(),
                    "online": true,
                    "threads": 1,
                    "max_pixels": max_pixels,
                    "models": self.settings.served_models,
                    "performance": format!("{} megapixelsteps per second", self.settings.worker_speed_mps),
                    "trusted": false,
                    "maintenance_mode": false,
                    "nsfw": true,
                    "img2img": !self.settings.no_img2img_workers,
                    "painting": !self.settings.no_img2img_workers,
                    "post-processing": true,
                    "lora": true,
                })
            })
            .collect()
    }

    /// `GET /v2/status/models`: the served models with their queues, in
    /// megapixel-steps and the workers' advertised speed.
    pub(crate) fn models(&self, model_type: &str) -> Vec<Value> {
        if model_type != "image" {
            return Vec::new();
        }
        let speed = self.total_speed();
        self.settings
            .served_models
            .iter()
            .map(|name| {
                let (jobs, queued) = self
                    .requests
                    .values()
                    .filter(|request| request.served_model.as_deref() == Some(name.as_str()))
                    .fold((0.0f64, 0.0f64), |(jobs, mps), request| {
                        let waiting = request.waiting.len() as f64;
                        (jobs + waiting, mps + waiting * request.mps_per_image)
                    });
                json!({
                    "name": name,
                    "count": self.settings.workers,
                    "performance": speed,
                    "queued": queued,
                    "jobs": jobs,
                    "eta": if speed > 0.0 { (queued / speed).floor() as u64 } else { 0 },
                    "type": "image",
                })
            })
            .collect()
    }
}
