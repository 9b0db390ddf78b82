//! The `horde-batch` binary as a user runs it: validate, plan, schema.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

fn horde_batch() -> Command {
    Command::cargo_bin("horde-batch").expect("the binary is built for integration tests")
}

fn example_manifests() -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir("manifests")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 4, "the example manifests are there");
    paths
}

#[test]
fn every_example_manifest_validates() {
    horde_batch()
        .arg("validate")
        .args(example_manifests())
        .assert()
        .success()
        .stdout(predicate::str::contains("manifests/quickstart.yaml: ok"));
}

#[test]
fn an_invalid_manifest_exits_2_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: x\n    params: {width: 500}\n").unwrap();
    horde_batch()
        .env("NO_COLOR", "1")
        .arg("validate")
        .arg("manifests/quickstart.yaml")
        .arg(&bad)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("quickstart.yaml: ok"))
        .stderr(predicate::str::contains(
            "bad.yaml:7:21: `width`: 500 is not a multiple of 64",
        ));
}

#[test]
fn a_missing_manifest_is_a_clear_error() {
    horde_batch()
        .args(["plan", "does/not/exist.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "cannot read manifest does/not/exist.yaml",
        ));
}

#[test]
fn plan_json_reports_totals() {
    let output = horde_batch()
        .args(["plan", "manifests/quickstart.yaml", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(plan["totals"]["jobs"], 3);
    assert_eq!(plan["totals"]["requests"], 3);
    assert_eq!(plan["totals"]["images"], 8);
    assert_eq!(plan["jobs"][0]["name"], "cats");
    assert_eq!(plan["jobs"][0]["combinations"], 2);

    let output = horde_batch()
        .args(["plan", "manifests/sweep.yaml", "--json"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        plan["totals"]["requests"], 72,
        "exact seeds need one request per image"
    );
}

#[test]
fn plan_list_shows_every_job_with_key_and_prompt() {
    let output = horde_batch()
        .args(["plan", "manifests/quickstart.yaml", "--list"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0]
        .contains("a black cat sitting on a windowsill, soft morning light ### blurry, lowres"));
    assert!(lines
        .iter()
        .all(|l| l.split_whitespace().next().unwrap().len() == 16));

    let output = horde_batch()
        .args(["plan", "manifests/smoke-200.yaml", "--list", "--json"])
        .output()
        .unwrap();
    let jobs: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(jobs.len(), 25);
    assert_eq!(
        jobs.iter()
            .map(|j| j["images"].as_u64().unwrap())
            .sum::<u64>(),
        200
    );
}

#[test]
fn plan_refuses_huge_expansions_unless_allowed() {
    horde_batch()
        .args(["plan", "benches/plan-1m.yaml", "--json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "expands to 1000000 jobs, more than the limit of 100000",
        ));
}

#[test]
fn committed_schema_is_current() {
    let output = horde_batch().arg("schema").output().unwrap();
    assert!(output.status.success());
    let committed = std::fs::read_to_string("manifests/schema.json").unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        committed,
        "manifests/schema.json is stale: run `cargo run -- schema > manifests/schema.json`"
    );
}

#[test]
fn example_manifests_validate_against_the_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("manifests/schema.json").unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    for path in example_manifests()
        .iter()
        .map(|p| p.as_path())
        .chain([Path::new("benches/plan-1m.yaml")])
    {
        let yaml: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&yaml)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
    // And the schema really checks: a misspelt key and a bad width are caught.
    let bad: serde_json::Value = serde_yaml::from_str(
        "version: 1\nname: x\njobs:\n  - {name: a, prompt: x, params: {width: 500}, imgs: 2}\n",
    )
    .unwrap();
    assert!(validator.iter_errors(&bad).count() >= 2);
}

#[test]
fn help_lists_exit_codes() {
    horde_batch()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("130  stopped"))
        .stdout(predicate::str::contains(
            "6    the Horde could not be reached",
        ));
}

/// Raw characters that would restyle or reorder a terminal: ESC, CR and the
/// bidi embeddings, overrides and isolates.
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| {
            matches!(c, '\x1b' | '\r' | '\u{9b}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

#[test]
fn user_text_reaches_the_terminal_with_its_control_characters_escaped() {
    let dir = tempfile::tempdir().unwrap();
    // A prompt and a job name with an ANSI colour and a right-to-left
    // override, written as YAML escapes and (the override) raw.
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "version: 1\nname: \"evil\\e[31m\"\ndefaults: {models: [stable_diffusion]}\njobs:\n  \
         - name: \"red\\e[31mjob\\u202E\"\n    prompt: \"a \\e[31mred\\e[0m cat \u{202e}tac\"\n    images: 1\n",
    )
    .unwrap();
    for args in [&["--list"][..], &[]] {
        let output = horde_batch()
            .arg("plan")
            .arg(&good)
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "plan {args:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(
            raw_controls(&stdout),
            Vec::<char>::new(),
            "plan {args:?}:\n{stdout}"
        );
        assert!(
            stdout.contains("red\\u{1b}[31mjob\\u{202e}"),
            "plan {args:?}:\n{stdout}"
        );
    }
    let listed = horde_batch()
        .args(["plan", "--list"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(String::from_utf8(listed.stdout)
        .unwrap()
        .contains("a \\u{1b}[31mred\\u{1b}[0m cat \\u{202e}tac"));
    // JSON stays JSON: the same text, escaped by JSON's rules.
    let json = horde_batch()
        .args(["plan", "--list", "--json"])
        .arg(&good)
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(job["prompt"], "a \x1b[31mred\x1b[0m cat \u{202e}tac");

    // A validation error quotes the name and shows the raw override in its
    // source lines: both escaped, even with colours forced on.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "version: 1\nname: x\ndefaults: {models: [stable_diffusion]}\njobs:\n  \
         - {name: \"b\\e[31m\", prompt: x}\n  - name: \"b\\e[31m\"\n    prompt: \"\u{202e} x\"\n",
    )
    .unwrap();
    for colour in [("NO_COLOR", "1"), ("CLICOLOR_FORCE", "1")] {
        let output = horde_batch()
            .env(colour.0, colour.1)
            .arg("validate")
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            raw_controls(&stderr),
            Vec::<char>::new(),
            "{colour:?}:\n{stderr}"
        );
        assert!(stderr.contains("b\\u{1b}[31m"), "{colour:?}:\n{stderr}");
        assert!(
            stderr.contains("is already used by jobs[0]"),
            "{colour:?}:\n{stderr}"
        );
    }
}

#[test]
fn an_api_key_file_of_more_than_one_line_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("two-keys.txt", "first-secret-key\nsecond-secret-key\n"),
        ("commented.txt", "# my horde key\nthe-secret-key\n"),
        ("comment-only.txt", "# the-secret-key\n"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let output = horde_batch()
            .env_remove("AI_HORDE_API_KEY")
            .args(["plan", "manifests/quickstart.yaml", "--kudos", "--simulate"])
            .arg("--api-key-file")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}:\n{stderr}");
        assert!(
            stderr.contains(name),
            "{name}: the file is named:\n{stderr}"
        );
        assert!(stderr.contains("--api-keys-file"), "{name}:\n{stderr}");
        assert!(
            !stderr.contains("secret") && !stderr.contains("my horde key"),
            "{name}: the file's content is never printed:\n{stderr}"
        );
    }
    // One key, with surrounding blank lines and spaces, is still one key.
    let file = dir.path().join("one.txt");
    std::fs::write(&file, "\n  the-one-key  \n\n").unwrap();
    horde_batch()
        .env_remove("AI_HORDE_API_KEY")
        .args(["plan", "manifests/quickstart.yaml", "--kudos", "--simulate"])
        .arg("--api-key-file")
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains("kudos: about"));
}

#[test]
fn each_command_says_what_its_shard_selects() {
    let shard_help = |command: &str| -> String {
        let output = horde_batch().args([command, "--help"]).output().unwrap();
        assert!(output.status.success(), "{command} --help");
        let text = String::from_utf8(output.stdout).unwrap();
        let at = text
            .find("--shard <I/N>")
            .unwrap_or_else(|| panic!("{command}: no --shard:\n{text}"));
        // The option's paragraph: up to the next option.
        let rest = &text[at..];
        let end = rest[1..].find("\n  -").map_or(rest.len(), |i| i + 1);
        rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let run = shard_help("run");
    let mut seen = vec![run.clone()];
    for (command, says) in [
        ("status", "status of"),
        ("report", "report"),
        ("failures", "failed jobs of"),
        ("reroll", "set aside"),
        ("cancel", "Cancel the requests of"),
    ] {
        let help = shard_help(command);
        assert!(
            !seen.contains(&help),
            "{command} --shard repeats another command's help: {help}"
        );
        assert!(help.contains(says), "{command} --shard: {help}");
        assert!(
            help.contains("shard-2-of-5"),
            "{command} --shard names the folder: {help}"
        );
        assert!(
            !help.contains("written to"),
            "{command} --shard talks about running: {help}"
        );
        seen.push(help);
    }
}
