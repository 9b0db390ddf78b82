//! Tests of where alchemy results land: names, derived images, sidecars,
//! caption files, the index's columns and the folder's images.

use super::*;
use crate::output::INDEX_FILE;
use serde_json::json;

const POST_PROCESSORS: &[&str] = &["RealESRGAN_x2plus", "GFPGANv1.3", "strip_background"];

fn webp(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(&pixels, width, height, image_webp::ColorType::Rgb8)
        .unwrap();
    out
}

/// A row as a run writes it (key order of `IndexRow`, trimmed).
fn run_row(file_name: &str, prompt: &str, mood: &str) -> String {
    format!(
        r#"{{"file_name":"{file_name}","text":"{prompt}","negative_prompt":"","job":"j","seed":"42","width":8,"height":6,"cfg_scale":7.0,"censored":false,"mood":"{mood}"}}"#
    )
}

fn outcome(source: &str) -> AlchemyOutcome {
    AlchemyOutcome {
        source: source.to_owned(),
        results: BTreeMap::from([
            (
                "caption".to_owned(),
                json!(format!("a caption of {source}")),
            ),
            ("nsfw".to_owned(), json!(false)),
            (
                "interrogation".to_owned(),
                json!({"tags": [{"text": "low", "confidence": 10.5},
                                {"text": "high", "confidence": 45.1},
                                {"text": "mid", "confidence": 32}],
                       "artists": [{"text": "Caspar David Friedrich", "confidence": 44.1}]}),
            ),
            ("aesthetic".to_owned(), json!(6)),
        ]),
        derived: BTreeMap::new(),
        failed: BTreeMap::new(),
    }
}

fn outcomes(list: Vec<AlchemyOutcome>) -> BTreeMap<String, AlchemyOutcome> {
    list.into_iter().map(|o| (o.source.clone(), o)).collect()
}

fn rows(path: &Path) -> Vec<IndexMap<String, Value>> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn folder_with_index(lines: &[String]) -> (tempfile::TempDir, OutputDir) {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(INDEX_FILE), lines.join("\n") + "\n").unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    (dir, out)
}

// ---------------------------------------------------------------- names

#[test]
fn derived_names_replace_the_extension_of_the_last_component() {
    assert_eq!(
        derived_file_name("cats/a-0.webp", "RealESRGAN_x2plus"),
        "cats/a-0.RealESRGAN_x2plus.webp"
    );
    assert_eq!(
        derived_file_name("v1.2/a.png", "GFPGANv1.3"),
        "v1.2/a.GFPGANv1.3.webp"
    );
    assert_eq!(derived_file_name("noext", "GFPGAN"), "noext.GFPGAN.webp");
    assert!(is_derived_image(
        "cats/a-0.RealESRGAN_x2plus.webp",
        POST_PROCESSORS
    ));
    assert!(is_derived_image("a.GFPGANv1.3.webp", POST_PROCESSORS));
    assert!(!is_derived_image(
        "a.RealESRGAN_x2plus.png",
        POST_PROCESSORS
    ));
    assert!(!is_derived_image("RealESRGAN_x2plus.webp", POST_PROCESSORS));
    assert!(!is_derived_image(
        "d/.RealESRGAN_x2plus.webp",
        POST_PROCESSORS
    ));
    assert!(!is_derived_image("a.caption.webp", POST_PROCESSORS));
    assert!(!is_derived_image("a.webp", POST_PROCESSORS));
}

// ---------------------------------------------------------------- derived images

#[test]
fn a_derived_image_is_verified_written_once_and_replaced_by_a_new_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(16, 12, 1);
    assert_eq!(
        out.existing_derived_image("sub/a.webp", "RealESRGAN_x2plus")
            .unwrap(),
        None
    );
    assert_eq!(
        out.write_derived_image("sub/a.webp", "RealESRGAN_x2plus", &image)
            .unwrap(),
        (16, 12)
    );
    let path = dir.path().join("sub/a.RealESRGAN_x2plus.webp");
    assert_eq!(fs::read(&path).unwrap(), image);
    // Idempotent, and known to a resumed caller.
    assert_eq!(
        out.write_derived_image("sub/a.webp", "RealESRGAN_x2plus", &image)
            .unwrap(),
        (16, 12)
    );
    assert_eq!(
        out.existing_derived_image("sub/a.webp", "RealESRGAN_x2plus")
            .unwrap(),
        Some((16, 12))
    );
    // A new delivery for the source (it was rerolled) replaces the old one.
    let newer = webp(16, 12, 2);
    out.write_derived_image("sub/a.webp", "RealESRGAN_x2plus", &newer)
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), newer);
    // Broken bytes and escaping names write nothing.
    let err = out
        .write_derived_image("b.webp", "RealESRGAN_x2plus", &image[..image.len() - 3])
        .unwrap_err();
    assert!(matches!(err, OutputError::Webp { .. }), "{err:?}");
    for (source, form) in [
        ("../a.webp", "GFPGAN"),
        ("a.webp", "x/../../y"),
        ("a.webp", ""),
    ] {
        let err = out.write_derived_image(source, form, &image).unwrap_err();
        assert!(
            matches!(err, OutputError::Escape(_)),
            "{source} {form}: {err:?}"
        );
    }
    let mut left: Vec<String> = fs::read_dir(dir.path().join("sub"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["a.RealESRGAN_x2plus.webp"], "no temp file left");
}

// ---------------------------------------------------------------- sidecars

fn write_sidecar(out: &OutputDir, name: &str) -> PathBuf {
    let sidecar: Sidecar = serde_json::from_value(json!({
        "schema": Sidecar::SCHEMA, "file_name": "", "manifest": "m", "manifest_name": "m",
        "job": "j", "job_key": "k", "image_index": 0, "prompt_template": "p", "prompt": "p",
        "negative_prompt": null, "model": "m", "params": {"cfg_scale": 7.0, "width": 8, "seed": "1"},
        "request": {"nsfw": false}, "seed": "1", "batch_index": 0, "horde_request_id": "r",
        "generation_id": "g", "worker_id": "w", "worker_name": "w", "censored": false,
        "gen_metadata": [{"type": "information", "value": "see_ref"}], "kudos": 12.1,
        "submitted_at": "t", "completed_at": "t", "horde_batch_version": "v",
        "labels": {"mood": "happy"}
    }))
    .unwrap();
    out.write_image(name, &webp(8, 6, 3), &sidecar)
        .unwrap()
        .sidecar_path
}

use std::path::PathBuf;

#[test]
fn the_sidecar_gains_alchemy_and_keeps_every_other_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let path = write_sidecar(&out, "cats/a");
    let before = fs::read_to_string(&path).unwrap();

    let mut first = outcome("cats/a.webp");
    first.derived.insert(
        "RealESRGAN_x2plus".into(),
        "cats/a.RealESRGAN_x2plus.webp".into(),
    );
    first
        .failed
        .insert("describe".into(), "no worker offers it".into());
    out.record_alchemy_in_sidecar(&first).unwrap();
    let after = fs::read_to_string(&path).unwrap();
    // Everything before is there as it was: the alchemy object is added at the end.
    let (kept, added) = after.split_at(before.len() - "\n}\n".len());
    assert_eq!(kept, &before[..before.len() - "\n}\n".len()]);
    assert!(added.starts_with(",\n  \"alchemy\": {\n"), "{added}");

    let read: Sidecar = serde_json::from_str(&after).unwrap();
    let alchemy = read.alchemy.clone().unwrap();
    assert_eq!(alchemy["caption"], json!("a caption of cats/a.webp"));
    assert_eq!(alchemy["nsfw"], json!(false));
    assert_eq!(alchemy["interrogation"]["tags"][1]["text"], json!("high"));
    assert_eq!(
        alchemy["RealESRGAN_x2plus"],
        json!("cats/a.RealESRGAN_x2plus.webp")
    );
    assert_eq!(
        alchemy["failed"],
        json!({"describe": "no worker offers it"})
    );
    assert!(read.same_generation(&Sidecar {
        alchemy: None,
        ..read.clone()
    }));

    // The same outcome again: not even rewritten.
    out.record_alchemy_in_sidecar(&first).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), after);

    // A later outcome: forms it names replace, others stay; a form that now
    // has a value leaves `failed`; a failure does not undo a value.
    let later = AlchemyOutcome {
        source: "cats/a.webp".into(),
        results: BTreeMap::from([("describe".to_owned(), json!("a cat"))]),
        derived: BTreeMap::new(),
        failed: BTreeMap::from([("caption".to_owned(), "faulted".to_owned())]),
    };
    out.record_alchemy_in_sidecar(&later).unwrap();
    let alchemy = serde_json::from_str::<Sidecar>(&fs::read_to_string(&path).unwrap())
        .unwrap()
        .alchemy
        .unwrap();
    assert_eq!(alchemy["describe"], json!("a cat"));
    assert_eq!(alchemy["caption"], json!("a caption of cats/a.webp"));
    assert!(alchemy.get("failed").is_none(), "{alchemy}");
}

#[test]
fn no_sidecar_or_someone_elses_json_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    out.record_alchemy_in_sidecar(&outcome("none.webp"))
        .unwrap();
    assert!(!dir.path().join("none.json").exists());
    let foreign = dir.path().join("photo.json");
    fs::write(&foreign, "{\"camera\": \"x\"}\n").unwrap();
    out.record_alchemy_in_sidecar(&outcome("photo.png"))
        .unwrap();
    assert_eq!(
        fs::read_to_string(&foreign).unwrap(),
        "{\"camera\": \"x\"}\n"
    );
}

#[test]
fn sidecars_without_alchemy_still_read_and_write_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let path = write_sidecar(&out, "a");
    let text = fs::read_to_string(&path).unwrap();
    assert!(!text.contains("alchemy"));
    assert_eq!(
        serde_json::from_str::<Sidecar>(&text).unwrap().alchemy,
        None
    );
}

// ---------------------------------------------------------------- caption files

#[test]
fn caption_files_are_one_line_and_replaced_by_a_new_caption() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    out.write_caption_file("sub/a.png", "  a cat\r\non a mat\t ")
        .unwrap();
    let path = dir.path().join("sub/a.txt");
    assert_eq!(fs::read_to_string(&path).unwrap(), "a cat  on a mat");
    out.write_caption_file("sub/a.png", "ünïcödé 猫").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "ünïcödé 猫");
    assert!(out.write_caption_file("../a.png", "x").is_err());
}

// ---------------------------------------------------------------- the index

fn with_derived(mut outcome: AlchemyOutcome, out: &OutputDir, seed: u8) -> AlchemyOutcome {
    out.write_derived_image(&outcome.source, "RealESRGAN_x2plus", &webp(16, 12, seed))
        .unwrap();
    outcome.derived.insert(
        "RealESRGAN_x2plus".into(),
        derived_file_name(&outcome.source, "RealESRGAN_x2plus"),
    );
    outcome
}

#[test]
fn outcomes_become_typed_columns_and_rows_keep_their_order() {
    let (dir, out) = folder_with_index(&[
        run_row("a.webp", "a red kite", "happy"),
        run_row("b.webp", "a blue boat", "sad"),
        run_row("c.webp", "a green tree", "sad"),
    ]);
    let index = dir.path().join(INDEX_FILE);
    let mut b = outcome("b.webp");
    b.results.insert("nsfw".into(), json!(true));
    b.results.insert("aesthetic".into(), json!(6.95));
    let change = apply_alchemy_to_index(
        &index,
        &outcomes(vec![outcome("a.webp"), b]),
        &AlchemyColumns::default(),
    )
    .unwrap();
    assert_eq!(
        change,
        IndexChange {
            rows_updated: 3,
            rows_added: 0
        }
    );
    drop(out);

    let rows = rows(&index);
    let keys: Vec<&str> = rows[0].keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "file_name",
            "text",
            "negative_prompt",
            "job",
            "seed",
            "width",
            "height",
            "cfg_scale",
            "censored",
            "mood",
            "caption",
            "nsfw",
            "tags",
            "aesthetic"
        ]
    );
    for row in &rows {
        assert_eq!(
            row.keys().collect::<Vec<_>>(),
            rows[0].keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(rows[0]["caption"], json!("a caption of a.webp"));
    assert_eq!(rows[0]["text"], json!("a red kite"), "the prompt stays");
    assert_eq!(rows[0]["nsfw"], json!(false));
    assert_eq!(rows[1]["nsfw"], json!(true));
    assert_eq!(rows[0]["tags"], json!(["high", "mid", "low"]));
    // Numbers of other forms are floats in every row.
    let raw = fs::read_to_string(&index).unwrap();
    assert!(
        raw.lines().next().unwrap().ends_with(r#""aesthetic":6.0}"#),
        "{raw}"
    );
    assert_eq!(rows[1]["aesthetic"], json!(6.95));
    // The image without an outcome: unchanged but for the null columns.
    let c = raw.lines().nth(2).unwrap();
    assert_eq!(
        c,
        run_row("c.webp", "a green tree", "sad")
            .trim_end_matches('}')
            .to_owned()
            + r#","caption":null,"nsfw":null,"tags":null,"aesthetic":null}"#
    );
    assert!(raw.lines().all(|line| line.starts_with(r#"{"file_name":"#)));
}

#[test]
fn a_second_apply_gives_the_same_bytes() {
    let (dir, out) = folder_with_index(&[
        run_row("a.webp", "a red kite", "happy"),
        run_row("b.webp", "a blue boat", "sad"),
    ]);
    let index = dir.path().join(INDEX_FILE);
    let all = outcomes(vec![
        with_derived(outcome("a.webp"), &out, 1),
        outcome("b.webp"),
    ]);
    let columns = AlchemyColumns {
        caption_column: "text".into(),
        caption_from_alchemy: true,
    };
    let first = apply_alchemy_to_index(&index, &all, &columns).unwrap();
    assert_eq!(
        first,
        IndexChange {
            rows_updated: 2,
            rows_added: 1
        }
    );
    let bytes = fs::read(&index).unwrap();
    let second = apply_alchemy_to_index(&index, &all, &columns).unwrap();
    assert_eq!(second, IndexChange::default());
    assert_eq!(fs::read(&index).unwrap(), bytes);
    // Through the folder too, which reads the index afresh afterwards.
    assert_eq!(
        out.apply_alchemy(&all, &columns).unwrap(),
        IndexChange::default()
    );
    assert_eq!(fs::read(&index).unwrap(), bytes);
    assert!(out.has_index_row("a.RealESRGAN_x2plus.webp"));
}

#[test]
fn each_derived_image_gets_a_row_after_its_source() {
    let (dir, out) = folder_with_index(&[
        run_row("a.webp", "a red kite", "happy"),
        run_row("b.webp", "a blue boat", "sad"),
    ]);
    let index = dir.path().join(INDEX_FILE);
    let mut a = with_derived(outcome("a.webp"), &out, 1);
    // A derived image that is not on disk gets no row.
    a.derived
        .insert("GFPGANv1.3".into(), "a.GFPGANv1.3.webp".into());
    apply_alchemy_to_index(&index, &outcomes(vec![a]), &AlchemyColumns::default()).unwrap();
    let rows = rows(&index);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.webp", "a.RealESRGAN_x2plus.webp", "b.webp"]);
    let (source, derived) = (&rows[0], &rows[1]);
    assert_eq!(source["alchemy_of"], Value::Null);
    assert_eq!(source["alchemy_form"], Value::Null);
    assert_eq!(rows[2]["alchemy_of"], Value::Null);
    assert_eq!(derived["alchemy_of"], json!("a.webp"));
    assert_eq!(derived["alchemy_form"], json!("RealESRGAN_x2plus"));
    assert_eq!(
        (&derived["width"], &derived["height"]),
        (&json!(16), &json!(12))
    );
    for (key, value) in source {
        if !["file_name", "width", "height", "alchemy_of", "alchemy_form"].contains(&key.as_str()) {
            assert_eq!(&derived[key], value, "{key}");
        }
    }
    assert_eq!(
        derived.keys().collect::<Vec<_>>(),
        source.keys().collect::<Vec<_>>()
    );
}

#[test]
fn caption_from_alchemy_moves_the_prompt_once() {
    let (dir, _out) = folder_with_index(&[
        run_row("a.webp", "a red kite", "happy"),
        run_row("b.webp", "a blue boat", "sad"),
    ]);
    let index = dir.path().join(INDEX_FILE);
    let columns = AlchemyColumns {
        caption_column: "text".into(),
        caption_from_alchemy: true,
    };
    apply_alchemy_to_index(&index, &outcomes(vec![outcome("a.webp")]), &columns).unwrap();
    let rows_now = rows(&index);
    assert_eq!(rows_now[0]["text"], json!("a caption of a.webp"));
    assert_eq!(rows_now[0]["prompt"], json!("a red kite"));
    assert_eq!(rows_now[0]["caption"], json!("a caption of a.webp"));
    // Without an outcome: the prompt stays in the caption column.
    assert_eq!(rows_now[1]["text"], json!("a blue boat"));
    assert_eq!(rows_now[1]["prompt"], Value::Null);
    // A second apply finds the prompt moved already.
    let both = outcomes(vec![outcome("a.webp"), outcome("b.webp")]);
    apply_alchemy_to_index(&index, &both, &columns).unwrap();
    let rows_now = rows(&index);
    assert_eq!(rows_now[0]["prompt"], json!("a red kite"));
    assert_eq!(rows_now[1]["prompt"], json!("a blue boat"));
    assert_eq!(rows_now[1]["text"], json!("a caption of b.webp"));

    // A caption column named `caption` is taken the same way, never lost.
    let (dir, _out) =
        folder_with_index(&[run_row("a.webp", "x", "happy").replace("\"text\"", "\"caption\"")]);
    let index = dir.path().join(INDEX_FILE);
    let named = AlchemyColumns {
        caption_column: "caption".into(),
        caption_from_alchemy: false,
    };
    apply_alchemy_to_index(&index, &outcomes(vec![outcome("a.webp")]), &named).unwrap();
    let row = &rows(&index)[0];
    assert_eq!(
        (&row["caption"], &row["prompt"]),
        (&json!("a caption of a.webp"), &json!("x"))
    );
}

#[test]
fn a_missing_index_is_created_with_one_row_per_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    fs::write(dir.path().join("a.webp"), webp(8, 6, 1)).unwrap();
    let all = outcomes(vec![
        with_derived(outcome("a.webp"), &out, 2),
        outcome("gone.png"),
    ]);
    let index = dir.path().join(INDEX_FILE);
    let change = apply_alchemy_to_index(&index, &all, &AlchemyColumns::default()).unwrap();
    assert_eq!(
        change,
        IndexChange {
            rows_updated: 0,
            rows_added: 3
        }
    );
    let rows = rows(&index);
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.webp", "a.RealESRGAN_x2plus.webp", "gone.png"]);
    assert_eq!(
        (&rows[0]["width"], &rows[0]["height"]),
        (&json!(8), &json!(6))
    );
    assert_eq!(
        (&rows[1]["width"], &rows[1]["height"]),
        (&json!(16), &json!(12))
    );
    assert_eq!(rows[2]["width"], Value::Null);
    assert_eq!(rows[0]["tags"], json!(["high", "mid", "low"]));
    assert!(rows.iter().all(|r| r.keys().eq(rows[0].keys())));
    let bytes = fs::read(&index).unwrap();
    apply_alchemy_to_index(&index, &all, &AlchemyColumns::default()).unwrap();
    assert_eq!(fs::read(&index).unwrap(), bytes);
    // Nothing to apply and no index: nothing is created.
    let empty = tempfile::tempdir().unwrap();
    let none = empty.path().join(INDEX_FILE);
    apply_alchemy_to_index(&none, &BTreeMap::new(), &AlchemyColumns::default()).unwrap();
    assert!(!none.exists());
}

#[test]
fn rows_appended_after_an_apply_get_the_columns_at_the_next() {
    let (dir, out) = folder_with_index(&[run_row("a.webp", "a red kite", "happy")]);
    let index = dir.path().join(INDEX_FILE);
    apply_alchemy_to_index(
        &index,
        &outcomes(vec![outcome("a.webp")]),
        &AlchemyColumns::default(),
    )
    .unwrap();
    // A later run appends a row without the alchemy columns.
    let mut text = fs::read_to_string(&index).unwrap();
    text.push_str(&run_row("b.webp", "a blue boat", "sad"));
    text.push('\n');
    fs::write(&index, text).unwrap();
    drop(out);
    apply_alchemy_to_index(&index, &BTreeMap::new(), &AlchemyColumns::default()).unwrap();
    let rows = rows(&index);
    assert!(rows[1].keys().eq(rows[0].keys()));
    assert_eq!(rows[1]["caption"], Value::Null);
    assert_eq!(rows[0]["caption"], json!("a caption of a.webp"), "kept");
}

#[test]
fn a_damaged_line_is_reported_and_the_index_left_as_it_was() {
    let (dir, _out) = folder_with_index(&[
        run_row("a.webp", "a", "happy"),
        "{\"file_name\": 3}".to_owned(),
    ]);
    let index = dir.path().join(INDEX_FILE);
    let before = fs::read(&index).unwrap();
    let err = apply_alchemy_to_index(
        &index,
        &outcomes(vec![outcome("a.webp")]),
        &AlchemyColumns::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, OutputError::CorruptLog { line: 2, .. }),
        "{err:?}"
    );
    assert_eq!(fs::read(&index).unwrap(), before);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [INDEX_FILE], "no temp file left");
}

// ---------------------------------------------------------------- folder images

#[test]
fn folder_images_skips_hidden_derived_and_linked_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for name in [
        "b.webp",
        "a.PNG",
        "sub/c.jpg",
        "sub/deeper/d.jpeg",
        "notes.txt",
        "a.json",
        ".hidden.png",
        ".horde-batch/x.webp",
        ".report/thumbs/t.webp",
        "b.RealESRGAN_x2plus.webp",
        "renamed-upscale.webp",
    ] {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }
    fs::write(
        root.join(INDEX_FILE),
        "{\"file_name\":\"b.webp\",\"alchemy_of\":null}\n{\"file_name\":\"renamed-upscale.webp\",\"alchemy_of\":\"b.webp\"}\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("e.webp"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("linked")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("e.webp"), root.join("e.webp")).unwrap();
        assert_eq!(
            folder_images(root, POST_PROCESSORS).unwrap(),
            ["a.PNG", "b.webp", "sub/c.jpg", "sub/deeper/d.jpeg"]
        );
    }
    // Without the post-processors' names, the derived name is an image like any.
    assert!(folder_images(root, &[])
        .unwrap()
        .contains(&"b.RealESRGAN_x2plus.webp".to_owned()));
}
