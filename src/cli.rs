//! The command line: clap types and help text. No I/O happens here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Examples:
  horde-batch validate manifests/*.yaml
  horde-batch plan manifests/quickstart.yaml --list
  horde-batch schema > manifests/schema.json

Exit codes:
  0    everything asked for was done
  1    some jobs failed (see errors.jsonl)
  2    usage or manifest error
  3    auth, kudos or key error
  4    ledger locked by another run, or damaged
  130  interrupted (Ctrl-C / SIGTERM)";

/// Resumable, rate-limited batch image generation for the AI Horde.
#[derive(Debug, Parser)]
#[command(name = "horde-batch", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub logging: LoggingArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags shared by every command.
#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check manifests without expanding them into requests; exit 2 if any is invalid.
    Validate(ValidateArgs),
    /// Show what a manifest would generate: jobs, requests and images, before anything is spent.
    Plan(PlanArgs),
    /// Print the manifest JSON Schema (for editors with yaml-language-server).
    Schema,
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
}
