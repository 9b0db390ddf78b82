//! Pixels for the grids: a WebP image decoded to RGB (by the run's own
//! check, `output::verify_webp_decoded`), and scaled to its grid cell with
//! `fast_image_resize` (SIMD convolution), after halvings by hand while the
//! image is at least twice the size asked for. `image`'s own `thumbnail` and
//! `resize_exact` took over two thirds of a report's CPU time
//! (benches/README.md).
//! Must not read or write files.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use crate::output::{verify_webp_decoded, DecodedWebp};

/// The WebP image in `bytes` as RGB (an alpha channel dropped, as
/// `DynamicImage::to_rgb8` does), or `None` if it fails the check a run
/// makes of every image it saves (`output::verify_webp_decoded`: complete,
/// decodable, at most `output::MAX_PIXELS`).
pub(super) fn decode_webp(bytes: &[u8]) -> Option<RgbImage> {
    verify_webp_decoded(bytes).ok().and_then(from_decoded)
}

/// The pixels a run decoded to verify an image, as RGB (an alpha channel
/// dropped), or `None` if they do not fill the image.
pub(super) fn from_decoded(image: DecodedWebp) -> Option<RgbImage> {
    rgb(
        image.info.width,
        image.info.height,
        image.pixels,
        image.has_alpha,
    )
}

fn rgb(width: u32, height: u32, mut pixels: Vec<u8>, has_alpha: bool) -> Option<RgbImage> {
    if has_alpha {
        pixels = pixels
            .chunks_exact(4)
            .flat_map(|rgba| [rgba[0], rgba[1], rgba[2]])
            .collect();
    }
    RgbImage::from_raw(width, height, pixels)
}

/// `image` scaled to exactly `width` × `height` (both at least 1) with
/// linear weights (as `image`'s `FilterType::Triangle`), or `None` if the
/// resizer refuses the sizes. While the image is at least twice as large as
/// asked, it is first halved (each pixel the mean of a 2×2 block: what the
/// filter gives at that ratio, at a third of the resizer's cost; a 512²
/// image's grid cell is one halving).
pub(super) fn resize(image: &RgbImage, width: u32, height: u32) -> Option<RgbImage> {
    let mut halved: Option<RgbImage> = None;
    loop {
        let current = halved.as_ref().unwrap_or(image);
        let (w, h) = current.dimensions();
        if w < width.saturating_mul(2) || h < height.saturating_mul(2) || w % 2 + h % 2 > 0 {
            break;
        }
        halved = Some(halve(current));
    }
    if halved.as_ref().unwrap_or(image).dimensions() == (width, height) {
        return Some(halved.unwrap_or_else(|| image.clone()));
    }
    let image = halved.as_ref().unwrap_or(image);
    let source = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .ok()?;
    let mut scaled = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new().resize(&source, &mut scaled, &options).ok()?;
    RgbImage::from_raw(width, height, scaled.into_vec())
}

/// `image` (of even width and height) at half its size, each pixel the
/// rounded mean of a 2×2 block.
fn halve(image: &RgbImage) -> RgbImage {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let (half_width, half_height) = (width / 2, height / 2);
    let mut out = vec![0; half_width * half_height * 3];
    // Two rows summed first (a loop the compiler vectorises), then pairs of pixels.
    let mut sums = vec![0u16; width * 3];
    let rows = image.as_raw().chunks_exact(width * 3);
    let (tops, bottoms) = (rows.clone().step_by(2), rows.skip(1).step_by(2));
    for ((top, bottom), row) in tops.zip(bottoms).zip(out.chunks_exact_mut(half_width * 3)) {
        for ((sum, a), b) in sums.iter_mut().zip(top).zip(bottom) {
            *sum = u16::from(*a) + u16::from(*b);
        }
        for (pixel, pair) in row.chunks_exact_mut(3).zip(sums.chunks_exact(6)) {
            for channel in 0..3 {
                // At most (4 × 255 + 2) / 4 = 255.
                pixel[channel] = ((pair[channel] + pair[channel + 3] + 2) / 4) as u8;
            }
        }
    }
    RgbImage::from_raw(half_width as u32, half_height as u32, out)
        .expect("the buffer is made for exactly half the width × half the height")
}

/// An image of `width` × `height` fitted into a `side` × `side` square (its
/// card on the page): the aspect ratio kept, rounded, at least 1 (smaller
/// images are scaled up, as `image`'s `DynamicImage::thumbnail` does).
pub(super) fn fit_within(width: u32, height: u32, side: u32) -> (u32, u32) {
    let ratio = f64::min(
        f64::from(side) / f64::from(width.max(1)),
        f64::from(side) / f64::from(height.max(1)),
    );
    let scale = |length: u32| ((f64::from(length) * ratio).round() as u32).clamp(1, side);
    (scale(width), scale(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webp(width: u32, height: u32, pixels: &[u8], colour: image_webp::ColorType) -> Vec<u8> {
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out)
            .encode(pixels, width, height, colour)
            .unwrap();
        out
    }

    #[test]
    fn decodes_to_rgb_with_alpha_dropped() {
        let rgba = [10, 20, 30, 0, 40, 50, 60, 255];
        let image = decode_webp(&webp(2, 1, &rgba, image_webp::ColorType::Rgba8)).unwrap();
        assert_eq!(image.as_raw(), &[10, 20, 30, 40, 50, 60]);
        assert!(decode_webp(b"RIFF....WEBPjunk").is_none());
    }

    #[test]
    fn halving_takes_the_mean_of_each_two_by_two_block() {
        // 4×2 → 2×1, through halve: (0 + 100 + 100 + 100) / 4 = 75 (rounded).
        let pixels: Vec<u8> = [0, 100, 200, 201, 100, 100, 200, 200]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let image = RgbImage::from_raw(4, 2, pixels).unwrap();
        let small = resize(&image, 2, 1).unwrap();
        assert_eq!(small.as_raw(), &[75, 75, 75, 200, 200, 200]);
        // 8×8 → 3×3: halved to 4×4, then scaled by the resizer.
        let image = RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, 9]));
        let small = resize(&image, 3, 3).unwrap();
        assert_eq!(small.dimensions(), (3, 3));
        assert_eq!(small.get_pixel(0, 0)[2], 9);
        // Odd sides are not halved.
        let odd = RgbImage::from_pixel(9, 9, image::Rgb([7, 7, 7]));
        assert_eq!(resize(&odd, 4, 4).unwrap().get_pixel(1, 1)[0], 7);
    }

    #[test]
    fn fits_like_image_thumbnail() {
        assert_eq!(fit_within(512, 512, 192), (192, 192));
        assert_eq!(fit_within(512, 768, 192), (128, 192));
        assert_eq!(fit_within(1024, 576, 192), (192, 108));
        assert_eq!(fit_within(64, 64, 192), (192, 192));
        assert_eq!(fit_within(3000, 1, 192), (192, 1));
    }
}
