//! `reroll` and `merge` at the edges a user reaches (issue #20): every
//! spelling of an image's path, names that match nothing, an image rerolled
//! twice, images whose job fixes their seeds, absurd shard counts, shards
//! still running or unfinished.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::{signal, stat, wait_exit, wait_until, Batch, Finished, HordeBatch, Sim};

/// `horde-batch reroll <manifest>`, run from the manifest's folder.
fn reroll(batch: &Batch) -> HordeBatch {
    HordeBatch::new()
        .current_dir(batch.dir.path())
        .arg("reroll")
        .arg(&batch.manifest)
}

/// The sidecar of `name` in the output folder.
fn sidecar(batch: &Batch, name: &str) -> Value {
    let path = batch.out().join(name).with_extension("json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every file under `.rejected/`.
fn rejected_files(batch: &Batch) -> Vec<PathBuf> {
    crate::common::walk_all(&batch.out().join(".rejected"))
}

const FOUR_KITES: &str = "version: 1\nname: cull\ndefaults: {models: [stable_diffusion], \
     params: {width: 64, height: 64}}\n\
     jobs:\n  - {name: a, prompt: 'a {red|blue|green|white} kite', images: 1}\n";

#[test]
fn reroll_takes_every_spelling_of_a_path_inside_the_output_folder() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "41"]);
    let batch = Batch::new(FOUR_KITES);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let names = batch.index_file_names();
    assert_eq!(names.len(), 4);
    let out = batch.out();
    let from_cwd = out.strip_prefix(batch.dir.path()).unwrap();
    let spellings: [PathBuf; 4] = [
        // As a user types it from the manifest's folder.
        from_cwd.join(&names[0]),
        // Absolute.
        out.join(&names[1]),
        // With `./`.
        Path::new(".").join(from_cwd).join(&names[2]),
        // As metadata.jsonl names it (relative to the output folder).
        PathBuf::from(&names[3]),
    ];
    reroll(&batch)
        .args(&spellings)
        .stderr_contains("set 4 image(s) aside")
        .run();
    for name in &names {
        assert!(!out.join(name).exists(), "{name} is set aside");
        assert!(out.join(".rejected").join(name).exists(), "{name}");
    }
    assert!(batch.index_lines().is_empty());
}

#[test]
fn reroll_refuses_names_it_cannot_set_aside_and_moves_nothing() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "42"]);
    let batch = Batch::new(FOUR_KITES);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let names = batch.index_file_names();
    // A name that matches nothing: nothing is rerolled, so it is not a success.
    reroll(&batch)
        .arg("no-such-image.webp")
        .status(2)
        .stderr_contains("no-such-image.webp")
        .run();
    // One good name and one typo: the typo is named and the good one is not moved.
    reroll(&batch)
        .arg(&names[0])
        .arg("typo.webp")
        .status(2)
        .stderr_contains("typo.webp")
        .run();
    assert!(batch.out().join(&names[0]).exists(), "nothing was moved");
    // A path outside the output folder, absolute or relative.
    let outside = batch.dir.path().join("elsewhere.webp");
    std::fs::copy(batch.out().join(&names[1]), &outside).unwrap();
    reroll(&batch)
        .arg(&outside)
        .status(2)
        .stderr_contains("not inside the output folder")
        .run();
    reroll(&batch)
        .arg("elsewhere.webp")
        .status(2)
        .stderr_contains("not inside the output folder")
        .run();
    assert_eq!(batch.index_lines().len(), 4);
    assert!(rejected_files(&batch).is_empty());
}

#[test]
fn an_image_rerolled_twice_keeps_both_rejects() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "43"]);
    let batch = Batch::new(FOUR_KITES);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let name = batch.index_file_names()[0].clone();
    let mut rejects = Vec::new();
    for _ in 0..2 {
        rejects.push(std::fs::read(batch.out().join(&name)).unwrap());
        reroll(&batch).arg(&name).run();
        let Finished { code, stderr, .. } = batch.run(&sim);
        assert_eq!(code, 0, "{stderr}");
    }
    assert_ne!(rejects[0], rejects[1], "the second reject is another image");
    let log = batch.jsonl(".rejected/rejected.jsonl");
    assert_eq!(log.len(), 2, "{log:?}");
    let mut kept = Vec::new();
    for line in &log {
        assert_eq!(line["file_name"], name.as_str());
        let set_aside = batch
            .out()
            .join(".rejected")
            .join(line["rejected_as"].as_str().unwrap());
        kept.push(std::fs::read(&set_aside).unwrap());
        assert!(
            set_aside.with_extension("json").is_file(),
            "its sidecar too"
        );
    }
    assert_eq!(
        kept, rejects,
        "both rejects survive, each where the log says"
    );
}

/// Two jobs whose seeds are fixed: one derived from the job key, one listed.
const FIXED_SEEDS: &str = "version: 1\nname: seeded\ndefaults: {models: [stable_diffusion], \
     params: {width: 64, height: 64}}\n\
     jobs:\n  - {name: derived, prompt: a red kite, images: 2, seeds: derived}\n  \
     - {name: listed, prompt: a blue kite, images: 2, seeds: [7, 8]}\n";

#[test]
fn rerolling_an_image_of_fixed_seeds_makes_a_new_image_with_a_new_seed() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "44"]);
    let batch = Batch::new(FIXED_SEEDS);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let rows = batch.index_lines();
    let pick = |job: &str, index: u64| {
        rows.iter()
            .find(|r| r["job"] == job && r["image_index"] == index)
            .map(|r| r["file_name"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let rerolled = [pick("derived", 0), pick("listed", 1)];
    let untouched = [pick("derived", 1), pick("listed", 0)];
    let before: Vec<(Vec<u8>, Value)> = rerolled
        .iter()
        .map(|n| {
            (
                std::fs::read(batch.out().join(n)).unwrap(),
                sidecar(&batch, n),
            )
        })
        .collect();
    let untouched_bytes: Vec<Vec<u8>> = untouched
        .iter()
        .map(|n| std::fs::read(batch.out().join(n)).unwrap())
        .collect();
    let job_keys = |batch: &Batch| -> std::collections::BTreeSet<String> {
        batch
            .jsonl("results.jsonl")
            .iter()
            .map(|r| r["job_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let keys_before = job_keys(&batch);

    // Said before anything is spent.
    let told = reroll(&batch).args(&rerolled).run();
    assert!(
        told.stderr.contains("fixed seed") && told.stderr.contains("new seed"),
        "{}",
        told.stderr
    );

    let generated = stat(&sim.stats(), "images_generated");
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stat(&sim.stats(), "images_generated") - generated, 2);
    assert!(stderr.contains("rerolled image"), "{stderr}");
    assert!(
        !stderr.contains("is gone from the output folder"),
        "{stderr}"
    );
    batch.assert_complete(4);
    for (name, (bytes, old)) in rerolled.iter().zip(&before) {
        let new = sidecar(&batch, name);
        assert_ne!(
            &std::fs::read(batch.out().join(name)).unwrap(),
            bytes,
            "{name} is a new image"
        );
        assert_ne!(new["seed"], old["seed"], "{name}: a new seed");
        assert_eq!(
            new["params"]["seed"], new["seed"],
            "{name}: the sidecar records the seed sent"
        );
        assert_eq!(new["job_key"], old["job_key"], "the job key is unchanged");
    }
    for (name, bytes) in untouched.iter().zip(&untouched_bytes) {
        assert_eq!(&std::fs::read(batch.out().join(name)).unwrap(), bytes);
    }
    assert_eq!(job_keys(&batch), keys_before, "the job keys are unchanged");
    // The new seed sticks: a later run makes nothing.
    let requests = stat(&sim.stats(), "requests_created");
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stat(&sim.stats(), "requests_created"), requests);
}

#[test]
fn reroll_keep_seed_warns_that_the_same_image_is_bought_again() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "45"]);
    let batch = Batch::new(FIXED_SEEDS);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let name = batch.index_file_names()[0].clone();
    let bytes = std::fs::read(batch.out().join(&name)).unwrap();
    reroll(&batch)
        .arg("--keep-seed")
        .arg(&name)
        .stderr_contains("the same image again")
        .run();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read(batch.out().join(&name)).unwrap(), bytes);
}

// ---------------------------------------------------------------- merge

#[test]
fn an_absurd_shard_count_is_refused_when_the_command_line_is_read() {
    let batch = Batch::new(FOUR_KITES);
    HordeBatch::new()
        .arg("run")
        .arg(&batch.manifest)
        .args(["--simulate", "--shard", "1/999999999"])
        .status(2)
        .stderr_contains("10000")
        .run();
    assert!(!batch.out().exists(), "nothing was started");
}

#[test]
fn merge_waits_only_for_shards_that_hold_jobs_and_lists_none_by_number() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "46"]);
    let batch = Batch::new(
        "version: 1\nname: few\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: a kite, images: 2}\n",
    );
    let listed = HordeBatch::new()
        .args(["plan", "--list", "--json"])
        .arg(&batch.manifest)
        .run();
    let job: Value = serde_json::from_str(listed.stdout.lines().next().unwrap()).unwrap();
    let key = u64::from_str_radix(job["key"].as_str().unwrap(), 16).unwrap();
    let shard = format!("{}/10000", key % 10_000 + 1);
    batch
        .horde_batch(&sim, "run")
        .args(["--shard", &shard])
        .run();
    // The other 9,999 shards hold no job: the batch is complete.
    let merged = HordeBatch::new()
        .arg("merge")
        .arg(&batch.manifest)
        .stderr_contains("merged 1 of 10000 shard(s)")
        .run();
    assert!(merged.stderr.len() < 2_000, "{}", merged.stderr);
    assert_eq!(batch.index_lines().len(), 2);
}

/// Six jobs over two shards, on a Horde slow enough that a run can be caught in flight.
const SIX_JOBS: &str = "version: 1\nname: halves\ndefaults: {models: [stable_diffusion], \
     params: {width: 64, height: 64}}\n\
     jobs:\n  - {name: a, prompt: 'a {red|green|blue|white|black|grey} kite', images: 1}\n";

#[test]
fn merge_refuses_a_shard_that_is_running_or_unfinished_unless_partial() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "2s", "--seed", "47"]);
    let batch = Batch::new(SIX_JOBS);
    let merge = || HordeBatch::new().arg("merge").arg(&batch.manifest);
    batch
        .horde_batch(&sim, "run")
        .args(["--shard", "1/2"])
        .run();
    let first = batch.jsonl("shard-1-of-2/shard-metadata.jsonl").len();
    assert!((1..6).contains(&first), "both shards hold jobs: {first}");

    let mut second = batch
        .command(&sim, "run")
        .args(["--shard", "2/2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = batch.out().join("shard-2-of-2/.horde-batch/run.pid");
    wait_until("shard 2 runs", Duration::from_secs(30), || pid.exists());
    merge()
        .status(4)
        .stderr_contains("shard 2 of 2 is running")
        .run();
    assert!(
        !batch.out().join("metadata.jsonl").exists(),
        "nothing merged"
    );

    signal(&second, "KILL");
    wait_exit(&mut second, Duration::from_secs(10));
    merge().status(1).stderr_contains("unfinished: 2").run();
    assert!(
        !batch.out().join("metadata.jsonl").exists(),
        "nothing merged"
    );
    merge().arg("--partial").stderr_contains("partial").run();
    assert_eq!(batch.index_lines().len(), first);

    batch
        .horde_batch(&sim, "run")
        .args(["--shard", "2/2"])
        .run();
    merge().stderr_contains("merged 2 of 2 shard(s)").run();
    assert_eq!(batch.index_lines().len(), 6);
}
