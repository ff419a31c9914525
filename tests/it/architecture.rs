//! The shape README's "Architecture" promises, checked on the sources: the module import graph
//! has no cycle, `creds/` and `tls.rs` import no later stage, and no child module imports its
//! parent. Imports are read as text (`crate::...` and `super::...` paths outside comments and
//! unit-test modules), resolved to the longest module path that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`proxy::inbound::http`) -> file text.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(&root)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            out.insert(parts.join("::"), code_of(&text));
        }
    }
    out
}

/// The text without comment lines and without the unit-test module at the end.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `module` imports.
fn imports(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let here: Vec<&str> = if module.is_empty() {
        vec![]
    } else {
        module.split("::").collect()
    };
    // Every `crate::a::b...` or `super::...::c` path, with `{a, b}` groups expanded.
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let start = ["crate::", "super::"]
            .iter()
            .find(|p| code[i..].starts_with(**p))
            .filter(|_| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        // `pub(in crate::a)` is a visibility, not an import.
        if start.is_none() || code[..i].ends_with("(in ") {
            i += 1;
            continue;
        }
        let end = code[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |n| i + n);
        let path = code[i..end].trim_end_matches(':');
        let mut paths = vec![path.to_string()];
        if code[end..].starts_with('{') {
            if let Some(close) = code[end..].find('}') {
                paths = code[end + 1..end + close]
                    .split(',')
                    .map(|item| format!("{path}::{}", item.split_whitespace().next().unwrap_or("")))
                    .collect();
            }
        }
        for p in paths {
            let mut parts: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            let mut base: Vec<&str> = Vec::new();
            if parts.first() == Some(&"crate") {
                parts.remove(0);
            } else {
                base = here.clone();
                while parts.first() == Some(&"super") {
                    base.pop();
                    parts.remove(0);
                }
            }
            let target = (0..=parts.len()).rev().find_map(|n| {
                let cand: Vec<&str> = base.iter().chain(&parts[..n]).copied().collect();
                let cand = cand.join("::");
                known.contains(&cand).then_some(cand)
            });
            if let Some(t) = target.filter(|t| !t.is_empty() && t != module) {
                if !t.starts_with(&format!("{module}::")) || module.is_empty() {
                    out.insert(t);
                }
            }
        }
        i = end;
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .filter(|(m, _)| !m.is_empty() && m.as_str() != "main")
        .map(|(m, code)| (m.clone(), imports(m, code, &known)))
        .collect()
}

#[test]
fn the_import_graph_has_no_cycle() {
    let g = graph();
    // Depth-first search; a module met again on the current path closes a cycle.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == m) {
            let mut cycle = path[at..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(cycle) = visit(m, &g, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
    // The check sees imports at all (a parser that found nothing would pass vacuously).
    assert!(g["reload"].contains("creds::store"), "{:?}", g["reload"]);
}

#[test]
fn creds_and_tls_import_no_later_stage() {
    for (m, deps) in graph() {
        if m.starts_with("creds") || m == "tls" {
            let later: Vec<&String> = deps
                .iter()
                .filter(|d| !d.starts_with("creds") && d.as_str() != "reason")
                .collect();
            assert!(later.is_empty(), "{m} imports {later:?}");
        }
    }
}

#[test]
fn no_module_imports_its_parent() {
    for (m, deps) in graph() {
        for d in deps {
            assert!(
                !m.starts_with(&format!("{d}::")),
                "{m} imports its parent {d}: move what it needs into a child"
            );
        }
    }
}
