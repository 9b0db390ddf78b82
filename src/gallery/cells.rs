//! Grid cells cached as a run saves each image: `.report/cells/<image>.png`,
//! the image scaled to its grid cell (`grid::fit`) from the pixels the run
//! decoded to verify it (`super::previews`). Drawing a grid then reads a
//! small PNG per cell instead of decoding the image. A cell is used only if
//! it is newer than its image and of the size the grid wants; otherwise the
//! grid decodes the image, as it does for images saved without a page.
//! Must not touch the images themselves.

use std::path::Path;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageFormat, RgbImage};

use super::{write_atomic_with, GalleryError};

/// Cached grid cells live under this folder of the output folder (hidden).
pub const CELLS_DIR: &str = ".report/cells";

/// Writes the cached cell of `file_name` (relative to `out`).
pub(super) fn write(out: &Path, file_name: &str, cell: &RgbImage) -> Result<(), GalleryError> {
    let path = out.join(relative_path(file_name));
    write_atomic_with(&path, |file| {
        PngEncoder::new(file)
            .write_image(
                cell.as_raw(),
                cell.width(),
                cell.height(),
                ExtendedColorType::Rgb8,
            )
            .map_err(|e| GalleryError::Encode {
                path: path.clone(),
                message: e.to_string(),
            })
    })
}

/// The cached cell of `file_name` if it is there, newer than its image and
/// exactly `width` × `height`.
pub(super) fn read(out: &Path, file_name: &str, width: u32, height: u32) -> Option<RgbImage> {
    let path = out.join(relative_path(file_name));
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    if modified(&path)? < modified(&out.join(file_name))? {
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    let cell = image::load_from_memory_with_format(&bytes, ImageFormat::Png)
        .ok()?
        .into_rgb8();
    (cell.dimensions() == (width, height)).then_some(cell)
}

fn relative_path(file_name: &str) -> String {
    format!("{CELLS_DIR}/{file_name}.png")
}
