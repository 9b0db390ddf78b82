//! Source images end to end: img2img, inpainting (with a mask) and ControlNet
//! jobs run against the sim, which must have decoded WebP sources; the job
//! key follows the source's bytes; a source changed after validation fails
//! instead of generating from other bytes; bad sources are refused at
//! file:line:column. The images are made by the tests, in temp folders.

use std::path::Path;

use horde_batch::manifest::{compile, CompileOptions, CompiledManifest, ManifestFile};
use serde_json::Value;

use crate::common::{stat, walk, Batch, Finished, Sim};

/// Writes a `width`×`height` PNG (RGBA when `alpha`) whose pixels depend on `shade`.
fn write_png(path: &Path, width: u32, height: u32, alpha: bool, shade: u8) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let image = if alpha {
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_fn(width, height, |x, _| {
            image::Rgba([shade, x as u8, 0, if x < width / 2 { 0 } else { 255 }])
        }))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([shade, x as u8, y as u8])
        }))
    };
    image
        .save_with_format(path, image::ImageFormat::Png)
        .unwrap();
}

fn compile_at(dir: &Path, text: &str) -> Result<CompiledManifest, Vec<String>> {
    let file = ManifestFile::parse(Path::new("test.yaml"), dir.to_path_buf(), text.to_owned())
        .map_err(|e| vec![e.to_string()])?;
    compile(file, &CompileOptions::default())
        .map_err(|e| e.problems().iter().map(ToString::to_string).collect())
}

const HEAD: &str = "version: 1\nname: src\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64, steps: 5}\njobs:\n";

/// Runs a one-job manifest against a fresh sim; returns the sim's stats and
/// the job's one sidecar.
fn run_one(job: &str, files: &[(&str, bool)]) -> (Value, Value) {
    let sim = Sim::unlimited(&["--workers", "2", "--latency", "5ms..10ms", "--seed", "3"]);
    let batch = Batch::new(&format!("{HEAD}{job}"));
    for (i, (name, alpha)) in files.iter().enumerate() {
        write_png(&batch.dir.path().join(name), 48, 32, *alpha, i as u8 * 40);
    }
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(1);
    let sidecar = walk(&batch.out())
        .into_iter()
        .find(|p| {
            p.extension().is_some_and(|e| e == "json") && p.parent() != Some(batch.out().as_path())
        })
        .expect("a sidecar");
    let sidecar = serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap();
    (sim.stats(), sidecar)
}

fn assert_hash(value: &Value) {
    let hash = value.as_str().unwrap_or_default();
    assert!(
        hash.len() == 32 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{value}"
    );
}

#[test]
fn img2img_runs_end_to_end_and_the_sim_sees_a_webp_source() {
    let job = "  - name: photo\n    prompt: a painting\n    source_image: in/photo.png\n    params: {denoising_strength: 0.6}\n";
    let (stats, sidecar) = run_one(job, &[("in/photo.png", false)]);
    assert_eq!(stat(&stats, "source_images_received"), 1, "{stats}");
    assert_eq!(stat(&stats, "masks_received"), 0, "{stats}");
    let seen = &stats["last_source"];
    assert_eq!(seen["processing"], "img2img", "{stats}");
    assert_eq!(seen["format"], "webp", "{stats}");
    assert_eq!(
        (seen["width"].as_u64(), seen["height"].as_u64()),
        (Some(48), Some(32))
    );
    let sources = &sidecar["sources"];
    assert_eq!(sources["source_processing"], "img2img", "{sidecar}");
    assert_eq!(sources["source_image"]["path"], "in/photo.png", "{sidecar}");
    assert_hash(&sources["source_image"]["hash"]);
    assert_eq!(sidecar["params"]["denoising_strength"], 0.6, "{sidecar}");
}

#[test]
fn inpainting_with_a_mask_runs_end_to_end_and_the_sim_sees_both_as_webp() {
    let job = "  - name: fix\n    prompt: a red door\n    source_image: photo.png\n    source_processing: inpainting\n    source_mask: mask.png\n";
    let (stats, sidecar) = run_one(job, &[("photo.png", false), ("mask.png", false)]);
    assert_eq!(stat(&stats, "source_images_received"), 1, "{stats}");
    assert_eq!(stat(&stats, "masks_received"), 1, "{stats}");
    let seen = &stats["last_source"];
    assert_eq!(
        (&seen["processing"], &seen["format"], &seen["mask_format"]),
        (
            &Value::from("inpainting"),
            &Value::from("webp"),
            &Value::from("webp")
        ),
        "{stats}"
    );
    assert_eq!(sidecar["sources"]["source_mask"]["path"], "mask.png");
    assert_hash(&sidecar["sources"]["source_mask"]["hash"]);
    assert_ne!(
        sidecar["sources"]["source_mask"]["hash"],
        sidecar["sources"]["source_image"]["hash"]
    );
}

#[test]
fn inpainting_from_alpha_keeps_the_alpha_through_the_webp() {
    let job = "  - name: fix\n    prompt: a red door\n    source_image: cutout.png\n    source_processing: inpainting\n";
    let (stats, _) = run_one(job, &[("cutout.png", true)]);
    assert_eq!(stats["last_source"]["has_alpha"], true, "{stats}");
    assert_eq!(stat(&stats, "masks_received"), 0, "{stats}");
}

#[test]
fn controlnet_runs_end_to_end_with_its_source() {
    let job = "  - name: edges\n    prompt: a house\n    source_image: house.png\n    params: {control_type: canny, image_is_control: false, return_control_map: false}\n";
    let (stats, sidecar) = run_one(job, &[("house.png", false)]);
    assert_eq!(stat(&stats, "source_images_received"), 1, "{stats}");
    assert_eq!(stats["last_source"]["format"], "webp", "{stats}");
    assert_eq!(sidecar["params"]["control_type"], "canny", "{sidecar}");
}

/// job name → keys, in order.
fn keys(compiled: &CompiledManifest) -> Vec<(String, String)> {
    compiled
        .jobs()
        .map(|job| (job.name.to_string(), job.key.to_string()))
        .collect()
}

#[test]
fn the_key_follows_the_source_bytes_and_no_other_job_moves() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 16, 16, false, 1);
    write_png(&dir.path().join("b.png"), 16, 16, false, 2);
    let text = format!(
        "{HEAD}  - name: plain\n    prompt: a cat\n  - name: img\n    prompt: a cat\n    source_image: a.png\n  - name: axis\n    prompt: a cat\n    matrix: {{source_image: [a.png, b.png]}}\n"
    );
    let before = keys(&compile_at(dir.path(), &text).unwrap());
    assert_eq!(before.len(), 4);
    // The txt2img job's key is the one it had before sources existed.
    let plain_only = format!("{HEAD}  - name: plain\n    prompt: a cat\n");
    assert_eq!(
        keys(&compile_at(dir.path(), &plain_only).unwrap())[0],
        before[0]
    );
    // A source job's key differs from the same job without a source.
    assert_ne!(before[0].1, before[1].1);
    // Axis values give distinct keys.
    assert_ne!(before[2].1, before[3].1);

    // Same bytes under another name: same keys.
    std::fs::copy(dir.path().join("a.png"), dir.path().join("a-copy.png")).unwrap();
    let renamed = keys(
        &compile_at(
            dir.path(),
            &text.replace("source_image: a.png", "source_image: a-copy.png"),
        )
        .unwrap(),
    );
    assert_eq!(renamed, before);

    // New bytes in a.png: every job using it changes, nothing else does.
    write_png(&dir.path().join("a.png"), 16, 16, false, 9);
    let after = keys(&compile_at(dir.path(), &text).unwrap());
    assert_eq!(after[0], before[0], "txt2img job");
    assert_ne!(after[1], before[1], "job field");
    assert_ne!(after[2], before[2], "axis value a.png");
    assert_eq!(after[3], before[3], "axis value b.png");
}

#[test]
fn a_matrix_axis_gives_each_combination_its_source() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("x/a.png"), 8, 8, false, 1);
    write_png(&dir.path().join("x/b.png"), 8, 8, false, 2);
    let text = format!("{HEAD}  - name: axis\n    prompt: a cat\n    source_processing: outpainting\n    matrix: {{source_image: [x/a.png, x/b.png]}}\n");
    let compiled = compile_at(dir.path(), &text).unwrap();
    let sources: Vec<(String, &'static str)> = compiled
        .jobs()
        .map(|job| {
            let sources = job.sources.expect("a source");
            (sources.image.path.clone(), sources.processing.as_str())
        })
        .collect();
    assert_eq!(
        sources,
        [
            ("x/a.png".to_owned(), "outpainting"),
            ("x/b.png".to_owned(), "outpainting")
        ]
    );
}

#[test]
fn a_source_changed_after_validation_fails_instead_of_sending_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 16, 16, false, 1);
    let text = format!("{HEAD}  - name: img\n    prompt: a cat\n    source_image: a.png\n");
    let compiled = compile_at(dir.path(), &text).unwrap();
    let job = compiled.jobs().next().unwrap();
    let request = horde_batch::scheduler::request_for(&job, 1, 0).unwrap();
    let webp = request
        .source_image
        .as_ref()
        .expect("a source image")
        .0
        .clone();
    assert!(webp.starts_with("UklGR"), "base64 of a RIFF/WebP file");
    assert_eq!(request.source_processing.as_deref(), Some("img2img"));

    write_png(&dir.path().join("a.png"), 16, 16, false, 2);
    let error = horde_batch::scheduler::request_for(&job, 1, 0).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("changed since the manifest was checked"),
        "{error}"
    );
    std::fs::remove_file(dir.path().join("a.png")).unwrap();
    let error = horde_batch::scheduler::request_for(&job, 1, 0).unwrap_err();
    assert!(
        error.to_string().contains("cannot read source image"),
        "{error}"
    );
}

#[test]
fn bad_sources_are_refused_at_their_position() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("rgb.png"), 8, 8, false, 1);
    write_png(&dir.path().join("alpha.png"), 8, 8, true, 1);
    std::fs::write(dir.path().join("notes.png"), "not an image").unwrap();
    write_png(&dir.path().join("huge.png"), 3073, 3072, false, 1);
    let cases: &[(&str, (usize, usize), &str)] = &[
        ("    source_image: missing.png\n", (9, 19), "source image `missing.png` not found"),
        ("    source_image: notes.png\n", (9, 19), "`notes.png` is not a PNG, JPEG or WebP image"),
        ("    source_image: huge.png\n", (9, 19), "the Horde refuses more than 3072×3072"),
        ("    params: {control_type: canny}\n", (9, 28), "`control_type` needs a `source_image` (the Horde answers ControlNetSourceMissing)"),
        ("    source_image: rgb.png\n    source_processing: blend\n", (10, 24), "unknown variant `blend`"),
        ("    source_mask: rgb.png\n", (9, 18), "`source_mask` without `source_image` (the Horde answers SourceMaskUnnecessary)"),
        ("    source_image: rgb.png\n    source_processing: inpainting\n", (9, 19), "needs a source image with an alpha channel"),
        ("    source_image: alpha.png\n    params: {control_type: canny}\n    source_processing: inpainting\n", (10, 28), "ControlNetInpaintingMismatch"),
        ("    source_image: rgb.png\n    extra_source_images: [{image: rgb.png}]\n", (10, 26), "InvalidExtraSourceImages"),
        ("    source_image: rgb.png\n    source_processing: remix\n", (10, 24), "remix with model `stable_diffusion`"),
        ("    source_image: rgb.png\n    source_processing: remix\n    models: [Stable Cascade 1.0]\n    extra_source_images: [{image: rgb.png, strength: 2}]\n", (12, 54), "strength 2 is out of range"),
        ("    params: {denoising_strength: 0.5}\n", (9, 34), "`denoising_strength` has no effect without `source_image`"),
        ("    matrix: {source_image: [rgb.png, gone.png]}\n", (9, 38), "source image `gone.png` not found"),
    ];
    let mut wrong = Vec::new();
    for (fields, (line, column), message) in cases {
        let text = format!("{HEAD}  - name: a\n    prompt: a cat\n{fields}");
        let problems = compile_at(dir.path(), &text).expect_err(fields);
        let expected = format!("test.yaml:{line}:{column}: ");
        if problems.len() != 1
            || !(problems[0].starts_with(&expected) && problems[0].contains(message))
        {
            wrong.push(format!(
                "{fields}: expected {expected}…{message}…, got {problems:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn defaults_give_every_job_its_source_fields() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("base.png"), 8, 8, true, 1);
    write_png(&dir.path().join("own.png"), 8, 8, true, 2);
    let text = "version: 1\nname: d\ndefaults:\n  models: [stable_diffusion]\n  source_image: base.png\n  source_processing: inpainting\njobs:\n  - {name: a, prompt: a cat}\n  - {name: b, prompt: a dog, source_image: own.png, source_processing: img2img}\n";
    let compiled = compile_at(dir.path(), text).unwrap();
    let seen: Vec<(String, &'static str)> = compiled
        .jobs()
        .map(|job| {
            let sources = job.sources.expect("sources from defaults or the job");
            (sources.image.path.clone(), sources.processing.as_str())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("base.png".to_owned(), "inpainting"),
            ("own.png".to_owned(), "img2img")
        ]
    );
    // A default that only says how to process sources does not touch txt2img jobs.
    let txt2img = "version: 1\nname: d\ndefaults:\n  models: [stable_diffusion]\n  source_processing: inpainting\njobs:\n  - {name: a, prompt: a cat}\n";
    let compiled = compile_at(dir.path(), txt2img).unwrap();
    assert!(compiled.jobs().all(|job| job.sources.is_none()));
}

/// A `rows:` table's `source_image` column gives each row its source: the
/// sim receives one WebP per row, each sidecar names its own file, and
/// replacing one file's bytes changes that row's key only.
#[test]
fn a_rows_column_gives_each_row_its_source() {
    let sim = Sim::unlimited(&["--workers", "2", "--latency", "5ms..10ms", "--seed", "4"]);
    let batch = Batch::new(&format!("{HEAD}  - name: rows\n    prompt: '${{subject}} as a painting'\n    params: {{denoising_strength: 0.5}}\n    rows: {{file: photos.csv, id: photo}}\n"));
    let dir = batch.dir.path();
    write_png(&dir.join("in/a.png"), 40, 24, false, 10);
    write_png(&dir.join("in/b.png"), 24, 40, false, 20);
    std::fs::write(
        dir.join("photos.csv"),
        "photo,subject,source_image\nA,a cat,in/a.png\nB,a dog,in/b.png\n",
    )
    .unwrap();
    let keys_now = || -> Vec<(String, String)> {
        let text = std::fs::read_to_string(&batch.manifest).unwrap();
        keys(&compile_at(dir, &text).unwrap())
    };
    let before = keys_now();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(2);
    let stats = sim.stats();
    assert_eq!(stat(&stats, "source_images_received"), 2, "{stats}");
    let mut seen = Vec::new();
    for sidecar in walk(&batch.out()).into_iter().filter(|p| {
        p.extension().is_some_and(|e| e == "json") && p.parent() != Some(batch.out().as_path())
    }) {
        let sidecar: Value =
            serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap();
        assert_hash(&sidecar["sources"]["source_image"]["hash"]);
        seen.push((
            sidecar["labels"]["photo"].as_str().unwrap().to_owned(),
            sidecar["sources"]["source_image"]["path"]
                .as_str()
                .unwrap()
                .to_owned(),
            sidecar["labels"]["source_image"]
                .as_str()
                .unwrap()
                .to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("A".to_owned(), "in/a.png".to_owned(), "in/a.png".to_owned()),
            ("B".to_owned(), "in/b.png".to_owned(), "in/b.png".to_owned())
        ]
    );

    write_png(&dir.join("in/b.png"), 24, 40, false, 99);
    let after = keys_now();
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);

    // Every row needs a source once the column exists; other source fields
    // are not columns.
    std::fs::write(
        dir.join("photos.csv"),
        "photo,subject,source_image\nA,a cat,in/a.png\nB,a dog,\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(&batch.manifest).unwrap();
    let problems = compile_at(dir, &text).unwrap_err();
    assert!(
        problems[0].contains("row `B` of the table has no `source_image`"),
        "{problems:?}"
    );
    std::fs::write(
        dir.join("photos.csv"),
        "photo,subject,source_image,source_mask\nA,a cat,in/a.png,in/b.png\n",
    )
    .unwrap();
    let problems = compile_at(dir, &text).unwrap_err();
    assert!(
        problems[0].contains("`source_mask` cannot be a rows column"),
        "{problems:?}"
    );
    std::fs::write(
        dir.join("photos.csv"),
        "photo,subject,source_image\nA,a cat,in/nothere.png\n",
    )
    .unwrap();
    let problems = compile_at(dir, &text).unwrap_err();
    assert!(
        problems[0].contains(
            "photos.csv:2:9: row 1, column `source_image`: source image `in/nothere.png` not found"
        ),
        "{problems:?}"
    );
}

/// A source image that is a FIFO used to hang `validate`; one linked to a
/// device is refused too. Only regular files are read (a symlink to one is
/// fine), and the problem is at the path in the manifest.
#[test]
fn a_source_image_must_be_a_regular_file() {
    let text = format!("{HEAD}  - {{name: a, prompt: a cat, source_image: in.png}}\n");
    let fifo = Batch::new(&text);
    fifo.fifo("in.png");
    fifo.offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:7:44: cannot read source image `in.png`")
        .stderr_contains("is not a regular file (a FIFO)")
        .run();

    let zero = Batch::new(&text);
    std::os::unix::fs::symlink("/dev/zero", zero.dir.path().join("in.png")).unwrap();
    zero.offline("validate")
        .status(2)
        .stderr_contains("is not a regular file (a character device)")
        .run();

    let linked = Batch::new(&text);
    write_png(&linked.dir.path().join("real/a.png"), 8, 8, false, 1);
    std::os::unix::fs::symlink("real/a.png", linked.dir.path().join("in.png")).unwrap();
    linked
        .offline("validate")
        .stdout_contains("ok (1 jobs")
        .run();
}

/// A small PNG whose colour profile (iCCP) inflates to 1 GiB used to be
/// inflated (to the image crate's 512 MiB default) and accepted: with the
/// process limited to 400 MB of address space it died. Ancillary chunks are
/// not inflated now: the image validates within the limit, the profile
/// ignored (the Horde is sent the pixels only).
#[test]
fn a_png_whose_colour_profile_inflates_to_a_gibibyte_validates_in_bounded_memory() {
    let batch = Batch::new(&format!(
        "{HEAD}  - {{name: a, prompt: a cat, source_image: bomb.png}}\n"
    ));
    let plain = batch.dir.path().join("plain.png");
    write_png(&plain, 8, 8, false, 1);
    let png = std::fs::read(&plain).unwrap();
    // Signature (8 bytes), then IHDR (4 + 4 + 13 + 4): the profile goes after it.
    let mut bomb = png[..33].to_vec();
    let mut profile = b"bomb\0\0".to_vec();
    profile.extend(zlib_of_zeros(1 << 30));
    bomb.extend(png_chunk(b"iCCP", &profile));
    bomb.extend(png_chunk(b"zTXt", &profile));
    bomb.extend(&png[33..]);
    assert!(bomb.len() < 16 * 1024 * 1024, "{} bytes", bomb.len());
    batch.write("bomb.png", &bomb);

    let limited = crate::common::run_bounded(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -v 400000 && exec "$0" validate "$1""#)
            .arg(crate::common::BIN)
            .arg(&batch.manifest)
            .env("NO_COLOR", "1"),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(limited.code, 0, "{}", limited.stderr);
    assert!(limited.stdout.contains("ok (1 jobs"), "{}", limited.stdout);
}

/// One PNG chunk: length, type, data, CRC-32.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend(kind);
    chunk.extend(data);
    let mut crc = !0u32;
    for &byte in kind.iter().chain(data) {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    chunk.extend((!crc).to_be_bytes());
    chunk
}

/// A zlib stream of `len` zero bytes (`len - 1` a multiple of 258): one
/// literal 0, then copies of 258 bytes at distance 1, in a fixed-Huffman
/// block (13 bits a copy, so about 160:1).
fn zlib_of_zeros(len: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        used: u32,
    }
    impl Bits {
        /// `count` bits of `value`, least significant first.
        fn put(&mut self, value: u64, count: u32) {
            self.acc |= value << self.used;
            self.used += count;
            while self.used >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.used -= 8;
            }
        }
        /// A Huffman code: its bits most significant first.
        fn code(&mut self, code: u64, count: u32) {
            let reversed = (0..count).fold(0, |r, i| r | ((code >> i) & 1) << (count - 1 - i));
            self.put(reversed, count);
        }
    }
    let copies = (len - 1) / 258;
    let mut bits = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        used: 0,
    };
    bits.put(1, 1); // the final block
    bits.put(1, 2); // fixed Huffman codes
    bits.code(0x30, 8); // literal 0
    for _ in 0..copies {
        bits.code(0xC5, 8); // length 258
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    bits.put(0, 7); // to a byte boundary
    let total = 1 + copies * 258;
    // Adler-32 of zeros: a stays 1, b adds 1 per byte.
    let adler = ((total % 65521) as u32) << 16 | 1;
    bits.out.extend(adler.to_be_bytes());
    bits.out
}

#[test]
fn img2img_that_no_worker_takes_is_named_at_the_first_check() {
    // Workers that take no source images, as on a real Horde where an img2img
    // request read `is_possible: false` for minutes: the run says why at once.
    let sim = Sim::unlimited(&[
        "--workers",
        "2",
        "--latency",
        "5ms",
        "--seed",
        "4",
        "--no-img2img-workers",
    ]);
    let batch = Batch::new(&format!(
        "{}run: {{timeouts: {{no_worker: 3s}}}}\njobs:\n  - name: photo\n    prompt: a painting\n    source_image: photo.png\n",
        HEAD.trim_end_matches("jobs:\n"),
    ));
    write_png(&batch.dir.path().join("photo.png"), 48, 32, false, 9);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 1, "{stderr}");
    let warned = stderr
        .find("no worker serving stable_diffusion takes source images (img2img)")
        .unwrap_or_else(|| panic!("no reason given:\n{stderr}"));
    let failed = stderr
        .find("no worker could serve the request for 3s")
        .unwrap_or_else(|| panic!("the job did not fail at the timeout:\n{stderr}"));
    assert!(warned < failed, "{stderr}");
}
