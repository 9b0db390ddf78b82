//! `horde-batch cancel`: cancels what a killed run left on the Horde.

use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::config::{runtime, Batch, Horde};
use super::AppError;
use crate::cli::CancelArgs;
use crate::exit;
use crate::output::Dataset;
use crate::scheduler::{Ending, Engine, KeyPool, OnStop, Parts, RunConfig};

/// `horde-batch cancel`: cancels every request a run left on the Horde.
pub fn cancel(args: &CancelArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    runtime()?.block_on(async {
        let output = batch.open_output().await?;
        let store = batch.open_store().await?;
        let horde = Horde::connect(&args.horde, false).await?;
        let client = horde.client.clone();
        // Cancels go by request id; a lost submit is looked for with the key that sent it.
        let keys = KeyPool::new(horde.clients.iter().map(|c| (c.clone(), 1)).collect());
        let stop = CancellationToken::new();
        stop.cancel();
        let compiled = Arc::clone(&batch.compiled);
        let sink = Dataset::new(output.clone(), batch.template.clone(), Arc::clone(&compiled));
        let parts = Parts {
            client: client.clone(),
            keys,
            ledger: Arc::new(store.clone()),
            sink: Arc::new(sink),
            manifest: compiled,
            // `cancel` reports what it did itself; nothing listens to the events.
            events: tokio::sync::mpsc::unbounded_channel().0,
        };
        let config = RunConfig {
            tuning: args.tuning.resolve(),
            on_stop: OnStop::Cancel,
            ..RunConfig::default()
        };
        let engine = Engine::new(parts, config, stop);
        let report = engine.cancel_in_flight().await;
        let alchemy_config = super::alchemy::config(&args.tuning, false);
        let forms = crate::alchemy::cancel_left(client, store, output, alchemy_config).await?;
        if forms.cancelled + forms.failed > 0 {
            crate::say!(
                "horde-batch: cancelled {} alchemy request(s) (forms they had finished were kept); {} could not be cancelled",
                forms.cancelled, forms.failed
            );
        }
        for (fingerprint, requests) in &report.missing_keys {
            crate::say!(
                "horde-batch: {requests} lost submit(s) were sent with the key {fingerprint}, which is \
                 not among the keys given; they were left alone (run `cancel` with that key too)"
            );
        }
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
            // A lost submit not found may still run on the Horde: not everything was cancelled.
            None if report.not_found > 0 => {
                Ending::Aborted(crate::scheduler::Abort::Unreachable(format!(
                    "{} lost submit(s) could not be found",
                    report.not_found
                )))
            }
            // Requests of a missing key are still on the Horde: not a clean finish.
            None if !report.missing_keys.is_empty() => {
                Ending::Aborted(crate::scheduler::Abort::Auth(format!(
                    "lost submits of key(s) {} not among the keys given",
                    report
                        .missing_keys
                        .iter()
                        .map(|(fp, _)| fp.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
            None => Ending::Complete,
        };
        Ok(ExitCode::from(exit::code(&ending)))
    })
}
