//! `horde-batch reroll`: culled images are set aside and made again.
//!
//! Each rejected image and its sidecar move to `<output>/.rejected/` (same
//! relative path; hidden, so a dataset loader never picks them up again), a
//! line goes to `.rejected/rejected.jsonl`, and the image's index row is
//! dropped. The ledger still says the image was saved; the next run finds its
//! file gone and makes it again under the same name (a new seed, unless the
//! job's seeds are fixed), touching nothing else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::config::{runtime, Batch};
use super::AppError;
use crate::cli::RerollArgs;
use crate::output::{format_timestamp, IMAGE_EXTENSION, SIDECAR_EXTENSION};

/// The folder rejected images are moved to, inside the output folder.
const REJECTED_DIR: &str = ".rejected";

/// `horde-batch reroll`.
pub fn reroll(args: &RerollArgs) -> Result<ExitCode, AppError> {
    let batch = Batch::load(&args.manifest, None, &args.places)?;
    let mut wanted: Vec<String> = Vec::new();
    for image in &args.images {
        wanted.push(relative_name(&batch.out_dir, image)?);
    }
    if let Some(list) = &args.from {
        let text = std::fs::read_to_string(list)
            .map_err(|e| AppError::Config(format!("cannot read {}: {e}", list.display())))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            wanted.push(relative_name(&batch.out_dir, Path::new(line))?);
        }
    }
    if wanted.is_empty() {
        return Err(AppError::Config(
            "name the images to reroll (file names as in metadata.jsonl, or --from FILE)".into(),
        ));
    }
    runtime()?.block_on(async {
        // The output folder is opened as a run would (and so is not used by one now:
        // the ledger's lock is taken too).
        let output = batch.open_output().await?;
        let _ledger = batch.open_store().await?;
        let rejected = batch.out_dir.join(REJECTED_DIR);
        let mut log = String::new();
        let mut moved = 0;
        for name in &wanted {
            let image = batch.out_dir.join(name);
            if !image.is_file() {
                crate::say!("horde-batch: {name} is not in {}; skipped", batch.out_dir.display());
                continue;
            }
            let sidecar = image.with_extension(SIDECAR_EXTENSION);
            let target = rejected.join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    AppError::Config(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            let move_file = |from: &Path, to: PathBuf| {
                std::fs::rename(from, &to).map_err(|e| {
                    AppError::Config(format!("cannot move {} to {}: {e}", from.display(), to.display()))
                })
            };
            if sidecar.is_file() {
                move_file(&sidecar, target.with_extension(SIDECAR_EXTENSION))?;
            }
            move_file(&image, target)?;
            output.forget_image(name)?;
            log.push_str(
                &serde_json::json!({
                    "file_name": name,
                    "rejected_at": format_timestamp(std::time::SystemTime::now()),
                })
                .to_string(),
            );
            log.push('\n');
            moved += 1;
        }
        if moved > 0 {
            use std::io::Write as _;
            let path = rejected.join("rejected.jsonl");
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(log.as_bytes()).and_then(|()| file.sync_data()))
                .map_err(|e| AppError::Config(format!("cannot write {}: {e}", path.display())))?;
        }
        crate::say!(
            "horde-batch: set {moved} image(s) aside in {}; the next run makes them again under the same names",
            rejected.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// `image` as a file name relative to the output folder, as the index has it.
fn relative_name(out: &Path, image: &Path) -> Result<String, AppError> {
    let relative = match image.strip_prefix(out) {
        Ok(inside) => inside.to_path_buf(),
        Err(_) if image.is_absolute() => {
            return Err(AppError::Config(format!(
                "{} is not inside the output folder {}",
                image.display(),
                out.display()
            )))
        }
        Err(_) => image.to_path_buf(),
    };
    let name = relative.to_string_lossy().replace('\\', "/");
    if !name.ends_with(&format!(".{IMAGE_EXTENSION}")) || name.split('/').any(|c| c == "..") {
        return Err(AppError::Config(format!(
            "{name} is not an image of the output folder"
        )));
    }
    Ok(name)
}
