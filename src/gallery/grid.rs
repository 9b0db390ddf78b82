//! X/Y/Z grids, like A1111's X/Y/Z plot: for each manifest job whose
//! combinations can be compared, one PNG per value of the Z dimensions and
//! per image index, the cells in axis order, the axis values drawn with
//! ab_glyph in the embedded DejaVu Sans (`assets/fonts/`, Bitstream Vera
//! licence).
//!
//! The dimensions come from the plan, not from the manifest's syntax: a
//! job's labels, its models and each of its parameters whose value differs
//! between its combinations (its resolved prompt too, when it has no labels:
//! that is how unlabelled variants and wildcards differ). Dimensions that
//! split the combinations the same way (a label and the parameter it sets)
//! count once, labels first. Combinations are enumerated like nested loops,
//! the first axis slowest, so dimensions are ordered by how seldom their value
//! changes in plan order. X and Y are the first two dimensions that compare
//! something (two combinations differ in it alone; a `rows:` table's columns
//! do not), the rest are Z; a grid with one cell, or mostly empty cells, is
//! not drawn. A job's `grid:` (handed in as a [`GridChoice`]) names X and Y
//! or turns grids off. A grid is redrawn only when missing or older than one
//! of its images, one image decoded at a time.
//! Must not know the manifest or write anything outside `grids/`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

use super::pixels;
use super::{
    value_text, write_atomic_with, Entry, GalleryError, GridChoice, PlanJob, Previews, GRIDS_DIR,
};

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

/// Grids are drawn for the first this many images of each combination
/// (`img0` … `img3`): enough to see how seeds vary, while a job of
/// `images: 100` gets 4 grids rather than 100 near copies, and a run keeps
/// grid cells for those images only. The page shows every image.
pub const GRID_IMAGES_MAX: u32 = 4;
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

/// A dimension and how it splits a manifest job's combinations (plan
/// order): each combination's value, as an id by first appearance.
struct Split {
    dim: Dim,
    ids: Vec<usize>,
}

impl Split {
    fn of(dim: Dim, jobs: &[&PlanJob]) -> Split {
        let mut values: HashMap<String, usize> = HashMap::new();
        let ids = jobs
            .iter()
            .map(|job| {
                let next = values.len();
                *values.entry(dim.value(job)).or_insert(next)
            })
            .collect();
        Split { dim, ids }
    }

    fn values(&self) -> usize {
        self.ids.iter().max().map_or(0, |most| most + 1)
    }
}

/// The dimensions the combinations of one manifest job (in plan order) vary along, axis order.
fn dimensions(jobs: &[&PlanJob]) -> Vec<Split> {
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

    let mut kept: Vec<(Split, usize)> = Vec::new();
    for dim in candidates {
        let split = Split::of(dim, jobs);
        if split.values() < 2 || kept.iter().any(|(other, _)| other.ids == split.ids) {
            continue;
        }
        let changes = split.ids.windows(2).filter(|w| w[0] != w[1]).count();
        kept.push((split, changes));
    }
    // Stable: ties keep the candidates' order.
    kept.sort_by_key(|(_, changes)| *changes);
    kept.into_iter().map(|(split, _)| split).collect()
}

/// Whether two combinations differ in `dims[along]` only: then images side
/// by side along it share every other value, and a grid compares them. Not
/// so for a `rows:` table's columns, whose every row is its own combination.
fn compares(dims: &[Split], along: usize) -> bool {
    let Some(axis) = dims.get(along) else {
        return false;
    };
    let mut first: HashMap<Vec<usize>, usize> = HashMap::new();
    for (job, &value) in axis.ids.iter().enumerate() {
        let others: Vec<usize> = dims
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != along)
            .map(|(_, split)| split.ids[job])
            .collect();
        if *first.entry(others).or_insert(value) != value {
            return true;
        }
    }
    false
}

/// The axes of one manifest job's grids: X across, Y down, one grid per value of the Z dimensions.
struct Layout {
    x: Dim,
    y: Option<Dim>,
    z: Vec<Dim>,
    /// Chosen by the manifest: drawn even when most cells are empty.
    chosen: bool,
}

/// The layout `choice` asks for; `None` when there is nothing to compare (or grids are off).
fn layout(jobs: &[&PlanJob], choice: &GridChoice) -> Option<Layout> {
    let dims = dimensions(jobs);
    match choice {
        GridChoice::Off => None,
        GridChoice::Auto => {
            let mut comparing = (0..dims.len()).filter(|&i| compares(&dims, i));
            let x = comparing.next()?;
            let y = comparing.next();
            let mut z = Vec::new();
            let (mut x_dim, mut y_dim) = (None, None);
            for (i, split) in dims.into_iter().enumerate() {
                if i == x {
                    x_dim = Some(split.dim);
                } else if Some(i) == y {
                    y_dim = Some(split.dim);
                } else {
                    z.push(split.dim);
                }
            }
            Some(Layout {
                x: x_dim?,
                y: y_dim,
                z,
                chosen: false,
            })
        }
        GridChoice::Axes { x, y } => {
            // The chosen axes first, then the other dimensions; of those only
            // the ones that compare something make grids of their own (a rows
            // table's id would make one grid per row).
            let mut all = vec![Split::of(Dim::Label(x.clone()), jobs)];
            if let Some(y) = y {
                all.push(Split::of(Dim::Label(y.clone()), jobs));
            }
            let chosen = all.len();
            for split in dims {
                if !all.iter().any(|other| other.ids == split.ids) {
                    all.push(split);
                }
            }
            let z: Vec<Dim> = (chosen..all.len())
                .filter(|&i| compares(&all, i))
                .map(|i| all[i].dim.clone())
                .collect();
            let mut axes = all.into_iter().map(|split| split.dim);
            let x = axes.next()?;
            let y = if chosen == 2 { axes.next() } else { None };
            Some(Layout {
                x,
                y,
                z,
                chosen: true,
            })
        }
    }
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

/// What drawing the grids cost: the images decoded (their cells were not
/// kept by the run) and those that could not be read (drawn grey).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decodes {
    pub decoded: usize,
    pub unreadable: usize,
}

/// Writes the grids of every manifest job of `plan` whose combinations can be compared.
pub(super) fn write_grids(
    out: &Path,
    plan: &[PlanJob],
    choices: &HashMap<String, GridChoice>,
    entries: &[Entry],
    previews: Option<&Previews>,
    decodes: &mut Decodes,
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
        let choice = choices.get(name).unwrap_or(&GridChoice::Auto);
        let Some(Layout { x, y, z, chosen }) = layout(&jobs, choice) else {
            continue;
        };
        let (x, y) = (&x, y.as_ref());
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
            let position = |job: &PlanJob| {
                let column = xs.iter().position(|v| *v == x.value(job))?;
                let row = ys
                    .iter()
                    .position(|v| *v == y.map(|d| d.value(job)).unwrap_or_default())?;
                Some(row * xs.len() + column)
            };
            let planned: HashSet<usize> = members.iter().filter_map(|job| position(job)).collect();
            // One cell compares nothing; a mostly empty grid is noise unless asked for.
            if planned.len() < 2 || (!chosen && planned.len() * 2 < xs.len() * ys.len()) {
                continue;
            }
            let z_text: Vec<String> = z
                .iter()
                .zip(z_values)
                .map(|(d, v)| format!("{}={v}", d.name()))
                .collect();
            for index in 0..most_images.min(GRID_IMAGES_MAX) {
                let mut cells: Vec<Option<&str>> = vec![None; xs.len() * ys.len()];
                for job in members {
                    let image = images
                        .get(job.key.as_str())
                        .and_then(|by_index| by_index.get(&index));
                    if let (Some(cell), Some(entry)) = (position(job), image) {
                        // Several combinations in one cell (dimensions left
                        // out of a chosen layout): the first in plan order.
                        cells[cell].get_or_insert(entry.row.file_name.as_str());
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
                if !is_fresh(out, &path, &cells) {
                    let sources = Sources {
                        out,
                        previews,
                        decodes: &mut *decodes,
                    };
                    let grid = render(sources, &cells, &xs, &ys, &title, font.as_ref());
                    write_png(&path, &grid)?;
                }
                written.push(GridFile { file, title });
            }
        }
    }
    Ok(written)
}

/// Encodes `grid` as PNG straight into its file.
fn write_png(path: &Path, grid: &RgbImage) -> Result<(), GalleryError> {
    write_atomic_with(path, |file| {
        PngEncoder::new(file)
            .write_image(
                grid.as_raw(),
                grid.width(),
                grid.height(),
                ExtendedColorType::Rgb8,
            )
            .map_err(|e| GalleryError::Encode {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    })
}

/// The grid exists and is newer than every image in it.
fn is_fresh(out: &Path, grid: &Path, cells: &[Option<&str>]) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(grid_time) = modified(grid) else {
        return false;
    };
    cells
        .iter()
        .flatten()
        .all(|cell| modified(&out.join(cell)).is_some_and(|t| t <= grid_time))
}

/// Draws the grid: cells row by row (Y), column by column (X); a missing or
/// unreadable image is a grey cell. The cell size comes from the first
/// image's header; each image is decoded and scaled to it before the next
/// is read, so memory is the grid's plus one image's, whatever the images' size.
fn render(
    mut sources: Sources<'_>,
    cells: &[Option<&str>],
    xs: &[String],
    ys: &[String],
    title: &str,
    font: Option<&FontRef<'_>>,
) -> RgbImage {
    let out = sources.out;
    let (cell_width, cell_height) = cells
        .iter()
        .flatten()
        .find_map(|name| image::image_dimensions(out.join(name)).ok())
        .map_or((GRID_CELL_MAX, GRID_CELL_MAX), |(width, height)| {
            fit(width, height)
        });
    let (width, height) = grid_size(xs.len() as u32, ys.len() as u32, cell_width, cell_height);
    let white = vec![255; width as usize * height as usize * 3];
    let mut grid = RgbImage::from_raw(width, height, white)
        .expect("the buffer is made for exactly width × height RGB pixels");
    for (i, cell) in cells.iter().enumerate() {
        let column = (i % xs.len()) as u32;
        let row = (i / xs.len()) as u32;
        let left = GRID_ROW_LABEL_WIDTH + column * cell_width;
        let top = GRID_HEADER_HEIGHT + row * cell_height;
        let image = match cell {
            Some(name) => sources.cell(name, cell_width, cell_height),
            None => None,
        };
        match image {
            Some(image) => paste(&mut grid, &image, left, top),
            None => {
                for y in top..top + cell_height {
                    for x in left..left + cell_width {
                        grid.put_pixel(x, y, Rgb([200, 200, 200]));
                    }
                }
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

/// Copies `cell` into `grid` with its top-left at (`left`, `top`), row by
/// row (`imageops::replace` goes pixel by pixel: a tenth of a report's time).
/// The part that would fall outside the grid is left out.
fn paste(grid: &mut RgbImage, cell: &RgbImage, left: u32, top: u32) {
    let (grid_width, grid_height) = grid.dimensions();
    let width = cell.width().min(grid_width.saturating_sub(left)) as usize * 3;
    let rows = cell.height().min(grid_height.saturating_sub(top)) as usize;
    let grid_stride = grid_width as usize * 3;
    let cell_stride = cell.width() as usize * 3;
    let start = top as usize * grid_stride + left as usize * 3;
    let target: &mut [u8] = grid;
    for row in 0..rows {
        let to = start + row * grid_stride;
        let from = row * cell_stride;
        target[to..to + width].copy_from_slice(&cell.as_raw()[from..from + width]);
    }
}

/// Where a grid's cells come from: the cells the run made as it saved the
/// images, else the images of `out`, each decode counted in `decodes`.
struct Sources<'a> {
    out: &'a Path,
    previews: Option<&'a Previews>,
    decodes: &'a mut Decodes,
}

impl Sources<'_> {
    /// The image `name` scaled to `width` × `height`, or `None` if it cannot
    /// be read: its cell as the run made it when it saved the image, else the
    /// image itself. The WebP decoder has no reduced-size decode, so the
    /// image is decoded whole, once, and dropped on return.
    fn cell(&mut self, name: &str, width: u32, height: u32) -> Option<RgbImage> {
        if let Some(cell) = self.previews.and_then(|p| p.cell(name, width, height)) {
            return Some(cell);
        }
        let decoded = std::fs::read(self.out.join(name))
            .ok()
            .and_then(|bytes| pixels::decode_webp(&bytes));
        let Some(decoded) = decoded else {
            self.decodes.unreadable += 1;
            return None;
        };
        self.decodes.decoded += 1;
        if decoded.dimensions() == (width, height) {
            return Some(decoded);
        }
        pixels::resize(&decoded, width, height)
    }
}

/// A cell's size for images of `width` × `height`: scaled down to fit [`GRID_CELL_MAX`].
pub(super) fn fit(width: u32, height: u32) -> (u32, u32) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(combination: u128, labels: serde_json::Value) -> PlanJob {
        PlanJob {
            key: format!("k{combination}"),
            name: "j".into(),
            combination,
            images: 1,
            prompt: format!("p{combination}"),
            models: vec!["m".into()],
            params: serde_json::Map::new(),
            labels: serde_json::from_value(labels).unwrap(),
        }
    }

    #[test]
    fn a_rows_table_compares_nothing_and_a_matrix_does() {
        let rows: Vec<PlanJob> = ["cat", "dog"]
            .iter()
            .flat_map(|s| ["oil", "ink", "pen"].map(|t| (*s, t)))
            .enumerate()
            .map(|(i, (subject, style))| {
                job(
                    i as u128,
                    json!({"pid": format!("p{i}"), "subject": subject, "style": style}),
                )
            })
            .collect();
        let rows: Vec<&PlanJob> = rows.iter().collect();
        assert!(layout(&rows, &GridChoice::Auto).is_none());
        let chosen = GridChoice::Axes {
            x: "style".into(),
            y: Some("subject".into()),
        };
        let Layout { x, y, z, .. } = layout(&rows, &chosen).unwrap();
        assert_eq!(
            (x.name(), y.map(|y| y.name())),
            ("style".into(), Some("subject".into()))
        );
        assert!(z.is_empty(), "the row id makes no grid of its own: {z:?}");
        assert!(layout(&rows, &GridChoice::Off).is_none());

        let matrix: Vec<PlanJob> = (0..6)
            .map(|i| {
                let colour = ["red", "blue", "green"][i as usize / 2];
                let shape = ["cube", "ball"][i as usize % 2];
                job(i, json!({"colour": colour, "shape": shape}))
            })
            .collect();
        let matrix: Vec<&PlanJob> = matrix.iter().collect();
        let Layout { x, y, z, .. } = layout(&matrix, &GridChoice::Auto).unwrap();
        assert_eq!(
            (x.name(), y.map(|y| y.name())),
            ("colour".into(), Some("shape".into()))
        );
        assert!(z.is_empty());
    }
}
