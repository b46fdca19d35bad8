//! The `foo_tasks` module: what both sides of the wire agree on.
//!
//! Per task: its method id const (`CUSTOM`), its input type (`CustomIn`, the tuple of its
//! arguments' owned forms), the archived input (`ArchivedCustomIn`, what routing hooks
//! receive) and, for all but `create`, its output (`CustomOut`, the tuple of the return
//! value and the in-out arguments). Then `METHODS` (id order) and the `TaskIn` /
//! `TaskOut` enums of `ChiMod`.
//!
//! User types are written inside a child module, so a path relative to the user's
//! module (`super::X`, `self::X`, `Self`) is rewritten to mean the same thing there; any
//! other name reaches the user's scope through `use super::*`.
use crate::expand::{Names, TaskNames};
use crate::model::{ArgKind, Borrow, ChimodImpl, Task};
use proc_macro2::{Ident, Span, TokenStream};
use quote::quote;
use syn::visit_mut::VisitMut;
use syn::{Path, PathSegment, Type};

pub(crate) fn expand(model: &ChimodImpl, names: &Names, module_name: &str) -> TokenStream {
    let private = &names.private;
    let module = &names.module;
    let tasks = model.tasks_by_id();
    let outer = Outer {
        container: &names.container,
    };
    let ids = tasks.iter().map(|task| {
        let id_const = TaskNames::of(task).id;
        let id = task.id;
        let doc = format!("Method id of `{}`.", task.entry);
        quote!(#[doc = #doc] pub const #id_const: #private::MethodId = #id;)
    });
    let rows = tasks.iter().map(|task| {
        let id_const = TaskNames::of(task).id;
        let (entry, function) = (&task.entry, &task.name);
        quote!(#private::MethodInfo { name: #entry, id: #id_const, function: #function })
    });
    let wire_types = tasks.iter().map(|task| wire_types(names, task, &outer));
    let in_variants = tasks.iter().map(|task| {
        let TaskNames { variant, input, .. } = TaskNames::of(task);
        let doc = format!("Input of `{}`.", task.entry);
        quote!(#[doc = #doc] #variant(#input))
    });
    let out_variants = tasks.iter().filter(|t| !t.is_create()).map(|task| {
        let TaskNames {
            variant, output, ..
        } = TaskNames::of(task);
        let doc = format!("Output of `{}`.", task.entry);
        quote!(#[doc = #doc] #variant(#output))
    });
    let doc = format!("Method ids and wire types of the `{module_name}` module.");
    quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        pub mod #module {
            #[allow(unused_imports)]
            use super::*;

            #(#ids)*

            /// Every implemented method, in id order.
            pub const METHODS: &[#private::MethodInfo] = &[#(#rows),*];

            #(#wire_types)*

            /// A decoded input of any method.
            pub enum TaskIn {
                #(#in_variants,)*
            }

            /// A decoded output of any method but `kCreate`.
            pub enum TaskOut {
                #(#out_variants,)*
            }
        }
    }
}

fn wire_types(names: &Names, task: &Task, outer: &Outer) -> TokenStream {
    let private = &names.private;
    let TaskNames {
        input,
        archived,
        output,
        ..
    } = TaskNames::of(task);
    let inputs = task.wire_args().map(|arg| {
        let owned = match &arg.kind {
            ArgKind::Borrowed(Borrow::Str) => quote!(::std::string::String),
            ArgKind::Bulk(_) => quote!(#private::Bulk),
            ArgKind::Borrowed(Borrow::Bytes(elem) | Borrow::Slice(elem)) => {
                let elem = outer.rewrite(elem);
                quote!(::std::vec::Vec<#elem>)
            }
            ArgKind::Borrowed(Borrow::Ref(inner)) | ArgKind::InOut(inner) => {
                let inner = outer.rewrite(inner);
                quote!(#inner)
            }
            ArgKind::In => {
                let ty = outer.rewrite(arg.ty);
                quote!(#ty)
            }
            ArgKind::Context => unreachable!("wire_args skips the context"),
        };
        quote!(#owned,)
    });
    let entry = &task.entry;
    let input_doc = format!("Input of `{entry}`: its arguments' owned forms, in order.");
    let archived_doc =
        format!("`{input}` as archived: what `route`/`dynamic` hooks of `{entry}` read.");
    let mut tokens = quote! {
        #[doc = #input_doc]
        pub type #input = (#(#inputs)*);
        #[doc = #archived_doc]
        pub type #archived = #private::rkyv::Archived<#input>;
    };
    if !task.is_create() {
        let ret = match &task.ret.ty {
            Some(ty) => {
                let ty = outer.rewrite(ty);
                quote!(#ty)
            }
            None => quote!(()),
        };
        let in_outs = task.in_out_args().map(|arg| match &arg.kind {
            ArgKind::InOut(inner) => {
                let inner = outer.rewrite(inner);
                quote!(#inner,)
            }
            _ => quote!(#private::Bulk,),
        });
        let output_doc =
            format!("Output of `{entry}`: its return value, then its in-out arguments.");
        tokens.extend(quote! {
            #[doc = #output_doc]
            pub type #output = (#ret, #(#in_outs)*);
        });
    }
    tokens
}

/// Rewrites a type of the user's module so it means the same inside a child module.
#[derive(Clone, Copy)]
struct Outer<'a> {
    container: &'a Ident,
}

impl Outer<'_> {
    fn rewrite(&self, ty: &Type) -> Type {
        let mut ty = ty.clone();
        let mut visitor = *self;
        visitor.visit_type_mut(&mut ty);
        ty
    }
}

impl VisitMut for Outer<'_> {
    fn visit_path_mut(&mut self, path: &mut Path) {
        if path.leading_colon.is_none() {
            if let Some(first) = path.segments.first_mut() {
                let span = first.ident.span();
                if first.ident == "super" {
                    path.segments.insert(0, segment("super", span));
                } else if first.ident == "self" {
                    first.ident = Ident::new("super", span);
                } else if first.ident == "Self" {
                    first.ident = self.container.clone();
                    path.segments.insert(0, segment("super", span));
                }
            }
        }
        syn::visit_mut::visit_path_mut(self, path);
    }
}

fn segment(name: &str, span: Span) -> PathSegment {
    PathSegment::from(Ident::new(name, span))
}
