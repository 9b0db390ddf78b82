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
