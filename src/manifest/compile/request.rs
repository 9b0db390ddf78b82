//! The Horde's top-level request flags (`request:`): a job's flags over
//! `defaults.request`, with the Horde's defaults for the rest, and the checks
//! the Horde would otherwise fail a request for (worker ids, webhook URL).
//!
//! Only the `request:` mappings are read here; parameters, prompts and axes
//! are other files' business.

use serde::Serialize;

use super::Context;
use crate::manifest::locate::YamlPath;
use crate::manifest::schema::RequestSpec;

/// The Horde's top-level request flags, every one resolved.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestFlags {
    pub nsfw: bool,
    pub censor_nsfw: bool,
    pub trusted_workers: bool,
    pub validated_backends: bool,
    pub slow_workers: bool,
    pub extra_slow_workers: bool,
    pub r2: bool,
    pub replacement_filter: bool,
    pub allow_downgrade: bool,
    pub disable_batching: bool,
    pub workers: Vec<String>,
    pub worker_blacklist: bool,
    pub webhook: Option<String>,
    pub style: Option<String>,
}

impl Context<'_> {
    /// A job's flags: its own `request:`, then `defaults.request`, then the
    /// Horde's defaults. Only the job's mapping is checked here; the
    /// defaults are checked once, by `compile`.
    pub(super) fn request_flags(
        &mut self,
        defaults: &RequestSpec,
        job: &RequestSpec,
        path: &YamlPath,
    ) -> RequestFlags {
        macro_rules! flag {
            ($name:ident, $default:expr) => {
                job.$name.or(defaults.$name).unwrap_or($default)
            };
        }
        let workers = job
            .workers
            .clone()
            .or_else(|| defaults.workers.clone())
            .unwrap_or_default();
        let webhook = job.webhook.clone().or_else(|| defaults.webhook.clone());
        self.check_request_spec(job, path);
        RequestFlags {
            nsfw: flag!(nsfw, false),
            censor_nsfw: flag!(censor_nsfw, true),
            trusted_workers: flag!(trusted_workers, false),
            validated_backends: flag!(validated_backends, false),
            slow_workers: flag!(slow_workers, true),
            extra_slow_workers: flag!(extra_slow_workers, false),
            r2: flag!(r2, true),
            replacement_filter: flag!(replacement_filter, true),
            allow_downgrade: flag!(allow_downgrade, false),
            disable_batching: flag!(disable_batching, false),
            workers,
            worker_blacklist: flag!(worker_blacklist, false),
            webhook,
            style: job.style.clone().or_else(|| defaults.style.clone()),
        }
    }

    /// Checks the flags one `request:` mapping sets, where it sets them.
    pub(super) fn check_request_spec(&mut self, spec: &RequestSpec, path: &YamlPath) {
        let workers = spec.workers.as_deref().unwrap_or_default();
        if workers.len() > 5 {
            self.problem(
                &path.key("workers"),
                format!(
                    "{} workers given; the Horde silently keeps only the first 5",
                    workers.len()
                ),
                "",
            );
        }
        for worker in workers {
            if uuid::Uuid::parse_str(worker).is_err() {
                self.problem(
                    &path.key("workers"),
                    format!("`{worker}` is not a worker id (a UUID)"),
                    "",
                );
            }
        }
        if let Some(url) = &spec.webhook {
            if !url.starts_with("https://") || !(10..=1024).contains(&url.len()) {
                self.problem(
                    &path.key("webhook"),
                    "the webhook must be an https:// URL of 10 to 1024 characters",
                    "",
                );
            }
        }
    }
}
