//! The layering of the core, checked on the sources: no file imports anything that
//! imports it back, and the shared-memory building blocks import nothing outside
//! `shm`. A module's imports are the `crate::…` and `super::…` paths in its code
//! (comments and the `#[cfg(test)] mod tests` block left out).
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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

fn core_imports() -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeMap::new();
    module_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut modules,
    );
    imports(&modules)
        .into_iter()
        .map(|(module, targets)| {
            let targets = targets.into_iter().map(str::to_string).collect();
            (module.to_string(), targets)
        })
        .collect()
}

#[test]
fn no_core_file_is_in_an_import_cycle() {
    let owned = core_imports();
    let edges: BTreeMap<&str, BTreeSet<&str>> = owned
        .iter()
        .map(|(module, targets)| {
            (
                module.as_str(),
                targets.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    // The layers the design names must be there to be checked.
    for module in [
        "client",
        "transport",
        "transport::inproc",
        "transport::shm",
        "transport::shm::server",
        "transport::shm::client",
        "transport::shm::client_area",
        "transport::shm::wire",
        "runtime",
        "runtime::task",
        "runtime::worker",
        "runtime::pool",
        "runtime::context",
        "runtime::module",
    ] {
        assert!(edges.contains_key(module), "no module `{module}`");
    }
    for module in edges.keys() {
        if let Some(cycle) = cycle_through(&edges, module) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn shm_building_blocks_import_nothing_outside_shm() {
    for (module, targets) in core_imports() {
        if module == "shm" || module.starts_with("shm::") {
            for target in targets {
                assert!(
                    target == "shm" || target.starts_with("shm::"),
                    "`{module}` imports `{target}`: shm's building blocks know nothing of tasks"
                );
            }
        }
    }
}
