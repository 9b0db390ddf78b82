//! The alchemy (interrogation) API's bodies: what `POST /v2/interrogate/async`
//! takes and what `GET`/`DELETE /v2/interrogate/status/{id}` answer
//! (docs/horde-api.md §10 (alchemy)).
//!
//! Owns the wire shapes only. Form names stay strings here: which names exist,
//! what they cost and what their results mean belong to `manifest` and the
//! engine. Unknown states and result shapes are kept, never refused, so a
//! newer server does not break a run.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The body of `POST /v2/interrogate/async`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InterrogationRequest {
    /// The image, base64 (the Horde re-encodes it before a worker sees it).
    pub source_image: String,
    /// The forms to run, each once (the Horde does not merge duplicates and
    /// charges each).
    pub forms: Vec<InterrogationForm>,
    /// Whether slow alchemists may serve it (the Horde's default, true, costs
    /// one kudo more per form).
    pub slow_workers: bool,
}

/// One form of an [`InterrogationRequest`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InterrogationForm {
    /// The form's name, e.g. `caption` or `RealESRGAN_x2plus`.
    pub name: String,
}

/// The 202 answer of `POST /v2/interrogate/async` (no kudos, no message).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InterrogationAccepted {
    pub id: String,
}

/// A form's state on the Horde.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormState {
    Waiting,
    Processing,
    Done,
    Faulted,
    Cancelled,
    /// A state this client does not know: treated as still running.
    #[serde(other)]
    Unknown,
}

/// The status of an interrogation request. The request's own `state` is
/// derived from its forms on every read, so only the forms are kept.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InterrogationStatus {
    /// The forms, in an order that changes between reads: match them by name.
    #[serde(default)]
    pub forms: Vec<FormStatus>,
}

/// One form of an [`InterrogationStatus`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FormStatus {
    /// The form's name.
    pub form: String,
    pub state: FormState,
    /// Once done: what the worker sent, keyed by the form's name
    /// (`{"caption": "…"}`, `{"nsfw": false}`, `{"RealESRGAN_x2plus": "<url>"}`).
    #[serde(default)]
    pub result: Option<Map<String, Value>>,
}

impl FormStatus {
    /// The form's value: `result[form]`, or the whole result when the worker
    /// keyed it otherwise.
    pub fn value(&self) -> Option<Value> {
        let result = self.result.as_ref()?;
        Some(match result.get(&self.form) {
            Some(value) => value.clone(),
            None => Value::Object(result.clone()),
        })
    }
}

/// An alchemist in `GET /v2/workers?type=interrogation`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AlchemistSummary {
    pub name: String,
    #[serde(default)]
    pub online: bool,
    #[serde(default)]
    pub maintenance_mode: bool,
    /// The forms it serves.
    #[serde(default)]
    pub forms: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_as_the_horde_sends_it_reads_with_forms_by_name() {
        let body = r#"{"state": "processing", "forms": [
            {"form": "nsfw", "state": "waiting"},
            {"form": "caption", "state": "done", "result": {"caption": "a cat"}},
            {"form": "describe", "state": "someday"}]}"#;
        let status: InterrogationStatus = serde_json::from_str(body).unwrap();
        assert_eq!(status.forms[0].state, FormState::Waiting);
        assert_eq!(status.forms[0].value(), None);
        assert_eq!(status.forms[1].value(), Some(Value::from("a cat")));
        assert_eq!(status.forms[2].state, FormState::Unknown);
    }

    #[test]
    fn a_result_keyed_otherwise_is_kept_whole() {
        let body = r#"{"form": "aesthetic", "state": "done", "result": {"score": 6.9}}"#;
        let form: FormStatus = serde_json::from_str(body).unwrap();
        assert_eq!(form.value(), Some(serde_json::json!({"score": 6.9})));
    }

    #[test]
    fn the_request_body_names_each_form() {
        let request = InterrogationRequest {
            source_image: "AAAA".into(),
            forms: vec![InterrogationForm {
                name: "caption".into(),
            }],
            slow_workers: true,
        };
        assert_eq!(
            serde_json::to_value(&request).unwrap(),
            serde_json::json!({"source_image": "AAAA", "forms": [{"name": "caption"}], "slow_workers": true})
        );
    }
}
