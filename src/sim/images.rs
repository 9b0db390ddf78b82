//! The simulated workers' images: real WebP files of the requested size whose
//! pixels are a pure function of (prompt, seed, batch index, size): an 8×8
//! grid of colour blocks stretched over the image, cheap to draw and to encode.
//!
//! Tests recompute [`render_pixels_sized`] to tell which image is which, so this
//! module must not depend on the run seed or on any state.

use image_webp::{ColorType, WebPEncoder};

/// Side of the pattern [`render_pixels`] draws (and of its images).
pub const IMAGE_SIZE: u32 = 64;

/// Blocks per side: every image is an 8×8 grid of colour blocks.
const BLOCKS: u32 = 8;

/// RGB8 pixels (row-major, `IMAGE_SIZE`²×3 bytes) of the pattern a simulated
/// worker draws for `prompt` (negative prompt included), `seed` and
/// `batch_index`; the same as [`render_pixels_sized`] at 64×64.
pub fn render_pixels(prompt: &str, seed: &str, batch_index: u32) -> Vec<u8> {
    render_pixels_sized(prompt, seed, batch_index, IMAGE_SIZE, IMAGE_SIZE)
}

/// RGB8 pixels (row-major, `width`×`height`×3 bytes) of the image a simulated
/// worker makes at the requested size: the 8×8 block pattern stretched over it.
pub fn render_pixels_sized(
    prompt: &str,
    seed: &str,
    batch_index: u32,
    width: u32,
    height: u32,
) -> Vec<u8> {
    let key = super::det::stable_hash(&[
        prompt.as_bytes(),
        seed.as_bytes(),
        &batch_index.to_le_bytes(),
    ]);
    // 64 colours computed once; each pixel only looks its block up.
    let colours: Vec<[u8; 3]> = (0..u64::from(BLOCKS * BLOCKS))
        .map(|block| {
            let colour = super::det::splitmix64(key ^ block.wrapping_mul(0x2545_f491_4f6c_dd1d));
            let bytes = colour.to_le_bytes();
            [bytes[0], bytes[1], bytes[2]]
        })
        .collect();
    let (width, height) = (width.max(1), height.max(1));
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let block_row = (u64::from(y) * u64::from(BLOCKS) / u64::from(height)) as usize;
        for x in 0..width {
            let block_col = (u64::from(x) * u64::from(BLOCKS) / u64::from(width)) as usize;
            pixels.extend_from_slice(&colours[block_row * BLOCKS as usize + block_col]);
        }
    }
    pixels
}

/// RGB8 pixels of the 64×64 placeholder a censored image is replaced with
/// (a flat dark grey, the same for every censored image).
pub fn censored_pixels() -> Vec<u8> {
    censored_pixels_sized(IMAGE_SIZE, IMAGE_SIZE)
}

/// The censored placeholder at the requested size.
pub fn censored_pixels_sized(width: u32, height: u32) -> Vec<u8> {
    vec![0x20; width.max(1) as usize * height.max(1) as usize * 3]
}

/// Encodes `width`×`height` RGB8 pixels as a lossless WebP file.
pub(crate) fn encode_webp(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    WebPEncoder::new(&mut out)
        .encode(rgb, width.max(1), height.max(1), ColorType::Rgb8)
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
        let webp = encode_webp(&pixels, IMAGE_SIZE, IMAGE_SIZE);
        let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(webp)).unwrap();
        assert_eq!(decoder.dimensions(), (IMAGE_SIZE, IMAGE_SIZE));
        let mut decoded = vec![0; decoder.output_buffer_size().unwrap()];
        decoder.read_image(&mut decoded).unwrap();
        assert_eq!(decoded, pixels);
    }

    #[test]
    fn sized_images_stretch_the_same_pattern() {
        let small = render_pixels("a cat", "42", 3);
        let wide = render_pixels_sized("a cat", "42", 3, 192, 128);
        assert_eq!(wide.len(), 192 * 128 * 3);
        // The top-left and bottom-right blocks keep their colours.
        assert_eq!(wide[..3], small[..3]);
        assert_eq!(wide[wide.len() - 3..], small[small.len() - 3..]);
        let webp = encode_webp(&wide, 192, 128);
        let decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(webp)).unwrap();
        assert_eq!(decoder.dimensions(), (192, 128));
    }
}
