//! One image's forms, from wanted to settled: look at the ledger, send one
//! interrogation request for the forms still wanted (intent durable before
//! the `POST`, id durable before anything depends on it), read its status
//! until no form of it is waiting or processing, keep each result as it
//! arrives (a post-processed image written before its form is recorded done),
//! and when every form is settled write the sidecar and the caption file.
//!
//! What the Horde does to a request is read from what it answers
//! (docs/horde-api.md §10): a 404 means it expired and was deleted (the forms
//! not delivered are asked again), a form `faulted` failed for good, a form
//! `cancelled` that we did not cancel is asked again, and a post-processor's
//! URL that storage refuses (signed once, for 30 minutes) makes that form be
//! asked again. Must not pace or count for reports beyond `Calls`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::pace::EndpointClass;
use super::{AlchemyError, Calls, Shared, Work};
use crate::horde::{
    FailureClass, FormState, HordeError, InterrogationForm, InterrogationRequest,
    InterrogationStatus,
};
use crate::manifest::AlchemyForm;
use crate::store::alchemy::{
    AlchemyCounts, AlchemyRecord, FormRecord, PendingRequest, ALCHEMY_SCHEMA_VERSION,
};
use crate::store::now_ms;

/// Tries of one call in a row before its forms are given up for this run.
const MAX_TRIES: u32 = 8;
/// Downloads of one post-processed image before its form is asked again.
const MAX_DOWNLOAD_TRIES: u32 = 3;
/// The largest post-processed image fetched (a 4× upscale of a 3072² source,
/// losslessly compressed, stays well below).
const MAX_DERIVED_BYTES: usize = 64 * 1024 * 1024;
/// Submits in a row answered 429 (the limiter, or `TooManyPrompts`) before the
/// forms are given up for this run: far more than a busy Horde needs, few
/// enough that a server answering nothing else cannot hold a run forever.
const MAX_LIMITED_TRIES: u32 = 60;
/// Times an image's delivered-but-unfetchable forms are asked again before they fail.
const MAX_REDOS: u32 = 3;
/// How long to wait when the key has as many forms queued as it may (`TooManyPrompts`).
const TOO_MANY_PROMPTS_WAIT: Duration = Duration::from_secs(10);

/// Works one image's forms until they are settled, or the pass stops.
pub(super) async fn process(shared: &Shared, work: Work) -> Result<(), AlchemyError> {
    let Some(mut image) = Image::load(shared, &work)? else {
        return Ok(());
    };
    let mut tries = 0;
    while !shared.stop.is_cancelled() {
        if let Some(pending) = image.record.request.clone() {
            match pending.id {
                Some(id) => image.follow(shared, &id).await?,
                None => image.answer_lost(shared).await?,
            }
            continue;
        }
        let wanted = image.record.wanted();
        if wanted.is_empty() {
            return image.finish(shared);
        }
        let wanted = image.drop_unserved(shared, wanted).await?;
        if wanted.is_empty() {
            continue;
        }
        tries += 1;
        if image.submit(shared, wanted, tries).await? {
            tries = 0;
        }
    }
    Ok(())
}

/// An image being worked on: its file name and its record.
struct Image {
    source: String,
    record: AlchemyRecord,
    /// What the record last written counted for in the live counts.
    counted: AlchemyCounts,
    /// Forms of the request in flight; released when it settles.
    permit: Option<OwnedSemaphorePermit>,
}

impl Image {
    /// The image's record, made or brought up to date for `work`; `None`
    /// when there is nothing to do (every form settled, or the image is gone).
    fn load(shared: &Shared, work: &Work) -> Result<Option<Image>, AlchemyError> {
        let path = shared.output.root().join(&work.source);
        let Ok(meta) = std::fs::metadata(&path) else {
            tracing::warn!(image = %work.source, "the image is gone from the folder; no alchemy for it");
            return Ok(None);
        };
        let stored = shared.store.alchemy(&work.source)?;
        // What the tree holds is in the live counts already (the pass seeded them).
        let counted = stored.as_ref().map(AlchemyCounts::of).unwrap_or_default();
        let mut record = match stored {
            // A request on the Horde is followed to its end whatever became of the file.
            Some(record) if record.request.is_some() => record,
            Some(record) if !work.fresh && record.source_len == meta.len() => record,
            _ => {
                let Ok((width, height)) = image::image_dimensions(&path) else {
                    tracing::warn!(image = %work.source, "the image cannot be read; no alchemy for it");
                    return Ok(None);
                };
                AlchemyRecord {
                    v: ALCHEMY_SCHEMA_VERSION,
                    source_len: meta.len(),
                    width,
                    height,
                    slow_workers: work.spec.slow_workers,
                    ..AlchemyRecord::default()
                }
            }
        };
        let before = record.clone();
        for form in &work.spec.forms {
            record
                .forms
                .entry(form.name().to_owned())
                .or_insert(FormRecord::Wanted);
        }
        if shared.config.retry_failed {
            for form in record.forms.values_mut() {
                if matches!(form, FormRecord::Failed { .. }) {
                    *form = FormRecord::Wanted;
                }
            }
        }
        if record.is_settled() && record == before {
            return Ok(None);
        }
        let mut image = Image {
            source: work.source.clone(),
            record,
            counted,
            permit: None,
        };
        if image.record != before {
            image.save(shared)?;
        }
        Ok(Some(image))
    }

    /// Records the image's state (in memory until the next flush).
    fn save(&mut self, shared: &Shared) -> Result<(), AlchemyError> {
        shared.store.put_alchemy(&self.source, &self.record)?;
        self.recount(shared);
        Ok(())
    }

    /// Records the image's state durably.
    async fn save_durable(&mut self, shared: &Shared) -> Result<(), AlchemyError> {
        shared
            .store
            .put_alchemy_durable(&self.source, &self.record)
            .await?;
        self.recount(shared);
        Ok(())
    }

    /// The live counts follow the record just written.
    fn recount(&mut self, shared: &Shared) {
        let now = AlchemyCounts::of(&self.record);
        shared.live.lock().replace(&self.counted, &now);
        self.counted = now;
    }

    /// Forms no alchemist serves fail now instead of waiting 20 minutes on
    /// the Horde; the rest are returned.
    async fn drop_unserved(
        &mut self,
        shared: &Shared,
        wanted: Vec<String>,
    ) -> Result<Vec<String>, AlchemyError> {
        let Some(served) = shared.served.get(&shared.client).await else {
            return Ok(wanted);
        };
        let (served_forms, unserved): (Vec<_>, Vec<_>) =
            wanted.into_iter().partition(|form| served.contains(form));
        for form in &unserved {
            if shared.served.first_report(form) {
                crate::say!(
                    "horde-batch: no alchemist on the Horde serves `{form}` now \
                     (GET /v2/workers?type=interrogation); it is recorded as failed, and \
                     `--retry-failed` asks for it again"
                );
            }
            self.record.forms.insert(
                form.clone(),
                FormRecord::Failed {
                    why: format!("no alchemist on the Horde served `{form}`"),
                },
            );
        }
        if !unserved.is_empty() {
            self.save(shared)?;
        }
        Ok(served_forms)
    }

    /// Sends one request for `forms`. `Ok(false)` when it was not accepted
    /// and may be tried again (after the wait it needed).
    async fn submit(
        &mut self,
        shared: &Shared,
        forms: Vec<String>,
        tries: u32,
    ) -> Result<bool, AlchemyError> {
        let price: u32 = forms
            .iter()
            .filter_map(|name| AlchemyForm::parse(name))
            .map(|form| {
                form.kudos(
                    self.record.width,
                    self.record.height,
                    self.record.slow_workers,
                )
            })
            .sum();
        if !shared.reserve_kudos(f64::from(price)) {
            self.give_up(shared, &forms, "--max-kudos would be passed")?;
            return Ok(true);
        }
        let permits = forms
            .len()
            .min(shared.config.max_forms_in_flight.max(1) as usize) as u32;
        let permit = tokio::select! {
            permit = Arc::clone(&shared.forms_in_flight).acquire_many_owned(permits) => {
                permit.expect("the forms semaphore is never closed")
            }
            () = shared.stop.cancelled() => return Ok(true),
        };
        // Read once a permit is held: images waiting for one hold no bytes.
        let path = shared.output.root().join(&self.source);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(image = %self.source, %error, "the image cannot be read; its forms wait for the next run");
                shared.release_kudos(f64::from(price));
                return self
                    .give_up(shared, &forms, "the image could not be read")
                    .map(|()| true);
            }
        };
        tokio::select! {
            () = shared.pacer.ready(EndpointClass::Submit) => {}
            () = shared.stop.cancelled() => return Ok(true),
        }
        let request = InterrogationRequest {
            source_image: base64::engine::general_purpose::STANDARD.encode(&bytes),
            forms: forms
                .iter()
                .map(|name| InterrogationForm { name: name.clone() })
                .collect(),
            slow_workers: self.record.slow_workers,
        };
        drop(bytes);
        // The intent, durable before the POST: a request whose answer is lost
        // is known to maybe exist (ARCHITECTURE.md, invariant 13).
        self.record.request = Some(PendingRequest {
            id: None,
            forms: forms.clone(),
            sent_ms: now_ms(),
        });
        self.save_durable(shared).await?;
        Calls::count(&shared.calls.submits);
        match shared.client.interrogate(&request).await {
            Ok(accepted) => {
                // A 429 widened the spacing; each accepted submit narrows it again.
                shared.pacer.submit_accepted();
                if let Some(pending) = &mut self.record.request {
                    pending.id = Some(accepted.id.clone());
                }
                self.record.ids.push(accepted.id);
                // The id, durable before anything depends on it (invariant 14).
                self.save_durable(shared).await?;
                self.permit = Some(permit);
                Ok(true)
            }
            // The request may be on the Horde: the next turn counts it as lost.
            Err(error) if error.outcome_unknown() => {
                if tries >= MAX_TRIES {
                    // Each lost answer may be a paid request: stop sending more.
                    self.give_up(shared, &forms, &error.to_string())?;
                    return Ok(true);
                }
                let wait = backoff(shared, tries);
                self.wait(shared, wait).await;
                Ok(false)
            }
            Err(error) => {
                // Nothing was queued: nothing will be charged.
                shared.release_kudos(f64::from(price));
                self.record.request = None;
                self.save(shared)?;
                self.refused(shared, &forms, &error, tries).await
            }
        }
    }

    /// A submit the Horde refused, or an answer that says nothing was queued.
    async fn refused(
        &mut self,
        shared: &Shared,
        forms: &[String],
        error: &HordeError,
        tries: u32,
    ) -> Result<bool, AlchemyError> {
        let limited = matches!(
            error.class(),
            FailureClass::RateLimited | FailureClass::ConcurrencyFull
        );
        if limited && tries >= MAX_LIMITED_TRIES {
            self.give_up(shared, forms, &error.to_string())?;
            return Ok(true);
        }
        match error.class() {
            FailureClass::RateLimited => {
                Calls::count(&shared.calls.rate_limited);
                let wait = error.retry_after().unwrap_or(Duration::from_secs(1));
                shared
                    .pacer
                    .back_off(EndpointClass::Submit, wait.min(shared.config.max_wait));
                Ok(false)
            }
            FailureClass::ConcurrencyFull => {
                Calls::count(&shared.calls.too_many_prompts);
                self.wait(shared, TOO_MANY_PROMPTS_WAIT).await;
                Ok(false)
            }
            FailureClass::Permanent | FailureClass::Kudos => {
                self.give_up(shared, forms, &error.to_string())?;
                Ok(true)
            }
            FailureClass::Auth | FailureClass::Redirected => {
                Err(AlchemyError::Horde(Box::new(error.clone())))
            }
            FailureClass::Expired
            | FailureClass::Maintenance
            | FailureClass::Timeout
            | FailureClass::Transient => {
                if tries >= MAX_TRIES {
                    self.give_up(shared, forms, &error.to_string())?;
                    return Ok(true);
                }
                let wait = error
                    .retry_after()
                    .unwrap_or_else(|| backoff(shared, tries));
                self.wait(shared, wait.min(shared.config.max_wait)).await;
                Ok(false)
            }
        }
    }

    /// The forms fail for this run, with `why`.
    fn give_up(
        &mut self,
        shared: &Shared,
        forms: &[String],
        why: &str,
    ) -> Result<(), AlchemyError> {
        tracing::warn!(image = %self.source, forms = ?forms, why, "alchemy forms failed");
        for form in forms {
            self.record.forms.insert(
                form.clone(),
                FormRecord::Failed {
                    why: why.to_owned(),
                },
            );
        }
        self.save(shared)
    }

    /// The answer to a submit was lost: the Horde may hold that request, and
    /// nothing lists a user's interrogations to find it. The forms are asked
    /// again; the count says how many may have been paid twice.
    async fn answer_lost(&mut self, shared: &Shared) -> Result<(), AlchemyError> {
        self.record.lost_answers += 1;
        self.record.request = None;
        tracing::warn!(
            image = %self.source,
            "the answer to an alchemy submit was lost; its forms are asked again (the Horde may charge them twice)"
        );
        self.save_durable(shared).await
    }

    /// Reads the request's status until no form of it is waiting or
    /// processing, it is gone, or the pass stops.
    async fn follow(&mut self, shared: &Shared, id: &str) -> Result<(), AlchemyError> {
        let forms = self
            .record
            .request
            .as_ref()
            .map_or(1, |pending| pending.forms.len()) as u32;
        let first = shared.config.form_time * forms;
        let mut delay = first.clamp(shared.config.poll_floor, shared.config.poll_cap);
        let mut failures = 0;
        let mut downloads = BTreeMap::new();
        let mut last_delivery = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shared.stop.cancelled() => return self.stop(shared, id).await,
            }
            // The Horde deletes a request 20 minutes after its last activity;
            // one that neither delivers nor goes away is a server that will not.
            if last_delivery.elapsed() > shared.config.stale_after {
                return self.abandon(shared, id).await;
            }
            shared.pacer.ready(EndpointClass::Status).await;
            Calls::count(&shared.calls.status_reads);
            match shared.client.interrogation_status(id).await {
                Ok(status) => {
                    failures = 0;
                    let progress = self.absorb(shared, &status, &mut downloads).await?;
                    if progress.settled {
                        return self.settle(shared).await;
                    }
                    if progress.changed {
                        last_delivery = tokio::time::Instant::now();
                    }
                    delay = if progress.changed {
                        shared.config.poll_floor.max(shared.config.form_time)
                    } else {
                        (delay * 3 / 2).min(shared.config.poll_cap)
                    };
                }
                Err(error) if error.class() == FailureClass::Expired => {
                    tracing::info!(image = %self.source, id, "the alchemy request expired on the Horde; its forms not delivered are asked again");
                    return self.settle(shared).await;
                }
                Err(error)
                    if matches!(error.class(), FailureClass::Auth | FailureClass::Redirected) =>
                {
                    return Err(AlchemyError::Horde(Box::new(error)));
                }
                Err(error) => {
                    if error.class() == FailureClass::RateLimited {
                        Calls::count(&shared.calls.rate_limited);
                    }
                    failures += 1;
                    delay = error
                        .retry_after()
                        .unwrap_or_else(|| backoff(shared, failures))
                        .min(shared.config.max_wait);
                    tracing::debug!(image = %self.source, %error, "alchemy status read failed; read again later");
                }
            }
        }
    }

    /// Keeps what `status` delivered. `settled` once no form of the request
    /// is waiting, processing, or delivered but not yet kept.
    async fn absorb(
        &mut self,
        shared: &Shared,
        status: &InterrogationStatus,
        downloads: &mut BTreeMap<String, u32>,
    ) -> Result<Progress, AlchemyError> {
        let asked: HashSet<String> = self
            .record
            .request
            .as_ref()
            .map(|pending| pending.forms.iter().cloned().collect())
            .unwrap_or_default();
        let mut progress = Progress {
            settled: true,
            changed: false,
        };
        for form in &status.forms {
            if !asked.contains(&form.form)
                || self
                    .record
                    .forms
                    .get(&form.form)
                    .is_some_and(FormRecord::is_settled)
            {
                continue;
            }
            match form.state {
                FormState::Done => {
                    let Some(value) = form.value() else {
                        progress.settled = false;
                        continue;
                    };
                    if self.keep(shared, &form.form, value, downloads).await? {
                        progress.changed = true;
                    } else if downloads.get(&form.form).copied().unwrap_or(0) < MAX_DOWNLOAD_TRIES {
                        progress.settled = false;
                    } else {
                        self.redo(&form.form);
                        progress.changed = true;
                    }
                }
                FormState::Faulted => {
                    self.record.forms.insert(
                        form.form.clone(),
                        FormRecord::Failed {
                            why: "faulted on the Horde's alchemists".into(),
                        },
                    );
                    progress.changed = true;
                }
                // Cancelled by someone else (anyone with the id may): asked again.
                FormState::Cancelled => {}
                FormState::Waiting | FormState::Processing | FormState::Unknown => {
                    progress.settled = false;
                }
            }
        }
        if progress.changed {
            self.save(shared)?;
        }
        Ok(progress)
    }

    /// Keeps one delivered form; `false` when its image could not be fetched.
    async fn keep(
        &mut self,
        shared: &Shared,
        form: &str,
        value: Value,
        downloads: &mut BTreeMap<String, u32>,
    ) -> Result<bool, AlchemyError> {
        let parsed = AlchemyForm::parse(form);
        let kudos = parsed.map_or(0, |f| {
            f.kudos(
                self.record.width,
                self.record.height,
                self.record.slow_workers,
            )
        });
        let is_post_processor = parsed.is_some_and(AlchemyForm::is_post_processor);
        let record = match (is_post_processor, value) {
            (true, Value::String(url)) => {
                *downloads.entry(form.to_owned()).or_default() += 1;
                Calls::count(&shared.calls.downloads);
                let fetched = shared
                    .client
                    .download_image(&url, MAX_DERIVED_BYTES, shared.config.download_timeout)
                    .await;
                let bytes = match fetched {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        if error.class() == FailureClass::Expired {
                            Calls::count(&shared.calls.urls_expired);
                            // Signed once for 30 minutes: asking again is the only way.
                            downloads.insert(form.to_owned(), MAX_DOWNLOAD_TRIES);
                        }
                        tracing::warn!(image = %self.source, form, %error, "cannot fetch a post-processed image");
                        return Ok(false);
                    }
                };
                let output = shared.output.clone();
                let (source, name) = (self.source.clone(), form.to_owned());
                let written = tokio::task::spawn_blocking(move || {
                    output.write_derived_image(&source, &name, &bytes)
                })
                .await
                .expect("writing a derived image does not panic");
                match written {
                    Ok((width, height)) => FormRecord::Derived {
                        file: crate::output::derived_file_name(&self.source, form),
                        width,
                        height,
                    },
                    Err(error) => {
                        tracing::warn!(image = %self.source, form, %error, "a post-processed image was refused");
                        if error.io_kind().is_some() {
                            return Err(error.into());
                        }
                        return Ok(false);
                    }
                }
            }
            (_, value) => FormRecord::Done { value },
        };
        self.record.kudos += f64::from(kudos);
        self.record.forms.insert(form.to_owned(), record);
        Ok(true)
    }

    /// A delivered form whose image could not be fetched is asked again, a
    /// few times, then fails.
    fn redo(&mut self, form: &str) {
        self.record.redos += 1;
        if self.record.redos > MAX_REDOS {
            self.record.forms.insert(
                form.to_owned(),
                FormRecord::Failed {
                    why: format!(
                        "its image could not be fetched (the URL had expired or was refused) after {MAX_REDOS} tries"
                    ),
                },
            );
        }
    }

    /// The request is over (settled or gone): forms not kept are wanted again.
    async fn settle(&mut self, shared: &Shared) -> Result<(), AlchemyError> {
        self.record.request = None;
        self.permit = None;
        self.save_durable(shared).await
    }

    /// The pass stops: cancel the request (its done forms keep their
    /// results), or leave it for the next run with `detach_on_stop`.
    async fn stop(&mut self, shared: &Shared, id: &str) -> Result<(), AlchemyError> {
        if shared.config.detach_on_stop {
            return Ok(());
        }
        Calls::count(&shared.calls.cancels);
        match shared
            .client
            .cancel_interrogation(id, shared.config.cancel_timeout)
            .await
        {
            Ok(status) => {
                let mut downloads = BTreeMap::new();
                self.absorb(shared, &status, &mut downloads).await?;
                self.settle(shared).await
            }
            Err(error) if error.class() == FailureClass::Expired => self.settle(shared).await,
            Err(error) => {
                tracing::warn!(image = %self.source, id, %error, "cannot cancel an alchemy request; the next run or `horde-batch cancel` does");
                Ok(())
            }
        }
    }

    /// A request that delivered nothing for `stale_after`: cancelled (what
    /// it delivered meanwhile is kept), its other forms failed for this run.
    async fn abandon(&mut self, shared: &Shared, id: &str) -> Result<(), AlchemyError> {
        let waited = humantime::format_duration(shared.config.stale_after);
        tracing::warn!(image = %self.source, id, %waited, "an alchemy request delivered nothing for too long; cancelled");
        let asked = self
            .record
            .request
            .as_ref()
            .map(|pending| pending.forms.clone())
            .unwrap_or_default();
        Calls::count(&shared.calls.cancels);
        if let Ok(status) = shared
            .client
            .cancel_interrogation(id, shared.config.cancel_timeout)
            .await
        {
            self.absorb(shared, &status, &mut BTreeMap::new()).await?;
        }
        let unsettled: Vec<String> = asked
            .into_iter()
            .filter(|form| {
                !self
                    .record
                    .forms
                    .get(form)
                    .is_some_and(FormRecord::is_settled)
            })
            .collect();
        self.give_up(
            shared,
            &unsettled,
            &format!("the Horde delivered nothing for {waited} (the request was cancelled)"),
        )?;
        self.settle(shared).await
    }

    /// Every form is settled: the sidecar and the caption file say so.
    fn finish(&self, shared: &Shared) -> Result<(), AlchemyError> {
        let outcome = super::finish::outcome(&self.source, &self.record);
        shared.output.record_alchemy_in_sidecar(&outcome)?;
        if shared.config.caption_files {
            if let Some(Value::String(caption)) = outcome.results.get("caption") {
                shared.output.write_caption_file(&self.source, caption)?;
            }
        }
        Ok(())
    }

    async fn wait(&self, shared: &Shared, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop.cancelled() => {}
        }
    }
}

/// What one status read changed.
struct Progress {
    settled: bool,
    changed: bool,
}

/// The wait before try `tries` + 1 of a call that failed without saying how long.
fn backoff(shared: &Shared, tries: u32) -> Duration {
    let base = shared.config.retry_base;
    base.saturating_mul(1 << tries.min(10))
        .min(shared.config.max_wait)
}

/// Cancels the request of `record` (`horde-batch cancel`); `false` when the
/// Horde did not answer (it stays in the ledger for another try). A request
/// whose answer was lost cannot be found: it is forgotten and counted.
pub(super) async fn cancel(
    shared: &Shared,
    source: String,
    record: AlchemyRecord,
) -> Result<bool, AlchemyError> {
    let mut image = Image {
        counted: AlchemyCounts::of(&record),
        source,
        record,
        permit: None,
    };
    let Some(id) = image.record.request.as_ref().and_then(|p| p.id.clone()) else {
        image.answer_lost(shared).await?;
        return Ok(true);
    };
    image.stop(shared, &id).await?;
    Ok(image.record.request.is_none())
}
