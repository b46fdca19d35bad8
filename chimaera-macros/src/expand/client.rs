//! `FooClient`: the typed client of a module's pools.
//!
//! Fixed methods: `create` / `create_with` (get or create a pool, passing `create`'s
//! arguments), `attach`, `pool_id`, `client`, and `destroy_pool` unless a task has that
//! name (admin's `kDestroyPool`, which destroys any pool, replaces it). Per task with an id of 10
//! or more: `x` (submit and wait), `async_x` (submit, returning a `Pending`) and
//! `spawn_x` (fire-and-forget or periodic). Parameters keep the handler's names and
//! types (`&mut T` in-out arguments are `&T` for `async_x`/`spawn_x`, and written back
//! by `x`), and borrowed arguments are archived in place through `StrRef`, `SliceRef`
//! and `ByRef`, never copied into owned values first. `&[u8]` / `&mut [u8]` go through
//! `Client::bulk_ref`: a reference when they lie in the client's data share (a buffer
//! from `allocate_buffer`), else the bytes inline; `x` copies a `&mut [u8]` that came
//! back inline into the caller's slice.
use crate::expand::{local, Names, TaskNames};
use crate::model::{Arg, ArgKind, Borrow, ChimodImpl, Task};
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote};
use std::collections::BTreeSet;
use syn::{Type, TypeReference};

pub fn expand(
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
        let params = task.wire_args().map(|arg| param(arg, false));
        let params_again = task.wire_args().map(|arg| param(arg, false));
        let forwarded = task.wire_args().map(|arg| arg.ident);
        let encoded = encode(names, task, &quote!(#chi));
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
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        pub struct #client {
            client: #private::Client,
            pool: #private::PoolId,
        }

        #[allow(dead_code)]
        impl #client {
            #create

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

            #destroy_pool

            #(#tasks)*
        }
    }
}

fn task_methods(names: &Names, task: &Task) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let TaskNames { id, output, .. } = TaskNames::of(task);
    let (query, schedule, out, bytes) = (
        local("query"),
        local("schedule"),
        local("out"),
        local("bytes"),
    );
    let sync_name = &task.sig.ident;
    let async_name = format_ident!("async_{}", task.name, span = sync_name.span());
    let spawn_name = format_ident!("spawn_{}", task.name, span = sync_name.span());
    let generics = &task.sig.generics;
    let where_clause = &generics.where_clause;
    let sync_params: Vec<_> = task.wire_args().map(|arg| param(arg, false)).collect();
    let shared_params: Vec<_> = task.wire_args().map(|arg| param(arg, true)).collect();
    let ret = match &task.ret.ty {
        Some(ty) => quote!(#ty),
        None => quote!(()),
    };
    let in_outs: Vec<&Arg> = task.in_out_args().collect();
    let forwarded = task.wire_args().map(|arg| {
        let ident = arg.ident;
        if arg.kind.is_in_out() {
            quote!(&*#ident)
        } else {
            quote!(#ident)
        }
    });
    let (pending, decoded, sync_body) = if in_outs.is_empty() {
        (
            ret.clone(),
            quote!(::core::result::Result::map(#private::decode::<#module::#output>(#bytes, "output"), |#out| #out.0)),
            quote!(#private::Pending::wait(self.#async_name(#query, #(#forwarded),*)?)),
        )
    } else {
        let write_back = in_outs.iter().enumerate().map(|(i, arg)| {
            let ident = arg.ident;
            let field = syn::Index::from(i + 1);
            match arg.kind {
                ArgKind::BulkMut => quote!(#private::bulk_write_back(#ident, #out.#field)?;),
                _ => quote!(*#ident = #out.#field;),
            }
        });
        (
            quote!(#module::#output),
            quote!(#private::decode::<#module::#output>(#bytes, "output")),
            quote! {
                let #out = #private::Pending::wait(self.#async_name(#query, #(#forwarded),*)?)?;
                #(#write_back)*
                ::core::result::Result::Ok(#out.0)
            },
        )
    };
    let encoded = encode(names, task, &quote!(&self.client));
    let tuple = wire_tuple(names, task, &quote!(&self.client));
    let buffer = local("buffer");
    let docs = task.attrs.iter().filter(|a| a.path().is_ident("doc"));
    let entry = &task.entry;
    let sync_doc = format!("Runs `{entry}` and waits for its output.");
    let async_doc = format!(
        "Submits `{entry}` without waiting; the `Pending` yields {}.",
        if in_outs.is_empty() {
            "its return value"
        } else {
            "its return value, then its in-out values"
        }
    );
    let spawn_doc = format!("Submits `{entry}` as a fire-and-forget or periodic task.");
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
        pub fn #async_name #generics (
            &self,
            #query: #private::PoolQuery,
            #(#shared_params,)*
        ) -> ::core::result::Result<#private::Pending<#pending>, #private::TaskError> #where_clause {
            #private::submit_with(
                &self.client,
                self.pool,
                #module::#id,
                #query,
                &mut |#buffer: &mut #private::OutputBuffer| #private::OutputBuffer::encode(#buffer, &#tuple),
                |#bytes: &[u8]| #decoded,
            )
        }

        #[doc = #spawn_doc]
        pub fn #spawn_name #generics (
            &self,
            #query: #private::PoolQuery,
            #schedule: #private::Schedule,
            #(#shared_params,)*
        ) -> ::core::result::Result<#private::TaskHandle, #private::TaskError> #where_clause {
            #private::spawn(&self.client, self.pool, #module::#id, #query, #schedule, #encoded)
        }
    }
}

/// `name: Type` as the handler declares it; with `shared`, `&mut T` becomes `&T`.
fn param(arg: &Arg, shared: bool) -> TokenStream {
    let ident = arg.ident;
    match (&arg.kind, arg.ty) {
        (ArgKind::InOut(_) | ArgKind::BulkMut, Type::Reference(reference)) if shared => {
            let shared_ty = Type::Reference(TypeReference {
                mutability: None,
                ..reference.clone()
            });
            quote!(#ident: #shared_ty)
        }
        (_, ty) => quote!(#ident: #ty),
    }
}

/// `encode(&(StrRef(a), ByRef(&b), …))?`: the task's input archived from the client's
/// parameters in place; byte buffers go through `client.bulk_ref`, which sends a
/// reference instead of the bytes when they lie in the client's data share.
fn encode(names: &Names, task: &Task, client: &TokenStream) -> TokenStream {
    let private = &names.private;
    let tuple = wire_tuple(names, task, client);
    quote!(#private::encode(&#tuple)?)
}

/// `(StrRef(a), ByRef(&b), …)`: the value whose archive is the task's input.
fn wire_tuple(names: &Names, task: &Task, client: &TokenStream) -> TokenStream {
    let private = &names.private;
    let wrapped = task.wire_args().map(|arg| {
        let ident: &Ident = arg.ident;
        match &arg.kind {
            ArgKind::Borrowed(Borrow::Str) => quote!(#private::StrRef(#ident)),
            ArgKind::Borrowed(Borrow::Bulk) | ArgKind::BulkMut => {
                quote!(#private::Client::bulk_ref(#client, #ident))
            }
            ArgKind::Borrowed(Borrow::Bytes(_) | Borrow::Slice(_)) => {
                quote!(#private::SliceRef(#ident))
            }
            ArgKind::Borrowed(Borrow::Ref(_)) | ArgKind::InOut(_) => {
                quote!(#private::ByRef(#ident))
            }
            ArgKind::In => quote!(#private::ByRef(&#ident)),
            ArgKind::Context => unreachable!("wire_args skips the context"),
        }
    });
    quote!((#(#wrapped,)*))
}
