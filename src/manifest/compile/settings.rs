//! The batch-wide settings: `run:` (how the batch runs) and `output:` (where
//! images go, how files are named, the columns of `metadata.jsonl`), checked
//! and with their defaults applied.
//!
//! This file reads only the manifest's `run:` and `output:` mappings (and,
//! once every job is compiled, whether the file name template fits them); it
//! does not look at jobs' prompts, parameters or axes.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::axes::AxisKind;
use super::compiled::CompiledJob;
use super::{CompileOptions, Context};
use crate::layout::BUILT_IN_COLUMNS;
use crate::manifest::alchemy::CaptionFrom;
use crate::manifest::locate::YamlPath;
use crate::manifest::params::{self, PARAMS};
use crate::manifest::schema::CensoredPolicy;

/// Expansions larger than this are refused unless the user raises the limit.
pub const DEFAULT_MAX_JOBS: u64 = 100_000;

const DEFAULT_FILENAME: &str = "{job}/{key}-{index}";

/// How the batch runs, with defaults applied.
#[derive(Debug, Clone, Serialize)]
pub struct RunSettings {
    pub max_n: u32,
    pub max_in_flight: Option<u32>,
    pub retries: u32,
    pub on_censored: CensoredPolicy,
    #[serde(with = "humantime_serde")]
    pub no_worker_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub download_timeout: Duration,
    pub max_jobs: u64,
}

/// Where images go, with defaults applied and the folder resolved.
#[derive(Debug, Clone, Serialize)]
pub struct OutputSettings {
    pub dir: PathBuf,
    pub filename: String,
    pub sidecars: bool,
    pub index: bool,
    pub a1111_parameters: bool,
    /// The name of `metadata.jsonl`'s caption column.
    pub caption_column: String,
    /// Extra columns of `metadata.jsonl`, in the order given.
    pub extra_columns: Vec<String>,
    /// Where captions come from (`metadata.caption_from`): the prompt, or the
    /// alchemy `caption` form (then every job runs it).
    pub caption_from: CaptionFrom,
    /// Write a kohya-style `<name>.txt` caption file beside each image.
    pub caption_files: bool,
}

impl OutputSettings {
    /// The `metadata.jsonl` columns an axis label may not take: the built-in
    /// ones, the caption and the extra columns. `text` is the caption's
    /// default name, so a renamed caption frees it.
    pub(super) fn reserved_columns(&self) -> Vec<String> {
        BUILT_IN_COLUMNS
            .iter()
            .filter(|c| **c != "text")
            .map(|c| (*c).to_owned())
            .chain([self.caption_column.clone()])
            .chain(self.extra_columns.iter().cloned())
            .collect()
    }
}

/// Sidecar fields `output.metadata.columns` may add to `metadata.jsonl`.
pub const SIDECAR_COLUMNS: &[&str] = &[
    "worker_name",
    "worker_id",
    "kudos",
    "prompt_template",
    "submitted_at",
    "completed_at",
    "batch_index",
];

impl Context<'_> {
    pub(super) fn run_settings(&mut self, options: &CompileOptions) -> RunSettings {
        let spec = &self.file.manifest.run;
        let path = YamlPath::root().key("run");
        let max_n = spec.max_n.unwrap_or(20);
        if !(1..=20).contains(&max_n) {
            self.problem(
                &path.key("max_n"),
                format!("max_n is {max_n}; the Horde takes 1 to 20 images per request"),
                "",
            );
        }
        if spec.max_in_flight == Some(0) {
            self.problem(
                &path.key("max_in_flight"),
                "max_in_flight must be at least 1",
                "",
            );
        }
        let retries = spec.retries.unwrap_or(3);
        if retries > 100 {
            self.problem(
                &path.key("retries"),
                format!("{retries} retries per request is more than the 100 allowed"),
                "",
            );
        }
        RunSettings {
            max_n: max_n.clamp(1, 20),
            max_in_flight: spec.max_in_flight,
            retries,
            on_censored: spec.on_censored.unwrap_or_default(),
            no_worker_timeout: spec.timeouts.no_worker.unwrap_or(Duration::from_secs(600)),
            download_timeout: spec.timeouts.download.unwrap_or(Duration::from_secs(60)),
            max_jobs: options
                .max_jobs
                .or(spec.max_jobs)
                .unwrap_or(DEFAULT_MAX_JOBS),
        }
    }

    pub(super) fn output_settings(&mut self) -> OutputSettings {
        let spec = &self.file.manifest.output;
        let path = YamlPath::root().key("output");
        let dir = self.output_dir(&path);
        let filename = spec
            .filename
            .clone()
            .unwrap_or_else(|| DEFAULT_FILENAME.to_owned());
        if let Err(message) = check_filename_template(&filename) {
            self.problem(
                &path.key("filename"),
                message,
                "the default is `{job}/{key}-{index}`",
            );
        }
        let metadata = path.key("metadata");
        let caption_column = self.caption_column(&metadata);
        let extra_columns = spec.metadata.columns.clone().unwrap_or_default();
        self.check_extra_columns(&extra_columns, &caption_column, &metadata);
        OutputSettings {
            dir,
            filename,
            sidecars: spec.sidecars.unwrap_or(true),
            index: spec.index.unwrap_or(true),
            a1111_parameters: spec.a1111_parameters.unwrap_or(true),
            caption_column,
            extra_columns,
            caption_from: spec.metadata.caption_from.unwrap_or_default(),
            caption_files: spec.caption_files.unwrap_or(false),
        }
    }

    /// `output.dir` relative to the manifest, `out/<manifest name>` by default.
    fn output_dir(&mut self, path: &YamlPath) -> PathBuf {
        match &self.file.manifest.output.dir {
            Some(dir) if dir.trim().is_empty() => {
                self.problem(&path.key("dir"), "the output folder is empty", "");
                PathBuf::new()
            }
            Some(dir) => self.file.base_dir.join(dir),
            None => self
                .file
                .base_dir
                .join("out")
                .join(safe_component(&self.file.manifest.name)),
        }
    }

    /// The name of the caption column: `text` unless renamed, and never
    /// another built-in column.
    fn caption_column(&mut self, metadata: &YamlPath) -> String {
        let caption_column = self
            .file
            .manifest
            .output
            .metadata
            .caption
            .clone()
            .unwrap_or_else(|| "text".to_owned());
        if caption_column != "text" && BUILT_IN_COLUMNS.contains(&caption_column.as_str()) {
            self.problem(
                &metadata.key("caption"),
                format!("`{caption_column}` is a built-in column of metadata.jsonl"),
                "choose another name for the caption column",
            );
        } else if caption_column.trim().is_empty() {
            self.problem(
                &metadata.key("caption"),
                "the caption column's name is empty",
                "",
            );
        }
        caption_column
    }

    /// Extra columns are parameters or sidecar fields, each named once and
    /// none a built-in column or the caption.
    fn check_extra_columns(
        &mut self,
        extra_columns: &[String],
        caption_column: &str,
        metadata: &YamlPath,
    ) {
        for (i, column) in extra_columns.iter().enumerate() {
            let known =
                params::spec(column).is_some() || SIDECAR_COLUMNS.contains(&column.as_str());
            if !known || BUILT_IN_COLUMNS.contains(&column.as_str()) {
                let candidates = PARAMS
                    .iter()
                    .map(|p| p.name)
                    .chain(SIDECAR_COLUMNS.iter().copied());
                let why = if known {
                    " (it is a built-in column already)".to_owned()
                } else {
                    params::suggest(column, candidates)
                };
                self.problem(
                    &metadata.key("columns").index(i),
                    format!("`{column}` cannot be an extra column{why}"),
                    "extra columns are generation parameters or worker_name, worker_id, kudos, prompt_template, submitted_at, completed_at, batch_index",
                );
            } else if extra_columns[..i].contains(column) || *column == caption_column {
                self.problem(
                    &metadata.key("columns").index(i),
                    format!("column `{column}` is named twice"),
                    "",
                );
            }
        }
    }

    /// A file name template with `{id}` but no `{key}` names each image by its
    /// row: only when every job is one row per combination (a table with an
    /// id column and no other axis), and `{job}` tells jobs apart.
    pub(super) fn check_ids_name_files(&mut self, filename: &str, jobs: &[CompiledJob]) {
        use crate::layout::{FilenameTemplate, Placeholder};
        let Ok(parsed) = FilenameTemplate::parse(filename) else {
            return;
        };
        if parsed.uses(Placeholder::Key) || !parsed.uses(Placeholder::Id) {
            return;
        }
        let by_row = |job: &CompiledJob| {
            job.random.is_none()
                && matches!(job.axes.as_slice(), [only] if matches!(&only.kind, AxisKind::Rows(t) if t.id.is_some()))
        };
        let here = YamlPath::root().key("output").key("filename");
        if let Some(job) = jobs.iter().find(|job| !by_row(job)) {
            self.problem(&here, format!("file name template `{filename}` uses `{{id}}` without `{{key}}`, but job `{}` is not one image set per row (it needs a `rows: {{file, id}}` table and no other axis)", job.name), "add `{key}` to the template");
        } else if jobs.len() > 1 && !parsed.uses(Placeholder::Job) {
            self.problem(&here, format!("file name template `{filename}` uses `{{id}}` without `{{key}}` or `{{job}}`: two jobs' rows with the same id would write the same file"), "add `{job}` to the template");
        }
    }
}

fn check_filename_template(template: &str) -> Result<(), String> {
    use crate::layout::{FilenameTemplate, Placeholder};
    let parsed = FilenameTemplate::parse(template).map_err(|e| e.to_string())?;
    // `{id}` can stand for `{key}`; whether it may is checked with the jobs.
    if !parsed.uses(Placeholder::Key) && !parsed.uses(Placeholder::Id) {
        return Err(format!("file name template `{template}` lacks `{{key}}`: without it, two combinations of a job would write the same file"));
    }
    if !parsed.uses(Placeholder::Index) {
        return Err(format!("file name template `{template}` lacks `{{index}}`: without it, images of one combination would write the same file"));
    }
    Ok(())
}

/// A manifest name made safe as one folder name.
fn safe_component(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches('.').to_owned();
    if cleaned.is_empty() {
        "batch".to_owned()
    } else {
        cleaned
    }
}
