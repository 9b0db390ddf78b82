//! `horde-batch run`: wiring only. Open the output folder and the ledger,
//! connect to the Horde, check the manifest against it, hand over to the
//! engine, watch for signals and deadlines, and report the summary.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::{runtime, Batch, Horde};
use super::AppError;
use crate::alchemy::{Alchemy, Feeding};
use crate::cli::{AtMaxRuntime, RunArgs};
use crate::exit;
use crate::horde::{FailureClass, HordeClient};
use crate::manifest::CaptionFrom;
use crate::manifest::CompiledManifest;
use crate::output::{Dataset, ImageSink};
use crate::progress::Reporter;
use crate::progress::{LastRun, StatusReport};
use crate::scheduler::{Closed, Ending, Engine, KeyPool, OnStop, Parts, RunConfig, RunStats};

/// Budget when the Horde cannot tell us the key's concurrency (its default for registered users).
const FALLBACK_CONCURRENCY: u32 = 30;

/// `horde-batch run`.
pub fn run(args: &RunArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, args.max_jobs, &args.places)?;
    let Batch {
        compiled,
        template,
        out_dir,
        state_dir,
        ..
    } = &batch;
    let compiled = Arc::clone(compiled);
    runtime()?.block_on(async {
        // The output directory first: if it cannot be written, nothing else is touched.
        let output = batch.open_output().await?;
        let rebuild_from = if args.rebuild_state {
            let moved = crate::rebuild::move_aside(state_dir)
                .map_err(|e| AppError::Config(format!("cannot move the state folder {} aside: {e}", state_dir.display())))?;
            Some(moved)
        } else {
            None
        };
        let store = batch.open_store().await?;
        // Ours now (the ledger's lock is held): temp files left in it are a killed run's.
        output.start_sweep();
        // The output folder is the record of what exists: a state folder that was
        // deleted (or never copied along) is rebuilt from the sidecars, unasked.
        let rebuild_from = match rebuild_from {
            None if store.run_meta()?.is_none() && store.is_empty() => {
                let report = crate::rebuild::rebuild(&store, &output, &compiled).await?;
                if report.images > 0 {
                    crate::say!(
                        "horde-batch: no ledger in {}; rebuilt it from the {} images in {} ({} sidecars skipped)",
                        state_dir.display(),
                        report.images,
                        out_dir.display(),
                        report.skipped,
                    );
                }
                None
            }
            other => other,
        };
        if let Some(moved) = rebuild_from {
            let mut report = crate::rebuild::rebuild(&store, &output, &compiled).await?;
            report.moved_to = moved;
            crate::say!(
                "horde-batch: rebuilt the ledger from {} images on disk ({} records; {} sidecars skipped){}",
                report.images,
                report.records,
                report.skipped,
                report.moved_to.as_ref().map(|p| format!("; the old state folder is at {}", p.display())).unwrap_or_default(),
            );
        }
        // A state folder belongs to one manifest: another one's job keys could
        // match (same prompt and parameters) and be taken for done.
        if let Some(meta) = store.run_meta()? {
            if meta.manifest_name != compiled.name() {
                return Err(AppError::Config(format!(
                    "the state folder {} belongs to the manifest `{}` ({}); give `{}` its own \
                     --state (or --out), so that neither takes the other's work for its own",
                    state_dir.display(),
                    meta.manifest_name,
                    meta.manifest_path,
                    compiled.name()
                )));
            }
        }
        store.record_run_start(
            crate::output::HORDE_BATCH_VERSION,
            &compiled.file.path.display().to_string(),
            compiled.name(),
        )?;
        store.flush().await?;
        // Read only when it matters: it walks the whole ledger.
        // Alchemy's forms are the batch's kudos too.
        let images_spent = match args.max_kudos {
            Some(_) => store.counts()?.kudos_charged,
            None => 0.0,
        };
        let spent_before = match args.max_kudos {
            Some(_) => images_spent + store.alchemy_counts()?.map_or(0.0, |alchemy| alchemy.kudos),
            None => 0.0,
        };
        let horde = Horde::connect(&args.horde, args.simulate).await?;
        let client = horde.client.clone();
        let keys = key_pool(&horde.clients, &compiled).await?;
        let capacity: u32 = keys
            .keys()
            .iter()
            .filter(|k| k.retired().is_none())
            .map(|k| k.budget.capacity())
            .sum();
        let served_models = preflight(&horde.clients, &compiled, args.wait_for_workers).await?;
        let only = if args.retry_failed {
            let failed = super::failures::failed_jobs(&batch)?;
            crate::say!("horde-batch: retrying {} failed job(s) only", failed.len());
            // A failed job's key is one horde-batch wrote; any other names no job.
            Some(Arc::new(failed.iter().filter_map(|job| job.job_key.parse().ok()).collect()))
        } else {
            None
        };
        let kudos_per_image_estimate = match args.max_kudos {
            Some(_) => first_request_estimate(&client, &compiled).await,
            None => None,
        };
        // Every setting is resolved before the engine is built: it never learns one later.
        let config = RunConfig {
            tuning: crate::scheduler::Tuning {
                unreachable_after: args.unreachable_after,
                ..args.tuning.resolve()
            },
            on_stop: if args.detach { OnStop::Detach } else { OnStop::Cancel },
            max_kudos: args.max_kudos,
            kudos_spent_before: spent_before,
            kudos_per_image_estimate,
            served_models,
            shard: batch.shard,
            only,
            prefix_file: Some(crate::scheduler::prefix::file_for(
                state_dir,
                &compiled.expansion_fingerprint(),
                batch.shard,
            )),
        };
        let (sender, events) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (alchemy, backlog) = match start_alchemy(
            args,
            &batch,
            &client,
            &store,
            &output,
            (capacity, images_spent),
            &stop,
        ) {
            Some((alchemy, backlog)) => (Some(alchemy), Some(backlog)),
            None => (None, None),
        };
        // A run that writes the page makes its grid cells as it saves each image.
        let previews = (!args.no_report && compiled.total_images() <= args.report_max_images)
            .then(|| Arc::new(crate::gallery::Previews::default()));
        let mut dataset = Dataset::new(output.clone(), template.clone(), Arc::clone(&compiled));
        if let Some(previews) = &previews {
            dataset = dataset.with_previews(Arc::clone(previews) as _);
        }
        let dataset: Arc<dyn ImageSink> = Arc::new(dataset);
        let prompt_captions = (compiled.output.caption_files
            && compiled.output.caption_from == CaptionFrom::Prompt)
            .then(|| output.clone());
        let sink: Arc<dyn ImageSink> = if alchemy.is_some() || prompt_captions.is_some() {
            Arc::new(Feeding::new(dataset, alchemy.as_ref().map(Alchemy::feed), prompt_captions))
        } else {
            dataset
        };
        let parts = Parts {
            client: client.clone(),
            keys,
            ledger: Arc::new(store.clone()),
            sink,
            manifest: Arc::clone(&compiled),
            events: sender,
        };
        let engine = Engine::new(parts, config, stop);
        watch_signals(Arc::clone(&engine));
        let stop_deadline = watch_stop_deadline(Arc::clone(&engine));
        if let Some(limit) = args.max_runtime {
            watch_deadline(Arc::clone(&engine), limit, args.at_max_runtime);
        }
        let live_alchemy = alchemy.as_ref().map(Alchemy::live_counts);
        let reporter = Reporter::start(
            events,
            args.progress,
            args.progress_interval,
            state_dir.clone(),
            live_alchemy,
        );
        tracing::info!(manifest = %compiled.file.path.display(), out = %out_dir.display(), budget = capacity, "run started");
        engine.run().await;
        // Images keep their forms coming after the last one is saved.
        if let Some(backlog) = backlog {
            backlog
                .await
                .map_err(|e| AppError::Config(format!("reading the ledger failed: {e}")))??;
        }
        let alchemy_end = match alchemy {
            Some(alchemy) => Some(alchemy.finish().await),
            None => None,
        };
        // Done with the Horde: what is left (summary, report) is local work,
        // which a second Ctrl-C still cuts short.
        stop_deadline.abort();
        // Every figure of the summary, the report and the exit code comes from this one fold.
        let stats = reporter.finish().await;
        crate::progress::print_summary(&stats, out_dir);
        let alchemy_counts = store.alchemy_counts()?;
        let mut alchemy_stopped = false;
        let alchemy_failed = match alchemy_end {
            Some(Ok(end)) => {
                super::alchemy::print_summary(&alchemy_counts.clone().unwrap_or_default(), &end);
                alchemy_stopped = end.stopped;
                false
            }
            Some(Err(error)) => {
                super::report_error(AppError::Alchemy(error));
                true
            }
            None => false,
        };
        // The batch as `status` will show it from now on: status.json and the page agree with it.
        let status = final_status(&batch, &store, &stats);
        if let Err(error) = crate::progress::write_status_file(state_dir, &status) {
            tracing::warn!(%error, "cannot write the status file");
        }
        report_strays(out_dir).await;
        if !args.no_report {
            write_run_report_unless_too_big(&batch, status, args.report_max_images, previews).await;
        }
        horde.close().await;
        let code = exit::code(&stats.ending());
        let code = match &alchemy_counts {
            // A signal after the last image, while forms were still coming, is an interruption.
            Some(_) if alchemy_stopped && code == exit::SUCCESS => exit::INTERRUPTED,
            Some(counts) => super::alchemy::exit_code(code, Some(counts), alchemy_failed),
            None => code,
        };
        Ok(ExitCode::from(code))
    })
}

/// Alchemy beside the run when a job asks for it, started before the engine.
/// Also returns the backlog task: it feeds the pass the batch's saved images
/// (a killed run's, or a manifest's that gained `alchemy:`) from the ledger
/// while the engine already submits, and must end before the pass is told
/// that no more images come. `(capacity, images_spent)`: the keys' concurrency
/// and, under `--max-kudos`, what the batch's images were charged before.
fn start_alchemy(
    args: &RunArgs,
    batch: &Batch,
    client: &HordeClient,
    store: &crate::store::Store,
    output: &crate::output::OutputDir,
    (capacity, images_spent): (u32, f64),
    stop: &CancellationToken,
) -> Option<(Alchemy, tokio::task::JoinHandle<Result<(), AppError>>)> {
    let compiled = &batch.compiled;
    if !compiled.uses_alchemy() {
        return None;
    }
    let mut settings = super::alchemy::config(&args.tuning, args.detach);
    // The Horde refuses more waiting and processing forms than concurrency × 10.
    settings.max_forms_in_flight = capacity.max(1) * 10;
    settings.caption_files =
        compiled.output.caption_files && compiled.output.caption_from == CaptionFrom::Alchemy;
    settings.caption_from = compiled.output.caption_from;
    // `output.index: false` keeps no metadata.jsonl: alchemy does not start one.
    settings.index_caption_column = compiled
        .output
        .index
        .then(|| compiled.output.caption_column.clone());
    settings.max_kudos = args.max_kudos.map(|max| (max, images_spent));
    let alchemy = Alchemy::start(
        client.clone(),
        store.clone(),
        output.clone(),
        settings,
        stop.clone(),
    );
    let (compiled, shard, ledger, feed) = (
        Arc::clone(compiled),
        batch.shard,
        store.clone(),
        alchemy.feed(),
    );
    let backlog = tokio::task::spawn_blocking(move || {
        let specs = super::alchemy::specs_by_job(&compiled, shard);
        for work in super::alchemy::saved_images(&ledger, &specs, None)? {
            // A closed feed means alchemy stopped; the next run picks the rest up.
            let _ = feed.send(work);
        }
        Ok(())
    });
    Some((alchemy, backlog))
}

/// The report at the end of a run, unless the batch holds more than
/// `max_images` (the page and its memory grow with every image, and a run
/// stopped with Ctrl-C should exit promptly); then one line says so.
async fn write_run_report_unless_too_big(
    batch: &Batch,
    status: StatusReport,
    max_images: u64,
    previews: Option<Arc<crate::gallery::Previews>>,
) {
    let images = status.images_saved;
    if images <= max_images {
        return write_report(batch, status, previews).await;
    }
    match crate::logging::messages() {
        crate::logging::Messages::Text => crate::say!(
            "horde-batch: no report page for a batch of {images} images (more than \
             --report-max-images {max_images}); `horde-batch report` writes it"
        ),
        crate::logging::Messages::Json => tracing::info!(
            images,
            max = max_images,
            "no report page for a batch this big; `horde-batch report` writes it"
        ),
        crate::logging::Messages::Quiet => {}
    }
}

/// The batch's status at the end of a run: the whole batch (earlier runs
/// too) as `status` computes it, with this run's own figures as `last_run`.
/// If the ledger cannot be read, this run's figures alone, as a warning says.
fn final_status(batch: &Batch, store: &crate::store::Store, stats: &RunStats) -> StatusReport {
    let last_run = LastRun::of(stats);
    let mut status = match super::status::batch_report(batch, store, Some(last_run.clone())) {
        Ok(status) => status,
        Err(error) => {
            tracing::warn!(%error, "the ledger could not be read for the status; it shows this run only");
            let mut status = StatusReport::live(stats);
            status.finished = status.images_saved >= status.images_wanted;
            status.last_run = Some(last_run);
            status
        }
    };
    status.active = false;
    status.pid = None;
    status.updated_ms = crate::store::now_ms();
    status
}

/// Writes `report.html` for the run that just ended (stopped or failed too).
/// The run's outcome stands whatever happens here: a failure is a warning.
async fn write_report(
    batch: &Batch,
    status: crate::progress::StatusReport,
    previews: Option<Arc<crate::gallery::Previews>>,
) {
    let written =
        tokio::task::block_in_place(|| super::report::write(batch, Some(status), previews));
    match written {
        // Like the summary: a line of text, a JSON log line, or nothing with -q.
        Ok(written) => match crate::logging::messages() {
            crate::logging::Messages::Text => {
                crate::say!("horde-batch: report at {}", written.page.display())
            }
            crate::logging::Messages::Json => {
                tracing::info!(page = %written.page.display(), "report at")
            }
            crate::logging::Messages::Quiet => {}
        },
        Err(error) => {
            tracing::warn!(%error, "the report page could not be written; `horde-batch report` tries again")
        }
    }
}

/// Names what the output folder holds that no run wrote as a pair (left alone).
async fn report_strays(out_dir: &std::path::Path) {
    let root = out_dir.to_owned();
    let Ok(strays) = tokio::task::spawn_blocking(move || crate::output::find_strays(&root)).await
    else {
        return;
    };
    if strays.is_empty() {
        return;
    }
    let first = |paths: &[std::path::PathBuf]| {
        paths
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    tracing::warn!(
        sidecars_without_image = strays.sidecars_without_image.len(),
        images_without_sidecar = strays.images_without_sidecar.len(),
        sidecars = %first(&strays.sidecars_without_image),
        images = %first(&strays.images_without_sidecar),
        "files in the output folder without their other half were left alone (not in the index or the ledger)"
    );
}

/// The run's keys, each with its budget. A key the Horde refuses is retired
/// (logged by fingerprint) while another works; when none works, the run
/// fails as a single key would.
async fn key_pool(
    clients: &[HordeClient],
    compiled: &CompiledManifest,
) -> Result<KeyPool, AppError> {
    let mut budgets = Vec::with_capacity(clients.len());
    let mut refused = Vec::new();
    for client in clients {
        match budget_capacity(client, compiled).await {
            Ok(capacity) => budgets.push((client.clone(), capacity)),
            Err(AppError::Auth(message)) if clients.len() > 1 => {
                budgets.push((client.clone(), 1));
                refused.push((
                    crate::scheduler::fingerprint(client.api_key().expose_secret()),
                    message,
                ));
            }
            Err(error) => return Err(error),
        }
    }
    let pool = KeyPool::new(budgets);
    for (fingerprint, message) in refused {
        let retired = pool
            .by_fingerprint(Some(&fingerprint))
            .is_some_and(|key| pool.retire(key, &message));
        if !retired {
            // Every key was refused: the last one fails the run as a single key would.
            return Err(AppError::Auth(message));
        }
    }
    if pool.keys().len() > 1 {
        tracing::info!(
            keys = pool.keys().len(),
            fingerprints = ?pool.keys().iter().map(|k| k.fingerprint.as_str()).collect::<Vec<_>>(),
            "running with a pool of API keys"
        );
    }
    Ok(pool)
}

/// Images allowed to wait on the Horde at once for one key: the manifest's
/// choice, else the key's concurrency.
async fn budget_capacity(
    client: &HordeClient,
    compiled: &CompiledManifest,
) -> Result<u32, AppError> {
    if let Some(max) = compiled.run.max_in_flight {
        return Ok(max);
    }
    match client.find_user().await {
        Ok(user) => Ok(user.concurrency.max(1)),
        Err(error) if error.class() == FailureClass::Auth => Err(AppError::Auth(error.to_string())),
        // A wrong URL: following the redirect could send the key elsewhere.
        Err(error) if error.class() == FailureClass::Redirected => {
            Err(AppError::Config(error.to_string()))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the key's concurrency; assuming {FALLBACK_CONCURRENCY}");
            Ok(FALLBACK_CONCURRENCY)
        }
    }
}

/// First Ctrl-C / SIGTERM / SIGHUP: stop submitting, cancel or detach, flush,
/// exit 130. Second: exit at once (every ledger step is already durable).
fn watch_signals(engine: Arc<Engine>) {
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            let Some(name) = next_signal().await else {
                return;
            };
            signals += 1;
            if signals == 1 {
                let what = match engine.on_stop() {
                    OnStop::Cancel => "cancelling requests on the Horde",
                    OnStop::Detach => "leaving requests on the Horde for the next run",
                };
                crate::say!("horde-batch: {name}: stopping: no new submits, {what}; press Ctrl-C again to exit at once");
                engine.stop.cancel();
            } else {
                crate::say!("horde-batch: exiting at once; rerun the same command to resume");
                std::process::exit(i32::from(exit::INTERRUPTED));
            }
        }
    });
}

/// How long a stopping run may take to cancel its requests before it exits anyway.
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// However the run is stopped, the process exits within `STOP_DEADLINE`, even
/// when the Horde does not answer the cancels: every ledger step is durable,
/// and what is left on the Horde is picked up by the next run or `cancel`.
/// Aborted once the engine is done with the Horde.
fn watch_stop_deadline(engine: Arc<Engine>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        engine.stop.cancelled().await;
        tokio::time::sleep(STOP_DEADLINE).await;
        crate::say!(
            "horde-batch: the Horde did not answer within {}; exiting. Requests it still holds are \
             picked up by the next run or cancelled by `horde-batch cancel`",
            humantime::format_duration(STOP_DEADLINE)
        );
        // The reporter's fold is not done: the ending is made of what the engine knows.
        let ending = Ending::of(engine.aborted(), engine.closed(), true, true);
        std::process::exit(i32::from(exit::code(&ending)));
    })
}

/// At `limit`: no more submits, then detach from or cancel what is on the Horde.
fn watch_deadline(engine: Arc<Engine>, limit: std::time::Duration, at: AtMaxRuntime) {
    tokio::spawn(async move {
        tokio::time::sleep(limit).await;
        crate::say!(
            "horde-batch: --max-runtime of {} reached; stopping",
            humantime::format_duration(limit)
        );
        engine.close_submits(Closed::MaxRuntime);
        engine.stop_with(match at {
            AtMaxRuntime::Detach => OnStop::Detach,
            AtMaxRuntime::Cancel => OnStop::Cancel,
        });
    });
}

/// Waits for SIGINT, SIGTERM or SIGHUP (a closed terminal) and names it;
/// `None` if signals cannot be watched.
pub(super) async fn next_signal() -> Option<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut interrupt), Ok(mut terminate), Ok(mut hangup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return None;
        };
        tokio::select! {
            _ = interrupt.recv() => Some("interrupted"),
            _ = terminate.recv() => Some("terminated"),
            _ = hangup.recv() => Some("the terminal was closed (SIGHUP)"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.ok().map(|()| "interrupted")
    }
}

/// Before submitting: which models some worker serves (jobs for the others
/// fail at once instead of waiting 20 minutes, unless told to wait), and, for a
/// shared key, whether its pixel and step limits fit every job.
async fn preflight(
    clients: &[HordeClient],
    compiled: &CompiledManifest,
    wait_for_workers: bool,
) -> Result<Option<std::collections::HashSet<String>>, AppError> {
    let Some(client) = clients.first() else {
        return Ok(None);
    };
    let mut served_models = None;
    match client.models().await {
        Ok(models) => {
            let served: std::collections::HashSet<String> = models
                .into_iter()
                .filter(|m| m.count > 0)
                .map(|m| m.name)
                .collect();
            let unserved = compiled
                .model_choices()
                .into_iter()
                .flat_map(|(_, lists)| lists)
                .filter(|list| !list.iter().any(|m| served.contains(m)))
                .count();
            if unserved > 0 && wait_for_workers {
                tracing::warn!(
                    "no worker serves the models of {unserved} job(s); waiting for workers as asked"
                );
            } else {
                served_models = Some(served);
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list the Horde's models; skipping the worker check")
        }
    }
    for client in clients.iter().filter(|client| !client.is_anonymous()) {
        shared_key_limits(client, compiled).await?;
    }
    Ok(served_models)
}

/// The key may be a shared key: its owner can limit pixels and steps per request
/// (only a UUID-shaped key is looked up: the id goes into the URL).
async fn shared_key_limits(
    client: &HordeClient,
    compiled: &CompiledManifest,
) -> Result<(), AppError> {
    if let Ok(Some(shared)) = client.own_shared_key().await {
        let mut problems = Vec::new();
        for (job, pixels, steps) in compiled.largest_request() {
            if shared.max_image_pixels >= 0 && pixels > shared.max_image_pixels as u64 {
                problems.push(format!(
                    "job `{job}` asks for {pixels} pixels; the shared key allows {}",
                    shared.max_image_pixels
                ));
            }
            if shared.max_image_steps >= 0 && steps > shared.max_image_steps as u64 {
                problems.push(format!(
                    "job `{job}` asks for {steps} steps; the shared key allows {}",
                    shared.max_image_steps
                ));
            }
        }
        if !problems.is_empty() {
            return Err(AppError::SharedKeyLimits(problems.join("; ")));
        }
    }
    Ok(())
}

/// Kudos per image of the manifest's first request, from a dry run (cached by the Horde).
async fn first_request_estimate(client: &HordeClient, compiled: &CompiledManifest) -> Option<f64> {
    let job = compiled.jobs().next()?;
    let request = crate::scheduler::request_for(&job, 1, 0).ok()?;
    match client.dry_run(&request).await {
        Ok(kudos) => Some(kudos),
        Err(error) => {
            tracing::warn!(%error, "no kudos estimate; --max-kudos counts charged kudos only until the first images land");
            None
        }
    }
}
