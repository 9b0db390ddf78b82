//! What the simulated alchemists compute: the source as the server
//! re-encodes it before a worker sees it, and each form's result derived
//! from those re-encoded bytes (never from the client's), post-processed
//! WebP images included.
//!
//! Pure CPU work on bytes: no state, no run seed. Callers run the heavy parts
//! (decoding, scaling, encoding) outside the state lock.

use base64::Engine as _;
use image::{DynamicImage, ImageDecoder as _};
use image_webp::{ColorType, WebPEncoder};
use serde_json::{json, Value};

use super::alchemy_forms::{is_post_processor, scale_of};
use super::det::{splitmix64, stable_hash};
use super::sha256::sha256_hex;

/// The server refuses base64 sources above this many pixels.
const MAX_SOURCE_PIXELS: u64 = 3072 * 3072;

/// The sim caps a post-processed image at this many pixels (a 4× upscale of
/// a large source would need gigabytes); the scale is reduced to fit.
const MAX_OUTPUT_PIXELS: u64 = 4096 * 4096;

const DEFAULT_IMAGE_MESSAGE: &str = "Image validation failed. Please ensure the source image payload is either a URL containing an image or a valid base64 encoded image.";

/// Why a source image was refused: the rc and the message of the 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceRefused {
    pub rc: &'static str,
    pub message: &'static str,
}

/// A source as the server keeps it.
#[derive(Debug, Clone)]
pub(crate) struct StoredSource {
    /// The decoded bytes exactly as the client sent them.
    pub client_bytes: Vec<u8>,
    /// What workers are given: the server's re-encoding, never the client's bytes.
    pub worker_bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Decodes a base64 `source_image` and re-encodes it as the server does
/// (here: 5-bit colour channels, lossless WebP), with the server's refusals.
/// A URL cannot be fetched by the sim, so it fails as an unreachable one does.
pub(crate) fn store_source(text: &str) -> Result<StoredSource, SourceRefused> {
    let invalid = SourceRefused {
        rc: "ImageValidationFailed",
        message: DEFAULT_IMAGE_MESSAGE,
    };
    if text.starts_with("http://") || text.starts_with("https://") {
        return Err(SourceRefused {
            rc: "ImageValidationFailed",
            message: "Image validation failed. Something went wrong when retrieving image url.",
        });
    }
    let client_bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| invalid.clone())?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&client_bytes))
        .with_guessed_format()
        .map_err(|_| invalid.clone())?;
    if reader.format().is_none() {
        return Err(invalid);
    }
    let decoder = reader.into_decoder().map_err(|_| invalid.clone())?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_SOURCE_PIXELS {
        return Err(SourceRefused {
            rc: "SourceImageResolutionExceeded",
            message: "Image validation failed. Image size cannot exceed 3072*3072 pixels",
        });
    }
    let image = DynamicImage::from_decoder(decoder).map_err(|_| invalid.clone())?;
    let worker_bytes = reencode(&image, &client_bytes);
    Ok(StoredSource {
        client_bytes,
        worker_bytes,
        width,
        height,
    })
}

/// The server's lossy re-encoding, imitated: each channel keeps 5 bits.
/// Bytes equal to the client's (possible for a tiny flat image) get one
/// pixel nudged, so a worker never sees what the client sent.
fn reencode(image: &DynamicImage, client_bytes: &[u8]) -> Vec<u8> {
    let (width, height) = (image.width(), image.height());
    let (mut pixels, color) = if image.color().has_alpha() {
        (image.to_rgba8().into_raw(), ColorType::Rgba8)
    } else {
        (image.to_rgb8().into_raw(), ColorType::Rgb8)
    };
    for value in &mut pixels {
        *value = (*value & 0xf8) | 0x04;
    }
    let mut encoded = encode(&pixels, width, height, color);
    if encoded == client_bytes {
        if let Some(first) = pixels.first_mut() {
            *first ^= 1;
        }
        encoded = encode(&pixels, width, height, color);
    }
    encoded
}

fn encode(pixels: &[u8], width: u32, height: u32, color: ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new(&mut out)
        .encode(pixels, width, height, color)
        .expect("encoding a correctly sized pixel buffer into memory cannot fail");
    out
}

/// The result an alchemist submits for a non-post-processor `form` on the
/// re-encoded `source` of `width`×`height`.
pub(crate) fn text_result(form: &str, source: &[u8], width: u32, height: u32) -> Value {
    let digest = sha256_hex(source);
    let key = stable_hash(&[source, form.as_bytes()]);
    let pick = |list: &[&'static str], salt: u64| {
        let index = splitmix64(key ^ salt) as usize % list.len();
        list[index]
    };
    match form {
        "caption" => json!({"caption": format!(
            "sim caption {}: a {} {} ({width}x{height})",
            &digest[..8],
            pick(ADJECTIVES, 1),
            pick(SUBJECTS, 2)
        )}),
        "nsfw" => json!({"nsfw": key % 5 == 0}),
        "aesthetic" => {
            let hundredths = key % 900;
            json!({"aesthetic": 1.0 + hundredths as f64 / 100.0})
        }
        "interrogation" => json!({"interrogation": interrogation(key)}),
        other => json!({ other: format!("sim {other} {}", &digest[..8]) }),
    }
}

/// horde_sdk's `AlchemyInterrogationDetails`: tags, sites, artists,
/// flavors, mediums, movements, techniques, each `[{text, confidence}]`.
fn interrogation(key: u64) -> Value {
    let ranked = |list: &[&str], salt: u64, count: usize| -> Value {
        let entries: Vec<Value> = (0..count.min(list.len()))
            .map(|rank| {
                let draw = splitmix64(key ^ salt ^ ((rank as u64) << 8));
                let text = list[(draw as usize + rank) % list.len()];
                let confidence = 50.0 - rank as f64 * 5.0 - (draw % 40) as f64 / 10.0;
                json!({"text": text, "confidence": (confidence * 10.0).round() / 10.0})
            })
            .collect();
        Value::Array(entries)
    };
    json!({
        "tags": ranked(SUBJECTS, 11, 3),
        "sites": [],
        "artists": ranked(ARTISTS, 12, 2),
        "flavors": ranked(ADJECTIVES, 13, 2),
        "mediums": ranked(MEDIUMS, 14, 1),
        "movements": ranked(MOVEMENTS, 15, 1),
        "techniques": ranked(TECHNIQUES, 16, 1),
    })
}

/// The WebP a post-processor `form` makes from the re-encoded `source`:
/// scaled ×2 or ×4 as its name says (nearest neighbour), RGBA for
/// `strip_background`. `None` when the source does not decode (the form faults).
pub(crate) fn post_process(form: &str, source: &[u8]) -> Option<(Vec<u8>, u32, u32)> {
    debug_assert!(is_post_processor(form));
    let image = image::load_from_memory(source).ok()?;
    let (width, height) = output_size(image.width(), image.height(), scale_of(form));
    let scaled = image.resize_exact(width, height, image::imageops::FilterType::Nearest);
    let webp = if form == "strip_background" {
        encode(
            &scaled.to_rgba8().into_raw(),
            width,
            height,
            ColorType::Rgba8,
        )
    } else {
        encode(&scaled.to_rgb8().into_raw(), width, height, ColorType::Rgb8)
    };
    Some((webp, width, height))
}

/// `width`×`height` times `scale`, reduced to fit [`MAX_OUTPUT_PIXELS`].
fn output_size(width: u32, height: u32, scale: u32) -> (u32, u32) {
    let mut scale = scale.max(1);
    while scale > 1 && u64::from(width * scale) * u64::from(height * scale) > MAX_OUTPUT_PIXELS {
        scale /= 2;
    }
    (width.max(1) * scale, height.max(1) * scale)
}

const ADJECTIVES: &[&str] = &[
    "quiet", "bright", "empty", "stormy", "golden", "misty", "vivid",
];
const SUBJECTS: &[&str] = &[
    "portrait",
    "landscape",
    "city street",
    "forest",
    "harbour",
    "still life",
    "night sky",
];
const ARTISTS: &[&str] = &[
    "Caspar David Friedrich",
    "Claude Monet",
    "Hokusai",
    "Edward Hopper",
    "Hilma af Klint",
];
const MEDIUMS: &[&str] = &["oil painting", "watercolor", "digital art", "photograph"];
const MOVEMENTS: &[&str] = &["romanticism", "impressionism", "minimalism", "surrealism"];
const TECHNIQUES: &[&str] = &["pixel art", "impasto", "long exposure", "cross-hatching"];

#[cfg(test)]
mod tests {
    use super::*;

    fn png_b64(width: u32, height: u32) -> String {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    }

    #[test]
    fn workers_see_other_bytes_than_the_client_sent() {
        let stored = store_source(&png_b64(16, 8)).unwrap();
        assert_ne!(stored.client_bytes, stored.worker_bytes);
        assert_eq!((stored.width, stored.height), (16, 8));
        let caption = text_result("caption", &stored.worker_bytes, 16, 8);
        let prefix = &sha256_hex(&stored.worker_bytes)[..8];
        assert!(caption["caption"].as_str().unwrap().contains(prefix));
        assert!(text_result("nsfw", &stored.worker_bytes, 16, 8)["nsfw"].is_boolean());
        let details = &text_result("interrogation", &stored.worker_bytes, 16, 8)["interrogation"];
        assert!(details["tags"][0]["confidence"].is_f64());
        assert_eq!(details["sites"], json!([]));
    }

    #[test]
    fn refusals_carry_the_servers_codes() {
        assert_eq!(
            store_source("aGVsbG8=").unwrap_err().rc,
            "ImageValidationFailed"
        );
        assert!(store_source("https://example.invalid/a.png")
            .unwrap_err()
            .message
            .ends_with("retrieving image url."));
    }

    #[test]
    fn post_processors_scale_as_named() {
        let stored = store_source(&png_b64(10, 6)).unwrap();
        let (_, w, h) = post_process("RealESRGAN_x2plus", &stored.worker_bytes).unwrap();
        assert_eq!((w, h), (20, 12));
        let (_, w, h) = post_process("4x_AnimeSharp", &stored.worker_bytes).unwrap();
        assert_eq!((w, h), (40, 24));
        let (webp, w, h) = post_process("strip_background", &stored.worker_bytes).unwrap();
        assert_eq!((w, h), (10, 6));
        let image = image::load_from_memory(&webp).unwrap();
        assert!(image.color().has_alpha());
        assert_eq!(output_size(3072, 3072, 4), (3072, 3072));
    }
}
