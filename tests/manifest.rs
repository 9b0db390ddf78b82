//! The manifest language end to end: expansion counts, key stability, every
//! class of error with its message and position, and robustness against
//! arbitrary input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use horde_batch::manifest::{
    compile, CompileOptions, CompiledManifest, ManifestError, ManifestFile,
};
use proptest::prelude::*;

fn compile_text(text: &str) -> Result<CompiledManifest, ManifestError> {
    compile_in(text, Path::new("."))
}

fn compile_in(text: &str, base: &Path) -> Result<CompiledManifest, ManifestError> {
    let file = ManifestFile::parse(Path::new("test.yaml"), base.to_path_buf(), text.to_owned())?;
    compile(file, &CompileOptions::default())
}

/// job name → keys, in order.
fn keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let compiled = compile_text(text).expect("manifest is valid");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for job in compiled.jobs() {
        out.entry(job.name.to_string())
            .or_default()
            .push(job.key.to_string());
    }
    out
}

fn problems(text: &str) -> Vec<String> {
    match compile_text(text) {
        Ok(_) => panic!("expected the manifest to be refused"),
        Err(e) if e.problems().is_empty() => vec![e.to_string()],
        Err(e) => e
            .problems()
            .iter()
            .map(|p| match &p.help {
                Some(help) => format!("{p}\n  help: {help}"),
                None => p.to_string(),
            })
            .collect(),
    }
}

const BASE: &str = r#"
version: 1
name: t
defaults:
  models: [stable_diffusion]
  params: {width: 512, height: 768, steps: 20, cfg_scale: 7}
jobs:
  - name: cats
    prompt: "a {black|white|ginger} cat, {oil|watercolor}"
    negative: "blurry"
    images: 4
  - name: sweep
    prompt: "a ${thing} at dusk"
    matrix:
      thing: [lighthouse, castle]
      steps: "20-40 (+10)"
      cfg_scale: [5, 7.5]
    images: 2
"#;

#[test]
fn counts_are_the_product_of_the_axes() {
    let compiled = compile_text(BASE).unwrap();
    assert_eq!(compiled.total_jobs(), 3 * 2 + 2 * 3 * 2);
    assert_eq!(compiled.total_images(), 6 * 4 + 12 * 2);
    assert_eq!(compiled.jobs().count(), 18);
}

#[test]
fn expansion_is_deterministic_and_keys_are_unique() {
    let first: Vec<_> = compile_text(BASE)
        .unwrap()
        .jobs()
        .map(|j| (j.key, j.prompt))
        .collect();
    let second: Vec<_> = compile_text(BASE)
        .unwrap()
        .jobs()
        .map(|j| (j.key, j.prompt))
        .collect();
    assert_eq!(first, second);
    let unique: std::collections::HashSet<_> = first.iter().map(|(k, _)| *k).collect();
    assert_eq!(unique.len(), first.len());
    assert_eq!(first[0].1, "a black cat, oil");
    assert_eq!(
        first[1].1, "a black cat, watercolor",
        "the last axis varies fastest"
    );
}

#[test]
fn resolved_jobs_carry_params_and_the_wire_prompt() {
    let compiled = compile_text(BASE).unwrap();
    let jobs: Vec<_> = compiled.jobs().collect();
    let cat = &jobs[0];
    assert_eq!(cat.wire_prompt(), "a black cat, oil ### blurry");
    assert_eq!(cat.params["height"], 768);
    assert_eq!(
        cat.params["karras"], true,
        "built-in defaults are sent explicitly"
    );
    let sweep: Vec<_> = jobs.iter().filter(|j| &*j.name == "sweep").collect();
    assert_eq!(sweep[0].params["steps"], 20);
    assert_eq!(sweep[0].params["cfg_scale"], 5.0);
    assert_eq!(sweep[1].params["cfg_scale"], 7.5);
    assert_eq!(sweep[2].params["steps"], 30);
    assert_eq!(sweep[0].prompt, "a lighthouse at dusk");
    assert!(!sweep[0].params.contains_key("n"));
}

#[test]
fn keys_survive_reordering_and_reformatting() {
    let reordered = r#"
jobs:
  - images: 4
    negative: blurry
    prompt: "a   {black|white|ginger}   cat,
      {oil|watercolor}"
    name: cats
  - matrix: {cfg_scale: [5.0, 7.50], steps: [20, 30, 40], thing: [lighthouse, castle]}
    images: 2
    name: sweep
    prompt: 'a ${thing} at dusk'
defaults:
  params:
    cfg_scale: 7.0
    steps: 20
    height: 768
    width: 512
  models:
    - stable_diffusion
name: t
version: 1
"#;
    let base = keys(BASE);
    let other = keys(reordered);
    assert_eq!(base["cats"], other["cats"]);
    // Axis order sets enumeration order, not identity: the same set of keys.
    let mut a = base["sweep"].clone();
    let mut b = other["sweep"].clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn editing_one_job_changes_only_its_keys() {
    let edited = BASE.replace(
        "prompt: \"a ${thing} at dusk\"",
        "prompt: \"a ${thing} at dawn\"",
    );
    let base = keys(BASE);
    let after = keys(&edited);
    assert_eq!(base["cats"], after["cats"]);
    assert!(base["sweep"].iter().all(|k| !after["sweep"].contains(k)));

    let more_images = BASE.replace("images: 4", "images: 9");
    assert_eq!(
        keys(&more_images),
        base,
        "the image count is not part of a key"
    );

    let extra_option = BASE.replace("{black|white|ginger}", "{black|white|ginger|grey}");
    let after = keys(&extra_option);
    assert!(
        base["cats"].iter().all(|k| after["cats"].contains(k)),
        "adding an option keeps existing keys"
    );
    assert_eq!(after["cats"].len(), 8);
}

#[test]
fn duplicate_combinations_get_distinct_keys() {
    let text = BASE.replace("{black|white|ginger}", "{black|black}");
    let k = keys(&text);
    let unique: std::collections::HashSet<_> = k["cats"].iter().collect();
    assert_eq!(unique.len(), 4);
}

#[test]
fn wildcards_come_from_the_manifest_or_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("wildcards")).unwrap();
    std::fs::write(
        dir.path().join("wildcards/style.txt"),
        "# styles\noil\n\n  ink  \n",
    )
    .unwrap();
    let text = r#"
version: 1
name: w
defaults: {models: [m]}
wildcards: {animal: [cat, dog, owl]}
jobs:
  - name: a
    prompt: "__animal__ in __style__"
"#;
    let compiled = compile_in(text, dir.path()).unwrap();
    let prompts: Vec<_> = compiled.jobs().map(|j| j.prompt).collect();
    assert_eq!(
        prompts,
        [
            "cat in oil",
            "cat in ink",
            "dog in oil",
            "dog in ink",
            "owl in oil",
            "owl in ink"
        ]
    );
}

#[test]
fn wildcards_inside_variants_expand_option_by_option() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("wildcards/people")).unwrap();
    std::fs::write(
        dir.path().join("wildcards/people/artists.txt"),
        "Monet\nKlimt\n",
    )
    .unwrap();
    let text = r#"
version: 1
name: w
defaults: {models: [m]}
wildcards: {color: [red, blue]}
jobs:
  - name: a
    prompt: "a {__color__ ball|green cube|__color__ __color__ kite} by {__people/artists__|nobody}"
"#;
    let compiled = compile_in(text, dir.path()).unwrap();
    let prompts: Vec<_> = compiled.jobs().map(|j| j.prompt).collect();
    let shapes = [
        "red ball",
        "blue ball",
        "green cube",
        "red red kite",
        "red blue kite",
        "blue red kite",
        "blue blue kite",
    ];
    let expected: Vec<String> = shapes
        .iter()
        .flat_map(|s| ["Monet", "Klimt", "nobody"].map(|by| format!("a {s} by {by}")))
        .collect();
    assert_eq!(prompts, expected);
    assert_eq!(compiled.total_jobs(), 21);
    let keys: std::collections::HashSet<_> = compiled.jobs().map(|j| j.key).collect();
    assert_eq!(keys.len(), 21);

    // An undefined wildcard inside a variant is an error, not text.
    let text = text.replace("__people/artists__", "__people/painters__");
    let error = compile_in(&text, dir.path()).unwrap_err().to_string();
    assert!(
        error.contains("wildcard `__people/painters__` is not defined"),
        "{error}"
    );
}

fn prompts(text: &str) -> Vec<String> {
    compile_text(text)
        .expect("manifest is valid")
        .jobs()
        .map(|j| j.prompt)
        .collect()
}

fn one_job(prompt: &str) -> String {
    format!("version: 1\nname: c\ndefaults: {{models: [m]}}\nwildcards: {{c: [r, b]}}\njobs:\n  - name: a\n    prompt: '{prompt}'\n")
}

/// sd-dynamic-prompts' combinations `{N$$…}`, `{N-M$$…}`, `{N$$sep$$…}`:
/// every set of distinct options, in option order, like its combinatorial
/// generator (itertools.combinations, then the options' wildcard values).
#[test]
fn combinations_expand_like_sd_dynamic_prompts() {
    assert_eq!(
        prompts(&one_job("a {2$$x|y|z}")),
        ["a x, y", "a x, z", "a y, z"]
    );
    assert_eq!(
        prompts(&one_job("{1-2$$x|y|z}")),
        ["x", "y", "z", "x, y", "x, z", "y, z"]
    );
    assert_eq!(
        prompts(&one_job("{2-$$x|y|z}")),
        ["x, y", "x, z", "y, z", "x, y, z"]
    );
    assert_eq!(prompts(&one_job("{-1$$x|y}")), ["x", "y"]);
    assert_eq!(
        prompts(&one_job("{2$$ and $$x|y|z} cat")),
        ["x and y cat", "x and z cat", "y and z cat"]
    );
    // Counts above the number of options stop at all of them.
    assert_eq!(prompts(&one_job("{2-9$$x|y}")), ["x, y"]);
    // A wildcard option is one slot; its values multiply out.
    assert_eq!(prompts(&one_job("{2$$__c__|x}")), ["r, x", "b, x"]);
    // A text repeated within one pick appears once; repeated results once.
    assert_eq!(
        prompts(&one_job("{2$$__c__|__c__}")),
        ["r", "r, b", "b, r", "b"]
    );
    // Combinations are one axis among the others.
    let compiled = compile_text(&one_job("{2$$x|y|z|w} {p|q} __c__")).unwrap();
    assert_eq!(compiled.total_jobs(), 6 * 2 * 2);
    let first: Vec<_> = compiled.jobs().take(3).map(|j| j.prompt).collect();
    assert_eq!(first, ["x, y p r", "x, y p b", "x, y q r"]);
}

/// Weighted variants `{0.5::a|2::b}`: every option once in combinatorial
/// mode (weights change no prompt and no key); in random mode (`sample:`)
/// options are drawn by weight, reproducibly from `sample_seed`.
#[test]
fn weighted_variants_steer_only_random_mode() {
    assert_eq!(prompts(&one_job("{0.5::x|2::y|z}")), ["x", "y", "z"]);
    assert_eq!(keys(&one_job("{0.5::x|2::y|z}")), keys(&one_job("{x|y|z}")));
    // In a combination, weights are ignored.
    assert_eq!(prompts(&one_job("{2$$3::x|y|z}")), ["x, y", "x, z", "y, z"]);
    // A weighted option with a wildcard shares its weight among the values.
    assert_eq!(prompts(&one_job("{3::__c__|x}")), ["r", "b", "x"]);

    let numbers: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    let sampled = |weights: &str, seed: u64| -> Vec<String> {
        let text = format!(
            "version: 1\nname: s\ndefaults: {{models: [m]}}\nwildcards: {{n: [{}]}}\njobs:\n  - name: a\n    prompt: '{weights} __n__'\n    sample: 100\n    sample_seed: {seed}\n",
            numbers.join(", ")
        );
        prompts(&text)
    };
    let heavy = sampled("{99::heavy|1::light}", 7);
    assert_eq!(heavy.len(), 100);
    let with_heavy = heavy.iter().filter(|p| p.starts_with("heavy")).count();
    assert!(
        with_heavy >= 90,
        "{with_heavy} of 100 picked the 99:1 option"
    );
    let distinct: std::collections::HashSet<_> = heavy.iter().collect();
    assert_eq!(distinct.len(), 100);
    assert_eq!(
        heavy,
        sampled("{99::heavy|1::light}", 7),
        "same seed, same pick"
    );
    assert_ne!(heavy, sampled("{99::heavy|1::light}", 8));
    // Weight 0: never drawn while other combinations remain.
    assert!(sampled("{0::never|1::always}", 3)
        .iter()
        .all(|p| p.starts_with("always")));
    // Even weights keep the uniform pick (and its results) unchanged.
    assert_eq!(sampled("{2::a|2::b}", 5), sampled("{a|b}", 5));
}

/// Wildcard values are inserted as text, so syntax in a wildcard file is an
/// error that names the file and line, not words sent to the Horde.
#[test]
fn syntax_in_wildcard_files_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("wildcards")).unwrap();
    let file = dir.path().join("wildcards/style.txt");
    std::fs::write(&file, "# styles\noil\n\n{2$$ink|chalk}\n").unwrap();
    let text = "version: 1\nname: w\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'x __style__'}\n";
    let error = compile_in(text, dir.path()).unwrap_err();
    let problem = &error.problems()[0];
    assert_eq!((problem.line, problem.column), (5, 26));
    let place = format!(
        "{}:4",
        dir.path().join("wildcards").join("style.txt").display()
    );
    assert!(problem.message.contains(&place), "{}", problem.message);
    assert!(problem
        .message
        .contains("not expanded inside wildcard values"));
    // The same values without the syntax compile.
    std::fs::write(&file, "oil\nink\n").unwrap();
    assert_eq!(compile_in(text, dir.path()).unwrap().total_jobs(), 2);
}

/// sd-dynamic-prompts and A1111 syntax horde-batch does not implement is
/// refused where it is written (line and column of the offending text), in
/// the prompt and in the negative prompt, in every YAML scalar style.
#[test]
fn unsupported_syntax_is_refused_at_its_position() {
    let head = "version: 1\nname: x\ndefaults: {models: [m]}\nwildcards: {c: [red]}\njobs:\n";
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "  - {name: a, prompt: 'a {b|2$$c|d}'}\n",
            (6, 30),
            "`$$` inside a variant",
        ),
        (
            "  - {name: a, prompt: \"a {b|c 2::d}\"}\n",
            (6, 32),
            "`::` inside a variant option",
        ),
        (
            "  - {name: a, prompt: '{cat|<lora:detail:0.8>}'}\n",
            (6, 29),
            "`<lora:…>` inside a variant",
        ),
        (
            "  - {name: a, prompt: 'cat <lora:detail:9>'}\n",
            (6, 28),
            "LoRA tag `detail`: `model` must be a number from -5 to 5",
        ),
        (
            "  - {name: a, prompt: cat, negative: 'ugly <lyco:x:1>'}\n",
            (6, 44),
            "a LoRA tag in the negative prompt",
        ),
        (
            "  - {name: a, prompt: 'x <hypernet:h:1>'}\n",
            (6, 26),
            "`<hypernet:…>`",
        ),
        (
            "  - {name: a, prompt: 'by __people/*__'}\n",
            (6, 27),
            "the wildcard glob `__people/*__` matches no wildcard",
        ),
        (
            "  - {name: a, prompt: '{x|__d*__}'}\n",
            (6, 27),
            "the wildcard glob `__d*__` matches no wildcard",
        ),
        (
            "  - {name: a, prompt: 'a __x.y__'}\n",
            (6, 26),
            "not a valid wildcard name",
        ),
        (
            "  - {name: a, prompt: 'a {b|c'}\n",
            (6, 26),
            "`{` without a closing `}`",
        ),
        (
            "  - {name: a, prompt: 'a b} c'}\n",
            (6, 27),
            "`}` without a matching `{`",
        ),
        (
            "  - {name: a, prompt: 'a {b|{c} d'}\n",
            (6, 26),
            "`{` without a closing `}`",
        ),
        (
            "  - name: a\n    prompt: |\n      first line\n      then {b|2$$c}\n",
            (9, 16),
            "`$$` inside a variant",
        ),
        (
            "  - name: a\n    prompt: >\n      first line\n      then <hypernet:x>\n",
            (9, 12),
            "`<hypernet:…>`",
        ),
        (
            "  - name: a\n    prompt: first\n      then {b 1::c}\n",
            (8, 16),
            "`::` inside a variant option",
        ),
    ];
    for (job, (line, column), message) in cases {
        let problems = problems(&format!("{head}{job}"));
        assert_eq!(problems.len(), 1, "{job}: {problems:?}");
        let expected = format!("test.yaml:{line}:{column}: ");
        assert!(
            problems[0].starts_with(&expected) && problems[0].contains(message),
            "{job}: expected {expected}…{message}…, got {}",
            problems[0]
        );
    }
}

/// A1111 LoRA tags in the prompt become `params.loras` (after the LoRAs the
/// parameters name) and leave the prompt; the job key is the key of the same
/// job written with `params.loras`.
#[test]
fn lora_tags_become_the_loras_parameter() {
    let tagged = r#"
version: 1
name: l
defaults: {models: [m], params: {loras: [{name: base, model: 1}]}}
jobs:
  - name: a
    prompt: "a {cat|dog}, <lora:detail:0.8> detailed <LyCo:style:0.5:1.5>"
"#;
    let explicit = r#"
version: 1
name: l
defaults: {models: [m]}
jobs:
  - name: a
    prompt: "a {cat|dog}, detailed"
    params:
      loras:
        - {name: base, model: 1}
        - {name: detail, model: 0.8, clip: 0.8}
        - {name: style, model: 1.5, clip: 0.5}
"#;
    let compiled = compile_text(tagged).unwrap();
    let jobs: Vec<_> = compiled.jobs().collect();
    assert_eq!(
        jobs.iter().map(|j| j.prompt.as_str()).collect::<Vec<_>>(),
        ["a cat, detailed", "a dog, detailed"]
    );
    assert_eq!(
        jobs[0].params["loras"],
        serde_json::json!([
            {"name": "base", "model": 1.0},
            {"name": "detail", "model": 0.8, "clip": 0.8},
            {"name": "style", "model": 1.5, "clip": 0.5},
        ])
    );
    assert_eq!(keys(tagged), keys(explicit));
    // The LoRAs are part of the key: another weight, other keys.
    assert_ne!(
        keys(tagged),
        keys(&tagged.replace("detail:0.8", "detail:0.7"))
    );
}

/// The escapes send text that looks like template syntax as it is.
#[test]
fn escapes_send_template_syntax_as_text() {
    let text = r#"
version: 1
name: e
defaults: {models: [m]}
jobs:
  - name: a
    prompt: 'a \<lora:x:1> \{2\$\$b\} {0.5\:\:c|\<lyco:d>} \_\_p/*\_\_ $\{v\}'
    negative: 'x\:\:y \}'
"#;
    let prompts: Vec<_> = compile_text(text)
        .unwrap()
        .jobs()
        .map(|j| j.wire_prompt())
        .collect();
    assert_eq!(
        prompts,
        [
            "a <lora:x:1> {2$$b} 0.5::c __p/*__ ${v} ### x::y }",
            "a <lora:x:1> {2$$b} <lyco:d> __p/*__ ${v} ### x::y }",
        ]
    );
}

#[test]
fn sampling_is_seeded_distinct_and_capped() {
    let text = r#"
version: 1
name: s
defaults: {models: [m]}
jobs:
  - name: a
    prompt: "${a} ${b} ${c}"
    matrix: {a: "1-40", b: "1-40", c: "1-40"}
    sample: 500
    sample_seed: 7
"#;
    let first: Vec<_> = compile_text(text).unwrap().jobs().map(|j| j.key).collect();
    let again: Vec<_> = compile_text(text).unwrap().jobs().map(|j| j.key).collect();
    assert_eq!(first.len(), 500);
    assert_eq!(first, again);
    let other_seed: Vec<_> = compile_text(&text.replace("sample_seed: 7", "sample_seed: 8"))
        .unwrap()
        .jobs()
        .map(|j| j.key)
        .collect();
    assert_ne!(first, other_seed);
    let all = compile_text(&text.replace("sample: 500", "sample: 999999")).unwrap();
    assert_eq!(
        all.total_jobs(),
        64_000,
        "a sample larger than the space takes it all"
    );
}

#[test]
fn explicit_and_derived_seeds() {
    let text = r#"
version: 1
name: s
defaults: {models: [m]}
jobs:
  - name: listed
    prompt: "x"
    seeds: "100-102"
  - name: derived
    prompt: "y"
    seeds: derived
    images: 3
"#;
    let jobs: Vec<_> = compile_text(text).unwrap().jobs().collect();
    assert_eq!(jobs[0].images, 3);
    assert_eq!(jobs[0].seed_for(2).as_deref(), Some("102"));
    let derived: Vec<_> = (0..3).map(|i| jobs[1].seed_for(i).unwrap()).collect();
    assert_eq!(
        derived,
        (0..3)
            .map(|i| jobs[1].seed_for(i).unwrap())
            .collect::<Vec<_>>()
    );
    assert_ne!(derived[0], derived[1]);
}

#[test]
fn expansion_limit_is_enforced_with_the_count() {
    let text = r#"
version: 1
name: big
defaults: {models: [m]}
jobs:
  - name: a
    prompt: "${a} ${b}"
    matrix: {a: "1-1000", b: "1-1000"}
"#;
    let message = problems(text).join("\n");
    assert!(
        message.contains("expands to 1000000 jobs, more than the limit of 100000"),
        "{message}"
    );
    let file =
        ManifestFile::parse(Path::new("t.yaml"), PathBuf::from("."), text.to_owned()).unwrap();
    let compiled = compile(
        file,
        &CompileOptions {
            max_jobs: Some(1_000_000),
        },
    )
    .unwrap();
    assert_eq!(compiled.total_jobs(), 1_000_000);
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut text = String::from(
        "version: 1\nname: bomb\nwildcards:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n",
    );
    let mut prev = "a".to_owned();
    for i in 0..9 {
        let name = format!("l{i}");
        text.push_str(&format!("  {name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
        prev = name;
    }
    text.push_str("jobs: []\n");
    let error = compile_text(&text).unwrap_err().to_string();
    assert!(error.contains("test.yaml"), "{error}");
}

/// Every class of error, with its message and position.
#[test]
fn error_messages() {
    let cases: &[(&str, &str)] = &[
        ("syntax", "version: 1\nname: x\njobs: [\n"),
        ("unknown top-level key", "version: 1\nname: x\njbos: []\n"),
        ("unknown job key", "version: 1\nname: x\njobs:\n  - name: a\n    promt: x\n"),
        ("wrong type", "version: 1\nname: x\njobs:\n  - name: a\n    prompt: x\n    images: many\n"),
        ("missing field", "version: 1\nname: x\njobs:\n  - name: a\n"),
        ("version", "version: 2\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: x}\n"),
        ("no jobs", "version: 1\nname: x\njobs: []\n"),
        ("no model", "version: 1\nname: x\njobs:\n  - {name: a, prompt: x}\n"),
        ("duplicate job", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: x}\n  - {name: a, prompt: y}\n"),
        ("unknown param", "version: 1\nname: x\ndefaults: {models: [m], params: {stesp: 20}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("n param", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: x, params: {n: 4}}\n"),
        ("seed param", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: x, params: {seed: 4}}\n"),
        ("width not multiple of 64", "version: 1\nname: x\ndefaults: {models: [m], params: {width: 500}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("steps out of range", "version: 1\nname: x\ndefaults: {models: [m], params: {steps: 501}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("cfg decimals", "version: 1\nname: x\ndefaults: {models: [m], params: {cfg_scale: 7.125}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("unknown sampler", "version: 1\nname: x\ndefaults: {models: [m], params: {sampler_name: k_eular}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("too many loras", "version: 1\nname: x\ndefaults: {models: [m], params: {loras: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, {name: f}]}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("max_n", "version: 1\nname: x\ndefaults: {models: [m]}\nrun: {max_n: 21}\njobs:\n  - {name: a, prompt: x}\n"),
        ("unbalanced variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {b|c'}\n"),
        ("missing wildcard", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a __nothere__'}\n"),
        ("undefined variable", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a ${color}'}\n"),
        ("unknown axis", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: 'a ${colour}'\n    matrix: {colour: [red], stpes: [1]}\n"),
        ("bad range", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: x\n    matrix: {steps: '40-20 (+10)'}\n"),
        ("axis value out of range", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: x\n    matrix: {height: [512, 4000]}\n"),
        ("seeds vs images", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: x, seeds: [1, 2], images: 3}\n"),
        ("bad seeds", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: x, seeds: sometimes}\n"),
        ("separator in prompt", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a ### b'}\n"),
        ("empty prompt", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: '{|}'}\n"),
        ("filename without key", "version: 1\nname: x\ndefaults: {models: [m]}\noutput: {filename: '{job}-{index}'}\njobs:\n  - {name: a, prompt: x}\n"),
        ("webhook", "version: 1\nname: x\ndefaults: {models: [m], request: {webhook: 'http://example.org/hook'}}\njobs:\n  - {name: a, prompt: x}\n"),
        ("combination larger than its variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {4$$b|c|d}'}\n"),
        ("combination bounds reversed", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {3-1$$b|c|d}'}\n"),
        ("dollars inside a variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {b|2$$c|d}'}\n"),
        ("colons inside a variant option", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {0.5::b|c 2::d}'}\n"),
        ("every weight zero", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {0::b|0.0::c}'}\n"),
        ("lora tag in a variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a cat {<lora:detail_tweaker:0.8>|}'}\n"),
        ("lora tag in the negative", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a cat', negative: 'ugly <lora:bad:1>'}\n"),
        ("lora tag weight", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a cat <lora:detail:7>'}\n"),
        ("lora tag twice", "version: 1\nname: x\ndefaults: {models: [m], params: {loras: [{name: detail}]}}\njobs:\n  - {name: a, prompt: 'a cat <lora:detail:0.5>'}\n"),
        ("lora tags over the limit", "version: 1\nname: x\ndefaults: {models: [m], params: {loras: [{name: a}, {name: b}, {name: c}, {name: d}]}}\njobs:\n  - {name: a, prompt: 'a cat <lora:e> <lora:f>'}\n"),
        ("lora tag and loras axis", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: 'a cat <lora:e>'\n    matrix: {loras: [[{name: f}]]}\n"),
        ("lora tag syntax", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a cat <lora:e:dyn=4>'}\n"),
        ("hypernet tag", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a cat', negative: '<hypernet:h:1>'}\n"),
        ("wildcard glob", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'by __people/*__'}\n"),
        ("bad wildcard name", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'by __../x__'}\n"),
        ("missing wildcard in variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {__nothere__|green}'}\n"),
        ("stray closing brace", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a b} c'}\n"),
        ("unclosed variant in variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - {name: a, prompt: 'a {b|{c|d} e'}\n"),
        ("variable in variant", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: 'a {${v}|b}'\n    matrix: {v: [x]}\n"),
        ("variant in a wildcard value", "version: 1\nname: x\ndefaults: {models: [m]}\nwildcards: {c: [red, '{dark|light} blue']}\njobs:\n  - {name: a, prompt: 'a __c__ ball'}\n"),
        ("lora tag in a matrix value", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: 'a ${style} ball'\n    matrix: {style: [plain, '<lora:glossy:0.7>']}\n"),
        ("prompt too long", "version: 1\nname: x\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: '__w__'\nwildcards: {w: [LONG]}\n"),
    ];
    let long = "word ".repeat(7600);
    let mut rendered = String::new();
    for (name, text) in cases {
        let text = text.replace("LONG", &long);
        rendered.push_str(&format!("## {name}\n{}\n\n", problems(&text).join("\n")));
    }
    insta::assert_snapshot!(rendered);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The number of jobs is the product of every axis, whatever the axes.
    #[test]
    fn job_count_is_the_product_of_axis_sizes(
        variants in proptest::collection::vec(1usize..4, 0..3),
        matrix in proptest::collection::vec(1usize..4, 0..3),
        images in 1u32..5,
    ) {
        let mut prompt = String::from("p");
        for (i, size) in variants.iter().enumerate() {
            let options: Vec<String> = (0..*size).map(|o| format!("v{i}o{o}")).collect();
            prompt.push_str(&format!(" {{{}}}", options.join("|")));
        }
        let mut axes = String::new();
        for (i, size) in matrix.iter().enumerate() {
            prompt.push_str(&format!(" ${{m{i}}}"));
            let values: Vec<String> = (0..*size).map(|v| format!("x{v}")).collect();
            axes.push_str(&format!("      m{i}: [{}]\n", values.join(", ")));
        }
        let text = format!(
            "version: 1\nname: p\ndefaults: {{models: [m]}}\njobs:\n  - name: a\n    prompt: \"{prompt}\"\n    images: {images}\n{}",
            if axes.is_empty() { String::new() } else { format!("    matrix:\n{axes}") }
        );
        let compiled = compile_text(&text).unwrap();
        let expected: usize = variants.iter().chain(&matrix).product();
        prop_assert_eq!(compiled.jobs().count(), expected);
        prop_assert_eq!(compiled.total_images(), expected as u64 * u64::from(images));
        let keys: std::collections::HashSet<_> = compiled.jobs().map(|j| j.key).collect();
        prop_assert_eq!(keys.len(), expected);
    }

    /// `{k$$…}` over n options gives C(n, k) jobs, and editing another job
    /// changes none of its keys.
    #[test]
    fn combination_counts_are_binomial_and_keys_stable(
        n in 1usize..7,
        k in 1usize..7,
        other in "[a-z]{1,8}",
    ) {
        let k = k.min(n);
        let options: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
        let text = |other: &str| format!(
            "version: 1\nname: p\ndefaults: {{models: [m]}}\njobs:\n  - name: a\n    prompt: 'x {{{k}$${}}}'\n  - name: b\n    prompt: '{other} {{y|z}}'\n",
            options.join("|")
        );
        let compiled = compile_text(&text(&other)).unwrap();
        let binomial = (0..k).fold(1usize, |acc, i| acc * (n - i) / (i + 1));
        prop_assert_eq!(compiled.jobs.first().map(|j| j.combinations), Some(binomial as u64));
        let before = keys(&text(&other));
        let after = keys(&text(&format!("{other}x")));
        prop_assert_eq!(&before["a"], &after["a"]);
        prop_assert_ne!(&before["b"], &after["b"]);
    }

    /// Arbitrary bytes never panic: either a manifest or a located error.
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        check_no_panic(&text);
    }

    /// Valid manifests with one byte changed never panic either.
    #[test]
    fn mutated_manifests_never_panic(position in 0usize..400, byte in proptest::num::u8::ANY) {
        let mut bytes = BASE.as_bytes().to_vec();
        let at = position % bytes.len();
        bytes[at] = byte;
        check_no_panic(&String::from_utf8_lossy(&bytes));
    }
}

fn check_no_panic(text: &str) {
    if let Err(error) = compile_text(text) {
        for problem in error.problems() {
            assert!(problem.line >= 1 && problem.column >= 1);
            assert!(!problem.message.is_empty());
            // Rendering with the source snippet must not panic either.
            let _ = format!("{:?}", miette::Report::new(problem.clone()));
        }
    }
}

// ------------------------------------------- hostile input, end to end

/// `n` variants nested in one another: `{a|{a|…b…}}`.
fn nested(n: usize) -> String {
    format!("{}b{}", "{a|".repeat(n), "}".repeat(n))
}

const DEEP_HEAD: &str = "version: 1\nname: deep\ndefaults: {models: [m]}\njobs:\n  - name: a\n";

/// 20,000 nested variants used to overflow the stack (exit 134); now the
/// variant past the 64th level is refused where it opens, wherever the
/// template is written.
#[test]
fn deeply_nested_variants_are_refused_at_the_level_past_the_limit() {
    use crate::common::Batch;
    // In a prompt: the 65th `{` is at byte 2 + 64 × 3 of the value, which
    // starts at column 14.
    let prompt = Batch::new(&format!("{DEEP_HEAD}    prompt: 'x {}'\n", nested(20_000)));
    for command in ["validate", "plan"] {
        prompt
            .offline(command)
            .status(2)
            .stderr_contains("batch.yaml:6:208: variants are nested more than 64 deep")
            .run();
    }
    // 64 levels are fine.
    Batch::new(&format!("{DEEP_HEAD}    prompt: 'x {}'\n", nested(64)))
        .offline("validate")
        .run();

    // In a wildcard value, inline or in a file.
    let inline = Batch::new(&format!(
        "{DEEP_HEAD}    prompt: 'x __w__'\nwildcards: {{w: [plain, '{}']}}\n",
        nested(20_000)
    ));
    inline
        .offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:6:16: wildcard `__w__`: the value `{a|{a|")
        .stderr_contains(
            "(`wildcards.w[1]`) holds template syntax (variants are nested more than 64 deep)",
        )
        .run();
    let file = Batch::new(&format!("{DEEP_HEAD}    prompt: 'x __w__'\n"));
    file.write("wildcards/w.txt", format!("plain\n{}\n", nested(20_000)));
    file.offline("validate")
        .status(2)
        .stderr_contains("w.txt:2) holds template syntax (variants are nested more than 64 deep)")
        .run();

    // In a rows cell: at the cell.
    let rows = Batch::new(&format!(
        "{DEEP_HEAD}    prompt: 'x ${{subject}}'\n    rows: p.csv\n"
    ));
    rows.write("p.csv", format!("pid,subject\nr1,{}\n", nested(20_000)));
    rows.offline("validate")
        .status(2)
        .stderr_contains("p.csv:2:4: row 1, column `subject`: `{a|{a|")
        .stderr_contains("holds template syntax (variants are nested more than 64 deep)")
        .run();
}

const WILDCARD_MANIFEST: &str = "version: 1\nname: w\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: 'a __colour__ cat'\n";

/// A wildcard file that is a FIFO used to hang `validate`; one linked to
/// `/dev/zero` grew without bound. Only regular files are read (a symlink
/// to one is fine), up to 16 MiB, and the problem is at the wildcard.
#[test]
fn wildcard_files_are_regular_files_of_bounded_size() {
    use crate::common::Batch;
    let fifo = Batch::new(WILDCARD_MANIFEST);
    fifo.fifo("wildcards/colour.txt");
    fifo.offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:6:16: cannot read wildcard file")
        .stderr_contains("is not a regular file (a FIFO)")
        .run();

    let zero = Batch::new(WILDCARD_MANIFEST);
    std::fs::create_dir_all(zero.dir.path().join("wildcards")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero.dir.path().join("wildcards/colour.txt")).unwrap();
    zero.offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:6:16: cannot read wildcard file")
        .stderr_contains("is not a regular file (a character device)")
        .run();

    let huge = Batch::new(WILDCARD_MANIFEST);
    huge.write("wildcards/colour.txt", "red\n".repeat(4 * 1024 * 1024 + 1));
    huge.offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:6:16: cannot read wildcard file")
        .stderr_contains("is larger than 16 MiB")
        .run();

    let linked = Batch::new(WILDCARD_MANIFEST);
    linked.write("colours.txt", "red\nblue\n");
    std::fs::create_dir_all(linked.dir.path().join("wildcards")).unwrap();
    std::os::unix::fs::symlink(
        "../colours.txt",
        linked.dir.path().join("wildcards/colour.txt"),
    )
    .unwrap();
    linked
        .offline("validate")
        .stdout_contains("ok (2 jobs")
        .run();
}

/// A rows file that is a FIFO used to hang `validate` too.
#[test]
fn a_rows_file_must_be_a_regular_file() {
    let batch = crate::common::Batch::new(
        "version: 1\nname: r\ndefaults: {models: [m]}\njobs:\n  - name: a\n    prompt: '${subject}'\n    rows: p.csv\n",
    );
    batch.fifo("p.csv");
    batch
        .offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:7:11: cannot read rows file")
        .stderr_contains("is not a regular file (a FIFO)")
        .run();
}

// ------------------------------------------------------------------ alchemy

/// A manifest with `defaults.alchemy` and one job `a`, whose own keys are `job`.
fn alchemy_manifest(defaults: &str, output: &str, job: &str) -> String {
    format!(
        "version: 1\nname: al\ndefaults:\n  models: [m]\n  alchemy: {defaults}\n{output}jobs:\n  - name: a\n    prompt: a fox\n{job}"
    )
}

#[test]
fn alchemy_in_both_forms_validates() {
    let batch = crate::common::Batch::new(&alchemy_manifest(
        "[caption, nsfw, RealESRGAN_x2plus, GFPGANv1.3, 4xNomos2_hq_dat2]",
        "",
        "  - name: b\n    prompt: an owl\n    alchemy:\n      forms: [interrogation, aesthetic]\n      slow_workers: false\n  - name: c\n    prompt: a newt\n    alchemy: []\n",
    ));
    batch
        .offline("validate")
        .stdout_contains("ok (3 jobs, 3 images)")
        .run();
}

#[test]
fn an_unknown_alchemy_form_is_refused_at_its_place_with_a_suggestion() {
    let text = alchemy_manifest(
        "[caption, Nsfw]",
        "",
        "    alchemy:\n      forms: [interrogation, realesrgan_x2plus, RealESRGAN_x2]\n  - name: b\n    prompt: x\n    alchemy: [zebra]\n",
    );
    assert_eq!(
        problems(&text),
        [
            "test.yaml:5:22: unknown alchemy form `Nsfw`\n  help: did you mean `nsfw`?",
            "test.yaml:10:30: unknown alchemy form `realesrgan_x2plus`\n  help: did you mean `RealESRGAN_x2plus`?",
            "test.yaml:10:49: unknown alchemy form `RealESRGAN_x2`\n  help: did you mean `RealESRGAN_x2plus`?",
            "test.yaml:13:15: unknown alchemy form `zebra`\n  help: the Horde's alchemy forms are caption, interrogation, nsfw, vectorize, palette, describe, aesthetic, GFPGAN, RealESRGAN_x4plus, RealESRGAN_x2plus, RealESRGAN_x4plus_anime_6B, NMKD_Siax, 4x_AnimeSharp, CodeFormers, strip_background, 4xNomos8kSC, 4xLSDIRplus, 4xNomosWebPhoto_RealPLKSR, 4xNomos2_realplksr_dysample, 4xNomos2_hq_dat2, 2xModernSpanimationV1, GFPGANv1.3, RestoreFormer",
        ]
    );
    // Through the binary, as a user sees it.
    crate::common::Batch::new(&text)
        .offline("validate")
        .status(2)
        .stderr_contains("batch.yaml:5:22: unknown alchemy form `Nsfw`")
        .stderr_contains("help: did you mean `nsfw`?")
        .run();
}

#[test]
fn a_duplicate_alchemy_form_is_refused_at_the_duplicate() {
    let text = alchemy_manifest(
        "[caption, nsfw, caption]",
        "",
        "    alchemy: {forms: [GFPGAN, GFPGAN]}\n",
    );
    assert_eq!(
        problems(&text),
        [
            "test.yaml:5:28: alchemy form `caption` is listed twice\n  help: list each form once: the Horde charges each form, duplicates included",
            "test.yaml:9:31: alchemy form `GFPGAN` is listed twice\n  help: list each form once: the Horde charges each form, duplicates included",
        ]
    );
}

#[test]
fn a_malformed_alchemy_value_is_refused_by_serde_with_its_place() {
    let typo = problems(&alchemy_manifest(
        "[caption]",
        "",
        "    alchemy: {form: [caption]}\n",
    ));
    assert_eq!(typo.len(), 1);
    assert!(
        typo[0].starts_with("test.yaml:9:15: jobs[0].alchemy: unknown field `form`")
            && typo[0].contains("Did you mean `forms`?"),
        "{typo:?}"
    );
    let scalar = problems(&alchemy_manifest("caption", "", ""));
    assert!(
        scalar[0]
            .contains("expected a list of alchemy forms, or `{forms: [...], slow_workers: bool}`"),
        "{scalar:?}"
    );
}

#[test]
fn captions_from_alchemy_need_the_caption_form_in_every_job() {
    let from_alchemy = "output:\n  metadata: {caption_from: alchemy}\n";
    // Inherited defaults without `caption`: reported once, at the defaults.
    assert_eq!(
        problems(&alchemy_manifest("[nsfw]", from_alchemy, "  - name: b\n    prompt: x\n")),
        ["test.yaml:5:12: `defaults.alchemy` does not run the `caption` form (jobs `a`, `b` use it), and captions come from alchemy (`output.metadata.caption_from: alchemy`)\n  help: add `caption` to the default alchemy forms"]
    );
    // A job's own alchemy without `caption`, or turned off: at the job's `alchemy`.
    assert_eq!(
        problems(&alchemy_manifest(
            "[caption]",
            from_alchemy,
            "    alchemy: {forms: [nsfw]}\n  - name: b\n    prompt: x\n    alchemy: []\n"
        )),
        [
            "test.yaml:11:14: job `a` does not run the `caption` form, and captions come from alchemy (`output.metadata.caption_from: alchemy`)\n  help: add `caption` to its alchemy forms",
            "test.yaml:14:14: job `b` turns alchemy off, and captions come from alchemy (`output.metadata.caption_from: alchemy`)\n  help: give it the `caption` form: `alchemy: [caption]`",
        ]
    );
    // No alchemy anywhere: once, at `caption_from`.
    let none = "version: 1\nname: al\ndefaults: {models: [m]}\noutput:\n  metadata: {caption_from: alchemy}\njobs:\n  - name: a\n    prompt: x\n";
    assert_eq!(
        problems(none),
        ["test.yaml:5:28: captions come from alchemy (`output.metadata.caption_from: alchemy`), but no job runs alchemy\n  help: add `alchemy: [caption]` under `defaults:`, or use `caption_from: prompt`"]
    );
    // With `caption` everywhere it validates.
    compile_text(&alchemy_manifest("[caption]", from_alchemy, "")).unwrap();
}

#[test]
fn alchemy_result_columns_are_reserved_when_alchemy_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.csv"), "nsfw,subject\nyes,a cat\n").unwrap();
    let labels = "    prompt: 'a ${tags} __aesthetic__ ${subject} ${nsfw}'\n    matrix: {tags: [a, b]}\n    rows: p.csv\nwildcards: {aesthetic: [x]}\n";
    let text =
        alchemy_manifest("[caption, aesthetic]", "", labels).replace("    prompt: a fox\n", "");
    let found: Vec<String> = match compile_in(&text, dir.path()) {
        Ok(_) => panic!("the labels clash with alchemy columns"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    };
    assert_eq!(
        found,
        [
            "test.yaml:10:11: the rows column `nsfw` would be a metadata.jsonl column, and `nsfw` is a column already (an alchemy result column: the manifest runs alchemy)",
            "test.yaml:9:20: the label `tags` would be a metadata.jsonl column, and `tags` is a column already (an alchemy result column: the manifest runs alchemy)",
            "test.yaml:8:24: the label `aesthetic` would be a metadata.jsonl column, and `aesthetic` is a column already (an alchemy result column: the manifest runs alchemy)",
        ]
    );
    // Without alchemy the same labels are free.
    let off = text.replace("alchemy: [caption, aesthetic]", "alchemy: []");
    compile_in(&off, dir.path()).unwrap();
    // The caption column, and `prompt` once captions come from alchemy.
    assert_eq!(
        problems(&alchemy_manifest("[caption]", "output:\n  metadata: {caption: caption}\n", "")),
        ["test.yaml:7:23: the caption column `caption` is a column of alchemy results in metadata.jsonl\n  help: choose another name; alchemy takes the columns caption, nsfw, tags, alchemy_of, alchemy_form"]
    );
    let prompt_label = alchemy_manifest(
        "[caption]",
        "output:\n  metadata: {caption_from: alchemy}\n",
        "    matrix: {prompt: [a, b]}\n",
    )
    .replace("prompt: a fox", "prompt: 'a ${prompt}'");
    assert_eq!(
        problems(&prompt_label),
        ["test.yaml:11:22: the label `prompt` would be a metadata.jsonl column, and `prompt` is a column already (an alchemy result column: the manifest runs alchemy)\n  help: rename the axis"]
    );
}
