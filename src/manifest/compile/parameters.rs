//! Generation parameters: a `params:` mapping checked against the Horde's
//! limits and canonicalised over the defaults it overrides, and the prompt's
//! A1111 `<lora:…>` tags merged into `params.loras` (so they are part of the
//! job keys).
//!
//! What each parameter accepts is `params` one level up; this file only
//! applies it and reports where a value is wrong. It does not read axes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Context;
use crate::manifest::locate::YamlPath;
use crate::manifest::params::{self, BuiltIn, ParamSpec, BUILT_IN_DEFAULTS, PARAMS};
use crate::manifest::schema::JobSpec;
use crate::manifest::template::LoraTag;

impl Context<'_> {
    /// Checks a parameter map; `over` is the map it overrides.
    pub(super) fn params(
        &mut self,
        given: &indexmap::IndexMap<String, Value>,
        path: &YamlPath,
        over: Option<&BTreeMap<&'static str, Value>>,
    ) -> BTreeMap<&'static str, Value> {
        let mut out = over.cloned().unwrap_or_else(|| {
            BUILT_IN_DEFAULTS
                .iter()
                .map(|(name, value): &(&'static str, BuiltIn)| (*name, value.to_value()))
                .collect()
        });
        for (name, value) in given {
            let here = path.key(name);
            match param_spec(name) {
                Ok(spec) => match params::canonicalize(spec, value) {
                    Ok(canonical) => {
                        out.insert(spec.name, canonical);
                    }
                    Err(problem) => self.problem(&here, format!("`{name}`: {}", problem.0), ""),
                },
                Err((message, help)) => self.problem(&here, message, &help),
            }
        }
        out
    }

    /// Moves the prompt's `<lora:…>` tags into `params.loras`, after the LoRAs
    /// the parameters already name; each problem is reported at its tag.
    pub(super) fn lora_tags(
        &mut self,
        spec: &JobSpec,
        path: &YamlPath,
        tags: &[LoraTag],
        params: &mut BTreeMap<&'static str, Value>,
    ) {
        let here = path.key("prompt");
        let at = |cx: &mut Self, tag: &LoraTag, message: String, help: &str| {
            let problem = cx
                .file
                .source
                .problem_in_scalar(&here, &spec.prompt, tag.offset, message)
                .with_help(help);
            cx.problems.push(problem);
        };
        if spec.matrix.0.contains_key("loras") {
            at(self, &tags[0], "the prompt has `<lora:…>` tags and the job has a `loras` matrix axis; each axis value would replace the tags' LoRAs".to_owned(), "name the LoRAs in the axis values");
            return;
        }
        let Some(loras_spec) = params::spec("loras") else {
            return;
        };
        let mut list = match params.get("loras") {
            Some(Value::Array(items)) => items.clone(),
            _ => Vec::new(),
        };
        for tag in tags {
            let mut entry = serde_json::Map::new();
            entry.insert("name".into(), Value::from(tag.name.as_str()));
            for (field, weight) in [("model", tag.model), ("clip", tag.clip)] {
                if let Some(weight) = weight {
                    entry.insert(field.into(), Value::from(weight));
                }
            }
            let entry = Value::Object(entry);
            let named = |v: &Value| v.get("name") == entry.get("name");
            if list.iter().any(named) {
                at(self, tag, format!("LoRA `{}` is requested twice (by this tag and by `params.loras` or an earlier tag)", tag.name), "keep one of them");
                continue;
            }
            if let Err(problem) =
                params::canonicalize(loras_spec, &Value::from(vec![entry.clone()]))
            {
                let message = problem.0.trim_start_matches("entry 0: ");
                at(self, tag, format!("LoRA tag `{}`: {message}", tag.name), "");
                continue;
            }
            list.push(entry);
            if let Err(problem) = params::canonicalize(loras_spec, &Value::from(list.clone())) {
                at(
                    self,
                    tag,
                    format!("`loras` with the prompt's tags: {}", problem.0),
                    "",
                );
                return;
            }
        }
        if let Ok(canonical) = params::canonicalize(loras_spec, &Value::from(list)) {
            params.insert(loras_spec.name, canonical);
        }
    }
}

/// The spec of a manifest parameter, or why `name` is not one.
pub(super) fn param_spec(name: &str) -> Result<&'static ParamSpec, (String, String)> {
    match name {
        "n" => Err(("`n` is set by horde-batch: each job's `images` is split into requests of up to `run.max_n`".to_owned(), "use `images:` on the job".to_owned())),
        "seed" => Err(("`seed` is not a parameter here: seeds are set per job with `seeds:`".to_owned(), "e.g. `seeds: [42]`, `seeds: \"100-199\"` or `seeds: derived`".to_owned())),
        _ => params::spec(name).ok_or_else(|| {
            (
                format!("unknown parameter `{name}`{}", params::suggest(name, PARAMS.iter().map(|p| p.name))),
                format!("known parameters: {}", PARAMS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")),
            )
        }),
    }
}
