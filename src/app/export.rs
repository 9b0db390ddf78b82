//! `horde-batch export`: finds a batch's rows as `merge` and `status` do
//! (its own index, or every `shard-I-of-N` folder's part of it, in shard
//! order), refuses an unfinished batch unless `--partial` (how many images
//! are missing, from the ledger as `status` counts them), and hands the
//! rows to [`crate::export`], which writes the layout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::config::Batch;
use super::AppError;
use crate::cli::{ExportArgs, ExportFormat, PlacesArgs};
use crate::exit;
use crate::export::{Fault, Format, Options, Source};
use crate::output::{INDEX_FILE, SHARD_INDEX_FILE};

/// Hidden: a fault to inject (`kill-after-shards:K`, `full-after-bytes:N`), for tests.
const FAULT_VAR: &str = "HORDE_BATCH_EXPORT_FAULT";

/// `horde-batch export`.
pub fn export(args: &ExportArgs) -> Result<ExitCode, AppError> {
    let places = PlacesArgs {
        out: args.out.clone(),
        state: None,
        shard: None,
        shards: None,
    };
    let batch = Batch::load(&args.manifest, None, &places)?;
    if !batch.compiled.output.index {
        return Err(AppError::Config(
            "export reads the dataset index (metadata.jsonl), and this manifest turns it off \
             (output.index: false)"
                .to_owned(),
        ));
    }
    let format = match args.format {
        ExportFormat::Webdataset => Format::Webdataset,
        ExportFormat::Parquet => Format::Parquet,
        ExportFormat::Hub => Format::Hub,
    };
    let target = args
        .to
        .clone()
        .unwrap_or_else(|| default_target(&batch.out_dir, format));

    let (sources, gaps) = sources_and_gaps(&batch)?;
    if !gaps.is_empty() && !args.partial {
        crate::say!("horde-batch: nothing exported: {}", gaps.describe());
        crate::say!(
            "horde-batch: export again once the batch ran to its end, or export --partial to write what is there"
        );
        let code = if gaps.running > 0 {
            exit::LEDGER
        } else {
            exit::JOBS_FAILED
        };
        return Ok(ExitCode::from(code));
    }

    let options = Options {
        format,
        shard_size: args.shard_size,
        caption_column: batch.compiled.output.caption_column.clone(),
        fault: fault_from_env()?,
    };
    let summary = crate::export::export(&sources, &target, &options)?;
    let missing_files = if summary.failed > 0 {
        format!(
            " ({} row(s) whose image file is gone were left out)",
            summary.failed
        )
    } else {
        String::new()
    };
    crate::say!(
        "horde-batch: exported {} image(s) as {} into {}: {} shard(s), {} written ({:.1} MB), {} complete already{missing_files}",
        summary.images,
        format.name(),
        target.display(),
        summary.shards,
        summary.written,
        summary.bytes as f64 / 1e6,
        summary.shards - summary.written,
    );
    if !gaps.is_empty() {
        crate::say!("horde-batch: partial: {}", gaps.describe());
    }
    Ok(ExitCode::SUCCESS)
}

/// `<output>-<format>` beside the output folder (inside it, `datasets` would
/// load the exported images with the batch's own).
fn default_target(out: &Path, format: Format) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(|| "batch".into(), |n| n.to_string_lossy().into_owned());
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    parent.join(format!("{name}-{}", format.name()))
}

/// What keeps the batch from being whole.
#[derive(Debug, Default)]
struct Gaps {
    wanted: u64,
    /// Images not saved yet (of shards on disk, and of shards with no folder).
    missing: u64,
    /// Runs holding a ledger now.
    running: u64,
    /// Shards holding jobs with no folder yet.
    missing_shards: u64,
}

impl Gaps {
    fn is_empty(&self) -> bool {
        self.missing == 0 && self.running == 0
    }

    fn describe(&self) -> String {
        let mut parts = vec![format!(
            "{} of {} image(s) are still missing",
            self.missing, self.wanted
        )];
        if self.running > 0 {
            parts.push(format!("{} run(s) are active", self.running));
        }
        if self.missing_shards > 0 {
            parts.push(format!(
                "{} shard(s) holding jobs have no folder yet",
                self.missing_shards
            ));
        }
        parts.join("; ")
    }
}

/// The index files to export, in order, and what the batch still lacks
/// (from each ledger, as `status` counts it).
fn sources_and_gaps(batch: &Batch) -> Result<(Vec<Source>, Gaps), AppError> {
    // As `status` decides: a batch with no ledger of its own but shard
    // folders was run in shards.
    let mut found = if batch.state_dir.join("ledger").exists() {
        Vec::new()
    } else {
        super::merge::shard_folders(&batch.out_dir)?
    };
    found.sort_by_key(|(shard, _)| shard.index);
    let mut gaps = Gaps {
        wanted: batch.compiled.total_images(),
        ..Gaps::default()
    };
    let Some((first, _)) = found.first() else {
        let report = super::status::batch_status(batch)?;
        gaps.missing = report.images_wanted.saturating_sub(report.images_saved);
        gaps.running = u64::from(report.active);
        let source = Source {
            folder: batch.out_dir.clone(),
            index: batch.out_dir.join(INDEX_FILE),
            prefix: String::new(),
        };
        return Ok((vec![source], gaps));
    };
    let count = first.count;
    if found.iter().any(|(shard, _)| shard.count != count) {
        return Err(AppError::Config(format!(
            "{} holds shards of different counts; export the folders of one --shard I/N run",
            batch.out_dir.display()
        )));
    }
    let mut sources = Vec::with_capacity(found.len());
    let mut wanted_in_folders = 0u64;
    for (shard, folder) in &found {
        let report = super::status::batch_status(&batch.for_shard(*shard, None))?;
        wanted_in_folders += report.images_wanted;
        gaps.missing += report.images_wanted.saturating_sub(report.images_saved);
        gaps.running += u64::from(report.active);
        // Shard folders from before SHARD_INDEX_FILE hold a metadata.jsonl.
        let index = [SHARD_INDEX_FILE, INDEX_FILE]
            .map(|name| folder.join(name))
            .into_iter()
            .find(|path| path.exists())
            .unwrap_or_else(|| folder.join(SHARD_INDEX_FILE));
        sources.push(Source {
            folder: folder.clone(),
            index,
            prefix: format!("{}/", shard.folder()),
        });
    }
    let unplaced = gaps.wanted.saturating_sub(wanted_in_folders);
    if unplaced > 0 {
        gaps.missing += unplaced;
        let present: std::collections::BTreeSet<u32> =
            found.iter().map(|(shard, _)| shard.index).collect();
        let holding: std::collections::BTreeSet<u32> = batch
            .compiled
            .jobs()
            .map(|job| (job.key.0 % u64::from(count)) as u32 + 1) // < count + 1: fits u32.
            .collect();
        gaps.missing_shards = holding.difference(&present).count() as u64;
    }
    Ok((sources, gaps))
}

/// The injected fault `HORDE_BATCH_EXPORT_FAULT` asks for, if any.
fn fault_from_env() -> Result<Option<Fault>, AppError> {
    let Ok(text) = std::env::var(FAULT_VAR) else {
        return Ok(None);
    };
    let bad = || {
        AppError::Config(format!(
            "{FAULT_VAR}: `{text}` is not kill-after-shards:K or full-after-bytes:N"
        ))
    };
    let (name, value) = text.split_once(':').ok_or_else(bad)?;
    let value: u64 = value.parse().map_err(|_| bad())?;
    match name {
        "kill-after-shards" => Ok(Some(Fault::KillAfterShards(value))),
        "full-after-bytes" => Ok(Some(Fault::FullAfterBytes(value))),
        _ => Err(bad()),
    }
}
