//! `horde-batch reroll`: culled images are set aside and made again.
//!
//! Each rejected image and its sidecar move to `<output>/.rejected/` (same
//! relative path, numbered when an earlier reject of the same name is there;
//! hidden, so a dataset loader never picks them up again), a line goes to
//! `.rejected/rejected.jsonl`, and the image's index row is dropped. The
//! ledger still says the image was saved, and now also that it was rerolled:
//! the next run finds its file gone and makes it again under the same name,
//! touching nothing else.
//!
//! An image whose job fixes its seeds (`seeds: [...]` or `seeds: derived`)
//! would come back identical with the same seed, at full price. So a reroll
//! gives it a new seed by default, says so before anything is spent, and
//! records it in the slot's ledger record, where the next run reads it
//! (`RequestRecord::rerolls`); the job key stays. `--keep-seed` keeps the
//! seed, with a warning. Every name is checked before anything moves: a name
//! outside the output folder or of no image in it refuses the whole command.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use super::config::{runtime, Batch};
use super::AppError;
use crate::cli::RerollArgs;
use crate::manifest::AlchemyForm;
use crate::manifest::JobKey;
use crate::output::{format_timestamp, Sidecar, IMAGE_EXTENSION, SIDECAR_EXTENSION};
use crate::store::{RequestKey, RequestRecord, Reroll, Store};

/// The folder rejected images are moved to, inside the output folder.
const REJECTED_DIR: &str = ".rejected";

/// At most this many refused names are listed; the rest are counted.
const REFUSALS_SHOWN: usize = 20;

/// Why a name given to `reroll` names no image it can set aside.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{spelled} is not inside the output folder {out}")]
    Outside { spelled: String, out: String },
    #[error(
        "{0} is not an image of the dataset (a .{IMAGE_EXTENSION} file outside hidden folders)"
    )]
    NotAnImage(String),
    #[error("{0} is not in the output folder")]
    NotThere(String),
    #[error("{0} is not in the output folder: it is already set aside in {REJECTED_DIR}/ (the next run makes it again)")]
    AlreadySetAside(String),
}

/// One image to set aside, decided before anything moves.
struct SetAside {
    /// Its name relative to the output folder, as the index has it.
    name: String,
    /// The seed it was made with, from its sidecar.
    seed: Option<String>,
    /// The seed the next run asks for it with, when the reroll chose one.
    new_seed: Option<String>,
}

/// `horde-batch reroll`.
pub fn reroll(args: &RerollArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    let spelled = spelled_images(args)?;
    if spelled.is_empty() {
        return Err(AppError::Config(
            "name the images to reroll (file names as in metadata.jsonl, or --from FILE)".into(),
        ));
    }
    runtime()?.block_on(async {
        // The output folder is opened as a run would (and so is not used by one now:
        // the ledger's lock is taken too).
        let output = batch.open_output().await?;
        let ledger = batch.open_store().await?;
        let out = std::fs::canonicalize(&batch.out_dir).map_err(|e| {
            AppError::Config(format!("cannot read {}: {e}", batch.out_dir.display()))
        })?;
        let names = resolve_all(&out, &spelled)?;

        // The ledger first: once it says how each image is made again, moving
        // the files is what a crash may leave half done, and a rerun finishes it.
        let mut slots = Slots::default();
        let mut plans = Vec::with_capacity(names.len());
        for name in names {
            plans.push(decide(&out, name, &ledger, &mut slots, args.keep_seed)?);
        }
        for key in &slots.changed {
            if let Some(record) = slots.records.get(key) {
                ledger.put(key, record)?;
            }
        }
        ledger.flush().await?;

        let rejected = out.join(REJECTED_DIR);
        let mut log = String::new();
        for plan in &plans {
            let kept_as = set_aside(&out, &rejected, &plan.name)?;
            output.forget_image(&plan.name)?;
            for form in AlchemyForm::ALL.iter().filter(|form| form.is_post_processor()) {
                let derived = crate::output::derived_file_name(&plan.name, form.name());
                if output.has_index_row(&derived) {
                    output.forget_image(&derived)?;
                }
            }
            let mut line = serde_json::json!({
                "file_name": plan.name,
                "rejected_as": kept_as,
                "rejected_at": format_timestamp(std::time::SystemTime::now()),
            });
            if let Some(seed) = &plan.seed {
                line["seed"] = seed.as_str().into();
            }
            if let Some(seed) = &plan.new_seed {
                line["new_seed"] = seed.as_str().into();
            }
            log.push_str(&line.to_string());
            log.push('\n');
        }
        append(&rejected.join("rejected.jsonl"), &log)?;
        crate::say!(
            "horde-batch: set {} image(s) aside in {}; the next run makes them again under the same names",
            plans.len(),
            rejected.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The images as given: arguments, then the lines of `--from`.
fn spelled_images(args: &RerollArgs) -> Result<Vec<PathBuf>, AppError> {
    let mut spelled = args.images.clone();
    if let Some(list) = &args.from {
        let text = std::fs::read_to_string(list)
            .map_err(|e| AppError::Config(format!("cannot read {}: {e}", list.display())))?;
        spelled.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(PathBuf::from),
        );
    }
    Ok(spelled)
}

/// Every spelling as a name relative to the output folder `out` (canonical),
/// each once; refused as a whole when any names no image of the folder.
fn resolve_all(out: &Path, spelled: &[PathBuf]) -> Result<Vec<String>, AppError> {
    let cwd = std::env::current_dir()
        .map_err(|e| AppError::Config(format!("cannot read the current directory: {e}")))?;
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    let mut refused = Vec::new();
    for image in spelled {
        match resolve(out, &cwd, image) {
            Ok(name) => {
                if seen.insert(name.clone()) {
                    names.push(name);
                }
            }
            Err(refusal) => refused.push(refusal),
        }
    }
    if refused.is_empty() {
        return Ok(names);
    }
    for refusal in refused.iter().take(REFUSALS_SHOWN) {
        crate::say!(
            "horde-batch: {}",
            crate::terminal::escape_lines(&refusal.to_string())
        );
    }
    if refused.len() > REFUSALS_SHOWN {
        crate::say!("horde-batch: … and {} more", refused.len() - REFUSALS_SHOWN);
    }
    Err(AppError::Config(format!(
        "nothing set aside: {} of the {} image(s) named cannot be rerolled",
        refused.len(),
        spelled.len()
    )))
}

/// `image` as a name relative to `out`, however it is spelled: relative to
/// the current directory `cwd`, absolute, with `./`, or relative to `out`.
/// The spelling that names an existing file decides; symbolic links and `..`
/// are resolved before the path is checked to be inside `out`.
fn resolve(out: &Path, cwd: &Path, image: &Path) -> Result<String, Refusal> {
    let candidates = if image.is_absolute() {
        vec![image.to_path_buf()]
    } else {
        vec![cwd.join(image), out.join(image)]
    };
    let candidates: Vec<PathBuf> = candidates.iter().map(|path| canonical(path)).collect();
    let inside = |path: &Path| -> Option<String> {
        let relative = path.strip_prefix(out).ok()?;
        let parts: Vec<String> = relative
            .components()
            .map(|part| part.as_os_str().to_string_lossy().into_owned())
            .collect();
        (!parts.is_empty()).then(|| parts.join("/"))
    };
    let outside = || Refusal::Outside {
        spelled: image.display().to_string(),
        out: out.display().to_string(),
    };
    let name = match candidates.iter().find(|path| path.is_file()) {
        Some(file) => inside(file).ok_or_else(outside)?,
        None => {
            let name = candidates
                .iter()
                .find_map(|path| inside(path))
                .ok_or_else(outside)?;
            return Err(if !is_image_name(&name) {
                Refusal::NotAnImage(name)
            } else if out.join(REJECTED_DIR).join(&name).is_file() {
                Refusal::AlreadySetAside(name)
            } else {
                Refusal::NotThere(name)
            });
        }
    };
    if !is_image_name(&name) {
        return Err(Refusal::NotAnImage(name));
    }
    Ok(name)
}

/// A `.webp` of the dataset: not in a hidden folder (`.rejected/`, the state folder).
fn is_image_name(name: &str) -> bool {
    name.ends_with(&format!(".{IMAGE_EXTENSION}"))
        && name.split('/').all(|part| !part.starts_with('.'))
}

/// `path` made absolute with `.` and `..` resolved, and the longest part of
/// it that exists canonical (symbolic links resolved), so it compares with
/// the canonical output folder whether or not the file exists.
fn canonical(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(mut resolved) = std::fs::canonicalize(existing) {
            resolved.extend(rest.iter().rev());
            return resolved;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// The ledger records of the jobs whose images are rerolled, read once per
/// job, so several images of one slot add up in one record.
#[derive(Default)]
struct Slots {
    records: BTreeMap<RequestKey, RequestRecord>,
    /// Jobs whose slots are in `records`.
    jobs_read: HashSet<String>,
    /// Records a reroll changed: written back before any file moves.
    changed: BTreeSet<RequestKey>,
}

impl Slots {
    /// The record of the slot that saved image `index` of `job_key` as `name`.
    fn holding(
        &mut self,
        ledger: &Store,
        job_key: &str,
        index: u32,
        name: &str,
    ) -> Result<Option<&mut RequestRecord>, AppError> {
        if self.jobs_read.insert(job_key.to_owned()) {
            self.records.extend(ledger.job_slots(job_key)?);
        }
        let job = RequestKey::new(job_key, 0)..=RequestKey::new(job_key, u32::MAX);
        let Some((key, record)) = self
            .records
            .range_mut(job)
            .find(|(_, record)| holds(record, index, name))
        else {
            return Ok(None);
        };
        self.changed.insert(key.clone());
        Ok(Some(record))
    }
}

/// How image `name` is made again, read from its sidecar and its ledger
/// record, with the seed decision said now, before the next run spends anything.
fn decide(
    out: &Path,
    name: String,
    ledger: &Store,
    slots: &mut Slots,
    keep_seed: bool,
) -> Result<SetAside, AppError> {
    // The name as the user typed it, printed with control characters escaped.
    let shown = crate::terminal::escaped(&name).to_string();
    let sidecar_path = out.join(&name).with_extension(SIDECAR_EXTENSION);
    let sidecar: Option<Sidecar> = std::fs::read_to_string(&sidecar_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let Some(sidecar) = sidecar else {
        crate::say!(
            "horde-batch: {shown} has no readable sidecar; the next run makes it again with its job's seed"
        );
        return Ok(SetAside {
            name,
            seed: None,
            new_seed: None,
        });
    };
    let index = sidecar.image_index;
    let Some(record) = slots.holding(ledger, &sidecar.job_key, index, &name)? else {
        crate::say!(
            "horde-batch: the ledger does not list {shown}; the next run makes it again with its job's seed"
        );
        return Ok(SetAside {
            name,
            seed: Some(sidecar.seed),
            new_seed: None,
        });
    };
    let generation = record
        .images
        .get(&index)
        .map(|image| image.generation_id.clone())
        .unwrap_or_default(); // `holds` found the image at `index`.
    let chosen_before = record.reroll_seed(index).map(str::to_owned);
    // The sidecar's params hold a seed only when the request sent one: the
    // job's seeds are fixed (or an earlier reroll fixed this image's).
    let sent = sidecar.params.get("seed").map(|seed| {
        seed.as_str()
            .map_or_else(|| seed.to_string(), str::to_owned)
    });
    let seed = match (&sent, sidecar.job_key.parse::<JobKey>()) {
        (None, _) => None,
        (Some(sent), _) if keep_seed => {
            crate::say!(
                "horde-batch: warning: {shown} keeps its fixed seed {sent} (--keep-seed): the next run makes the same image again (identical bytes) and pays for it"
            );
            chosen_before
        }
        (Some(sent), Ok(job_key)) => {
            let new = job_key.reroll_seed(index, &generation, &[sent, &sidecar.seed]);
            crate::say!(
                "horde-batch: {shown} has a fixed seed ({sent}, from its job's `seeds:`), which would make the same image again; the next run makes it with a new seed, {new} (--keep-seed keeps {sent})"
            );
            Some(new)
        }
        (Some(_), Err(_)) => {
            crate::say!(
                "horde-batch: {shown}: its sidecar's job key {} is not one horde-batch writes; the next run makes it again with its job's seed",
                sidecar.job_key
            );
            chosen_before
        }
    };
    record.rerolls.insert(
        index,
        Reroll {
            rejected_generation: generation,
            seed: seed.clone(),
        },
    );
    Ok(SetAside {
        name,
        new_seed: seed.filter(|seed| sent.as_ref() != Some(seed)),
        seed: Some(sidecar.seed),
    })
}

/// Whether `record` saved image `index` as `name`.
fn holds(record: &RequestRecord, index: u32, name: &str) -> bool {
    record
        .images
        .get(&index)
        .is_some_and(|image| image.file_name == name)
}

/// Moves image `name` and its sidecar from `out` into `rejected`, under a
/// name no earlier reject has (`x.webp`, then `x.2.webp`, `x.3.webp`, …);
/// returns that name, relative to `rejected`.
fn set_aside(out: &Path, rejected: &Path, name: &str) -> Result<String, AppError> {
    let stem = name
        .strip_suffix(&format!(".{IMAGE_EXTENSION}"))
        .unwrap_or(name);
    let taken = |kept_as: &str| {
        let target = rejected.join(kept_as);
        target.exists() || target.with_extension(SIDECAR_EXTENSION).exists()
    };
    let kept_as = std::iter::once(name.to_owned())
        .chain((2u64..).map(|n| format!("{stem}.{n}.{IMAGE_EXTENSION}")))
        .find(|kept_as| !taken(kept_as))
        .unwrap_or_default(); // Unreachable: the names are endless, the folder is not.
    let image = out.join(name);
    let target = rejected.join(&kept_as);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| AppError::Config(format!("cannot create {}: {e}", parent.display())))?;
    }
    let move_file = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| {
            AppError::Config(format!(
                "cannot move {} to {}: {e}",
                from.display(),
                to.display()
            ))
        })
    };
    let sidecar = image.with_extension(SIDECAR_EXTENSION);
    if sidecar.is_file() {
        move_file(&sidecar, &target.with_extension(SIDECAR_EXTENSION))?;
    }
    // What alchemy made of it (upscales, the caption file) belongs to it too.
    let kept_stem = kept_as
        .strip_suffix(&format!(".{IMAGE_EXTENSION}"))
        .unwrap_or(&kept_as);
    for form in AlchemyForm::ALL
        .iter()
        .filter(|form| form.is_post_processor())
    {
        let derived = out.join(crate::output::derived_file_name(name, form.name()));
        if derived.is_file() {
            move_file(
                &derived,
                &rejected.join(crate::output::derived_file_name(&kept_as, form.name())),
            )?;
        }
    }
    let caption = out.join(format!("{stem}.txt"));
    if caption.is_file() {
        move_file(&caption, &rejected.join(format!("{kept_stem}.txt")))?;
    }
    move_file(&image, &target)?;
    Ok(kept_as)
}

/// Appends `text` to the file at `path`, durably.
fn append(path: &Path, text: &str) -> Result<(), AppError> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
        })
        .map_err(|e| AppError::Config(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_inside_the_folder_names_the_same_image() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let out = root.join("out/batch");
        std::fs::create_dir_all(out.join("a")).unwrap();
        std::fs::write(out.join("a/x.webp"), b"w").unwrap();
        for spelled in [
            "out/batch/a/x.webp",
            "./out/batch/a/x.webp",
            "a/x.webp",
            "./a/x.webp",
            "out/batch/a/../a/x.webp",
        ] {
            assert_eq!(
                resolve(&out, &root, Path::new(spelled)).unwrap(),
                "a/x.webp",
                "{spelled}"
            );
        }
        let absolute = out.join("a/x.webp");
        assert_eq!(resolve(&out, &root, &absolute).unwrap(), "a/x.webp");
    }

    #[test]
    fn names_outside_the_folder_or_of_no_image_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        let out = root.join("out");
        std::fs::create_dir_all(out.join(".rejected")).unwrap();
        std::fs::write(root.join("elsewhere.webp"), b"w").unwrap();
        std::fs::write(out.join("notes.txt"), b"w").unwrap();
        std::fs::write(out.join(".rejected/gone.webp"), b"w").unwrap();
        let refusal = |spelled: &str| resolve(&out, &root, Path::new(spelled)).unwrap_err();
        assert!(matches!(refusal("elsewhere.webp"), Refusal::Outside { .. }));
        assert!(matches!(refusal("/etc/passwd"), Refusal::Outside { .. }));
        assert!(matches!(
            refusal("../elsewhere.webp"),
            Refusal::Outside { .. }
        ));
        assert!(matches!(refusal("notes.txt"), Refusal::NotAnImage(_)));
        assert!(matches!(refusal("missing.webp"), Refusal::NotThere(_)));
        assert!(matches!(refusal("gone.webp"), Refusal::AlreadySetAside(_)));
        assert!(matches!(
            refusal(".rejected/gone.webp"),
            Refusal::NotAnImage(_)
        ));
    }

    #[test]
    fn a_second_reject_of_a_name_gets_a_name_of_its_own() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        let rejected = out.join(REJECTED_DIR);
        std::fs::create_dir_all(out.join("a")).unwrap();
        for (round, expected) in ["a/x.webp", "a/x.2.webp", "a/x.3.webp"].iter().enumerate() {
            std::fs::write(out.join("a/x.webp"), [round as u8]).unwrap();
            std::fs::write(out.join("a/x.json"), [round as u8]).unwrap();
            assert_eq!(&set_aside(&out, &rejected, "a/x.webp").unwrap(), expected);
            assert_eq!(
                std::fs::read(rejected.join(expected)).unwrap(),
                [round as u8]
            );
            assert!(rejected.join(expected).with_extension("json").is_file());
        }
    }
}
