//! A job's `matrix:` axes: each entry a parameter, `model`, a `${variable}`
//! of the prompt, or `source_image`, with its values listed or given as a
//! range, every value checked where it is written.
//!
//! What a parameter accepts is `params` one level up and source images are
//! `source`; this file classifies the axes, expands ranges and reports
//! problems. It does not compile templates or read `rows:` tables.

use std::collections::HashMap;

use serde_json::Value;

use super::axes::{number_value, value_text, Axis, AxisKind, AxisValue};
use super::parameters::param_spec;
use super::{Context, VALUE_SYNTAX_HELP};
use crate::manifest::error::excerpt;
use crate::manifest::locate::YamlPath;
use crate::manifest::params::{self, PARAMS};
use crate::manifest::range;
use crate::manifest::schema::JobSpec;
use crate::manifest::template::{self, Piece};

impl Context<'_> {
    /// Adds the job's matrix axes to `axes`, in the order written (an axis
    /// with problems is left out); returns where each is, by name, for the
    /// templates' `${name}`.
    pub(super) fn matrix_axes<'s>(
        &mut self,
        spec: &'s JobSpec,
        path: &YamlPath,
        axes: &mut Vec<Axis>,
    ) -> HashMap<&'s str, usize> {
        let used_variables = prompt_variables(spec);
        let mut variables = HashMap::new();
        for (name, values) in &spec.matrix.0 {
            let here = path.key("matrix").key(name);
            if let Some(axis) = self.matrix_axis(name, values, &here, &used_variables) {
                variables.insert(name.as_str(), axes.len());
                axes.push(axis);
            }
        }
        variables
    }

    fn matrix_axis(
        &mut self,
        name: &str,
        values: &Value,
        path: &YamlPath,
        used_variables: &[String],
    ) -> Option<Axis> {
        if name == "source_image" {
            return self.source_axis(values, path);
        }
        let kind = self.matrix_axis_kind(name, path, used_variables)?;
        let raw = self.matrix_raw_values(name, values, &kind, path)?;
        let mut axis_values = Vec::with_capacity(raw.len());
        for (i, value) in raw.iter().enumerate() {
            let here = if matches!(values, Value::Array(_)) {
                path.index(i)
            } else {
                path.clone()
            };
            if let Some(value) = self.matrix_value(name, &kind, value, &here) {
                axis_values.push(value);
            }
        }
        (axis_values.len() == raw.len()).then_some(Axis {
            kind,
            name: name.to_owned(),
            values: axis_values,
        })
    }

    /// What the axis `name` varies. A parameter axis can be used as
    /// `${name}` in the prompt too; it stays a parameter.
    fn matrix_axis_kind(
        &mut self,
        name: &str,
        path: &YamlPath,
        used_variables: &[String],
    ) -> Option<AxisKind> {
        if name == "model" {
            return Some(AxisKind::Model);
        }
        if let Some(spec) = params::spec(name) {
            return Some(AxisKind::Param(spec.name));
        }
        if used_variables.iter().any(|v| v == name) {
            return Some(AxisKind::Text);
        }
        match param_spec(name) {
            Ok(spec) => Some(AxisKind::Param(spec.name)),
            Err((message, _)) => {
                let candidates = PARAMS
                    .iter()
                    .map(|p| p.name)
                    .chain(used_variables.iter().map(String::as_str))
                    .chain(["model"]);
                let help = params::suggest(name, candidates);
                let message = if name == "seed" || name == "n" {
                    message
                } else {
                    format!("matrix axis `{name}` is neither a parameter, `model`, nor a variable `${{{name}}}` of the prompt{help}")
                };
                self.problem(path, message, "");
                None
            }
        }
    }

    /// The axis's values as written: a list, or a range of numbers (not for
    /// `model`).
    fn matrix_raw_values(
        &mut self,
        name: &str,
        values: &Value,
        kind: &AxisKind,
        path: &YamlPath,
    ) -> Option<Vec<Value>> {
        match values {
            Value::Array(items) if items.is_empty() => {
                self.problem(path, format!("matrix axis `{name}` has no values"), "");
                None
            }
            Value::Array(items) => Some(items.clone()),
            Value::String(text) if !matches!(kind, AxisKind::Model) => match range::expand(text) {
                Ok(numbers) => Some(numbers.into_iter().map(number_value).collect()),
                Err(message) => {
                    self.problem(path, format!("matrix axis `{name}`: {message}"), "a range looks like `20-40 (+10)`, `1-10 [5]` or `1-5`; a single value needs a list: [value]");
                    None
                }
            },
            other => {
                self.problem(
                    path,
                    format!(
                        "matrix axis `{name}` must be a list of values or a range, found {}",
                        params::describe(other)
                    ),
                    "",
                );
                None
            }
        }
    }

    /// One value of the axis, checked for what the axis varies; `None` once
    /// its problem is reported at `here`.
    fn matrix_value(
        &mut self,
        name: &str,
        kind: &AxisKind,
        value: &Value,
        here: &YamlPath,
    ) -> Option<AxisValue> {
        let checked = match kind {
            AxisKind::Param(param) => param_spec(param)
                .ok()
                .map(|spec| params::canonicalize(spec, value).map_err(|p| p.0))
                .unwrap_or_else(|| Err("unknown parameter".to_owned())),
            // Matrix axes are never tables.
            AxisKind::Rows(_) => Ok(value.clone()),
            // `source_axis` builds these; never reached.
            AxisKind::Source(_) => Err("not a source image axis".to_owned()),
            AxisKind::Model => match value {
                Value::String(s) if !s.trim().is_empty() => Ok(value.clone()),
                other => Err(format!(
                    "expected a model name, found {}",
                    params::describe(other)
                )),
            },
            AxisKind::Text => match value {
                Value::String(text) => match template::syntax_in_value(text) {
                    None => Ok(value.clone()),
                    Some(what) => {
                        self.problem(here, format!("matrix axis `{name}`: the value `{}` holds {what}, which is not expanded inside matrix values", excerpt(text)), VALUE_SYNTAX_HELP);
                        return None;
                    }
                },
                Value::Number(_) | Value::Bool(_) => Ok(value.clone()),
                other => Err(format!(
                    "expected a text value, found {}",
                    params::describe(other)
                )),
            },
        };
        match checked {
            Ok(json) => Some(AxisValue {
                text: value_text(&json),
                json,
                weight: 1.0,
            }),
            Err(message) => {
                self.problem(here, format!("matrix axis `{name}`: {message}"), "");
                None
            }
        }
    }
}

/// The `${...}` variables the job's templates use, which makes a matrix axis
/// of that name a text axis. When a template does not parse (its own error
/// is reported) its variables are unknown, so every matrix axis counts as
/// used rather than being second-guessed.
fn prompt_variables(spec: &JobSpec) -> Vec<String> {
    let mut used = template_variables(&spec.prompt, spec.negative.as_deref());
    if [Some(spec.prompt.as_str()), spec.negative.as_deref()]
        .into_iter()
        .flatten()
        .any(|t| template::parse(t).is_err())
    {
        used.extend(spec.matrix.0.keys().cloned());
    }
    used
}

/// Names of the `${...}` variables a job's templates use (for classifying matrix axes).
fn template_variables(prompt: &str, negative: Option<&str>) -> Vec<String> {
    [Some(prompt), negative]
        .into_iter()
        .flatten()
        .filter_map(|text| template::parse(text).ok())
        .flatten()
        .filter_map(|piece| match piece {
            Piece::Variable(name) => Some(name),
            _ => None,
        })
        .collect()
}
