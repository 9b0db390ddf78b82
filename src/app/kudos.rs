//! `plan --kudos`: what a manifest would cost, from the Horde's dry runs.

use super::config::{runtime, Horde};
use super::AppError;
use crate::cli::HordeArgs;
use crate::horde::FailureClass;
use crate::manifest::CompiledManifest;

/// `plan --kudos`: one dry run per distinct parameter set, priced per image.
pub fn kudos_estimate(
    compiled: &CompiledManifest,
    horde: &HordeArgs,
    simulate: bool,
) -> Result<(f64, Option<f64>, usize), AppError> {
    runtime()?.block_on(async {
        let connected = Horde::connect(horde, simulate).await?;
        let client = connected.client.clone();
        let mut signatures: std::collections::HashMap<
            String,
            (crate::horde::GenerationRequest, u64),
        > = std::collections::HashMap::new();
        for job in compiled.jobs() {
            let request = crate::scheduler::request_for(&job, 1, 0)
                .map_err(|e| AppError::Config(e.to_string()))?;
            let signature = format!(
                "{:?}{}",
                request.models,
                serde_json::to_string(&request.params).unwrap_or_default()
            );
            signatures.entry(signature).or_insert((request, 0)).1 += u64::from(job.images);
        }
        let mut total = 0.0;
        for (request, images) in signatures.values() {
            let per_image = client.dry_run(request).await.map_err(|e| match e.class() {
                FailureClass::Auth => AppError::Auth(e.to_string()),
                FailureClass::Permanent | FailureClass::Kudos => {
                    AppError::Config(format!("the kudos estimate failed: {e}"))
                }
                _ => AppError::Unreachable(format!("the kudos estimate failed: {e}")),
            })?;
            total += per_image * *images as f64;
        }
        let balance = if client.is_anonymous() {
            None
        } else if let Ok(Some(shared)) = client.own_shared_key().await {
            Some(shared.kudos as f64)
        } else {
            client.find_user().await.ok().map(|u| u.kudos)
        };
        connected.close().await;
        Ok((total, balance, signatures.len()))
    })
}
