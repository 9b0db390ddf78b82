//! `horde-batch merge`: one `metadata.jsonl`, `results.jsonl` and
//! `errors.jsonl` for a batch run in shards (`run --shard I/N`).
//!
//! Each shard wrote the usual layout into `<out>/shard-I-of-N/`. The merged
//! index at `<out>` lists every image with its path from `<out>` (so
//! `datasets.load_dataset("imagefolder", data_dir=<out>)` loads the whole
//! batch); the shards' own files are left as they are. Nothing is moved or
//! copied.
//!
//! A merged index is what a consumer takes for the dataset, so it is written
//! only when the batch is whole: every shard that holds a job has a folder, no
//! shard's run holds its ledger, and every job of every shard has all its
//! images. Otherwise nothing is written and the command says which shards
//! are missing, running or unfinished (exit 4 while one runs, 1 otherwise),
//! unless `--partial` asks for what is there. Memory follows the shard
//! folders and rows on disk, never the shard count: gaps are told as ranges.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;

use super::{load, AppError};
use crate::cli::MergeArgs;
use crate::exit;
use crate::output::{ERRORS_FILE, INDEX_FILE, RESULTS_FILE, SHARD_INDEX_FILE};
use crate::plan::Shard;
use crate::store::{Store, StoreError};

/// The state folder of a shard's run, inside its folder (as `run --shard` places it).
const SHARD_STATE_DIR: &str = ".horde-batch";

/// At most this many ranges are named in a message; the rest are counted.
const RANGES_SHOWN: usize = 20;

/// What one shard folder holds.
struct ShardFolder {
    shard: Shard,
    /// The pid of the run holding its ledger, when one does (`Some(None)`: no pidfile).
    running: Option<Option<u32>>,
    index: Vec<Value>,
    results: Vec<Value>,
    errors: Vec<Value>,
    /// Jobs of the manifest in this shard without all their images.
    unfinished: u64,
}

/// `horde-batch merge`.
pub fn merge(args: &MergeArgs) -> Result<ExitCode, AppError> {
    let compiled = load(&args.manifest, None)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| compiled.output.dir.clone());
    let mut found = shard_folders(&out)?;
    found.sort_by_key(|(shard, _)| shard.index);
    let Some((first, _)) = found.first() else {
        return Err(AppError::Config(format!(
            "no shard folders (shard-I-of-N) in {}",
            out.display()
        )));
    };
    let count = first.count;
    if found.iter().any(|(shard, _)| shard.count != count) {
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
    let mut shards = Vec::with_capacity(found.len());
    for (shard, folder) in &found {
        shards.push(read_shard(*shard, folder)?);
    }

    // One pass over the manifest's jobs: which shards hold jobs (at most one
    // entry per job), and which jobs of the shards on disk are not finished.
    let finished = finished_jobs(&shards);
    let position: BTreeMap<u32, usize> = shards
        .iter()
        .enumerate()
        .map(|(at, folder)| (folder.shard.index, at))
        .collect();
    let mut holding_jobs: BTreeMap<u32, u64> = BTreeMap::new();
    for job in compiled.jobs() {
        let index = (job.key.0 % u64::from(count)) as u32 + 1; // < count + 1: fits u32.
        *holding_jobs.entry(index).or_default() += 1;
        if let Some(&at) = position.get(&index) {
            if !finished.contains(&job.key.to_string()) {
                shards[at].unfinished += 1;
            }
        }
    }
    let missing = Ranges::of(
        holding_jobs
            .keys()
            .copied()
            .filter(|index| !position.contains_key(index)),
    );
    let running = Ranges::of(
        shards
            .iter()
            .filter(|s| s.running.is_some())
            .map(|s| s.shard.index),
    );
    let unfinished = Ranges::of(
        shards
            .iter()
            .filter(|s| s.running.is_none() && s.unfinished > 0)
            .map(|s| s.shard.index),
    );
    let unfinished_jobs: u64 = shards
        .iter()
        .filter(|s| s.running.is_none())
        .map(|s| s.unfinished)
        .sum();
    let gaps = Gaps {
        count,
        missing,
        running,
        pids: shards.iter().filter_map(|s| s.running.flatten()).collect(),
        unfinished,
        unfinished_jobs,
    };

    if !gaps.is_empty() && !args.partial {
        crate::say!("horde-batch: nothing merged: {}", gaps.describe());
        crate::say!(
            "horde-batch: merge again once every shard ran to its end, or merge --partial to publish what is there"
        );
        let code = if gaps.running.is_empty() {
            exit::JOBS_FAILED
        } else {
            exit::LEDGER
        };
        return Ok(ExitCode::from(code));
    }

    let (mut index, mut results, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for folder in shards {
        let prefix = folder.shard.folder();
        for mut row in folder.index {
            // An alchemy upscale's row names its source: both move into the prefix.
            for column in ["file_name", "alchemy_of"] {
                if let Some(name) = row.get(column).and_then(Value::as_str) {
                    row[column] = Value::from(format!("{prefix}/{name}"));
                }
            }
            index.push(row);
        }
        for mut row in folder.results {
            if let Some(images) = row.get_mut("images").and_then(Value::as_array_mut) {
                for image in images.iter_mut() {
                    if let Some(name) = image.as_str() {
                        *image = Value::from(format!("{prefix}/{name}"));
                    }
                }
            }
            results.push(row);
        }
        errors.extend(folder.errors);
    }
    write_rows(&out.join(INDEX_FILE), &index)?;
    write_rows(&out.join(RESULTS_FILE), &results)?;
    if !errors.is_empty() || out.join(ERRORS_FILE).exists() {
        write_rows(&out.join(ERRORS_FILE), &errors)?;
    }
    crate::say!(
        "horde-batch: merged {} of {count} shard(s) into {}: {} images, {} finished jobs, {} failures{}",
        found.len(),
        out.display(),
        // Alchemy's upscales have rows of their own; they are not images of the batch.
        index
            .iter()
            .filter(|row| row.get("alchemy_of").is_none_or(Value::is_null))
            .count(),
        results.len(),
        errors.len(),
        match holding_jobs.len() as u64 {
            holding if holding < u64::from(count) => format!(
                " ({} shard(s) hold no job)",
                u64::from(count) - holding
            ),
            _ => String::new(),
        }
    );
    if !gaps.is_empty() {
        crate::say!("horde-batch: partial: {}", gaps.describe());
    }
    Ok(ExitCode::SUCCESS)
}

/// The `shard-I-of-N` folders directly under `out`: none when `out` does
/// not exist yet (`merge` then finds every shard missing; `status` shows the batch as one).
pub(super) fn shard_folders(out: &Path) -> Result<Vec<(Shard, PathBuf)>, AppError> {
    let entries = match std::fs::read_dir(out) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(AppError::Config(format!(
                "cannot read {}: {e}",
                out.display()
            )))
        }
    };
    Ok(entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .filter_map(|entry| {
            let shard = Shard::from_folder(&entry.file_name().to_string_lossy())?;
            Some((shard, entry.path()))
        })
        .collect())
}

/// A shard folder's rows, and whether its run holds its ledger now.
fn read_shard(shard: Shard, folder: &Path) -> Result<ShardFolder, AppError> {
    let running = run_holding(&folder.join(SHARD_STATE_DIR));
    // Shard folders from before SHARD_INDEX_FILE hold a metadata.jsonl.
    let part = [SHARD_INDEX_FILE, INDEX_FILE]
        .map(|name| folder.join(name))
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| folder.join(SHARD_INDEX_FILE));
    Ok(ShardFolder {
        shard,
        running,
        index: read_rows(&part)?,
        results: read_rows(&folder.join(RESULTS_FILE))?,
        errors: read_rows(&folder.join(ERRORS_FILE))?,
        unfinished: 0,
    })
}

/// The run holding the ledger in `state_dir`, if one does: `Some(pid)`, the
/// pid being `None` when it left no readable pidfile. The ledger's own lock
/// decides, as for `status`: opening it fails while a run has it.
fn run_holding(state_dir: &Path) -> Option<Option<u32>> {
    if !state_dir.join("ledger").exists() {
        return None;
    }
    match Store::open(state_dir) {
        Err(StoreError::Locked { pid, .. }) => Some(pid),
        // Opened (and closed again when dropped), or damaged: no run holds it.
        _ => None,
    }
}

/// The keys of the jobs a shard finished with every image it recorded still
/// in its index (an image set aside by `reroll` is not, until it is made again).
fn finished_jobs(shards: &[ShardFolder]) -> HashSet<String> {
    let mut finished = HashSet::new();
    for shard in shards {
        let listed: HashSet<&str> = shard
            .index
            .iter()
            .filter_map(|row| row.get("file_name").and_then(Value::as_str))
            .collect();
        for row in &shard.results {
            let Some(key) = row.get("job_key").and_then(Value::as_str) else {
                continue;
            };
            let complete = row
                .get("images")
                .and_then(Value::as_array)
                .is_some_and(|images| {
                    images
                        .iter()
                        .all(|image| image.as_str().is_some_and(|name| listed.contains(name)))
                });
            if complete {
                finished.insert(key.to_owned());
            }
        }
    }
    finished
}

/// What keeps a merge from being whole.
struct Gaps {
    count: u32,
    /// Shards holding jobs that have no folder yet.
    missing: Ranges,
    running: Ranges,
    pids: Vec<u32>,
    /// Shards (not running) with jobs lacking images.
    unfinished: Ranges,
    unfinished_jobs: u64,
}

impl Gaps {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.running.is_empty() && self.unfinished.is_empty()
    }

    fn describe(&self) -> String {
        let count = self.count;
        let mut parts = Vec::new();
        if !self.running.is_empty() {
            let pids = match self.pids.as_slice() {
                [] => String::new(),
                [pid] => format!(" (pid {pid})"),
                pids => format!(
                    " (pids {})",
                    pids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            parts.push(match self.running.single() {
                Some(index) => format!("shard {index} of {count} is running{pids}"),
                None => format!("shards {} of {count} are running{pids}", self.running),
            });
        }
        if !self.unfinished.is_empty() {
            parts.push(format!(
                "unfinished: {} of {count} ({} job(s) without all their images)",
                self.unfinished, self.unfinished_jobs
            ));
        }
        if !self.missing.is_empty() {
            parts.push(format!(
                "missing: {} of {count} (no folder yet)",
                self.missing
            ));
        }
        parts.join("; ")
    }
}

/// Shard numbers as ascending ranges (`2, 5-9, 12`), built from an ascending
/// stream: one entry per run of consecutive numbers, never one per number.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ranges {
    ranges: Vec<(u32, u32)>,
    numbers: u64,
}

impl Ranges {
    fn of(ascending: impl IntoIterator<Item = u32>) -> Ranges {
        let mut ranges = Ranges::default();
        for number in ascending {
            ranges.numbers += 1;
            match ranges.ranges.last_mut() {
                Some((_, last)) if last.checked_add(1) == Some(number) => *last = number,
                _ => ranges.ranges.push((number, number)),
            }
        }
        ranges
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The one number, when there is exactly one.
    fn single(&self) -> Option<u32> {
        match self.ranges.as_slice() {
            [(first, last)] if first == last => Some(*first),
            _ => None,
        }
    }
}

impl std::fmt::Display for Ranges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        for (at, (first, last)) in self.ranges.iter().take(RANGES_SHOWN).enumerate() {
            if at > 0 {
                text.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = if first == last {
                write!(text, "{first}")
            } else {
                write!(text, "{first}-{last}")
            };
        }
        if self.ranges.len() > RANGES_SHOWN {
            let _ = write!(
                text,
                ", … ({} shard(s) in {} ranges)",
                self.numbers,
                self.ranges.len()
            );
        }
        f.write_str(&text)
    }
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

/// The rows of a JSON Lines file (none when it does not exist). A last line
/// without its newline that does not parse is a write cut short by a kill
/// (the shard's next run repairs it): it is left out, not an error.
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
    let (whole, torn) = match text.rfind('\n') {
        Some(end) => text.split_at(end + 1),
        None => ("", text.as_str()),
    };
    let mut rows = whole
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| {
                AppError::Config(format!("{}: a line is not JSON: {e}", path.display()))
            })
        })
        .collect::<Result<Vec<Value>, AppError>>()?;
    if let Ok(row) = serde_json::from_str(torn.trim()) {
        rows.push(row);
    }
    Ok(rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_numbers_are_told_as_ranges() {
        assert_eq!(Ranges::of([2, 3, 4, 7, 9, 10]).to_string(), "2-4, 7, 9-10");
        assert_eq!(Ranges::of([5]).single(), Some(5));
        assert_eq!(Ranges::of([5, 6]).single(), None);
        assert!(Ranges::of([]).is_empty());
        // Every other number of 10,000: the message stays short.
        let text = Ranges::of((1..=10_000).step_by(2)).to_string();
        assert!(text.len() < 200, "{text}");
        assert!(text.ends_with("(5000 shard(s) in 5000 ranges)"), "{text}");
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_a_bad_line_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        assert_eq!(read_rows(&path).unwrap().len(), 2);
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}").unwrap();
        assert_eq!(
            read_rows(&path).unwrap().len(),
            2,
            "a whole last line counts"
        );
        std::fs::write(&path, "{\"a\":\n{\"a\":2}\n").unwrap();
        assert!(read_rows(&path).is_err());
    }
}
