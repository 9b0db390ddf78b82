//! A1111 "PNG Info" parameters in each image: the text AUTOMATIC1111's web UI
//! writes (prompt, `Negative prompt:`, `Steps`, `Sampler`, `CFG scale`, `Seed`,
//! `Size`, `Model`), stored as the EXIF `UserComment` of the WebP, so PNG Info,
//! civitai and exiftool read what made the image.
//!
//! The EXIF block is added to the RIFF container (img-parts), never by
//! re-encoding: the pixels are the bytes the Horde sent.

use img_parts::webp::WebP;
use img_parts::Bytes;
use img_parts::ImageEXIF;
use serde_json::Value;

use super::Sidecar;

/// The A1111 parameters text of the image a sidecar describes.
pub fn parameters_text(sidecar: &Sidecar) -> String {
    let mut text = sidecar.prompt.clone();
    if let Some(negative) = sidecar.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
        text.push_str("\nNegative prompt: ");
        text.push_str(negative);
    }
    let param = |name: &str| sidecar.params.get(name).filter(|v| !v.is_null());
    let mut fields: Vec<String> = Vec::new();
    if let Some(steps) = param("steps") {
        fields.push(format!("Steps: {}", plain(steps)));
    }
    if let Some(sampler) = param("sampler_name").and_then(Value::as_str) {
        fields.push(format!("Sampler: {}", sampler_name(sampler)));
    }
    if let Some(cfg) = param("cfg_scale") {
        fields.push(format!("CFG scale: {}", plain(cfg)));
    }
    fields.push(format!("Seed: {}", sidecar.seed));
    if let (Some(width), Some(height)) = (param("width"), param("height")) {
        fields.push(format!("Size: {}x{}", plain(width), plain(height)));
    }
    fields.push(format!("Model: {}", sidecar.model));
    if let Some(loras) = param("loras").and_then(Value::as_array) {
        for lora in loras {
            if let Some(name) = lora.get("name").and_then(Value::as_str) {
                let strength = lora.get("model").map_or_else(|| "1".to_owned(), plain);
                text.push_str(&format!(" <lora:{name}:{strength}>"));
            }
        }
    }
    text.push('\n');
    text.push_str(&fields.join(", "));
    text
}

/// A value as the web UI prints it: text bare, `7.0` as `7`.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The web UI's name for a Horde sampler (`k_euler_a` → `Euler a`).
fn sampler_name(horde: &str) -> String {
    let known = [
        ("k_euler_a", "Euler a"),
        ("k_euler", "Euler"),
        ("k_lms", "LMS"),
        ("k_heun", "Heun"),
        ("k_dpm_2", "DPM2"),
        ("k_dpm_2_a", "DPM2 a"),
        ("k_dpm_fast", "DPM fast"),
        ("k_dpm_adaptive", "DPM adaptive"),
        ("k_dpmpp_2s_a", "DPM++ 2S a"),
        ("k_dpmpp_2m", "DPM++ 2M"),
        ("k_dpmpp_sde", "DPM++ SDE"),
        ("dpmsolver", "DPM solver"),
        ("DDIM", "DDIM"),
        ("lcm", "LCM"),
    ];
    known
        .iter()
        .find(|(name, _)| *name == horde)
        .map_or_else(|| horde.to_owned(), |(_, ui)| (*ui).to_owned())
}

/// A big-endian TIFF/EXIF block holding `text` as the Exif `UserComment`
/// (`UNICODE\0` and UTF-16BE, as A1111 writes it with piexif).
pub fn exif_user_comment(text: &str) -> Vec<u8> {
    let mut comment = b"UNICODE\0".to_vec();
    for unit in text.encode_utf16() {
        comment.extend_from_slice(&unit.to_be_bytes());
    }
    let mut exif = Vec::with_capacity(comment.len() + 64);
    // TIFF header: big-endian, magic 42, IFD0 at offset 8.
    exif.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    // IFD0 (offset 8): one entry, the Exif IFD pointer; the Exif IFD follows at 26.
    let exif_ifd: u32 = 8 + 2 + 12 + 4;
    exif.extend_from_slice(&1u16.to_be_bytes());
    exif.extend_from_slice(&0x8769u16.to_be_bytes());
    exif.extend_from_slice(&4u16.to_be_bytes()); // LONG
    exif.extend_from_slice(&1u32.to_be_bytes());
    exif.extend_from_slice(&exif_ifd.to_be_bytes());
    exif.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
                                                 // Exif IFD (offset 26): one entry, UserComment, its data right after.
    let data = exif_ifd + 2 + 12 + 4;
    exif.extend_from_slice(&1u16.to_be_bytes());
    exif.extend_from_slice(&0x9286u16.to_be_bytes());
    exif.extend_from_slice(&7u16.to_be_bytes()); // UNDEFINED
    exif.extend_from_slice(&(comment.len() as u32).to_be_bytes());
    exif.extend_from_slice(&data.to_be_bytes());
    exif.extend_from_slice(&0u32.to_be_bytes());
    exif.extend_from_slice(&comment);
    exif
}

/// `webp` with `text` as its A1111 parameters (EXIF `UserComment`); the image
/// data is untouched. `None` when the container cannot be read as a WebP.
pub fn with_parameters(webp: &[u8], text: &str) -> Option<Vec<u8>> {
    let mut image = WebP::from_bytes(Bytes::copy_from_slice(webp)).ok()?;
    image.set_exif(Some(Bytes::from(exif_user_comment(text))));
    // Without its VP8X header (the canvas size could not be read) the chunk would be invalid.
    image.chunk_by_id(*b"VP8X")?;
    let mut out = Vec::with_capacity(webp.len() + text.len() * 2 + 64);
    image.encoder().write_to(&mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webp() -> Vec<u8> {
        let pixels: Vec<u8> = (0..16 * 8 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out)
            .encode(&pixels, 16, 8, image_webp::ColorType::Rgb8)
            .expect("a small lossless WebP encodes");
        out
    }

    #[test]
    fn the_parameters_follow_a1111s_layout() {
        let sidecar: Sidecar = serde_json::from_value(serde_json::json!({
            "schema": 1, "file_name": "a.webp", "manifest": "m.yaml", "manifest_name": "m",
            "job": "cats", "job_key": "k", "image_index": 0, "prompt_template": "a cat",
            "prompt": "a cat", "negative_prompt": "blurry", "model": "stable_diffusion",
            "params": {"steps": 20, "sampler_name": "k_euler_a", "cfg_scale": 7.5,
                       "width": 512, "height": 768, "n": 1},
            "request": {}, "seed": "1234", "batch_index": null, "horde_request_id": "r",
            "generation_id": "g", "worker_id": "w", "worker_name": "n", "censored": false,
            "gen_metadata": [], "kudos": 1.0, "submitted_at": "t", "completed_at": "t",
            "horde_batch_version": "0"
        }))
        .expect("a sidecar");
        assert_eq!(
            parameters_text(&sidecar),
            "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, \
             Seed: 1234, Size: 512x768, Model: stable_diffusion"
        );
    }

    #[test]
    fn the_image_keeps_its_pixels_and_still_verifies() {
        let original = webp();
        let tagged = with_parameters(&original, "a cat\nSteps: 20").expect("tagged");
        let info = super::super::verify_webp(&tagged).expect("still a valid WebP");
        assert_eq!((info.width, info.height), (16, 8));
        let decode = |bytes: &[u8]| {
            let mut decoder =
                image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).expect("decodes");
            let mut pixels = vec![0; decoder.output_buffer_size().expect("a size")];
            decoder.read_image(&mut pixels).expect("reads");
            pixels
        };
        assert_eq!(decode(&tagged), decode(&original));
        let read = WebP::from_bytes(Bytes::from(tagged)).expect("reads back");
        let exif = read.exif().expect("has EXIF");
        assert!(exif.starts_with(b"MM\0\x2a"));
    }
}
