//! `horde-batch merge`: one `metadata.jsonl`, `results.jsonl` and
//! `errors.jsonl` for a batch run in shards (`run --shard I/N`).
//!
//! Each shard wrote the usual layout into `<out>/shard-I-of-N/`. The merged
//! index at `<out>` lists every image with its path from `<out>` (so
//! `datasets.load_dataset("imagefolder", data_dir=<out>)` loads the whole
//! batch); the shards' own files are left as they are. Merging again after
//! more shards finished rewrites the merged files. Nothing is moved or copied.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::{load, AppError};
use crate::cli::MergeArgs;
use crate::exit;
use crate::output::{ERRORS_FILE, INDEX_FILE, RESULTS_FILE, SHARD_INDEX_FILE};
use crate::plan::Shard;

/// `horde-batch merge`.
pub fn merge(args: &MergeArgs) -> Result<ExitCode, AppError> {
    let compiled = load(&args.manifest, None)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| compiled.output.dir.clone());
    let mut shards = shard_folders(&out)?;
    shards.sort_by_key(|(shard, _)| shard.index);
    let Some((first, _)) = shards.first() else {
        return Err(AppError::Config(format!(
            "no shard folders (shard-I-of-N) in {}",
            out.display()
        )));
    };
    let count = first.count;
    if shards.iter().any(|(shard, _)| shard.count != count) {
        return Err(AppError::Config(format!(
            "{} holds shards of different counts; merge the folders of one --shard I/N run",
            out.display()
        )));
    }
    if let Some(own) = unsharded_rows(&out.join(INDEX_FILE))? {
        return Err(AppError::Config(format!(
            "{} already has an index of its own ({own} rows not from shards); merge into another --out",
            out.display()
        )));
    }
    let mut index = Vec::new();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (shard, folder) in &shards {
        let prefix = shard.folder();
        // Shard folders from before SHARD_INDEX_FILE hold a metadata.jsonl.
        let part = [SHARD_INDEX_FILE, INDEX_FILE]
            .map(|name| folder.join(name))
            .into_iter()
            .find(|path| path.exists())
            .unwrap_or_else(|| folder.join(SHARD_INDEX_FILE));
        for mut row in read_rows(&part)? {
            if let Some(name) = row.get("file_name").and_then(Value::as_str) {
                row["file_name"] = Value::from(format!("{prefix}/{name}"));
            }
            index.push(row);
        }
        for mut row in read_rows(&folder.join(RESULTS_FILE))? {
            if let Some(images) = row.get_mut("images").and_then(Value::as_array_mut) {
                for image in images.iter_mut() {
                    if let Some(name) = image.as_str() {
                        *image = Value::from(format!("{prefix}/{name}"));
                    }
                }
            }
            results.push(row);
        }
        errors.extend(read_rows(&folder.join(ERRORS_FILE))?);
    }
    write_rows(&out.join(INDEX_FILE), &index)?;
    write_rows(&out.join(RESULTS_FILE), &results)?;
    if !errors.is_empty() || out.join(ERRORS_FILE).exists() {
        write_rows(&out.join(ERRORS_FILE), &errors)?;
    }
    let present: Vec<u32> = shards.iter().map(|(shard, _)| shard.index).collect();
    let missing: Vec<String> = (1..=count)
        .filter(|index| !present.contains(index))
        .map(|index| index.to_string())
        .collect();
    crate::say!(
        "horde-batch: merged {} of {count} shard(s) into {}: {} images, {} finished jobs, {} failures",
        shards.len(),
        out.display(),
        index.len(),
        results.len(),
        errors.len(),
    );
    if missing.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        crate::say!(
            "horde-batch: shards {} of {count} have no folder yet; merge again once they ran",
            missing.join(", ")
        );
        Ok(ExitCode::from(exit::JOBS_FAILED))
    }
}

/// The `shard-I-of-N` folders directly under `out`.
fn shard_folders(out: &Path) -> Result<Vec<(Shard, PathBuf)>, AppError> {
    let entries = std::fs::read_dir(out)
        .map_err(|e| AppError::Config(format!("cannot read {}: {e}", out.display())))?;
    Ok(entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| {
            let shard = Shard::from_folder(&entry.file_name().to_string_lossy())?;
            Some((shard, entry.path()))
        })
        .collect())
}

/// How many rows of an existing merged index did not come from a shard.
fn unsharded_rows(path: &Path) -> Result<Option<usize>, AppError> {
    let own = read_rows(path)?
        .iter()
        .filter(|row| {
            row.get("file_name")
                .and_then(Value::as_str)
                .and_then(|name| name.split('/').next())
                .is_none_or(|first| Shard::from_folder(first).is_none())
        })
        .count();
    Ok((own > 0).then_some(own))
}

fn read_rows(path: &Path) -> Result<Vec<Value>, AppError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AppError::Config(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| {
                AppError::Config(format!("{}: a line is not JSON: {e}", path.display()))
            })
        })
        .collect()
}

/// Writes `rows` as JSON lines, atomically (a reader sees the old or the new file).
fn write_rows(path: &Path, rows: &[Value]) -> Result<(), AppError> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&row.to_string());
        text.push('\n');
    }
    let temp = path.with_extension("jsonl.merging");
    std::fs::write(&temp, text)
        .and_then(|()| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, path))
        .map_err(|e| AppError::Config(format!("cannot write {}: {e}", path.display())))
}
