//! The crate's layering, checked from its source: every `crate::` and `super::` path in
//! `src/` (outside comments and test modules) is an arrow from the file that writes it to
//! the file that defines it. Two rules keep the house standing:
//!
//! 1. a module never uses one of its own or a higher layer ([`LAYERS`]): the ground floor
//!    (`apimachinery`) knows nothing of the API servers, `apiserver` nothing of metrics;
//! 2. no file depends, through any chain of arrows, on itself (a circle), arrows from a
//!    module's `mod.rs` down into its own children (declarations, re-exports) aside.
//!
//! Plain Rust, no parser crate: `use` trees are expanded by hand, which is all our code needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer. A module may use only modules of a strictly
/// lower layer (and itself), so two modules of one layer never use each other.
const LAYERS: &[(&str, u8)] = &[
    // Pure shapes and the build stamp.
    ("apimachinery", 0),
    ("error", 0),
    ("version", 0),
    // Settings and plumbing every subsystem uses.
    ("config", 1),
    ("explain", 1),
    ("health", 1),
    ("scrub", 1),
    ("status", 1),
    ("shutdown", 1),
    ("tls", 1),
    ("logging", 2),
    ("k8s", 2),
    ("datadog", 2),
    // What every API server needs; leader election.
    ("apiserver", 3),
    ("leader", 3),
    // The APIs.
    ("external_metrics", 4),
    ("node_api", 4),
    ("telemetry", 4),
    // What serves the metrics API its values (implements its seam).
    ("autoscaling", 5),
    ("metadata", 5),
    // Wiring, then the command line.
    ("app", 6),
    ("cli", 7),
];

/// A file as a module path: `src/a/b.rs` and `src/a/b/mod.rs` are `[a, b]`.
type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    /// The path as written, for the message.
    path: String,
}

fn module_path(file: &str) -> ModPath {
    let file = file.strip_suffix(".rs").unwrap_or(file);
    let mut parts: Vec<String> = file.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The source with comments and `#[cfg(test)]` modules removed. Test modules are last in
/// their files by our convention, so everything from the first one on is dropped.
fn production_code(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        // An inline test module (`mod tests {`); a declared one (`mod tests;`) is a file of
        // its own, skipped by name, and the code after it is still read.
        if trimmed.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| {
                let next = next.trim();
                next.starts_with("mod ") && next.ends_with('{')
            })
        {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`a::{b::{C, D}, e}`) into its paths.
fn expand_use_tree(tree: &str) -> Vec<String> {
    // `X as Y` keeps X: mark the rename before dropping whitespace.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let tree: String = words.join(" ").replace(" as ", "@").replace(' ', "");
    let mut out = Vec::new();
    expand_into("", &tree, &mut out);
    out
}

fn expand_into(prefix: &str, tree: &str, out: &mut Vec<String>) {
    for item in split_top_level(tree) {
        match item.find('{') {
            Some(open) if item.ends_with('}') => {
                let head = item[..open].trim_end_matches("::");
                let inner = &item[open + 1..item.len() - 1];
                expand_into(&join(prefix, head), inner, out);
            }
            _ => {
                let item = item.split('@').next().unwrap_or(item);
                out.push(join(prefix, item));
            }
        }
    }
}

fn join(prefix: &str, item: &str) -> String {
    match (prefix.is_empty(), item) {
        (true, _) => item.to_owned(),
        (false, "self") => prefix.to_owned(),
        (false, "") => prefix.to_owned(),
        (false, _) => format!("{prefix}::{item}"),
    }
}

/// Splits at the commas not inside braces.
fn split_top_level(tree: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    items.into_iter().filter(|s| !s.is_empty()).collect()
}

/// Every path the code names that starts at `crate::` or `super::`: the expanded `use`
/// declarations, and paths written inline.
fn referenced_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    // `use` declarations, possibly `pub`/`pub(crate)`, possibly over several lines.
    while let Some(i) = find_use(rest) {
        let after = &rest[i..];
        let end = after.find(';').unwrap_or(after.len());
        let tree = after[..end].trim_start_matches("use").trim();
        paths.extend(expand_use_tree(tree));
        rest = &after[end..];
    }
    // Inline paths (`crate::k8s::client(...)`, `super::goquote::go_quote(...)`).
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(found) = code[from..].find(start) {
            let i = from + found;
            from = i + start.len();
            let boundary =
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            // `pub(in crate::x)` restricts visibility; it uses nothing.
            if !boundary || code[..i].ends_with("::") || code[..i].ends_with("pub(in ") {
                continue;
            }
            let len = code[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - i);
            let path = code[i..i + len].trim_end_matches(':');
            paths.push(path.to_owned());
        }
    }
    paths
        .into_iter()
        .filter(|p| p.starts_with("crate::") || p.starts_with("super::"))
        .collect()
}

/// The next `use` keyword that starts a declaration.
fn find_use(code: &str) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let i = from + found;
        from = i + 4;
        let before_ok = i == 0 || matches!(bytes[i - 1], b'\n' | b' ' | b'\t' | b')' | b'{' | b';');
        let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
        let lead = code[line_start..i].trim();
        // Visibility or attributes may stand before `use` on its line.
        let lead_ok = lead.is_empty() || lead.starts_with("pub") || lead.starts_with("#[");
        if before_ok && lead_ok {
            return Some(i);
        }
    }
    None
}

/// Absolute module path of `path` as written in the module `at`.
fn absolute(at: &ModPath, is_mod_file: bool, path: &str) -> Option<Vec<String>> {
    let mut segments = path.split("::");
    let first = segments.next()?;
    let mut base: Vec<String> = match first {
        "crate" => Vec::new(),
        "super" => {
            // In `a/b.rs` (module a::b) and in `a/b/mod.rs` alike, `super` is `a`.
            let mut parent = at.clone();
            let _ = is_mod_file;
            parent.pop()?;
            parent
        }
        _ => return None,
    };
    for segment in segments {
        if segment == "super" {
            base.pop()?;
        } else if !segment.is_empty() {
            base.push(segment.to_owned());
        }
    }
    Some(base)
}

/// The file defining the longest prefix of `path` that is a file of the crate.
fn resolve(files: &BTreeMap<ModPath, String>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .find_map(|n| files.get(&path[..n]).cloned())
}

/// The arrows between the files given as (path under src/, source text).
fn edges(sources: &[(String, String)]) -> Vec<Edge> {
    let files: BTreeMap<ModPath, String> = sources
        .iter()
        .filter(|(file, _)| file != "main.rs")
        .map(|(file, _)| (module_path(file), file.clone()))
        .collect();
    let mut out = BTreeSet::new();
    for (file, source) in sources {
        if file == "main.rs" {
            continue;
        }
        let at = module_path(file);
        let is_mod = file.ends_with("mod.rs");
        for path in referenced_paths(&production_code(source)) {
            let Some(target) = absolute(&at, is_mod, &path) else {
                continue;
            };
            if let Some(to) = resolve(&files, &target)
                && &to != file
            {
                out.insert(Edge {
                    from: file.clone(),
                    to,
                    path,
                });
            }
        }
    }
    out.into_iter().collect()
}

fn top_module(file: &str) -> &str {
    let first = file.split('/').next().unwrap_or(file);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Rule 1: each arrow between top-level modules runs to a strictly lower layer.
fn layer_violations(edges: &[Edge], layers: &[(&str, u8)]) -> Vec<String> {
    let rank: BTreeMap<&str, u8> = layers.iter().copied().collect();
    let mut problems = BTreeSet::new();
    for edge in edges {
        let (from, to) = (top_module(&edge.from), top_module(&edge.to));
        if from == to || from == "lib" {
            continue;
        }
        match (rank.get(from), rank.get(to)) {
            (Some(a), Some(b)) if a > b => {}
            (Some(a), Some(b)) => {
                problems.insert(format!(
                    "{} (layer {a}) uses {} (layer {b}) through `{}`: a module may use only \
                     lower layers",
                    edge.from, edge.to, edge.path
                ));
            }
            (None, _) => {
                problems.insert(format!(
                    "src/{} is in no layer: add `{from}` to LAYERS",
                    edge.from
                ));
            }
            (_, None) => {
                problems.insert(format!(
                    "src/{} is in no layer: add `{to}` to LAYERS",
                    edge.to
                ));
            }
        }
    }
    problems.into_iter().collect()
}

/// Whether `to` is `from`'s own child (a `mod.rs` declaring or re-exporting it).
fn is_own_child(from: &str, to: &str) -> bool {
    match from.strip_suffix("mod.rs") {
        Some(dir) => to.starts_with(dir) && to != from,
        None => from == "lib.rs",
    }
}

/// Rule 2: the circles among files, each as the files along it.
fn circles(edges: &[Edge]) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for edge in edges {
        if !is_own_child(&edge.from, &edge.to) {
            graph.entry(&edge.from).or_default().insert(&edge.to);
        }
    }
    // Each strongly connected component with more than one file is a circle.
    let nodes: Vec<&str> = graph
        .iter()
        .flat_map(|(from, tos)| std::iter::once(*from).chain(tos.iter().copied()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(n) = stack.pop() {
            for next in graph.get(n).into_iter().flatten() {
                if seen.insert(*next) {
                    stack.push(next);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<&str>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for n in &nodes {
        let component: Vec<String> = nodes
            .iter()
            .filter(|m| reachable[n].contains(**m) && reachable[**m].contains(*n))
            .map(|m| (*m).to_owned())
            .collect();
        if component.len() > 1 {
            found.insert(component);
        }
    }
    found.into_iter().collect()
}

fn crate_sources() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    collect(&root, &root, &mut out);
    out.sort();
    out
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            // Test-only files (`#[cfg(test)] mod tests;`) may use anything.
            if rel.ends_with("/tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let edges = edges(&crate_sources());
    assert!(
        edges.len() > 50,
        "the scan found only {} arrows: it no longer reads the code",
        edges.len()
    );
    let problems = layer_violations(&edges, LAYERS);
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_file_depends_on_itself() {
    let found = circles(&edges(&crate_sources()));
    assert!(found.is_empty(), "circles among files: {found:?}");
}

#[test]
fn every_top_level_module_has_a_layer() {
    let modules: BTreeSet<String> = crate_sources()
        .iter()
        .map(|(file, _)| top_module(file).to_owned())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let known: BTreeSet<String> = LAYERS.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(modules, known, "src/'s top-level modules and LAYERS differ");
}

// The checker itself, on small made-up crates.

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(f, s)| ((*f).to_owned(), (*s).to_owned()))
        .collect()
}

const TWO_LAYERS: &[(&str, u8)] = &[("low", 0), ("high", 1)];

#[test]
fn a_lower_layer_using_a_higher_one_is_reported() {
    let cases: &[(&str, &str, bool)] = &[
        // (file in low/, its source, reported)
        ("low/a.rs", "use crate::high::Thing;\n", true),
        ("low/a.rs", "use crate::{high::Thing, low::b};\n", true),
        (
            "low/a.rs",
            "pub(crate) use crate::high::{self, Thing};\n",
            true,
        ),
        ("low/a.rs", "fn f() { crate::high::run(); }\n", true),
        ("low/a.rs", "use super::super::high::Thing;\n", true),
        (
            "low/a.rs",
            "use crate::{\n    high::{\n        Thing,\n    },\n};\n",
            true,
        ),
        ("low/a.rs", "#[cfg(unix)] use crate::{high::Thing};\n", true),
        // Code after a declared (not inline) test module is still read.
        (
            "low/a.rs",
            "#[cfg(test)]\nmod tests;\nuse crate::high::Thing;\n",
            true,
        ),
        ("low/a.rs", "pub(in crate::low) fn f() {}\n", false),
        // Comments, docs and test modules are not code.
        ("low/a.rs", "//! Built on [`crate::high`].\n", false),
        ("low/a.rs", "fn f() {} // crate::high::run()\n", false),
        (
            "low/a.rs",
            "fn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::high::Thing;\n}\n",
            false,
        ),
        ("low/a.rs", "use crate::low::b::B;\n", false),
        ("low/a.rs", "use std::collections::BTreeMap;\n", false),
    ];
    for (file, source, reported) in cases {
        let crate_files = files(&[
            ("lib.rs", "pub mod low;\npub mod high;\n"),
            ("low/mod.rs", "pub mod a;\npub mod b;\n"),
            ("low/b.rs", "pub struct B;\n"),
            ("high/mod.rs", "pub struct Thing;\npub fn run() {}\n"),
            (file, source),
        ]);
        let problems = layer_violations(&edges(&crate_files), TWO_LAYERS);
        assert_eq!(!problems.is_empty(), *reported, "{source:?}: {problems:?}");
    }
    // And the other way round is the rule.
    let ok = files(&[
        ("low/mod.rs", "pub struct Thing;\n"),
        ("high/mod.rs", "use crate::low::Thing;\n"),
    ]);
    assert!(layer_violations(&edges(&ok), TWO_LAYERS).is_empty());
}

#[test]
fn a_module_outside_the_layers_is_reported() {
    let crate_files = files(&[
        ("low/mod.rs", "use crate::stray::X;\n"),
        ("stray.rs", "pub struct X;\n"),
    ]);
    let problems = layer_violations(&edges(&crate_files), TWO_LAYERS);
    assert!(
        problems.iter().any(|p| p.contains("add `stray` to LAYERS")),
        "{problems:?}"
    );
}

#[test]
fn circles_are_found_but_a_parent_declaring_its_children_is_none() {
    let circle = files(&[
        (
            "m/mod.rs",
            "pub mod a;\npub mod b;\npub mod c;\npub use a::A;\n",
        ),
        ("m/a.rs", "use crate::m::b::B;\npub struct A;\n"),
        ("m/b.rs", "use super::c::C;\npub struct B;\n"),
        ("m/c.rs", "use crate::m::a::A;\npub struct C;\n"),
    ]);
    assert_eq!(
        circles(&edges(&circle)),
        vec![vec![
            "m/a.rs".to_owned(),
            "m/b.rs".to_owned(),
            "m/c.rs".to_owned()
        ]]
    );
    // A child using what its parent defines, while the parent re-exports the child: no circle.
    let parent = files(&[
        (
            "m/mod.rs",
            "pub mod a;\npub use a::A;\npub const N: u8 = 1;\n",
        ),
        ("m/a.rs", "use crate::m::N;\npub struct A;\n"),
    ]);
    assert!(circles(&edges(&parent)).is_empty());
}

#[test]
fn use_trees_expand_to_every_path() {
    assert_eq!(
        expand_use_tree("crate::a::{self, b::{C, D as E}, f}"),
        [
            "crate::a",
            "crate::a::b::C",
            "crate::a::b::D",
            "crate::a::f"
        ]
    );
}
