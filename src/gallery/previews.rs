//! The page's previews made as a run saves each image: the output folder
//! hands every new image's pixels, decoded to verify it, to [`Previews`]
//! (`output::ImagePreviews`), which scales them once to the image's grid
//! cell, keeps that cell for the run's report (`super::cells`) and makes the
//! thumbnail from it (`super::thumbs`). The report at the end of the run
//! then decodes no image the run saved.
//! Must not fail a save: a preview that cannot be made is logged and left
//! for the report to make.

use std::path::Path;

use image::RgbImage;

use crate::output::{DecodedWebp, ImagePreviews};

use super::cells::Cells;
use super::pixels::{self, Filter};
use super::{grid, thumbs, GalleryError, THUMB_SIZE};

/// Makes each saved image's grid cell and thumbnail (see the module doc).
/// The app hands it to the run's `output::Dataset` when the run writes a
/// page, and then to [`super::write_report`] through `ReportInput::previews`.
#[derive(Debug, Default)]
pub struct Previews {
    cells: Cells,
}

impl Previews {
    /// The grid cell of `file_name` made as it was saved, if it is kept and
    /// is exactly `width` × `height`.
    pub(super) fn cell(&self, file_name: &str, width: u32, height: u32) -> Option<RgbImage> {
        self.cells.get(file_name, width, height)
    }
}

impl ImagePreviews for Previews {
    fn make(&self, root: &Path, file_name: &str, image: DecodedWebp) {
        if let Err(error) = self.make_previews(root, file_name, image) {
            tracing::debug!(%error, file_name, "no preview made at save; the report makes it");
        }
    }
}

impl Previews {
    fn make_previews(
        &self,
        out: &Path,
        file_name: &str,
        image: DecodedWebp,
    ) -> Result<(), GalleryError> {
        if !super::is_plain_relative(file_name) {
            return Ok(());
        }
        let Some(decoded) = pixels::from_decoded(image) else {
            return Ok(());
        };
        let original = decoded.dimensions();
        let (width, height) = grid::fit(original.0, original.1);
        let Some(cell) = pixels::resize(&decoded, width, height, Filter::Triangle) else {
            return Ok(());
        };
        self.cells.keep(file_name, &cell);
        // A cell at least as large as the thumbnail is a quarter of the image
        // (for 512² images) to scale down again; a smaller one would blur it.
        let source = if width.max(height) >= THUMB_SIZE {
            drop(decoded);
            cell
        } else {
            decoded
        };
        thumbs::make_scaled(out, file_name, &source, original)?;
        Ok(())
    }
}
