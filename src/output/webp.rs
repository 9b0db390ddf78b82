//! WebP verification: is this byte buffer a complete, decodable WebP image?
//!
//! Owns the container checks (RIFF magic, `WEBP` fourcc, RIFF size against the
//! real length) and a full decode with `image-webp`, whose pixels the caller
//! may keep ([`verify_webp_decoded`]). The size check comes first
//! on purpose: a file missing its last bytes can still decode, so decoding alone
//! would accept a truncated download. Must not touch the filesystem.

use std::io::Cursor;

use image_webp::WebPDecoder;

/// The largest decoded image we agree to allocate for, in pixels.
///
/// The Horde's largest images are 3072×3072 (about 9.4 MP); this leaves ample
/// room while refusing a hostile header that claims 16383×16383 and would make
/// the decoder allocate a gigabyte.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// RIFF header (`RIFF` + size) plus the `WEBP` fourcc.
const HEADER_LEN: usize = 12;

/// What a verified WebP image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebpInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `true` for a VP8L (lossless) image, `false` for VP8 (lossy).
    pub lossless: bool,
}

/// Why a byte buffer is not an acceptable WebP image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum WebpError {
    /// Fewer bytes than the 12-byte RIFF/WEBP header.
    #[error("too short to be a WebP file ({len} bytes)")]
    #[diagnostic(code(horde_batch::output::webp::too_short))]
    TooShort {
        /// Length of the buffer.
        len: usize,
    },

    /// The buffer does not start with `RIFF`.
    #[error("not a RIFF file (starts with {found})")]
    #[diagnostic(code(horde_batch::output::webp::not_riff))]
    NotRiff {
        /// The first four bytes, escaped for display.
        found: String,
    },

    /// A RIFF file of some other type (e.g. `WAVE`, `AVI `).
    #[error("not a WebP file (RIFF type {found})")]
    #[diagnostic(code(horde_batch::output::webp::not_webp))]
    NotWebp {
        /// The RIFF form type, escaped for display.
        found: String,
    },

    /// The RIFF header's size disagrees with the buffer: truncated or padded.
    #[error("RIFF size {declared} but {actual} bytes (truncated or padded download)")]
    #[diagnostic(code(horde_batch::output::webp::size_mismatch))]
    SizeMismatch {
        /// Total length the header declares (its size field + 8).
        declared: u64,
        /// Actual length of the buffer.
        actual: u64,
    },

    /// The header claims more pixels than [`MAX_PIXELS`].
    #[error("image too large: {width}×{height} pixels")]
    #[diagnostic(code(horde_batch::output::webp::too_large))]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
    },

    /// The container looked right but the image data does not decode.
    #[error("decode failed: {0}")]
    #[diagnostic(code(horde_batch::output::webp::decode))]
    Decode(String),
}

/// A verified image and the pixels its check decoded, so whoever wants
/// them (the report's grid cells) need not decode the image again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedWebp {
    /// What the image is.
    pub info: WebpInfo,
    /// `true` if [`DecodedWebp::pixels`] are RGBA, `false` if RGB.
    pub has_alpha: bool,
    /// Row-major pixels, `width` × `height` × 3 or 4 bytes.
    pub pixels: Vec<u8>,
}

/// Checks that `bytes` is one complete WebP image and decodes it fully.
///
/// # Errors
///
/// A [`WebpError`] naming the first thing that is wrong.
pub fn verify_webp(bytes: &[u8]) -> Result<WebpInfo, WebpError> {
    verify_webp_decoded(bytes).map(|decoded| decoded.info)
}

/// [`verify_webp`], keeping the pixels it decoded.
///
/// # Errors
///
/// A [`WebpError`] naming the first thing that is wrong.
pub fn verify_webp_decoded(bytes: &[u8]) -> Result<DecodedWebp, WebpError> {
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or(WebpError::TooShort { len: bytes.len() })?;
    if &header[0..4] != b"RIFF" {
        return Err(WebpError::NotRiff {
            found: escape_fourcc(&header[0..4]),
        });
    }
    if &header[8..12] != b"WEBP" {
        return Err(WebpError::NotWebp {
            found: escape_fourcc(&header[8..12]),
        });
    }
    let size_field = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let declared = u64::from(size_field) + 8;
    let actual = bytes.len() as u64;
    if declared != actual {
        return Err(WebpError::SizeMismatch { declared, actual });
    }

    let decode_error = |e: image_webp::DecodingError| WebpError::Decode(e.to_string());
    let mut decoder = WebPDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(WebpError::TooLarge { width, height });
    }
    let buffer_len = decoder
        .output_buffer_size()
        .ok_or(WebpError::TooLarge { width, height })?;
    let mut pixels = vec![0; buffer_len];
    decoder.read_image(&mut pixels).map_err(decode_error)?;
    Ok(DecodedWebp {
        info: WebpInfo {
            width,
            height,
            lossless: !decoder.is_lossy(),
        },
        has_alpha: decoder.has_alpha(),
        pixels,
    })
}

/// Shows four header bytes readably: `"RIFX"` for text, hex otherwise.
fn escape_fourcc(bytes: &[u8]) -> String {
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(bytes))
    } else {
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{}", hex.concat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_webp::{ColorType, WebPEncoder};

    fn encode(width: u32, height: u32) -> Vec<u8> {
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        WebPEncoder::new(&mut out)
            .encode(&pixels, width, height, ColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn accepts_a_lossless_image_and_reports_its_size() {
        let info = verify_webp(&encode(7, 5)).unwrap();
        assert_eq!(
            info,
            WebpInfo {
                width: 7,
                height: 5,
                lossless: true
            }
        );
    }

    #[test]
    fn the_decoded_pixels_are_the_encoded_ones() {
        let pixels: Vec<u8> = (0..7 * 5 * 3).map(|i| (i % 251) as u8).collect();
        let decoded = verify_webp_decoded(&encode(7, 5)).unwrap();
        assert!(!decoded.has_alpha);
        assert_eq!(decoded.pixels, pixels);
        assert_eq!((decoded.info.width, decoded.info.height), (7, 5));
    }

    #[test]
    fn empty_and_short_buffers_are_too_short() {
        assert_eq!(verify_webp(b""), Err(WebpError::TooShort { len: 0 }));
        assert_eq!(
            verify_webp(b"RIFF\0\0\0\0WEB"),
            Err(WebpError::TooShort { len: 11 })
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        let mut png_like = encode(4, 4);
        png_like[..4].copy_from_slice(b"\x89PNG");
        let err = verify_webp(&png_like).unwrap_err();
        assert_eq!(err.to_string(), "not a RIFF file (starts with 0x89504e47)");

        let mut wave = encode(4, 4);
        wave[8..12].copy_from_slice(b"WAVE");
        let err = verify_webp(&wave).unwrap_err();
        assert_eq!(err.to_string(), "not a WebP file (RIFF type \"WAVE\")");

        let image = encode(4, 4);
        let cut = &image[..image.len() - 5];
        let err = verify_webp(cut).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "RIFF size {} but {} bytes (truncated or padded download)",
                image.len(),
                cut.len()
            )
        );
    }

    #[test]
    fn a_header_claiming_huge_dimensions_is_refused_before_allocating() {
        // A VP8L header for 10000×10000: signature 0x2f, then 14-bit (w-1), (h-1).
        let bits: u32 = 9999 | (9999 << 14);
        let mut chunk = vec![0x2f];
        chunk.extend_from_slice(&bits.to_le_bytes());
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&[0; 4]); // RIFF size, filled in below
        file.extend_from_slice(b"WEBPVP8L");
        file.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        file.extend_from_slice(&chunk);
        file.push(0); // RIFF chunks are padded to an even length
        let size = (file.len() - 8) as u32;
        file[4..8].copy_from_slice(&size.to_le_bytes());
        assert_eq!(
            verify_webp(&file),
            Err(WebpError::TooLarge {
                width: 10000,
                height: 10000
            })
        );
    }
}
