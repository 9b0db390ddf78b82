//! The command line: clap types and help text. No I/O happens here.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::ui::{LogFormat, LoggingArgs, ProgressMode};

const AFTER_HELP: &str = "\
Examples:
  horde-batch validate manifests/*.yaml
  horde-batch plan manifests/quickstart.yaml --list
  horde-batch run manifests/quickstart.yaml --simulate
  AI_HORDE_API_KEY=... horde-batch run manifests/animals-dataset.yaml
  horde-batch cancel manifests/animals-dataset.yaml
  horde-batch schema > manifests/schema.json

The API key is read from AI_HORDE_API_KEY or --api-key-file (anonymous when
neither is set); it is never written to disk or logs.

Exit codes (retry: whether running the same command again can help):
  0    everything asked for was done
  1    some jobs or alchemy forms failed (errors.jsonl, status)     retry
  2    usage, manifest or setup error (output folder, redirecting URL)  no
  3    auth, kudos or key error (also: --max-kudos reached)            no
  4    ledger locked by another run (retry), or damaged (no)
  5    --max-runtime reached (the next run resumes)                    retry
  6    the Horde could not be reached (--unreachable-after), or cancel failed  retry
  130  stopped (Ctrl-C / SIGTERM / SIGHUP)                             retry";

/// Resumable, rate-limited batch image generation for the AI Horde.
#[derive(Debug, Parser)]
#[command(name = "horde-batch", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests without expanding them into requests; exit 2 if any is invalid.
    Validate(ValidateArgs),
    /// Show what a manifest would generate: jobs, requests and images, before anything is spent.
    Plan(PlanArgs),
    /// Print the manifest JSON Schema (for editors with yaml-language-server).
    Schema,
    /// Generate every image of a manifest; rerunning resumes where the last run stopped.
    Run(RunArgs),
    /// Cancel the Horde requests a killed run left behind (frees the queue, saves finished images).
    #[command(mut_arg("shard", |arg| arg.help(SHARD_HELP_CANCEL)))]
    Cancel(CancelArgs),
    /// Show a batch's progress: counts by state, requests in flight, failures, kudos (also during a run).
    #[command(mut_arg("shard", |arg| arg.help(SHARD_HELP_STATUS)))]
    Status(StatusArgs),
    /// Combine the shard folders of a batch run with --shard into one metadata.jsonl and results.
    Merge(MergeArgs),
    /// Write a batch (sharded or not) as WebDataset tar shards, Parquet files with the images
    /// embedded, or a Hub-ready imagefolder; rerunning resumes and writes the same files.
    Export(ExportArgs),
    /// List the jobs that failed and have not succeeded since: class, message, how often.
    #[command(mut_arg("shard", |arg| arg.help(SHARD_HELP_FAILURES)))]
    Failures(FailuresArgs),
    /// Set rejected images aside (into `<output>/.rejected/`); the next run makes them again under their names.
    #[command(mut_arg("shard", |arg| arg.help(SHARD_HELP_REROLL)))]
    Reroll(RerollArgs),
    /// Run alchemy forms (captions, NSFW flags, tags, upscales) over images already on disk: a manifest's batch, or any image folder; rerunning resumes.
    Caption(CaptionArgs),
    /// Write `report.html` (every image, X/Y/Z grids, failures, tick-to-reject) in the output folder; works mid-run too.
    #[command(mut_arg("shard", |arg| arg.help(SHARD_HELP_REPORT)))]
    Report(ReportArgs),
    /// Serve the simulated AI Horde on 127.0.0.1 (for rehearsals, tests and benchmarks).
    Sim(crate::sim::SimConfig),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

// `--shard` is one flag of `PlacesArgs`, shared by every command that works
// on a batch's folders; its help (written for `run`) is replaced per command,
// so each says what the shard selects there.
const SHARD_HELP_STATUS: &str = "Show the status of only this part of the jobs (e.g. 2/5: the \
second of five parts, as `run --shard 2/5` made them), from `<output>/shard-2-of-5/`; `auto` \
as for `run`. Without it, a batch run in shards shows every shard and the total.";
const SHARD_HELP_REPORT: &str = "Write the report of only this part of the jobs (e.g. 2/5: the \
second of five parts, as `run --shard 2/5` made them), into `<output>/shard-2-of-5/`.";
const SHARD_HELP_FAILURES: &str = "List the failed jobs of only this part of the jobs (e.g. 2/5: \
the second of five parts, as `run --shard 2/5` made them), from `<output>/shard-2-of-5/`.";
const SHARD_HELP_REROLL: &str = "The images belong to this part of the jobs (e.g. 2/5: the \
second of five parts, as `run --shard 2/5` made them): set aside from `<output>/shard-2-of-5/`.";
const SHARD_HELP_CANCEL: &str = "Cancel the requests of only this part of the jobs (e.g. 2/5: \
the second of five parts, as `run --shard 2/5` made them), from the ledger in \
`<output>/shard-2-of-5/`.";

/// What `--max-runtime` does with requests still on the Horde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AtMaxRuntime {
    /// Leave them for the next run to collect.
    Detach,
    /// Cancel them (finished images are saved).
    Cancel,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    /// A manifest (its batch's images and its jobs' `alchemy:`), or a folder of
    /// images (`.webp`, `.png`, `.jpg`), whose `metadata.jsonl` is kept and extended.
    pub target: PathBuf,
    /// The forms to run on every image, comma-separated (e.g.
    /// `caption,nsfw,RealESRGAN_x2plus`). Default: each job's `alchemy:` for a
    /// manifest, `caption` for a folder.
    #[arg(long, value_delimiter = ',', value_name = "FORMS")]
    pub forms: Vec<String>,
    /// Offer the forms to fast alchemists only (the Horde charges one kudo less per form).
    #[arg(long)]
    pub no_slow_workers: bool,
    /// Write a kohya-style `<name>.txt` with the caption beside each image.
    #[arg(long)]
    pub caption_files: bool,
    /// Run against a simulated Horde started in this process: offline and free.
    #[arg(long, conflicts_with = "horde_url")]
    pub simulate: bool,
    /// On Ctrl-C or SIGTERM, leave requests on the Horde for a later resume instead of cancelling them.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub horde: HordeArgs,
    #[command(flatten)]
    pub places: PlacesArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The manifest whose batch to report on.
    pub manifest: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub places: PlacesArgs,
}

/// Where the Horde is and who we are to it.
#[derive(Debug, Args)]
pub struct HordeArgs {
    /// Base URL of the AI Horde API (endpoints are appended as v2/...).
    #[arg(long, env = "AI_HORDE_URL", value_name = "URL")]
    pub horde_url: Option<String>,
    /// Read the API key from this file (one key on one line) instead of AI_HORDE_API_KEY.
    /// Repeat it to run with several keys (a key pool); a file listing several
    /// keys is --api-keys-file's.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Vec<PathBuf>,
    /// Read several API keys from this file, one per line (blank lines and `#`
    /// comments skipped); they join the keys of --api-key-file in a key pool.
    #[arg(long, value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Contact for the Client-Agent header (an email or URL), so Horde admins can reach you.
    #[arg(long, env = "HORDE_BATCH_CONTACT", value_name = "CONTACT")]
    pub contact: Option<String>,
}

/// Where a run keeps its files.
#[derive(Debug, Args)]
pub struct PlacesArgs {
    /// Output directory (default: the manifest's `output.dir`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// State directory holding the ledger (default: `<output>/.horde-batch`).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Only this part of the jobs (e.g. 2/5: the second of five disjoint parts, by job key), written
    /// to `<output>/shard-2-of-5/` with its own state; `merge` combines the parts' indexes. `auto`:
    /// the part a Kubernetes Indexed Job, a Slurm array or an AWS Batch array job gives this process.
    #[arg(long, value_name = "I/N", value_parser = clap::value_parser!(ShardArg))]
    pub shard: Option<ShardArg>,
    /// How many shards `--shard auto` splits into where the orchestrator does not say (a
    /// Kubernetes Indexed Job: its `completions`; also HORDE_BATCH_SHARDS). Elsewhere it must
    /// agree with the orchestrator's count, or with N of `--shard I/N`.
    #[arg(long, value_name = "N", requires = "shard", value_parser = shard_count)]
    pub shards: Option<u32>,
}

/// What `--shard` names: one part of the jobs, or `auto` (the part the
/// orchestrator running this process gives it, read from its environment
/// once, where the places are resolved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardArg {
    /// `--shard auto`.
    Auto,
    /// `--shard I/N`.
    Fixed(crate::plan::Shard),
}

impl std::str::FromStr for ShardArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(ShardArg::Auto);
        }
        text.parse()
            .map(ShardArg::Fixed)
            .map_err(|e| format!("{e}, or `auto`"))
    }
}

/// `--shards N`: a shard count, 1 to [`crate::plan::Shard::MAX_COUNT`].
fn shard_count(text: &str) -> Result<u32, String> {
    let max = crate::plan::Shard::MAX_COUNT;
    match text.trim().parse::<u32>() {
        Ok(count) if (1..=max).contains(&count) => Ok(count),
        _ => Err(format!(
            "`{text}` is not a number of shards from 1 to {max}"
        )),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The manifest to run.
    pub manifest: PathBuf,
    /// Run against a simulated Horde started in this process: offline and free.
    #[arg(long, conflicts_with = "horde_url")]
    pub simulate: bool,
    /// On Ctrl-C or SIGTERM, leave requests on the Horde for a later resume instead of cancelling them.
    #[arg(long)]
    pub detach: bool,
    /// Refuse expansions larger than this many jobs (overrides `run.max_jobs`).
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,
    /// The ledger is damaged: move it aside and rebuild it from the sidecars on disk, then run.
    #[arg(long)]
    pub rebuild_state: bool,
    /// How progress is shown: bars on a terminal and JSON lines otherwise (auto), or forced.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Seconds between progress reports (JSON lines and the status file).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// Stop submitting after this long (e.g. 6h, 90m) and exit with code 5; the next run resumes.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_runtime: Option<Duration>,
    /// At --max-runtime, detach from requests on the Horde (the next run collects them) or cancel them.
    #[arg(long, value_enum, default_value_t = AtMaxRuntime::Detach)]
    pub at_max_runtime: AtMaxRuntime,
    /// Stop submitting (exit 3) before the batch's kudos would pass N: what every run on this state folder was charged, plus the estimate for what is in flight.
    #[arg(long, value_name = "N")]
    pub max_kudos: Option<f64>,
    /// Submit even when the Horde has no worker for a model (requests then wait for one).
    #[arg(long)]
    pub wait_for_workers: bool,
    /// Run only the jobs that failed before (`horde-batch failures` lists them); a plain rerun retries them too, with the rest.
    #[arg(long)]
    pub retry_failed: bool,
    /// Do not write report.html (and its grids) at the end; `horde-batch
    /// report` writes it on demand. It costs about 4 CPU s per 1,000 new images.
    #[arg(long)]
    pub no_report: bool,
    /// Write no report.html at the end of a run whose batch holds more
    /// images than this: one page (and its memory) grows with every image,
    /// and a run stopped with Ctrl-C should exit promptly. `horde-batch
    /// report` still writes it on demand.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub report_max_images: u64,
    /// Stop (exit 6) when the Horde has given no successful answer for this long (a wrong URL, an outage).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub unreachable_after: Duration,
    #[command(flatten)]
    pub horde: HordeArgs,
    #[command(flatten)]
    pub places: PlacesArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// Durations of the engine, hidden from `--help`: the defaults suit the real
/// Horde; tests and rehearsals against a faster simulated Horde scale them down.
#[derive(Debug, Args, Clone)]
pub struct TuningArgs {
    /// Spacing of submits.
    #[arg(long, hide = true, env = "HORDE_BATCH_SUBMIT_INTERVAL", value_parser = humantime::parse_duration)]
    pub submit_interval: Option<Duration>,
    /// Shortest time between two checks of one request.
    #[arg(long, hide = true, env = "HORDE_BATCH_POLL_FLOOR", value_parser = humantime::parse_duration)]
    pub poll_floor: Option<Duration>,
    /// Longest time between two checks of one request (keep it well below the Horde's 20-minute expiry).
    #[arg(long, hide = true, env = "HORDE_BATCH_POLL_CAP", value_parser = humantime::parse_duration)]
    pub poll_cap: Option<Duration>,
    /// How long the Horde caches `find_user` (30 s on the real server).
    #[arg(long, hide = true, env = "HORDE_BATCH_FIND_USER_CACHE", value_parser = humantime::parse_duration)]
    pub find_user_cache: Option<Duration>,
    /// The first back-off after a transient error (it doubles per try).
    #[arg(long, hide = true, env = "HORDE_BATCH_RETRY_BASE", value_parser = humantime::parse_duration)]
    pub retry_base: Option<Duration>,
    /// The longest single wait, whatever `Retry-After` says.
    #[arg(long, hide = true, env = "HORDE_BATCH_MAX_WAIT", value_parser = humantime::parse_duration)]
    pub max_wait: Option<Duration>,
    /// How long a request that reads done while an image is still processing is followed.
    #[arg(long, hide = true, env = "HORDE_BATCH_LATE_IMAGE_WAIT", value_parser = humantime::parse_duration)]
    pub late_image_wait: Option<Duration>,
    /// Spacing of alchemy submits (`POST /v2/interrogate/async`, 90 a minute per IP).
    #[arg(long, hide = true, env = "HORDE_BATCH_ALCHEMY_SUBMIT_INTERVAL", value_parser = humantime::parse_duration)]
    pub alchemy_submit_interval: Option<Duration>,
    /// How long one alchemy form is expected to take (the first status read of a request waits that per form).
    #[arg(long, hide = true, env = "HORDE_BATCH_ALCHEMY_FORM_TIME", value_parser = humantime::parse_duration)]
    pub alchemy_form_time: Option<Duration>,
    /// How long an alchemy request may deliver nothing before it is cancelled (30 min: past the Horde's expiry).
    #[arg(long, hide = true, env = "HORDE_BATCH_ALCHEMY_STALE_AFTER", value_parser = humantime::parse_duration)]
    pub alchemy_stale_after: Option<Duration>,
}

impl TuningArgs {
    /// The engine's durations: the defaults, with what was given replaced.
    pub fn resolve(&self) -> crate::scheduler::Tuning {
        let mut tuning = crate::scheduler::Tuning::default();
        if let Some(interval) = self.submit_interval {
            tuning.submit_interval = interval;
        }
        if let Some(floor) = self.poll_floor {
            tuning.poll_floor = floor;
        }
        if let Some(cap) = self.poll_cap {
            tuning.poll_cap = cap;
        }
        if let Some(cache) = self.find_user_cache {
            tuning.find_user_cache = cache;
        }
        if let Some(base) = self.retry_base {
            tuning.policy.backoff_base = base;
        }
        if let Some(max_wait) = self.max_wait {
            tuning.policy.max_wait = max_wait;
        }
        if let Some(wait) = self.late_image_wait {
            tuning.late_image_wait = wait;
        }
        tuning
    }
}

#[derive(Debug, Args)]
pub struct FailuresArgs {
    /// The manifest whose failed jobs to list.
    pub manifest: PathBuf,
    /// One JSON object per failed job, on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub places: PlacesArgs,
}

#[derive(Debug, Args)]
pub struct RerollArgs {
    /// The manifest the images belong to.
    pub manifest: PathBuf,
    /// Images to set aside: file names as in metadata.jsonl, or paths to them.
    pub images: Vec<PathBuf>,
    /// A file listing more of them, one per line (e.g. copied from the report page).
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Keep the seed of images whose job fixes their seeds (`seeds: [...]` or
    /// `derived`): the next run then pays for the same image again. Without it
    /// such an image gets a new seed, recorded for the next run.
    #[arg(long)]
    pub keep_seed: bool,
    #[command(flatten)]
    pub places: PlacesArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The manifest whose output folder to report on.
    pub manifest: PathBuf,
    #[command(flatten)]
    pub places: PlacesArgs,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The manifest whose shards to merge.
    pub manifest: PathBuf,
    /// Output directory holding the `shard-I-of-N` folders (default: the manifest's `output.dir`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Merge what is there even when a shard is missing, running or unfinished
    /// (without it, such a merge writes nothing and exits 1, or 4 while a shard runs).
    #[arg(long)]
    pub partial: bool,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// `00000.tar` (`{key}.webp`, `{key}.txt`, `{key}.json`), `00000.parquet` (the rows) and
    /// `00000_stats.json` per shard: img2dataset's layout, read by webdataset and `datasets`.
    Webdataset,
    /// `00000.parquet` per shard: an `image` column in `datasets`' Image layout plus the rows'
    /// columns, and `00000_stats.json`.
    Parquet,
    /// An imagefolder for `huggingface-cli upload`: `data/00000/{key}.webp` (at most 10,000
    /// files a folder) and one `metadata.jsonl` at the top.
    Hub,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The manifest whose batch to export.
    pub manifest: PathBuf,
    /// The layout to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Folder to write into (default: `<output>-<format>` beside the output folder).
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Images per shard (at most 10,000 for `hub`, the Hub's files per folder).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub shard_size: u64,
    /// Output directory holding the batch (default: the manifest's `output.dir`).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Export what is there even when images are still missing or a shard is running
    /// (without it, such an export writes nothing and exits 1, or 4 while a run is active).
    #[arg(long)]
    pub partial: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The manifest whose run to cancel.
    pub manifest: PathBuf,
    #[command(flatten)]
    pub horde: HordeArgs,
    #[command(flatten)]
    pub places: PlacesArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Manifest files to check.
    #[arg(required = true)]
    pub manifests: Vec<PathBuf>,
    /// Refuse expansions larger than this many jobs (overrides `run.max_jobs`).
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The manifest to plan.
    pub manifest: PathBuf,
    /// Machine-readable output: an object with `totals` {jobs, requests, images} and per-job counts;
    /// with --list, one JSON object per job instead.
    #[arg(long)]
    pub json: bool,
    /// List every job with its key and resolved prompt.
    #[arg(long)]
    pub list: bool,
    /// Refuse expansions larger than this many jobs (overrides `run.max_jobs`).
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,
    /// Ask the Horde for a kudos estimate (one dry run per distinct parameter set) and show the key's balance.
    #[arg(long)]
    pub kudos: bool,
    /// With --kudos: ask the built-in simulated Horde instead.
    #[arg(long, requires = "kudos")]
    pub simulate: bool,
    #[command(flatten)]
    pub horde: HordeArgs,
}
