//! Prompt tables: the rows of a job's `rows:` file (CSV with a header line,
//! or JSON Lines of objects), each cell with where it was written.
//!
//! This module only reads and parses: it turns the file into named columns
//! and typed cells and reports unreadable rows with their line and column.
//! What a column means (a prompt variable, a parameter, the id) is decided by
//! `compile`. Reads the one file it is given; nothing else.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::error::{Problem, SourceText};
use super::locate::Position;

/// Tables larger than this are refused before parsing.
const MAX_ROWS_BYTES: u64 = 256 * 1024 * 1024;

/// A parsed table: its columns in first-seen order and its rows.
#[derive(Debug, Clone)]
pub struct Table {
    pub source: SourceText,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// One row: a cell per column it sets (empty CSV cells are left out).
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based row number (the header is not a row).
    pub number: usize,
    /// Byte offset of the row in the file.
    pub offset: usize,
    pub cells: Vec<Cell>,
}

/// One value of a row.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Index into `Table::columns`.
    pub column: usize,
    pub value: Value,
    /// Byte offset of the value in the file.
    pub offset: usize,
}

impl Table {
    /// A problem with row `row`'s cell in `column`, pointed at in the file.
    pub fn problem_at(&self, offset: usize, message: impl Into<String>) -> Problem {
        self.source
            .problem_at_position(Position::from_offset(&self.source.text, offset), message)
    }

    /// The cell of `row` in the column named `name`, if set.
    pub fn cell<'a>(&self, row: &'a Row, name: &str) -> Option<&'a Cell> {
        let column = self.columns.iter().position(|c| c == name)?;
        row.cells.iter().find(|c| c.column == column)
    }
}

/// Why a table could not be read at all (a bad cell is reported per cell by `compile`).
pub enum TableError {
    /// The file is missing, unreadable, too large or of an unknown kind.
    File(String),
    /// Rows that do not parse, each at its place.
    Rows(Vec<Problem>),
}

/// Reads the table at `path` (shown as `shown` in messages); `.csv` files are
/// CSV, `.jsonl`/`.ndjson` files JSON Lines.
pub fn read(path: &Path, shown: &str) -> Result<Table, TableError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !matches!(extension.as_str(), "csv" | "jsonl" | "ndjson") {
        return Err(TableError::File(format!(
            "rows file {shown} is neither `.csv` nor `.jsonl`/`.ndjson`"
        )));
    }
    let text = super::input::read_regular_text(path, MAX_ROWS_BYTES)
        .map_err(|e| TableError::File(format!("cannot read rows file {shown}: {e}")))?;
    let source = SourceText {
        name: shown.to_owned(),
        text: Arc::from(text),
    };
    if extension == "csv" {
        read_csv(source)
    } else {
        read_jsonl(source)
    }
}

fn read_csv(source: SourceText) -> Result<Table, TableError> {
    let text = Arc::clone(&source.text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(text.as_bytes());
    let mut table = Table {
        source,
        columns: Vec::new(),
        rows: Vec::new(),
    };
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => return Err(TableError::File(format!("{}: {e}", table.source.name))),
    };
    let mut problems = Vec::new();
    for (i, name) in headers.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            problems
                .push(table.problem_at(0, format!("column {} has no name in the header", i + 1)));
        } else if table.columns.iter().any(|c| c == name) {
            problems
                .push(table.problem_at(0, format!("column `{name}` is named twice in the header")));
        }
        table.columns.push(name.to_owned());
    }
    if headers.is_empty() {
        return Err(TableError::File(format!(
            "rows file {} has no header line",
            table.source.name
        )));
    }
    for (index, record) in reader.records().enumerate() {
        let number = index + 1;
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let offset = line_start(&text, e.position().map_or(0, |p| p.byte() as usize));
                problems.push(table.problem_at(offset, format!("row {number}: {e}")));
                continue;
            }
        };
        let offset = line_start(&text, record.position().map_or(0, |p| p.byte() as usize));
        let line_end = text[offset.min(text.len())..]
            .find('\n')
            .map_or(text.len(), |end| offset + end);
        let line = &text[offset.min(text.len())..line_end];
        let mut searched = 0;
        let mut cells = Vec::new();
        for (column, field) in record.iter().enumerate() {
            // The field's place: its first occurrence after the previous one
            // (exact for unquoted fields, close for quoted ones).
            let at = line[searched.min(line.len())..]
                .find(field)
                .map_or(offset, |found| offset + searched + found);
            searched = at - offset + field.len();
            if field.trim().is_empty() {
                continue;
            }
            cells.push(Cell {
                column,
                value: Value::from(field.trim()),
                offset: at,
            });
        }
        table.rows.push(Row {
            number,
            offset,
            cells,
        });
    }
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(TableError::Rows(problems))
    }
}

/// Where a record that the csv crate places at `offset` starts: after a
/// CRLF it places it on the `\n`, which is still the line before.
fn line_start(text: &str, offset: usize) -> usize {
    let rest = text.get(offset..).unwrap_or_default();
    offset + (rest.len() - rest.trim_start_matches(['\r', '\n']).len())
}

fn read_jsonl(source: SourceText) -> Result<Table, TableError> {
    let text = Arc::clone(&source.text);
    let mut table = Table {
        source,
        columns: Vec::new(),
        rows: Vec::new(),
    };
    let mut problems = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim();
        if content.is_empty() {
            continue;
        }
        let number = table.rows.len() + 1;
        let object = match serde_json::from_str::<Value>(content) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                let what = super::params::describe(&other);
                problems.push(table.problem_at(
                    start,
                    format!("row {number}: expected a JSON object, found {what}"),
                ));
                table.rows.push(Row {
                    number,
                    offset: start,
                    cells: Vec::new(),
                });
                continue;
            }
            Err(e) => {
                // One object per line: the error's column is its byte in the line.
                let at = start + e.column().saturating_sub(1).min(line.len());
                problems.push(table.problem_at(at, format!("row {number}: {e}")));
                table.rows.push(Row {
                    number,
                    offset: start,
                    cells: Vec::new(),
                });
                continue;
            }
        };
        let mut cells = Vec::new();
        for (name, value) in object {
            if value.is_null() {
                continue;
            }
            let column = match table.columns.iter().position(|c| *c == name) {
                Some(column) => column,
                None => {
                    table.columns.push(name.clone());
                    table.columns.len() - 1
                }
            };
            let at = line
                .find(&format!("\"{name}\""))
                .map_or(start, |found| start + found);
            cells.push(Cell {
                column,
                value,
                offset: at,
            });
        }
        table.rows.push(Row {
            number,
            offset: start,
            cells,
        });
    }
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(TableError::Rows(problems))
    }
}
