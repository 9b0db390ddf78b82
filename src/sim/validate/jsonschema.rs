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

fn check_value(value: &Value, kind: &Kind, path: &str, errors: &mut BTreeMap<String, String>) {
    let mut fail = |message: String| {
        errors.entry(path.to_owned()).or_insert(message);
    };
    let repr = py_repr(value);
    match kind {
        Kind::Str {
            min_len,
            max_len,
            one_of,
        } => {
            let Some(text) = value.as_str() else {
                return fail(format!("{repr} is not of type 'string'"));
            };
            let chars = text.chars().count();
            if let Some(allowed) = one_of {
                if !allowed.contains(&text) {
                    let list: Vec<String> = allowed.iter().map(|item| py_str_repr(item)).collect();
                    return fail(format!("{repr} is not one of [{}]", list.join(", ")));
                }
            }
            if min_len.is_some_and(|min| chars < min) {
                return fail(format!("{repr} is too short"));
            }
            if max_len.is_some_and(|max| chars > max) {
                fail(format!("{repr} is too long"));
            }
        }
        Kind::Int {
            min,
            max,
            multiple_of,
        } => {
            // Draft 4 (flask-restx's validator): 3.0 is a number, not an integer.
            let Some(number) = value.as_i64() else {
                return fail(format!("{repr} is not of type 'integer'"));
            };
            if let Some(step) = multiple_of {
                if number % step != 0 {
                    return fail(format!("{repr} is not a multiple of {step}"));
                }
            }
            if number < *min {
                fail(format!("{repr} is less than the minimum of {min}"));
            } else if number > *max {
                fail(format!("{repr} is greater than the maximum of {max}"));
            }
        }
        Kind::Num { min, max } => {
            let Some(number) = value.as_f64() else {
                return fail(format!("{repr} is not of type 'number'"));
            };
            if number < *min {
                fail(format!(
                    "{repr} is less than the minimum of {}",
                    py_float_bound(*min)
                ));
            } else if number > *max {
                fail(format!(
                    "{repr} is greater than the maximum of {}",
                    py_float_bound(*max)
                ));
            }
        }
        Kind::Bool => {
            if !value.is_boolean() {
                fail(format!("{repr} is not of type 'boolean'"));
            }
        }
        Kind::Object => {
            if !value.is_object() {
                fail(format!("{repr} is not of type 'object'"));
            }
        }
        Kind::Array { items, unique } => {
            let Some(array) = value.as_array() else {
                return fail(format!("{repr} is not of type 'array'"));
            };
            if *unique {
                let has_duplicate = array
                    .iter()
                    .enumerate()
                    .any(|(index, item)| array[..index].contains(item));
                if has_duplicate {
                    return fail(format!("{repr} has non-unique elements"));
                }
            }
            for (index, item) in array.iter().enumerate() {
                check_value(item, items, &format!("{path}.{index}"), errors);
            }
        }
    }
}

/// The schema bounds are written as Python ints where they are whole (`max=100`).
fn py_float_bound(bound: f64) -> String {
    if bound.fract() == 0.0 {
        format!("{}", bound as i64)
    } else {
        format!("{bound}")
    }
}
