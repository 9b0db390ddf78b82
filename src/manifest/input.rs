//! Reading a file a manifest names (a wildcard file, a `rows:` table, a
//! source image): regular files only, and never more than a cap.
//!
//! A FIFO would block `open` until something writes to it, and a device such
//! as `/dev/zero` never ends, so the kind is checked before the file is
//! opened (following symlinks: a link to a regular file is fine) and again
//! on the open handle; the bytes read are capped whatever the file's size
//! says, so a file that grows while it is read cannot grow memory. This file
//! says nothing about what the bytes mean and reports no problems itself:
//! callers put the error in a sentence at the manifest's position.

use std::fs::{File, FileType, Metadata};
use std::io::Read;
use std::path::Path;

/// Why a named file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Not there (or a dangling symlink).
    #[error("it does not exist")]
    NotFound,
    /// A FIFO, socket, device or folder.
    #[error("it is not a regular file ({kind})")]
    NotRegular { kind: &'static str },
    /// More bytes than the cap allows.
    #[error("it is larger than {}", mebibytes(*limit))]
    TooLarge { limit: u64 },
    /// Any other I/O error.
    #[error("{0}")]
    Io(std::io::Error),
}

/// The bytes of the regular file at `path` (symlinks followed), at most
/// `limit` of them.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, InputError> {
    // Checked before opening: opening a FIFO to read blocks until a writer comes.
    regular(&std::fs::metadata(path).map_err(io_error)?)?;
    let file = File::open(path).map_err(io_error)?;
    // And on the handle: the path may have been swapped in between.
    let metadata = file.metadata().map_err(io_error)?;
    regular(&metadata)?;
    if metadata.len() > limit {
        return Err(InputError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge { limit });
    }
    Ok(bytes)
}

/// The text of the regular file at `path` (see [`read_regular`]); not UTF-8
/// is an `InvalidData` I/O error naming the first bad byte.
pub fn read_regular_text(path: &Path, limit: u64) -> Result<String, InputError> {
    String::from_utf8(read_regular(path, limit)?).map_err(|e| {
        InputError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

fn regular(metadata: &Metadata) -> Result<(), InputError> {
    if metadata.is_file() {
        Ok(())
    } else {
        Err(InputError::NotRegular {
            kind: kind_of(&metadata.file_type()),
        })
    }
}

fn kind_of(file_type: &FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
    }
    if file_type.is_dir() {
        "a folder"
    } else {
        "not a file"
    }
}

fn io_error(error: std::io::Error) -> InputError {
    if error.kind() == std::io::ErrorKind::NotFound {
        InputError::NotFound
    } else {
        InputError::Io(error)
    }
}

/// `limit` bytes as the caps are written: `16 MiB`.
fn mebibytes(limit: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if limit % MIB == 0 {
        format!("{} MiB", limit / MIB)
    } else {
        format!("{limit} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "four").unwrap();
        assert_eq!(read_regular(&path, 4).unwrap(), b"four");
        let error = read_regular(&path, 3).unwrap_err();
        assert!(
            matches!(error, InputError::TooLarge { limit: 3 }),
            "{error}"
        );
        assert_eq!(
            InputError::TooLarge { limit: 16 << 20 }.to_string(),
            "it is larger than 16 MiB"
        );
        assert!(matches!(
            read_regular(&dir.path().join("none"), 4),
            Err(InputError::NotFound)
        ));
        let error = read_regular(dir.path(), 4).unwrap_err();
        assert_eq!(error.to_string(), "it is not a regular file (a folder)");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let error = read_regular_text(&path, 4).unwrap_err();
        assert_eq!(error.to_string(), "not UTF-8 text (byte 0)");
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_refused_before_they_are_read() {
        let error = read_regular(Path::new("/dev/zero"), 4).unwrap_err();
        assert_eq!(
            error.to_string(),
            "it is not a regular file (a character device)"
        );
    }
}
