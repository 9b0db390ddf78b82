//! A WebDataset tar shard: members `{key}.webp`, `{key}.txt`, `{key}.json`
//! per image, consecutive, with fixed headers (mode 0644, uid/gid 0, mtime
//! 0, no user or group names) so the same rows give the same bytes. Must not
//! read files or choose names.

use std::io::{self, Write};

/// Writes tar members to `W` as they come: memory holds one member.
pub struct TarShard<W: Write> {
    builder: ::tar::Builder<W>,
}

impl<W: Write> TarShard<W> {
    pub fn new(sink: W) -> Self {
        TarShard {
            builder: ::tar::Builder::new(sink),
        }
    }

    /// Appends a regular file `name` holding `bytes`.
    pub fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut header = ::tar::Header::new_gnu();
        header.set_entry_type(::tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        // append_data sets the path (a long one through a GNU long-name
        // member, itself with fixed fields) and the checksum.
        self.builder.append_data(&mut header, name, bytes)
    }

    /// Writes the end-of-archive blocks; gives the sink back.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> Vec<u8> {
        let mut tar = TarShard::new(Vec::new());
        tar.append("k-0.webp", b"RIFF....WEBP").unwrap();
        tar.append("k-0.txt", "a caption".as_bytes()).unwrap();
        tar.append(&format!("{}.json", "x".repeat(150)), b"{}")
            .unwrap();
        tar.finish().unwrap()
    }

    #[test]
    fn members_read_back_in_order_with_fixed_headers() {
        let bytes = shard();
        assert_eq!(bytes, shard(), "the same members give the same bytes");
        let mut archive = ::tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            assert_eq!(header.mtime().unwrap(), 0);
            assert_eq!(header.uid().unwrap(), 0);
            assert_eq!(header.mode().unwrap(), 0o644);
            names.push(entry.path().unwrap().display().to_string());
        }
        assert_eq!(names[..2], ["k-0.webp", "k-0.txt"]);
        assert_eq!(names[2], format!("{}.json", "x".repeat(150)));
    }
}
