//! X/Y/Z grids, like A1111's X/Y/Z plot: for each manifest job whose
//! combinations vary, one PNG per value of the Z dimensions and per image
//! index, the cells in axis order, the axis values drawn with ab_glyph in the
//! embedded DejaVu Sans (`assets/fonts/`, Bitstream Vera licence).
//!
//! The dimensions come from the plan, not from the manifest's syntax: a
//! job's labels, its models and each of its parameters whose value differs
//! between its combinations (its resolved prompt too, when it has no labels:
//! that is how unlabelled variants and wildcards differ). Dimensions that
//! split the combinations the same way (a label and the parameter it sets)
//! count once, labels first. Combinations are enumerated like nested loops,
//! the first axis slowest, so dimensions are ordered by how seldom their value
//! changes in plan order: X is the first axis, Y the second, the rest are Z.
//! A grid is redrawn only when missing or older than one of its images.
//! Must not know the manifest or write anything outside `grids/`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::{imageops, ImageFormat, Rgb, RgbImage};

use super::{value_text, write_atomic, Entry, GalleryError, PlanJob, GRIDS_DIR};

/// Longest side of a grid cell: larger images are scaled down to fit, smaller ones are drawn as they are.
pub const GRID_CELL_MAX: u32 = 256;
/// Height of the title line at the top of a grid.
pub const GRID_TITLE_HEIGHT: u32 = 28;
/// Height of the title line plus the line of column (X) labels above the cells.
pub const GRID_HEADER_HEIGHT: u32 = 56;
/// Width of the column of row (Y) labels left of the cells.
pub const GRID_ROW_LABEL_WIDTH: u32 = 160;

/// A grid with more columns or rows than this is not drawn (it would be unreadable).
const MAX_SIDE: usize = 32;
const FONT_PX: f32 = 16.0;
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Pixel size of a grid of `columns` × `rows` cells of `cell_width` × `cell_height`.
pub fn grid_size(columns: u32, rows: u32, cell_width: u32, cell_height: u32) -> (u32, u32) {
    (
        GRID_ROW_LABEL_WIDTH + columns * cell_width,
        GRID_HEADER_HEIGHT + rows * cell_height,
    )
}

/// A grid written (or found fresh) under `grids/`.
#[derive(Debug, Clone)]
pub(super) struct GridFile {
    /// Relative to the output folder.
    pub file: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Dim {
    Label(String),
    Prompt,
    Model,
    Param(String),
}

impl Dim {
    fn name(&self) -> String {
        match self {
            Dim::Label(name) | Dim::Param(name) => name.clone(),
            Dim::Prompt => "prompt".to_owned(),
            Dim::Model => "model".to_owned(),
        }
    }

    fn value(&self, job: &PlanJob) -> String {
        match self {
            Dim::Label(name) => job.labels.get(name).map(value_text).unwrap_or_default(),
            Dim::Prompt => job.prompt.clone(),
            Dim::Model => job.models.join(", "),
            Dim::Param(name) => job.params.get(name).map(value_text).unwrap_or_default(),
        }
    }
}

/// The dimensions the combinations of one manifest job (in plan order) vary along, axis order.
fn dimensions(jobs: &[&PlanJob]) -> Vec<Dim> {
    let mut candidates: Vec<Dim> = Vec::new();
    let mut labels: Vec<&String> = jobs.iter().flat_map(|j| j.labels.keys()).collect();
    labels.sort();
    labels.dedup();
    candidates.extend(labels.iter().map(|name| Dim::Label((*name).clone())));
    if labels.is_empty() {
        candidates.push(Dim::Prompt);
    }
    candidates.push(Dim::Model);
    let mut params: Vec<&String> = jobs.iter().flat_map(|j| j.params.keys()).collect();
    params.sort();
    params.dedup();
    candidates.extend(params.iter().map(|name| Dim::Param((*name).clone())));

    // Each dimension as the partition it makes: value ids by first appearance.
    let mut kept: Vec<(Dim, Vec<usize>, usize)> = Vec::new();
    for dim in candidates {
        let mut ids: HashMap<String, usize> = HashMap::new();
        let partition: Vec<usize> = jobs
            .iter()
            .map(|job| {
                let next = ids.len();
                *ids.entry(dim.value(job)).or_insert(next)
            })
            .collect();
        if ids.len() < 2 || kept.iter().any(|(_, other, _)| *other == partition) {
            continue;
        }
        let changes = partition.windows(2).filter(|w| w[0] != w[1]).count();
        kept.push((dim, partition, changes));
    }
    // Stable: ties keep the candidates' order.
    kept.sort_by_key(|(_, _, changes)| *changes);
    kept.into_iter().map(|(dim, _, _)| dim).collect()
}

/// Distinct values of `dim` over `jobs`, in order of first appearance.
fn values(dim: Option<&Dim>, jobs: &[&PlanJob]) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    for job in jobs {
        let value = dim.map(|d| d.value(job)).unwrap_or_default();
        if !values.contains(&value) {
            values.push(value);
        }
    }
    values
}

/// Writes the grids of every manifest job of `plan` that varies.
pub(super) fn write_grids(
    out: &Path,
    plan: &[PlanJob],
    entries: &[Entry],
) -> Result<Vec<GridFile>, GalleryError> {
    let mut images: HashMap<&str, BTreeMap<u32, &Entry>> = HashMap::new();
    for entry in entries {
        images
            .entry(entry.row.job_key.as_str())
            .or_default()
            .entry(entry.row.image_index)
            .or_insert(entry);
    }
    let mut by_name: Vec<(&str, Vec<&PlanJob>)> = Vec::new();
    for job in plan {
        match by_name.iter_mut().find(|(name, _)| *name == job.name) {
            Some((_, jobs)) => jobs.push(job),
            None => by_name.push((&job.name, vec![job])),
        }
    }
    let font = FontRef::try_from_slice(FONT).ok();
    let mut written = Vec::new();
    for (name, mut jobs) in by_name {
        jobs.sort_by_key(|job| job.combination);
        let dims = dimensions(&jobs);
        let Some(x) = dims.first() else { continue };
        let y = dims.get(1);
        let z = dims.get(2..).unwrap_or_default();
        let xs = values(Some(x), &jobs);
        let ys = values(y, &jobs);
        if xs.len() > MAX_SIDE || ys.len() > MAX_SIDE {
            tracing::debug!(job = name, "no grid: more than {MAX_SIDE} columns or rows");
            continue;
        }
        let mut groups: Vec<(Vec<String>, Vec<&PlanJob>)> = Vec::new();
        for job in &jobs {
            let key: Vec<String> = z.iter().map(|d| d.value(job)).collect();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(job),
                None => groups.push((key, vec![job])),
            }
        }
        let most_images = jobs.iter().map(|job| job.images).max().unwrap_or(0);
        for (group_index, (z_values, members)) in groups.iter().enumerate() {
            let z_text: Vec<String> = z
                .iter()
                .zip(z_values)
                .map(|(d, v)| format!("{}={v}", d.name()))
                .collect();
            for index in 0..most_images {
                let mut cells: Vec<Option<PathBuf>> = vec![None; xs.len() * ys.len()];
                for job in members {
                    let column = xs.iter().position(|v| *v == x.value(job));
                    let row = ys
                        .iter()
                        .position(|v| *v == y.map(|d| d.value(job)).unwrap_or_default());
                    let image = images
                        .get(job.key.as_str())
                        .and_then(|by_index| by_index.get(&index));
                    if let (Some(column), Some(row), Some(entry)) = (column, row, image) {
                        cells[row * xs.len() + column] = Some(out.join(&entry.row.file_name));
                    }
                }
                if cells.iter().all(Option::is_none) {
                    continue;
                }
                let mut file = format!("{GRIDS_DIR}/{}/", sanitize(name));
                if !z.is_empty() {
                    file.push_str(&format!(
                        "z{group_index:03}-{}-",
                        sanitize(&z_text.join("_"))
                    ));
                }
                file.push_str(&format!("img{index}.png"));
                let mut title = format!("{name} · X: {}", x.name());
                if let Some(y) = y {
                    title.push_str(&format!(" · Y: {}", y.name()));
                }
                for part in &z_text {
                    title.push_str(&format!(" · {part}"));
                }
                title.push_str(&format!(" · image {index}"));
                let path = out.join(&file);
                if !is_fresh(&path, &cells) {
                    let grid = render(&cells, &xs, &ys, &title, font.as_ref());
                    let mut png = Vec::new();
                    grid.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
                        .map_err(|e| GalleryError::Encode {
                            path: path.clone(),
                            message: e.to_string(),
                        })?;
                    write_atomic(&path, &png)?;
                }
                written.push(GridFile { file, title });
            }
        }
    }
    Ok(written)
}

/// The grid exists and is newer than every image in it.
fn is_fresh(grid: &Path, cells: &[Option<PathBuf>]) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(grid_time) = modified(grid) else {
        return false;
    };
    cells
        .iter()
        .flatten()
        .all(|cell| modified(cell).is_some_and(|t| t <= grid_time))
}

/// Draws the grid: cells row by row (Y), column by column (X); a missing or
/// unreadable image is a grey cell.
fn render(
    cells: &[Option<PathBuf>],
    xs: &[String],
    ys: &[String],
    title: &str,
    font: Option<&FontRef<'_>>,
) -> RgbImage {
    let decoded: Vec<Option<RgbImage>> = cells
        .iter()
        .map(|cell| {
            let bytes = std::fs::read(cell.as_ref()?).ok()?;
            image::load_from_memory_with_format(&bytes, ImageFormat::WebP)
                .ok()
                .map(|image| image.to_rgb8())
        })
        .collect();
    let (cell_width, cell_height) = decoded
        .iter()
        .flatten()
        .next()
        .map_or((GRID_CELL_MAX, GRID_CELL_MAX), |first| {
            fit(first.width(), first.height())
        });
    let (width, height) = grid_size(xs.len() as u32, ys.len() as u32, cell_width, cell_height);
    let mut grid = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    for (i, cell) in decoded.iter().enumerate() {
        let column = (i % xs.len()) as u32;
        let row = (i / xs.len()) as u32;
        let left = GRID_ROW_LABEL_WIDTH + column * cell_width;
        let top = GRID_HEADER_HEIGHT + row * cell_height;
        match cell {
            Some(image) if image.dimensions() == (cell_width, cell_height) => {
                imageops::replace(&mut grid, image, i64::from(left), i64::from(top));
            }
            Some(image) => {
                let scaled = imageops::resize(
                    image,
                    cell_width,
                    cell_height,
                    imageops::FilterType::Triangle,
                );
                imageops::replace(&mut grid, &scaled, i64::from(left), i64::from(top));
            }
            None => {
                let grey = RgbImage::from_pixel(cell_width, cell_height, Rgb([200, 200, 200]));
                imageops::replace(&mut grid, &grey, i64::from(left), i64::from(top));
            }
        }
    }
    if let Some(font) = font {
        draw_text(&mut grid, font, title, 6, 4, width.saturating_sub(12));
        for (column, label) in xs.iter().enumerate() {
            let left = GRID_ROW_LABEL_WIDTH + column as u32 * cell_width;
            let w = text_width(font, &fit_text(font, label, cell_width.saturating_sub(8)));
            let x = left + cell_width.saturating_sub(w) / 2;
            draw_text(
                &mut grid,
                font,
                label,
                x,
                GRID_TITLE_HEIGHT + 4,
                cell_width.saturating_sub(8),
            );
        }
        for (row, label) in ys.iter().enumerate() {
            let top = GRID_HEADER_HEIGHT + row as u32 * cell_height;
            let y = top + cell_height.saturating_sub(FONT_PX as u32) / 2;
            draw_text(&mut grid, font, label, 6, y, GRID_ROW_LABEL_WIDTH - 12);
        }
    }
    grid
}

/// A cell's size for images of `width` × `height`: scaled down to fit [`GRID_CELL_MAX`].
fn fit(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height).max(1);
    if longest <= GRID_CELL_MAX {
        return (width.max(1), height.max(1));
    }
    let scale = |side: u32| {
        ((u64::from(side) * u64::from(GRID_CELL_MAX)) / u64::from(longest)).max(1) as u32
    };
    (scale(width), scale(height))
}

fn glyphs(font: &FontRef<'_>, text: &str) -> Vec<(GlyphId, f32)> {
    let scaled = font.as_scaled(PxScale::from(FONT_PX));
    let mut caret = 0.0;
    let mut previous: Option<GlyphId> = None;
    let mut placed = Vec::new();
    for ch in text.chars().filter(|c| !c.is_control()) {
        let id = scaled.glyph_id(ch);
        if let Some(previous) = previous {
            caret += scaled.kern(previous, id);
        }
        placed.push((id, caret));
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
    placed
}

fn text_width(font: &FontRef<'_>, text: &str) -> u32 {
    let scaled = font.as_scaled(PxScale::from(FONT_PX));
    glyphs(font, text)
        .last()
        .map_or(0.0, |(id, x)| x + scaled.h_advance(*id))
        .ceil() as u32
}

/// `text`, cut with an ellipsis to fit `max_width` pixels.
fn fit_text(font: &FontRef<'_>, text: &str, max_width: u32) -> String {
    if text_width(font, text) <= max_width {
        return text.to_owned();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let candidate: String = chars.iter().collect::<String>() + "…";
        if text_width(font, &candidate) <= max_width {
            return candidate;
        }
    }
    String::new()
}

/// Draws `text` in black with its top-left at (`x`, `y`), cut to `max_width`.
fn draw_text(image: &mut RgbImage, font: &FontRef<'_>, text: &str, x: u32, y: u32, max_width: u32) {
    let text = fit_text(font, text, max_width);
    let scaled = font.as_scaled(PxScale::from(FONT_PX));
    let baseline = y as f32 + scaled.ascent();
    for (id, offset) in glyphs(font, &text) {
        let glyph = id.with_scale_and_position(FONT_PX, point(x as f32 + offset, baseline));
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + i64::from(gx);
            let py = bounds.min.y as i64 + i64::from(gy);
            if px < 0 || py < 0 || px >= i64::from(image.width()) || py >= i64::from(image.height())
            {
                return;
            }
            let pixel = image.get_pixel_mut(px as u32, py as u32);
            for channel in pixel.0.iter_mut() {
                *channel = (f32::from(*channel) * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
            }
        });
    }
}

/// A file name component from any text: ASCII letters, digits, `-` and `_` kept, the rest `_` (so never `..`).
fn sanitize(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if name.is_empty() {
        name.push('_');
    }
    name
}
