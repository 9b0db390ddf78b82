//! Checked-in files of every on-disk format as version 1 wrote them
//! (`tests/fixtures/v1/`), read back through the real code paths: if a change
//! stops horde-batch reading what a user's earlier run left behind, a test
//! here fails. The fixtures are never regenerated to make a test pass; a
//! format change adds a `v2` folder and a migration (see the folder's README).
//!
//! [`write_v1_fixtures`] is the generator that wrote them, kept so the
//! fixtures stay reproducible; it runs only when asked explicitly and refuses
//! to overwrite an existing folder.

use std::path::{Path, PathBuf};

use horde_batch::output::{
    IndexRow, JobError, JobResult, OutputDir, Sidecar, ERRORS_FILE, INDEX_FILE, RESULTS_FILE,
};
use horde_batch::progress::{read_status_file, InFlight, StatusReport, STATUS_FILE};
use horde_batch::store::{
    RecordedError, RequestKey, RequestRecord, RequestState, RunMeta, SavedImage, Store,
};
use serde_json::{json, Value};

use crate::common::{walk, HordeBatch, Sim, TEST_FIND_USER_CACHE};

/// Set to `1` to let [`write_v1_fixtures`] write `tests/fixtures/v1/`.
const WRITE_ENV: &str = "HORDE_BATCH_WRITE_FIXTURES";

/// Two job keys of the ledger fixture (opaque to the store; 16 hex digits like real ones).
const JOB_A: &str = "6a1f0c9e2b7d4358";
const JOB_B: &str = "d04e7b21c8a9f356";

/// Horde request and generation ids of the ledger fixture (UUIDs, as the Horde uses).
const A0_HORDE_ID: &str = "0b6e2f44-1c8d-4a53-9e7f-2d1a6c3b5e01";
const A1_EXPIRED_ID: &str = "5f0c1a2b-3d4e-4f60-8a7b-9c0d1e2f3a02";
const A1_HORDE_ID: &str = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c03";
const B0_HORDE_ID: &str = "9d8c7b6a-5f4e-4d3c-9b2a-1f0e9d8c7b04";
const B1_HORDE_ID: &str = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e05";
const GEN_A0: &str = "e0a1b2c3-d4e5-4f60-9172-83a4b5c6d700";
const GEN_A1: &str = "e0a1b2c3-d4e5-4f60-9172-83a4b5c6d701";
const GEN_A2: &str = "e0a1b2c3-d4e5-4f60-9172-83a4b5c6d702";
const GEN_A3: &str = "e0a1b2c3-d4e5-4f60-9172-83a4b5c6d703";

/// The fixed clock of the fixtures: 2026-01-15T10:00:00Z.
const T0: u64 = 1_768_471_200_000;

/// A pid no Linux process can have (pid_max is at most 2^22, pids are below
/// it), written as a run killed with SIGKILL leaves its `run.pid`.
const STALE_PID: u32 = 4_194_304;

fn v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// Copies a fixture folder into a fresh temp dir (opening may write) and returns both.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let to = temp.path().join(name);
    copy_dir(&v1().join(name), &to);
    (temp, to)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// ---------------------------------------------------------------- ledger ---

#[test]
fn v1_ledger_opens_and_every_record_reads_back() {
    let (_temp, state) = copy_fixture("state");
    assert_eq!(
        std::fs::read_to_string(state.join("run.pid"))
            .unwrap()
            .trim(),
        STALE_PID.to_string(),
        "the fixture carries a killed run's pidfile"
    );
    let store = Store::open(&state).expect("a v1 ledger opens");
    // The stale pidfile was taken over, not an obstacle.
    assert_eq!(
        std::fs::read_to_string(state.join("run.pid"))
            .unwrap()
            .trim(),
        std::process::id().to_string()
    );

    assert_eq!(store.len(), 5);
    let a0 = store.get(&RequestKey::new(JOB_A, 0)).unwrap().unwrap();
    assert_eq!(a0.state, RequestState::Done);
    assert_eq!((a0.first_index, a0.n, a0.attempts), (0, 2, 1));
    assert_eq!(a0.horde_ids, [A0_HORDE_ID]);
    assert_eq!(
        a0.images.get(&0),
        Some(&SavedImage {
            generation_id: GEN_A0.into(),
            file_name: format!("cats/{JOB_A}-0.webp"),
            censored: false,
        })
    );
    assert_eq!(
        a0.images.get(&1),
        Some(&SavedImage {
            generation_id: GEN_A1.into(),
            file_name: format!("cats/{JOB_A}-1.webp"),
            censored: true,
        })
    );
    assert!(a0.assigned.is_empty() && a0.missing_indices().is_empty());
    assert_eq!(a0.kudos_charged, 11.5);
    assert_eq!((a0.created_ms, a0.updated_ms), (T0, T0 + 9_000));
    assert_eq!(a0.last_error, None);

    let a1 = store.get(&RequestKey::new(JOB_A, 1)).unwrap().unwrap();
    assert_eq!(
        a1.state,
        RequestState::Submitted {
            horde_id: A1_HORDE_ID.into(),
            n: 1,
            submitted_ms: T0 + 61_000,
        }
    );
    assert_eq!((a1.first_index, a1.n, a1.attempts), (2, 2, 2));
    assert_eq!(a1.horde_ids, [A1_EXPIRED_ID, A1_HORDE_ID]);
    assert_eq!(a1.horde_id(), Some(A1_HORDE_ID));
    assert_eq!(a1.images.keys().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(a1.images[&2].generation_id, GEN_A2);
    assert_eq!(a1.assigned.get(&3).map(String::as_str), Some(GEN_A3));
    assert_eq!(a1.missing_indices(), [3]);
    assert_eq!(
        a1.last_error,
        Some(RecordedError {
            class: "expired".into(),
            message: "the Horde no longer knows the request (RequestNotFound)".into(),
        })
    );
    assert_eq!(a1.kudos_charged, 5.75);

    let a2 = store.get(&RequestKey::new(JOB_A, 2)).unwrap().unwrap();
    assert_eq!(
        a2.state,
        RequestState::Submitting {
            attempt: 1,
            n: 1,
            since_ms: T0 + 62_000,
        }
    );
    assert_eq!((a2.first_index, a2.n, a2.attempts), (4, 1, 1));
    assert!(a2.horde_ids.is_empty() && a2.images.is_empty());
    assert_eq!(a2.horde_id(), None);

    let b0 = store.get(&RequestKey::new(JOB_B, 0)).unwrap().unwrap();
    let refused = "the Horde refused the prompt (400 CorruptPrompt)";
    assert_eq!(
        b0.state,
        RequestState::Failed {
            class: "permanent".into(),
            message: refused.into(),
        }
    );
    assert_eq!((b0.first_index, b0.n, b0.attempts), (0, 1, 3));
    assert_eq!(b0.horde_ids, [B0_HORDE_ID]);
    assert_eq!(
        b0.last_error
            .as_ref()
            .map(|e| (e.class.as_str(), e.message.as_str())),
        Some(("permanent", refused))
    );

    let b1 = store.get(&RequestKey::new(JOB_B, 1)).unwrap().unwrap();
    assert_eq!(
        b1.state,
        RequestState::Cancelled {
            horde_id: B1_HORDE_ID.into(),
            cancelled_ms: T0 + 70_000,
        }
    );
    assert_eq!((b1.first_index, b1.n, b1.attempts), (1, 1, 1));
    assert_eq!(b1.horde_ids, [B1_HORDE_ID]);
    assert_eq!(b1.kudos_charged, 0.0);

    // The queries a resumed run and `cancel` depend on.
    let in_flight: Vec<_> = store
        .in_flight()
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        in_flight,
        [RequestKey::new(JOB_A, 1), RequestKey::new(JOB_A, 2)]
    );
    let slots: Vec<u32> = store
        .job_slots(JOB_A)
        .unwrap()
        .iter()
        .map(|(key, _)| key.slot)
        .collect();
    assert_eq!(slots, [0, 1, 2]);
    let counts = store.counts().unwrap();
    assert_eq!(
        (
            counts.submitting,
            counts.submitted,
            counts.done,
            counts.failed,
            counts.cancelled,
            counts.images_saved
        ),
        (1, 1, 1, 1, 1, 3)
    );
    assert_eq!(counts.kudos_charged, 11.5 + 5.75 + 2.0);
    assert_eq!(
        store.run_meta().unwrap(),
        Some(RunMeta {
            schema: 1,
            tool_version: "0.1.0".into(),
            manifest_path: "manifests/animals.yaml".into(),
            manifest_name: "animals".into(),
            first_started_ms: T0,
            last_started_ms: T0 + 60_000,
            run_count: 2,
        })
    );

    // The old ledger stays writable: a change survives closing and reopening it.
    store
        .update(&RequestKey::new(JOB_A, 2), |record| {
            record.map(|mut record| {
                record.transition(RequestState::Done, T0 + 90_000);
                record
            })
        })
        .unwrap();
    block_on(store.flush()).unwrap();
    drop(store);
    assert!(
        !state.join("run.pid").exists(),
        "closing removes our pidfile"
    );
    let store = Store::open(&state).unwrap();
    assert_eq!(store.in_flight().unwrap().len(), 1);
    assert_eq!(
        store
            .get(&RequestKey::new(JOB_A, 2))
            .unwrap()
            .unwrap()
            .state,
        RequestState::Done
    );
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds")
        .block_on(future)
}

/// The records of the ledger fixture, built through the record API the engine uses.
fn ledger_records() -> Vec<RequestRecord> {
    let image = |index: u32, generation_id: &str, censored: bool| SavedImage {
        generation_id: generation_id.into(),
        file_name: format!("cats/{JOB_A}-{index}.webp"),
        censored,
    };

    // A0: both images saved on the first attempt.
    let mut a0 = RequestRecord::first_attempt(&RequestKey::new(JOB_A, 0), 0, 2, T0);
    a0.transition(submitted(A0_HORDE_ID, 2, T0 + 1_000), T0 + 1_000);
    a0.assigned.insert(0, GEN_A0.into());
    a0.assigned.insert(1, GEN_A1.into());
    a0.save_image(0, image(0, GEN_A0, false), T0 + 8_000);
    a0.save_image(1, image(1, GEN_A1, true), T0 + 8_500);
    a0.kudos_charged = 11.5;
    a0.transition(RequestState::Done, T0 + 9_000);

    // A1: the first request expired after one image; resubmitted for the other.
    let mut a1 = RequestRecord::first_attempt(&RequestKey::new(JOB_A, 1), 2, 2, T0);
    a1.transition(submitted(A1_EXPIRED_ID, 2, T0 + 2_000), T0 + 2_000);
    a1.save_image(2, image(2, GEN_A2, false), T0 + 30_000);
    a1.assigned.insert(3, GEN_A3.into());
    a1.kudos_charged = 5.75;
    a1.last_error = Some(RecordedError {
        class: "expired".into(),
        message: "the Horde no longer knows the request (RequestNotFound)".into(),
    });
    a1.begin_attempt(1, T0 + 60_000);
    a1.transition(submitted(A1_HORDE_ID, 1, T0 + 61_000), T0 + 61_000);

    // A2: the submit intent is written; the answer never was.
    let a2 = RequestRecord::first_attempt(&RequestKey::new(JOB_A, 2), 4, 1, T0 + 62_000);

    // B0: refused three times, then given up.
    let mut b0 = RequestRecord::first_attempt(&RequestKey::new(JOB_B, 0), 0, 1, T0);
    b0.transition(submitted(B0_HORDE_ID, 1, T0 + 3_000), T0 + 3_000);
    b0.begin_attempt(1, T0 + 10_000);
    b0.begin_attempt(1, T0 + 20_000);
    b0.kudos_charged = 2.0;
    b0.transition(
        RequestState::Failed {
            class: "permanent".into(),
            message: "the Horde refused the prompt (400 CorruptPrompt)".into(),
        },
        T0 + 21_000,
    );

    // B1: cancelled on the Horde by an interrupted run.
    let mut b1 = RequestRecord::first_attempt(&RequestKey::new(JOB_B, 1), 1, 1, T0);
    b1.transition(submitted(B1_HORDE_ID, 1, T0 + 4_000), T0 + 4_000);
    b1.transition(
        RequestState::Cancelled {
            horde_id: B1_HORDE_ID.into(),
            cancelled_ms: T0 + 70_000,
        },
        T0 + 70_000,
    );

    vec![a0, a1, a2, b0, b1]
}

fn submitted(horde_id: &str, n: u32, at: u64) -> RequestState {
    RequestState::Submitted {
        horde_id: horde_id.into(),
        n,
        submitted_ms: at,
    }
}

fn write_ledger(state: &Path) {
    let store = Store::open(state).unwrap();
    for record in ledger_records() {
        store.put(&record.key(), &record).unwrap();
    }
    let first = RunMeta::next_run(None, "0.1.0", "manifests/animals.yaml", "animals", T0);
    store
        .put_run_meta(&RunMeta::next_run(
            Some(first),
            "0.1.0",
            "manifests/animals.yaml",
            "animals",
            T0 + 60_000,
        ))
        .unwrap();
    block_on(store.flush()).unwrap();
    drop(store);
    // As a run killed with SIGKILL leaves it (see `PidFile::claim`).
    std::fs::write(state.join("run.pid"), format!("{STALE_PID}\n")).unwrap();
}

// ---------------------------------------------------------- output files ---

const FILES_IMAGE: &str = "cats/6a1f0c9e2b7d4358-0";

#[test]
fn v1_sidecar_reads_back() {
    let dir = v1().join("files");
    let text = std::fs::read_to_string(dir.join(format!("{FILES_IMAGE}.json"))).unwrap();
    let sidecar: Sidecar = serde_json::from_str(&text).expect("a v1 sidecar deserializes");
    assert_eq!(sidecar.schema, 1);
    assert_eq!(sidecar.file_name, format!("{FILES_IMAGE}.webp"));
    assert_eq!(sidecar.manifest, "manifests/animals.yaml");
    assert_eq!(sidecar.manifest_name, "animals");
    assert_eq!(sidecar.job, "cats");
    assert_eq!(sidecar.job_key, JOB_A);
    assert_eq!(sidecar.image_index, 0);
    assert_eq!(
        sidecar.prompt_template,
        "a {black|ginger} cat on a windowsill"
    );
    assert_eq!(sidecar.prompt, "a black cat on a windowsill");
    assert_eq!(sidecar.negative_prompt.as_deref(), Some("blurry, lowres"));
    assert_eq!(sidecar.model, "stable_diffusion");
    assert_eq!(sidecar.params["width"], 64);
    assert_eq!(sidecar.params["cfg_scale"], 7.0);
    assert_eq!(sidecar.params["sampler_name"], "k_euler_a");
    assert_eq!(sidecar.request["r2"], true);
    assert_eq!(sidecar.seed, "1234567890");
    assert_eq!(sidecar.batch_index, Some(0));
    assert_eq!(sidecar.horde_request_id, A0_HORDE_ID);
    assert_eq!(sidecar.generation_id, GEN_A0);
    assert_eq!(sidecar.worker_name, "fixture-worker");
    assert!(!sidecar.censored);
    assert_eq!(sidecar.gen_metadata[0]["type"], "information");
    assert_eq!(sidecar.kudos, 11.5);
    assert_eq!(sidecar.submitted_at, "2026-01-15T10:00:01.000Z");
    assert_eq!(sidecar.completed_at, "2026-01-15T10:00:08.000Z");
    assert_eq!(sidecar.horde_batch_version, "0.1.0");
    let other = Sidecar {
        completed_at: "later".into(),
        ..sidecar.clone()
    };
    assert!(sidecar.same_generation(&other));
}

#[test]
fn v1_jsonl_files_read_back_and_reopen_without_repair() {
    let (_temp, dir) = copy_fixture("files");
    let rows = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };

    let index: Vec<IndexRow> = rows(INDEX_FILE)
        .iter()
        .map(|line| serde_json::from_str(line).expect("a v1 metadata.jsonl row deserializes"))
        .collect();
    assert_eq!(index.len(), 1);
    let row = &index[0];
    assert_eq!(row.file_name, format!("{FILES_IMAGE}.webp"));
    assert_eq!(row.text, "a black cat on a windowsill");
    assert_eq!(row.negative_prompt, "blurry, lowres");
    assert_eq!((row.job.as_str(), row.job_key.as_str()), ("cats", JOB_A));
    assert_eq!(
        (row.image_index, row.width, row.height, row.steps),
        (0, 64, 64, 20)
    );
    assert_eq!(row.cfg_scale, 7.0);
    assert_eq!(row.seed, "1234567890");
    assert_eq!(row.sampler_name, "k_euler_a");
    assert!(!row.censored);
    assert_eq!(row.horde_request_id, A0_HORDE_ID);
    assert_eq!(row.generation_id, GEN_A0);
    // The Hugging Face loader wants `file_name` first and a float cfg_scale.
    assert!(rows(INDEX_FILE)[0].starts_with(r#"{"file_name":"#));
    assert!(rows(INDEX_FILE)[0].contains(r#""cfg_scale":7.0"#));

    let results: Vec<JobResult> = rows(RESULTS_FILE)
        .iter()
        .map(|line| serde_json::from_str(line).expect("a v1 results.jsonl row deserializes"))
        .collect();
    assert_eq!(
        results,
        [JobResult {
            job_key: JOB_A.into(),
            job: "cats".into(),
            images: vec![format!("{FILES_IMAGE}.webp")],
            kudos: 11.5,
            attempts: 1,
            completed_at: "2026-01-15T10:00:09.000Z".into(),
            id: None,
        }]
    );

    let errors: Vec<JobError> = rows(ERRORS_FILE)
        .iter()
        .map(|line| serde_json::from_str(line).expect("a v1 errors.jsonl row deserializes"))
        .collect();
    assert_eq!(
        errors,
        [JobError {
            job_key: JOB_B.into(),
            job: "lighthouse".into(),
            class: "permanent".into(),
            message: "the Horde refused the prompt (400 CorruptPrompt)".into(),
            images_saved: 0,
            images_wanted: 2,
            at: "2026-01-15T10:00:21.000Z".into(),
        }]
    );

    // The writer's own reader: reopening finds every row, repairs nothing and
    // does not write them again.
    let output = OutputDir::open(&dir).expect("a v1 output folder opens");
    assert_eq!(output.recovery().torn_lines, []);
    assert_eq!(output.recovery().removed_temp_files, 0);
    assert!(output.has_index_row(&format!("{FILES_IMAGE}.webp")));
    assert!(output.has_result(JOB_A) && output.has_error(JOB_B));
    assert!(!output.append_result(&results[0]).unwrap());
    assert!(!output.append_error(&errors[0]).unwrap());
    assert!(!output.append_index(row).unwrap());
    // Writing the same image again (a retry after a crash) is a no-op, not a collision.
    let webp = std::fs::read(dir.join(format!("{FILES_IMAGE}.webp"))).unwrap();
    let sidecar: Sidecar =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{FILES_IMAGE}.json"))).unwrap())
            .unwrap();
    let again = output
        .write_image(FILES_IMAGE, &webp, &sidecar)
        .expect("the v1 image is recognised as already written");
    assert!(again.already_present);
    assert_eq!((again.info.width, again.info.height), (64, 64));
}

#[test]
fn v1_status_file_reads_back() {
    let status = read_status_file(&v1().join("files")).expect("a v1 status.json deserializes");
    assert!(status.active && !status.finished);
    assert_eq!(status.pid, Some(STALE_PID));
    assert_eq!(status.updated_ms, T0 + 65_000);
    assert_eq!((status.images_wanted, status.images_saved), (7, 3));
    assert_eq!((status.requests_in_flight, status.images_in_flight), (2, 2));
    assert_eq!(status.requests_by_state.get("done"), Some(&1));
    assert_eq!(
        status.in_flight,
        [InFlight {
            key: format!("{JOB_A}/000001"),
            horde_id: Some(A1_HORDE_ID.into()),
            state: "submitted".into(),
            age_seconds: 4,
        }]
    );
    assert_eq!(status.failures.get("permanent"), Some(&1));
    assert_eq!(status.kudos_charged, 19.25);
    assert_eq!(status.queue_position, 3);
    assert_eq!(status.eta_seconds, 42);
    assert_eq!(status.rate_limited_429s, 1);
    assert_eq!(
        (status.jobs, status.jobs_done, status.jobs_failed),
        (2, 0, 1)
    );
}

/// A real 64×64 lossless WebP (the simulated Horde's pattern for the prompt).
fn tiny_webp(prompt: &str, seed: &str) -> Vec<u8> {
    let pixels = horde_batch::sim::images::render_pixels_sized(prompt, seed, 0, 64, 64);
    let mut bytes = Vec::new();
    image_webp::WebPEncoder::new(&mut bytes)
        .encode(&pixels, 64, 64, image_webp::ColorType::Rgb8)
        .unwrap();
    bytes
}

fn write_output_files(dir: &Path) {
    let output = OutputDir::open(dir).unwrap();
    let prompt = "a black cat on a windowsill";
    let sidecar = Sidecar {
        schema: Sidecar::SCHEMA,
        file_name: String::new(), // filled in by write_image
        manifest: "manifests/animals.yaml".into(),
        manifest_name: "animals".into(),
        job: "cats".into(),
        job_key: JOB_A.into(),
        image_index: 0,
        prompt_template: "a {black|ginger} cat on a windowsill".into(),
        prompt: prompt.into(),
        negative_prompt: Some("blurry, lowres".into()),
        model: "stable_diffusion".into(),
        params: json!({
            "width": 64, "height": 64, "steps": 20, "sampler_name": "k_euler_a",
            "cfg_scale": 7.0, "seed": "1234567890", "n": 2
        }),
        request: json!({
            "nsfw": false, "censor_nsfw": false, "trusted_workers": false,
            "slow_workers": true, "r2": true, "shared": false
        }),
        seed: "1234567890".into(),
        batch_index: Some(0),
        horde_request_id: A0_HORDE_ID.into(),
        generation_id: GEN_A0.into(),
        worker_id: "a9b8c7d6-e5f4-4a3b-9c2d-1e0f9a8b7c6d".into(),
        worker_name: "fixture-worker".into(),
        censored: false,
        gen_metadata: json!([{"type": "information", "value": "see_ref", "ref": "fixture"}]),
        kudos: 11.5,
        submitted_at: "2026-01-15T10:00:01.000Z".into(),
        completed_at: "2026-01-15T10:00:08.000Z".into(),
        horde_batch_version: horde_batch::output::HORDE_BATCH_VERSION.into(),
        labels: Default::default(),
        sources: None,
        alchemy: None,
    };
    let written = output
        .write_image(
            FILES_IMAGE,
            &tiny_webp(&format!("{prompt} ### blurry, lowres"), "1234567890"),
            &sidecar,
        )
        .unwrap();
    output
        .append_index(&IndexRow {
            file_name: written.file_name.clone(),
            text: prompt.into(),
            negative_prompt: "blurry, lowres".into(),
            job: "cats".into(),
            job_key: JOB_A.into(),
            image_index: 0,
            model: "stable_diffusion".into(),
            seed: "1234567890".into(),
            width: 64,
            height: 64,
            steps: 20,
            cfg_scale: 7.0,
            sampler_name: "k_euler_a".into(),
            censored: false,
            horde_request_id: A0_HORDE_ID.into(),
            generation_id: GEN_A0.into(),
            loras: String::new(),
            post_processing: String::new(),
            columns: Default::default(),
        })
        .unwrap();
    output
        .append_result(&JobResult {
            job_key: JOB_A.into(),
            job: "cats".into(),
            images: vec![written.file_name],
            kudos: 11.5,
            attempts: 1,
            completed_at: "2026-01-15T10:00:09.000Z".into(),
            id: None,
        })
        .unwrap();
    output
        .append_error(&JobError {
            job_key: JOB_B.into(),
            job: "lighthouse".into(),
            class: "permanent".into(),
            message: "the Horde refused the prompt (400 CorruptPrompt)".into(),
            images_saved: 0,
            images_wanted: 2,
            at: "2026-01-15T10:00:21.000Z".into(),
        })
        .unwrap();

    let status = StatusReport {
        active: true,
        pid: Some(STALE_PID),
        updated_ms: T0 + 65_000,
        images_wanted: 7,
        images_saved: 3,
        requests_in_flight: 2,
        images_in_flight: 2,
        requests_by_state: [("done".to_owned(), 1)].into(),
        in_flight: vec![InFlight {
            key: format!("{JOB_A}/000001"),
            horde_id: Some(A1_HORDE_ID.into()),
            state: "submitted".into(),
            age_seconds: 4,
        }],
        failures: [("permanent".to_owned(), 1)].into(),
        kudos_charged: 19.25,
        kudos_estimated_remaining: 25.67,
        queue_position: 3,
        eta_seconds: 42,
        rate_limited_429s: 1,
        waiting_seconds: 0,
        jobs: 2,
        jobs_done: 0,
        jobs_failed: 1,
        finished: false,
        last_run: None,
        alchemy: None,
    };
    horde_batch::progress::write_status_file(dir, &status).unwrap();
    assert!(dir.join(STATUS_FILE).is_file());
}

// ------------------------------------------------- a user's output folder ---

/// The manifest of the end-to-end fixture: 3 jobs, 4 tiny images.
const BATCH_MANIFEST: &str = "\
# The manifest of the v1 end-to-end fixture (tests/formats_v1.rs).
version: 1
name: fixture-v1
output:
  dir: out
defaults:
  models: [stable_diffusion]
  params: {width: 64, height: 64, steps: 20, sampler_name: k_euler_a, cfg_scale: 7}
jobs:
  - name: cats
    prompt: \"a {black|ginger} cat on a windowsill\"
    negative: \"blurry, lowres\"
    images: 1
  - name: lighthouse
    prompt: \"a lighthouse at dusk\"
    images: 2
";

/// Every `.json` sidecar under the batch's output folder, parsed.
fn batch_sidecars(out: &Path) -> Vec<Sidecar> {
    let mut sidecars: Vec<Sidecar> = walk(out)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "json") && path.parent() != Some(out))
        .map(|path| serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap())
        .collect();
    sidecars.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    sidecars
}

fn status_json(batch: &Path) -> Value {
    let status = HordeBatch::new()
        .args(["status", "manifest.yaml", "--json"])
        .current_dir(batch)
        .run();
    serde_json::from_str(&status.stdout).unwrap()
}

#[test]
fn v1_output_folder_reports_every_image_saved() {
    let (_temp, batch) = copy_fixture("batch");
    let out = batch.join("out");
    let report = status_json(&batch);
    assert_eq!(report["active"], false, "{report}");
    assert_eq!(report["images_wanted"], 4, "{report}");
    assert_eq!(report["images_saved"], 4, "{report}");
    assert_eq!(report["requests_in_flight"], 0, "{report}");
    assert_eq!(report["requests_by_state"], json!({"done": 3}), "{report}");
    assert_eq!(report["failures"], json!({}), "{report}");

    // Files, sidecars, index and results agree with each other and with the plan.
    let sidecars = batch_sidecars(&out);
    assert_eq!(sidecars.len(), 4);
    for sidecar in &sidecars {
        let webp = std::fs::read(out.join(&sidecar.file_name)).unwrap();
        let info = horde_batch::output::verify_webp(&webp).unwrap();
        assert_eq!((info.width, info.height), (64, 64), "{}", sidecar.file_name);
    }
    let index: Vec<IndexRow> = std::fs::read_to_string(out.join(INDEX_FILE))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut indexed: Vec<_> = index.iter().map(|row| row.file_name.clone()).collect();
    indexed.sort();
    let on_disk: Vec<_> = sidecars.iter().map(|s| s.file_name.clone()).collect();
    assert_eq!(indexed, on_disk);
    let results: Vec<JobResult> = std::fs::read_to_string(out.join(RESULTS_FILE))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 3);
    assert!(!out.join(ERRORS_FILE).exists());

    // Job keys are derived from the manifest: today's derivation must give
    // the keys the v1 run wrote, or a rerun would redo every job.
    let plan = HordeBatch::new()
        .args(["plan", "manifest.yaml", "--list", "--json"])
        .current_dir(&batch)
        .run();
    let mut planned: Vec<String> = plan
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    planned.sort();
    let mut recorded: Vec<String> = results.iter().map(|r| r.job_key.clone()).collect();
    recorded.sort();
    assert_eq!(planned, recorded);
    let store = Store::open(&out.join(".horde-batch")).unwrap();
    for key in &planned {
        let slots = store.job_slots(key).unwrap();
        assert!(
            !slots.is_empty() && slots.iter().all(|(_, r)| r.state == RequestState::Done),
            "{key}: {slots:?}"
        );
    }
}

#[test]
fn v1_status_file_is_shown_while_a_run_holds_the_ledger() {
    let (_temp, batch) = copy_fixture("batch");
    let state = batch.join("out/.horde-batch");
    // Holding the ledger open here stands in for a live run.
    let _held = Store::open(&state).unwrap();
    let report = status_json(&batch);
    assert_eq!(report["active"], true, "{report}");
    assert_eq!(report["pid"], std::process::id(), "{report}");
    // The numbers come from the v1 run's status.json, not from the ledger.
    let written = read_status_file(&state).unwrap();
    assert!(written.finished, "the v1 run's last sample");
    assert_eq!(report["images_saved"], written.images_saved, "{report}");
    assert_eq!(report["images_saved"], 4, "{report}");
    assert_eq!(report["jobs_done"], 3, "{report}");
}

#[test]
fn v1_output_folder_rerun_submits_nothing() {
    let (_temp, batch) = copy_fixture("batch");
    let sim = Sim::start(&["--workers", "2", "--latency", "10ms..20ms", "--seed", "11"]);
    rerun(&batch, &sim.url)
        .stderr_contains("0 images saved now, 4 before")
        .run();
    let stats = sim.stats();
    assert_eq!(
        crate::common::stat(&stats, "requests_created"),
        0,
        "{stats}"
    );
    assert_eq!(batch_sidecars(&batch.join("out")).len(), 4);
}

/// `run` of the v1 batch in `batch`, against `url`.
fn rerun(batch: &Path, url: &str) -> HordeBatch {
    HordeBatch::new()
        .args([
            "run",
            "manifest.yaml",
            "--horde-url",
            url,
            "--progress",
            "none",
        ])
        .current_dir(batch)
        .env("RUST_LOG", "horde_batch=info")
        .env("HORDE_BATCH_FIND_USER_CACHE", TEST_FIND_USER_CACHE)
}

fn write_batch(batch: &Path) {
    std::fs::create_dir_all(batch).unwrap();
    std::fs::write(batch.join("manifest.yaml"), BATCH_MANIFEST).unwrap();
    let sim = Sim::start(&["--workers", "2", "--latency", "10ms..20ms", "--seed", "7"]);
    rerun(batch, &sim.url).run();
}

// ------------------------------------------------------------- generator ---

/// Writes `tests/fixtures/v1/` with the current code. Run explicitly:
/// `HORDE_BATCH_WRITE_FIXTURES=1 cargo test --test it formats_v1::write_v1_fixtures -- --ignored`.
/// Refuses to touch an existing folder: fixtures are never regenerated.
#[test]
#[ignore = "writes tests/fixtures/v1; run with HORDE_BATCH_WRITE_FIXTURES=1"]
fn write_v1_fixtures() {
    assert_eq!(
        std::env::var(WRITE_ENV).as_deref(),
        Ok("1"),
        "set {WRITE_ENV}=1 to write the fixtures"
    );
    let dir = v1();
    for part in ["state", "files", "batch"] {
        assert!(
            !dir.join(part).exists(),
            "{} exists: fixtures are never regenerated; a new format gets a new folder",
            dir.join(part).display()
        );
    }
    write_ledger(&dir.join("state"));
    write_output_files(&dir.join("files"));
    write_batch(&dir.join("batch"));
}
