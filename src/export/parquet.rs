//! A Parquet file of index rows, optionally with each image's bytes in an
//! `image` column laid out as Hugging Face `datasets`' Image feature
//! (`struct<bytes: binary, path: string>`), and the `huggingface` key-value
//! metadata that makes `load_dataset("parquet", …)` read that column as an
//! Image. Written through the `parquet` crate's low-level writer (no arrow).
//!
//! Rows are buffered until a row group is full ([`ROW_GROUP_ROWS`] rows or
//! [`ROW_GROUP_BYTES`] of images), so memory follows one row group, never
//! the file. Uncompressed: WebP is compressed already. Output is a pure
//! function of the rows (no timestamps). Must not read files or know
//! where rows come from.

use std::io::Write;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DataType, DoubleType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::{SerializedColumnWriter, SerializedFileWriter};
use parquet::schema::types::{Type, TypePtr};
use serde_json::{json, Map, Value};

use super::rows::{Columns, Kind, Scalar};

/// Rows per row group, at most.
pub const ROW_GROUP_ROWS: usize = 1_000;
/// Image bytes per row group, at most (a row group of big images closes early).
pub const ROW_GROUP_BYTES: usize = 64 << 20;

/// A Parquet writer failed (the crate's error, or the sink's).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParquetError(String);

impl From<parquet::errors::ParquetError> for ParquetError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        ParquetError(e.to_string())
    }
}

/// An image to embed: its bytes and the path the Image feature records.
pub struct Embedded {
    pub bytes: Vec<u8>,
    pub path: String,
}

/// Writes rows of `columns` (and images, when made [`ParquetFile::with_images`]) to `sink`.
pub struct ParquetFile<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    columns: Columns,
    with_images: bool,
    rows: Vec<Map<String, Value>>,
    images: Vec<Embedded>,
    image_bytes: usize,
}

impl<W: Write + Send> ParquetFile<W> {
    /// A file of the rows' columns only.
    pub fn new(sink: W, columns: &Columns) -> Result<Self, ParquetError> {
        Self::create(sink, columns, false)
    }

    /// A file whose first column is `image`, then the rows' columns.
    pub fn with_images(sink: W, columns: &Columns) -> Result<Self, ParquetError> {
        Self::create(sink, columns, true)
    }

    fn create(sink: W, columns: &Columns, with_images: bool) -> Result<Self, ParquetError> {
        let mut fields = Vec::with_capacity(columns.names.len() + 1);
        if with_images {
            fields.push(Arc::new(image_type()?));
        }
        for (name, kind) in columns.names.iter().zip(&columns.kinds) {
            fields.push(Arc::new(column_type(name, *kind)?));
        }
        let schema: TypePtr = Arc::new(
            Type::group_type_builder("schema")
                .with_fields(fields)
                .build()?,
        );
        let properties = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_created_by(format!("horde-batch {}", env!("CARGO_PKG_VERSION")))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                "huggingface".to_owned(),
                features(columns, with_images).to_string(),
            )]))
            .build();
        Ok(ParquetFile {
            writer: SerializedFileWriter::new(sink, schema, Arc::new(properties))?,
            columns: columns.clone(),
            with_images,
            rows: Vec::new(),
            images: Vec::new(),
            image_bytes: 0,
        })
    }

    /// Adds a row (with its image when the file has images; ignored otherwise).
    pub fn push(
        &mut self,
        row: Map<String, Value>,
        image: Option<Embedded>,
    ) -> Result<(), ParquetError> {
        if self.with_images {
            let image = image.unwrap_or(Embedded {
                bytes: Vec::new(),
                path: String::new(),
            });
            self.image_bytes += image.bytes.len();
            self.images.push(image);
        }
        self.rows.push(row);
        if self.rows.len() >= ROW_GROUP_ROWS || self.image_bytes >= ROW_GROUP_BYTES {
            self.flush_group()?;
        }
        Ok(())
    }

    /// Writes the last row group and the footer; gives the sink back.
    pub fn finish(mut self) -> Result<W, ParquetError> {
        self.flush_group()?;
        Ok(self.writer.into_inner()?)
    }

    fn flush_group(&mut self) -> Result<(), ParquetError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let rows = std::mem::take(&mut self.rows);
        let mut images = std::mem::take(&mut self.images);
        self.image_bytes = 0;
        let mut leaf = 0usize;
        while let Some(mut column) = group.next_column()? {
            if self.with_images && leaf < 2 {
                // image.bytes, then image.path: both present in every row (levels 2).
                // The bytes move into the column (no copy): a row group holds each image once.
                let values: Vec<ByteArray> = images
                    .iter_mut()
                    .map(|image| match leaf {
                        0 => ByteArray::from(std::mem::take(&mut image.bytes)),
                        _ => ByteArray::from(image.path.as_bytes().to_vec()),
                    })
                    .collect();
                let levels = vec![2i16; values.len()];
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&values, Some(&levels), None)?;
            } else {
                let at = leaf - usize::from(self.with_images) * 2;
                let name = &self.columns.names[at];
                let values = rows
                    .iter()
                    .map(|row| row.get(name).filter(|v| !v.is_null()));
                write_column(&mut column, self.columns.kinds[at], values)?;
            }
            column.close()?;
            leaf += 1;
        }
        group.close()?;
        Ok(())
    }
}

/// Writes one index column of a row group: a scalar column's values with
/// definition levels 0 (null) or 1, a list column's items with their levels.
fn write_column<'a>(
    column: &mut SerializedColumnWriter<'_>,
    kind: Kind,
    values: impl Iterator<Item = Option<&'a Value>> + Clone,
) -> Result<(), ParquetError> {
    let levels: Vec<i16> = values.clone().map(|v| i16::from(v.is_some())).collect();
    match kind {
        Kind::Bool => write_leaf::<BoolType>(column, &present(values, as_bool), &levels, None),
        Kind::Int => write_leaf::<Int64Type>(column, &present(values, as_int), &levels, None),
        Kind::Float => write_leaf::<DoubleType>(column, &present(values, as_float), &levels, None),
        Kind::Text | Kind::Null => {
            write_leaf::<ByteArrayType>(column, &present(values, as_text), &levels, None)
        }
        Kind::List(Scalar::Bool) => write_list::<BoolType>(column, values, as_bool),
        Kind::List(Scalar::Int) => write_list::<Int64Type>(column, values, as_int),
        Kind::List(Scalar::Float) => write_list::<DoubleType>(column, values, as_float),
        Kind::List(Scalar::Text | Scalar::Null) => {
            write_list::<ByteArrayType>(column, values, as_text)
        }
    }
}

fn as_bool(value: &Value) -> bool {
    value.as_bool().unwrap_or_default()
}

fn as_int(value: &Value) -> i64 {
    value.as_i64().unwrap_or_default()
}

fn as_float(value: &Value) -> f64 {
    value.as_f64().unwrap_or_default()
}

/// A string as its text, any other value (mixed or nested) as its JSON text.
fn as_text(value: &Value) -> ByteArray {
    match value {
        Value::String(s) => ByteArray::from(s.as_bytes().to_vec()),
        other => ByteArray::from(other.to_string().into_bytes()),
    }
}

/// The values of the rows that have one.
fn present<'a, T>(
    values: impl Iterator<Item = Option<&'a Value>>,
    convert: fn(&Value) -> T,
) -> Vec<T> {
    values.flatten().map(convert).collect()
}

/// Writes a `LIST` column (see [`list_type`]): per row, definition level 0
/// for no list, 1 for an empty one, else per item 2 (null) or 3 (a value),
/// with repetition level 0 on a row's first item and 1 on the others.
fn write_list<'a, T: DataType>(
    column: &mut SerializedColumnWriter<'_>,
    values: impl Iterator<Item = Option<&'a Value>>,
    convert: fn(&Value) -> T::T,
) -> Result<(), ParquetError> {
    let (mut items, mut definitions, mut repetitions) = (Vec::new(), Vec::new(), Vec::new());
    for value in values {
        match value.and_then(Value::as_array) {
            None => {
                definitions.push(0);
                repetitions.push(0);
            }
            Some(list) if list.is_empty() => {
                definitions.push(1);
                repetitions.push(0);
            }
            Some(list) => {
                for (at, item) in list.iter().enumerate() {
                    repetitions.push(i16::from(at > 0));
                    if item.is_null() {
                        definitions.push(2);
                    } else {
                        definitions.push(3);
                        items.push(convert(item));
                    }
                }
            }
        }
    }
    write_leaf::<T>(column, &items, &definitions, Some(&repetitions))
}

fn write_leaf<T: DataType>(
    column: &mut SerializedColumnWriter<'_>,
    values: &[T::T],
    definitions: &[i16],
    repetitions: Option<&[i16]>,
) -> Result<(), ParquetError> {
    column
        .typed::<T>()
        .write_batch(values, Some(definitions), repetitions)?;
    Ok(())
}

/// `image`: `optional group { optional binary bytes; optional binary path (STRING) }`.
fn image_type() -> Result<Type, ParquetError> {
    let bytes = Type::primitive_type_builder("bytes", Physical::BYTE_ARRAY)
        .with_repetition(Repetition::OPTIONAL)
        .build()?;
    let path = Type::primitive_type_builder("path", Physical::BYTE_ARRAY)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(Some(LogicalType::String))
        .build()?;
    Ok(Type::group_type_builder("image")
        .with_repetition(Repetition::OPTIONAL)
        .with_fields(vec![Arc::new(bytes), Arc::new(path)])
        .build()?)
}

fn column_type(name: &str, kind: Kind) -> Result<Type, ParquetError> {
    let scalar = match kind {
        Kind::Bool => Scalar::Bool,
        Kind::Int => Scalar::Int,
        Kind::Float => Scalar::Float,
        Kind::Text | Kind::Null => Scalar::Text,
        Kind::List(items) => return list_type(name, items),
    };
    scalar_type(name, scalar)
}

fn scalar_type(name: &str, scalar: Scalar) -> Result<Type, ParquetError> {
    let (physical, logical) = match scalar {
        Scalar::Bool => (Physical::BOOLEAN, None),
        Scalar::Int => (Physical::INT64, None),
        Scalar::Float => (Physical::DOUBLE, None),
        Scalar::Text | Scalar::Null => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
    };
    Ok(Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()?)
}

/// The standard three-level list, as arrow writes it:
/// `optional group <name> (LIST) { repeated group list { optional <item> element; } }`.
fn list_type(name: &str, items: Scalar) -> Result<Type, ParquetError> {
    let list = Type::group_type_builder("list")
        .with_repetition(Repetition::REPEATED)
        .with_fields(vec![Arc::new(scalar_type("element", items)?)])
        .build()?;
    Ok(Type::group_type_builder(name)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(Some(LogicalType::List))
        .with_fields(vec![Arc::new(list)])
        .build()?)
}

/// The `huggingface` metadata: `{"info": {"features": {...}}}`, as `datasets` writes it.
fn features(columns: &Columns, with_images: bool) -> Value {
    let mut features = Map::new();
    if with_images {
        features.insert("image".to_owned(), json!({"_type": "Image"}));
    }
    for (name, kind) in columns.names.iter().zip(&columns.kinds) {
        let feature = match kind {
            Kind::Bool => value_feature(Scalar::Bool),
            Kind::Int => value_feature(Scalar::Int),
            Kind::Float => value_feature(Scalar::Float),
            Kind::Text | Kind::Null => value_feature(Scalar::Text),
            Kind::List(items) => json!({"feature": value_feature(*items), "_type": "List"}),
        };
        features.insert(name.clone(), feature);
    }
    json!({"info": {"features": features}})
}

fn value_feature(scalar: Scalar) -> Value {
    let dtype = match scalar {
        Scalar::Bool => "bool",
        Scalar::Int => "int64",
        Scalar::Float => "float64",
        Scalar::Text | Scalar::Null => "string",
    };
    json!({"dtype": dtype, "_type": "Value"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns() -> Columns {
        let mut columns = Columns::default();
        for row in rows() {
            columns.add(&row).unwrap();
        }
        columns
    }

    fn rows() -> Vec<Map<String, Value>> {
        (0..2500)
            .map(|i| {
                json!({"file_name": format!("a/{i}.webp"), "n": i, "f": 0.5, "ok": i % 2 == 0,
                       "label": if i % 3 == 0 { Value::Null } else { json!("x") }})
                .as_object()
                .cloned()
                .unwrap()
            })
            .collect()
    }

    /// The bytes as a file to read (the reader wants `ChunkReader`).
    fn file_of(bytes: &[u8]) -> std::fs::File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn write(with_images: bool) -> Vec<u8> {
        let columns = columns();
        let mut file = if with_images {
            ParquetFile::with_images(Vec::new(), &columns).unwrap()
        } else {
            ParquetFile::new(Vec::new(), &columns).unwrap()
        };
        for (i, row) in rows().into_iter().enumerate() {
            let image = Embedded {
                bytes: vec![i as u8; 10],
                path: format!("a/{i}.webp"),
            };
            file.push(row, Some(image)).unwrap();
        }
        file.finish().unwrap()
    }

    #[test]
    fn a_file_reads_back_with_its_rows_groups_and_features() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let bytes = write(true);
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(bytes, write(true), "the same rows give the same bytes");
        let reader = SerializedFileReader::new(file_of(&bytes)).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), 2500);
        assert_eq!(meta.num_row_groups(), 3, "1,000 rows per group");
        let kv = meta.file_metadata().key_value_metadata().unwrap();
        let hf: Value = serde_json::from_str(kv[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(hf["info"]["features"]["image"], json!({"_type": "Image"}));
        assert_eq!(hf["info"]["features"]["n"]["dtype"], json!("int64"));
        let schema = meta.file_metadata().schema_descr();
        let leaves: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
        assert_eq!(
            leaves,
            // A row's columns come in name order (serde_json's map).
            [
                "image.bytes",
                "image.path",
                "f",
                "file_name",
                "label",
                "n",
                "ok"
            ]
        );
        let row = reader.get_row_iter(None).unwrap().nth(3).unwrap().unwrap();
        let text = row.to_string();
        assert!(text.contains("file_name: \"a/3.webp\""), "{text}");
        assert!(text.contains("label: null"), "{text}");
    }

    #[test]
    fn a_file_without_images_has_only_the_columns() {
        let bytes = write(false);
        let reader = parquet::file::reader::SerializedFileReader::new(file_of(&bytes)).unwrap();
        use parquet::file::reader::FileReader;
        assert_eq!(
            reader
                .metadata()
                .file_metadata()
                .schema_descr()
                .num_columns(),
            5
        );
    }

    #[test]
    fn lists_are_list_columns_that_read_back_item_by_item() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        use parquet::record::Field;
        let rows: Vec<Map<String, Value>> = [
            json!({"tags": ["a", "b"], "scores": [1, 2.5], "mixed": ["a", 1]}),
            json!({"tags": [], "scores": [3]}),
            json!({"tags": null, "scores": [], "mixed": [true]}),
            json!({"tags": ["c", null, "d"]}),
        ]
        .into_iter()
        .map(|row| row.as_object().cloned().unwrap())
        .collect();
        let mut columns = Columns::default();
        for row in &rows {
            columns.add(row).unwrap();
        }
        let mut file = ParquetFile::new(Vec::new(), &columns).unwrap();
        for row in rows {
            file.push(row, None).unwrap();
        }
        let bytes = file.finish().unwrap();
        let reader = SerializedFileReader::new(file_of(&bytes)).unwrap();
        let meta = reader.metadata().file_metadata();
        let kv = meta.key_value_metadata().unwrap();
        let hf: Value = serde_json::from_str(kv[0].value.as_deref().unwrap()).unwrap();
        let features = &hf["info"]["features"];
        assert_eq!(
            features["tags"],
            json!({"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"})
        );
        assert_eq!(features["scores"]["feature"]["dtype"], json!("float64"));
        assert_eq!(
            features["mixed"],
            json!({"dtype": "string", "_type": "Value"})
        );
        let leaves: Vec<String> = meta
            .schema_descr()
            .columns()
            .iter()
            .map(|c| c.path().string())
            .collect();
        assert_eq!(
            leaves,
            ["mixed", "scores.list.element", "tags.list.element"]
        );
        let tags = meta.schema_descr().column(2);
        assert_eq!((tags.max_def_level(), tags.max_rep_level()), (3, 1));

        let cell = |row: &parquet::record::Row, name: &str| {
            let (_, field) = row.get_column_iter().find(|(n, _)| *n == name).unwrap();
            match field {
                Field::ListInternal(list) => Value::Array(
                    list.elements()
                        .iter()
                        .map(|item| match item {
                            Field::Null => Value::Null,
                            Field::Str(s) => json!(s),
                            Field::Double(f) => json!(f),
                            other => panic!("{other:?}"),
                        })
                        .collect(),
                ),
                Field::Null => Value::Null,
                Field::Str(s) => json!(s),
                other => panic!("{other:?}"),
            }
        };
        let read: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(|row| {
                let row = row.unwrap();
                (
                    cell(&row, "tags"),
                    cell(&row, "scores"),
                    cell(&row, "mixed"),
                )
            })
            .collect();
        assert_eq!(
            read,
            [
                (json!(["a", "b"]), json!([1.0, 2.5]), json!("[\"a\",1]")),
                (json!([]), json!([3.0]), Value::Null),
                (Value::Null, json!([]), json!("[true]")),
                (json!(["c", null, "d"]), Value::Null, Value::Null),
            ]
        );
    }
}
