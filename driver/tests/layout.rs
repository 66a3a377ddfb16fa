//! The driver's layout rules (docs/ARCHITECTURE.md, "The driver, file by
//! file"), checked on its source:
//!
//! - no file imports anything from the crate root but modules: every task
//!   gets narrow handles, never a whole-driver value from `lib.rs`;
//! - the files' imports have no cycle: a newcomer can read them bottom up.
//!
//! The imports are read from the text (`use` trees and inline `crate::`
//! and `super::` paths), each mapped to the file that defines the longest
//! module path it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src`, by its module path (`session::park`;
/// `lib.rs` is the empty path, a `mod.rs` its directory's).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut module: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("lib" | "mod" | "main")) {
                module.pop();
            }
            if relative == Path::new("main.rs") {
                continue; // the binary, a crate of its own
            }
            found.insert(module, path);
        }
    }
    found
}

/// The code of a file without comments, string literals and test modules
/// (a test may reach anywhere).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for next in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if next == '\\' {
                        escaped = true;
                    } else if next == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expands a `use` tree (`crate::{a, b::{c, d}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or_default().trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.trim().is_empty())
        .flat_map(expand)
        .map(|path| {
            if path == "self" {
                prefix.trim_end_matches("::").to_owned()
            } else {
                format!("{prefix}{path}")
            }
        })
        .collect()
}

/// The module paths (as written) a file's code names.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let rest = statement
            .strip_prefix("pub use ")
            .or_else(|| statement.strip_prefix("pub(crate) use "))
            .or_else(|| statement.strip_prefix("use "));
        if let Some(tree) = rest {
            paths.extend(expand(tree));
        }
    }
    // Inline paths: `crate::bridge::describe(...)`, `super::end(...)`.
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            let end = code[begin..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |len| begin + len);
            let path = code[begin..end].trim_end_matches(':');
            // `crate::{...}` is a use tree, read above.
            if path != "crate" && path != "super" {
                paths.push(path.to_owned());
            }
            from = end.max(begin + start.len());
        }
    }
    paths
}

/// The file a path written in `module` lands in: the longest module path
/// it names that is a file.
fn target(module: &[String], path: &str, files: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").collect();
    let mut absolute: Vec<String> = match segments.first().copied() {
        Some("crate") => Vec::new(),
        Some("super") => {
            let mut parent = module.to_vec();
            // A mod.rs's `super` is its directory's parent.
            parent.pop();
            parent
        }
        Some("self") => module.to_vec(),
        _ => return None,
    };
    segments.remove(0);
    while segments.first() == Some(&"super") {
        absolute.pop();
        segments.remove(0);
    }
    absolute.extend(segments.iter().map(|s| (*s).to_owned()));
    (0..=absolute.len())
        .rev()
        .map(|len| absolute[..len].to_vec())
        .find(|candidate| files.contains_key(candidate))
}

fn driver_graph() -> (Graph, Vec<String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = modules(&src);
    let mut graph = BTreeMap::new();
    let mut from_root = Vec::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).expect("a source file is readable");
        let mut edges = BTreeSet::new();
        for named in named_paths(&code(&text)) {
            let Some(target) = target(module, &named, &files) else {
                continue;
            };
            if target.is_empty() && !module.is_empty() {
                from_root.push(format!("{} uses {named}", path.display()));
            }
            if &target != module {
                edges.insert(target);
            }
        }
        graph.insert(module.clone(), edges);
    }
    (graph, from_root)
}

#[test]
fn no_module_imports_from_the_crate_root() {
    let (_, from_root) = driver_graph();
    assert!(
        from_root.is_empty(),
        "modules import from lib.rs; hand them narrow handles instead:\n{}",
        from_root.join("\n")
    );
}

type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// A cycle of `graph`, if it has one: depth first, a back edge's path.
fn find_cycle(graph: &Graph) -> Option<Vec<Vec<String>>> {
    fn visit(
        node: &Vec<String>,
        graph: &Graph,
        done: &mut BTreeSet<Vec<String>>,
        path: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = path.iter().position(|on_path| on_path == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_files_import_one_another_without_a_cycle() {
    let (graph, _) = driver_graph();
    if let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(|module| module.join("::")).collect();
        panic!("an import cycle: {} -> back", names.join(" -> "));
    }
    assert!(graph.len() > 20, "the driver's files were found ({})", graph.len());
}

/// The control: the checker sees a cycle and a root import when there is
/// one (two files written for the purpose, never compiled).
#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    let files: BTreeMap<Vec<String>, PathBuf> = [
        (vec![], PathBuf::from("lib.rs")),
        (vec!["a".to_owned()], PathBuf::from("a.rs")),
        (vec!["b".to_owned()], PathBuf::from("b.rs")),
    ]
    .into_iter()
    .collect();
    let a = code("use crate::b::Thing; // crate::lib\nfn f() { let s = \"crate::x\"; }");
    let b = code("use crate::{a::{self, Other}, Driver};");
    let a_targets: BTreeSet<_> = named_paths(&a)
        .iter()
        .filter_map(|path| target(&["a".to_owned()], path, &files))
        .collect();
    let b_targets: BTreeSet<_> = named_paths(&b)
        .iter()
        .filter_map(|path| target(&["b".to_owned()], path, &files))
        .collect();
    assert_eq!(
        a_targets,
        BTreeSet::from([vec!["b".to_owned()]]),
        "comments and strings are not code"
    );
    assert!(b_targets.contains(&vec!["a".to_owned()]), "{b_targets:?}");
    assert!(
        b_targets.contains(&vec![]),
        "`crate::Driver` lands in lib.rs: {b_targets:?}"
    );
    let graph: Graph = [
        (vec!["a".to_owned()], a_targets),
        (vec!["b".to_owned()], BTreeSet::from([vec!["a".to_owned()]])),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        find_cycle(&graph).map(|cycle| cycle.len()),
        Some(2),
        "a -> b -> a is a cycle"
    );
    let acyclic: Graph = [(vec!["a".to_owned()], BTreeSet::from([vec!["b".to_owned()]]))]
        .into_iter()
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}
