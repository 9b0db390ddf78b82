//! `report.html`, its cards and grids, end to end against the sim: a
//! finished run with a censored image and a failed job, the page in headless
//! Chromium, a 3×3 matrix grid, and the report of a run that is still going
//! and then killed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use scraper::{Html, Selector};
use serde_json::Value;

use crate::common::{
    run_bounded, signal, wait_exit, walk, walk_all, Batch, Finished, HordeBatch, Sim,
};

/// A prompt that must stay text on the page.
const HOSTILE: &str = "<script>document.title='pwned'</script> & \"quotes\"";

/// A run with censored images kept and one job no worker can take.
fn finished_run() -> (Sim, Batch) {
    let sim = Sim::unlimited(&[
        "--workers",
        "4",
        "--latency",
        "10ms..30ms",
        "--censor-rate",
        "0.4",
        "--seed",
        "7",
    ]);
    let manifest = format!(
        "version: 1\nname: review\nrun: {{on_censored: keep, timeouts: {{no_worker: 2s}}}}\n\
         defaults:\n  models: [stable_diffusion]\n  params: {{width: 64, height: 64, steps: 10}}\n\
         jobs:\n  - name: shapes\n    prompt: \"a {{red|blue}} cube\"\n    images: 4\n\
         \x20 - name: hostile\n    prompt: {}\n    images: 2\n\
         \x20 - name: bad\n    prompt: never\n    models: [stable_difusion]\n    images: 2\n",
        serde_json::to_string(HOSTILE).unwrap()
    );
    let batch = Batch::new(&manifest);
    let finished = run_bounded(&mut batch.command(&sim, "run"), Duration::from_secs(120));
    assert_ne!(
        finished.code, 0,
        "the bad job fails the run: {}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("report at"),
        "the run writes its report: {}",
        finished.stderr
    );
    (sim, batch)
}

/// `horde-batch report <manifest>` (it talks to no Horde).
fn report(batch: &Batch) -> Finished {
    let mut command = Command::new(crate::common::BIN);
    command
        .arg("report")
        .arg(&batch.manifest)
        .env_remove("AI_HORDE_API_KEY")
        .env_remove("AI_HORDE_URL")
        .stdin(std::process::Stdio::null());
    run_bounded(&mut command, Duration::from_secs(60))
}

fn page(batch: &Batch) -> Html {
    let text = std::fs::read_to_string(batch.out().join("report.html")).expect("report.html");
    Html::parse_document(&text)
}

fn select<'a>(html: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    let selector = Selector::parse(css).unwrap();
    html.select(&selector).collect()
}

/// `%XX` escapes of a relative URL undone.
fn percent_decode(url: &str) -> String {
    let bytes = url.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Every `<img src>` and file `<a href>` names a file of the output folder; returns the images' sources.
fn assert_links_exist(html: &Html, out: &Path) -> Vec<String> {
    let mut sources = Vec::new();
    for img in select(html, "img") {
        let src = img.value().attr("src").expect("every img has a src");
        let path = out.join(percent_decode(src));
        assert!(path.is_file(), "img src {src} missing");
        sources.push(src.to_owned());
    }
    for a in select(html, "a[href]") {
        let href = a.value().attr("href").unwrap();
        if let Some(id) = href.strip_prefix('#') {
            assert!(
                !select(html, &format!("[id=\"{id}\"]")).is_empty(),
                "anchor {href} has no target"
            );
            continue;
        }
        assert!(!href.contains("://"), "no external link: {href}");
        let path = out.join(percent_decode(href));
        assert!(path.is_file(), "a href {href} missing");
    }
    sources
}

#[test]
fn report_of_a_finished_run_links_existing_files_and_shows_every_job_failure_and_censored_image() {
    let (sim, batch) = finished_run();
    let out = batch.out();
    let html = page(&batch);
    assert!(
        html.errors.is_empty(),
        "the page parses cleanly: {:?}",
        html.errors
    );
    let sources = assert_links_exist(&html, &out);

    // Every image of the index has a card showing the image itself; every job a section.
    let index = batch.index_lines();
    assert!(!index.is_empty());
    let cards: BTreeSet<String> = select(&html, ".card[data-file]")
        .iter()
        .map(|c| c.value().attr("data-file").unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = batch.index_file_names().into_iter().collect();
    assert_eq!(cards, files);
    let card_images: BTreeSet<String> = select(&html, ".card img")
        .iter()
        .map(|img| percent_decode(img.value().attr("src").unwrap()))
        .collect();
    assert_eq!(card_images, files);
    assert!(sources.len() > files.len(), "the grids too: {sources:?}");
    let keys: BTreeSet<String> = select(&html, "section.job")
        .iter()
        .map(|s| s.value().attr("data-job-key").unwrap().to_owned())
        .collect();
    let plan = HordeBatch::new()
        .args(["plan", "--json", "--list"])
        .arg(&batch.manifest)
        .run();
    let planned: BTreeSet<String> = plan
        .stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|job| job["key"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(planned.len(), 4, "{}", plan.stdout);
    assert_eq!(keys, planned, "one section per job of the plan");

    // The failed job: in the failures list with its class, and as failed placeholders.
    let errors = batch.jsonl("errors.jsonl");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let bad_key = errors[0]["job_key"].as_str().unwrap();
    let failures = select(&html, "#failures li.failure");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].value().attr("data-job-key"), Some(bad_key));
    let text: String = select(&html, "#failures")[0].text().collect();
    assert!(text.contains("no_worker"), "{text}");
    let bad = select(&html, &format!("section#job-{bad_key}"));
    assert_eq!(bad.len(), 1);
    assert!(bad[0].value().classes().any(|c| c == "failed"));
    let absent = Selector::parse(".card.absent").unwrap();
    assert_eq!(
        bad[0].select(&absent).count(),
        2,
        "both missing images shown as failed"
    );

    // Censored images are marked.
    let censored = index.iter().filter(|row| row["censored"] == true).count();
    assert!(
        censored > 0,
        "the sim censored something: {:?}",
        sim.stats()
    );
    assert_eq!(select(&html, ".card.censored").len(), censored);

    // The hostile prompt is text: the page has exactly one script, its own.
    assert_eq!(select(&html, "script").len(), 1);
    let prompts: Vec<String> = select(&html, ".prompt")
        .iter()
        .map(|p| p.text().collect())
        .collect();
    assert!(prompts.iter().any(|p| p == HOSTILE), "{prompts:?}");

    // A second report finds its grids fresh and decodes nothing.
    let again = report(&batch);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains(" grid(s), 0 image(s) decoded)"),
        "{}",
        again.stderr
    );
}

/// Chromium's binary, or `None` when the test may be skipped.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(output) = Command::new("which").arg(name).output() {
            let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if output.status.success() && !path.is_empty() {
                return Some(PathBuf::from(path));
            }
        }
    }
    crate::common::skip_without(
        "headless Chromium",
        "Debian's `chromium` package: apt-get install -y chromium",
    );
    None
}

fn headless(chromium: &Path, profile: &Path, extra: &[&str], url: &str) -> Finished {
    let mut command = Command::new(chromium);
    command
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--window-size=1280,2000",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url);
    run_bounded(&mut command, Duration::from_secs(120))
}

#[test]
fn in_headless_chromium_every_image_loads_and_two_ticks_list_exactly_those_two() {
    let Some(chromium) = chromium() else { return };
    let (_sim, batch) = finished_run();
    let out = batch.out();
    let files = batch.index_file_names();
    assert!(files.len() >= 3);
    let images = select(&page(&batch), "img").len();
    let ticked = [&files[0], &files[2]];
    let encode = |name: &str| {
        name.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let url = format!(
        "file://{}#eager&tick={},{}",
        out.join("report.html").display(),
        encode(ticked[0]),
        encode(ticked[1])
    );
    let profile = tempfile::tempdir().unwrap();
    let dump = headless(&chromium, profile.path(), &["--dump-dom"], &url);
    assert_eq!(dump.code, 0, "{}", dump.stderr);
    let dom = Html::parse_document(&dump.stdout);
    let body = select(&dom, "body");
    assert_eq!(
        body[0].value().attr("data-images-ok"),
        Some(format!("{images}/{images}").as_str()),
        "every <img> loaded with a non-zero size"
    );
    // The list follows the page's order, which groups by job; the index
    // follows completion order, so the expected list is the page's ticks.
    let static_page = page(&batch);
    let in_page_order: Vec<&str> = select(&static_page, "input.tick")
        .iter()
        .filter_map(|tick| tick.value().attr("value"))
        .filter(|name| ticked.contains(&&name.to_string()))
        .collect();
    assert_eq!(in_page_order.len(), 2, "both ticked images have a tick box");
    let list: String = select(&dom, "#rejected")[0].text().collect();
    assert_eq!(
        list,
        format!("{}\n{}\n", in_page_order[0], in_page_order[1])
    );

    // The list is what `reroll --from` takes.
    std::fs::write(batch.dir.path().join("rejected.txt"), &list).unwrap();

    let screenshot = batch.dir.path().join("report.png");
    let shot = headless(
        &chromium,
        profile.path(),
        &[&format!("--screenshot={}", screenshot.display())],
        &url,
    );
    assert_eq!(shot.code, 0, "{}", shot.stderr);
    let bytes = std::fs::read(&screenshot).expect("a screenshot");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    // Kept for a human to look at: target/tmp/report-screenshot.png.
    let target = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let _ = std::fs::copy(&screenshot, target.join("report-screenshot.png"));
}

#[test]
fn grid_of_a_3x3_matrix_has_its_size_and_the_cells_in_axis_order() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms..30ms", "--seed", "3"]);
    let batch = Batch::new(
        "version: 1\nname: sweep\ndefaults:\n  models: [stable_diffusion]\n  params: {width: 64, height: 64}\n\
         jobs:\n  - name: sweep\n    prompt: a lighthouse\n    matrix:\n      steps: [10, 20, 30]\n      cfg_scale: [5, 7, 9]\n",
    );
    let finished = run_bounded(&mut batch.command(&sim, "run"), Duration::from_secs(120));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let out = batch.out();
    let grids = walk(&out.join("grids"));
    assert_eq!(grids.len(), 1, "{grids:?}");
    let grid = image::open(&grids[0]).unwrap().to_rgb8();
    let (width, height) = horde_batch::gallery::grid_size(3, 3, 64, 64);
    assert_eq!((width, height), (160 + 192, 56 + 192));
    assert_eq!(grid.dimensions(), (width, height));

    // Column = steps (the first axis), row = cfg_scale (the second).
    let mut cells = Vec::new();
    for row in batch.index_lines() {
        let column = [10, 20, 30]
            .iter()
            .position(|s| row["steps"] == *s)
            .unwrap();
        let line = [5.0, 7.0, 9.0]
            .iter()
            .position(|c| row["cfg_scale"].as_f64() == Some(*c))
            .unwrap();
        let image = image::open(out.join(row["file_name"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        cells.push((column as u32, line as u32, image));
    }
    assert_eq!(cells.len(), 9);
    for (column, line, image) in &cells {
        let left = horde_batch::gallery::GRID_ROW_LABEL_WIDTH + column * 64;
        let top = horde_batch::gallery::GRID_HEADER_HEIGHT + line * 64;
        let cell = image::imageops::crop_imm(&grid, left, top, 64, 64).to_image();
        assert!(
            cell == *image,
            "cell ({column}, {line}) is the image with those values"
        );
    }
    let distinct: BTreeSet<Vec<u8>> = cells.iter().map(|(_, _, i)| i.as_raw().clone()).collect();
    assert_eq!(
        distinct.len(),
        9,
        "nine different images, so the order is checked"
    );

    // The page links it.
    let html = page(&batch);
    let relative = grids[0]
        .strip_prefix(&out)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(select(&html, "#grids a[href]")
        .iter()
        .any(|a| a.value().attr("href") == Some(relative.as_str())));
}

#[test]
fn report_works_on_a_running_and_then_killed_run() {
    let sim = Sim::unlimited(&["--workers", "2", "--latency", "300ms..600ms", "--seed", "4"]);
    let batch = Batch::smoke();
    let mut child = batch.spawn_run(&sim);
    batch.wait_for_images(6, Duration::from_secs(60));
    let during = report(&batch);
    assert_eq!(during.code, 0, "{}", during.stderr);
    let text = std::fs::read_to_string(batch.out().join("report.html")).unwrap();
    assert!(
        text.contains("a run is active"),
        "the live run's status is shown"
    );
    signal(&child, "KILL");
    wait_exit(&mut child, Duration::from_secs(10));

    let after = report(&batch);
    assert_eq!(after.code, 0, "{}", after.stderr);
    let html = page(&batch);
    assert_links_exist(&html, &batch.out());
    let saved = batch.index_lines().len();
    assert!(saved < 200, "the run was killed before the end");
    assert_eq!(select(&html, ".card[data-file]").len(), saved);
    assert_eq!(select(&html, "section.job").len(), 25);
    assert!(
        !select(&html, "section.job.pending").is_empty(),
        "unfinished jobs shown as such"
    );
    let state: String = select(&html, "#summary")[0].text().collect();
    assert!(state.contains("not finished"), "{state}");

    // The resumed run's own report covers the whole batch, not only the
    // images this run made.
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let html = page(&batch);
    let state: String = select(&html, "#summary")[0].text().collect();
    assert!(
        state.contains("finished") && !state.contains("not finished"),
        "{state}"
    );
    assert!(state.contains("200"), "all 200 images counted: {state}");
    assert_eq!(select(&html, ".card[data-file]").len(), 200);
}

/// `run --no-report` writes no page (the report costs CPU per new image);
/// `report` writes it on demand from the same folder.
#[test]
fn run_no_report_leaves_the_page_to_the_report_command() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "5ms", "--seed", "31"]);
    let batch = Batch::new(
        "version: 1\nname: noreport\ndefaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: 'a {red|blue} cube', images: 2}\n",
    );
    let finished = run_bounded(
        batch.command(&sim, "run").arg("--no-report"),
        Duration::from_secs(60),
    );
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    batch.assert_complete(4);
    assert!(!batch.out().join("report.html").exists());
    assert!(!batch.out().join(".report").exists());
    let made = report(&batch);
    assert_eq!(made.code, 0, "{}", made.stderr);
    assert_eq!(select(&page(&batch), ".card[data-file]").len(), 4);
}

/// A batch with more images than `--report-max-images` gets no page at the
/// end of its run (the page grows with every image; a Ctrl-C must exit
/// promptly), and one line says how to make it.
#[test]
fn a_batch_bigger_than_report_max_images_gets_a_line_instead_of_a_page() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "5ms", "--seed", "32"]);
    let batch = Batch::new(
        "version: 1\nname: big\ndefaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: 'a {red|blue} cube', images: 2}\n",
    );
    let finished = run_bounded(
        batch
            .command(&sim, "run")
            .args(["--report-max-images", "3"]),
        Duration::from_secs(60),
    );
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    batch.assert_complete(4);
    assert!(
        finished
            .stderr
            .contains("no report page for a batch of 4 images (more than --report-max-images 3)"),
        "{}",
        finished.stderr
    );
    assert!(!batch.out().join("report.html").exists());
    // At the limit, the page is written.
    let again = run_bounded(
        batch
            .command(&sim, "run")
            .args(["--report-max-images", "4"]),
        Duration::from_secs(60),
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stderr.contains("report at"), "{}", again.stderr);
    assert_eq!(select(&page(&batch), ".card[data-file]").len(), 4);
}

/// A manifest of two jobs whose index has a `text` label column and the
/// caption renamed to `prompt`, as `validate`'s hint suggests: the rows
/// job's rows carry `text` as a label, the other job's carry `text: null`.
fn caption_renamed_run() -> (Sim, Batch) {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "5ms", "--seed", "41"]);
    let batch = Batch::new(
        "version: 1\nname: captions\noutput: {metadata: {caption: prompt}}\n\
         defaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\njobs:\n\
         \x20 - name: table\n    prompt: '${subject}, ${text}'\n    rows: {file: rows.csv, id: pid}\n\
         \x20 - name: other\n    prompt: 'a {red|blue} cube'\n    images: 2\n",
    );
    std::fs::write(
        batch.dir.path().join("rows.csv"),
        "pid,subject,text\np1,a cat,oil\np2,a dog,ink\np3,an owl,pen\np4,a fox,chalk\n",
    )
    .unwrap();
    let finished = run_bounded(&mut batch.command(&sim, "run"), Duration::from_secs(120));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    batch.assert_complete(8);
    (sim, batch)
}

/// The page reads `metadata.jsonl` as its writer wrote it: with the caption
/// renamed and a `text` label, every image counts, shows its caption and has
/// its card, and the other job gets its grids.
#[test]
fn a_renamed_caption_and_a_text_label_column_keep_every_image_on_the_page() {
    let (_sim, batch) = caption_renamed_run();
    let out = batch.out();
    let index = batch.index_lines();
    assert_eq!(index.len(), 8);
    assert!(
        index.iter().any(|row| row["text"].is_null()),
        "the other job's rows hold `text: null`: {index:?}"
    );
    let html = page(&batch);
    assert_links_exist(&html, &out);
    let summary: String = select(&html, "#summary")[0].text().collect();
    assert!(summary.contains("8 (0 censored) of 8"), "{summary}");
    assert!(select(&html, "section.job.missing").is_empty());
    assert_eq!(select(&html, "section.job.done").len(), 6);
    assert_eq!(select(&html, ".card[data-file] img").len(), 8);
    for row in &index {
        let file = row["file_name"].as_str().unwrap();
        let card = select(&html, &format!(".card[data-file=\"{file}\"] .prompt"));
        let shown: String = card[0].text().collect();
        assert_eq!(shown, row["prompt"].as_str().unwrap(), "{file}");
    }
    let grids = walk(&out.join("grids"));
    assert!(
        grids.iter().any(|g| g.starts_with(out.join("grids/other"))),
        "the other job has its grids: {grids:?}"
    );
}

/// The page and grids are as readable as the images (a team opens them
/// from a shared folder).
#[cfg(unix)]
#[test]
fn the_page_and_grids_have_the_images_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "5ms", "--seed", "42"]);
    let batch = Batch::new(
        "version: 1\nname: modes\ndefaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\n\
         jobs:\n  - {name: a, prompt: 'a {red|blue} cube'}\n",
    );
    let finished = run_bounded(&mut batch.command(&sim, "run"), Duration::from_secs(60));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let out = batch.out();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let image = batch.webp_files()[0].clone();
    let expected = mode(&image);
    assert_ne!(expected & 0o044, 0, "images are readable by others");
    let mut files = vec![out.join("report.html")];
    files.extend(walk(&out.join("grids")));
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        assert_eq!(mode(&file), expected, "{}", file.display());
    }
}

/// A `rows:` job gets no grids (every row is its own combination, so each
/// would hold one cell); a job chooses its axes with `grid: {x, y}` or
/// turns them off with `grid: false`; the cards come before the grids.
#[test]
fn grids_compare_something_and_a_manifest_chooses_or_turns_them_off() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "5ms", "--seed", "43"]);
    let batch = Batch::new(
        "version: 1\nname: grids\ndefaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\njobs:\n\
         \x20 - name: table\n    prompt: '${subject}, ${style}'\n    rows: {file: rows.csv, id: pid}\n\
         \x20 - name: swapped\n    prompt: 'a ${colour} ${shape}'\n    matrix: {colour: [red, blue, green], shape: [cube, ball]}\n    grid: {x: shape, y: colour}\n\
         \x20 - name: plain\n    prompt: 'a {red|blue} cube'\n    grid: false\n",
    );
    let mut rows = String::from("pid,subject,style\n");
    for (i, (subject, style)) in ["cat", "dog"]
        .iter()
        .flat_map(|s| ["oil", "ink", "pen"].map(|t| (s, t)))
        .enumerate()
    {
        rows.push_str(&format!("p{i},{subject},{style}\n"));
    }
    std::fs::write(batch.dir.path().join("rows.csv"), rows).unwrap();
    let finished = run_bounded(&mut batch.command(&sim, "run"), Duration::from_secs(120));
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let out = batch.out();
    let grids = walk(&out.join("grids"));
    assert_eq!(grids.len(), 1, "only the matrix job has a grid: {grids:?}");
    assert!(grids[0].starts_with(out.join("grids/swapped")), "{grids:?}");
    let grid = image::open(&grids[0]).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        horde_batch::gallery::grid_size(2, 3, 64, 64),
        "X = shape (2 columns), Y = colour (3 rows)"
    );
    let html = page(&batch);
    let titles: Vec<String> = select(&html, "#grids figcaption")
        .iter()
        .map(|c| c.text().collect())
        .collect();
    assert_eq!(titles.len(), 1);
    assert!(titles[0].contains("X: shape · Y: colour"), "{titles:?}");
    let text = std::fs::read_to_string(out.join("report.html")).unwrap();
    let jobs = text.find("id=\"jobs\"").expect("the jobs section");
    let grid_list = text.find("id=\"grids\"").expect("the grids section");
    assert!(jobs < grid_list, "the cards come before the grids");
}

/// An axis `grid:` names that the job does not have is refused where it is written.
#[test]
fn a_grid_axis_the_job_does_not_have_is_an_error_at_its_line_and_column() {
    let batch = Batch::new(
        "version: 1\nname: g\ndefaults: {models: [stable_diffusion]}\njobs:\n\
         \x20 - name: a\n    prompt: 'a ${colour} cube'\n    matrix: {colour: [red, blue]}\n    grid: {x: color}\n",
    );
    let finished = run_bounded(
        Command::new(crate::common::BIN)
            .arg("validate")
            .arg(&batch.manifest),
        Duration::from_secs(30),
    );
    assert_eq!(finished.code, 2, "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("batch.yaml:8:15: the grid axis `color` is not an axis of job `a`"),
        "{}",
        finished.stderr
    );
    assert!(finished.stderr.contains("colour"), "{}", finished.stderr);
}

/// Peak memory of `report` over a 10×10 grid of 1024² images stays bounded
/// by the grid, not by the images: decoded at full size at once they would
/// take 300 MB.
#[cfg(target_os = "linux")]
#[test]
fn a_grid_of_large_images_is_drawn_in_bounded_memory() {
    let time = Path::new("/usr/bin/time");
    if !time.is_file() {
        crate::common::skip_without("/usr/bin/time", "Debian's `time` package");
        return;
    }
    let sim = Sim::unlimited(&["--workers", "20", "--latency", "0ms", "--seed", "44"]);
    // 6×6 cells of 1024²: drawn whole they take 36 × 4 MiB of pixels alone.
    let values: Vec<String> = (0..6).map(|i| format!("v{i}")).collect();
    let list = values.join(", ");
    let batch = Batch::new(&format!(
        "version: 1\nname: big\ndefaults: {{models: [stable_diffusion], params: {{width: 1024, height: 1024}}}}\n\
         jobs:\n  - name: big\n    prompt: 'a ${{x}} ${{y}}'\n    matrix: {{x: [{list}], y: [{list}]}}\n"
    ));
    let finished = run_bounded(
        batch.command(&sim, "run").arg("--no-report"),
        Duration::from_secs(300),
    );
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let measured = run_bounded(
        Command::new(time)
            .args(["-f", "peak-rss-kb=%M"])
            .arg(crate::common::BIN)
            .arg("report")
            .arg(&batch.manifest)
            .env_remove("AI_HORDE_API_KEY")
            .env_remove("AI_HORDE_URL"),
        Duration::from_secs(300),
    );
    assert_eq!(measured.code, 0, "{}", measured.stderr);
    assert_eq!(walk(&batch.out().join("grids")).len(), 1);
    let kb: u64 = measured
        .stderr
        .lines()
        .find_map(|line| line.strip_prefix("peak-rss-kb="))
        .and_then(|kb| kb.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {}", measured.stderr));
    assert!(
        kb < 100 * 1024,
        "report peaked at {} MB for a 6×6 grid of 1024² images",
        kb / 1024
    );
}

/// A run that writes the page keeps each image's grid cell (in memory) as it
/// saves the image, from the pixels it decoded to verify it: its report
/// decodes no image, nor does a `report` after it (its grids are fresh).
/// The cards show the images themselves: no file per image under
/// `.report/`, and the thumbnails an older version left there are removed.
#[test]
fn grid_cells_are_made_as_images_are_saved_and_the_cards_show_the_images() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "5ms", "--seed", "44"]);
    let batch = Batch::new(
        "version: 1\nname: previews\ndefaults: {models: [stable_diffusion], params: {width: 320, height: 256}}\n\
         jobs:\n  - {name: sweep, prompt: 'a ${colour} ${shape}', matrix: {colour: [red, blue], shape: [cube, ball]}, images: 2}\n",
    );
    let finished = run_bounded(
        batch
            .command(&sim, "run")
            .env("RUST_LOG", "horde_batch::app=debug"),
        Duration::from_secs(60),
    );
    assert_eq!(finished.code, 0, "{}", finished.stderr);
    let written = finished
        .stderr
        .lines()
        .find(|line| line.contains("report written"))
        .unwrap_or_else(|| panic!("the run logs its report: {}", finished.stderr));
    assert!(
        written.contains("decoded=0") && written.contains("grids=2"),
        "the run's grids come from the kept cells: {written}"
    );
    let out = batch.out();
    let files: BTreeSet<String> = batch.index_file_names().into_iter().collect();
    assert_eq!(files.len(), 8);
    let html = page(&batch);
    let cards = select(&html, ".card img");
    assert_eq!(cards.len(), 8);
    for img in cards {
        let attr = |name: &str| img.value().attr(name).unwrap().to_owned();
        assert!(
            files.contains(&percent_decode(&attr("src"))),
            "{}",
            attr("src")
        );
        // 320×256 fitted to the 192 px card, lazily loaded.
        assert_eq!(
            [attr("width"), attr("height"), attr("loading")],
            ["192", "154", "lazy"]
        );
    }
    assert_eq!(walk_all(&out.join(".report")), Vec::<PathBuf>::new());
    let grids = walk(&out.join("grids"));
    assert_eq!(grids.len(), 2, "one grid per image index: {grids:?}");
    let grid = image::open(&grids[0]).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        horde_batch::gallery::grid_size(2, 2, 256, 204)
    );

    // Thumbnails an older version made are removed; the grids are fresh.
    let old = out.join(".report/thumbs/sweep/old.webp.jpg");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, b"\xFF\xD8").unwrap();
    let again = report(&batch);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stderr.contains("(2 grid(s), 0 image(s) decoded)"),
        "{}",
        again.stderr
    );
    assert!(
        !out.join(".report/thumbs").exists(),
        "old thumbnails removed"
    );

    // Grids deleted: `report` on its own decodes the images it draws.
    std::fs::remove_dir_all(out.join("grids")).unwrap();
    let redrawn = report(&batch);
    assert_eq!(redrawn.code, 0, "{}", redrawn.stderr);
    assert!(
        redrawn.stderr.contains("(2 grid(s), 8 image(s) decoded)"),
        "{}",
        redrawn.stderr
    );
}
