//! Where a job's seeds come from (`seeds:`): left to the Horde, derived from
//! the job key, or given as a list or a range.
//!
//! This file parses and checks the `seeds:` value; it does not derive seeds
//! (`expand` one level up does, per image) and does not check `images:`.

use std::sync::Arc;

use serde_json::Value;

use super::{Context, MAX_IMAGES_PER_JOB};
use crate::manifest::locate::YamlPath;
use crate::manifest::params;
use crate::manifest::schema::SeedsSpec;

/// Where a job's seeds come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeds {
    /// The Horde picks; requests batch up to `max_n` images.
    Random,
    /// One reproducible seed per image, derived from the job key and image index.
    Derived,
    /// One given seed per image.
    List(Arc<[String]>),
}

impl Seeds {
    /// Canonical text for job keys.
    pub(crate) fn canonical(&self) -> String {
        match self {
            Seeds::Random => "random".to_owned(),
            Seeds::Derived => "derived".to_owned(),
            Seeds::List(seeds) => format!("list:{}", Value::from(seeds.to_vec())),
        }
    }
}

impl Context<'_> {
    /// The `seeds:` at `path`; `None` once its problem is reported.
    pub(super) fn seeds(&mut self, spec: &SeedsSpec, path: &YamlPath) -> Option<Seeds> {
        match parse_seeds(&spec.0) {
            Ok(seeds) => Some(seeds),
            Err(message) => {
                self.problem(path, message, "seeds are `random`, `derived`, a list like [1, 2, 3], or a range like \"100-199\"");
                None
            }
        }
    }
}

/// A `seeds:` value; the error is a sentence for the user.
fn parse_seeds(value: &Value) -> Result<Seeds, String> {
    match value {
        Value::String(s) if s == "random" => Ok(Seeds::Random),
        Value::String(s) if s == "derived" => Ok(Seeds::Derived),
        Value::String(s) => {
            let (start, end) = s
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?))
                })
                .ok_or_else(|| {
                    format!("`{s}` is not `random`, `derived` or a seed range like \"100-199\"")
                })?;
            if end < start || end - start >= u64::from(MAX_IMAGES_PER_JOB) {
                return Err(format!(
                    "seed range `{s}` must go upwards and hold at most {MAX_IMAGES_PER_JOB} seeds"
                ));
            }
            Ok(Seeds::List((start..=end).map(|s| s.to_string()).collect()))
        }
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::Number(n) if n.is_u64() => Ok(n.to_string()),
                Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                other => Err(format!(
                    "a seed must be a whole number or text, found {}",
                    params::describe(other)
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|seeds| Seeds::List(Arc::from(seeds))),
        other => Err(format!(
            "seeds must be `random`, `derived`, a list or a range, found {}",
            params::describe(other)
        )),
    }
}
