//! The shape of the code, checked: no file in `src/` is too big to hold in
//! one's head, the top-level modules form no cycle, and each uses only the
//! modules ARCHITECTURE.md's layering table allows it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a source file may have.
const MAX_LINES: usize = 1_000;

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(file: &Path) -> Option<String> {
    let relative = file.strip_prefix("src").ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The code of a file without comments and without its test module (by
/// convention the last item, after `#[cfg(test)]`): tests may reach across
/// layers, and a comment that names a module does not use it.
fn code_of(text: &str) -> String {
    let code = text.find("#[cfg(test)]").map_or(text, |at| &text[..at]);
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names through `crate::`.
fn uses_of(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c}`: the first segment of each path in the group.
            let group = &group[..group.find('}').unwrap_or(group.len())];
            group
                .split(',')
                .map(|path| path.trim().split("::").next().unwrap_or(""))
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![&rest[..end]]
        };
        for name in names {
            if modules.contains(name) {
                used.insert(name.to_owned());
            }
        }
    }
    used
}

/// Which top-level module uses which, from the code.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(f)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        if file.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("a source file is text");
        let mut used = uses_of(&code_of(&text), &modules);
        used.remove(&module);
        graph
            .get_mut(&module)
            .expect("every module is in the graph")
            .extend(used);
    }
    graph
}

#[test]
fn no_source_file_is_over_a_thousand_lines() {
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let big: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    assert!(big.is_empty(), "split these by responsibility: {big:#?}");
}

#[test]
fn the_top_level_modules_form_no_cycle() {
    let graph = module_graph();
    // Depth-first search; a module met again while on the path closes a cycle.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in &graph[module] {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" → "));
        }
    }
}

/// The layering table of ARCHITECTURE.md: module → the modules it may use
/// (`None` for "everything below").
fn layering_table() -> BTreeMap<String, Option<BTreeSet<String>>> {
    let text = std::fs::read_to_string("ARCHITECTURE.md").expect("ARCHITECTURE.md exists");
    let section = &text[text.find("## Layering").expect("a Layering section")..];
    let mut table = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, _layer, modules, may_use, ..] = cells.as_slice() else {
            continue;
        };
        let names = |cell: &str| -> BTreeSet<String> {
            cell.split(',')
                .filter_map(|part| part.split('`').nth(1))
                .map(str::to_owned)
                .collect()
        };
        let allowed = if may_use.starts_with("everything") {
            None
        } else {
            Some(names(may_use))
        };
        for module in names(modules) {
            table.insert(module, allowed.clone());
        }
    }
    table
}

#[test]
fn each_module_uses_only_what_the_layering_table_allows() {
    let graph = module_graph();
    let table = layering_table();
    let mut wrong = Vec::new();
    for (module, used) in &graph {
        match table.get(module) {
            None => wrong.push(format!(
                "`{module}` is not in ARCHITECTURE.md's layering table"
            )),
            Some(None) => {}
            Some(Some(allowed)) => {
                for dependency in used.difference(allowed) {
                    wrong.push(format!(
                        "`{module}` uses `{dependency}`, which the table does not allow"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n(the code: {graph:#?})");
}
