//! The simulator's own JSON bodies, written from the real server's models
//! (flask-restx `RequestAsync`, `RequestStatusCheck`, `RequestStatusStable`,
//! `GenerationStable`, the error shapes).
//!
//! These types deliberately do not come from `crate::horde`: if the client's
//! types had a bug, sharing them would hide it from every test.

use std::collections::BTreeMap;

use serde::Serialize;

/// `{"message": ..., "rc": ...}`; limiter 429s leave `rc` out.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct ErrorBody {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rc: Option<&'static str>,
}

/// The flask-restx schema-validation 400: `{"errors": {...}, "message": ...}`, no `rc`.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct ValidationBody {
    pub errors: BTreeMap<String, String>,
    pub message: &'static str,
}

/// A warning entry of the 202 answer.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct Warning {
    pub code: &'static str,
    pub message: &'static str,
}

/// The 202 answer of `POST /v2/generate/async`.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct RequestAsync {
    pub id: String,
    pub kudos: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// `GET /v2/generate/check/{id}`; every key always present.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub(crate) struct CheckBody {
    pub finished: u32,
    pub processing: u32,
    pub restarted: u32,
    pub waiting: u32,
    pub done: bool,
    pub faulted: bool,
    pub wait_time: u64,
    pub queue_position: u64,
    pub kudos: f64,
    pub is_possible: bool,
}

/// `GET`/`DELETE /v2/generate/status/{id}`: the check fields plus generations.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct StatusBody {
    #[serde(flatten)]
    pub check: CheckBody,
    pub generations: Vec<GenerationBody>,
    pub shared: bool,
}

/// One finished image in a status answer.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct GenerationBody {
    pub worker_id: String,
    pub worker_name: String,
    pub model: String,
    pub state: &'static str,
    pub img: String,
    pub seed: String,
    pub id: String,
    pub censored: bool,
    pub gen_metadata: Vec<MetadataEntry>,
}

/// `{type, value, ref?}` entry of `gen_metadata`.
#[derive(Serialize, Debug, Clone)]
pub(crate) struct MetadataEntry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}
