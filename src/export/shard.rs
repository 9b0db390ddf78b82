//! One shard being written, in each format: the tar and its rows' Parquet
//! file, a Parquet file with the images, or a Hub folder; placed (files
//! first, the stats file last) when its last row is in. Also the columns each
//! format writes and the Hub index's lines. Must not decide which shards to
//! write or read the index.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::files::{place_bytes, sync_dir, TempDir, TempFile};
use super::rows::{Columns, Kind};
use super::{
    stats_name, Embedded, ExportError, Format, Options, ParquetFile, Row, ShardStats, TarShard,
};

/// The columns each format writes besides the image: `key` first, then the
/// index's (without `file_name` in the Parquet and Hub layouts, where the
/// image column takes its place).
pub(super) struct OutColumns {
    columns: Columns,
}

impl OutColumns {
    pub(super) fn of(index: &Columns, format: Format) -> OutColumns {
        let mut columns = Columns {
            names: vec!["key".to_owned()],
            kinds: vec![Kind::Text],
        };
        for (name, kind) in index.names.iter().zip(&index.kinds) {
            let dropped = name == "key" || (format != Format::Webdataset && name == "file_name");
            if !dropped {
                columns.names.push(name.clone());
                columns.kinds.push(*kind);
            }
        }
        OutColumns { columns }
    }

    /// A row's values for these columns (`key` set to the row's key).
    fn values(&self, row: &Row) -> Map<String, Value> {
        let mut values = Map::new();
        for name in &self.columns.names {
            let value = match name.as_str() {
                "key" => Value::from(row.key.clone()),
                other => row.columns.get(other).cloned().unwrap_or(Value::Null),
            };
            values.insert(name.clone(), value);
        }
        values
    }
}

/// A row of the Hub layout's `metadata.jsonl`: `file_name` first (pointing
/// into its shard's folder), then the columns in a fixed order.
pub(super) fn hub_line(row: &Row, shard: usize, out: &OutColumns) -> String {
    let mut line = String::from("{\"file_name\":");
    line.push_str(&Value::from(format!("data/{shard:05}/{}.webp", row.key)).to_string());
    for name in &out.columns.names {
        let value = match name.as_str() {
            "key" => Value::from(row.key.clone()),
            other => row.columns.get(other).cloned().unwrap_or(Value::Null),
        };
        line.push(',');
        line.push_str(&Value::from(name.clone()).to_string());
        line.push(':');
        line.push_str(&value.to_string());
    }
    line.push_str("}\n");
    line
}

/// The shard being written.
pub(super) struct ShardWriter {
    target: PathBuf,
    at: usize,
    pub(super) rows: u64,
    successes: u64,
    failed: u64,
    image_bytes: u64,
    kind: WriterKind,
}

enum WriterKind {
    Webdataset {
        tar: TarShard<TempFile>,
        rows: ParquetFile<TempFile>,
    },
    Parquet(ParquetFile<TempFile>),
    Hub(TempDir),
}

impl ShardWriter {
    pub(super) fn new(
        target: &Path,
        at: usize,
        options: &Options,
        out: &OutColumns,
    ) -> Result<ShardWriter, ExportError> {
        let temp = || TempFile::new(target).map_err(|e| ExportError::io("write in", target, e));
        let parquet_error = |source| ExportError::Parquet {
            path: target.join(format!("{at:05}.parquet")),
            source,
        };
        let kind = match options.format {
            Format::Webdataset => WriterKind::Webdataset {
                tar: TarShard::new(temp()?),
                rows: ParquetFile::new(temp()?, &out.columns).map_err(parquet_error)?,
            },
            Format::Parquet => WriterKind::Parquet(
                ParquetFile::with_images(temp()?, &out.columns).map_err(parquet_error)?,
            ),
            Format::Hub => {
                let data = target.join("data");
                WriterKind::Hub(
                    TempDir::new(&data).map_err(|e| ExportError::io("write in", &data, e))?,
                )
            }
        };
        Ok(ShardWriter {
            target: target.to_owned(),
            at,
            rows: 0,
            successes: 0,
            failed: 0,
            image_bytes: 0,
            kind,
        })
    }

    pub(super) fn push(
        &mut self,
        row: &Row,
        options: &Options,
        out: &OutColumns,
    ) -> Result<(), ExportError> {
        self.rows += 1;
        let image = match std::fs::read(&row.image) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.failed += 1;
                return Ok(());
            }
            Err(e) => return Err(ExportError::io("read", &row.image, e)),
        };
        self.successes += 1;
        self.image_bytes += image.len() as u64;
        let at = self.at;
        match &mut self.kind {
            WriterKind::Webdataset { tar, rows } => {
                let sidecar = match std::fs::read(&row.sidecar) {
                    Ok(bytes) => bytes,
                    // No sidecars (`output.sidecars: false`): the row stands in.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => row.line.clone().into_bytes(),
                    Err(e) => return Err(ExportError::io("read", &row.sidecar, e)),
                };
                let caption = match row.columns.get(&options.caption_column) {
                    Some(Value::String(text)) => text.clone(),
                    None | Some(Value::Null) => String::new(),
                    Some(other) => other.to_string(),
                };
                let tar_path = || self.target.join(format!("{at:05}.tar"));
                let key = &row.key;
                tar.append(&format!("{key}.webp"), &image)
                    .and_then(|()| tar.append(&format!("{key}.txt"), caption.as_bytes()))
                    .and_then(|()| tar.append(&format!("{key}.json"), &sidecar))
                    .map_err(|e| ExportError::io("write", &tar_path(), e))?;
                rows.push(out.values(row), None)
                    .map_err(|source| ExportError::Parquet {
                        path: self.target.join(format!("{at:05}.parquet")),
                        source,
                    })?;
            }
            WriterKind::Parquet(file) => {
                let path = row
                    .columns
                    .get("file_name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                file.push(out.values(row), Some(Embedded { bytes: image, path }))
                    .map_err(|source| ExportError::Parquet {
                        path: self.target.join(format!("{at:05}.parquet")),
                        source,
                    })?;
            }
            WriterKind::Hub(dir) => {
                dir.write(&format!("{}.webp", row.key), &image)
                    .map_err(|e| ExportError::io("write in", dir.path(), e))?;
            }
        }
        Ok(())
    }

    /// Places the shard's files, then its stats file (last: it says the shard is complete).
    pub(super) fn finish(
        self,
        expected: &ShardStats,
        target: &Path,
        stats_dir: &Path,
    ) -> Result<ShardStats, ExportError> {
        let at = self.at;
        let mut placed = BTreeMap::new();
        let mut place = |temp: TempFile, name: String| -> Result<(), ExportError> {
            let path = target.join(&name);
            let len = temp
                .place(&path)
                .map_err(|e| ExportError::io("write", &path, e))?;
            placed.insert(name, len);
            Ok(())
        };
        let parquet_error = |source| ExportError::Parquet {
            path: target.join(format!("{at:05}.parquet")),
            source,
        };
        match self.kind {
            WriterKind::Webdataset { tar, rows } => {
                let tar = tar.finish().map_err(|e| {
                    ExportError::io("write", &target.join(format!("{at:05}.tar")), e)
                })?;
                place(tar, format!("{at:05}.tar"))?;
                place(
                    rows.finish().map_err(parquet_error)?,
                    format!("{at:05}.parquet"),
                )?;
            }
            WriterKind::Parquet(file) => {
                place(
                    file.finish().map_err(parquet_error)?,
                    format!("{at:05}.parquet"),
                )?;
            }
            WriterKind::Hub(dir) => {
                let folder = format!("data/{at:05}");
                let path = target.join(&folder);
                dir.place(&path)
                    .map_err(|e| ExportError::io("write", &path, e))?;
                placed.insert(format!("{folder}/"), self.successes);
                sync_dir(stats_dir).map_err(|e| ExportError::io("flush", stats_dir, e))?;
            }
        }
        sync_dir(target).map_err(|e| ExportError::io("flush", target, e))?;
        // A Hub folder's bytes are its images'.
        let bytes = placed
            .iter()
            .map(|(name, len)| {
                if name.ends_with('/') {
                    self.image_bytes
                } else {
                    *len
                }
            })
            .sum();
        let stats = ShardStats {
            count: self.rows,
            successes: self.successes,
            failed_to_export: self.failed,
            bytes,
            files: placed,
            ..expected.clone()
        };
        let path = stats_dir.join(stats_name(at));
        place_bytes(&path, &stats.to_bytes()).map_err(|e| ExportError::io("write", &path, e))?;
        sync_dir(stats_dir).map_err(|e| ExportError::io("flush", stats_dir, e))?;
        Ok(stats)
    }
}
