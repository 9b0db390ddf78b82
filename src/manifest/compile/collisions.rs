//! File names that collide once cleaned: two jobs whose images the file name
//! template would write to the same files, compared as the writer names them
//! (`crate::layout::FilenameTemplate::render`, which cleans every value with
//! `sanitize_value`) and ignoring case, since a dataset is copied to macOS
//! and Windows. `a/b` and `a_b`, `.hidden` and `_hidden`, `trail.` and
//! `trail`, two ids sharing their first 120 bytes, `Case` and `case`: each
//! pair would make `run` pay for both images, keep one and stop.
//!
//! A template that holds `{key}` where no value can cut it out names every
//! job apart (keys are unique), so the default template skips the check.
//! Otherwise it streams over the expansion once, keeping a 64-bit hash per
//! name (memory follows the distinct names, not what they are made of); only
//! when two hashes meet does a second pass find the first job of each name
//! and compare the names themselves, so a hash collision is never reported.
//! Names are compared at image index 0: two jobs whose first images collide
//! collide at every index. A name with a value unknown until the Horde
//! answers (a random `{seed}`) is left out: it collides only by chance.
//!
//! This file reports problems and changes nothing; it reads a `rows:` table
//! again only to point at the cells of a collision it reports.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use serde_json::Value;

use super::axes::value_text;
use super::compiled::CompiledManifest;
use super::rows_axis::DEFAULT_ID_COLUMN;
use crate::layout::{FilenameTemplate, NameFields, Placeholder, MAX_VALUE_BYTES};
use crate::manifest::error::excerpt;
use crate::manifest::locate::YamlPath;
use crate::manifest::rows;
use crate::manifest::{Job, Problem};

/// Collisions reported at most: past a few, the cause is clear.
const MAX_REPORTED: usize = 20;

const HELP: &str = "file names are compared after cleaning (`/`, `\\`, `:` and other characters a file system refuses become `_`, leading dots become `_`, trailing dots and blanks are dropped, values are cut at 120 bytes) and ignoring case: rename one, or add `{key}` to `output.filename`";

/// Every pair of jobs (up to `MAX_REPORTED`) whose images would have the
/// same file names, each reported at the second one.
pub(super) fn check(compiled: &CompiledManifest) -> Vec<Problem> {
    let Ok(template) = FilenameTemplate::parse(&compiled.output.filename) else {
        return Vec::new(); // Reported with `output.filename`.
    };
    if keys_always_survive(&template) {
        return Vec::new();
    }
    let namer = Namer {
        template: &template,
        manifest: compiled.name(),
    };
    let suspects = first_pass(compiled, &namer);
    if suspects.is_empty() {
        return Vec::new();
    }
    let firsts = second_pass(compiled, &namer, &suspects);
    let mut tables = Tables::default();
    let mut problems = Vec::new();
    for second in &suspects {
        let Some(first) = firsts.get(&second.folded) else {
            continue;
        };
        if first.ordinal < second.ordinal {
            problems.push(report(compiled, &mut tables, first, second));
            if problems.len() == MAX_REPORTED {
                break;
            }
        }
    }
    problems
}

/// Whether every rendered name holds the job's key whole, whatever the
/// other values: rendered with every value at its longest, the key survives
/// the cut of overlong components. A name holding its key then equals
/// another job's only if a value spells out that job's key.
fn keys_always_survive(template: &FilenameTemplate) -> bool {
    const KEY: &str = "0123456789abcdef";
    if !template.uses(Placeholder::Key) {
        return false;
    }
    let longest = "x".repeat(MAX_VALUE_BYTES);
    let fields = NameFields {
        manifest: &longest,
        job: &longest,
        key: KEY,
        index: u32::MAX,
        seed: &longest,
        model: &longest,
        width: u32::MAX,
        height: u32::MAX,
        id: &longest,
    };
    template
        .render(&fields)
        .is_ok_and(|name| name.contains(KEY))
}

/// Renders a job's first image names as the writer will.
struct Namer<'a> {
    template: &'a FilenameTemplate,
    manifest: &'a str,
}

impl Namer<'_> {
    /// The distinct names of `job`'s first image, one per model it may be
    /// generated with; none when a value of the name is unknown until the
    /// Horde answers.
    fn names(&self, job: &Job) -> BTreeSet<String> {
        let key = job.key.to_string();
        let seed = if self.template.uses(Placeholder::Seed) {
            match job.seed_for(0) {
                Some(seed) => seed,
                None => return BTreeSet::new(),
            }
        } else {
            String::new()
        };
        let models: Vec<&str> = if self.template.uses(Placeholder::Model) {
            job.models.iter().map(String::as_str).collect()
        } else {
            vec![""]
        };
        let param = |name: &str| {
            job.params
                .get(name)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0)
        };
        models
            .into_iter()
            .filter_map(|model| {
                self.template
                    .render(&NameFields {
                        manifest: self.manifest,
                        job: &job.name,
                        key: &key,
                        index: 0,
                        seed: &seed,
                        model,
                        width: param("width"),
                        height: param("height"),
                        id: job.id.as_deref().unwrap_or(&key),
                    })
                    .ok()
            })
            .collect()
    }
}

/// A name as file systems that ignore case see it.
fn fold(name: &str) -> String {
    name.to_lowercase()
}

fn hash(folded: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    folded.hash(&mut hasher);
    hasher.finish()
}

/// A job that wrote a name, and the name.
struct Named {
    ordinal: u64,
    spec_index: usize,
    job_name: Arc<str>,
    id: Option<String>,
    name: String,
    folded: String,
}

impl Named {
    fn new(ordinal: u64, job: &Job, name: String) -> Named {
        Named {
            ordinal,
            spec_index: job.spec_index,
            job_name: Arc::clone(&job.name),
            id: job.id.clone(),
            folded: fold(&name),
            name,
        }
    }
}

/// The jobs whose name's hash an earlier job's name had (a few more than
/// are reported, in case some are only hash collisions).
fn first_pass(compiled: &CompiledManifest, namer: &Namer<'_>) -> Vec<Named> {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut suspects = Vec::new();
    for (ordinal, job) in (0u64..).zip(compiled.jobs()) {
        for name in namer.names(&job) {
            if !seen.insert(hash(&fold(&name))) {
                suspects.push(Named::new(ordinal, &job, name));
            }
        }
        if suspects.len() >= 2 * MAX_REPORTED {
            break;
        }
    }
    suspects
}

/// The first job of each suspect name, by its folded name.
fn second_pass(
    compiled: &CompiledManifest,
    namer: &Namer<'_>,
    suspects: &[Named],
) -> HashMap<String, Named> {
    let wanted: HashSet<u64> = suspects.iter().map(|s| hash(&s.folded)).collect();
    let last = suspects.iter().map(|s| s.ordinal).max().unwrap_or(0);
    let mut firsts: HashMap<String, Named> = HashMap::new();
    for (ordinal, job) in (0u64..)
        .zip(compiled.jobs())
        .take_while(|(o, _)| *o <= last)
    {
        for name in namer.names(&job) {
            let folded = fold(&name);
            if wanted.contains(&hash(&folded)) && !firsts.contains_key(&folded) {
                firsts.insert(folded, Named::new(ordinal, &job, name));
            }
        }
    }
    firsts
}

/// The problem for `second` colliding with `first`: at the second job's
/// name when the jobs differ, at the second row's id cell when the rows do,
/// else at the job.
fn report(
    compiled: &CompiledManifest,
    tables: &mut Tables,
    first: &Named,
    second: &Named,
) -> Problem {
    let source = &compiled.file.source;
    let job = YamlPath::root().key("jobs").index(second.spec_index);
    let shown = format!("`{}`", excerpt(&second.name));
    if first.spec_index != second.spec_index {
        let message = format!(
            "job `{}` names the same files as job `{}`: both write {shown}, …",
            second.job_name, first.job_name
        );
        return source.problem_at(&job.key("name"), message).with_help(HELP);
    }
    if let (Some(first_id), Some(second_id)) = (&first.id, &second.id) {
        if first_id != second_id {
            let table = tables
                .entry(second.spec_index)
                .or_insert_with(|| read_table(compiled, second.spec_index));
            let spec = compiled.file.manifest.jobs.get(second.spec_index);
            let column = spec.and_then(|s| s.rows.as_ref()).and_then(|r| r.id());
            if let Some(problem) = row_problem(table.as_ref(), column, first_id, second_id, &shown)
            {
                return problem;
            }
            let message = format!(
                "rows with the ids `{}` and `{}` name the same files: both write {shown}, …",
                excerpt(first_id),
                excerpt(second_id)
            );
            return source.problem_at(&job.key("rows"), message).with_help(HELP);
        }
    }
    let message = format!(
        "two combinations of job `{}` name the same files: both write {shown}, …",
        second.job_name
    );
    source.problem_at(&job.key("name"), message).with_help(HELP)
}

/// The `rows:` tables read again to point at cells, by job: each at most once.
type Tables = HashMap<usize, Option<rows::Table>>;

/// The `rows:` table of the job at `spec_index`, read again (as `rows_axis` did).
fn read_table(compiled: &CompiledManifest, spec_index: usize) -> Option<rows::Table> {
    let file = &compiled.file;
    let spec = file.manifest.jobs.get(spec_index)?.rows.as_ref()?;
    let path = file.base_dir.join(spec.file());
    rows::read(&path, &path.display().to_string()).ok()
}

/// The problem at the cell of the row whose id is `second_id`, naming the
/// row whose id is `first_id`, in `table` whose id column is `column` (`id`
/// when `rows:` names none); `None` if the table no longer reads as it did.
fn row_problem(
    table: Option<&rows::Table>,
    column: Option<&str>,
    first_id: &str,
    second_id: &str,
    shown: &str,
) -> Option<Problem> {
    let table = table?;
    let column = column.unwrap_or(DEFAULT_ID_COLUMN);
    let find = |id: &str| {
        table.rows.iter().find_map(|row| {
            let cell = table.cell(row, column)?;
            (value_text(&cell.value) == id).then_some((row.number, cell.offset))
        })
    };
    let (first_row, _) = find(first_id)?;
    let (second_row, offset) = find(second_id)?;
    let message = format!(
        "row {second_row}: id `{}` names the same files as row {first_row} (id `{}`): both write {shown}, …",
        excerpt(second_id),
        excerpt(first_id)
    );
    Some(table.problem_at(offset, message).with_help(HELP))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survives(template: &str) -> bool {
        keys_always_survive(&FilenameTemplate::parse(template).unwrap())
    }

    #[test]
    fn only_templates_that_can_lose_the_key_are_checked() {
        assert!(survives("{job}/{key}-{index}"));
        assert!(survives("{manifest}/{job}/{id}-{key}-{index:08}"));
        assert!(!survives("{job}/{id}-{index}"));
        // One component of three long values and the key: the key is in
        // the part cut out of an overlong name.
        assert!(!survives("{job}{id}{key}{model}-{index}"));
    }

    #[test]
    fn names_fold_case() {
        assert_eq!(fold("Case/ÄB-0"), fold("case/äb-0"));
        assert_eq!(hash(&fold("A")), hash(&fold("a")));
    }
}
