//! Validation of `POST /v2/generate/async` bodies, in the two layers the real
//! server has: the flask-restx JSON-schema check (400 with an `errors` map
//! keyed by field path, jsonschema's Python-flavoured messages, no `rc`),
//! then the reqparse defaults that turn the body into a request.
//!
//! Owns the schema table and the typed [`GenerateInput`], and the rules for
//! source images (img2img, inpainting, remix, ControlNet) in the server's two
//! later stages: the payload checks of `validate()` ([`check_sources`]) and
//! the decoding done when the request is activated ([`decode_sources`]), with
//! the real rc codes and messages (AH `stable.py`, `image.py`, `exceptions.py`).
//! The other rc-style checks that need a user or the queue (TooManyLoras,
//! KudosUpfront, ...) live in `state`, because on the real server they run later.

use std::collections::BTreeMap;

use base64::Engine as _;
use image::ImageDecoder as _;
use serde_json::{Map, Value};

use super::state::ApiError;
use super::stats::SourceSeen;

mod jsonschema;
mod python_repr;
mod schema;

use jsonschema::check_fields;
use python_repr::py_repr;
pub(crate) use schema::KNOWN_UPSCALERS;
use schema::{EXTRA_SOURCE_IMAGE, PARAMS, TOP_LEVEL};

/// A generate request after schema validation, with the server's defaults applied.
#[derive(Clone, Debug)]
pub(crate) struct GenerateInput {
    pub prompt: String,
    pub params: GenParams,
    pub models: Vec<String>,
    pub nsfw: bool,
    pub slow_workers: bool,
    /// `workers`, silently cut to the first 5 as the server does.
    pub workers: Vec<String>,
    pub worker_blacklist: bool,
    pub r2: bool,
    pub shared: bool,
    pub dry_run: bool,
    pub disable_batching: bool,
    pub allow_downgrade: bool,
    pub webhook: Option<String>,
    pub proxied_account: Option<String>,
    /// `source_image` as sent (base64); an empty string counts as none, as in Python.
    pub source_image: Option<String>,
    /// `source_processing`, default `img2img`.
    pub source_processing: String,
    pub source_mask: Option<String>,
    /// `extra_source_images`: (base64 image, strength).
    pub extra_source_images: Vec<(String, Option<f64>)>,
}

/// The `params` object with defaults (AH `ImageWaitingPrompt.extract_params`).
#[derive(Clone, Debug)]
pub(crate) struct GenParams {
    pub n: u32,
    pub steps: u32,
    pub width: u32,
    pub height: u32,
    pub sampler_name: String,
    pub cfg_scale: f64,
    pub seed: Option<String>,
    pub loras: usize,
    pub tis: usize,
    pub post_processing: Vec<String>,
    pub control_type: Option<String>,
}

/// Checks `body` against the schema; on failure returns the `errors` map.
pub(crate) fn parse_generate(body: &Value) -> Result<GenerateInput, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let Some(top) = body.as_object() else {
        errors.insert(
            String::new(),
            format!("{} is not of type 'object'", py_repr(body)),
        );
        return Err(errors);
    };
    if !top.contains_key("prompt") {
        errors.insert(String::new(), "'prompt' is a required property".to_owned());
    }
    check_fields(top, TOP_LEVEL, "", &mut errors);
    let params = match top.get("params") {
        Some(Value::Object(params)) => {
            check_fields(params, PARAMS, "params.", &mut errors);
            params.clone()
        }
        _ => Map::new(),
    };
    // The items' own model (`ExtraSourceImage`): image a string, strength a number.
    if let Some(Value::Array(items)) = top.get("extra_source_images") {
        for (index, item) in items.iter().enumerate() {
            if let Value::Object(item) = item {
                check_fields(
                    item,
                    EXTRA_SOURCE_IMAGE,
                    &format!("extra_source_images.{index}."),
                    &mut errors,
                );
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let flag =
        |name: &str, default: bool| top.get(name).and_then(Value::as_bool).unwrap_or(default);
    let text = |map: &Map<String, Value>, name: &str| {
        map.get(name).and_then(Value::as_str).map(str::to_owned)
    };
    let int = |name: &str, default: u32| {
        params
            .get(name)
            .and_then(Value::as_u64)
            .and_then(|value| u32::try_from(value).ok())
            .unwrap_or(default)
    };
    let count = |name: &str| {
        params
            .get(name)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    let control_type = text(&params, "control_type");
    let default_steps = if control_type.is_some() { 20 } else { 30 };
    Ok(GenerateInput {
        prompt: text(top, "prompt").unwrap_or_default(),
        params: GenParams {
            n: int("n", 1),
            steps: int("steps", default_steps),
            width: int("width", 512),
            height: int("height", 512),
            sampler_name: text(&params, "sampler_name").unwrap_or_else(|| "k_euler_a".to_owned()),
            cfg_scale: params
                .get("cfg_scale")
                .and_then(Value::as_f64)
                .unwrap_or(5.0),
            seed: text(&params, "seed"),
            loras: count("loras"),
            tis: count("tis"),
            post_processing: params
                .get("post_processing")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            control_type,
        },
        models: top
            .get("models")
            .and_then(Value::as_array)
            .map(|models| {
                models
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|| vec!["stable_diffusion".to_owned()]),
        nsfw: flag("nsfw", true),
        slow_workers: flag("slow_workers", true),
        workers: top
            .get("workers")
            .and_then(Value::as_array)
            .map(|workers| {
                workers
                    .iter()
                    .filter_map(Value::as_str)
                    .take(5)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        worker_blacklist: flag("worker_blacklist", false),
        r2: flag("r2", true),
        shared: flag("shared", false),
        dry_run: flag("dry_run", false),
        disable_batching: flag("disable_batching", false),
        allow_downgrade: flag("allow_downgrade", false),
        webhook: text(top, "webhook"),
        proxied_account: text(top, "proxied_account"),
        source_image: text(top, "source_image").filter(|s| !s.is_empty()),
        source_processing: text(top, "source_processing").unwrap_or_else(|| "img2img".to_owned()),
        source_mask: text(top, "source_mask").filter(|s| !s.is_empty()),
        extra_source_images: top
            .get("extra_source_images")
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        (
                            text(item.as_object().unwrap_or(&Map::new()), "image")
                                .unwrap_or_default(),
                            item.get("strength").and_then(Value::as_f64),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The server caps source images at this many pixels (AH `convert_source_image_to_pil`).
const MAX_SOURCE_PIXELS: u64 = 3072 * 3072;

/// The source-image rules of the server's `validate()` (AH `stable.py`), in
/// its order; they run before the loras/TIs checks and need no decoding.
pub(crate) fn check_sources(input: &GenerateInput) -> Result<(), ApiError> {
    let bad = |rc: &'static str, message: &str| Err(ApiError::rc(400, rc, message));
    let control = input.params.control_type.is_some();
    let has_source = input.source_image.is_some();
    if !has_source && input.source_mask.is_some() {
        return bad(
            "SourceMaskUnnecessary",
            "Please do not pass a source_mask unless you are sending a source_image as well",
        );
    }
    if control && !has_source {
        return bad(
            "ControlNetSourceMissing",
            "Controlnet Requires a source image.",
        );
    }
    if control && input.source_processing == "inpainting" {
        return bad(
            "ControlNetInpaintingMismatch",
            "ControlNet cannot be used with inpainting at this time",
        );
    }
    // The sim guesses a model's baseline from its name, as its kudos do.
    let lower: Vec<String> = input.models.iter().map(|m| m.to_lowercase()).collect();
    let cascade = |m: &String| m.contains("cascade");
    if lower.iter().any(|m| m.contains("xl") && !cascade(m)) && control {
        return bad(
            "ControlNetMismatch",
            "ControlNet does not work with SDXL currently.",
        );
    }
    if lower.iter().any(cascade) && control {
        return bad(
            "ControlNetMismatch",
            "ControlNet does not work with Stable Cascade currently.",
        );
    }
    if input.source_processing == "remix" && lower.iter().any(|m| !cascade(m)) {
        return bad(
            "InvalidRemix",
            "Image Remix is only available for Stable Cascade models.",
        );
    }
    if !input.extra_source_images.is_empty() {
        if input.extra_source_images.len() > 5 {
            // The server's rc really ends with a full stop.
            return bad(
                "TooManyExtraSourceImages.",
                "You can send a maximum of 5 extra source images.",
            );
        }
        if input.source_processing != "remix" {
            return bad(
                "InvalidExtraSourceImages.",
                "This request type does not accept extra source images.",
            );
        }
    }
    Ok(())
}

/// A decoded source image.
struct Decoded {
    format: &'static str,
    width: u32,
    height: u32,
    has_alpha: bool,
}

/// `ImageValidationFailed` as the server words it.
fn image_validation_failed(message: &str) -> ApiError {
    ApiError::rc(
        400,
        "ImageValidationFailed",
        format!("Image validation failed. {message}"),
    )
}

const DEFAULT_IMAGE_MESSAGE: &str = "Please ensure the source image payload is either a URL containing an image or a valid base64 encoded image.";

/// Decodes one base64 source as the server does on activation: a URL is
/// fetched there (the sim has no internet, so it always fails, like a
/// server that cannot reach it); anything that is not an image, or has more
/// than 3072×3072 pixels, is `ImageValidationFailed`.
fn decode_image(text: &str) -> Result<Decoded, ApiError> {
    if text.contains("http") {
        return Err(image_validation_failed(
            "Something went wrong when retrieving image url.",
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| image_validation_failed(DEFAULT_IMAGE_MESSAGE))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|_| image_validation_failed(DEFAULT_IMAGE_MESSAGE))?;
    let format = match reader.format() {
        Some(image::ImageFormat::WebP) => "webp",
        Some(image::ImageFormat::Png) => "png",
        Some(image::ImageFormat::Jpeg) => "jpeg",
        _ => return Err(image_validation_failed(DEFAULT_IMAGE_MESSAGE)),
    };
    let decoder = reader
        .into_decoder()
        .map_err(|_| image_validation_failed(DEFAULT_IMAGE_MESSAGE))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_SOURCE_PIXELS {
        return Err(image_validation_failed(
            "Image size cannot exceed 3072*3072 pixels",
        ));
    }
    // PIL's `split()` gives four bands only for RGBA (LA has two).
    let has_alpha = matches!(
        decoder.color_type(),
        image::ColorType::Rgba8 | image::ColorType::Rgba16 | image::ColorType::Rgba32F
    );
    image::DynamicImage::from_decoder(decoder)
        .map_err(|_| image_validation_failed(DEFAULT_IMAGE_MESSAGE))?;
    Ok(Decoded {
        format,
        width,
        height,
        has_alpha,
    })
}

/// Decodes a request's source image, mask and extra images the way the
/// server's `activate_waiting_prompt` does (after pricing; dry runs never get
/// here), with its errors; `None` for a request without a source image.
pub(crate) fn decode_sources(input: &GenerateInput) -> Result<Option<SourceSeen>, ApiError> {
    let Some(source) = &input.source_image else {
        return Ok(None);
    };
    let image = decode_image(source)?;
    let mask = match &input.source_mask {
        Some(mask) => Some(decode_image(mask)?),
        None if input.source_processing == "inpainting" && !image.has_alpha => {
            return Err(ApiError::rc(
                400,
                "InpaintingMissingMask",
                "Image validation failed. Inpainting requests must either include a mask, or an alpha channel.",
            ))
        }
        None => None,
    };
    let mut extra = Vec::with_capacity(input.extra_source_images.len());
    for (text, strength) in &input.extra_source_images {
        extra.push((decode_image(text)?.format.to_owned(), *strength));
    }
    Ok(Some(SourceSeen {
        processing: input.source_processing.clone(),
        format: image.format.to_owned(),
        width: image.width,
        height: image.height,
        has_alpha: image.has_alpha,
        mask_format: mask.map(|m| m.format.to_owned()),
        extra,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_the_servers() {
        let input = parse_generate(&json!({"prompt": "x"})).unwrap();
        assert_eq!(input.models, ["stable_diffusion"]);
        assert!(input.nsfw && input.r2 && input.slow_workers);
        assert_eq!(
            (input.params.n, input.params.steps, input.params.width),
            (1, 30, 512)
        );
        assert_eq!(input.params.cfg_scale, 5.0);
        assert_eq!(input.params.sampler_name, "k_euler_a");
    }

    fn webp_b64(width: u32, height: u32, alpha: bool) -> String {
        let mut out = Vec::new();
        let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
        let result = if alpha {
            image::RgbaImage::new(width, height).write_with_encoder(encoder)
        } else {
            image::RgbImage::new(width, height).write_with_encoder(encoder)
        };
        result.unwrap();
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    fn rc_of(body: Value) -> (&'static str, String) {
        let input = parse_generate(&body).expect("schema-valid body");
        let error = check_sources(&input)
            .and_then(|()| decode_sources(&input).map(|_| ()))
            .expect_err("body must be refused");
        assert_eq!(error.status, 400);
        (error.rc.unwrap_or_default(), error.message)
    }

    #[test]
    fn a_mask_without_a_source_is_unnecessary() {
        let (rc, message) = rc_of(json!({"prompt": "x", "source_mask": webp_b64(8, 8, false)}));
        assert_eq!(rc, "SourceMaskUnnecessary");
        assert!(message.starts_with("Please do not pass a source_mask"));
    }

    #[test]
    fn controlnet_needs_a_source_and_no_inpainting() {
        let (rc, _) = rc_of(json!({"prompt": "x", "params": {"control_type": "canny"}}));
        assert_eq!(rc, "ControlNetSourceMissing");
        let (rc, _) = rc_of(json!({"prompt": "x", "params": {"control_type": "canny"},
            "source_image": webp_b64(8, 8, true), "source_processing": "inpainting"}));
        assert_eq!(rc, "ControlNetInpaintingMismatch");
        let (rc, message) = rc_of(json!({"prompt": "x", "params": {"control_type": "canny"},
            "source_image": webp_b64(8, 8, false), "models": ["SDXL 1.0"]}));
        assert_eq!(
            (rc, message.as_str()),
            (
                "ControlNetMismatch",
                "ControlNet does not work with SDXL currently."
            )
        );
    }

    #[test]
    fn remix_is_for_stable_cascade_only() {
        let (rc, _) = rc_of(json!({"prompt": "x", "source_processing": "remix",
            "source_image": webp_b64(8, 8, false), "models": ["stable_diffusion"]}));
        assert_eq!(rc, "InvalidRemix");
        let input = parse_generate(&json!({"prompt": "x", "source_processing": "remix",
            "source_image": webp_b64(8, 8, false), "models": ["Stable Cascade 1.0"],
            "extra_source_images": [{"image": webp_b64(4, 4, false), "strength": 0.5}]}))
        .unwrap();
        check_sources(&input).unwrap();
        let seen = decode_sources(&input).unwrap().unwrap();
        assert_eq!(seen.extra, [("webp".to_owned(), Some(0.5))]);
    }

    #[test]
    fn extra_source_images_are_at_most_five_and_remix_only() {
        let one = json!({"image": webp_b64(4, 4, false)});
        let (rc, _) = rc_of(json!({"prompt": "x", "source_processing": "remix",
            "models": ["Stable Cascade 1.0"], "source_image": webp_b64(8, 8, false),
            "extra_source_images": vec![one.clone(); 6]}));
        assert_eq!(rc, "TooManyExtraSourceImages.");
        let (rc, _) = rc_of(json!({"prompt": "x", "source_image": webp_b64(8, 8, false),
            "extra_source_images": [one]}));
        assert_eq!(rc, "InvalidExtraSourceImages.");
    }

    #[test]
    fn sources_must_decode_to_images_within_the_pixel_limit() {
        for garbage in ["not base64!", "aGVsbG8="] {
            let (rc, message) = rc_of(json!({"prompt": "x", "source_image": garbage}));
            assert_eq!(rc, "ImageValidationFailed");
            assert!(
                message.starts_with("Image validation failed. Please ensure"),
                "{message}"
            );
        }
        let (rc, _) =
            rc_of(json!({"prompt": "x", "source_image": "https://example.invalid/a.png"}));
        assert_eq!(rc, "ImageValidationFailed");
        let (rc, message) =
            rc_of(json!({"prompt": "x", "source_image": webp_b64(3073, 3072, false)}));
        assert_eq!(rc, "ImageValidationFailed");
        assert!(message.ends_with("Image size cannot exceed 3072*3072 pixels"));
        let (rc, _) = rc_of(json!({"prompt": "x", "source_image": webp_b64(8, 8, false),
            "source_mask": "bm90IGFuIGltYWdl"}));
        assert_eq!(rc, "ImageValidationFailed");
    }

    #[test]
    fn inpainting_needs_a_mask_or_alpha() {
        let (rc, message) = rc_of(json!({"prompt": "x", "source_image": webp_b64(8, 8, false),
            "source_processing": "inpainting"}));
        assert_eq!(rc, "InpaintingMissingMask");
        assert!(message.contains("must either include a mask, or an alpha channel"));
        for body in [
            json!({"prompt": "x", "source_image": webp_b64(8, 8, true), "source_processing": "inpainting"}),
            json!({"prompt": "x", "source_image": webp_b64(8, 8, false), "source_processing": "inpainting",
                "source_mask": webp_b64(8, 8, false)}),
        ] {
            let input = parse_generate(&body).unwrap();
            check_sources(&input).unwrap();
            let seen = decode_sources(&input).unwrap().unwrap();
            assert_eq!(
                (seen.processing.as_str(), seen.format.as_str()),
                ("inpainting", "webp")
            );
        }
    }

    #[test]
    fn an_empty_source_is_none_and_img2img_is_the_default() {
        let input = parse_generate(&json!({"prompt": "x", "source_image": ""})).unwrap();
        assert!(input.source_image.is_none());
        assert!(decode_sources(&input).unwrap().is_none());
        let input =
            parse_generate(&json!({"prompt": "x", "source_image": webp_b64(8, 4, false)})).unwrap();
        let seen = decode_sources(&input).unwrap().unwrap();
        assert_eq!(
            (
                seen.processing.as_str(),
                seen.width,
                seen.height,
                seen.has_alpha,
                seen.mask_format
            ),
            ("img2img", 8, 4, false, None)
        );
    }
}
