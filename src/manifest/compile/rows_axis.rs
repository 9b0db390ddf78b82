//! A job's `rows:` table as an axis: each row one value, its cells set
//! parameters, the model, the source image or prompt variables by their
//! column's name, and its label is its id (the `id:` column, else a column
//! named `id`) or its number. Every bad cell is reported at its place in the
//! table file, not just the first.
//!
//! Reading and parsing the CSV or JSON Lines file is `rows` one level up;
//! this file gives the columns their meaning and checks the cells. It does
//! not build matrix axes or compile templates.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::axes::{value_text, Axis, AxisKind, AxisValue, ColumnUse, RowColumns};
use super::parameters::param_spec;
use super::Context;
use crate::manifest::error::excerpt;
use crate::manifest::locate::YamlPath;
use crate::manifest::params;
use crate::manifest::rows::{self, Row, Table, TableError};
use crate::manifest::schema::RowsSpec;
use crate::manifest::source::SourceRef;
use crate::manifest::template;

/// The id column of a table whose `rows:` names none.
pub(super) const DEFAULT_ID_COLUMN: &str = "id";

impl Context<'_> {
    /// The `rows:` table of a job as an axis, every bad cell reported at its
    /// place in the table (all of them, not just the first).
    pub(super) fn rows_axis(
        &mut self,
        spec: &RowsSpec,
        path: &YamlPath,
        matrix: &indexmap::IndexMap<String, Value>,
    ) -> Option<Axis> {
        let (table, shown) = self.read_rows(spec, path)?;
        let problems_before = self.problems.len();
        let columns = self.row_columns(&table, path, matrix);
        // A column named `id` is the id unless another is named.
        let id = spec.id().map(str::to_owned).or_else(|| {
            table
                .columns
                .iter()
                .find(|column| *column == DEFAULT_ID_COLUMN)
                .cloned()
        });
        if let Some(id) = &id {
            if !table.columns.contains(id) {
                self.problem(
                    &path.key("id"),
                    format!(
                        "rows file {shown} has no column `{id}`; its columns are {}",
                        table.columns.join(", ")
                    ),
                    "",
                );
                return None;
            }
        }
        let mut seen_ids: HashMap<String, usize> = HashMap::new();
        let mut values = Vec::with_capacity(table.rows.len());
        let mut sources = Vec::new();
        for row in &table.rows {
            let (cells, row_source) = self.row_cells(&table, row, &columns);
            let Some(label) = self.row_label(&table, row, &cells, id.as_deref(), &mut seen_ids)
            else {
                continue;
            };
            if cells.is_empty() && self.problems.len() == problems_before {
                let problem = table.problem_at(row.offset, format!("row {} is empty", row.number));
                self.problems.push(problem);
            }
            values.push(AxisValue {
                text: label,
                json: Value::Object(cells),
                weight: 1.0,
            });
            sources.push(row_source);
        }
        if self.problems.len() > problems_before {
            return None;
        }
        Some(Axis {
            kind: AxisKind::Rows(Arc::new(RowColumns {
                columns,
                id,
                sources,
            })),
            name: "rows".to_owned(),
            values,
        })
    }

    /// The job's rows file, read, and the path it is shown by; `None` when
    /// it cannot be read, holds rows that do not parse, or holds none (all
    /// reported).
    fn read_rows(&mut self, spec: &RowsSpec, path: &YamlPath) -> Option<(Table, String)> {
        let file = self.file.base_dir.join(spec.file());
        let shown = file.display().to_string();
        let table = match rows::read(&file, &shown) {
            Ok(table) => table,
            Err(TableError::File(message)) => {
                self.problem(path, message, "rows are a CSV file with a header line, or a JSON Lines file, relative to the manifest");
                return None;
            }
            Err(TableError::Rows(problems)) => {
                self.problems.extend(problems);
                return None;
            }
        };
        if table.rows.is_empty() {
            self.problem(path, format!("rows file {shown} has no rows"), "");
            return None;
        }
        Some((table, shown))
    }

    /// What each column of the table sets, by its name. A column that only
    /// the job may set, or that a matrix axis also names, is reported.
    fn row_columns(
        &mut self,
        table: &Table,
        path: &YamlPath,
        matrix: &indexmap::IndexMap<String, Value>,
    ) -> Vec<(String, ColumnUse)> {
        let mut columns = Vec::with_capacity(table.columns.len());
        for name in &table.columns {
            let used = if name == "model" {
                ColumnUse::Model
            } else if name == "source_image" {
                ColumnUse::SourceImage
            } else if matches!(
                name.as_str(),
                "source_mask" | "source_processing" | "extra_source_images"
            ) {
                self.problem(
                    path,
                    format!("`{name}` cannot be a rows column; only `source_image` can"),
                    &format!("set `{name}` on the job: it applies to every row"),
                );
                ColumnUse::Text
            } else if let Some(param) = params::spec(name) {
                ColumnUse::Param(param.name)
            } else if name == "seed" || name == "n" {
                let (message, help) = param_spec(name).err().unwrap_or_default();
                self.problem(path, format!("rows column `{name}`: {message}"), &help);
                ColumnUse::Text
            } else {
                ColumnUse::Text
            };
            if matrix.contains_key(name) {
                self.problem(
                    &path.key("file"),
                    format!("`{name}` is both a rows column and a matrix axis"),
                    "rename one of them",
                );
            }
            columns.push((name.clone(), used));
        }
        columns
    }

    /// A row's cells by column name, each checked for what its column sets
    /// (a bad one is reported at its place and left out), and the source
    /// image the row names, if it names one.
    fn row_cells(
        &mut self,
        table: &Table,
        row: &Row,
        columns: &[(String, ColumnUse)],
    ) -> (Map<String, Value>, Option<Arc<SourceRef>>) {
        let mut cells = Map::new();
        let mut row_source = None;
        for cell in &row.cells {
            let (name, used) = &columns[cell.column];
            let checked = match (used, &cell.value) {
                (ColumnUse::SourceImage, Value::String(file)) => {
                    self.cached_source(file).map(|source| {
                        row_source = Some(source);
                        cell.value.clone()
                    })
                }
                _ => cell_value(*used, &cell.value),
            };
            match checked {
                Ok(value) => {
                    cells.insert(name.clone(), value);
                }
                Err(message) => {
                    let problem = table.problem_at(
                        cell.offset,
                        format!("row {}, column `{name}`: {message}", row.number),
                    );
                    self.problems.push(problem);
                }
            }
        }
        (cells, row_source)
    }

    /// A row's label: its id when the table has an id column (reported when
    /// it repeats an earlier row's), else its number. `None` when the id is
    /// empty (reported).
    fn row_label(
        &mut self,
        table: &Table,
        row: &Row,
        cells: &Map<String, Value>,
        id: Option<&str>,
        seen_ids: &mut HashMap<String, usize>,
    ) -> Option<String> {
        let Some(id) = id else {
            return Some(row.number.to_string());
        };
        match cells.get(id).map(value_text) {
            Some(value) if !value.trim().is_empty() => {
                if let Some(first) = seen_ids.insert(value.clone(), row.number) {
                    let problem = table.problem_at(
                        table.cell(row, id).map_or(row.offset, |c| c.offset),
                        format!(
                            "row {}: id `{value}` is already the id of row {first}",
                            row.number
                        ),
                    );
                    self.problems.push(problem);
                }
                Some(value)
            }
            _ => {
                let problem = table.problem_at(
                    row.offset,
                    format!("row {}: the id column `{id}` is empty", row.number),
                );
                self.problems.push(problem);
                None
            }
        }
    }
}

/// A cell checked for what its column sets; why not, otherwise. A
/// `source_image` path (text) is checked by `cached_source` instead, so
/// here it is only refused for not being text.
fn cell_value(used: ColumnUse, value: &Value) -> Result<Value, String> {
    match used {
        ColumnUse::Param(param) => param_spec(param)
            .map_err(|(message, _)| message)
            .and_then(|spec| params::canonicalize(spec, &typed_cell(value)).map_err(|p| p.0)),
        ColumnUse::Model => match value {
            Value::String(model) if !model.trim().is_empty() => Ok(Value::from(model.trim())),
            other => Err(format!(
                "expected a model name, found {}",
                params::describe(other)
            )),
        },
        ColumnUse::SourceImage => Err(format!(
            "expected an image path, found {}",
            params::describe(value)
        )),
        ColumnUse::Text => match value {
            Value::String(text) => match template::syntax_in_value(text) {
                None => Ok(value.clone()),
                Some(what) => Err(format!("`{}` holds {what}, which is not expanded inside row values (write `\\` before it to send it as text)", excerpt(text))),
            },
            Value::Number(_) | Value::Bool(_) => Ok(Value::from(value_text(value))),
            other => Err(format!("expected text, found {}", params::describe(other))),
        },
    }
}

/// A CSV cell as the JSON value it spells (`30` → 30, `true` → true, `[a, b]`
/// → a list); JSON Lines values are typed already.
fn typed_cell(value: &Value) -> Value {
    match value {
        Value::String(text) => serde_yaml::from_str::<Value>(text)
            .ok()
            .filter(|v| !v.is_null())
            .unwrap_or_else(|| value.clone()),
        other => other.clone(),
    }
}
