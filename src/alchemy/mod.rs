//! Alchemy: the Horde's interrogation forms (caption, nsfw, interrogation,
//! post-processors such as `RealESRGAN_x2plus`) run on images in the output
//! folder, during a run as each image is saved, or over a folder with
//! `horde-batch caption`.
//!
//! Owns the lifecycle of one image's forms (`image.rs`): one interrogation
//! request per image, its intent and id checkpointed in the ledger's alchemy
//! tree, polled from what it observes, post-processed images fetched before
//! their URLs expire, a request deleted at expiry asked again, a form faulted
//! for good recorded as a failure of that image's alchemy; the pacing the
//! Horde's limits ask for (`pace.rs`); and where results land once an image's
//! forms are settled (`finish.rs`). Server facts: docs/horde-api.md §10.
//!
//! Must not: generate images, count for reports (every view reads the
//! ledger's alchemy tree), or write the output folder other than through
//! `output`.

mod feed;
mod finish;
mod image;
mod pace;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::horde::HordeClient;
use crate::manifest::{AlchemySpec, CaptionFrom};
use crate::output::OutputDir;
use crate::store::alchemy::AlchemyCounts;
use crate::store::{Store, StoreError};

pub use feed::Feeding;
pub use finish::apply_to_index;

/// Spacing of interrogation submits: the Horde allows 90 per minute per IP on
/// that route (its own counter, beside the image submits'); 88 leaves room for
/// a clock that is not quite ours.
pub const DEFAULT_SUBMIT_INTERVAL: Duration = Duration::from_millis(60_000 / 88);

/// How the forms run: every duration has the real Horde's value as default,
/// and tests against a faster simulated Horde scale them down.
#[derive(Debug, Clone)]
pub struct AlchemyConfig {
    /// Spacing of `POST /v2/interrogate/async`.
    pub submit_interval: Duration,
    /// The shortest and longest wait between two status reads of a request.
    pub poll_floor: Duration,
    pub poll_cap: Duration,
    /// How long one form is expected to take on an alchemist, for the first
    /// status read of a request (2 s per form observed).
    pub form_time: Duration,
    /// Forms queued or processing at once: the Horde refuses more than the
    /// key's concurrency × 10 (`TooManyPrompts`).
    pub max_forms_in_flight: u32,
    /// Images worked on at once (bounds memory: each holds its source while
    /// it is sent).
    pub max_images_in_flight: usize,
    /// The first wait after a failed call (it doubles per try, up to `max_wait`).
    pub retry_base: Duration,
    pub max_wait: Duration,
    /// How long one cancel may take while stopping.
    pub cancel_timeout: Duration,
    /// How long a request may deliver nothing before it is cancelled and its
    /// forms fail: past the Horde's 20-minute expiry, so only a server that
    /// neither delivers nor deletes gets there.
    pub stale_after: Duration,
    /// How long one post-processed image's download may take.
    pub download_timeout: Duration,
    /// Leave requests on the Horde when stopped (`run --detach`) instead of cancelling them.
    pub detach_on_stop: bool,
    /// Ask again for forms that failed for good in an earlier run.
    pub retry_failed: bool,
    /// Write `<name>.txt` with the `caption` form's text beside each image.
    pub caption_files: bool,
    /// Whether the index's caption column takes the `caption` form's text
    /// (the prompt then moves to a `prompt` column).
    pub caption_from: CaptionFrom,
    /// `--max-kudos`, and what the batch's images were charged before this
    /// pass: no interrogation is sent that would take the batch's kudos
    /// (images and forms) past it.
    pub max_kudos: Option<(f64, f64)>,
    /// Extend the output folder's index with the forms' columns when the
    /// pass ends, with this as the name of its caption column.
    pub index_caption_column: Option<String>,
}

impl Default for AlchemyConfig {
    fn default() -> Self {
        AlchemyConfig {
            submit_interval: DEFAULT_SUBMIT_INTERVAL,
            poll_floor: Duration::from_secs(1),
            poll_cap: Duration::from_secs(30),
            form_time: Duration::from_secs(2),
            max_forms_in_flight: 300,
            max_images_in_flight: 256,
            retry_base: Duration::from_secs(1),
            max_wait: Duration::from_secs(120),
            cancel_timeout: Duration::from_secs(3),
            stale_after: Duration::from_secs(30 * 60),
            download_timeout: Duration::from_secs(120),
            detach_on_stop: false,
            retry_failed: false,
            caption_files: false,
            caption_from: CaptionFrom::Prompt,
            max_kudos: None,
            index_caption_column: None,
        }
    }
}

/// One image whose forms are wanted: its file name in the output folder.
#[derive(Debug, Clone)]
pub struct Work {
    pub source: String,
    pub spec: Arc<AlchemySpec>,
    /// The image was just written (a new image, or a rerolled one in its
    /// place): what an earlier record says of that file is about another image.
    pub fresh: bool,
}

/// Why alchemy stopped before its work was done.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum AlchemyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Store(#[from] StoreError),
    #[error("alchemy stopped: {0}")]
    Horde(Box<crate::horde::HordeError>),
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

/// The calls alchemy made, for the log and the benchmarks.
#[derive(Debug, Default)]
pub struct Calls {
    pub submits: AtomicU64,
    pub status_reads: AtomicU64,
    pub cancels: AtomicU64,
    pub downloads: AtomicU64,
    pub rate_limited: AtomicU64,
    pub too_many_prompts: AtomicU64,
    pub urls_expired: AtomicU64,
}

impl Calls {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every call to the Horde's API (downloads from storage excluded).
    pub fn api_calls(&self) -> u64 {
        self.submits.load(Ordering::Relaxed)
            + self.status_reads.load(Ordering::Relaxed)
            + self.cancels.load(Ordering::Relaxed)
    }
}

/// What a finished alchemy pass did.
#[derive(Debug)]
pub struct AlchemyEnd {
    /// The pass stopped (a signal, a deadline) before every image was settled.
    pub stopped: bool,
    pub calls: Arc<Calls>,
    /// Index rows that gained columns, and rows added for post-processed images.
    pub index_rows_updated: u64,
    pub index_rows_added: u64,
}

/// What every image task shares.
struct Shared {
    client: HordeClient,
    store: Store,
    output: OutputDir,
    config: AlchemyConfig,
    stop: CancellationToken,
    pacer: pace::SubmitPacer,
    forms_in_flight: Arc<Semaphore>,
    served: pace::ServedForms,
    calls: Arc<Calls>,
    /// The alchemy tree's counts, kept up to date with every write of this
    /// pass (seeded from the tree when the pass starts), for live progress.
    live: Arc<parking_lot::Mutex<AlchemyCounts>>,
    /// Kudos of the alchemy forms delivered before this pass plus the price of
    /// every request this pass sent (a reservation, never given back), for `max_kudos`.
    committed_kudos: parking_lot::Mutex<f64>,
}

/// Alchemy running beside a run (or alone, for `caption`): images are fed in
/// as they are saved; [`Alchemy::finish`] waits for the last one.
pub struct Alchemy {
    feed: mpsc::UnboundedSender<Work>,
    live: Arc<parking_lot::Mutex<AlchemyCounts>>,
    no_more_work: CancellationToken,
    task: tokio::task::JoinHandle<Result<AlchemyEnd, AlchemyError>>,
}

impl Alchemy {
    /// Starts the alchemy pass. `stop` is the run's: once cancelled, no new
    /// request is sent and the ones on the Horde are cancelled (or left, with
    /// `detach_on_stop`).
    pub fn start(
        client: HordeClient,
        store: Store,
        output: OutputDir,
        config: AlchemyConfig,
        stop: CancellationToken,
    ) -> Alchemy {
        let (feed, work) = mpsc::unbounded_channel();
        let no_more_work = CancellationToken::new();
        // A child: alchemy failing for good stops alchemy, not the run.
        let shared = Arc::new(Shared::new(
            client,
            store,
            output,
            config,
            stop.child_token(),
        ));
        let live = Arc::clone(&shared.live);
        let task = tokio::spawn(run(shared, work, no_more_work.clone()));
        Alchemy {
            feed,
            live,
            no_more_work,
            task,
        }
    }

    /// The batch's alchemy counts as this pass changes them, for progress
    /// and the live `status.json`.
    pub fn live_counts(&self) -> Arc<parking_lot::Mutex<AlchemyCounts>> {
        Arc::clone(&self.live)
    }

    /// Where images whose forms are wanted go.
    pub fn feed(&self) -> mpsc::UnboundedSender<Work> {
        self.feed.clone()
    }

    /// Says no more images will come, waits until every image fed is settled
    /// (or the pass is stopped), then extends the index with the forms' columns.
    pub async fn finish(self) -> Result<AlchemyEnd, AlchemyError> {
        self.no_more_work.cancel();
        drop(self.feed);
        match self.task.await {
            Ok(end) => end,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    mut work: mpsc::UnboundedReceiver<Work>,
    no_more_work: CancellationToken,
) -> Result<AlchemyEnd, AlchemyError> {
    // Live progress starts from what the tree holds; each write then updates it.
    let before = shared.store.alchemy_counts()?.unwrap_or_default();
    *shared.committed_kudos.lock() = before.kudos;
    *shared.live.lock() = before;
    let mut images = Images {
        permits: Arc::new(Semaphore::new(shared.config.max_images_in_flight.max(1))),
        tasks: JoinSet::new(),
        seen: HashSet::new(),
        failure: None,
    };
    loop {
        tokio::select! {
            biased;
            Some(done) = images.tasks.join_next(), if !images.tasks.is_empty() => {
                images.settle(&shared, done);
            }
            () = no_more_work.cancelled() => break,
            item = work.recv() => match item {
                Some(item) => images.spawn(&shared, item).await,
                None => break,
            },
        }
    }
    // Images fed before the feed was closed.
    while let Ok(item) = work.try_recv() {
        images.spawn(&shared, item).await;
    }
    while let Some(done) = images.tasks.join_next().await {
        images.settle(&shared, done);
    }
    let failure = images.failure;
    if let Some(error) = failure {
        return Err(error);
    }
    let change = match &shared.config.index_caption_column {
        Some(caption_column) => Some(apply_to_index(
            &shared.store,
            &shared.output,
            caption_column,
            shared.config.caption_from,
        )?),
        None => None,
    };
    Ok(AlchemyEnd {
        stopped: shared.stop.is_cancelled(),
        calls: Arc::clone(&shared.calls),
        index_rows_updated: change.as_ref().map_or(0, |c| c.rows_updated),
        index_rows_added: change.as_ref().map_or(0, |c| c.rows_added),
    })
}

/// The image tasks of a pass.
struct Images {
    /// Bounds the images worked on at once.
    permits: Arc<Semaphore>,
    tasks: JoinSet<Result<(), AlchemyError>>,
    /// Images fed twice (a resume sweep and a save) are worked on once.
    seen: HashSet<String>,
    /// The first error that stops the pass.
    failure: Option<AlchemyError>,
}

impl Images {
    async fn spawn(&mut self, shared: &Arc<Shared>, item: Work) {
        if shared.stop.is_cancelled() || !self.seen.insert(item.source.clone()) {
            return;
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the image semaphore is never closed");
        let shared = Arc::clone(shared);
        self.tasks.spawn(async move {
            let _permit = permit;
            image::process(&shared, item).await
        });
    }

    fn settle(
        &mut self,
        shared: &Shared,
        done: Result<Result<(), AlchemyError>, tokio::task::JoinError>,
    ) {
        let result = match done {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        };
        if let Err(error) = result {
            self.failure.get_or_insert(error);
            shared.stop.cancel();
        }
    }
}

/// What [`cancel_left`] did.
#[derive(Debug, Default)]
pub struct Cancelled {
    pub cancelled: u64,
    pub failed: u64,
}

/// Cancels every interrogation request the ledger says may be on the Horde
/// (`horde-batch cancel`): forms already done keep their results, the rest
/// are wanted again by the next run.
pub async fn cancel_left(
    client: HordeClient,
    store: Store,
    output: OutputDir,
    config: AlchemyConfig,
) -> Result<Cancelled, AlchemyError> {
    let shared = Shared::new(client, store, output, config, CancellationToken::new());
    let mut report = Cancelled::default();
    let left: Vec<_> = shared
        .store
        .alchemy_records()
        .filter_map(|entry| match entry {
            Ok((source, record)) if record.request.is_some() => Some(Ok((source, record))),
            Ok(_) => None,
            Err(error) => Some(Err(error)),
        })
        .collect::<Result<_, _>>()?;
    for (source, record) in left {
        if image::cancel(&shared, source, record).await? {
            report.cancelled += 1;
        } else {
            report.failed += 1;
        }
    }
    Ok(report)
}

impl Shared {
    fn new(
        client: HordeClient,
        store: Store,
        output: OutputDir,
        config: AlchemyConfig,
        stop: CancellationToken,
    ) -> Shared {
        Shared {
            pacer: pace::SubmitPacer::new(config.submit_interval),
            forms_in_flight: Arc::new(Semaphore::new(config.max_forms_in_flight.max(1) as usize)),
            served: pace::ServedForms::default(),
            calls: Arc::new(Calls::default()),
            committed_kudos: parking_lot::Mutex::new(0.0),
            live: Arc::new(parking_lot::Mutex::new(AlchemyCounts::default())),
            client,
            store,
            output,
            config,
            stop,
        }
    }

    /// Reserves `price` kudos for a request under `max_kudos`; `false` when
    /// sending it could take the batch past the limit.
    fn reserve_kudos(&self, price: f64) -> bool {
        let Some((max, images_before)) = self.config.max_kudos else {
            return true;
        };
        let mut committed = self.committed_kudos.lock();
        if images_before + *committed + price > max {
            return false;
        }
        *committed += price;
        true
    }

    /// Gives back a reservation of a request the Horde did not queue.
    fn release_kudos(&self, price: f64) {
        if self.config.max_kudos.is_some() {
            *self.committed_kudos.lock() -= price;
        }
    }
}
