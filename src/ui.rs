//! How the user asked to see a command's output: log verbosity and format,
//! and how progress is shown. Plain choices shared by `cli` (which parses
//! them), `logging` and `progress` (which follow them); no I/O.

use clap::{Args, ValueEnum};

/// Logging flags shared by every command.
#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors: no progress lines, no summary (overrides RUST_LOG).
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

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars on a terminal, JSON lines otherwise.
    Auto,
    Bars,
    Json,
    None,
}
