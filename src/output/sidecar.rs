//! The per-image JSON sidecar: everything needed to reproduce and audit one image.
//!
//! Owns the sidecar's shape and its schema version. The sidecars are the
//! source of truth for finished work (the ledger can be rebuilt from them),
//! so fields are only ever added, never renamed. There is deliberately no
//! field that could hold an API key. Must not know where values come from.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The version of horde-batch writing the files, recorded in every sidecar.
pub const HORDE_BATCH_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Formats a timestamp the way sidecars and result files record it:
/// RFC 3339, UTC, milliseconds (`2026-05-01T12:00:00.123Z`).
pub fn format_timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// The JSON document written next to each image as `<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// Sidecar format version; [`Sidecar::SCHEMA`] when written by this build.
    pub schema: u32,
    /// The image's path relative to the output directory, with `.webp`.
    /// [`OutputDir::write_image`](super::OutputDir::write_image) fills it in.
    pub file_name: String,
    /// The manifest's path as given on the command line.
    pub manifest: String,
    /// The manifest's `name`.
    pub manifest_name: String,
    /// The job's name.
    pub job: String,
    /// The job's stable key.
    pub job_key: String,
    /// Index of this image within its job.
    pub image_index: u32,
    /// The prompt as written in the manifest, before expansion.
    pub prompt_template: String,
    /// The positive prompt sent to the Horde.
    pub prompt: String,
    /// The negative prompt sent to the Horde, if any.
    pub negative_prompt: Option<String>,
    /// The model that generated the image.
    pub model: String,
    /// Every generation parameter (`params` of the request) as sent.
    pub params: Value,
    /// The request's top-level flags (`nsfw`, `r2`, `slow_workers`, …) as sent.
    pub request: Value,
    /// The seed the worker used. A string, as the Horde reports it.
    pub seed: String,
    /// Position of the image in its Horde request (`n` > 1), if known.
    pub batch_index: Option<u32>,
    /// The Horde's id for the request that produced the image.
    pub horde_request_id: String,
    /// The Horde's id for this generation.
    pub generation_id: String,
    /// The worker that generated the image.
    pub worker_id: String,
    /// The worker's name.
    pub worker_name: String,
    /// Whether the Horde censored the image.
    pub censored: bool,
    /// The generation's `gen_metadata` entries, verbatim.
    pub gen_metadata: Value,
    /// Kudos the whole request cost.
    pub kudos: f64,
    /// When the request was submitted (RFC 3339, see [`format_timestamp`]).
    pub submitted_at: String,
    /// When the image was retrieved (RFC 3339).
    pub completed_at: String,
    /// The horde-batch version that wrote the sidecar.
    pub horde_batch_version: String,
    /// The value each axis, wildcard and row variable took for this job,
    /// named after it (`{mood: happy, animal: owl}`). Absent in sidecars
    /// written before labels existed.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The source images the job was generated from (img2img, inpainting,
    /// ControlNet, ...): paths as the manifest wrote them and the hashes of
    /// the bytes sent. Absent for txt2img and in sidecars written before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<SidecarSources>,
    /// What alchemy (captions, tags, nsfw, post-processors) gave for the
    /// image: `{"caption": …, "nsfw": …, "interrogation": {…}, "<post-processor>":
    /// "<derived file name>", "failed": {form: why}}`, added to the file when
    /// the image's forms finish
    /// ([`OutputDir::record_alchemy_in_sidecar`](super::OutputDir::record_alchemy_in_sidecar)).
    /// Absent before; never part of what makes a generation the same one
    /// ([`Sidecar::same_generation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alchemy: Option<Value>,
}

/// A job's source images, as recorded in its sidecars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SidecarSources {
    /// `img2img`, `inpainting`, `outpainting` or `remix`.
    pub source_processing: String,
    pub source_image: SidecarSourceFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_mask: Option<SidecarSourceFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_source_images: Vec<SidecarSourceFile>,
}

/// One source file: where it was and what its bytes hashed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SidecarSourceFile {
    /// The path as the manifest wrote it (relative to the manifest's folder).
    pub path: String,
    /// horde-batch's hash of the file's bytes (32 hex digits; part of the job key).
    pub hash: String,
    /// Strength, for an extra source image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
}

/// A job's labels: variable name → the value it took, sorted by name.
pub type Labels = std::collections::BTreeMap<String, Value>;

impl Sidecar {
    /// The sidecar format this build writes.
    pub const SCHEMA: u32 = 1;

    /// Whether two sidecars describe the same generation (timestamps and
    /// other details of the retrieval may differ).
    pub fn same_generation(&self, other: &Sidecar) -> bool {
        self.horde_request_id == other.horde_request_id && self.generation_id == other.generation_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(format_timestamp(at), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn sources_are_optional_and_left_out_when_absent() {
        let file = |path: &str| SidecarSourceFile {
            path: path.into(),
            hash: "ab".into(),
            strength: None,
        };
        let sources = SidecarSources {
            source_processing: "inpainting".into(),
            source_image: file("in/a.png"),
            source_mask: Some(file("in/m.png")),
            extra_source_images: Vec::new(),
        };
        let value = serde_json::to_value(&sources).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"source_processing": "inpainting",
                "source_image": {"path": "in/a.png", "hash": "ab"},
                "source_mask": {"path": "in/m.png", "hash": "ab"}})
        );
        assert_eq!(
            serde_json::from_value::<SidecarSources>(value).unwrap(),
            sources
        );
    }
}
