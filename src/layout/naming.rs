//! The filename template: `{job}/{key}-{index:04}` → a safe relative path.
//!
//! Owns parsing (unknown placeholders and path tricks are refused up front),
//! rendering with sanitised values, and the final "stays inside the output
//! directory" check that every name goes through before a file is created.
//! Rendering is a pure function of its inputs, so a resumed run names an
//! image exactly as the first run did. The writer adds `.webp` / `.json`;
//! the template never carries an extension. Must not do I/O.

use std::fmt::Write as _;
use std::path::{Component, Path};

use miette::SourceSpan;

/// Longest sanitised placeholder value, in bytes.
pub const MAX_VALUE_BYTES: usize = 120;

/// Longest rendered path component, in bytes (file systems allow 255; the
/// extension and some slack must fit).
pub const MAX_COMPONENT_BYTES: usize = 200;

/// Longest component [`check_relative_name`] accepts, extension included.
const MAX_NAME_BYTES: usize = 250;

/// Characters Windows forbids in file names, besides control characters.
const WINDOWS_ILLEGAL: &[char] = &['<', '>', ':', '"', '/', '\\', '|', '?', '*'];

/// Device names Windows reserves in any directory, with or without extension.
const WINDOWS_RESERVED: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// A value a template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// `{manifest}`: the manifest's name.
    Manifest,
    /// `{job}`: the job's name.
    Job,
    /// `{key}`: the job's stable key.
    Key,
    /// `{index}`: the image's index within its job.
    Index,
    /// `{seed}`: the seed the image was generated with.
    Seed,
    /// `{model}`: the model that generated it.
    Model,
    /// `{width}`: width in pixels.
    Width,
    /// `{height}`: height in pixels.
    Height,
    /// `{id}`: the row's id for a job from a `rows:` table with an id column,
    /// else the job's key.
    Id,
}

impl Placeholder {
    /// Every placeholder, in the order the help text lists them.
    pub const ALL: [Placeholder; 9] = [
        Placeholder::Manifest,
        Placeholder::Job,
        Placeholder::Key,
        Placeholder::Index,
        Placeholder::Seed,
        Placeholder::Model,
        Placeholder::Width,
        Placeholder::Height,
        Placeholder::Id,
    ];

    /// The name written between braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Manifest => "manifest",
            Placeholder::Job => "job",
            Placeholder::Key => "key",
            Placeholder::Index => "index",
            Placeholder::Seed => "seed",
            Placeholder::Model => "model",
            Placeholder::Width => "width",
            Placeholder::Height => "height",
            Placeholder::Id => "id",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    fn is_numeric(self) -> bool {
        matches!(
            self,
            Placeholder::Index | Placeholder::Width | Placeholder::Height
        )
    }
}

/// The values one image's name is made from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameFields<'a> {
    /// Manifest name.
    pub manifest: &'a str,
    /// Job name.
    pub job: &'a str,
    /// Stable job key.
    pub key: &'a str,
    /// Index of the image within its job.
    pub index: u32,
    /// Seed, as the Horde reports it (a string).
    pub seed: &'a str,
    /// Model name.
    pub model: &'a str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The row's id, or the key when the job has none.
    pub id: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Value {
        placeholder: Placeholder,
        /// Zero-pad numbers to this many digits.
        pad: Option<usize>,
    },
}

/// A parsed filename template.
///
/// `{name}` inserts a value, `{index:04}` zero-pads a number, `{{` and `}}` are
/// literal braces, and `/` starts a subdirectory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilenameTemplate {
    source: String,
    /// Path components, each a sequence of literals and values.
    components: Vec<Vec<Segment>>,
}

/// Why a filename template was refused. Each variant points at the offending
/// part of the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum TemplateError {
    /// The template is empty.
    #[error("the filename template is empty")]
    #[diagnostic(
        code(horde_batch::output::template::empty),
        help("for example \"{{job}}/{{key}}-{{index:04}}\"")
    )]
    Empty,

    /// `{name}` with a name we do not know.
    #[error("unknown placeholder `{{{name}}}` in the filename template")]
    #[diagnostic(
        code(horde_batch::output::template::unknown_placeholder),
        help("known placeholders: {known}")
    )]
    UnknownPlaceholder {
        /// The name between the braces.
        name: String,
        /// The known placeholders, ready to print.
        known: String,
        /// The template.
        #[source_code]
        template: String,
        /// Where the placeholder is.
        #[label("unknown")]
        span: SourceSpan,
    },

    /// `{` without its `}`.
    #[error("unclosed `{{` in the filename template")]
    #[diagnostic(
        code(horde_batch::output::template::unclosed),
        help("write `{{{{` for a literal brace")
    )]
    Unclosed {
        /// The template.
        #[source_code]
        template: String,
        /// Where the brace is.
        #[label("opened here")]
        span: SourceSpan,
    },

    /// `}` without a `{`.
    #[error("unmatched `}}` in the filename template")]
    #[diagnostic(
        code(horde_batch::output::template::unmatched),
        help("write `}}}}` for a literal brace")
    )]
    Unmatched {
        /// The template.
        #[source_code]
        template: String,
        /// Where the brace is.
        #[label("no `{{` before this")]
        span: SourceSpan,
    },

    /// A format spec other than zero padding, or padding on a text value.
    #[error("invalid format `{spec}` for `{{{name}}}`")]
    #[diagnostic(
        code(horde_batch::output::template::format),
        help(
            "only zero padding of numbers is supported, e.g. `{{index:04}}` (index, width, height)"
        )
    )]
    BadFormat {
        /// The placeholder name.
        name: String,
        /// What followed the `:`.
        spec: String,
        /// The template.
        #[source_code]
        template: String,
        /// Where the placeholder is.
        #[label("here")]
        span: SourceSpan,
    },

    /// A leading `/`.
    #[error("the filename template must be relative to the output directory")]
    #[diagnostic(
        code(horde_batch::output::template::absolute),
        help("set the output directory with `output.dir` and keep the template relative")
    )]
    Absolute {
        /// The template.
        #[source_code]
        template: String,
        /// The leading slash.
        #[label("absolute")]
        span: SourceSpan,
    },

    /// A `.` or `..` component.
    #[error("the filename template may not contain a `.` or `..` component")]
    #[diagnostic(code(horde_batch::output::template::parent))]
    DotComponent {
        /// The template.
        #[source_code]
        template: String,
        /// The component.
        #[label("here")]
        span: SourceSpan,
    },

    /// `//` or a trailing `/`.
    #[error("the filename template has an empty path component")]
    #[diagnostic(
        code(horde_batch::output::template::empty_component),
        help("remove the doubled or trailing `/`")
    )]
    EmptyComponent {
        /// The template.
        #[source_code]
        template: String,
        /// Where the empty component is.
        #[label("empty")]
        span: SourceSpan,
    },

    /// A component starting with `.`: hidden from dataset loaders.
    #[error("a filename template component may not start with `.`")]
    #[diagnostic(
        code(horde_batch::output::template::hidden),
        help("dataset loaders skip hidden files")
    )]
    Hidden {
        /// The template.
        #[source_code]
        template: String,
        /// The dot.
        #[label("here")]
        span: SourceSpan,
    },

    /// A control character or one Windows forbids in names.
    #[error(
        "the filename template contains the character {ch:?}, which is not allowed in file names"
    )]
    #[diagnostic(
        code(horde_batch::output::template::character),
        help("use `/` to separate directories; avoid < > : \" \\ | ? * and control characters")
    )]
    IllegalCharacter {
        /// The character.
        ch: char,
        /// The template.
        #[source_code]
        template: String,
        /// Where it is.
        #[label("here")]
        span: SourceSpan,
    },

    /// No placeholder at all: every image would get the same name.
    #[error("the filename template has no placeholder, so every image would get the same name")]
    #[diagnostic(
        code(horde_batch::output::template::constant),
        help("include e.g. {{key}} and {{index}}")
    )]
    NoPlaceholder,
}

/// A name that would leave the output directory or is otherwise unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("refusing output name {name:?}: {reason}")]
#[diagnostic(code(horde_batch::output::escape))]
pub struct PathEscape {
    /// The refused name.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FilenameTemplate {
    /// Parses a template, refusing unknown placeholders and anything that
    /// could address a file outside the output directory.
    ///
    /// # Errors
    ///
    /// A [`TemplateError`] pointing at the offending part.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        Parser::new(template).parse()
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the template refers to `placeholder` (e.g. to warn that names
    /// without `{index}` will collide).
    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.components.iter().flatten().any(
            |segment| matches!(segment, Segment::Value { placeholder: p, .. } if *p == placeholder),
        )
    }

    /// Renders the relative path (`/`-separated, no extension) for one image.
    ///
    /// Values are sanitised: path separators, control characters and
    /// characters Windows forbids become `_`, leading dots and `..` are
    /// defused, surrounding blanks are trimmed and long values are cut at a
    /// character boundary. The result is checked with [`check_relative_name`].
    ///
    /// # Errors
    ///
    /// [`PathEscape`] if the result is still unusable (not expected after
    /// sanitising; the check is a last line of defence).
    pub fn render(&self, fields: &NameFields<'_>) -> Result<String, PathEscape> {
        let mut components = Vec::with_capacity(self.components.len());
        for segments in &self.components {
            let mut component = String::new();
            for segment in segments {
                match segment {
                    Segment::Literal(text) => component.push_str(text),
                    Segment::Value { placeholder, pad } => {
                        push_value(&mut component, *placeholder, *pad, fields);
                    }
                }
            }
            components.push(finish_component(component));
        }
        let name = components.join("/");
        check_relative_name(&name)?;
        Ok(name)
    }
}

impl std::fmt::Display for FilenameTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for FilenameTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn push_value(out: &mut String, placeholder: Placeholder, pad: Option<usize>, f: &NameFields<'_>) {
    let number = |n: u32, out: &mut String| {
        let width = pad.unwrap_or(0);
        write!(out, "{n:0width$}").expect("writing to a String cannot fail");
    };
    match placeholder {
        Placeholder::Index => number(f.index, out),
        Placeholder::Width => number(f.width, out),
        Placeholder::Height => number(f.height, out),
        Placeholder::Manifest => out.push_str(&sanitize_value(f.manifest)),
        Placeholder::Job => out.push_str(&sanitize_value(f.job)),
        Placeholder::Key => out.push_str(&sanitize_value(f.key)),
        Placeholder::Seed => out.push_str(&sanitize_value(f.seed)),
        Placeholder::Model => out.push_str(&sanitize_value(f.model)),
        Placeholder::Id => out.push_str(&sanitize_value(f.id)),
    }
}

/// Makes an arbitrary string safe to use inside one path component.
///
/// Never returns an empty string, never one containing `/`, `\`, `..`, a
/// control character or a Windows-illegal character, never one starting with
/// `.` or longer than [`MAX_VALUE_BYTES`].
pub fn sanitize_value(value: &str) -> String {
    let replaced: String = value
        .chars()
        .map(|c| if is_unsafe_char(c) { '_' } else { c })
        .collect();
    let mut value = replaced.replace("..", "_");
    truncate_at_char_boundary(&mut value, MAX_VALUE_BYTES);
    let value = trim_blanks_and_trailing_dots(&value);
    let value = match value.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => value.to_owned(),
    };
    if value.is_empty() {
        "_".to_owned()
    } else {
        value
    }
}

fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || WINDOWS_ILLEGAL.contains(&c)
        // Bidirectional overrides make a name display differently from what it is.
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn trim_blanks_and_trailing_dots(s: &str) -> &str {
    s.trim().trim_end_matches(['.', ' ']).trim_end()
}

fn truncate_at_char_boundary(s: &mut String, max_bytes: usize) {
    if s.len() > max_bytes {
        let mut end = max_bytes;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Final touches on a rendered component: Windows trims trailing dots and
/// blanks and reserves device names; overlong components keep their head and
/// tail (where the index usually is) so names stay distinguishable.
fn finish_component(component: String) -> String {
    let mut component = trim_blanks_and_trailing_dots(&component).to_owned();
    if component.len() > MAX_COMPONENT_BYTES {
        let half = MAX_COMPONENT_BYTES / 2;
        let mut head_end = half;
        while !component.is_char_boundary(head_end) {
            head_end -= 1;
        }
        let mut tail_start = component.len() - (MAX_COMPONENT_BYTES - half - 1);
        while !component.is_char_boundary(tail_start) {
            tail_start += 1;
        }
        component = format!("{}_{}", &component[..head_end], &component[tail_start..]);
    }
    let stem = component.split('.').next().unwrap_or_default();
    if WINDOWS_RESERVED
        .iter()
        .any(|reserved| stem.trim_end().eq_ignore_ascii_case(reserved))
    {
        component.insert(0, '_');
    }
    if component.is_empty() {
        component.push('_');
    }
    component
}

/// Checks that `name` is a plain relative path that stays inside the output
/// directory: no leading `/`, no `.`/`..`/empty/hidden component, no `\`,
/// no control character, no overlong component.
///
/// # Errors
///
/// [`PathEscape`] saying what is wrong.
pub fn check_relative_name(name: &str) -> Result<(), PathEscape> {
    let refuse = |reason| {
        Err(PathEscape {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("the name is empty");
    }
    if name.starts_with('/') {
        return refuse("absolute paths are not allowed");
    }
    if name.contains('\\') {
        return refuse("`\\` is not allowed (use `/` between directories)");
    }
    if name.chars().any(char::is_control) {
        return refuse("control characters are not allowed");
    }
    for component in name.split('/') {
        if component.is_empty() {
            return refuse("empty path components are not allowed");
        }
        if component == "." || component == ".." {
            return refuse("`.` and `..` components are not allowed");
        }
        if component.starts_with('.') {
            return refuse("components may not start with `.`");
        }
        if component.len() > MAX_NAME_BYTES {
            return refuse("a path component is too long");
        }
    }
    // Belt and braces: the platform's own parser must agree (this also
    // rejects Windows drive prefixes such as `C:` on Windows).
    if !Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return refuse("the path is not a plain relative path");
    }
    Ok(())
}

struct Parser<'a> {
    source: &'a str,
    components: Vec<Vec<Segment>>,
    segments: Vec<Segment>,
    literal: String,
    /// Byte offset where the current component starts.
    component_start: usize,
    placeholders: usize,
}

impl<'a> Parser<'a> {
    fn new(source: &'a str) -> Self {
        Parser {
            source,
            components: Vec::new(),
            segments: Vec::new(),
            literal: String::new(),
            component_start: 0,
            placeholders: 0,
        }
    }

    fn span(&self, start: usize, len: usize) -> SourceSpan {
        (start, len).into()
    }

    fn parse(mut self) -> Result<FilenameTemplate, TemplateError> {
        let source = self.source;
        if source.is_empty() {
            return Err(TemplateError::Empty);
        }
        if source.starts_with('/') {
            return Err(TemplateError::Absolute {
                template: source.to_owned(),
                span: self.span(0, 1),
            });
        }
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, next)| next) == Some('{') => {
                    chars.next();
                    self.literal.push('{');
                }
                '}' if chars.peek().map(|&(_, next)| next) == Some('}') => {
                    chars.next();
                    self.literal.push('}');
                }
                '{' => {
                    let close = source[at..].find('}').map(|i| at + i).ok_or_else(|| {
                        TemplateError::Unclosed {
                            template: source.to_owned(),
                            span: self.span(at, 1),
                        }
                    })?;
                    self.placeholder(at, &source[at + 1..close])?;
                    while chars.peek().is_some_and(|&(i, _)| i <= close) {
                        chars.next();
                    }
                }
                '}' => {
                    return Err(TemplateError::Unmatched {
                        template: source.to_owned(),
                        span: self.span(at, 1),
                    })
                }
                '/' => self.end_component(at)?,
                c if is_unsafe_char(c) => {
                    return Err(TemplateError::IllegalCharacter {
                        ch: c,
                        template: source.to_owned(),
                        span: self.span(at, c.len_utf8()),
                    })
                }
                c => self.literal.push(c),
            }
        }
        self.end_component(source.len())?;
        if self.placeholders == 0 {
            return Err(TemplateError::NoPlaceholder);
        }
        Ok(FilenameTemplate {
            source: source.to_owned(),
            components: self.components,
        })
    }

    /// Handles `{inner}` starting at byte `at`.
    fn placeholder(&mut self, at: usize, inner: &str) -> Result<(), TemplateError> {
        let span = self.span(at, inner.len() + 2);
        let (name, spec) = match inner.split_once(':') {
            Some((name, spec)) => (name, Some(spec)),
            None => (inner, None),
        };
        let placeholder =
            Placeholder::from_name(name).ok_or_else(|| TemplateError::UnknownPlaceholder {
                name: name.to_owned(),
                known: Placeholder::ALL
                    .iter()
                    .map(|p| format!("{{{}}}", p.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
                template: self.source.to_owned(),
                span,
            })?;
        let pad = match spec {
            None => None,
            Some(spec) => {
                let digits = spec.strip_prefix('0').unwrap_or(spec);
                let width = digits
                    .parse::<usize>()
                    .ok()
                    .filter(|w| (1..=20).contains(w) && digits.bytes().all(|b| b.is_ascii_digit()));
                match width {
                    Some(width) if placeholder.is_numeric() => Some(width),
                    _ => {
                        return Err(TemplateError::BadFormat {
                            name: name.to_owned(),
                            spec: format!(":{spec}"),
                            template: self.source.to_owned(),
                            span,
                        })
                    }
                }
            }
        };
        self.flush_literal();
        self.segments.push(Segment::Value { placeholder, pad });
        self.placeholders += 1;
        Ok(())
    }

    fn flush_literal(&mut self) {
        if !self.literal.is_empty() {
            self.segments
                .push(Segment::Literal(std::mem::take(&mut self.literal)));
        }
    }

    /// Closes the component that ends at byte `end` (a `/` or the end).
    fn end_component(&mut self, end: usize) -> Result<(), TemplateError> {
        let start = self.component_start;
        let text = &self.source[start..end];
        let span = self.span(start, end - start);
        self.flush_literal();
        let segments = std::mem::take(&mut self.segments);
        if segments.is_empty() {
            return Err(TemplateError::EmptyComponent {
                template: self.source.to_owned(),
                // Point at the `/` before the empty component.
                span: self.span(start.saturating_sub(1), 1),
            });
        }
        if text == "." || text == ".." {
            return Err(TemplateError::DotComponent {
                template: self.source.to_owned(),
                span,
            });
        }
        if text.starts_with('.') {
            return Err(TemplateError::Hidden {
                template: self.source.to_owned(),
                span: self.span(start, 1),
            });
        }
        self.components.push(segments);
        self.component_start = end + 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_value_examples() {
        assert_eq!(sanitize_value("cats"), "cats");
        assert_eq!(sanitize_value("a/b"), "a_b");
        assert_eq!(sanitize_value("C:\\x"), "C__x");
        assert_eq!(sanitize_value(".."), "_");
        assert_eq!(sanitize_value(".hidden"), "_hidden");
        assert_eq!(sanitize_value("  padded. . "), "padded");
        assert_eq!(sanitize_value("nul\0byte\n"), "nul_byte_");
        assert_eq!(sanitize_value(""), "_");
        assert_eq!(sanitize_value("   "), "_");
        assert_eq!(sanitize_value("ünïcødé 猫"), "ünïcødé 猫");
        assert_eq!(sanitize_value("evil\u{202E}gpj.exe"), "evil_gpj.exe");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let value = "é".repeat(100); // 200 bytes
        let cut = sanitize_value(&value);
        assert!(cut.len() <= MAX_VALUE_BYTES);
        assert_eq!(cut, "é".repeat(MAX_VALUE_BYTES / 2));
    }

    #[test]
    fn overlong_components_keep_head_and_tail() {
        let component = format!("{}-0007", "x".repeat(400));
        let finished = finish_component(component);
        assert_eq!(finished.len(), MAX_COMPONENT_BYTES);
        assert!(finished.starts_with("xxx"));
        assert!(finished.ends_with("-0007"));
    }

    #[test]
    fn reserved_windows_device_names_get_a_prefix() {
        assert_eq!(finish_component("con".into()), "_con");
        assert_eq!(finish_component("LPT1.tar".into()), "_LPT1.tar");
        assert_eq!(finish_component("console".into()), "console");
    }

    #[test]
    fn check_relative_name_examples() {
        assert!(check_relative_name("a/b-0001").is_ok());
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "./a",
            ".hb-tmp-x",
            "a\\b",
            "a\0b",
        ] {
            assert!(
                check_relative_name(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }
}
