//! No module imports one that imports it back (issue #12).
//!
//! Reads every `src/**/*.rs` file of the library, collects the `crate::…` and `super::…` paths
//! it uses (in `use` items and in expressions, test modules included; comments are skipped),
//! builds the module graph and fails naming the first cycle it finds. The graph has two
//! levels:
//!
//! - **top level**: `ami`, `bitrix`, `calls`, `daemon`, … (a file in `bitrix/` counts as
//!   `bitrix`);
//! - **inside a directory module** listed in [`SUBMODULE_DIRS`]: its files (`bitrix::client`,
//!   `bitrix::oauth`, …) are nodes of their own.
//!
//! The rule for a directory's `mod.rs` (its facade): it declares its children, re-exports
//! their items and may hold small helpers the children share (`http::reply`, `ami::Error`).
//! Edges between a facade and its *own* children are therefore not counted. A path that goes
//! through a re-export (`super::Error` in `ami/codec.rs`, where `ami/mod.rs` has
//! `pub use error::Error`) is resolved to the child that defines the item, so a cycle
//! between two siblings cannot hide behind the facade.
//!
//! `src/main.rs` is a separate crate that nothing can import, so it is not scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directory modules whose files are checked against each other, not just as one node.
const SUBMODULE_DIRS: &[&str] = &["ami", "bitrix", "calls", "cmd", "config", "doctor", "http"];

/// A library source file: its module path (`["bitrix", "client"]`; `[]` for lib.rs) and text.
struct Source {
    module: Vec<String>,
    text: String,
}

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_library_has_no_module_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    let sources: Vec<Source> = files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n != "main.rs"))
        .filter_map(|p| {
            let module = module_of(p.strip_prefix(&root).ok()?)?;
            let text = std::fs::read_to_string(p).ok()?;
            Some(Source { module, text })
        })
        .collect();
    assert!(
        sources.len() > 20 && sources.iter().any(|s| s.module == ["bitrix", "client"]),
        "the scan found too little: {} files",
        sources.len()
    );
    let graph = graph(&sources, SUBMODULE_DIRS);
    // The scan must see the edges we know exist, or it proves nothing.
    for (from, to) in [
        ("daemon", "http"),
        ("originate", "ami"),
        ("bitrix::api", "bitrix::client"),
    ] {
        assert!(
            graph.get(from).is_some_and(|t| t.contains(to)),
            "expected edge {from} → {to} not found; the scanner is broken"
        );
    }
    let mut found = Vec::new();
    let mut graph = graph;
    while let Some(cycle) = find_cycle(&graph) {
        found.push(cycle.join(" → "));
        // Drop one edge of this cycle and look for more, so every cycle gets reported.
        graph.get_mut(&cycle[0]).unwrap().remove(&cycle[1]);
    }
    assert!(found.is_empty(), "module cycles:\n  {}", found.join("\n  "));
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `bitrix/client.rs` → `["bitrix", "client"]`, `bitrix/mod.rs` → `["bitrix"]`,
/// `lib.rs` → `[]`.
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem != "mod" && !(parts.is_empty() && stem == "lib") {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The module graph: nodes are `top` or `top::child` (for `dirs`), edges as described in the
/// module comment.
fn graph(sources: &[Source], dirs: &[&str]) -> Graph {
    // Re-exports of each facade: (dir, item name) → child.
    let mut reexports: BTreeMap<(String, String), String> = BTreeMap::new();
    for s in sources.iter().filter(|s| s.module.len() == 1) {
        let text = strip_comments(&s.text);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("pub use ") {
            rest = &rest[i + "pub use ".len()..];
            for path in use_paths(rest) {
                if path.len() >= 2 && path[0] != "crate" && path[0] != "super" {
                    let key = (s.module[0].clone(), path[path.len() - 1].clone());
                    reexports.insert(key, path[0].clone());
                }
            }
        }
    }
    let children: BTreeSet<(String, String)> = sources
        .iter()
        .filter(|s| s.module.len() == 2)
        .map(|s| (s.module[0].clone(), s.module[1].clone()))
        .collect();

    let node = |path: &[String]| -> Option<String> {
        let top = path.first()?;
        if !dirs.contains(&top.as_str()) || path.len() < 2 {
            return Some(top.clone());
        }
        let key = (top.clone(), path[1].clone());
        if children.contains(&key) {
            return Some(format!("{top}::{}", path[1]));
        }
        match reexports.get(&key) {
            Some(child) => Some(format!("{top}::{child}")),
            None => Some(top.clone()), // an item of the facade itself
        }
    };

    let mut g = Graph::new();
    for s in sources {
        let Some(from) = node(&s.module) else {
            continue; // lib.rs: it only declares the modules
        };
        g.entry(from.clone()).or_default();
        for target in references(s) {
            let Some(to) = node(&target) else { continue };
            if from == to {
                continue;
            }
            let (ft, tt) = (top_of(&from), top_of(&to));
            if ft != tt {
                g.entry(ft.to_string()).or_default().insert(tt.to_string());
            } else if from.contains("::") && to.contains("::") {
                // Two children of one facade; facade ↔ child edges are not counted.
                g.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    g
}

fn top_of(node: &str) -> &str {
    node.split("::").next().unwrap_or(node)
}

/// Every absolute module path (`["bitrix", "client", "Reply"]`) the file refers to.
fn references(s: &Source) -> Vec<Vec<String>> {
    let text = strip_comments(&s.text);
    // Unit tests sit in a `mod tests` at the end of a file: `super::` there means the file.
    let test_start = text.find("#[cfg(test)]").unwrap_or(text.len());
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start).map(|i| i + from) {
            from = i + start.len();
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || matches!(bytes[i - 1], b'_' | b'$' | b':'))
            {
                continue; // `$crate::`, `super::super::` (handled from its first `super`)
            }
            for path in use_paths(&text[i..]) {
                let mut base = s.module.clone();
                if i >= test_start {
                    base.push("tests".to_string());
                }
                let mut segs = path.into_iter().peekable();
                if segs.peek().is_some_and(|p| p == "crate") {
                    segs.next();
                    base.clear();
                } else {
                    while segs.peek().is_some_and(|p| p == "super") {
                        segs.next();
                        base.pop();
                    }
                }
                base.extend(segs.filter(|p| p != "self"));
                out.push(base);
            }
        }
    }
    out
}

/// Expand a path or use tree at the start of `s` (`a::{b, c::{d, e}}`) into its paths.
fn use_paths(s: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut pos = 0;
    tree(s.as_bytes(), &mut pos, Vec::new(), &mut out);
    out
}

fn tree(b: &[u8], pos: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_ws(b, pos);
        if *pos < b.len() && b[*pos] == b'{' {
            *pos += 1;
            loop {
                skip_ws(b, pos);
                if *pos >= b.len() {
                    return;
                }
                if b[*pos] == b'}' {
                    *pos += 1;
                    return;
                }
                if b[*pos] == b',' {
                    *pos += 1;
                    continue;
                }
                let before = *pos;
                tree(b, pos, path.clone(), out);
                skip_ws(b, pos);
                // Skip `as Alias` and anything else up to the next item.
                while *pos < b.len() && !matches!(b[*pos], b',' | b'}') {
                    *pos += 1;
                }
                if *pos == before {
                    *pos += 1;
                }
            }
        }
        let start = *pos;
        while *pos < b.len() && (b[*pos].is_ascii_alphanumeric() || matches!(b[*pos], b'_' | b'*'))
        {
            *pos += 1;
        }
        if *pos == start {
            if !path.is_empty() {
                out.push(path);
            }
            return;
        }
        path.push(String::from_utf8_lossy(&b[start..*pos]).into_owned());
        if b[*pos..].starts_with(b"::") {
            *pos += 2;
        } else {
            out.push(path);
            return;
        }
    }
}

fn skip_ws(b: &[u8], pos: &mut usize) {
    while *pos < b.len() && b[*pos].is_ascii_whitespace() {
        *pos += 1;
    }
}

/// Drop `//` comments (doc comments included: an intra-doc link is not a dependency).
/// A `//` inside a string literal cuts the rest of its line, which only ever removes text.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One cycle as `[a, b, …, a]`, or `None`.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    // Iterative-enough DFS: the graph has a few dozen nodes.
    fn visit(
        g: &Graph,
        n: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(g, m, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(c) = visit(g, n, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

// The checker itself, on synthetic sources: it must be able to fail.

fn src(module: &str, text: &str) -> Source {
    Source {
        module: module
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        text: text.to_string(),
    }
}

#[test]
fn checker_finds_a_top_level_cycle_through_a_use_group() {
    let g = graph(
        &[
            src("daemon", "use crate::{ami, http::Server};\n"),
            src("http", "fn f() { let _ = crate::daemon::Shared::new(); }\n"),
            src("ami", "// crate::daemon in a comment is not an edge\n"),
        ],
        &[],
    );
    assert_eq!(
        find_cycle(&g),
        Some(vec!["daemon".into(), "http".into(), "daemon".into()])
    );
}

#[test]
fn checker_finds_a_sibling_cycle_behind_a_facade_reexport() {
    let sources = [
        src("bitrix", "pub mod client;\npub mod oauth;\npub use oauth::AuthStatus;\n"),
        src("bitrix::client", "use super::AuthStatus;\n"),
        src(
            "bitrix::oauth",
            "use super::client::{parse_envelope, Reply};\n#[cfg(test)]\nmod tests {\n    use super::*;\n}\n",
        ),
    ];
    let g = graph(&sources, &["bitrix"]);
    let c = find_cycle(&g).expect("client ↔ oauth is a cycle");
    assert_eq!(c.first(), c.last());
    assert!(c.contains(&"bitrix::client".to_string()) && c.contains(&"bitrix::oauth".to_string()));
    // Without the sub-module level the same sources are one node and have no cycle.
    assert_eq!(find_cycle(&graph(&sources, &[])), None);
}

#[test]
fn facade_and_children_are_not_a_cycle() {
    let g = graph(
        &[
            src(
                "http",
                "mod webhook;\nstruct Ctx;\nfn handle() { webhook::handle() }\n",
            ),
            src(
                "http::webhook",
                "use super::{reply, Ctx};\nuse super::super::config::Config;\n",
            ),
            src("config", "pub struct Config;\n"),
        ],
        &["http"],
    );
    assert_eq!(find_cycle(&g), None);
    assert!(g["http"].contains("config"), "{g:?}");
}
