//! The manifest's serde types: exactly what a YAML manifest may say.
//!
//! These types are the JSON Schema too (`horde-batch schema`), so editors with
//! yaml-language-server complete and check manifests. Values whose meaning
//! depends on other parts of the manifest (parameters, matrix axes, seeds) are
//! kept as raw JSON values here and checked in `compile`, which knows where
//! each value sits in the file. Nothing here does I/O.

use std::borrow::Cow;
use std::time::Duration;

use indexmap::IndexMap;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::alchemy::{AlchemyForm, CaptionFrom};
use super::params::{Rule, CONTROL_TYPES, KNOWN_POST_PROCESSORS, KNOWN_SAMPLERS, PARAMS};
use super::source::SourceProcessing;

/// A horde-batch manifest: many prompt/parameter sets for the AI Horde.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "horde-batch manifest")]
pub struct Manifest {
    /// Manifest format version; must be 1.
    pub version: u32,
    /// A short name for this batch; the default output folder is `out/<name>`.
    pub name: String,
    /// Settings every job starts from.
    #[serde(default)]
    pub defaults: Defaults,
    /// Where and how images are written.
    #[serde(default)]
    pub output: OutputSpec,
    /// How the batch runs.
    #[serde(default)]
    pub run: RunSpec,
    /// Inline wildcards: `__name__` in a prompt takes each of these values in turn.
    #[serde(default)]
    pub wildcards: IndexMap<String, Vec<String>>,
    /// Folder (relative to this file) holding `<name>.txt` wildcard files, one value per line.
    /// Default: `wildcards`.
    #[serde(default)]
    pub wildcards_dir: Option<String>,
    /// The jobs: each expands into one or more prompt/parameter combinations.
    pub jobs: Vec<JobSpec>,
}

/// Settings every job starts from; a job's own settings override them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Models a worker may use (any one of them serves a request).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Generation parameters (the Horde's `params`).
    #[serde(default)]
    pub params: Params,
    /// Request flags (the Horde's top-level booleans).
    #[serde(default)]
    pub request: RequestSpec,
    /// The image to start from, relative to this file: a PNG, JPEG or WebP of at most
    /// 3072×3072 pixels, sent as lossless WebP (img2img, inpainting, outpainting, remix,
    /// ControlNet). A matrix axis `source_image: [a.png, b.png]` varies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<String>,
    /// How the source image is used. Default `img2img`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_processing: Option<SourceProcessing>,
    /// Inpainting/outpainting mask (relative to this file); without one, inpainting
    /// needs a source image with an alpha channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mask: Option<String>,
    /// Up to 5 more images, `{image: path, strength: 0..1}` (remix only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    pub extra_source_images: Option<Vec<ExtraSourceSpec>>,
    /// Alchemy run on every image a job saves (caption, nsfw, interrogation, upscalers, …):
    /// a list of forms, or `{forms: [...], slow_workers: bool}`. A job's own `alchemy`
    /// replaces this one. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alchemy: Option<AlchemySetting>,
}

/// One of `extra_source_images`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExtraSourceSpec {
    /// Path of the image, relative to the manifest's folder.
    pub image: String,
    /// Strength, 0 to 1 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub strength: Option<f64>,
}

/// The Horde's top-level request flags. Every flag is sent explicitly, since the
/// server's defaults differ from its published schema.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Allow NSFW workers (default false).
    pub nsfw: Option<bool>,
    /// Censor NSFW output when `nsfw` is false (default true).
    pub censor_nsfw: Option<bool>,
    /// Only trusted workers (default false).
    pub trusted_workers: Option<bool>,
    /// Only workers with validated backends (default false).
    pub validated_backends: Option<bool>,
    /// Allow slow workers (default true; false costs more and needs kudos up front).
    pub slow_workers: Option<bool>,
    /// Allow extra-slow workers (default false).
    pub extra_slow_workers: Option<bool>,
    /// Receive images as download URLs (default true) rather than base64.
    pub r2: Option<bool>,
    /// Let the Horde rewrite suspicious prompts instead of rejecting them (default true).
    pub replacement_filter: Option<bool>,
    /// Shrink a request instead of failing when kudos up front are missing (default false).
    pub allow_downgrade: Option<bool>,
    /// Ask for one seed per image (needs a trusted account when `n` > 1; default false).
    pub disable_batching: Option<bool>,
    /// Worker ids to use (at most 5); with `worker_blacklist`, worker ids to avoid.
    pub workers: Option<Vec<String>>,
    /// Treat `workers` as a blacklist (default false).
    pub worker_blacklist: Option<bool>,
    /// An https:// URL the Horde calls when a request finishes.
    pub webhook: Option<String>,
    /// A Horde style id or name.
    pub style: Option<String>,
}

/// Where and how images are written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Output folder, relative to this file. Default: `out/<name>`.
    pub dir: Option<String>,
    /// File name template without extension. Placeholders: `{manifest}`, `{job}`, `{key}`,
    /// `{index}`, `{seed}`, `{model}`, `{width}`, `{height}`; `/` makes sub-folders.
    /// Default: `{job}/{key}-{index}`.
    pub filename: Option<String>,
    /// Write a JSON sidecar beside each image (default true).
    pub sidecars: Option<bool>,
    /// Keep `metadata.jsonl`, a Hugging Face `imagefolder` index (default true).
    pub index: Option<bool>,
    /// Write the A1111 parameters (prompt, negative prompt, steps, sampler, CFG scale,
    /// seed, size, model) into each image's EXIF UserComment, as PNG Info and civitai
    /// read them (default true).
    pub a1111_parameters: Option<bool>,
    /// The columns of `metadata.jsonl` beyond the built-in ones.
    #[serde(default)]
    pub metadata: MetadataSpec,
    /// Write a kohya-style caption file `<name>.txt` beside each image, holding its
    /// caption (the prompt, or the alchemy caption with `metadata.caption_from: alchemy`).
    /// Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_files: Option<bool>,
}

/// Columns of `metadata.jsonl`. Every label (matrix axis, wildcard, variant,
/// row column) is a column already; these add to and rename the rest.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetadataSpec {
    /// Name of the caption column, the prompt (default `text`, as Hugging Face's
    /// `imagefolder` text-to-image examples expect).
    pub caption: Option<String>,
    /// Where captions come from: `prompt` (default) or `alchemy` (the `caption` form's
    /// result, which every job must then run; the prompt gets a `prompt` column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_from: Option<CaptionFrom>,
    /// Extra columns: any generation parameter (e.g. `clip_skip`, `karras`), or one of
    /// `worker_name`, `worker_id`, `kudos`, `prompt_template`, `submitted_at`,
    /// `completed_at`, `batch_index`.
    pub columns: Option<Vec<String>>,
}

/// What to do with an image the Horde's censor blacked out.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CensoredPolicy {
    /// Save it and flag it in the sidecar and index.
    Keep,
    /// Do not save it; the job ends with fewer images.
    Skip,
    /// Ask for a replacement, within `run.retries`.
    #[default]
    Reroll,
}

/// How the batch runs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Largest `n` (images per Horde request), 1 to 20. Default 20.
    pub max_n: Option<u32>,
    /// Most images waiting on the Horde at once. Default: the key's concurrency.
    pub max_in_flight: Option<u32>,
    /// Extra attempts for a request that faulted, expired or came back short. Default 3.
    pub retries: Option<u32>,
    /// What to do with censored images. Default `reroll`.
    pub on_censored: Option<CensoredPolicy>,
    /// Default seed policy of every job (see a job's `seeds`). Default `random`.
    pub seeds: Option<SeedsSpec>,
    /// Refuse to expand to more jobs than this. Default 100000.
    pub max_jobs: Option<u64>,
    /// Time limits.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
}

/// Time limits, as humantime durations (`90s`, `10m`, `1h 30m`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// How long a request may wait while no worker can serve it. Default 10m.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub no_worker: Option<Duration>,
    /// How long one image download may take. Default 60s.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub download: Option<Duration>,
}

/// One job: a prompt template and its parameters, expanded into combinations.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name of the job (used in file names and results).
    pub name: String,
    /// Prompt template: `{a|b}` variants (options may hold `__name__` wildcards and a
    /// leading `0.5::` weight), `{2$$a|b|c}` / `{1-2$$ and $$a|b}` combinations, `__name__`
    /// wildcards, `${axis}` matrix variables, and A1111 `<lora:name:weight>` tags, which are
    /// moved to `params.loras`. Unsupported syntax (globs, `$$` or `::` elsewhere in a
    /// variant) is an error; `\` escapes it.
    pub prompt: String,
    /// Negative prompt template (sent as `prompt ### negative`).
    #[serde(default)]
    pub negative: Option<String>,
    /// Models for this job, replacing `defaults.models`.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Parameters for this job, over `defaults.params`.
    #[serde(default)]
    pub params: Params,
    /// Request flags for this job, over `defaults.request`.
    #[serde(default)]
    pub request: RequestSpec,
    /// Images per combination. Default 1, or the number of explicit seeds.
    #[serde(default)]
    pub images: Option<u32>,
    /// Seeds: `random` (the Horde picks; requests batch up to `max_n`), `derived` (one
    /// reproducible seed per image from the job key), a list, or a range like `"100-199"`.
    /// Exact per-image seeds cost one request per image.
    #[serde(default)]
    pub seeds: Option<SeedsSpec>,
    /// A table of prompts: a CSV file (with a header line) or a JSON Lines file, relative
    /// to this file; one combination per row (times the matrix and variants). Each column
    /// is a prompt variable `${column}` and a label; a column named like a parameter
    /// (`steps`, `cfg_scale`, …) or `model` sets it for its row. `{file, id}` names the
    /// column holding each row's unique id (its file names' `{id}`, and part of its key).
    #[serde(default)]
    pub rows: Option<RowsSpec>,
    /// Named axes: a parameter, `model`, or a prompt variable, each with a list of values
    /// or an A1111-style range (`"20-40 (+10)"`, `"1-10 [5]"`).
    #[serde(default)]
    pub matrix: Matrix,
    /// Random mode: pick this many distinct combinations instead of all of them.
    #[serde(default)]
    pub sample: Option<u64>,
    /// Per-image random mode (sd-dynamic-prompts' random generator): draw this many
    /// prompts, each combination picked at random by the options' weights, repeats
    /// allowed; each draw is a job of `images` images (default 1). Not with `sample`.
    #[serde(default)]
    pub random: Option<u64>,
    /// Seed of the random pick of `sample` or `random` (default 0): the same seed picks
    /// the same combinations.
    #[serde(default)]
    pub sample_seed: Option<u64>,
    /// The image to start from, relative to this file: a PNG, JPEG or WebP of at most
    /// 3072×3072 pixels, sent as lossless WebP (img2img, inpainting, outpainting, remix,
    /// ControlNet). A matrix axis `source_image: [a.png, b.png]` varies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_image: Option<String>,
    /// How the source image is used. Default `img2img`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_processing: Option<SourceProcessing>,
    /// Inpainting/outpainting mask (relative to this file); without one, inpainting
    /// needs a source image with an alpha channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mask: Option<String>,
    /// Up to 5 more images, `{image: path, strength: 0..1}` (remix only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    pub extra_source_images: Option<Vec<ExtraSourceSpec>>,
    /// The X/Y/Z grids of `report.html`: `{x: axis, y: axis}` names the axes (any other
    /// axes make one grid per value), `false` draws none. Default: axes chosen from the
    /// combinations, and only grids that compare something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<GridSpec>,
    /// Alchemy run on every image this job saves, replacing `defaults.alchemy` entirely:
    /// a list of forms, or `{forms: [...], slow_workers: bool}`; `[]` runs none. Alchemy
    /// is not part of the job key: adding it re-generates nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alchemy: Option<AlchemySetting>,
}

/// `alchemy:`: the Horde's alchemy forms to run on every saved image, each at
/// most once (the Horde charges each form, duplicates included).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum AlchemySetting {
    /// The forms, e.g. `[caption, nsfw, RealESRGAN_x2plus]`; `[]` runs none.
    Forms(#[schemars(with = "std::collections::BTreeSet<AlchemyForm>")] Vec<String>),
    /// The forms and how they are served.
    Options(AlchemyOptions),
}

/// `alchemy: {forms, slow_workers}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlchemyOptions {
    /// The forms, e.g. `[interrogation, RealESRGAN_x2plus]`; `[]` runs none.
    #[schemars(with = "std::collections::BTreeSet<AlchemyForm>")]
    pub forms: Vec<String>,
    /// Let slow alchemists serve the forms (default true, as the Horde's; false costs
    /// 1 kudo less per form but waits for fast workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_workers: Option<bool>,
}

impl AlchemySetting {
    /// The forms as written.
    pub fn forms(&self) -> &[String] {
        match self {
            AlchemySetting::Forms(forms)
            | AlchemySetting::Options(AlchemyOptions { forms, .. }) => forms,
        }
    }
}

/// A list (the short form) or a mapping (the long form), told apart by what
/// the YAML holds, so errors inside either keep their position and serde's
/// "unknown field" message (an untagged enum would lose both).
impl<'de> Deserialize<'de> for AlchemySetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};

        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = AlchemySetting;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of alchemy forms, or `{forms: [...], slow_workers: bool}`")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::deserialize(SeqAccessDeserializer::new(seq)).map(AlchemySetting::Forms)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                AlchemyOptions::deserialize(MapAccessDeserializer::new(map))
                    .map(AlchemySetting::Options)
            }
        }
        deserializer.deserialize_any(Setting)
    }
}

/// A job's `grid:`: on or off, or the axes to draw.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum GridSpec {
    /// `false`: no grid; `true`: the default.
    Enabled(bool),
    /// The axes to draw.
    Axes(GridAxesSpec),
}

/// `grid: {x, y}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GridAxesSpec {
    /// The axis across (columns): a matrix axis, wildcard, `variant_N` or rows column of the job.
    pub x: String,
    /// The axis down (rows), another of the job's axes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

/// A job's table of prompts: a path, or a path and the id column.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum RowsSpec {
    /// The table's path, relative to the manifest.
    File(String),
    /// The table's path and the column that identifies each row.
    WithId(RowsFile),
}

/// `rows: {file, id}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RowsFile {
    /// The table's path, relative to the manifest.
    pub file: String,
    /// The column holding each row's id (unique, non-empty).
    pub id: Option<String>,
}

impl RowsSpec {
    /// The table's path as written.
    pub fn file(&self) -> &str {
        match self {
            RowsSpec::File(file) | RowsSpec::WithId(RowsFile { file, .. }) => file,
        }
    }

    /// The id column, if named.
    pub fn id(&self) -> Option<&str> {
        match self {
            RowsSpec::File(_) => None,
            RowsSpec::WithId(rows) => rows.id.as_deref(),
        }
    }
}

/// Generation parameters, checked against the Horde's limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Params(pub IndexMap<String, Value>);

/// Matrix axes by name.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Matrix(pub IndexMap<String, Value>);

/// A seed policy, list or range (see `JobSpec::seeds`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(transparent)]
pub struct SeedsSpec(pub Value);

fn param_schema(rule: Rule) -> Value {
    let object = |properties: Value, required: Value| serde_json::json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
    match rule {
        Rule::Int {
            min,
            max,
            multiple_of,
        } if multiple_of > 1 => {
            serde_json::json!({"type": "integer", "minimum": min, "maximum": max, "multipleOf": multiple_of})
        }
        Rule::Int { min, max, .. } => {
            serde_json::json!({"type": "integer", "minimum": min, "maximum": max})
        }
        Rule::Float { min, max, .. } => {
            serde_json::json!({"type": "number", "minimum": min, "maximum": max})
        }
        Rule::Bool => serde_json::json!({"type": "boolean"}),
        Rule::Sampler => serde_json::json!({"enum": KNOWN_SAMPLERS}),
        Rule::ControlType => serde_json::json!({"enum": CONTROL_TYPES}),
        Rule::PostProcessing => {
            serde_json::json!({"type": "array", "uniqueItems": true, "items": {"enum": KNOWN_POST_PROCESSORS}})
        }
        Rule::Loras => {
            serde_json::json!({"type": "array", "maxItems": 5, "items": object(serde_json::json!({
            "name": {"type": "string", "minLength": 1, "maxLength": 255},
            "model": {"type": "number", "minimum": -5, "maximum": 5},
            "clip": {"type": "number", "minimum": -5, "maximum": 5},
            "inject_trigger": {"type": "string"},
            "is_version": {"type": "boolean"}
        }), serde_json::json!(["name"]))})
        }
        Rule::Tis => {
            serde_json::json!({"type": "array", "maxItems": 20, "items": object(serde_json::json!({
            "name": {"type": "string", "minLength": 1, "maxLength": 255},
            "inject_ti": {"enum": ["prompt", "negprompt"]},
            "strength": {"type": "number", "minimum": -5, "maximum": 5}
        }), serde_json::json!(["name"]))})
        }
    }
}

impl JsonSchema for Params {
    fn schema_name() -> Cow<'static, str> {
        "Params".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let properties: serde_json::Map<String, Value> = PARAMS
            .iter()
            .map(|spec| {
                let mut schema = param_schema(spec.rule);
                schema["description"] = Value::from(spec.description);
                (spec.name.to_owned(), schema)
            })
            .collect();
        json_schema!({
            "description": "Generation parameters, checked against the Horde's limits. `n` comes from `images` and `run.max_n`; seeds from `seeds`.",
            "type": "object",
            "properties": properties,
            "additionalProperties": false
        })
    }
}

impl JsonSchema for Matrix {
    fn schema_name() -> Cow<'static, str> {
        "Matrix".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Named axes: a parameter name, `model`, or a prompt variable used as `${name}`.",
            "type": "object",
            "additionalProperties": {
                "anyOf": [
                    {"type": "array", "minItems": 1, "items": {"type": ["string", "number", "boolean"]}},
                    {"type": "string", "description": "An A1111-style range: `20-40 (+10)`, `1-10 [5]`, `1-5`, comma-separated items."}
                ]
            }
        })
    }
}

impl JsonSchema for SeedsSpec {
    fn schema_name() -> Cow<'static, str> {
        "Seeds".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`random`, `derived`, a list of seeds, or a range like `\"100-199\"`.",
            "anyOf": [
                {"enum": ["random", "derived"]},
                {"type": "string", "pattern": "^\\s*\\d+\\s*-\\s*\\d+\\s*$"},
                {"type": "array", "minItems": 1, "items": {"type": ["integer", "string"]}}
            ]
        })
    }
}

/// The JSON Schema of a manifest, as committed in `manifests/schema.json`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(Manifest);
    schema.to_value()
}
