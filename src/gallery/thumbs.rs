//! Thumbnails: a small JPEG per image under `.report/thumbs/`, made only
//! when missing or older than its image, so a report over 10,000 images
//! costs only the new ones. Must not touch the images themselves.

use std::path::Path;

use image::codecs::jpeg::JpegEncoder;
use image::ImageFormat;

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
/// inside it), made if missing or stale.
pub(super) fn ensure(out: &Path, file_name: &str) -> Result<Outcome, GalleryError> {
    let image_path = out.join(file_name);
    let relative = format!("{THUMBS_DIR}/{file_name}.jpg");
    let thumb_path = out.join(&relative);
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if let (Some(thumb_time), Some(image_time)) = (modified(&thumb_path), modified(&image_path)) {
        if thumb_time >= image_time {
            if let Ok((width, height)) = image::image_dimensions(&thumb_path) {
                return Ok(Outcome::Fresh(Thumb {
                    path: relative,
                    size: ThumbSize { width, height },
                }));
            }
        }
    }
    let Ok(bytes) = std::fs::read(&image_path) else {
        return Ok(Outcome::Unreadable);
    };
    let Ok(decoded) = image::load_from_memory_with_format(&bytes, ImageFormat::WebP) else {
        return Ok(Outcome::Unreadable);
    };
    let small = decoded.thumbnail(THUMB_SIZE, THUMB_SIZE).to_rgb8();
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&small)
        .map_err(|e| GalleryError::Encode {
            path: thumb_path.clone(),
            message: e.to_string(),
        })?;
    write_atomic(&thumb_path, &jpeg)?;
    Ok(Outcome::Made(Thumb {
        path: relative,
        size: ThumbSize {
            width: small.width(),
            height: small.height(),
        },
    }))
}
