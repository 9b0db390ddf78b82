//! The `horde-batch` binary: parse the command line, set up logging, run the
//! command, and turn its outcome into an exit code. All logic is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = horde_batch::cli::Cli::parse();
    horde_batch::logging::init(&cli.logging);
    horde_batch::logging::init_error_reporting();
    match horde_batch::app::run(cli) {
        Ok(code) => code,
        Err(error) => {
            let code = error.exit_code();
            // Once, at the top; user and server text in it is escaped.
            horde_batch::app::report_error(error);
            ExitCode::from(code)
        }
    }
}
