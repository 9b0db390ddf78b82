//! The ledger from the outside: round trips through disk, ordering and queries,
//! the single-owner lock and its pidfile, durability across a real crash, and
//! damaged ledgers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::common::{child_env, test_child};
use horde_batch::store::{
    RecordedError, RequestKey, RequestRecord, RequestState, RunMeta, SavedImage, StateCounts,
    Store, StoreError,
};

/// Set (to a state directory) only in the child process of [`durable_writes_survive_abort`].
const CRASH_CHILD_DIR: &str = "HORDE_BATCH_TEST_CRASH_CHILD_DIR";
const CRASH_RECORDS: u32 = 40;

fn saved(index: u32) -> SavedImage {
    SavedImage {
        generation_id: format!("gen-{index}"),
        file_name: format!("job-{index:04}.webp"),
        censored: index % 3 == 0,
    }
}

/// A record of `key` covering `n` images from `first_index`, in `state`, with
/// the bookkeeping that state implies filled in.
fn record(key: &RequestKey, first_index: u32, n: u32, state: RequestState) -> RequestRecord {
    let mut record = RequestRecord::first_attempt(key, first_index, n, 1_700_000_000_000);
    match &state {
        RequestState::Done => {
            for index in first_index..first_index + n {
                record.save_image(index, saved(index), 1_700_000_000_900);
            }
            record.kudos_charged = 10.0 * f64::from(n);
        }
        RequestState::Submitted { horde_id, .. } => {
            record.horde_ids.push(format!("{horde_id}-expired"));
            record.assigned.insert(first_index, "gen-chosen".to_owned());
            record.save_image(first_index + 1, saved(first_index + 1), 1_700_000_000_500);
            record.last_error = Some(RecordedError {
                class: "expired".to_owned(),
                message: "404 RequestNotFound".to_owned(),
            });
            record.attempts = 2;
        }
        _ => {}
    }
    record.transition(state, 1_700_000_001_000);
    record
}

fn every_state() -> Vec<RequestState> {
    vec![
        RequestState::Submitting {
            attempt: 1,
            n: 4,
            since_ms: 1_700_000_000_000,
        },
        RequestState::Submitted {
            horde_id: "0b7f5c1e-1111-4111-8111-111111111111".to_owned(),
            n: 3,
            submitted_ms: 1_700_000_000_100,
        },
        RequestState::Done,
        RequestState::Failed {
            class: "permanent".to_owned(),
            message: "400 validation error: prompt too long".to_owned(),
        },
        RequestState::Cancelled {
            horde_id: "0b7f5c1e-2222-4222-8222-222222222222".to_owned(),
            cancelled_ms: 1_700_000_000_200,
        },
    ]
}

fn read_pidfile(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("run.pid"))
        .ok()
        .map(|text| text.trim().parse().expect("pidfile holds a pid"))
}

#[tokio::test]
async fn records_of_every_state_survive_flush_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<_> = every_state()
        .into_iter()
        .enumerate()
        .map(|(slot, state)| {
            let slot = u32::try_from(slot).unwrap();
            let key = RequestKey::new("00000000000000aa", slot);
            let record = record(&key, slot * 4, 4, state);
            (key, record)
        })
        .collect();

    {
        let store = Store::open(dir.path()).unwrap();
        assert!(store.is_empty());
        for (key, record) in &written {
            store.put(key, record).unwrap();
        }
        store.flush().await.unwrap();
    }

    let store = Store::open(dir.path()).unwrap();
    for (key, record) in &written {
        assert_eq!(store.get(key).unwrap().as_ref(), Some(record), "{key}");
    }
    let read: Vec<_> = store.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(read, written);
    assert_eq!(
        store.get(&RequestKey::new("00000000000000aa", 99)).unwrap(),
        None
    );
}

#[tokio::test]
async fn keys_sort_by_job_then_slot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let inserted = [
        ("b0", 0),
        ("a0", 10),
        ("a0", 2),
        ("a0b", 0),
        ("a0", 1),
        ("a0", 100_000),
    ];
    for (job, slot) in inserted {
        let key = RequestKey::new(job, slot);
        store
            .put(&key, &record(&key, slot * 20, 20, RequestState::Done))
            .unwrap();
    }

    let order: Vec<_> = store
        .iter()
        .map(|entry| {
            let (key, record) = entry.unwrap();
            assert_eq!(key, record.key());
            (key.job_key, key.slot)
        })
        .collect();
    let expected = [
        ("a0", 1),
        ("a0", 2),
        ("a0", 10),
        ("a0", 100_000),
        ("a0b", 0),
        ("b0", 0),
    ];
    assert_eq!(order, expected.map(|(job, slot)| (job.to_owned(), slot)));

    let slots: Vec<u32> = store
        .job_slots("a0")
        .unwrap()
        .iter()
        .map(|(key, _)| key.slot)
        .collect();
    assert_eq!(slots, [1, 2, 10, 100_000]);
    assert!(
        store.job_slots("a").unwrap().is_empty(),
        "a prefix of a job key is not that job"
    );
    assert_eq!(store.job_slots("a0b").unwrap().len(), 1);
    assert_eq!(store.len(), 6);
}

#[tokio::test]
async fn job_slots_stay_exact_for_job_keys_containing_a_slash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for key in [
        RequestKey::new("a", 0),
        RequestKey::new("a/b", 0),
        RequestKey::new("a/b", 1),
    ] {
        store
            .put(&key, &record(&key, 0, 1, RequestState::Done))
            .unwrap();
    }
    let of_a: Vec<_> = store
        .job_slots("a")
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(of_a, [RequestKey::new("a", 0)]);
    assert_eq!(store.job_slots("a/b").unwrap().len(), 2);
}

#[tokio::test]
async fn in_flight_and_counts_reflect_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.counts().unwrap(), StateCounts::default());

    // Two jobs, each with one slot per state.
    for job in ["1111111111111111", "2222222222222222"] {
        for (slot, state) in every_state().into_iter().enumerate() {
            let key = RequestKey::new(job, u32::try_from(slot).unwrap());
            store.put(&key, &record(&key, 0, 4, state)).unwrap();
        }
    }

    let in_flight: Vec<_> = store
        .in_flight()
        .unwrap()
        .into_iter()
        .map(|(key, record)| {
            (
                key.to_string(),
                record.state.name(),
                record.horde_id().map(str::to_owned),
            )
        })
        .collect();
    let submitted_id = Some("0b7f5c1e-1111-4111-8111-111111111111".to_owned());
    assert_eq!(
        in_flight,
        [
            ("1111111111111111/000000".to_owned(), "submitting", None),
            (
                "1111111111111111/000001".to_owned(),
                "submitted",
                submitted_id.clone()
            ),
            ("2222222222222222/000000".to_owned(), "submitting", None),
            (
                "2222222222222222/000001".to_owned(),
                "submitted",
                submitted_id
            ),
        ]
    );

    let counts = store.counts().unwrap();
    assert_eq!(
        (
            counts.submitting,
            counts.submitted,
            counts.done,
            counts.failed,
            counts.cancelled
        ),
        (2, 2, 2, 2, 2)
    );
    assert_eq!((counts.records(), counts.in_flight()), (10, 4));
    // Per job: the Done slot saved 4 images, the Submitted slot 1.
    assert_eq!(counts.images_saved, 10);
    assert_eq!(counts.kudos_charged, 80.0);
    assert_eq!(store.len(), 10);
}

#[tokio::test]
async fn missing_indices_drive_a_partial_resubmit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = RequestKey::new("3333333333333333", 1);
    let submitted = record(
        &key,
        20,
        4,
        RequestState::Submitted {
            horde_id: "h".to_owned(),
            n: 4,
            submitted_ms: 0,
        },
    );
    store.put_durable(&key, &submitted).await.unwrap();
    let stored = store.get(&key).unwrap().unwrap();
    assert_eq!(stored.missing_indices(), [20, 22, 23]);
    assert_eq!(stored.horde_ids, ["h-expired", "h"]);
}

#[tokio::test]
async fn update_creates_changes_and_deletes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = RequestKey::new("4444444444444444", 0);

    let created = store
        .update(&key, |current| {
            assert!(current.is_none());
            Some(RequestRecord::first_attempt(&key, 0, 20, 5))
        })
        .unwrap();
    assert_eq!(created.as_ref().map(|record| record.attempts), Some(1));

    // Concurrent read-modify-write from several threads loses no increment.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let key = key.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    store
                        .update(&key, |current| {
                            let mut record = current.expect("created above");
                            record.begin_attempt(20, 6);
                            Some(record)
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(store.get(&key).unwrap().unwrap().attempts, 401);

    assert_eq!(store.update(&key, |_| None).unwrap(), None);
    assert_eq!(store.get(&key).unwrap(), None);
    assert!(store.is_empty());
}

#[tokio::test]
async fn a_record_cannot_be_stored_under_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = RequestKey::new("5555555555555555", 0);
    let other = RequestRecord::first_attempt(&RequestKey::new("5555555555555555", 1), 20, 20, 0);
    let error = store.put(&key, &other).unwrap_err();
    assert!(matches!(error, StoreError::BadRecord { .. }), "{error:?}");
    assert!(store.update(&key, |_| Some(other.clone())).is_err());
    assert!(store.is_empty());
}

#[tokio::test]
async fn run_meta_persists_and_counts_runs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.run_meta().unwrap(), None);
        let first = store
            .record_run_start("0.1.0", "manifests/a.yaml", "animals-v1")
            .unwrap();
        assert_eq!(first.run_count, 1);
        store.flush().await.unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let second = store
        .record_run_start("0.1.1", "manifests/a.yaml", "animals-v1")
        .unwrap();
    assert_eq!(second.run_count, 2);
    assert_eq!(second.tool_version, "0.1.1");
    assert!(second.first_started_ms <= second.last_started_ms);
    assert_eq!(store.run_meta().unwrap(), Some(second.clone()));

    let replaced = RunMeta {
        manifest_name: "renamed".to_owned(),
        ..second
    };
    store.put_run_meta(&replaced).unwrap();
    assert_eq!(store.run_meta().unwrap(), Some(replaced));
}

#[tokio::test]
async fn a_second_open_is_locked_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap();
    assert_eq!(read_pidfile(dir.path()), Some(std::process::id()));

    let error = Store::open(dir.path()).unwrap_err();
    match &error {
        StoreError::Locked {
            dir: locked_dir,
            pid,
        } => {
            assert_eq!(locked_dir, dir.path());
            assert_eq!(*pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    let code = miette::Diagnostic::code(&error).map(|code| code.to_string());
    assert_eq!(code.as_deref(), Some("horde_batch::store::locked"));
    // The failed open must not have taken over the pidfile.
    assert_eq!(read_pidfile(dir.path()), Some(std::process::id()));

    // A clone keeps the ledger open; only the last handle releases it.
    let clone = first.clone();
    drop(first);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(clone);

    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(read_pidfile(dir.path()), Some(std::process::id()));
    drop(reopened);
    assert_eq!(
        read_pidfile(dir.path()),
        None,
        "the last handle removes its pidfile"
    );
}

#[tokio::test]
async fn dropping_leaves_a_pidfile_that_names_another_process_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    std::fs::write(dir.path().join("run.pid"), "4242\n").unwrap();
    drop(store);
    assert_eq!(read_pidfile(dir.path()), Some(4242));
}

/// The child process of [`durable_writes_survive_abort`]: writes durably,
/// then dies without running any destructor.
#[tokio::test]
#[ignore = "the child process of store::durable_writes_survive_abort, which runs it"]
async fn crash_child() {
    let dir = child_env(CRASH_CHILD_DIR);
    let store = Store::open(Path::new(&dir)).unwrap();
    for slot in 0..CRASH_RECORDS {
        let key = RequestKey::new("6666666666666666", slot);
        let state = RequestState::Submitted {
            horde_id: format!("horde-{slot}"),
            n: 20,
            submitted_ms: 1,
        };
        store
            .put_durable(&key, &record(&key, slot * 20, 20, state))
            .await
            .unwrap();
    }
    std::process::abort();
}

#[tokio::test]
async fn durable_writes_survive_abort() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = test_child("store::crash_child")
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child_pid = child.id();
    let status = child.wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        // SIGABRT, not a test failure (exit 101): the child got as far as abort().
        assert_eq!(status.signal(), Some(6), "child did not abort: {status:?}");
    }

    // The dead run's pidfile is still there but does not block us.
    assert_eq!(read_pidfile(dir.path()), Some(child_pid));
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(read_pidfile(dir.path()), Some(std::process::id()));

    let survivors = store.job_slots("6666666666666666").unwrap();
    assert_eq!(survivors.len(), CRASH_RECORDS as usize);
    for (slot, (key, record)) in (0..).zip(&survivors) {
        assert_eq!(key.slot, slot);
        assert_eq!(record.horde_id(), Some(format!("horde-{slot}").as_str()));
    }
    assert_eq!(store.in_flight().unwrap().len(), CRASH_RECORDS as usize);
}

/// Set (to a state directory) only in the child of
/// [`the_in_flight_index_survives_abort_mid_transitions`].
const TRANSITIONS_CHILD_DIR: &str = "HORDE_BATCH_TEST_TRANSITIONS_CHILD_DIR";
const TRANSITION_SLOTS: u32 = 60;

fn submitted(slot: u32) -> RequestState {
    RequestState::Submitted {
        horde_id: format!("horde-{slot}"),
        n: 4,
        submitted_ms: 1,
    }
}

fn submitting() -> RequestState {
    RequestState::Submitting {
        attempt: 1,
        n: 4,
        since_ms: 1,
    }
}

/// The child process of [`the_in_flight_index_survives_abort_mid_transitions`]:
/// takes slots through every transition, the last ones without a flush, and
/// dies in the middle without running any destructor.
#[tokio::test]
#[ignore = "the child process of store::the_in_flight_index_survives_abort_mid_transitions, which runs it"]
async fn transitions_child() {
    let dir = child_env(TRANSITIONS_CHILD_DIR);
    let store = Store::open(Path::new(&dir)).unwrap();
    store.record_run_start("0.1.0", "m.yaml", "m").unwrap();
    let job = "9999999999999999";
    for slot in 0..TRANSITION_SLOTS {
        let key = RequestKey::new(job, slot);
        store
            .put_durable(&key, &record(&key, slot * 4, 4, submitting()))
            .await
            .unwrap();
        store
            .update(&key, |_| Some(record(&key, slot * 4, 4, submitted(slot))))
            .unwrap();
        // Slots end in every state; deletes too.
        let last = match slot % 5 {
            0 => Some(record(&key, slot * 4, 4, RequestState::Done)),
            1 => Some(record(
                &key,
                slot * 4,
                4,
                RequestState::Cancelled {
                    horde_id: format!("horde-{slot}"),
                    cancelled_ms: 2,
                },
            )),
            2 => None,
            3 => Some(record(&key, slot * 4, 4, submitting())),
            _ => Some(record(&key, slot * 4, 4, submitted(slot))),
        };
        match last {
            Some(last) => store.put(&key, &last).unwrap(),
            None => {
                store.update(&key, |_| None).unwrap();
            }
        }
        // The first half is durable; the rest may or may not survive.
        if slot < TRANSITION_SLOTS / 2 {
            store.flush().await.unwrap();
        }
    }
    std::process::abort();
}

/// A real crash in the middle of transitions: whatever survives, the reopened
/// ledger's `in_flight` is exactly what a full scan finds.
#[tokio::test]
async fn the_in_flight_index_survives_abort_mid_transitions() {
    let dir = tempfile::tempdir().unwrap();
    let status = test_child("store::transitions_child")
        .env(TRANSITIONS_CHILD_DIR, dir.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "child did not abort: {status:?}");
    }

    let store = Store::open(dir.path()).unwrap();
    let scanned: Vec<_> = store
        .iter()
        .map(Result::unwrap)
        .filter(|(_, record)| record.is_in_flight())
        .collect();
    let in_flight = store.in_flight().unwrap();
    assert_eq!(in_flight, scanned);
    // The flushed half is known exactly: slots ending Submitting or Submitted.
    let durable: Vec<u32> = in_flight
        .iter()
        .map(|(key, _)| key.slot)
        .filter(|slot| *slot < TRANSITION_SLOTS / 2)
        .collect();
    let expected: Vec<u32> = (0..TRANSITION_SLOTS / 2)
        .filter(|slot| slot % 5 >= 3)
        .collect();
    assert_eq!(durable, expected);
}

/// The files of the database under `<state dir>/ledger`, largest first.
fn ledger_files(state_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![state_dir.join("ledger")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort_by_key(|path| std::cmp::Reverse(path.metadata().unwrap().len()));
    assert!(!files.is_empty(), "no ledger files to damage");
    files
}

async fn ledger_with_records(dir: &Path) {
    let store = Store::open(dir).unwrap();
    for slot in 0..100 {
        let key = RequestKey::new("7777777777777777", slot);
        store
            .put(&key, &record(&key, slot * 4, 4, RequestState::Done))
            .unwrap();
    }
    store.flush().await.unwrap();
}

fn assert_damaged(result: Result<Store, StoreError>, dir: &Path, case: &str) {
    let error = result.expect_err(case);
    let StoreError::Damaged {
        dir: damaged_dir,
        detail,
    } = &error
    else {
        panic!("{case}: expected Damaged, got {error:?}");
    };
    assert_eq!(damaged_dir, dir, "{case}");
    assert!(!detail.is_empty(), "{case}");
    let help = miette::Diagnostic::help(&error).unwrap().to_string();
    assert!(
        help.contains("--rebuild-state") && help.contains("aside"),
        "{case}: {help}"
    );
}

#[tokio::test]
async fn a_damaged_ledger_is_reported_not_a_panic() {
    let garbages: [(&str, &[u8]); 4] = [
        ("text", b"this is not a sled database"),
        ("0xff", &[0xff; 4096]),
        ("zeros", &[0x00; 100_000]),
        ("empty", b""),
    ];
    for (name, garbage) in garbages {
        for only_largest in [false, true] {
            let case = format!(
                "{name} over {}",
                if only_largest {
                    "the largest file"
                } else {
                    "every file"
                }
            );
            let dir = tempfile::tempdir().unwrap();
            ledger_with_records(dir.path()).await;
            let files = ledger_files(dir.path());
            let damaged = if only_largest {
                &files[..1]
            } else {
                &files[..]
            };
            for file in damaged {
                std::fs::write(file, garbage).unwrap();
            }
            assert_damaged(Store::open(dir.path()), dir.path(), &case);
        }
    }
}

#[tokio::test]
async fn a_ledger_swapped_in_from_another_state_directory_is_damaged() {
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ledger_with_records(first.path()).await;
    drop(Store::open(second.path()).unwrap());
    std::fs::remove_dir_all(second.path().join("ledger")).unwrap();
    std::fs::rename(first.path().join("ledger"), second.path().join("ledger")).unwrap();
    assert_damaged(Store::open(second.path()), second.path(), "swapped ledger");
}

#[tokio::test]
async fn a_lost_ledger_id_file_is_rewritten_from_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    ledger_with_records(dir.path()).await;
    let id_file = dir.path().join("ledger.id");
    let id = std::fs::read_to_string(&id_file).unwrap();
    assert_eq!(id.trim().len(), 36, "a uuid: {id:?}");

    // As if the first open died between creating the ledger and writing the file.
    std::fs::remove_file(&id_file).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.len(), 100);
    assert_eq!(std::fs::read_to_string(&id_file).unwrap(), id);
}

#[tokio::test]
async fn store_futures_can_move_between_runtime_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = RequestKey::new("8888888888888888", 0);
    let record = RequestRecord::first_attempt(&key, 0, 1, 0);
    let flush = store.flush();
    assert_send(&flush);
    flush.await.unwrap();
    let durable = store.put_durable(&key, &record);
    assert_send(&durable);
    durable.await.unwrap();
    // And a spawned task can own a clone.
    let task_store = store.clone();
    tokio::spawn(async move { task_store.flush().await })
        .await
        .unwrap()
        .unwrap();
}

/// Resume-time cost of a big ledger. Run with
/// `cargo test --release --test store -- --ignored --nocapture ledger_of_100k`.
#[tokio::test]
#[ignore = "performance measurement; prints timings"]
async fn ledger_of_100k_done_records() {
    for images_per_record in [4, 20] {
        measure_done_ledger(100_000, images_per_record).await;
    }
}

async fn measure_done_ledger(jobs: u32, images_per_record: u32) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    {
        let store = Store::open(dir.path()).unwrap();
        for job in 0..jobs {
            let key = RequestKey::new(format!("{job:016x}"), 0);
            let done = record(&key, 0, images_per_record, RequestState::Done);
            store.put(&key, &done).unwrap();
        }
        store.flush().await.unwrap();
    }
    let write = started.elapsed();

    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    let open = started.elapsed();

    let started = Instant::now();
    let mut records = 0;
    for entry in store.iter() {
        let (_, record) = entry.unwrap();
        assert_eq!(record.state, RequestState::Done);
        records += 1;
    }
    let iterate = started.elapsed();
    assert_eq!(records, jobs);

    let started = Instant::now();
    assert!(store.in_flight().unwrap().is_empty());
    let in_flight = started.elapsed();

    let started = Instant::now();
    assert_eq!(store.counts().unwrap().done, u64::from(jobs));
    let counts = started.elapsed();

    let started = Instant::now();
    assert_eq!(store.len(), jobs as usize);
    let len = started.elapsed();

    let started = Instant::now();
    let found = (0..1_000u32)
        .filter(|job| {
            let job_key = format!("{:016x}", job * 97 % jobs);
            store.job_slots(&job_key).unwrap().len() == 1
        })
        .count();
    let job_slots = started.elapsed();
    assert_eq!(found, 1_000);

    println!(
        "{jobs} Done records of {images_per_record} images: write+flush {write:?}, \
         reopen {open:?}, iter {iterate:?}, in_flight {in_flight:?}, counts {counts:?}, \
         len {len:?}, 1000 job_slots {job_slots:?}"
    );
}

/// Resume-time cost of finding in-flight records in a big ledger, and the cost
/// of writes that keep the index. Run with
/// `cargo test --release --test it -- --ignored --nocapture store::in_flight_of_500k`.
#[tokio::test]
#[ignore = "performance measurement; prints timings"]
async fn in_flight_of_500k_done_records_and_20_in_flight() {
    const DONE: u32 = 500_000;
    const IN_FLIGHT: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let in_flight_job = |n: u32| format!("{:016x}", u64::from(n) * 25_000 + 7);
    {
        let store = Store::open(dir.path()).unwrap();
        let started = Instant::now();
        for job in 0..DONE {
            let key = RequestKey::new(format!("{job:016x}"), 0);
            store
                .put(&key, &record(&key, 0, 4, RequestState::Done))
                .unwrap();
        }
        let put_done = started.elapsed();
        let started = Instant::now();
        for n in 0..IN_FLIGHT {
            let key = RequestKey::new(in_flight_job(n), 1);
            store.put(&key, &record(&key, 4, 4, submitted(n))).unwrap();
        }
        let put_in_flight = started.elapsed();
        store.flush().await.unwrap();

        // A slot's life: Submitting, Submitted, Done, through put and update.
        let started = Instant::now();
        for job in 0..10_000u32 {
            let key = RequestKey::new(format!("{job:016x}"), 2);
            store.put(&key, &record(&key, 8, 4, submitting())).unwrap();
            store
                .update(&key, |_| Some(record(&key, 8, 4, submitted(job))))
                .unwrap();
            store
                .update(&key, |_| Some(record(&key, 8, 4, RequestState::Done)))
                .unwrap();
        }
        let lifecycle = started.elapsed();
        store.flush().await.unwrap();
        println!(
            "put of {DONE} Done records: {put_done:?} ({:?} each); put of {IN_FLIGHT} \
             Submitted: {put_in_flight:?}; 10000 slot lives (put Submitting, update \
             Submitted, update Done): {lifecycle:?} ({:?} each)",
            put_done / DONE,
            lifecycle / 10_000
        );
    }

    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    let open = started.elapsed();

    let started = Instant::now();
    let found = store.in_flight().unwrap();
    let in_flight = started.elapsed();
    assert_eq!(found.len(), IN_FLIGHT as usize);

    let started = Instant::now();
    let scanned: Vec<_> = store
        .iter()
        .map(Result::unwrap)
        .filter(|(_, record)| record.is_in_flight())
        .collect();
    let full_scan = started.elapsed();
    assert_eq!(found, scanned);

    println!(
        "{DONE} Done + {IN_FLIGHT} in flight: reopen {open:?}, in_flight {in_flight:?}, \
         full scan (decoding every record) {full_scan:?}"
    );
}
