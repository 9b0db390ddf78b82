//! Thumbnails: a small JPEG per image under `.report/thumbs/`, made only
//! when missing or older than its image, so a report over 10,000 images
//! costs only the new ones. A run that writes the page makes them as it
//! saves each image, from its grid cell (`super::previews`); otherwise an
//! image is decoded once per report: a grid that draws it hands its pixels
//! here ([`make`]), the others are read by [`ensure`]. Must not touch the
//! images themselves.

use std::path::Path;

use image::RgbImage;

use super::pixels::{self, Filter};
use super::{write_atomic, GalleryError, Thumb, ThumbSize, THUMBS_DIR};

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIZE: u32 = 192;

/// JPEG quality: a 192 px thumbnail stays a few KB.
const QUALITY: u8 = 70;

pub(super) enum Outcome {
    /// The thumbnail was there and newer than its image.
    Fresh(Thumb),
    /// It was made now.
    Made(Thumb),
    /// The image cannot be read or decoded.
    Unreadable,
}

/// The thumbnail of `file_name` (relative to `out`, already checked to stay
/// inside it) if it is there and newer than its image.
pub(super) fn fresh(out: &Path, file_name: &str) -> Option<Thumb> {
    let relative = relative_path(file_name);
    let thumb_path = out.join(&relative);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let thumb_time = modified(&thumb_path)?;
    if thumb_time < modified(&out.join(file_name))? {
        return None;
    }
    let (width, height) = image::image_dimensions(&thumb_path).ok()?;
    Some(Thumb {
        path: relative,
        size: ThumbSize { width, height },
    })
}

/// The thumbnail of `file_name`, made if missing or stale.
pub(super) fn ensure(out: &Path, file_name: &str) -> Result<Outcome, GalleryError> {
    if let Some(thumb) = fresh(out, file_name) {
        return Ok(Outcome::Fresh(thumb));
    }
    let Ok(bytes) = std::fs::read(out.join(file_name)) else {
        return Ok(Outcome::Unreadable);
    };
    let Some(decoded) = pixels::decode_webp(&bytes) else {
        return Ok(Outcome::Unreadable);
    };
    drop(bytes);
    make(out, file_name, &decoded)
}

/// Writes the thumbnail of `file_name` from its decoded pixels.
pub(super) fn make(
    out: &Path,
    file_name: &str,
    decoded: &RgbImage,
) -> Result<Outcome, GalleryError> {
    make_scaled(out, file_name, decoded, decoded.dimensions())
}

/// Writes the thumbnail of `file_name`, an image of `original` size, from
/// `source`: its pixels or a smaller copy of them (its grid cell), so the
/// thumbnail has the size the image itself would give it.
pub(super) fn make_scaled(
    out: &Path,
    file_name: &str,
    source: &RgbImage,
    original: (u32, u32),
) -> Result<Outcome, GalleryError> {
    let relative = relative_path(file_name);
    let thumb_path = out.join(&relative);
    let (width, height) = pixels::fit_within(original.0, original.1, THUMB_SIZE);
    let Some(small) = pixels::resize(source, width, height, Filter::Area) else {
        return Ok(Outcome::Unreadable);
    };
    let encode_error = |message: String| GalleryError::Encode {
        path: thumb_path.clone(),
        message,
    };
    // Both sides are at most THUMB_SIZE, far below u16::MAX.
    let side = |length: u32| u16::try_from(length).map_err(|e| encode_error(e.to_string()));
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, QUALITY)
        .encode(
            small.as_raw(),
            side(width)?,
            side(height)?,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| encode_error(e.to_string()))?;
    write_atomic(&thumb_path, &jpeg)?;
    Ok(Outcome::Made(Thumb {
        path: relative,
        size: ThumbSize { width, height },
    }))
}

fn relative_path(file_name: &str) -> String {
    format!("{THUMBS_DIR}/{file_name}.jpg")
}
