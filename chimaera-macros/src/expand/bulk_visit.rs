//! `ChiMod::visit_bulk`: the bulk arguments of a task's archived input, for a task that
//! leaves its node (the runtime copies the client-share ranges they reference into the
//! frame, and writes back those the handler writes).
//!
//! One arm per task with bulk arguments: validate the input (`access`), then call the
//! visitor on each bulk field with whether the handler writes it, in argument order.
//! Tasks without bulk arguments, and unknown ids, visit nothing.
use crate::expand::{local, Names, TaskNames};
use crate::model::{ArgKind, ChimodImpl};
use proc_macro2::TokenStream;
use quote::quote;
use syn::Index;

/// The `fn visit_bulk` item of the generated `impl ChiMod`.
pub(crate) fn method(model: &ChimodImpl, names: &Names) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let (method, input, visit, archived) = (
        local("method"),
        local("input"),
        local("visit"),
        local("archived"),
    );
    let arms = model
        .tasks_by_id()
        .into_iter()
        .filter(|task| !task.is_create() && task.has_bulk_args())
        .map(|task| {
            let TaskNames {
                id, archived: ty, ..
            } = TaskNames::of(task);
            let visits = task
                .wire_args()
                .enumerate()
                .filter(|(_, arg)| matches!(arg.kind, ArgKind::Bulk(_)))
                .map(|(i, arg)| {
                    let field = Index::from(i);
                    let writes = arg.kind.is_bulk_out();
                    quote!(#visit(&#archived.#field, #writes);)
                });
            quote! {
                #module::#id => {
                    let #archived = #private::access::<#module::#ty>(#input, "input")?;
                    #(#visits)*
                }
            }
        });
    quote! {
        fn visit_bulk(
            #method: #private::MethodId,
            #input: &[u8],
            #visit: &mut dyn ::core::ops::FnMut(&#private::ArchivedBulk, bool),
        ) -> ::core::result::Result<(), #private::TaskError> {
            match #method {
                #(#arms)*
                _ => { let _ = (#input, #visit); }
            }
            ::core::result::Result::Ok(())
        }
    }
}
