//! How a run ends, and the process exit codes made from it.
//!
//! [`Ending`] is the one fact an exit code is made from; the engine's event
//! fold (`scheduler::events::RunStats`) derives it, and [`code`] maps it. The
//! codes are documented in `docs/errors.md` and `--help`, with whether a
//! retry can help (orchestrators' retry policies are written from that).
//! Scripts and cron jobs depend on them: never renumber one. This module
//! sits below the engine and knows nothing of it.

use serde::Serialize;

/// Everything asked for was done.
pub const SUCCESS: u8 = 0;
/// The run finished, but some jobs failed (their errors are in `errors.jsonl`).
/// A retry helps: a rerun asks for them again.
pub const JOBS_FAILED: u8 = 1;
/// Bad command line, manifest or setup: the output folder cannot be written,
/// the Horde URL redirects (clap uses 2 for usage errors too). Retrying
/// cannot help: orchestrators fail the job for good on it (docs/guide.md).
pub const USAGE: u8 = 2;
/// The Horde refused the key, or kudos ran out. Retrying cannot help until
/// the key or its kudos change.
pub const AUTH: u8 = 3;
/// The ledger is locked by another run, or damaged. A retry helps once the
/// other run has ended; not a damaged ledger (`--rebuild-state`).
pub const LEDGER: u8 = 4;
/// `--max-runtime` was reached: submitting stopped, the rest resumes next run.
pub const MAX_RUNTIME: u8 = 5;
/// The Horde gave no successful answer for too long (a wrong URL, an outage);
/// or `cancel` could not reach it for every request. A retry helps, later.
pub const UNREACHABLE: u8 = 6;
/// Stopped by Ctrl-C, SIGTERM or SIGHUP (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

/// Why a run ended early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Abort {
    /// The Horde refused the API key.
    #[error("the Horde refused the API key: {0}")]
    Auth(String),
    /// A file could not be written (disk full, read-only, ...).
    #[error("an output file could not be written: {0}")]
    Output(String),
    /// The ledger could not be read or written, or disagrees with the files on disk.
    #[error("ledger: {0}")]
    Ledger(String),
    /// The server answered with a redirect, which is never followed (it could carry the key elsewhere).
    #[error("{0}")]
    Redirected(String),
    /// The Horde gave no successful answer for too long.
    #[error("{0}")]
    Unreachable(String),
}

/// Why submitting stopped while the run went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// `--max-runtime` was reached.
    MaxRuntime,
    /// The next request would pass `--max-kudos`.
    MaxKudos,
}

/// Why a run ended: the one fact its exit code is made from ([`code`]).
/// Serialized as its snake_case name (`"complete"`, `"aborted"`, …); an
/// abort's reason is told apart, as the summary's `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every job asked for is done.
    Complete,
    /// The run went through, but some jobs failed or could not finish.
    JobsFailed,
    /// Stopped by a signal.
    Interrupted,
    /// `--max-runtime` was reached.
    MaxRuntime,
    /// `--max-kudos` would have been passed.
    MaxKudos,
    /// Something made going on pointless.
    Aborted(Abort),
}

impl Ending {
    /// How a run with these facts ended: an abort wins, then a closed submit
    /// window, then a stop; otherwise whether every job is done.
    pub fn of(
        abort: Option<Abort>,
        closed: Option<Closed>,
        stopped: bool,
        jobs_left_undone: bool,
    ) -> Self {
        match (abort, closed) {
            (Some(abort), _) => Ending::Aborted(abort),
            (None, Some(Closed::MaxRuntime)) => Ending::MaxRuntime,
            (None, Some(Closed::MaxKudos)) => Ending::MaxKudos,
            (None, None) if stopped => Ending::Interrupted,
            (None, None) if jobs_left_undone => Ending::JobsFailed,
            (None, None) => Ending::Complete,
        }
    }

    /// The stable snake_case name scripts read.
    pub fn name(&self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::JobsFailed => "jobs_failed",
            Ending::Interrupted => "interrupted",
            Ending::MaxRuntime => "max_runtime",
            Ending::MaxKudos => "max_kudos",
            Ending::Aborted(_) => "aborted",
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Ending {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The exit code of a run (or `cancel`) that ended this way. Errors before a
/// run starts map through `AppError::exit_code`, with the same meanings.
pub fn code(ending: &Ending) -> u8 {
    match ending {
        Ending::Complete => SUCCESS,
        Ending::JobsFailed => JOBS_FAILED,
        Ending::Interrupted => INTERRUPTED,
        Ending::MaxRuntime => MAX_RUNTIME,
        Ending::MaxKudos | Ending::Aborted(Abort::Auth(_)) => AUTH,
        Ending::Aborted(Abort::Ledger(_)) => LEDGER,
        Ending::Aborted(Abort::Output(_) | Abort::Redirected(_)) => USAGE,
        Ending::Aborted(Abort::Unreachable(_)) => UNREACHABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unusable_output_folder_is_a_setup_problem_wherever_it_is_found() {
        // Before the run (AppError::Output) and during it (Abort::Output) alike.
        assert_eq!(
            code(&Ending::Aborted(Abort::Output("disk full".into()))),
            USAGE
        );
    }

    #[test]
    fn every_ending_has_its_documented_code() {
        let cases = [
            (Ending::Complete, 0),
            (Ending::JobsFailed, 1),
            (Ending::Aborted(Abort::Redirected("307".into())), 2),
            (Ending::Aborted(Abort::Auth("401".into())), 3),
            (Ending::MaxKudos, 3),
            (Ending::Aborted(Abort::Ledger("damaged".into())), 4),
            (Ending::MaxRuntime, 5),
            (Ending::Aborted(Abort::Unreachable("no answer".into())), 6),
            (Ending::Interrupted, 130),
        ];
        for (ending, expected) in cases {
            assert_eq!(code(&ending), expected, "{ending:?}");
        }
    }
}
