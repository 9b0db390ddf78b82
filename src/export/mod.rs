//! `horde-batch export`'s writer: a finished batch's images and index rows
//! turned into the layouts trainers and the Hugging Face Hub read
//! (img2dataset's): WebDataset tar shards with a Parquet file of the rows and
//! a `_stats.json` per shard, Parquet files with the images embedded in the
//! `datasets` Image feature's layout, or a Hub-ready imagefolder whose
//! folders hold at most one shard of images each.
//!
//! Two streaming passes over the rows ([`rows`]): the first finds the
//! columns' types and each shard's digest (rows, image and sidecar sizes);
//! the second writes every shard whose stats file does not already match
//! ([`stats`]), each ([`shard`]) through temp files renamed into place ([`files`]), so a
//! kill leaves complete shards and temp files the next run sweeps, and a
//! rerun writes the same bytes. Memory holds one row group (Parquet) or one
//! image (tar), never the batch.
//!
//! Receives the index files to read from `app` (which finds the batch's
//! folders, shards included, and decides whether it is finished). Must not
//! know the manifest, the ledger or the Horde.

mod files;
mod parquet;
mod rows;
mod shard;
mod stats;
mod tar;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use self::parquet::{Embedded, ParquetError, ParquetFile};
pub use self::rows::{key_of, Columns, Kind, Row, Rows, Scalar, Source};
pub use self::stats::{ShardStats, FORMAT_VERSION};
pub use self::tar::TarShard;
use files::{sync_dir, TempFile};
use shard::{hub_line, OutColumns, ShardWriter};
use stats::ShardDigest;

/// Rows per shard unless told: img2dataset's figure, and the Hub's limit of
/// files per folder.
pub const DEFAULT_SHARD_SIZE: u64 = 10_000;
/// The most images one folder of the Hub layout may hold.
pub const MAX_HUB_FOLDER_FILES: u64 = 10_000;

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `00000.tar` (`{key}.webp`, `{key}.txt`, `{key}.json`), `00000.parquet`
    /// (the rows) and `00000_stats.json` per shard.
    Webdataset,
    /// `00000.parquet` with an `image` column (`datasets`' Image feature)
    /// and the rows' columns, and `00000_stats.json`, per shard.
    Parquet,
    /// An imagefolder: `data/00000/{key}.webp` per shard, one
    /// `metadata.jsonl` at the top, `data/00000_stats.json` per shard.
    Hub,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Webdataset => "webdataset",
            Format::Parquet => "parquet",
            Format::Hub => "hub",
        }
    }
}

/// A fault to inject, for tests of what a kill or a full disk leaves
/// (`HORDE_BATCH_EXPORT_FAULT`, read by `app`; never documented to users).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Abort the process in the middle of the shard after this many were written.
    KillAfterShards(u64),
    /// Writes fail as on a full disk once this many bytes were written.
    FullAfterBytes(u64),
}

/// How to export.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// Rows per shard.
    pub shard_size: u64,
    /// The index column a `.txt` member holds (the manifest's caption column).
    pub caption_column: String,
    pub fault: Option<Fault>,
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub shards: u64,
    /// Shards written by this run (the others were complete already).
    pub written: u64,
    pub images: u64,
    /// Rows whose image file was missing.
    pub failed: u64,
    /// Bytes of the shards this run wrote.
    pub bytes: u64,
    /// Temp files of a killed export removed.
    pub swept: usize,
}

/// Why an export failed; each with the help the user sees under it.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[diagnostic(code(horde_batch::export))]
pub enum ExportError {
    #[error("cannot {action} {}: {source}", path.display())]
    #[diagnostic(help(
        "check that the folder given with --to can be written and has room; rerunning resumes"
    ))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}, line {line}: {problem}", path.display())]
    #[diagnostic(help(
        "the batch's index is damaged: `horde-batch run` on the manifest repairs a cut-off last line"
    ))]
    Index {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("two rows of the index have the key `{0}` (the same job key and image index)")]
    DuplicateKey(String),
    #[error(
        "the index changed while it was exported (rows were removed or rewritten): export again"
    )]
    #[diagnostic(help("export once the run, reroll or merge that changed it has finished"))]
    IndexChanged,
    #[error("the index has more than {0} columns")]
    TooManyColumns(usize),
    #[error("cannot write Parquet to {}: {source}", path.display())]
    #[diagnostic(help(
        "check that the folder given with --to can be written and has room; rerunning resumes"
    ))]
    Parquet {
        path: PathBuf,
        #[source]
        source: ParquetError,
    },
    #[error("--shard-size must be between 1 and {max} for --format {format}")]
    #[diagnostic(help(
        "--shard-size counts images a shard (default 10,000: the Hugging Face Hub takes at most 10,000 files a folder)"
    ))]
    ShardSize { max: u64, format: &'static str },
}

impl ExportError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> ExportError {
        ExportError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The I/O error behind this one, if any (a full disk, a refused folder).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ExportError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// What the first pass expects of one shard.
struct Planned {
    stats: ShardStats,
    digest: ShardDigest,
}

/// Exports the rows of `sources` into `target` (created if missing).
pub fn export(
    sources: &[Source],
    target: &Path,
    options: &Options,
) -> Result<Summary, ExportError> {
    let max = match options.format {
        Format::Hub => MAX_HUB_FOLDER_FILES,
        _ => u64::MAX,
    };
    if options.shard_size == 0 || options.shard_size > max {
        return Err(ExportError::ShardSize {
            max,
            format: options.format.name(),
        });
    }
    files::set_fault(options.fault);
    std::fs::create_dir_all(target).map_err(|e| ExportError::io("create", target, e))?;
    let stats_dir = match options.format {
        Format::Hub => target.join("data"),
        _ => target.to_owned(),
    };
    std::fs::create_dir_all(&stats_dir).map_err(|e| ExportError::io("create", &stats_dir, e))?;
    let swept = files::sweep(target).map_err(|e| ExportError::io("clean", target, e))?
        + match options.format {
            Format::Hub => {
                files::sweep(&stats_dir).map_err(|e| ExportError::io("clean", &stats_dir, e))?
            }
            _ => 0,
        };

    let (columns, planned) = first_pass(sources, options)?;
    let out = OutColumns::of(&columns, options.format);
    let common = serde_json::to_vec(&(
        options.format.name(),
        FORMAT_VERSION,
        options.shard_size,
        &options.caption_column,
        &columns,
    ))
    .unwrap_or_default();
    let expected: Vec<ShardStats> = planned
        .into_iter()
        .map(|p| ShardStats {
            digest: p.digest.finish(&common),
            ..p.stats
        })
        .collect();

    let mut summary = Summary {
        shards: expected.len() as u64,
        swept,
        ..Summary::default()
    };
    let complete: Vec<bool> = expected
        .iter()
        .enumerate()
        .map(|(at, want)| {
            std::fs::read(stats_dir.join(stats_name(at)))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ShardStats>(&bytes).ok())
                .is_some_and(|found| found.completes(want, target))
        })
        .collect();

    let total: u64 = expected.iter().map(|s| s.count).sum();
    let mut hub_index = match options.format {
        Format::Hub => {
            Some(TempFile::new(target).map_err(|e| ExportError::io("write in", target, e))?)
        }
        _ => None,
    };
    let mut rows = Rows::open(sources);
    let mut writer: Option<ShardWriter> = None;
    for number in 0..total {
        // Rows are only ever appended while a run goes on; fewer rows than
        // the first pass counted means the index was rewritten in between.
        let row = rows.next_row()?.ok_or(ExportError::IndexChanged)?;
        let shard = (number / options.shard_size) as usize;
        if let Some(index) = &mut hub_index {
            let line = hub_line(&row, shard, &out);
            index
                .write_all(line.as_bytes())
                .map_err(|e| ExportError::io("write", &target.join("metadata.jsonl"), e))?;
        }
        if complete[shard] {
            continue;
        }
        let open = match &mut writer {
            Some(open) => open,
            None => writer.insert(ShardWriter::new(target, shard, options, &out)?),
        };
        if let Some(Fault::KillAfterShards(after)) = options.fault {
            if summary.written == after && open.rows > 0 {
                // Test-only: a kill in the middle of a shard, temp files left behind.
                std::process::abort();
            }
        }
        open.push(&row, options, &out)?;
        let last_of_shard = (number + 1) % options.shard_size == 0 || number + 1 == total;
        if last_of_shard {
            if let Some(done) = writer.take() {
                let stats = done.finish(&expected[shard], target, &stats_dir)?;
                summary.written += 1;
                summary.bytes += stats.bytes;
            }
        }
    }
    if let Some(index) = hub_index {
        let path = target.join("metadata.jsonl");
        index
            .place(&path)
            .map_err(|e| ExportError::io("write", &path, e))?;
        sync_dir(target).map_err(|e| ExportError::io("flush", target, e))?;
    }
    prune(&stats_dir, options.format, expected.len())?;
    summary.images = expected.iter().map(|s| s.successes).sum();
    summary.failed = expected.iter().map(|s| s.failed_to_export).sum();
    Ok(summary)
}

/// Removes the shards numbered `shards` and up that an earlier export (of
/// more rows, or a smaller `--shard-size`) left: a reader globbing
/// `*.tar` would take them for part of this one. Only names this module
/// writes are touched.
fn prune(stats_dir: &Path, format: Format, shards: usize) -> Result<(), ExportError> {
    let stale = |name: &str| -> bool {
        let digits = name.bytes().take_while(u8::is_ascii_digit).count();
        let rest = &name[digits..];
        let ours = match format {
            Format::Webdataset => matches!(rest, ".tar" | ".parquet" | "_stats.json"),
            Format::Parquet => matches!(rest, ".parquet" | "_stats.json"),
            Format::Hub => matches!(rest, "" | "_stats.json"),
        };
        digits >= 5 && ours && name[..digits].parse::<usize>().is_ok_and(|n| n >= shards)
    };
    let mut pruned = false;
    for entry in std::fs::read_dir(stats_dir).map_err(|e| ExportError::io("read", stats_dir, e))? {
        let entry = entry.map_err(|e| ExportError::io("read", stats_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !stale(&name) {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| ExportError::io("remove", &path, e))?;
        pruned = true;
    }
    if pruned {
        sync_dir(stats_dir).map_err(|e| ExportError::io("flush", stats_dir, e))?;
    }
    Ok(())
}

/// The stats file of shard `at`.
fn stats_name(at: usize) -> String {
    format!("{at:05}_stats.json")
}

/// Pass one: the columns, and per shard its rows' count, keys, successes and digest.
fn first_pass(
    sources: &[Source],
    options: &Options,
) -> Result<(Columns, Vec<Planned>), ExportError> {
    let mut columns = Columns::default();
    let mut planned: Vec<Planned> = Vec::new();
    let mut rows = Rows::open(sources);
    let mut number = 0u64;
    // The keys of the current shard: two members of one name would merge
    // two images into one sample (memory: one shard's keys).
    let mut keys = std::collections::HashSet::new();
    while let Some(row) = rows.next_row()? {
        columns.add(&row.columns)?;
        if number % options.shard_size == 0 {
            keys.clear();
            planned.push(Planned {
                stats: ShardStats {
                    count: 0,
                    successes: 0,
                    failed_to_export: 0,
                    bytes: 0,
                    start_key: row.key.clone(),
                    end_key: String::new(),
                    format: options.format.name().to_owned(),
                    format_version: FORMAT_VERSION,
                    digest: String::new(),
                    files: BTreeMap::new(),
                },
                digest: ShardDigest::default(),
            });
        }
        number += 1;
        if !keys.insert(row.key.clone()) {
            return Err(ExportError::DuplicateKey(row.key));
        }
        let image = file_size(&row.image);
        let sidecar = file_size(&row.sidecar);
        // A shard was pushed when this row's number began one.
        let Some(shard) = planned.last_mut() else {
            continue;
        };
        shard.stats.count += 1;
        if image.is_some() {
            shard.stats.successes += 1;
        } else {
            shard.stats.failed_to_export += 1;
        }
        shard.stats.end_key.clone_from(&row.key);
        shard.digest.row(&row.line, image, sidecar);
    }
    Ok((columns, planned))
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of five "images" (export copies bytes, it does not decode)
    /// and their index, one image missing.
    fn batch() -> (tempfile::TempDir, Vec<Source>) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = String::new();
        for i in 0..5 {
            let name = format!("job/k-{i}.webp");
            if i != 3 {
                std::fs::create_dir_all(dir.path().join("job")).unwrap();
                std::fs::write(dir.path().join(&name), vec![i as u8; 100]).unwrap();
                std::fs::write(dir.path().join(format!("job/k-{i}.json")), b"{}").unwrap();
            }
            index.push_str(&format!(
                "{{\"file_name\":\"{name}\",\"text\":\"prompt {i}\",\"job_key\":\"k\",\"image_index\":{i},\"cfg\":{}}}\n",
                if i == 0 { "7".to_owned() } else { "7.5".to_owned() }
            ));
        }
        std::fs::write(dir.path().join("metadata.jsonl"), index).unwrap();
        let source = Source {
            folder: dir.path().to_owned(),
            index: dir.path().join("metadata.jsonl"),
            prefix: String::new(),
        };
        (dir, vec![source])
    }

    fn options(format: Format) -> Options {
        Options {
            format,
            shard_size: 2,
            caption_column: "text".to_owned(),
            fault: None,
        }
    }

    #[test]
    fn shards_hold_shard_size_rows_and_a_rerun_writes_nothing() {
        let (dir, sources) = batch();
        for format in [Format::Webdataset, Format::Parquet, Format::Hub] {
            let target = dir.path().join(format.name());
            let first = export(&sources, &target, &options(format)).unwrap();
            assert_eq!((first.shards, first.written), (3, 3), "{format:?}");
            assert_eq!((first.images, first.failed), (4, 1), "{format:?}");
            let again = export(&sources, &target, &options(format)).unwrap();
            assert_eq!(again.written, 0, "{format:?}: complete shards are kept");
        }
        let stats: ShardStats = serde_json::from_slice(
            &std::fs::read(dir.path().join("webdataset/00001_stats.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (stats.start_key.as_str(), stats.end_key.as_str()),
            ("k-2", "k-3")
        );
        assert_eq!((stats.successes, stats.failed_to_export), (1, 1));
        let hub = std::fs::read_to_string(dir.path().join("hub/metadata.jsonl")).unwrap();
        assert!(
            hub.starts_with("{\"file_name\":\"data/00000/k-0.webp\",\"key\":\"k-0\""),
            "{hub}"
        );
        assert!(dir.path().join("hub/data/00002/k-4.webp").is_file());
    }

    #[test]
    fn a_changed_row_rewrites_its_shard_and_keeps_the_others() {
        let (dir, sources) = batch();
        let target = dir.path().join("out");
        export(&sources, &target, &options(Format::Webdataset)).unwrap();
        let index = sources[0].index.clone();
        let text = std::fs::read_to_string(&index)
            .unwrap()
            .replace("prompt 4", "prompt four");
        std::fs::write(&index, text).unwrap();
        let again = export(&sources, &target, &options(Format::Webdataset)).unwrap();
        assert_eq!(again.written, 1);
        let tar = std::fs::read(target.join("00002.tar")).unwrap();
        assert!(tar.windows(11).any(|w| w == b"prompt four"));
    }

    #[test]
    fn shards_past_the_last_one_of_an_earlier_export_are_removed() {
        let (dir, sources) = batch();
        for format in [Format::Webdataset, Format::Hub] {
            let target = dir.path().join(format.name());
            export(&sources, &target, &options(format)).unwrap();
            let bigger = Options {
                shard_size: 10,
                ..options(format)
            };
            let again = export(&sources, &target, &bigger).unwrap();
            assert_eq!((again.shards, again.written), (1, 1));
            let stats_dir = match format {
                Format::Hub => target.join("data"),
                _ => target.clone(),
            };
            let mut left: Vec<String> = std::fs::read_dir(&stats_dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            let want: &[&str] = match format {
                Format::Hub => &["00000", "00000_stats.json"],
                _ => &["00000.parquet", "00000.tar", "00000_stats.json"],
            };
            assert_eq!(left, want, "{format:?}");
        }
    }

    #[test]
    fn two_rows_of_one_key_are_refused() {
        let (dir, sources) = batch();
        let mut index = std::fs::read_to_string(&sources[0].index).unwrap();
        let first = index
            .lines()
            .next()
            .unwrap()
            .replace("k-0.webp", "k-0b.webp");
        index.push_str(&format!("{first}\n"));
        std::fs::write(&sources[0].index, index).unwrap();
        let options = Options {
            shard_size: 10,
            ..options(Format::Webdataset)
        };
        let refused = export(&sources, &dir.path().join("out"), &options);
        assert!(matches!(refused, Err(ExportError::DuplicateKey(key)) if key == "k-0"));
    }

    #[test]
    fn a_hub_folder_over_ten_thousand_files_is_refused() {
        let (dir, sources) = batch();
        let options = Options {
            shard_size: 10_001,
            ..options(Format::Hub)
        };
        let refused = export(&sources, &dir.path().join("hub"), &options);
        assert!(matches!(
            refused,
            Err(ExportError::ShardSize { max: 10_000, .. })
        ));
    }
}
