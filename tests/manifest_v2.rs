//! Manifest v2 at the compile level: nested variants, wildcard globs,
//! per-image random mode, labels, and `rows:` tables (CSV and JSON Lines),
//! with exact expansions, stable keys and every bad row reported at its place;
//! and `alchemy:`, resolved over the defaults and kept out of every key.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use horde_batch::manifest::{
    compile, AlchemyForm, AlchemySpec, CaptionFrom, CompileOptions, CompiledManifest, Job,
    ManifestFile,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn compile_in(text: &str, base: &Path) -> Result<CompiledManifest, Vec<String>> {
    let file = ManifestFile::parse(Path::new("test.yaml"), base.to_path_buf(), text.to_owned())
        .map_err(|e| vec![e.to_string()])?;
    compile(file, &CompileOptions::default())
        .map_err(|e| e.problems().iter().map(|p| format!("{p}")).collect())
}

fn jobs_in(text: &str, base: &Path) -> Vec<Job> {
    compile_in(text, base)
        .unwrap_or_else(|problems| panic!("manifest is valid: {problems:#?}"))
        .jobs()
        .collect()
}

fn jobs(text: &str) -> Vec<Job> {
    jobs_in(text, Path::new("."))
}

fn prompts(text: &str) -> Vec<String> {
    jobs(text).into_iter().map(|j| j.prompt).collect()
}

fn one_job(prompt: &str, extra: &str) -> String {
    format!("version: 1\nname: v2\ndefaults: {{models: [m]}}\nwildcards: {{c: [r, b]}}\njobs:\n  - name: a\n    prompt: '{prompt}'\n{extra}")
}

#[test]
fn nested_variants_expand_option_by_option() {
    assert_eq!(prompts(&one_job("{a|{b|c}} x", "")), ["a x", "b x", "c x"]);
    assert_eq!(
        prompts(&one_job("{x|{2$$p|q|r}}", "")),
        ["x", "p, q", "p, r", "q, r"]
    );
    assert_eq!(
        prompts(&one_job("{a|{__c__|z} y}", "")),
        ["a", "r y", "b y", "z y"]
    );
    assert_eq!(
        prompts(&one_job("{a {b|c}|d} {e|f}", "")),
        ["a b e", "a b f", "a c e", "a c f", "d e", "d f"]
    );
    // Weights inside nested variants change no prompt and no key.
    let plain: Vec<_> = jobs(&one_job("{a|{b|c}}", ""))
        .iter()
        .map(|j| j.key)
        .collect();
    let weighted: Vec<_> = jobs(&one_job("{a|2::{0.5::b|c}}", ""))
        .iter()
        .map(|j| j.key)
        .collect();
    assert_eq!(plain, weighted);
}

/// In random mode an option is drawn by its weight and a nested variant's
/// options by theirs: `{1::a|3::{b|3::c}}` gives a ¼, b 3/16, c 9/16.
#[test]
fn nested_weights_multiply_in_random_mode() {
    let drawn = prompts(&one_job("{1::a|3::{b|3::c}}", "    random: 4000\n"));
    assert_eq!(drawn.len(), 4000);
    let share = |p: &str| drawn.iter().filter(|d| *d == p).count() as f64 / 4000.0;
    assert!((share("a") - 0.25).abs() < 0.03, "a: {}", share("a"));
    assert!((share("b") - 0.1875).abs() < 0.03, "b: {}", share("b"));
    assert!((share("c") - 0.5625).abs() < 0.03, "c: {}", share("c"));
}

#[test]
fn wildcard_globs_take_every_matching_wildcard_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let wildcards = dir.path().join("wildcards");
    std::fs::create_dir_all(wildcards.join("people/old")).unwrap();
    std::fs::write(wildcards.join("people/male.txt"), "Bob\nCarl\n").unwrap();
    std::fs::write(wildcards.join("people/female.txt"), "Alice\n").unwrap();
    std::fs::write(wildcards.join("people/old/elders.txt"), "Zed\n").unwrap();
    std::fs::write(wildcards.join("colors.txt"), "red\n").unwrap();
    let text = |prompt: &str| {
        format!("version: 1\nname: g\ndefaults: {{models: [m]}}\nwildcards: {{people_inline: [Ina]}}\njobs:\n  - name: a\n    prompt: '{prompt}'\n")
    };
    let prompts_of = |prompt: &str| -> Vec<String> {
        jobs_in(&text(prompt), dir.path())
            .into_iter()
            .map(|j| j.prompt)
            .collect()
    };
    // `*` crosses folders, as fnmatch does in sd-dynamic-prompts.
    assert_eq!(prompts_of("__people/*__"), ["Alice", "Bob", "Carl", "Zed"]);
    assert_eq!(prompts_of("__people/?ale__"), ["Bob", "Carl"]);
    // Globs match the manifest's own wildcards too, and sit inside variants.
    assert_eq!(
        prompts_of("__people*__"),
        ["Alice", "Bob", "Carl", "Zed", "Ina"]
    );
    assert_eq!(prompts_of("{__col*__|blue} hat"), ["red hat", "blue hat"]);
    // The label is the glob as written.
    let labelled = jobs_in(&text("__people/*__"), dir.path());
    assert_eq!(labelled[0].labels["people/*"], json!("Alice"));
    // A glob that matches nothing is an error at its place, never text.
    let problems = compile_in(&text("by __animals/*__"), dir.path()).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0]
            .starts_with("test.yaml:7:17: the wildcard glob `__animals/*__` matches no wildcard"),
        "{problems:?}"
    );
}

#[test]
fn random_mode_draws_prompts_with_repeats_reproducibly() {
    let manifest = |seed: u64| {
        one_job(
            "{a|b} __c__",
            &format!("    random: 50\n    images: 2\n    sample_seed: {seed}\n"),
        )
    };
    let first = jobs(&manifest(7));
    assert_eq!(first.len(), 50);
    assert!(first.iter().all(|j| j.images == 2));
    // Only 4 prompts exist: 50 draws repeat them, each still its own job.
    let distinct: HashSet<_> = first.iter().map(|j| j.prompt.clone()).collect();
    assert_eq!(distinct.len(), 4);
    let keys: HashSet<_> = first.iter().map(|j| j.key).collect();
    assert_eq!(keys.len(), 50, "every draw has its own key");
    // The same seed draws the same prompts and keys; another seed does not.
    let again = jobs(&manifest(7));
    assert_eq!(
        first.iter().map(|j| (&j.prompt, j.key)).collect::<Vec<_>>(),
        again.iter().map(|j| (&j.prompt, j.key)).collect::<Vec<_>>()
    );
    let other = jobs(&manifest(8));
    assert_ne!(
        first.iter().map(|j| &j.prompt).collect::<Vec<_>>(),
        other.iter().map(|j| &j.prompt).collect::<Vec<_>>()
    );
    let compiled = compile_in(&manifest(7), Path::new(".")).unwrap();
    assert_eq!(compiled.total_images(), 100);

    let both = compile_in(
        &one_job("{a|b}", "    random: 5\n    sample: 2\n"),
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        both[0].contains("`random` and `sample` cannot both be set"),
        "{both:?}"
    );
}

#[test]
fn labels_record_the_value_of_every_axis_wildcard_and_variant() {
    let text = r#"
version: 1
name: l
defaults: {models: [m]}
wildcards: {animal: [owl, cat]}
jobs:
  - name: a
    prompt: "a ${mood} __animal__ and __animal__ {at dawn|at night} {2$$x|y|z}"
    matrix:
      mood: [happy, sad]
      steps: [10, 20]
      model: [m1, m2]
"#;
    let all = jobs(text);
    assert_eq!(all.len(), 2 * 2 * 2 * 2 * 2 * 2 * 3);
    let first = &all[0];
    let expected: BTreeMap<String, Value> = [
        ("mood", json!("happy")),
        ("steps", json!(10)),
        ("model", json!("m1")),
        ("animal", json!("owl")),
        ("animal_2", json!("owl")),
        ("variant_1", json!("at dawn")),
        ("variant_2", json!("x, y")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(first.labels, expected);
    let last = all.last().unwrap();
    assert_eq!(last.labels["animal_2"], json!("cat"));
    assert_eq!(last.labels["variant_2"], json!("y, z"));
    // The labels that become columns: not the built-in `steps` and `model`.
    let compiled = compile_in(text, Path::new(".")).unwrap();
    assert_eq!(
        compiled.label_columns(),
        ["animal", "animal_2", "mood", "variant_1", "variant_2"]
    );
}

#[test]
fn a_label_named_like_a_column_is_refused_where_it_is_written() {
    let text = "version: 1\nname: l\ndefaults: {models: [m]}\nwildcards: {seed: [a]}\njobs:\n  - name: a\n    prompt: '${job} __seed__'\n    matrix: {job: [x]}\n";
    let problems = compile_in(text, Path::new(".")).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].starts_with("test.yaml:8:19: the label `job`"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("test.yaml:7:21: the label `seed`"),
        "{problems:?}"
    );
    // An extra column takes its name too.
    let text = "version: 1\nname: l\ndefaults: {models: [m]}\noutput: {metadata: {columns: [clip_skip]}}\njobs:\n  - name: a\n    prompt: '${clip_skip}'\n    matrix: {mood: [x]}\n";
    assert!(compile_in(text, Path::new(".")).is_err());
    // Renaming the caption column frees `text`.
    let text = "version: 1\nname: l\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: '${text}'\n    matrix: {text: [x]}\n";
    let problems = compile_in(text, Path::new(".")).unwrap_err();
    assert!(problems[0].contains("the label `text`"), "{problems:?}");
    let renamed = text.replace("jobs:", "output: {metadata: {caption: prompt}}\njobs:");
    assert_eq!(jobs(&renamed)[0].labels["text"], json!("x"));
    // Unknown extra columns are named with what is known.
    let text = "version: 1\nname: l\ndefaults: {models: [m]}\noutput: {metadata: {columns: [clip_skp]}}\njobs:\n  - {name: a, prompt: x}\n";
    let problems = compile_in(text, Path::new(".")).unwrap_err();
    assert!(
        problems[0].contains("did you mean `clip_skip`"),
        "{problems:?}"
    );
}

/// A folder with `rows.csv` (or `.jsonl`) and a manifest using it.
fn table(name: &str, content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), content).unwrap();
    dir
}

const ROWS_MANIFEST: &str = r#"version: 1
name: rows
defaults: {models: [m], params: {steps: 20}}
jobs:
  - name: t
    prompt: "${subject}, ${style} style, {day|night}"
    rows: {file: FILE, id: pid}
"#;

#[test]
fn rows_expand_one_job_per_row_times_the_variants() {
    let dir = table(
        "p.csv",
        "pid,subject,style,steps,model,note\nr1,a cat,oil,30,m2,first\nr2,\"a dog, small\",,,,\nr3,an owl,ink,12,,\n",
    );
    let all = jobs_in(&ROWS_MANIFEST.replace("FILE", "p.csv"), dir.path());
    let prompts: Vec<_> = all.iter().map(|j| j.prompt.as_str()).collect();
    assert_eq!(
        prompts,
        [
            "a cat, oil style, day",
            "a cat, oil style, night",
            "a dog, small, style, day",
            "a dog, small, style, night",
            "an owl, ink style, day",
            "an owl, ink style, night",
        ]
    );
    let ids: Vec<_> = all.iter().map(|j| j.id.as_deref().unwrap()).collect();
    assert_eq!(ids, ["r1", "r1", "r2", "r2", "r3", "r3"]);
    // Parameter and model columns set their row; empty cells keep the defaults.
    let steps: Vec<_> = all.iter().map(|j| j.params["steps"].clone()).collect();
    assert_eq!(
        steps,
        [
            json!(30),
            json!(30),
            json!(20),
            json!(20),
            json!(12),
            json!(12)
        ]
    );
    assert_eq!(all[0].models.to_vec(), ["m2"]);
    assert_eq!(all[2].models.to_vec(), ["m"]);
    // Every column is a label; empty cells are absent.
    assert_eq!(all[0].labels["note"], json!("first"));
    assert_eq!(all[0].labels["pid"], json!("r1"));
    assert_eq!(all[0].labels["variant_1"], json!("day"));
    assert!(!all[2].labels.contains_key("style"));

    // JSON Lines rows work the same, typed values included.
    let dir = table(
        "p.jsonl",
        "{\"pid\": \"r1\", \"subject\": \"a cat\", \"style\": \"oil\", \"steps\": 30, \"model\": \"m2\", \"note\": \"first\"}\n\n{\"pid\": \"r2\", \"subject\": \"a dog, small\"}\n{\"pid\": \"r3\", \"subject\": \"an owl\", \"style\": \"ink\", \"steps\": 12}\n",
    );
    let from_jsonl = jobs_in(&ROWS_MANIFEST.replace("FILE", "p.jsonl"), dir.path());
    assert_eq!(
        from_jsonl
            .iter()
            .map(|j| (&j.prompt, j.key))
            .collect::<Vec<_>>(),
        all.iter().map(|j| (&j.prompt, j.key)).collect::<Vec<_>>(),
        "the same table as CSV or JSON Lines gives the same jobs and keys"
    );
}

#[test]
fn row_keys_are_stable_and_ids_tell_identical_rows_apart() {
    let manifest = "version: 1\nname: k\ndefaults: {models: [m]}\njobs:\n  - name: t\n    prompt: '${subject}'\n    rows: {file: p.csv, id: pid}\n";
    let keys = |csv: &str| -> BTreeMap<String, String> {
        let dir = table("p.csv", csv);
        jobs_in(manifest, dir.path())
            .into_iter()
            .map(|j| (j.id.unwrap(), j.key.to_string()))
            .collect()
    };
    let before = keys("pid,subject\na,cat\nb,cat\nc,owl\n");
    assert_eq!(before.len(), 3);
    assert_ne!(before["a"], before["b"], "same prompt, different ids");
    // Reordering rows changes no key; editing one row changes only its key.
    assert_eq!(keys("pid,subject\nc,owl\na,cat\nb,cat\n"), before);
    let edited = keys("pid,subject\na,cat\nb,dog\nc,owl\n");
    assert_eq!(edited["a"], before["a"]);
    assert_ne!(edited["b"], before["b"]);
    assert_eq!(edited["c"], before["c"]);
}

#[test]
fn every_bad_row_is_reported_at_once_with_its_line_and_column() {
    let dir = table(
        "p.csv",
        "pid,subject,steps,cfg_scale\n\
         r1,a cat,20,7\n\
         r2,a dog,abc,7\n\
         r3,a {big|small} owl,20,7\n\
         r4,a fox,9999,7\n\
         r1,a hen,20,7\n\
         ,a cow,20,7\n\
         r7,a bee,20,7.123\n",
    );
    let problems = compile_in(&ROWS_MANIFEST.replace("FILE", "p.csv"), dir.path()).unwrap_err();
    let shown = dir.path().join("p.csv").display().to_string();
    let expected = [
        (3, 10, "row 2, column `steps`: expected a whole number"),
        (
            4,
            4,
            "row 3, column `subject`: `a {big|small} owl` holds a variant",
        ),
        (5, 10, "row 4, column `steps`: 9999 is out of range"),
        (6, 1, "row 5: id `r1` is already the id of row 1"),
        (7, 1, "row 6: the id column `pid` is empty"),
        (
            8,
            13,
            "row 7, column `cfg_scale`: 7.123 has more than 2 decimals",
        ),
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, (line, column, message)) in problems.iter().zip(expected) {
        let place = format!("{shown}:{line}:{column}: ");
        assert!(
            problem.starts_with(&place) && problem.contains(message),
            "expected {place}{message}…, got {problem}"
        );
    }

    // Rows that do not parse at all are reported with their lines too.
    let dir = table(
        "p.jsonl",
        "{\"pid\": \"a\", \"subject\": \"x\"}\n[1, 2]\n{\"pid\": \"c\", \n",
    );
    let problems = compile_in(&ROWS_MANIFEST.replace("FILE", "p.jsonl"), dir.path()).unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains(":2:1: row 2: expected a JSON object"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains(":3:") && problems[1].contains("row 3:"),
        "{problems:?}"
    );

    // A missing file, an unknown id column, a ragged CSV.
    let problems =
        compile_in(&ROWS_MANIFEST.replace("FILE", "nothere.csv"), dir.path()).unwrap_err();
    assert!(
        problems[0].starts_with("test.yaml:7:11: cannot read rows file"),
        "{problems:?}"
    );
    let dir = table("p.csv", "id,subject\n1,x\n");
    let problems = compile_in(&ROWS_MANIFEST.replace("FILE", "p.csv"), dir.path()).unwrap_err();
    assert!(
        problems[0].contains("has no column `pid`; its columns are id, subject"),
        "{problems:?}"
    );
    let dir = table("p.csv", "pid,subject\n1,x\n2,y,z\n");
    let problems = compile_in(&ROWS_MANIFEST.replace("FILE", "p.csv"), dir.path()).unwrap_err();
    assert!(problems[0].contains(":3:1: row 2:"), "{problems:?}");
}

#[test]
fn id_may_stand_for_key_in_file_names_only_when_rows_name_every_job() {
    let dir = table("p.csv", "pid,subject,style\na,cat,oil\nb,owl,ink\n");
    let with = |filename: &str, extra: &str| {
        ROWS_MANIFEST.replace("FILE", "p.csv").replace(
            "jobs:",
            &format!("output: {{filename: \"{filename}\"}}\njobs:"),
        ) + extra
    };
    // The variants make two images sets per row: `{id}` alone would collide.
    let problems = compile_in(&with("{job}/{id}-{index}", ""), dir.path()).unwrap_err();
    assert!(
        problems[0].contains("uses `{id}` without `{key}`, but job `t`"),
        "{problems:?}"
    );
    let plain = "version: 1\nname: k\ndefaults: {models: [m]}\noutput: {filename: \"{id}-{index}\"}\njobs:\n  - name: t\n    prompt: '${subject}'\n    rows: {file: p.csv, id: pid}\n";
    assert!(compile_in(plain, dir.path()).is_ok());
    let two_jobs = format!(
        "{plain}  - name: u\n    prompt: '${{subject}}'\n    rows: {{file: p.csv, id: pid}}\n"
    );
    let problems = compile_in(&two_jobs, dir.path()).unwrap_err();
    assert!(
        problems[0].contains("without `{key}` or `{job}`"),
        "{problems:?}"
    );
    assert!(compile_in(&with("{job}/{key}-{id}-{index}", ""), dir.path()).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Expansion is deterministic, and the keys of a rows job and of a
    /// nested-variant job stay the same when an unrelated job changes.
    #[test]
    fn keys_stay_stable_when_unrelated_jobs_change(
        subjects in proptest::collection::btree_set("[a-z]{1,6}", 1..8),
        other in "[a-z]{1,8}",
        draws in 1u64..20,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("pid,subject\n");
        for (i, subject) in subjects.iter().enumerate() {
            csv.push_str(&format!("id{i},{subject}\n"));
        }
        std::fs::write(dir.path().join("p.csv"), csv).unwrap();
        let text = |other: &str| format!(
            "version: 1\nname: p\ndefaults: {{models: [m]}}\njobs:\n  - name: rows\n    prompt: '${{subject}} {{a|{{b|c}}}}'\n    rows: {{file: p.csv, id: pid}}\n  - name: drawn\n    prompt: '{{x|2::{{y|z}}}}'\n    random: {draws}\n  - name: other\n    prompt: '{other} {{p|q}}'\n"
        );
        let keyed = |text: &str| -> BTreeMap<String, Vec<String>> {
            let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for job in jobs_in(text, dir.path()) {
                out.entry(job.name.to_string()).or_default().push(format!("{} {}", job.key, job.prompt));
            }
            out
        };
        let before = keyed(&text(&other));
        prop_assert_eq!(&before, &keyed(&text(&other)));
        prop_assert_eq!(before["rows"].len(), subjects.len() * 3);
        prop_assert_eq!(before["drawn"].len() as u64, draws);
        let after = keyed(&text(&format!("{other}x")));
        prop_assert_eq!(&before["rows"], &after["rows"]);
        prop_assert_eq!(&before["drawn"], &after["drawn"]);
        prop_assert_ne!(&before["other"], &after["other"]);
    }
}

/// A resumed run may start after the jobs an earlier run settled: the stream
/// from any ordinal, seeded with the earlier keys, is the full stream's tail,
/// keys included, in every expansion mode and with repeated content.
#[test]
fn the_stream_from_any_ordinal_is_the_full_streams_tail() {
    let text = "version: 1\nname: tail\ndefaults: {models: [m]}\njobs:\n\
                \x20 - name: grid\n    prompt: 'a {x|y|x} ${c}'\n    matrix: {c: [1, 2], steps: [10, 20]}\n\
                \x20 - name: sampled\n    prompt: '{p|q|r|s} {t|u|v}'\n    sample: 5\n\
                \x20 - name: drawn\n    prompt: '{1::a|3::b}'\n    random: 6\n\
                \x20 - name: again\n    prompt: 'a {x|y|x} ${c}'\n    matrix: {c: [1]}\n";
    let compiled = compile_in(text, Path::new(".")).unwrap();
    let all: Vec<Job> = compiled.jobs().collect();
    let keys: Vec<u64> = all.iter().map(|job| job.key.0).collect();
    assert!(
        keys.iter().collect::<HashSet<_>>().len() == keys.len() && all.len() > 20,
        "repeated content got distinct keys"
    );
    for start in 0..=all.len() {
        let tail: Vec<(u64, String, u128)> = compiled
            .jobs_from(start as u64, keys[..start].iter().copied())
            .map(|job| (job.key.0, job.prompt, job.combination))
            .collect();
        let expected: Vec<(u64, String, u128)> = all[start..]
            .iter()
            .map(|job| (job.key.0, job.prompt.clone(), job.combination))
            .collect();
        assert_eq!(tail, expected, "from ordinal {start}");
    }
    assert_eq!(compiled.jobs_from(all.len() as u64 + 3, keys).count(), 0);
}

#[test]
fn the_expansion_fingerprint_follows_what_expands_not_how_it_is_written() {
    let fingerprint = |text: &str| {
        compile_in(text, Path::new("."))
            .unwrap()
            .expansion_fingerprint()
    };
    let base = fingerprint(&one_job("{a|b}", "    images: 2\n"));
    assert_eq!(base, fingerprint(&one_job("{a|b}", "    images: 2\n")));
    assert_eq!(
        base,
        fingerprint(&format!(
            "# a comment\n{}",
            one_job("{a|b}", "    images: 2\n")
        )),
        "comments change nothing"
    );
    assert_ne!(base, fingerprint(&one_job("{a|c}", "    images: 2\n")));
    assert_ne!(base, fingerprint(&one_job("{a|b}", "    images: 3\n")));
    assert_ne!(
        base,
        fingerprint(&one_job("{a|b}", "    images: 2\n    params: {steps: 9}\n"))
    );
}

// ------------------------------------------------ file names after cleaning

/// A one-job rows manifest naming files `FILENAME`, over `p.csv` (ids in `pid`).
fn rows_named(filename: &str) -> String {
    format!("version: 1\nname: ids\ndefaults: {{models: [m]}}\noutput: {{filename: \"{filename}\"}}\njobs:\n  - name: t\n    prompt: '${{subject}}'\n    rows: {{file: p.csv, id: pid}}\n")
}

/// Ids that differ as text but clean up to one file name would make `run`
/// pay for both images, keep one and stop; `validate` refuses them at the
/// second id's cell, naming the first.
#[test]
fn ids_that_clean_up_to_one_file_name_are_refused_at_the_second() {
    let long = "x".repeat(300);
    let batch = crate::common::Batch::new(&rows_named("{id}-{index}"));
    let csv = format!(
        "pid,subject\na/b,cat\na_b,cat\n.hidden,owl\n_hidden,owl\ntrail.,hen\ntrail,hen\n{long}1,cow\n{long}2,cow\nCase,bee\ncase,bee\nfine,ant\n"
    );
    batch.write("p.csv", csv);
    let done = batch.offline("validate").status(2).run();
    let expected = [
        (
            3,
            "row 2: id `a_b` names the same files as row 1 (id `a/b`)",
        ),
        (
            5,
            "row 4: id `_hidden` names the same files as row 3 (id `.hidden`)",
        ),
        (
            7,
            "row 6: id `trail` names the same files as row 5 (id `trail.`)",
        ),
        (9, "row 8: id `xxxxxxxx"),
        (
            11,
            "row 10: id `case` names the same files as row 9 (id `Case`)",
        ),
    ];
    for (line, message) in expected {
        let place = format!("p.csv:{line}:1: {message}");
        assert!(
            done.stderr.contains(&place),
            "lacks {place:?}:\n{}",
            done.stderr
        );
    }
    assert_eq!(
        done.stderr.matches("names the same files as").count(),
        5,
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("`case-0`"),
        "the name is shown: {}",
        done.stderr
    );
    // `plan` and `run` compile the same way: nothing is paid for.
    batch
        .offline("plan")
        .status(2)
        .stderr_contains("p.csv:3:1: row 2: id `a_b` names the same files")
        .run();
}

/// Job names clean up too: `{job}/…` puts two jobs in one folder.
#[test]
fn job_names_that_clean_up_to_one_folder_are_refused_at_the_second() {
    let batch = crate::common::Batch::new(
        "version: 1\nname: jobs\ndefaults: {models: [m]}\noutput: {filename: \"{job}/{id}-{index}\"}\njobs:\n  - name: a/b\n    prompt: '${subject}'\n    rows: {file: p.csv, id: pid}\n  - name: A_B\n    prompt: '${subject} too'\n    rows: {file: p.csv, id: pid}\n",
    );
    batch.write("p.csv", "pid,subject\nx,cat\ny,owl\n");
    batch
        .offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:9:11: job `A_B` names the same files as job `a/b`")
        .stderr_contains("`A_B/x-0`")
        .run();
    // Distinct names pass.
    let distinct = std::fs::read_to_string(&batch.manifest)
        .unwrap()
        .replace("A_B", "c");
    std::fs::write(&batch.manifest, distinct).unwrap();
    batch.offline("validate").run();
}

/// The check streams over the expansion, remembering a hash per name: a
/// table of 100,000 ids validates in seconds, and one collision at its end
/// is still found.
#[test]
fn the_name_check_streams_over_a_large_table() {
    let batch = crate::common::Batch::new(
        &rows_named("{id}-{index}").replace("defaults:", "run: {max_jobs: 1000000}\ndefaults:"),
    );
    let mut csv = String::from("pid,subject\n");
    for i in 0..100_000 {
        csv.push_str(&format!("r{i},cat\n"));
    }
    csv.push_str("R7,cat\n");
    batch.write("p.csv", csv);
    batch
        .offline("validate")
        .deadline(std::time::Duration::from_secs(60))
        .status(2)
        .stderr_contains(
            "p.csv:100002:1: row 100001: id `R7` names the same files as row 8 (id `r7`)",
        )
        .run();
}

/// CSV files written on Windows end their lines with CRLF: problems are on
/// the row's own line, not the one before.
#[test]
fn crlf_tables_report_problems_on_the_right_line() {
    let batch = crate::common::Batch::new(&ROWS_MANIFEST.replace("FILE", "p.csv"));
    batch.write(
        "p.csv",
        "pid,subject,steps\r\nr1,a cat,20\r\nr2,a dog,abc\r\nr3,an owl,9999\r\n",
    );
    batch
        .offline("validate")
        .status(2)
        .stderr_contains("p.csv:3:10: row 2, column `steps`: expected a whole number")
        .stderr_contains("p.csv:4:11: row 3, column `steps`: 9999 is out of range")
        .run();
}

/// A column named `id` is the row id without `{file, id: id}`.
#[test]
fn a_column_named_id_is_the_row_id_by_default() {
    let manifest = "version: 1\nname: k\ndefaults: {models: [m]}\noutput: {filename: \"{id}-{index}\"}\njobs:\n  - name: t\n    prompt: '${subject}'\n    rows: p.csv\n";
    let batch = crate::common::Batch::new(manifest);
    batch.write("p.csv", "id,subject\nr1,cat\nr2,owl\n");
    batch
        .offline("validate")
        .stdout_contains("ok (2 jobs")
        .run();
    let ids: Vec<_> = jobs_in(manifest, batch.dir.path())
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, [Some("r1".to_owned()), Some("r2".to_owned())]);
    // The same jobs, keys included, as naming the column.
    let named = manifest.replace("rows: p.csv", "rows: {file: p.csv, id: id}");
    let keys = |text: &str| -> Vec<String> {
        jobs_in(text, batch.dir.path())
            .into_iter()
            .map(|j| j.key.to_string())
            .collect()
    };
    assert_eq!(keys(manifest), keys(&named));
    // As an id, it must be set and unique.
    batch.write("p.csv", "id,subject\nr1,cat\nr1,owl\n");
    batch
        .offline("validate")
        .status(2)
        .stderr_contains("p.csv:3:1: row 2: id `r1` is already the id of row 1")
        .run();
}

// ------------------------------------------------------------------ alchemy

/// Jobs that inherit `defaults.alchemy` (short form), override it (long
/// form) or turn it off (`[]`, or an empty long form).
const ALCHEMY: &str = r#"version: 1
name: alchemy
defaults:
  models: [m]
  params: {width: 512, height: 512}
  alchemy: [caption, nsfw, RealESRGAN_x2plus]
jobs:
  - name: inherits
    prompt: "a {red|blue} fox"
  - name: long
    prompt: a teapot
    alchemy:
      forms: [interrogation, RealESRGAN_x2plus]
      slow_workers: false
  - name: off
    prompt: an owl
    alchemy: []
  - name: off_long
    prompt: a newt
    alchemy: {forms: [], slow_workers: false}
  - name: upscaled
    prompt: a crow
    params: {post_processing: [RealESRGAN_x2plus]}
"#;

fn form(name: &str) -> AlchemyForm {
    AlchemyForm::parse(name).unwrap()
}

#[test]
fn alchemy_short_and_long_forms_resolve_over_the_defaults() {
    let compiled = compile_in(ALCHEMY, Path::new(".")).unwrap();
    let by_name = |name: &str| {
        compiled
            .jobs
            .iter()
            .find(|j| &*j.name == name)
            .unwrap()
            .alchemy
            .clone()
    };
    let defaults = AlchemySpec {
        forms: vec![
            AlchemyForm::CAPTION,
            AlchemyForm::NSFW,
            form("RealESRGAN_x2plus"),
        ],
        slow_workers: true,
    };
    assert_eq!(by_name("inherits").as_deref(), Some(&defaults));
    assert_eq!(by_name("upscaled").as_deref(), Some(&defaults));
    assert_eq!(
        by_name("long").as_deref(),
        Some(&AlchemySpec {
            forms: vec![AlchemyForm::INTERROGATION, form("RealESRGAN_x2plus")],
            slow_workers: false,
        }),
        "a job's alchemy replaces the defaults' entirely"
    );
    assert_eq!(by_name("off"), None);
    assert_eq!(by_name("off_long"), None);
    assert!(compiled.uses_alchemy());
    assert_eq!(
        compiled.alchemy_columns(),
        ["caption", "nsfw", "tags", "alchemy_of", "alchemy_form"]
    );
    // The expanded jobs carry it too, and what it should cost per image.
    let jobs: Vec<Job> = compiled.jobs().collect();
    let alchemy_of = |name: &str| {
        jobs.iter()
            .filter(|j| &*j.name == name)
            .map(|j| (j.alchemy.as_deref().cloned(), j.alchemy_kudos()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        alchemy_of("inherits"),
        [
            (Some(defaults.clone()), 3 + 3 + 5),
            (Some(defaults.clone()), 11)
        ]
    );
    assert_eq!(
        alchemy_of("long")[0].1,
        4 + 4,
        "slow_workers false: 1 kudo less per form"
    );
    assert_eq!(alchemy_of("off"), [(None, 0)]);
    // Its own x2 upscaler makes a 1024×1024 image: 4 tiles to upscale again.
    assert_eq!(alchemy_of("upscaled")[0].1, 3 + 3 + (3 * 4 + 2));

    let none = compile_in(&one_job("a", ""), Path::new(".")).unwrap();
    assert!(!none.uses_alchemy());
    assert!(none.alchemy_columns().is_empty());
    assert!(none.jobs().all(|j| j.alchemy.is_none()));
}

/// Alchemy runs on images already saved: adding it to a manifest that ran
/// must not regenerate a single image, so no key and no fingerprint moves.
#[test]
fn alchemy_changes_no_job_key_and_not_the_expansion_fingerprint() {
    let without = ALCHEMY
        .lines()
        .filter(|l| !l.contains("alchemy:") && !l.contains("forms:") && !l.contains("slow_workers"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!without.contains("alchemy:") && without.contains("name: alchemy"));
    let compiled_with = compile_in(ALCHEMY, Path::new(".")).unwrap();
    let compiled_without = compile_in(&without, Path::new(".")).unwrap();
    assert!(!compiled_without.uses_alchemy());
    let keys = |compiled: &CompiledManifest| -> Vec<String> {
        compiled.jobs().map(|j| j.key.to_string()).collect()
    };
    assert_eq!(keys(&compiled_with).len(), 6);
    assert_eq!(keys(&compiled_with), keys(&compiled_without));
    assert_eq!(
        compiled_with.expansion_fingerprint(),
        compiled_without.expansion_fingerprint()
    );
}

#[test]
fn caption_settings_default_to_the_prompt_and_no_caption_files() {
    let plain = compile_in(&one_job("a", ""), Path::new(".")).unwrap();
    assert_eq!(plain.output.caption_from, CaptionFrom::Prompt);
    assert!(!plain.output.caption_files);
    let from_alchemy = ALCHEMY
        .replace(
            "jobs:",
            "output:\n  caption_files: true\n  metadata: {caption_from: alchemy}\njobs:",
        )
        .replace(
            "[interrogation, RealESRGAN_x2plus]",
            "[caption, interrogation]",
        )
        .replace("alchemy: []", "alchemy: [caption]")
        .replace(
            "{forms: [], slow_workers: false}",
            "{forms: [caption], slow_workers: false}",
        );
    let compiled = compile_in(&from_alchemy, Path::new(".")).unwrap();
    assert_eq!(compiled.output.caption_from, CaptionFrom::Alchemy);
    assert!(compiled.output.caption_files);
    assert_eq!(
        compiled.alchemy_columns(),
        [
            "caption",
            "nsfw",
            "tags",
            "alchemy_of",
            "alchemy_form",
            "prompt"
        ]
    );
}

/// The example manifest validates and plans through the binary.
#[test]
fn the_alchemy_example_plans() {
    crate::common::HordeBatch::new()
        .args(["plan", "manifests/alchemy.yaml"])
        .stdout_contains("teapots")
        .run();
    let compiled = compile_in(
        &std::fs::read_to_string("manifests/alchemy.yaml").unwrap(),
        Path::new("manifests"),
    )
    .unwrap();
    assert_eq!(compiled.output.caption_from, CaptionFrom::Alchemy);
    assert!(compiled.output.caption_files);
    assert!(compiled.jobs.iter().all(|j| j
        .alchemy
        .as_ref()
        .is_some_and(|a| a.contains(AlchemyForm::CAPTION))));
}
