//! The manifest language: parse a YAML manifest with positions, check it
//! against the Horde's limits, and expand it into jobs.
//!
//! `ManifestFile::load` reads and deserialises (`schema`), `compile` checks
//! everything that serde cannot (parameters, templates, wildcards, axes, seeds,
//! limits) and resolves defaults, and `CompiledManifest::jobs` streams the jobs
//! in a deterministic order with stable keys. This module never talks HTTP,
//! never opens the ledger and never writes files.

mod alchemy;
mod compile;
mod error;
mod expand;
mod input;
pub mod locate;
pub mod params;
mod range;
mod rows;
pub mod schema;
pub mod source;
mod template;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use alchemy::{alchemy_columns, AlchemyForm, AlchemySpec, CaptionFrom};
pub use compile::{
    compile, CompileOptions, CompiledJob, CompiledManifest, OutputSettings, RequestFlags,
    RunSettings, Seeds, DEFAULT_MAX_JOBS,
};
pub use error::{ManifestError, Problem, SourceText};
pub use expand::{Job, JobKey, JobStream};
pub use schema::{json_schema, CensoredPolicy, Manifest};
pub use source::{load_source, JobSources, SourceProcessing, SourceRef};

use locate::Position;

/// Manifests larger than this are refused before parsing.
const MAX_MANIFEST_BYTES: u64 = 8 * 1024 * 1024;

/// A manifest as read from disk: its text, where it lives, and its parsed form.
#[derive(Debug, Clone)]
pub struct ManifestFile {
    /// The path as the user gave it.
    pub path: PathBuf,
    /// The folder relative paths in the manifest are resolved against.
    pub base_dir: PathBuf,
    pub source: SourceText,
    pub manifest: Manifest,
}

impl ManifestFile {
    /// Reads and parses the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let read_error = |source| ManifestError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                path: path.to_owned(),
                size,
                limit: MAX_MANIFEST_BYTES,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
            ))
        })?;
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        Self::parse(path, base_dir, text)
    }

    /// Parses manifest text; `path` is used in messages and as the manifest's identity.
    pub fn parse(path: &Path, base_dir: PathBuf, text: String) -> Result<Self, ManifestError> {
        let source = SourceText {
            name: path.display().to_string(),
            text: Arc::from(text),
        };
        if let Some(offset) = too_deep(&source.text) {
            let position = Position::from_offset(&source.text, offset);
            let problem = source.problem_at_position(
                position,
                format!("more than {MAX_FLOW_DEPTH} nested `[`/`{{`: not a manifest"),
            );
            return Err(ManifestError::from(vec![problem]));
        }
        let manifest: Manifest =
            serde_yaml::from_str(&source.text).map_err(|e| yaml_problem(&source, &e))?;
        Ok(Self {
            path: path.to_owned(),
            base_dir,
            source,
            manifest,
        })
    }
}

/// Deeper flow nesting than any manifest needs; the YAML parser slows down
/// quadratically with depth, so hostile input is refused before it is parsed.
const MAX_FLOW_DEPTH: usize = 256;

/// The byte offset where `[`/`{` nesting first passes `MAX_FLOW_DEPTH`, if it does.
/// Quotes and comments are skipped roughly; this is a guard, not a parser.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = '\n';
    for (offset, c) in text.char_indices() {
        match (quote, c) {
            (_, '\n') if comment => comment = false,
            _ if comment => {}
            (Some('"'), '"') if previous != '\\' => quote = None,
            (Some('\''), '\'') => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if previous.is_whitespace() => comment = true,
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(offset);
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = c;
    }
    None
}

/// Turns a serde_yaml error into a located problem, with a suggestion for
/// misspelt keys.
fn yaml_problem(source: &SourceText, error: &serde_yaml::Error) -> ManifestError {
    let full = error.to_string();
    // serde_yaml appends " at line L column C"; the problem carries the position itself.
    let message = match full.rfind(" at line ") {
        Some(at) if error.location().is_some() => full[..at].to_owned(),
        _ => full.clone(),
    };
    let position = error.location().map_or(
        Position {
            offset: 0,
            line: 1,
            column: 1,
        },
        |l| Position::from_line_column(&source.text, l.line(), l.column()),
    );
    let help = unknown_field_help(&message).unwrap_or_default();
    ManifestError::from(vec![source
        .problem_at_position(position, message)
        .with_help(help)])
}

/// "did you mean" for serde's "unknown field `x`, expected one of `a`, `b`".
fn unknown_field_help(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let suggestion = params::suggest(field, candidates.iter().copied());
    let suggestion = suggestion
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')');
    (!suggestion.is_empty()).then(|| {
        let mut s = suggestion.to_owned();
        if let Some(first) = s.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing() {
        let deep = "[".repeat(100_000);
        let started = std::time::Instant::now();
        let error = ManifestFile::parse(Path::new("d.yaml"), PathBuf::from("."), deep).unwrap_err();
        assert!(
            error.to_string().contains("more than 256 nested"),
            "{error}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(too_deep("a: [[1], {b: '[[[[', c: \"]]\"}] # [[[["), None);
    }

    #[test]
    fn unknown_field_gets_a_suggestion() {
        let help = unknown_field_help(
            "jobs[0]: unknown field `promt`, expected one of `name`, `prompt`, `negative`",
        );
        assert_eq!(help.as_deref(), Some("Did you mean `prompt`?"));
        assert_eq!(
            unknown_field_help("unknown field `zzz`, expected `name`"),
            None
        );
    }
}
