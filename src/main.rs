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
            match error {
                horde_batch::app::AppError::Manifest(error) => {
                    horde_batch::app::report_manifest_error(error)
                }
                other => horde_batch::say!("{:?}", miette::Report::new(other)),
            }
            ExitCode::from(code)
        }
    }
}
