//! Text from users and servers made safe to print on a terminal or in a log:
//! prompts, job names, file names, ids and server messages can carry control
//! characters (an `ESC [31m` that recolours the terminal, a carriage return
//! that hides what came before, a bidi override that reverses what follows),
//! so every print site of such text goes through [`escaped`] (a field) or
//! [`escape_lines`] (a block whose line breaks are layout). Each control
//! character becomes a visible escape such as `\u{1b}`.
//!
//! Pure functions of the text: no I/O, no other module of the crate. JSON
//! output needs none of this: serde escapes control characters already.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal as it is: C0 controls, DEL, C1
/// controls, and the bidi embeddings, overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069).
pub fn is_unsafe(c: char) -> bool {
    matches!(
        c,
        '\0'..='\x1f' | '\x7f'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// `text` as one field of a line: every unsafe character escaped, line breaks
/// and tabs too (they would break the line's layout). Formats without
/// allocating when there is nothing to escape, and honours width and
/// alignment (`{:<16}`).
pub fn escaped(text: &str) -> Escaped<'_> {
    Escaped(text)
}

/// `text` as a block of lines: unsafe characters escaped, except the line
/// feeds and tabs that lay it out.
pub fn escape_lines(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

/// Whether `text` holds a character [`escape_lines`] would escape.
pub fn needs_escaping_as_lines(text: &str) -> bool {
    text.chars().any(|c| is_unsafe(c) && c != '\n' && c != '\t')
}

/// A field of text printed with its unsafe characters escaped: see [`escaped`].
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&escape(self.0, |_| false))
    }
}

/// `text` with each unsafe character not `kept` written as an escape.
fn escape(text: &str, kept: impl Fn(char) -> bool) -> Cow<'_, str> {
    let must_escape = |c: char| is_unsafe(c) && !kept(c);
    if !text.chars().any(must_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !must_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            other => out.push_str(&format!("\\u{{{:x}}}", u32::from(other))),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bidi_overrides_are_escaped() {
        let hostile = "a \x1b[31mred\x1b[0m cat\r\u{202e}tac\u{2066}x\u{7f}\u{9b}";
        assert_eq!(
            escaped(hostile).to_string(),
            "a \\u{1b}[31mred\\u{1b}[0m cat\\r\\u{202e}tac\\u{2066}x\\u{7f}\\u{9b}"
        );
        assert_eq!(
            escaped("two\nlines\tand a tab").to_string(),
            "two\\nlines\\tand a tab"
        );
    }

    #[test]
    fn plain_text_and_other_unicode_are_untouched() {
        for text in [
            "a red kite",
            "café ☕ 猫",
            "\u{200d}\u{2065}\u{206a}",
            "a\\u{1b}",
        ] {
            assert_eq!(escaped(text).to_string(), text);
            assert!(matches!(escape_lines(text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn a_block_keeps_its_line_breaks_and_tabs() {
        let block = "line one\n\tline \x1b]0;title\x07two\n";
        assert!(needs_escaping_as_lines(block));
        assert_eq!(
            escape_lines(block),
            "line one\n\tline \\u{1b}]0;title\\u{7}two\n"
        );
        assert!(!needs_escaping_as_lines("line one\n\tline two\n"));
    }

    #[test]
    fn width_and_alignment_apply_to_the_escaped_text() {
        assert_eq!(format!("[{:<9}]", escaped("a\x1b")), "[a\\u{1b}  ]");
        assert_eq!(format!("[{:>4}]", escaped("ab")), "[  ab]");
    }
}
