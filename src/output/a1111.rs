//! A1111 "PNG Info" parameters in each image: the text AUTOMATIC1111's web UI
//! writes (`create_infotext`: the prompt with its `<lora:…>` tags, `Negative
//! prompt:`, then `Steps`, `Sampler`, `Schedule type`, `CFG scale`, `Seed`,
//! `Face restoration`, `Size`, `Model`, `Denoising strength`, `Clip skip`,
//! `Tiling`, `Hires resize`, in that order), stored as the EXIF `UserComment`
//! of the WebP, so PNG Info, civitai and exiftool read what made the image.
//! A key is written only when the request says what goes in it, as the web
//! UI leaves out what does not apply.
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
    let param = |name: &str| sidecar.params.get(name).filter(|v| !v.is_null());
    let flag = |name: &str| param(name).and_then(Value::as_bool) == Some(true);

    // The web UI keeps a LoRA's tag in the positive prompt it was written in.
    let mut text = sidecar.prompt.clone();
    for lora in param("loras")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = lora.get("name").and_then(plain_opt) {
            // `<lora:name:w>` sets both weights; `<lora:name:te:unet>` two that differ.
            let unet = lora.get("model").map_or_else(|| "1".to_owned(), plain);
            let te = lora.get("clip").map_or_else(|| unet.clone(), plain);
            if te == unet {
                text.push_str(&format!(" <lora:{name}:{unet}>"));
            } else {
                text.push_str(&format!(" <lora:{name}:{te}:{unet}>"));
            }
        }
    }
    if let Some(negative) = sidecar.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
        text.push_str("\nNegative prompt: ");
        text.push_str(negative);
    }

    let mut fields: Vec<String> = Vec::new();
    if let Some(steps) = param("steps") {
        fields.push(format!("Steps: {}", plain(steps)));
    }
    if let Some(sampler) = param("sampler_name").and_then(Value::as_str) {
        let sampler = Sampler::from_horde(sampler);
        if flag("karras") {
            match sampler.karras_name {
                Some(name) => fields.push(format!("Sampler: {name}")),
                // No "… Karras" sampler of that name: the web UI (1.9 and
                // later) names the schedule apart.
                None => fields.push(format!("Sampler: {}, Schedule type: Karras", sampler.name)),
            }
        } else {
            fields.push(format!("Sampler: {}", sampler.name));
        }
    }
    if let Some(cfg) = param("cfg_scale") {
        fields.push(format!("CFG scale: {}", plain(cfg)));
    }
    fields.push(format!("Seed: {}", sidecar.seed));
    if let Some(fixer) = face_fixer(param("post_processing")) {
        fields.push(format!("Face restoration: {fixer}"));
    }
    let size = match (param("width"), param("height")) {
        (Some(width), Some(height)) => Some(format!("{}x{}", plain(width), plain(height))),
        _ => None,
    };
    if let Some(size) = &size {
        fields.push(format!("Size: {size}"));
    }
    fields.push(format!("Model: {}", sidecar.model));
    // One `Denoising strength`, as in the web UI: the source image's for
    // img2img, else the hires-fix pass's.
    let denoising = if sidecar.sources.is_some() {
        param("denoising_strength")
    } else if flag("hires_fix") {
        param("hires_fix_denoising_strength")
    } else {
        None
    };
    if let Some(strength) = denoising {
        fields.push(format!("Denoising strength: {}", plain(strength)));
    }
    if let Some(skip) = param("clip_skip")
        .and_then(Value::as_u64)
        .filter(|&n| n > 1)
    {
        fields.push(format!("Clip skip: {skip}"));
    }
    if flag("tiling") {
        fields.push("Tiling: True".to_owned());
    }
    // The Horde is asked for the final size and picks the first pass's
    // itself, so the upscale factor is unknown: the web UI's "resize to"
    // form states what was asked.
    if flag("hires_fix") {
        if let Some(size) = &size {
            fields.push(format!("Hires resize: {size}"));
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

/// [`plain`] for a name: a string or a number (a CivitAI id), nothing else.
fn plain_opt(value: &Value) -> Option<String> {
    matches!(value, Value::String(_) | Value::Number(_)).then(|| plain(value))
}

/// The web UI's name of the first face fixer among a request's post-processors.
fn face_fixer(post_processing: Option<&Value>) -> Option<&'static str> {
    post_processing?
        .as_array()?
        .iter()
        .find_map(|name| match name.as_str()? {
            "GFPGAN" => Some("GFPGAN"),
            "CodeFormers" => Some("CodeFormer"),
            _ => None,
        })
}

/// A Horde sampler as the web UI names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sampler {
    /// Its name with no schedule (`k_dpmpp_2m` → `DPM++ 2M`).
    name: String,
    /// Its name with the Karras schedule, where the web UI has one
    /// (`DPM++ 2M Karras`).
    karras_name: Option<&'static str>,
}

impl Sampler {
    /// Every sampler the Horde knows (`manifest::params::KNOWN_SAMPLERS`):
    /// its name, the web UI's, and the web UI's with the Karras schedule.
    const KNOWN: &'static [(&'static str, &'static str, Option<&'static str>)] = &[
        ("k_lms", "LMS", Some("LMS Karras")),
        ("k_heun", "Heun", None),
        ("k_euler", "Euler", None),
        ("k_euler_a", "Euler a", None),
        ("k_dpm_2", "DPM2", Some("DPM2 Karras")),
        ("k_dpm_2_a", "DPM2 a", Some("DPM2 a Karras")),
        ("k_dpm_fast", "DPM fast", None),
        ("k_dpm_adaptive", "DPM adaptive", None),
        ("k_dpmpp_2s_a", "DPM++ 2S a", Some("DPM++ 2S a Karras")),
        ("k_dpmpp_2m", "DPM++ 2M", Some("DPM++ 2M Karras")),
        ("dpmsolver", "DPM solver", None),
        ("k_dpmpp_sde", "DPM++ SDE", Some("DPM++ SDE Karras")),
        ("DDIM", "DDIM", None),
        ("lcm", "LCM", None),
    ];

    /// The web UI's names for `horde`; one the table lacks keeps its own name.
    fn from_horde(horde: &str) -> Sampler {
        match Self::KNOWN.iter().find(|(name, ..)| *name == horde) {
            Some((_, name, karras_name)) => Sampler {
                name: (*name).to_owned(),
                karras_name: *karras_name,
            },
            None => Sampler {
                name: horde.to_owned(),
                karras_name: None,
            },
        }
    }
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
    fn every_horde_sampler_has_the_web_uis_name() {
        for horde in crate::manifest::params::KNOWN_SAMPLERS {
            assert!(
                Sampler::KNOWN.iter().any(|(name, ..)| name == horde),
                "{horde} is not mapped"
            );
        }
        assert_eq!(
            Sampler::from_horde("k_dpmpp_2m").karras_name,
            Some("DPM++ 2M Karras")
        );
        assert_eq!(Sampler::from_horde("k_euler_a").name, "Euler a");
        assert_eq!(Sampler::from_horde("k_new").name, "k_new");
    }

    #[test]
    fn a_karras_schedule_without_a_karras_sampler_is_named_apart() {
        let mut sidecar: Sidecar = serde_json::from_value(serde_json::json!({
            "schema": 1, "file_name": "a.webp", "manifest": "m.yaml", "manifest_name": "m",
            "job": "cats", "job_key": "k", "image_index": 0, "prompt_template": "a cat",
            "prompt": "a cat", "negative_prompt": null, "model": "m",
            "params": {"sampler_name": "k_euler_a", "karras": true, "clip_skip": 1,
                       "denoising_strength": 0.4,
                       "loras": [{"name": "x"}, {"name": "y", "model": 0.5, "clip": 1.0}]},
            "request": {}, "seed": "1", "batch_index": null, "horde_request_id": "r",
            "generation_id": "g", "worker_id": "w", "worker_name": "n", "censored": false,
            "gen_metadata": [], "kudos": 1.0, "submitted_at": "t", "completed_at": "t",
            "horde_batch_version": "0"
        }))
        .expect("a sidecar");
        // Clip skip 1 is the web UI's default and left out; a denoising
        // strength without a source image or hires fix does nothing.
        assert_eq!(
            parameters_text(&sidecar),
            "a cat <lora:x:1> <lora:y:1:0.5>\nSampler: Euler a, Schedule type: Karras, Seed: 1, Model: m"
        );
        sidecar.sources = Some(super::super::SidecarSources {
            source_processing: "img2img".into(),
            source_image: super::super::SidecarSourceFile {
                path: "in.png".into(),
                hash: "h".into(),
                strength: None,
            },
            source_mask: None,
            extra_source_images: Vec::new(),
        });
        assert!(parameters_text(&sidecar).ends_with("Model: m, Denoising strength: 0.4"));
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
