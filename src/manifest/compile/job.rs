//! The manifest's jobs compiled one by one: each job's name, parameters
//! over the defaults, models, request flags, seeds and image count, its axes
//! (the `rows:` table first, then the matrix in the order written, then the
//! templates' variants and wildcards), its labels, its source images, and
//! how many combinations it expands to (all of them, `sample:` or
//! `random:`).
//!
//! This file puts the steps in order and checks what belongs to a job as a
//! whole; each step's own checks live in the file named after it. Problems
//! are reported in the order the steps run, which is the order users see
//! them in. It does not expand jobs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::axes::{Axis, AxisKind, ColumnUse};
use super::compiled::{CompiledJob, JobGrid};
use super::seeds::Seeds;
use super::{Context, MAX_IMAGES_PER_JOB};
use crate::manifest::locate::YamlPath;
use crate::manifest::schema::{GridSpec, JobSpec};

/// `sample:` or `random:`: how many combinations, and the seed that picks them.
type Sampling = Option<(u64, u64)>;

impl Context<'_> {
    /// Every job of the manifest, over the manifest's defaults; a job with
    /// problems (all reported) is left out.
    pub(super) fn jobs(&mut self) -> Vec<CompiledJob> {
        let file = self.file;
        let manifest = &file.manifest;
        let root = YamlPath::root();
        let default_params = self.params(
            &manifest.defaults.params.0,
            &root.key("defaults").key("params"),
            None,
        );
        let default_seeds = manifest
            .run
            .seeds
            .as_ref()
            .map(|s| self.seeds(s, &root.key("run").key("seeds")));

        let mut jobs = Vec::with_capacity(manifest.jobs.len());
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (index, spec) in manifest.jobs.iter().enumerate() {
            let path = root.key("jobs").index(index);
            if let Some(first) = names.insert(spec.name.as_str(), index) {
                self.problem(
                    &path.key("name"),
                    format!("job name `{}` is already used by jobs[{first}]", spec.name),
                    "job names must be unique: they are part of every job key",
                );
            }
            if let Some(job) = self.job(
                index,
                spec,
                &path,
                &default_params,
                default_seeds.clone().flatten(),
            ) {
                jobs.push(job);
            }
        }
        jobs
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
        let models = self.job_models(spec, path);
        let file = self.file;
        let request = self.request_flags(
            &file.manifest.defaults.request,
            &spec.request,
            &path.key("request"),
        );
        let seeds = match &spec.seeds {
            Some(s) => self.seeds(s, &path.key("seeds")),
            None => Some(default_seeds.unwrap_or(Seeds::Random)),
        };
        let images = self.job_images(spec, path, seeds.as_ref());

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
        let grid = self.job_grid(spec, path, &axes);

        let sources = self.job_sources(spec, path, &base_params, &axes, &models);
        let (sample, random) = self.job_sampling(spec, path);
        let space = self.job_space(&axes, path)?;
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
            grid,
            alchemy: self
                .job_alchemy
                .get(index)
                .cloned()
                .and_then(Result::ok)
                .flatten(),
        })
    }

    /// `grid:`, its axes checked against the labels the job's axes give.
    fn job_grid(&mut self, spec: &JobSpec, path: &YamlPath, axes: &[Axis]) -> JobGrid {
        let chosen = match &spec.grid {
            None | Some(GridSpec::Enabled(true)) => return JobGrid::Auto,
            Some(GridSpec::Enabled(false)) => return JobGrid::Off,
            Some(GridSpec::Axes(chosen)) => chosen,
        };
        let labels: Vec<&str> = axes
            .iter()
            .flat_map(|axis| match &axis.kind {
                AxisKind::Rows(table) => table
                    .columns
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect(),
                _ => vec![axis.name.as_str()],
            })
            .collect();
        let known = if labels.is_empty() {
            "it has none: give it a matrix axis, variants, wildcards or rows".to_owned()
        } else {
            format!("its axes: {}", labels.join(", "))
        };
        let grid = path.key("grid");
        for (key, name) in [("x", Some(&chosen.x)), ("y", chosen.y.as_ref())] {
            let Some(name) = name else { continue };
            if !labels.contains(&name.as_str()) {
                self.problem(
                    &grid.key(key),
                    format!(
                        "the grid axis `{name}` is not an axis of job `{}`",
                        spec.name
                    ),
                    &known,
                );
            }
        }
        if chosen.y.as_ref() == Some(&chosen.x) {
            self.problem(
                &grid.key("y"),
                format!("the grid's x and y are both `{}`", chosen.x),
                "choose two different axes, or only `x`",
            );
        }
        JobGrid::Axes {
            x: chosen.x.clone(),
            y: chosen.y.clone(),
        }
    }

    /// The job's models, else `defaults.models`; none is a problem unless a
    /// `model` matrix axis names them.
    fn job_models(&mut self, spec: &JobSpec, path: &YamlPath) -> Vec<String> {
        let models: Vec<String> = spec
            .models
            .clone()
            .or_else(|| self.file.manifest.defaults.models.clone())
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
        models
    }

    /// Images per combination: `images`, 1 by default, or one per seed when
    /// seeds are listed (and `images`, if given, must agree).
    fn job_images(&mut self, spec: &JobSpec, path: &YamlPath, seeds: Option<&Seeds>) -> u32 {
        let images = match (seeds, spec.images) {
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
        images
    }

    /// `sample:` and `random:`, each with the job's `sample_seed`; at most
    /// one of them, and not 0.
    fn job_sampling(&mut self, spec: &JobSpec, path: &YamlPath) -> (Sampling, Sampling) {
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
        (sample, random)
    }

    /// The product of the axis lengths; `None` when it passes 2^128
    /// (reported).
    fn job_space(&mut self, axes: &[Axis], path: &YamlPath) -> Option<u128> {
        let space = axes.iter().try_fold(1u128, |acc, axis| {
            acc.checked_mul(axis.values.len() as u128)
        });
        if space.is_none() {
            self.problem(
                path,
                "the job's axes multiply to more than 2^128 combinations",
                "shrink the axes",
            );
        }
        space
    }

    /// Labels become `metadata.jsonl` columns: a text axis may not be named
    /// after a built-in, caption, extra or alchemy result column.
    fn check_labels(&mut self, spec: &JobSpec, path: &YamlPath, axes: &[Axis]) {
        for axis in axes {
            let AxisKind::Rows(table) = &axis.kind else {
                continue;
            };
            for (name, used) in &table.columns {
                let Some(taken) = self.column_taken(name) else {
                    continue;
                };
                if *used == ColumnUse::Text {
                    let help = match taken {
                        Taken::Alchemy => "rename the column",
                        Taken::Settings => "rename the column, or the caption column with `output.metadata.caption`",
                    };
                    self.problem(&path.key("rows"), format!("the rows column `{name}` would be a metadata.jsonl column, and `{name}` is a column already ({taken})"), help);
                }
            }
        }
        for axis in axes.iter().filter(|a| matches!(a.kind, AxisKind::Text)) {
            let Some(taken) = self.column_taken(&axis.name) else {
                continue;
            };
            let name = &axis.name;
            let message = format!("the label `{name}` would be a metadata.jsonl column, and `{name}` is a column already ({taken})");
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

    /// Why `name` is already a `metadata.jsonl` column, if it is.
    fn column_taken(&self, name: &str) -> Option<Taken> {
        if self.reserved_columns.iter().any(|c| c == name) {
            Some(Taken::Settings)
        } else if self.alchemy_columns.contains(&name) {
            Some(Taken::Alchemy)
        } else {
            None
        }
    }
}

/// What holds a `metadata.jsonl` column a label would take.
#[derive(Debug, Clone, Copy)]
enum Taken {
    /// A built-in column, the caption or an extra column.
    Settings,
    /// The result of an alchemy form the manifest runs.
    Alchemy,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Taken::Settings => "built in, the caption or an extra column",
            Taken::Alchemy => "an alchemy result column: the manifest runs alchemy",
        })
    }
}
