//! Integration tests for `horde_batch::output`: what ends up in the output
//! directory, across crashes, retries, hostile names and broken disks.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path};
use std::sync::Barrier;

use crate::common::{child_env, test_child};
use horde_batch::output::{
    derived_file_name, syncs_on_this_thread, verify_webp, AlchemyColumns, AlchemyOutcome,
    FilenameTemplate, IndexRow, JobError, JobResult, NameFields, NewImage, OutputDir, OutputError,
    Placeholder, Sidecar, TemplateError, WebpError, HORDE_BATCH_VERSION, INDEX_FILE, TEMP_PREFIX,
};
use image_webp::{ColorType, WebPEncoder};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

/// A real lossless WebP whose pixels depend on `seed`.
fn webp(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut out = Vec::new();
    WebPEncoder::new(&mut out)
        .encode(&pixels, width, height, ColorType::Rgb8)
        .unwrap();
    out
}

fn sidecar(generation_id: &str) -> Sidecar {
    Sidecar {
        schema: Sidecar::SCHEMA,
        file_name: String::new(),
        manifest: "manifests/animals.yaml".into(),
        manifest_name: "animals-v1".into(),
        job: "cats".into(),
        job_key: "4f1c".into(),
        image_index: 0,
        prompt_template: "a {black|white} cat".into(),
        prompt: "a black cat".into(),
        negative_prompt: Some("blurry".into()),
        model: "stable_diffusion".into(),
        params: json!({"width": 8, "height": 6, "steps": 25, "cfg_scale": 7.0, "seed": "42"}),
        request: json!({"nsfw": false, "r2": true}),
        seed: "42".into(),
        batch_index: Some(0),
        horde_request_id: "req-1".into(),
        generation_id: generation_id.into(),
        worker_id: "w-1".into(),
        worker_name: "worker one".into(),
        censored: false,
        gen_metadata: json!([]),
        kudos: 12.5,
        submitted_at: "2026-05-01T12:00:00.000Z".into(),
        completed_at: "2026-05-01T12:00:30.000Z".into(),
        horde_batch_version: HORDE_BATCH_VERSION.into(),
        labels: Default::default(),
        sources: None,
        alchemy: None,
    }
}

fn index_row(file_name: &str, seed: &str, cfg_scale: f64) -> IndexRow {
    IndexRow {
        file_name: file_name.into(),
        text: "a black cat".into(),
        negative_prompt: String::new(),
        job: "cats".into(),
        job_key: "4f1c".into(),
        image_index: 0,
        model: "stable_diffusion".into(),
        seed: seed.into(),
        width: 512,
        height: 512,
        steps: 25,
        cfg_scale,
        sampler_name: "k_euler_a".into(),
        censored: false,
        horde_request_id: "req-1".into(),
        generation_id: "gen-1".into(),
        loras: String::new(),
        post_processing: String::new(),
        columns: Default::default(),
    }
}

/// Every file under `dir`, relative, sorted (hidden state folders included).
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn fields<'a>() -> NameFields<'a> {
    NameFields {
        manifest: "animals-v1",
        job: "cats",
        key: "4f1c",
        index: 7,
        seed: "123456",
        model: "stable_diffusion",
        width: 512,
        height: 768,
        id: "4f1c",
    }
}

fn render(template: &str, fields: &NameFields<'_>) -> String {
    FilenameTemplate::parse(template)
        .unwrap()
        .render(fields)
        .unwrap()
}

// ---------------------------------------------------------------- webp

#[test]
fn verify_webp_accepts_a_real_image() {
    let info = verify_webp(&webp(8, 6, 1)).unwrap();
    assert_eq!((info.width, info.height, info.lossless), (8, 6, true));
}

#[test]
fn verify_webp_rejects_a_truncated_file() {
    let image = webp(8, 6, 1);
    let truncated = &image[..image.len() - 5];
    assert!(matches!(
        verify_webp(truncated),
        Err(WebpError::SizeMismatch { declared, actual })
            if declared == image.len() as u64 && actual == truncated.len() as u64
    ));
}

#[test]
fn verify_webp_rejects_wrong_magic() {
    let mut image = webp(8, 6, 1);
    image[..4].copy_from_slice(b"RIFX");
    let err = verify_webp(&image).unwrap_err();
    assert!(matches!(err, WebpError::NotRiff { .. }));
    assert!(err.to_string().starts_with("not a RIFF file"), "{err}");

    let mut image = webp(8, 6, 1);
    image[8..12].copy_from_slice(b"AVI ");
    assert!(matches!(
        verify_webp(&image),
        Err(WebpError::NotWebp { .. })
    ));

    assert!(matches!(
        verify_webp(b"<html>rate limited</html>"),
        Err(WebpError::NotRiff { .. })
    ));
}

#[test]
fn verify_webp_rejects_a_wrong_riff_size() {
    let mut image = webp(8, 6, 1);
    let wrong = (image.len() as u32 - 8) + 2;
    image[4..8].copy_from_slice(&wrong.to_le_bytes());
    let err = verify_webp(&image).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "RIFF size {} but {} bytes (truncated or padded download)",
            image.len() + 2,
            image.len()
        )
    );

    // Padding after a valid image is refused too.
    let mut padded = webp(8, 6, 1);
    padded.extend_from_slice(&[0; 4]);
    assert!(matches!(
        verify_webp(&padded),
        Err(WebpError::SizeMismatch { .. })
    ));
}

#[test]
fn verify_webp_rejects_garbage_behind_a_valid_header() {
    let mut rng = fastrand::Rng::with_seed(7);
    for body_len in [0usize, 4, 30, 500] {
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&((body_len + 4) as u32).to_le_bytes());
        file.extend_from_slice(b"WEBP");
        file.extend((0..body_len).map(|_| rng.u8(..)));
        let err = verify_webp(&file).unwrap_err();
        assert!(
            matches!(err, WebpError::Decode(_)),
            "{body_len} bytes: {err:?}"
        );
        assert!(err.to_string().starts_with("decode failed: "), "{err}");
    }

    // A valid VP8L chunk header whose image data is garbage.
    let mut image = webp(16, 16, 3);
    let len = image.len();
    for byte in &mut image[30..len] {
        *byte = rng.u8(..);
    }
    assert!(matches!(verify_webp(&image), Err(WebpError::Decode(_))));
}

// ---------------------------------------------------------------- templates

#[test]
fn every_placeholder_renders() {
    let f = fields();
    assert_eq!(render("{manifest}", &f), "animals-v1");
    assert_eq!(render("{job}", &f), "cats");
    assert_eq!(render("{key}", &f), "4f1c");
    assert_eq!(render("{index}", &f), "7");
    assert_eq!(render("{seed}", &f), "123456");
    assert_eq!(render("{model}", &f), "stable_diffusion");
    assert_eq!(render("{width}", &f), "512");
    assert_eq!(render("{height}", &f), "768");
    assert_eq!(
        render(
            "{manifest}/{job}/{key}-{index}-{seed}-{model}-{width}x{height}",
            &f
        ),
        "animals-v1/cats/4f1c-7-123456-stable_diffusion-512x768"
    );
}

#[test]
fn numbers_can_be_zero_padded_and_braces_escaped() {
    let f = fields();
    assert_eq!(render("{index:04}", &f), "0007");
    assert_eq!(render("{index:4}", &f), "0007");
    assert_eq!(render("{width:06}", &f), "000512");
    assert_eq!(
        render("{index:02}", &NameFields { index: 12345, ..f }),
        "12345"
    );
    assert_eq!(render("{{{job}}}", &f), "{cats}");
}

#[test]
fn padding_a_text_placeholder_or_other_formats_are_refused() {
    for bad in [
        "{seed:04}",
        "{index:x}",
        "{index:}",
        "{index:-4}",
        "{index:099}",
    ] {
        let err = FilenameTemplate::parse(bad).unwrap_err();
        assert!(
            matches!(err, TemplateError::BadFormat { .. }),
            "{bad}: {err:?}"
        );
    }
}

#[test]
fn an_unknown_placeholder_is_named_with_the_known_ones() {
    let err = FilenameTemplate::parse("{job}-{prompt}").unwrap_err();
    let TemplateError::UnknownPlaceholder {
        ref name,
        ref known,
        span,
        ..
    } = err
    else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(name, "prompt");
    assert_eq!(
        known,
        "{manifest}, {job}, {key}, {index}, {seed}, {model}, {width}, {height}, {id}"
    );
    assert_eq!((span.offset(), span.len()), (6, 8));
    assert_eq!(
        err.to_string(),
        "unknown placeholder `{prompt}` in the filename template"
    );
}

#[test]
fn templates_that_could_escape_are_refused_at_parse_time() {
    // (template, the refusal's diagnostic code after `template::`)
    let cases = [
        ("/abs/{job}", "absolute"),
        ("../{job}", "parent"),
        ("{job}/../x", "parent"),
        ("./{job}", "parent"),
        ("a//{job}", "empty_component"),
        ("{job}/", "empty_component"),
        (".{job}", "hidden"),
        ("C:\\{job}", "character"),
        ("{job}\\x", "character"),
        ("{job}\0", "character"),
        ("{job", "unclosed"),
        ("job}", "unmatched"),
        ("", "empty"),
        ("constant", "constant"),
    ];
    for (template, expected) in cases {
        let err = FilenameTemplate::parse(template).unwrap_err();
        let code = miette::Diagnostic::code(&err).unwrap().to_string();
        assert_eq!(
            code,
            format!("horde_batch::output::template::{expected}"),
            "{template:?} gave {err:?}"
        );
    }
    assert!(matches!(
        FilenameTemplate::parse("C:\\{job}"),
        Err(TemplateError::IllegalCharacter { ch: ':', .. })
    ));
}

#[test]
fn templates_report_which_placeholders_they_use() {
    let template: FilenameTemplate = "{job}/{index:03}".parse().unwrap();
    assert!(template.uses(Placeholder::Index));
    assert!(template.uses(Placeholder::Job));
    assert!(!template.uses(Placeholder::Key));
    assert_eq!(template.to_string(), "{job}/{index:03}");
}

/// Whether `rel` joined onto `root` stays inside `root`, lexically.
fn stays_inside(rel: &str) -> bool {
    !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

#[test]
fn hostile_values_stay_inside_the_output_directory() {
    let long = "x".repeat(10 * 1024);
    let long_unicode = "猫".repeat(4000);
    let hostile = [
        "../../etc/passwd",
        "..",
        ".",
        "a/b",
        "/etc/passwd",
        "C:\\x",
        "\\\\server\\share",
        "nul\0byte",
        "line\nbreak\r\t",
        "   ",
        "",
        "CON",
        "trailing dots...",
        ".hb-tmp-sneaky",
        "<>:\"|?*",
        "ünïcødé 😺 猫",
        "evil\u{202E}gpj.webp",
        long.as_str(),
        long_unicode.as_str(),
    ];
    let template = FilenameTemplate::parse("{manifest}/{job}/{seed}-{model}-{id}-{index}").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    for (i, value) in hostile.iter().enumerate() {
        let f = NameFields {
            manifest: value,
            job: value,
            seed: value,
            model: value,
            id: value,
            index: i as u32,
            ..fields()
        };
        let rel = template.render(&f).unwrap();
        assert!(stays_inside(&rel), "{value:?} rendered {rel:?}");
        assert_eq!(rel.split('/').count(), 3, "{value:?} rendered {rel:?}");
        for component in rel.split('/') {
            assert!(!component.starts_with('.'), "{rel:?}");
            assert!(component.len() <= 200, "{} bytes", component.len());
            assert!(!component.contains(".."), "{rel:?}");
            assert!(
                !component
                    .chars()
                    .any(|c| c.is_control() || "\\:<>\"|?*".contains(c)),
                "{rel:?}"
            );
        }
        // And the name is actually usable on this file system.
        let written = out
            .write_image(&rel, &webp(2, 2, i as u8), &sidecar("g"))
            .unwrap();
        assert!(written.image_path.starts_with(dir.path()));
        assert!(written.image_path.is_file());
    }
    assert_eq!(out.recovery().removed_temp_files, 0);
}

#[test]
fn unicode_values_are_kept_and_long_ones_cut_on_a_char_boundary() {
    let f = NameFields {
        job: "ünïcødé 😺",
        ..fields()
    };
    assert_eq!(render("{job}", &f), "ünïcødé 😺");

    let long = "😺".repeat(100); // 400 bytes, 4 per char
    let f = NameFields { job: &long, ..f };
    let rendered = render("{job}", &f);
    assert_eq!(rendered, "😺".repeat(30)); // 120 bytes
}

#[test]
fn rendering_is_deterministic() {
    let template = FilenameTemplate::parse("{job}/{key}-{index:04}").unwrap();
    let a = template.render(&fields()).unwrap();
    let b = template.render(&fields()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, "cats/4f1c-0007");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_values_render_to_a_name_inside_the_directory(
            job in any::<String>(),
            seed in any::<String>(),
            model in ".{0,300}",
        ) {
            let template = FilenameTemplate::parse("{job}/{seed}_{model}-{index:03}").unwrap();
            let f = NameFields { job: &job, seed: &seed, model: &model, ..fields() };
            let rel = template.render(&f).unwrap();
            prop_assert!(stays_inside(&rel), "{:?}", rel);
            prop_assert_eq!(rel.split('/').count(), 2);
            prop_assert!(rel.ends_with("-007"), "{:?}", rel);
        }
    }
}

// ---------------------------------------------------------------- write_image

#[test]
fn write_image_writes_image_and_sidecar_completely() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(8, 6, 1);
    let written = out
        .write_image("cats/4f1c-0000", &image, &sidecar("gen-1"))
        .unwrap();

    assert!(!written.already_present);
    assert_eq!(written.file_name, "cats/4f1c-0000.webp");
    assert_eq!(written.image_path, dir.path().join("cats/4f1c-0000.webp"));
    assert_eq!(written.sidecar_path, dir.path().join("cats/4f1c-0000.json"));
    assert_eq!((written.info.width, written.info.height), (8, 6));
    assert_eq!(fs::read(&written.image_path).unwrap(), image);

    let on_disk: Sidecar =
        serde_json::from_slice(&fs::read(&written.sidecar_path).unwrap()).unwrap();
    let expected = Sidecar {
        file_name: "cats/4f1c-0000.webp".into(),
        ..sidecar("gen-1")
    };
    assert_eq!(on_disk, expected);

    assert_eq!(
        files_under(dir.path()),
        ["cats/4f1c-0000.json", "cats/4f1c-0000.webp"],
        "no temp file may be left behind"
    );
}

#[test]
fn the_sidecar_has_no_api_key_field() {
    let value = serde_json::to_value(sidecar("g")).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(|k| !k.contains("key") || *k == "job_key"),
        "{keys:?}"
    );
    assert_eq!(value["seed"], json!("42"));
    assert_eq!(value["schema"], json!(1));
}

#[test]
fn writing_the_same_image_again_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(8, 6, 1);
    out.write_image("a", &image, &sidecar("gen-1")).unwrap();
    let first_sidecar = fs::read(dir.path().join("a.json")).unwrap();

    let mut later = sidecar("gen-1");
    later.completed_at = "2026-05-02T00:00:00.000Z".into();
    let again = out.write_image("a", &image, &later).unwrap();
    assert!(again.already_present);
    assert_eq!(
        fs::read(dir.path().join("a.json")).unwrap(),
        first_sidecar,
        "the first sidecar is kept"
    );
    assert_eq!(files_under(dir.path()), ["a.json", "a.webp"]);
}

#[test]
fn a_crash_between_image_and_sidecar_is_completed_on_retry() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(8, 6, 1);
    out.write_image("a", &image, &sidecar("gen-1")).unwrap();
    fs::remove_file(dir.path().join("a.json")).unwrap();

    let again = out.write_image("a", &image, &sidecar("gen-1")).unwrap();
    assert!(again.already_present);
    assert!(dir.path().join("a.json").is_file());
}

#[test]
fn different_bytes_under_the_same_name_are_a_collision() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let original = webp(8, 6, 1);
    out.write_image("a", &original, &sidecar("gen-1")).unwrap();
    let original_sidecar = fs::read(dir.path().join("a.json")).unwrap();

    let err = out
        .write_image("a", &webp(8, 6, 2), &sidecar("gen-2"))
        .unwrap_err();
    assert!(
        matches!(&err, OutputError::Collision { path } if *path == dir.path().join("a.webp")),
        "{err:?}"
    );
    assert!(err.to_string().contains("a.webp"), "{err}");
    assert_eq!(fs::read(dir.path().join("a.webp")).unwrap(), original);
    assert_eq!(
        fs::read(dir.path().join("a.json")).unwrap(),
        original_sidecar
    );
    assert_eq!(files_under(dir.path()), ["a.json", "a.webp"]);
}

#[test]
fn an_orphan_sidecar_of_another_generation_is_a_collision() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    out.write_image("a", &webp(8, 6, 1), &sidecar("gen-1"))
        .unwrap();
    fs::remove_file(dir.path().join("a.webp")).unwrap();

    let err = out
        .write_image("a", &webp(8, 6, 2), &sidecar("gen-2"))
        .unwrap_err();
    assert!(matches!(err, OutputError::Collision { .. }), "{err:?}");
    assert_eq!(files_under(dir.path()), ["a.json"]);

    // The same generation may restore its image.
    out.write_image("a", &webp(8, 6, 1), &sidecar("gen-1"))
        .unwrap();
    assert_eq!(files_under(dir.path()), ["a.json", "a.webp"]);
}

#[test]
fn non_webp_bytes_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(8, 6, 1);
    for bad in [
        b"{\"message\": \"not found\"}".to_vec(),
        image[..image.len() - 5].to_vec(),
        Vec::new(),
    ] {
        let err = out
            .write_image("sub/a", &bad, &sidecar("gen-1"))
            .unwrap_err();
        assert!(
            matches!(&err, OutputError::Webp { path, .. } if *path == dir.path().join("sub/a.webp")),
            "{err:?}"
        );
    }
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
}

#[test]
fn names_that_escape_are_refused_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path().join("out")).unwrap();
    for bad in [
        "../a",
        "/tmp/a",
        "a/../../b",
        "",
        ".hb-tmp-x",
        "a//b",
        "a\\b",
    ] {
        let err = out
            .write_image(bad, &webp(2, 2, 0), &sidecar("g"))
            .unwrap_err();
        assert!(matches!(err, OutputError::Escape(_)), "{bad:?}: {err:?}");
    }
    assert_eq!(files_under(dir.path()), Vec::<String>::new());
}

#[test]
fn concurrent_writers_of_the_same_image_write_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(32, 32, 5);
    let threads = 8;
    let barrier = Barrier::new(threads);
    let results: Vec<bool> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let out = out.clone();
                let (image, barrier) = (&image, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    out.write_image("same", image, &sidecar("gen-1"))
                        .unwrap()
                        .already_present
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|present| !**present).count(), 1);
    assert_eq!(files_under(dir.path()), ["same.json", "same.webp"]);
}

#[test]
fn open_removes_temp_files_left_by_a_killed_run() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("cats")).unwrap();
    fs::create_dir_all(dir.path().join(".horde-batch")).unwrap();
    fs::write(dir.path().join(".hb-tmp-Ab12Cd"), b"RIFF partial").unwrap();
    fs::write(dir.path().join("cats/.hb-tmp-xyz"), b"RIFF").unwrap();
    fs::write(dir.path().join(".horde-batch/db"), b"ledger").unwrap();
    fs::write(dir.path().join("cats/keep.webp"), b"done").unwrap();

    let out = OutputDir::open(dir.path()).unwrap();
    assert_eq!(out.recovery().removed_temp_files, 2);
    assert_eq!(
        files_under(dir.path()),
        [".horde-batch/db", "cats/keep.webp"]
    );
}

// ---------------------------------------------------------------- batches (group commit)

/// A batch of images for `write_images`: `(rel_name, bytes, sidecar)`.
type Batch = Vec<(String, Vec<u8>, Sidecar)>;

fn batch(names: &[&str], seed: u8) -> Batch {
    names
        .iter()
        .zip(seed..)
        .map(|(name, seed)| {
            let mut side = sidecar(&format!("gen-{name}"));
            side.generation_id = format!("gen-{name}");
            (name.to_string(), webp(8, 6, seed), side)
        })
        .collect()
}

fn write_batch(
    out: &OutputDir,
    batch: &Batch,
) -> Vec<Result<horde_batch::output::WrittenImage, OutputError>> {
    let images = batch
        .iter()
        .map(|(name, bytes, side)| NewImage {
            rel_name: name,
            webp: bytes,
            sidecar: side,
            index_row: Some(IndexRow {
                generation_id: side.generation_id.clone(),
                ..index_row("", "42", 7.0)
            }),
        })
        .collect();
    out.write_images(images)
}

fn index_file_names(dir: &Path) -> Vec<String> {
    read_lines(&dir.join(INDEX_FILE))
        .iter()
        .map(|line| serde_json::from_str::<IndexRow>(line).unwrap().file_name)
        .collect()
}

#[test]
fn a_batch_writes_every_file_sidecar_and_row_with_one_flush_per_directory_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    // The directories exist already, so only the batch's own flushes are counted.
    fs::create_dir_all(dir.path().join("cats")).unwrap();
    fs::create_dir_all(dir.path().join("dogs")).unwrap();
    let names = ["cats/a", "cats/b", "cats/c", "dogs/a", "dogs/b"];
    let images = batch(&names, 1);

    let before = syncs_on_this_thread();
    let results = write_batch(&out, &images);
    let syncs = syncs_on_this_thread() - before;

    for (result, (name, bytes, _)) in results.iter().zip(&images) {
        let written = result.as_ref().unwrap();
        assert!(!written.already_present);
        assert_eq!(written.file_name, format!("{name}.webp"));
        assert_eq!(fs::read(&written.image_path).unwrap(), *bytes);
        let on_disk: Sidecar =
            serde_json::from_slice(&fs::read(&written.sidecar_path).unwrap()).unwrap();
        assert_eq!(on_disk.file_name, written.file_name);
        assert_eq!(on_disk.generation_id, format!("gen-{name}"));
    }
    let mut expected: Vec<String> = names
        .iter()
        .flat_map(|n| [format!("{n}.json"), format!("{n}.webp")])
        .collect();
    expected.push(INDEX_FILE.to_owned());
    expected.sort();
    assert_eq!(
        files_under(dir.path()),
        expected,
        "no temp file may be left"
    );
    assert_eq!(
        index_file_names(dir.path()),
        names
            .iter()
            .map(|n| format!("{n}.webp"))
            .collect::<Vec<_>>()
    );
    // 2 temp files per image, 1 per directory (2), 1 for the index; creating
    // metadata.jsonl also flushes the root once. Per image: 2.8 here, and
    // 2 + 3/n for a request of n images in one folder (it was 4 per image).
    assert_eq!(syncs, 2 * 5 + 2 + 1 + 1);

    // Once the index exists, a batch in one folder costs 2n + 2 flushes.
    let more = batch(&["cats/d", "cats/e", "cats/f"], 9);
    let before = syncs_on_this_thread();
    assert!(write_batch(&out, &more).iter().all(Result::is_ok));
    assert_eq!(syncs_on_this_thread() - before, 2 * 3 + 1 + 1);
}

#[test]
fn one_bad_image_in_a_batch_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    // An image already there (identical), one whose name holds another image,
    // a broken one and a new one.
    out.write_image("same", &webp(8, 6, 1), &sidecar("gen-same"))
        .unwrap();
    out.write_image("taken", &webp(8, 6, 99), &sidecar("gen-taken"))
        .unwrap();
    let mut images = batch(&["same", "taken", "broken", "new"], 1);
    images[0].2 = sidecar("gen-same");
    images[2].1.truncate(20);

    let results = write_batch(&out, &images);
    assert!(results[0].as_ref().unwrap().already_present);
    assert!(
        matches!(results[1], Err(OutputError::Collision { .. })),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[2], Err(OutputError::Webp { .. })),
        "{:?}",
        results[2]
    );
    assert!(!results[3].as_ref().unwrap().already_present);

    assert_eq!(
        fs::read(dir.path().join("taken.webp")).unwrap(),
        webp(8, 6, 99)
    );
    assert_eq!(
        files_under(dir.path()),
        [
            INDEX_FILE,
            "new.json",
            "new.webp",
            "same.json",
            "same.webp",
            "taken.json",
            "taken.webp"
        ]
    );
    // Rows only for the images that are there: the present one and the new one.
    assert_eq!(index_file_names(dir.path()), ["same.webp", "new.webp"]);

    // Again: every row already there, nothing new.
    let again = write_batch(&out, &images);
    assert!(again[3].as_ref().unwrap().already_present);
    assert_eq!(index_file_names(dir.path()), ["same.webp", "new.webp"]);
}

const CRASH_CHILD_DIR: &str = "HORDE_BATCH_TEST_OUTPUT_CRASH_DIR";
const CRASH_CHILD_ROUND: &str = "HORDE_BATCH_TEST_OUTPUT_CRASH_ROUND";
const CRASH_BATCH: usize = 6;

/// The bytes a crash child writes under `r<round>/b<batch>-<i>`.
fn crash_image(batch: usize, i: usize) -> Vec<u8> {
    webp(16, 16, (batch * CRASH_BATCH + i) as u8)
}

/// The child process of [`a_kill_at_any_point_of_a_batch_leaves_no_partial_file_and_no_row_without_files`]:
/// writes batches until it is killed.
#[test]
#[ignore = "the child process of output::a_kill_at_any_point_of_a_batch_leaves_no_partial_file_and_no_row_without_files, which runs it"]
fn crash_child_writes_batches() {
    let dir = child_env(CRASH_CHILD_DIR);
    let round = child_env(CRASH_CHILD_ROUND);
    let round = round.to_string_lossy();
    let out = OutputDir::open(Path::new(&dir)).unwrap();
    for b in 0..100_000 {
        let images: Batch = (0..CRASH_BATCH)
            .map(|i| {
                let name = format!("r{round}/{}/b{b}-{i}", b % 2);
                let mut side = sidecar(&name);
                side.generation_id = name.clone();
                (name, crash_image(b, i), side)
            })
            .collect();
        assert!(write_batch(&out, &images).iter().all(Result::is_ok));
        if b == 0 {
            println!("crash-child: first batch written");
        }
    }
    std::process::abort();
}

#[test]
fn a_kill_at_any_point_of_a_batch_leaves_no_partial_file_and_no_row_without_files() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_micros() as u64;
    // Each round kills a fresh child at a different point; the next child
    // opens the folder the previous one left.
    for (round, base_us) in [0u64, 700, 1_900, 4_100, 9_700, 23_000]
        .into_iter()
        .enumerate()
    {
        let mut child = test_child("output::crash_child_writes_batches")
            .env(CRASH_CHILD_DIR, dir.path())
            .env(CRASH_CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait until the child is writing (after its first batch), then kill
        // it at a point that varies from round to round and run to run.
        assert!(
            lines.any(|l| l.unwrap().contains("crash-child: first batch written")),
            "the child died before writing"
        );
        std::thread::sleep(std::time::Duration::from_micros(base_us + jitter % 3_000));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the child must be killed, not finish: {status:?}"
        );

        // Before any cleanup: every visible image and sidecar is complete.
        let files = files_under(dir.path());
        for file in &files {
            let base = file.rsplit('/').next().unwrap();
            if base.starts_with(TEMP_PREFIX) || file == INDEX_FILE {
                continue;
            }
            let path = dir.path().join(file);
            let stem = file.rsplit_once('.').unwrap().0;
            let (b, i) = stem.rsplit_once("/b").unwrap().1.split_once('-').unwrap();
            let (b, i): (usize, usize) = (b.parse().unwrap(), i.parse().unwrap());
            if file.ends_with(".webp") {
                assert_eq!(
                    fs::read(&path).unwrap(),
                    crash_image(b, i),
                    "{file} is partial"
                );
            } else {
                let side: Sidecar = serde_json::from_slice(&fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{file} is partial: {e}"));
                assert_eq!(side.file_name, format!("{stem}.webp"));
                assert!(
                    dir.path().join(format!("{stem}.webp")).is_file(),
                    "a sidecar without its image: {file}"
                );
            }
        }
        // Every complete index row has both its files.
        let index = fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap_or_default();
        for line in index.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let row: IndexRow = serde_json::from_str(line).unwrap();
            let stem = row.file_name.strip_suffix(".webp").unwrap();
            assert!(
                dir.path().join(&row.file_name).is_file(),
                "row without image: {stem}"
            );
            assert!(
                dir.path().join(format!("{stem}.json")).is_file(),
                "row without sidecar: {stem}"
            );
        }
        // The next open leaves nothing but complete files (once its sweep,
        // which `recovery` waits for, is done).
        let out = OutputDir::open(dir.path()).unwrap();
        out.recovery();
        drop(out);
        assert!(
            files_under(dir.path()).iter().all(|f| !f
                .rsplit('/')
                .next()
                .unwrap()
                .starts_with(TEMP_PREFIX)),
            "open must remove the temp files"
        );
    }
}

// ---------------------------------------------------------------- index files

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn index_rows_are_deduplicated_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    assert!(out.append_index(&index_row("a.webp", "1", 7.0)).unwrap());
    assert!(!out.append_index(&index_row("a.webp", "1", 7.0)).unwrap());
    assert!(out.append_index(&index_row("b.webp", "2", 7.5)).unwrap());
    drop(out);

    let out = OutputDir::open(dir.path()).unwrap();
    assert!(out.has_index_row("a.webp"));
    assert!(!out.has_index_row("c.webp"));
    assert!(!out.append_index(&index_row("a.webp", "1", 7.0)).unwrap());
    assert!(out.append_index(&index_row("c.webp", "3", 5.0)).unwrap());

    let names: Vec<String> = read_lines(&dir.path().join("metadata.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<IndexRow>(l).unwrap().file_name)
        .collect();
    assert_eq!(names, ["a.webp", "b.webp", "c.webp"]);
}

#[test]
fn a_torn_last_index_line_is_repaired_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    out.append_index(&index_row("a.webp", "1", 7.0)).unwrap();
    drop(out);
    // A kill in the middle of appending the next row.
    let path = dir.path().join("metadata.jsonl");
    let full = serde_json::to_string(&index_row("b.webp", "2", 7.0)).unwrap();
    let mut content = fs::read(&path).unwrap();
    content.extend_from_slice(&full.as_bytes()[..full.len() / 2]);
    fs::write(&path, content).unwrap();

    let out = OutputDir::open(dir.path()).unwrap();
    let torn = &out.recovery().torn_lines;
    assert_eq!(torn.len(), 1);
    assert_eq!(torn[0].path, path);
    assert!(!out.has_index_row("b.webp"));

    assert!(out.append_index(&index_row("b.webp", "2", 7.0)).unwrap());
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    for line in &lines {
        serde_json::from_str::<IndexRow>(line).unwrap();
    }
}

#[test]
fn every_index_row_has_the_same_key_types_and_file_name_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    // Values that tempt a loose writer into mixed types: integral vs
    // fractional cfg_scale, numeric-looking vs other seeds, empty strings.
    let mut rows = vec![
        index_row("a.webp", "42", 7.0),
        index_row("b.webp", "seedless", 7.5),
        index_row("c.webp", "", 0.0),
    ];
    rows[1].negative_prompt = "blurry".into();
    rows[2].censored = true;
    for row in &rows {
        out.append_index(row).unwrap();
    }

    let lines = read_lines(&dir.path().join("metadata.jsonl"));
    assert_eq!(lines.len(), 3);
    let mut types: BTreeMap<String, &'static str> = BTreeMap::new();
    for line in &lines {
        assert!(line.starts_with("{\"file_name\":"), "{line}");
        let Value::Object(map) = serde_json::from_str::<Value>(line).unwrap() else {
            panic!("not an object: {line}");
        };
        for (key, value) in map {
            let kind = match &value {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_f64() => "float",
                Value::Number(_) => "integer",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            let first = *types.entry(key.clone()).or_insert(kind);
            assert_eq!(first, kind, "key {key} changes type in {line}");
        }
    }
    assert_eq!(types["seed"], "string");
    assert_eq!(types["cfg_scale"], "float");
    assert_eq!(types["width"], "integer");
    assert_eq!(types["negative_prompt"], "string");
    assert_eq!(types["loras"], "string");
    assert_eq!(types.len(), 18);
}

#[test]
fn results_and_errors_are_deduplicated_by_job_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let result = JobResult {
        job_key: "k1".into(),
        job: "cats".into(),
        images: vec!["cats/k1-0.webp".into()],
        kudos: 10.0,
        attempts: 1,
        completed_at: "2026-05-01T12:00:30.000Z".into(),
        id: None,
    };
    let error = JobError {
        job_key: "k2".into(),
        job: "dogs".into(),
        class: "permanent".into(),
        message: "400 BadRequest: steps too high".into(),
        images_saved: 0,
        images_wanted: 4,
        at: "2026-05-01T12:00:30.000Z".into(),
    };
    assert!(!dir.path().join("errors.jsonl").exists());
    assert!(out.append_result(&result).unwrap());
    assert!(!out.append_result(&result).unwrap());
    assert!(out.append_error(&error).unwrap());
    drop(out);

    let out = OutputDir::open(dir.path()).unwrap();
    assert!(out.has_result("k1") && !out.has_result("k2"));
    assert!(out.has_error("k2") && !out.has_error("k1"));
    assert!(!out.append_error(&error).unwrap());
    assert_eq!(read_lines(&dir.path().join("results.jsonl")).len(), 1);
    let errors = read_lines(&dir.path().join("errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert_eq!(serde_json::from_str::<JobError>(&errors[0]).unwrap(), error);
}

#[test]
fn a_damaged_index_line_is_reported_not_dropped_when_the_index_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = "{\"file_name\":\"a.webp\"}\nnot json\n{\"file_name\":\"b.webp\"}\n";
    fs::write(dir.path().join("metadata.jsonl"), damaged).unwrap();
    // Opening reads only the last line; the damage shows when the keys are needed.
    let out = OutputDir::open(dir.path()).unwrap();
    let err = out
        .append_index(&index_row("c.webp", "1", 7.0))
        .unwrap_err();
    assert!(
        matches!(&err, OutputError::CorruptLog { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("metadata.jsonl:2"), "{err}");
    assert!(!out.has_index_row("a.webp"));
    assert_eq!(
        fs::read_to_string(dir.path().join("metadata.jsonl")).unwrap(),
        damaged
    );
}

#[test]
fn a_damaged_results_line_still_stops_the_open() {
    // `has_result` cannot report an error, and a `false` would redo the
    // job: these keys are read at open.
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("results.jsonl"),
        "{\"job_key\":\"k1\"}\n{\"job_key\":7}\n{\"job_key\":\"k3\"}\n",
    )
    .unwrap();
    let err = OutputDir::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, OutputError::CorruptLog { line: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("results.jsonl:2"), "{err}");
}

#[test]
fn a_normal_run_never_reads_the_index() {
    // An index that cannot be read past its first line: a run that only
    // writes new images never finds out, because it never reads it.
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join(INDEX_FILE);
    let mut damaged = serde_json::to_vec(&index_row("old.webp", "1", 7.0)).unwrap();
    damaged.extend_from_slice(b"\n\x00\xffgarbage, not a row\n");
    let last = serde_json::to_vec(&index_row("older.webp", "2", 7.0)).unwrap();
    damaged.extend_from_slice(&last);
    damaged.push(b'\n');
    fs::write(&index, &damaged).unwrap();
    fs::write(dir.path().join("errors.jsonl"), b"garbage\n{}\n").unwrap();

    let out = OutputDir::open(dir.path()).unwrap();
    let new = batch(&["cats/a", "cats/b"], 1);
    for result in write_batch(&out, &new) {
        result.unwrap();
    }
    out.put_result(&JobResult {
        job_key: "k1".into(),
        job: "cats".into(),
        images: vec!["cats/a.webp".into(), "cats/b.webp".into()],
        kudos: 1.0,
        attempts: 1,
        completed_at: "2026-05-01T12:00:30.000Z".into(),
        id: None,
    })
    .unwrap();
    out.record_error(&JobError {
        job_key: "k2".into(),
        job: "dogs".into(),
        class: "permanent".into(),
        message: "no".into(),
        images_saved: 0,
        images_wanted: 1,
        at: "2026-05-01T12:00:30.000Z".into(),
    })
    .unwrap();
    let content = fs::read(&index).unwrap();
    assert!(
        content.starts_with(&damaged),
        "the old rows are kept as they were"
    );
    assert_eq!(
        content.split(|b| *b == b'\n').count() - 1,
        5,
        "two rows added"
    );

    // The same images again (a retry after a crash): only now is the index
    // read, to keep the row from being written twice, and its damage shows.
    let again = write_batch(&out, &new);
    for result in again {
        assert!(
            matches!(&result, Err(OutputError::Io { error, .. }) if error.to_string().contains("metadata.jsonl:2")),
            "{result:?}"
        );
    }
    assert_eq!(fs::read(&index).unwrap(), content);
}

#[test]
fn a_retried_image_gets_no_second_row_and_a_new_one_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let first = batch(&["a", "b"], 1);
    write_batch(&out, &first);
    drop(out);
    // A crash after the files were placed but before the row of `c`.
    let out = OutputDir::open(dir.path()).unwrap();
    let c = batch(&["c"], 9);
    out.write_image("c", &c[0].1, &c[0].2).unwrap();
    drop(out);

    let out = OutputDir::open(dir.path()).unwrap();
    let mut retry = first.clone();
    retry.extend(c);
    retry.extend(batch(&["d"], 20));
    for result in write_batch(&out, &retry) {
        result.unwrap();
    }
    assert_eq!(
        index_file_names(dir.path()),
        ["a.webp", "b.webp", "c.webp", "d.webp"]
    );
}

#[test]
fn a_crashed_runs_temp_files_are_gone_before_the_first_write_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // Leftovers where this run will write, and in a folder it will not.
    fs::create_dir_all(dir.path().join("cats")).unwrap();
    fs::create_dir_all(dir.path().join("dogs/deep")).unwrap();
    let mut leftovers = Vec::new();
    for i in 0..300 {
        let folder = ["cats", "dogs/deep", ""][i % 3];
        let path = dir.path().join(folder).join(format!("{TEMP_PREFIX}{i}"));
        fs::write(&path, b"RIFF partial").unwrap();
        leftovers.push(path);
    }
    for i in 0..2_000 {
        fs::write(dir.path().join(format!("dogs/deep/keep-{i}.webp")), b"x").unwrap();
    }

    let out = OutputDir::open(dir.path()).unwrap();
    // Several writers start at once, right after open, into the folders
    // being swept: none of their temp files may be taken for a leftover.
    let barrier = Barrier::new(4);
    std::thread::scope(|scope| {
        for w in 0..4u8 {
            let (out, barrier, leftovers) = (&out, &barrier, &leftovers);
            scope.spawn(move || {
                barrier.wait();
                let names: Vec<String> = (0..5).map(|i| format!("cats/w{w}-{i}")).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                for result in write_batch(out, &batch(&names, w * 10)) {
                    result.unwrap();
                }
                // Their first write waited for the sweep.
                for leftover in leftovers {
                    assert!(!leftover.exists(), "{} is still there", leftover.display());
                }
            });
        }
    });
    assert_eq!(out.recovery().removed_temp_files, 300);
    assert_eq!(index_file_names(dir.path()).len(), 20);
    let names = files_under(dir.path());
    assert_eq!(names.len(), 20 * 2 + 1 + 2_000);
    assert!(names.iter().all(|n| !n.contains(TEMP_PREFIX)), "{names:?}");
}

// ---------------------------------------------------------------- broken disks

#[test]
fn an_output_dir_that_cannot_be_created_is_a_clear_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let target = file.join("out");

    let err = OutputDir::open(&target).unwrap_err();
    let OutputError::Io { action, path, .. } = &err else {
        panic!("unexpected {err:?}");
    };
    assert_eq!(*action, "create directory");
    assert_eq!(*path, target);
    assert!(err.io_kind().is_some());
    let message = err.to_string();
    assert!(message.contains(&target.display().to_string()), "{message}");
    assert!(message.starts_with("cannot create directory"), "{message}");
}

#[test]
fn a_subdirectory_blocked_by_a_file_is_a_clear_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    fs::write(dir.path().join("cats"), b"not a directory").unwrap();
    let err = out
        .write_image("cats/a", &webp(2, 2, 0), &sidecar("g"))
        .unwrap_err();
    assert!(
        matches!(&err, OutputError::Io { path, .. } if *path == dir.path().join("cats")),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn a_read_only_output_dir_is_a_clear_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("out");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o555)).unwrap();

    let result = OutputDir::open(&root);
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    match result {
        Err(err) => {
            assert_eq!(err.io_kind(), Some(std::io::ErrorKind::PermissionDenied));
            assert!(
                err.to_string().contains(&root.display().to_string()),
                "{err}"
            );
        }
        // Root ignores directory permissions; `an_output_dir_that_cannot_be_created_…`
        // covers the error path there.
        Ok(_) => assert!(is_root(), "opening a read-only directory should fail"),
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    // Root can write anywhere; detect it without libc by probing a
    // directory no one else may write.
    let probe = tempfile::tempdir().unwrap();
    let locked = probe.path().join("locked");
    fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o555)).unwrap();
    let writable = fs::write(locked.join("x"), b"").is_ok();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
    writable
}

#[test]
fn template_errors_render_with_a_label_and_help() {
    let err = FilenameTemplate::parse("{job}-{prompt}").unwrap_err();
    let mut rendered = String::new();
    miette::NarratableReportHandler::new()
        .render_report(&mut rendered, &err)
        .unwrap();
    assert!(
        rendered.contains("unknown placeholder `{prompt}`"),
        "{rendered}"
    );
    assert!(
        rendered.contains("known placeholders: {manifest}, {job}"),
        "{rendered}"
    );
    assert!(rendered.contains("unknown"), "{rendered}");
    assert!(
        rendered.contains("horde_batch::output::template::unknown_placeholder"),
        "{rendered}"
    );
}

#[test]
fn output_dir_can_be_shared_between_tasks() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<OutputDir>();
}

#[test]
fn a_result_line_is_replaced_and_errors_keep_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let result = |key: &str, images: usize| JobResult {
        job_key: key.into(),
        job: "cats".into(),
        images: (0..images)
            .map(|i| format!("cats/{key}-{i}.webp"))
            .collect(),
        kudos: 10.0,
        attempts: 1,
        completed_at: "2026-05-01T12:00:30.000Z".into(),
        id: None,
    };
    out.put_result(&result("k1", 2)).unwrap();
    out.put_result(&result("k2", 2)).unwrap();
    // k1 grew to four images: its line is replaced, k2's is kept.
    out.put_result(&result("k1", 4)).unwrap();
    out.put_result(&result("k3", 1)).unwrap();
    drop(out);
    let lines: Vec<JobResult> = read_lines(&dir.path().join("results.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, [result("k2", 2), result("k1", 4), result("k3", 1)]);

    let out = OutputDir::open(dir.path()).unwrap();
    let error = |message: &str| JobError {
        job_key: "k9".into(),
        job: "dogs".into(),
        class: "transient".into(),
        message: message.into(),
        images_saved: 0,
        images_wanted: 4,
        at: "2026-05-01T12:00:30.000Z".into(),
    };
    out.record_error(&error("first")).unwrap();
    out.record_error(&error("second")).unwrap();
    assert_eq!(read_lines(&dir.path().join("errors.jsonl")).len(), 2);
    // No temp file is left by a rewrite.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with(horde_batch::output::TEMP_PREFIX)),
        "{names:?}"
    );
}

// ---------------------------------------------------------------- measurement

/// Not a test: times `OutputDir::open` on a resumed half-done big batch
/// (500,000 index and result rows, a folder of 100,000 files). Run with
/// `HB_BENCH_DIR=/some/dir cargo test --release --test it output::bench_open -- --ignored --nocapture`;
/// the folder is built on the first run and reused.
#[test]
#[ignore = "a measurement, not a test: prints timings"]
fn bench_open_on_a_big_folder() {
    use std::io::Write as _;
    use std::time::Instant;
    let root = std::path::PathBuf::from(
        std::env::var("HB_BENCH_DIR").unwrap_or_else(|_| "/tmp/hb-bench-open".into()),
    );
    let rows = 500_000;
    if !root.join("ready").exists() {
        fs::create_dir_all(root.join("cats")).unwrap();
        let mut index = std::io::BufWriter::new(fs::File::create(root.join(INDEX_FILE)).unwrap());
        let mut results =
            std::io::BufWriter::new(fs::File::create(root.join("results.jsonl")).unwrap());
        for i in 0..rows {
            let mut row = index_row(&format!("cats/job-{i:07}-0.webp"), &i.to_string(), 7.0);
            row.text = "a black cat sitting on a red sofa, studio light, 35mm photo".into();
            row.negative_prompt = "blurry, lowres, watermark, text, bad anatomy".into();
            row.job_key = format!("{i:016x}{i:016x}");
            row.horde_request_id = format!("{i:08x}-aaaa-bbbb-cccc-{i:012x}");
            row.generation_id = format!("{i:08x}-dddd-eeee-ffff-{i:012x}");
            serde_json::to_writer(&mut index, &row).unwrap();
            index.write_all(b"\n").unwrap();
            let result = JobResult {
                job_key: row.job_key.clone(),
                job: "cats".into(),
                images: vec![row.file_name.clone()],
                kudos: 10.0,
                attempts: 1,
                completed_at: "2026-05-01T12:00:30.000Z".into(),
                id: None,
            };
            serde_json::to_writer(&mut results, &result).unwrap();
            results.write_all(b"\n").unwrap();
        }
        index.flush().unwrap();
        results.flush().unwrap();
        for i in 0..100_000 {
            fs::File::create(root.join(format!("cats/job-{i:07}-0.webp"))).unwrap();
        }
        fs::write(root.join("ready"), b"").unwrap();
    }
    // The same files alone (hard links), to see what each costs.
    for (part, file) in [
        ("results-only", "results.jsonl"),
        ("index-only", INDEX_FILE),
    ] {
        let alone = root.join(".parts").join(part);
        if !alone.join(file).exists() {
            fs::create_dir_all(&alone).unwrap();
            fs::hard_link(root.join(file), alone.join(file)).unwrap();
        }
        for _ in 0..2 {
            let start = Instant::now();
            let out = OutputDir::open(&alone).unwrap();
            let opened = start.elapsed();
            out.recovery();
            println!("{part}: open {opened:?}");
        }
    }
    for _ in 0..3 {
        let start = Instant::now();
        let out = OutputDir::open(&root).unwrap();
        let opened = start.elapsed();
        let asked = out.has_result(&format!("{:016x}{:016x}", 7, 7));
        let first_answer = start.elapsed();
        // One fresh image, as the first write of a resumed run.
        let written = out
            .write_image("fresh/new", &webp(8, 6, 1), &sidecar("g-new"))
            .unwrap();
        let first_write = start.elapsed();
        fs::remove_file(&written.image_path).unwrap();
        fs::remove_file(&written.sidecar_path).unwrap();
        println!(
            "open {opened:?}; first has_result {first_answer:?} ({asked}); first write {first_write:?}"
        );
    }
}

// ---------------------------------------------------------------- alchemy

/// The folder's own apply holds its index: a row appended afterwards by the
/// same `OutputDir` lands in the rewritten file (not in the replaced one),
/// and the keys are read afresh.
#[test]
fn rows_appended_after_the_alchemy_columns_land_in_the_rewritten_index() {
    let dir = tempfile::tempdir().unwrap();
    let out = OutputDir::open(dir.path()).unwrap();
    let image = webp(8, 6, 1);
    out.write_images(vec![NewImage {
        rel_name: "cats/a",
        webp: &image,
        sidecar: &sidecar("gen-1"),
        index_row: Some(index_row("", "42", 7.0)),
    }])
    .pop()
    .unwrap()
    .unwrap();
    assert_eq!(
        out.write_derived_image("cats/a.webp", "RealESRGAN_x2plus", &webp(16, 12, 2))
            .unwrap(),
        (16, 12)
    );
    let outcome = AlchemyOutcome {
        source: "cats/a.webp".into(),
        results: BTreeMap::from([("caption".to_owned(), json!("a black cat on a mat"))]),
        derived: BTreeMap::from([(
            "RealESRGAN_x2plus".to_owned(),
            derived_file_name("cats/a.webp", "RealESRGAN_x2plus"),
        )]),
        failed: BTreeMap::new(),
    };
    out.record_alchemy_in_sidecar(&outcome).unwrap();
    let outcomes = BTreeMap::from([(outcome.source.clone(), outcome)]);
    let change = out
        .apply_alchemy(&outcomes, &AlchemyColumns::default())
        .unwrap();
    assert_eq!((change.rows_updated, change.rows_added), (1, 1));
    assert!(out.has_index_row("cats/a.RealESRGAN_x2plus.webp"));
    assert!(out
        .append_index(&index_row("cats/b.webp", "43", 7.0))
        .unwrap());
    drop(out);

    let text = fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cats/a.webp",
            "cats/a.RealESRGAN_x2plus.webp",
            "cats/b.webp"
        ]
    );
    assert_eq!(rows[0]["caption"], json!("a black cat on a mat"));
    assert_eq!(rows[1]["alchemy_of"], json!("cats/a.webp"));
    let sidecar: Sidecar =
        serde_json::from_slice(&fs::read(dir.path().join("cats/a.json")).unwrap()).unwrap();
    assert_eq!(
        sidecar.alchemy,
        Some(json!({"caption": "a black cat on a mat",
                    "RealESRGAN_x2plus": "cats/a.RealESRGAN_x2plus.webp"}))
    );
    // The next apply gives the late row the columns too.
    OutputDir::open(dir.path())
        .unwrap()
        .apply_alchemy(&BTreeMap::new(), &AlchemyColumns::default())
        .unwrap();
    let text = fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["caption"], Value::Null);
    assert_eq!(last["alchemy_of"], Value::Null);
}
