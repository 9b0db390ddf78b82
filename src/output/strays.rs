//! What the output folder holds that no run wrote as a pair: a sidecar
//! without its image (the image was deleted, and no run made it again) or an
//! image without its sidecar (a file copied in by hand). They are reported,
//! never trusted: nothing reads them into the index or the ledger.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{Sidecar, IMAGE_EXTENSION, SIDECAR_EXTENSION};

/// Files of the output folder without their other half.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Strays {
    /// Sidecars (JSON that reads as one) whose image is not beside them.
    pub sidecars_without_image: Vec<PathBuf>,
    /// Images with no sidecar beside them.
    pub images_without_sidecar: Vec<PathBuf>,
}

impl Strays {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.sidecars_without_image.is_empty() && self.images_without_sidecar.is_empty()
    }
}

/// Walks `root` (hidden folders such as the state folder left out) for strays.
pub fn find_strays(root: &Path) -> Strays {
    let mut images = BTreeSet::new();
    let mut sidecars = BTreeSet::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => folders.push(path),
                Ok(kind) if kind.is_file() => {
                    if path.extension().is_some_and(|e| e == IMAGE_EXTENSION) {
                        images.insert(path.with_extension(""));
                    } else if path.extension().is_some_and(|e| e == SIDECAR_EXTENSION) {
                        sidecars.insert(path.with_extension(""));
                    }
                }
                _ => {}
            }
        }
    }
    let sidecars_without_image = sidecars
        .difference(&images)
        .map(|stem| stem.with_extension(SIDECAR_EXTENSION))
        // Other JSON files are not ours to report.
        .filter(|path| {
            std::fs::read(path)
                .ok()
                .is_some_and(|bytes| serde_json::from_slice::<Sidecar>(&bytes).is_ok())
        })
        .collect();
    let images_without_sidecar = images
        .difference(&sidecars)
        // `<name>.<form>.webp` beside `<name>.webp` is an alchemy post-processor's
        // image of it, described by its source's sidecar.
        .filter(|stem| stem.extension().is_none() || !images.contains(&stem.with_extension("")))
        .map(|stem| stem.with_extension(IMAGE_EXTENSION))
        .collect();
    Strays {
        sidecars_without_image,
        images_without_sidecar,
    }
}
