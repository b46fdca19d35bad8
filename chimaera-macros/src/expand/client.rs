//! `FooClient`: the typed client of a module's pools.
//!
//! Fixed methods: `create` / `create_with` (get or create a pool, passing `create`'s
//! arguments), `open` (an existing pool, by name), `attach`, `pool_id`, `client`, `with_deadline` / `without_deadline` (the
//! same client with another default deadline for its calls), and `destroy_pool` unless
//! a task has that name (admin's `kDestroyPool`, which destroys any pool, replaces it).
//! Per task with an id of 10 or more: `x` (submit and wait), `async_x` (submit,
//! returning a `Pending`, collected by `.await`, `wait` or `wait_timeout`) and `spawn_x`
//! (fire-and-forget or periodic). Parameters keep the handler's names and types (`&mut
//! T` in-out arguments are `&T` for `async_x`/`spawn_x`, and written back by `x`), and
//! borrowed arguments are archived in place through `StrRef`, `SliceRef`
//! and `ByRef`, never copied into owned values first.
//!
//! Byte buffers (handler `&[u8]` / `BulkIn`, and `&mut [u8]` / `BulkOut` where it
//! writes) are `&[u8]` / `&mut [u8]` on every method. `x` and `async_x` send them through
//! `Client::bulk_ref`: a reference when they lie in the client's data share (a buffer
//! from `allocate_buffer`), else the bytes inline. So `async_x` ties them to its
//! `Pending<'__chimaera_call, _>`: the caller cannot touch or free a buffer the runtime
//! may use in place until the call completes, and the `Pending`'s `wait` copies a
//! written buffer that came back inline into the caller's slice (a compile error pins
//! this: `tests/ui/borrow/`). `create` and `spawn_x` copy the bytes into the input,
//! since nothing holds the buffers for them.
use crate::expand::{local, Names, TaskNames};
use crate::model::{Arg, ArgKind, Borrow, ChimodImpl, Task};
use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote};
use std::collections::BTreeSet;
use syn::{GenericParam, Index, Lifetime, LifetimeParam, Type, TypeReference};

pub(crate) fn expand(
    model: &ChimodImpl,
    names: &Names,
    module_name: &str,
    skipped: &BTreeSet<String>,
) -> TokenStream {
    let private = &names.private;
    let client = &names.client;
    let self_ty = &model.item.self_ty;
    let (chi, query, pool_name, options, pool) = (
        local("chi"),
        local("query"),
        local("pool_name"),
        local("options"),
        local("pool"),
    );
    let create = model.create().map(|task| {
        let generics = &task.sig.generics;
        let where_clause = &generics.where_clause;
        let params = task.wire_args().map(|arg| param(arg, Form::Sync));
        let params_again = task.wire_args().map(|arg| param(arg, Form::Sync));
        let forwarded = task.wire_args().map(|arg| arg.ident);
        let encoded = {
            let private = &names.private;
            let tuple = wire_tuple(names, task, &quote!(#chi), BulkForm::Inline);
            quote!(#private::encode(&#tuple)?)
        };
        quote! {
            /// Gets or creates the pool `pool_name` with default options; see
            /// [`create_with`](Self::create_with).
            pub fn create #generics (
                #chi: &#private::Client,
                #query: #private::PoolQuery,
                #pool_name: &str,
                #(#params,)*
            ) -> ::core::result::Result<Self, #private::TaskError> #where_clause {
                Self::create_with(#chi, #query, #pool_name, ::core::default::Default::default(), #(#forwarded,)*)
            }

            /// Gets the pool `pool_name` of this module, creating it with `options` and
            /// these create parameters if it does not exist yet.
            pub fn create_with #generics (
                #chi: &#private::Client,
                #query: #private::PoolQuery,
                #pool_name: &str,
                #options: #private::PoolOptions,
                #(#params_again,)*
            ) -> ::core::result::Result<Self, #private::TaskError> #where_clause {
                let #pool = #private::get_or_create_pool(
                    #chi,
                    #query,
                    <#self_ty as #private::ChiMod>::info().name,
                    #pool_name,
                    #options,
                    #encoded,
                )?;
                ::core::result::Result::Ok(Self::attach(#chi, #pool))
            }
        }
    });
    let tasks = model
        .tasks_by_id()
        .into_iter()
        .filter(|t| t.has_client_methods() && !skipped.contains(&t.name))
        .map(|task| task_methods(names, task));
    let destroy_pool = (!model
        .tasks
        .iter()
        .any(|t| t.has_client_methods() && t.name == "destroy_pool"))
    .then(|| {
        quote! {
            /// Destroys the pool through the admin module.
            pub fn destroy_pool(&self) -> ::core::result::Result<(), #private::TaskError> {
                #private::destroy_pool(&self.client, self.pool)
            }
        }
    });
    let doc = format!("Typed client of `{module_name}` pools.");
    let wire_bounds = crate::expand::wire::bounds(model, names);
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        pub struct #client {
            client: #private::Client,
            pool: #private::PoolId,
        }

        #[allow(dead_code)]
        impl #client #wire_bounds {
            #create

            /// Opens the existing pool named `pool_name` (made by another client, or
            /// composed at boot), without repeating its create parameters. Fails with
            /// `OpenPoolError::NoSuchPool` if no pool has that name and
            /// `OpenPoolError::OtherModule` if it runs another module.
            pub fn open(
                #chi: &#private::Client,
                #pool_name: &str,
            ) -> ::core::result::Result<Self, #private::OpenPoolError> {
                let #pool = #private::open_pool(
                    #chi,
                    <#self_ty as #private::ChiMod>::info().name,
                    #pool_name,
                )?;
                ::core::result::Result::Ok(Self::attach(#chi, #pool))
            }

            /// A client of the existing pool `pool`.
            pub fn attach(#chi: &#private::Client, #pool: #private::PoolId) -> Self {
                Self { client: ::core::clone::Clone::clone(#chi), pool: #pool }
            }

            /// The pool this client sends tasks to.
            pub fn pool_id(&self) -> #private::PoolId {
                self.pool
            }

            /// The runtime client underneath.
            pub fn client(&self) -> &#private::Client {
                &self.client
            }

            /// This client with a default deadline for its calls (see
            /// `Client::with_deadline`): a call not answered in time fails with
            /// `TaskError::DeadlineExceeded` and is abandoned. For one call:
            /// `x.with_deadline(d).method(..)`, or `x.async_method(..)?.wait_timeout(d)`.
            pub fn with_deadline(&self, deadline: ::core::time::Duration) -> Self {
                Self { client: #private::Client::with_deadline(&self.client, deadline), pool: self.pool }
            }

            /// This client without a default deadline (see `Client::without_deadline`).
            pub fn without_deadline(&self) -> Self {
                Self { client: #private::Client::without_deadline(&self.client), pool: self.pool }
            }

            #destroy_pool

            #(#tasks)*
        }
    }
}

fn task_methods(names: &Names, task: &Task) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let TaskNames { id, output, .. } = TaskNames::of(task);
    let (query, schedule, out, bytes, outs, raw, buffer) = (
        local("query"),
        local("schedule"),
        local("out"),
        local("bytes"),
        local("outs"),
        local("raw"),
        local("buffer"),
    );
    let sync_name = &task.sig.ident;
    let async_name = format_ident!("async_{}", task.name, span = sync_name.span());
    let spawn_name = format_ident!("spawn_{}", task.name, span = sync_name.span());
    let generics = &task.sig.generics;
    let where_clause = &generics.where_clause;
    let lends = task.has_bulk_args();
    let call = Lifetime::new(CALL_LIFETIME, Span::call_site());
    let mut async_generics = generics.clone();
    if lends {
        async_generics
            .params
            .insert(0, GenericParam::Lifetime(LifetimeParam::new(call.clone())));
    }
    let pending_lifetime = if lends {
        quote!(#call)
    } else {
        quote!('static)
    };
    let sync_params: Vec<_> = task.wire_args().map(|arg| param(arg, Form::Sync)).collect();
    let async_params: Vec<_> = task
        .wire_args()
        .map(|arg| param(arg, Form::Async(&call)))
        .collect();
    let spawn_params: Vec<_> = task
        .wire_args()
        .map(|arg| param(arg, Form::Spawn))
        .collect();
    let ret = match &task.ret.ty {
        Some(ty) => quote!(#ty),
        None => quote!(()),
    };
    // In-out values the `Pending` yields after the return value: the `&mut T` ones (byte
    // buffers are written back into the lent `&mut [u8]` instead), with their fields in
    // the output tuple.
    let in_outs: Vec<(&Arg, Index)> = task
        .in_out_args()
        .enumerate()
        .map(|(i, arg)| (arg, Index::from(i + 1)))
        .collect();
    let yielded: Vec<(&Arg, &Type, &Index)> = in_outs
        .iter()
        .filter_map(|(arg, field)| match &arg.kind {
            ArgKind::InOut(inner) => Some((*arg, inner, field)),
            _ => None,
        })
        .collect();
    let written_back = in_outs
        .iter()
        .filter(|(arg, _)| arg.kind.is_bulk_out())
        .enumerate()
        .map(|(k, (_, field))| quote!(#private::bulk_write_back_at(#outs, #k, &#out.#field)?;));
    let written_back: Vec<_> = written_back.collect();
    let pending = if yielded.is_empty() {
        ret.clone()
    } else {
        let types = yielded.iter().map(|(_, ty, _)| ty);
        quote!((#ret, #(#types),*))
    };
    let decode = if written_back.is_empty() {
        let value = if yielded.is_empty() {
            quote!(#out.0)
        } else {
            let fields = yielded.iter().map(|(_, _, field)| field);
            quote!((#out.0, #(#out.#fields),*))
        };
        quote! {
            |#bytes: &[u8], #outs: &mut [&mut [u8]]| -> ::core::result::Result<#pending, #private::TaskError> {
                let _ = #outs;
                let #out = #private::decode::<#module::#output>(#bytes, "output")?;
                ::core::result::Result::Ok(#value)
            }
        }
    } else {
        // Byte buffers are copied into the lent slices straight from the validated
        // archive (never deserialized into a `Vec` first); the rest is deserialized
        // field by field.
        let field_value = |ty: &dyn quote::ToTokens, field: &Index| {
            let archived = quote!(&#out.#field);
            quote!(#private::deserialize::<#ty, _>(#archived, "output"))
        };
        let ret_value = field_value(&ret, &Index::from(0));
        let value = if yielded.is_empty() {
            ret_value
        } else {
            let values = yielded.iter().map(|(_, ty, field)| field_value(ty, field));
            quote!(::core::result::Result::Ok((#ret_value?, #(#values?),*)))
        };
        quote! {
            |#bytes: &[u8], #outs: &mut [&mut [u8]]| -> ::core::result::Result<#pending, #private::TaskError> {
                let #out = #private::access::<#private::rkyv::Archived<#module::#output>>(#bytes, "output")?;
                #(#written_back)*
                #value
            }
        }
    };
    let forwarded: Vec<TokenStream> = task
        .wire_args()
        .map(|arg| {
            let ident = arg.ident;
            match &arg.kind {
                ArgKind::Bulk(_) if arg.kind.is_bulk_out() => quote!(&mut *#ident),
                ArgKind::InOut(_) => quote!(&*#ident),
                _ => quote!(#ident),
            }
        })
        .collect();
    let by_reference = wire_tuple(names, task, &quote!(&self.client), BulkForm::ByReference);
    // The sync method writes the yielded in-out values back through its `&mut` arguments.
    let assign: Vec<TokenStream> = yielded
        .iter()
        .enumerate()
        .map(|(k, (arg, _, _))| {
            let ident = arg.ident;
            let field = Index::from(k + 1);
            quote!(*#ident = #out.#field;)
        })
        .collect();
    let sync_body = if !lends {
        // No buffer lent: the call runs start to finish with no `Pending` made (see
        // `Client::call_with`); the arguments are taken as the async method takes them.
        let rebound = task.wire_args().zip(&forwarded).map(|(arg, form)| {
            let ident = arg.ident;
            quote!(let #ident = #form;)
        });
        let value = if yielded.is_empty() {
            quote!(#out)
        } else {
            quote!({ #(#assign)* #out.0 })
        };
        quote! {
            let #out = {
                #(#rebound)*
                let mut #out = ::core::option::Option::None;
                #private::Client::call_with(
                    &self.client,
                    self.pool,
                    #module::#id,
                    #query,
                    &mut |#buffer: &mut #private::OutputBuffer| #private::OutputBuffer::encode(#buffer, &#by_reference),
                    &mut |#bytes: &[u8]| {
                        #out = ::core::option::Option::Some((#decode)(#bytes, &mut [])?);
                        ::core::result::Result::Ok(())
                    },
                )?;
                #out
            };
            match #out {
                ::core::option::Option::Some(#out) => ::core::result::Result::Ok(#value),
                ::core::option::Option::None => ::core::result::Result::Err(#private::TaskError::NotRun),
            }
        }
    } else if yielded.is_empty() {
        quote!(#private::Pending::wait(self.#async_name(#query, #(#forwarded),*)?))
    } else {
        quote! {
            let #out = #private::Pending::wait(self.#async_name(#query, #(#forwarded),*)?)?;
            #(#assign)*
            ::core::result::Result::Ok(#out.0)
        }
    };
    let lent = if lends {
        let bulk_ins = task
            .wire_args()
            .filter(|arg| matches!(arg.kind, ArgKind::Bulk(_)) && !arg.kind.is_bulk_out())
            .map(|arg| arg.ident);
        let bulk_outs = task.bulk_out_args().map(|arg| arg.ident);
        quote!(#private::Lent::buffers(&self.client, [#(#bulk_ins),*], [#(#bulk_outs),*]))
    } else {
        quote!(#private::Lent::nothing())
    };
    let spawned = encode(names, task, BulkForm::Inline);
    let docs = task.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let entry = &task.entry;
    let sync_doc = format!("Runs `{entry}` and waits for its output.");
    let async_doc = format!(
        "Submits `{entry}` without waiting; the `Pending` yields {}.{}",
        if yielded.is_empty() {
            "its return value"
        } else {
            "its return value, then its in-out values"
        },
        if lends {
            " It borrows the byte buffers until the call completes (the runtime may use them in place); `wait` fills the `&mut [u8]` ones, and dropping it early waits for the call."
        } else {
            ""
        }
    );
    let spawn_doc = format!(
        "Submits `{entry}` as a fire-and-forget or periodic task.{}",
        if lends {
            " Byte buffers are sent as copies (nothing waits for the task), and a written one is not written back."
        } else {
            ""
        }
    );
    quote! {
        #(#docs)*
        #[doc = ""]
        #[doc = #sync_doc]
        pub fn #sync_name #generics (
            &self,
            #query: #private::PoolQuery,
            #(#sync_params,)*
        ) -> ::core::result::Result<#ret, #private::TaskError> #where_clause {
            #sync_body
        }

        #[doc = #async_doc]
        pub fn #async_name #async_generics (
            &self,
            #query: #private::PoolQuery,
            #(#async_params,)*
        ) -> ::core::result::Result<#private::Pending<#pending_lifetime, #pending>, #private::TaskError> #where_clause {
            let #raw = #private::Client::submit_with(
                &self.client,
                self.pool,
                #module::#id,
                #query,
                &mut |#buffer: &mut #private::OutputBuffer| #private::OutputBuffer::encode(#buffer, &#by_reference),
            )?;
            ::core::result::Result::Ok(#private::Pending::lending(#raw, #decode, #lent))
        }

        #[doc = #spawn_doc]
        pub fn #spawn_name #generics (
            &self,
            #query: #private::PoolQuery,
            #schedule: #private::Schedule,
            #(#spawn_params,)*
        ) -> ::core::result::Result<#private::TaskHandle, #private::TaskError> #where_clause {
            #private::spawn(&self.client, self.pool, #module::#id, #query, #schedule, #spawned)
        }
    }
}

/// The lifetime for which an `async_*` method's `Pending` borrows its byte buffers.
const CALL_LIFETIME: &str = "'__chimaera_call";

/// Which client method a parameter belongs to.
#[derive(Clone, Copy)]
enum Form<'l> {
    /// `x`: as the handler declares it; byte buffers as `&[u8]` / `&mut [u8]`.
    Sync,
    /// `async_x`: `&mut T` becomes `&T`; byte buffers are borrowed for the call's
    /// lifetime.
    Async(&'l Lifetime),
    /// `spawn_x`: `&mut T` becomes `&T`; byte buffers as for `Sync`.
    Spawn,
}

/// `name: Type` of a client method's parameter.
fn param(arg: &Arg, form: Form) -> TokenStream {
    let ident = arg.ident;
    match (&arg.kind, form) {
        (ArgKind::Bulk(_), Form::Async(call)) if arg.kind.is_bulk_out() => {
            quote!(#ident: &#call mut [u8])
        }
        (ArgKind::Bulk(_), Form::Async(call)) => quote!(#ident: &#call [u8]),
        (ArgKind::Bulk(_), _) if arg.kind.is_bulk_out() => quote!(#ident: &mut [u8]),
        (ArgKind::Bulk(_), _) => quote!(#ident: &[u8]),
        (ArgKind::InOut(_), Form::Async(_) | Form::Spawn) => match arg.ty {
            Type::Reference(reference) => {
                let shared_ty = Type::Reference(TypeReference {
                    mutability: None,
                    ..reference.clone()
                });
                quote!(#ident: #shared_ty)
            }
            ty => quote!(#ident: #ty),
        },
        (_, _) => {
            let ty = arg.ty;
            quote!(#ident: #ty)
        }
    }
}

/// How byte buffers go into an input archive.
#[derive(Clone, Copy)]
enum BulkForm {
    /// Through `Client::bulk_ref`: a reference when they lie in the client's data share
    /// (the `Pending` then borrows them until the call completes).
    ByReference,
    /// Always copied into the archive (`create`, `spawn_*`: nothing holds the buffers).
    Inline,
}

/// `encode(&(StrRef(a), ByRef(&b), …))?`: the task's input archived from the client's
/// parameters in place, byte buffers copied in.
fn encode(names: &Names, task: &Task, form: BulkForm) -> TokenStream {
    let private = &names.private;
    let tuple = wire_tuple(names, task, &quote!(&self.client), form);
    quote!(#private::encode(&#tuple)?)
}

/// `(StrRef(a), ByRef(&b), …)`: the value whose archive is the task's input.
fn wire_tuple(names: &Names, task: &Task, client: &TokenStream, form: BulkForm) -> TokenStream {
    let private = &names.private;
    let wrapped = task.wire_args().map(|arg| {
        let ident: &Ident = arg.ident;
        match (&arg.kind, form) {
            (ArgKind::Borrowed(Borrow::Str), _) => quote!(#private::StrRef(#ident)),
            (ArgKind::Bulk(_), BulkForm::ByReference) => {
                quote!(#private::Client::bulk_ref(#client, &*#ident))
            }
            (ArgKind::Bulk(_), BulkForm::Inline) => quote!(#private::bulk_inline(&*#ident)),
            (ArgKind::Borrowed(Borrow::Bytes(_) | Borrow::Slice(_)), _) => {
                quote!(#private::SliceRef(#ident))
            }
            (ArgKind::Borrowed(Borrow::Ref(_)) | ArgKind::InOut(_), _) => {
                quote!(#private::ByRef(#ident))
            }
            (ArgKind::In, _) => quote!(#private::ByRef(&#ident)),
            (ArgKind::Context, _) => unreachable!("wire_args skips the context"),
        }
    });
    quote!((#(#wrapped,)*))
}
