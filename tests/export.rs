//! `horde-batch export` end to end against the sim: a 10,000-image batch
//! written as WebDataset shards, Parquet files and a Hub imagefolder, each
//! loaded back with Hugging Face `datasets` and compared row by row with the
//! batch's own imagefolder; an export killed midway resumes to the same
//! bytes; a sharded batch exports as one dataset; alchemy's `tags` load back
//! as lists of strings; an unfinished batch or an unusable target folder is
//! a clear error that leaves nothing half-written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    python_with, run_bounded, skip_without, stdout_of_success, Batch, Finished, Sim, BIN,
    FAST_ALCHEMISTS,
};

const FORMATS: [&str; 3] = ["webdataset", "parquet", "hub"];

/// `jobs` × `images` images of 64×64, small so the tests time the export.
fn manifest(name: &str, jobs: usize, images: usize) -> String {
    let numbers: Vec<String> = (1..=jobs).map(|n| n.to_string()).collect();
    format!(
        "version: 1\nname: {name}\ndefaults:\n  models: [stable_diffusion]\n  params: {{width: 64, height: 64, steps: 4}}\n\
         jobs:\n  - name: grid\n    prompt: \"a shape number ${{n}}\"\n    matrix:\n      n: [{}]\n    images: {images}\n",
        numbers.join(", ")
    )
}

fn fast_sim() -> Sim {
    Sim::unlimited(&["--workers", "200", "--latency", "1ms", "--seed", "23"])
}

/// Runs `batch` to its end, as fast as the sim allows.
#[track_caller]
fn run(batch: &Batch, sim: &Sim, extra: &[&str]) {
    let mut command = batch.command(sim, "run");
    command
        .args(["--no-report"])
        .args(extra)
        .env("HORDE_BATCH_SUBMIT_INTERVAL", "2ms")
        .env("HORDE_BATCH_POLL_FLOOR", "50ms");
    let finished = run_bounded(&mut command, Duration::from_secs(240));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
}

/// `horde-batch export <manifest> --format <format> --to <to> <extra>`.
fn export(batch: &Batch, format: &str, to: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("export")
        .arg(&batch.manifest)
        .args(["--format", format, "--to"])
        .arg(to)
        .args(extra)
        .env("NO_COLOR", "1")
        .env_remove("HORDE_BATCH_EXPORT_FAULT");
    command
}

#[track_caller]
fn exported(command: &mut Command) -> Finished {
    let finished = run_bounded(command, Duration::from_secs(120));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    finished
}

/// Every file under `dir` (relative path → bytes).
fn files_of(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    crate::common::walk_all(dir)
        .into_iter()
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path.strip_prefix(dir).unwrap().to_owned(), bytes)
        })
        .collect()
}

fn stats(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Loads the batch's imagefolder and the three exports with `datasets` and
/// compares them row by row ([`DATASETS_CHECK`]); `None` when
/// `datasets` is not installed (not allowed under `.ci/run`).
fn check_with_datasets(out: &Path, exports: &Path) -> Option<serde_json::Value> {
    let Some(python) = python_with("datasets") else {
        skip_without(
            "Python's `datasets`",
            "pip install datasets pillow, or set HORDE_BATCH_PYTHON",
        );
        return None;
    };
    let home = tempfile::tempdir().unwrap();
    let stdout = stdout_of_success(
        Command::new(python)
            .args(["-c", DATASETS_CHECK])
            .arg(out)
            .args(FORMATS.map(|format| exports.join(format)))
            .env("HF_DATASETS_OFFLINE", "1")
            .env("HF_HOME", home.path())
            .env("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
    );
    Some(serde_json::from_slice(&stdout).unwrap())
}

/// The comparison, in Python: arguments OUT_DIR WEBDATASET_DIR PARQUET_DIR HUB_DIR.
const DATASETS_CHECK: &str = r#"
"""Loads a batch's imagefolder and its exports with Hugging Face `datasets`
and compares them row by row: the same rows, columns (with their features:
a list stays a list) and image bytes, and the webdataset shards' own Parquet
rows too.

Arguments: OUT_DIR WEBDATASET_DIR PARQUET_DIR HUB_DIR
Prints a JSON summary; exits non-zero (with the difference) on a mismatch.
"""
import glob, json, os, sys

import datasets
from datasets import Image

out, wds_dir, pq_dir, hub_dir = sys.argv[1:5]


def key_of(row):
    key = f"{row['job_key']}-{row['image_index']}"
    if row.get("alchemy_form"):
        key += f"-{row['alchemy_form']}"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)


def raw(ds):
    return ds.cast_column("image", Image(decode=False))


def without_nulls(value):
    """`datasets` reads every sample's JSON as one struct: a key some other
    sample has is added as None. Nulls are left out on both sides."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def image_bytes(value):
    if value.get("bytes") is not None:
        return value["bytes"]
    with open(value["path"], "rb") as f:
        return f.read()


ref = raw(datasets.load_dataset("imagefolder", data_dir=out, split="train"))
pq = datasets.load_dataset("parquet", data_files=sorted(glob.glob(os.path.join(pq_dir, "*.parquet"))), split="train")
assert str(pq.features["image"]) .startswith("Image("), pq.features
pq = raw(pq)
wpq = datasets.load_dataset("parquet", data_files=sorted(glob.glob(os.path.join(wds_dir, "*.parquet"))), split="train")
wds = datasets.load_dataset("webdataset", data_files=sorted(glob.glob(os.path.join(wds_dir, "*.tar"))), split="train")
wds = wds.cast_column("webp", Image(decode=False))
hub = raw(datasets.load_dataset("imagefolder", data_dir=hub_dir, split="train"))

columns = [c for c in ref.column_names if c != "image"]
assert sorted(pq.column_names) == sorted(ref.column_names + ["key"]), (pq.column_names, ref.column_names)
assert sorted(hub.column_names) == sorted(ref.column_names + ["key"]), (hub.column_names, ref.column_names)
assert sorted(wpq.column_names) == sorted(columns + ["key", "file_name"]), (wpq.column_names, ref.column_names)
for name in columns:
    assert pq.features[name] == ref.features[name], (name, pq.features[name], ref.features[name])
    assert wpq.features[name] == ref.features[name], (name, wpq.features[name], ref.features[name])
    assert hub.features[name] == ref.features[name], (name, hub.features[name], ref.features[name])
n = len(ref)
assert len(pq) == len(wds) == len(wpq) == len(hub) == n, (n, len(pq), len(wds), len(wpq), len(hub))

by_key = {}
for row in ref.to_list():
    by_key[key_of(row)] = row
assert len(by_key) == n, "keys are unique"
caption = "text" if "text" in columns else None
index = {}
with open(os.path.join(out, "metadata.jsonl")) as f:
    for line in f:
        if line.strip():
            row = json.loads(line)
            index[row["file_name"]] = row

for name, ds in (("parquet", pq), ("hub", hub)):
    seen = set()
    for row in ds.to_list():
        want = by_key[row["key"]]
        seen.add(row["key"])
        for c in columns:
            assert row[c] == want[c], (name, row["key"], c, row[c], want[c])
        assert image_bytes(row["image"]) == image_bytes(want["image"]), (name, row["key"])
    assert len(seen) == n, name

seen = set()
for row in wpq.to_list():
    want = by_key[row["key"]]
    seen.add(row["key"])
    for c in columns:
        assert row[c] == want[c], ("webdataset parquet", row["key"], c, row[c], want[c])
    assert want["image"]["path"].endswith(os.sep + row["file_name"]), (row["key"], row["file_name"])
assert len(seen) == n, "webdataset parquet"

for row in wds.to_list():
    want = by_key[row["__key__"]]
    assert image_bytes(row["webp"]) == image_bytes(want["image"]), ("webdataset", row["__key__"])
    if caption:
        assert row["txt"] == want[caption], (row["__key__"], row["txt"], want[caption])
    path = want["image"]["path"]
    sidecar = os.path.splitext(path)[0] + ".json"
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            meta = json.load(f)
    else:
        # An image without a sidecar (an upscale) has its index row instead.
        meta = index[os.path.relpath(path, out)]
    assert without_nulls(row["json"]) == without_nulls(meta), (row["__key__"], row["json"], meta)

print(json.dumps({
    "rows": n,
    "columns": columns,
    "pq_features": str(pq.features["image"]),
    "features": {name: str(pq.features[name]) for name in columns},
    "rows_with_tags": sum(1 for row in pq.to_list() if row.get("tags")),
}))
"#;

/// Issue #23: 10,000 images to every format, loaded back with `datasets`
/// and compared row by row with the imagefolder.
#[test]
fn ten_thousand_images_export_to_every_format_and_load_back_the_same() {
    let sim = fast_sim();
    let batch = Batch::new(&manifest("big", 200, 50));
    run(&batch, &sim, &[]);
    let exports = batch.dir.path().join("exports");
    for format in FORMATS {
        let started = Instant::now();
        let finished = exported(&mut export(
            &batch,
            format,
            &exports.join(format),
            &["--shard-size", "4000"],
        ));
        assert!(
            finished.stderr.contains("exported 10000 image(s) as ")
                && finished.stderr.contains("3 shard(s), 3 written"),
            "{format}: {}",
            finished.stderr
        );
        eprintln!("export {format}: {:.1?}", started.elapsed());
    }
    let wds = exports.join("webdataset");
    let counts: Vec<u64> = (0..3)
        .map(|at| {
            stats(&wds.join(format!("{at:05}_stats.json")))["count"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(counts, [4000, 4000, 2000]);
    for at in 0..3 {
        for name in [format!("{at:05}.tar"), format!("{at:05}.parquet")] {
            assert!(wds.join(&name).is_file(), "{name}");
        }
        let hub_folder = exports.join(format!("hub/data/{at:05}"));
        let files = std::fs::read_dir(&hub_folder).unwrap().count();
        assert!(files <= 10_000, "{files} files in {}", hub_folder.display());
    }
    // A rerun writes nothing and leaves the same files.
    let before = files_of(&exports);
    for format in FORMATS {
        let finished = exported(&mut export(
            &batch,
            format,
            &exports.join(format),
            &["--shard-size", "4000"],
        ));
        assert!(
            finished.stderr.contains("0 written"),
            "{format}: {}",
            finished.stderr
        );
    }
    assert!(before == files_of(&exports), "a rerun changed a file");

    let started = Instant::now();
    let Some(checked) = check_with_datasets(&batch.out(), &exports) else {
        return;
    };
    eprintln!("datasets check: {:.1?}", started.elapsed());
    assert_eq!(checked["rows"], 10_000, "{checked}");
}

/// A batch with alchemy (a caption, `nsfw`, interrogation `tags` and an
/// upscale, whose row copies its source's) exports `tags` as a list of strings:
/// `datasets` reads every format with the imagefolder's columns and values.
#[test]
fn alchemy_tags_export_as_lists_and_load_back_the_same() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let mut text = "version: 1\nname: tagged\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64, steps: 4}\n  alchemy: [caption, nsfw, interrogation, RealESRGAN_x2plus]\njobs:\n".to_owned();
    for job in 0..4 {
        text.push_str(&format!(
            "  - name: j{job}\n    prompt: \"a lighthouse number {job}\"\n    images: 3\n"
        ));
    }
    let batch = Batch::new(&text);
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 24, "12 images and their upscales");
    let tagged = rows.iter().filter(|row| row["tags"].is_array()).count();
    assert_eq!(
        tagged, 24,
        "every row has tags (an upscale's copies its source's)"
    );

    let exports = batch.dir.path().join("exports");
    for format in FORMATS {
        exported(&mut export(
            &batch,
            format,
            &exports.join(format),
            &["--shard-size", "10"],
        ));
    }
    let Some(checked) = check_with_datasets(&batch.out(), &exports) else {
        return;
    };
    assert_eq!(checked["rows"], 24, "{checked}");
    assert_eq!(checked["rows_with_tags"], 24, "{checked}");
    let features = &checked["features"];
    assert!(
        features["tags"]
            .as_str()
            .unwrap()
            .contains("Value('string')")
            && features["nsfw"] == "Value('bool')"
            && features["caption"] == "Value('string')",
        "{checked}"
    );
}

/// An export killed in the middle of a shard (an injected abort, not a
/// timed kill) leaves its complete shards and a temp file; the rerun sweeps
/// the temp file, keeps the complete shards, rewrites the rest, and ends
/// with the same bytes as an export that was never killed.
#[test]
fn an_export_killed_midway_resumes_to_the_same_bytes() {
    let sim = fast_sim();
    let batch = Batch::new(&manifest("killed", 10, 20));
    run(&batch, &sim, &[]);
    let dir = batch.dir.path();
    for format in FORMATS {
        let clean = dir.join(format!("clean-{format}"));
        exported(&mut export(&batch, format, &clean, &["--shard-size", "50"]));
        let killed = dir.join(format!("killed-{format}"));
        let aborted = run_bounded(
            export(&batch, format, &killed, &["--shard-size", "50"])
                .env("HORDE_BATCH_EXPORT_FAULT", "kill-after-shards:2"),
            Duration::from_secs(60),
        );
        assert_ne!(aborted.code, 0, "{format}: the injected kill ends it");
        let left = files_of(&killed);
        assert!(
            left.keys()
                .any(|p| p.to_string_lossy().contains(".hb-tmp-")),
            "{format}: a temp file is left: {:?}",
            left.keys()
        );
        let stats_left = left
            .keys()
            .filter(|p| p.to_string_lossy().ends_with("_stats.json"))
            .count();
        assert_eq!(stats_left, 2, "{format}: two shards were complete");

        let rerun = exported(&mut export(
            &batch,
            format,
            &killed,
            &["--shard-size", "50"],
        ));
        assert!(
            rerun.stderr.contains("4 shard(s), 2 written")
                && rerun.stderr.contains("2 complete already"),
            "{format}: {}",
            rerun.stderr
        );
        assert!(
            files_of(&clean) == files_of(&killed),
            "{format}: the resumed export differs from a clean one"
        );
    }
}

/// A batch run as `--shard 1/2` and `--shard 2/2` exports as one dataset.
#[test]
fn a_sharded_batch_exports_as_one_dataset() {
    let sim = fast_sim();
    let batch = Batch::new(&manifest("sharded", 12, 10));
    for shard in ["1/2", "2/2"] {
        run(&batch, &sim, &["--shard", shard]);
    }
    let exports = batch.dir.path().join("exports");
    for format in FORMATS {
        let finished = exported(&mut export(&batch, format, &exports.join(format), &[]));
        assert!(
            finished.stderr.contains("exported 120 image(s)"),
            "{format}: {}",
            finished.stderr
        );
    }
    let stats = stats(&exports.join("webdataset/00000_stats.json"));
    assert_eq!(stats["count"], 120);
    // Rows of both shard folders, each with its folder in `file_name`.
    let tar = std::fs::read(exports.join("webdataset/00000.tar")).unwrap();
    let mut archive = tar::Archive::new(tar.as_slice());
    let members = archive.entries().unwrap().count();
    assert_eq!(members, 3 * 120);
    let hub = std::fs::read_to_string(exports.join("hub/metadata.jsonl")).unwrap();
    assert_eq!(hub.lines().count(), 120);

    // `merge` gives the imagefolder the exports are compared with.
    let merged = run_bounded(
        Command::new(BIN).arg("merge").arg(&batch.manifest),
        Duration::from_secs(60),
    );
    assert_eq!(merged.code, 0, "{}", merged.stderr);
    if let Some(checked) = check_with_datasets(&batch.out(), &exports) {
        assert_eq!(checked["rows"], 120, "{checked}");
    }
}

/// An unfinished batch is refused, saying how many images are missing,
/// and nothing is written; `--partial` exports what is there.
#[test]
fn an_unfinished_batch_is_refused_unless_partial() {
    let sim = Sim::unlimited(&["--workers", "2", "--latency", "300ms", "--seed", "5"]);
    let batch = Batch::new(&manifest("unfinished", 10, 4));
    batch.kill_run_after(&sim, 4);
    let to = batch.dir.path().join("export");
    let refused = run_bounded(
        &mut export(&batch, "webdataset", &to, &[]),
        Duration::from_secs(60),
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("nothing exported")
            && refused.stderr.contains("of 40 image(s) are still missing")
            && refused.stderr.contains("--partial"),
        "{}",
        refused.stderr
    );
    assert!(!to.exists(), "nothing is written");

    let saved = batch.index_lines().len();
    let partial = exported(&mut export(&batch, "webdataset", &to, &["--partial"]));
    assert!(
        partial
            .stderr
            .contains(&format!("exported {saved} image(s)"))
            && partial.stderr.contains("partial: "),
        "{}",
        partial.stderr
    );
}

/// A target that cannot be made, or a disk that fills up mid-shard, is a
/// clear error (exit 2) and leaves no file under a final name.
#[test]
fn an_unusable_or_full_target_is_a_clear_error_with_nothing_half_written() {
    let sim = fast_sim();
    let batch = Batch::new(&manifest("full", 4, 10));
    run(&batch, &sim, &[]);
    let blocker = batch.write("a-file", "not a folder");
    let refused = run_bounded(
        &mut export(&batch, "webdataset", &blocker.join("export"), &[]),
        Duration::from_secs(60),
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot create") && refused.stderr.contains("a-file"),
        "{}",
        refused.stderr
    );

    for format in FORMATS {
        let to = batch.dir.path().join(format!("full-{format}"));
        let full = run_bounded(
            export(&batch, format, &to, &["--shard-size", "20"])
                .env("HORDE_BATCH_EXPORT_FAULT", "full-after-bytes:30000"),
            Duration::from_secs(60),
        );
        assert_eq!(full.code, 2, "{format}: {}", full.stderr);
        assert!(
            full.stderr.contains("no storage space")
                && full.stderr.contains(&format!("full-{format}")),
            "{format}: {}",
            full.stderr
        );
        // Only complete shards (each with its stats file) are under final names.
        let left = files_of(&to);
        for path in left.keys() {
            let name = path.to_string_lossy();
            assert!(
                !name.contains(".hb-tmp-"),
                "{format}: a temp file is left: {name}"
            );
        }
        let complete = left
            .keys()
            .filter(|p| p.to_string_lossy().ends_with("_stats.json"))
            .count();
        let data = left
            .keys()
            .filter(|p| !p.to_string_lossy().ends_with("_stats.json"))
            .count();
        let per_shard = match format {
            "webdataset" => 2,
            "parquet" => 1,
            _ => 20,
        };
        assert_eq!(data, complete * per_shard, "{format}: {:?}", left.keys());
        // Once there is room, the export finishes.
        exported(&mut export(&batch, format, &to, &["--shard-size", "20"]));
    }
}
