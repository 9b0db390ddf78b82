//! Source images (img2img, inpainting, outpainting, remix, ControlNet) in
//! the real server's two stages after the schema: the payload rules of its
//! `validate()` ([`check_sources`]), and the decoding done when a request
//! is activated ([`decode_sources`]), with the real rc codes and messages
//! (AH `stable.py`, `image.py`, `exceptions.py`).
//!
//! The simulator has no internet, so a source given as a URL always fails,
//! as on a server that cannot reach it. It must not accept an image the
//! server would refuse.

use base64::Engine as _;
use image::ImageDecoder as _;

use super::super::state::ApiError;
use super::super::stats::SourceSeen;
use super::GenerateInput;

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
    use serde_json::{json, Value};

    use super::*;
    use crate::sim::validate::parse_generate;

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
