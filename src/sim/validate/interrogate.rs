//! Validation of `POST /v2/interrogate/async` bodies in the real server's
//! layers: the flask-restx schema (`forms` a list of `{name, payload}` with
//! `name` in the form enum, field types), then the reqparse step that needs
//! `source_image` (docs/horde-api.md §10 (alchemy)). Unknown top-level keys
//! are ignored, `payload` is passed on unchecked, `trusted_workers` is
//! accepted though the model does not list it.
//!
//! It must not decode the source image (that comes after the user checks,
//! in `state::alchemy`) nor accept a body the server refuses.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::super::alchemy_forms::{is_known_form, known_forms};
use super::python_repr::{py_repr, py_str_repr};

/// The `errors` map of a 400 validation answer.
type FieldErrors = BTreeMap<String, String>;

/// One requested form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FormInput {
    pub name: String,
    /// Passed to the worker unchanged.
    pub payload: Option<Value>,
}

/// A schema-valid interrogation request with the server's defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InterrogateInput {
    /// Duplicates kept: the server does not merge them.
    pub forms: Vec<FormInput>,
    /// `None` when the body has none (reqparse refuses it after the apikey header).
    pub source_image: Option<String>,
    pub slow_workers: bool,
    pub trusted_workers: bool,
    pub webhook: Option<String>,
}

/// Checks `body` against the interrogation schema; on failure the `errors` map.
pub(crate) fn parse_interrogate(body: &Value) -> Result<InterrogateInput, FieldErrors> {
    let mut errors = BTreeMap::new();
    let Some(top) = body.as_object() else {
        errors.insert(
            String::new(),
            format!("{} is not of type 'object'", py_repr(body)),
        );
        return Err(errors);
    };
    check_type(top, "source_image", "string", Value::is_string, &mut errors);
    check_type(top, "webhook", "string", Value::is_string, &mut errors);
    check_type(
        top,
        "slow_workers",
        "boolean",
        Value::is_boolean,
        &mut errors,
    );
    check_type(
        top,
        "trusted_workers",
        "boolean",
        Value::is_boolean,
        &mut errors,
    );
    let forms = match top.get("forms") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => forms_of(items, &mut errors),
        Some(other) => {
            errors.insert(
                "forms".to_owned(),
                format!("{} is not of type 'array'", py_repr(other)),
            );
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(InterrogateInput {
        forms,
        source_image: top
            .get("source_image")
            .and_then(Value::as_str)
            .map(str::to_owned),
        slow_workers: top
            .get("slow_workers")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        trusted_workers: top
            .get("trusted_workers")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        webhook: top
            .get("webhook")
            .and_then(Value::as_str)
            .filter(|hook| !hook.is_empty())
            .map(str::to_owned),
    })
}

/// reqparse's answer when the body has no `source_image`.
pub(crate) fn missing_source_image() -> FieldErrors {
    [(
        "source_image".to_owned(),
        "Missing required parameter in the JSON body".to_owned(),
    )]
    .into()
}

fn check_type(
    top: &Map<String, Value>,
    field: &str,
    kind: &str,
    is_kind: fn(&Value) -> bool,
    errors: &mut FieldErrors,
) {
    if let Some(value) = top.get(field) {
        if !value.is_null() && !is_kind(value) {
            errors.insert(
                field.to_owned(),
                format!("{} is not of type '{kind}'", py_repr(value)),
            );
        }
    }
}

/// The forms of a `forms` array, recording each item's schema failure.
fn forms_of(items: &[Value], errors: &mut FieldErrors) -> Vec<FormInput> {
    let mut forms = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let Some(item) = item.as_object() else {
            errors.insert(
                format!("forms.{index}"),
                format!("{} is not of type 'object'", py_repr(item)),
            );
            continue;
        };
        let path = format!("forms.{index}.name");
        match item.get("name") {
            None => {
                errors.insert(path, "'name' is a required property".to_owned());
            }
            Some(Value::String(name)) if is_known_form(name) => forms.push(FormInput {
                name: name.clone(),
                payload: item.get("payload").filter(|p| !p.is_null()).cloned(),
            }),
            Some(other) => {
                errors.insert(
                    path,
                    format!("{} is not one of {}", py_repr(other), enum_repr()),
                );
            }
        }
    }
    forms
}

/// The form enum as Python prints a list: `['caption', 'interrogation', ...]`.
fn enum_repr() -> String {
    let names: Vec<String> = known_forms().map(py_str_repr).collect();
    format!("[{}]", names.join(", "))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_and_duplicates() {
        let input = parse_interrogate(&json!({"source_image": "x", "extra": 1,
            "forms": [{"name": "caption"}, {"name": "caption", "payload": {"a": 1}}]}))
        .unwrap();
        assert_eq!(input.forms.len(), 2);
        assert_eq!(input.forms[1].payload, Some(json!({"a": 1})));
        assert!(input.slow_workers && !input.trusted_workers);
        assert!(parse_interrogate(&json!({})).unwrap().forms.is_empty());
    }

    #[test]
    fn schema_errors_name_the_field() {
        let errors = parse_interrogate(&json!({"forms": [{"name": "bogus"}]})).unwrap_err();
        let message = &errors["forms.0.name"];
        assert!(
            message.starts_with(
                "'bogus' is not one of ['caption', 'interrogation', 'nsfw', 'vectorize'"
            ),
            "{message}"
        );
        let errors = parse_interrogate(&json!({"forms": [{"name": "caption"}, {}]})).unwrap_err();
        assert_eq!(errors["forms.1.name"], "'name' is a required property");
        let errors = parse_interrogate(&json!({"forms": "caption"})).unwrap_err();
        assert_eq!(errors["forms"], "'caption' is not of type 'array'");
    }
}
