//! `impl ChiMod for Foo`: the entry points the runtime calls.
//!
//! Each entry point is a dense `match` on the method id consts of `foo_tasks`. Inputs
//! are validated (`access`, bytecheck) before any field is read; `&str` and `&[i8]`
//! arguments borrow the validated bytes. Byte buffers (bulk) inline in the input, or
//! referencing the submitting client's data share (bounds-checked and claimed), reach
//! the handler as runtime-private bytes — `&[u8]` borrowed from the input or copied out
//! of the share (`bulk_copy_in`), `&mut [u8]` a private copy written back after the
//! handler (`BulkOutArg::open_copy`) — or as zero-copy views (`BulkInArg`,
//! `BulkOutArg::open_view`) that never make a reference into the share; a written buffer
//! goes back as a reference or its bytes. Every other argument is deserialized into its
//! owned form first. A handler's `Err(e)` becomes `e.into()`; an unknown id (and
//! `create`/`destroy`, which have their own entry points) answers `unknown_method` from
//! `run`, `load_in`, `load_out` and `new_copy`, and the default lane / no container from
//! `monitor` / `dynamic_container`.
use crate::expand::{into_task_result, local, Names, TaskNames};
use crate::manifest::ModuleManifest;
use crate::model::{ArgKind, Borrow, BulkArg, ChimodImpl, Task};
use proc_macro2::{Ident, TokenStream};
use quote::quote;
use syn::{Index, Path};

pub(crate) fn expand(
    model: &ChimodImpl,
    names: &Names,
    manifest: Option<&ModuleManifest>,
) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let self_ty = &model.item.self_ty;
    let (ctx, method, input, bytes, out) = (
        local("ctx"),
        local("method"),
        local("input"),
        local("bytes"),
        local("out"),
    );
    let tasks = model.tasks_by_id();
    let unknown = quote! {
        ::core::result::Result::Err(#private::unknown_method(
            <Self as #private::ChiMod>::info().name,
            #method,
        ))
    };

    let info = info(model, names, manifest);
    let create = match model.create() {
        Some(task) => {
            let archived = local("archived");
            let TaskNames { archived: ty, .. } = TaskNames::of(task);
            let (bindings, result) = handler_call(names, task, self_ty, &archived, &ctx);
            quote! {
                let #archived = #private::access::<#module::#ty>(#input, "create parameters")?;
                #bindings
                #result
            }
        }
        // Only with a reported error (no `create` task): keep the impl well-formed.
        None => quote! {
            let _ = (#ctx, #input);
            ::core::result::Result::Err(#private::unknown_method(
                <Self as #private::ChiMod>::info().name,
                0,
            ))
        },
    };
    let destroy = match model.destroy() {
        Some(task) => {
            let call = call_expr(task, self_ty, vec![quote!(self)], &ctx, &[]);
            let result = into_task_result(names, task, call);
            quote!(::core::result::Result::map(#result, |_| ()))
        }
        None => quote!(let _ = #ctx; ::core::result::Result::Ok(())),
    };
    let run_arms = tasks
        .iter()
        .filter(|t| !t.is_create() && !t.is_destroy())
        .map(|task| run_arm(names, task, self_ty, &ctx, &input, &out));
    let lane_hooks = tasks.iter().any(|task| task.route.is_some());
    let monitor_arms = tasks.iter().filter_map(|task| {
        let hook = task.route.as_ref()?;
        let TaskNames { id, archived, .. } = TaskNames::of(task);
        let value = local("archived");
        let call = hook_call(hook, self_ty, vec![quote!(self), quote!(#value)]);
        Some(quote! {
            #module::#id => match #private::access::<#module::#archived>(#input, "input") {
                ::core::result::Result::Ok(#value) => #call,
                ::core::result::Result::Err(_) => #private::LaneChoice::Default,
            },
        })
    });
    let topology = local("topology");
    let dynamic_arms = tasks.iter().filter_map(|task| {
        let hook = task.dynamic.as_ref()?;
        let TaskNames { id, archived, .. } = TaskNames::of(task);
        let value = local("archived");
        let hook = hook_path(hook, self_ty);
        let call = quote!(#private::dynamic_hook(#hook, #value, #topology));
        Some(quote! {
            #module::#id => match #private::access::<#module::#archived>(#input, "input") {
                ::core::result::Result::Ok(#value) => ::core::option::Option::Some(#call),
                ::core::result::Result::Err(_) => ::core::option::Option::None,
            },
        })
    });
    let value = local("value");
    let save_in_arms = tasks.iter().map(|task| {
        let variant = TaskNames::of(task).variant;
        quote!(#module::TaskIn::#variant(#value) => #private::encode(#value),)
    });
    let save_out_arms = tasks.iter().filter(|t| !t.is_create()).map(|task| {
        let variant = TaskNames::of(task).variant;
        quote!(#module::TaskOut::#variant(#value) => #private::encode(#value),)
    });
    let load_in_arms = tasks.iter().map(|task| {
        let TaskNames {
            id,
            variant,
            input: ty,
            ..
        } = TaskNames::of(task);
        quote! {
            #module::#id => ::core::result::Result::map(
                #private::decode::<#module::#ty>(#bytes, "input"),
                #module::TaskIn::#variant,
            ),
        }
    });
    let load_out_arms = tasks.iter().filter(|t| !t.is_create()).map(|task| {
        let TaskNames {
            id,
            variant,
            output,
            ..
        } = TaskNames::of(task);
        quote! {
            #module::#id => ::core::result::Result::map(
                #private::decode::<#module::#output>(#bytes, "output"),
                #module::TaskOut::#variant,
            ),
        }
    });
    let copy_arms = tasks.iter().map(|task| {
        let TaskNames { id, archived, .. } = TaskNames::of(task);
        quote!(#module::#id => { #private::access::<#module::#archived>(#input, "input")?; })
    });
    let save_in = exhaustive_match(quote!(*#input), save_in_arms.collect());
    let save_out = exhaustive_match(quote!(*#input), save_out_arms.collect());
    let wire_bounds = crate::expand::wire::bounds(model, names);
    let visit_bulk = crate::expand::bulk_visit::method(model, names);

    quote! {
        // Two tasks with one id are reported by `validate`; do not add a warning on top.
        #[allow(unreachable_patterns)]
        impl #private::ChiMod for #self_ty #wire_bounds {
            type TaskIn = #module::TaskIn;
            type TaskOut = #module::TaskOut;

            fn info() -> &'static #private::ModuleInfo {
                #info
            }

            fn create(
                #ctx: &mut #private::RunContext,
                #input: &[u8],
            ) -> ::core::result::Result<Self, #private::TaskError> {
                #create
            }

            fn destroy(
                &self,
                #ctx: &mut #private::RunContext,
            ) -> ::core::result::Result<(), #private::TaskError> {
                #destroy
            }

            fn run(
                &self,
                #ctx: &mut #private::RunContext,
                #method: #private::MethodId,
                #input: &[u8],
                #out: &mut #private::OutputBuffer,
            ) -> ::core::result::Result<(), #private::TaskError> {
                match #method {
                    #(#run_arms)*
                    _ => { let _ = (#ctx, #input, #out); #unknown }
                }
            }

            const LANE_HOOKS: bool = #lane_hooks;

            fn monitor(&self, #method: #private::MethodId, #input: &[u8]) -> #private::LaneChoice {
                match #method {
                    #(#monitor_arms)*
                    _ => { let _ = #input; #private::LaneChoice::Default }
                }
            }

            fn dynamic_container_in(
                #method: #private::MethodId,
                #input: &[u8],
                #topology: #private::PoolTopology,
            ) -> ::core::option::Option<#private::ContainerId> {
                match #method {
                    #(#dynamic_arms)*
                    _ => { let _ = (#input, #topology); ::core::option::Option::None }
                }
            }

            fn save_in(
                #input: &Self::TaskIn,
            ) -> ::core::result::Result<#private::Bytes, #private::TaskError> {
                #save_in
            }

            fn load_in(
                #method: #private::MethodId,
                #bytes: &[u8],
            ) -> ::core::result::Result<Self::TaskIn, #private::TaskError> {
                match #method {
                    #(#load_in_arms)*
                    _ => { let _ = #bytes; #unknown }
                }
            }

            fn save_out(
                #input: &Self::TaskOut,
            ) -> ::core::result::Result<#private::Bytes, #private::TaskError> {
                #save_out
            }

            fn load_out(
                #method: #private::MethodId,
                #bytes: &[u8],
            ) -> ::core::result::Result<Self::TaskOut, #private::TaskError> {
                match #method {
                    #(#load_out_arms)*
                    _ => { let _ = #bytes; #unknown }
                }
            }

            fn new_copy(
                #method: #private::MethodId,
                #input: &[u8],
            ) -> ::core::result::Result<#private::Bytes, #private::TaskError> {
                match #method {
                    #(#copy_arms)*
                    _ => return #unknown,
                }
                ::core::result::Result::Ok(#private::aligned_copy(#input))
            }

            #visit_bulk
        }
    }
}

fn info(model: &ChimodImpl, names: &Names, manifest: Option<&ModuleManifest>) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let self_ty = &model.item.self_ty;
    let (name, namespace, version) = manifest.map_or(("", "", ""), |m| {
        (
            m.module_name.value.as_str(),
            m.namespace.value.as_str(),
            m.version.value.as_str(),
        )
    });
    quote! {
        static INFO: #private::ModuleInfo = #private::ModuleInfo {
            name: #name,
            namespace: #namespace,
            version: #version,
            methods: #module::METHODS,
            lanes: <#self_ty>::__CHIMAERA_LANES,
        };
        &INFO
    }
}

/// `match *x { arms }`, or `match *x {}` for an enum without variants.
fn exhaustive_match(scrutinee: TokenStream, arms: Vec<TokenStream>) -> TokenStream {
    if arms.is_empty() {
        quote!(match #scrutinee {})
    } else {
        quote!(match &#scrutinee { #(#arms)* })
    }
}

/// `FOO => { validate; bind args; call; archive (ret, in-outs…) into out }`.
fn run_arm(
    names: &Names,
    task: &Task,
    self_ty: &syn::Type,
    ctx: &Ident,
    input: &Ident,
    out: &Ident,
) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let TaskNames { id, archived, .. } = TaskNames::of(task);
    let value = local("archived");
    let (bindings, result) = handler_call(names, task, self_ty, &value, ctx);
    let ret = local("ret");
    let out_values = in_out_locals(task);
    let bulk_outputs = task
        .wire_args()
        .enumerate()
        .filter(|(_, a)| a.kind.is_bulk_out())
        .map(|(i, _)| {
            let local = local(&format!("arg{i}"));
            quote!(let #local = #private::BulkOutArg::wire(&mut #local);)
        });
    quote! {
        #module::#id => {
            let #value = #private::access::<#module::#archived>(#input, "input")?;
            #bindings
            let #ret = #result?;
            #(#bulk_outputs)*
            #private::OutputBuffer::encode(#out, &(#private::ByRef(&#ret), #(#private::ByRef(&#out_values),)*))
        }
    }
}

/// The locals holding a task's in-out arguments (named like the argument positions
/// [`handler_call`] binds).
fn in_out_locals(task: &Task) -> Vec<Ident> {
    task.wire_args()
        .enumerate()
        .filter(|(_, a)| a.kind.is_in_out())
        .map(|(i, _)| local(&format!("arg{i}")))
        .collect()
}

/// The statements binding the wire arguments from the archived input `value`, and the
/// handler call as a `Result<R, TaskError>` expression.
fn handler_call(
    names: &Names,
    task: &Task,
    self_ty: &syn::Type,
    value: &Ident,
    ctx: &Ident,
) -> (TokenStream, TokenStream) {
    let private = &names.private;
    let mut bindings = Vec::new();
    let mut passed = Vec::new();
    let share = local("bulk_share");
    if task.has_bulk_args() {
        bindings.push(quote!(let #share = #private::RunContext::bulk_share(#ctx);));
    }
    for (i, arg) in task.wire_args().enumerate() {
        let field = Index::from(i);
        let local = local(&format!("arg{i}"));
        let deserialize = |ty: TokenStream| quote!(let #local: #ty = #private::deserialize(&#value.#field, "input")?;);
        match &arg.kind {
            ArgKind::Borrowed(Borrow::Str) => passed.push(quote!(#value.#field.as_str())),
            ArgKind::Bulk(BulkArg {
                writes: false,
                view: false,
            }) => {
                bindings
                    .push(quote!(let #local = #private::bulk_copy_in(#share, &#value.#field)?;));
                passed.push(quote!(&*#local));
            }
            ArgKind::Bulk(BulkArg {
                writes: false,
                view: true,
            }) => {
                bindings
                    .push(quote!(let #local = #private::BulkInArg::open(#share, &#value.#field)?;));
                passed.push(quote!(#private::BulkInArg::view(&#local)));
            }
            ArgKind::Bulk(BulkArg {
                writes: true,
                view: false,
            }) => {
                bindings.push(
                    quote!(let mut #local = #private::BulkOutArg::open_copy(#share, &#value.#field)?;),
                );
                passed.push(quote!(#private::BulkOutArg::as_mut_slice(&mut #local)));
            }
            ArgKind::Bulk(BulkArg {
                writes: true,
                view: true,
            }) => {
                bindings.push(
                    quote!(let mut #local = #private::BulkOutArg::open_view(#share, &#value.#field)?;),
                );
                passed.push(quote!(#private::BulkOutArg::view(&mut #local)));
            }
            ArgKind::Borrowed(Borrow::Bytes(_)) => {
                passed.push(quote!(#value.#field.as_slice()));
            }
            ArgKind::Borrowed(Borrow::Slice(elem)) => {
                bindings.push(deserialize(quote!(::std::vec::Vec<#elem>)));
                passed.push(quote!(&#local));
            }
            ArgKind::Borrowed(Borrow::Ref(inner)) => {
                bindings.push(deserialize(quote!(#inner)));
                passed.push(quote!(&#local));
            }
            ArgKind::In => {
                let ty = arg.ty;
                bindings.push(deserialize(quote!(#ty)));
                passed.push(quote!(#local));
            }
            ArgKind::InOut(inner) => {
                bindings.push(quote!(let mut #local: #inner = #private::deserialize(&#value.#field, "input")?;));
                passed.push(quote!(&mut #local));
            }
            ArgKind::Context => unreachable!("wire_args skips the context"),
        }
    }
    let receiver = if task.receiver {
        vec![quote!(self)]
    } else {
        Vec::new()
    };
    let call = call_expr(task, self_ty, receiver, ctx, &passed);
    (quote!(#(#bindings)*), into_task_result(names, task, call))
}

/// `<Self>::handler(receiver, ctx?, args…)`.
fn call_expr(
    task: &Task,
    self_ty: &syn::Type,
    receiver: Vec<TokenStream>,
    ctx: &Ident,
    passed: &[TokenStream],
) -> TokenStream {
    let function = &task.sig.ident;
    let context = task.takes_context().then(|| quote!(#ctx));
    let args = receiver
        .into_iter()
        .chain(context)
        .chain(passed.iter().cloned());
    quote!(<#self_ty>::#function(#(#args),*))
}

/// A `dynamic` hook as a value: a bare name is an associated function of the container.
fn hook_path(hook: &Path, self_ty: &syn::Type) -> TokenStream {
    match hook.get_ident() {
        Some(name) => quote!(<#self_ty>::#name),
        None => quote!(#hook),
    }
}

/// A `route`/`dynamic` hook: a bare name is an associated function of the container.
fn hook_call(hook: &Path, self_ty: &syn::Type, args: Vec<TokenStream>) -> TokenStream {
    match hook.get_ident() {
        Some(name) => quote!(<#self_ty>::#name(#(#args),*)),
        None => quote!(#hook(#(#args),*)),
    }
}
