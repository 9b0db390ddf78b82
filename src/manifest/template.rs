//! Prompt templates: literal text with `{a|b|c}` variants, `__name__`
//! wildcards and `${name}` matrix variables (the sd-dynamic-prompts syntax,
//! combinatorial). This module only parses; it does not know where wildcard
//! values come from or how combinations are enumerated.
//!
//! Text that looks like template syntax horde-batch does not implement
//! (sd-dynamic-prompts' `{2$$a|b}` and `{0.5::a|2::b}`, wildcard globs,
//! A1111's `<lora:name:0.8>` tags, unbalanced braces) is refused with its
//! offset, never passed through: the Horde would read it as prompt words.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text sent as is.
    Literal(String),
    /// `{a|b|c}`: one option per combination. An option is text and
    /// wildcards (only `Literal` and `Wildcard` pieces).
    Variant(Vec<Vec<Piece>>),
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
    /// How to write what was probably meant, or how to send the text literally.
    pub help: String,
}

impl TemplateProblem {
    fn new(offset: usize, message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            offset,
            message: message.into(),
            help: help.into(),
        }
    }
}

/// Parses `text`. Outside a variant, `\{`, `\}`, `\|`, `\$`, `\_`, `\<`, `\:`
/// and `\\` escape the syntax characters; inside a variant, `\` escapes any
/// character.
pub fn parse(text: &str) -> Result<Vec<Piece>, TemplateProblem> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        if let Some(escaped) = rest.strip_prefix('\\').and_then(|r| r.chars().next()) {
            if matches!(escaped, '{' | '}' | '|' | '$' | '_' | '<' | ':' | '\\') {
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
            return Err(TemplateProblem::new(
                i,
                "`}` without a matching `{`",
                "write `\\}` for a literal brace",
            ));
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                TemplateProblem::new(
                    i,
                    "`${` without a closing `}`",
                    "write `\\$` for a literal `$`",
                )
            })?;
            let name = &after[..end];
            check_name(name, i, "variable")?;
            flush(&mut literal, &mut pieces);
            pieces.push(Piece::Variable(name.to_owned()));
            i += 2 + end + 1;
        } else if rest.starts_with("__") {
            match wildcard_token(text, i)? {
                Some((name, consumed)) => {
                    flush(&mut literal, &mut pieces);
                    pieces.push(Piece::Wildcard(name));
                    i += consumed;
                }
                None => {
                    literal.push_str("__");
                    i += 2;
                }
            }
        } else if rest.starts_with('<') {
            check_extra_network(text, i)?;
            literal.push('<');
            i += 1;
        } else {
            let c = rest.chars().next().unwrap_or('\0');
            literal.push(c);
            i += c.len_utf8().max(1);
        }
    }
    flush(&mut literal, &mut pieces);
    Ok(pieces)
}

fn flush(literal: &mut String, pieces: &mut Vec<Piece>) {
    if !literal.is_empty() {
        pieces.push(Piece::Literal(std::mem::take(literal)));
    }
}

fn parse_variant(text: &str, start: usize) -> Result<(Vec<Vec<Piece>>, usize), TemplateProblem> {
    let mut options: Vec<Vec<Piece>> = Vec::new();
    let mut option: Vec<Piece> = Vec::new();
    let mut literal = String::new();
    let mut i = start + 1;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().unwrap_or('\0');
        match c {
            '\\' => {
                if let Some(escaped) = rest[1..].chars().next() {
                    literal.push(escaped);
                    i += 1 + escaped.len_utf8();
                } else {
                    i += 1;
                }
                continue;
            }
            '|' => {
                flush(&mut literal, &mut option);
                options.push(std::mem::take(&mut option));
            }
            '}' => {
                flush(&mut literal, &mut option);
                options.push(option);
                return Ok((options, i - start + 1));
            }
            '{' => {
                return Err(TemplateProblem::new(
                    i,
                    "a variant inside a variant is not supported",
                    "write `\\{` for a literal brace",
                ))
            }
            '$' if rest.starts_with("$$") => {
                return Err(TemplateProblem::new(
                    i,
                    "`$$` in a variant is sd-dynamic-prompts' combination syntax (`{2$$a|b|c}`), which horde-batch does not support",
                    "use several variants or a matrix axis instead; write `\\$` for a literal `$`",
                ))
            }
            '$' if rest.starts_with("${") => {
                return Err(TemplateProblem::new(
                    i,
                    "a matrix variable `${…}` inside a variant is not supported",
                    "write `\\$` for a literal `$`",
                ))
            }
            ':' if rest.starts_with("::") => {
                return Err(TemplateProblem::new(
                    i,
                    "`::` in a variant is sd-dynamic-prompts' weighted-variant syntax (`{0.5::a|2::b}`), which horde-batch does not support",
                    "every option is used once; write `\\:` for a literal `:`",
                ))
            }
            '_' if rest.starts_with("__") => {
                if let Some((name, consumed)) = wildcard_token(text, i)? {
                    flush(&mut literal, &mut option);
                    option.push(Piece::Wildcard(name));
                    i += consumed;
                    continue;
                }
                literal.push_str("__");
                i += 2;
                continue;
            }
            '<' => {
                check_extra_network(text, i)?;
                literal.push('<');
            }
            _ => literal.push(c),
        }
        i += c.len_utf8().max(1);
    }
    Err(TemplateProblem::new(
        start,
        "`{` without a closing `}`",
        "write `\\{` for a literal brace",
    ))
}

/// A `__name__` at `at`: the name and the bytes it spans, `None` when the
/// `__` encloses no wildcard-like word (text such as `4__k` or `a__b c__`).
/// A word that looks like a wildcard but is not a valid name is an error,
/// not literal text.
fn wildcard_token(text: &str, at: usize) -> Result<Option<(String, usize)>, TemplateProblem> {
    let after = &text[at + 2..];
    let Some(end) = after.find("__") else {
        return Ok(None);
    };
    let name = &after[..end];
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '{' | '}' | '|'))
    {
        return Ok(None);
    }
    if is_wildcard_name(name) {
        return Ok(Some((name.to_owned(), 2 + end + 2)));
    }
    if name.contains(['*', '?', '[']) {
        return Err(TemplateProblem::new(
            at,
            format!("`__{name}__` is a wildcard glob; horde-batch does not support globs"),
            "name the wildcard files one by one (`__people/artists__`), or write `\\_\\_` for literal underscores",
        ));
    }
    Err(TemplateProblem::new(
        at,
        format!("`__{name}__` is not a valid wildcard name (letters, digits, `_`, `-`, and `/` between folder names; no `..`)"),
        "write `\\_\\_` for literal underscores",
    ))
}

/// Refuses an A1111 extra-network tag (`<lora:name:0.8>`, `<lyco:…>`,
/// `<hypernet:…>`) at `at`: the Horde takes LoRAs in `params.loras` and would
/// read the tag as words of the prompt.
fn check_extra_network(text: &str, at: usize) -> Result<(), TemplateProblem> {
    let rest = &text[at + 1..];
    let Some((kind, body)) = rest.split_once(':') else {
        return Ok(());
    };
    let kind = kind.to_ascii_lowercase();
    if !matches!(kind.as_str(), "lora" | "lyco" | "lycoris" | "hypernet") {
        return Ok(());
    }
    let body = body.split('>').next().unwrap_or_default();
    let mut parts = body.split(':');
    let name = parts.next().unwrap_or_default().trim();
    let weight = parts
        .next()
        .and_then(|w| w.trim().parse::<f64>().ok())
        .unwrap_or(1.0);
    let help = if kind == "hypernet" {
        "the Horde has no hypernetworks; remove the tag, or write `\\<` to send `<` as text"
            .to_owned()
    } else {
        format!(
            "set the LoRA as a parameter, e.g. `params: {{loras: [{{name: \"{name}\", model: {weight}, clip: {weight}}}]}}`; write `\\<` to send `<` as text"
        )
    };
    Err(TemplateProblem::new(
        at,
        format!("`<{kind}:…>` is an A1111 prompt tag; the Horde does not read it and would use it as words of the prompt"),
        help,
    ))
}

fn check_name(name: &str, offset: usize, what: &str) -> Result<(), TemplateProblem> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(())
    } else {
        Err(TemplateProblem::new(
            offset,
            format!("`{name}` is not a valid {what} name (letters, digits, `_` and `-`)"),
            "",
        ))
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
                Piece::Variant(vec![
                    vec![Piece::Literal("red".into())],
                    vec![Piece::Literal("blue".into())]
                ]),
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
                Piece::Variant(vec![vec![], vec![Piece::Literal("big ".into())]])
            ]
        );
    }

    #[test]
    fn reports_unbalanced_braces_with_offsets() {
        assert_eq!(parse("ab {c|d").unwrap_err().offset, 3);
        assert_eq!(parse("ab c}").unwrap_err().offset, 4);
        assert!(parse("{a|{b}}")
            .unwrap_err()
            .message
            .contains("inside a variant"));
        assert!(parse("${bad name}").is_err());
    }

    #[test]
    fn wildcard_names_cannot_climb_out() {
        assert_eq!(parse("a __../x__").unwrap_err().offset, 2);
        assert_eq!(
            parse("__a/b__").unwrap(),
            vec![Piece::Wildcard("a/b".into())]
        );
    }

    #[test]
    fn unsupported_syntax_is_refused_where_it_is() {
        let offset = |t: &str| parse(t).unwrap_err().offset;
        assert_eq!(offset("a {2$$b|c}"), 4);
        assert_eq!(offset("a {b|0.5::c}"), 8);
        assert_eq!(offset("a {b|c} __people/*__"), 8);
        assert_eq!(offset("{a|__x*__}"), 3);
        assert_eq!(offset("x <lora:detail:0.8>"), 2);
        assert_eq!(offset("{x|<LyCo:a>}"), 3);
        assert_eq!(offset("<hypernet:h:1>"), 0);
        assert_eq!(offset("a {${v}|b}"), 3);
        let lora = parse("x <lora:detail:0.8>").unwrap_err();
        assert!(
            lora.help
                .contains(r#"loras: [{name: "detail", model: 0.8, clip: 0.8}]"#),
            "{}",
            lora.help
        );
    }

    #[test]
    fn escapes_send_the_syntax_as_text() {
        assert_eq!(
            parse(r"\<lora:x:1> a\:\:b \$\$ \_\_p/*\_\_ {2\$\$c|0.5\:\:d|\<lora:y>}").unwrap(),
            vec![
                Piece::Literal("<lora:x:1> a::b $$ __p/*__ ".into()),
                Piece::Variant(vec![
                    vec![Piece::Literal("2$$c".into())],
                    vec![Piece::Literal("0.5::d".into())],
                    vec![Piece::Literal("<lora:y>".into())],
                ]),
            ]
        );
        // Text that only resembles the syntax stays text.
        assert_eq!(
            parse("a < b: c, 4__k, x__y z__, ::, $$").unwrap(),
            vec![Piece::Literal("a < b: c, 4__k, x__y z__, ::, $$".into())]
        );
    }

    #[test]
    fn wildcards_inside_variants() {
        assert_eq!(
            parse("{__color__ ball|green}").unwrap(),
            vec![Piece::Variant(vec![
                vec![
                    Piece::Wildcard("color".into()),
                    Piece::Literal(" ball".into())
                ],
                vec![Piece::Literal("green".into())],
            ])]
        );
    }

    #[test]
    fn whitespace_is_normalised() {
        assert_eq!(normalize_whitespace("  a \n\t b  "), "a b");
    }
}
