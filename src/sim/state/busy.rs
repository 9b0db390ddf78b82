//! A busy key (`--busy-key N`): other clients' requests on a user's key.
//!
//! A key is rarely idle: a team shares it, a cron job runs while ArtBot is
//! open, yesterday's batch is still within its 20 minutes. `find_user` lists
//! every unexpired request of the key, retrieved or not (docs/horde-api.md
//! §9.1), so a client looking for its own lost submit sees them too. At a
//! user's first submit this puts N finished requests of the same size on the
//! key: done, retrieved by their client, listed until they expire, each image
//! with its own random seed. They are not this client's and never count as
//! images left unretrieved. Must not queue anything or charge the user.

use tokio::time::Instant;

use super::super::det::Part;
use super::{Generation, Horde, Request, WorkerFilter};

impl Horde {
    /// Puts `count` (`--busy-key`) finished requests of `n` images of
    /// another client on `owner`'s key.
    pub(super) fn add_other_clients_requests(
        &mut self,
        owner: usize,
        n: u32,
        width: u32,
        height: u32,
    ) {
        let det = self.settings.det;
        for _ in 0..self.settings.busy_key {
            let seq = self.next_seq;
            self.next_seq += 1;
            let id = det.uuid("other client", &[Part::Num(seq)]);
            let generations = (0..n)
                .map(|index| {
                    let parts = [Part::Num(seq), Part::Num(u64::from(index))];
                    Generation {
                        id: det.uuid("other client image", &parts),
                        batch_index: index,
                        worker: 0,
                        model: self
                            .settings
                            .served_models
                            .first()
                            .cloned()
                            .unwrap_or_default(),
                        censored: false,
                        seed: (det.hash("other client seed", &parts) % (1 << 32)).to_string(),
                        handed_out: true,
                    }
                })
                .collect();
            let request = Request {
                id,
                seq,
                owner,
                shared_key: None,
                prompt: "another client's prompt".to_owned(),
                models: Vec::new(),
                served_model: self.settings.served_models.first().cloned(),
                nsfw: false,
                r2: true,
                shared: false,
                seed: String::new(),
                client_seed: false,
                seed_variation: None,
                n,
                has_source: false,
                width,
                height,
                mps_per_image: 0.0,
                workers: WorkerFilter::Any,
                waiting: Default::default(),
                faults_per_image: Default::default(),
                processing: 0,
                generations,
                restarted: 0,
                faulted_jobs: 0,
                faulted: false,
                cancelled: false,
                kudos: 0.0,
                per_image_kudos: 0.0,
                upfront_hold: 0.0,
                expiry: Instant::now() + self.settings.expiry,
                status_seen_done: true,
            };
            self.requests.insert(id, request);
        }
    }
}
