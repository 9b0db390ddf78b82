//! Alchemy end to end against the simulated Horde: forms on every saved image
//! (captions, NSFW flags, upscales) in the sidecars, `metadata.jsonl` and
//! kohya `.txt` files; kills and a resume pay each form once (or say which
//! may have been paid twice); `caption` over a folder horde-batch did not
//! make; a form nobody serves reported at once; an expired upscale URL redone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::{
    signal, stat, wait_exit, wait_until, Batch, HordeBatch, Sim, FAST_ALCHEMISTS, RUN_LIMIT,
};

/// A manifest of `images` 64² images in `jobs` jobs, every image with `forms`.
fn manifest(jobs: u32, images: u32, forms: &str, extra_output: &str) -> String {
    let mut text = format!(
        "version: 1\nname: alchemy\ndefaults:\n  models: [stable_diffusion]\n  params: {{width: 64, height: 64, steps: 4}}\n  alchemy: [{forms}]\n{extra_output}jobs:\n"
    );
    for job in 0..jobs {
        text.push_str(&format!(
            "  - name: j{job}\n    prompt: \"a lighthouse number {job}\"\n    images: {images}\n"
        ));
    }
    text
}

/// The lowercase hex SHA-256 of a file, as the sim keys what it charged.
fn digest_of(path: &Path) -> String {
    crate::sim_alchemy::sha256_hex(&std::fs::read(path).unwrap())
}

/// Forms the sim charged for each image file of `rows` (by file name).
fn charged(sim: &Sim, out: &Path, rows: &[Value]) -> BTreeMap<String, BTreeMap<String, u64>> {
    let stats = sim.stats();
    let by_source = &stats["alchemy_charged"];
    rows.iter()
        .map(|row| {
            let file = row["file_name"].as_str().unwrap().to_owned();
            let key = digest_of(&out.join(&file));
            let forms = by_source[&key]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                        .collect()
                })
                .unwrap_or_default();
            (file, forms)
        })
        .collect()
}

fn originals(rows: &[Value]) -> Vec<Value> {
    rows.iter()
        .filter(|row| row["alchemy_of"].is_null())
        .cloned()
        .collect()
}

#[test]
fn a_run_gives_every_image_its_caption_nsfw_flag_and_upscale_once() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let batch = Batch::new(&manifest(
        20,
        10,
        "caption, nsfw, RealESRGAN_x2plus",
        "output:\n  caption_files: true\n  metadata:\n    caption_from: alchemy\n",
    ));
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("alchemy: 200/200 images done"),
        "{}",
        finished.stderr
    );
    // Upscales and caption files beside their image are not strays.
    assert!(
        !finished.stderr.contains("without their other half"),
        "{}",
        finished.stderr
    );
    // Nor images to review on the report page.
    let page = std::fs::read_to_string(batch.out().join("report.html")).unwrap();
    assert!(page.contains(".webp") && !page.contains("RealESRGAN_x2plus.webp"));

    let rows = batch.index_lines();
    let originals = originals(&rows);
    assert_eq!(originals.len(), 200);
    assert_eq!(rows.len(), 400, "one row per upscaled image too");
    let out = batch.out();
    for row in &originals {
        let file = row["file_name"].as_str().unwrap();
        let caption = row["text"]
            .as_str()
            .expect("the caption column holds the alchemy caption");
        assert!(!caption.is_empty());
        assert!(
            row["prompt"].as_str().unwrap().starts_with("a lighthouse"),
            "{row}"
        );
        assert!(row["nsfw"].is_boolean(), "{row}");
        // The kohya caption file says the same.
        let stem = file.trim_end_matches(".webp");
        let txt = std::fs::read_to_string(out.join(format!("{stem}.txt"))).unwrap();
        assert_eq!(txt.trim_end(), caption);
        // The sidecar has the forms too.
        let sidecar: Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{stem}.json"))).unwrap())
                .unwrap();
        assert_eq!(sidecar["alchemy"]["caption"], row["text"]);
        // The upscale is a verified WebP of twice the size, with its own row.
        let upscale = format!("{stem}.RealESRGAN_x2plus.webp");
        let derived = rows
            .iter()
            .find(|r| r["file_name"] == upscale.as_str())
            .unwrap_or_else(|| panic!("no row for {upscale}"));
        assert_eq!(derived["alchemy_of"], file);
        assert_eq!(
            (derived["width"].as_u64(), derived["height"].as_u64()),
            (Some(128), Some(128))
        );
        assert!(out.join(&upscale).is_file());
    }
    // Each form of each image was paid for exactly once, and nothing is left on the Horde.
    for (file, forms) in charged(&sim, &out, &originals) {
        let expected: BTreeMap<String, u64> = ["caption", "nsfw", "RealESRGAN_x2plus"]
            .iter()
            .map(|f| ((*f).to_owned(), 1))
            .collect();
        assert_eq!(forms, expected, "{file}");
    }
    let stats = sim.stats();
    assert_eq!(stat(&stats, "alchemy_forms_open"), 0);
    assert_eq!(stat(&stats, "alchemy_forms_unretrieved"), 0);

    // `status` reads the same figures from the ledger, and the run's last
    // progress line (its live counts) agrees with them.
    let status = batch.status_json();
    let last_progress: Value = finished
        .stderr
        .lines()
        .rev()
        .filter(|line| line.starts_with('{'))
        .find_map(|line| serde_json::from_str(line).ok())
        .expect("progress lines");
    assert_eq!(last_progress["alchemy"], status["alchemy"]);
    assert_eq!(status["alchemy"]["images_done"], 200);
    assert_eq!(status["finished"], true);
    assert_eq!(status["alchemy"]["forms_done"], 600);
    assert_eq!(status["alchemy"]["forms_failed"], 0);

    // A rerun asks for nothing more.
    let created = stat(&stats, "alchemy_requests_created");
    assert_eq!(batch.run(&sim).code, 0);
    assert_eq!(stat(&sim.stats(), "alchemy_requests_created"), created);

    // Hugging Face's loader reads the caption column.
    if let Some(loaded) = crate::dataset::load_imagefolder(&out) {
        let rows = loaded["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 400);
        assert!(rows
            .iter()
            .all(|r| r["text"].is_string() && r["nsfw"].is_boolean()));
    }
}

#[test]
fn kills_at_random_moments_then_a_resume_pay_each_form_once_or_say_so() {
    // A slow submit answer, so that kills land between a POST and its id being recorded.
    let mut args = FAST_ALCHEMISTS.to_vec();
    args.extend(["--submit-latency", "150ms"]);
    let sim = Sim::unlimited(&args);
    let batch = Batch::new(&manifest(6, 5, "caption, nsfw", ""));
    for round in 0..4u64 {
        let mut child = batch.spawn_run(&sim);
        let before = stat(&sim.stats(), "alchemy_requests_created");
        wait_until("alchemy requests", Duration::from_secs(60), || {
            stat(&sim.stats(), "alchemy_requests_created") > before + round % 3
                || child.try_wait().unwrap().is_some()
        });
        signal(&child, "KILL");
        wait_exit(&mut child, Duration::from_secs(10));
    }
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 30);
    assert!(rows
        .iter()
        .all(|r| r["caption"].is_string() && r["nsfw"].is_boolean()));
    let status = batch.status_json();
    let lost = status["alchemy"]["lost_answers"].as_u64().unwrap();
    // Every form was paid for at least once; a second payment only where the
    // ledger counted a submit whose answer was lost.
    let mut paid_twice = 0;
    for (file, forms) in charged(&sim, &batch.out(), &rows) {
        for form in ["caption", "nsfw"] {
            let times = forms.get(form).copied().unwrap_or(0);
            assert!(times >= 1, "{file} {form} never paid for: {forms:?}");
            paid_twice += times - 1;
        }
    }
    assert!(
        paid_twice <= 2 * lost,
        "{paid_twice} extra form payments, {lost} lost answers"
    );
    // What the Horde holds that nobody will read is at most what was lost.
    wait_until(
        "the sim's alchemists are idle",
        Duration::from_secs(30),
        || stat(&sim.stats(), "alchemy_forms_open") == 0,
    );
    assert!(stat(&sim.stats(), "alchemy_forms_unretrieved") <= 2 * lost);
}

#[test]
fn caption_extends_a_folder_horde_batch_did_not_make_and_a_rerun_does_nothing() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let dir = tempfile::tempdir().unwrap();
    let mut index = String::new();
    for i in 0..100u32 {
        let name = format!("img{i:03}.png");
        let image = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 4) as u8, i as u8])
        });
        image.save(dir.path().join(&name)).unwrap();
        index.push_str(&format!(
            "{{\"file_name\": \"{name}\", \"text\": \"photo {i}\", \"source\": \"camera\"}}\n"
        ));
    }
    std::fs::write(dir.path().join("metadata.jsonl"), &index).unwrap();
    let caption = |sim: &Sim| {
        HordeBatch::new()
            .arg("caption")
            .arg(dir.path())
            .args(["--forms", "caption,nsfw", "--horde-url", &sim.url])
            .env("HORDE_BATCH_ALCHEMY_SUBMIT_INTERVAL", "20ms")
            .env("HORDE_BATCH_ALCHEMY_FORM_TIME", "100ms")
            .env("HORDE_BATCH_POLL_FLOOR", "200ms")
            .status(0)
            .deadline(RUN_LIMIT)
            .run()
    };
    caption(&sim);
    let rows: Vec<Value> = std::fs::read_to_string(dir.path().join("metadata.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 100);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["file_name"], format!("img{i:03}.png"));
        assert_eq!(
            row["text"],
            format!("photo {i}"),
            "the folder's own columns are kept"
        );
        assert_eq!(row["source"], "camera");
        assert!(
            row["caption"].is_string() && row["nsfw"].is_boolean(),
            "{row}"
        );
    }
    let created = stat(&sim.stats(), "alchemy_requests_created");
    assert_eq!(created, 100);
    let before = std::fs::read(dir.path().join("metadata.jsonl")).unwrap();
    caption(&sim);
    assert_eq!(
        stat(&sim.stats(), "alchemy_requests_created"),
        created,
        "a rerun asks nothing"
    );
    assert_eq!(
        std::fs::read(dir.path().join("metadata.jsonl")).unwrap(),
        before
    );
}

#[test]
fn a_form_nobody_serves_is_reported_at_once_not_after_twenty_minutes() {
    let mut args = FAST_ALCHEMISTS.to_vec();
    args.extend(["--alchemy-forms", "caption"]);
    let sim = Sim::unlimited(&args);
    let batch = Batch::new(&manifest(2, 2, "caption, describe", ""));
    let finished = batch
        .horde_batch(&sim, "run")
        .status(1)
        .stderr_contains("no alchemist on the Horde serves `describe`")
        .deadline(Duration::from_secs(60))
        .run();
    assert!(
        finished.stderr.contains("alchemy: 0/4 images done"),
        "{}",
        finished.stderr
    );
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter().all(|r| r["caption"].is_string()),
        "the served form still arrives"
    );
    let status = batch.status_json();
    assert_eq!(status["alchemy"]["forms_failed"], 4);
    assert_eq!(
        status["finished"], true,
        "failed forms are settled, not owed"
    );
    // Nothing was sent for it: the Horde holds no form nobody will serve.
    assert_eq!(stat(&sim.stats(), "alchemy_forms_open"), 0);
}

#[test]
fn an_upscale_whose_url_expired_is_redone_and_never_silently_dropped() {
    let mut args = FAST_ALCHEMISTS.to_vec();
    args.extend(["--alchemy-url-ttl", "0s"]);
    let sim = Sim::unlimited(&args);
    let batch = Batch::new(&manifest(1, 1, "RealESRGAN_x2plus", ""));
    let finished = batch.horde_batch(&sim, "run").status(1).run();
    let stats = sim.stats();
    assert!(stat(&stats, "alchemy_urls_expired") >= 2, "{stats}");
    assert!(
        stat(&stats, "alchemy_requests_created") >= 2,
        "the form was asked again: {stats}"
    );
    let status = batch.status_json();
    assert_eq!(status["alchemy"]["forms_failed"], 1, "{}", finished.stderr);
}

#[test]
fn ctrl_c_cancels_the_forms_on_the_horde_and_a_rerun_finishes_them() {
    // Slow alchemists: forms are still waiting when the run is stopped.
    let sim = Sim::unlimited(&["--alchemists", "1", "--alchemy-form-time", "2s"]);
    let batch = Batch::new(&manifest(2, 4, "caption", ""));
    let mut child = batch.spawn_run(&sim);
    wait_until(
        "alchemy requests on the sim",
        Duration::from_secs(60),
        || stat(&sim.stats(), "alchemy_forms_open") >= 3,
    );
    // While it runs, the live status counts the forms too.
    wait_until(
        "alchemy in the live status",
        Duration::from_secs(30),
        || {
            std::fs::read(batch.state().join("status.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
                .is_some_and(|status| {
                    status["active"] == true && status["alchemy"]["images"].as_u64() >= Some(1)
                })
        },
    );
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    assert_eq!(
        stat(&sim.stats(), "alchemy_forms_open"),
        0,
        "every waiting form was cancelled"
    );
    assert_eq!(
        batch.status_json()["finished"],
        false,
        "forms are still owed"
    );
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r["caption"].is_string()));
}

#[test]
fn a_kill_between_the_post_and_its_id_is_counted_and_the_forms_still_arrive() {
    // Every submit's answer comes 3 s after the request is queued: a kill
    // in that window loses the id for sure.
    let mut args = FAST_ALCHEMISTS.to_vec();
    args.extend(["--submit-latency", "3s"]);
    let sim = Sim::unlimited(&args);
    let batch = Batch::new(&manifest(1, 1, "caption", ""));
    let mut child = batch.spawn_run(&sim);
    wait_until("an alchemy request queued", Duration::from_secs(60), || {
        stat(&sim.stats(), "alchemy_requests_created") >= 1
    });
    signal(&child, "KILL");
    wait_exit(&mut child, Duration::from_secs(10));
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("lost their answer"),
        "{}",
        finished.stderr
    );
    let status = batch.status_json();
    assert_eq!(status["alchemy"]["lost_answers"], 1);
    let rows = batch.index_lines();
    assert!(rows[0]["caption"].is_string());
    // The lost request was served and charged too: the one extra payment the
    // ledger owned up to, and the only form nobody read.
    let charged = charged(&sim, &batch.out(), &rows);
    assert_eq!(charged.values().next().unwrap()["caption"], 2);
    wait_until(
        "the sim's alchemists are idle",
        Duration::from_secs(30),
        || stat(&sim.stats(), "alchemy_forms_open") == 0,
    );
    assert_eq!(stat(&sim.stats(), "alchemy_forms_unretrieved"), 1);
}

#[test]
fn a_rerolled_image_takes_its_upscale_and_caption_aside_and_gets_new_ones() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let batch = Batch::new(&manifest(
        1,
        2,
        "caption, RealESRGAN_x2plus",
        "output:\n  caption_files: true\n  metadata:\n    caption_from: alchemy\n",
    ));
    assert_eq!(batch.run(&sim).code, 0);
    let out = batch.out();
    let first = originals(&batch.index_lines())[0]["file_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let stem = first.trim_end_matches(".webp").to_owned();
    let upscale = format!("{stem}.RealESRGAN_x2plus.webp");
    let old_upscale = std::fs::read(out.join(&upscale)).unwrap();
    HordeBatch::new()
        .current_dir(batch.dir.path())
        .arg("reroll")
        .arg(&batch.manifest)
        .arg(out.join(&first))
        .status(0)
        .run();
    assert!(
        !out.join(&upscale).exists(),
        "the upscale went aside with its image"
    );
    assert!(!out.join(format!("{stem}.txt")).exists());
    assert!(out.join(".rejected").join(&upscale).is_file());
    let rows = batch.index_lines();
    assert!(rows
        .iter()
        .all(|r| r["file_name"] != upscale.as_str() && r["file_name"] != first.as_str()));

    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 4);
    let new_upscale = std::fs::read(out.join(&upscale)).unwrap();
    assert_ne!(
        new_upscale, old_upscale,
        "the new image got its own upscale"
    );
    let caption = std::fs::read_to_string(out.join(format!("{stem}.txt"))).unwrap();
    let row = rows
        .iter()
        .find(|r| r["file_name"] == first.as_str())
        .unwrap();
    assert_eq!(caption.trim_end(), row["text"].as_str().unwrap());
}

#[test]
fn a_lost_state_folder_is_rebuilt_with_the_forms_already_paid_for() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let batch = Batch::new(&manifest(2, 3, "caption, nsfw, RealESRGAN_x2plus", ""));
    assert_eq!(batch.run(&sim).code, 0);
    let created = stat(&sim.stats(), "alchemy_requests_created");
    assert_eq!(created, 6);
    std::fs::remove_dir_all(batch.state()).unwrap();
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    assert_eq!(
        stat(&sim.stats(), "alchemy_requests_created"),
        created,
        "no form is asked (and paid for) again"
    );
    let status = batch.status_json();
    assert_eq!(status["alchemy"]["forms_done"], 18);
}

#[test]
fn caption_files_without_alchemy_hold_the_prompt() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let batch = Batch::new(
        "version: 1\nname: kohya\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64, steps: 4}\noutput:\n  caption_files: true\njobs:\n  - name: j\n    prompt: \"a {red|blue} kite\"\n    images: 2\n",
    );
    assert_eq!(batch.run(&sim).code, 0);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 4);
    for row in rows {
        let stem = row["file_name"]
            .as_str()
            .unwrap()
            .trim_end_matches(".webp")
            .to_owned();
        let txt = std::fs::read_to_string(batch.out().join(format!("{stem}.txt"))).unwrap();
        assert_eq!(txt.trim_end(), row["text"].as_str().unwrap());
    }
    assert_eq!(stat(&sim.stats(), "alchemy_requests_created"), 0);
}

#[test]
fn a_request_deleted_at_expiry_is_asked_again_and_never_lost() {
    // One slow alchemist and a short expiry: requests at the back of its queue
    // are deleted (404) before it reaches them.
    let sim = Sim::unlimited(&[
        "--workers",
        "16",
        "--latency",
        "1ms",
        "--alchemists",
        "1",
        "--alchemy-form-time",
        "400ms",
        "--alchemy-expiry",
        "2s",
        "--cleanup-interval",
        "200ms",
    ]);
    let batch = Batch::new(&manifest(1, 8, "caption", ""));
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r["caption"].is_string()), "{rows:?}");
    let stats = sim.stats();
    assert!(
        stat(&stats, "alchemy_requests_created") > 8,
        "some expired and were asked again: {stats}"
    );
    // Each image's caption was delivered (and paid for) once.
    for (file, forms) in charged(&sim, &batch.out(), &rows) {
        assert_eq!(forms.get("caption"), Some(&1), "{file}");
    }
}

#[test]
fn a_form_faulted_for_good_fails_the_images_alchemy_not_the_image() {
    let mut args = FAST_ALCHEMISTS.to_vec();
    args.extend(["--alchemy-fault-form", "nsfw"]);
    let sim = Sim::unlimited(&args);
    let batch = Batch::new(&manifest(1, 3, "caption, nsfw", ""));
    let finished = batch.horde_batch(&sim, "run").status(1).run();
    assert!(
        finished.stderr.contains("3 of 3") || finished.stderr.contains("1 of 1 jobs done"),
        "{}",
        finished.stderr
    );
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 3, "every image is there");
    assert!(rows
        .iter()
        .all(|r| r["caption"].is_string() && r["nsfw"].is_null()));
    let status = batch.status_json();
    assert_eq!(status["images_saved"], 3);
    assert_eq!(status["jobs_failed"], 0);
    assert_eq!(status["alchemy"]["forms_failed"], 3);
    assert_eq!(status["alchemy"]["forms_done"], 3);
    // The sidecar says why.
    let stem = rows[0]["file_name"]
        .as_str()
        .unwrap()
        .trim_end_matches(".webp")
        .to_owned();
    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(batch.out().join(format!("{stem}.json"))).unwrap())
            .unwrap();
    assert!(sidecar["alchemy"]["failed"]["nsfw"]
        .as_str()
        .unwrap()
        .contains("faulted"));
}

#[test]
fn caption_over_a_finished_batch_adds_the_forms_its_manifest_did_not_ask_for() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let batch = Batch::new(
        "version: 1\nname: later\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64, steps: 4}\njobs:\n  - name: j\n    prompt: \"a {red|blue} kite\"\n    images: 3\n",
    );
    assert_eq!(batch.run(&sim).code, 0);
    batch
        .horde_batch(&sim, "caption")
        .args(["--forms", "caption,interrogation"])
        .status(0)
        .stderr_contains("alchemy: 6/6 images done")
        .run();
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        assert!(row["caption"].is_string(), "{row}");
        assert!(row["tags"].is_array(), "{row}");
        assert!(
            row["text"].as_str().unwrap().contains("kite"),
            "the prompt stays the caption column"
        );
    }
    assert_eq!(batch.status_json()["alchemy"]["forms_done"], 12);
}

#[test]
fn a_request_that_delivers_nothing_for_too_long_is_cancelled_and_its_forms_fail() {
    // One alchemist at 30 s a form: nothing is delivered within the client's
    // (shortened) patience, and the Horde does not expire the requests meanwhile.
    let sim = Sim::unlimited(&[
        "--workers",
        "16",
        "--latency",
        "1ms",
        "--alchemists",
        "1",
        "--alchemy-form-time",
        "30s",
    ]);
    let batch = Batch::new(&manifest(1, 2, "caption", ""));
    let finished = batch
        .horde_batch(&sim, "run")
        .env("HORDE_BATCH_ALCHEMY_STALE_AFTER", "2s")
        .status(1)
        .deadline(Duration::from_secs(60))
        .run();
    assert!(
        finished.stderr.contains("alchemy: 0/2 images done"),
        "{}",
        finished.stderr
    );
    let status = batch.status_json();
    assert_eq!(status["alchemy"]["forms_failed"], 2);
    assert_eq!(status["alchemy"]["requests_on_horde"], 0);
    assert_eq!(
        stat(&sim.stats(), "alchemy_forms_open"),
        0,
        "nothing left waiting on the Horde"
    );
}

#[test]
fn a_hostile_horde_that_drops_answers_and_fails_calls_loses_nothing_and_owns_up() {
    let mut args = FAST_ALCHEMISTS.to_vec();
    args.extend([
        "--chaos-lost-answer",
        "0.15",
        "--chaos-5xx",
        "0.15",
        "--seed",
        "5",
    ]);
    let sim = Sim::unlimited(&args);
    let batch = Batch::new(&manifest(2, 4, "caption, nsfw", "run:\n  retries: 30\n"));
    // Back-offs scaled down: the chaos is the point, not the waiting.
    let run = || {
        let mut command = batch.command(&sim, "run");
        command
            .env("HORDE_BATCH_RETRY_BASE", "20ms")
            .env("HORDE_BATCH_MAX_WAIT", "200ms");
        crate::common::run_bounded(&mut command, RUN_LIMIT)
    };
    // Rerun until the batch is whole (a run may give forms up; the next asks again).
    for _ in 0..4 {
        let finished = run();
        crate::common::assert_no_panic(&finished.stderr);
        assert!(matches!(finished.code, 0 | 1), "{}", finished.stderr);
        if batch.status_json()["finished"] == true {
            break;
        }
    }
    let status = batch.status_json();
    assert_eq!(status["finished"], true, "{status}");
    let rows = originals(&batch.index_lines());
    assert_eq!(rows.len(), 8);
    assert!(rows
        .iter()
        .all(|r| r["caption"].is_string() && r["nsfw"].is_boolean()));
    // Paid twice only where the ledger owned up to a lost answer.
    let lost = status["alchemy"]["lost_answers"].as_u64().unwrap();
    let extra: u64 = charged(&sim, &batch.out(), &rows)
        .values()
        .flat_map(|forms| forms.values())
        .map(|times| times - 1)
        .sum();
    assert!(
        extra <= 2 * lost,
        "{extra} extra payments, {lost} lost answers"
    );
}

#[test]
fn merged_shards_keep_each_upscale_pointing_at_its_source() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    let batch = Batch::new(&manifest(4, 2, "caption, RealESRGAN_x2plus", ""));
    for shard in ["1/2", "2/2"] {
        let mut command = batch.command(&sim, "run");
        command.args(["--shard", shard]);
        let finished = crate::common::run_bounded(&mut command, RUN_LIMIT);
        assert_eq!(finished.code, 0, "{}", finished.stderr);
    }
    let merged = HordeBatch::new()
        .arg("merge")
        .arg(&batch.manifest)
        .status(0)
        .stderr_contains(": 8 images")
        .run();
    crate::common::assert_no_panic(&merged.stderr);
    let rows = batch.index_lines();
    assert_eq!(rows.len(), 16);
    let names: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["file_name"].as_str().unwrap())
        .collect();
    for row in rows.iter().filter(|r| !r["alchemy_of"].is_null()) {
        let source = row["alchemy_of"].as_str().unwrap();
        assert!(
            names.contains(source),
            "{source} is a row of the merged index"
        );
        assert!(batch
            .out()
            .join(row["file_name"].as_str().unwrap())
            .is_file());
    }
}

#[test]
fn a_batch_without_an_index_gets_its_forms_and_no_index() {
    let sim = Sim::unlimited(FAST_ALCHEMISTS);
    // Made without alchemy first; then the manifest asks for captions: the
    // rerun finds the saved images in the ledger (there is no index to read).
    let with_alchemy = manifest(1, 3, "caption", "output:\n  index: false\n");
    let batch = Batch::new(&with_alchemy.replace("  alchemy: [caption]\n", ""));
    assert_eq!(batch.run(&sim).code, 0);
    assert_eq!(stat(&sim.stats(), "alchemy_requests_created"), 0);
    std::fs::write(&batch.manifest, &with_alchemy).unwrap();
    let finished = batch.run(&sim);
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    assert!(
        finished.stderr.contains("alchemy: 3/3 images done"),
        "{}",
        finished.stderr
    );
    assert!(
        !batch.out().join("metadata.jsonl").exists(),
        "no index was asked for"
    );
    for sidecar in crate::common::walk(&batch.out())
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let value: Value = serde_json::from_slice(&std::fs::read(sidecar).unwrap()).unwrap();
        assert!(
            value["alchemy"]["caption"].is_string(),
            "{}",
            sidecar.display()
        );
    }
}
