//! Code generation: one file per emitted item, all reading the validated model.
//!
//! * [`struct_items`]: the container struct, unchanged, plus its hidden lane table and
//!   manifest path;
//! * [`user_impl`]: the user's impl block with the `#[task]` attributes removed;
//! * [`method_table`]: the `foo_tasks` module — method id consts, `METHODS`, wire types;
//! * [`dispatch`]: `impl ChiMod` — info, create/destroy, run, monitor, dynamic routing,
//!   save/load, new_copy, and [`bulk_visit`]'s `visit_bulk`;
//! * [`client`]: `FooClient`, the typed client;
//! * [`compose`]: `impl Composable` for `#[chimod(composable)]`;
//! * [`wire`]: the derives `#[wire]` adds to a user's argument type;
//! * [`tracking`]: `include_str!`s that make cargo rebuild when a manifest changes, and
//!   the check that the struct and the impl read one manifest.
//!
//! Generated code names every outside item by full path through
//! `<chimaera or chimaera_core>::__private` ([`Names::private`]) and `::core`/`::std`;
//! its own locals use mixed-site hygiene so they can never capture or shadow the user's
//! names (a task argument may well be called `query`).
pub(crate) mod bulk_visit;
pub(crate) mod client;
pub(crate) mod compose;
pub(crate) mod dispatch;
pub(crate) mod method_table;
pub(crate) mod struct_items;
pub(crate) mod tracking;
pub(crate) mod user_impl;
pub(crate) mod wire;

use crate::model::Task;
use crate::names;
use proc_macro2::{Ident, Span, TokenStream};
use proc_macro_crate::FoundCrate;
use quote::{format_ident, quote};

/// The path of the crate generated code goes through: `::chimaera` when the user
/// depends on the facade (also inside the facade's own tests and examples), else
/// `::chimaera_core`.
pub(crate) fn runtime_crate() -> Result<TokenStream, String> {
    let path_of = |found: FoundCrate, own: &str| {
        let name = match found {
            FoundCrate::Itself => own.to_owned(),
            FoundCrate::Name(name) => name,
        };
        let ident = Ident::new(&name, Span::call_site());
        quote!(::#ident)
    };
    if let Ok(found) = proc_macro_crate::crate_name("chimaera") {
        return Ok(path_of(found, "chimaera"));
    }
    if let Ok(found) = proc_macro_crate::crate_name("chimaera-core") {
        return Ok(path_of(found, "chimaera_core"));
    }
    Err("`#[chimod]` generates code for the chimaera runtime; add `chimaera` (or `chimaera-core`) to [dependencies]".to_owned())
}

/// Names of generated items shared by the generators.
pub(crate) struct Names {
    /// `::chimaera::__private`.
    pub private: TokenStream,
    /// The container struct.
    pub container: Ident,
    /// `FooClient`.
    pub client: Ident,
    /// `foo_tasks`.
    pub module: Ident,
}

impl Names {
    pub(crate) fn new(runtime: &TokenStream, container: &Ident) -> Self {
        let base = container.to_string();
        Names {
            private: quote!(#runtime::__private),
            container: container.clone(),
            client: Ident::new(&names::client_type(&base), container.span()),
            module: Ident::new(&names::tasks_module(&base), container.span()),
        }
    }
}

/// Names of the generated items of one task.
pub(crate) struct TaskNames {
    /// `CUSTOM`: its method id const.
    pub id: Ident,
    /// `Custom`: its variant of `TaskIn`/`TaskOut`.
    pub variant: Ident,
    /// `CustomIn`.
    pub input: Ident,
    /// `ArchivedCustomIn`.
    pub archived: Ident,
    /// `CustomOut`.
    pub output: Ident,
}

impl TaskNames {
    pub(crate) fn of(task: &Task) -> Self {
        let span = task.sig.ident.span();
        let camel = names::upper_camel(&task.name);
        TaskNames {
            id: Ident::new(&names::screaming_snake(&task.name), span),
            variant: Ident::new(&camel, span),
            input: format_ident!("{}In", camel, span = span),
            archived: format_ident!("Archived{}In", camel, span = span),
            output: format_ident!("{}Out", camel, span = span),
        }
    }
}

/// A local of generated code, invisible to the user's code (mixed-site hygiene).
pub(crate) fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

/// The value of a call to a task handler as a `Result<R, TaskError>`.
pub(crate) fn into_task_result(names: &Names, task: &Task, call: TokenStream) -> TokenStream {
    let private = &names.private;
    if task.ret.fallible {
        quote! {
            ::core::result::Result::map_err(#call, ::core::convert::Into::<#private::TaskError>::into)
        }
    } else {
        quote!(::core::result::Result::Ok::<_, #private::TaskError>(#call))
    }
}

/// `tokens` with every span (inside groups too) set to `span`.
pub(crate) fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = proc_macro2::TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}
