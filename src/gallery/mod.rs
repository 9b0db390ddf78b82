//! The morning review: `report.html` and the X/Y/Z grids of an output folder.
//!
//! Owns `<out>/grids/` (PNG grid images), `<out>/report.html` and the hidden
//! `<out>/.report/` (nothing in it now; older versions kept a thumbnail per
//! image there, which [`write_report`] removes). The page's cards show the
//! saved images themselves, scaled by the browser and loaded lazily: a
//! thumbnail per image cost more CPU than the rest of the page and an inode
//! per image. A run that writes the page keeps each image's grid cell as it
//! saves it, through [`Previews`], so the grids decode nothing again.
//!
//! It reads what a run wrote — `metadata.jsonl`, the sidecars,
//! `results.jsonl` — and what the caller
//! hands it (the plan, the failed jobs, the status report), so it works on a
//! folder in any state, also while a run is writing it (a torn or unreadable
//! line is skipped, a missing file is an empty one).
//!
//! It must never write or move an image, a sidecar or a JSON Lines file, and
//! never reach the network: the page it writes loads nothing from anywhere
//! but the output folder.

mod cells;
mod grid;
mod index;
mod page;
mod pixels;
mod previews;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use crate::output::{
    IndexRow, JobResult, Labels, Sidecar, INDEX_FILE, RESULTS_FILE, SHARD_INDEX_FILE,
};
use crate::progress::StatusReport;

pub use cells::CELLS_BUDGET;
pub use grid::{
    grid_size, GRID_CELL_MAX, GRID_HEADER_HEIGHT, GRID_IMAGES_MAX, GRID_ROW_LABEL_WIDTH,
    GRID_TITLE_HEIGHT,
};
pub use previews::Previews;

/// The page, in the output folder.
pub const PAGE_FILE: &str = "report.html";
/// Longest side of an image's card on the page, in CSS pixels.
pub const CARD_SIZE: u32 = 192;
/// Where earlier versions kept a JPEG thumbnail per image (hidden);
/// removed by [`write_report`].
const OLD_THUMBS_DIR: &str = ".report/thumbs";
/// Grid images live under this folder of the output folder.
pub const GRIDS_DIR: &str = "grids";

/// One job of the plan, as the page and the grids need it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanJob {
    /// The job's stable key.
    pub key: String,
    /// The manifest job it came from.
    pub name: String,
    /// Which combination of that manifest job (enumeration order: the first
    /// axis varies slowest).
    pub combination: u128,
    /// Images it wants.
    pub images: u32,
    /// The resolved prompt.
    pub prompt: String,
    /// The models it may run on.
    pub models: Vec<String>,
    /// Its generation parameters (without `seed` and `n`).
    pub params: serde_json::Map<String, Value>,
    /// The value each axis, wildcard and row variable took.
    pub labels: Labels,
}

pub use crate::progress::FailedJob;

/// What the caller knows that the output folder does not tell.
#[derive(Debug, Clone, Default)]
pub struct ReportInput {
    /// The manifest as the user names it on a command line (for the reroll command shown).
    pub manifest: String,
    /// The manifest's `name`.
    pub title: String,
    /// The batch's state, from a run's last sample or from the ledger.
    pub status: Option<StatusReport>,
    /// Every job of the plan, in plan order.
    pub plan: Vec<PlanJob>,
    /// The jobs that failed and have not succeeded since.
    pub failures: Vec<FailedJob>,
    /// The name of `metadata.jsonl`'s caption column (`output.metadata.caption`;
    /// empty means the default, `text`).
    pub caption_column: String,
    /// The grid each manifest job asks for, by job name; a job not listed gets
    /// [`GridChoice::Auto`].
    pub grids: HashMap<String, GridChoice>,
    /// The previews the run made as it saved its images (their grid cells
    /// are drawn from them instead of decoding the images), if any.
    pub previews: Option<std::sync::Arc<Previews>>,
}

/// The grids a manifest job asks for (`grid:` on a job).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GridChoice {
    /// Axes chosen from the plan; only grids that compare something are drawn.
    #[default]
    Auto,
    /// No grid (`grid: false`).
    Off,
    /// These labels as X and Y (`grid: {x: style, y: subject}`).
    Axes { x: String, y: Option<String> },
}

/// What [`write_report`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Full path of `report.html`.
    pub page: PathBuf,
    /// Images shown.
    pub images: usize,
    /// Images decoded now, for grid cells the run did not keep as it saved
    /// them (`report` on its own decodes every image on a stale grid).
    pub decoded: usize,
    /// Images a grid could not read (drawn as grey cells).
    pub unreadable: usize,
    /// Grid images, relative to the output folder.
    pub grids: Vec<String>,
}

/// Something that stopped the report from being written.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum GalleryError {
    /// A file of the report could not be written.
    #[error("cannot {action} {}: {error}", path.display())]
    #[diagnostic(
        code(horde_batch::gallery::io),
        help("check that the output folder is writable and its disk is not full")
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A grid image could not be encoded.
    #[error("cannot encode {}: {message}", path.display())]
    #[diagnostic(code(horde_batch::gallery::encode))]
    Encode { path: PathBuf, message: String },
}

impl GalleryError {
    fn io(action: &'static str, path: &Path, error: std::io::Error) -> Self {
        GalleryError::Io {
            action,
            path: path.to_path_buf(),
            error,
        }
    }
}

/// A saved image, from its index row and (when there is one) its sidecar.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub row: IndexRow,
    pub sidecar: Option<Sidecar>,
}

impl Entry {
    pub fn labels(&self) -> Labels {
        self.sidecar
            .as_ref()
            .map(|s| s.labels.clone())
            .unwrap_or_default()
    }
}

/// Writes `report.html` and the stale grids of `out`. Blocks on file I/O
/// and image coding: call it from `spawn_blocking` in async code.
///
/// # Errors
///
/// [`GalleryError::Io`] if the page or a grid cannot be written. An
/// unreadable image is not an error: its grid cell is grey.
pub fn write_report(out: &Path, input: &ReportInput) -> Result<Written, GalleryError> {
    let entries = read_entries(out, &input.caption_column);
    let mut decodes = grid::Decodes::default();
    let grids = grid::write_grids(
        out,
        &input.plan,
        &input.grids,
        &entries,
        input.previews.as_deref(),
        &mut decodes,
    )?;
    let results = read_results(out);
    let html = page::render(input, &entries, &results, &grids);
    let page = out.join(PAGE_FILE);
    write_atomic(&page, html.as_bytes())?;
    remove_old_thumbnails(out);
    Ok(Written {
        page,
        images: entries.len(),
        decoded: decodes.decoded,
        unreadable: decodes.unreadable,
        grids: grids.into_iter().map(|g| g.file).collect(),
    })
}

/// Removes the thumbnails an older version left under `.report/`: the page
/// no longer links them. Best effort: a folder that cannot be removed only
/// costs its space.
fn remove_old_thumbnails(out: &Path) {
    let old = out.join(OLD_THUMBS_DIR);
    if old.is_dir() {
        if let Err(error) = std::fs::remove_dir_all(&old) {
            tracing::debug!(%error, path = %old.display(), "old thumbnails left in place");
        }
    }
}

/// The images of `metadata.jsonl` whose file is there, first row of each
/// name, with their sidecars. Damaged lines, hostile names and alchemy's
/// post-processed copies are skipped.
fn read_entries(out: &Path, caption_column: &str) -> Vec<Entry> {
    // A shard's folder holds its part of the index under another name.
    let text = std::fs::read_to_string(out.join(INDEX_FILE))
        .or_else(|_| std::fs::read_to_string(out.join(SHARD_INDEX_FILE)))
        .unwrap_or_default();
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for row in text
        .lines()
        .filter_map(|line| index::parse_row(line, caption_column))
    {
        if !is_plain_relative(&row.file_name) || !seen.insert(row.file_name.clone()) {
            continue;
        }
        // An alchemy upscale is its source's, not an image to review or reroll.
        if row
            .columns
            .get("alchemy_of")
            .is_some_and(|of| !of.is_null())
        {
            continue;
        }
        let image = out.join(&row.file_name);
        if !image.is_file() {
            continue;
        }
        let sidecar = std::fs::read(image.with_extension(crate::output::SIDECAR_EXTENSION))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok());
        entries.push(Entry { row, sidecar });
    }
    entries
}

/// The last result line of each job.
fn read_results(out: &Path) -> HashMap<String, JobResult> {
    std::fs::read_to_string(out.join(RESULTS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<JobResult>(line).ok())
        .map(|result| (result.job_key.clone(), result))
        .collect()
}

/// A relative path that stays inside the folder (no `..`, no root, not empty).
pub(crate) fn is_plain_relative(name: &str) -> bool {
    let path = Path::new(name);
    !name.is_empty()
        && !name.contains('\\')
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Writes `bytes` to `path` through a temp file in the same folder, so a
/// reader (a browser, a second report) never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GalleryError> {
    write_atomic_with(path, |file| {
        file.write_all(bytes)
            .map_err(|e| GalleryError::io("write", path, e))
    })
}

/// Like [`write_atomic`], the content written by `write` straight into the
/// temp file (buffered), so a large file is never held whole in memory too.
/// The file gets the images' permissions (0644 less the umask), not
/// tempfile's private 0600: the page is opened from shared folders.
pub(crate) fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> Result<(), GalleryError>,
) -> Result<(), GalleryError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| GalleryError::io("create directory", dir, e))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(crate::output::TEMP_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut temp = builder
        .tempfile_in(dir)
        .map_err(|e| GalleryError::io("create a temp file in", dir, e))?;
    let mut buffered = std::io::BufWriter::new(temp.as_file_mut());
    write(&mut buffered)?;
    buffered
        .flush()
        .map_err(|e| GalleryError::io("write", path, e))?;
    drop(buffered);
    temp.persist(path)
        .map_err(|e| GalleryError::io("write", path, e.error))?;
    Ok(())
}

/// A label or parameter value as text (strings without their quotes).
pub(crate) fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The dimensions a job can be filtered by: `model`, `job` and each label.
pub(crate) fn facets(job: &str, model: &str, labels: &Labels) -> BTreeMap<String, String> {
    let mut facets = BTreeMap::new();
    facets.insert("model".to_owned(), model.to_owned());
    facets.insert("job".to_owned(), job.to_owned());
    for (name, value) in labels {
        facets.insert(format!("label:{name}"), value_text(value));
    }
    facets
}

#[cfg(test)]
mod tests {
    use super::*;
    use scraper::{Html, Selector};
    use serde_json::json;

    /// Writes a 64×64 image of one colour with its sidecar and index row.
    fn save(out: &Path, name: &str, job: &str, key: &str, colour: u8, labels: Value) {
        save_nth(out, name, (job, key, 0), colour, labels);
    }

    /// [`save`], as image `index` of its job.
    fn save_nth(
        out: &Path,
        name: &str,
        (job, key, index): (&str, &str, u32),
        colour: u8,
        labels: Value,
    ) {
        let mut webp = Vec::new();
        image_webp::WebPEncoder::new(&mut webp)
            .encode(&[colour; 64 * 64 * 3], 64, 64, image_webp::ColorType::Rgb8)
            .unwrap();
        std::fs::write(out.join(name), webp).unwrap();
        let sidecar = json!({
            "schema": 1, "file_name": name, "manifest": "m.yaml", "manifest_name": "m", "job": job,
            "job_key": key, "image_index": index, "prompt_template": "p", "prompt": "<script>alert(1)</script>",
            "negative_prompt": null, "model": "stable_diffusion", "params": {"steps": 10}, "request": {},
            "seed": "1", "batch_index": 0, "horde_request_id": "r", "generation_id": "g", "worker_id": "w",
            "worker_name": "worker <b>", "censored": false, "gen_metadata": [], "kudos": 1.0,
            "submitted_at": "2026-01-01T00:00:00.000Z", "completed_at": "2026-01-01T00:01:00.000Z",
            "horde_batch_version": "0", "labels": labels,
        });
        std::fs::write(out.join(name).with_extension("json"), sidecar.to_string()).unwrap();
        let row = json!({
            "file_name": name, "text": "<script>alert(1)</script>", "negative_prompt": "", "job": job,
            "job_key": key, "image_index": index, "model": "stable_diffusion", "seed": "1", "width": 64,
            "height": 64, "steps": 10, "cfg_scale": 7.0, "sampler_name": "k_euler_a", "censored": false,
            "horde_request_id": "r", "generation_id": "g",
        });
        use std::io::Write as _;
        let mut index = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out.join(INDEX_FILE))
            .unwrap();
        writeln!(index, "{row}").unwrap();
    }

    fn plan_job(key: &str, combination: u128, labels: Value) -> PlanJob {
        PlanJob {
            key: key.into(),
            name: "zoo".into(),
            combination,
            images: 1,
            prompt: "p".into(),
            models: vec!["stable_diffusion".into()],
            params: serde_json::Map::new(),
            labels: serde_json::from_value(labels).unwrap(),
        }
    }

    #[test]
    fn labels_become_filters_and_grid_axes_and_user_text_stays_text() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut plan = Vec::new();
        // Axis order: animal (slow) then mood (fast); the label names sort the other way.
        let mut combination = 0;
        for (a, animal) in ["owl", "cat"].iter().enumerate() {
            for (m, mood) in ["happy", "sad"].iter().enumerate() {
                let key = format!("{a}{m}");
                let labels = json!({"animal": animal, "mood": mood});
                save(
                    out,
                    &format!("{key}.webp"),
                    "zoo",
                    &key,
                    (a * 100 + m * 50) as u8,
                    labels.clone(),
                );
                plan.push(plan_job(&key, combination, labels));
                combination += 1;
            }
        }
        let input = ReportInput {
            manifest: "m.yaml".into(),
            title: "<i>zoo</i>".into(),
            plan,
            ..ReportInput::default()
        };
        let written = write_report(out, &input).unwrap();
        assert_eq!((written.images, written.decoded), (4, 4));
        assert_eq!(written.grids, vec!["grids/zoo/img0.png".to_owned()]);
        let grid = image::open(out.join(&written.grids[0])).unwrap().to_rgb8();
        // X = animal (the first axis): owl then cat; Y = mood: happy then sad.
        assert_eq!(grid.dimensions(), grid_size(2, 2, 64, 64));
        let at = |column: u32, row: u32| {
            grid.get_pixel(
                GRID_ROW_LABEL_WIDTH + column * 64 + 32,
                GRID_HEADER_HEIGHT + row * 64 + 32,
            )[0]
        };
        assert_eq!([at(0, 0), at(0, 1), at(1, 0), at(1, 1)], [0, 50, 100, 150]);

        let html = Html::parse_document(&std::fs::read_to_string(&written.page).unwrap());
        let options = |facet: &str| -> Vec<String> {
            let css = format!("select[data-facet=\"{facet}\"] option");
            html.select(&Selector::parse(&css).unwrap())
                .map(|o| o.text().collect())
                .collect()
        };
        assert_eq!(options("label:animal"), ["all", "cat", "owl"]);
        assert_eq!(options("label:mood"), ["all", "happy", "sad"]);
        assert_eq!(options("model"), ["all", "stable_diffusion"]);
        assert_eq!(options("job"), ["all", "zoo"]);
        let card = html
            .select(&Selector::parse(".card[data-file=\"01.webp\"]").unwrap())
            .next()
            .unwrap();
        let facets: Value = serde_json::from_str(card.value().attr("data-f").unwrap()).unwrap();
        assert_eq!(facets["label:animal"], "owl");
        assert_eq!(facets["label:mood"], "sad");
        let scripts = html.select(&Selector::parse("script").unwrap()).count();
        assert_eq!(scripts, 1, "the prompt's <script> is text");
        let title: String = html
            .select(&Selector::parse("title").unwrap())
            .flat_map(|t| t.text())
            .collect();
        assert!(title.starts_with("<i>zoo</i>"), "{title}");
        // A card shows the image itself, at its size fitted to the card.
        let img = card
            .select(&Selector::parse("img").unwrap())
            .next()
            .unwrap();
        let attr = |name: &str| img.value().attr(name).unwrap().to_owned();
        assert_eq!(
            [attr("src"), attr("width"), attr("height"), attr("loading")],
            ["01.webp", "192", "192", "lazy"]
        );

        // Nothing new: the grid is fresh, no image decoded again.
        assert_eq!(write_report(out, &input).unwrap().decoded, 0);
    }

    #[test]
    fn grids_drawn_from_the_cells_made_at_save_are_the_grids_drawn_from_the_images() {
        use crate::output::ImagePreviews as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut plan = Vec::new();
        for (i, animal) in ["owl", "cat", "fox"].iter().enumerate() {
            let key = format!("k{i}");
            let labels = json!({ "animal": animal });
            save(out, &format!("{key}.webp"), "zoo", &key, 0, labels.clone());
            // A 300×200 gradient instead, so scaling it shows.
            let pixels: Vec<u8> = (0..300 * 200)
                .flat_map(|p: u32| [(p % 300) as u8, (p / 300) as u8, (i * 80) as u8])
                .collect();
            let mut webp = Vec::new();
            image_webp::WebPEncoder::new(&mut webp)
                .encode(&pixels, 300, 200, image_webp::ColorType::Rgb8)
                .unwrap();
            std::fs::write(out.join(format!("{key}.webp")), webp).unwrap();
            plan.push(plan_job(&key, i as u128, labels));
        }
        let input = ReportInput {
            plan,
            ..ReportInput::default()
        };
        let from_images = write_report(out, &input).unwrap();
        assert_eq!(from_images.decoded, 3);
        let grid_path = out.join(&from_images.grids[0]);
        let grid = image::open(&grid_path).unwrap().to_rgb8();

        std::fs::remove_dir_all(out.join(GRIDS_DIR)).unwrap();
        let previews = std::sync::Arc::new(Previews::default());
        for i in 0..3 {
            let name = format!("k{i}.webp");
            let bytes = std::fs::read(out.join(&name)).unwrap();
            let decoded = crate::output::verify_webp_decoded(&bytes).unwrap();
            previews.make(&name, 0, decoded);
        }
        let input = ReportInput {
            previews: Some(std::sync::Arc::clone(&previews)),
            ..input
        };
        let from_cells = write_report(out, &input).unwrap();
        assert_eq!(from_cells.decoded, 0);
        assert_eq!(image::open(&grid_path).unwrap().to_rgb8(), grid);
        let cell = previews.cell("k0.webp", 256, 170).unwrap();
        assert_eq!(cell.dimensions(), (256, 170));

        // Without the run's cells (`report` on its own), the grid decodes
        // the images, and draws the same grid.
        std::fs::remove_dir_all(out.join(GRIDS_DIR)).unwrap();
        let alone = write_report(
            out,
            &ReportInput {
                previews: None,
                ..input
            },
        )
        .unwrap();
        assert_eq!(alone.decoded, 3);
        assert_eq!(image::open(&grid_path).unwrap().to_rgb8(), grid);
    }

    #[test]
    fn an_unreadable_image_is_a_grey_cell_and_old_thumbnails_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut plan = Vec::new();
        for (i, animal) in ["owl", "cat"].iter().enumerate() {
            let key = format!("k{i}");
            let labels = json!({ "animal": animal });
            save(out, &format!("{key}.webp"), "zoo", &key, 90, labels.clone());
            plan.push(plan_job(&key, i as u128, labels));
        }
        std::fs::write(out.join("k1.webp"), b"RIFF\x04\0\0\0WEBP").unwrap();
        let old = out.join(OLD_THUMBS_DIR).join("k0.webp.jpg");
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, b"jpeg").unwrap();
        let written = write_report(
            out,
            &ReportInput {
                plan,
                ..ReportInput::default()
            },
        )
        .unwrap();
        assert_eq!(
            (written.images, written.decoded, written.unreadable),
            (2, 1, 1)
        );
        assert!(!out.join(OLD_THUMBS_DIR).exists(), "old thumbnails removed");
        let grid = image::open(out.join(&written.grids[0])).unwrap().to_rgb8();
        let centre = |column: u32| {
            *grid.get_pixel(
                GRID_ROW_LABEL_WIDTH + column * 64 + 32,
                GRID_HEADER_HEIGHT + 32,
            )
        };
        assert_eq!(centre(0), image::Rgb([90, 90, 90]));
        assert_eq!(centre(1), image::Rgb([200, 200, 200]), "a grey cell");
    }

    #[test]
    fn grids_draw_the_first_images_of_each_combination_and_only_they_get_cells() {
        use crate::output::ImagePreviews as _;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let images = GRID_IMAGES_MAX + 2;
        let previews = std::sync::Arc::new(Previews::default());
        let mut plan = Vec::new();
        for (i, animal) in ["owl", "cat"].iter().enumerate() {
            let key = format!("k{i}");
            let labels = json!({ "animal": animal });
            for index in 0..images {
                let name = format!("{key}-{index}.webp");
                save_nth(out, &name, ("zoo", &key, index), 9, labels.clone());
                let bytes = std::fs::read(out.join(&name)).unwrap();
                let decoded = crate::output::verify_webp_decoded(&bytes).unwrap();
                previews.make(&name, index, decoded);
            }
            plan.push(PlanJob {
                images,
                ..plan_job(&key, i as u128, labels)
            });
        }
        let written = write_report(
            out,
            &ReportInput {
                plan,
                previews: Some(std::sync::Arc::clone(&previews)),
                ..ReportInput::default()
            },
        )
        .unwrap();
        let expected: Vec<String> = (0..GRID_IMAGES_MAX)
            .map(|index| format!("grids/zoo/img{index}.png"))
            .collect();
        assert_eq!(written.grids, expected);
        assert_eq!((written.images, written.decoded), (2 * images as usize, 0));
        assert!(previews.cell("k0-0.webp", 64, 64).is_some());
        assert!(previews
            .cell(&format!("k0-{GRID_IMAGES_MAX}.webp"), 64, 64)
            .is_none());
    }

    #[test]
    fn hostile_index_names_are_skipped() {
        assert!(is_plain_relative("a/b.webp"));
        for name in ["../x.webp", "/etc/passwd", "", "a/../../b", "a\\b.webp"] {
            assert!(!is_plain_relative(name), "{name}");
        }
    }
}
