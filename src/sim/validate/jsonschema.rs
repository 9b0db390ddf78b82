//! The JSON-schema check flask-restx runs before anything else: each field
//! against its [`Kind`] (type, bounds, length, allowed values, uniqueness),
//! with jsonschema's Python-flavoured messages keyed by field path.
//!
//! Owns the checker, not the tables (`schema`). It must not apply defaults
//! or check anything the schema does not: later rules answer with an `rc`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::python_repr::{py_repr, py_str_repr};

/// Shape of one schema field.
pub(super) enum Kind {
    Str {
        min_len: Option<usize>,
        max_len: Option<usize>,
        one_of: Option<&'static [&'static str]>,
    },
    Int {
        min: i64,
        max: i64,
        multiple_of: Option<i64>,
    },
    Num {
        min: f64,
        max: f64,
    },
    Bool,
    Array {
        items: &'static Kind,
        unique: bool,
    },
    Object,
}
/// Checks the fields of `object` that `schema` lists, recording the first
/// failure of each under `prefix` + its name.
pub(super) fn check_fields(
    object: &Map<String, Value>,
    schema: &[(&str, Kind)],
    prefix: &str,
    errors: &mut BTreeMap<String, String>,
) {
    for (name, kind) in schema {
        if let Some(value) = object.get(*name) {
            check_value(value, kind, &format!("{prefix}{name}"), errors);
        }
    }
}

/// Checks one value, then the items of an array that passed, recording the
/// first failure under `path`.
fn check_value(value: &Value, kind: &Kind, path: &str, errors: &mut BTreeMap<String, String>) {
    let failure = match kind {
        Kind::Str {
            min_len,
            max_len,
            one_of,
        } => str_failure(value, *min_len, *max_len, *one_of),
        Kind::Int {
            min,
            max,
            multiple_of,
        } => int_failure(value, *min, *max, *multiple_of),
        Kind::Num { min, max } => num_failure(value, *min, *max),
        Kind::Bool => {
            (!value.is_boolean()).then(|| format!("{} is not of type 'boolean'", py_repr(value)))
        }
        Kind::Object => {
            (!value.is_object()).then(|| format!("{} is not of type 'object'", py_repr(value)))
        }
        Kind::Array { items, unique } => {
            let failure = array_failure(value, *unique);
            if let (None, Some(array)) = (&failure, value.as_array()) {
                for (index, item) in array.iter().enumerate() {
                    check_value(item, items, &format!("{path}.{index}"), errors);
                }
            }
            failure
        }
    };
    if let Some(message) = failure {
        errors.entry(path.to_owned()).or_insert(message);
    }
}

fn str_failure(
    value: &Value,
    min_len: Option<usize>,
    max_len: Option<usize>,
    one_of: Option<&[&str]>,
) -> Option<String> {
    let repr = py_repr(value);
    let Some(text) = value.as_str() else {
        return Some(format!("{repr} is not of type 'string'"));
    };
    let chars = text.chars().count();
    if let Some(allowed) = one_of {
        if !allowed.contains(&text) {
            let list: Vec<String> = allowed.iter().map(|item| py_str_repr(item)).collect();
            return Some(format!("{repr} is not one of [{}]", list.join(", ")));
        }
    }
    if min_len.is_some_and(|min| chars < min) {
        return Some(format!("{repr} is too short"));
    }
    if max_len.is_some_and(|max| chars > max) {
        return Some(format!("{repr} is too long"));
    }
    None
}

fn int_failure(value: &Value, min: i64, max: i64, multiple_of: Option<i64>) -> Option<String> {
    let repr = py_repr(value);
    // Draft 4 (flask-restx's validator): 3.0 is a number, not an integer.
    let Some(number) = value.as_i64() else {
        return Some(format!("{repr} is not of type 'integer'"));
    };
    if let Some(step) = multiple_of {
        if number % step != 0 {
            return Some(format!("{repr} is not a multiple of {step}"));
        }
    }
    if number < min {
        Some(format!("{repr} is less than the minimum of {min}"))
    } else if number > max {
        Some(format!("{repr} is greater than the maximum of {max}"))
    } else {
        None
    }
}

fn num_failure(value: &Value, min: f64, max: f64) -> Option<String> {
    let repr = py_repr(value);
    let Some(number) = value.as_f64() else {
        return Some(format!("{repr} is not of type 'number'"));
    };
    if number < min {
        Some(format!(
            "{repr} is less than the minimum of {}",
            py_float_bound(min)
        ))
    } else if number > max {
        Some(format!(
            "{repr} is greater than the maximum of {}",
            py_float_bound(max)
        ))
    } else {
        None
    }
}

/// The array's own failure (type, uniqueness); its items are checked apart.
fn array_failure(value: &Value, unique: bool) -> Option<String> {
    let Some(array) = value.as_array() else {
        return Some(format!("{} is not of type 'array'", py_repr(value)));
    };
    let has_duplicate = unique
        && array
            .iter()
            .enumerate()
            .any(|(index, item)| array[..index].contains(item));
    has_duplicate.then(|| format!("{} has non-unique elements", py_repr(value)))
}

/// The schema bounds are written as Python ints where they are whole (`max=100`).
fn py_float_bound(bound: f64) -> String {
    if bound.fract() == 0.0 {
        format!("{}", bound as i64)
    } else {
        format!("{bound}")
    }
}
