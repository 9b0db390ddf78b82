//! Reliability of `horde-batch run` when things go wrong (issue 6): random
//! SIGKILLs with resumes, every chaos knob of the sim at once, hostile
//! manifests, a hostile Horde (a stub server in this file), an output
//! directory that cannot be written, a damaged ledger, and the API key never
//! leaking. Two runs on one state directory are covered in `tests/run.rs`.
//!
//! `scripts/crash-loop.sh` runs the crash loop below with hundreds of kills
//! (`HORDE_BATCH_CRASH_KILLS`, `HORDE_BATCH_CRASH_SEED`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    assert_no_panic, run_bounded, signal, stat, wait_exit, wait_until, walk_all, Batch, Finished,
    HordeBatch, Sim, BIN, RUN_LIMIT,
};
use serde_json::Value;

const SUBMIT: &str = "POST /api/v2/generate/async";

// ------------------------------------------------------------------ helpers

/// Calls the sim answered for `endpoint`, whatever their status.
fn calls_to(stats: &Value, endpoint: &str) -> u64 {
    stats["calls"][endpoint].as_object().map_or(0, |by_status| {
        by_status.values().filter_map(Value::as_u64).sum()
    })
}

// --------------------------------------------------------------- crash loop

/// What a crash loop did, for the result line of `scripts/crash-loop.sh`.
#[derive(Debug)]
struct CrashLoopReport {
    kills: usize,
    images: u64,
    images_generated: u64,
    requests_created: u64,
    requests_never_retrieved: u64,
    elapsed: Duration,
}

/// Runs a manifest of about `4 * kills` requests (at least 24), SIGKILLing the
/// run `kills` times at seeded random moments and resuming after each, then
/// runs it to completion and checks the output and the sim's counters. With a
/// `submit_latency`, the sim answers each submit that long after queueing it,
/// so most kills land between a POST reaching the Horde and its answer.
/// A crash loop of `kills` SIGKILLs; `busy_key` other clients' requests of
/// the same size are on the key (`horde-batch sim --busy-key`).
fn crash_loop(kills: usize, seed: u64, submit_latency: &str, busy_key: u32) -> CrashLoopReport {
    let start = Instant::now();
    // A run gets about 2.5 requests done between kills: leave work for them all.
    let takes = (2 * kills / 3).max(4);
    let (colours, per_job, max_n) = (3, 6u64, 3u64);
    let jobs = colours * takes;
    let images = jobs as u64 * per_job;
    // A registered key: `find_user` lists its requests still on the Horde
    // (it lists none for the anonymous key), which is how a run can find one
    // whose submit answer a kill cut off before its id was recorded.
    let key = "hb-crash-loop-key";
    let sim = Sim::start(&[
        "--workers",
        "4",
        "--latency",
        "50ms..200ms",
        "--api-key",
        key,
        "--seed",
        &seed.to_string(),
        "--submit-latency",
        submit_latency,
        "--busy-key",
        &busy_key.to_string(),
    ]);
    let batch = Batch::new(&format!(
        "version: 1\nname: crash-loop\ndefaults: {{models: [stable_diffusion]}}\n\
         run: {{max_n: {max_n}}}\njobs:\n  - name: take\n    \
         prompt: 'a {{red|green|blue}} cube, take ${{take}}'\n    \
         matrix: {{take: '1-{takes}'}}\n    images: {per_job}\n"
    ));
    let run = || {
        let mut command = batch.command(&sim, "run");
        command.env("AI_HORDE_API_KEY", key);
        command
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    for kill in 0..kills {
        let mut child = run().spawn().unwrap();
        // From "still starting up" to "several submits and saves in".
        let moment = Duration::from_millis(rng.u64(30..2500));
        std::thread::sleep(moment);
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run {kill} ended by itself ({status}) before its kill at {moment:?}: the manifest is too small");
        }
        signal(&child, "KILL");
        assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 128 + 9);
    }
    // Submits go one at a time, at least 700 ms apart and each as long as the
    // sim takes to answer it: allow for every request left.
    let latency = humantime::parse_duration(submit_latency).expect("a duration");
    let per_request = Duration::from_millis(750).max(latency + Duration::from_millis(150));
    let requests = jobs as u32 * (per_job as u32).div_ceil(max_n as u32);
    let final_limit = RUN_LIMIT + per_request * requests;
    let last = run_bounded(&mut run(), final_limit);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_no_panic(&last.stderr);
    batch.assert_complete(images as usize);
    batch.assert_each_job_has(jobs, per_job);
    let stats = sim.stats();
    let report = CrashLoopReport {
        kills,
        images,
        images_generated: stat(&stats, "images_generated"),
        requests_created: stat(&stats, "requests_created"),
        requests_never_retrieved: stat(&stats, "requests_never_retrieved"),
        elapsed: start.elapsed(),
    };
    assert_eq!(
        stat(&stats, "requests_orphaned"),
        0,
        "images generated and neither retrieved nor cancelled: {report:?}\n{stats}"
    );
    assert_eq!(
        report.requests_never_retrieved, 0,
        "a request a killed run left on the Horde was never retrieved \
         (re-attached and fetched, or cancelled): {report:?}\n{stats}"
    );
    assert!(
        report.images_generated <= images + max_n * kills as u64,
        "more generated than asked plus one batch per kill: {report:?}\n{stats}"
    );
    report
}

#[test]
fn crash_loop_of_random_sigkills_loses_and_duplicates_nothing() {
    let kills = std::env::var("HORDE_BATCH_CRASH_KILLS")
        .ok()
        .map_or(6, |v| {
            v.parse().expect("HORDE_BATCH_CRASH_KILLS is a number")
        });
    let seed = std::env::var("HORDE_BATCH_CRASH_SEED")
        .ok()
        .map_or(0x6b11, |v| {
            v.parse().expect("HORDE_BATCH_CRASH_SEED is a number")
        });
    let latency = std::env::var("HORDE_BATCH_CRASH_SUBMIT_LATENCY").unwrap_or_else(|_| "0s".into());
    let busy = std::env::var("HORDE_BATCH_CRASH_BUSY_KEY")
        .ok()
        .map_or(0, |v| {
            v.parse().expect("HORDE_BATCH_CRASH_BUSY_KEY is a number")
        });
    print_crash_loop(&crash_loop(kills, seed, &latency, busy), seed);
}

#[test]
fn crash_loop_with_kills_between_post_and_answer_orphans_nothing() {
    // Each submit is answered 900 ms after the Horde queued it, and submits go
    // one at a time: most kills cut a POST's answer off. Every such request
    // must be found by the next run (after the find_user cache) and followed.
    print_crash_loop(&crash_loop(5, 0x9057, "900ms", 0), 0x9057);
}

#[test]
fn crash_loop_with_a_busy_key_finds_each_lost_submit_by_its_seeds() {
    // As above, with 20 finished requests of another client of the same size
    // on the key: every lost submit has several unknown candidates, and only
    // its seeds tell it apart. Each must be adopted, none left unretrieved,
    // none paid for twice.
    print_crash_loop(&crash_loop(5, 0xb05e, "900ms", 20), 0xb05e);
}

fn print_crash_loop(report: &CrashLoopReport, seed: u64) {
    println!(
        "crash-loop: PASS kills={} seed={seed} images={} generated={} requests={} never_retrieved={} elapsed={:.1}s",
        report.kills,
        report.images,
        report.images_generated,
        report.requests_created,
        report.requests_never_retrieved,
        report.elapsed.as_secs_f64()
    );
}

// -------------------------------------------------------------------- chaos

#[test]
fn every_chaos_knob_at_once_still_completes_and_is_reported_by_class() {
    let sim = Sim::start(&[
        "--workers",
        "6",
        "--latency",
        "20ms..80ms",
        "--fault-rate",
        "0.2",
        "--censor-rate",
        "0.25",
        "--expiry",
        "3s",
        "--cleanup-interval",
        "250ms",
        "--chaos-5xx",
        "0.04",
        "--chaos-drop",
        "0.04",
        "--chaos-malformed",
        "0.04",
        "--chaos-slow",
        "0.1",
        "--chaos-slow-delay",
        "1s",
        "--seed",
        "41",
    ]);
    let batch = Batch::new(
        "version: 1\nname: chaos\ndefaults: {models: [stable_diffusion]}\n\
         run: {retries: 30, max_n: 4}\njobs:\n  \
         - {name: a, prompt: 'a {red|green|blue} {cube|sphere}', images: 4}\n",
    );
    // Requests expire 3 s after their last activity here (20 minutes on the real
    // Horde, where checks are at most 30 s apart): checks scale down with it.
    let mut command = batch.command(&sim, "run");
    command.env("HORDE_BATCH_POLL_CAP", "1s");
    let run = run_bounded(&mut command, RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_panic(&run.stderr);
    batch.assert_complete(24);
    let stats = sim.stats();
    let chaos = &stats["chaos"];
    // The knobs fire at random: require that chaos happened, not each kind.
    assert!(
        stat(chaos, "server_errors") + stat(chaos, "dropped") + stat(chaos, "malformed") > 0
            && stat(chaos, "slowed") > 0
            && stat(&stats, "images_faulted") > 0
            && stat(&stats, "images_censored") > 0,
        "the knobs fired: {stats}"
    );
    let summary: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("horde-batch: "))
        .collect();
    let summary = summary.join("\n");
    let count_before = |label: &str| -> u64 {
        summary
            .split_once(label)
            .and_then(|(before, _)| before.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no `{label}` count in the summary:\n{summary}"))
    };
    assert!(count_before(" transient errors") > 0, "{summary}");
    let by_class = summary
        .lines()
        .find(|l| l.contains("failures by class:"))
        .unwrap_or_else(|| panic!("no `failures by class` line in the summary:\n{summary}"));
    // Each failure class (ARCHITECTURE.md) that the run met is named: expired requests
    // (the sim answered a poll with 404), censored images (rerolled; with
    // this many some are among those retrieved), and whatever else made it
    // resubmit (requests that came back short of faulted images).
    let class_count = |class: &str| -> u64 {
        by_class
            .split_once(&format!("{class}: "))
            .and_then(|(_, after)| after.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut expected: Vec<&[&str]> = Vec::new();
    let gone = |endpoint: &str| stats["calls"][endpoint]["404"].as_u64().unwrap_or(0);
    if gone("GET /api/v2/generate/check/{id}") + gone("GET /api/v2/generate/status/{id}") > 0 {
        expected.push(&["expired"]);
    }
    if stat(&stats, "images_censored") >= 6 {
        expected.push(&["censor"]);
    }
    if count_before(" resubmits") > class_count("expired") {
        expected.push(&["short", "fault", "censor"]);
    }
    for names in expected {
        assert!(
            names.iter().any(|name| by_class.contains(name)),
            "the failures-by-class line names none of {names:?}: {by_class}\nsim: {stats}"
        );
    }
}

// --------------------------------------------------------- hostile manifests

const SMOKE_MANIFEST: &str = "version: 1\nname: smoke\n\
    defaults: {models: [stable_diffusion], params: {width: 512, height: 512, steps: 20}}\n\
    jobs:\n  - name: smoke\n    prompt: 'a {red|green} {cube|sphere} on a table'\n    images: 2\n";

fn validate(paths: &[PathBuf]) -> Finished {
    run_bounded(
        Command::new(BIN).arg("validate").args(paths),
        Duration::from_secs(30),
    )
}

#[test]
fn random_bytes_and_mangled_manifests_are_refused_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let yamlish: Vec<u8> = b"abcxyz019 _-:,.[]{}&*!|>'\"#%@`?\n\t\\$~^=/".to_vec();
    let mut paths = Vec::new();
    for case in 0..60 {
        let bytes: Vec<u8> = match case % 3 {
            0 => (0..rng.usize(0..3000)).map(|_| rng.u8(..)).collect(),
            1 => (0..rng.usize(1..3000))
                .map(|_| yamlish[rng.usize(..yamlish.len())])
                .collect(),
            _ => {
                let mut bytes = SMOKE_MANIFEST.as_bytes().to_vec();
                for _ in 0..rng.usize(1..6) {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = yamlish[rng.usize(..yamlish.len())];
                }
                bytes
            }
        };
        let path = dir.path().join(format!("fuzz-{case}.yaml"));
        std::fs::write(&path, bytes).unwrap();
        paths.push(path);
    }
    let done = validate(&paths);
    assert_eq!(done.code, 2, "{}", done.stderr);
    assert_no_panic(&done.stderr);
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(
            done.stdout.contains(&*name) || done.stderr.contains(&*name),
            "nothing said about {name}"
        );
    }
}

#[test]
fn an_alias_bomb_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("version: 1\nname: bomb\ndefaults:\n  models: [stable_diffusion]\n  params:\n    loras:\n      - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (level, previous) in "bcdefghi".chars().zip("abcdefgh".chars()) {
        let refs = vec![format!("*{previous}"); 9].join(", ");
        text.push_str(&format!("      - &{level} [{refs}]\n"));
    }
    text.push_str("jobs: [{name: a, prompt: x}]\n");
    let path = dir.path().join("bomb.yaml");
    std::fs::write(&path, text).unwrap();
    let start = Instant::now();
    let done = validate(&[path]);
    assert_eq!(done.code, 2, "{}", done.stderr);
    assert_no_panic(&done.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(done.stderr.contains("bomb.yaml"), "{}", done.stderr);
}

#[test]
fn deeply_nested_yaml_is_refused_quickly() {
    // 200 KB of `[`: a hostile manifest well under the 8 MiB size limit.
    let dir = tempfile::tempdir().unwrap();
    let depth = 100_000;
    let path = dir.path().join("deep.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nname: deep\njobs: {}{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
    )
    .unwrap();
    let done = run_bounded(
        Command::new(BIN).arg("validate").arg(&path),
        Duration::from_secs(5),
    );
    assert_eq!(done.code, 2, "{}", done.stderr);
    assert_no_panic(&done.stderr);
}

#[test]
fn an_expansion_over_the_limit_names_its_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(
        &path,
        "version: 1\nname: big\ndefaults: {models: [stable_diffusion]}\njobs:\n  - name: a\n    prompt: 'x ${v}'\n    matrix: {steps: '1-100', cfg_scale: '1-30', v: '1-100'}\n",
    )
    .unwrap();
    let done = validate(&[path]);
    assert_eq!(done.code, 2, "{}", done.stderr);
    assert_no_panic(&done.stderr);
    assert!(done.stderr.contains("300000"), "{}", done.stderr);
}

#[test]
fn filename_templates_that_escape_the_output_are_refused() {
    for template in ["../x/{key}-{index}", "/abs/{key}-{index}"] {
        let batch = Batch::new(&format!(
            "version: 1\nname: escape\ndefaults: {{models: [stable_diffusion]}}\n\
             output: {{filename: '{template}'}}\njobs: [{{name: a, prompt: x}}]\n"
        ));
        let done = validate(std::slice::from_ref(&batch.manifest));
        assert_eq!(done.code, 2, "{template}: {}", done.stderr);
        assert_no_panic(&done.stderr);
        assert!(done.stderr.contains("filename"), "{}", done.stderr);
        // `run` refuses it before touching the network (port 9 would not answer).
        let run = run_bounded(
            batch
                .command_at("http://127.0.0.1:9/api/", "run")
                .env("RUST_LOG", "warn"),
            Duration::from_secs(20),
        );
        assert_eq!(run.code, 2, "{template}: {}", run.stderr);
        assert!(run.stderr.contains("filename"), "{}", run.stderr);
        assert!(
            !batch.dir.path().join("out").exists() && !Path::new("/abs").exists(),
            "nothing was created for {template}"
        );
    }
}

// ---------------------------------------------------- a hostile Horde server

/// A Horde that answers the endpoints `run` uses correctly, except for the
/// one hostile thing it was started with.
mod stub {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use base64::Engine as _;
    use futures::StreamExt as _;
    use serde_json::{json, Value};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Hostile {
        /// Nothing: a valid WebP inline (the control case).
        Nothing,
        /// Inline bytes that are a PNG header, not a WebP.
        NotWebp,
        /// A real WebP missing its last bytes.
        TruncatedWebp,
        /// An `img` URL with a `file:` scheme.
        FileUrl,
        /// An `img` URL whose body never ends.
        EndlessDownload,
        /// An `img` URL that sends one byte every 100 ms, forever.
        TrickleDownload,
        /// An `img` URL whose body is 33 MiB.
        OversizedDownload,
        /// A `/status` body over 64 MiB.
        OversizedStatus,
        /// The first submit is queued, but its answer never comes.
        LostFirstSubmitAnswer,
        /// The first submit is queued, but answered with a 502 (a gateway that lost the answer).
        FirstSubmitAnswer502,
        /// A two-image request reads `done: true, faulted: true` while its second
        /// image is still processing; that image arrives from the third check on.
        LateImage,
        /// `find_user` answers 404 `UserNotFound`, echoing the key it was sent.
        EchoKey,
        /// Every API call is answered with a 307 to another host (the `elsewhere` listener).
        Redirect,
        /// The first submit gets a 429 with this `Retry-After`.
        RetryAfterOnSubmit(&'static str),
        /// The first check gets a 429 with this `Retry-After`.
        RetryAfterOnCheck(&'static str),
        /// `GET /status` answers 503 forever (`DELETE` works).
        StatusFailsForever,
        /// Submits are answered; checks, status reads and cancels never are.
        Frozen,
    }

    pub struct Counters {
        pub submits: AtomicU64,
        pub checks: AtomicU64,
        pub statuses: AtomicU64,
        pub deletes: AtomicU64,
        pub downloads: AtomicU64,
        /// Requests that reached the `elsewhere` listener (the target of redirects).
        pub elsewhere: AtomicU64,
        /// Every path and query asked for, in order.
        pub paths: Mutex<Vec<String>>,
        /// Requests queued and neither fetched nor cancelled yet.
        pub never_retrieved: Mutex<BTreeSet<String>>,
    }

    struct Shared {
        hostile: Hostile,
        base: String,
        /// Where redirects point: a listener that only counts what reaches it.
        elsewhere: String,
        counters: Arc<Counters>,
        /// The seed each request was asked for, which its images report (as
        /// the real server's workers do).
        seeds: Mutex<std::collections::HashMap<String, u64>>,
    }

    pub struct Stub {
        pub url: String,
        pub counters: Arc<Counters>,
        shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    }

    /// A real 8×8 lossless WebP.
    pub fn small_webp() -> Vec<u8> {
        let pixels: Vec<u8> = (0..8 * 8 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out)
            .encode(&pixels, 8, 8, image_webp::ColorType::Rgb8)
            .unwrap();
        out
    }

    impl Stub {
        pub fn start(hostile: Hostile) -> Stub {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let counters = Arc::new(Counters {
                submits: AtomicU64::new(0),
                checks: AtomicU64::new(0),
                statuses: AtomicU64::new(0),
                deletes: AtomicU64::new(0),
                downloads: AtomicU64::new(0),
                elsewhere: AtomicU64::new(0),
                paths: Mutex::new(Vec::new()),
                never_retrieved: Mutex::new(BTreeSet::new()),
            });
            let elsewhere = count_connections(Arc::clone(&counters));
            let shared = Arc::new(Shared {
                hostile,
                base: base.clone(),
                elsewhere,
                counters: Arc::clone(&counters),
                seeds: Mutex::new(std::collections::HashMap::new()),
            });
            let app = Router::new()
                .route("/api/v2/find_user", get(find_user))
                .route("/api/v2/generate/async", post(submit))
                .route("/api/v2/generate/check/{id}", get(check))
                .route("/api/v2/generate/status/{id}", get(status).delete(cancel))
                .route("/img/{name}", get(image))
                .layer(axum::middleware::from_fn_with_state(
                    Arc::clone(&shared),
                    record_and_redirect,
                ))
                .with_state(shared);
            let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let server = axum::serve(listener, app);
                    tokio::select! {
                        _ = server => {}
                        _ = stopped => {}
                    }
                });
            });
            Stub {
                url: format!("{base}/api/"),
                counters,
                shutdown: Some(shutdown),
            }
        }

        pub fn count(counter: &AtomicU64) -> u64 {
            counter.load(Ordering::SeqCst)
        }

        pub fn never_retrieved(&self) -> BTreeSet<String> {
            self.counters.never_retrieved.lock().unwrap().clone()
        }

        pub fn paths(&self) -> Vec<String> {
            self.counters.paths.lock().unwrap().clone()
        }
    }

    /// A listener on another port standing for another host: it counts the
    /// connections that reach it and answers nothing. Returns its base URL.
    fn count_connections(counters: Arc<Counters>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counters.elsewhere.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        url
    }

    /// Records every path; under `Redirect`, answers every call with a 307 elsewhere.
    async fn record_and_redirect(
        State(shared): State<Arc<Shared>>,
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> Response {
        let uri = request.uri().clone();
        shared.counters.paths.lock().unwrap().push(
            uri.path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
        );
        if shared.hostile == Hostile::Redirect {
            let target = format!("{}{}", shared.elsewhere, uri.path());
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
            )
                .into_response();
        }
        next.run(request).await
    }

    impl Drop for Stub {
        fn drop(&mut self) {
            if let Some(shutdown) = self.shutdown.take() {
                let _ = shutdown.send(());
            }
        }
    }

    async fn find_user(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
        if shared.hostile == Hostile::EchoKey {
            let key = headers
                .get("apikey")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let message = format!("User with api_key '{key}' not found.");
            let body = json!({"message": message, "rc": "UserNotFound"});
            return (StatusCode::NOT_FOUND, Json(body)).into_response();
        }
        let active: Vec<String> = shared
            .counters
            .never_retrieved
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        Json(
            json!({"username": "stub#1", "id": 1, "kudos": 1000.0, "concurrency": 30,
                    "trusted": false, "active_generations": {"image": active, "text": []}}),
        )
        .into_response()
    }

    async fn submit(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
        let n = shared.counters.submits.fetch_add(1, Ordering::SeqCst);
        let id = format!("req-{n}");
        if let Some(seed) = body["params"]["seed"].as_str().and_then(|s| s.parse().ok()) {
            shared.seeds.lock().unwrap().insert(id.clone(), seed);
        }
        shared
            .counters
            .never_retrieved
            .lock()
            .unwrap()
            .insert(id.clone());
        match shared.hostile {
            Hostile::LostFirstSubmitAnswer if n == 0 => std::future::pending::<()>().await,
            Hostile::FirstSubmitAnswer502 if n == 0 => {
                return (StatusCode::BAD_GATEWAY, "bad gateway").into_response()
            }
            Hostile::RetryAfterOnSubmit(value) if n == 0 => {
                shared.counters.never_retrieved.lock().unwrap().remove(&id);
                return rate_limited(value);
            }
            _ => {}
        }
        (StatusCode::ACCEPTED, Json(json!({"id": id, "kudos": 10.0}))).into_response()
    }

    fn rate_limited(retry_after: &'static str) -> Response {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, retry_after)],
            Json(json!({"message": "2 per 1 second"})),
        )
            .into_response()
    }

    fn check_body() -> Value {
        json!({"finished": 1, "processing": 0, "restarted": 0, "waiting": 0, "done": true,
               "faulted": false, "wait_time": 0, "queue_position": 0, "kudos": 10.0,
               "is_possible": true})
    }

    /// Under `LateImage`: the second image is delivered from the third check on.
    fn late_image_delivered(shared: &Shared) -> bool {
        shared.counters.checks.load(Ordering::SeqCst) >= 3
    }

    async fn check(State(shared): State<Arc<Shared>>) -> Response {
        let n = shared.counters.checks.fetch_add(1, Ordering::SeqCst);
        match shared.hostile {
            Hostile::Frozen => std::future::pending::<()>().await,
            Hostile::RetryAfterOnCheck(value) if n == 0 => return rate_limited(value),
            Hostile::LateImage => {
                let mut body = check_body();
                body["faulted"] = json!(true);
                if late_image_delivered(&shared) {
                    body["finished"] = json!(2);
                } else {
                    body["processing"] = json!(1);
                }
                return Json(body).into_response();
            }
            _ => {}
        }
        Json(check_body()).into_response()
    }

    async fn cancel(State(shared): State<Arc<Shared>>, path: Path<String>) -> Response {
        shared.counters.deletes.fetch_add(1, Ordering::SeqCst);
        if shared.hostile == Hostile::Frozen {
            std::future::pending::<()>().await;
        }
        answer_status(&shared, path).await
    }

    async fn status(State(shared): State<Arc<Shared>>, path: Path<String>) -> Response {
        shared.counters.statuses.fetch_add(1, Ordering::SeqCst);
        match shared.hostile {
            Hostile::Frozen => std::future::pending::<()>().await,
            Hostile::StatusFailsForever => {
                let body = json!({"message": "Service Unavailable"});
                return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
            }
            _ => {}
        }
        answer_status(&shared, path).await
    }

    async fn answer_status(shared: &Shared, Path(id): Path<String>) -> Response {
        let late_image_pending =
            shared.hostile == Hostile::LateImage && !late_image_delivered(shared);
        if !late_image_pending {
            shared.counters.never_retrieved.lock().unwrap().remove(&id);
        }
        let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let img = match shared.hostile {
            Hostile::NotWebp => base64(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR this is not a webp image"),
            Hostile::TruncatedWebp => {
                let webp = small_webp();
                base64(&webp[..webp.len() - 7])
            }
            Hostile::FileUrl => "file:///etc/passwd".to_owned(),
            Hostile::EndlessDownload => format!("{}/img/endless", shared.base),
            Hostile::TrickleDownload => format!("{}/img/trickle", shared.base),
            Hostile::OversizedDownload => format!("{}/img/oversized", shared.base),
            Hostile::OversizedStatus => {
                // Valid JSON, but 65 MiB of it, streamed without a length.
                let head = Bytes::from(format!(
                    "{{\"finished\": 1, \"processing\": 0, \"restarted\": 0, \"waiting\": 0, \
                     \"done\": true, \"faulted\": false, \"wait_time\": 0, \"queue_position\": 0, \
                     \"kudos\": 10.0, \"is_possible\": true, \"generations\": [{{\"id\": \"gen-{id}\", \
                     \"seed\": \"1\", \"model\": \"stable_diffusion\", \"img\": \""
                ));
                let filler = Bytes::from(vec![b'A'; 1 << 20]);
                let tail = Bytes::from_static(b"\"}]}");
                let chunks = std::iter::once(head)
                    .chain(std::iter::repeat_n(filler, 65))
                    .chain(std::iter::once(tail))
                    .map(Ok::<_, std::io::Error>);
                return Body::from_stream(futures::stream::iter(chunks)).into_response();
            }
            _ => base64(&small_webp()),
        };
        let mut body = check_body();
        let seed = shared
            .seeds
            .lock()
            .unwrap()
            .get(&id)
            .copied()
            .unwrap_or(1234);
        let generation = |suffix: &str| {
            let seed = seed + u64::from(!suffix.is_empty());
            json!({
                "img": img, "seed": seed.to_string(), "id": format!("gen-{id}{suffix}"), "censored": false,
                "gen_metadata": [], "worker_id": "w-1", "worker_name": "stub worker",
                "model": "stable_diffusion", "state": "ok"
            })
        };
        body["generations"] = if shared.hostile == Hostile::LateImage && !late_image_pending {
            json!([generation(""), generation("-late")])
        } else {
            json!([generation("")])
        };
        body["shared"] = json!(false);
        Json(body).into_response()
    }

    async fn image(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
        shared.counters.downloads.fetch_add(1, Ordering::SeqCst);
        match name.as_str() {
            "endless" => {
                let chunk = Bytes::from(vec![b'R'; 64 * 1024]);
                let chunks = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
                Body::from_stream(chunks).into_response()
            }
            "trickle" => {
                let bytes = futures::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from_static(b"R")), ()))
                });
                Body::from_stream(bytes).into_response()
            }
            "oversized" => Body::from(vec![b'R'; 33 << 20]).into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

use stub::{Hostile, Stub};

const ONE_IMAGE: &str = "version: 1\nname: hostile\ndefaults: {models: [stable_diffusion]}\n\
    run: {retries: 1, timeouts: {download: 3s}}\njobs:\n  - {name: a, prompt: x, images: 1}\n";

/// Runs a one-image manifest against a stub with `hostile`; returns the run,
/// the batch and the stub.
fn run_against(hostile: Hostile) -> (Finished, Batch, Stub) {
    let stub = Stub::start(hostile);
    let batch = Batch::new(ONE_IMAGE);
    let run = run_bounded(
        &mut batch.command_at(&stub.url, "run"),
        Duration::from_secs(30),
    );
    assert_no_panic(&run.stderr);
    (run, batch, stub)
}

/// The run ended with its one job failed, said `cause`, and wrote no image.
fn assert_refused(hostile: Hostile, cause: &[&str]) -> (Batch, Stub) {
    let (run, batch, stub) = run_against(hostile);
    assert_eq!(run.code, 1, "{hostile:?}: the job fails\n{}", run.stderr);
    let webps = batch.webp_files();
    assert!(webps.is_empty(), "{hostile:?}: images written: {webps:?}");
    let errors = batch.jsonl("errors.jsonl");
    assert_eq!(errors.len(), 1, "{hostile:?}: one failed job");
    let lower = run.stderr.to_lowercase();
    assert!(
        cause.iter().any(|c| lower.contains(c)),
        "{hostile:?}: stderr says none of {cause:?}:\n{}",
        run.stderr
    );
    (batch, stub)
}

#[test]
fn the_stub_horde_is_a_working_horde() {
    // The control case: with nothing hostile the same manifest succeeds, so
    // the failures below come from the hostile replies alone.
    let (run, batch, stub) = run_against(Hostile::Nothing);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(batch.webp_files().len(), 1);
    assert_eq!(Stub::count(&stub.counters.submits), 1);
}

#[test]
fn bytes_that_are_not_webp_are_not_saved() {
    let (_, stub) = assert_refused(Hostile::NotWebp, &["not a riff file"]);
    assert_eq!(Stub::count(&stub.counters.submits), 2, "retried once");
}

#[test]
fn a_truncated_webp_is_not_saved() {
    let (_, stub) = assert_refused(Hostile::TruncatedWebp, &["truncated"]);
    assert_eq!(Stub::count(&stub.counters.submits), 2, "retried once");
}

#[test]
fn a_file_url_is_never_read() {
    let (_, stub) = assert_refused(Hostile::FileUrl, &["scheme", "file:"]);
    assert!(Stub::count(&stub.counters.submits) <= 2);
}

#[test]
fn an_endless_download_is_cut_off() {
    let (_, stub) = assert_refused(Hostile::EndlessDownload, &["larger than", "too large"]);
    assert!(Stub::count(&stub.counters.downloads) >= 1);
}

#[test]
fn a_download_that_trickles_forever_times_out() {
    let (_, stub) = assert_refused(Hostile::TrickleDownload, &["timed out", "timeout"]);
    assert!(Stub::count(&stub.counters.downloads) >= 1);
}

#[test]
fn a_download_over_32_mib_is_refused() {
    let (_, stub) = assert_refused(Hostile::OversizedDownload, &["larger than", "too large"]);
    assert!(Stub::count(&stub.counters.downloads) >= 1);
}

#[test]
fn an_oversized_status_body_fails_the_job_without_retrying_it() {
    // A body over the 64 MiB limit is a permanent error: one status call, no
    // back-off loop (the test allows 30 s in all).
    let (_, stub) = assert_refused(Hostile::OversizedStatus, &["larger than", "too large"]);
    assert_eq!(Stub::count(&stub.counters.submits), 1);
}

#[test]
fn a_request_whose_submit_answer_a_kill_cut_off_is_found_again() {
    // The first submit is queued on the Horde, but the run is killed before
    // its answer (the id) arrives: what a SIGKILL between the POST and
    // recording the id does, made certain. `find_user` lists the request for a
    // registered key; the next run must retrieve or cancel it rather than
    // leave it, paid for, on the Horde (the crash loop hits this at random).
    let stub = Stub::start(Hostile::LostFirstSubmitAnswer);
    let batch = Batch::new(ONE_IMAGE);
    let run = || {
        let mut command = batch.command_at(&stub.url, "run");
        command.env("AI_HORDE_API_KEY", "hb-stub-key");
        command
    };
    let mut child = run().spawn().unwrap();
    wait_until("the run's first submit", RUN_LIMIT, || {
        Stub::count(&stub.counters.submits) > 0
    });
    signal(&child, "KILL");
    assert_eq!(wait_exit(&mut child, RUN_LIMIT), 128 + 9);
    let done = run_bounded(&mut run(), Duration::from_secs(30));
    assert_eq!(done.code, 0, "{}", done.stderr);
    assert_eq!(batch.webp_files().len(), 1);
    assert!(
        stub.never_retrieved().is_empty(),
        "left on the Horde: {:?}; the resumed run made {} submit(s)",
        stub.never_retrieved(),
        Stub::count(&stub.counters.submits) - 1
    );
}

// ------------------------------------------------------------- disk trouble

const SMALL: &str = "version: 1\nname: small\ndefaults: {models: [stable_diffusion]}\n\
    jobs:\n  - {name: smoke, prompt: 'a {red|green|blue} cone', images: 2}\n";

fn fast_sim(seed: &str) -> Sim {
    Sim::unlimited(&["--workers", "4", "--latency", "10ms..30ms", "--seed", seed])
}

#[test]
fn an_output_directory_under_a_regular_file_is_refused_before_anything_is_spent() {
    let sim = fast_sim("51");
    let batch = Batch::new(SMALL);
    let blocker = batch.dir.path().join("blocker");
    std::fs::write(&blocker, "a regular file").unwrap();
    let out = blocker.join("out");
    let elsewhere = batch.dir.path().join("state");
    // With the default state folder (inside the output) and with one elsewhere.
    for state in [None, Some(&elsewhere)] {
        let mut command = batch.command(&sim, "run");
        command.arg("--out").arg(&out);
        if let Some(state) = state {
            command.arg("--state").arg(state);
        }
        let run = run_bounded(&mut command, RUN_LIMIT);
        assert_ne!(run.code, 0, "{}", run.stderr);
        assert_no_panic(&run.stderr);
        assert!(
            run.stderr.contains(&*blocker.to_string_lossy()),
            "the error names the path: {}",
            run.stderr
        );
        let stats = sim.stats();
        assert_eq!(calls_to(&stats, SUBMIT), 0, "nothing submitted: {stats}");
    }
    std::fs::remove_file(&blocker).unwrap();
    let run = run_bounded(
        batch.command(&sim, "run").arg("--out").arg(batch.out()),
        RUN_LIMIT,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    batch.assert_complete(6);
}

#[test]
fn an_image_folder_that_cannot_be_created_stops_the_run_and_a_rerun_completes() {
    let sim = Sim::start(&[
        "--workers",
        "2",
        "--latency",
        "100ms..300ms",
        "--seed",
        "52",
    ]);
    let batch = Batch::new(SMALL);
    // The default template writes `smoke/<key>-<index>.webp`: make `smoke` a file.
    std::fs::create_dir_all(batch.out()).unwrap();
    let blocker = batch.out().join("smoke");
    std::fs::write(&blocker, "in the way").unwrap();
    let mut command = batch.command(&sim, "run");
    let run = run_bounded(&mut command, RUN_LIMIT);
    // A folder that cannot be written is a setup problem, whenever it is found.
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_no_panic(&run.stderr);
    assert!(
        run.stderr.contains(&*blocker.to_string_lossy()),
        "the error names the path: {}",
        run.stderr
    );
    assert_eq!(
        stat(&sim.stats(), "requests_never_retrieved"),
        0,
        "what was in flight was retrieved or cancelled"
    );
    std::fs::remove_file(&blocker).unwrap();
    let run = batch.run(&sim);
    assert_eq!(run.code, 0, "{}", run.stderr);
    batch.assert_complete(6);
}

// ----------------------------------------------------------- damaged ledger

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

const PARTIAL: &str = "version: 1\nname: partial\ndefaults: {models: [stable_diffusion]}\n\
    run: {max_n: 2}\njobs:\n  - {name: smoke, prompt: 'a {red|green|blue} {cube|cone}', images: 2}\n";

/// A run of `PARTIAL` stopped by Ctrl-C after its first images.
fn partial_run(sim: &Sim) -> Batch {
    let batch = Batch::new(PARTIAL);
    let mut child = batch.command(sim, "run").spawn().unwrap();
    batch.wait_for_images(2, RUN_LIMIT);
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, RUN_LIMIT), 130);
    let saved = batch.index_lines().len();
    assert!((2..12).contains(&saved), "a partial run: {saved} images");
    batch
}

#[test]
fn a_damaged_ledger_stops_the_run_with_exit_4_before_anything_is_spent() {
    let sim = Sim::start(&[
        "--workers",
        "1",
        "--latency",
        "300ms..500ms",
        "--seed",
        "61",
    ]);
    let batch = partial_run(&sim);
    let ledger_files = walk_all(&batch.state().join("ledger"));
    assert!(!ledger_files.is_empty());
    let submits_before = calls_to(&sim.stats(), SUBMIT);
    let mut rng = fastrand::Rng::with_seed(61);
    type Damage = fn(&Path, &mut fastrand::Rng);
    let damages: [(&str, Damage); 3] = [
        ("garbage", |ledger, rng| {
            for file in walk_all(ledger) {
                let len = std::fs::metadata(&file).unwrap().len().max(64) as usize;
                let garbage: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                std::fs::write(file, garbage).unwrap();
            }
        }),
        ("garbage-db", |ledger, rng| {
            let db = ledger.join("db");
            let len = std::fs::metadata(&db).unwrap().len() as usize;
            std::fs::write(db, (0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>()).unwrap();
        }),
        ("deleted", |ledger, _| {
            std::fs::remove_dir_all(ledger).unwrap()
        }),
    ];
    for (name, damage) in damages {
        let state = batch.dir.path().join(format!("state-{name}"));
        copy_dir(&batch.state(), &state);
        damage(&state.join("ledger"), &mut rng);
        let run = run_bounded(
            batch.command(&sim, "run").arg("--state").arg(&state),
            RUN_LIMIT,
        );
        assert_no_panic(&run.stderr);
        assert_eq!(run.code, 4, "{name}: {}", run.stderr);
        assert!(
            run.stderr.contains("--rebuild-state"),
            "{name}: the message points at --rebuild-state: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&*state.to_string_lossy()),
            "{name}: the message names the state directory: {}",
            run.stderr
        );
        assert_eq!(
            calls_to(&sim.stats(), SUBMIT),
            submits_before,
            "{name}: nothing submitted"
        );
    }
}

#[test]
fn a_ledger_that_lost_its_tail_is_not_taken_for_the_current_one() {
    // The log of a finished run loses its last two thirds, as after a disk
    // error: sled opens the older state it still holds, in which finished
    // requests are pending again. A rerun must notice (the output's index has
    // images the ledger does not know) instead of paying for them again.
    let sim = fast_sim("63");
    let batch = Batch::new(PARTIAL);
    let run = batch.run(&sim);
    assert_eq!(run.code, 0, "{}", run.stderr);
    batch.assert_complete(12);
    let db = std::fs::OpenOptions::new()
        .write(true)
        .open(batch.state().join("ledger").join("db"))
        .unwrap();
    db.set_len(db.metadata().unwrap().len() / 3).unwrap();
    drop(db);
    let submits_before = calls_to(&sim.stats(), SUBMIT);
    let run = batch.run(&sim);
    assert_no_panic(&run.stderr);
    let summary: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("horde-batch"))
        .collect();
    assert_eq!(
        calls_to(&sim.stats(), SUBMIT),
        submits_before,
        "finished work was submitted again: {summary:#?}"
    );
    // What sled still holds decides which safe ending it is: records older than
    // the submits make the run notice the stale ledger (exit 4); records of
    // requests still in flight make it re-attach to them and find their images
    // already on disk (exit 0). Either way nothing was paid for twice.
    match run.code {
        4 => assert!(run.stderr.contains("--rebuild-state"), "{}", run.stderr),
        0 => assert!(
            summary.iter().any(|l| l.contains("0 submit")),
            "{summary:#?}"
        ),
        other => panic!("exit {other}: {summary:#?}"),
    }
    batch.assert_complete(12);
}

#[test]
fn rebuild_state_recovers_a_damaged_ledger_from_the_sidecars() {
    let sim = Sim::start(&[
        "--workers",
        "1",
        "--latency",
        "300ms..500ms",
        "--seed",
        "62",
    ]);
    let batch = partial_run(&sim);
    let saved = batch.index_lines().len() as u64;
    for file in walk_all(&batch.state().join("ledger")) {
        std::fs::write(file, b"garbage, not a ledger").unwrap();
    }
    // Images in progress when the partial run cancelled still arrive.
    wait_until("the sim to go idle", RUN_LIMIT, || {
        stat(&sim.stats(), "processing_images") == 0
    });
    let generated_before = stat(&sim.stats(), "images_generated");
    let run = run_bounded(batch.command(&sim, "run").arg("--rebuild-state"), RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_panic(&run.stderr);
    batch.assert_complete(12);
    batch.assert_each_job_has(6, 2);
    // Only the images missing on disk were asked for.
    assert_eq!(
        stat(&sim.stats(), "images_generated") - generated_before,
        12 - saved,
        "{}",
        run.stderr
    );
}

// ------------------------------------------------------------------ secrets

#[test]
fn the_api_key_appears_in_no_file_log_or_help() {
    let key = format!(
        "hb-secret-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    );
    let sim = Sim::start(&[
        "--workers",
        "4",
        "--latency",
        "10ms..30ms",
        "--api-key",
        &key,
        "--seed",
        "71",
    ]);
    let mut captured = String::new();
    let mut batches = Vec::new();
    for format in ["text", "json"] {
        let batch = Batch::new(SMALL);
        for subcommand in ["run", "cancel"] {
            let done = run_bounded(
                batch
                    .command(&sim, subcommand)
                    .args(["-vvv", "--log-format", format])
                    .env("AI_HORDE_API_KEY", &key)
                    .env("RUST_LOG", "trace"),
                RUN_LIMIT,
            );
            // Exit 0 also shows the key was used: the sim refuses unknown keys (exit 3).
            assert_eq!(done.code, 0, "{subcommand}: {}", done.stderr);
            assert!(
                done.stderr.lines().count() > 20,
                "trace logging is on ({subcommand}, {format})"
            );
            captured.push_str(&done.stdout);
            captured.push_str(&done.stderr);
        }
        batch.assert_complete(6);
        batches.push(batch);
    }
    for args in [&["run", "--help"][..], &["--help"], &["run", "-h"]] {
        let help = HordeBatch::new()
            .args(args)
            .env("AI_HORDE_API_KEY", &key)
            .run();
        captured.push_str(&help.stdout);
        captured.push_str(&help.stderr);
    }
    assert!(!captured.contains(&key), "the key was printed");
    for batch in &batches {
        let files = walk_all(batch.dir.path());
        assert!(files
            .iter()
            .any(|f| f.starts_with(batch.state().join("ledger"))));
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "the key is in {}",
                file.display()
            );
        }
    }
}

// ------------------------------------------- real-server fidelity (issue 11)

const TWO_IMAGES: &str = "version: 1\nname: hostile\ndefaults: {models: [stable_diffusion]}\n\
    run: {retries: 1, timeouts: {download: 3s}}\njobs:\n  - {name: a, prompt: x, images: 2}\n";

/// A registered-looking key that is not a UUID (as user keys are).
const USER_KEY: &str = "hb-user-key-0123456789";

/// `run` against the stub with a registered key, to its end.
fn run_with_key(stub: &Stub, batch: &Batch, envs: &[(&str, &str)]) -> Finished {
    let mut command = batch.command_at(&stub.url, "run");
    command
        .env("AI_HORDE_API_KEY", USER_KEY)
        .envs(envs.iter().copied());
    let run = run_bounded(&mut command, RUN_LIMIT);
    assert_no_panic(&run.stderr);
    assert!(
        !run.stderr.contains(USER_KEY) && !run.stdout.contains(USER_KEY),
        "the key was printed:\n{}",
        run.stderr
    );
    run
}

#[test]
fn a_submit_answer_lost_in_a_run_is_found_and_followed_not_paid_again() {
    // The Horde queued the request, but the answer came back as a 502: the
    // run waits out the find_user cache, finds the one request no ledger
    // knows, and follows it.
    let stub = Stub::start(Hostile::FirstSubmitAnswer502);
    let batch = Batch::new(ONE_IMAGE);
    let run = run_with_key(&stub, &batch, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(batch.webp_files().len(), 1);
    assert_eq!(
        Stub::count(&stub.counters.submits),
        1,
        "the lost request was adopted, not submitted again"
    );
    assert!(
        stub.never_retrieved().is_empty(),
        "{:?}",
        stub.never_retrieved()
    );
}

#[test]
fn an_image_still_processing_when_its_request_reads_done_is_retrieved() {
    // docs/horde-api.md §9.1: a faulted request reads `done` while an image is still
    // being made; that image arrives seconds later and is paid for.
    let stub = Stub::start(Hostile::LateImage);
    let batch = Batch::new(TWO_IMAGES);
    let run = run_with_key(&stub, &batch, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(batch.webp_files().len(), 2);
    assert_eq!(
        Stub::count(&stub.counters.submits),
        1,
        "nothing resubmitted"
    );
    assert!(
        stub.never_retrieved().is_empty(),
        "{:?}",
        stub.never_retrieved()
    );
}

#[test]
fn the_key_is_never_printed_even_when_the_server_echoes_it() {
    let stub = Stub::start(Hostile::EchoKey);
    let batch = Batch::new(ONE_IMAGE);
    for format in ["text", "json"] {
        let run = run_with_key(&stub, &batch, &[]);
        assert_eq!(run.code, 3, "{format}: {}", run.stderr);
        assert!(run.stderr.contains("not found"), "{}", run.stderr);
        let mut command = batch.command_at(&stub.url, "run");
        command
            .env("AI_HORDE_API_KEY", USER_KEY)
            .args(["--log-format", format, "-vv"]);
        let verbose = run_bounded(&mut command, RUN_LIMIT);
        assert!(!verbose.stderr.contains(USER_KEY), "{}", verbose.stderr);
    }
}

#[test]
fn a_user_key_is_never_put_into_a_url() {
    let stub = Stub::start(Hostile::Nothing);
    let batch = Batch::new(ONE_IMAGE);
    let run = run_with_key(&stub, &batch, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let paths = stub.paths();
    assert!(paths.iter().any(|p| p.contains("generate/async")));
    assert!(
        !paths.iter().any(|p| p.contains(USER_KEY)),
        "the key went into a URL: {paths:?}"
    );
}

#[test]
fn a_redirect_is_refused_and_the_key_reaches_no_other_host() {
    let stub = Stub::start(Hostile::Redirect);
    let batch = Batch::new(ONE_IMAGE);
    let run = run_with_key(&stub, &batch, &[]);
    assert_eq!(run.code, 2, "a wrong URL is a usage error\n{}", run.stderr);
    assert!(
        run.stderr.contains("redirect") && run.stderr.contains("http://127.0.0.1:"),
        "the redirect and its target are named:\n{}",
        run.stderr
    );
    assert_eq!(
        Stub::count(&stub.counters.elsewhere),
        0,
        "nothing reached the redirect's target"
    );
    assert_eq!(Stub::count(&stub.counters.submits), 0);
}

#[test]
fn absurd_retry_after_values_are_capped_and_never_panic() {
    for value in [
        "18446744073709551615",
        "1000000000",
        "Fri, 01 Jan 2100 00:00:00 GMT",
    ] {
        for hostile in [
            Hostile::RetryAfterOnSubmit(value),
            Hostile::RetryAfterOnCheck(value),
        ] {
            let stub = Stub::start(hostile);
            let batch = Batch::new(ONE_IMAGE);
            // The cap is 5 minutes for users; scaled down so the test waits it out.
            let run = run_with_key(&stub, &batch, &[("HORDE_BATCH_MAX_WAIT", "1s")]);
            assert_eq!(run.code, 0, "{hostile:?}: {}", run.stderr);
            assert!(
                run.stderr.contains("very long wait"),
                "{hostile:?}: the capped wait is logged:\n{}",
                run.stderr
            );
            assert_eq!(batch.webp_files().len(), 1, "{hostile:?}");
            assert!(stub.never_retrieved().is_empty(), "{hostile:?}");
        }
    }
}

/// Starts `run`, waits until `ready` holds for the stub, sends `sig`, and
/// returns the exit code and how long the exit took after the signal.
#[track_caller]
fn stop_when(
    stub: &Stub,
    batch: &Batch,
    ready: impl Fn(&Stub) -> bool,
    sig: &str,
) -> (i32, Duration) {
    let mut command = batch.command_at(&stub.url, "run");
    command
        .env("AI_HORDE_API_KEY", USER_KEY)
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    wait_until("the moment to stop the run", RUN_LIMIT, || ready(stub));
    let signalled = Instant::now();
    signal(&child, sig);
    let code = wait_exit(&mut child, RUN_LIMIT);
    (code, signalled.elapsed())
}

#[test]
fn a_stop_is_prompt_and_cancels_while_status_keeps_failing() {
    for sig in ["TERM", "INT", "HUP"] {
        let stub = Stub::start(Hostile::StatusFailsForever);
        let batch = Batch::new(ONE_IMAGE);
        let (code, took) = stop_when(
            &stub,
            &batch,
            |stub| Stub::count(&stub.counters.statuses) >= 2,
            sig,
        );
        assert_eq!(code, 130, "{sig}");
        assert!(
            took < Duration::from_secs(10),
            "{sig}: stopping took {took:?}"
        );
        assert!(Stub::count(&stub.counters.deletes) >= 1, "{sig}: cancelled");
        assert!(stub.never_retrieved().is_empty(), "{sig}");
    }
}

#[test]
fn a_stop_ends_within_ten_seconds_when_the_horde_freezes() {
    let stub = Stub::start(Hostile::Frozen);
    let batch = Batch::new(ONE_IMAGE);
    let (code, took) = stop_when(
        &stub,
        &batch,
        |stub| Stub::count(&stub.counters.checks) >= 1,
        "TERM",
    );
    assert_eq!(code, 130);
    assert!(took < Duration::from_secs(11), "stopping took {took:?}");
    assert!(
        Stub::count(&stub.counters.deletes) >= 1,
        "a cancel was tried"
    );
    // The ledger still holds the request, so `cancel` can reach it later.
    let report = batch.status_json();
    assert_eq!(report["in_flight"].as_array().unwrap().len(), 1, "{report}");
}

#[test]
fn giving_up_on_a_request_cancels_it_and_records_why() {
    let stub = Stub::start(Hostile::StatusFailsForever);
    let batch = Batch::new(ONE_IMAGE);
    let run = run_with_key(&stub, &batch, &[("HORDE_BATCH_RETRY_BASE", "1ms")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(Stub::count(&stub.counters.deletes) >= 1, "cancelled");
    assert!(stub.never_retrieved().is_empty());
    let errors = batch.jsonl("errors.jsonl");
    assert_eq!(errors.len(), 1);
    let message = errors[0]["message"].as_str().unwrap();
    assert!(message.contains("cancelled"), "{message}");
    assert_eq!(errors[0]["class"], "transient");
    // A rerun submits again (nothing is left on the Horde to adopt).
    assert_eq!(Stub::count(&stub.counters.submits), 1);
}

/// Calls to the Horde API the sim answered (image downloads are not API calls).
fn api_calls(stats: &Value) -> u64 {
    stats["calls"].as_object().map_or(0, |endpoints| {
        endpoints
            .keys()
            .filter(|endpoint| endpoint.contains(" /api/"))
            .map(|endpoint| calls_to(stats, endpoint))
            .sum()
    })
}

#[test]
fn polling_needs_no_wait_time_and_stays_cheap_when_it_reads_zero() {
    // The sim's defaults are the real server's shape: small jobs read
    // `wait_time: 0` while they still wait (docs/horde-api.md §9.1). Four requests of ten
    // images: the run must not poll every second because of it.
    let sim = Sim::start(&["--seed", "11"]);
    let batch = Batch::new(
        "version: 1\nname: polls\ndefaults: {models: [stable_diffusion], \
         params: {width: 512, height: 512, steps: 20}}\nrun: {max_n: 10}\n\
         jobs:\n  - {name: a, prompt: a lighthouse, images: 40}\n",
    );
    let run = run_bounded(&mut batch.command(&sim, "run"), RUN_LIMIT * 2);
    assert_eq!(run.code, 0, "{}", run.stderr);
    batch.assert_complete(40);
    let stats = sim.stats();
    assert_eq!(calls_to(&stats, SUBMIT), 4, "{stats}");
    let per_image = api_calls(&stats) as f64 / 40.0;
    // Polling at the server's hint gave 2.42 here; the floor is 0.35.
    assert!(
        per_image <= 0.6,
        "{per_image:.2} API calls per image\n{stats}"
    );
}

#[test]
fn every_image_of_a_request_carries_the_requests_submit_time() {
    let sim = fast_sim("12");
    let batch = Batch::new(
        "version: 1\nname: times\ndefaults: {models: [stable_diffusion]}\nrun: {max_n: 5}\n\
         jobs:\n  - {name: a, prompt: a kite, images: 10}\n",
    );
    let run = run_bounded(&mut batch.command(&sim, "run"), RUN_LIMIT);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut by_request: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // A sidecar is the `.json` beside its `.webp`.
    for sidecar in batch
        .webp_files()
        .into_iter()
        .map(|image| image.with_extension("json"))
    {
        let sidecar: Value =
            serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap();
        by_request
            .entry(sidecar["horde_request_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(sidecar["submitted_at"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_request.len(), 2, "{by_request:?}");
    for (request, times) in &by_request {
        assert_eq!(
            times.len(),
            1,
            "request {request} has several submit times: {times:?}"
        );
    }
}

#[test]
fn answers_lost_during_a_run_leave_nothing_orphaned_with_a_registered_key() {
    // One API answer in five is lost after the Horde carried the call out:
    // submits among them are found after the find_user cache and followed.
    let key = "hb-lost-answers-key";
    let sim = Sim::start(&[
        "--workers",
        "4",
        "--latency",
        "10ms..40ms",
        "--api-key",
        key,
        "--chaos-lost-answer",
        "0.2",
        "--seed",
        "13",
    ]);
    let batch = Batch::new(SMALL);
    let mut command = batch.command(&sim, "run");
    command.env("AI_HORDE_API_KEY", key);
    let run = run_bounded(&mut command, RUN_LIMIT * 2);
    assert_no_panic(&run.stderr);
    assert_eq!(run.code, 0, "{}", run.stderr);
    batch.assert_complete(6);
    let stats = sim.stats();
    assert!(stat(&stats["chaos"], "lost_answers") > 0, "{stats}");
    assert_eq!(stat(&stats, "requests_orphaned"), 0, "{stats}");
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0, "{stats}");
}

/// A loopback URL nothing listens on.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/", listener.local_addr().unwrap());
    drop(listener);
    url
}

#[test]
fn an_unreachable_horde_ends_the_run_within_its_bound() {
    let batch = Batch::new(ONE_IMAGE);
    let mut command = batch.command_at(&refused_url(), "run");
    command.args(["--unreachable-after", "2s"]);
    let run = run_bounded(&mut command, RUN_LIMIT);
    assert_no_panic(&run.stderr);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr.contains("gave no successful answer") && run.stderr.contains("127.0.0.1"),
        "the error names the Horde and the bound:\n{}",
        run.stderr
    );
}

#[test]
fn cancel_says_what_it_could_not_cancel_and_fails() {
    // A request left on the Horde by a killed run, then the Horde is gone.
    let stub = Stub::start(Hostile::Frozen);
    let batch = Batch::new(ONE_IMAGE);
    let (code, _) = stop_when(
        &stub,
        &batch,
        |stub| Stub::count(&stub.counters.checks) >= 1,
        "KILL",
    );
    assert_eq!(code, 128 + 9);
    let cancel = run_bounded(&mut batch.command_at(&refused_url(), "cancel"), RUN_LIMIT);
    assert_no_panic(&cancel.stderr);
    assert_eq!(cancel.code, 6, "{}", cancel.stderr);
    assert!(
        cancel.stderr.contains("cancelled 0 request(s)")
            && cancel.stderr.contains("1 could not be cancelled"),
        "{}",
        cancel.stderr
    );
}

#[test]
fn cancel_of_a_lost_submit_without_a_horde_fails_with_exit_6() {
    // A run killed while its submit's answer is held back leaves a lost
    // submit; `cancel` cannot look for it when the Horde is gone, so the
    // request may still run there: that is not a clean finish.
    let stub = Stub::start(Hostile::LostFirstSubmitAnswer);
    let batch = Batch::new(ONE_IMAGE);
    let (code, _) = stop_when(
        &stub,
        &batch,
        |stub| Stub::count(&stub.counters.submits) >= 1,
        "KILL",
    );
    assert_eq!(code, 128 + 9);
    let mut command = batch.command_at(&refused_url(), "cancel");
    command.env("AI_HORDE_API_KEY", USER_KEY);
    let cancel = run_bounded(&mut command, RUN_LIMIT);
    assert_no_panic(&cancel.stderr);
    assert!(
        cancel
            .stderr
            .contains("1 lost submit(s) could not be found"),
        "{}",
        cancel.stderr
    );
    assert_eq!(cancel.code, 6, "{}", cancel.stderr);
}

#[test]
fn a_kudos_estimate_without_a_horde_is_not_a_usage_error() {
    let batch = Batch::new(ONE_IMAGE);
    HordeBatch::new()
        .args(["plan", "--kudos", "--horde-url", &refused_url()])
        .arg(&batch.manifest)
        .status(6)
        .run();
}

#[test]
fn a_request_no_worker_can_serve_is_reported_at_its_first_check() {
    // Submitted all the same (`--wait-for-workers`): the Horde answers
    // `is_possible: false`. The run says so, and why, at the first check, long
    // before `run.timeouts.no_worker` fails the job.
    let sim = Sim::unlimited(&["--workers", "2", "--latency", "10ms", "--seed", "33"]);
    let batch = Batch::new(
        "version: 1\nname: nobody\ndefaults: {models: [no_such_model]}\n\
         run: {timeouts: {no_worker: 4s}}\njobs:\n  - {name: a, prompt: a kite, images: 1}\n",
    );
    let run = batch
        .horde_batch(&sim, "run")
        .arg("--wait-for-workers")
        .status(1)
        .run();
    let warned = run
        .stderr
        .find("no worker online serves no_such_model")
        .unwrap_or_else(|| panic!("no early warning:\n{}", run.stderr));
    let failed = run
        .stderr
        .find("no worker could serve the request for 4s")
        .unwrap_or_else(|| panic!("the job did not fail at the timeout:\n{}", run.stderr));
    assert!(warned < failed, "{}", run.stderr);
}
