//! Manifest errors: every problem names the file, line and column and says
//! what was expected; `miette` renders the offending line under it.

use std::path::PathBuf;
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use thiserror::Error;

use super::locate::{locate, locate_in_scalar, Position, YamlPath};

/// One problem in a manifest, at a place in its text.
#[derive(Debug, Error, Diagnostic, Clone)]
#[error("{file}:{line}:{column}: {message}")]
#[diagnostic(code(horde_batch::manifest::invalid))]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    #[source_code]
    source_code: NamedSource<Arc<str>>,
    #[label("here")]
    span: SourceSpan,
    #[help]
    pub help: Option<String>,
}

/// A manifest's text and name, for pointing at problems in it.
#[derive(Debug, Clone)]
pub struct SourceText {
    pub name: String,
    pub text: Arc<str>,
}

impl SourceText {
    /// A problem at `path` (a value that parsed but is not acceptable).
    pub fn problem_at(&self, path: &YamlPath, message: impl Into<String>) -> Problem {
        let position = locate(&self.text, path);
        self.problem_at_position(position, message)
    }

    /// A problem at byte `offset` of the string value `value` found at `path`:
    /// pointed at exactly when the scalar's source text can be mapped back
    /// (plain, quoted and literal-block scalars), else at the scalar's start
    /// with the character named in the message.
    pub fn problem_in_scalar(
        &self,
        path: &YamlPath,
        value: &str,
        offset: usize,
        message: impl Into<String>,
    ) -> Problem {
        let start = locate(&self.text, path);
        match locate_in_scalar(&self.text, start, value, offset) {
            Some(position) => self.problem_at_position(position, message),
            None => {
                let character = value[..offset.min(value.len())].chars().count() + 1;
                let message = format!("{} (at character {character} of the value)", message.into());
                self.problem_at_position(start, message)
            }
        }
    }

    /// A problem at a known position.
    pub fn problem_at_position(&self, position: Position, message: impl Into<String>) -> Problem {
        let width = self.text[position.offset.min(self.text.len())..]
            .chars()
            .take_while(|c| *c != '\n')
            .map(char::len_utf8)
            .sum::<usize>()
            .max(1);
        Problem {
            file: self.name.clone(),
            line: position.line,
            column: position.column,
            message: message.into(),
            source_code: NamedSource::new(self.name.clone(), Arc::clone(&self.text)),
            span: SourceSpan::new(
                position.offset.min(self.text.len()).into(),
                width.min(self.text.len().saturating_sub(position.offset)),
            ),
            help: None,
        }
    }
}

/// Characters of a value a message quotes; a longer value is cut there.
const EXCERPT_CHARS: usize = 60;

/// `text` as a message quotes it: whole when short, else its first
/// characters and `…` (a 20,000-level template is not worth repeating).
pub(crate) fn excerpt(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]).into(),
        None => text.into(),
    }
}

impl Problem {
    /// The same problem with a hint on how to fix it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        let help = help.into();
        if !help.is_empty() {
            self.help = Some(help);
        }
        self
    }
}

/// Why a manifest could not be used.
#[derive(Debug, Error, Diagnostic)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {}", path.display())]
    #[diagnostic(code(horde_batch::manifest::read))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is unreasonably large for a manifest.
    #[error("manifest {} is {size} bytes; the limit is {limit} bytes", path.display())]
    #[diagnostic(code(horde_batch::manifest::too_large))]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    /// The manifest has one or more problems.
    #[error("{}", summary(problems))]
    #[diagnostic(code(horde_batch::manifest::invalid))]
    Invalid {
        #[related]
        problems: Vec<Problem>,
    },
}

fn summary(problems: &[Problem]) -> String {
    match problems {
        [only] => only.to_string(),
        [first, ..] => format!("{} problems in {}", problems.len(), first.file),
        [] => "invalid manifest".to_owned(),
    }
}

impl ManifestError {
    /// The problems found, if the manifest was read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ManifestError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

impl From<Vec<Problem>> for ManifestError {
    fn from(problems: Vec<Problem>) -> Self {
        ManifestError::Invalid { problems }
    }
}
