//! Source images (img2img, inpainting, outpainting, remix, ControlNet): local
//! files a manifest names in `source_image`, `source_mask` and
//! `extra_source_images`.
//!
//! Owns reading a source file (a regular file of at most 64 MiB), checking it
//! the way the Horde will (a PNG, JPEG or WebP by its content, at most
//! 3072×3072 pixels, decodable within a memory cap, a PNG's colour profile
//! and text chunks left out so they are never inflated), hashing
//! its bytes for the job key, and, at submit time, turning it into the
//! base64 lossless WebP the API takes after making sure the bytes are still
//! the ones that were checked. Jobs hold a [`SourceRef`] (path, hash, size),
//! never the image bytes: those live only for the length of one call. The
//! manifest checks (which fields go together, as the server demands) report
//! through `compile`'s context at the field's position. Never talks HTTP.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use image::{ImageDecoder, ImageFormat, ImageReader};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::compile::{Axis, AxisKind, AxisValue, Context};
use super::input::{self, InputError};
use super::locate::YamlPath;
use super::schema::JobSpec;
use crate::digest;

/// The Horde refuses source images of more pixels than this
/// (AH `convert_source_image_to_pil`: "Image size cannot exceed 3072*3072 pixels").
pub const MAX_SOURCE_PIXELS: u64 = 3072 * 3072;
/// Files larger than this are refused before they are read: no PNG, JPEG or
/// WebP of 3072×3072 pixels needs more (an 8-bit RGBA PNG of noise at that
/// size is 38 MB, so the cap is not lower).
pub const MAX_SOURCE_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// What the decoder may allocate: the largest image the Horde takes, at 16
/// bits per channel with alpha (3072 × 3072 × 8 bytes = 72 MiB), and room
/// for the decoder's own buffers. Ancillary PNG chunks are never inflated
/// (see `decodable`), so nothing else can ask for more.
const MAX_DECODE_BYTES: u64 = 128 * 1024 * 1024;
/// The Horde refuses more extra source images than this (`TooManyExtraSourceImages.`).
pub const MAX_EXTRA_SOURCE_IMAGES: usize = 5;

/// Namespace of source hashes (`crate::digest`: SHA-1 of it and the file's bytes).
const HASH_NAMESPACE: u128 = 0x3b9e_51c4_7d20_4f8a_a6e1_52c0_9d4f_1e77;

/// How the Horde uses the source image (`source_processing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceProcessing {
    /// Start from the image (the API's default).
    #[default]
    Img2img,
    /// Repaint the masked area (a `source_mask`, or the image's transparent pixels).
    Inpainting,
    /// Extend the image into the masked or transparent area.
    Outpainting,
    /// Stable Cascade remix of the image and `extra_source_images`.
    Remix,
}

impl SourceProcessing {
    /// The API's name of this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceProcessing::Img2img => "img2img",
            SourceProcessing::Inpainting => "inpainting",
            SourceProcessing::Outpainting => "outpainting",
            SourceProcessing::Remix => "remix",
        }
    }
}

/// An image format a source file may have, told by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Png,
    Jpeg,
    Webp,
}

impl SourceFormat {
    fn image_format(self) -> ImageFormat {
        match self {
            SourceFormat::Png => ImageFormat::Png,
            SourceFormat::Jpeg => ImageFormat::Jpeg,
            SourceFormat::Webp => ImageFormat::WebP,
        }
    }

    /// The format of `bytes` by their magic numbers, whatever the file is called.
    pub fn sniff(bytes: &[u8]) -> Option<SourceFormat> {
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(SourceFormat::Png)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(SourceFormat::Jpeg)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(SourceFormat::Webp)
        } else {
            None
        }
    }
}

/// A checked source file: where it is and what its bytes were when checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// The path as the manifest (or row) wrote it.
    pub path: String,
    /// The path resolved against the manifest's folder.
    pub resolved: PathBuf,
    /// Hash of the file's bytes (32 hex digits); part of the job key.
    pub hash: String,
    pub format: SourceFormat,
    pub width: u32,
    pub height: u32,
    /// The image has an alpha channel (inpainting without a mask needs one).
    pub has_alpha: bool,
}

/// One of `extra_source_images`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraSource {
    pub image: Arc<SourceRef>,
    /// 0 to 1; the API's default is 1.
    pub strength: f64,
}

/// Everything a job sends besides the prompt and parameters: its source
/// image, how it is processed, its mask and extra images.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSources {
    pub processing: SourceProcessing,
    pub image: Arc<SourceRef>,
    pub mask: Option<Arc<SourceRef>>,
    pub extra: Vec<ExtraSource>,
}

impl JobSources {
    /// The same sources with another source image (a matrix axis or row column).
    pub fn with_image(&self, image: Arc<SourceRef>) -> JobSources {
        JobSources {
            image,
            ..self.clone()
        }
    }

    /// Canonical text for the job key: the mode and the bytes' hashes, not the
    /// paths, so moving a file keeps its key and replacing its bytes changes it.
    pub(crate) fn key_text(&self) -> String {
        let mut text = format!("{} image={}", self.processing.as_str(), self.image.hash);
        if let Some(mask) = &self.mask {
            let _ = write!(text, " mask={}", mask.hash);
        }
        for extra in &self.extra {
            let _ = write!(text, " extra={}@{}", extra.image.hash, extra.strength);
        }
        text
    }
}

/// Why a source file could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read source image {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: InputError,
    },
    #[error("source image {path} changed since the manifest was checked (its bytes hash to {now}, not {checked}); run again to re-plan it")]
    Changed {
        path: PathBuf,
        checked: String,
        now: String,
    },
    #[error("source image {path} cannot be converted to WebP: {reason}")]
    Convert { path: PathBuf, reason: String },
}

/// Hash of a source file's bytes, as recorded in job keys and sidecars.
pub fn hash_bytes(bytes: &[u8]) -> String {
    digest::to_hex(digest::name_digest(HASH_NAMESPACE, bytes))
}

/// Reads `path` (relative to `base_dir`) and checks it as the Horde will:
/// a PNG, JPEG or WebP by content, decodable, at most 3072×3072 pixels. The
/// error is a sentence for the user; the caller adds where the path was written.
pub fn load_source(base_dir: &Path, path: &str) -> Result<SourceRef, String> {
    if path.trim().is_empty() {
        return Err("the source image path is empty".to_owned());
    }
    let resolved = base_dir.join(path);
    let bytes = input::read_regular(&resolved, MAX_SOURCE_FILE_BYTES).map_err(|e| match e {
        InputError::NotFound => {
            format!("source image `{path}` not found ({})", resolved.display())
        }
        e => format!("cannot read source image `{path}`: {e}"),
    })?;
    let format = SourceFormat::sniff(&bytes).ok_or_else(|| {
        format!("`{path}` is not a PNG, JPEG or WebP image (judged by its content, not its name)")
    })?;
    let (width, height, has_alpha) =
        check_image(&bytes, format).map_err(|reason| format!("source image `{path}`: {reason}"))?;
    Ok(SourceRef {
        path: path.to_owned(),
        resolved,
        hash: hash_bytes(&bytes),
        format,
        width,
        height,
        has_alpha,
    })
}

/// A reader of `bytes` as `format` that allocates at most
/// `MAX_DECODE_BYTES`; a PNG's ancillary chunks are left out first.
fn decodable(bytes: &[u8], format: SourceFormat) -> ImageReader<Cursor<Cow<'_, [u8]>>> {
    let bytes = match format {
        SourceFormat::Png => png_pixels_only(bytes),
        SourceFormat::Jpeg | SourceFormat::Webp => Cow::Borrowed(bytes),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    reader
}

/// A PNG with only the chunks that make its pixels: the critical ones and
/// `tRNS` (transparency). The rest (colour profiles, compressed text, Exif)
/// is not sent to the Horde, and `iCCP`, `zTXt` and `iTXt` are compressed:
/// a 2 MB file can inflate to gigabytes. A PNG whose chunks do not parse is
/// returned as it is, for the decoder to refuse.
fn png_pixels_only(bytes: &[u8]) -> Cow<'_, [u8]> {
    const SIGNATURE: usize = 8;
    let mut kept = bytes[..SIGNATURE.min(bytes.len())].to_vec();
    let mut at = SIGNATURE;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            return Cow::Borrowed(bytes);
        };
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        // Length, type, data and CRC.
        let Some(end) = (at + 12)
            .checked_add(length)
            .filter(|end| *end <= bytes.len())
        else {
            return Cow::Borrowed(bytes);
        };
        if kind[0].is_ascii_uppercase() || kind == b"tRNS" {
            kept.extend_from_slice(&bytes[at..end]);
        }
        at = end;
        if kind == b"IEND" {
            break;
        }
    }
    Cow::Owned(kept)
}

/// Width, height and alpha of an image, decoded in full (a truncated file
/// fails here, not at submit time); the pixel limit is checked from the
/// header first, so an oversized image is never decoded.
fn check_image(bytes: &[u8], format: SourceFormat) -> Result<(u32, u32, bool), String> {
    let decoder = decodable(bytes, format)
        .into_decoder()
        .map_err(|e| format!("not a readable image: {e}"))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_SOURCE_PIXELS {
        return Err(format!(
            "{width}×{height} is {pixels} pixels; the Horde refuses more than 3072×3072 ({MAX_SOURCE_PIXELS})"
        ));
    }
    if pixels == 0 {
        return Err("the image has no pixels".to_owned());
    }
    let has_alpha = decoder.color_type().has_alpha();
    image::DynamicImage::from_decoder(decoder).map_err(|e| format!("not a readable image: {e}"))?;
    Ok((width, height, has_alpha))
}

/// The source as the API takes it: the file read again, checked against the
/// hash taken at compile time, converted to lossless WebP, base64-encoded.
pub fn webp_base64(source: &SourceRef) -> Result<String, SourceError> {
    let bytes = input::read_regular(&source.resolved, MAX_SOURCE_FILE_BYTES).map_err(|e| {
        SourceError::Read {
            path: source.resolved.clone(),
            source: e,
        }
    })?;
    let now = hash_bytes(&bytes);
    if now != source.hash {
        return Err(SourceError::Changed {
            path: source.resolved.clone(),
            checked: source.hash.clone(),
            now,
        });
    }
    let webp = to_webp(&bytes, source.format).map_err(|reason| SourceError::Convert {
        path: source.resolved.clone(),
        reason,
    })?;
    Ok(base64::engine::general_purpose::STANDARD.encode(webp))
}

/// Lossless WebP of an image: RGBA when it has alpha (the Horde reads an
/// inpainting mask from it), RGB otherwise.
fn to_webp(bytes: &[u8], format: SourceFormat) -> Result<Vec<u8>, String> {
    let image = decodable(bytes, format)
        .decode()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
    if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        rgba.write_with_encoder(encoder)
    } else {
        let rgb = image.to_rgb8();
        rgb.write_with_encoder(encoder)
    }
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The base64 WebP of every image of `sources`, in the API's shape.
pub struct WireSources {
    pub processing: SourceProcessing,
    pub image: String,
    pub mask: Option<String>,
    /// (base64 WebP, strength)
    pub extra: Vec<(String, f64)>,
}

impl std::fmt::Debug for WireSources {
    // Base64 blobs are never printed: only their lengths.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireSources")
            .field("processing", &self.processing)
            .field("image_chars", &self.image.len())
            .field("mask_chars", &self.mask.as_ref().map(String::len))
            .field("extra", &self.extra.len())
            .finish()
    }
}

/// Reads and converts every file of `sources` (see [`webp_base64`]).
pub fn wire_sources(sources: &JobSources) -> Result<WireSources, SourceError> {
    Ok(WireSources {
        processing: sources.processing,
        image: webp_base64(&sources.image)?,
        mask: sources.mask.as_deref().map(webp_base64).transpose()?,
        extra: sources
            .extra
            .iter()
            .map(|extra| Ok((webp_base64(&extra.image)?, extra.strength)))
            .collect::<Result<_, SourceError>>()?,
    })
}

/// Where a job's source fields were written: the job, or `defaults`.
struct Field<'a, T> {
    value: &'a T,
    path: YamlPath,
}

fn field<'a, T>(
    job: Option<&'a T>,
    defaults: Option<&'a T>,
    job_path: &YamlPath,
    name: &str,
) -> Option<Field<'a, T>> {
    match (job, defaults) {
        (Some(value), _) => Some(Field {
            value,
            path: job_path.key(name),
        }),
        (None, Some(value)) => Some(Field {
            value,
            path: YamlPath::root().key("defaults").key(name),
        }),
        (None, None) => None,
    }
}

/// What the Horde says when remix meets a model that is not Stable Cascade.
const REMIX_HELP: &str =
    "remix runs on Stable Cascade models only (the Horde answers InvalidRemix)";

impl Context<'_> {
    /// A source file, read and checked once per compile however many jobs use it;
    /// a problem is reported at `here` each time it is used.
    pub(super) fn source_file(&mut self, path: &str, here: &YamlPath) -> Option<Arc<SourceRef>> {
        match self.cached_source(path) {
            Ok(source) => Some(source),
            Err(message) => {
                self.problem(here, message, "source images are PNG, JPEG or WebP files of at most 3072×3072 pixels, relative to the manifest's folder");
                None
            }
        }
    }

    /// A source file, read and checked once per compile; why not, otherwise.
    pub(super) fn cached_source(&mut self, path: &str) -> Result<Arc<SourceRef>, String> {
        let base_dir = self.file.base_dir.clone();
        self.source_cache
            .entry(path.to_owned())
            .or_insert_with(|| load_source(&base_dir, path).map(Arc::new))
            .clone()
    }

    /// A `source_image` matrix axis: each value a source file.
    pub(super) fn source_axis(&mut self, values: &Value, path: &YamlPath) -> Option<Axis> {
        let Value::Array(items) = values else {
            self.problem(
                path,
                "matrix axis `source_image` must be a list of image paths",
                "e.g. `source_image: [a.png, b.png]`",
            );
            return None;
        };
        if items.is_empty() {
            self.problem(path, "matrix axis `source_image` has no values", "");
            return None;
        }
        let mut refs = Vec::with_capacity(items.len());
        let mut values = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let here = path.index(i);
            let Some(text) = item.as_str() else {
                self.problem(
                    &here,
                    format!(
                        "matrix axis `source_image`: expected an image path, found {}",
                        super::params::describe(item)
                    ),
                    "",
                );
                continue;
            };
            if let Some(source) = self.source_file(text, &here) {
                refs.push(source);
                values.push(AxisValue {
                    text: text.to_owned(),
                    json: Value::from(text),
                    weight: 1.0,
                });
            }
        }
        (refs.len() == items.len()).then(|| Axis {
            kind: AxisKind::Source(Arc::from(refs)),
            name: "source_image".to_owned(),
            values,
        })
    }

    /// Resolves and checks a job's source fields (over `defaults`) against
    /// its parameters, axes and models, as the Horde would; `None` for a
    /// txt2img job or when a problem was reported.
    pub(super) fn job_sources(
        &mut self,
        spec: &JobSpec,
        path: &YamlPath,
        params: &BTreeMap<&'static str, Value>,
        axes: &[Axis],
        models: &[String],
    ) -> Option<Arc<JobSources>> {
        let defaults = &self.file.manifest.defaults;
        let image = field(
            spec.source_image.as_ref(),
            defaults.source_image.as_ref(),
            path,
            "source_image",
        );
        let processing = field(
            spec.source_processing.as_ref(),
            defaults.source_processing.as_ref(),
            path,
            "source_processing",
        );
        let mask = field(
            spec.source_mask.as_ref(),
            defaults.source_mask.as_ref(),
            path,
            "source_mask",
        );
        let extra = field(
            spec.extra_source_images.as_ref(),
            defaults.extra_source_images.as_ref(),
            path,
            "extra_source_images",
        );
        let axis_images: Option<Arc<[Arc<SourceRef>]>> =
            axes.iter().find_map(|axis| match &axis.kind {
                AxisKind::Source(refs) => Some(Arc::clone(refs)),
                AxisKind::Rows(table) if table.has_sources() => {
                    // Every row needs its source: a table mixing img2img and
                    // txt2img rows is two jobs.
                    let missing = axis.values.iter().zip(&table.sources).find(|(_, s)| s.is_none());
                    if let Some((row, _)) = missing {
                        self.problem(&path.key("rows"), format!("row `{}` of the table has no `source_image`, which other rows have", row.text), "give every row a source image, or split the table into an img2img and a txt2img job");
                    }
                    Some(table.sources.iter().flatten().cloned().collect())
                }
                _ => None,
            });
        // Where a parameter is set: the job's params, its matrix, or defaults.
        let param_path = |name: &str| -> Option<YamlPath> {
            let by_axis = axes
                .iter()
                .any(|a| matches!(a.kind, AxisKind::Param(p) if p == name));
            if spec.params.0.contains_key(name) {
                Some(path.key("params").key(name))
            } else if by_axis {
                Some(path.key("matrix").key(name))
            } else if params.contains_key(name) {
                Some(YamlPath::root().key("defaults").key("params").key(name))
            } else {
                None
            }
        };
        let control = param_path("control_type");
        let before = self.problems.len();

        if spec.source_image.is_some() && axis_images.is_some() {
            self.problem(
                &path.key("source_image"),
                "the job sets `source_image` and has a `source_image` matrix axis or rows column",
                "keep one of them",
            );
        }
        if image.is_none() && axis_images.is_none() {
            // Source fields under `defaults` simply do not apply to a txt2img
            // job (nothing is sent); the job's own are a mistake.
            if spec.source_mask.is_some() {
                let at = path.key("source_mask");
                self.problem(&at, "`source_mask` without `source_image` (the Horde answers SourceMaskUnnecessary)", "set `source_image`, or drop the mask");
            }
            if spec.source_processing.is_some() {
                let at = path.key("source_processing");
                self.problem(
                    &at,
                    "`source_processing` has no effect without `source_image`",
                    "set `source_image`, or drop `source_processing`",
                );
            }
            if spec.extra_source_images.is_some() {
                let at = path.key("extra_source_images");
                self.problem(
                    &at,
                    "`extra_source_images` without `source_image`",
                    "extra source images go with a `source_image` and `source_processing: remix`",
                );
            }
            if let Some(control) = &control {
                self.problem(control, "`control_type` needs a `source_image` (the Horde answers ControlNetSourceMissing)", "set `source_image` to the image (or control map) to follow");
            }
            if spec.params.0.contains_key("denoising_strength") {
                self.problem(
                    &path.key("params").key("denoising_strength"),
                    "`denoising_strength` has no effect without `source_image`",
                    "set `source_image`, or drop `denoising_strength`",
                );
            }
            return None;
        }

        let mode = processing
            .as_ref()
            .map_or(SourceProcessing::Img2img, |p| *p.value);
        let image_ref = match (&axis_images, &image) {
            (Some(refs), _) => refs.first().cloned(),
            (None, Some(image)) => self.source_file(image.value, &image.path),
            (None, None) => None,
        };
        let mask_ref = match &mask {
            Some(mask) => self.source_file(mask.value, &mask.path),
            None => None,
        };
        if let Some(control) = &control {
            if mode == SourceProcessing::Inpainting {
                self.problem(control, "`control_type` with `source_processing: inpainting` (the Horde answers ControlNetInpaintingMismatch)", "ControlNet works with img2img sources");
            }
        }
        if mode == SourceProcessing::Inpainting && mask.is_none() {
            let place = |i: usize| match (&image, &axis_images) {
                (_, Some(_)) => path.key("matrix").key("source_image").index(i),
                (Some(image), None) => image.path.clone(),
                (None, None) => path.clone(),
            };
            let candidates: Vec<Arc<SourceRef>> = match (&axis_images, &image_ref) {
                (Some(refs), _) => refs.to_vec(),
                (None, Some(image)) => vec![Arc::clone(image)],
                (None, None) => Vec::new(),
            };
            for (i, candidate) in candidates.iter().enumerate() {
                if !candidate.has_alpha {
                    self.problem(&place(i), format!("inpainting without `source_mask` needs a source image with an alpha channel, and `{}` has none (the Horde answers InpaintingMissingMask)", candidate.path), "add `source_mask`, or use a PNG/WebP whose transparent pixels mark the area to repaint");
                }
            }
        }
        let mut extra_refs = Vec::new();
        if let Some(extra) = &extra {
            if extra.value.len() > MAX_EXTRA_SOURCE_IMAGES {
                self.problem(&extra.path, format!("{} extra source images; the Horde takes at most {MAX_EXTRA_SOURCE_IMAGES} (TooManyExtraSourceImages)", extra.value.len()), "");
            }
            if mode != SourceProcessing::Remix {
                self.problem(&extra.path, format!("extra source images with `source_processing: {}` (the Horde answers InvalidExtraSourceImages)", mode.as_str()), "extra source images are for `source_processing: remix`");
            }
            for (i, item) in extra.value.iter().enumerate() {
                let here = extra.path.index(i);
                let strength = item.strength.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&strength) {
                    self.problem(
                        &here.key("strength"),
                        format!("strength {strength} is out of range: it must be 0 to 1"),
                        "",
                    );
                }
                if let Some(source) = self.source_file(&item.image, &here.key("image")) {
                    extra_refs.push(ExtraSource {
                        image: source,
                        strength,
                    });
                }
            }
        }
        if mode == SourceProcessing::Remix {
            let axis_models = axes
                .iter()
                .filter(|a| matches!(a.kind, AxisKind::Model))
                .flat_map(|a| a.values.iter().map(|v| v.text.as_str()));
            let not_cascade = models
                .iter()
                .map(String::as_str)
                .chain(axis_models)
                .find(|m| !m.to_lowercase().contains("cascade"));
            if let (Some(model), Some(processing)) = (not_cascade, &processing) {
                self.problem(
                    &processing.path,
                    format!("remix with model `{model}`"),
                    REMIX_HELP,
                );
            }
        }
        if self.problems.len() > before {
            return None;
        }
        Some(Arc::new(JobSources {
            processing: mode,
            image: image_ref?,
            mask: mask_ref,
            extra: extra_refs,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, alpha: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let image = if alpha {
            image::DynamicImage::ImageRgba8(image::RgbaImage::new(width, height))
        } else {
            image::DynamicImage::ImageRgb8(image::RgbImage::new(width, height))
        };
        image
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .expect("encoding a small PNG in memory cannot fail");
        out
    }

    #[test]
    fn formats_are_told_by_content() {
        assert_eq!(
            SourceFormat::sniff(&png(2, 2, false)),
            Some(SourceFormat::Png)
        );
        assert_eq!(
            SourceFormat::sniff(b"\xFF\xD8\xFF\xE0"),
            Some(SourceFormat::Jpeg)
        );
        assert_eq!(
            SourceFormat::sniff(b"RIFF\0\0\0\0WEBPVP8L"),
            Some(SourceFormat::Webp)
        );
        assert_eq!(SourceFormat::sniff(b"GIF89a"), None);
        assert_eq!(SourceFormat::sniff(b""), None);
    }

    #[test]
    fn a_source_is_checked_hashed_and_sent_as_lossless_webp() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jpg"), png(8, 4, true)).unwrap();
        let source = load_source(dir.path(), "a.jpg").unwrap();
        assert_eq!(
            (source.format, source.width, source.height),
            (SourceFormat::Png, 8, 4)
        );
        assert!(source.has_alpha);
        assert_eq!(source.hash.len(), 32);
        let wire = webp_base64(&source).unwrap();
        let webp = base64::engine::general_purpose::STANDARD
            .decode(wire)
            .unwrap();
        assert_eq!(SourceFormat::sniff(&webp), Some(SourceFormat::Webp));
        let back = image::load_from_memory_with_format(&webp, ImageFormat::WebP).unwrap();
        assert_eq!((back.width(), back.height()), (8, 4));
        assert!(back.color().has_alpha());

        std::fs::write(dir.path().join("a.jpg"), png(8, 4, false)).unwrap();
        let error = webp_base64(&source).unwrap_err();
        assert!(matches!(error, SourceError::Changed { .. }), "{error}");
    }

    #[test]
    fn bad_sources_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = load_source(dir.path(), "nope.png").unwrap_err();
        assert!(missing.contains("not found"), "{missing}");
        std::fs::write(dir.path().join("t.png"), b"hello").unwrap();
        let text = load_source(dir.path(), "t.png").unwrap_err();
        assert!(text.contains("is not a PNG, JPEG or WebP"), "{text}");
        let mut truncated = png(16, 16, false);
        truncated.truncate(truncated.len() / 2);
        std::fs::write(dir.path().join("half.png"), truncated).unwrap();
        let half = load_source(dir.path(), "half.png").unwrap_err();
        assert!(half.contains("not a readable image"), "{half}");
        std::fs::write(dir.path().join("big.png"), png(3073, 3072, false)).unwrap();
        let big = load_source(dir.path(), "big.png").unwrap_err();
        assert!(big.contains("refuses more than 3072×3072"), "{big}");
    }

    #[test]
    fn only_the_chunks_that_make_the_pixels_are_decoded() {
        let original = png(6, 4, true);
        // A text chunk after IHDR (8-byte signature, 25-byte IHDR).
        let mut with_text = original[..33].to_vec();
        with_text.extend(13u32.to_be_bytes());
        with_text.extend(b"tEXtComment\0hello\0\0\0\0");
        with_text.extend(&original[33..]);
        assert_eq!(png_pixels_only(&with_text).as_ref(), original.as_slice());
        let decoded = |bytes: &[u8]| {
            decodable(bytes, SourceFormat::Png)
                .decode()
                .unwrap()
                .to_rgba8()
        };
        assert_eq!(decoded(&with_text), decoded(&original));
        // A truncated chunk list is left for the decoder to refuse.
        let cut = &original[..40];
        assert_eq!(png_pixels_only(cut).as_ref(), cut);
    }

    #[test]
    fn key_text_names_hashes_not_paths() {
        let image = |path: &str, hash: &str| {
            Arc::new(SourceRef {
                path: path.into(),
                resolved: PathBuf::from(path),
                hash: hash.into(),
                format: SourceFormat::Png,
                width: 1,
                height: 1,
                has_alpha: false,
            })
        };
        let sources = JobSources {
            processing: SourceProcessing::Remix,
            image: image("a.png", "aa"),
            mask: None,
            extra: vec![ExtraSource {
                image: image("b.png", "bb"),
                strength: 0.5,
            }],
        };
        assert_eq!(sources.key_text(), "remix image=aa extra=bb@0.5");
        assert_eq!(
            sources.with_image(image("moved/a.png", "aa")).key_text(),
            sources.key_text()
        );
    }
}
