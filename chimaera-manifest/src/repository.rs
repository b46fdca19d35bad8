//! A whole repository: `DIR/chimaera_repo.yaml` and the manifest of every module it
//! lists, checked against each other — what no single compilation of one module sees.
//!
//! A listed module's `chimaera_mod.yaml` is looked for in `DIR/chimods/<name>/`, then
//! `DIR/<name>/`. Reported (all of them): the repository manifest missing or malformed,
//! without `namespace` or `modules`, or listing a module twice or a non-name; a listed
//! module without a manifest; a module manifest under `DIR/chimods/` that is not listed;
//! and for every listed module, its manifest's shape, [`crate::rules`], its
//! `module_name` against the listed name and its namespace against the repository's.
use crate::module::{read_module, Field, ModuleManifest};
use crate::place::{ManifestPath, MODULE_FILE, REPO_FILE};
use crate::problem::{Problem, ProblemKind};
use crate::repo::read_repo;
use crate::rules::check_namespace;
use std::collections::BTreeSet;
use std::path::Path;

/// What checking a repository found.
#[derive(Debug, Default)]
pub struct Repository {
    /// Every listed module, in list order.
    pub modules: Vec<ListedModule>,
    /// Problems of the repository as a whole (its manifest, unlisted modules).
    pub problems: Vec<Problem>,
}

/// A module the repository lists.
#[derive(Debug)]
pub struct ListedModule {
    /// The name in the list.
    pub name: String,
    /// Its manifest, when one was found and parsed.
    pub manifest: Option<ModuleManifest>,
    /// Problems of this module's manifest.
    pub problems: Vec<Problem>,
}

impl Repository {
    /// Every problem found, repository-wide ones first.
    pub fn all_problems(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .chain(self.modules.iter().flat_map(|module| &module.problems))
    }
}

/// Checks the repository rooted at `dir`; paths in messages are shown as `dir` joins
/// them (relative when `dir` is).
pub fn check_repository(dir: &Path) -> Repository {
    let mut report = Repository::default();
    let repo_path = ManifestPath::in_dir(dir, Path::new(REPO_FILE));
    if !repo_path.path.is_file() {
        report.problems.push(Problem::new(
            repo_path.whole(),
            ProblemKind::RepoNotFound {
                dir: dir.display().to_string(),
            },
        ));
        return report;
    }
    let repo = match read_repo(&repo_path) {
        Ok(repo) => repo,
        Err(problems) => {
            report.problems.extend(problems);
            return report;
        }
    };
    let Some(items) = &repo.modules else {
        report.problems.push(Problem::new(
            repo.modules_place.clone(),
            ProblemKind::NoModuleList,
        ));
        return report;
    };
    let mut listed: Vec<&Field> = Vec::new();
    for item in items {
        let name = &item.value;
        if listed.iter().any(|earlier| earlier.value == *name) {
            let kind = ProblemKind::ListedTwice { name: name.clone() };
            report.problems.push(Problem::new(item.place.clone(), kind));
        } else if is_plain_name(name) {
            listed.push(item);
        } else {
            let kind = ProblemKind::NotAModuleName {
                value: name.clone(),
            };
            report.problems.push(Problem::new(item.place.clone(), kind));
        }
    }
    for item in &listed {
        let name = &item.value;
        let candidates = [
            Path::new("chimods").join(name).join(MODULE_FILE),
            Path::new(name).join(MODULE_FILE),
        ]
        .map(|relative| ManifestPath::in_dir(dir, &relative));
        let Some(path) = candidates.iter().find(|path| path.path.is_file()) else {
            report.problems.push(Problem::new(
                item.place.clone(),
                ProblemKind::NoModuleManifest {
                    name: name.clone(),
                    repo_file: REPO_FILE,
                    candidates: candidates.iter().map(|c| c.display.clone()).collect(),
                },
            ));
            continue;
        };
        report.modules.push(check_listed(name, path, &repo));
    }
    let listed: BTreeSet<&str> = listed.iter().map(|item| item.value.as_str()).collect();
    check_unlisted(dir, &repo.path, &listed, &mut report.problems);
    report
}

fn check_listed(name: &str, path: &ManifestPath, repo: &crate::repo::RepoManifest) -> ListedModule {
    let manifest = match read_module(path) {
        Ok(manifest) => manifest,
        Err(problems) => {
            return ListedModule {
                name: name.to_owned(),
                manifest: None,
                problems,
            }
        }
    };
    let mut problems = Vec::new();
    if manifest.module_name.value != name {
        problems.push(Problem::new(
            manifest.module_name.place.clone(),
            ProblemKind::ModuleNameMismatch {
                module_name: manifest.module_name.value.clone(),
                listed: name.to_owned(),
                repo_file: REPO_FILE,
            },
        ));
    }
    problems.extend(check_namespace(&manifest, repo));
    problems.extend(manifest.check());
    ListedModule {
        name: name.to_owned(),
        manifest: Some(manifest),
        problems,
    }
}

/// Module manifests under `DIR/chimods/` whose module the repository does not list.
fn check_unlisted(
    dir: &Path,
    repo: &ManifestPath,
    listed: &BTreeSet<&str>,
    problems: &mut Vec<Problem>,
) {
    let Ok(entries) = std::fs::read_dir(dir.join("chimods")) else {
        return;
    };
    let mut unlisted: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join(MODULE_FILE).is_file())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .filter(|name| !listed.contains(name.as_str()))
        .collect();
    unlisted.sort();
    for name in unlisted {
        let path = ManifestPath::in_dir(dir, &Path::new("chimods").join(&name).join(MODULE_FILE));
        problems.push(Problem::new(
            path.whole(),
            ProblemKind::NotListed {
                name,
                repo_file: repo.display.clone(),
            },
        ));
    }
}

/// A module name that can be a directory name.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A repository in a fresh temporary directory: `files` are (relative path, text).
    fn repository(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("chimaera-manifest-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        root
    }

    fn shown(root: &Path, problems: impl Iterator<Item = impl ToString>) -> Vec<String> {
        let prefix = format!("{}/", root.display());
        problems
            .map(|problem| problem.to_string().replace(&prefix, ""))
            .collect()
    }

    #[test]
    fn every_problem_of_a_repository_is_placed_at_its_token() {
        let root = repository(
            "broken",
            &[
                (
                    "chimaera_repo.yaml",
                    "namespace: demo\nmodules:\n  - good\n  - ghost\n  - good\n  - [x]\n  - renamed\n",
                ),
                (
                    "chimods/good/chimaera_mod.yaml",
                    "module_name: good\nnamespace: demo\nversion: 1\nkCreate: 0\n",
                ),
                (
                    "renamed/chimaera_mod.yaml",
                    "module_name: other\nnamespace: elsewhere\nversion: 1\nkCreate: 0\nkRun: 3\n",
                ),
                (
                    "chimods/stray/chimaera_mod.yaml",
                    "module_name: stray\nnamespace: demo\nversion: 1\nkCreate: 0\n",
                ),
            ],
        );
        let report = check_repository(&root);
        let names: Vec<&str> = report.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["good", "renamed"]);
        assert!(report.modules[0].problems.is_empty());
        let problems = shown(&root, report.all_problems());
        let expected = [
            "chimaera_repo.yaml:5:5: module `good` is listed twice; list it once",
            "chimaera_repo.yaml:6:5: `…` is not a module name; list module names, one per line",
            "chimaera_repo.yaml:4:5: module `ghost` is listed in chimaera_repo.yaml but has no manifest",
            "chimods/stray/chimaera_mod.yaml: module `stray` is not listed under `modules:`",
            "renamed/chimaera_mod.yaml:1:14: `module_name: other`, but chimaera_repo.yaml lists this module as `renamed`",
            "renamed/chimaera_mod.yaml:2:12: namespace `elsewhere` differs from namespace `demo`",
            "renamed/chimaera_mod.yaml:5:7: custom method `kRun: 3` uses an id below 10",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for (problem, expected) in problems.iter().zip(expected) {
            assert!(
                problem.starts_with(expected),
                "{problem}\nexpected {expected}"
            );
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_directory_without_a_repository_manifest_is_one_problem() {
        let root = repository("empty", &[("README", "")]);
        let problems = shown(&root, check_repository(&root).all_problems());
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("chimaera_repo.yaml: not found"));
        std::fs::remove_dir_all(root).unwrap();
    }
}
