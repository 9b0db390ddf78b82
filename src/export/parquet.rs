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
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::{Type, TypePtr};
use serde_json::{json, Map, Value};

use super::rows::{Columns, Kind};

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
                let levels: Vec<i16> = values.clone().map(|v| i16::from(v.is_some())).collect();
                match self.columns.kinds[at] {
                    Kind::Bool => {
                        let present: Vec<bool> = values
                            .flatten()
                            .map(|v| v.as_bool().unwrap_or_default())
                            .collect();
                        column
                            .typed::<BoolType>()
                            .write_batch(&present, Some(&levels), None)?;
                    }
                    Kind::Int => {
                        let present: Vec<i64> = values
                            .flatten()
                            .map(|v| v.as_i64().unwrap_or_default())
                            .collect();
                        column
                            .typed::<Int64Type>()
                            .write_batch(&present, Some(&levels), None)?;
                    }
                    Kind::Float => {
                        let present: Vec<f64> = values
                            .flatten()
                            .map(|v| v.as_f64().unwrap_or_default())
                            .collect();
                        column
                            .typed::<DoubleType>()
                            .write_batch(&present, Some(&levels), None)?;
                    }
                    Kind::Text | Kind::Null => {
                        let present: Vec<ByteArray> = values
                            .flatten()
                            .map(|v| match v {
                                Value::String(s) => ByteArray::from(s.as_bytes().to_vec()),
                                other => ByteArray::from(other.to_string().into_bytes()),
                            })
                            .collect();
                        column.typed::<ByteArrayType>().write_batch(
                            &present,
                            Some(&levels),
                            None,
                        )?;
                    }
                }
            }
            column.close()?;
            leaf += 1;
        }
        group.close()?;
        Ok(())
    }
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
    let (physical, logical) = match kind {
        Kind::Bool => (Physical::BOOLEAN, None),
        Kind::Int => (Physical::INT64, None),
        Kind::Float => (Physical::DOUBLE, None),
        Kind::Text | Kind::Null => (Physical::BYTE_ARRAY, Some(LogicalType::String)),
    };
    Ok(Type::primitive_type_builder(name, physical)
        .with_repetition(Repetition::OPTIONAL)
        .with_logical_type(logical)
        .build()?)
}

/// The `huggingface` metadata: `{"info": {"features": {...}}}`, as `datasets` writes it.
fn features(columns: &Columns, with_images: bool) -> Value {
    let mut features = Map::new();
    if with_images {
        features.insert("image".to_owned(), json!({"_type": "Image"}));
    }
    for (name, kind) in columns.names.iter().zip(&columns.kinds) {
        let dtype = match kind {
            Kind::Bool => "bool",
            Kind::Int => "int64",
            Kind::Float => "float64",
            Kind::Text | Kind::Null => "string",
        };
        features.insert(name.clone(), json!({"dtype": dtype, "_type": "Value"}));
    }
    json!({"info": {"features": features}})
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
}
