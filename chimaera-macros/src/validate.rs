//! Every check of a chimod against the rules and its manifests.
//!
//! Checks only read the model and the parsed manifests, and report each problem into the
//! [`Ctxt`] on the token at fault: the id literal for a wrong id, the function name for a
//! task the manifest lacks, the impl's self type for a manifest entry the code lacks, the
//! `name` literal for a module name mismatch. Messages are lower-case, name the manifest
//! by its display path (never an absolute one) and say how to fix the problem.
//!
//! The rules: ids 0–9 are inherited (`INHERITED`), each with a fixed name; custom tasks
//! use 10 and up; no id twice (in code or manifest); every task is in the manifest with
//! its id; every enabled entry has a task; `-1` entries are not implemented; `kCreate`
//! is 0 and implemented; no task name clashes with a generated client method.
use crate::ctxt::Ctxt;
use crate::manifest::{ModuleManifest, RepoManifest};
use crate::model::{ChimodImpl, ChimodStruct, Task};
use crate::names;
use proc_macro2::Span;
use std::collections::{BTreeMap, BTreeSet};

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

/// Methods of the generated client that do not come from a task and that no task may
/// take. (The convenience `destroy_pool` is not among them: a task of that name, like
/// admin's `kDestroyPool`, replaces it; see `expand::client`.)
const CLIENT_METHODS: [&str; 8] = [
    "create",
    "create_with",
    "open",
    "attach",
    "pool_id",
    "client",
    "with_deadline",
    "without_deadline",
];

fn inherited_id(entry: &str) -> Option<u32> {
    INHERITED
        .iter()
        .find(|(name, _)| *name == entry)
        .map(|(_, id)| *id)
}

fn inherited_list() -> String {
    INHERITED
        .iter()
        .map(|(name, id)| format!("{name} {id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the container struct: lanes, module name, namespace against the repository.
pub fn check_struct(
    cx: &Ctxt,
    model: &ChimodStruct,
    module: Option<&ModuleManifest>,
    repo: Option<&RepoManifest>,
) {
    let lanes = &model.args.lanes;
    if lanes.low.saturating_add(lanes.high) == 0 {
        cx.error_at(
            lanes.span,
            "a container needs at least one lane; use e.g. `lanes(low = 1)`",
        );
    }
    let Some(module) = module else {
        return;
    };
    if let Some(name) = &model.args.name {
        if name.value() != module.module_name {
            cx.error_spanned_by(
                name,
                format!(
                    "`name = \"{}\"` but `{}` says `module_name: {}`; make them agree",
                    name.value(),
                    module.location.display,
                    module.module_name
                ),
            );
        }
    }
    if let Some(repo) = repo {
        if repo.namespace != module.namespace {
            let at = model
                .args
                .manifest
                .as_ref()
                .or(model.args.name.as_ref())
                .map_or_else(Span::call_site, |lit| lit.span());
            cx.error_at(
                at,
                format!(
                    "namespace `{}` in `{}` differs from namespace `{}` in `{}`; a module lives in its repository's namespace",
                    module.namespace,
                    module.location.display,
                    repo.namespace,
                    repo.location.display
                ),
            );
        }
    }
}

/// Checks the tasks; returns the names of tasks whose client methods must not be
/// generated (they clash with other generated names).
pub fn check_impl(
    cx: &Ctxt,
    model: &ChimodImpl,
    module: Option<&ModuleManifest>,
) -> BTreeSet<String> {
    check_create_exists(cx, model);
    let bad_ids = check_ids(cx, model);
    if let Some(module) = module {
        check_tasks_against_manifest(cx, model, module, &bad_ids);
        check_manifest_entries(cx, model, module);
    }
    check_collisions(cx, model)
}

fn check_create_exists(cx: &Ctxt, model: &ChimodImpl) {
    if model.create().is_none() && !model.broken.iter().any(|name| name == "kCreate") {
        cx.error_spanned_by(
            &model.item.self_ty,
            "a chimod needs a `kCreate` task; add `#[task(method = 0)] fn create(ctx: &mut RunContext, …) -> Result<Self, TaskError>`",
        );
    }
}

/// The rules on ids that hold whatever the manifest says; returns the names of the
/// tasks whose id broke one (their manifest comparison would only repeat the problem).
fn check_ids<'m>(cx: &Ctxt, model: &'m ChimodImpl) -> BTreeSet<&'m str> {
    let mut seen: BTreeMap<u32, &Task> = BTreeMap::new();
    let mut bad = BTreeSet::new();
    for task in &model.tasks {
        let errors_before = cx.len();
        match inherited_id(&task.entry) {
            Some(fixed) if fixed != task.id => cx.error_at(
                task.id_span(),
                format!(
                    "`{}` is inherited with the fixed id {fixed}; write `method = {fixed}`",
                    task.entry
                ),
            ),
            Some(_) => {}
            None if task.id < FIRST_CUSTOM_ID => cx.error_at(
                task.id_span(),
                format!(
                    "ids 0-9 are reserved for inherited methods ({}); give `fn {}` an id of {FIRST_CUSTOM_ID} or more",
                    inherited_list(),
                    task.name
                ),
            ),
            None => {}
        }
        if let Some(first) = seen.get(&task.id) {
            cx.error_at(
                task.id_span(),
                format!(
                    "`method = {}` is already used by `fn {}`; each task needs its own id",
                    task.id, first.name
                ),
            );
        } else {
            seen.insert(task.id, task);
        }
        if cx.len() > errors_before {
            bad.insert(task.name.as_str());
        }
    }
    bad
}

fn check_tasks_against_manifest(
    cx: &Ctxt,
    model: &ChimodImpl,
    module: &ModuleManifest,
    bad_ids: &BTreeSet<&str>,
) {
    let file = &module.location;
    for task in model
        .tasks
        .iter()
        .filter(|t| !bad_ids.contains(t.name.as_str()))
    {
        match module.entry(&task.entry) {
            None => cx.error_spanned_by(
                &task.sig.ident,
                format!(
                    "`{}` is not in `{}`; add the line `{}: {}` there",
                    task.entry, file.display, task.entry, task.id
                ),
            ),
            Some(entry) => match entry.id {
                // The manifest check says why `kCreate` cannot be -1.
                None if task.is_create() => {}
                None => cx.error_at(
                    task.id_span(),
                    format!(
                        "`{}` is -1 (not implemented) in `{}`; set it to `{}` there or remove this task",
                        task.entry,
                        entry.at(file),
                        task.id
                    ),
                ),
                Some(id) if id != task.id => cx.error_at(
                    task.id_span(),
                    format!(
                        "`{}` is {id} in `{}` but `method = {}` here; make them agree",
                        task.entry,
                        entry.at(file),
                        task.id
                    ),
                ),
                Some(_) => {}
            },
        }
    }
}

fn check_manifest_entries(cx: &Ctxt, model: &ChimodImpl, module: &ModuleManifest) {
    let file = &module.location;
    let self_ty = &model.item.self_ty;
    let implemented: BTreeSet<&str> = model
        .tasks
        .iter()
        .map(|t| t.entry.as_str())
        .chain(model.broken.iter().map(String::as_str))
        .collect();
    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    let reported_on_task = |entry: &crate::manifest::Entry| {
        model
            .tasks
            .iter()
            .any(|t| t.entry == entry.name && Some(t.id) == entry.id)
    };
    for entry in &module.entries {
        let at = entry.at(file);
        let Some(id) = entry.id else {
            continue;
        };
        match inherited_id(&entry.name) {
            _ if reported_on_task(entry) => {}
            Some(fixed) if fixed != id => {
                cx.error_spanned_by(
                    self_ty,
                    format!(
                        "`{}` is inherited with the fixed id {fixed} but `{at}` says {id}; write `{}: {fixed}` (or -1)",
                        entry.name, entry.name
                    ),
                );
                continue;
            }
            None if id < FIRST_CUSTOM_ID => {
                cx.error_spanned_by(
                    self_ty,
                    format!(
                        "`{}: {id}` in `{at}` uses an id reserved for inherited methods ({}); custom methods use {FIRST_CUSTOM_ID} and up",
                        entry.name,
                        inherited_list()
                    ),
                );
                continue;
            }
            _ => {}
        }
        if let Some(first) = ids.insert(id, &entry.name) {
            cx.error_spanned_by(
                self_ty,
                format!(
                    "`{first}` and `{}` are both {id} in `{}`; give each method its own id",
                    entry.name, file.display
                ),
            );
            continue;
        }
        let is_create = entry.name == "kCreate";
        if !is_create && !implemented.contains(entry.name.as_str()) {
            cx.error_spanned_by(
                self_ty,
                format!(
                    "`{}: {id}` in `{at}` has no task; add `#[task(method = {id})] fn {}` or set it to -1",
                    entry.name,
                    names::function_of_entry(&entry.name)
                ),
            );
        }
    }
    match module.entry("kCreate") {
        Some(entry) if entry.id.is_some() => {}
        Some(entry) => cx.error_spanned_by(
            self_ty,
            format!(
                "`kCreate` is -1 in `{}`; every module implements it: write `kCreate: 0`",
                entry.at(file)
            ),
        ),
        // A `create` task is reported as missing from the manifest already.
        None if model.create().is_some() => {}
        None => cx.error_spanned_by(
            self_ty,
            format!(
                "`{}` has no `kCreate`; every module implements it: add `kCreate: 0`",
                file.display
            ),
        ),
    }
}

/// Task names the generated client or method table already uses.
fn check_collisions(cx: &Ctxt, model: &ChimodImpl) -> BTreeSet<String> {
    let client = names::client_type(&model.ident.to_string());
    let module = names::tasks_module(&model.ident.to_string());
    let mut skipped = BTreeSet::new();
    let with_client: Vec<&Task> = model
        .tasks
        .iter()
        .filter(|t| t.has_client_methods())
        .collect();
    for task in &model.tasks {
        if task.name == "methods" {
            cx.error_spanned_by(
                &task.sig.ident,
                format!("task `fn methods` clashes with the generated method table `{module}::METHODS`; rename the task"),
            );
        }
    }
    for task in &with_client {
        if CLIENT_METHODS.contains(&task.name.as_str()) {
            cx.error_spanned_by(
                &task.sig.ident,
                format!(
                    "task `fn {}` clashes with the generated `{client}::{}`; rename the task",
                    task.name, task.name
                ),
            );
            skipped.insert(task.name.clone());
            continue;
        }
        for other in &with_client {
            for prefix in ["async_", "spawn_"] {
                if task.name == format!("{prefix}{}", other.name) {
                    cx.error_spanned_by(
                        &task.sig.ident,
                        format!(
                            "task `fn {}` clashes with `{client}::{}`, generated for `fn {}`; rename one of them",
                            task.name, task.name, other.name
                        ),
                    );
                    skipped.insert(task.name.clone());
                }
            }
        }
    }
    skipped
}
