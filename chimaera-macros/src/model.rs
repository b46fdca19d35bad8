//! The typed model of a chimod, built once from the syntax; every later stage reads it.
//!
//! A [`ChimodImpl`] borrows the user's impl block and describes each `#[task]` method:
//! its id (with the literal, for spans), its receiver, whether it takes the
//! `&mut RunContext`, each argument's wire role ([`ArgKind`]) and its return value.
//! Signature mistakes are reported into the [`Ctxt`] here. A task whose signature is
//! broken is left out of `tasks` and its name kept in `broken`, so the rest of the module
//! still expands (and the manifest checks do not also complain that it is missing).
use crate::attr::{self, ImplArgs, StructArgs, TaskArgs};
use crate::ctxt::Ctxt;
use crate::names;
use proc_macro2::Ident;
use syn::{
    Attribute, FnArg, GenericArgument, GenericParam, ImplItem, ImplItemFn, ItemImpl, ItemStruct,
    LitInt, Pat, Path, PathArguments, ReturnType, Signature, Type, TypeReference,
};

/// `#[chimod(name = "…")] struct …`.
pub(crate) struct ChimodStruct<'a> {
    pub item: &'a ItemStruct,
    pub args: StructArgs,
}

/// `#[chimod] impl … { #[task] fn … }`.
pub(crate) struct ChimodImpl<'a> {
    pub item: &'a ItemImpl,
    /// The container type's name (the last segment of the impl's self type).
    pub ident: Ident,
    pub args: ImplArgs,
    /// Well-formed tasks, in source order.
    pub tasks: Vec<Task<'a>>,
    /// Manifest names (`kFoo`) of `#[task]` methods left out because of errors.
    pub broken: Vec<String>,
}

/// One `#[task]` method.
pub(crate) struct Task<'a> {
    pub sig: &'a Signature,
    pub attrs: &'a [Attribute],
    /// The literal of `method = N`, for spans.
    pub method: LitInt,
    pub id: u32,
    pub route: Option<Path>,
    pub dynamic: Option<Path>,
    /// The function name without `r#`.
    pub name: String,
    /// Its manifest entry, `kName`.
    pub entry: String,
    /// Takes `&self` (every task but `create`).
    pub receiver: bool,
    /// Every parameter after the receiver, the context included.
    pub args: Vec<Arg<'a>>,
    pub ret: Ret,
}

/// One parameter of a task.
pub(crate) struct Arg<'a> {
    pub ident: &'a Ident,
    /// The type as written.
    pub ty: &'a Type,
    pub kind: ArgKind,
}

/// What a parameter is on the wire.
pub(crate) enum ArgKind {
    /// `&mut RunContext`: not on the wire; the handler gets the task's context.
    Context,
    /// `T`: travels as `T`, handed over by value.
    In,
    /// `&str`, `&[T]`, `&T`: travel as their owned form, handed over by reference.
    Borrowed(Borrow),
    /// `&mut T`: travels as `T` in the input and comes back in the output.
    InOut(Type),
    /// A byte buffer (as `Bulk`): a reference into the client's data share, or the bytes
    /// inline. The client passes `&[u8]`, or `&mut [u8]` when the handler writes.
    Bulk(BulkArg),
}

/// How a handler takes a byte buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct BulkArg {
    /// `&mut [u8]` / `BulkOut`: the handler writes it; it comes back in the output.
    pub writes: bool,
    /// `BulkIn` / `BulkOut`: a zero-copy view; else (`&[u8]` / `&mut [u8]`) the handler
    /// gets a runtime-private copy.
    pub view: bool,
}

impl ArgKind {
    /// Comes back in the output.
    pub(crate) fn is_in_out(&self) -> bool {
        matches!(
            self,
            ArgKind::InOut(_) | ArgKind::Bulk(BulkArg { writes: true, .. })
        )
    }

    /// A byte buffer the handler writes.
    pub(crate) fn is_bulk_out(&self) -> bool {
        matches!(self, ArgKind::Bulk(BulkArg { writes: true, .. }))
    }
}

/// A borrowed parameter.
pub(crate) enum Borrow {
    /// `&str` → `String`; the handler borrows the received bytes.
    Str,
    /// `&[i8]` → `Vec<i8>`; the handler borrows the received bytes.
    Bytes(Type),
    /// `&[T]` → `Vec<T>`; deserialized, then lent.
    Slice(Type),
    /// `&T` → `T`; deserialized, then lent.
    Ref(Type),
}

/// A task's return value.
pub(crate) struct Ret {
    /// The success type (`R` of `R` or `Result<R, E>`); `None` is `()`.
    pub ty: Option<Type>,
    /// Returns a `Result` whose error converts `Into<TaskError>`.
    pub fallible: bool,
}

impl<'a> ChimodStruct<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, item: &'a ItemStruct, args: StructArgs) -> Self {
        if let Some(param) = item.generics.params.first() {
            cx.error_spanned_by(param, "a `#[chimod]` struct cannot be generic");
        }
        if args.name.is_none() {
            cx.error_at(
                proc_macro2::Span::call_site(),
                "`#[chimod]` on a struct needs `name = \"…\"`, the `module_name` of its chimaera_mod.yaml",
            );
        }
        ChimodStruct { item, args }
    }
}

impl<'a> ChimodImpl<'a> {
    pub(crate) fn from_syn(cx: &Ctxt, item: &'a ItemImpl, args: ImplArgs) -> Option<Self> {
        if let Some((_, trait_path, _)) = &item.trait_ {
            cx.error_spanned_by(
                trait_path,
                "`#[chimod]` goes on the inherent impl block of the container struct, not on a trait impl",
            );
            return None;
        }
        if let Some(param) = item.generics.params.first() {
            cx.error_spanned_by(param, "a `#[chimod]` impl cannot be generic");
        }
        let ident = match &*item.self_ty {
            Type::Path(path) if path.qself.is_none() => path.path.segments.last()?.ident.clone(),
            other => {
                cx.error_spanned_by(other, "`#[chimod]` expects `impl StructName { … }`");
                return None;
            }
        };
        let mut tasks = Vec::new();
        let mut broken = Vec::new();
        for impl_item in &item.items {
            let ImplItem::Fn(function) = impl_item else {
                continue;
            };
            let mut task_attrs = function.attrs.iter().filter(|a| attr::is_task(a));
            let Some(task_attr) = task_attrs.next() else {
                continue;
            };
            if let Some(extra) = task_attrs.next() {
                cx.error_spanned_by(extra, "a method takes one `#[task(…)]`; merge them");
            }
            let task_args = attr::task_args(cx, task_attr);
            let errors_before = cx.len();
            let task = Task::from_syn(cx, function, task_attr, task_args);
            match task {
                Some(task) if cx.len() == errors_before => tasks.push(task),
                _ => broken.push(names::manifest_entry(&names::unraw(&function.sig.ident))),
            }
        }
        Some(ChimodImpl {
            item,
            ident,
            args,
            tasks,
            broken,
        })
    }

    /// The `kCreate` task, if implemented.
    pub(crate) fn create(&self) -> Option<&Task<'a>> {
        self.tasks.iter().find(|t| t.is_create())
    }

    /// The `kDestroy` task, if implemented.
    pub(crate) fn destroy(&self) -> Option<&Task<'a>> {
        self.tasks.iter().find(|t| t.is_destroy())
    }

    /// The tasks in id order.
    pub(crate) fn tasks_by_id(&self) -> Vec<&Task<'a>> {
        let mut sorted: Vec<_> = self.tasks.iter().collect();
        sorted.sort_by_key(|t| t.id);
        sorted
    }
}

impl<'a> Task<'a> {
    fn from_syn(
        cx: &Ctxt,
        function: &'a ImplItemFn,
        task_attr: &Attribute,
        args: TaskArgs,
    ) -> Option<Self> {
        let sig = &function.sig;
        let name = names::unraw(&sig.ident);
        let Some((method, id)) = args.method else {
            if args.had_bad_key {
                return None;
            }
            cx.error_spanned_by(
                task_attr,
                format!(
                    "`#[task]` needs the method id from chimaera_mod.yaml: `#[task(method = N)]` where `{}: N`",
                    names::manifest_entry(&name)
                ),
            );
            return None;
        };
        check_signature_shape(cx, sig);
        let is_create = name == "create";
        let receiver = check_receiver(cx, sig, is_create);
        let args_model = sig
            .inputs
            .iter()
            .filter_map(|input| match input {
                FnArg::Typed(typed) => Some(typed),
                FnArg::Receiver(_) => None,
            })
            .enumerate()
            .filter_map(|(position, typed)| Arg::from_syn(cx, position, typed))
            .collect::<Vec<_>>();
        let task = Task {
            sig,
            attrs: &function.attrs,
            method,
            id,
            route: args.route,
            dynamic: args.dynamic,
            entry: names::manifest_entry(&name),
            name,
            receiver,
            args: args_model,
            ret: Ret::from_syn(&sig.output),
        };
        task.check_role(cx);
        Some(task)
    }

    /// The span of the id literal.
    pub(crate) fn id_span(&self) -> proc_macro2::Span {
        self.method.span()
    }

    pub(crate) fn is_create(&self) -> bool {
        self.name == "create"
    }

    pub(crate) fn is_destroy(&self) -> bool {
        self.name == "destroy"
    }

    /// Tasks with ids 10 and up get methods on the typed client.
    pub(crate) fn has_client_methods(&self) -> bool {
        self.id >= 10
    }

    pub(crate) fn takes_context(&self) -> bool {
        self.args.iter().any(|a| matches!(a.kind, ArgKind::Context))
    }

    /// The parameters that travel in the input archive, in order.
    pub(crate) fn wire_args(&self) -> impl Iterator<Item = &Arg<'a>> {
        self.args
            .iter()
            .filter(|a| !matches!(a.kind, ArgKind::Context))
    }

    /// The in-out parameters (`&mut T`, `&mut [u8]`), in order; their values follow the
    /// return value in the output.
    pub(crate) fn in_out_args(&self) -> impl Iterator<Item = &Arg<'a>> {
        self.args.iter().filter(|a| a.kind.is_in_out())
    }

    /// Whether an argument may reference the client's data share.
    pub(crate) fn has_bulk_args(&self) -> bool {
        self.args.iter().any(|a| matches!(a.kind, ArgKind::Bulk(_)))
    }

    /// The byte buffers the handler writes, in order.
    pub(crate) fn bulk_out_args(&self) -> impl Iterator<Item = &Arg<'a>> {
        self.args.iter().filter(|a| a.kind.is_bulk_out())
    }

    /// Rules that depend on which inherited task this is.
    fn check_role(&self, cx: &Ctxt) {
        if self.is_create() {
            if let Some(arg) = self.in_out_args().next() {
                cx.error_spanned_by(
                    arg.ty,
                    "`create` has no output to return an in-out argument in; take it by value or by `&`",
                );
            }
        }
        if self.is_destroy() {
            if let Some(arg) = self.wire_args().next() {
                cx.error_spanned_by(
                    arg.ident,
                    "`destroy` gets no input; it takes only `&self` and optionally `ctx: &mut RunContext`",
                );
            }
        }
        if (self.route.is_some() || self.dynamic.is_some())
            && (self.is_create() || self.is_destroy())
        {
            cx.error_spanned_by(
                &self.method,
                format!(
                    "`{}` is not routed like other tasks; remove `route`/`dynamic`",
                    self.name
                ),
            );
        }
    }
}

/// `async`, generics and variadics are not tasks.
fn check_signature_shape(cx: &Ctxt, sig: &Signature) {
    if let Some(token) = &sig.asyncness {
        cx.error_spanned_by(
            token,
            "tasks are not `async fn`; write a plain `fn` (a task may park its coroutine on `RunContext` waits instead)",
        );
    }
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(ty) => cx.error_spanned_by(
                &ty.ident,
                "a task cannot be generic over types: its wire types must be known; use a concrete type",
            ),
            GenericParam::Const(konst) => cx.error_spanned_by(
                &konst.ident,
                "a task cannot be generic over consts: its wire types must be known; use a concrete value",
            ),
        }
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "a task cannot be variadic");
    }
}

/// Tasks take `&self`; `create` takes no receiver. Returns whether there is one.
fn check_receiver(cx: &Ctxt, sig: &Signature, is_create: bool) -> bool {
    let receiver = sig.inputs.iter().find_map(|input| match input {
        FnArg::Receiver(receiver) => Some(receiver),
        FnArg::Typed(_) => None,
    });
    match receiver {
        Some(receiver) if is_create => {
            cx.error_spanned_by(
                receiver,
                "`create` builds the container, so it has no `self`; remove it and return `Self` or `Result<Self, TaskError>`",
            );
        }
        Some(receiver) => {
            let by_shared_ref = receiver.reference.is_some() && receiver.mutability.is_none();
            if !by_shared_ref || receiver.colon_token.is_some() {
                cx.error_spanned_by(
                    receiver,
                    "tasks take `&self`: containers are shared by concurrent tasks; use interior mutability (atomics, `CoMutex`) for state",
                );
            }
        }
        None if !is_create => {
            cx.error_spanned_by(
                &sig.ident,
                format!(
                    "task `{}` needs a `&self` receiver; only `create` has none",
                    sig.ident
                ),
            );
        }
        None => {}
    }
    receiver.is_some()
}

impl<'a> Arg<'a> {
    fn from_syn(cx: &Ctxt, position: usize, typed: &'a syn::PatType) -> Option<Self> {
        let ident = match &*typed.pat {
            Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => &pat.ident,
            other => {
                cx.error_spanned_by(
                    other,
                    "task arguments need a plain name: it becomes the parameter name of the generated client",
                );
                return None;
            }
        };
        let ty = &*typed.ty;
        let kind = classify(cx, ty)?;
        if matches!(kind, ArgKind::Context) && position != 0 {
            cx.error_spanned_by(
                typed,
                "the `&mut RunContext` parameter must come first (right after `&self`)",
            );
            return None;
        }
        Some(Arg { ident, ty, kind })
    }
}

fn classify(cx: &Ctxt, ty: &Type) -> Option<ArgKind> {
    match peel(ty) {
        Type::Reference(reference) => classify_reference(cx, reference),
        Type::ImplTrait(_) => {
            cx.error_spanned_by(ty, "task arguments need concrete types, not `impl Trait`");
            None
        }
        other if is_run_context(other) => {
            cx.error_spanned_by(ty, "take the task context as `ctx: &mut RunContext`");
            None
        }
        other if last_segment_is(other, "BulkIn") => Some(ArgKind::Bulk(BulkArg {
            writes: false,
            view: true,
        })),
        other if last_segment_is(other, "BulkOut") => Some(ArgKind::Bulk(BulkArg {
            writes: true,
            view: true,
        })),
        _ => Some(ArgKind::In),
    }
}

fn classify_reference(cx: &Ctxt, reference: &TypeReference) -> Option<ArgKind> {
    let inner = peel(&reference.elem);
    if is_run_context(inner) {
        if reference.mutability.is_none() {
            cx.error_spanned_by(reference, "take the task context as `&mut RunContext`");
            return None;
        }
        return Some(ArgKind::Context);
    }
    if last_segment_is(inner, "BulkIn") || last_segment_is(inner, "BulkOut") {
        cx.error_spanned_by(
            reference,
            "take a bulk view by value: `data: BulkIn<'_>` (read) or `data: BulkOut<'_>` (written in place)",
        );
        return None;
    }
    let unsized_inner = is_str(inner) || matches!(inner, Type::Slice(_));
    if reference.mutability.is_some() {
        if matches!(inner, Type::Slice(slice) if is_u8(&slice.elem)) {
            return Some(ArgKind::Bulk(BulkArg {
                writes: true,
                view: false,
            }));
        }
        if unsized_inner {
            cx.error_spanned_by(
                reference,
                "in-out arguments need an owned type: use `&mut String` or `&mut Vec<T>`; a byte buffer is `&mut [u8]` (the handler writes a private copy) or `BulkOut<'_>` (written in place, zero-copy)",
            );
            return None;
        }
        return Some(ArgKind::InOut(inner.clone()));
    }
    if matches!(inner, Type::Slice(slice) if is_u8(&slice.elem)) {
        return Some(ArgKind::Bulk(BulkArg {
            writes: false,
            view: false,
        }));
    }
    let borrow = match inner {
        inner if is_str(inner) => Borrow::Str,
        Type::Slice(slice) if is_byte(&slice.elem) => Borrow::Bytes((*slice.elem).clone()),
        Type::Slice(slice) => Borrow::Slice((*slice.elem).clone()),
        other => Borrow::Ref(other.clone()),
    };
    Some(ArgKind::Borrowed(borrow))
}

/// Strips invisible groups and parentheses around a type.
fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => peel(&group.elem),
        Type::Paren(paren) => peel(&paren.elem),
        other => other,
    }
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .is_some_and(|segment| segment.ident == name),
        _ => false,
    }
}

fn is_run_context(ty: &Type) -> bool {
    last_segment_is(ty, "RunContext")
}

fn is_str(ty: &Type) -> bool {
    matches!(ty, Type::Path(path) if path.qself.is_none() && path.path.is_ident("str"))
}

fn is_u8(ty: &Type) -> bool {
    matches!(peel(ty), Type::Path(path) if path.qself.is_none() && path.path.is_ident("u8"))
}

/// `u8` and `i8` archive as themselves, so `&[u8]` can borrow the received bytes.
fn is_byte(ty: &Type) -> bool {
    matches!(peel(ty), Type::Path(path) if path.qself.is_none()
        && (path.path.is_ident("u8") || path.path.is_ident("i8")))
}

impl Ret {
    fn from_syn(output: &ReturnType) -> Self {
        let ReturnType::Type(_, ty) = output else {
            return Ret {
                ty: None,
                fallible: false,
            };
        };
        if let Type::Path(path) = peel(ty) {
            if let Some(segment) = path.path.segments.last() {
                if segment.ident == "Result" {
                    if let PathArguments::AngleBracketed(generic) = &segment.arguments {
                        if let Some(GenericArgument::Type(ok)) = generic.args.first() {
                            return Ret {
                                ty: Some(ok.clone()),
                                fallible: true,
                            };
                        }
                    }
                }
            }
        }
        Ret {
            ty: Some((**ty).clone()),
            fallible: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_model(item: ItemImpl, check: impl FnOnce(&ChimodImpl)) -> Result<(), syn::Error> {
        let cx = Ctxt::new();
        let args = ImplArgs {
            manifest: None,
            composable: None,
        };
        let model = ChimodImpl::from_syn(&cx, &item, args);
        if let Some(model) = &model {
            check(model);
        }
        cx.check()
    }

    #[test]
    fn arguments_get_their_wire_roles() {
        let item: ItemImpl = syn::parse_quote! {
            impl Demo {
                #[task(method = 10)]
                fn all<'a>(&self, ctx: &mut RunContext, s: &'a str, b: &[u8], v: &[u32],
                           r: &Point, n: u32, io: &mut Vec<u8>, i: &[i8],
                           buf: &mut [u8], vin: BulkIn<'_>,
                           vout: chimaera::BulkOut<'a>) -> Result<u8, TaskError> {}
                fn helper(&self) {}
            }
        };
        with_model(item, |model| {
            let task = &model.tasks[0];
            let kinds: Vec<&str> = task
                .args
                .iter()
                .map(|a| match &a.kind {
                    ArgKind::Context => "ctx",
                    ArgKind::In => "in",
                    ArgKind::Borrowed(Borrow::Str) => "str",
                    ArgKind::Borrowed(Borrow::Bytes(_)) => "bytes",
                    ArgKind::Borrowed(Borrow::Slice(_)) => "slice",
                    ArgKind::Borrowed(Borrow::Ref(_)) => "ref",
                    ArgKind::InOut(_) => "in-out",
                    ArgKind::Bulk(BulkArg {
                        writes: false,
                        view: false,
                    }) => "bulk",
                    ArgKind::Bulk(BulkArg {
                        writes: true,
                        view: false,
                    }) => "bulk-mut",
                    ArgKind::Bulk(BulkArg {
                        writes: false,
                        view: true,
                    }) => "bulk-in",
                    ArgKind::Bulk(BulkArg {
                        writes: true,
                        view: true,
                    }) => "bulk-out",
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    "ctx", "str", "bulk", "slice", "ref", "in", "in-out", "bytes", "bulk-mut",
                    "bulk-in", "bulk-out"
                ]
            );
            assert_eq!(task.wire_args().count(), 10);
            assert_eq!(task.bulk_out_args().count(), 2);
            assert!(task.ret.fallible && task.ret.ty.is_some());
            assert_eq!((task.entry.as_str(), task.id), ("kAll", 10));
            assert_eq!(model.tasks.len(), 1, "non-#[task] methods are not tasks");
        })
        .unwrap();
    }

    #[test]
    fn broken_tasks_are_reported_and_set_aside() {
        let item: ItemImpl = syn::parse_quote! {
            impl Demo {
                #[task(method = 10)]
                async fn bad<T>(&mut self, (a, b): (u8, u8)) {}
                #[task(method = 11)]
                fn good(&self) {}
            }
        };
        let mut broken = Vec::new();
        let error = with_model(item, |model| {
            broken = model.broken.clone();
            assert_eq!(model.tasks.len(), 1);
        })
        .unwrap_err();
        assert_eq!(broken, ["kBad"]);
        assert_eq!(
            error.into_iter().count(),
            4,
            "async, generic, receiver, pattern"
        );
    }
}
