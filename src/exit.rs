//! The process exit codes, documented in the README and `--help`. Scripts and
//! cron jobs depend on them: never renumber one.

/// Everything asked for was done.
pub const SUCCESS: u8 = 0;
/// The run finished, but some jobs failed (their errors are in `errors.jsonl`).
pub const JOBS_FAILED: u8 = 1;
/// Bad command line or manifest (clap uses 2 for usage errors too).
pub const USAGE: u8 = 2;
/// The Horde refused the key, or kudos ran out.
pub const AUTH: u8 = 3;
/// The ledger is locked by another run, or damaged.
pub const LEDGER: u8 = 4;
/// `--max-runtime` was reached: submitting stopped, the rest resumes next run.
pub const MAX_RUNTIME: u8 = 5;
/// Interrupted by Ctrl-C or SIGTERM (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
