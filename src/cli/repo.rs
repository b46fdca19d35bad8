//! `chimaera repo check [DIR]`: a repository's manifests, checked against each other and
//! against the modules linked into this binary.
//!
//! `#[chimod]` checks one module's code against its manifests when that module is
//! compiled; this command checks what no single compilation sees. The manifests are read
//! and checked by `chimaera-manifest` (the parser and rules the macros use; see
//! [`chimaera_manifest::repository`] for the list of problems); this file adds the one
//! check only a binary can make: for a module linked into it, its generated method table
//! (what the build was compiled from) against the manifest on disk — a stale build or an
//! edited manifest. Every problem is printed as `file:line:column: message`; the exit
//! code is 1 if there is any.
use super::{fail, FAILED};
use crate::{MethodInfo, RuntimeBuilder};
use chimaera_core::module::ModuleEntry;
use chimaera_manifest::repository::check_repository;
use chimaera_manifest::ModuleManifest;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

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

fn check_repo<'m>(dir: &Path, linked: impl Iterator<Item = &'m ModuleEntry>) -> Report {
    let linked: Vec<&ModuleEntry> = linked.collect();
    let repository = check_repository(dir);
    let mut report = Report {
        ok: Vec::new(),
        problems: repository
            .problems
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    for module in &repository.modules {
        let before = report.problems.len();
        report
            .problems
            .extend(module.problems.iter().map(ToString::to_string));
        let Some(manifest) = &module.manifest else {
            continue;
        };
        let linked_entry = linked.iter().find(|entry| entry.info.name == module.name);
        let linked_note = match linked_entry {
            Some(entry) => {
                compare_linked(manifest, entry, &mut report.problems);
                "matches the linked build"
            }
            None => "not linked into this binary",
        };
        if report.problems.len() == before {
            report.ok.push(format!(
                "ok  {:<12} {}  {} method(s), {linked_note}",
                module.name,
                manifest.path.display,
                manifest.enabled().count()
            ));
        }
    }
    report
}

/// Compares a manifest on disk with the method table the linked build was generated from.
fn compare_linked(manifest: &ModuleManifest, entry: &ModuleEntry, problems: &mut Vec<String>) {
    let info = entry.info;
    let rebuild = "rebuild this binary, or fix the manifest";
    if info.namespace != manifest.namespace.value {
        problems.push(format!(
            "{}: namespace `{}`, but the linked module `{}` was built with `{}`; {rebuild}",
            manifest.namespace.place, manifest.namespace.value, info.name, info.namespace
        ));
    }
    let built: BTreeMap<&str, &MethodInfo> = info.methods.iter().map(|m| (m.name, m)).collect();
    for entry in &manifest.entries {
        let (name, place) = (entry.name.as_str(), &entry.place);
        let Some(id) = entry.id else { continue };
        match built.get(name) {
            Some(method) if method.id == id => {}
            Some(method) => problems.push(format!(
                "{place}: `{name}: {id}`, but the linked module `{}` has `{name}` at {}; {rebuild}",
                info.name, method.id
            )),
            None => problems.push(format!(
                "{place}: `{name}: {id}`, but the linked module `{}` has no such method; {rebuild}",
                info.name
            )),
        }
    }
    for method in info.methods {
        if manifest
            .entry(method.name)
            .and_then(|entry| entry.id)
            .is_none()
        {
            let place = manifest
                .entry(method.name)
                .map_or_else(|| manifest.path.whole(), |entry| entry.place.clone());
            problems.push(format!(
                "{place}: no enabled `{}`, but the linked module `{}` has it at {} (fn {}); {rebuild}",
                method.name, info.name, method.id, method.function
            ));
        }
    }
}
