//! Key pools end to end: a run with several API keys against `horde-batch sim`
//! with several registered users. Both keys are used and kept under their
//! concurrency, a revoked key is retired while the other finishes the run,
//! resume and `cancel` after a kill act with the key each request belongs to,
//! and no key ever reaches a file, a log or the terminal.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use horde_batch::scheduler::fingerprint;
use serde_json::{json, Value};

use crate::common::{
    files_containing, run_bounded, signal, stat, wait_exit, Batch, Sim, TEST_FIND_USER_CACHE,
};

const KEY_A: &str = "pool-key-alpha-0123456789";
const KEY_B: &str = "pool-key-bravo-9876543210";

/// 60 images of 64x64 in 15 jobs of 4.
fn batch(max_n: u32) -> Batch {
    Batch::new(&format!(
        "version: 1\nname: pool\ndefaults: {{models: [stable_diffusion], params: {{width: 64, height: 64}}}}\n\
         run: {{max_n: {max_n}}}\njobs:\n  - name: shape\n    \
         prompt: 'a {{red|green|blue}} {{cube|cone|torus|ring|star}}'\n    images: 4\n"
    ))
}

/// Writes each key into its own file beside (not inside) the output folder.
fn key_files(batch: &Batch) -> Vec<PathBuf> {
    [KEY_A, KEY_B]
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let path = batch.dir.path().join(format!("key-{index}.txt"));
            std::fs::write(&path, format!("{key}\n")).unwrap();
            path
        })
        .collect()
}

fn with_keys(command: &mut std::process::Command, files: &[PathBuf]) {
    for file in files {
        command.arg("--api-key-file").arg(file);
    }
}

/// `/sim/users` entry of the registered user `id` (1 for KEY_A, 2 for KEY_B).
fn user(sim: &Sim, id: u64) -> Value {
    sim.get_json("/sim/users")["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == id)
        .cloned()
        .unwrap()
}

/// Neither key is in any file of the batch but its own key file, nor in `text`.
fn assert_no_key_anywhere(batch: &Batch, text: &str) {
    for key in [KEY_A, KEY_B] {
        let found: Vec<PathBuf> = files_containing(batch.dir.path(), key)
            .into_iter()
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with("key-"))
            .collect();
        assert!(found.is_empty(), "the key was written to {found:?}");
        assert!(!text.contains(key), "the key was printed:\n{text}");
    }
}

#[test]
fn a_pool_of_two_keys_uses_both_and_never_passes_their_concurrency() {
    let sim = Sim::unlimited(&[
        "--workers",
        "6",
        "--latency",
        "30ms..80ms",
        "--seed",
        "151",
        "--background-load",
        "6",
        "--api-key",
        &format!("{KEY_A},concurrency=6"),
        "--api-key",
        &format!("{KEY_B},concurrency=6"),
    ]);
    let batch = batch(4);
    let files = key_files(&batch);
    let mut command = batch.command(&sim, "run");
    with_keys(&mut command, &files);
    let finished = run_bounded(&mut command, Duration::from_secs(120));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    batch.assert_complete(60);
    let stats = sim.stats();
    assert_eq!(stat(&stats, "too_many_prompts"), 0, "{stats}");
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0, "{stats}");
    let (a, b) = (user(&sim, 1), user(&sim, 2));
    let made = |u: &Value| u["requests_made"].as_u64().unwrap();
    assert!(made(&a) > 0 && made(&b) > 0, "both keys submit: {a} {b}");
    assert_eq!(
        a["images_received"].as_u64().unwrap() + b["images_received"].as_u64().unwrap(),
        60
    );
    assert!(
        sim.get_json("/sim/users")["background_served"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The log names the keys by fingerprint only.
    assert!(
        finished.stderr.contains(&fingerprint(KEY_A)),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains(&fingerprint(KEY_B)),
        "{}",
        finished.stderr
    );
    assert_no_key_anywhere(&batch, &finished.stderr);
}

#[test]
fn a_key_revoked_mid_run_is_retired_and_the_other_brings_every_image() {
    let sim = Sim::unlimited(&[
        "--workers",
        "2",
        "--latency",
        "150ms..250ms",
        "--seed",
        "152",
        "--api-key",
        &format!("{KEY_A},concurrency=4"),
        "--api-key",
        &format!("{KEY_B},concurrency=4"),
    ]);
    let batch = batch(2);
    let files = key_files(&batch);
    let log = batch.dir.path().join("run.log");
    let mut command = batch.command(&sim, "run");
    with_keys(&mut command, &files);
    let mut child = command
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    batch.wait_for_images(6, Duration::from_secs(60));
    let revoked = sim.post_json("/sim/revoke", &json!({ "apikey": KEY_A }));
    assert_eq!(revoked["revoked"], true);
    let made_before = user(&sim, 1)["requests_made"].as_u64().unwrap();
    let code = wait_exit(&mut child, Duration::from_secs(120));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(60);
    let retired: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("retired an API key"))
        .collect();
    assert_eq!(retired.len(), 1, "one clear line: {stderr}");
    assert!(retired[0].contains(&fingerprint(KEY_A)), "{stderr}");
    assert!(retired[0].contains("InvalidAPIKey"), "{stderr}");
    // Nothing more went through the revoked key; the other one did the rest.
    assert_eq!(
        user(&sim, 1)["requests_made"].as_u64().unwrap(),
        made_before
    );
    assert!(user(&sim, 2)["requests_made"].as_u64().unwrap() > 0);
    assert_eq!(stat(&sim.stats(), "requests_never_retrieved"), 0);
    std::fs::remove_file(&log).unwrap();
    assert_no_key_anywhere(&batch, &stderr);
}

/// A sim whose submit answers take 2 s (the request exists at once), so a
/// kill almost always catches each key between a POST and its answer.
fn slow_answer_sim(seed: &str) -> Sim {
    Sim::unlimited(&[
        "--workers",
        "4",
        "--latency",
        "30ms..60ms",
        "--seed",
        seed,
        "--submit-latency",
        "2s",
        "--find-user-cache",
        TEST_FIND_USER_CACHE,
        "--api-key",
        KEY_A,
        "--api-key",
        KEY_B,
    ])
}

/// Runs with both keys until some images are saved, then SIGKILLs the run.
fn killed_run(sim: &Sim, batch: &Batch, files: &[PathBuf]) {
    let mut command = batch.command(sim, "run");
    with_keys(&mut command, files);
    let mut child = command.stderr(Stdio::null()).spawn().unwrap();
    batch.wait_for_images(4, Duration::from_secs(60));
    signal(&child, "KILL");
    wait_exit(&mut child, Duration::from_secs(10));
}

#[test]
fn resume_after_a_kill_finds_each_lost_submit_with_its_own_key() {
    let sim = slow_answer_sim("153");
    let batch = batch(2);
    let files = key_files(&batch);
    killed_run(&sim, &batch, &files);
    let mut command = batch.command(&sim, "run");
    with_keys(&mut command, &files);
    let finished = run_bounded(&mut command, Duration::from_secs(180));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    batch.assert_complete(60);
    let stats = sim.stats();
    // A lost submit looked for with the wrong key's list stays on the Horde unretrieved.
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0, "{stats}");
    assert_eq!(stat(&stats, "requests_orphaned"), 0, "{stats}");
    assert!(
        finished
            .stderr
            .contains("found the request of a submit whose answer was lost"),
        "the kill caught a submit in flight: {}",
        finished.stderr
    );
    assert_no_key_anywhere(&batch, &finished.stderr);
}

#[test]
fn cancel_after_a_kill_names_a_missing_key_and_cancels_with_the_right_ones() {
    let sim = slow_answer_sim("154");
    let batch = batch(2);
    let files = key_files(&batch);
    killed_run(&sim, &batch, &files);

    // Only KEY_A: KEY_B's lost submits cannot be looked for; cancel says whose they are.
    let mut only_a = batch.command(&sim, "cancel");
    with_keys(&mut only_a, &files[..1]);
    let first = run_bounded(&mut only_a, Duration::from_secs(60));
    assert_ne!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stderr.contains(&fingerprint(KEY_B)),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("not among the keys given"),
        "{}",
        first.stderr
    );

    // Both keys: every request the killed run left is cancelled.
    let mut both = batch.command(&sim, "cancel");
    with_keys(&mut both, &files);
    let second = run_bounded(&mut both, Duration::from_secs(60));
    assert_eq!(second.code, 0, "{}", second.stderr);
    let stats = sim.stats();
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0, "{stats}");
    assert!(stat(&stats, "requests_cancelled") > 0, "{stats}");
    assert_no_key_anywhere(&batch, &format!("{}{}", first.stderr, second.stderr));
}
