//! Finds where a value sits in the manifest's source text.
//!
//! serde reports positions only for errors it raises itself; checks that run
//! after deserialising (unknown prompt variables, expansion limits, resolved
//! prompt sizes) know a *path* such as `jobs[2].matrix.steps` instead. This
//! module replays the YAML event stream once, on the error path only, to turn
//! such a path into a line and column. It must not interpret values.

use saphyr_parser::{Event, Parser, Span};

/// One step of a path into the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// A mapping key.
    Key(String),
    /// A sequence index (0-based).
    Index(usize),
}

/// A path into the manifest, rendered like `jobs[2].matrix.steps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YamlPath(pub Vec<PathSegment>);

impl YamlPath {
    /// The document root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Key(key.to_owned()));
        Self(segments)
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(PathSegment::Index(index));
        Self(segments)
    }
}

impl std::fmt::Display for YamlPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A position in the source: byte offset, 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The position of a byte offset (clamped to the source and to a char boundary).
    pub fn from_offset(source: &str, offset: usize) -> Self {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            offset,
            line,
            column,
        }
    }

    /// The position of a 1-based line and column, clamped to the source.
    pub fn from_line_column(source: &str, line: usize, column: usize) -> Self {
        let mut offset = 0;
        for (i, text) in source.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let in_line: usize = text
                    .chars()
                    .take(column.saturating_sub(1))
                    .map(char::len_utf8)
                    .sum();
                return Self {
                    offset: offset + in_line,
                    line,
                    column,
                };
            }
            offset += text.len();
        }
        Self {
            offset: source.len(),
            line: line.max(1),
            column: column.max(1),
        }
    }
}

/// Where `path` points in `source`: the start of its value, or of the deepest
/// enclosing node that exists (a missing key is reported at its mapping).
pub fn locate(source: &str, path: &YamlPath) -> Position {
    let span = Locator::new(source, path)
        .run()
        .unwrap_or(Span::empty(saphyr_parser::Marker::new(0, 1, 0)));
    let start = span.start;
    Position::from_line_column(source, start.line(), start.col() + 1)
}

/// Where byte `offset` of a string scalar's value sits in the source, given
/// where the scalar starts. Walks the value and its source text together,
/// undoing YAML's quoting and line folding; `None` when they cannot be matched
/// (a folded block, an unusual escape), so the caller falls back to the start.
pub fn locate_in_scalar(
    source: &str,
    start: Position,
    value: &str,
    offset: usize,
) -> Option<Position> {
    let raw = source.get(start.offset..)?;
    // A block scalar's span starts at its first content character, so its
    // indentation is the column it starts at.
    let (style, mut at) = match raw.chars().next()? {
        '\'' => ('\'', 1),
        '"' => ('"', 1),
        _ => (' ', 0),
    };
    let bytes = raw.as_bytes();
    let indent = start.column.saturating_sub(1);
    let mut consumed = 0;
    for c in value.chars() {
        if consumed >= offset {
            break;
        }
        let here = *bytes.get(at)?;
        match (style, c) {
            (' ', '\n') if here == b'\n' => {
                at += 1;
                let line = &raw[at..];
                at += (line.len() - line.trim_start_matches(' ').len()).min(indent);
            }
            ('\'', '\'') if raw[at..].starts_with("''") => at += 2,
            ('"', _) if here == b'\\' => {
                let next = *bytes.get(at + 1)?;
                let decoded = match next {
                    b'\\' => '\\',
                    b'"' => '"',
                    b'/' => '/',
                    b't' => '\t',
                    b'n' => '\n',
                    _ => return None,
                };
                if decoded != c {
                    return None;
                }
                at += 2;
            }
            // Folded line breaks: a space in the value, a newline and indentation in the source.
            ('\'' | '"' | ' ', ' ') if here == b'\n' || here == b'\r' => {
                let line = &raw[at..];
                at += line.len() - line.trim_start().len();
            }
            _ if raw[at..].starts_with(c) => at += c.len_utf8(),
            _ => return None,
        }
        consumed += c.len_utf8();
    }
    Some(Position::from_offset(source, start.offset + at))
}

/// The state of one walk over the event stream.
enum Frame {
    Mapping {
        next_is_key: bool,
        key: Option<String>,
    },
    Sequence {
        next_index: usize,
    },
}

struct Locator<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    target: &'a [PathSegment],
    stack: Vec<Frame>,
    /// Path segments from the root to the node being read.
    current: Vec<PathSegment>,
    best: Option<(usize, Span)>,
}

impl<'a> Locator<'a> {
    fn new(source: &'a str, path: &'a YamlPath) -> Self {
        Self {
            parser: Parser::new_from_str(source),
            target: &path.0,
            stack: Vec::new(),
            current: Vec::new(),
            best: None,
        }
    }

    fn run(mut self) -> Option<Span> {
        while let Some(Ok((event, span))) = self.parser.next_event() {
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    if self.take_key(&value) {
                        continue;
                    }
                    if self.visit_node(span) {
                        return Some(span);
                    }
                    self.end_node();
                }
                Event::Alias(_) => {
                    if self.visit_node(span) {
                        return Some(span);
                    }
                    self.end_node();
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    if self.visit_node(span) {
                        return Some(span);
                    }
                    self.stack
                        .push(if matches!(event, Event::MappingStart(..)) {
                            Frame::Mapping {
                                next_is_key: true,
                                key: None,
                            }
                        } else {
                            Frame::Sequence { next_index: 0 }
                        });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    self.stack.pop();
                    self.end_node();
                }
                _ => {}
            }
        }
        self.best.map(|(_, span)| span)
    }

    /// A scalar read in key position becomes the pending key; returns true then.
    fn take_key(&mut self, value: &str) -> bool {
        if let Some(Frame::Mapping { next_is_key, key }) = self.stack.last_mut() {
            if *next_is_key {
                *next_is_key = false;
                *key = Some(value.to_owned());
                return true;
            }
        }
        false
    }

    /// A node starts at `span`; returns true when it is the target.
    fn visit_node(&mut self, span: Span) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key, .. }) => {
                let key = key.take().unwrap_or_default();
                self.current.push(PathSegment::Key(key));
            }
            Some(Frame::Sequence { next_index }) => {
                self.current.push(PathSegment::Index(*next_index));
                *next_index += 1;
            }
            None => {}
        }
        let matched = self
            .current
            .iter()
            .zip(self.target)
            .take_while(|(a, b)| a == b)
            .count();
        if matched == self.current.len() && matched >= self.best.map_or(0, |(depth, _)| depth) {
            self.best = Some((matched, span));
        }
        matched == self.target.len() && self.current.len() == self.target.len()
    }

    /// The node just read is complete: its parent expects the next key or item.
    fn end_node(&mut self) {
        if !self.stack.is_empty() || !self.current.is_empty() {
            self.current.pop();
        }
        if let Some(Frame::Mapping { next_is_key, .. }) = self.stack.last_mut() {
            *next_is_key = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "version: 1\njobs:\n  - name: a\n    prompt: x\n  - name: b\n    matrix:\n      steps: [1, 2]\n";

    #[test]
    fn finds_nested_values() {
        let p = locate(
            DOC,
            &YamlPath::root()
                .key("jobs")
                .index(1)
                .key("matrix")
                .key("steps"),
        );
        assert_eq!((p.line, p.column), (7, 14));
        let p = locate(DOC, &YamlPath::root().key("jobs").index(0).key("prompt"));
        assert_eq!((p.line, p.column), (4, 13));
    }

    #[test]
    fn missing_key_falls_back_to_enclosing_node() {
        let p = locate(DOC, &YamlPath::root().key("jobs").index(1).key("prompt"));
        assert_eq!(p.line, 5);
    }

    #[test]
    fn points_inside_scalars() {
        let column = |doc: &str, value: &str, offset: usize| {
            let start = locate(doc, &YamlPath::root().key("p"));
            locate_in_scalar(doc, start, value, offset).map(|p| (p.line, p.column))
        };
        assert_eq!(column("p: a {b\n", "a {b", 2), Some((1, 6)));
        assert_eq!(column("p: 'it''s {b'\n", "it's {b", 5), Some((1, 11)));
        assert_eq!(column("p: \"a\\\\ {b\"\n", "a\\ {b", 3), Some((1, 9)));
        assert_eq!(
            column("p: |\n  one\n  two {\n", "one\ntwo {\n", 8),
            Some((3, 7))
        );
        assert_eq!(
            column("p: >\n  one\n  two {\n", "one two {\n", 8),
            Some((3, 7))
        );
        assert_eq!(column("p: \"a\\u0041 {\"\n", "aA {", 3), None);
    }

    #[test]
    fn renders_paths() {
        let path = YamlPath::root()
            .key("jobs")
            .index(2)
            .key("matrix")
            .key("steps");
        assert_eq!(path.to_string(), "jobs[2].matrix.steps");
    }
}
