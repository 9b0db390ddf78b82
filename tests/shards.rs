//! Shards as orchestrators run them: `--shard auto` through the binary under
//! the variables of a Kubernetes Indexed Job, a Slurm array (0- and 1-based)
//! and an AWS Batch array job, and refused without them or with two; `status`
//! over every shard of a batch run in shards, during a run (one shard
//! finished, one running, one missing) and after (the total is the sum);
//! the guide's Kubernetes Job fails an index for good only on the exit codes
//! a retry cannot help.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{signal, wait_exit, wait_until, Batch, HordeBatch, Sim};

/// Nine jobs of two images: over three shards, 1, 3 and 5 jobs (by job key).
const NINE_JOBS: &str = "version: 1\nname: parts\ndefaults: {models: [stable_diffusion], \
     params: {width: 64, height: 64}}\n\
     jobs:\n  - {name: a, prompt: 'a {red|green|blue|white|black|grey|pink|gold|teal} kite', images: 2}\n";

/// Every variable `--shard auto` reads, so that the tests' own environment
/// (a CI inside a Kubernetes Job, say) cannot leak into a command.
const ORCHESTRATOR_VARIABLES: [&str; 9] = [
    "JOB_COMPLETION_INDEX",
    "HORDE_BATCH_SHARDS",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "AWS_BATCH_JOB_ARRAY_SIZE",
];

/// `command` with no orchestrator variable but `vars`.
fn under(mut command: Command, vars: &[(&str, &str)]) -> Command {
    for name in ORCHESTRATOR_VARIABLES {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied());
    command
}

/// `horde-batch status --json <manifest> [args]` under `vars`, which must succeed.
#[track_caller]
fn status_json(batch: &Batch, args: &[&str], vars: &[(&str, &str)]) -> (Value, String) {
    let mut command = Command::new(crate::common::BIN);
    command
        .args(["status", "--json"])
        .arg(&batch.manifest)
        .args(args);
    let status = HordeBatch::from_command(under(command, vars)).run();
    match serde_json::from_str(&status.stdout) {
        Ok(value) => (value, status.stderr),
        Err(e) => panic!("status --json is not JSON ({e}): {}", status.stdout),
    }
}

/// What `status --json --shard I/N` says the shard wants: (images, jobs).
#[track_caller]
fn wanted(batch: &Batch, shard: &str) -> (u64, u64) {
    let (status, _) = status_json(batch, &["--shard", shard], &[]);
    (
        status["images_wanted"].as_u64().unwrap(),
        status["jobs"].as_u64().unwrap(),
    )
}

/// `status --shard auto` under `vars` is shard `expected`, and says so on stderr.
#[track_caller]
fn assert_auto_is(batch: &Batch, args: &[&str], vars: &[(&str, &str)], expected: &str, says: &str) {
    let (status, stderr) = status_json(batch, &[&["--shard", "auto"], args].concat(), vars);
    let (images, jobs) = wanted(batch, expected);
    assert_eq!(status["images_wanted"], images, "{vars:?}: {status}");
    assert_eq!(status["jobs"], jobs, "{vars:?}: {status}");
    let line = format!("horde-batch: shard {expected} from {says}");
    assert!(
        stderr.contains(&line),
        "{vars:?}: stderr lacks {line:?}:\n{stderr}"
    );
}

#[test]
fn shard_auto_reads_each_orchestrators_variables() {
    let batch = Batch::new(NINE_JOBS);
    // Kubernetes counts from 0 and does not export the count.
    assert_auto_is(
        &batch,
        &["--shards", "3"],
        &[("JOB_COMPLETION_INDEX", "1")],
        "2/3",
        "Kubernetes (JOB_COMPLETION_INDEX=1, --shards 3)",
    );
    assert_auto_is(
        &batch,
        &[],
        &[("JOB_COMPLETION_INDEX", "0"), ("HORDE_BATCH_SHARDS", "3")],
        "1/3",
        "Kubernetes (JOB_COMPLETION_INDEX=0, HORDE_BATCH_SHARDS=3)",
    );
    // A Slurm array from 1 (--array=1-3) and one from 0 (--array=0-2).
    let slurm = |id: &'static str, min: &'static str| {
        let max = if min == "1" { "3" } else { "2" };
        [
            ("SLURM_ARRAY_TASK_ID", id),
            ("SLURM_ARRAY_TASK_MIN", min),
            ("SLURM_ARRAY_TASK_MAX", max),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_STEP", "1"),
        ]
    };
    assert_auto_is(
        &batch,
        &[],
        &slurm("3", "1"),
        "3/3",
        "Slurm (SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_MIN=1, SLURM_ARRAY_TASK_COUNT=3)",
    );
    assert_auto_is(
        &batch,
        &[],
        &slurm("0", "0"),
        "1/3",
        "Slurm (SLURM_ARRAY_TASK_ID=0, SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_COUNT=3)",
    );
    // AWS Batch counts from 0 and exports the size.
    assert_auto_is(
        &batch,
        &[],
        &[
            ("AWS_BATCH_JOB_ARRAY_INDEX", "2"),
            ("AWS_BATCH_JOB_ARRAY_SIZE", "5"),
        ],
        "3/5",
        "AWS Batch (AWS_BATCH_JOB_ARRAY_INDEX=2, AWS_BATCH_JOB_ARRAY_SIZE=5)",
    );
}

#[test]
fn shard_auto_without_an_orchestrator_or_with_two_is_a_usage_error() {
    let batch = Batch::new(NINE_JOBS);
    let refused = |args: &[&str], vars: &[(&str, &str)], says: &[&str]| {
        let mut command = Command::new(crate::common::BIN);
        command
            .arg("run")
            .arg(&batch.manifest)
            .args(["--simulate"])
            .args(args);
        let mut expect = HordeBatch::from_command(under(command, vars)).status(2);
        for text in says {
            expect = expect.stderr_contains(*text);
        }
        expect.run();
        assert!(
            !batch.out().exists(),
            "{args:?} {vars:?}: nothing was started"
        );
    };
    let every = [
        "JOB_COMPLETION_INDEX",
        "SLURM_ARRAY_TASK_ID",
        "AWS_BATCH_JOB_ARRAY_INDEX",
    ];
    refused(&["--shard", "auto"], &[], &every);
    refused(
        &["--shard", "auto", "--shards", "3"],
        &[
            ("JOB_COMPLETION_INDEX", "0"),
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ],
        &[
            "more than one orchestrator",
            "JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID",
        ],
    );
    refused(
        &["--shard", "auto"],
        &[("JOB_COMPLETION_INDEX", "0")],
        &["--shards N", "HORDE_BATCH_SHARDS"],
    );
    refused(
        &["--shard", "auto"],
        &[
            ("AWS_BATCH_JOB_ARRAY_INDEX", "5"),
            ("AWS_BATCH_JOB_ARRAY_SIZE", "5"),
        ],
        &["AWS_BATCH_JOB_ARRAY_INDEX"],
    );
    refused(
        &["--shard", "auto", "--shards", "4"],
        &[
            ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
            ("AWS_BATCH_JOB_ARRAY_SIZE", "5"),
        ],
        &["--shards 4 disagrees with AWS Batch"],
    );
    refused(
        &["--shard", "2/5", "--shards", "4"],
        &[],
        &["--shards 4 disagrees with --shard 2/5"],
    );
}

/// Each shard of `status --json` by its `shard` (`I/N`).
fn shard_entry<'a>(status: &'a Value, shard: &str) -> &'a Value {
    status["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no `shards` array: {status}"))
        .iter()
        .find(|entry| entry["shard"] == shard)
        .unwrap_or_else(|| panic!("no shard {shard}: {status}"))
}

/// The top-level figures that are sums over the shards.
const SUMMED: [&str; 8] = [
    "images_wanted",
    "images_saved",
    "jobs",
    "jobs_done",
    "jobs_failed",
    "requests_in_flight",
    "images_in_flight",
    "rate_limited_429s",
];

#[track_caller]
fn assert_total_is_the_sum(status: &Value) {
    let shards = status["shards"].as_array().unwrap();
    for field in SUMMED {
        let sum: u64 = shards.iter().map(|s| s[field].as_u64().unwrap()).sum();
        assert_eq!(status[field], sum, "{field}: {status}");
    }
    let kudos: f64 = shards
        .iter()
        .map(|s| s["kudos_charged"].as_f64().unwrap())
        .sum();
    let total = status["kudos_charged"].as_f64().unwrap();
    assert!((total - kudos).abs() < 1e-6, "kudos {total} != {kudos}");
}

#[test]
fn status_shows_every_shard_during_and_after_a_sharded_run() {
    let fast = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "61"]);
    // A Horde whose images take ten minutes: a run on it is caught running.
    let slow = Sim::unlimited(&["--workers", "4", "--latency", "600s", "--seed", "62"]);
    let batch = Batch::new(NINE_JOBS);
    let wants: Vec<(u64, u64)> = ["1/3", "2/3", "3/3"]
        .iter()
        .map(|shard| wanted(&batch, shard))
        .collect();
    assert!(wants.iter().all(|(images, _)| *images > 0), "{wants:?}");
    let images_wanted: u64 = wants.iter().map(|(images, _)| images).sum();
    assert_eq!(images_wanted, 18);
    // Without shard folders, `status` is today's.
    let (before, _) = status_json(&batch, &[], &[]);
    assert!(before.get("shards").is_none(), "{before}");

    // Shard 1 of an AWS Batch array job (index 0), to its end.
    let run = |sim: &Sim, vars: &[(&str, &str)], args: &[&str]| {
        let mut command = under(batch.command(sim, "run"), vars);
        command.args(["--shard", "auto"]).args(args);
        HordeBatch::from_command(command).run()
    };
    let first = run(
        &fast,
        &[
            ("AWS_BATCH_JOB_ARRAY_INDEX", "0"),
            ("AWS_BATCH_JOB_ARRAY_SIZE", "3"),
        ],
        &[],
    );
    assert!(
        first
            .stderr
            .contains("horde-batch: shard 1/3 from AWS Batch"),
        "{}",
        first.stderr
    );
    assert_eq!(
        batch.jsonl("shard-1-of-3/shard-metadata.jsonl").len() as u64,
        wants[0].0
    );

    // Shard 2 of a Slurm array from 1 (id 2), on the slow Horde: running.
    let slurm_second = [
        ("SLURM_ARRAY_TASK_ID", "2"),
        ("SLURM_ARRAY_TASK_MIN", "1"),
        ("SLURM_ARRAY_TASK_MAX", "3"),
        ("SLURM_ARRAY_TASK_COUNT", "3"),
        ("SLURM_ARRAY_TASK_STEP", "1"),
    ];
    let mut second = under(batch.command(&slow, "run"), &slurm_second)
        .args(["--shard", "auto"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = batch.out().join("shard-2-of-3/.horde-batch/run.pid");
    wait_until("shard 2 runs", Duration::from_secs(30), || pid.exists());

    // During: shard 1 finished, shard 2 running, shard 3 missing.
    let (during, _) = status_json(&batch, &[], &[]);
    let states: Vec<&str> = ["1/3", "2/3", "3/3"]
        .iter()
        .map(|shard| shard_entry(&during, shard)["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["finished", "running", "missing"], "{during}");
    assert_eq!(shard_entry(&during, "2/3")["pid"], second.id(), "{during}");
    assert_eq!(shard_entry(&during, "3/3")["images_wanted"], wants[2].0);
    assert_eq!(shard_entry(&during, "3/3")["jobs"], wants[2].1);
    assert_eq!(during["images_wanted"], 18, "{during}");
    assert_eq!(during["images_saved"], wants[0].0, "{during}");
    assert_eq!(during["active"], true, "{during}");
    assert_eq!(during["finished"], false, "{during}");
    assert_total_is_the_sum(&during);
    let text = HordeBatch::new()
        .arg("status")
        .arg(&batch.manifest)
        .stdout_contains("1 running, 1 finished, 0 unfinished, 1 missing")
        .stdout_contains("shard 1/3: finished")
        .stdout_contains(format!("shard 2/3: running (pid {})", second.id()))
        .stdout_contains("shard 3/3: missing")
        .stdout_contains(format!("total: {}/18 images", wants[0].0))
        .run();
    assert!(!text.stdout.contains("no run is active"), "{}", text.stdout);

    // Stopped, shard 2 is unfinished; then shards 2 and 3 run to their end.
    signal(&second, "INT");
    assert_eq!(wait_exit(&mut second, Duration::from_secs(30)), 130);
    let (stopped, _) = status_json(&batch, &[], &[]);
    assert_eq!(
        shard_entry(&stopped, "2/3")["state"],
        "unfinished",
        "{stopped}"
    );
    assert_eq!(stopped["active"], false, "{stopped}");
    run(&fast, &slurm_second, &[]);
    let last = run(&fast, &[("JOB_COMPLETION_INDEX", "2")], &["--shards", "3"]);
    assert!(
        last.stderr
            .contains("horde-batch: shard 3/3 from Kubernetes"),
        "{}",
        last.stderr
    );

    // After: every shard finished, and the total is their sum, each counted once.
    let (after, _) = status_json(&batch, &[], &[]);
    for (at, shard) in ["1/3", "2/3", "3/3"].iter().enumerate() {
        let entry = shard_entry(&after, shard);
        assert_eq!(entry["state"], "finished", "{after}");
        assert_eq!(entry["images_saved"], wants[at].0, "{after}");
        let (alone, _) = status_json(&batch, &["--shard", shard], &[]);
        for field in SUMMED {
            assert_eq!(entry[field], alone[field], "{shard} {field}");
        }
    }
    assert_eq!(after["images_saved"], 18, "{after}");
    assert_eq!(after["jobs_done"], 9, "{after}");
    assert_eq!(after["finished"], true, "{after}");
    assert_eq!(after["active"], false, "{after}");
    assert_total_is_the_sum(&after);
    HordeBatch::new()
        .arg("status")
        .arg(&batch.manifest)
        .stdout_contains("0 running, 3 finished, 0 unfinished, 0 missing")
        .stdout_contains("total: 18/18 images")
        .run();
}

// ------------------------------------------------------- the guide's Job

/// The guide's YAML block that is a Kubernetes Job (`tests/readme.rs`
/// validates it against the Kubernetes schema).
fn kubernetes_job() -> Value {
    let guide = std::fs::read_to_string("docs/guide.md").unwrap();
    let block = guide
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("kind: Job"))
        .expect("docs/guide.md has a Kubernetes Job example");
    serde_yaml::from_str(block).unwrap()
}

#[test]
fn the_kubernetes_job_fails_an_index_for_good_only_when_retrying_cannot_help() {
    use horde_batch::exit;
    let job = kubernetes_job();
    let spec = &job["spec"];
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let completions = spec["completions"].as_u64().unwrap();
    let command: Vec<&str> = [&container["command"], &container["args"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|part| part.as_str().unwrap())
        .collect();
    let command = command.join(" ");
    let auto = format!("--shard auto --shards {completions}");
    assert!(command.contains(&auto), "{command} lacks {auto}");
    // FailIndex needs a per-index backoff limit, which needs pods that are not restarted in place.
    assert_eq!(pod["restartPolicy"], "Never");
    assert!(spec["backoffLimitPerIndex"].as_u64().is_some_and(|n| n > 0));

    let mut for_good: Vec<u64> = Vec::new();
    for rule in spec["podFailurePolicy"]["rules"].as_array().unwrap() {
        let Some(codes) = rule.get("onExitCodes") else {
            continue;
        };
        assert_eq!(codes["containerName"], container["name"], "{rule}");
        assert_eq!(codes["operator"], "In", "{rule}");
        let action = rule["action"].as_str().unwrap();
        assert!(["FailIndex", "FailJob"].contains(&action), "{rule}");
        for_good.extend(
            codes["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap()),
        );
    }
    for_good.sort();
    // A bad manifest or command line, and a refused key or no kudos: the
    // same again. Every other code is worth a retry (which resumes).
    assert_eq!(for_good, [u64::from(exit::USAGE), u64::from(exit::AUTH)]);
    for retried in [
        exit::JOBS_FAILED,
        exit::LEDGER,
        exit::MAX_RUNTIME,
        exit::UNREACHABLE,
        exit::INTERRUPTED,
    ] {
        assert!(!for_good.contains(&u64::from(retried)), "{retried}");
    }
}

/// The guide's fenced block of `language` that contains `marker`.
fn guide_block(language: &str, marker: &str) -> String {
    let guide = std::fs::read_to_string("docs/guide.md").unwrap();
    guide
        .split(&format!("```{language}\n"))
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("docs/guide.md has no {language} block with {marker}"))
        .to_owned()
}

#[test]
fn the_slurm_and_aws_batch_examples_run_each_shard_with_shard_auto() {
    use horde_batch::exit;
    let slurm = guide_block("sh", "#SBATCH --array=");
    let run = slurm
        .lines()
        .find(|line| line.starts_with("horde-batch run"))
        .expect("the Slurm script runs horde-batch");
    assert!(run.contains("--shard auto"), "{run}");
    assert!(slurm.contains("#SBATCH --array=1-5"), "{slurm}");

    let aws: Value = serde_json::from_str(&guide_block("json", "arrayProperties")).unwrap();
    assert_eq!(aws["arrayProperties"]["size"], 5);
    let command: Vec<&str> = aws["containerOverrides"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| part.as_str().unwrap())
        .collect();
    assert!(command.join(" ").contains("--shard auto"), "{command:?}");
    let exits: Vec<String> = aws["retryStrategy"]["evaluateOnExit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["action"] == "EXIT")
        .map(|rule| rule["onExitCode"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exits, [exit::USAGE.to_string(), exit::AUTH.to_string()]);
}
