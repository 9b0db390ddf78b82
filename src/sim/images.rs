//! The simulated workers' images: small real WebP files whose pixels are a
//! pure function of (prompt, seed, batch index).
//!
//! Tests recompute [`render_pixels`] to tell which image is which, so this
//! module must not depend on the run seed or on any state.

use image_webp::{ColorType, WebPEncoder};

/// Width and height of every simulated image, in pixels.
pub const IMAGE_SIZE: u32 = 64;

/// Side of one colour block; the image is an 8×8 grid of blocks.
const BLOCK: u32 = 8;

/// RGB8 pixels (row-major, `IMAGE_SIZE`²×3 bytes) of the image a simulated
/// worker makes for `prompt` (negative prompt included), `seed` and `batch_index`.
pub fn render_pixels(prompt: &str, seed: &str, batch_index: u32) -> Vec<u8> {
    let key = super::det::stable_hash(&[
        prompt.as_bytes(),
        seed.as_bytes(),
        &batch_index.to_le_bytes(),
    ]);
    let blocks_per_row = IMAGE_SIZE / BLOCK;
    let mut pixels = Vec::with_capacity((IMAGE_SIZE * IMAGE_SIZE * 3) as usize);
    for y in 0..IMAGE_SIZE {
        for x in 0..IMAGE_SIZE {
            let block = u64::from(y / BLOCK * blocks_per_row + x / BLOCK);
            let colour = super::det::splitmix64(key ^ block.wrapping_mul(0x2545_f491_4f6c_dd1d));
            pixels.extend_from_slice(&colour.to_le_bytes()[..3]);
        }
    }
    pixels
}

/// RGB8 pixels of the placeholder a censored image is replaced with
/// (a flat dark grey, the same for every censored image).
pub fn censored_pixels() -> Vec<u8> {
    vec![0x20; (IMAGE_SIZE * IMAGE_SIZE * 3) as usize]
}

/// Encodes `IMAGE_SIZE`² RGB8 pixels as a lossless WebP file.
pub(crate) fn encode_webp(rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new(&mut out)
        .encode(rgb, IMAGE_SIZE, IMAGE_SIZE, ColorType::Rgb8)
        .expect("encoding a correctly sized RGB buffer into memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_depend_on_each_input() {
        let base = render_pixels("a cat", "42", 0);
        assert_eq!(base, render_pixels("a cat", "42", 0));
        assert_ne!(base, render_pixels("a dog", "42", 0));
        assert_ne!(base, render_pixels("a cat", "43", 0));
        assert_ne!(base, render_pixels("a cat", "42", 1));
        assert_eq!(base.len(), (IMAGE_SIZE * IMAGE_SIZE * 3) as usize);
    }

    #[test]
    fn webp_round_trips() {
        let pixels = render_pixels("a cat", "42", 3);
        let webp = encode_webp(&pixels);
        let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(webp)).unwrap();
        assert_eq!(decoder.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
        let mut decoded = vec![0; decoder.output_buffer_size().unwrap()];
        decoder.read_image(&mut decoded).unwrap();
        assert_eq!(decoded, pixels);
    }
}
