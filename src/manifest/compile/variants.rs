//! The values of a prompt's variants `{a|b|c}` and combinations
//! `{N-M$$sep$$a|b|c}`, with the weights random mode picks them by, made
//! as sd-dynamic-prompts makes them.
//!
//! This file turns parsed template pieces into lists of texts; it does not
//! parse templates (`template` one level up does), build axes or report
//! problems: a failure is returned as a message and a help for the caller to
//! place.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use super::Context;
use crate::manifest::template::{Pick, Piece};

/// Values one variant may take once the wildcards in its options are expanded.
const MAX_VARIANT_VALUES: usize = 1_000_000;

/// Why a variant or combination has no values: a message and a help.
type Refusal = (String, &'static str);

impl Context<'_> {
    /// The values of a combination `{N-M$$sep$$a|b|c}`, as sd-dynamic-prompts'
    /// combinatorial generator makes them: for each count from N to M, each
    /// set of that many distinct options in option order, and for an option
    /// with wildcards each of its values (last option fastest); repeated
    /// texts within one pick are dropped and repeated results are kept once.
    pub(super) fn combination_values(
        &mut self,
        pick: &Pick,
        options: &[Vec<Piece>],
    ) -> Result<Vec<String>, Refusal> {
        let n = options.len();
        let max = pick.max.unwrap_or(n);
        let bounds = match pick.max {
            Some(max) if max != pick.min => format!("{}-{max}", pick.min),
            Some(_) => pick.min.to_string(),
            None => format!("{}-", pick.min),
        };
        if max < pick.min {
            return Err((
                format!(
                    "`{{{bounds}$$…}}` takes at least {} and at most {max} options",
                    pick.min
                ),
                "write the smaller count first",
            ));
        }
        if pick.min > n {
            return Err((
                format!(
                    "`{{{bounds}$$…}}` takes {} distinct options but the variant has {n}",
                    pick.min
                ),
                "add options or lower the count",
            ));
        }
        let per_option = options
            .iter()
            .map(|option| {
                self.variant_values(std::slice::from_ref(option))
                    .map(|values| values.into_iter().map(|(text, _)| text).collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>, _>>()?;
        join_combinations(&per_option, pick.min..=max.min(n), &pick.separator).ok_or_else(|| {
            (
                format!("`{{{bounds}$$…}}` has more than {MAX_VARIANT_VALUES} combinations"),
                "lower the count or split the options",
            )
        })
    }

    /// The values of a variant: each option in turn, an option holding
    /// wildcards or nested variants giving one value per combination of
    /// theirs, last fastest (so `{__color__|green}` takes every colour, then
    /// `green`, and `{a|{b|c}}` takes `a`, `b`, `c`). In random mode an
    /// option is picked by its weight, then its values evenly, a nested
    /// variant's by their own weights (as sd-dynamic-prompts does).
    pub(super) fn variant_values(
        &mut self,
        options: &[Vec<Piece>],
    ) -> Result<Vec<(String, f64)>, Refusal> {
        let mut values = Vec::new();
        for option in options {
            // Each text of the option so far, with its share of the option's weight.
            let mut texts = vec![(String::new(), 1.0)];
            let mut weight = 1.0;
            for piece in option {
                let parts: Vec<(String, f64)> = match piece {
                    Piece::Literal(text) => vec![(text.clone(), 1.0)],
                    Piece::Weight(w) => {
                        weight = *w;
                        continue;
                    }
                    Piece::Wildcard(name) => {
                        let words = self.wildcard(name)?;
                        let share = 1.0 / words.len() as f64;
                        words.iter().map(|w| (w.clone(), share)).collect()
                    }
                    Piece::Variant(nested) => {
                        let nested = self.variant_values(nested)?;
                        let total: f64 = nested.iter().map(|(_, w)| w).sum();
                        nested.into_iter().map(|(t, w)| (t, w / total)).collect()
                    }
                    Piece::Combination(pick, nested) => {
                        let nested = self.combination_values(pick, nested)?;
                        let share = 1.0 / nested.len().max(1) as f64;
                        nested.into_iter().map(|t| (t, share)).collect()
                    }
                    // The parser puts no variables or LoRA tags in options.
                    Piece::Variable(_) | Piece::Lora(_) => continue,
                };
                if texts.len().saturating_mul(parts.len()) + values.len() > MAX_VARIANT_VALUES {
                    return Err((
                        format!("a variant has more than {MAX_VARIANT_VALUES} values"),
                        "split the variant into separate variants or wildcards",
                    ));
                }
                texts = texts
                    .iter()
                    .flat_map(|(t, f)| parts.iter().map(move |(p, g)| (format!("{t}{p}"), f * g)))
                    .collect();
            }
            values.extend(
                texts
                    .into_iter()
                    .map(|(t, fraction)| (t, weight * fraction)),
            );
        }
        if values.iter().all(|(_, w)| *w == 0.0) {
            return Err((
                "every option of the variant has weight `0::`".to_owned(),
                "give at least one option a weight above 0",
            ));
        }
        Ok(values)
    }
}

/// For each count in `counts`, each set of that many options (indexes into
/// `per_option`, in lexicographic order like itertools.combinations), and
/// each pick of one value per chosen option (last option fastest): the
/// picked values joined by `separator`, a value repeated within one pick
/// kept once, a result seen before dropped. `None` once more than
/// `MAX_VARIANT_VALUES` picks would be made.
fn join_combinations(
    per_option: &[Vec<String>],
    counts: RangeInclusive<usize>,
    separator: &str,
) -> Option<Vec<String>> {
    let n = per_option.len();
    let mut values = Vec::new();
    let mut seen = HashSet::new();
    let mut steps = 0usize;
    for k in counts {
        let mut chosen: Vec<usize> = (0..k).collect();
        loop {
            let mut digits = vec![0usize; k];
            loop {
                steps += 1;
                if steps > MAX_VARIANT_VALUES {
                    return None;
                }
                let mut parts: Vec<&str> = Vec::with_capacity(k);
                for (slot, &option) in chosen.iter().enumerate() {
                    let part = per_option[option][digits[slot]].as_str();
                    if !parts.contains(&part) {
                        parts.push(part);
                    }
                }
                let value = parts.join(separator);
                if seen.insert(value.clone()) {
                    values.push(value);
                }
                if !next_pick(&mut digits, |slot| per_option[chosen[slot]].len()) {
                    break;
                }
            }
            if !next_subset(&mut chosen, n) {
                break;
            }
        }
    }
    Some(values)
}

/// Advances `digits` (one value index per chosen option, slot `s` counting
/// up to `len(s)`) like an odometer, the last slot fastest; false when every
/// pick has been made.
fn next_pick(digits: &mut [usize], len: impl Fn(usize) -> usize) -> bool {
    let Some(slot) = (0..digits.len()).rev().find(|&s| digits[s] + 1 < len(s)) else {
        return false;
    };
    digits[slot] += 1;
    digits[slot + 1..].iter_mut().for_each(|d| *d = 0);
    true
}

/// Advances `chosen` (increasing option indexes below `n`) to the next set
/// of as many options in lexicographic order; false after the last.
fn next_subset(chosen: &mut [usize], n: usize) -> bool {
    let k = chosen.len();
    let Some(slot) = (0..k).rev().find(|&s| chosen[s] < n - k + s) else {
        return false;
    };
    chosen[slot] += 1;
    for next in slot + 1..k {
        chosen[next] = chosen[next - 1] + 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(options: &[&[&str]]) -> Vec<Vec<String>> {
        options
            .iter()
            .map(|values| values.iter().map(|v| (*v).to_owned()).collect())
            .collect()
    }

    #[test]
    fn combinations_come_in_itertools_order_last_option_fastest() {
        let per_option = options(&[&["a"], &["b1", "b2"], &["c"]]);
        let joined = join_combinations(&per_option, 1..=2, ",").unwrap();
        assert_eq!(
            joined,
            ["a", "b1", "b2", "c", "a,b1", "a,b2", "a,c", "b1,c", "b2,c"]
        );
    }

    #[test]
    fn repeated_texts_are_kept_once() {
        let per_option = options(&[&["x"], &["x", "y"]]);
        let joined = join_combinations(&per_option, 2..=2, " ").unwrap();
        assert_eq!(joined, ["x", "x y"]);
    }

    #[test]
    fn too_many_picks_are_refused() {
        let per_option = options(&[&["a"; 1001], &["b"; 1001]]);
        assert_eq!(join_combinations(&per_option, 2..=2, ""), None);
    }
}
