//! A job's prompt templates compiled into segments: text, the value of an
//! axis, or a `rows:` cell. Each variant, combination and wildcard of a
//! template becomes a text axis of the job (labelled `variant_N` or by the
//! wildcard's name), `${name}` points at a matrix axis or rows column, and
//! the prompt's `<lora:…>` tags go to `params.loras`. Then the prompt's size
//! is checked against the Horde's limits.
//!
//! Parsing is `template` one level up, the values of variants are
//! `variants`, those of wildcards `wildcards`; this file assembles them and
//! places problems in the template's text. It does not build matrix or rows
//! axes.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::axes::{Axis, AxisKind, ColumnUse};
use super::Context;
use crate::manifest::locate::YamlPath;
use crate::manifest::schema::JobSpec;
use crate::manifest::template::{self, LoraTag, Pick, Piece};

/// The Horde refuses prompts of more words than this (`InvalidPromptSize`).
const MAX_PROMPT_WORDS: usize = 7500;

/// Prefix of the labels of unnamed variants and combinations.
const VARIANT_LABEL: &str = "variant_";

/// A piece of a compiled template: text, or the value of an axis.
#[derive(Debug, Clone)]
pub(crate) enum Segment {
    Text(String),
    Axis(usize),
    /// `${column}` of the `rows:` axis at this index.
    Field(usize, String),
}

/// A template being compiled: where it is written, to place problems in it.
#[derive(Clone, Copy)]
struct Site<'t> {
    path: &'t YamlPath,
    text: &'t str,
}

impl Context<'_> {
    /// Compiles a job's `prompt` and `negative` (`None` for a template with
    /// problems, all reported), adding their variants and wildcards to
    /// `axes`, moving the prompt's LoRA tags into `params`, and checking the
    /// prompt's size.
    pub(super) fn job_prompts(
        &mut self,
        spec: &JobSpec,
        path: &YamlPath,
        axes: &mut Vec<Axis>,
        variables: &HashMap<&str, usize>,
        params: &mut BTreeMap<&'static str, Value>,
    ) -> (Option<Vec<Segment>>, Option<Vec<Segment>>) {
        let mut lora_tags = Vec::new();
        let positive = self.template(
            &spec.prompt,
            &path.key("prompt"),
            axes,
            variables,
            &spec.matrix.0,
            Some(&mut lora_tags),
        );
        let negative = spec.negative.as_ref().and_then(|n| {
            self.template(
                n,
                &path.key("negative"),
                axes,
                variables,
                &spec.matrix.0,
                None,
            )
        });
        if !lora_tags.is_empty() {
            self.lora_tags(spec, path, &lora_tags, params);
        }
        if let Some(pieces) = &positive {
            self.check_prompt_size(pieces, negative.as_ref(), axes, path);
        }
        (positive, negative)
    }

    /// Compiles a template, adding an axis per variant and wildcard.
    fn template(
        &mut self,
        text: &str,
        path: &YamlPath,
        axes: &mut Vec<Axis>,
        variables: &HashMap<&str, usize>,
        matrix: &indexmap::IndexMap<String, Value>,
        mut lora_tags: Option<&mut Vec<LoraTag>>,
    ) -> Option<Vec<Segment>> {
        let pieces = match template::parse(text) {
            Ok(pieces) => pieces,
            Err(problem) => {
                let problem = self
                    .file
                    .source
                    .problem_in_scalar(path, text, problem.offset, problem.message)
                    .with_help(problem.help);
                self.problems.push(problem);
                return None;
            }
        };
        let site = Site { path, text };
        let mut segments = Vec::with_capacity(pieces.len());
        let mut ok = true;
        for piece in pieces {
            let segment = match piece {
                Piece::Literal(text) => Some(Segment::Text(text)),
                // Only inside variant options.
                Piece::Weight(_) => continue,
                Piece::Lora(tag) => match lora_tags.as_deref_mut() {
                    Some(tags) => {
                        tags.push(tag);
                        continue;
                    }
                    None => {
                        self.problem_at_offset(
                            site,
                            tag.offset,
                            "a LoRA tag in the negative prompt: LoRAs apply to the whole image",
                            "put the tag in `prompt`, or the LoRA in `params.loras`",
                        );
                        None
                    }
                },
                Piece::Combination(pick, options) => {
                    self.combination_segment(site, &pick, &options, axes)
                }
                Piece::Variant(options) => self.variant_segment(site, &options, axes),
                Piece::Wildcard(name) => self.wildcard_segment(site, &name, axes),
                Piece::Variable(name) => self.variable_segment(site, name, axes, variables, matrix),
            };
            match segment {
                Some(segment) => segments.push(segment),
                None => ok = false,
            }
        }
        ok.then_some(segments)
    }

    /// A combination `{N-M$$…}` as a new unnamed axis.
    fn combination_segment(
        &mut self,
        site: Site,
        pick: &Pick,
        options: &[Vec<Piece>],
        axes: &mut Vec<Axis>,
    ) -> Option<Segment> {
        match self.combination_values(pick, options) {
            Ok(values) => {
                let name = unnamed_label(axes);
                let values = values.into_iter().map(|text| (text, 1.0));
                Some(push_axis(axes, Axis::text(name, values)))
            }
            Err((message, help)) => {
                self.problem_at_offset(site, pick.offset, message, help);
                None
            }
        }
    }

    /// A variant `{a|b|c}` as a new unnamed axis, weighted for random mode.
    fn variant_segment(
        &mut self,
        site: Site,
        options: &[Vec<Piece>],
        axes: &mut Vec<Axis>,
    ) -> Option<Segment> {
        match self.variant_values(options) {
            Ok(values) => {
                let name = unnamed_label(axes);
                Some(push_axis(axes, Axis::text(name, values)))
            }
            Err((message, help)) => {
                // The message quotes the piece at fault first; point there.
                let needle = message.split('`').nth(1).unwrap_or("{").to_owned();
                self.problem_in_template(site.path, site.text, &needle, message, help);
                None
            }
        }
    }

    /// A wildcard `__name__` as a new axis labelled by its name.
    fn wildcard_segment(
        &mut self,
        site: Site,
        name: &str,
        axes: &mut Vec<Axis>,
    ) -> Option<Segment> {
        match self.wildcard(name) {
            Ok(values) => {
                let label = distinct_label(axes, name);
                let values = values.iter().map(|v| (v.clone(), 1.0));
                Some(push_axis(axes, Axis::text(label, values)))
            }
            Err((message, help)) => {
                let needle = format!("__{name}__");
                self.problem_in_template(site.path, site.text, &needle, message, help);
                None
            }
        }
    }

    /// `${name}`: the matrix axis of that name, else the rows column.
    fn variable_segment(
        &mut self,
        site: Site,
        name: String,
        axes: &[Axis],
        variables: &HashMap<&str, usize>,
        matrix: &indexmap::IndexMap<String, Value>,
    ) -> Option<Segment> {
        if let Some(&axis) = variables.get(name.as_str()) {
            return Some(Segment::Axis(axis));
        }
        if row_column(axes, &name).is_some() {
            return Some(Segment::Field(0, name));
        }
        // A matrix axis of that name that failed its own checks was already
        // reported, and so was a rows table that failed.
        if !matrix.contains_key(&name) && !self.rows_failed {
            self.problem_in_template(site.path, site.text, &format!("${{{name}}}"), format!("the template uses `${{{name}}}` but the job has no matrix axis or rows column `{name}`"), &format!("add `matrix: {{{name}: [...]}}` to the job, or a `{name}` column to its rows"));
        }
        None
    }

    /// A problem at byte `offset` of the template.
    fn problem_at_offset(
        &mut self,
        site: Site,
        offset: usize,
        message: impl Into<String>,
        help: &str,
    ) {
        let problem = self
            .file
            .source
            .problem_in_scalar(site.path, site.text, offset, message)
            .with_help(help);
        self.problems.push(problem);
    }

    /// The prompt (with the negative, as the Horde counts them together) may
    /// not exceed the Horde's word limit, resolve to nothing, or hold `###`.
    fn check_prompt_size(
        &mut self,
        positive: &[Segment],
        negative: Option<&Vec<Segment>>,
        axes: &[Axis],
        path: &YamlPath,
    ) {
        let words = |segments: &[Segment], pick: fn(usize, usize) -> usize| -> usize {
            segments
                .iter()
                .map(|segment| match segment {
                    Segment::Text(text) => text.split_whitespace().count(),
                    Segment::Axis(axis) => axes[*axis]
                        .values
                        .iter()
                        .map(|v| v.text.split_whitespace().count())
                        .reduce(pick)
                        .unwrap_or(0),
                    Segment::Field(axis, column) => axes[*axis]
                        .values
                        .iter()
                        .map(|v| v.field_text(column).split_whitespace().count())
                        .reduce(pick)
                        .unwrap_or(0),
                })
                .sum()
        };
        let most = words(positive, usize::max) + negative.map_or(0, |n| words(n, usize::max) + 1);
        if most > MAX_PROMPT_WORDS {
            self.problem(&path.key("prompt"), format!("the prompt can reach {most} words; the Horde refuses more than {MAX_PROMPT_WORDS} (InvalidPromptSize)"), "");
        }
        if words(positive, usize::min) == 0 {
            self.problem(
                &path.key("prompt"),
                "the prompt can resolve to nothing; the Horde refuses an empty prompt",
                "",
            );
        }
        let has_separator = positive.iter().any(|segment| match segment {
            Segment::Text(text) => text.contains("###"),
            Segment::Axis(axis) => axes[*axis].values.iter().any(|v| v.text.contains("###")),
            Segment::Field(axis, column) => axes[*axis]
                .values
                .iter()
                .any(|v| v.field_text(column).contains("###")),
        });
        if has_separator {
            self.problem(&path.key("prompt"), "the prompt contains `###`, which the Horde reads as the start of the negative prompt", "put the negative prompt under `negative:`");
        }
    }
}

/// Adds `axis` to the job's axes; the segment that takes its value.
fn push_axis(axes: &mut Vec<Axis>, axis: Axis) -> Segment {
    axes.push(axis);
    Segment::Axis(axes.len() - 1)
}

/// The label of the next variant or combination: `variant_N`, N counting the
/// job's unnamed axes from 1.
fn unnamed_label(axes: &[Axis]) -> String {
    let taken = axes
        .iter()
        .filter(|a| a.name.starts_with(VARIANT_LABEL))
        .count();
    distinct_label(axes, &format!("{VARIANT_LABEL}{}", taken + 1))
}

/// `name`, or `name_2`, `name_3`… when an axis already records that label
/// (a wildcard used twice gives two labels).
fn distinct_label(axes: &[Axis], name: &str) -> String {
    let taken = |label: &str| axes.iter().any(|a| a.name == label);
    if !taken(name) {
        return name.to_owned();
    }
    (2..)
        .map(|n| format!("{name}_{n}"))
        .find(|label| !taken(label))
        .unwrap_or_else(|| name.to_owned())
}

/// The `rows:` column `name` of the job's table, if it has one (the table is
/// always the first axis).
fn row_column<'a>(axes: &'a [Axis], name: &str) -> Option<&'a (String, ColumnUse)> {
    match &axes.first()?.kind {
        AxisKind::Rows(table) => table.columns.iter().find(|(column, _)| column == name),
        _ => None,
    }
}
