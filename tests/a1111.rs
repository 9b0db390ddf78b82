//! The A1111 parameters in an image, read back by an independent EXIF reader
//! (the `kamadak-exif` crate reads the WebP container and the TIFF structure
//! itself), as PNG Info and civitai read them.

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
fn an_independent_reader_finds_the_user_comment_and_the_image() {
    let text = "a lighthouse at dusk, oil painting\nNegative prompt: blurry\n\
                Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 32x16, Model: stable_diffusion";
    let original = small_webp();
    let tagged = with_parameters(&original, text).expect("a WebP takes the parameters");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tagged.webp");
    std::fs::write(&path, &tagged).unwrap();
    assert_eq!(user_comment(&path).as_deref(), Some(text));
    // The pixels are the original's.
    assert_eq!(pixels(&tagged), pixels(&original));
}

fn pixels(webp: &[u8]) -> Vec<u8> {
    let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(webp)).unwrap();
    let mut pixels = vec![0; decoder.output_buffer_size().unwrap()];
    decoder.read_image(&mut pixels).unwrap();
    pixels
}

/// The UserComment an independent EXIF reader finds in `image`, if any
/// (`UNICODE\0` and UTF-16 in the TIFF's byte order, as A1111 and piexif write it).
fn user_comment(image: &std::path::Path) -> Option<String> {
    let file = std::fs::File::open(image).unwrap();
    let exif = exif::Reader::new()
        .read_from_container(&mut std::io::BufReader::new(file))
        .ok()?;
    let field = exif.get_field(exif::Tag::UserComment, exif::In::PRIMARY)?;
    let exif::Value::Undefined(bytes, _) = &field.value else {
        panic!("UserComment is not UNDEFINED: {:?}", field.value)
    };
    let text = bytes
        .strip_prefix(b"UNICODE\0")
        .expect("the UNICODE prefix");
    let units: Vec<u16> = text
        .chunks_exact(2)
        .map(|pair| {
            if exif.little_endian() {
                u16::from_le_bytes([pair[0], pair[1]])
            } else {
                u16::from_be_bytes([pair[0], pair[1]])
            }
        })
        .collect();
    Some(String::from_utf16(&units).expect("UTF-16"))
}

#[test]
fn every_image_of_a_run_carries_its_sidecars_parameters() {
    use crate::common::{Batch, Finished, Sim};
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "28"]);
    let manifest = |extra: &str| {
        format!(
            "version: 1\nname: info\ndefaults: {{models: [stable_diffusion], \
             params: {{width: 64, height: 64, steps: 12, sampler_name: k_euler_a, cfg_scale: 6}}}}\n\
             {extra}jobs:\n  - {{name: a, prompt: a red kite, negative: blurry, images: 2}}\n"
        )
    };
    let batch = Batch::new(&manifest(""));
    let Finished { code, stderr, .. } = batch.run(&sim);
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
            "a red kite\nNegative prompt: blurry\nSteps: 12, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, \
             Seed: {}, Size: 64x64, Model: {}",
            sidecar["seed"].as_str().unwrap(),
            sidecar["model"].as_str().unwrap()
        );
        assert_eq!(comment, expected);
    }
    // Turned off in the manifest: no EXIF.
    let plain = Batch::new(&manifest("output: {a1111_parameters: false}\n"));
    let Finished { code, stderr, .. } = plain.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let image = plain
        .out()
        .join(plain.index_lines()[0]["file_name"].as_str().unwrap());
    assert_eq!(user_comment(&image), None);
}

#[test]
fn the_parameters_name_the_schedule_face_fixer_clip_skip_hires_fix_and_loras_as_a1111_does() {
    use crate::common::{Batch, Finished, Sim};
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "29"]);
    let batch = Batch::new(
        "version: 1\nname: infotext\ndefaults: {models: [stable_diffusion]}\njobs:\n  \
         - name: full\n    prompt: a red kite\n    negative: blurry\n    images: 1\n    \
         params: {width: 768, height: 576, steps: 12, cfg_scale: 6, sampler_name: k_dpmpp_2m, \
         karras: true, clip_skip: 2, hires_fix: true, hires_fix_denoising_strength: 0.5, \
         post_processing: [CodeFormers], tiling: true, loras: [{name: '247778', model: 0.8}]}\n  \
         - name: plain\n    prompt: a blue boat\n    images: 1\n    \
         params: {width: 64, height: 64, steps: 8, sampler_name: k_euler, karras: false, \
         post_processing: [GFPGAN]}\n",
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let rows = batch.index_lines();
    let comment_of = |job: &str| {
        let row = rows
            .iter()
            .find(|row| row["job"] == job)
            .unwrap_or_else(|| panic!("no image of {job}"));
        let image = batch.out().join(row["file_name"].as_str().unwrap());
        let sidecar: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(image.with_extension("json")).unwrap())
                .unwrap();
        let comment = user_comment(&image).expect("a UserComment");
        (
            comment,
            sidecar["seed"].as_str().unwrap().to_owned(),
            sidecar["model"].as_str().unwrap().to_owned(),
        )
    };
    // The LoRA tag ends the positive prompt, never the negative one; the
    // Karras schedule is in the sampler's name; the rest in A1111's order.
    let (full, seed, model) = comment_of("full");
    assert_eq!(
        full,
        format!(
            "a red kite <lora:247778:0.8>\nNegative prompt: blurry\n\
             Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: {seed}, \
             Face restoration: CodeFormer, Size: 768x576, Model: {model}, \
             Denoising strength: 0.5, Clip skip: 2, Tiling: True, Hires resize: 768x576"
        )
    );
    let (plain, seed, model) = comment_of("plain");
    assert_eq!(
        plain,
        format!(
            "a blue boat\nSteps: 8, Sampler: Euler, CFG scale: 7, Seed: {seed}, \
             Face restoration: GFPGAN, Size: 64x64, Model: {model}"
        )
    );
}
