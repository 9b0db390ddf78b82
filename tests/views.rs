//! Every view of a batch agrees: the summary, `status.json`, `status`,
//! `failures` and the report page show the same figures, after failures, a
//! reroll and a shard's run (issue: "one truth").

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Two jobs of two images on a served model, and three on a model no worker
/// serves: they fail at once (no_worker), before anything is spent.
const MIXED: &str = "version: 1\nname: views\n\
    defaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\n\
    jobs:\n  \
    - {name: ok, prompt: 'a {red|blue} kite', images: 2}\n  \
    - {name: lost, prompt: 'a {red|blue|green} boat', images: 1, models: [no_such_model]}\n";

/// The summary object a `--log-format json` run prints last.
fn summary_of(stderr: &str) -> Value {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|line| line.get("summary").cloned())
        .unwrap_or_else(|| panic!("no JSON summary in:\n{stderr}"))
}

fn status_file(batch: &Batch) -> Value {
    let text = std::fs::read_to_string(batch.state().join("status.json")).expect("status.json");
    serde_json::from_str(&text).expect("status.json is JSON")
}

/// The report page's figure after `label`, e.g. "Images" → "4 saved of 7 wanted".
fn page_row(batch: &Batch, label: &str) -> String {
    let page = std::fs::read_to_string(batch.out().join("report.html")).expect("report.html");
    let at = page
        .find(&format!(">{label}<"))
        .unwrap_or_else(|| panic!("no row {label} on the page"));
    let cell = &page[at..];
    let start = cell.find("<td>").expect("a value cell") + "<td>".len();
    let end = cell[start..].find("</td>").expect("the cell ends") + start;
    cell[start..end].to_owned()
}

#[test]
fn the_summary_status_json_status_failures_and_page_agree() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "31"]);
    let batch = Batch::new(MIXED);
    let run = batch
        .horde_batch(&sim, "run")
        .args(["--log-format", "json"])
        .status(1)
        .run();
    let summary = summary_of(&run.stderr);
    assert_eq!(
        (
            &summary["jobs"],
            &summary["jobs_done"],
            &summary["jobs_failed"]
        ),
        (&Value::from(5), &Value::from(2), &Value::from(3)),
        "{summary}"
    );
    assert_eq!(summary["images_saved_now"], 4, "{summary}");
    assert_eq!(summary["ending"], "jobs_failed", "{summary}");

    let file = status_file(&batch);
    let status = batch.status_json();
    for view in [&file, &status] {
        assert_eq!(view["images_wanted"], 7, "{view}");
        assert_eq!(view["images_saved"], 4, "{view}");
        assert_eq!(view["jobs"], 5, "{view}");
        assert_eq!(view["jobs_done"], 2, "{view}");
        assert_eq!(view["jobs_failed"], summary["jobs_failed"], "{view}");
        assert_eq!(view["failures"]["no_worker"], 3, "{view}");
        assert_eq!(
            view["finished"], false,
            "4 of 7 images is not finished: {view}"
        );
        assert_eq!(view["active"], false, "{view}");
        assert_eq!(
            view["rate_limited_429s"], summary["rate_limited_429s"],
            "{view}"
        );
        assert_eq!(view["last_run"]["ending"], "jobs_failed", "{view}");
    }
    let failures = HordeBatch::new()
        .args(["failures", "--json"])
        .arg(&batch.manifest)
        .run();
    assert_eq!(failures.stdout.lines().count(), 3, "{}", failures.stdout);
    assert_eq!(page_row(&batch, "Images"), "4 saved of 7 wanted");
    assert_eq!(page_row(&batch, "Jobs"), "2 done, 3 failed, of 5");
    assert_eq!(page_row(&batch, "Failed jobs by class"), "no_worker: 3");

    // A reroll sets an image aside: every view counts it as wanted again.
    let first = batch.index_lines()[0]["file_name"]
        .as_str()
        .expect("a file name")
        .to_owned();
    HordeBatch::new()
        .args(["reroll"])
        .arg(&batch.manifest)
        .arg(&first)
        .run();
    let status = batch.status_json();
    assert_eq!(status["images_saved"], 3, "{status}");
    assert_eq!(status["jobs_done"], 1, "{status}");
    assert_eq!(status["finished"], false, "{status}");
    let report = HordeBatch::new()
        .args(["report"])
        .arg(&batch.manifest)
        .run();
    assert!(report.stdout.contains("report.html"), "{}", report.stdout);
    assert_eq!(page_row(&batch, "Images"), "3 saved of 7 wanted");
    // The next run makes it again; the views follow.
    batch.horde_batch(&sim, "run").status(1).run();
    assert_eq!(batch.status_json()["images_saved"], 4);
    assert_eq!(status_file(&batch)["images_saved"], 4);
}

#[test]
fn a_shards_status_shows_the_429s_its_summary_counted() {
    // The sim's real limits (2 submits a second) and submits every 50 ms: 429s.
    let sim = Sim::start(&["--workers", "8", "--latency", "10ms", "--seed", "32"]);
    let batch = Batch::new(
        "version: 1\nname: shards\n\
         defaults: {models: [stable_diffusion], params: {width: 64, height: 64}}\n\
         jobs:\n  - {name: many, prompt: 'a {red|blue|green|white|black|grey|pink|gold} {kite|boat}', images: 1}\n",
    );
    let run = batch
        .horde_batch(&sim, "run")
        .args(["--shard", "1/2", "--log-format", "json"])
        .env("HORDE_BATCH_SUBMIT_INTERVAL", "50ms")
        .deadline(Duration::from_secs(240))
        .run();
    let summary = summary_of(&run.stderr);
    let limited = summary["rate_limited_429s"].as_u64().expect("a count");
    assert!(limited > 0, "the test needs 429s: {summary}");
    let status = HordeBatch::new()
        .args(["status", "--json", "--shard", "1/2"])
        .arg(&batch.manifest)
        .run();
    let status: Value = serde_json::from_str(&status.stdout).expect("status --json is JSON");
    assert_eq!(status["rate_limited_429s"], limited, "{status}");
    assert_eq!(status["last_run"]["rate_limited_429s"], limited, "{status}");
    assert_eq!(
        status["images_saved"], summary["images_saved_now"],
        "{status}"
    );
    assert_eq!(status["finished"], true, "{status}");
}
