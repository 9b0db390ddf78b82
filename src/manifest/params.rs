//! Generation parameters: the rules the real Horde enforces, mirrored.
//!
//! A manifest may set any txt2img parameter the Horde accepts, in `defaults`,
//! a job's `params` or a `matrix` axis. Each is checked here against the same
//! limits as the server's schema (docs/horde-api.md §1.1), so a manifest
//! that validates never earns a 400, and is normalised to one canonical JSON
//! value (`7` and `7.0` for `cfg_scale` are the same parameter, and so the same
//! job key). This module knows nothing of YAML positions or HTTP.

use serde_json::{Number, Value};

/// Samplers the Horde knows (`KNOWN_SAMPLERS` in the server's `consts.py`).
pub const KNOWN_SAMPLERS: &[&str] = &[
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

/// Post-processors the Horde knows; the first four are upscalers, of which a
/// request may name at most one (`TooManyUpscalers`).
pub const KNOWN_POST_PROCESSORS: &[&str] = &[
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
    "GFPGAN",
    "CodeFormers",
    "strip_background",
];
const UPSCALERS: &[&str] = &[
    "RealESRGAN_x4plus",
    "RealESRGAN_x2plus",
    "RealESRGAN_x4plus_anime_6B",
    "NMKD_Siax",
    "4x_AnimeSharp",
];

/// ControlNet types the Horde's schema accepts (`control_type`).
pub const CONTROL_TYPES: &[&str] = &[
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

/// What a parameter's value must be.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    Int {
        min: i64,
        max: i64,
        multiple_of: i64,
    },
    Float {
        min: f64,
        max: f64,
        max_decimals: Option<u32>,
    },
    Bool,
    Sampler,
    ControlType,
    PostProcessing,
    Loras,
    Tis,
}

/// One parameter the manifest may set.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    pub name: &'static str,
    pub rule: Rule,
    pub description: &'static str,
}

const fn int(min: i64, max: i64) -> Rule {
    Rule::Int {
        min,
        max,
        multiple_of: 1,
    }
}

/// Every parameter a manifest may set, sorted by name. `n` and `seed` are not
/// here on purpose: horde-batch sets `n` from `images` and `run.max_n`, and
/// seeds come from a job's `seeds`.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "cfg_scale",
        rule: Rule::Float {
            min: 0.0,
            max: 100.0,
            max_decimals: Some(2),
        },
        description: "Classifier-free guidance, 0 to 100, at most 2 decimals.",
    },
    ParamSpec {
        name: "clip_skip",
        rule: int(1, 12),
        description: "CLIP layers to skip, 1 to 12.",
    },
    ParamSpec {
        name: "control_type",
        rule: Rule::ControlType,
        description: "ControlNet type; needs `source_image`, not with inpainting.",
    },
    ParamSpec {
        name: "denoising_strength",
        rule: Rule::Float {
            min: 0.01,
            max: 1.0,
            max_decimals: None,
        },
        description: "Denoising strength, 0.01 to 1.",
    },
    ParamSpec {
        name: "facefixer_strength",
        rule: Rule::Float {
            min: 0.0,
            max: 1.0,
            max_decimals: None,
        },
        description: "Face fixer strength, 0 to 1.",
    },
    ParamSpec {
        name: "height",
        rule: Rule::Int {
            min: 64,
            max: 3072,
            multiple_of: 64,
        },
        description: "Height in pixels, 64 to 3072, a multiple of 64.",
    },
    ParamSpec {
        name: "hires_fix",
        rule: Rule::Bool,
        description: "Generate at a lower resolution first, then upscale.",
    },
    ParamSpec {
        name: "hires_fix_denoising_strength",
        rule: Rule::Float {
            min: 0.01,
            max: 1.0,
            max_decimals: None,
        },
        description: "Denoising strength of the hires-fix pass, 0.01 to 1.",
    },
    ParamSpec {
        name: "image_is_control",
        rule: Rule::Bool,
        description: "The source image is already a ControlNet map.",
    },
    ParamSpec {
        name: "karras",
        rule: Rule::Bool,
        description: "Karras noise schedule (the server's default is true).",
    },
    ParamSpec {
        name: "loras",
        rule: Rule::Loras,
        description: "At most 5 LoRAs: {name, model, clip, inject_trigger, is_version}.",
    },
    ParamSpec {
        name: "post_processing",
        rule: Rule::PostProcessing,
        description: "Post-processors to apply, at most one upscaler.",
    },
    ParamSpec {
        name: "return_control_map",
        rule: Rule::Bool,
        description: "Return the ControlNet map instead of a generated image.",
    },
    ParamSpec {
        name: "sampler_name",
        rule: Rule::Sampler,
        description: "One of the Horde's known samplers.",
    },
    ParamSpec {
        name: "seed_variation",
        rule: int(1, 1000),
        description: "Seed increment between images of one request, 1 to 1000.",
    },
    ParamSpec {
        name: "steps",
        rule: int(1, 500),
        description: "Sampling steps, 1 to 500.",
    },
    ParamSpec {
        name: "tiling",
        rule: Rule::Bool,
        description: "Make the image tile seamlessly.",
    },
    ParamSpec {
        name: "tis",
        rule: Rule::Tis,
        description: "At most 20 textual inversions: {name, inject_ti, strength}.",
    },
    ParamSpec {
        name: "transparent",
        rule: Rule::Bool,
        description: "Transparent background (supported models only).",
    },
    ParamSpec {
        name: "width",
        rule: Rule::Int {
            min: 64,
            max: 3072,
            multiple_of: 64,
        },
        description: "Width in pixels, 64 to 3072, a multiple of 64.",
    },
];

/// The parameters horde-batch sends even when the manifest does not set them,
/// because the server's defaults differ from its published schema.
pub const BUILT_IN_DEFAULTS: &[(&str, BuiltIn)] = &[
    ("cfg_scale", BuiltIn::Float(7.0)),
    ("height", BuiltIn::Int(512)),
    ("karras", BuiltIn::Bool(true)),
    ("sampler_name", BuiltIn::Str("k_euler_a")),
    ("steps", BuiltIn::Int(25)),
    ("width", BuiltIn::Int(512)),
];

/// A built-in default value.
#[derive(Debug, Clone, Copy)]
pub enum BuiltIn {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'static str),
}

impl BuiltIn {
    pub fn to_value(self) -> Value {
        match self {
            BuiltIn::Int(v) => Value::from(v),
            BuiltIn::Float(v) => Value::Number(float_number(v)),
            BuiltIn::Bool(v) => Value::Bool(v),
            BuiltIn::Str(v) => Value::from(v),
        }
    }
}

/// The spec of a parameter, if the Horde has one by that name.
pub fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|p| p.name == name)
}

/// Why a value was refused; the caller adds where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamProblem(pub String);

fn problem(message: impl Into<String>) -> ParamProblem {
    ParamProblem(message.into())
}

fn float_number(v: f64) -> Number {
    // Finite by construction: every float here passed a range check or is a constant.
    Number::from_f64(v).unwrap_or_else(|| Number::from(0))
}

/// Checks `value` against `spec` and returns its canonical form.
pub fn canonicalize(spec: &ParamSpec, value: &Value) -> Result<Value, ParamProblem> {
    match spec.rule {
        Rule::Int {
            min,
            max,
            multiple_of,
        } => {
            let v = as_integer(value).ok_or_else(|| {
                problem(format!(
                    "expected a whole number, found {}",
                    describe(value)
                ))
            })?;
            if v < min || v > max {
                return Err(problem(format!(
                    "{v} is out of range: {} must be {min} to {max}",
                    spec.name
                )));
            }
            if v % multiple_of != 0 {
                return Err(problem(format!("{v} is not a multiple of {multiple_of}")));
            }
            Ok(Value::from(v))
        }
        Rule::Float {
            min,
            max,
            max_decimals,
        } => {
            let v = value
                .as_f64()
                .ok_or_else(|| problem(format!("expected a number, found {}", describe(value))))?;
            if !v.is_finite() || v < min || v > max {
                return Err(problem(format!(
                    "{v} is out of range: {} must be {min} to {max}",
                    spec.name
                )));
            }
            if let Some(decimals) = max_decimals {
                let scale = 10f64.powi(decimals as i32);
                if ((v * scale).round() - v * scale).abs() > 1e-6 {
                    return Err(problem(format!(
                        "{v} has more than {decimals} decimals (the Horde answers BadCFGDecimals)"
                    )));
                }
            }
            Ok(Value::Number(float_number(v)))
        }
        Rule::Bool => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| problem(format!("expected true or false, found {}", describe(value)))),
        Rule::Sampler => {
            let name = value.as_str().ok_or_else(|| {
                problem(format!(
                    "expected a sampler name, found {}",
                    describe(value)
                ))
            })?;
            if KNOWN_SAMPLERS.contains(&name) {
                Ok(Value::from(name))
            } else {
                Err(problem(format!(
                    "unknown sampler `{name}`{}; known samplers: {}",
                    suggest(name, KNOWN_SAMPLERS.iter().copied()),
                    KNOWN_SAMPLERS.join(", ")
                )))
            }
        }
        Rule::ControlType => {
            let name = value.as_str().ok_or_else(|| {
                problem(format!(
                    "expected a ControlNet type, found {}",
                    describe(value)
                ))
            })?;
            if CONTROL_TYPES.contains(&name) {
                Ok(Value::from(name))
            } else {
                Err(problem(format!(
                    "unknown ControlNet type `{name}`{}; known: {}",
                    suggest(name, CONTROL_TYPES.iter().copied()),
                    CONTROL_TYPES.join(", ")
                )))
            }
        }
        Rule::PostProcessing => {
            let items = value.as_array().ok_or_else(|| {
                problem(format!(
                    "expected a list of post-processors, found {}",
                    describe(value)
                ))
            })?;
            let mut names: Vec<&str> = Vec::with_capacity(items.len());
            for item in items {
                let name = item.as_str().ok_or_else(|| {
                    problem(format!(
                        "expected a post-processor name, found {}",
                        describe(item)
                    ))
                })?;
                if !KNOWN_POST_PROCESSORS.contains(&name) {
                    return Err(problem(format!(
                        "unknown post-processor `{name}`{}; known: {}",
                        suggest(name, KNOWN_POST_PROCESSORS.iter().copied()),
                        KNOWN_POST_PROCESSORS.join(", ")
                    )));
                }
                if names.contains(&name) {
                    return Err(problem(format!("post-processor `{name}` is listed twice")));
                }
                names.push(name);
            }
            if names.iter().filter(|n| UPSCALERS.contains(n)).count() > 1 {
                return Err(problem(
                    "at most one upscaler per request (the Horde answers TooManyUpscalers)",
                ));
            }
            Ok(Value::from(names))
        }
        Rule::Loras => canonical_list(
            value,
            5,
            "LoRAs",
            "TooManyLoras",
            &[
                ("name", Field::Text { required: true }),
                (
                    "model",
                    Field::Float {
                        min: -5.0,
                        max: 5.0,
                    },
                ),
                (
                    "clip",
                    Field::Float {
                        min: -5.0,
                        max: 5.0,
                    },
                ),
                ("inject_trigger", Field::Text { required: false }),
                ("is_version", Field::Bool),
            ],
        ),
        Rule::Tis => canonical_list(
            value,
            20,
            "textual inversions",
            "TooManyTIs",
            &[
                ("name", Field::Text { required: true }),
                ("inject_ti", Field::OneOf(&["prompt", "negprompt"])),
                (
                    "strength",
                    Field::Float {
                        min: -5.0,
                        max: 5.0,
                    },
                ),
            ],
        ),
    }
}

/// A field of a LoRA or TI entry.
#[derive(Debug, Clone, Copy)]
enum Field {
    Text { required: bool },
    Float { min: f64, max: f64 },
    Bool,
    OneOf(&'static [&'static str]),
}

fn canonical_list(
    value: &Value,
    max: usize,
    what: &str,
    rc: &str,
    fields: &[(&str, Field)],
) -> Result<Value, ParamProblem> {
    let items = value.as_array().ok_or_else(|| {
        problem(format!(
            "expected a list of {what}, found {}",
            describe(value)
        ))
    })?;
    if items.len() > max {
        return Err(problem(format!(
            "{} {what} given, at most {max} are allowed (the Horde answers {rc})",
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let map = item.as_object().ok_or_else(|| {
            problem(format!(
                "entry {i}: expected a mapping, found {}",
                describe(item)
            ))
        })?;
        for key in map.keys() {
            if !fields.iter().any(|(name, _)| name == key) {
                return Err(problem(format!(
                    "entry {i}: unknown field `{key}`{}; expected one of {}",
                    suggest(key, fields.iter().map(|(n, _)| *n)),
                    fields
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut canonical = serde_json::Map::new();
        for (name, field) in fields {
            let Some(v) = map.get(*name) else {
                if matches!(field, Field::Text { required: true }) {
                    return Err(problem(format!("entry {i}: `{name}` is required")));
                }
                continue;
            };
            let checked = match field {
                Field::Text { .. } => v
                    .as_str()
                    .filter(|s| !s.is_empty() && s.len() <= 255)
                    .map(Value::from),
                Field::Float { min, max } => v
                    .as_f64()
                    .filter(|f| f >= min && f <= max)
                    .map(|f| Value::Number(float_number(f))),
                Field::Bool => v.as_bool().map(Value::Bool),
                Field::OneOf(options) => {
                    v.as_str().filter(|s| options.contains(s)).map(Value::from)
                }
            };
            let checked = checked.ok_or_else(|| {
                problem(format!(
                    "entry {i}: `{name}` must be {}, found {}",
                    field_expectation(field),
                    describe(v)
                ))
            })?;
            canonical.insert((*name).to_owned(), checked);
        }
        out.push(Value::Object(canonical));
    }
    Ok(Value::Array(out))
}

fn field_expectation(field: &Field) -> String {
    match field {
        Field::Text { .. } => "a non-empty string of at most 255 characters".to_owned(),
        Field::Float { min, max } => format!("a number from {min} to {max}"),
        Field::Bool => "true or false".to_owned(),
        Field::OneOf(options) => format!("one of {}", options.join(", ")),
    }
}

fn as_integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

/// A short description of a value for error messages.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("`{b}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::String(s) => format!("the string `{s}`"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

/// ", did you mean `x`?" when a candidate is close to `word`, else "".
pub fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Canonical text of a value, for job keys: JSON with sorted object keys.
pub fn canonical_text(value: &Value, out: &mut String) {
    use std::fmt::Write;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", Value::from(key.as_str()));
                canonical_text(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_text(item, out);
            }
            out.push(']');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(name: &str, value: Value) -> Result<Value, ParamProblem> {
        canonicalize(spec(name).expect("known param"), &value)
    }

    #[test]
    fn dimensions_follow_the_server_schema() {
        assert_eq!(check("width", json!(512)).unwrap(), json!(512));
        assert!(check("width", json!(500))
            .unwrap_err()
            .0
            .contains("multiple of 64"));
        assert!(check("height", json!(3136))
            .unwrap_err()
            .0
            .contains("out of range"));
        assert!(check("height", json!(0)).is_err());
    }

    #[test]
    fn cfg_scale_is_canonical_and_at_most_two_decimals() {
        assert_eq!(
            check("cfg_scale", json!(7)).unwrap(),
            check("cfg_scale", json!(7.0)).unwrap()
        );
        assert!(check("cfg_scale", json!(7.25)).is_ok());
        assert!(check("cfg_scale", json!(7.255))
            .unwrap_err()
            .0
            .contains("BadCFGDecimals"));
    }

    #[test]
    fn samplers_and_post_processors_are_checked() {
        assert!(check("sampler_name", json!("k_euler_a")).is_ok());
        assert!(check("sampler_name", json!("k_eular_a"))
            .unwrap_err()
            .0
            .contains("did you mean `k_euler_a`"));
        assert!(check("post_processing", json!(["GFPGAN", "RealESRGAN_x4plus"])).is_ok());
        assert!(
            check("post_processing", json!(["NMKD_Siax", "RealESRGAN_x4plus"]))
                .unwrap_err()
                .0
                .contains("TooManyUpscalers")
        );
    }

    #[test]
    fn loras_are_bounded() {
        let six = json!([{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}, {"name": "e"}, {"name": "f"}]);
        assert!(check("loras", six).unwrap_err().0.contains("TooManyLoras"));
        assert!(check("loras", json!([{"name": "x", "strength": 1}]))
            .unwrap_err()
            .0
            .contains("unknown field"));
        assert_eq!(
            check("loras", json!([{"name": "x", "model": 1}])).unwrap(),
            json!([{"name": "x", "model": 1.0}])
        );
    }

    #[test]
    fn canonical_text_sorts_keys() {
        let mut a = String::new();
        canonical_text(&json!({"b": 1, "a": [true, "x"]}), &mut a);
        assert_eq!(a, r#"{"a":[true,"x"],"b":1}"#);
    }
}
