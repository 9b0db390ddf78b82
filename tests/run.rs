//! `horde-batch run` end to end against `horde-batch sim` on loopback: the
//! smoke manifest completes with the right image in every file; a SIGKILL
//! mid-run resumes without duplicates or losses; Ctrl-C and `cancel` leave
//! nothing unretrieved on the Horde; each failure class ends as it should.

use std::time::Duration;

use crate::common::{signal, stat, wait_exit, walk, Batch, Finished, HordeBatch, Sim};
use serde_json::Value;

#[test]
fn smoke_200_completes_with_the_right_image_in_every_file() {
    let sim = Sim::unlimited(&["--workers", "8", "--latency", "10ms..40ms", "--seed", "1"]);
    let batch = Batch::smoke();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(200);
    let stats = sim.stats();
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0, "{stats}");
    assert_eq!(
        stat(&stats, "rate_limited"),
        0,
        "no limiter 429s under default settings"
    );
    assert_eq!(stat(&stats, "too_many_prompts"), 0);
    assert_eq!(
        stat(&stats, "images_generated"),
        200,
        "nothing generated twice"
    );
    let calls: u64 = stats["calls"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|v| v.as_object().unwrap().values())
        .map(|v| v.as_u64().unwrap())
        .sum();
    eprintln!(
        "HTTP requests per image: {:.3} ({calls} API calls + {} downloads for 200 images)",
        (calls + stat(&stats, "r2_downloads")) as f64 / 200.0,
        stat(&stats, "r2_downloads")
    );

    // A finished manifest is a no-op.
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("0 images saved now, 200 before"),
        "{stderr}"
    );
    assert_eq!(
        stat(&sim.stats(), "requests_created"),
        stat(&stats, "requests_created")
    );
}

#[test]
fn sigkill_mid_run_then_resume_loses_and_duplicates_nothing() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "100ms..300ms", "--seed", "2"]);
    let batch = Batch::smoke();
    batch.kill_run_after(&sim, 40);
    // What a script sees after the kill: not active, not finished, the requests
    // left on the Horde named with their ids.
    let status = batch.status_json();
    assert_eq!(
        (status["active"].as_bool(), status["finished"].as_bool()),
        (Some(false), Some(false)),
        "{status}"
    );
    assert_eq!(status["jobs"], 25, "{status}");
    // The ledger may not yet know the last images written before the kill
    // (their record is made durable with the slot's next step); the resumed
    // run adopts them, so they are never made twice.
    let saved = status["images_saved"].as_u64().unwrap();
    assert!(
        (1..=batch.index_lines().len() as u64).contains(&saved),
        "{status}"
    );
    let in_flight = status["in_flight"].as_array().unwrap();
    assert_eq!(
        in_flight.len() as u64,
        status["requests_in_flight"].as_u64().unwrap()
    );
    let before = sim.stats();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(200);
    let after = sim.stats();
    assert_eq!(
        stat(&after, "requests_never_retrieved"),
        0,
        "every request was retrieved: {after}"
    );
    assert_eq!(stat(&after, "requests_cancelled"), 0);
    // Re-attached, not resubmitted: no request alive at the kill was submitted again,
    // so every image generated was retrieved and none was generated twice.
    assert_eq!(stat(&after, "images_generated"), 200, "{before}\n{after}");
}

#[test]
fn ctrl_c_cancels_everything_in_flight_and_exits_130() {
    let sim = Sim::start(&["--workers", "2", "--latency", "300ms..600ms", "--seed", "3"]);
    let batch = Batch::smoke();
    let mut child = batch.spawn_run(&sim);
    batch.wait_for_images(6, Duration::from_secs(60));
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    let stats = sim.stats();
    assert!(stat(&stats, "requests_cancelled") > 0, "{stats}");
    assert_eq!(
        stat(&stats, "requests_never_retrieved"),
        0,
        "every request was retrieved or cancelled: {stats}"
    );
    let saved = batch.index_lines().len();
    assert!(saved >= 6);
    // The cancelled run resumes to completion.
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(200);
}

#[test]
fn cancel_after_a_sigkill_cancels_what_the_run_left() {
    let sim = Sim::start(&["--workers", "2", "--latency", "300ms..600ms", "--seed", "4"]);
    let batch = Batch::smoke();
    batch.kill_run_after(&sim, 4);
    assert!(
        stat(&sim.stats(), "requests_never_retrieved") > 0,
        "the killed run left requests behind"
    );
    batch.horde_batch(&sim, "cancel").run();
    let stats = sim.stats();
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0, "{stats}");
}

#[test]
fn faulted_and_censored_images_are_replaced() {
    let sim = Sim::unlimited(&[
        "--workers",
        "8",
        "--latency",
        "10ms..30ms",
        "--fault-rate",
        "0.2",
        "--censor-rate",
        "0.1",
        "--seed",
        "5",
    ]);
    let manifest = std::fs::read_to_string("manifests/smoke-200.yaml").unwrap();
    let batch = Batch::new(
        &manifest
            .replace("images: 8", "images: 4")
            .replace("jobs:", "run: {retries: 20}\njobs:"),
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(100);
    let stats = sim.stats();
    assert!(
        stat(&stats, "images_faulted") > 0 && stat(&stats, "images_censored") > 0,
        "{stats}"
    );
    let lines = batch.index_lines();
    assert!(
        lines.iter().all(|l| l["censored"] == false),
        "reroll keeps no censored image"
    );
    assert!(stderr.contains("resubmits"), "{stderr}");
}

#[test]
fn expired_requests_are_resubmitted() {
    // One worker that needs 2 s per request of 5 and a 1 s expiry: the request
    // queued behind the first one always expires before a worker picks it up.
    let sim = Sim::start(&[
        "--workers",
        "1",
        "--latency",
        "400ms",
        "--expiry",
        "1s",
        "--cleanup-interval",
        "200ms",
        "--seed",
        "6",
    ]);
    let batch = Batch::new(
        "version: 1\nname: expiry\ndefaults: {models: [stable_diffusion]}\nrun: {retries: 30}\njobs:\n  - {name: a, prompt: 'a {red|blue|green|white} ball', images: 5}\n",
    );
    // Requests expire 1 s after their last activity here (20 minutes on the real
    // Horde, where checks are at most 30 s apart): checks scale down with it.
    batch
        .horde_batch(&sim, "run")
        .env("HORDE_BATCH_POLL_CAP", "600ms")
        .stderr_contains("expired")
        .run();
    batch.assert_complete(20);
    assert!(
        stat(&sim.stats(), "requests_expired") > 0,
        "{}",
        sim.stats()
    );
}

#[test]
fn too_many_prompts_lowers_the_budget_and_completes() {
    let sim = Sim::start(&[
        "--workers",
        "1",
        "--latency",
        "150ms",
        "--api-key",
        "k-test-concurrency",
        "--user-concurrency",
        "10",
        "--seed",
        "7",
    ]);
    let batch = Batch::new(
        "version: 1\nname: tmp\ndefaults: {models: [stable_diffusion]}\nrun: {max_in_flight: 40, max_n: 8}\njobs:\n  - {name: a, prompt: 'a {red|blue|green|white} box', images: 8}\n",
    );
    batch
        .horde_batch(&sim, "run")
        .env("AI_HORDE_API_KEY", "k-test-concurrency")
        .stderr_contains("lowering it")
        .run();
    batch.assert_complete(32);
    let stats = sim.stats();
    assert!(
        stat(&stats, "too_many_prompts") > 0,
        "the sim refused at least once: {stats}"
    );
}

#[test]
fn transient_chaos_is_survived() {
    let sim = Sim::unlimited(&[
        "--workers",
        "8",
        "--latency",
        "10ms..30ms",
        "--chaos-5xx",
        "0.1",
        "--chaos-drop",
        "0.05",
        "--chaos-malformed",
        "0.05",
        "--seed",
        "8",
    ]);
    let batch = Batch::new(
        &std::fs::read_to_string("manifests/smoke-200.yaml")
            .unwrap()
            .replace("images: 8", "images: 2"),
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(50);
    assert!(stderr.contains("transient errors"), "{stderr}");
}

#[test]
fn a_job_for_a_model_no_worker_serves_fails_at_once_and_the_rest_run() {
    let sim = Sim::start(&["--workers", "2", "--latency", "10ms", "--seed", "9"]);
    let batch = Batch::new(
        "version: 1\nname: noworker\nrun: {timeouts: {no_worker: 2s}}\njobs:\n  - {name: good, prompt: ok, models: [stable_diffusion], images: 2}\n  - {name: bad, prompt: never, models: [stable_difusion], images: 2}\n",
    );
    // Pre-flight: the bad job fails before anything is spent on it; the good one runs.
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 1, "{stderr}");
    batch.assert_complete(2);
    assert_eq!(stat(&sim.stats(), "requests_created"), 1);
    let errors = std::fs::read_to_string(batch.out().join("errors.jsonl")).unwrap();
    let error: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(error["job"], "bad");
    assert_eq!(error["class"], "no_worker");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("no worker serves stable_difusion")
            && message.contains("closest to it: stable_diffusion"),
        "the served models closest to the name are listed: {message}"
    );

    // Told to wait: the job waits up to its no-worker timeout, then fails alone.
    batch
        .horde_batch(&sim, "run")
        .arg("--wait-for-workers")
        .status(1)
        .run();
    batch.assert_complete(2);
    let errors = std::fs::read_to_string(batch.out().join("errors.jsonl")).unwrap();
    let error: Value = serde_json::from_str(errors.lines().last().unwrap()).unwrap();
    assert_eq!(error["job"], "bad");
    assert_eq!(error["class"], "no_worker");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("no worker could serve"),
        "{error}"
    );
    assert_eq!(
        stat(&sim.stats(), "requests_never_retrieved"),
        0,
        "the abandoned request was cancelled"
    );
}

#[test]
fn a_refused_key_exits_3() {
    let sim = Sim::start(&["--seed", "10"]);
    let batch = Batch::new("version: 1\nname: auth\ndefaults: {models: [stable_diffusion]}\njobs:\n  - {name: a, prompt: x}\n");
    let refused = batch
        .horde_batch(&sim, "run")
        .env("AI_HORDE_API_KEY", "not-a-known-key")
        .status(3)
        .run();
    assert!(
        !refused.stderr.contains("not-a-known-key"),
        "the key is never printed"
    );
}

#[test]
fn a_second_run_on_the_same_state_is_refused() {
    let sim = Sim::start(&["--workers", "1", "--latency", "500ms", "--seed", "11"]);
    let batch = Batch::smoke();
    let mut first = batch.spawn_run(&sim);
    batch.wait_for_images(1, Duration::from_secs(60));
    // Stands for a file the running run is writing right now.
    let writing = batch.out().join(".hb-tmp-being-written");
    std::fs::write(&writing, b"half an image").unwrap();
    let Finished { code, stderr, .. } = batch.run(&sim);
    let left_alone = writing.exists();
    signal(&first, "KILL");
    wait_exit(&mut first, Duration::from_secs(10));
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains(&first.id().to_string()),
        "the error names the running process: {stderr}"
    );
    assert!(
        left_alone,
        "the refused run took the running one's temp file for a leftover"
    );
}

#[test]
fn limiter_429s_are_waited_out() {
    // Two runs from one address submit at twice the per-IP limit between them:
    // the sim answers 429 with Retry-After, and both runs still complete.
    let sim = Sim::start(&["--workers", "8", "--latency", "10ms..30ms", "--seed", "12"]);
    let manifest = "version: 1\nname: first\ndefaults: {models: [stable_diffusion]}\njobs:\n  - {name: a, prompt: 'a {red|green|blue|white|black} {cube|ball}'}\n";
    let first = Batch::new(manifest);
    let second = Batch::new(&manifest.replace("name: first", "name: second"));
    // As from two hosts behind one address: on one host they would share a
    // pacer and never collide (tests/pacing.rs).
    let spawn = |batch: &Batch| {
        batch
            .command(&sim, "run")
            .env("HORDE_BATCH_SHARED_PACING", "off")
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(&first), spawn(&second));
    for (child, batch) in [(a, &first), (b, &second)] {
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        batch.assert_complete(10);
    }
    let stats = sim.stats();
    assert!(
        stat(&stats, "rate_limited") > 0,
        "the runs were rate limited: {stats}"
    );
    assert_eq!(stat(&stats, "requests_never_retrieved"), 0);
}

#[test]
fn a_damaged_ledger_is_refused_then_rebuilt_from_the_sidecars() {
    let sim = Sim::unlimited(&["--workers", "8", "--latency", "10ms..30ms", "--seed", "13"]);
    let batch = Batch::new(
        &std::fs::read_to_string("manifests/smoke-200.yaml")
            .unwrap()
            .replace("images: 8", "images: 2"),
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    // Lose some images and damage the ledger.
    let out = batch.out();
    let lines = batch.index_lines();
    for line in lines.iter().take(5) {
        let image = out.join(line["file_name"].as_str().unwrap());
        std::fs::remove_file(&image).unwrap();
        std::fs::remove_file(image.with_extension("json")).unwrap();
    }
    let ledger = out.join(".horde-batch/ledger");
    for entry in std::fs::read_dir(&ledger).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, b"garbage, not a ledger").unwrap();
        }
    }
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("--rebuild-state"), "{stderr}");

    let before = sim.stats();
    batch
        .horde_batch(&sim, "run")
        .arg("--rebuild-state")
        .stderr_contains("rebuilt the ledger from 45 images on disk")
        .run();
    // Only the 5 lost images (of 3 request slots) were asked for again.
    let webps = walk(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "webp"))
        .count();
    assert_eq!(webps, 50);
    let after = sim.stats();
    assert_eq!(
        stat(&after, "images_generated") - stat(&before, "images_generated"),
        5
    );
    assert_eq!(
        stat(&after, "requests_created") - stat(&before, "requests_created"),
        3
    );
    assert!(std::fs::read_dir(out.clone()).unwrap().flatten().any(|e| e
        .file_name()
        .to_string_lossy()
        .starts_with(".horde-batch.damaged-")));
}

#[test]
fn raising_images_asks_only_for_the_new_ones() {
    let sim = Sim::unlimited(&["--workers", "8", "--latency", "10ms..30ms", "--seed", "14"]);
    let text = "version: 1\nname: grow\ndefaults: {models: [stable_diffusion]}\nrun: {max_n: 4}\njobs:\n  - {name: a, prompt: 'a {red|blue} cone', images: 3}\n";
    let batch = Batch::new(text);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(6);
    std::fs::write(&batch.manifest, text.replace("images: 3", "images: 6")).unwrap();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(12);
    assert_eq!(
        stat(&sim.stats(), "images_generated"),
        12,
        "only the 6 new images were generated"
    );
    // results.jsonl tells the current truth: one line per job, all 6 images.
    let results = batch.jsonl("results.jsonl");
    assert_eq!(results.len(), 2, "{results:?}");
    for result in &results {
        assert_eq!(result["images"].as_array().unwrap().len(), 6, "{result}");
    }
    // A rerun of the finished manifest leaves it as it is.
    let before = std::fs::read(batch.out().join("results.jsonl")).unwrap();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read(batch.out().join("results.jsonl")).unwrap(),
        before
    );
}

#[test]
fn a_simulated_run_accepts_the_key_a_user_has_exported() {
    // A real user has AI_HORDE_API_KEY set; `--simulate` must not refuse it.
    let batch = Batch::new(
        "version: 1\nname: rehearsal\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: a kite, images: 2}\n",
    );
    let run = HordeBatch::new()
        .args(["run", "--simulate"])
        .arg(&batch.manifest)
        .env("AI_HORDE_API_KEY", "a-real-users-key-0123")
        .run();
    assert!(
        !run.stderr.contains("a-real-users-key-0123"),
        "{}",
        run.stderr
    );
    batch.assert_complete(2);
}

#[test]
fn a_state_folder_belongs_to_one_manifest() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "15"]);
    let job = "defaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\n\
               jobs:\n  - {name: a, prompt: a kite, images: 2}\n";
    let first = Batch::new(&format!("version: 1\nname: first\n{job}"));
    let second = Batch::new(&format!("version: 1\nname: second\n{job}"));
    let state = first.dir.path().join("shared-state");
    let run = |batch: &Batch| {
        let output = batch
            .command(&sim, "run")
            .arg("--state")
            .arg(&state)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&first);
    assert_eq!(code, Some(0), "{stderr}");
    first.assert_complete(2);
    // The same job (same prompt and parameters) in another manifest is not
    // taken for done: the second manifest is refused before anything happens.
    let (code, stderr) = run(&second);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("belongs to the manifest `first`"),
        "{stderr}"
    );
    assert!(second.index_lines().is_empty());
    first.assert_complete(2);
}

#[test]
fn a_deleted_state_folder_is_rebuilt_from_the_output_and_nothing_is_paid_again() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "16"]);
    let batch = Batch::new(
        "version: 1\nname: rebuilt\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: 'a {red|blue} kite', images: 3}\n",
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(6);
    std::fs::remove_dir_all(batch.state()).unwrap();
    let before = stat(&sim.stats(), "requests_created");
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("rebuilt it from the 6 images"), "{stderr}");
    assert_eq!(
        stat(&sim.stats(), "requests_created"),
        before,
        "nothing submitted"
    );
    batch.assert_complete(6);
}

#[test]
fn a_deleted_image_comes_back_and_nothing_else_is_made_again() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "17"]);
    let batch = Batch::new(
        "version: 1\nname: regrow\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\nrun: {max_n: 4}\n\
         jobs:\n  - {name: a, prompt: 'a {red|blue} kite', images: 4}\n",
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(8);
    // The user deletes one image and keeps its sidecar.
    let image = batch
        .out()
        .join(batch.index_lines()[1]["file_name"].as_str().unwrap());
    let old_sidecar = std::fs::read_to_string(image.with_extension("json")).unwrap();
    std::fs::remove_file(&image).unwrap();
    let before = sim.stats();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("1 image(s) saved earlier were gone"),
        "{stderr}"
    );
    let after = sim.stats();
    assert_eq!(
        stat(&after, "images_generated") - stat(&before, "images_generated"),
        1,
        "exactly that image was made again"
    );
    assert!(image.exists());
    let new_sidecar = std::fs::read_to_string(image.with_extension("json")).unwrap();
    assert_ne!(
        new_sidecar, old_sidecar,
        "the sidecar describes the new image"
    );
    // Index, results and files agree again: 8 images, one index row each.
    batch.assert_complete(8);
    let results = batch.jsonl("results.jsonl");
    assert_eq!(results.len(), 2);
}

#[test]
fn stray_files_in_the_output_folder_are_reported_and_left_alone() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "18"]);
    let batch = Batch::new(
        "version: 1\nname: strays\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: a kite, images: 2}\n",
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    // A sidecar whose image the user moved away, and an image copied in by hand.
    let first = batch
        .out()
        .join(batch.index_lines()[0]["file_name"].as_str().unwrap());
    std::fs::copy(
        first.with_extension("json"),
        batch.out().join("orphan.json"),
    )
    .unwrap();
    std::fs::copy(&first, batch.out().join("copied-in.webp")).unwrap();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("without their other half")
            && stderr.contains("sidecars_without_image=1")
            && stderr.contains("images_without_sidecar=1")
            && stderr.contains("orphan.json")
            && stderr.contains("copied-in.webp"),
        "{stderr}"
    );
    // Never trusted: neither is in the index.
    let index = batch.index_lines();
    assert_eq!(index.len(), 2);
    assert!(index.iter().all(|row| row["file_name"] != "copied-in.webp"));
}

#[test]
fn three_shards_at_once_make_exactly_the_plan_and_merge_into_one_index() {
    let sim = Sim::unlimited(&["--workers", "8", "--latency", "10ms..30ms", "--seed", "19"]);
    let batch = Batch::new(
        "version: 1\nname: sharded\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\n\
         jobs:\n  - {name: a, prompt: 'a {red|green|blue|white} {cube|ball|cone}', images: 2}\n",
    );
    let mut children: Vec<_> = (1..=3)
        .map(|i| {
            batch
                .command(&sim, "run")
                .args(["--shard", &format!("{i}/3")])
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut children {
        assert_eq!(wait_exit(child, Duration::from_secs(60)), 0);
    }
    // Each shard did only its own jobs: the plan, once, across the three.
    assert_eq!(stat(&sim.stats(), "images_generated"), 24);
    HordeBatch::new().arg("merge").arg(&batch.manifest).run();
    let index = batch.index_lines();
    assert_eq!(index.len(), 24);
    let mut names = std::collections::BTreeSet::new();
    for row in &index {
        let name = row["file_name"].as_str().unwrap();
        assert!(name.starts_with("shard-"), "{name}");
        assert!(batch.out().join(name).exists(), "{name}");
        assert!(row["seed"].is_string(), "one JSON type per column: {row}");
        assert!(names.insert(name.to_owned()), "{name} twice");
    }
    let results = batch.jsonl("results.jsonl");
    let keys: std::collections::BTreeSet<_> = results
        .iter()
        .map(|r| r["job_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!((results.len(), keys.len()), (12, 12));
    // The merged index loads with Hugging Face `datasets`: 24 rows, one per image.
    if let Some(loaded) = crate::dataset::load_imagefolder(&batch.out()) {
        let rows = loaded["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 24);
        let generations: std::collections::BTreeSet<_> = rows
            .iter()
            .map(|r| r["generation_id"].to_string())
            .collect();
        assert_eq!(generations.len(), 24);
        assert_eq!(loaded["sizes"], serde_json::json!([[64, 64]]));
    }
    // A shard run again has nothing left to do.
    let before = stat(&sim.stats(), "requests_created");
    batch
        .horde_batch(&sim, "run")
        .args(["--shard", "2/3"])
        .run();
    assert_eq!(stat(&sim.stats(), "requests_created"), before);
}

#[test]
fn failures_lists_what_failed_and_retry_failed_runs_only_that() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "20"]);
    let text = "version: 1\nname: retry\ndefaults: {params: {width: 64, height: 64}}\njobs:\n  \
                - {name: good, prompt: ok, models: [stable_diffusion], images: 2}\n  \
                - {name: bad, prompt: never, models: [no-such-model], images: 2}\n";
    let batch = Batch::new(text);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 1, "{stderr}");
    let failures = |batch: &Batch| -> Vec<Value> {
        HordeBatch::new()
            .args(["failures", "--json"])
            .arg(&batch.manifest)
            .run()
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let listed = failures(&batch);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0]["job"].as_str(), listed[0]["class"].as_str()),
        (Some("bad"), Some("no_worker"))
    );
    // A job added since is not run by --retry-failed; the failed one is tried again.
    std::fs::write(
        &batch.manifest,
        format!("{text}  - {{name: new, prompt: later, models: [stable_diffusion], images: 2}}\n"),
    )
    .unwrap();
    let before = stat(&sim.stats(), "requests_created");
    batch
        .horde_batch(&sim, "run")
        .arg("--retry-failed")
        .status(1)
        .stderr_contains("retrying 1 failed job(s) only")
        .run();
    assert_eq!(
        stat(&sim.stats(), "requests_created"),
        before,
        "the new job was not run"
    );
    let listed = failures(&batch);
    assert_eq!(listed[0]["failures"], 2, "its history is kept: {listed:?}");
}

#[test]
fn reroll_sets_three_images_aside_and_the_next_run_makes_exactly_those_again() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "21"]);
    let batch = Batch::new(
        "version: 1\nname: cull\ndefaults: {models: [stable_diffusion], \
         params: {width: 64, height: 64}}\nrun: {max_n: 3}\n\
         jobs:\n  - {name: a, prompt: 'a {red|blue} kite', images: 3}\n",
    );
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let names = batch.index_file_names();
    let rejected = &names[..3];
    let kept: Vec<(String, Vec<u8>)> = names[3..]
        .iter()
        .map(|n| (n.clone(), std::fs::read(batch.out().join(n)).unwrap()))
        .collect();
    let list = batch.dir.path().join("rejected.txt");
    std::fs::write(&list, rejected.join("\n")).unwrap();
    HordeBatch::new()
        .arg("reroll")
        .arg(&batch.manifest)
        .arg("--from")
        .arg(&list)
        .run();
    for name in rejected {
        assert!(!batch.out().join(name).exists());
        assert!(
            batch.out().join(".rejected").join(name).exists(),
            "{name} set aside"
        );
    }
    assert_eq!(batch.index_lines().len(), 3, "their index rows are gone");

    let before = stat(&sim.stats(), "images_generated");
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stat(&sim.stats(), "images_generated") - before,
        3,
        "exactly 3 new images"
    );
    batch.assert_complete(6);
    for name in rejected {
        assert!(
            batch.out().join(name).exists(),
            "{name} made again under its name"
        );
    }
    for (name, bytes) in &kept {
        assert_eq!(
            &std::fs::read(batch.out().join(name)).unwrap(),
            bytes,
            "{name} untouched"
        );
    }
    let results = batch.jsonl("results.jsonl");
    assert!(results
        .iter()
        .all(|r| r["images"].as_array().unwrap().len() == 3));
}

/// A resumed run starts with the jobs after the prefix that earlier runs
/// settled, and looks at that prefix last: a job of it whose image was
/// deleted is made again, after every other job was submitted.
#[test]
fn a_resumed_run_starts_after_the_settled_prefix_and_checks_it_last() {
    // A key with room for one image at a time: jobs start one after the
    // other, so the order of submits is the order in which jobs are looked at.
    const KEY: &str = "settled-prefix-test-key";
    let sim = Sim::unlimited(&[
        "--api-key",
        &format!("{KEY},concurrency=1"),
        "--workers",
        "2",
        "--latency",
        "100ms",
        "--seed",
        "31",
    ]);
    let batch = Batch::new(
        "version: 1\nname: prefix\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64, steps: 5}\n\
         jobs:\n  - name: item\n    prompt: 'item ${i}'\n    matrix: {i: '1-12'}\n",
    );
    let mut child = batch
        .command(&sim, "run")
        .env("AI_HORDE_API_KEY", KEY)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    batch.wait_for_images(4, Duration::from_secs(60));
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    assert!(
        batch.out().join(".horde-batch/settled-prefix").is_file(),
        "the interrupted run wrote its settled prefix"
    );
    let first = batch
        .index_lines()
        .into_iter()
        .find(|row| row["text"] == "item 1")
        .expect("the first job was done before the interrupt");
    let first_key = first["job_key"].as_str().unwrap().to_owned();
    std::fs::remove_file(batch.out().join(first["file_name"].as_str().unwrap())).unwrap();

    let output = batch
        .command(&sim, "run")
        .env("AI_HORDE_API_KEY", KEY)
        .env("RUST_LOG", "horde_batch=debug")
        .args(["--log-format", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let message = |line: &Value| line["fields"]["message"].as_str().unwrap_or("").to_owned();
    let skipped = lines
        .iter()
        .find(|line| message(line).starts_with("starting after the jobs earlier runs settled"))
        .and_then(|line| line["fields"]["jobs"].as_u64())
        .expect("the run started after the settled prefix");
    assert!((1..12).contains(&skipped), "{skipped} jobs settled");
    let submitted: Vec<String> = lines
        .iter()
        .filter(|line| message(line) == "submitted")
        .map(|line| {
            let key = line["fields"]["key"].as_str().unwrap();
            key.split('/').next().unwrap().to_owned()
        })
        .collect();
    assert!(submitted.len() >= 2, "{submitted:?}");
    assert_eq!(
        submitted.last(),
        Some(&first_key),
        "the deleted image of the prefix's first job is made again last ({skipped} settled): {stderr}"
    );
    assert_eq!(
        submitted.iter().filter(|key| **key == first_key).count(),
        1,
        "and once"
    );
    batch.assert_complete(12);
}
