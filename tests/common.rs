//! Helpers shared by the end-to-end tests: a `horde-batch sim` child process,
//! a manifest in a temporary directory, and checks of what a run wrote.
#![allow(dead_code)] // Not every helper is used by every test module.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use horde_batch::sim::images::render_pixels_sized;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_horde-batch");

/// The `find_user` cache of the test Hordes (the real server's is 30 s): a
/// client that lost a submit's answer waits this long before looking for it.
pub const TEST_FIND_USER_CACHE: &str = "1s";

/// A `horde-batch sim` child process.
pub struct Sim {
    pub child: Child,
    pub url: String,
    /// Rate limits are off: runs against it submit and check faster.
    unlimited: bool,
}

impl Sim {
    /// Starts `horde-batch sim` with `args`, its `find_user` cache scaled to
    /// [`TEST_FIND_USER_CACHE`] unless `args` set it.
    pub fn start(args: &[&str]) -> Sim {
        let mut command = Command::new(BIN);
        command.args(["sim", "--port", "0"]);
        if !args.contains(&"--find-user-cache") {
            command.args(["--find-user-cache", TEST_FIND_USER_CACHE]);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sim starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Sim {
            child,
            url,
            unlimited: false,
        }
    }

    /// A sim with its rate limits off, for tests about something else: runs
    /// against it (through [`Batch::command`]) submit every 50 ms and may check
    /// a request every 200 ms. The limits have tests of their own.
    pub fn unlimited(args: &[&str]) -> Sim {
        let mut sim = Sim::start(&[args, &["--no-rate-limits"]].concat());
        sim.unlimited = true;
        sim
    }

    /// `GET /sim/stats`, over a plain socket.
    pub fn stats(&self) -> Value {
        self.get_json("/sim/stats")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

    pub fn smoke() -> Batch {
        Batch::new(&std::fs::read_to_string("manifests/smoke-200.yaml").unwrap())
    }

    pub fn out(&self) -> PathBuf {
        let name = std::fs::read_to_string(&self.manifest).unwrap();
        let name = name
            .lines()
            .find_map(|l| l.strip_prefix("name: "))
            .unwrap()
            .trim()
            .to_owned();
        self.dir.path().join("out").join(name)
    }

    /// `horde-batch <subcommand> <manifest> --horde-url <sim>`: see [`Batch::command_at`].
    pub fn command(&self, sim: &Sim, subcommand: &str) -> Command {
        let mut command = self.command_at(&sim.url, subcommand);
        if sim.unlimited {
            command
                .env("HORDE_BATCH_SUBMIT_INTERVAL", "50ms")
                .env("HORDE_BATCH_POLL_FLOOR", "200ms");
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

    /// Starts `run` in the background, its stderr discarded.
    pub fn spawn_run(&self, sim: &Sim) -> Child {
        self.command(sim, "run")
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Starts `run`, waits until `images` are saved, then SIGKILLs it.
    pub fn kill_run_after(&self, sim: &Sim, images: usize) {
        let mut child = self.spawn_run(sim);
        self.wait_for_images(images, Duration::from_secs(60));
        kill(&mut child, "KILL");
        wait_exit(&mut child, Duration::from_secs(10));
    }

    /// Runs to the end; returns the exit code and stderr.
    pub fn run(&self, sim: &Sim) -> (i32, String) {
        let output = self.command(sim, "run").output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn index_lines(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.out().join("metadata.jsonl")) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits (bounded) until at least `images` index lines exist.
    pub fn wait_for_images(&self, images: usize, limit: Duration) {
        let start = Instant::now();
        while self.index_lines().len() < images {
            assert!(
                start.elapsed() < limit,
                "no progress: {} images after {limit:?}",
                self.index_lines().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every image, sidecar and index line is there exactly once, complete and right.
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
}

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

pub fn kill(child: &mut Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        assert!(
            start.elapsed() < limit,
            "the run did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn stat(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no stat {name}"))
}

// ----------------------------------------- bounded runs and output checks

/// Every run a test starts ends within this, or the test fails (and kills it).
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How a child process ended.
pub struct Finished {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end, capturing its output; kills it and fails the
/// test if it takes longer than `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Finished {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let code = wait_or_kill(&mut child, limit);
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    match code {
        Some(code) => Finished {
            code,
            stdout,
            stderr,
        },
        None => panic!("{command:?} did not end within {limit:?}; its stderr:\n{stderr}"),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The exit code (128 + signal for a signal), or `None` after killing a child
/// that outlived `limit`.
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(
                status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            );
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Fails the test if horde-batch panicked.
pub fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "horde-batch panicked:\n{stderr}"
    );
}

/// Checks of what a run left in the output folder, for any Horde (the sim or the stub).
impl Batch {
    /// The state folder (ledger, status file).
    pub fn state(&self) -> PathBuf {
        self.out().join(".horde-batch")
    }

    /// `horde-batch status --json` for this batch (the state folder as the
    /// manifest places it), which must succeed.
    pub fn status_json(&self) -> Value {
        let stdout = stdout_of_success(
            Command::new(BIN)
                .args(["status", "--json"])
                .arg(&self.manifest),
        );
        serde_json::from_slice(&stdout).unwrap()
    }

    /// `run` against `sim`, to its end (bounded by [`RUN_LIMIT`]).
    pub fn run_on(&self, sim: &Sim) -> Finished {
        run_bounded(&mut self.command(sim, "run"), RUN_LIMIT)
    }

    /// The lines of a JSONL file in the output folder.
    pub fn jsonl(&self, name: &str) -> Vec<Value> {
        std::fs::read_to_string(self.out().join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
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

    /// Each job (by key) has exactly `per_job` index lines, for indices
    /// `0..per_job`, and one line in `results.jsonl` listing them.
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

impl Sim {
    /// `GET path` on the sim (e.g. `/sim/users`), over a plain socket: the JSON body.
    pub fn get_json(&self, path: &str) -> Value {
        self.plain_call("GET", path, "")
    }

    /// `POST path` with a JSON `body` on the sim (e.g. `/sim/revoke`): the JSON answer.
    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        self.plain_call("POST", path, &body.to_string())
    }

    fn plain_call(&self, method: &str, path: &str, body: &str) -> Value {
        let authority = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        let mut stream = std::net::TcpStream::connect(authority).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let answer = response.split_once("\r\n\r\n").unwrap().1;
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{path}: {e}: {answer}"))
    }
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

/// A test that needs a tool this machine may lack (Chromium, a Python
/// package) skips, saying so, unless `HORDE_BATCH_REQUIRE_TOOLS` is set
/// (`.ci/run` installs the tools and sets it): then a missing tool fails it.
pub fn skip_without(tool: &str, install: &str) {
    assert!(
        std::env::var_os("HORDE_BATCH_REQUIRE_TOOLS").is_none(),
        "HORDE_BATCH_REQUIRE_TOOLS is set but {tool} is not installed ({install})"
    );
    eprintln!("skipped: {tool} is not installed ({install})");
}

/// The Python that can import `module`: `HORDE_BATCH_PYTHON`, else `python3`.
pub fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("HORDE_BATCH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    has.then_some(python)
}

/// Runs `command` to its end, asserts it succeeded (showing its stderr if
/// not) and returns its stdout.
pub fn stdout_of_success(command: &mut Command) -> Vec<u8> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
