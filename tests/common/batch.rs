//! A batch under test: a manifest in a fresh temporary directory, the
//! `horde-batch` commands that run it against a test Horde, and checks of
//! what the runs left in its output folder (images, sidecars, index, state).
//!
//! Starting the Horde is [`crate::common::Sim`]'s; running and waiting for
//! processes is `process.rs`'s.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use horde_batch::sim::images::render_pixels_sized;
use serde_json::Value;

use super::{
    run_bounded, signal, wait_exit, wait_until, Finished, HordeBatch, Sim, BIN, RUN_LIMIT,
    TEST_FIND_USER_CACHE,
};

/// A manifest copied into a fresh directory, with its outputs there.
pub struct Batch {
    pub dir: tempfile::TempDir,
    pub manifest: PathBuf,
}

impl Batch {
    pub fn new(text: &str) -> Batch {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("batch.yaml");
        std::fs::write(&manifest, text).unwrap();
        Batch { dir, manifest }
    }

    /// `manifests/smoke-200.yaml`: 200 images in 25 jobs.
    pub fn smoke() -> Batch {
        Batch::new(&std::fs::read_to_string("manifests/smoke-200.yaml").unwrap())
    }

    /// The output folder: `out/<the manifest's name>` next to the manifest.
    pub fn out(&self) -> PathBuf {
        let text = std::fs::read_to_string(&self.manifest).unwrap();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name: "))
            .expect("the manifest has a top-level `name: `")
            .trim();
        self.dir.path().join("out").join(name)
    }

    /// The state folder (ledger, status file).
    pub fn state(&self) -> PathBuf {
        self.out().join(".horde-batch")
    }

    /// Writes `bytes` to `name` (folders created) beside the manifest and
    /// returns its path.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Makes `name` beside the manifest a named pipe (FIFO) that nothing
    /// writes to: opening it to read blocks forever.
    #[track_caller]
    pub fn fifo(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let made = Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("`mkfifo` runs");
        assert!(made.success(), "mkfifo {}: {made}", path.display());
        path
    }

    /// `horde-batch <subcommand> <manifest>` with no Horde (`validate`,
    /// `plan`), colour off so messages can be matched, ended within 20 s.
    pub fn offline(&self, subcommand: &str) -> HordeBatch {
        HordeBatch::new()
            .env("NO_COLOR", "1")
            .arg(subcommand)
            .arg(&self.manifest)
            .deadline(Duration::from_secs(20))
    }

    // ------------------------------------------------------------ commands

    /// `horde-batch <subcommand> <manifest> --horde-url <sim>`: see [`Batch::command_at`].
    pub fn command(&self, sim: &Sim, subcommand: &str) -> Command {
        let mut command = self.command_at(&sim.url, subcommand);
        if sim.unlimited {
            command
                .env("HORDE_BATCH_SUBMIT_INTERVAL", "50ms")
                .env("HORDE_BATCH_POLL_FLOOR", "200ms")
                .env("HORDE_BATCH_ALCHEMY_SUBMIT_INTERVAL", "20ms")
                .env("HORDE_BATCH_ALCHEMY_FORM_TIME", "100ms");
        }
        command
    }

    /// `horde-batch <subcommand> <manifest> --horde-url <url>` (the sim or a
    /// stub), key and URL unset from the environment, stderr piped. The
    /// engine's durations are scaled to the test Hordes: their `find_user`
    /// cache is [`TEST_FIND_USER_CACHE`] (the sim's is set to match).
    pub fn command_at(&self, url: &str, subcommand: &str) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg(subcommand)
            .arg(&self.manifest)
            .args(["--horde-url", url])
            .env_remove("AI_HORDE_API_KEY")
            .env_remove("AI_HORDE_URL")
            .env("RUST_LOG", "horde_batch=info")
            .env("HORDE_BATCH_FIND_USER_CACHE", TEST_FIND_USER_CACHE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// [`Batch::command`] as a [`HordeBatch`], to state what it must do.
    pub fn horde_batch(&self, sim: &Sim, subcommand: &str) -> HordeBatch {
        HordeBatch::from_command(self.command(sim, subcommand))
    }

    /// `run` against `sim`, to its end (bounded by [`RUN_LIMIT`]).
    #[track_caller]
    pub fn run(&self, sim: &Sim) -> Finished {
        run_bounded(&mut self.command(sim, "run"), RUN_LIMIT)
    }

    /// Starts `run` in the background, its stderr discarded.
    pub fn spawn_run(&self, sim: &Sim) -> Child {
        self.command(sim, "run")
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts `run`, waits until `images` are saved, then SIGKILLs it.
    #[track_caller]
    pub fn kill_run_after(&self, sim: &Sim, images: usize) {
        let mut child = self.spawn_run(sim);
        self.wait_for_images(images, Duration::from_secs(60));
        signal(&child, "KILL");
        wait_exit(&mut child, Duration::from_secs(10));
    }

    /// `horde-batch status --json` for this batch (the state folder as the
    /// manifest places it), which must succeed.
    #[track_caller]
    pub fn status_json(&self) -> Value {
        let status = HordeBatch::new()
            .args(["status", "--json"])
            .arg(&self.manifest)
            .run();
        match serde_json::from_str(&status.stdout) {
            Ok(value) => value,
            Err(e) => panic!("status --json is not JSON ({e}): {}", status.stdout),
        }
    }

    // ------------------------------------------------------- what it wrote

    /// The lines of the image index, `metadata.jsonl` (none before it exists).
    pub fn index_lines(&self) -> Vec<Value> {
        self.jsonl("metadata.jsonl")
    }

    /// The `file_name` of every line of the image index, in its order.
    pub fn index_file_names(&self) -> Vec<String> {
        self.index_lines()
            .iter()
            .map(|row| row["file_name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The lines of a JSONL file in the output folder (none before it exists).
    #[track_caller]
    pub fn jsonl(&self, name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.out().join(name)).unwrap_or_default();
        let mut lines = Vec::new();
        for line in text.lines() {
            match serde_json::from_str(line) {
                Ok(value) => lines.push(value),
                Err(e) => panic!("{name}: {e}: {line}"),
            }
        }
        lines
    }

    /// Waits until at least `images` index lines exist, failing the test
    /// after `deadline`.
    #[track_caller]
    pub fn wait_for_images(&self, images: usize, deadline: Duration) {
        wait_until(&format!("{images} saved images"), deadline, || {
            self.index_lines().len() >= images
        });
    }

    /// Image and temp files anywhere in the output folder, state folder included.
    pub fn webp_files(&self) -> Vec<PathBuf> {
        walk_all(&self.out())
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "webp")
                    || p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(horde_batch::output::TEMP_PREFIX)
            })
            .collect()
    }

    /// Every image, sidecar and index line is there exactly once, complete and right.
    #[track_caller]
    pub fn assert_complete(&self, expected: usize) {
        let out = self.out();
        let files = walk(&out);
        let webps: Vec<_> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "webp"))
            .collect();
        let sidecars: Vec<_> = files
            .iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json") && p.parent() != Some(out.as_path())
            })
            .collect();
        assert_eq!(webps.len(), expected, "image files");
        assert_eq!(sidecars.len(), expected, "sidecars");
        assert!(
            files.iter().all(|p| !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".hb-tmp-")),
            "no temp files"
        );
        let lines = self.index_lines();
        assert_eq!(lines.len(), expected, "index lines");
        let names: HashSet<_> = lines
            .iter()
            .map(|l| l["file_name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names.len(), expected, "index lines are unique");
        for webp in webps {
            let bytes = std::fs::read(webp).unwrap();
            horde_batch::output::verify_webp(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", webp.display()));
            let sidecar: Value = serde_json::from_str(
                &std::fs::read_to_string(webp.with_extension("json")).unwrap(),
            )
            .unwrap();
            let rel = webp
                .strip_prefix(&out)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert_eq!(sidecar["file_name"], rel.as_str());
            assert!(names.contains(&rel));
            // The right image in the right file: the sim's pixels are a function of
            // the prompt it was sent, the seed and the batch index.
            let wire_prompt = match sidecar["negative_prompt"].as_str() {
                Some(negative) => format!("{} ### {negative}", sidecar["prompt"].as_str().unwrap()),
                None => sidecar["prompt"].as_str().unwrap().to_owned(),
            };
            let batch_index = sidecar["batch_index"].as_u64().unwrap_or(0) as u32;
            let mut decoder = image_webp::WebPDecoder::new(std::io::Cursor::new(&bytes)).unwrap();
            // The sim draws its pattern at the requested size.
            let (width, height) = decoder.dimensions();
            let expected_pixels = render_pixels_sized(
                &wire_prompt,
                sidecar["seed"].as_str().unwrap(),
                batch_index,
                width,
                height,
            );
            let mut pixels = vec![0; decoder.output_buffer_size().unwrap()];
            decoder.read_image(&mut pixels).unwrap();
            if !sidecar["censored"].as_bool().unwrap() {
                assert!(
                    pixels == expected_pixels,
                    "{rel} holds another image than its sidecar says"
                );
            }
        }
    }

    /// Each job (by key) has exactly `per_job` index lines, for indices
    /// `0..per_job`, and one line in `results.jsonl` listing them.
    #[track_caller]
    pub fn assert_each_job_has(&self, jobs: usize, per_job: u64) {
        let mut by_job: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for line in self.index_lines() {
            let indices = by_job
                .entry(line["job_key"].as_str().unwrap().to_owned())
                .or_default();
            assert!(
                indices.insert(line["image_index"].as_u64().unwrap()),
                "an image index appears twice: {line}"
            );
        }
        assert_eq!(by_job.len(), jobs, "jobs with images");
        let all: BTreeSet<u64> = (0..per_job).collect();
        for (key, indices) in &by_job {
            assert_eq!(indices, &all, "job {key} has other image indices");
        }
        let results = self.jsonl("results.jsonl");
        assert_eq!(results.len(), jobs, "one result line per job");
        for result in &results {
            assert_eq!(
                result["images"].as_array().unwrap().len() as u64,
                per_job,
                "{result}"
            );
        }
    }
}

// ------------------------------------------------------------- any folder

/// Every file below `dir`, hidden folders (the state directory) left out.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    files_below(dir, false)
}

/// Every file below `dir`, hidden folders (the state directory) included.
pub fn walk_all(dir: &Path) -> Vec<PathBuf> {
    files_below(dir, true)
}

fn files_below(dir: &Path, hidden: bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_dir() {
            files.push(path);
        } else if hidden || !path.file_name().unwrap().to_string_lossy().starts_with('.') {
            files.extend(files_below(&path, hidden));
        }
    }
    files
}

/// Files under `dir` (any depth) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    walk_all(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            })
        })
        .collect()
}
