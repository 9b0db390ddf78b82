//! The result of compiling: `CompiledManifest` (the checked manifest with
//! its settings) and one `CompiledJob` per manifest job, with the questions
//! the rest of horde-batch asks of them before expanding (totals, the models
//! requests may name, the largest request, the label columns).
//!
//! Nothing here checks or reports problems, and nothing expands jobs:
//! `expand` one level up turns a `CompiledJob` into jobs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::axes::{Axis, AxisKind, ColumnUse};
use super::request::RequestFlags;
use super::seeds::Seeds;
use super::settings::{OutputSettings, RunSettings};
use super::templates::Segment;
use crate::layout::BUILT_IN_COLUMNS;
use crate::manifest::alchemy::{alchemy_columns, AlchemySpec};
use crate::manifest::source::JobSources;
use crate::manifest::ManifestFile;

/// One job of the manifest, ready to expand.
#[derive(Debug, Clone)]
pub struct CompiledJob {
    pub name: Arc<str>,
    /// Position in the manifest's `jobs` list.
    pub index: usize,
    pub prompt_template: Arc<str>,
    pub negative_template: Option<Arc<str>>,
    pub images: u32,
    pub seeds: Seeds,
    /// How many combinations (jobs) this entry expands to.
    pub combinations: u64,
    pub(crate) positive: Vec<Segment>,
    pub(crate) negative: Option<Vec<Segment>>,
    pub(crate) axes: Vec<Axis>,
    pub(crate) base_params: BTreeMap<&'static str, Value>,
    pub(crate) models: Arc<[String]>,
    pub(crate) request: Arc<RequestFlags>,
    /// `sample:` (how many distinct combinations, seed).
    pub(crate) sample: Option<(u64, u64)>,
    /// `random:` (how many draws with repeats, seed).
    pub(crate) random: Option<(u64, u64)>,
    /// The product of the axis lengths.
    pub(crate) space: u128,
    /// Source images (a `source_image` axis replaces `image` per combination).
    pub(crate) sources: Option<Arc<JobSources>>,
    /// The report's grids of this job (`grid:`).
    pub grid: JobGrid,
    /// The alchemy run on every image the job saves; `None` when it runs none.
    /// Not part of any job key, nor of the expansion fingerprint.
    pub alchemy: Option<Arc<AlchemySpec>>,
}

/// The grids a job asks for in `report.html`, its axis names checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JobGrid {
    /// No `grid:`, or `grid: true`: the report chooses.
    #[default]
    Auto,
    /// `grid: false`.
    Off,
    /// `grid: {x, y}`: labels of the job.
    Axes { x: String, y: Option<String> },
}

impl CompiledJob {
    /// Whether the job turned its report grids off (`grid: false`).
    pub fn grid_off(&self) -> bool {
        self.grid == JobGrid::Off
    }

    /// The grid axes the job chose (`grid: {x, y}`), X then Y: labels of its jobs.
    pub fn grid_axes(&self) -> Option<(&str, Option<&str>)> {
        match &self.grid {
            JobGrid::Axes { x, y } => Some((x, y.as_deref())),
            JobGrid::Auto | JobGrid::Off => None,
        }
    }
}

/// A checked manifest.
#[derive(Debug, Clone)]
pub struct CompiledManifest {
    pub file: Arc<ManifestFile>,
    pub jobs: Vec<CompiledJob>,
    pub run: RunSettings,
    pub output: OutputSettings,
}

impl CompiledManifest {
    /// The manifest's `name`.
    pub fn name(&self) -> &str {
        &self.file.manifest.name
    }

    /// Jobs after expansion.
    pub fn total_jobs(&self) -> u64 {
        self.jobs.iter().map(|j| j.combinations).sum()
    }

    /// Per manifest job: the models its requests may name (each request names
    /// one of these lists), for checking that workers exist before submitting.
    pub fn model_choices(&self) -> Vec<(Arc<str>, Vec<Vec<String>>)> {
        self.jobs
            .iter()
            .map(|job| {
                let mut axis: Vec<Vec<String>> = job
                    .axes
                    .iter()
                    .filter(|a| matches!(a.kind, AxisKind::Model))
                    .flat_map(|a| a.values.iter().map(|v| vec![v.text.clone()]))
                    .collect();
                for rows in job
                    .axes
                    .iter()
                    .filter(|a| matches!(a.kind, AxisKind::Rows(_)))
                {
                    for row in &rows.values {
                        match row.json.get("model").and_then(Value::as_str) {
                            Some(model) => axis.push(vec![model.to_owned()]),
                            None => axis.push(job.models.to_vec()),
                        }
                    }
                    axis.dedup();
                }
                let lists = if axis.is_empty() {
                    vec![job.models.to_vec()]
                } else {
                    axis
                };
                (Arc::clone(&job.name), lists)
            })
            .collect()
    }

    /// Per manifest job: the largest `width × height` and `steps` any of its requests asks for.
    pub fn largest_request(&self) -> Vec<(Arc<str>, u64, u64)> {
        let largest = |job: &CompiledJob, name: &str| -> u64 {
            let base = job
                .base_params
                .get(name)
                .and_then(Value::as_u64)
                .unwrap_or(0);
            job.axes
                .iter()
                .flat_map(|a| match &a.kind {
                    AxisKind::Param(p) if *p == name => {
                        a.values.iter().filter_map(|v| v.json.as_u64()).collect()
                    }
                    AxisKind::Rows(_) => a
                        .values
                        .iter()
                        .filter_map(|v| v.json.get(name).and_then(Value::as_u64))
                        .collect(),
                    _ => Vec::new(),
                })
                .fold(base, u64::max)
        };
        self.jobs
            .iter()
            .map(|job| {
                (
                    Arc::clone(&job.name),
                    largest(job, "width") * largest(job, "height"),
                    largest(job, "steps"),
                )
            })
            .collect()
    }

    /// The labels that become `metadata.jsonl` columns, sorted: every
    /// axis's label, except a parameter or `model` axis whose name is a
    /// built-in column already (`steps`, `model`, …).
    pub fn label_columns(&self) -> Vec<String> {
        let names: std::collections::BTreeSet<&str> = self
            .jobs
            .iter()
            .flat_map(|job| &job.axes)
            .flat_map(|axis| match &axis.kind {
                AxisKind::Text => vec![axis.name.as_str()],
                AxisKind::Rows(table) => table
                    .columns
                    .iter()
                    .filter(|(name, used)| {
                        *used == ColumnUse::Text || !BUILT_IN_COLUMNS.contains(&name.as_str())
                    })
                    .map(|(name, _)| name.as_str())
                    .collect(),
                AxisKind::Param(_) | AxisKind::Model | AxisKind::Source(_) => {
                    if BUILT_IN_COLUMNS.contains(&axis.name.as_str()) {
                        vec![]
                    } else {
                        vec![axis.name.as_str()]
                    }
                }
            })
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Whether any job runs alchemy.
    pub fn uses_alchemy(&self) -> bool {
        self.jobs.iter().any(|job| job.alchemy.is_some())
    }

    /// The `metadata.jsonl` columns alchemy results take in this manifest
    /// (see `manifest::alchemy_columns`); none when no job runs alchemy.
    pub fn alchemy_columns(&self) -> Vec<&'static str> {
        let forms: std::collections::BTreeSet<_> = self
            .jobs
            .iter()
            .filter_map(|job| job.alchemy.as_deref())
            .flat_map(|spec| spec.forms.iter().copied())
            .collect();
        if forms.is_empty() {
            return Vec::new();
        }
        alchemy_columns(forms, self.output.caption_from)
    }

    /// Images over all jobs.
    pub fn total_images(&self) -> u64 {
        self.jobs
            .iter()
            .map(|j| j.combinations * u64::from(j.images))
            .sum()
    }
}
