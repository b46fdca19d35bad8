//! `chimaera repo check [DIR]`: a repository's manifests, checked against each other and
//! against the modules linked into this binary.
//!
//! `#[chimod]` checks one module's code against its manifests when that module is
//! compiled; this command checks what no single compilation sees: the repository
//! manifest `DIR/chimaera_repo.yaml` and every module it lists, whose
//! `chimaera_mod.yaml` is looked for in `DIR/chimods/<name>/`, then `DIR/<name>/`.
//!
//! Problems reported (all of them, not just the first; exit code 1 if any):
//!
//! * the repository manifest missing, malformed, without `namespace` or `modules`, or
//!   listing a module twice;
//! * a listed module without a manifest, or a module manifest under `DIR/chimods/` that
//!   is not listed;
//! * a module manifest that is malformed, lacks `module_name`/`namespace`/`version`,
//!   names another module than the one listed, or has another namespace than the
//!   repository;
//! * method entries: an id used twice, a custom method (not one of the inherited
//!   `kCreate` … `kUpgrade`) below 10, an inherited method with other than its fixed
//!   id, `kCreate` missing or disabled;
//! * for a module linked into this binary: its generated method table (what the build
//!   was compiled from) differs from the manifest on disk — a stale build or an edited
//!   manifest.
use super::{fail, FAILED};
use crate::{MethodInfo, RuntimeBuilder};
use chimaera_core::module::ModuleEntry;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const REPO_FILE: &str = "chimaera_repo.yaml";
const MODULE_FILE: &str = "chimaera_mod.yaml";

/// The inherited methods and their fixed ids (the rules `#[chimod]` enforces).
const INHERITED: [(&str, u32); 6] = [
    ("kCreate", 0),
    ("kDestroy", 1),
    ("kNodeFailure", 2),
    ("kRecover", 3),
    ("kMigrate", 4),
    ("kUpgrade", 5),
];
/// The first id a custom method may use.
const FIRST_CUSTOM_ID: u32 = 10;

pub(super) fn check(builder: &RuntimeBuilder, dir: &Path) -> ExitCode {
    let report = check_repo(dir, builder.modules());
    for line in &report.ok {
        println!("{line}");
    }
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    if report.problems.is_empty() {
        println!(
            "repo check: {} module(s), no problem found",
            report.ok.len()
        );
        ExitCode::SUCCESS
    } else {
        fail(
            FAILED,
            format!("repo check: {} problem(s) found", report.problems.len()),
        )
    }
}

/// What the check found: one line per module without problems, one per problem.
#[derive(Debug, Default)]
struct Report {
    ok: Vec<String>,
    problems: Vec<String>,
}

/// A file of the repository: where it is, and how messages name it.
struct File {
    path: PathBuf,
    display: String,
}

impl File {
    fn new(dir: &Path, relative: &Path) -> File {
        let display = if dir == Path::new(".") {
            relative.display().to_string()
        } else {
            dir.join(relative).display().to_string()
        };
        File {
            path: dir.join(relative),
            display,
        }
    }

    /// `file:line` for a 1-based line, just the file for 0.
    fn at(&self, line: usize) -> String {
        if line == 0 {
            self.display.clone()
        } else {
            format!("{}:{line}", self.display)
        }
    }

    fn read_mapping(&self, problems: &mut Vec<String>) -> Option<(String, Mapping)> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(err) => {
                problems.push(format!("{}: cannot read: {err}", self.display));
                return None;
            }
        };
        match serde_yaml::from_str::<Value>(&text) {
            Ok(Value::Mapping(mapping)) => Some((text, mapping)),
            Ok(_) => {
                problems.push(format!(
                    "{}: malformed: expected `key: value` lines",
                    self.display
                ));
                None
            }
            Err(err) => {
                let line = err.location().map_or(0, |l| l.line());
                problems.push(format!("{}: malformed: {err}", self.at(line)));
                None
            }
        }
    }
}

fn check_repo<'m>(dir: &Path, linked: impl Iterator<Item = &'m ModuleEntry>) -> Report {
    let mut report = Report::default();
    let problems = &mut report.problems;
    let repo = File::new(dir, Path::new(REPO_FILE));
    if !repo.path.is_file() {
        problems.push(format!(
            "{}: not found; is {} the root of a chimod repository?",
            repo.display,
            dir.display()
        ));
        return report;
    }
    let Some((text, mapping)) = repo.read_mapping(problems) else {
        return report;
    };
    let namespace = match mapping.get("namespace").and_then(plain_text) {
        Some(namespace) => namespace,
        None => {
            problems.push(format!(
                "{}: no `namespace`; add a `namespace: …` line",
                repo.at(line_of(&text, "namespace"))
            ));
            String::new()
        }
    };
    let listed = listed_modules(&repo, &text, &mapping, problems);
    let linked: Vec<&ModuleEntry> = linked.collect();
    for name in &listed {
        if let Some(ok) = check_module(dir, name, &namespace, &linked, problems) {
            report.ok.push(ok);
        }
    }
    check_unlisted(dir, &repo, &listed, &mut report.problems);
    report
}

/// The `modules:` list, each name once.
fn listed_modules(
    repo: &File,
    text: &str,
    mapping: &Mapping,
    problems: &mut Vec<String>,
) -> Vec<String> {
    let at = repo.at(line_of(text, "modules"));
    let Some(Value::Sequence(entries)) = mapping.get("modules") else {
        problems.push(format!(
            "{at}: no `modules:` list; list the repository's modules by name"
        ));
        return Vec::new();
    };
    let mut names = Vec::new();
    for entry in entries {
        match plain_text(entry) {
            Some(name) if names.contains(&name) => {
                problems.push(format!("{at}: module `{name}` is listed twice"));
            }
            Some(name) if is_plain_name(&name) => names.push(name),
            _ => problems.push(format!(
                "{at}: `{}` is not a module name; list module names, one per line",
                describe(entry)
            )),
        }
    }
    names
}

/// Checks the manifest of listed module `name`; a line for the report if all is well.
fn check_module(
    dir: &Path,
    name: &str,
    namespace: &str,
    linked: &[&ModuleEntry],
    problems: &mut Vec<String>,
) -> Option<String> {
    let candidates = [
        Path::new("chimods").join(name).join(MODULE_FILE),
        Path::new(name).join(MODULE_FILE),
    ];
    let Some(file) = candidates
        .iter()
        .map(|relative| File::new(dir, relative))
        .find(|file| file.path.is_file())
    else {
        problems.push(format!(
            "module `{name}` is listed in {REPO_FILE} but has no manifest: neither {} nor {} exists",
            File::new(dir, &candidates[0]).display,
            File::new(dir, &candidates[1]).display
        ));
        return None;
    };
    let before = problems.len();
    let (text, mapping) = file.read_mapping(problems)?;
    let field = |key: &str, problems: &mut Vec<String>| {
        let value = mapping.get(key).and_then(plain_text);
        if value.is_none() {
            problems.push(format!(
                "{}: no `{key}`; add a `{key}: …` line",
                file.display
            ));
        }
        value
    };
    let module_name = field("module_name", problems);
    let module_namespace = field("namespace", problems);
    field("version", problems);
    if let Some(module_name) = &module_name {
        if module_name != name {
            problems.push(format!(
                "{}: `module_name: {module_name}`, but {REPO_FILE} lists this module as `{name}`; make them equal",
                file.at(line_of(&text, "module_name"))
            ));
        }
    }
    if let Some(module_namespace) = &module_namespace {
        if !namespace.is_empty() && module_namespace != namespace {
            problems.push(format!(
                "{}: `namespace: {module_namespace}`, but the repository's namespace is `{namespace}`; make them equal",
                file.at(line_of(&text, "namespace"))
            ));
        }
    }
    let methods = check_methods(&file, &text, &mapping, problems);
    let linked_entry = linked.iter().find(|entry| entry.info.name == name);
    let linked_note = match linked_entry {
        Some(entry) => {
            compare_linked(
                &file,
                entry,
                module_namespace.as_deref(),
                &methods,
                problems,
            );
            "matches the linked build"
        }
        None => "not linked into this binary",
    };
    (problems.len() == before).then(|| {
        format!(
            "ok  {name:<12} {}  {} method(s), {linked_note}",
            file.display,
            methods.len()
        )
    })
}

/// The enabled method entries (name → id), after checking every entry.
fn check_methods(
    file: &File,
    text: &str,
    mapping: &Mapping,
    problems: &mut Vec<String>,
) -> BTreeMap<String, u32> {
    let mut methods = BTreeMap::new();
    let mut by_id: BTreeMap<u32, String> = BTreeMap::new();
    let mut create_seen = false;
    for (key, value) in mapping {
        let Some(entry) = key.as_str() else {
            problems.push(format!(
                "{}: key `{}` is not a name",
                file.display,
                describe(key)
            ));
            continue;
        };
        if matches!(entry, "module_name" | "namespace" | "version") {
            continue;
        }
        let at = file.at(line_of(text, entry));
        if !is_entry_name(entry) {
            problems.push(format!(
                "{at}: unexpected key `{entry}`; expected `module_name`, `namespace`, `version` or a method entry like `kCustom: 10`"
            ));
            continue;
        }
        let id = match value.as_i64() {
            Some(-1) => None,
            Some(id) if (0..=i64::from(u32::MAX)).contains(&id) => Some(id as u32),
            _ => {
                problems.push(format!(
                    "{at}: `{entry}` is `{}`; a method id is 0 or more, or -1 for not implemented",
                    describe(value)
                ));
                continue;
            }
        };
        if entry == "kCreate" {
            create_seen = true;
            if id.is_none() {
                problems.push(format!(
                    "{at}: `kCreate` is -1; every module implements it: write `kCreate: 0`"
                ));
            }
        }
        let Some(id) = id else { continue };
        let inherited = INHERITED.iter().find(|(name, _)| *name == entry);
        match inherited {
            Some((_, fixed)) if *fixed != id => {
                problems.push(format!(
                    "{at}: `{entry}` is inherited with the fixed id {fixed}, not {id}; write `{entry}: {fixed}` (or -1)"
                ));
                continue;
            }
            None if id < FIRST_CUSTOM_ID => {
                problems.push(format!(
                    "{at}: custom method `{entry}: {id}` uses an id below {FIRST_CUSTOM_ID}, reserved for inherited methods; use {FIRST_CUSTOM_ID} or more"
                ));
                continue;
            }
            _ => {}
        }
        if let Some(first) = by_id.insert(id, entry.to_owned()) {
            problems.push(format!(
                "{at}: `{first}` and `{entry}` are both {id}; give each method its own id"
            ));
            continue;
        }
        methods.insert(entry.to_owned(), id);
    }
    if !create_seen {
        problems.push(format!(
            "{}: no `kCreate`; every module implements it: add `kCreate: 0`",
            file.display
        ));
    }
    methods
}

/// Compares a manifest on disk with the method table the linked build was generated from.
fn compare_linked(
    file: &File,
    entry: &ModuleEntry,
    namespace: Option<&str>,
    manifest: &BTreeMap<String, u32>,
    problems: &mut Vec<String>,
) {
    let info = entry.info;
    let rebuild = "rebuild this binary, or fix the manifest";
    if let Some(namespace) = namespace {
        if info.namespace != namespace {
            problems.push(format!(
                "{}: namespace `{namespace}`, but the linked module `{}` was built with `{}`; {rebuild}",
                file.display, info.name, info.namespace
            ));
        }
    }
    let built: BTreeMap<&str, &MethodInfo> = info.methods.iter().map(|m| (m.name, m)).collect();
    for (name, id) in manifest {
        match built.get(name.as_str()) {
            Some(method) if method.id == *id => {}
            Some(method) => problems.push(format!(
                "{}: `{name}: {id}`, but the linked module `{}` has `{name}` at {}; {rebuild}",
                file.display, info.name, method.id
            )),
            None => problems.push(format!(
                "{}: `{name}: {id}`, but the linked module `{}` has no such method; {rebuild}",
                file.display, info.name
            )),
        }
    }
    for method in info.methods {
        if !manifest.contains_key(method.name) {
            problems.push(format!(
                "{}: no enabled `{}`, but the linked module `{}` has it at {} (fn {}); {rebuild}",
                file.display, method.name, info.name, method.id, method.function
            ));
        }
    }
}

/// Module manifests under `DIR/chimods/` whose module the repository does not list.
fn check_unlisted(dir: &Path, repo: &File, listed: &[String], problems: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir.join("chimods")) else {
        return;
    };
    let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
    let mut unlisted: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join(MODULE_FILE).is_file())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .filter(|name| !listed.contains(name.as_str()))
        .collect();
    unlisted.sort();
    for name in unlisted {
        let file = File::new(dir, &Path::new("chimods").join(&name).join(MODULE_FILE));
        problems.push(format!(
            "{}: module `{name}` is not listed under `modules:` in {}; add it",
            file.display, repo.display
        ));
    }
}

/// A scalar as text (numbers and booleans too, as YAML writes them), else `None`.
fn plain_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A value for a message.
fn describe(value: &Value) -> String {
    plain_text(value).unwrap_or_else(|| match value {
        Value::Null => "null".to_owned(),
        _ => "…".to_owned(),
    })
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

/// `kName` with an upper-case letter after the `k`, letters and digits only.
fn is_entry_name(name: &str) -> bool {
    name.len() > 1
        && name.starts_with('k')
        && name[1..].starts_with(|c: char| c.is_ascii_uppercase())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The 1-based line where `key:` starts a line, `0` if none does.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map_or(0, |index| index + 1)
}
