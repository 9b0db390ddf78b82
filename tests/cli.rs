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
