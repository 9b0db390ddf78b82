//! The axes of a compiled job: what each varies (a parameter, the model,
//! prompt text, source images, a `rows:` table's rows) and the values it
//! takes, as text for prompts and JSON for parameters.
//!
//! This file owns the types and how a value reads as text; it checks nothing
//! and reports no problems: the files that build axes (`matrix`, `rows_axis`,
//! `templates`, and `source` one level up) do.

use std::sync::Arc;

use serde_json::Value;

use crate::manifest::source::SourceRef;

/// A value an axis takes: its text (for prompts) and JSON (for parameters).
#[derive(Debug, Clone)]
pub(crate) struct AxisValue {
    pub text: String,
    pub json: Value,
    /// Relative weight in random mode (`sample:`); 1 unless a variant option
    /// says `w::`.
    pub weight: f64,
}

/// What an axis varies.
#[derive(Debug, Clone)]
pub(crate) enum AxisKind {
    Param(&'static str),
    Model,
    Text,
    /// `source_image` files (a matrix axis), in the axis's order.
    Source(Arc<[Arc<SourceRef>]>),
    /// A `rows:` table: each value is a row, its `json` an object of the
    /// row's cells (canonical parameter values, text for the rest).
    Rows(Arc<RowColumns>),
}

/// The columns of a `rows:` table and what each sets.
#[derive(Debug)]
pub(crate) struct RowColumns {
    pub columns: Vec<(String, ColumnUse)>,
    /// The column holding each row's id.
    pub id: Option<String>,
    /// Each row's `source_image`, when the table has that column.
    pub sources: Vec<Option<Arc<SourceRef>>>,
}

impl RowColumns {
    /// Whether the table has a `source_image` column.
    pub(crate) fn has_sources(&self) -> bool {
        self.columns
            .iter()
            .any(|(_, used)| *used == ColumnUse::SourceImage)
    }
}

/// What a `rows:` column sets, besides being a prompt variable and a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnUse {
    Text,
    Param(&'static str),
    Model,
    /// A source image path, relative to the manifest (img2img per row).
    SourceImage,
}

/// One dimension of a job's combinations: a name and the values it takes.
#[derive(Debug, Clone)]
pub(crate) struct Axis {
    pub kind: AxisKind,
    /// The label the axis's value is recorded under: the matrix axis's or
    /// wildcard's name, `variant_N` for the N-th unnamed variant.
    pub name: String,
    pub values: Vec<AxisValue>,
}

impl Axis {
    /// An axis of prompt text: each value with its weight in random mode.
    pub(super) fn text(name: String, values: impl IntoIterator<Item = (String, f64)>) -> Axis {
        Axis {
            kind: AxisKind::Text,
            name,
            values: values
                .into_iter()
                .map(|(text, weight)| AxisValue {
                    json: Value::from(text.as_str()),
                    text,
                    weight,
                })
                .collect(),
        }
    }
}

impl AxisValue {
    /// The text a `${column}` of a row inserts (`""` when the cell is empty).
    pub(crate) fn field_text(&self, column: &str) -> String {
        self.json.get(column).map(value_text).unwrap_or_default()
    }
}

/// A number from a range, as an integer when it is whole.
pub(super) fn number_value(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Value::from(v as i64)
    } else {
        serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

/// The text of a value as it appears in a prompt.
pub(super) fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}
