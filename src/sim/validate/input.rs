//! A generate body turned into a typed request: the schema check of the
//! whole body (top level, `params`, `extra_source_images` items), then the
//! server's defaults for every field left out (AH
//! `ImageWaitingPrompt.extract_params`).
//!
//! It must not apply a rule the schema does not state (those answer with an
//! `rc` later, in `sources` and `state`), nor a default kinder than the
//! server's.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::jsonschema::check_fields;
use super::python_repr::py_repr;
use super::schema::{EXTRA_SOURCE_IMAGE, PARAMS, TOP_LEVEL};

/// Schema failures by field path: the `errors` map of the 400.
type FieldErrors = BTreeMap<String, String>;

type JsonObject = Map<String, Value>;

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
    pub seed_variation: Option<u32>,
    pub loras: usize,
    pub tis: usize,
    pub post_processing: Vec<String>,
    pub control_type: Option<String>,
}

/// Checks `body` against the schema; on failure returns the `errors` map.
pub(crate) fn parse_generate(body: &Value) -> Result<GenerateInput, FieldErrors> {
    let (top, params) = check_schema(body)?;
    Ok(with_defaults(top, &params))
}

/// The schema check of the whole body: its `errors` map, or the body and
/// its `params` object (empty when absent).
fn check_schema(body: &Value) -> Result<(&JsonObject, JsonObject), FieldErrors> {
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
    Ok((top, params))
}

/// The request a schema-valid body makes, with the server's defaults.
fn with_defaults(top: &Map<String, Value>, params: &Map<String, Value>) -> GenerateInput {
    let flag =
        |name: &str, default: bool| top.get(name).and_then(Value::as_bool).unwrap_or(default);
    GenerateInput {
        prompt: text(top, "prompt").unwrap_or_default(),
        params: gen_params(params),
        models: strings(top.get("models")).unwrap_or_else(|| vec!["stable_diffusion".to_owned()]),
        nsfw: flag("nsfw", true),
        slow_workers: flag("slow_workers", true),
        workers: strings(top.get("workers"))
            .map(|workers| workers.into_iter().take(5).collect())
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
    }
}

/// `params` with the server's defaults (30 steps, 20 with ControlNet).
fn gen_params(params: &Map<String, Value>) -> GenParams {
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
    let control_type = text(params, "control_type");
    let default_steps = if control_type.is_some() { 20 } else { 30 };
    GenParams {
        n: int("n", 1),
        steps: int("steps", default_steps),
        width: int("width", 512),
        height: int("height", 512),
        sampler_name: text(params, "sampler_name").unwrap_or_else(|| "k_euler_a".to_owned()),
        cfg_scale: params
            .get("cfg_scale")
            .and_then(Value::as_f64)
            .unwrap_or(5.0),
        seed: text(params, "seed"),
        seed_variation: params
            .get("seed_variation")
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok()),
        loras: count("loras"),
        tis: count("tis"),
        post_processing: strings(params.get("post_processing")).unwrap_or_default(),
        control_type,
    }
}

fn text(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// The strings of an array (other items skipped); none when not an array.
fn strings(value: Option<&Value>) -> Option<Vec<String>> {
    value.and_then(Value::as_array).map(|items| {
        items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
