//! Running unattended: progress as JSON lines and bars, `status` during a run,
//! `--max-runtime`, `--max-kudos`, shared-key pre-flight, completions.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    signal, stat, stdout_of_success, wait_exit, wait_until, Batch, Finished, HordeBatch, Sim, BIN,
};
use serde_json::Value;

#[test]
fn json_progress_lines_and_status_during_an_active_run() {
    let sim = Sim::start(&[
        "--workers",
        "2",
        "--latency",
        "200ms..400ms",
        "--seed",
        "21",
    ]);
    let batch = Batch::smoke();
    let log = batch.dir.path().join("stderr.log");
    let mut child = batch
        .command(&sim, "run")
        .args(["--progress", "json", "--progress-interval", "200ms"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    batch.wait_for_images(8, Duration::from_secs(60));

    // The run holds the ledger's lock; status reads what the run publishes
    // (every progress tick, so wait for a sample that has seen an image).
    let mut status = Value::Null;
    wait_until(
        "a status that has seen an image",
        Duration::from_secs(20),
        || {
            status = batch.status_json();
            status["images_saved"].as_u64().unwrap_or(0) >= 1
        },
    );
    assert_eq!(status["active"], true);
    assert_eq!(status["pid"], child.id());
    assert_eq!(status["images_wanted"], 200);
    // During the run, status names the requests in flight and their ids.
    let in_flight = status["in_flight"].as_array().unwrap();
    assert_eq!(
        in_flight.len() as u64,
        status["requests_in_flight"].as_u64().unwrap()
    );
    assert!(
        in_flight.iter().all(|r| r["horde_id"].is_string()),
        "{status}"
    );
    assert_eq!(status["jobs"], 25);

    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), 130);
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "a JSON line every interval");
    assert!(lines.iter().all(|l| l["images_wanted"] == 200));
    let last = lines.last().unwrap();
    // The run has ended, but `finished` means every image saved: not after Ctrl-C.
    assert_eq!(
        (&last["active"], &last["finished"]),
        (&Value::Bool(false), &Value::Bool(false)),
        "{last}"
    );
    assert!(last["images_saved"].as_u64().unwrap() >= 8);

    // With no run active, status reads the ledger itself.
    let status = batch.status_json();
    assert_eq!(status["active"], false);
    assert_eq!(
        status["images_saved"].as_u64().unwrap(),
        batch.index_lines().len() as u64
    );
    assert!(
        status["requests_by_state"]["cancelled"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{status}"
    );
    assert_eq!(
        (status["jobs"].as_u64(), status["finished"].as_bool()),
        (Some(25), Some(false))
    );

    // After the rest is done, the ledger says so too.
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let status = batch.status_json();
    assert_eq!(status["finished"], true, "{status}");
    assert_eq!(
        (status["jobs"].as_u64(), status["jobs_done"].as_u64()),
        (Some(25), Some(25))
    );
    assert_eq!(status["images_saved"], 200, "{status}");
    assert_eq!(status["requests_in_flight"], 0, "{status}");
}

#[test]
fn max_runtime_stops_with_exit_5_and_the_next_run_collects_the_rest() {
    let sim = Sim::start(&[
        "--workers",
        "2",
        "--latency",
        "200ms..400ms",
        "--seed",
        "22",
    ]);
    let batch = Batch::new(
        &std::fs::read_to_string("manifests/smoke-200.yaml")
            .unwrap()
            .replace("images: 8", "images: 2"),
    );
    let start = Instant::now();
    batch
        .horde_batch(&sim, "run")
        .args(["--max-runtime", "2s"])
        .status(5)
        .stderr_contains("--max-runtime of 2s reached")
        .run();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "it stopped in time"
    );
    assert!(batch.index_lines().len() < 50);
    // Detached, not cancelled: the next run re-attaches and collects everything.
    assert_eq!(stat(&sim.stats(), "requests_cancelled"), 0);
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    batch.assert_complete(50);
    assert_eq!(stat(&sim.stats(), "requests_never_retrieved"), 0);
}

#[test]
fn max_kudos_stops_submitting_before_the_budget_is_passed() {
    let sim = Sim::start(&["--workers", "4", "--latency", "20ms..50ms", "--seed", "23"]);
    let batch = Batch::smoke();
    batch
        .horde_batch(&sim, "run")
        .args(["--max-kudos", "100"])
        .status(3)
        .stderr_contains("MaxKudos")
        .run();
    let stats = sim.stats();
    let charged = stats["kudos_charged"].as_f64().unwrap();
    assert!(
        charged > 0.0 && charged <= 100.0,
        "charged {charged} of a 100 kudos budget: {stats}"
    );
    assert!(!batch.index_lines().is_empty());

    // The budget is the batch's, across runs: a second run with the same
    // budget has (next to) nothing left to spend.
    batch
        .horde_batch(&sim, "run")
        .args(["--max-kudos", "100"])
        .status(3)
        .run();
    let total = sim.stats()["kudos_charged"].as_f64().unwrap();
    assert!(
        total <= 100.0,
        "the batch was charged {total} of a 100 kudos budget"
    );
}

#[test]
fn a_shared_keys_limits_are_checked_before_submitting() {
    let sim = Sim::start(&["--api-key", "owner-key-for-test", "--seed", "24"]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shared = runtime.block_on(async {
        let config = horde_batch::horde::ClientConfig::new(
            sim.url.parse().unwrap(),
            horde_batch::horde::ApiKey::new("owner-key-for-test"),
        );
        let client = horde_batch::horde::HordeClient::new(config).unwrap();
        let input = horde_batch::horde::SharedKeyInput {
            name: Some("limited".into()),
            kudos: Some(1000),
            max_image_steps: Some(10),
            ..Default::default()
        };
        client.create_shared_key(&input).await.unwrap().id
    });
    let batch = Batch::new("version: 1\nname: shared\ndefaults: {models: [stable_diffusion], params: {steps: 20}}\njobs:\n  - {name: a, prompt: x}\n");
    let refused = batch
        .horde_batch(&sim, "run")
        .env("AI_HORDE_API_KEY", shared.expose_secret())
        .status(3)
        .stderr_contains("job `a` asks for 20 steps; the shared key allows 10")
        .run();
    assert!(
        !refused.stderr.contains(shared.expose_secret()),
        "the key is never printed"
    );
    assert_eq!(stat(&sim.stats(), "requests_created"), 0);
}

#[test]
fn progress_bars_are_drawn_on_a_terminal() {
    let sim = Sim::start(&["--workers", "8", "--latency", "10ms..30ms", "--seed", "25"]);
    let batch = Batch::new("version: 1\nname: bars\ndefaults: {models: [stable_diffusion]}\njobs:\n  - {name: a, prompt: 'a {red|blue} cube', images: 3}\n");
    // `script` runs the command under a pseudo-terminal and copies what it draws.
    let command = format!(
        "{BIN} run {} --horde-url {} --progress-interval 100ms",
        batch.manifest.display(),
        sim.url
    );
    let output = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{screen}");
    assert!(
        screen.contains("6/6 images"),
        "the bar shows the final count: {screen}"
    );
    assert!(
        screen.contains("[=") || screen.contains("=]"),
        "a bar is drawn: {screen}"
    );
    assert!(
        !screen.contains("{\"active\""),
        "no JSON lines on a terminal"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        HordeBatch::new()
            .args(["completions", shell])
            .stdout_contains("max-runtime")
            .run();
    }
}

/// What bash's completion function offers for `words`, the last being completed.
fn bash_completes(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let words_list = words
        .iter()
        .map(|w| format!("'{w}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let current = words.last().unwrap();
    let previous = words[words.len() - 2];
    let program = format!(
        "source '{}'; COMP_WORDS=({words_list}); COMP_CWORD={}; \
         _horde__batch horde-batch '{current}' '{previous}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.len() - 1
    );
    let stdout = stdout_of_success(Command::new("bash").args(["-c", &program]));
    String::from_utf8_lossy(&stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_every_subcommands_options() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("horde-batch.bash");
    let completions = HordeBatch::new().args(["completions", "bash"]).run();
    std::fs::write(&script, completions.stdout).unwrap();
    let offered = bash_completes(&script, &["horde-batch", "run", "--pro"]);
    assert_eq!(offered, ["--progress", "--progress-interval"]);
    assert_eq!(
        bash_completes(&script, &["horde-batch", "cancel", "--horde-u"]),
        ["--horde-url"]
    );
    assert_eq!(bash_completes(&script, &["horde-batch", "sta"]), ["status"]);
}

#[test]
fn logs_in_a_file_have_no_colour_quiet_is_quiet_and_json_is_json_to_the_end() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "26"]);
    let run = |args: &[&str], envs: &[(&str, &str)]| {
        let batch = Batch::new(
            "version: 1\nname: logs\ndefaults: {models: [stable_diffusion], \
             params: {width: 64, height: 64}}\njobs:\n  - {name: a, prompt: a kite, images: 2}\n",
        );
        let output = batch
            .command(&sim, "run")
            .args(args)
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        String::from_utf8(output.stderr).unwrap()
    };
    // stderr is a pipe here, as in a cron job writing to a log file.
    let plain = run(&["-v", "--progress", "none"], &[]);
    assert!(plain.contains("run started"), "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "colour escapes in a log file:\n{plain}"
    );
    let forced = run(&["-v", "--progress", "none"], &[("CLICOLOR_FORCE", "1")]);
    assert!(forced.contains('\x1b'), "CLICOLOR_FORCE asks for colour");
    let quiet = run(&["-q", "--progress", "none"], &[]);
    assert_eq!(quiet, "", "-q prints errors only");
    // Also with the default progress, which is JSON lines outside a terminal.
    let quiet = run(&["-q", "--progress-interval", "10ms"], &[]);
    assert_eq!(quiet, "", "-q writes no progress lines");
    // Those lines carry counts, not every request in flight (a cron log keeps them all).
    let lines = run(&["--progress-interval", "10ms"], &[]);
    let samples: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l.get("images_wanted").is_some())
        .collect();
    assert!(!samples.is_empty(), "{lines}");
    for sample in &samples {
        assert_eq!(sample["in_flight"], Value::Array(vec![]), "{sample}");
    }
    let json = run(&["--log-format", "json", "--progress", "none", "-v"], &[]);
    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = lines
        .iter()
        .find_map(|l| l.get("summary"))
        .expect("the summary is one JSON object");
    assert_eq!(summary["images_saved_now"], 2);
    assert_eq!(summary["ending"], "complete");
}

#[test]
fn the_kudos_estimate_is_close_to_what_the_run_is_charged() {
    let sim = Sim::unlimited(&["--workers", "4", "--latency", "10ms", "--seed", "27"]);
    let batch = Batch::new(
        "version: 1\nname: priced\ndefaults: {models: [stable_diffusion], \
         params: {width: 512, height: 512, steps: 20}}\nrun: {max_n: 4}\n\
         jobs:\n  - {name: a, prompt: 'a {red|blue} kite', images: 4}\n  \
         - {name: b, prompt: a boat, images: 3, params: {steps: 40}}\n",
    );
    let plan = HordeBatch::new()
        .args(["plan", "--kudos", "--json", "--horde-url", &sim.url])
        .arg(&batch.manifest)
        .run();
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    let estimate = plan["kudos"]["estimate"].as_f64().unwrap();
    let Finished { code, stderr, .. } = batch.run(&sim);
    assert_eq!(code, 0, "{stderr}");
    let charged = sim.stats()["kudos_charged"].as_f64().unwrap();
    let ratio = estimate / charged;
    println!("kudos: estimated {estimate}, charged {charged}, ratio {ratio:.3}");
    assert!(
        (0.85..=1.25).contains(&ratio),
        "estimated {estimate} kudos, charged {charged} (ratio {ratio:.2})"
    );
}

#[test]
fn the_kudos_estimate_paces_its_dry_runs_under_the_submit_limit() {
    // The sim's own limits (2 submits a second per IP and per key), and 12
    // distinct requests: 12 dry runs, which unpaced earn a 429.
    let sim = Sim::start(&["--workers", "2", "--latency", "10ms"]);
    let batch = Batch::new(
        "version: 1\nname: priced\ndefaults: {models: [stable_diffusion], \
         params: {width: 512, height: 512}}\n\
         jobs:\n  - name: grid\n    prompt: a lighthouse\n    matrix:\n      \
         steps: [20, 25, 30, 35]\n      cfg_scale: [5, 6, 7]\n",
    );
    let plan = batch
        .horde_batch(&sim, "plan")
        .arg("--kudos")
        .stdout_contains("(12 dry run(s))")
        .run();
    assert!(
        !plan.stderr.contains("could not be reached"),
        "{}",
        plan.stderr
    );
    assert_eq!(
        stat(&sim.stats(), "rate_limited"),
        0,
        "the dry runs stay under the limit"
    );
}

/// A Horde that answers every call 429 (flask-limiter's answer, no `rc`),
/// asking for a 1 s wait; the calls it got are counted. Returns its API root.
fn always_rate_limited(calls: std::sync::Arc<std::sync::atomic::AtomicU64>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let body = r#"{"message": "2 per 1 second"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 429 TOO MANY REQUESTS\r\nContent-Type: application/json\r\n\
                 Retry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn a_kudos_estimate_still_rate_limited_after_its_retries_says_so() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let url = always_rate_limited(std::sync::Arc::clone(&calls));
    let started = Instant::now();
    let plan = HordeBatch::new()
        .args([
            "plan",
            "manifests/quickstart.yaml",
            "--kudos",
            "--horde-url",
            &url,
        ])
        .env("NO_COLOR", "1")
        .status(6)
        .stderr_contains("rate limit")
        .stderr_contains("Retry-After")
        .run();
    assert!(
        !plan.stderr.contains("could not be reached"),
        "{}",
        plan.stderr
    );
    assert!(!plan.stderr.contains("the network"), "{}", plan.stderr);
    let calls = calls.load(std::sync::atomic::Ordering::SeqCst);
    // Retried, honouring the 1 s asked for, but not without end.
    assert!((2..=8).contains(&calls), "{calls} calls");
    assert!(
        started.elapsed() >= Duration::from_secs(calls - 1),
        "{:?}",
        started.elapsed()
    );
}
