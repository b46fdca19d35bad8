//! Every check of a chimod against the rules and its manifests.
//!
//! Checks only read the model and the parsed manifests, and report each problem into the
//! [`Ctxt`] on the token at fault: the id literal for a wrong id, the function name for a
//! task the manifest lacks, the impl's self type for a manifest entry the code lacks, the
//! `name` literal for a module name mismatch. Messages are lower-case, name the manifest
//! by its display path (never an absolute one) and say how to fix the problem.
//!
//! The rules of the manifest alone (inherited ids 0–9 with fixed names, custom ids 10 and
//! up, no id twice, `kCreate` present and enabled) come from `chimaera-manifest`, the
//! same rule book `chimaera repo check` uses. Here are the rules that need the code:
//! tasks' ids follow the same table; every task is in the manifest with its id; every
//! enabled entry has a task; `-1` entries are not implemented; no task name clashes
//! with a generated client method.
use crate::ctxt::Ctxt;
use crate::manifest::{ModuleManifest, RepoManifest};
use crate::model::{ArgKind, ChimodImpl, ChimodStruct, Task};
use crate::names;
use chimaera_manifest::rules::{check_namespace, inherited_id, inherited_list, FIRST_CUSTOM_ID};
use chimaera_manifest::ProblemKind;
use proc_macro2::Span;
use std::collections::{BTreeMap, BTreeSet};

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

/// Checks the container struct: lanes, module name, namespace against the repository.
pub(crate) fn check_struct(
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
        if name.value() != module.module_name.value {
            cx.error_spanned_by(
                name,
                format!(
                    "`name = \"{}\"` but `{}` says `module_name: {}`; make them agree",
                    name.value(),
                    module.module_name.place,
                    module.module_name.value
                ),
            );
        }
    }
    if let Some(problem) = repo.and_then(|repo| check_namespace(module, repo)) {
        let at = model
            .args
            .manifest
            .as_ref()
            .or(model.args.name.as_ref())
            .map_or_else(Span::call_site, |lit| lit.span());
        cx.error_at(at, problem);
    }
}

/// Checks the tasks; returns the names of tasks whose client methods must not be
/// generated (they clash with other generated names).
pub(crate) fn check_impl(
    cx: &Ctxt,
    model: &ChimodImpl,
    module: Option<&ModuleManifest>,
) -> BTreeSet<String> {
    check_create_exists(cx, model);
    check_composable(cx, model);
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

/// `composable` needs a `create` whose parameters can come from one YAML mapping: none,
/// or one argument that is not a byte buffer or in-out.
fn check_composable(cx: &Ctxt, model: &ChimodImpl) {
    if model.args.composable.is_none() {
        return;
    }
    let Some(create) = model.create() else {
        return;
    };
    let mut args = create.wire_args();
    let first = args.next();
    if let Some(second) = args.next() {
        cx.error_spanned_by(
            second.ident,
            "a `composable` chimod's `create` takes its parameters as one argument (compose `params` are one mapping); gather them into one `#[wire(compose)]` struct",
        );
    } else if let Some(arg) =
        first.filter(|arg| matches!(arg.kind, ArgKind::Bulk(_) | ArgKind::InOut(_)))
    {
        cx.error_spanned_by(
            arg.ty,
            "a `composable` chimod's `create` parameter comes from compose YAML, so it cannot be a byte buffer or `&mut`; take an owned `#[wire(compose)]` struct",
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
    let file = &module.path;
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
                        entry.place,
                        task.id
                    ),
                ),
                Some(id) if id != task.id => cx.error_at(
                    task.id_span(),
                    format!(
                        "`{}` is {id} in `{}` but `method = {}` here; make them agree",
                        task.entry,
                        entry.place,
                        task.id
                    ),
                ),
                Some(_) => {}
            },
        }
    }
}

/// The manifest's own rules (from `chimaera-manifest`, as `repo check` applies them),
/// then every enabled entry against the tasks. All are reported on the impl's self
/// type, each message led by the entry's `file:line:column`.
fn check_manifest_entries(cx: &Ctxt, model: &ChimodImpl, module: &ModuleManifest) {
    let self_ty = &model.item.self_ty;
    let has_task_with = |entry: &str, id: u32| {
        model
            .tasks
            .iter()
            .any(|task| task.entry == entry && task.id == id)
    };
    let mut problems = Vec::new();
    let mut broken_entries = BTreeSet::new();
    for problem in module.check() {
        let entry = match &problem.kind {
            // A task with this id: the task's attribute is the better place, and
            // `check_ids` reported it there.
            ProblemKind::InheritedWrongId { entry, id, .. }
            | ProblemKind::ReservedId { entry, id }
                if has_task_with(entry, *id) =>
            {
                continue
            }
            // A `create` task is reported as missing from the manifest already.
            ProblemKind::CreateMissing if model.create().is_some() => continue,
            ProblemKind::InheritedWrongId { entry, .. }
            | ProblemKind::ReservedId { entry, .. }
            | ProblemKind::DuplicateId { entry, .. } => Some(entry.clone()),
            _ => None,
        };
        broken_entries.extend(entry);
        problems.push((problem.place.line, problem.to_string()));
    }
    let implemented: BTreeSet<&str> = model
        .tasks
        .iter()
        .map(|t| t.entry.as_str())
        .chain(model.broken.iter().map(String::as_str))
        .collect();
    for (name, id) in module.enabled() {
        if name != "kCreate" && !implemented.contains(name) && !broken_entries.contains(name) {
            let entry = module.entry(name).map(|entry| &entry.place);
            problems.push((
                entry.map_or(0, |place| place.line),
                format!(
                    "`{name}: {id}` in `{}` has no task; add `#[task(method = {id})] fn {}` or set it to -1",
                    entry.map_or_else(|| module.path.display.clone(), ToString::to_string),
                    names::function_of_entry(name)
                ),
            ));
        }
    }
    // File order; problems of the file as a whole (line 0) last.
    problems.sort_by_key(|(line, _)| if *line == 0 { usize::MAX } else { *line });
    for (_, message) in problems {
        cx.error_spanned_by(self_ty, message);
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
