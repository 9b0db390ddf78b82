//! The grids' cells made as a run saves each image: the output folder hands
//! every new image's pixels, decoded to verify it, to [`Previews`]
//! (`output::ImagePreviews`), which scales them once to the image's grid
//! cell and keeps that cell for the run's report (`super::cells`), for the
//! images a grid draws (`grid::GRID_IMAGES_MAX`). The report at the end of
//! the run then decodes no image the run saved.
//! Must not fail a save: a preview that cannot be made is logged and left
//! for the report to make.

use image::RgbImage;

use crate::output::{DecodedWebp, ImagePreviews};

use super::cells::Cells;
use super::grid;
use super::pixels;

/// Makes each saved image's grid cell (see the module doc).
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
    fn make(&self, file_name: &str, image_index: u32, image: DecodedWebp) {
        // An image no grid draws needs no cell.
        if image_index >= grid::GRID_IMAGES_MAX || !super::is_plain_relative(file_name) {
            return;
        }
        let Some(decoded) = pixels::from_decoded(image) else {
            tracing::debug!(file_name, "no grid cell made at save; the report makes it");
            return;
        };
        let (width, height) = grid::fit(decoded.width(), decoded.height());
        if let Some(cell) = pixels::resize(&decoded, width, height) {
            self.cells.keep(file_name, &cell);
        }
    }
}
