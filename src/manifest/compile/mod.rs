//! Checks a parsed manifest and resolves it into compiled jobs.
//!
//! Everything serde cannot check is checked here, with the position of the
//! offending value: parameters against the Horde's limits, prompt templates,
//! wildcards (inline or files beside the manifest), matrix axes and ranges,
//! seeds, and the expansion limit. All problems are collected, not just the
//! first. The result holds, per job, the axes to combine and the resolved
//! defaults; `expand` turns that into jobs. A1111 `<lora:…>` tags in a prompt
//! are moved into the job's `loras` parameter here, so they are part of the
//! job keys. Reads wildcard files; nothing else.

mod axes;
mod compiled;
mod matrix;
mod parameters;
mod request;
mod rows_axis;
mod seeds;
mod settings;
mod templates;
mod variants;
mod wildcards;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::locate::YamlPath;
use super::schema::JobSpec;
use super::source::SourceRef;
use super::{ManifestError, ManifestFile, Problem};

pub use compiled::{CompiledJob, CompiledManifest};
pub use request::RequestFlags;
pub use seeds::Seeds;
pub use settings::{OutputSettings, RunSettings, DEFAULT_MAX_JOBS};

pub(crate) use axes::{Axis, AxisKind, AxisValue, ColumnUse};
pub(crate) use templates::Segment;
use wildcards::Wildcard;

/// Images one combination may ask for.
pub(super) const MAX_IMAGES_PER_JOB: u32 = 100_000;
pub(super) const VALUE_SYNTAX_HELP: &str = "wildcard and matrix values are inserted as text: write variants out as separate values, and LoRAs under `params.loras` (a `loras` matrix axis varies them)";
/// Options from the command line that override the manifest.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Overrides `run.max_jobs`.
    pub max_jobs: Option<u64>,
}

/// Checks `file` and resolves it; every problem found is reported.
pub fn compile(
    file: ManifestFile,
    options: &CompileOptions,
) -> Result<CompiledManifest, ManifestError> {
    let mut cx = Context {
        file: &file,
        problems: Vec::new(),
        wildcard_cache: HashMap::new(),
        reserved_columns: Vec::new(),
        rows_failed: false,
        source_cache: HashMap::new(),
    };
    let root = YamlPath::root();
    let manifest = &file.manifest;
    if manifest.version != 1 {
        cx.problem(
            &root.key("version"),
            format!(
                "unsupported manifest version {}; this horde-batch reads version 1",
                manifest.version
            ),
            "",
        );
    }
    if manifest.name.trim().is_empty() {
        cx.problem(&root.key("name"), "the manifest name is empty", "");
    }
    if manifest.jobs.is_empty() {
        cx.problem(
            &root.key("jobs"),
            "the manifest has no jobs",
            "add at least one entry under `jobs:`",
        );
    }
    let run = cx.run_settings(options);
    cx.check_request_spec(
        &manifest.defaults.request,
        &root.key("defaults").key("request"),
    );
    let output = cx.output_settings();
    cx.reserved_columns = output.reserved_columns();
    let default_params = cx.params(
        &manifest.defaults.params.0,
        &root.key("defaults").key("params"),
        None,
    );
    let default_seeds = manifest
        .run
        .seeds
        .as_ref()
        .map(|s| cx.seeds(s, &root.key("run").key("seeds")));

    let mut jobs = Vec::with_capacity(manifest.jobs.len());
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (index, spec) in manifest.jobs.iter().enumerate() {
        let path = root.key("jobs").index(index);
        if let Some(first) = names.insert(spec.name.as_str(), index) {
            cx.problem(
                &path.key("name"),
                format!("job name `{}` is already used by jobs[{first}]", spec.name),
                "job names must be unique: they are part of every job key",
            );
        }
        if let Some(job) = cx.job(
            index,
            spec,
            &path,
            &default_params,
            default_seeds.clone().flatten(),
        ) {
            jobs.push(job);
        }
    }

    cx.check_ids_name_files(&output.filename, &jobs);

    let total: u128 = jobs.iter().map(|j| u128::from(j.combinations)).sum();
    if total > u128::from(run.max_jobs) {
        let biggest = jobs
            .iter()
            .max_by_key(|j| j.combinations)
            .map_or(0, |j| j.index);
        cx.problem(
            &root.key("jobs").index(biggest),
            format!("the manifest expands to {total} jobs, more than the limit of {}", run.max_jobs),
            "raise `run.max_jobs` (or pass --max-jobs), use `sample:` to pick a subset, or shrink the axes",
        );
    }

    if !cx.problems.is_empty() {
        return Err(ManifestError::from(cx.problems));
    }
    Ok(CompiledManifest {
        file: Arc::new(file),
        jobs,
        run,
        output,
    })
}

pub(super) struct Context<'a> {
    pub(super) file: &'a ManifestFile,
    pub(super) problems: Vec<Problem>,
    wildcard_cache: HashMap<String, Wildcard>,
    /// Column names of `metadata.jsonl` that a label may not take.
    reserved_columns: Vec<String>,
    /// The current job's `rows:` table failed its checks.
    rows_failed: bool,
    /// Source files by path as written: checked once per compile.
    pub(super) source_cache: HashMap<String, Result<Arc<SourceRef>, String>>,
}

impl Context<'_> {
    pub(super) fn problem(&mut self, path: &YamlPath, message: impl Into<String>, help: &str) {
        let problem = self.file.source.problem_at(path, message).with_help(help);
        self.problems.push(problem);
    }

    /// A problem with `needle`, a piece of the template `text` at `path`:
    /// pointed at its first occurrence (the template's start if it is not found).
    fn problem_in_template(
        &mut self,
        path: &YamlPath,
        text: &str,
        needle: &str,
        message: impl Into<String>,
        help: &str,
    ) {
        let offset = text.find(needle).unwrap_or(0);
        let problem = self
            .file
            .source
            .problem_in_scalar(path, text, offset, message)
            .with_help(help);
        self.problems.push(problem);
    }

    fn job(
        &mut self,
        index: usize,
        spec: &JobSpec,
        path: &YamlPath,
        default_params: &BTreeMap<&'static str, Value>,
        default_seeds: Option<Seeds>,
    ) -> Option<CompiledJob> {
        let problems_before = self.problems.len();
        if spec.name.trim().is_empty() {
            self.problem(&path.key("name"), "the job name is empty", "");
        }
        let mut base_params =
            self.params(&spec.params.0, &path.key("params"), Some(default_params));
        let manifest = &self.file.manifest;
        let models: Vec<String> = spec
            .models
            .clone()
            .or_else(|| manifest.defaults.models.clone())
            .unwrap_or_default();
        if models.is_empty() && !spec.matrix.0.contains_key("model") {
            self.problem(
                &path.key("models"),
                format!("job `{}` names no model", spec.name),
                "set `defaults.models` or the job's `models`, e.g. `models: [stable_diffusion]`",
            );
        }
        if models.iter().any(|m| m.trim().is_empty()) {
            self.problem(&path.key("models"), "a model name is empty", "");
        }
        let request = self.request_flags(
            &manifest.defaults.request,
            &spec.request,
            &path.key("request"),
        );

        let seeds = match &spec.seeds {
            Some(s) => self.seeds(s, &path.key("seeds")),
            None => Some(default_seeds.unwrap_or(Seeds::Random)),
        };
        let images = match (&seeds, spec.images) {
            (Some(Seeds::List(list)), Some(images)) if images as usize != list.len() => {
                self.problem(
                    &path.key("images"),
                    format!("images is {images} but {} seeds are given", list.len()),
                    "with explicit seeds, each seed is one image: drop `images` or make them agree",
                );
                images
            }
            (Some(Seeds::List(list)), _) => u32::try_from(list.len()).unwrap_or(u32::MAX),
            (_, images) => images.unwrap_or(1),
        };
        if images == 0 || images > MAX_IMAGES_PER_JOB {
            self.problem(
                &path.key("images"),
                format!("images is {images}; it must be 1 to {MAX_IMAGES_PER_JOB}"),
                "",
            );
        }

        // Axes: rows first, then matrix (in the order written), then template
        // variants and wildcards.
        let mut axes = Vec::new();
        // A table that failed its checks was reported; the variables it would
        // have given are then not reported again as unknown.
        self.rows_failed = false;
        if let Some(rows) = &spec.rows {
            match self.rows_axis(rows, &path.key("rows"), &spec.matrix.0) {
                Some(axis) => axes.push(axis),
                None => self.rows_failed = true,
            }
        }
        let variables = self.matrix_axes(spec, path, &mut axes);
        let (positive, negative) =
            self.job_prompts(spec, path, &mut axes, &variables, &mut base_params);

        self.check_labels(spec, path, &axes);

        let sources = self.job_sources(spec, path, &base_params, &axes, &models);
        let space = axes.iter().try_fold(1u128, |acc, axis| {
            acc.checked_mul(axis.values.len() as u128)
        });
        let seed = spec.sample_seed.unwrap_or(0);
        let sample = spec.sample.map(|count| (count, seed));
        if sample.is_some_and(|(count, _)| count == 0) {
            self.problem(&path.key("sample"), "sample must be at least 1", "");
        }
        let random = spec.random.map(|count| (count, seed));
        if random.is_some_and(|(count, _)| count == 0) {
            self.problem(&path.key("random"), "random must be at least 1", "");
        }
        if sample.is_some() && random.is_some() {
            self.problem(&path.key("random"), "`random` and `sample` cannot both be set", "`sample: N` picks N distinct combinations; `random: N` draws N prompts with repeats");
        }
        let space = match space {
            Some(space) => space,
            None => {
                self.problem(
                    path,
                    "the job's axes multiply to more than 2^128 combinations",
                    "shrink the axes",
                );
                return None;
            }
        };
        let combinations = match (sample, random) {
            (_, Some((count, _))) => u128::from(count),
            (Some((count, _)), None) => u128::from(count).min(space),
            (None, None) => space,
        };
        if self.problems.len() > problems_before {
            return None;
        }
        Some(CompiledJob {
            name: Arc::from(spec.name.as_str()),
            index,
            prompt_template: Arc::from(spec.prompt.as_str()),
            negative_template: spec.negative.as_deref().map(Arc::from),
            images,
            seeds: seeds?,
            combinations: u64::try_from(combinations).unwrap_or(u64::MAX),
            positive: positive?,
            negative,
            axes,
            base_params,
            models: Arc::from(models),
            request: Arc::new(request),
            sample,
            random,
            space,
            sources,
        })
    }

    /// Labels become `metadata.jsonl` columns: a text axis may not be named
    /// after a built-in, caption or extra column.
    fn check_labels(&mut self, spec: &JobSpec, path: &YamlPath, axes: &[Axis]) {
        for axis in axes {
            let AxisKind::Rows(table) = &axis.kind else {
                continue;
            };
            for (name, used) in &table.columns {
                if *used == ColumnUse::Text && self.reserved_columns.contains(name) {
                    self.problem(&path.key("rows"), format!("the rows column `{name}` would be a metadata.jsonl column, and `{name}` is a column already (built in, the caption or an extra column)"), "rename the column, or the caption column with `output.metadata.caption`");
                }
            }
        }
        for axis in axes.iter().filter(|a| matches!(a.kind, AxisKind::Text)) {
            if !self.reserved_columns.contains(&axis.name) {
                continue;
            }
            let name = &axis.name;
            let message = format!("the label `{name}` would be a metadata.jsonl column, and `{name}` is a column already (built in, the caption or an extra column)");
            if spec.matrix.0.contains_key(name) {
                self.problem(&path.key("matrix").key(name), message, "rename the axis");
            } else {
                let needle = format!("__{name}__");
                self.problem_in_template(
                    &path.key("prompt"),
                    &spec.prompt,
                    &needle,
                    message,
                    "rename the wildcard (its file or its `wildcards:` entry)",
                );
            }
        }
    }
}
