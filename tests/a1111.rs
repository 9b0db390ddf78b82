//! The A1111 parameters in an image, read back by an independent reader
//! (Pillow, installed by `.ci/run`), as PNG Info and civitai read them.

use std::process::Command;

use horde_batch::output::a1111::with_parameters;

fn small_webp() -> Vec<u8> {
    let pixels: Vec<u8> = (0..32 * 16 * 3).map(|i| (i * 13 % 251) as u8).collect();
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(&pixels, 32, 16, image_webp::ColorType::Rgb8)
        .unwrap();
    out
}

#[test]
fn pillow_reads_the_user_comment_and_the_image() {
    let text = "a lighthouse at dusk, oil painting\nNegative prompt: blurry\n\
                Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 32x16, Model: stable_diffusion";
    let tagged = with_parameters(&small_webp(), text).expect("a WebP takes the parameters");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tagged.webp");
    std::fs::write(&path, tagged).unwrap();
    let script = "import sys\n\
        from PIL import Image\n\
        im = Image.open(sys.argv[1])\n\
        raw = im.getexif().get_ifd(0x8769)[0x9286]\n\
        assert raw.startswith(b'UNICODE\\0'), raw[:16]\n\
        im.load()\n\
        print('%dx%d' % im.size)\n\
        sys.stdout.write(raw[8:].decode('utf-16-be'))\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "Pillow could not read it (is Pillow installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (size, comment) = stdout.split_once('\n').unwrap();
    assert_eq!(size, "32x16");
    assert_eq!(comment, text);
}

/// The UserComment Pillow reads from `image`, if any.
fn user_comment(image: &std::path::Path) -> Option<String> {
    let script = "import sys\n\
        from PIL import Image\n\
        ifd = Image.open(sys.argv[1]).getexif().get_ifd(0x8769)\n\
        raw = ifd.get(0x9286)\n\
        sys.stdout.write(raw[8:].decode('utf-16-be') if raw else '')\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(image)
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    (!text.is_empty()).then_some(text)
}

#[test]
fn every_image_of_a_run_carries_its_sidecars_parameters() {
    use crate::common::{Batch, Sim};
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "28"]);
    let manifest = |extra: &str| {
        format!(
            "version: 1\nname: info\ndefaults: {{models: [stable_diffusion], \
             params: {{width: 64, height: 64, steps: 12, sampler_name: k_euler_a, cfg_scale: 6}}}}\n\
             {extra}jobs:\n  - {{name: a, prompt: a red kite, negative: blurry, images: 2}}\n"
        )
    };
    let batch = Batch::new(&manifest(""));
    let (code, stderr) = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    // The pixels are still the sim's render of each sidecar's prompt and seed.
    batch.assert_complete(2);
    for row in batch.index_lines() {
        let image = batch.out().join(row["file_name"].as_str().unwrap());
        let sidecar: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(image.with_extension("json")).unwrap())
                .unwrap();
        let comment = user_comment(&image).expect("a UserComment");
        let expected = format!(
            "a red kite\nNegative prompt: blurry\nSteps: 12, Sampler: Euler a, CFG scale: 6, \
             Seed: {}, Size: 64x64, Model: {}",
            sidecar["seed"].as_str().unwrap(),
            sidecar["model"].as_str().unwrap()
        );
        assert_eq!(comment, expected);
    }
    // Turned off in the manifest: no EXIF.
    let plain = Batch::new(&manifest("output: {a1111_parameters: false}\n"));
    let (code, stderr) = plain.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let image = plain
        .out()
        .join(plain.index_lines()[0]["file_name"].as_str().unwrap());
    assert_eq!(user_comment(&image), None);
}
