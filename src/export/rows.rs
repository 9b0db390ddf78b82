//! The rows an export reads: the dataset index of a batch (`metadata.jsonl`,
//! or each shard folder's part of it), streamed line by line in the index's
//! order, each row with its stable key and the files it names; and the column
//! types every row agrees on ([`Columns`]), found in one streaming pass so
//! every exported shard has the same schema.
//!
//! Owns the key scheme and the reading of index lines. Must not write
//! anything, and must never hold more than one row: memory follows a row,
//! not the batch.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ExportError;

/// One index file to read, and the folder its `file_name`s are relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The folder holding the images (an output folder, or a shard's folder).
    pub folder: PathBuf,
    /// Its index file (`metadata.jsonl`, or a shard's `shard-metadata.jsonl`).
    pub index: PathBuf,
    /// Put before every `file_name` (and `alchemy_of`) of its rows, as `merge`
    /// does: `shard-1-of-2/` for a shard's folder, `""` otherwise.
    pub prefix: String,
}

/// One image of the batch, as its index row names it.
#[derive(Debug, Clone)]
pub struct Row {
    /// The stable key: `{job_key}-{image_index}` (`-{form}` for an alchemy
    /// result), only `[A-Za-z0-9_-]`, so it is a file stem without a dot
    /// (webdataset splits a member's name at its first dot).
    pub key: String,
    /// The image file.
    pub image: PathBuf,
    /// Its sidecar (may not exist: `output.sidecars: false`).
    pub sidecar: PathBuf,
    /// The row's columns, `file_name` (and `alchemy_of`) with the source's prefix.
    pub columns: Map<String, Value>,
    /// The line as read (without its newline): what the digest of a shard covers.
    pub line: String,
}

/// Streams the rows of every source in turn.
pub struct Rows {
    sources: std::collections::VecDeque<Source>,
    current: Option<(Source, BufReader<File>, usize)>,
    line: String,
}

impl Rows {
    /// Reads `sources` in order. A source whose index does not exist has no rows.
    pub fn open(sources: &[Source]) -> Rows {
        Rows {
            sources: sources.iter().cloned().collect(),
            current: None,
            line: String::new(),
        }
    }

    /// The next row, `None` after the last. A last line without its newline
    /// that does not parse is an append cut short by a kill (the batch's next
    /// run repairs it): left out. Any other line that is not a row is an error.
    pub fn next_row(&mut self) -> Result<Option<Row>, ExportError> {
        loop {
            let Some((source, reader, number)) = &mut self.current else {
                let Some(source) = self.sources.pop_front() else {
                    return Ok(None);
                };
                match File::open(&source.index) {
                    Ok(file) => self.current = Some((source, BufReader::new(file), 0)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ExportError::io("read", &source.index, e)),
                }
                continue;
            };
            self.line.clear();
            let read = reader
                .read_line(&mut self.line)
                .map_err(|e| ExportError::io("read", &source.index, e))?;
            if read == 0 {
                self.current = None;
                continue;
            }
            *number += 1;
            let terminated = self.line.ends_with('\n');
            let text = self.line.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            let columns = match serde_json::from_str::<Map<String, Value>>(text) {
                Ok(columns) => columns,
                Err(_) if !terminated => continue,
                Err(e) => {
                    return Err(ExportError::Index {
                        path: source.index.clone(),
                        line: *number,
                        problem: e.to_string(),
                    })
                }
            };
            let line = text.to_owned();
            return row_of(source, columns, line)
                .map(Some)
                .ok_or_else(|| ExportError::Index {
                    path: source.index.clone(),
                    line: *number,
                    problem: "the row has no `file_name` naming a .webp file".to_owned(),
                });
        }
    }
}

/// The row of an index line, `None` without a usable `file_name`.
fn row_of(source: &Source, mut columns: Map<String, Value>, line: String) -> Option<Row> {
    let name = columns.get("file_name")?.as_str()?.to_owned();
    let stem = name.strip_suffix(".webp")?;
    if stem.is_empty() || Path::new(&name).is_absolute() || name.split('/').any(|c| c == "..") {
        return None;
    }
    let image = source.folder.join(&name);
    let sidecar = source.folder.join(format!("{stem}.json"));
    let key = key_of(&columns, stem);
    if !source.prefix.is_empty() {
        for column in ["file_name", "alchemy_of"] {
            if let Some(value) = columns.get(column).and_then(Value::as_str) {
                let prefixed = format!("{}{value}", source.prefix);
                columns.insert(column.to_owned(), Value::from(prefixed));
            }
        }
    }
    Some(Row {
        key,
        image,
        sidecar,
        columns,
        line,
    })
}

/// The stable key of a row: `{job_key}-{image_index}`, and `-{alchemy_form}`
/// on an alchemy result's row; the file's stem when the row lacks a job key.
/// Characters outside `[A-Za-z0-9_-]` become `_`.
pub fn key_of(columns: &Map<String, Value>, stem: &str) -> String {
    let text = |name: &str| match columns.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let raw = match (text("job_key"), text("image_index")) {
        (Some(job), Some(index)) => match text("alchemy_form") {
            Some(form) => format!("{job}-{index}-{form}"),
            None => format!("{job}-{index}"),
        },
        _ => stem.to_owned(),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What a column holds in every row that has a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No row has a value: written as text, all null.
    Null,
    Bool,
    Int,
    Float,
    /// Strings, and values of mixed or nested types (written as JSON text).
    Text,
    /// Lists whose items all have one scalar type (or are null): alchemy's `tags`.
    List(Scalar),
}

/// The type of a list's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scalar {
    /// Every list is empty or holds only nulls: written as a list of strings.
    Null,
    Bool,
    Int,
    Float,
    Text,
}

impl Scalar {
    /// The scalar type of a value, `None` for a list or an object.
    fn of(value: &Value) -> Option<Scalar> {
        Some(match value {
            Value::Null => Scalar::Null,
            Value::Bool(_) => Scalar::Bool,
            Value::Number(n) if n.is_i64() => Scalar::Int,
            Value::Number(_) => Scalar::Float,
            Value::String(_) => Scalar::Text,
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// The scalar type holding values of both, `None` when they are mixed.
    fn join(self, other: Scalar) -> Option<Scalar> {
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Scalar::Null, other) | (other, Scalar::Null) => Some(other),
            (Scalar::Int, Scalar::Float) | (Scalar::Float, Scalar::Int) => Some(Scalar::Float),
            _ => None,
        }
    }
}

impl Kind {
    fn of(value: &Value) -> Kind {
        match value {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Number(n) if n.is_i64() => Kind::Int,
            Value::Number(_) => Kind::Float,
            Value::Array(items) => items
                .iter()
                .try_fold(Scalar::Null, |items, item| items.join(Scalar::of(item)?))
                .map_or(Kind::Text, Kind::List),
            _ => Kind::Text,
        }
    }

    /// The kind holding values of both.
    fn join(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Null, other) | (other, Kind::Null) => other,
            (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
            (Kind::List(a), Kind::List(b)) => a.join(b).map_or(Kind::Text, Kind::List),
            _ => Kind::Text,
        }
    }
}

/// The columns of an export, in the order they first appear, each with its kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Columns {
    pub names: Vec<String>,
    pub kinds: Vec<Kind>,
}

/// Columns past this many are refused: an index is a table, not a bag of keys.
const MAX_COLUMNS: usize = 4096;

impl Columns {
    /// Takes in a row's columns.
    pub fn add(&mut self, columns: &Map<String, Value>) -> Result<(), ExportError> {
        for (name, value) in columns {
            let kind = Kind::of(value);
            match self.names.iter().position(|known| known == name) {
                Some(at) => self.kinds[at] = self.kinds[at].join(kind),
                None if self.names.len() >= MAX_COLUMNS => {
                    return Err(ExportError::TooManyColumns(MAX_COLUMNS))
                }
                None => {
                    self.names.push(name.clone());
                    self.kinds.push(kind);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn keys_come_from_the_job_key_and_index_and_hold_no_dot() {
        let row = map(json!({"job_key": "ab-12", "image_index": 3}));
        assert_eq!(key_of(&row, "x/y"), "ab-12-3");
        let derived =
            map(json!({"job_key": "ab-12", "image_index": 3, "alchemy_form": "RealESRGAN_x4plus"}));
        assert_eq!(key_of(&derived, "x/y"), "ab-12-3-RealESRGAN_x4plus");
        assert_eq!(key_of(&map(json!({})), "dir/a.b c"), "dir_a_b_c");
    }

    #[test]
    fn kinds_join_to_what_holds_every_value() {
        let mut columns = Columns::default();
        columns
            .add(&map(json!({"a": 1, "b": null, "c": true, "d": "x"})))
            .unwrap();
        columns
            .add(&map(json!({"a": 1.5, "b": 2, "c": "no", "e": [1]})))
            .unwrap();
        assert_eq!(columns.names, ["a", "b", "c", "d", "e"]);
        assert_eq!(
            columns.kinds,
            [
                Kind::Float,
                Kind::Int,
                Kind::Text,
                Kind::Text,
                Kind::List(Scalar::Int)
            ]
        );
    }

    #[test]
    fn lists_of_one_scalar_type_are_lists_and_anything_mixed_is_text() {
        let kinds = |rows: &[Value]| {
            let mut columns = Columns::default();
            for row in rows {
                columns.add(&map(json!({ "c": row }))).unwrap();
            }
            columns.kinds[0]
        };
        assert_eq!(
            kinds(&[json!(["a", null]), json!([]), json!(null), json!(["b"])]),
            Kind::List(Scalar::Text)
        );
        assert_eq!(kinds(&[json!([]), json!([])]), Kind::List(Scalar::Null));
        assert_eq!(
            kinds(&[json!([1]), json!([2.5])]),
            Kind::List(Scalar::Float)
        );
        assert_eq!(kinds(&[json!([true])]), Kind::List(Scalar::Bool));
        // Mixed items, nested lists or objects, a list beside a scalar: JSON text.
        assert_eq!(kinds(&[json!(["a", 1])]), Kind::Text);
        assert_eq!(kinds(&[json!([["a"]])]), Kind::Text);
        assert_eq!(kinds(&[json!([{"text": "a"}])]), Kind::Text);
        assert_eq!(kinds(&[json!(["a"]), json!([1])]), Kind::Text);
        assert_eq!(kinds(&[json!(["a"]), json!("a")]), Kind::Text);
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_a_bad_line_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("metadata.jsonl");
        let source = Source {
            folder: dir.path().to_owned(),
            index: index.clone(),
            prefix: "shard-1-of-2/".to_owned(),
        };
        std::fs::write(
            &index,
            "{\"file_name\":\"a/b.webp\",\"job_key\":\"k\",\"image_index\":0}\n{\"file_na",
        )
        .unwrap();
        let mut rows = Rows::open(std::slice::from_ref(&source));
        let row = rows.next_row().unwrap().unwrap();
        assert_eq!(row.key, "k-0");
        assert_eq!(row.image, dir.path().join("a/b.webp"));
        assert_eq!(row.sidecar, dir.path().join("a/b.json"));
        assert_eq!(row.columns["file_name"], json!("shard-1-of-2/a/b.webp"));
        assert!(rows.next_row().unwrap().is_none());

        std::fs::write(&index, "{\"file_na\n{\"file_name\":\"a.webp\"}\n").unwrap();
        let mut rows = Rows::open(&[source]);
        assert!(matches!(
            rows.next_row(),
            Err(ExportError::Index { line: 1, .. })
        ));
    }
}
