//! The engine's image sink, wrapped: every image saved for a job with
//! `alchemy:` is fed to the alchemy pass as soon as it is durable, and with
//! `output.caption_files` (captions from the prompt) its `<name>.txt` is
//! written beside it. Everything else goes to the wrapped sink unchanged.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::Work;
use crate::manifest::Job;
use crate::output::{GeneratedImage, ImageSink, OutputDir, OutputError, Stored};

/// An [`ImageSink`] that feeds saved images to alchemy.
pub struct Feeding {
    inner: Arc<dyn ImageSink>,
    /// `None` when no job asks for alchemy.
    feed: Option<mpsc::UnboundedSender<Work>>,
    /// Where to write prompt caption files; `None` when they are not asked for.
    prompt_captions: Option<OutputDir>,
}

impl Feeding {
    pub fn new(
        inner: Arc<dyn ImageSink>,
        feed: Option<mpsc::UnboundedSender<Work>>,
        prompt_captions: Option<OutputDir>,
    ) -> Self {
        Feeding {
            inner,
            feed,
            prompt_captions,
        }
    }

    fn saved(&self, job: &Job, stored: &Stored) -> Result<(), OutputError> {
        if let Some(dir) = &self.prompt_captions {
            dir.write_caption_file(&stored.file_name, &job.prompt)?;
        }
        if let (Some(feed), Some(spec)) = (&self.feed, &job.alchemy) {
            // A closed feed means alchemy stopped; the next run picks the image up.
            let _ = feed.send(Work {
                source: stored.file_name.clone(),
                spec: Arc::clone(spec),
                fresh: !stored.already_present,
            });
        }
        Ok(())
    }
}

impl ImageSink for Feeding {
    fn save<'a>(&'a self, image: GeneratedImage<'a>) -> BoxFuture<'a, Result<Stored, OutputError>> {
        Box::pin(async move {
            let job = image.job;
            let stored = self.inner.save(image).await?;
            self.saved(job, &stored)?;
            Ok(stored)
        })
    }

    fn save_all<'a>(
        &'a self,
        images: Vec<GeneratedImage<'a>>,
    ) -> BoxFuture<'a, Vec<Result<Stored, OutputError>>> {
        Box::pin(async move {
            let jobs: Vec<&Job> = images.iter().map(|image| image.job).collect();
            let mut stored = self.inner.save_all(images).await;
            for (result, job) in stored.iter_mut().zip(jobs) {
                if let Ok(saved) = result {
                    if let Err(error) = self.saved(job, saved) {
                        *result = Err(error);
                    }
                }
            }
            stored
        })
    }

    fn job_done(
        &self,
        job: &Job,
        files: Vec<String>,
        kudos: f64,
        attempts: u32,
    ) -> Result<(), OutputError> {
        self.inner.job_done(job, files, kudos, attempts)
    }

    fn job_failed(
        &self,
        job: &Job,
        class: &str,
        message: &str,
        images_saved: u32,
    ) -> Result<(), OutputError> {
        self.inner.job_failed(job, class, message, images_saved)
    }

    fn has_result(&self, job_key: &str) -> bool {
        self.inner.has_result(job_key)
    }

    fn is_missing(&self, file_name: &str) -> bool {
        self.inner.is_missing(file_name)
    }

    fn forget(&self, file_name: &str) -> Result<(), OutputError> {
        self.inner.forget(file_name)
    }

    fn reseeded(&self, job_key: &str, index: u32, seed: &str) {
        self.inner.reseeded(job_key, index, seed);
    }

    fn location(&self) -> String {
        self.inner.location()
    }
}
