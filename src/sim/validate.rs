//! Validation of `POST /v2/generate/async` bodies, in the two layers the real
//! server has: the flask-restx JSON-schema check (400 with an `errors` map
//! keyed by field path, jsonschema's Python-flavoured messages, no `rc`),
//! then the reqparse defaults that turn the body into a request.
//!
//! Owns the schema table and the typed [`GenerateInput`]. The rc-style
//! checks that need a user or the queue (TooManyLoras, KudosUpfront, ...)
//! live in `state`, because on the real server they run later.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Samplers the schema accepts (AH `KNOWN_SAMPLERS`).
pub(crate) const KNOWN_SAMPLERS: &[&str] = &[
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

/// Shape of one schema field.
enum Kind {
    Str {
        min_len: Option<usize>,
        max_len: Option<usize>,
        one_of: Option<&'static [&'static str]>,
    },
    Int {
        min: i64,
        max: i64,
        multiple_of: Option<i64>,
    },
    Num {
        min: f64,
        max: f64,
    },
    Bool,
    Array {
        items: &'static Kind,
        unique: bool,
    },
    Object,
}

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

const TOP_LEVEL: &[(&str, Kind)] = &[
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

const PARAMS: &[(&str, Kind)] = &[
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
    })
}

fn check_fields(
    object: &Map<String, Value>,
    schema: &[(&str, Kind)],
    prefix: &str,
    errors: &mut BTreeMap<String, String>,
) {
    for (name, kind) in schema {
        if let Some(value) = object.get(*name) {
            check_value(value, kind, &format!("{prefix}{name}"), errors);
        }
    }
}

fn check_value(value: &Value, kind: &Kind, path: &str, errors: &mut BTreeMap<String, String>) {
    let mut fail = |message: String| {
        errors.entry(path.to_owned()).or_insert(message);
    };
    let repr = py_repr(value);
    match kind {
        Kind::Str {
            min_len,
            max_len,
            one_of,
        } => {
            let Some(text) = value.as_str() else {
                return fail(format!("{repr} is not of type 'string'"));
            };
            let chars = text.chars().count();
            if let Some(allowed) = one_of {
                if !allowed.contains(&text) {
                    let list: Vec<String> = allowed.iter().map(|item| py_str_repr(item)).collect();
                    return fail(format!("{repr} is not one of [{}]", list.join(", ")));
                }
            }
            if min_len.is_some_and(|min| chars < min) {
                return fail(format!("{repr} is too short"));
            }
            if max_len.is_some_and(|max| chars > max) {
                fail(format!("{repr} is too long"));
            }
        }
        Kind::Int {
            min,
            max,
            multiple_of,
        } => {
            // Draft 4 (flask-restx's validator): 3.0 is a number, not an integer.
            let Some(number) = value.as_i64() else {
                return fail(format!("{repr} is not of type 'integer'"));
            };
            if let Some(step) = multiple_of {
                if number % step != 0 {
                    return fail(format!("{repr} is not a multiple of {step}"));
                }
            }
            if number < *min {
                fail(format!("{repr} is less than the minimum of {min}"));
            } else if number > *max {
                fail(format!("{repr} is greater than the maximum of {max}"));
            }
        }
        Kind::Num { min, max } => {
            let Some(number) = value.as_f64() else {
                return fail(format!("{repr} is not of type 'number'"));
            };
            if number < *min {
                fail(format!(
                    "{repr} is less than the minimum of {}",
                    py_float_bound(*min)
                ));
            } else if number > *max {
                fail(format!(
                    "{repr} is greater than the maximum of {}",
                    py_float_bound(*max)
                ));
            }
        }
        Kind::Bool => {
            if !value.is_boolean() {
                fail(format!("{repr} is not of type 'boolean'"));
            }
        }
        Kind::Object => {
            if !value.is_object() {
                fail(format!("{repr} is not of type 'object'"));
            }
        }
        Kind::Array { items, unique } => {
            let Some(array) = value.as_array() else {
                return fail(format!("{repr} is not of type 'array'"));
            };
            if *unique {
                let has_duplicate = array
                    .iter()
                    .enumerate()
                    .any(|(index, item)| array[..index].contains(item));
                if has_duplicate {
                    return fail(format!("{repr} has non-unique elements"));
                }
            }
            for (index, item) in array.iter().enumerate() {
                check_value(item, items, &format!("{path}.{index}"), errors);
            }
        }
    }
}

/// The schema bounds are written as Python ints where they are whole (`max=100`).
fn py_float_bound(bound: f64) -> String {
    if bound.fract() == 0.0 {
        format!("{}", bound as i64)
    } else {
        format!("{bound}")
    }
}

/// Python's `repr()` of a JSON value, as jsonschema puts it in its messages.
pub(crate) fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => int.to_string(),
            (None, Some(uint), _) => uint.to_string(),
            (_, _, Some(float)) if float.fract() == 0.0 && float.abs() < 1e16 => {
                format!("{float:.1}")
            }
            _ => number.to_string(),
        },
        Value::String(text) => py_str_repr(text),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(key, item)| format!("{}: {}", py_str_repr(key), py_repr(item)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

fn py_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ch if ch == quote => {
                out.push('\\');
                out.push(ch);
            }
            ch => out.push(ch),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
