//! A finished request's images: assign each new generation to a missing
//! image index (durably, before any file is written), download them, hand
//! them to the sink in one batch, and record each image saved.
//!
//! Must not decide retries: a failed download goes through the failure table
//! (call `Download`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use base64::Engine as _;

use super::policy::{Action, Call};
use super::slot::Halt;
use super::{Abort, Engine, Event, FailureKind};
use crate::horde::{Generation, HordeError, ImageSource, RequestStatus};
use crate::manifest::{CensoredPolicy, Job};
use crate::output::{GeneratedImage, OutputError};
use crate::store::{now_ms, RequestKey, RequestRecord, RequestState, SavedImage};

/// Largest image accepted from an R2 URL.
const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;

impl Engine {
    /// Assigns the request's new generations to missing image indices,
    /// fetches them all, hands them to the sink in one batch (one group
    /// commit: the files are durable when it answers), then records each
    /// image saved.
    pub(super) async fn save_generations(
        &self,
        job: &Job,
        key: &RequestKey,
        record: &mut RequestRecord,
        id: &str,
        status: &RequestStatus,
    ) -> Result<(), Halt> {
        // The figure is what this Horde id consumed so far; a resumed run that reads the
        // same id again may count it twice, which the summary tolerates as an estimate.
        let kudos = status.check.kudos.max(0.0);
        record.kudos_charged += kudos;
        let payer = self.keys.for_record(record).map(|k| k.fingerprint.clone());
        self.accounting
            .kudos_millis
            .fetch_add((kudos * 1000.0) as u64, Ordering::Relaxed);
        if kudos > 0.0 {
            self.emit(Event::Charged {
                kudos,
                key: payer.clone(),
            });
        }

        let known: HashSet<&str> = record
            .images
            .values()
            .map(|i| i.generation_id.as_str())
            .chain(record.assigned.values().map(String::as_str))
            .collect();
        let mut free: Vec<u32> = record
            .missing_indices()
            .into_iter()
            .filter(|i| !record.assigned.contains_key(i))
            .collect();
        free.reverse();
        let mut new_assignments = Vec::new();
        for generation in &status.generations {
            if known.contains(generation.id.as_str()) {
                continue;
            }
            if generation.censored && self.manifest.run.on_censored == CensoredPolicy::Reroll {
                self.emit(Event::Failure(FailureKind::Censored));
                continue;
            }
            let Some(index) = free.pop() else { break };
            new_assignments.push((index, generation.id.clone()));
        }
        if !new_assignments.is_empty() {
            // Which generation goes to which index is durable before any file is written,
            // so a crash in between resolves to the same names.
            record.assigned.extend(new_assignments);
            self.ledger
                .put_durable(key, record)
                .await
                .map_err(|e| self.ledger_halt(e))?;
        }

        let assigned: Vec<(u32, String)> = record
            .assigned
            .iter()
            .map(|(i, g)| (*i, g.clone()))
            .collect();
        let mut status = std::borrow::Cow::Borrowed(status);
        let mut refetched = false;
        let mut fetched: Vec<(u32, Generation, Vec<u8>)> = Vec::new();
        for (index, generation_id) in assigned {
            let Some(generation) = status
                .generations
                .iter()
                .find(|g| g.id == generation_id)
                .cloned()
            else {
                // The Horde no longer lists it (expired between calls): the index is missing again.
                record.assigned.remove(&index);
                continue;
            };
            if generation.censored && self.manifest.run.on_censored == CensoredPolicy::Skip {
                let skipped = SavedImage {
                    generation_id: generation.id.clone(),
                    file_name: String::new(),
                    censored: true,
                };
                record.save_image(index, skipped, now_ms());
                continue;
            }
            let mut generation = generation;
            // Downloads of this image, counted from the status its URL came in:
            // a URL from a status read during this save is fresh.
            let mut attempt = u32::from(refetched);
            let bytes = loop {
                attempt += 1;
                let error = match self.image_bytes(&generation).await {
                    Ok(bytes) => break Some(bytes),
                    Err(error) => error,
                };
                match self.tuning().policy.decide(Call::Download, &error, attempt) {
                    Action::Refetch => {
                        // The URL lapsed (30 minutes): fresh URLs come with a new status.
                        refetched = true;
                        let fresh = match self.fetch_status(id).await {
                            Ok(fresh) => fresh,
                            Err(_) => break None,
                        };
                        status = std::borrow::Cow::Owned(fresh);
                        match status.generations.iter().find(|g| g.id == generation_id) {
                            Some(g) => generation = g.clone(),
                            None => break None,
                        }
                    }
                    _ => {
                        tracing::warn!(%error, generation = %generation.id, "could not fetch an image; it will be asked for again");
                        break None;
                    }
                }
            };
            match bytes {
                Some(bytes) => fetched.push((index, generation, bytes)),
                None => {
                    // The slot asks the Horde for this image again.
                    self.emit(Event::Failure(FailureKind::Download));
                    record.assigned.remove(&index);
                }
            }
        }

        // All of the request's images go to the sink at once, so it can flush once for all
        // of them; each answer is durable before the record says the image is saved.
        let n = submitted_n(record);
        let submitted = submitted_ms(record);
        let (fetched, all_bytes): (Vec<(u32, Generation)>, Vec<Vec<u8>>) = fetched
            .into_iter()
            .map(|(index, generation, bytes)| ((index, generation), bytes))
            .unzip();
        let images = fetched
            .iter()
            .zip(all_bytes)
            .map(|((index, generation), bytes)| GeneratedImage {
                job,
                generation,
                request_id: id,
                index: *index,
                n,
                submitted_ms: submitted,
                kudos: status.check.kudos,
                bytes,
            })
            .collect();
        let answers = self.sink.save_all(images).await;
        let mut fatal = None;
        for ((index, generation), answer) in fetched.iter().zip(answers) {
            match answer {
                Ok(stored) => {
                    if !stored.already_present {
                        self.accounting.images_saved.fetch_add(1, Ordering::Relaxed);
                    }
                    self.emit(Event::ImageSaved {
                        already_present: stored.already_present,
                        key: payer.clone(),
                    });
                    let saved = SavedImage {
                        generation_id: generation.id.clone(),
                        file_name: stored.file_name,
                        censored: generation.censored,
                    };
                    record.save_image(*index, saved, now_ms());
                }
                Err(OutputError::Webp { error, .. }) => {
                    tracing::warn!(%error, generation = %generation.id, "the Horde sent a broken image; it will be asked for again");
                    self.emit(Event::Failure(FailureKind::BadImage));
                    record.assigned.remove(index);
                }
                Err(error @ OutputError::Collision { .. }) => {
                    // A different image already has this name: the ledger lost track of it.
                    fatal.get_or_insert(Abort::Ledger(format!(
                        "{error}; the ledger does not know this file: run with --rebuild-state"
                    )));
                }
                Err(error) => {
                    fatal.get_or_insert(Abort::Output(error.to_string()));
                }
            }
        }
        if let Some(abort) = fatal {
            // The images that were saved stay recorded; the run stops.
            self.abort(abort);
            let _ = self.ledger.put_durable(key, record).await;
            return Err(Halt::Stopped);
        }
        // Not flushed here: the next step of this slot (done, resubmit, fail, cancel)
        // writes and flushes the record anyway, and the files are already durable, so
        // a crash before then only makes the resumed run rewrite them idempotently.
        self.ledger
            .put(key, record)
            .map_err(|e| self.ledger_halt(e))
    }

    pub(super) async fn image_bytes(&self, generation: &Generation) -> Result<Vec<u8>, HordeError> {
        match generation.image_source() {
            ImageSource::Base64(text) => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| unusable_image(format!("image is not base64: {e}"))),
            ImageSource::Url(url) => {
                self.emit(Event::Downloaded);
                self.client
                    .download_image(&url, MAX_IMAGE_BYTES, self.manifest.run.download_timeout)
                    .await
            }
            ImageSource::Unavailable => Err(unusable_image(
                "the Horde could not provide the image (N/A)".into(),
            )),
        }
    }
}

/// A status answer whose image field cannot be turned into bytes.
fn unusable_image(reason: String) -> HordeError {
    HordeError::new(
        crate::horde::Endpoint::new(crate::horde::Operation::Status),
        crate::horde::HordeErrorKind::Decode {
            status: 200,
            reason,
            snippet: String::new(),
        },
    )
}

/// When the request on the Horde was submitted: every image of it shares the time.
pub(super) fn submitted_ms(record: &RequestRecord) -> u64 {
    match record.state {
        RequestState::Submitted { submitted_ms, .. } => submitted_ms,
        _ => record.updated_ms,
    }
}

/// Images the request on the Horde was asked for.
pub(super) fn submitted_n(record: &RequestRecord) -> u32 {
    match record.state {
        RequestState::Submitted { n, .. } => n,
        _ => record.n,
    }
}
