//! `--shard auto`: which shard of an array job this process is, from the
//! variables its orchestrator sets (a Kubernetes Indexed Job, a Slurm job
//! array, an AWS Batch array job). Reads nothing itself: the caller passes a
//! lookup, so every orchestrator is tested without touching the environment.

use crate::plan::Shard;

/// The variables `--shard auto` reads: each orchestrator's index variable
/// (whose presence says that orchestrator runs this process).
const KUBERNETES_INDEX: &str = "JOB_COMPLETION_INDEX";
const SLURM_INDEX: &str = "SLURM_ARRAY_TASK_ID";
const AWS_BATCH_INDEX: &str = "AWS_BATCH_JOB_ARRAY_INDEX";
/// The shard count for Kubernetes, which does not export its `completions`.
const SHARDS_VARIABLE: &str = "HORDE_BATCH_SHARDS";

/// The shard `--shard auto` found, and where (for the line that says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FoundShard {
    pub shard: Shard,
    /// E.g. `Kubernetes (JOB_COMPLETION_INDEX=2, --shards 5)`.
    pub source: String,
}

/// Why `--shard auto` found no shard (a usage error: exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum OrchestratorError {
    #[error(
        "--shard auto: no orchestrator's variables are set (looked for {KUBERNETES_INDEX} of a \
         Kubernetes Indexed Job, {SLURM_INDEX} of a Slurm job array, {AWS_BATCH_INDEX} of an \
         AWS Batch array job); give --shard I/N"
    )]
    Missing,
    #[error(
        "--shard auto: the environment has the variables of more than one orchestrator ({0}); \
         unset the ones that do not run this process, or give --shard I/N"
    )]
    Ambiguous(String),
    #[error("--shard auto: {name} is {}; {why}", shown(.value))]
    Invalid {
        name: &'static str,
        value: Option<String>,
        why: String,
    },
    #[error(
        "--shard auto in a Kubernetes Indexed Job needs the number of shards: give --shards N \
         or set {SHARDS_VARIABLE} (the Job's completions; Kubernetes exports only \
         {KUBERNETES_INDEX})"
    )]
    NoCount,
    #[error("{given} disagrees with {with}: the shard counts differ")]
    Disagrees { given: String, with: String },
}

/// A variable's value as an error message shows it: escaped, or "not set".
fn shown(value: &Option<String>) -> String {
    match value {
        Some(value) => format!("`{}`", crate::terminal::escaped(value)),
        None => "not set".to_owned(),
    }
}

/// The shard this process is, from its orchestrator's variables (`lookup`
/// reads one; a blank value counts as unset) and `--shards` (`flag`):
///
/// - Kubernetes Indexed Job: `JOB_COMPLETION_INDEX` (0-based); the count
///   from `--shards` or `HORDE_BATCH_SHARDS` (Kubernetes does not export it);
/// - Slurm job array: `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN`
///   (arrays often start at 1), divided by `SLURM_ARRAY_TASK_STEP` (1 when
///   unset), of `SLURM_ARRAY_TASK_COUNT`. An array that is not one evenly
///   stepped range (`--array=1,4,5`) is refused: its ids name no shard;
/// - AWS Batch array job: `AWS_BATCH_JOB_ARRAY_INDEX` (0-based) of
///   `AWS_BATCH_JOB_ARRAY_SIZE`.
///
/// Where the orchestrator gives the count, `--shards` and
/// `HORDE_BATCH_SHARDS` must agree with it. Variables of two orchestrators
/// at once are refused: which one runs this process cannot be told.
pub(super) fn shard_from_environment(
    lookup: impl Fn(&str) -> Option<String>,
    flag: Option<u32>,
) -> Result<FoundShard, OrchestratorError> {
    let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
    let present: Vec<&str> = [KUBERNETES_INDEX, SLURM_INDEX, AWS_BATCH_INDEX]
        .into_iter()
        .filter(|name| get(name).is_some())
        .collect();
    let found = match present.as_slice() {
        [] => return Err(OrchestratorError::Missing),
        [KUBERNETES_INDEX] => kubernetes(&get, flag)?,
        [SLURM_INDEX] => slurm(&get)?,
        [AWS_BATCH_INDEX] => aws_batch(&get)?,
        several => return Err(OrchestratorError::Ambiguous(several.join(", "))),
    };
    // A count given besides the one used must agree with it.
    let variable = match get(SHARDS_VARIABLE) {
        Some(_) => Some(number(&get, SHARDS_VARIABLE)?),
        None => None,
    };
    let given = [
        flag.map(|count| (count, format!("--shards {count}"))),
        variable.map(|count| (count, format!("{SHARDS_VARIABLE}={count}"))),
    ];
    for (count, named) in given.into_iter().flatten() {
        if count != found.shard.count {
            return Err(OrchestratorError::Disagrees {
                given: named,
                with: found.source,
            });
        }
    }
    Ok(found)
}

/// The variable `name` as a number.
fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<u32, OrchestratorError> {
    let value = get(name);
    match value.as_deref().map(|text| text.trim().parse::<u32>()) {
        Some(Ok(number)) => Ok(number),
        Some(Err(_)) => Err(OrchestratorError::Invalid {
            name,
            value,
            why: "it should be a whole number".into(),
        }),
        None => Err(OrchestratorError::Invalid {
            name,
            value,
            why: "the orchestrator sets it".into(),
        }),
    }
}

/// Shard `index0 + 1` of `count`: `count` within the shard limit, and
/// `index0` (named `index_name`, counting from 0) below it.
fn shard_of(
    (index0, index_name): (u32, &'static str),
    (count, count_name): (u32, &'static str),
    source: String,
) -> Result<FoundShard, OrchestratorError> {
    if count == 0 || count > Shard::MAX_COUNT {
        return Err(OrchestratorError::Invalid {
            name: count_name,
            value: Some(count.to_string()),
            why: format!("a batch is split into 1 to {} shards", Shard::MAX_COUNT),
        });
    }
    if index0 >= count {
        return Err(OrchestratorError::Invalid {
            name: index_name,
            value: Some(index0.to_string()),
            why: format!("it counts from 0, so it is below the count of shards, {count}"),
        });
    }
    Ok(FoundShard {
        // index0 < count <= MAX_COUNT: the sum cannot overflow.
        shard: Shard {
            index: index0 + 1,
            count,
        },
        source,
    })
}

fn kubernetes(
    get: &impl Fn(&str) -> Option<String>,
    flag: Option<u32>,
) -> Result<FoundShard, OrchestratorError> {
    let index = number(get, KUBERNETES_INDEX)?;
    let (count, named) = match (flag, get(SHARDS_VARIABLE)) {
        (Some(count), _) => (count, format!("--shards {count}")),
        (None, Some(_)) => {
            let count = number(get, SHARDS_VARIABLE)?;
            (count, format!("{SHARDS_VARIABLE}={count}"))
        }
        (None, None) => return Err(OrchestratorError::NoCount),
    };
    let source = format!("Kubernetes ({KUBERNETES_INDEX}={index}, {named})");
    shard_of((index, KUBERNETES_INDEX), (count, SHARDS_VARIABLE), source)
}

fn slurm(get: &impl Fn(&str) -> Option<String>) -> Result<FoundShard, OrchestratorError> {
    const MIN: &str = "SLURM_ARRAY_TASK_MIN";
    const MAX: &str = "SLURM_ARRAY_TASK_MAX";
    const COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
    const STEP: &str = "SLURM_ARRAY_TASK_STEP";
    let id = number(get, SLURM_INDEX)?;
    let min = number(get, MIN)?;
    let count = number(get, COUNT)?;
    let step = match get(STEP) {
        Some(_) => number(get, STEP)?.max(1),
        None => 1,
    };
    let not_a_range = || OrchestratorError::Invalid {
        name: SLURM_INDEX,
        value: Some(id.to_string()),
        why: format!(
            "the array is not one evenly stepped range from {MIN}={min} (e.g. --array=1-5 or \
             --array=0-8:2), so its ids name no shard"
        ),
    };
    let offset = id.checked_sub(min).ok_or_else(not_a_range)?;
    if offset % step != 0 || offset / step >= count {
        return Err(not_a_range());
    }
    // The last id of an evenly stepped range of `count` ids; a list such as
    // `--array=1,4,5` ends elsewhere.
    if get(MAX).is_some() {
        let max = number(get, MAX)?;
        let last = u64::from(min) + u64::from(step) * u64::from(count.saturating_sub(1));
        if u64::from(max) != last {
            return Err(not_a_range());
        }
    }
    let stepped = if step > 1 {
        format!(", {STEP}={step}")
    } else {
        String::new()
    };
    let source = format!("Slurm ({SLURM_INDEX}={id}, {MIN}={min}{stepped}, {COUNT}={count})");
    shard_of((offset / step, SLURM_INDEX), (count, COUNT), source)
}

fn aws_batch(get: &impl Fn(&str) -> Option<String>) -> Result<FoundShard, OrchestratorError> {
    const SIZE: &str = "AWS_BATCH_JOB_ARRAY_SIZE";
    let index = number(get, AWS_BATCH_INDEX)?;
    let size = number(get, SIZE)?;
    let source = format!("AWS Batch ({AWS_BATCH_INDEX}={index}, {SIZE}={size})");
    shard_of((index, AWS_BATCH_INDEX), (size, SIZE), source)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--shard auto` in an environment of exactly these variables.
    fn auto(vars: &[(&str, &str)], flag: Option<u32>) -> Result<FoundShard, OrchestratorError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        shard_from_environment(
            |name| {
                vars.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, value)| value.clone())
            },
            flag,
        )
    }

    fn shard(vars: &[(&str, &str)], flag: Option<u32>) -> (u32, u32) {
        let found = auto(vars, flag).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
        (found.shard.index, found.shard.count)
    }

    #[test]
    fn kubernetes_counts_from_zero_and_takes_the_count_from_shards_or_its_variable() {
        let found = auto(&[("JOB_COMPLETION_INDEX", "2")], Some(5)).unwrap();
        assert_eq!((found.shard.index, found.shard.count), (3, 5));
        assert_eq!(
            found.source,
            "Kubernetes (JOB_COMPLETION_INDEX=2, --shards 5)"
        );
        assert_eq!(shard(&[("JOB_COMPLETION_INDEX", "0")], Some(5)), (1, 5));
        assert_eq!(shard(&[("JOB_COMPLETION_INDEX", "4")], Some(5)), (5, 5));
        let from_variable = &[("JOB_COMPLETION_INDEX", "1"), ("HORDE_BATCH_SHARDS", "3")];
        assert_eq!(shard(from_variable, None), (2, 3));
        assert_eq!(shard(from_variable, Some(3)), (2, 3));
        assert!(matches!(
            auto(from_variable, Some(4)),
            Err(OrchestratorError::Disagrees { .. })
        ));
        assert_eq!(
            auto(&[("JOB_COMPLETION_INDEX", "1")], None),
            Err(OrchestratorError::NoCount)
        );
        // Index 5 of 5 shards is past the last (0 … 4).
        let past = auto(&[("JOB_COMPLETION_INDEX", "5")], Some(5)).unwrap_err();
        assert!(past.to_string().contains("JOB_COMPLETION_INDEX"), "{past}");
        for bad in ["-1", "x", "1.5"] {
            let error = auto(&[("JOB_COMPLETION_INDEX", bad)], Some(5)).unwrap_err();
            assert!(error.to_string().contains("whole number"), "{error}");
        }
        let zero = auto(
            &[("JOB_COMPLETION_INDEX", "0"), ("HORDE_BATCH_SHARDS", "0")],
            None,
        );
        assert!(zero.unwrap_err().to_string().contains("1 to 10000"));
    }

    #[test]
    fn slurm_subtracts_the_first_id_and_steps() {
        let one_based = |id: &str| {
            shard(
                &[
                    ("SLURM_ARRAY_TASK_ID", id),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_MAX", "5"),
                    ("SLURM_ARRAY_TASK_COUNT", "5"),
                    ("SLURM_ARRAY_TASK_STEP", "1"),
                ],
                None,
            )
        };
        assert_eq!(one_based("1"), (1, 5));
        assert_eq!(one_based("5"), (5, 5));
        let zero_based = &[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(shard(zero_based, None), (1, 3));
        assert_eq!(shard(zero_based, Some(3)), (1, 3));
        assert!(matches!(
            auto(zero_based, Some(4)),
            Err(OrchestratorError::Disagrees { .. })
        ));
        // --array=0-10:2: ids 0, 2, … 10 are shards 1 … 6 of 6.
        let stepped = |id: &str| {
            auto(
                &[
                    ("SLURM_ARRAY_TASK_ID", id),
                    ("SLURM_ARRAY_TASK_MIN", "0"),
                    ("SLURM_ARRAY_TASK_MAX", "10"),
                    ("SLURM_ARRAY_TASK_COUNT", "6"),
                    ("SLURM_ARRAY_TASK_STEP", "2"),
                ],
                None,
            )
        };
        let found = stepped("4").unwrap();
        assert_eq!((found.shard.index, found.shard.count), (3, 6));
        assert!(
            found.source.contains("SLURM_ARRAY_TASK_STEP=2"),
            "{}",
            found.source
        );
        assert_eq!(stepped("10").unwrap().shard.index, 6);
        assert!(stepped("3").is_err());
        assert!(stepped("12").is_err());
    }

    #[test]
    fn slurm_refuses_an_array_that_is_not_one_evenly_stepped_range() {
        // --array=1,4,5: three ids, but not 1-3.
        let listed = |id: &str| {
            auto(
                &[
                    ("SLURM_ARRAY_TASK_ID", id),
                    ("SLURM_ARRAY_TASK_MIN", "1"),
                    ("SLURM_ARRAY_TASK_MAX", "5"),
                    ("SLURM_ARRAY_TASK_COUNT", "3"),
                    ("SLURM_ARRAY_TASK_STEP", "1"),
                ],
                None,
            )
        };
        for id in ["1", "4", "5"] {
            let error = listed(id).unwrap_err();
            assert!(
                error.to_string().contains("evenly stepped range"),
                "{error}"
            );
        }
        let no_count = auto(
            &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_MIN", "1")],
            None,
        )
        .unwrap_err();
        assert!(
            no_count
                .to_string()
                .contains("SLURM_ARRAY_TASK_COUNT is not set"),
            "{no_count}"
        );
    }

    #[test]
    fn aws_batch_counts_from_zero_of_its_size() {
        let job = |index: &str| {
            auto(
                &[
                    ("AWS_BATCH_JOB_ARRAY_INDEX", index),
                    ("AWS_BATCH_JOB_ARRAY_SIZE", "5"),
                ],
                None,
            )
        };
        let found = job("0").unwrap();
        assert_eq!((found.shard.index, found.shard.count), (1, 5));
        assert_eq!(
            found.source,
            "AWS Batch (AWS_BATCH_JOB_ARRAY_INDEX=0, AWS_BATCH_JOB_ARRAY_SIZE=5)"
        );
        assert_eq!(job("4").unwrap().shard.index, 5);
        assert!(job("5").is_err());
        let huge = auto(
            &[
                ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "10001"),
            ],
            None,
        );
        assert!(huge.is_err());
    }

    #[test]
    fn no_orchestrator_or_two_are_refused_naming_the_variables() {
        let missing = auto(&[("JOB_COMPLETION_INDEX", " ")], Some(3)).unwrap_err();
        assert_eq!(missing, OrchestratorError::Missing);
        let text = missing.to_string();
        for name in [KUBERNETES_INDEX, SLURM_INDEX, AWS_BATCH_INDEX] {
            assert!(text.contains(name), "{text}");
        }
        let both = auto(
            &[
                ("JOB_COMPLETION_INDEX", "0"),
                ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
                ("AWS_BATCH_JOB_ARRAY_SIZE", "2"),
            ],
            Some(2),
        )
        .unwrap_err();
        assert!(
            both.to_string()
                .contains("JOB_COMPLETION_INDEX, AWS_BATCH_JOB_ARRAY_INDEX"),
            "{both}"
        );
    }

    #[test]
    fn a_value_from_the_environment_is_shown_escaped() {
        let error = auto(&[("AWS_BATCH_JOB_ARRAY_INDEX", "1\u{1b}[2J")], None).unwrap_err();
        assert!(!error.to_string().contains('\u{1b}'), "{error}");
    }
}
