//! The schema of `POST /v2/generate/async` as the real server's flask-restx
//! models declare it: every top-level and `params` field with its type and
//! bounds, the known samplers, post-processors, upscalers and ControlNet
//! types, and the `extra_source_images` item.
//!
//! Tables only; `jsonschema` checks a body against them. A field the server
//! bounds must be bounded here the same way, never looser.

use super::jsonschema::Kind;

/// Samplers the schema accepts (AH `KNOWN_SAMPLERS`).
const KNOWN_SAMPLERS: &[&str] = &[
    "k_lms",
    "k_heun",
    "k_euler",
    "k_euler_a",
    "k_dpm_2",
    "k_dpm_2_a",
    "k_dpm_fast",
    "k_dpm_adaptive",
    "k_dpmpp_2s_a",
    "k_dpmpp_2m",
    "dpmsolver",
    "k_dpmpp_sde",
    "DDIM",
    "lcm",
];

const KNOWN_POST_PROCESSORS: &[&str] = &[
    "GFPGAN",
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
    "CodeFormers",
    "strip_background",
];

/// Post-processors that count toward the one-upscaler limit.
pub(crate) const KNOWN_UPSCALERS: &[&str] = &[
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
];

const CONTROL_TYPES: &[&str] = &[
    "canny",
    "hed",
    "depth",
    "normal",
    "openpose",
    "seg",
    "scribble",
    "fakescribbles",
    "hough",
];

const ANY_STR: Kind = Kind::Str {
    min_len: None,
    max_len: None,
    one_of: None,
};
const POST_PROCESSOR: Kind = Kind::Str {
    min_len: None,
    max_len: None,
    one_of: Some(KNOWN_POST_PROCESSORS),
};
const OBJECT: Kind = Kind::Object;
const SIZE: Kind = Kind::Int {
    min: 64,
    max: 3072,
    multiple_of: Some(64),
};

/// The top-level fields of the body.
pub(super) const TOP_LEVEL: &[(&str, Kind)] = &[
    (
        "prompt",
        Kind::Str {
            min_len: Some(1),
            max_len: None,
            one_of: None,
        },
    ),
    ("params", Kind::Object),
    (
        "models",
        Kind::Array {
            items: &ANY_STR,
            unique: false,
        },
    ),
    ("nsfw", Kind::Bool),
    ("censor_nsfw", Kind::Bool),
    ("trusted_workers", Kind::Bool),
    ("validated_backends", Kind::Bool),
    ("slow_workers", Kind::Bool),
    ("extra_slow_workers", Kind::Bool),
    (
        "workers",
        Kind::Array {
            items: &ANY_STR,
            unique: false,
        },
    ),
    ("worker_blacklist", Kind::Bool),
    ("source_image", ANY_STR),
    (
        "source_processing",
        Kind::Str {
            min_len: None,
            max_len: None,
            one_of: Some(&["img2img", "inpainting", "outpainting", "remix"]),
        },
    ),
    ("source_mask", ANY_STR),
    (
        "extra_source_images",
        Kind::Array {
            items: &OBJECT,
            unique: false,
        },
    ),
    ("r2", Kind::Bool),
    ("shared", Kind::Bool),
    ("replacement_filter", Kind::Bool),
    ("dry_run", Kind::Bool),
    ("proxied_account", ANY_STR),
    ("disable_batching", Kind::Bool),
    ("allow_downgrade", Kind::Bool),
    (
        "webhook",
        Kind::Str {
            min_len: Some(10),
            max_len: Some(1024),
            one_of: None,
        },
    ),
    ("style", ANY_STR),
];

/// The fields of `params`.
pub(super) const PARAMS: &[(&str, Kind)] = &[
    (
        "sampler_name",
        Kind::Str {
            min_len: None,
            max_len: None,
            one_of: Some(KNOWN_SAMPLERS),
        },
    ),
    (
        "cfg_scale",
        Kind::Num {
            min: 0.0,
            max: 100.0,
        },
    ),
    (
        "denoising_strength",
        Kind::Num {
            min: 0.01,
            max: 1.0,
        },
    ),
    (
        "hires_fix_denoising_strength",
        Kind::Num {
            min: 0.01,
            max: 1.0,
        },
    ),
    ("seed", ANY_STR),
    ("height", SIZE),
    ("width", SIZE),
    (
        "seed_variation",
        Kind::Int {
            min: 1,
            max: 1000,
            multiple_of: None,
        },
    ),
    (
        "post_processing",
        Kind::Array {
            items: &POST_PROCESSOR,
            unique: true,
        },
    ),
    ("karras", Kind::Bool),
    ("tiling", Kind::Bool),
    ("hires_fix", Kind::Bool),
    (
        "clip_skip",
        Kind::Int {
            min: 1,
            max: 12,
            multiple_of: None,
        },
    ),
    ("facefixer_strength", Kind::Num { min: 0.0, max: 1.0 }),
    (
        "loras",
        Kind::Array {
            items: &OBJECT,
            unique: false,
        },
    ),
    (
        "tis",
        Kind::Array {
            items: &OBJECT,
            unique: false,
        },
    ),
    ("special", Kind::Object),
    (
        "workflow",
        Kind::Str {
            min_len: None,
            max_len: None,
            one_of: Some(&["qr_code"]),
        },
    ),
    ("transparent", Kind::Bool),
    (
        "control_type",
        Kind::Str {
            min_len: None,
            max_len: None,
            one_of: Some(CONTROL_TYPES),
        },
    ),
    ("image_is_control", Kind::Bool),
    ("return_control_map", Kind::Bool),
    (
        "extra_texts",
        Kind::Array {
            items: &OBJECT,
            unique: false,
        },
    ),
    (
        "steps",
        Kind::Int {
            min: 1,
            max: 500,
            multiple_of: None,
        },
    ),
    (
        "n",
        Kind::Int {
            min: 1,
            max: 20,
            multiple_of: None,
        },
    ),
];

/// An `extra_source_images` item (AH `ExtraSourceImage`).
pub(super) const EXTRA_SOURCE_IMAGE: &[(&str, Kind)] = &[
    ("image", ANY_STR),
    (
        "strength",
        Kind::Num {
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
        },
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::super::parse_generate;

    fn errors_of(body: Value) -> BTreeMap<String, String> {
        parse_generate(&body).expect_err("body must be rejected")
    }

    #[test]
    fn messages_match_jsonschema() {
        let errors = errors_of(
            json!({"prompt": "x", "params": {"n": 21, "width": 100, "steps": 0,
            "sampler_name": "euler", "cfg_scale": 100.5, "seed": 5}}),
        );
        assert_eq!(errors["params.n"], "21 is greater than the maximum of 20");
        assert_eq!(errors["params.width"], "100 is not a multiple of 64");
        assert_eq!(errors["params.steps"], "0 is less than the minimum of 1");
        assert!(
            errors["params.sampler_name"].starts_with("'euler' is not one of ['k_lms', 'k_heun'")
        );
        assert_eq!(
            errors["params.cfg_scale"],
            "100.5 is greater than the maximum of 100"
        );
        assert_eq!(errors["params.seed"], "5 is not of type 'string'");
        assert_eq!(
            errors_of(json!({"prompt": ""}))["prompt"],
            "'' is too short"
        );
        assert_eq!(errors_of(json!({}))[""], "'prompt' is a required property");
        assert_eq!(
            errors_of(json!({"prompt": "x", "params": {"n": 2.0}}))["params.n"],
            "2.0 is not of type 'integer'"
        );
    }

    #[test]
    fn source_fields_are_schema_checked() {
        let errors = errors_of(json!({"prompt": "x", "source_processing": "blend",
            "source_image": 5, "extra_source_images": [{"image": 1, "strength": "a"}, 7]}));
        assert!(errors["source_processing"].starts_with("'blend' is not one of ['img2img'"));
        assert_eq!(errors["source_image"], "5 is not of type 'string'");
        assert_eq!(
            errors["extra_source_images.0.image"],
            "1 is not of type 'string'"
        );
        assert_eq!(
            errors["extra_source_images.0.strength"],
            "'a' is not of type 'number'"
        );
        assert_eq!(errors["extra_source_images.1"], "7 is not of type 'object'");
        let control = errors_of(json!({"prompt": "x", "params": {"control_type": "edges"}}));
        assert!(control["params.control_type"].starts_with("'edges' is not one of ['canny'"));
    }
}
