//! Prompt templates: literal text with `{a|b|c}` variants (options may hold
//! wildcards and a leading `0.5::` weight), `{N-M$$sep$$a|b|c}` combinations,
//! `__name__` wildcards and `${name}` matrix variables (the sd-dynamic-prompts
//! syntax, combinatorial). This module only parses; it does not know where
//! wildcard values come from or how combinations are enumerated.
//!
//! A1111's `<lora:name:0.8>` (and `<lyco:…>`) tags outside variants are
//! parsed into `Piece::Lora`, for the caller to move into `params.loras`.
//! Text that looks like template syntax but is not what horde-batch
//! implements (`$$` or `::` elsewhere in a variant, wildcard globs, LoRA tags
//! inside variants, `<hypernet:…>`, unbalanced braces) is refused with its
//! offset, never passed through: the Horde would read it as prompt words.

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text sent as is.
    Literal(String),
    /// `{a|b|c}`: one option per combination. An option is text, wildcards,
    /// nested variants and combinations, and a leading `Weight`.
    Variant(Vec<Vec<Piece>>),
    /// `__name__`: one line of the named wildcard per combination.
    Wildcard(String),
    /// `${name}`: the value of the job's matrix axis `name`.
    Variable(String),
    /// `<lora:name:weights>`: a LoRA to request; it adds no text.
    Lora(LoraTag),
    /// `{N$$a|b|c}`, `{N-M$$…}`, `{N$$sep$$…}`: sd-dynamic-prompts'
    /// combinations of distinct options (options as in `Variant`).
    Combination(Pick, Vec<Vec<Piece>>),
    /// `0.5::` at the start of a variant option: its weight in random mode.
    /// Only ever the first piece of an option.
    Weight(f64),
}

/// A `weight::` prefix at the start of a variant option: the weight and the
/// bytes it spans (leading spaces included).
fn option_weight(rest: &str) -> Option<(f64, usize)> {
    let trimmed = rest.trim_start_matches(' ');
    let digits = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let after = trimmed[digits..].trim_start_matches(' ');
    if digits == 0 || !after.starts_with("::") {
        return None;
    }
    let weight = trimmed[..digits]
        .parse::<f64>()
        .ok()
        .filter(|w| w.is_finite())?;
    Some((weight, rest.len() - after.len() + 2))
}

/// How many options a combination takes, and what joins them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub min: usize,
    /// `None` for `{N-$$…}`: up to every option.
    pub max: Option<usize>,
    pub separator: String,
    /// Byte offset of the `{`, for errors about the bounds.
    pub offset: usize,
}

/// The prefix of a combination at `at` (just after its `{`): the pick and
/// the bytes of the prefix, `None` when the variant has no `$$` prefix.
fn combination_prefix(text: &str, at: usize, open: usize) -> Option<(Pick, usize)> {
    let rest = &text[at..];
    let end = rest.find("$$")?;
    let bounds = &rest[..end];
    if bounds.is_empty() || !bounds.chars().all(|c| c.is_ascii_digit() || c == '-') {
        return None;
    }
    let number = |s: &str| s.parse::<usize>().ok();
    let (min, max) = match bounds.split_once('-') {
        None => (number(bounds)?, Some(number(bounds)?)),
        Some(("", hi)) => (1, Some(number(hi)?)),
        Some((lo, "")) => (number(lo)?, None),
        Some((lo, hi)) => (number(lo)?, Some(number(hi)?)),
    };
    let mut consumed = end + 2;
    let after = &rest[consumed..];
    // A second `$$` before the first option ends gives the separator.
    let option_end = after.find(['|', '}']).unwrap_or(after.len());
    let separator = match after[..option_end].find("$$") {
        Some(sep_end) => {
            consumed += sep_end + 2;
            after[..sep_end].to_owned()
        }
        None => ", ".to_owned(),
    };
    Some((
        Pick {
            min,
            max,
            separator,
            offset: open,
        },
        consumed,
    ))
}

/// An A1111 LoRA tag, `<lora:name>`, `<lora:name:w>` (text encoder and
/// UNet weight), `<lora:name:te:unet>` or with named `te=`/`unet=` weights.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    /// Byte offset of the `<` in the template.
    pub offset: usize,
    pub name: String,
    /// UNet weight (the Horde's `model`), when given.
    pub model: Option<f64>,
    /// Text-encoder weight (the Horde's `clip`), when given.
    pub clip: Option<f64>,
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
            let (pick, options, consumed) = parse_variant(text, i, 1)?;
            flush(&mut literal, &mut pieces);
            pieces.push(match pick {
                None => Piece::Variant(options),
                Some(pick) => Piece::Combination(pick, options),
            });
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
            match extra_network(text, i, false)? {
                Some((tag, consumed)) => {
                    flush(&mut literal, &mut pieces);
                    pieces.push(Piece::Lora(tag));
                    i += consumed;
                }
                None => {
                    literal.push('<');
                    i += 1;
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

/// What template syntax `value` holds, if any (for values that are inserted
/// as text: wildcard and matrix values). Escapes count as text.
pub fn syntax_in_value(value: &str) -> Option<String> {
    match parse(value) {
        Err(problem) => Some(format!("template syntax ({})", problem.message)),
        Ok(pieces) => pieces.iter().find_map(|piece| match piece {
            Piece::Literal(_) => None,
            Piece::Variant(_) | Piece::Combination(..) | Piece::Weight(_) => {
                Some("a variant `{…}`".to_owned())
            }
            Piece::Wildcard(name) => Some(format!("a wildcard `__{name}__`")),
            Piece::Variable(name) => Some(format!("a variable `${{{name}}}`")),
            Piece::Lora(_) => Some("a LoRA tag `<lora:…>`".to_owned()),
        }),
    }
}

fn flush(literal: &mut String, pieces: &mut Vec<Piece>) {
    if !literal.is_empty() {
        pieces.push(Piece::Literal(std::mem::take(literal)));
    }
}

type ParsedVariant = (Option<Pick>, Vec<Vec<Piece>>, usize);

/// Variants nested deeper than this are refused: no prompt needs them, and
/// parsing, expanding and dropping a template each recurse once per level.
pub const MAX_VARIANT_DEPTH: usize = 64;

/// The variant whose `{` is at `start`, `depth` levels deep (1 outside any).
fn parse_variant(text: &str, start: usize, depth: usize) -> Result<ParsedVariant, TemplateProblem> {
    if depth > MAX_VARIANT_DEPTH {
        return Err(TemplateProblem::new(
            start,
            format!("variants are nested more than {MAX_VARIANT_DEPTH} deep"),
            "flatten the variants; write `\\{` for a literal brace",
        ));
    }
    let mut options: Vec<Vec<Piece>> = Vec::new();
    let mut option: Vec<Piece> = Vec::new();
    let mut literal = String::new();
    let mut i = start + 1;
    let pick = combination_prefix(text, i, start).map(|(pick, consumed)| {
        i += consumed;
        pick
    });
    let mut option_start = true;
    while i < text.len() {
        let rest = &text[i..];
        if std::mem::take(&mut option_start) {
            if let Some((weight, consumed)) = option_weight(rest) {
                option.push(Piece::Weight(weight));
                i += consumed;
                continue;
            }
        }
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
                option_start = true;
            }
            '}' => {
                flush(&mut literal, &mut option);
                options.push(option);
                return Ok((pick, options, i - start + 1));
            }
            '{' => {
                // A nested variant or combination: one of its values per value of the option.
                let (pick, nested, consumed) = parse_variant(text, i, depth + 1)?;
                flush(&mut literal, &mut option);
                option.push(match pick {
                    None => Piece::Variant(nested),
                    Some(pick) => Piece::Combination(pick, nested),
                });
                i += consumed;
                continue;
            }
            '$' if rest.starts_with("$$") => {
                return Err(TemplateProblem::new(
                    i,
                    "`$$` inside a variant: a combination's `N$$` or `N$$separator$$` comes first, as in `{2$$a|b|c}`",
                    "write `\\$` for a literal `$`",
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
                    "`::` inside a variant option: a weight comes first and is a number, as in `{0.5::a|2::b}`",
                    "write `\\:` for a literal `:`",
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
                extra_network(text, i, true)?;
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
    if is_wildcard_glob(name) {
        return Ok(Some((name.to_owned(), 2 + end + 2)));
    }
    Err(TemplateProblem::new(
        at,
        format!("`__{name}__` is not a valid wildcard name (letters, digits, `_`, `-`, and `/` between folder names; no `..`)"),
        "write `\\_\\_` for literal underscores",
    ))
}

/// An A1111 extra-network tag at `at`: a LoRA tag outside a variant is
/// parsed (with the bytes it spans); `<hypernet:…>` and any tag inside a
/// variant are refused. `None` when the `<` starts no such tag.
fn extra_network(
    text: &str,
    at: usize,
    in_variant: bool,
) -> Result<Option<(LoraTag, usize)>, TemplateProblem> {
    let rest = &text[at + 1..];
    let Some((kind, after_kind)) = rest.split_once(':') else {
        return Ok(None);
    };
    let kind = kind.to_ascii_lowercase();
    if !matches!(kind.as_str(), "lora" | "lyco" | "lycoris" | "hypernet") {
        return Ok(None);
    }
    let what = format!("`<{kind}:…>`");
    if kind == "hypernet" {
        return Err(TemplateProblem::new(
            at,
            format!("{what} is an A1111 hypernetwork tag; the Horde has no hypernetworks and would use it as words of the prompt"),
            "remove the tag, or write `\\<` to send `<` as text",
        ));
    }
    if in_variant {
        return Err(TemplateProblem::new(
            at,
            format!("{what} inside a variant: LoRA tags are translated to `params.loras` only outside variants"),
            "to vary LoRAs, use a matrix axis, e.g. `matrix: {loras: [[{name: a}], [{name: b}]]}`; write `\\<` to send `<` as text",
        ));
    }
    let Some(end) = after_kind.find('>') else {
        return Err(TemplateProblem::new(
            at,
            format!("{what} without a closing `>`"),
            "write `\\<` to send `<` as text",
        ));
    };
    let mut parts = after_kind[..end].split(':');
    let name = parts.next().unwrap_or_default().trim();
    let bad = |message: String| {
        Err(TemplateProblem::new(
            at,
            message,
            "a LoRA tag is `<lora:name>`, `<lora:name:weight>`, `<lora:name:te_weight:unet_weight>` or with `te=`/`unet=`",
        ))
    };
    if name.is_empty() {
        return bad(format!("{what} names no LoRA"));
    }
    let (mut te, mut unet) = (None, None);
    for (position, part) in parts.enumerate() {
        let part = part.trim();
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (key.trim(), value.trim()),
            None if position == 0 => ("te", part),
            None if position == 1 => ("unet", part),
            None => return bad(format!("{what} has more weights than `te` and `unet` (`dyn` is not supported by the Horde)")),
        };
        let Ok(weight) = value.parse::<f64>() else {
            return bad(format!("{what}: `{value}` is not a number"));
        };
        match key {
            "te" => te = Some(weight),
            "unet" => unet = Some(weight),
            _ => {
                return bad(format!(
                    "{what}: unknown weight `{key}` (the Horde takes `te` and `unet`)"
                ))
            }
        }
    }
    // As in A1111: the UNet weight defaults to the text-encoder weight.
    let tag = LoraTag {
        offset: at,
        name: name.to_owned(),
        model: unet.or(te),
        clip: te,
    };
    Ok(Some((tag, 1 + kind.len() + 1 + end + 1)))
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
pub fn is_wildcard_name(name: &str) -> bool {
    !name.starts_with('/')
        && !name.ends_with('/')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/'))
        && !name.split('/').any(|part| part.is_empty() || part == "..")
}

/// Whether `name` is a wildcard glob (`people/*`, `color?`, `[ab]*`): a
/// wildcard name with `*`, `?` or a `[…]` class that the glob crate accepts.
pub fn is_wildcard_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
        && glob::Pattern::new(name).is_ok()
        && is_wildcard_name(&name.replace(['*', '?', '[', ']', '!'], "x"))
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
        assert_eq!(parse("{a|{b|c}").unwrap_err().offset, 0);
        assert_eq!(parse("{a|{b|c}|d").unwrap_err().offset, 0);
        assert!(parse("${bad name}").is_err());
    }

    #[test]
    fn variants_nest() {
        let literal = |t: &str| Piece::Literal(t.into());
        assert_eq!(
            parse("{a|{b|0.5::c}}").unwrap(),
            vec![Piece::Variant(vec![
                vec![literal("a")],
                vec![Piece::Variant(vec![
                    vec![literal("b")],
                    vec![Piece::Weight(0.5), literal("c")]
                ])]
            ])]
        );
        assert!(matches!(
            &parse("{x {2$$a|b|c}|y}").unwrap()[0],
            Piece::Variant(options) if matches!(options[0][1], Piece::Combination(..))
        ));
    }

    #[test]
    fn nesting_is_limited_where_it_passes_the_limit() {
        let nested = |n: usize| format!("{}b{}", "{a|".repeat(n), "}".repeat(n));
        assert!(parse(&nested(MAX_VARIANT_DEPTH)).is_ok());
        let problem = parse(&nested(20_000)).unwrap_err();
        assert_eq!(problem.offset, 3 * MAX_VARIANT_DEPTH);
        assert_eq!(problem.message, "variants are nested more than 64 deep");
        // Combinations count as levels too.
        let combinations = format!("{}b{}", "{1$$a|".repeat(100), "}".repeat(100));
        assert_eq!(
            parse(&combinations).unwrap_err().offset,
            6 * MAX_VARIANT_DEPTH
        );
    }

    #[test]
    fn wildcard_globs_parse_as_wildcards() {
        for glob in ["people/*", "color?", "[ab]*", "**"] {
            assert_eq!(
                parse(&format!("by __{glob}__")).unwrap()[1],
                Piece::Wildcard(glob.into())
            );
        }
        assert_eq!(
            parse("{a|__x*__}").unwrap(),
            vec![Piece::Variant(vec![
                vec![Piece::Literal("a".into())],
                vec![Piece::Wildcard("x*".into())]
            ])]
        );
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
        assert_eq!(offset("a {b|2$$c}"), 6);
        assert_eq!(offset("a {2$$b|c$$d}"), 9);
        assert_eq!(offset("a {b|c 0.5::c}"), 10);
        assert_eq!(offset("a {b|-1::c}"), 7);
        assert_eq!(offset("a {b|c} __people/[*__"), 8);
        assert_eq!(offset("a __x/*/../y__"), 2);
        assert_eq!(offset("x <lora:detail:0.8"), 2);
        assert_eq!(offset("x <lora::0.8>"), 2);
        assert_eq!(offset("x <lora:a:1:2:3>"), 2);
        assert_eq!(offset("x <lora:a:dyn=3>"), 2);
        assert_eq!(offset("x <lora:a:high>"), 2);
        assert_eq!(offset("{x|<LyCo:a>}"), 3);
        assert_eq!(offset("<hypernet:h:1>"), 0);
        assert_eq!(offset("a {${v}|b}"), 3);
        let lora = parse("{x|<lora:detail:0.8>}").unwrap_err();
        assert!(lora.help.contains("matrix: {loras:"), "{}", lora.help);
    }

    #[test]
    fn lora_tags_are_parsed_like_a1111() {
        let tags = |t: &str| -> Vec<(String, Option<f64>, Option<f64>)> {
            parse(t)
                .unwrap()
                .into_iter()
                .filter_map(|p| match p {
                    Piece::Lora(tag) => Some((tag.name, tag.model, tag.clip)),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            tags("<lora:a> <LORA:b:0.5> <lyco:c:0.5:1.5> <lora: d :te=0.2:unet=-1>"),
            [
                ("a".to_owned(), None, None),
                ("b".to_owned(), Some(0.5), Some(0.5)),
                ("c".to_owned(), Some(1.5), Some(0.5)),
                ("d".to_owned(), Some(-1.0), Some(0.2)),
            ]
        );
        assert_eq!(
            parse("a <lora:x:1>, b").unwrap(),
            vec![
                Piece::Literal("a ".into()),
                Piece::Lora(LoraTag {
                    offset: 2,
                    name: "x".into(),
                    model: Some(1.0),
                    clip: Some(1.0)
                }),
                Piece::Literal(", b".into()),
            ]
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
    fn option_weights() {
        assert_eq!(
            parse("{0.5::a| 2 :: b|c|.25::}").unwrap(),
            vec![Piece::Variant(vec![
                vec![Piece::Weight(0.5), Piece::Literal("a".into())],
                vec![Piece::Weight(2.0), Piece::Literal(" b".into())],
                vec![Piece::Literal("c".into())],
                vec![Piece::Weight(0.25)],
            ])]
        );
    }

    #[test]
    fn combination_prefixes() {
        let pick = |t: &str| match parse(t).unwrap().remove(0) {
            Piece::Combination(pick, options) => {
                (pick.min, pick.max, pick.separator, options.len())
            }
            other => panic!("not a combination: {other:?}"),
        };
        assert_eq!(pick("{2$$a|b|c}"), (2, Some(2), ", ".into(), 3));
        assert_eq!(pick("{1-3$$a|b|c}"), (1, Some(3), ", ".into(), 3));
        assert_eq!(pick("{-2$$a|b}"), (1, Some(2), ", ".into(), 2));
        assert_eq!(pick("{2-$$a|b}"), (2, None, ", ".into(), 2));
        assert_eq!(pick("{2$$ and $$a|b|c}"), (2, Some(2), " and ".into(), 3));
        assert_eq!(pick("{2$$$$a|b}"), (2, Some(2), "".into(), 2));
        // Not a count: an ordinary variant whose `$$` is refused.
        assert!(parse("{x$$a|b}").is_err());
        assert_eq!(
            parse(r"{2\$\$a|b}").unwrap(),
            vec![Piece::Variant(vec![
                vec![Piece::Literal("2$$a".into())],
                vec![Piece::Literal("b".into())]
            ])]
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
