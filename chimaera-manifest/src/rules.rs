//! The rules a module manifest follows, whatever code implements it.
//!
//! Ids 0–9 belong to the inherited methods ([`INHERITED`]), each with a fixed name and
//! id; custom methods use [`FIRST_CUSTOM_ID`] and up; no id twice; `kCreate` is present
//! and enabled (`-1` marks any other method as not implemented). The macros add the
//! rules that need the code (every task in the manifest with its id, every enabled
//! entry with a task); `chimaera repo check` adds those that need the repository.
use crate::module::ModuleManifest;
use crate::problem::{Problem, ProblemKind};
use crate::repo::RepoManifest;
use std::collections::BTreeMap;

/// The inherited methods: manifest name and fixed id.
pub const INHERITED: [(&str, u32); 6] = [
    ("kCreate", 0),
    ("kDestroy", 1),
    ("kNodeFailure", 2),
    ("kRecover", 3),
    ("kMigrate", 4),
    ("kUpgrade", 5),
];

/// The first id a custom method may use.
pub const FIRST_CUSTOM_ID: u32 = 10;

/// The fixed id of inherited method `entry`, `None` for a custom method.
pub fn inherited_id(entry: &str) -> Option<u32> {
    INHERITED
        .iter()
        .find(|(name, _)| *name == entry)
        .map(|(_, id)| *id)
}

/// `kCreate 0, kDestroy 1, …` for messages.
pub fn inherited_list() -> String {
    INHERITED
        .iter()
        .map(|(name, id)| format!("{name} {id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every rule `manifest` breaks, in file order (a missing `kCreate` last).
pub(crate) fn check_module(manifest: &ModuleManifest) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    for entry in &manifest.entries {
        let problem = |kind| Problem::new(entry.place.clone(), kind);
        let Some(id) = entry.id else {
            if entry.name == "kCreate" {
                problems.push(problem(ProblemKind::CreateDisabled));
            }
            continue;
        };
        match inherited_id(&entry.name) {
            Some(fixed) if fixed != id => {
                problems.push(problem(ProblemKind::InheritedWrongId {
                    entry: entry.name.clone(),
                    fixed,
                    id,
                }));
                continue;
            }
            None if id < FIRST_CUSTOM_ID => {
                problems.push(problem(ProblemKind::ReservedId {
                    entry: entry.name.clone(),
                    id,
                }));
                continue;
            }
            _ => {}
        }
        if let Some(first) = ids.insert(id, &entry.name) {
            problems.push(problem(ProblemKind::DuplicateId {
                first: first.to_owned(),
                entry: entry.name.clone(),
                id,
            }));
        }
    }
    if manifest.entry("kCreate").is_none() {
        problems.push(Problem::new(
            manifest.path.whole(),
            ProblemKind::CreateMissing,
        ));
    }
    problems
}

/// The module's namespace against its repository's: a problem at the module's
/// `namespace` value if they differ.
pub fn check_namespace(module: &ModuleManifest, repo: &RepoManifest) -> Option<Problem> {
    (module.namespace.value != repo.namespace.value).then(|| {
        Problem::new(
            module.namespace.place.clone(),
            ProblemKind::NamespaceMismatch {
                module: module.namespace.value.clone(),
                repo: repo.namespace.value.clone(),
                repo_file: repo.path.display.clone(),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use crate::module::parse_module;
    use crate::place::ManifestPath;

    fn problems(entries: &str) -> Vec<String> {
        let text = format!("module_name: m\nnamespace: n\nversion: 1\n{entries}");
        let path = ManifestPath {
            path: "/m.yaml".into(),
            display: "m.yaml".to_owned(),
        };
        parse_module(&text, path)
            .unwrap()
            .check()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_manifest_breaks_no_rule() {
        assert_eq!(
            problems("kCreate: 0\nkDestroy: -1\nkCustom: 10\nkOther: 11\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_broken_rule_is_reported_at_the_id() {
        assert_eq!(
            problems("kCreate: -1\nkRecover: 4\nkFast: 5\nkPut: 12\nkGet: 12\n"),
            [
                "m.yaml:4:10: `kCreate` is -1; every module implements it: write `kCreate: 0`",
                "m.yaml:5:11: `kRecover` is inherited with the fixed id 3, not 4; write `kRecover: 3` (or -1)",
                "m.yaml:6:8: custom method `kFast: 5` uses an id below 10, reserved for the inherited methods (kCreate 0, kDestroy 1, kNodeFailure 2, kRecover 3, kMigrate 4, kUpgrade 5); use 10 or more",
                "m.yaml:8:7: `kPut` and `kGet` are both 12; give each method its own id",
            ]
        );
        assert_eq!(
            problems("kCustom: 10\n"),
            ["m.yaml: no `kCreate`; every module implements it: add `kCreate: 0`"]
        );
    }
}
