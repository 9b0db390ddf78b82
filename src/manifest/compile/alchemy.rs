//! `alchemy:` under `defaults:` and on each job, checked with the position of
//! every offending form name and resolved (a job's own `alchemy` replaces the
//! defaults' entirely; `[]` turns it off), and what alchemy asks of `output:`:
//! captions from alchemy need every job to run `caption`, and the columns
//! alchemy results take in `metadata.jsonl` are no longer free for the
//! caption column, extra columns or labels.
//!
//! This file does not touch jobs' prompts, parameters or keys: alchemy runs
//! on images already saved and changes no job.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::settings::OutputSettings;
use super::Context;
use crate::manifest::alchemy::{alchemy_columns, AlchemyForm, AlchemySpec, CaptionFrom};
use crate::manifest::locate::YamlPath;
use crate::manifest::schema::AlchemySetting;

/// One manifest job's alchemy: `Ok(None)` when it runs none, `Err(())` when
/// its `alchemy:` (or the defaults' it inherits) has problems, all reported.
pub(super) type JobAlchemy = Result<Option<Arc<AlchemySpec>>, ()>;

impl Context<'_> {
    /// Every manifest job's alchemy, in the order of `jobs`. The defaults'
    /// problems are reported once, however many jobs inherit them.
    pub(super) fn jobs_alchemy(&mut self) -> Vec<JobAlchemy> {
        let file = self.file;
        let manifest = &file.manifest;
        let root = YamlPath::root();
        let defaults = match &manifest.defaults.alchemy {
            Some(setting) => self.alchemy_spec(setting, &root.key("defaults").key("alchemy")),
            None => Ok(None),
        };
        manifest
            .jobs
            .iter()
            .enumerate()
            .map(|(index, job)| match &job.alchemy {
                Some(setting) => {
                    self.alchemy_spec(setting, &root.key("jobs").index(index).key("alchemy"))
                }
                None => defaults.clone(),
            })
            .collect()
    }

    /// One `alchemy:` value: every name a Horde form, none twice.
    fn alchemy_spec(&mut self, setting: &AlchemySetting, path: &YamlPath) -> JobAlchemy {
        let (names_path, slow_workers) = match setting {
            AlchemySetting::Forms(_) => (path.clone(), true),
            AlchemySetting::Options(options) => {
                (path.key("forms"), options.slow_workers.unwrap_or(true))
            }
        };
        let problems_before = self.problems.len();
        let mut forms: Vec<AlchemyForm> = Vec::new();
        for (i, name) in setting.forms().iter().enumerate() {
            let at = names_path.index(i);
            match AlchemyForm::parse(name) {
                None => {
                    let help = match AlchemyForm::closest(name) {
                        Some(form) => format!("did you mean `{form}`?"),
                        None => format!(
                            "the Horde's alchemy forms are {}",
                            AlchemyForm::ALL
                                .iter()
                                .map(|f| f.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    };
                    self.problem(&at, format!("unknown alchemy form `{name}`"), &help);
                }
                Some(form) if forms.contains(&form) => self.problem(
                    &at,
                    format!("alchemy form `{form}` is listed twice"),
                    "list each form once: the Horde charges each form, duplicates included",
                ),
                Some(form) => forms.push(form),
            }
        }
        if self.problems.len() > problems_before {
            return Err(());
        }
        Ok((!forms.is_empty()).then(|| {
            Arc::new(AlchemySpec {
                forms,
                slow_workers,
            })
        }))
    }

    /// What alchemy asks of `output:`: with `caption_from: alchemy`, a
    /// `caption` form in every job; and the columns alchemy results take,
    /// which the caption column and extra columns may not be named after.
    /// Returns those columns (none when no job runs alchemy), which labels
    /// may not take either.
    pub(super) fn check_alchemy_output(
        &mut self,
        output: &OutputSettings,
        alchemy: &[JobAlchemy],
    ) -> Vec<&'static str> {
        if output.caption_from == CaptionFrom::Alchemy {
            self.check_captions_from_alchemy(alchemy);
        }
        let forms: BTreeSet<AlchemyForm> = alchemy
            .iter()
            .flat_map(|job| job.iter().flatten())
            .flat_map(|spec| spec.forms.iter().copied())
            .collect();
        if forms.is_empty() {
            return Vec::new();
        }
        let columns = alchemy_columns(forms, output.caption_from);
        let metadata = YamlPath::root().key("output").key("metadata");
        if columns.contains(&output.caption_column.as_str()) {
            self.problem(
                &metadata.key("caption"),
                format!(
                    "the caption column `{}` is a column of alchemy results in metadata.jsonl",
                    output.caption_column
                ),
                &format!(
                    "choose another name; alchemy takes the columns {}",
                    columns.join(", ")
                ),
            );
        }
        for (i, column) in output.extra_columns.iter().enumerate() {
            if columns.contains(&column.as_str()) {
                self.problem(
                    &metadata.key("columns").index(i),
                    format!("`{column}` is a column of alchemy results in metadata.jsonl"),
                    "drop it from the extra columns",
                );
            }
        }
        columns
    }

    /// `caption_from: alchemy`: every job runs the `caption` form. Reported
    /// where the fix goes: once at `caption_from` when no job runs alchemy,
    /// else at the `alchemy:` that lacks `caption` (once for the defaults'),
    /// or at a job that runs none.
    fn check_captions_from_alchemy(&mut self, alchemy: &[JobAlchemy]) {
        let file = self.file;
        let manifest = &file.manifest;
        let root = YamlPath::root();
        let why = "captions come from alchemy (`output.metadata.caption_from: alchemy`)";
        if alchemy.iter().all(|job| matches!(job, Ok(None))) {
            self.problem(
                &root.key("output").key("metadata").key("caption_from"),
                format!("{why}, but no job runs alchemy"),
                "add `alchemy: [caption]` under `defaults:`, or use `caption_from: prompt`",
            );
            return;
        }
        let mut inheriting: Vec<&str> = Vec::new();
        for (index, (job, spec)) in manifest.jobs.iter().zip(alchemy).enumerate() {
            let Ok(spec) = spec else { continue };
            if spec
                .as_ref()
                .is_some_and(|s| s.contains(AlchemyForm::CAPTION))
            {
                continue;
            }
            let path = root.key("jobs").index(index);
            let name = &job.name;
            match (&job.alchemy, &manifest.defaults.alchemy) {
                (Some(_), _) if spec.is_none() => self.problem(
                    &path.key("alchemy"),
                    format!("job `{name}` turns alchemy off, and {why}"),
                    "give it the `caption` form: `alchemy: [caption]`",
                ),
                (Some(_), _) => self.problem(
                    &path.key("alchemy"),
                    format!("job `{name}` does not run the `caption` form, and {why}"),
                    "add `caption` to its alchemy forms",
                ),
                (None, Some(_)) => inheriting.push(name),
                (None, None) => self.problem(
                    &path.key("name"),
                    format!("job `{name}` runs no alchemy, and {why}"),
                    "give it `alchemy: [caption]`, or set `defaults.alchemy`",
                ),
            }
        }
        if !inheriting.is_empty() {
            let jobs = inheriting
                .iter()
                .map(|name| format!("`{name}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let users = match inheriting.len() {
                1 => format!("job {jobs} uses it"),
                _ => format!("jobs {jobs} use it"),
            };
            self.problem(
                &root.key("defaults").key("alchemy"),
                format!("`defaults.alchemy` does not run the `caption` form ({users}), and {why}"),
                "add `caption` to the default alchemy forms",
            );
        }
    }
}
