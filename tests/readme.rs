//! The documentation's examples that are not run elsewhere: the Kubernetes
//! Indexed Job of `docs/guide.md` is checked against the Kubernetes API
//! schema (`kubernetes-validate`, offline, from PyPI; `.ci/run` installs it)
//! and against horde-batch's own sharding rules.

use std::process::Command;

use serde_json::Value;

/// The guide's YAML block that is a Kubernetes Job.
fn kubernetes_job() -> String {
    let guide = std::fs::read_to_string("docs/guide.md").unwrap();
    guide
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains("kind: Job"))
        .expect("docs/guide.md has a Kubernetes Job example")
        .to_owned()
}

#[test]
fn the_kubernetes_job_shards_the_batch_once_per_completion_index() {
    let job: Value = serde_yaml::from_str(&kubernetes_job()).unwrap();
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().unwrap();
    let command = spec["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| part.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    // `--shard auto` reads JOB_COMPLETION_INDEX (0 … N−1); the count is not exported.
    let shard = format!("--shard auto --shards {completions}");
    assert!(command.contains(&shard), "{command} lacks {shard}");
    assert!(
        !command.contains("--api-key"),
        "keys come from a secret, not the command line: {command}"
    );
}

#[test]
fn the_kubernetes_job_validates_against_the_kubernetes_schema() {
    let Some(python) = crate::common::python_with("kubernetes_validate") else {
        crate::common::skip_without(
            "kubernetes-validate",
            "pip install kubernetes-validate, or set HORDE_BATCH_PYTHON",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let file = dir.path().join("job.yaml");
        std::fs::write(&file, text).unwrap();
        Command::new(&python)
            .args(["-m", "kubernetes_validate", "--strict"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let job = kubernetes_job();
    let output = check(&job);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The validator does catch a mistake of this kind.
    let broken = check(&job.replace("backoffLimit:", "backofLimit:"));
    assert!(!broken.status.success());
}
