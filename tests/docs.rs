//! The documentation stays walkable: every relative link in the Markdown
//! documents points to a file that exists and, with `#anchor`, to a heading
//! of it (GitHub's slugs); no comment in the code cites a Markdown file the
//! repository does not have; the README stays short, with a table of
//! contents, its quick-start commands and a row per subcommand.
//!
//! Plain string scanning, no Markdown parser: links are `[text](target)`
//! outside fenced code blocks, headings are lines starting with `#` outside
//! them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use horde_batch::cli::Cli;

/// The repository's root (the tests run from anywhere).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The documents whose links are checked, relative to the root.
fn documents() -> Vec<PathBuf> {
    let mut documents = vec![
        PathBuf::from("README.md"),
        PathBuf::from("ARCHITECTURE.md"),
        PathBuf::from("benches/README.md"),
    ];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("the docs/ folder exists")
        .map(|entry| entry.expect("docs/ can be listed").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    pages.sort();
    assert!(!pages.is_empty(), "docs/ holds no .md page");
    documents.extend(pages);
    documents
}

fn read(relative: &Path) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", relative.display()))
}

/// The lines of a Markdown text outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            lines.push((number + 1, line));
        }
    }
    lines
}

/// GitHub's anchor for a heading: lowercase, punctuation other than `-` and
/// `_` dropped, each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of a Markdown text; a repeated heading gets `-1`, `-2`, … as
/// on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = Vec::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim_end_matches('#'));
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.push(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// The targets of the inline links `[text](target)` of a Markdown text, with
/// their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (number, line) in prose_lines(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            links.push((number, after[..end].trim().to_owned()));
            rest = &after[end..];
        }
    }
    links
}

fn is_external(target: &str) -> bool {
    ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| target.starts_with(scheme))
}

#[test]
fn every_relative_link_in_the_documentation_resolves() {
    let mut broken = Vec::new();
    for document in documents() {
        let text = read(&document);
        let folder = document.parent().unwrap_or(Path::new(""));
        for (line, target) in links(&text) {
            if is_external(&target) {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                document.clone()
            } else {
                folder.join(path)
            };
            let at = format!("{}:{line}: ({target})", document.display());
            if !root().join(&file).exists() {
                broken.push(format!("{at}: no file {}", file.display()));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            if file.extension().is_none_or(|ext| ext != "md") {
                broken.push(format!("{at}: an anchor into a file that is not Markdown"));
            } else if !anchors(&read(&file)).iter().any(|known| known == anchor) {
                broken.push(format!("{at}: {} has no heading #{anchor}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Markdown files that code comments cite and the repository does not have
/// yet, as (citing file, cited name). Each entry must still occur (a fixed
/// citation leaves the list), so the list only shrinks.
const CITATIONS_TO_FIX: &[(&str, &str)] = &[];

/// Files the benchmark scripts write, named in their comments and docs: not
/// citations of files in the repository.
const WRITTEN_BY_BENCHMARKS: &[&str] = &["results.md"];

/// Files under `folder` (relative to the root), recursively.
fn files_under(folder: &Path, into: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root().join(folder)) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a listable folder").path();
        let relative = path.strip_prefix(root()).unwrap().to_path_buf();
        if path.is_dir() {
            // Test fixtures are data, and a nested crate's build output is not source.
            if !matches!(
                path.file_name().and_then(|name| name.to_str()),
                Some("fixtures" | "snapshots" | "target")
            ) {
                files_under(&relative, into);
            }
        } else {
            into.push(relative);
        }
    }
}

/// The text of a file that is comment or documentation: in Rust, what follows
/// `//` on a line; in other files (scripts, Markdown, docstrings), everything.
fn commentary(file: &Path, text: &str) -> Vec<(usize, String)> {
    let rust = file.extension().is_some_and(|ext| ext == "rs");
    text.lines()
        .enumerate()
        .filter_map(|(number, line)| {
            let comment = if rust {
                line.split_once("//").map(|(_, comment)| comment)?
            } else {
                line
            };
            Some((number + 1, comment.to_owned()))
        })
        .collect()
}

/// The `*.md` names cited in a piece of text: runs of path characters ending
/// in `.md` with a file name before the extension.
fn cited_markdown(text: &str) -> Vec<String> {
    let is_path_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    let mut cited = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i + 3 <= chars.len() {
        let ends_here = chars[i..i + 3] == ['.', 'm', 'd']
            && chars.get(i + 3).is_none_or(|&c| !c.is_ascii_alphanumeric());
        if ends_here {
            let mut start = i;
            while start > 0 && is_path_char(chars[start - 1]) {
                start -= 1;
            }
            let name: String = chars[start..i + 3].iter().collect();
            let stem = name
                .trim_end_matches(".md")
                .rsplit('/')
                .next()
                .unwrap_or("");
            if !stem.is_empty() && !stem.ends_with('.') {
                cited.push(name.trim_start_matches("./").to_owned());
            }
        }
        i += 1;
    }
    cited
}

#[test]
fn code_comments_cite_only_markdown_files_that_exist() {
    let mut files = Vec::new();
    for folder in ["src", "tests", "benches", "scripts"] {
        files_under(Path::new(folder), &mut files);
    }
    let mut missing = Vec::new();
    let mut still_to_fix = vec![false; CITATIONS_TO_FIX.len()];
    for file in files {
        let Ok(text) = std::fs::read_to_string(root().join(&file)) else {
            continue; // not text
        };
        let folder = file.parent().unwrap_or(Path::new(""));
        for (line, comment) in commentary(&file, &text) {
            for name in cited_markdown(&comment) {
                let base = name.rsplit('/').next().unwrap_or(&name);
                let exists =
                    root().join(&name).exists() || root().join(folder).join(&name).exists();
                if exists || WRITTEN_BY_BENCHMARKS.contains(&base) {
                    continue;
                }
                let known = CITATIONS_TO_FIX
                    .iter()
                    .position(|&(at, cited)| Path::new(at) == file && cited == name);
                match known {
                    Some(index) => still_to_fix[index] = true,
                    None => missing.push(format!("{}:{line}: cites {name}", file.display())),
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "citations of Markdown files the repository does not have (cite ARCHITECTURE.md, \
         README.md or a page of docs/ instead):\n{}",
        missing.join("\n")
    );
    let fixed: Vec<_> = CITATIONS_TO_FIX
        .iter()
        .zip(still_to_fix)
        .filter(|(_, still)| !still)
        .map(|((at, cited), _)| format!("{at}: {cited}"))
        .collect();
    assert!(
        fixed.is_empty(),
        "these citations are gone: remove them from CITATIONS_TO_FIX:\n{}",
        fixed.join("\n")
    );
}

#[test]
fn the_readme_is_short_with_a_table_of_contents_and_the_quick_start() {
    let readme = read(Path::new("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines < 300,
        "README.md has {lines} lines; move detail to docs/"
    );
    let contents = readme
        .split_once("\n## Contents\n")
        .map(|(_, after)| after)
        .expect("README.md has a `## Contents` section");
    let entries = contents
        .lines()
        .skip_while(|line| line.trim().is_empty())
        .take_while(|line| line.starts_with("- ["))
        .count();
    assert!(
        entries >= 5,
        "the table of contents lists {entries} sections"
    );
    // CI and the tests run exactly these.
    for command in [
        "cargo run --release -- run manifests/quickstart.yaml --simulate",
        "cargo test",
    ] {
        assert!(
            readme.lines().any(|line| line.trim() == command),
            "the quick start lacks `{command}`"
        );
    }
}

#[test]
fn every_docs_page_has_a_table_of_contents() {
    for document in documents().iter().filter(|path| path.starts_with("docs")) {
        assert!(
            read(document).contains("\n## Contents\n"),
            "{} has no `## Contents` section",
            document.display()
        );
    }
}

#[test]
fn the_readme_and_the_command_reference_list_every_subcommand() {
    let readme = read(Path::new("README.md"));
    let reference = anchors(&read(Path::new("docs/commands.md")));
    for command in Cli::command().get_subcommands() {
        let name = command.get_name();
        let link = format!("](docs/commands.md#{name})");
        assert!(
            readme
                .lines()
                .any(|line| line.starts_with("| [`") && line.contains(&link)),
            "the README's command table has no row linking to {link}"
        );
        assert!(
            reference.iter().any(|anchor| anchor == name),
            "docs/commands.md has no `{name}` heading"
        );
    }
}
