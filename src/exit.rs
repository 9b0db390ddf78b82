//! The process exit codes, documented in the README and `--help`. Scripts and
//! cron jobs depend on them: never renumber one.

/// Everything asked for was done.
pub const SUCCESS: u8 = 0;
/// The run finished, but some jobs failed (their errors are in `errors.jsonl`).
pub const JOBS_FAILED: u8 = 1;
/// Bad command line, manifest or setup: the output folder cannot be written,
/// the Horde URL redirects (clap uses 2 for usage errors too).
pub const USAGE: u8 = 2;
/// The Horde refused the key, or kudos ran out.
pub const AUTH: u8 = 3;
/// The ledger is locked by another run, or damaged.
pub const LEDGER: u8 = 4;
/// `--max-runtime` was reached: submitting stopped, the rest resumes next run.
pub const MAX_RUNTIME: u8 = 5;
/// The Horde gave no successful answer for too long (a wrong URL, an outage);
/// or `cancel` could not reach it for every request.
pub const UNREACHABLE: u8 = 6;
/// Stopped by Ctrl-C, SIGTERM or SIGHUP (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;

/// The exit code of a run (or `cancel`) that ended this way. Errors before a
/// run starts map through `AppError::exit_code`, with the same meanings.
pub fn code(ending: &crate::scheduler::Ending) -> u8 {
    use crate::scheduler::{Abort, Ending};
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
    use crate::scheduler::{Abort, Ending};

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
