//! `run --rebuild-state`: a new ledger from the sidecars on disk.
//!
//! The sidecars are the source of truth for finished work; the ledger is an
//! index of it plus the ids of requests in flight. When the ledger is damaged,
//! the damaged folder is moved aside (never deleted) and a fresh one records,
//! for every sidecar whose image is present and valid, that its image index is
//! saved. Slots with every image are done; the rest are resubmitted for the
//! missing images only. Ids of requests that were in flight are lost: those
//! requests expire on the Horde by themselves. Reads the output directory and
//! writes the ledger; nothing else.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::manifest::{AlchemyForm, CompiledManifest};
use crate::output::{verify_webp, OutputDir, Sidecar};
use crate::plan;
use crate::store::alchemy::{AlchemyRecord, FormRecord, ALCHEMY_SCHEMA_VERSION};
use crate::store::{
    now_ms, RequestKey, RequestRecord, RequestState, SavedImage, Store, StoreError,
};

/// What a rebuild found.
#[derive(Debug, Clone, Default)]
pub struct RebuildReport {
    /// Where the damaged state folder was moved, if there was one.
    pub moved_to: Option<PathBuf>,
    /// Sidecars whose image was present and valid.
    pub images: usize,
    /// Sidecars skipped: unreadable, image missing or invalid, or of a job the manifest no longer has.
    pub skipped: usize,
    /// Ledger records written.
    pub records: usize,
    /// Alchemy records restored from the sidecars' `alchemy`.
    pub alchemy: usize,
}

/// Moves `state_dir` aside to `<state_dir>.damaged-<unix seconds>`; `None` if it did not exist.
pub fn move_aside(state_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    if !state_dir.exists() {
        return Ok(None);
    }
    let stamp = now_ms() / 1000;
    let mut name = state_dir.as_os_str().to_owned();
    name.push(format!(".damaged-{stamp}"));
    let target = PathBuf::from(name);
    std::fs::rename(state_dir, &target)?;
    Ok(Some(target))
}

/// Fills the empty `store` from the sidecars under `output_root`.
pub async fn rebuild(
    store: &Store,
    output: &OutputDir,
    manifest: &CompiledManifest,
) -> Result<RebuildReport, StoreError> {
    let output_root = output.root();
    let mut report = RebuildReport::default();
    let mut saved: HashMap<String, BTreeMap<u32, SavedImage>> = HashMap::new();
    for path in sidecar_paths(output_root) {
        match read_sidecar(&path, output_root) {
            Some(sidecar) => {
                if let Some(record) = alchemy_record(output_root, &sidecar) {
                    store.put_alchemy(&sidecar.file_name, &record)?;
                    report.alchemy += 1;
                }
                saved.entry(sidecar.job_key.clone()).or_default().insert(
                    sidecar.image_index,
                    SavedImage {
                        generation_id: sidecar.generation_id,
                        file_name: sidecar.file_name,
                        censored: sidecar.censored,
                    },
                );
            }
            None => report.skipped += 1,
        }
    }
    for job in manifest.jobs() {
        let Some(mut images) = saved.remove(&job.key.to_string()) else {
            if output.has_result(&job.key.to_string()) {
                // Finished once, but none of its files are left: record that the ledger
                // knows the job, so the run asks for its images again instead of
                // taking the ledger for stale.
                if let Some(slot) = plan::slots(&job, manifest.run.max_n).next() {
                    let key = RequestKey::of_job(job.key, slot.slot);
                    let mut record =
                        RequestRecord::first_attempt(&key, slot.first_index, slot.n, now_ms());
                    record.transition(
                        RequestState::Cancelled {
                            horde_id: String::new(),
                            cancelled_ms: now_ms(),
                        },
                        now_ms(),
                    );
                    store.put(&key, &record)?;
                    report.records += 1;
                }
            }
            continue;
        };
        for slot in plan::slots(&job, manifest.run.max_n) {
            let key = RequestKey::of_job(job.key, slot.slot);
            let mut record = RequestRecord::first_attempt(&key, slot.first_index, slot.n, now_ms());
            let end = slot.first_index + slot.n;
            let in_slot: Vec<u32> = images
                .range(slot.first_index..end)
                .map(|(i, _)| *i)
                .collect();
            if in_slot.is_empty() {
                continue;
            }
            for index in in_slot {
                if let Some(image) = images.remove(&index) {
                    record.save_image(index, image, now_ms());
                    report.images += 1;
                }
            }
            let state = if record.missing_indices().is_empty() {
                RequestState::Done
            } else {
                RequestState::Cancelled {
                    horde_id: String::new(),
                    cancelled_ms: now_ms(),
                }
            };
            record.transition(state, now_ms());
            store.put(&key, &record)?;
            report.records += 1;
        }
        report.skipped += images.len();
    }
    // What is left belongs to jobs the manifest no longer has.
    report.skipped += saved.values().map(BTreeMap::len).sum::<usize>();
    store.flush().await?;
    Ok(report)
}

/// The alchemy record a sidecar's `alchemy` tells of, so forms delivered
/// before the ledger was lost are not asked (and paid for) again. Forms it
/// names as failed are wanted again, as a rerun would ask for them anyway.
fn alchemy_record(root: &Path, sidecar: &Sidecar) -> Option<AlchemyRecord> {
    let forms = sidecar.alchemy.as_ref()?.as_object()?;
    let source = root.join(&sidecar.file_name);
    let source_len = std::fs::metadata(&source).ok()?.len();
    let (width, height) = image::image_dimensions(&source).ok()?;
    let mut record = AlchemyRecord {
        v: ALCHEMY_SCHEMA_VERSION,
        source_len,
        width,
        height,
        slow_workers: true,
        ..AlchemyRecord::default()
    };
    for (name, value) in forms {
        let Some(form) = AlchemyForm::parse(name) else {
            continue;
        };
        let state = match (form.is_post_processor(), value) {
            (true, serde_json::Value::String(file)) => {
                let Ok((width, height)) = image::image_dimensions(root.join(file)) else {
                    continue;
                };
                FormRecord::Derived {
                    file: file.clone(),
                    width,
                    height,
                }
            }
            (true, _) => continue,
            (false, value) => FormRecord::Done {
                value: value.clone(),
            },
        };
        record.kudos += f64::from(form.kudos(width, height, true));
        record.forms.insert(name.clone(), state);
    }
    (!record.forms.is_empty()).then_some(record)
}

/// Every `*.json` below `root` outside hidden folders (sidecars; the index files are `.jsonl`).
fn sidecar_paths(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && !hidden => folders.push(path),
                Ok(kind)
                    if kind.is_file()
                        && !hidden
                        && path.extension().is_some_and(|e| e == "json") =>
                {
                    found.push(path)
                }
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// A sidecar whose image is beside it and valid.
fn read_sidecar(path: &Path, root: &Path) -> Option<Sidecar> {
    let sidecar: Sidecar = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let image = root.join(&sidecar.file_name);
    let bytes = std::fs::read(image).ok()?;
    verify_webp(&bytes).ok()?;
    Some(sidecar)
}
