//! `horde-batch cancel`: cancels what a killed run left on the Horde.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::{runtime, Batch, Horde};
use super::AppError;
use crate::cli::CancelArgs;
use crate::exit;
use crate::output::Dataset;
use crate::scheduler::{Budget, Ending, Engine, OnStop};

/// `horde-batch cancel`: cancels every request a run left on the Horde.
pub fn cancel(args: &CancelArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    runtime()?.block_on(async {
        let output = batch.open_output().await?;
        let store = batch.open_store().await?;
        let client = Horde::connect(&args.horde, false).await?.client;
        let stop = CancellationToken::new();
        stop.cancel();
        let compiled = Arc::clone(&batch.compiled);
        let sink = Dataset::new(output, batch.template.clone(), Arc::clone(&compiled));
        let engine = Engine::new(
            client,
            Arc::new(store),
            Arc::new(sink),
            compiled,
            Budget::new(1),
            args.tuning.resolve(),
            stop,
            OnStop::Cancel,
            None,
            // `cancel` reports what it did itself; nothing listens to the events.
            tokio::sync::mpsc::unbounded_channel().0,
        );
        let report = engine.cancel_in_flight().await;
        crate::say!(
            "horde-batch: cancelled {} request(s) (images they had finished were saved); {} could not be cancelled{}",
            report.cancelled,
            report.failed,
            if report.not_found > 0 {
                format!("; {} lost submit(s) could not be found", report.not_found)
            } else {
                String::new()
            }
        );
        let ending = match engine.aborted() {
            Some(abort) => Ending::Aborted(abort),
            // What was not cancelled is still in the ledger: a rerun of `cancel` retries it.
            None if report.failed > 0 => Ending::Aborted(crate::scheduler::Abort::Unreachable(
                format!("{} request(s) could not be cancelled", report.failed),
            )),
            None => Ending::Complete,
        };
        Ok(ExitCode::from(exit::code(&ending)))
    })
}
