//! Checks a parsed manifest and resolves it into compiled jobs.
//!
//! Everything serde cannot check is checked here, with the position of the
//! offending value: parameters against the Horde's limits, prompt templates,
//! wildcards (inline or files beside the manifest), matrix axes and ranges,
//! seeds, and the expansion limit. All problems are collected, not just the
//! first. The result holds, per job, the axes to combine and the resolved
//! defaults; `expand` turns that into jobs. A1111 `<lora:…>` tags in a prompt
//! are moved into the job's `loras` parameter here, so they are part of the
//! job keys. Reads the files a manifest names (wildcards, `rows:` tables,
//! source images, through `source`); writes nothing and never talks HTTP.
//!
//! This file holds the entry point, `compile`, and the `Context` every step
//! reports its problems to; each step extends `Context` in its own file:
//! `settings` (`run:` and `output:`), `alchemy` (every job's alchemy forms,
//! and the caption and columns they ask of `output:`), `request` (request
//! flags), `seeds`,
//! `parameters` (parameter maps and prompt LoRA tags), `job` (one job, step
//! by step), `rows_axis` and `matrix` (the axes a job declares), `templates`
//! (prompts, whose variants and wildcards add axes), `variants` and
//! `wildcards` (their values). `axes` and `compiled` hold the types the
//! result is made of. Once all of that passes, `collisions` checks that no
//! two jobs' images would be written to the same files.

mod alchemy;
mod axes;
mod collisions;
mod compiled;
mod job;
mod matrix;
mod parameters;
mod request;
mod rows_axis;
mod seeds;
mod settings;
mod templates;
mod variants;
mod wildcards;

use std::collections::HashMap;
use std::sync::Arc;

use super::locate::YamlPath;
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
const MAX_IMAGES_PER_JOB: u32 = 100_000;
const VALUE_SYNTAX_HELP: &str = "wildcard and matrix values are inserted as text: write variants out as separate values, and LoRAs under `params.loras` (a `loras` matrix axis varies them)";

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
    let mut cx = Context::new(&file);
    cx.check_header();
    let run = cx.run_settings(options);
    cx.check_request_spec(
        &file.manifest.defaults.request,
        &YamlPath::root().key("defaults").key("request"),
    );
    let output = cx.output_settings();
    cx.reserved_columns = output.reserved_columns();
    let alchemy = cx.jobs_alchemy();
    cx.alchemy_columns = cx.check_alchemy_output(&output, &alchemy);
    cx.job_alchemy = alchemy;
    let jobs = cx.jobs();
    cx.check_ids_name_files(&output.filename, &jobs);
    cx.check_expansion_limit(&jobs, run.max_jobs);

    if !cx.problems.is_empty() {
        return Err(ManifestError::from(cx.problems));
    }
    let compiled = CompiledManifest {
        file: Arc::new(file),
        jobs,
        run,
        output,
    };
    // Last: it expands the jobs, which needs every other check passed.
    let collisions = collisions::check(&compiled);
    if !collisions.is_empty() {
        return Err(ManifestError::from(collisions));
    }
    Ok(compiled)
}

/// What compiling one manifest has found so far: the problems, and what is
/// read once per compile (wildcards, source files).
pub(super) struct Context<'a> {
    pub(super) file: &'a ManifestFile,
    pub(super) problems: Vec<Problem>,
    wildcard_cache: HashMap<String, Wildcard>,
    /// Column names of `metadata.jsonl` that a label may not take.
    reserved_columns: Vec<String>,
    /// Columns of alchemy results in `metadata.jsonl`, which a label may not take either.
    alchemy_columns: Vec<&'static str>,
    /// Every manifest job's alchemy, by its index in `jobs`.
    job_alchemy: Vec<alchemy::JobAlchemy>,
    /// The current job's `rows:` table failed its checks.
    rows_failed: bool,
    /// Source files by path as written: checked once per compile.
    pub(super) source_cache: HashMap<String, Result<Arc<SourceRef>, String>>,
}

impl<'a> Context<'a> {
    fn new(file: &'a ManifestFile) -> Self {
        Context {
            file,
            problems: Vec::new(),
            wildcard_cache: HashMap::new(),
            reserved_columns: Vec::new(),
            alchemy_columns: Vec::new(),
            job_alchemy: Vec::new(),
            rows_failed: false,
            source_cache: HashMap::new(),
        }
    }
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

    /// The manifest's `version`, `name` and `jobs` list.
    fn check_header(&mut self) {
        let root = YamlPath::root();
        let manifest = &self.file.manifest;
        if manifest.version != 1 {
            self.problem(
                &root.key("version"),
                format!(
                    "unsupported manifest version {}; this horde-batch reads version 1",
                    manifest.version
                ),
                "",
            );
        }
        if manifest.name.trim().is_empty() {
            self.problem(&root.key("name"), "the manifest name is empty", "");
        }
        if manifest.jobs.is_empty() {
            self.problem(
                &root.key("jobs"),
                "the manifest has no jobs",
                "add at least one entry under `jobs:`",
            );
        }
    }

    /// All jobs together expand to at most `max_jobs`; past it, the problem
    /// points at the job that expands most.
    fn check_expansion_limit(&mut self, jobs: &[CompiledJob], max_jobs: u64) {
        let total: u128 = jobs.iter().map(|j| u128::from(j.combinations)).sum();
        if total > u128::from(max_jobs) {
            let biggest = jobs
                .iter()
                .max_by_key(|j| j.combinations)
                .map_or(0, |j| j.index);
            self.problem(
                &YamlPath::root().key("jobs").index(biggest),
                format!("the manifest expands to {total} jobs, more than the limit of {max_jobs}"),
                "raise `run.max_jobs` (or pass --max-jobs), use `sample:` to pick a subset, or shrink the axes",
            );
        }
    }
}
