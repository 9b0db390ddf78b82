//! The image sink: what the engine hands over when an image or a job is done,
//! and the dataset folder that turns it into files.
//!
//! The engine knows only [`ImageSink`]: it passes a [`GeneratedImage`] (the
//! job, the Horde's generation, the request and the bytes) and gets back the
//! file name. [`Dataset`] owns every format that follows from it: the name
//! from the filename template, the sidecar, the index row, the result and
//! error lines and their timestamps. [`MemorySink`] keeps everything in memory
//! for tests of the engine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{
    format_timestamp, FilenameTemplate, IndexRow, JobError, JobResult, NameFields, NewImage,
    OutputDir, OutputError, Sidecar, HORDE_BATCH_VERSION,
};
use crate::horde::Generation;
use crate::manifest::{CompiledManifest, Job};

/// One image the Horde generated for a job, ready to be stored.
#[derive(Debug)]
pub struct GeneratedImage<'a> {
    pub job: &'a Job,
    pub generation: &'a Generation,
    /// The Horde request it came from.
    pub request_id: &'a str,
    /// Its index within the job.
    pub index: u32,
    /// Images the request asked for.
    pub n: u32,
    /// When the request was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// Kudos the request consumed.
    pub kudos: f64,
    /// The WebP bytes, as received.
    pub bytes: Vec<u8>,
}

/// Where an image ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub file_name: String,
    /// The same image was already there (a resumed run wrote it before).
    pub already_present: bool,
}

/// Where the engine's images and job outcomes go.
pub trait ImageSink: Send + Sync {
    /// Stores one image durably (with whatever describes it) and names it.
    fn save<'a>(&'a self, image: GeneratedImage<'a>) -> BoxFuture<'a, Result<Stored, OutputError>>;
    /// Stores a request's images, answering once per image in order; each
    /// `Ok` is durable when the future resolves. One image failing does not
    /// stop the others. The default saves them one by one; a sink that can
    /// flush once for all of them (as [`Dataset`] does) overrides it.
    fn save_all<'a>(
        &'a self,
        images: Vec<GeneratedImage<'a>>,
    ) -> BoxFuture<'a, Vec<Result<Stored, OutputError>>> {
        Box::pin(async move {
            let mut stored = Vec::with_capacity(images.len());
            for image in images {
                stored.push(self.save(image).await);
            }
            stored
        })
    }
    /// Records that `job` has all its images.
    fn job_done(
        &self,
        job: &Job,
        files: Vec<String>,
        kudos: f64,
        attempts: u32,
    ) -> Result<(), OutputError>;
    /// Records that `job` failed.
    fn job_failed(
        &self,
        job: &Job,
        class: &str,
        message: &str,
        images_saved: u32,
    ) -> Result<(), OutputError>;
    /// Whether a finished result of this job is already recorded.
    fn has_result(&self, job_key: &str) -> bool;
    /// Whether a stored image is gone (deleted by the user since).
    fn is_missing(&self, file_name: &str) -> bool;
    /// Forgets a stored image that is gone, so one made in its place is
    /// described afresh.
    fn forget(&self, file_name: &str) -> Result<(), OutputError>;
    /// Image `index` of the job keyed `job_key` is asked for with `seed` in
    /// place of the job's (`horde-batch reroll` chose it), so what describes
    /// the image records the seed sent. A sink that describes nothing ignores it.
    fn reseeded(&self, _job_key: &str, _index: u32, _seed: &str) {}
    /// Where it stores, for messages.
    fn location(&self) -> String;
}

/// Previews made from each new image's pixels while its check has them
/// decoded (the report's grid cells, `gallery::Previews`),
/// so the report need not decode the image again. Handed to a [`Dataset`]
/// by the app, which knows whether a report page will be written.
pub trait ImagePreviews: Send + Sync + std::fmt::Debug {
    /// Called in the writer's blocking task once the new image `file_name`
    /// (relative to the output folder, with its extension), its job's image
    /// number `image_index`, is written to its temp file, before it is
    /// renamed into place. Must not fail the image: a preview that cannot be
    /// made is left for the report to make.
    fn make(&self, file_name: &str, image_index: u32, image: super::DecodedWebp);
}

/// The user's output folder: images, sidecars, `metadata.jsonl`, results and errors.
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: OutputDir,
    template: FilenameTemplate,
    manifest: Arc<CompiledManifest>,
    /// The labels that are `metadata.jsonl` columns, for every row.
    label_columns: Arc<Vec<String>>,
    /// (job key, image index) → the seed a reroll chose for it (see
    /// [`ImageSink::reseeded`]); as many entries as rerolled images.
    reseeds: Arc<Mutex<HashMap<(String, u32), String>>>,
    /// Made from each new image as it is saved, if set.
    previews: Option<Arc<dyn ImagePreviews>>,
}

impl Dataset {
    pub fn new(
        dir: OutputDir,
        template: FilenameTemplate,
        manifest: Arc<CompiledManifest>,
    ) -> Self {
        let label_columns = Arc::new(manifest.label_columns());
        Self {
            dir,
            template,
            manifest,
            label_columns,
            reseeds: Arc::default(),
            previews: None,
        }
    }

    /// The same dataset, making `previews` of every new image it saves.
    #[must_use]
    pub fn with_previews(mut self, previews: Arc<dyn ImagePreviews>) -> Self {
        self.previews = Some(previews);
        self
    }

    /// The bytes to store: the Horde's WebP with the A1111 parameters in its
    /// EXIF (the pixels stay the Horde's), unless the manifest turned that off
    /// or the very same untagged file is already there (written by a version
    /// that did not tag, before a crash): then it is kept as it is.
    fn with_parameters(&self, name: &str, sidecar: &Sidecar, bytes: Vec<u8>) -> Vec<u8> {
        if !self.manifest.output.a1111_parameters {
            return bytes;
        }
        let existing = self
            .dir
            .root()
            .join(format!("{name}.{}", super::IMAGE_EXTENSION));
        if std::fs::read(&existing).is_ok_and(|on_disk| on_disk == bytes) {
            return bytes;
        }
        let text = super::a1111::parameters_text(sidecar);
        super::a1111::with_parameters(&bytes, &text).unwrap_or(bytes)
    }

    /// The file name, sidecar and index row of an image.
    fn describe(
        &self,
        image: &GeneratedImage<'_>,
    ) -> Result<(String, Sidecar, IndexRow), OutputError> {
        let GeneratedImage {
            job,
            generation,
            request_id,
            index,
            n,
            submitted_ms,
            kudos,
            ..
        } = image;
        let key = job.key.to_string();
        let width = param_u32(job, "width");
        let height = param_u32(job, "height");
        let manifest_name = self.manifest.name().to_owned();
        let name = self.template.render(&NameFields {
            manifest: &manifest_name,
            job: &job.name,
            key: &key,
            index: *index,
            seed: &generation.seed,
            model: &generation.model,
            width,
            height,
            id: job.id.as_deref().unwrap_or(&key),
        })?;
        let reseed = self.reseeds.lock().get(&(key.clone(), *index)).cloned();
        let now = SystemTime::now();
        let submitted = UNIX_EPOCH + Duration::from_millis(*submitted_ms);
        let sidecar = Sidecar {
            schema: Sidecar::SCHEMA,
            file_name: String::new(),
            manifest: self.manifest.file.path.display().to_string(),
            manifest_name,
            job: job.name.to_string(),
            job_key: key.clone(),
            image_index: *index,
            prompt_template: match &job.negative_template {
                Some(negative) => format!("{} ### {negative}", job.prompt_template),
                None => job.prompt_template.to_string(),
            },
            prompt: job.prompt.clone(),
            negative_prompt: job.negative.clone(),
            model: generation.model.clone(),
            params: request_params(job, *n, *index, reseed),
            request: serde_json::to_value(&*job.request).unwrap_or(Value::Null),
            seed: generation.seed.clone(),
            batch_index: generation.batch_index(),
            horde_request_id: (*request_id).to_owned(),
            generation_id: generation.id.clone(),
            worker_id: generation.worker_id.clone(),
            worker_name: generation.worker_name.clone(),
            censored: generation.censored,
            gen_metadata: serde_json::to_value(&generation.gen_metadata).unwrap_or(Value::Null),
            kudos: *kudos,
            submitted_at: format_timestamp(submitted.min(now)),
            completed_at: format_timestamp(now),
            horde_batch_version: HORDE_BATCH_VERSION.to_owned(),
            labels: job.labels.clone(),
            sources: job.sources.as_deref().map(sidecar_sources),
            alchemy: None,
        };
        let row = IndexRow {
            file_name: String::new(),
            text: job.prompt.clone(),
            negative_prompt: job.negative.clone().unwrap_or_default(),
            job: job.name.to_string(),
            job_key: key,
            image_index: *index,
            model: generation.model.clone(),
            seed: generation.seed.clone(),
            width,
            height,
            steps: param_u32(job, "steps"),
            cfg_scale: job
                .params
                .get("cfg_scale")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            sampler_name: job
                .params
                .get("sampler_name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            censored: generation.censored,
            horde_request_id: (*request_id).to_owned(),
            generation_id: generation.id.clone(),
            loras: loras_column(job),
            post_processing: job
                .params
                .get("post_processing")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
            columns: Map::new(),
        };
        let row = self.with_columns(row, job, &sidecar);
        Ok((name, sidecar, row))
    }
}

impl Dataset {
    /// `row` with the caption under its chosen name, one column per label of
    /// the manifest (`null` where this job has none, so every row has the same
    /// columns) and the extra columns.
    fn with_columns(&self, mut row: IndexRow, job: &Job, sidecar: &Sidecar) -> IndexRow {
        let output = &self.manifest.output;
        if output.caption_column != "text" {
            let caption = std::mem::take(&mut row.text);
            row.columns
                .insert(output.caption_column.clone(), Value::from(caption));
        }
        for name in self.label_columns.iter() {
            let value = job.labels.get(name).map_or(Value::Null, column_value);
            row.columns.insert(name.clone(), value);
        }
        for name in &output.extra_columns {
            let value = match name.as_str() {
                "worker_name" => Value::from(sidecar.worker_name.as_str()),
                "worker_id" => Value::from(sidecar.worker_id.as_str()),
                "kudos" => Value::from(sidecar.kudos),
                "prompt_template" => Value::from(sidecar.prompt_template.as_str()),
                "submitted_at" => Value::from(sidecar.submitted_at.as_str()),
                "completed_at" => Value::from(sidecar.completed_at.as_str()),
                "batch_index" => sidecar.batch_index.map_or(Value::Null, Value::from),
                param => job.params.get(param).map_or(Value::Null, column_value),
            };
            row.columns.insert(name.clone(), value);
        }
        row
    }
}

/// A value as a `metadata.jsonl` cell: scalars as they are, lists and maps as
/// their JSON text, so a column has one type on every row (as `datasets` needs).
fn column_value(value: &Value) -> Value {
    match value {
        Value::Array(_) | Value::Object(_) => Value::from(value.to_string()),
        scalar => scalar.clone(),
    }
}

/// The `loras` column: `name` or `name:weight` per LoRA, comma-separated.
fn loras_column(job: &Job) -> String {
    let Some(Value::Array(loras)) = job.params.get("loras") else {
        return String::new();
    };
    loras
        .iter()
        .filter_map(|lora| {
            let name = lora.get("name")?.as_str()?;
            Some(match lora.get("model").and_then(Value::as_f64) {
                Some(weight) => format!("{name}:{weight}"),
                None => name.to_owned(),
            })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl ImageSink for Dataset {
    fn save<'a>(&'a self, image: GeneratedImage<'a>) -> BoxFuture<'a, Result<Stored, OutputError>> {
        Box::pin(async move {
            self.save_all(vec![image])
                .await
                .pop()
                .unwrap_or_else(|| Err(join_error(self, "save_all answered no image")))
        })
    }

    fn save_all<'a>(
        &'a self,
        images: Vec<GeneratedImage<'a>>,
    ) -> BoxFuture<'a, Vec<Result<Stored, OutputError>>> {
        Box::pin(async move {
            let count = images.len();
            let index_enabled = self.manifest.output.index;
            // Names and descriptions first (a bad name fails only its image), then
            // one blocking task writes the rest as one group commit.
            let mut answers: Vec<Option<Result<Stored, OutputError>>> = Vec::with_capacity(count);
            let mut batch = Vec::new();
            for (position, image) in images.into_iter().enumerate() {
                match self.describe(&image) {
                    Ok((name, sidecar, row)) => {
                        answers.push(None);
                        let bytes = self.with_parameters(&name, &sidecar, image.bytes);
                        batch.push((position, name, bytes, sidecar, row));
                    }
                    Err(error) => answers.push(Some(Err(error))),
                }
            }
            if batch.is_empty() {
                return answers.into_iter().flatten().collect();
            }
            let dir = self.dir.clone();
            let previews = self.previews.clone();
            let written = tokio::task::spawn_blocking(move || {
                let images = batch
                    .iter()
                    .map(|(_, name, bytes, sidecar, row)| NewImage {
                        rel_name: name,
                        webp: bytes,
                        sidecar,
                        index_row: index_enabled.then(|| row.clone()),
                    })
                    .collect();
                let results = dir.write_images_with(images, previews.as_deref());
                batch
                    .into_iter()
                    .map(|(position, ..)| position)
                    .zip(results)
                    .collect::<Vec<_>>()
            })
            .await;
            match written {
                Ok(results) => {
                    for (position, result) in results {
                        answers[position] = Some(result.map(|w| Stored {
                            file_name: w.file_name,
                            already_present: w.already_present,
                        }));
                    }
                }
                Err(e) => {
                    for answer in answers.iter_mut().filter(|a| a.is_none()) {
                        *answer = Some(Err(join_error(self, &e.to_string())));
                    }
                }
            }
            answers
                .into_iter()
                .map(|a| a.unwrap_or_else(|| Err(join_error(self, "image left unanswered"))))
                .collect()
        })
    }

    fn job_done(
        &self,
        job: &Job,
        mut files: Vec<String>,
        kudos: f64,
        attempts: u32,
    ) -> Result<(), OutputError> {
        files.sort();
        files.retain(|f| !f.is_empty());
        self.dir.put_result(&JobResult {
            id: job.id.clone(),
            job_key: job.key.to_string(),
            job: job.name.to_string(),
            images: files,
            kudos,
            attempts,
            completed_at: format_timestamp(SystemTime::now()),
        })
    }

    fn job_failed(
        &self,
        job: &Job,
        class: &str,
        message: &str,
        images_saved: u32,
    ) -> Result<(), OutputError> {
        self.dir.record_error(&JobError {
            job_key: job.key.to_string(),
            job: job.name.to_string(),
            class: class.to_owned(),
            message: message.to_owned(),
            images_saved,
            images_wanted: job.images,
            at: format_timestamp(SystemTime::now()),
        })
    }

    fn has_result(&self, job_key: &str) -> bool {
        self.dir.has_result(job_key)
    }

    fn is_missing(&self, file_name: &str) -> bool {
        self.dir.image_missing(file_name)
    }

    fn forget(&self, file_name: &str) -> Result<(), OutputError> {
        self.dir.forget_image(file_name)
    }

    fn reseeded(&self, job_key: &str, index: u32, seed: &str) {
        self.reseeds
            .lock()
            .insert((job_key.to_owned(), index), seed.to_owned());
    }

    fn location(&self) -> String {
        self.dir.root().display().to_string()
    }
}

/// A job outcome a [`MemorySink`] recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        job_key: String,
        files: Vec<String>,
    },
    Failed {
        job_key: String,
        class: String,
        message: String,
    },
}

/// A sink in memory, for tests of the engine: it keeps the bytes of every
/// image under `<job key>-<index>` and every job outcome.
#[derive(Debug, Default)]
pub struct MemorySink {
    images: Mutex<Vec<(String, Vec<u8>)>>,
    outcomes: Mutex<Vec<Outcome>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every image stored, by name, in the order they came.
    pub fn images(&self) -> Vec<(String, Vec<u8>)> {
        self.images.lock().clone()
    }

    /// Every job outcome, in the order they came.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().clone()
    }
}

impl ImageSink for MemorySink {
    fn save<'a>(&'a self, image: GeneratedImage<'a>) -> BoxFuture<'a, Result<Stored, OutputError>> {
        Box::pin(async move {
            super::verify_webp(&image.bytes).map_err(|error| OutputError::Webp {
                path: PathBuf::from("(memory)"),
                error,
            })?;
            let file_name = format!("{}-{}", image.job.key, image.index);
            let mut images = self.images.lock();
            let already_present = images.iter().any(|(name, _)| *name == file_name);
            if !already_present {
                images.push((file_name.clone(), image.bytes));
            }
            Ok(Stored {
                file_name,
                already_present,
            })
        })
    }

    fn job_done(&self, job: &Job, files: Vec<String>, _: f64, _: u32) -> Result<(), OutputError> {
        self.outcomes.lock().push(Outcome::Done {
            job_key: job.key.to_string(),
            files,
        });
        Ok(())
    }

    fn job_failed(&self, job: &Job, class: &str, message: &str, _: u32) -> Result<(), OutputError> {
        self.outcomes.lock().push(Outcome::Failed {
            job_key: job.key.to_string(),
            class: class.to_owned(),
            message: message.to_owned(),
        });
        Ok(())
    }

    fn is_missing(&self, file_name: &str) -> bool {
        !self.images.lock().iter().any(|(name, _)| name == file_name)
    }

    fn forget(&self, file_name: &str) -> Result<(), OutputError> {
        self.images.lock().retain(|(name, _)| name != file_name);
        Ok(())
    }

    fn has_result(&self, job_key: &str) -> bool {
        self.outcomes
            .lock()
            .iter()
            .any(|outcome| matches!(outcome, Outcome::Done { job_key: key, .. } if key == job_key))
    }

    fn location(&self) -> String {
        "(memory)".to_owned()
    }
}

/// The blocking writer task died (a panic): its images are not saved.
fn join_error(dataset: &Dataset, message: &str) -> OutputError {
    OutputError::Io {
        action: "write images in",
        path: dataset.dir.root().to_owned(),
        error: std::io::Error::other(message.to_owned()),
    }
}

fn param_u32(job: &Job, name: &str) -> u32 {
    job.params
        .get(name)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0)
}

/// Every parameter as sent for a request of `n` images starting at
/// `first_index`, whose seed a reroll may have chosen (`reseed`).
fn request_params(job: &Job, n: u32, first_index: u32, reseed: Option<String>) -> Value {
    let mut params = (*job.params).clone();
    params.insert("n".into(), Value::from(n));
    if let Some(seed) = reseed.or_else(|| job.seed_for(first_index)) {
        params.insert("seed".into(), Value::from(seed));
    }
    Value::Object(params)
}

/// What a sidecar records of a job's source images: paths and hashes.
fn sidecar_sources(sources: &crate::manifest::JobSources) -> super::sidecar::SidecarSources {
    let file = |source: &crate::manifest::SourceRef, strength: Option<f64>| {
        super::sidecar::SidecarSourceFile {
            path: source.path.clone(),
            hash: source.hash.clone(),
            strength,
        }
    };
    super::sidecar::SidecarSources {
        source_processing: sources.processing.as_str().to_owned(),
        source_image: file(&sources.image, None),
        source_mask: sources.mask.as_deref().map(|mask| file(mask, None)),
        extra_source_images: sources
            .extra
            .iter()
            .map(|extra| file(&extra.image, Some(extra.strength)))
            .collect(),
    }
}
