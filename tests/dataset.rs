//! Datasets end to end against the sim: a 1,000-row CSV with ids becomes
//! 1,000 images named by id with their labels in every file, and a finished
//! run loads with Hugging Face `datasets` with one column per label.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use horde_batch::output::{
    derived_file_name, AlchemyColumns, AlchemyOutcome, IndexRow, NewImage, OutputDir, Sidecar,
};
use serde_json::{json, Value};

use crate::common::{run_bounded, stdout_of_success, Batch, Sim};

#[test]
fn a_thousand_row_csv_with_ids_names_every_file_and_result_by_id() {
    let sim = Sim::unlimited(&["--workers", "64", "--latency", "1ms", "--seed", "13"]);
    let batch = Batch::new(
        "version: 1\nname: rows1k\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64, steps: 4}\noutput: {filename: \"{job}/{id}-{index}\"}\njobs:\n  - name: prompts\n    prompt: \"${subject}, ${style}\"\n    rows: {file: prompts.csv, id: prompt_id}\n",
    );
    let styles = ["oil", "ink", "pastel"];
    let mut csv = String::from("prompt_id,subject,style,category\n");
    for i in 0..1000 {
        let style = styles[i % 3];
        csv.push_str(&format!(
            "p{i:04},\"subject {i}, small\",{style},c{}\n",
            i % 7
        ));
    }
    std::fs::write(batch.dir.path().join("prompts.csv"), csv).unwrap();

    let mut command = batch.command(&sim, "run");
    command.env("HORDE_BATCH_SUBMIT_INTERVAL", "2ms");
    let finished = run_bounded(&mut command, Duration::from_secs(240));
    assert_eq!(finished.code, 0, "{}", finished.stderr);

    let ids: BTreeSet<String> = (0..1000).map(|i| format!("p{i:04}")).collect();
    let files: BTreeSet<String> = batch
        .webp_files()
        .iter()
        .map(|p| p.strip_prefix(batch.out()).unwrap().display().to_string())
        .collect();
    let expected: BTreeSet<String> = ids
        .iter()
        .map(|id| format!("prompts/{id}-0.webp"))
        .collect();
    assert_eq!(files, expected);

    let results = batch.jsonl("results.jsonl");
    assert_eq!(results.len(), 1000);
    for result in &results {
        let id = result["id"].as_str().unwrap();
        assert_eq!(result["images"], json!([format!("prompts/{id}-0.webp")]));
    }
    let index = batch.jsonl("metadata.jsonl");
    assert_eq!(index.len(), 1000);
    for row in &index {
        let id = row["prompt_id"].as_str().unwrap();
        let n: usize = id[1..].parse().unwrap();
        assert_eq!(row["file_name"], json!(format!("prompts/{id}-0.webp")));
        assert_eq!(row["style"], json!(styles[n % 3]));
        assert_eq!(row["category"], json!(format!("c{}", n % 7)));
        assert_eq!(
            row["text"],
            json!(format!("subject {n}, small, {}", styles[n % 3]))
        );
        let sidecar: Value = serde_json::from_slice(
            &std::fs::read(batch.out().join(format!("prompts/{id}-0.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(sidecar["labels"]["prompt_id"], json!(id));
        assert_eq!(
            sidecar["labels"]["subject"],
            json!(format!("subject {n}, small"))
        );
    }
}

/// A manifest with every kind of label: matrix text and parameter axes, a
/// wildcard, a variant, a rows table with a parameter column, LoRAs and
/// post-processing, a renamed caption and extra columns.
const LABELLED: &str = r#"version: 1
name: labelled
defaults:
  models: [stable_diffusion]
  params: {width: 64, height: 64, steps: 4}
wildcards: {animal: [owl, cat]}
output:
  metadata: {caption: caption, columns: [worker_name, kudos, karras]}
jobs:
  - name: grid
    prompt: "a ${mood} __animal__ at {dawn|dusk} <lora:detail:0.5>"
    matrix:
      mood: [happy, sad]
      cfg_scale: [5, 7.5]
      clip_skip: [1, 2]
  - name: rows
    prompt: "${subject}"
    rows: {file: rows.jsonl, id: uid}
    params: {post_processing: [GFPGAN]}
"#;

fn labelled_run() -> Batch {
    let sim = Sim::unlimited(&["--workers", "16", "--latency", "1ms", "--seed", "14"]);
    let batch = Batch::new(LABELLED);
    std::fs::write(
        batch.dir.path().join("rows.jsonl"),
        "{\"uid\": 1, \"subject\": \"a red kite\", \"steps\": 5}\n{\"uid\": 2, \"subject\": \"a blue boat\"}\n",
    )
    .unwrap();
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    batch
}

/// What `datasets` needs of `metadata.jsonl`, checked the way its JSON
/// loader (pyarrow) infers a table: one row per image, `file_name` first,
/// every row with the same columns, and each column one type (or null).
#[test]
fn label_columns_have_one_type_each_and_every_row_has_them_all() {
    let batch = labelled_run();
    let rows = batch.jsonl("metadata.jsonl");
    assert_eq!(rows.len(), 2 * 2 * 2 * 2 * 2 + 2);
    let columns =
        |row: &Value| -> Vec<String> { row.as_object().unwrap().keys().cloned().collect() };
    let first = columns(&rows[0]);
    let mut types: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let raw = std::fs::read_to_string(batch.out().join("metadata.jsonl")).unwrap();
    assert!(
        raw.lines().all(|line| line.starts_with("{\"file_name\":")),
        "{raw}"
    );
    for row in &rows {
        assert_eq!(columns(row), first, "every row has the same columns");
        for (name, value) in row.as_object().unwrap() {
            let kind = match value {
                Value::Null => continue,
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "int",
                Value::String(_) => "string",
                Value::Array(_) | Value::Object(_) => "nested",
            };
            types.entry(name.clone()).or_default().insert(kind);
        }
    }
    for (name, kinds) in &types {
        assert_eq!(kinds.len(), 1, "column {name} has types {kinds:?}");
    }
    for label in [
        "mood",
        "animal",
        "variant_1",
        "clip_skip",
        "subject",
        "uid",
        "caption",
        "worker_name",
        "kudos",
        "karras",
        "loras",
        "post_processing",
    ] {
        assert!(
            first.contains(&label.to_owned()),
            "no column {label} in {first:?}"
        );
    }
    assert!(
        !first.contains(&"text".to_owned()),
        "the caption column is renamed"
    );
    let grid = rows.iter().find(|r| r["job"] == "grid").unwrap();
    assert_eq!(grid["loras"], json!("detail:0.5"));
    assert!(grid["subject"].is_null());
    assert_eq!(types["cfg_scale"], BTreeSet::from(["float"]));
    assert_eq!(
        types["uid"],
        BTreeSet::from(["string"]),
        "ids are text, whatever the JSON"
    );
    let kite = rows.iter().find(|r| r["uid"] == "1").unwrap();
    assert_eq!(kite["caption"], json!("a red kite"));
    assert_eq!(kite["steps"], json!(5));
    assert_eq!(kite["post_processing"], json!("GFPGAN"));
    let sidecar: Value = serde_json::from_slice(
        &std::fs::read(
            batch
                .out()
                .join(kite["file_name"].as_str().unwrap())
                .with_extension("json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        sidecar["labels"],
        json!({"uid": "1", "subject": "a red kite", "steps": 5})
    );
}

/// Loads `dir` with `datasets.load_dataset("imagefolder", …)`: its columns,
/// rows (without the image) and image sizes. `None` (saying so) when no
/// Python with `datasets` is installed, which `.ci/run` does not allow: it
/// installs `datasets` and sets `HORDE_BATCH_REQUIRE_TOOLS=1`.
pub fn load_imagefolder(dir: &std::path::Path) -> Option<Value> {
    let Some(python) = crate::common::python_with("datasets") else {
        crate::common::skip_without(
            "Python's `datasets`",
            "pip install datasets, or set HORDE_BATCH_PYTHON",
        );
        return None;
    };
    let script = r#"
import json, sys
import datasets
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], split="train")
rows = [{k: v for k, v in row.items() if k != "image"} for row in ds]
sizes = sorted({row_image.size for row_image in ds["image"]})
print(json.dumps({"columns": ds.column_names, "rows": rows, "sizes": sizes,
                  "features": {k: str(v) for k, v in ds.features.items()}}))
"#;
    let home = tempfile::tempdir().unwrap();
    let stdout = stdout_of_success(
        Command::new(python)
            .args(["-c", script])
            .arg(dir)
            .env("HF_DATASETS_OFFLINE", "1")
            .env("HF_HOME", home.path()),
    );
    Some(serde_json::from_slice(&stdout).unwrap())
}

/// The real loader reads a finished run's folder with one column per label
/// and the right values.
#[test]
fn a_finished_run_loads_with_hugging_face_datasets() {
    let batch = labelled_run();
    let Some(loaded) = load_imagefolder(&batch.out()) else {
        return;
    };
    let columns: Vec<&str> = loaded["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for label in [
        "image",
        "caption",
        "mood",
        "animal",
        "variant_1",
        "clip_skip",
        "subject",
        "uid",
        "loras",
    ] {
        assert!(columns.contains(&label), "no column {label} in {columns:?}");
    }
    let rows = loaded["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 34);
    assert_eq!(loaded["sizes"], json!([[64, 64]]));
    let moods: BTreeSet<&str> = rows.iter().filter_map(|r| r["mood"].as_str()).collect();
    assert_eq!(moods, BTreeSet::from(["happy", "sad"]));
    let index = batch.jsonl("metadata.jsonl");
    for row in rows {
        let ours = index
            .iter()
            .find(|r| r["generation_id"] == row["generation_id"])
            .unwrap();
        for label in [
            "caption",
            "mood",
            "animal",
            "variant_1",
            "subject",
            "uid",
            "clip_skip",
        ] {
            assert_eq!(row[label], ours[label], "{label}");
        }
    }
    assert_eq!(loaded["features"]["clip_skip"], json!("Value('int64')"));
}

/// A small imagefolder as a run writes it: three 64×64 WebPs in `imgs/`, their
/// sidecars and `metadata.jsonl` rows with a label column.
fn small_imagefolder() -> (tempfile::TempDir, OutputDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    for i in 0..3u8 {
        let sidecar: Sidecar = serde_json::from_value(json!({
            "schema": Sidecar::SCHEMA, "file_name": "", "manifest": "m.yaml", "manifest_name": "m",
            "job": "imgs", "job_key": "k", "image_index": i, "prompt_template": "p", "prompt": format!("prompt {i}"),
            "negative_prompt": null, "model": "stable_diffusion", "params": {}, "request": {}, "seed": "7",
            "batch_index": 0, "horde_request_id": "r", "generation_id": format!("g{i}"), "worker_id": "w",
            "worker_name": "w", "censored": false, "gen_metadata": [], "kudos": 1.0,
            "submitted_at": "t", "completed_at": "t", "horde_batch_version": "v"
        }))
        .unwrap();
        let row = IndexRow {
            file_name: String::new(),
            text: format!("prompt {i}"),
            negative_prompt: String::new(),
            job: "imgs".into(),
            job_key: "k".into(),
            image_index: u32::from(i),
            model: "stable_diffusion".into(),
            seed: "7".into(),
            width: 64,
            height: 64,
            steps: 4,
            cfg_scale: 7.0,
            sampler_name: "k_euler".into(),
            censored: false,
            horde_request_id: "r".into(),
            generation_id: format!("g{i}"),
            loras: String::new(),
            post_processing: String::new(),
            columns: serde_json::Map::from_iter([("mood".to_owned(), json!("calm"))]),
        };
        let name = format!("imgs/{i}");
        let image = webp_image(64, 64, i);
        let written = out.write_images(vec![NewImage {
            rel_name: &name,
            webp: &image,
            sidecar: &sidecar,
            index_row: Some(row),
        }]);
        written.into_iter().next().unwrap().unwrap();
    }
    (dir, out)
}

fn webp_image(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    let mut bytes = Vec::new();
    image_webp::WebPEncoder::new(&mut bytes)
        .encode(&pixels, width, height, image_webp::ColorType::Rgb8)
        .unwrap();
    bytes
}

/// Alchemy results (a caption, nsfw, interrogation tags and a 2× upscale of
/// each image) applied to a run's folder: every column has one type, and the
/// real loader reads the captions, `nsfw` as bools, `tags` as lists and the
/// upscales as rows of their own.
#[test]
fn alchemy_columns_and_derived_rows_load_with_hugging_face_datasets() {
    let (dir, out) = small_imagefolder();
    let mut outcomes = BTreeMap::new();
    for i in 0..3u8 {
        let source = format!("imgs/{i}.webp");
        let form = "RealESRGAN_x2plus";
        assert_eq!(
            out.write_derived_image(&source, form, &webp_image(128, 128, i))
                .unwrap(),
            (128, 128)
        );
        let caption = format!("a caption of image {i}");
        out.write_caption_file(&source, &caption).unwrap();
        let outcome = AlchemyOutcome {
            source: source.clone(),
            results: BTreeMap::from([
                ("caption".to_owned(), json!(caption)),
                ("nsfw".to_owned(), json!(i == 1)),
                (
                    "interrogation".to_owned(),
                    json!({"tags": [{"text": "night", "confidence": 45.1},
                                    {"text": format!("tag{i}"), "confidence": 60.0}],
                           "artists": [{"text": "Caspar David Friedrich", "confidence": 44.1}]}),
                ),
            ]),
            derived: BTreeMap::from([(form.to_owned(), derived_file_name(&source, form))]),
            failed: BTreeMap::new(),
        };
        out.record_alchemy_in_sidecar(&outcome).unwrap();
        outcomes.insert(source, outcome);
    }
    let columns = AlchemyColumns {
        caption_column: "text".into(),
        caption_from_alchemy: true,
    };
    let change = out.apply_alchemy(&outcomes, &columns).unwrap();
    assert_eq!((change.rows_updated, change.rows_added), (3, 3));

    // What the loader needs, checked on the file: one type per column.
    let raw = std::fs::read_to_string(dir.path().join("metadata.jsonl")).unwrap();
    let rows: Vec<Value> = raw
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let mut types: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for row in &rows {
        assert_eq!(
            row.as_object().unwrap().len(),
            rows[0].as_object().unwrap().len()
        );
        for (name, value) in row.as_object().unwrap() {
            let kind = match value {
                Value::Null => continue,
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "int",
                Value::String(_) => "string",
                Value::Array(_) => "list",
                Value::Object(_) => "object",
            };
            types.entry(name.clone()).or_default().insert(kind);
        }
    }
    for (name, kinds) in &types {
        assert_eq!(kinds.len(), 1, "column {name} has types {kinds:?}");
    }
    assert_eq!(types["tags"], BTreeSet::from(["list"]));

    let Some(loaded) = load_imagefolder(dir.path()) else {
        return;
    };
    let loaded_rows = loaded["rows"].as_array().unwrap();
    assert_eq!(loaded_rows.len(), 6);
    assert_eq!(loaded["sizes"], json!([[64, 64], [128, 128]]));
    assert_eq!(loaded["features"]["nsfw"], json!("Value('bool')"));
    assert!(
        loaded["features"]["tags"]
            .as_str()
            .unwrap()
            .contains("string"),
        "{}",
        loaded["features"]
    );
    let (sources, derived): (Vec<&Value>, Vec<&Value>) = loaded_rows
        .iter()
        .partition(|row| row["alchemy_of"].is_null());
    assert_eq!(sources.len(), 3);
    for row in sources.iter().chain(&derived) {
        let i: u8 = row["generation_id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(row["caption"], json!(format!("a caption of image {i}")));
        assert_eq!(row["text"], row["caption"], "the caption column took it");
        assert_eq!(row["prompt"], json!(format!("prompt {i}")));
        assert_eq!(row["nsfw"], json!(i == 1));
        assert_eq!(row["tags"], json!([format!("tag{i}"), "night"]));
        assert_eq!(row["mood"], json!("calm"));
    }
    let mut of: Vec<&str> = derived
        .iter()
        .map(|row| {
            assert_eq!(row["alchemy_form"], json!("RealESRGAN_x2plus"));
            assert_eq!((&row["width"], &row["height"]), (&json!(128), &json!(128)));
            row["alchemy_of"].as_str().unwrap()
        })
        .collect();
    of.sort_unstable();
    assert_eq!(of, ["imgs/0.webp", "imgs/1.webp", "imgs/2.webp"]);
}
