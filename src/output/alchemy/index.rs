//! The alchemy columns of the dataset index: `metadata.jsonl` (or a shard's
//! `shard-metadata.jsonl`) rewritten once, when the forms are finished, with
//! `caption`, `nsfw`, `tags` and one column per other text form, and a row of
//! its own for each derived image.
//!
//! Owns the column rules, which Hugging Face `datasets` dictates: every row
//! has every column (null when it has no value), and each column keeps one
//! type. Rows keep their key order and every other value's exact text.
//! Memory is bounded by the file: it is read twice, line by line (once for
//! its columns and file names, once to stream the new rows into a temp file
//! that replaces it). Must not know where the outcomes come from.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use indexmap::IndexSet;
use serde_json::Value;

use super::{parse_object, set, AlchemyOutcome, Cell, Object};
use crate::layout::BUILT_IN_COLUMNS;
use crate::output::{atomic, check_relative_name, OutputError};

/// The most distinct columns an index may have: every row gets every column,
/// so a damaged file with many names must not multiply the output.
pub const MAX_INDEX_COLUMNS: usize = 4096;

const FILE_NAME: &str = "file_name";
const WIDTH: &str = "width";
const HEIGHT: &str = "height";
const CAPTION: &str = "caption";
const NSFW: &str = "nsfw";
const INTERROGATION: &str = "interrogation";
const TAGS: &str = "tags";
const PROMPT: &str = "prompt";
const ALCHEMY_OF: &str = "alchemy_of";
const ALCHEMY_FORM: &str = "alchemy_form";

/// How alchemy results become metadata.jsonl columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlchemyColumns {
    /// The index's caption column (`text`, or `output.metadata.caption`).
    pub caption_column: String,
    /// Whether the alchemy caption takes the caption column (the prompt it
    /// held moves to `prompt`). Also the case when the caption column is
    /// itself named `caption`.
    pub caption_from_alchemy: bool,
}

impl Default for AlchemyColumns {
    fn default() -> Self {
        AlchemyColumns {
            caption_column: "text".to_owned(),
            caption_from_alchemy: false,
        }
    }
}

/// What [`apply_alchemy_to_index`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexChange {
    /// Rows that were there and now read differently.
    pub rows_updated: u64,
    /// Rows that were not there: derived images, images without a row.
    pub rows_added: u64,
}

/// Rewrites the index file at `index_path` once, atomically (temp file,
/// fsync, rename, directory fsync), so that:
/// - every row whose `file_name` has an outcome (`outcomes` is keyed by it)
///   gains `caption` (string), `nsfw` (bool), `tags` (the interrogation's tag
///   texts, highest confidence first) and a column per other text form
///   (numbers as floats, lists and objects as their JSON text); a column the
///   outcome has no value for keeps the row's value, or is null;
/// - with `caption_from_alchemy` (or a caption column named `caption`), the
///   caption column takes the alchemy caption and the prompt it held moves to
///   `prompt` (once: a second apply finds it there);
/// - each derived image gets its own row right after its source's: a copy of
///   it with `file_name`, `width` and `height` the derived image's,
///   `alchemy_of` the source and `alchemy_form` the form (other rows get
///   null there); its earlier row, wherever it was, is dropped. A derived
///   image missing on disk gets no row (logged);
/// - every row has every column (null when missing), so each column keeps
///   one type; rows keep their key order and the exact text of every other
///   value; a row with nothing to change is copied byte for byte;
/// - an outcome whose image has no row gets one at the end;
/// - a missing index is created with one row per outcome (`file_name`,
///   `width`, `height` read from the image, then the columns).
///
/// Applying the same outcomes twice gives the same bytes. The caller must
/// make sure nothing appends to the file meanwhile ([`OutputDir::apply_alchemy`](crate::output::OutputDir::apply_alchemy)
/// holds this process's index).
///
/// # Errors
///
/// [`OutputError::CorruptLog`] for a line that is not a JSON object with a
/// string `file_name`, or past [`MAX_INDEX_COLUMNS`] columns (nothing is
/// changed then); [`OutputError::Io`].
pub fn apply_alchemy_to_index(
    index_path: &Path,
    outcomes: &BTreeMap<String, AlchemyOutcome>,
    columns: &AlchemyColumns,
) -> Result<IndexChange, OutputError> {
    let dir = match index_path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let plan = Plan::new(dir, outcomes, columns);
    let survey = match Survey::read(index_path, &plan)? {
        Some(survey) => survey,
        None if outcomes.is_empty() => return Ok(IndexChange::default()),
        None => Survey::created(&plan),
    };
    let mut writer = Rewrite {
        plan: &plan,
        moves_prompt: plan.caption_takes_column && survey.had_caption_column,
        columns: survey.columns.clone(),
        survey: &survey,
        out: atomic::TempWriter::new(dir).map_err(|e| OutputError::io("write", index_path, e))?,
        path: index_path,
        change: IndexChange::default(),
    };
    if writer.moves_prompt {
        writer.columns.insert(PROMPT.to_owned());
    }
    if survey.existed {
        let file = open(index_path)?
            .ok_or_else(|| OutputError::io("read", index_path, io::ErrorKind::NotFound.into()))?;
        for_each_row(index_path, file, |_, line, row, name| {
            writer.existing_row(line, row, &name)
        })?;
    }
    for (name, outcome) in outcomes {
        if !survey.file_names.contains(name.as_str()) && !plan.derived_names.contains(name.as_str())
        {
            writer.new_row(name, outcome)?;
        }
    }
    let change = writer.change;
    let temp = writer
        .out
        .finish()
        .map_err(|e| OutputError::io("write", index_path, e))?;
    temp.persist_replacing(index_path)
        .map_err(|e| OutputError::io("replace", index_path, e))?;
    atomic::sync_dir(dir).map_err(|e| OutputError::io("sync", dir, e))?;
    Ok(change)
}

/// A derived image that gets a row.
struct Derived {
    form: String,
    file_name: String,
    size: (u32, u32),
}

/// What follows from the outcomes alone, before the file is read.
struct Plan<'a> {
    root: &'a Path,
    outcomes: &'a BTreeMap<String, AlchemyOutcome>,
    columns: &'a AlchemyColumns,
    /// Whether the alchemy caption goes in the caption column too.
    caption_takes_column: bool,
    /// Source file name → its derived images that exist on disk.
    derived: HashMap<&'a str, Vec<Derived>>,
    /// Every derived file name the outcomes name: their old rows are dropped.
    derived_names: HashSet<&'a str>,
    /// The columns this apply writes, in the order they are added.
    added: Vec<String>,
}

impl<'a> Plan<'a> {
    fn new(
        root: &'a Path,
        outcomes: &'a BTreeMap<String, AlchemyOutcome>,
        columns: &'a AlchemyColumns,
    ) -> Self {
        let has = |form: &str| outcomes.values().any(|o| o.results.contains_key(form));
        let caption_takes_column =
            has(CAPTION) && (columns.caption_from_alchemy || columns.caption_column == CAPTION);
        let mut derived: HashMap<&str, Vec<Derived>> = HashMap::new();
        let mut derived_names = HashSet::new();
        for (source, outcome) in outcomes {
            for (form, file_name) in &outcome.derived {
                derived_names.insert(file_name.as_str());
                match webp_size(root, file_name) {
                    Some(size) => derived.entry(source.as_str()).or_default().push(Derived {
                        form: form.clone(),
                        file_name: file_name.clone(),
                        size,
                    }),
                    None => tracing::warn!(
                        file = %file_name,
                        "the derived image is missing or unreadable; it gets no metadata row"
                    ),
                }
            }
        }
        let mut added = Vec::new();
        if caption_takes_column && columns.caption_column != CAPTION {
            added.push(columns.caption_column.clone());
        }
        for (form, column) in [(CAPTION, CAPTION), (NSFW, NSFW), (INTERROGATION, TAGS)] {
            if has(form) {
                added.push(column.to_owned());
            }
        }
        let others: BTreeSet<&str> = outcomes
            .values()
            .flat_map(|o| o.results.keys())
            .map(String::as_str)
            .filter(|form| ![CAPTION, NSFW, INTERROGATION].contains(form))
            .filter(|form| {
                let other = is_other_form_column(form, columns);
                if !other {
                    tracing::warn!(form, "this form's name is a column already; its values stay in the sidecars only");
                }
                other
            })
            .collect();
        added.extend(others.into_iter().map(str::to_owned));
        if !derived.is_empty() {
            added.extend([ALCHEMY_OF.to_owned(), ALCHEMY_FORM.to_owned()]);
        }
        Plan {
            root,
            outcomes,
            columns,
            caption_takes_column,
            derived,
            derived_names,
            added,
        }
    }
}

/// Whether a text form other than caption, nsfw and interrogation gets a
/// column of its own: not when its name is a column with another meaning.
fn is_other_form_column(form: &str, columns: &AlchemyColumns) -> bool {
    let taken = [
        CAPTION,
        NSFW,
        INTERROGATION,
        TAGS,
        PROMPT,
        ALCHEMY_OF,
        ALCHEMY_FORM,
    ];
    !taken.contains(&form) && !BUILT_IN_COLUMNS.contains(&form) && form != columns.caption_column
}

/// What the first read of an existing file found.
struct Survey {
    existed: bool,
    /// Whether some row has the caption column (a prompt to move).
    had_caption_column: bool,
    /// Every column of every row in first-seen order, then the added ones.
    columns: IndexSet<String>,
    /// The file names that have a row.
    file_names: HashSet<String>,
    /// The rows of derived images the outcomes name, as they were.
    old_derived: HashMap<String, String>,
}

impl Survey {
    /// Reads the file's columns and file names; `None` when there is no file.
    fn read(path: &Path, plan: &Plan<'_>) -> Result<Option<Survey>, OutputError> {
        let Some(file) = open(path)? else {
            return Ok(None);
        };
        let mut survey = Survey {
            existed: true,
            had_caption_column: false,
            columns: IndexSet::new(),
            file_names: HashSet::new(),
            old_derived: HashMap::new(),
        };
        for_each_row(path, file, |line_number, line, row, name| {
            for key in row.keys() {
                if !survey.columns.contains(key) {
                    survey.columns.insert(key.clone());
                    check_column_count(path, line_number, survey.columns.len())?;
                }
            }
            if plan.derived_names.contains(name.as_str()) {
                survey.old_derived.insert(name.clone(), line.to_owned());
            }
            survey.file_names.insert(name);
            Ok(())
        })?;
        survey.had_caption_column = survey.columns.contains(&plan.columns.caption_column);
        survey.columns.extend(plan.added.iter().cloned());
        check_column_count(path, 0, survey.columns.len())?;
        Ok(Some(survey))
    }

    /// The survey of an index that is not there yet.
    fn created(plan: &Plan<'_>) -> Survey {
        let mut columns: IndexSet<String> = [FILE_NAME, WIDTH, HEIGHT]
            .into_iter()
            .map(str::to_owned)
            .collect();
        columns.extend(plan.added.iter().cloned());
        Survey {
            existed: false,
            had_caption_column: false,
            columns,
            file_names: HashSet::new(),
            old_derived: HashMap::new(),
        }
    }
}

fn check_column_count(path: &Path, line: usize, count: usize) -> Result<(), OutputError> {
    if count <= MAX_INDEX_COLUMNS {
        return Ok(());
    }
    Err(OutputError::CorruptLog {
        path: path.to_path_buf(),
        line,
        message: format!("more than {MAX_INDEX_COLUMNS} distinct columns"),
    })
}

/// The second pass: the new rows, streamed into the temp file.
struct Rewrite<'a> {
    plan: &'a Plan<'a>,
    survey: &'a Survey,
    /// Every row gets these columns.
    columns: IndexSet<String>,
    /// Whether a caption taking the caption column moves its prompt to `prompt`.
    moves_prompt: bool,
    out: atomic::TempWriter,
    path: &'a Path,
    change: IndexChange,
}

impl Rewrite<'_> {
    fn existing_row(&mut self, line: &str, mut row: Object, name: &str) -> Result<(), OutputError> {
        if self.plan.derived_names.contains(name) {
            return Ok(()); // written again after its source
        }
        let outcome = self.plan.outcomes.get(name);
        if outcome.is_none() && row.len() == self.columns.len() {
            return self.write(line); // nothing to add: the row as it was
        }
        // Missing columns first, so the outcome's values land in their order.
        fill(&mut row, &self.columns);
        if let Some(outcome) = outcome {
            self.apply(&mut row, outcome);
        }
        let new = to_line(&row);
        if new != line {
            self.change.rows_updated += 1;
        }
        self.write(&new)?;
        self.derived_rows(name, &row)
    }

    /// A row for an image the index did not have.
    fn new_row(&mut self, name: &str, outcome: &AlchemyOutcome) -> Result<(), OutputError> {
        let mut row = Object::new();
        set(
            &mut row,
            FILE_NAME,
            Cell::Made(Value::String(name.to_owned())),
        );
        fill(&mut row, &self.columns);
        if row.contains_key(WIDTH) || row.contains_key(HEIGHT) {
            let size = image_size(self.plan.root, name);
            set(
                &mut row,
                WIDTH,
                Cell::Made(size.map_or(Value::Null, |s| s.0.into())),
            );
            set(
                &mut row,
                HEIGHT,
                Cell::Made(size.map_or(Value::Null, |s| s.1.into())),
            );
        }
        self.apply(&mut row, outcome);
        self.change.rows_added += 1;
        self.write(&to_line(&row))?;
        self.derived_rows(name, &row)
    }

    /// The rows of `source`'s derived images, copies of its (final) row.
    fn derived_rows(&mut self, source: &str, source_row: &Object) -> Result<(), OutputError> {
        let Some(derived) = self.plan.derived.get(source) else {
            return Ok(());
        };
        for image in derived {
            let mut row = source_row.clone();
            let made = |value: Value| Cell::Made(value);
            set(&mut row, FILE_NAME, made(image.file_name.clone().into()));
            if row.contains_key(WIDTH) {
                set(&mut row, WIDTH, made(image.size.0.into()));
            }
            if row.contains_key(HEIGHT) {
                set(&mut row, HEIGHT, made(image.size.1.into()));
            }
            set(&mut row, ALCHEMY_OF, made(source.into()));
            set(&mut row, ALCHEMY_FORM, made(image.form.clone().into()));
            let line = to_line(&row);
            match self.survey.old_derived.get(&image.file_name) {
                Some(old) if *old == line => {}
                Some(_) => self.change.rows_updated += 1,
                None => self.change.rows_added += 1,
            }
            self.write(&line)?;
        }
        Ok(())
    }

    /// Sets the columns an outcome has values for.
    fn apply(&self, row: &mut Object, outcome: &AlchemyOutcome) {
        let made = |value: Value| Cell::Made(value);
        for (form, value) in &outcome.results {
            match form.as_str() {
                CAPTION => {
                    let caption = value.as_str();
                    if let (Some(caption), true) = (caption, self.plan.caption_takes_column) {
                        self.caption_takes_column(row, caption);
                    }
                    set(row, CAPTION, made(caption.map_or(Value::Null, Value::from)));
                }
                NSFW => set(
                    row,
                    NSFW,
                    made(value.as_bool().map_or(Value::Null, Value::from)),
                ),
                INTERROGATION => set(row, TAGS, made(tags_of(value))),
                other if is_other_form_column(other, self.plan.columns) => {
                    set(row, other, made(column_value(value)));
                }
                _ => {}
            }
        }
    }

    /// The caption column takes the caption; the prompt it held moves to
    /// `prompt`, unless `prompt` holds one already or the column holds
    /// this very caption (a second apply).
    fn caption_takes_column(&self, row: &mut Object, caption: &str) {
        let column = &self.plan.columns.caption_column;
        let held = row.get(column).filter(|cell| !cell.is_null()).cloned();
        let prompt_free = row.get(PROMPT).is_none_or(Cell::is_null);
        if let Some(held) = held {
            if self.moves_prompt && prompt_free && held.value().as_str() != Some(caption) {
                set(row, PROMPT, held);
            }
        }
        set(row, column, Cell::Made(Value::from(caption)));
    }

    fn write(&mut self, line: &str) -> Result<(), OutputError> {
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| OutputError::io("write", self.path, e))
    }
}

/// Adds each of `columns` the row lacks, as null, at the end.
fn fill(row: &mut Object, columns: &IndexSet<String>) {
    for column in columns {
        if !row.contains_key(column) {
            row.insert(column.clone(), Cell::Made(Value::Null));
        }
    }
}

fn to_line(row: &Object) -> String {
    serde_json::to_string(row).expect("a JSON object with string keys serialises")
}

/// `tags`: the texts of the interrogation's tags, highest confidence first
/// (ties keep the Horde's order); an empty list when it has none, null when
/// the value is not an object.
fn tags_of(interrogation: &Value) -> Value {
    if !interrogation.is_object() {
        return Value::Null;
    }
    let Some(tags) = interrogation.get(TAGS).and_then(Value::as_array) else {
        return Value::Array(Vec::new());
    };
    let mut scored: Vec<(f64, &str)> = tags
        .iter()
        .filter_map(|tag| match tag {
            Value::String(text) => Some((f64::NEG_INFINITY, text.as_str())),
            _ => Some((
                tag.get("confidence")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NEG_INFINITY),
                tag.get("text")?.as_str()?,
            )),
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    Value::Array(scored.into_iter().map(|(_, text)| text.into()).collect())
}

/// Another text form's column value, of one type per kind of value:
/// numbers are floats (`6` and `6.95` in one column), lists and objects
/// their JSON text.
fn column_value(value: &Value) -> Value {
    match value {
        Value::Number(number) => number.as_f64().map_or(Value::Null, Value::from),
        Value::Array(_) | Value::Object(_) => Value::String(value.to_string()),
        Value::Null | Value::Bool(_) | Value::String(_) => value.clone(),
    }
}

/// The size of a derived WebP, from its header.
fn webp_size(root: &Path, file_name: &str) -> Option<(u32, u32)> {
    check_relative_name(file_name).ok()?;
    let file = File::open(root.join(file_name)).ok()?;
    let decoder = image_webp::WebPDecoder::new(BufReader::new(file)).ok()?;
    Some(decoder.dimensions())
}

/// The size of any image (WebP, PNG, JPEG), from its header.
fn image_size(root: &Path, file_name: &str) -> Option<(u32, u32)> {
    check_relative_name(file_name).ok()?;
    image::image_dimensions(root.join(file_name)).ok()
}

fn open(path: &Path) -> Result<Option<File>, OutputError> {
    match File::open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(OutputError::io("read", path, e)),
    }
}

/// Calls `each` with (line number, the line without its line break, the
/// row, its file name) for every non-blank line.
fn for_each_row(
    path: &Path,
    file: File,
    mut each: impl FnMut(usize, &str, Object, String) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let corrupt = |line: usize, message: String| OutputError::CorruptLog {
        path: PathBuf::from(path),
        line,
        message,
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut bytes = Vec::new();
    let mut line_number = 0;
    loop {
        bytes.clear();
        if reader
            .read_until(b'\n', &mut bytes)
            .map_err(|e| OutputError::io("read", path, e))?
            == 0
        {
            return Ok(());
        }
        line_number += 1;
        let line = std::str::from_utf8(&bytes)
            .map_err(|_| corrupt(line_number, "not UTF-8".to_owned()))?
            .trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_object(line)
            .map_err(|e| corrupt(line_number, format!("not a JSON object: {e}")))?;
        let name = row
            .get(FILE_NAME)
            .and_then(|cell| match cell.value() {
                Value::String(name) => Some(name),
                _ => None,
            })
            .ok_or_else(|| corrupt(line_number, "no string `file_name`".to_owned()))?;
        each(line_number, line, row, name)?;
    }
}
