//! `horde-batch caption`: alchemy forms over images already on disk, either a
//! manifest's batch (each job's `alchemy:`, or `--forms` for every image) or
//! any folder of images. Its ledger is the folder's state folder, so a rerun
//! resumes and a finished folder costs nothing more; its index is kept and
//! extended with the forms' columns.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::alchemy::{config, print_summary, saved_images, specs_by_job};
use super::config::{runtime, Batch, Horde};
use super::AppError;
use crate::alchemy::{Alchemy, Work};
use crate::cli::CaptionArgs;
use crate::manifest::{AlchemyForm, AlchemySpec, CaptionFrom};
use crate::output::OutputDir;
use crate::store::Store;

/// The name of the state folder inside an image folder (as for a batch).
const STATE_DIR: &str = ".horde-batch";

/// What `caption` works on.
struct Target {
    dir: PathBuf,
    state_dir: PathBuf,
    /// The index's file name in `dir` (a shard's has its own).
    index_name: &'static str,
    caption_column: String,
    caption_from: CaptionFrom,
    caption_files: bool,
    /// A manifest's jobs' `alchemy:`, by job key (empty for a folder).
    specs: std::collections::HashMap<String, Arc<AlchemySpec>>,
    /// Whether `target` is a plain folder (every image on disk is a source).
    folder: bool,
}

/// `horde-batch caption`.
pub fn caption(args: &CaptionArgs) -> Result<ExitCode, AppError> {
    let every = forms_given(args)?;
    let target = if args.target.is_dir() {
        let dir = args.target.clone();
        Target {
            state_dir: args
                .places
                .state
                .clone()
                .unwrap_or_else(|| dir.join(STATE_DIR)),
            index_name: crate::output::INDEX_FILE,
            caption_column: "text".into(),
            caption_from: CaptionFrom::Prompt,
            caption_files: args.caption_files,
            specs: Default::default(),
            folder: true,
            dir,
        }
    } else {
        let batch = Batch::load(&args.target, None, &args.places)?;
        let output = &batch.compiled.output;
        Target {
            index_name: match batch.shard {
                Some(_) => crate::output::SHARD_INDEX_FILE,
                None => crate::output::INDEX_FILE,
            },
            caption_column: output.caption_column.clone(),
            caption_from: output.caption_from,
            caption_files: args.caption_files
                || (output.caption_files && output.caption_from == CaptionFrom::Alchemy),
            specs: specs_by_job(&batch.compiled, batch.shard),
            folder: false,
            dir: batch.out_dir,
            state_dir: batch.state_dir,
        }
    };
    // A folder with no forms named gets captions.
    let every = every.or_else(|| {
        target.folder.then(|| {
            Arc::new(AlchemySpec {
                forms: AlchemyForm::parse("caption").into_iter().collect(),
                slow_workers: !args.no_slow_workers,
            })
        })
    });
    runtime()?.block_on(async {
        let dir = target.dir.clone();
        let index_name = target.index_name;
        let output =
            tokio::task::spawn_blocking(move || OutputDir::open_with_index(dir, index_name))
                .await
                .map_err(|e| AppError::Config(format!("opening the folder failed: {e}")))??;
        let state_dir = target.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&state_dir))
            .await
            .map_err(|e| AppError::Config(format!("opening the ledger failed: {e}")))??;
        let work = images(&target, &store, every.as_ref())?;
        let horde = Horde::connect(&args.horde, args.simulate).await?;
        let stop = CancellationToken::new();
        watch_signals(stop.clone());
        let mut settings = config(&args.tuning, args.detach);
        settings.caption_files = target.caption_files;
        settings.caption_from = target.caption_from;
        settings.index_caption_column = Some(target.caption_column.clone());
        let images = work.len();
        let alchemy = Alchemy::start(horde.client.clone(), store.clone(), output, settings, stop);
        let feed = alchemy.feed();
        for item in work {
            let _ = feed.send(item);
        }
        drop(feed);
        tracing::info!(images, folder = %target.dir.display(), "caption started");
        let end = alchemy.finish().await;
        horde.close().await;
        let counts = store.alchemy_counts()?.unwrap_or_default();
        let (end, failed) = match end {
            Ok(end) => (Some(end), false),
            Err(error) => {
                super::report_error(AppError::Alchemy(error));
                (None, true)
            }
        };
        if let Some(end) = &end {
            print_summary(&counts, end);
        }
        let code = super::alchemy::exit_code(crate::exit::SUCCESS, Some(&counts), failed);
        let interrupted = end.as_ref().is_some_and(|e| e.stopped);
        Ok(ExitCode::from(if interrupted {
            crate::exit::INTERRUPTED
        } else {
            code
        }))
    })
}

/// `--forms`, checked: known names, each once.
fn forms_given(args: &CaptionArgs) -> Result<Option<Arc<AlchemySpec>>, AppError> {
    if args.forms.is_empty() {
        return Ok(None);
    }
    let mut forms = Vec::new();
    for name in &args.forms {
        let name = name.trim();
        let form = AlchemyForm::parse(name).ok_or_else(|| {
            AppError::Config(format!(
                "--forms: `{}` is not an alchemy form; the Horde knows {}",
                crate::terminal::escaped(name),
                AlchemyForm::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if forms.contains(&form) {
            return Err(AppError::Config(format!(
                "--forms names `{name}` twice; the Horde would run and charge it twice"
            )));
        }
        forms.push(form);
    }
    Ok(Some(Arc::new(AlchemySpec {
        forms,
        slow_workers: !args.no_slow_workers,
    })))
}

/// The images to work on: a folder's images on disk, or a batch's saved images.
fn images(
    target: &Target,
    store: &Store,
    every: Option<&Arc<AlchemySpec>>,
) -> Result<Vec<Work>, AppError> {
    if !target.folder {
        return saved_images(store, &target.specs, every);
    }
    let Some(spec) = every else {
        return Ok(Vec::new());
    };
    let post_processors: Vec<&str> = AlchemyForm::ALL
        .iter()
        .filter(|form| form.is_post_processor())
        .map(|form| form.name())
        .collect();
    let files = crate::output::folder_images(&target.dir, &post_processors)?;
    Ok(files
        .into_iter()
        .map(|source| Work {
            source,
            spec: Arc::clone(spec),
            fresh: false,
        })
        .collect())
}

/// Ctrl-C once stops (cancelling requests on the Horde, or leaving them with
/// `--detach`); twice exits at once.
fn watch_signals(stop: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = 0;
        while let Some(name) = super::run::next_signal().await {
            signals += 1;
            if signals == 1 {
                crate::say!("horde-batch: {name}: stopping: no new alchemy requests; press Ctrl-C again to exit at once");
                stop.cancel();
            } else {
                crate::say!("horde-batch: exiting at once; rerun the same command to resume");
                std::process::exit(i32::from(crate::exit::INTERRUPTED));
            }
        }
    });
}
