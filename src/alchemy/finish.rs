//! Where an image's settled forms land: its [`AlchemyOutcome`] (what the
//! sidecar and the caption file get), and, once per pass, the dataset index
//! extended with the forms' columns from the ledger's alchemy tree (one
//! rewrite of the index, not one per image).

use std::collections::BTreeMap;

use super::AlchemyError;
use crate::manifest::CaptionFrom;
use crate::output::{AlchemyColumns, AlchemyOutcome, IndexChange, OutputDir};
use crate::store::alchemy::{AlchemyRecord, FormRecord};
use crate::store::Store;

/// What an image's record has delivered and failed, as `output` takes it.
pub(super) fn outcome(source: &str, record: &AlchemyRecord) -> AlchemyOutcome {
    let mut outcome = AlchemyOutcome {
        source: source.to_owned(),
        ..AlchemyOutcome::default()
    };
    for (form, state) in &record.forms {
        match state {
            FormRecord::Wanted => {}
            FormRecord::Done { value } => {
                outcome.results.insert(form.clone(), value.clone());
            }
            FormRecord::Derived { file, .. } => {
                outcome.derived.insert(form.clone(), file.clone());
            }
            FormRecord::Failed { why } => {
                outcome.failed.insert(form.clone(), why.clone());
            }
        }
    }
    outcome
}

/// Extends the index of `output` with the columns of every image whose forms
/// are settled (the rest are added by the pass that settles them).
pub fn apply_to_index(
    store: &Store,
    output: &OutputDir,
    caption_column: &str,
    caption_from: CaptionFrom,
) -> Result<IndexChange, AlchemyError> {
    let mut outcomes = BTreeMap::new();
    for entry in store.alchemy_records() {
        let (source, record) = entry?;
        if record.is_settled() {
            outcomes.insert(source.clone(), outcome(&source, &record));
        }
    }
    if outcomes.is_empty() {
        return Ok(IndexChange {
            rows_updated: 0,
            rows_added: 0,
        });
    }
    let columns = AlchemyColumns {
        caption_column: caption_column.to_owned(),
        caption_from_alchemy: caption_from == CaptionFrom::Alchemy,
    };
    Ok(output.apply_alchemy(&outcomes, &columns)?)
}
