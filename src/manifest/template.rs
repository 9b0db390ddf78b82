//! Prompt templates: literal text with `{a|b|c}` variants, `__name__`
//! wildcards and `${name}` matrix variables (the sd-dynamic-prompts syntax,
//! combinatorial). This module only parses; it does not know where wildcard
//! values come from or how combinations are enumerated.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text sent as is.
    Literal(String),
    /// `{a|b|c}`: one option per combination.
    Variant(Vec<String>),
    /// `__name__`: one line of the named wildcard per combination.
    Wildcard(String),
    /// `${name}`: the value of the job's matrix axis `name`.
    Variable(String),
}

/// A template that failed to parse, with the byte offset of the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    pub offset: usize,
    pub message: String,
}

/// Parses `text`. `\{`, `\}`, `\|`, `\$` and `\_` escape the syntax characters.
pub fn parse(text: &str) -> Result<Vec<Piece>, TemplateProblem> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let flush = |literal: &mut String, pieces: &mut Vec<Piece>| {
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(literal)));
        }
    };
    while i < bytes.len() {
        let rest = &text[i..];
        if let Some(escaped) = rest.strip_prefix('\\').and_then(|r| r.chars().next()) {
            if matches!(escaped, '{' | '}' | '|' | '$' | '_' | '\\') {
                literal.push(escaped);
                i += 1 + escaped.len_utf8();
                continue;
            }
        }
        if rest.starts_with('{') {
            let (options, consumed) = parse_variant(text, i)?;
            flush(&mut literal, &mut pieces);
            pieces.push(Piece::Variant(options));
            i += consumed;
        } else if rest.starts_with('}') {
            return Err(TemplateProblem {
                offset: i,
                message: "`}` without a matching `{` (write `\\}` for a literal brace)".to_owned(),
            });
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| TemplateProblem {
                offset: i,
                message: "`${` without a closing `}`".to_owned(),
            })?;
            let name = &after[..end];
            check_name(name, i, "variable")?;
            flush(&mut literal, &mut pieces);
            pieces.push(Piece::Variable(name.to_owned()));
            i += 2 + end + 1;
        } else if let Some(after) = rest.strip_prefix("__") {
            match after.find("__") {
                Some(end) if end > 0 && is_wildcard_name(&after[..end]) => {
                    flush(&mut literal, &mut pieces);
                    pieces.push(Piece::Wildcard(after[..end].to_owned()));
                    i += 2 + end + 2;
                }
                _ => {
                    literal.push_str("__");
                    i += 2;
                }
            }
        } else {
            let c = rest.chars().next().unwrap_or('\0');
            literal.push(c);
            i += c.len_utf8().max(1);
        }
    }
    flush(&mut literal, &mut pieces);
    Ok(pieces)
}

fn parse_variant(text: &str, start: usize) -> Result<(Vec<String>, usize), TemplateProblem> {
    let mut options = vec![String::new()];
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        let at = start + 1 + offset;
        match c {
            '\\' => {
                if let Some((_, escaped)) = chars.next() {
                    push_char(&mut options, escaped);
                }
            }
            '|' => options.push(String::new()),
            '}' => return Ok((options, at - start + 1)),
            '{' => {
                return Err(TemplateProblem {
                    offset: at,
                    message: "nested `{` inside a variant is not supported".to_owned(),
                })
            }
            _ => push_char(&mut options, c),
        }
    }
    Err(TemplateProblem {
        offset: start,
        message: "`{` without a closing `}` (write `\\{` for a literal brace)".to_owned(),
    })
}

fn push_char(options: &mut [String], c: char) {
    if let Some(last) = options.last_mut() {
        last.push(c);
    }
}

fn check_name(name: &str, offset: usize, what: &str) -> Result<(), TemplateProblem> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(TemplateProblem {
            offset,
            message: format!("`{name}` is not a valid {what} name (letters, digits, `_` and `-`)"),
        })
    }
}

/// A wildcard name: letters, digits, `_`, `-`, and `/` for sub-folders.
fn is_wildcard_name(name: &str) -> bool {
    !name.starts_with('/')
        && !name.ends_with('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
        && !name.split('/').any(|part| part.is_empty() || part == "..")
}

/// Collapses runs of whitespace to one space and trims the ends: prompts that
/// differ only in layout are the same prompt (and the same job key).
pub fn normalize_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_construct() {
        let pieces = parse("a {red|blue} __style__ by ${artist}, 4__k").unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece::Literal("a ".into()),
                Piece::Variant(vec!["red".into(), "blue".into()]),
                Piece::Literal(" ".into()),
                Piece::Wildcard("style".into()),
                Piece::Literal(" by ".into()),
                Piece::Variable("artist".into()),
                Piece::Literal(", 4__k".into()),
            ]
        );
    }

    #[test]
    fn escapes_and_empty_options() {
        assert_eq!(
            parse(r"\{x\} {|big }").unwrap(),
            vec![
                Piece::Literal("{x} ".into()),
                Piece::Variant(vec!["".into(), "big ".into()])
            ]
        );
    }

    #[test]
    fn reports_unbalanced_braces_with_offsets() {
        assert_eq!(parse("ab {c|d").unwrap_err().offset, 3);
        assert_eq!(parse("ab c}").unwrap_err().offset, 4);
        assert!(parse("{a|{b}}").unwrap_err().message.contains("nested"));
        assert!(parse("${bad name}").is_err());
    }

    #[test]
    fn wildcard_names_cannot_climb_out() {
        assert_eq!(
            parse("__../x__").unwrap(),
            vec![Piece::Literal("__../x__".into())]
        );
        assert_eq!(
            parse("__a/b__").unwrap(),
            vec![Piece::Wildcard("a/b".into())]
        );
    }

    #[test]
    fn whitespace_is_normalised() {
        assert_eq!(normalize_whitespace("  a \n\t b  "), "a b");
    }
}
