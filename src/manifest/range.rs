//! A1111-style numeric ranges for matrix axes: `20-40 (+10)` steps by an
//! increment, `1-10 [5]` gives five evenly spaced values, `1-5` counts by one,
//! and comma-separated items mix them (`5, 7.5, 10-12`). Pure parsing.

/// Expands a range expression into its values, in order.
pub fn expand(text: &str) -> Result<Vec<f64>, String> {
    let mut values = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(format!("empty item in range `{text}`"));
        }
        values.extend(expand_item(item)?);
        if values.len() > MAX_VALUES {
            return Err(format!("range `{text}` has more than {MAX_VALUES} values"));
        }
    }
    Ok(values)
}

/// More values than any axis needs: refuses `1-1e12` before it allocates.
const MAX_VALUES: usize = 100_000;

fn expand_item(item: &str) -> Result<Vec<f64>, String> {
    let (span, modifier) = match item.find(['(', '[']) {
        Some(at) => (item[..at].trim(), Some(item[at..].trim())),
        None => (item, None),
    };
    let Some((start, end)) = split_span(span) else {
        return if modifier.is_some() {
            Err(format!(
                "`{item}`: a step or count needs a range like `1-5`"
            ))
        } else {
            number(span).map(|v| vec![v])
        };
    };
    let (start, end) = (number(start)?, number(end)?);
    match modifier {
        None => stepped(start, end, if end >= start { 1.0 } else { -1.0 }, item),
        Some(m) if m.starts_with('(') && m.ends_with(')') => {
            stepped(start, end, number(&m[1..m.len() - 1])?, item)
        }
        Some(m) if m.starts_with('[') && m.ends_with(']') => {
            let count = m[1..m.len() - 1].trim();
            let count: usize = count
                .parse()
                .map_err(|_| format!("`{item}`: `{count}` is not a count of values"))?;
            if count == 0 || count > MAX_VALUES {
                return Err(format!("`{item}`: the count must be 1 to {MAX_VALUES}"));
            }
            if count == 1 {
                return Ok(vec![start]);
            }
            let step = (end - start) / (count - 1) as f64;
            Ok((0..count).map(|i| tidy(start + step * i as f64)).collect())
        }
        Some(m) => Err(format!(
            "`{item}`: expected `(+step)` or `[count]` after the range, found `{m}`"
        )),
    }
}

/// Splits `a-b` where either number may be negative (`-5--1`).
fn split_span(span: &str) -> Option<(&str, &str)> {
    let search_from = usize::from(span.starts_with('-'));
    span[search_from..].find('-').map(|at| {
        (
            span[..search_from + at].trim(),
            span[search_from + at + 1..].trim(),
        )
    })
}

fn stepped(start: f64, end: f64, step: f64, item: &str) -> Result<Vec<f64>, String> {
    if step == 0.0 || !step.is_finite() || (end - start) * step < 0.0 {
        return Err(format!(
            "`{item}`: the step {step} never reaches {end} from {start}"
        ));
    }
    let count = ((end - start) / step + 1e-9).floor() as usize + 1;
    if count > MAX_VALUES {
        return Err(format!("`{item}` has more than {MAX_VALUES} values"));
    }
    Ok((0..count).map(|i| tidy(start + step * i as f64)).collect())
}

fn number(text: &str) -> Result<f64, String> {
    let text = text.trim().trim_start_matches('+');
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("`{text}` is not a number"))
}

/// Rounds away floating-point noise (`0.1 * 3`) so values compare and print cleanly.
fn tidy(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn increments() {
        assert_eq!(expand("20-40 (+10)").unwrap(), vec![20.0, 30.0, 40.0]);
        assert_eq!(expand("1-5 (+2)").unwrap(), vec![1.0, 3.0, 5.0]);
        assert_eq!(expand("5-7 (+0.5)").unwrap(), vec![5.0, 5.5, 6.0, 6.5, 7.0]);
        assert_eq!(expand("10-4 (-3)").unwrap(), vec![10.0, 7.0, 4.0]);
    }

    #[test]
    fn counts_and_lists() {
        assert_eq!(expand("1-10 [4]").unwrap(), vec![1.0, 4.0, 7.0, 10.0]);
        assert_eq!(expand("1-3, 8").unwrap(), vec![1.0, 2.0, 3.0, 8.0]);
        assert_eq!(expand("-2--1").unwrap(), vec![-2.0, -1.0]);
    }

    #[test]
    fn refuses_nonsense() {
        assert!(expand("1-5 (+0)").is_err());
        assert!(expand("1-5 (-1)").is_err());
        assert!(expand("a-b").is_err());
        assert!(expand("1-1000000000").unwrap_err().contains("more than"));
        assert!(expand("1-5 {2}").is_err());
        assert!(expand("").is_err());
    }
}
