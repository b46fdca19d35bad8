//! The layering around the transport seam, checked on the sources: the client, the
//! transports and what they sit on import nothing that imports them back. A module's
//! imports are the `crate::…` and `super::…` paths in its code (comments and the
//! `#[cfg(test)] mod tests` block left out).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Modules that must stay out of every import cycle.
const ACYCLIC: &[&str] = &[
    "client",
    "transport",
    "transport::inproc",
    "transport::shm",
    "transport::shm::client",
    "bulk",
    "coroutine",
    "sync",
    "admin_api",
];

fn module_sources(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("dir entry").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            module_sources(&path, &format!("{prefix}{stem}::"), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = match stem {
                "mod" => prefix.trim_end_matches("::").to_string(),
                _ => format!("{prefix}{stem}"),
            };
            out.insert(name, std::fs::read_to_string(&path).expect("source"));
        }
    }
}

/// Code without comments and without the unit-test module.
fn code(source: &str) -> String {
    let source = source
        .split("#[cfg(test)]\nmod ")
        .next()
        .unwrap_or_default();
    source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths `code` names after `marker` (`crate::` or `super::`).
fn paths_after<'a>(code: &'a str, marker: &str) -> Vec<&'a str> {
    code.match_indices(marker)
        .map(|(at, _)| {
            let rest = &code[at + marker.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut edges = BTreeMap::new();
    for (name, source) in modules {
        let code = code(source);
        let parent = name.rsplit_once("::").map(|(p, _)| p);
        let mut targets = BTreeSet::new();
        let named = paths_after(&code, "crate::")
            .into_iter()
            .map(str::to_string)
            .chain(
                paths_after(&code, "super::")
                    .into_iter()
                    .filter_map(|p| parent.map(|parent| format!("{parent}::{p}"))),
            );
        for path in named {
            let parts: Vec<_> = path.split("::").filter(|p| !p.is_empty()).collect();
            let target = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find_map(|candidate| modules.get_key_value(&candidate).map(|(k, _)| k));
            if let Some(target) = target.filter(|t| *t != name) {
                targets.insert(target.as_str());
            }
        }
        edges.insert(name.as_str(), targets);
    }
    edges
}

/// A path of imports from `from` back to `from`, if any.
fn cycle_through<'a>(
    edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
    from: &'a str,
) -> Option<Vec<&'a str>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from]];
    while let Some(path) = stack.pop() {
        let last = path[path.len() - 1];
        for &next in edges.get(last).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(from);
                return Some(cycle);
            }
            if seen.insert(next) {
                let mut longer = path.clone();
                longer.push(next);
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_client_and_its_transports_are_in_no_import_cycle() {
    let mut modules = BTreeMap::new();
    module_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut modules,
    );
    let edges = imports(&modules);
    for module in ACYCLIC {
        assert!(edges.contains_key(module), "no module `{module}`");
        if let Some(cycle) = cycle_through(&edges, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}
