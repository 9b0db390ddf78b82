//! Grid cells kept as a run saves each image: the image scaled to its grid
//! cell (`grid::fit`) from the pixels the run decoded to verify it
//! (`super::previews`), PNG-compressed in memory until the run's report
//! draws its grids from them instead of decoding the images. Kept in memory,
//! not in files: a file per image would cost an inode per image, which on
//! this project's benchmark machine costs more than the PNG itself. At most
//! [`CELLS_BUDGET`] bytes are kept; a cell over it is dropped and its image
//! decoded by the grid, as for a `report` run on its own.
//! Must not read or write files.

use std::collections::HashMap;

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, ImageFormat, RgbImage};
use parking_lot::Mutex;

/// Compressed cells kept at most, in bytes (a 256² cell of a photograph is
/// about 120 KB, of the simulator's block images 2 KB).
pub const CELLS_BUDGET: usize = 32 << 20;

/// The cells of the images a run saved, by file name (relative, with extension).
#[derive(Debug, Default)]
pub(super) struct Cells {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    png: HashMap<String, Vec<u8>>,
    bytes: usize,
}

impl Cells {
    /// Keeps `cell` as the cell of `file_name` (replacing an earlier one),
    /// unless the budget is spent.
    pub fn keep(&self, file_name: &str, cell: &RgbImage) {
        let mut png = Vec::new();
        let encoded = PngEncoder::new(&mut png).write_image(
            cell.as_raw(),
            cell.width(),
            cell.height(),
            ExtendedColorType::Rgb8,
        );
        let mut kept = self.kept.lock();
        if let Some(old) = kept.png.remove(file_name) {
            kept.bytes -= old.len();
        }
        if encoded.is_ok() && kept.bytes + png.len() <= CELLS_BUDGET {
            kept.bytes += png.len();
            kept.png.insert(file_name.to_owned(), png);
        }
    }

    /// The cell of `file_name` if one is kept and it is exactly `width` × `height`.
    pub fn get(&self, file_name: &str, width: u32, height: u32) -> Option<RgbImage> {
        let kept = self.kept.lock();
        let png = kept.png.get(file_name)?;
        let cell = image::load_from_memory_with_format(png, ImageFormat::Png)
            .ok()?
            .into_rgb8();
        (cell.dimensions() == (width, height)).then_some(cell)
    }

    /// Bytes kept, for tests.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.kept.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_comes_back_as_it_was_and_the_budget_holds() {
        let cells = Cells::default();
        let cell = RgbImage::from_fn(16, 8, |x, y| image::Rgb([x as u8, y as u8, 7]));
        cells.keep("a.webp", &cell);
        assert_eq!(cells.get("a.webp", 16, 8), Some(cell.clone()));
        assert_eq!(
            cells.get("a.webp", 8, 8),
            None,
            "another size is not this cell"
        );
        assert_eq!(cells.get("b.webp", 16, 8), None);
        let one = cells.bytes();
        cells.keep("a.webp", &cell);
        assert_eq!(cells.bytes(), one, "a cell made again replaces the first");
    }
}
