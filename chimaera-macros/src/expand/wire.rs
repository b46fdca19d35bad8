//! `#[wire]`: a user type that travels as a task argument, output or create parameter.
//!
//! Adds the rkyv derives (archive, serialize, deserialize) through the runtime crate's
//! re-export, so the user's crate needs no `rkyv` dependency of its own; `#[wire(compose)]`
//! adds serde's `Deserialize` the same way, for `create` parameters read from compose
//! YAML. Other derives and attributes of the item stay as written, and may use the
//! derives' helper attributes (`#[rkyv(…)]`, `#[serde(…)]`).
//!
//! [`bounds`] is the other half: the `where T: Wire` clauses the generated `ChiMod`
//! impl, client and `Composable` impl carry for every argument and return type the user
//! wrote. A type without a wire layout then fails at that clause — one error, spanned at
//! the type in the task's signature, with the message of `Wire`'s
//! `#[diagnostic::on_unimplemented]` — and the bodies of those impls, which assume the
//! clause, add no cascade of rkyv errors. (Identical errors at one span are reported
//! once, so three impls carrying one clause still make one error.)
use crate::attr::WireArgs;
use crate::expand::Names;
use crate::model::{ArgKind, Borrow, ChimodImpl};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::Type;

pub(crate) fn expand(args: &WireArgs, runtime: &TokenStream, item: TokenStream) -> TokenStream {
    let rkyv = quote!(#runtime::rkyv);
    let serde = args.compose.then(|| {
        let path = quote!(#runtime::serde).to_string().replace(' ', "");
        quote! {
            #[derive(#runtime::serde::Deserialize)]
            #[serde(crate = #path)]
        }
    });
    quote! {
        #[derive(#rkyv::Archive, #rkyv::Serialize, #rkyv::Deserialize)]
        #[rkyv(crate = #rkyv)]
        #serde
        #item
    }
}

/// `where T: Wire, …` for every user-written type that travels in a task (empty when
/// there is none).
pub(crate) fn bounds(model: &ChimodImpl, names: &Names) -> TokenStream {
    let private = &names.private;
    let mut seen = Vec::new();
    let mut predicates = Vec::new();
    let types = model.tasks.iter().flat_map(|task| {
        let args = task.wire_args().filter_map(|arg| match &arg.kind {
            ArgKind::In => Some(arg.ty),
            ArgKind::InOut(inner)
            | ArgKind::Borrowed(Borrow::Ref(inner) | Borrow::Slice(inner)) => Some(inner),
            ArgKind::Borrowed(Borrow::Str | Borrow::Bytes(_))
            | ArgKind::Bulk(_)
            | ArgKind::Context => None,
        });
        args.chain(task.ret.ty.as_ref().filter(|_| !task.is_create()))
    });
    for ty in types.filter(|ty| can_bound(ty)) {
        let text = ty.to_token_stream().to_string();
        if seen.contains(&text) {
            continue;
        }
        seen.push(text);
        // Every token at the type, so the error points at the type and nowhere else.
        let wire = crate::expand::respan(quote!(#private::Wire), ty.span());
        predicates.push(quote_spanned!(ty.span()=> #ty: #wire));
    }
    if predicates.is_empty() {
        TokenStream::new()
    } else {
        quote!(where #(#predicates),*)
    }
}

/// Whether `ty` can stand in a where clause of a generated impl: no lifetimes or
/// references (they cannot be elided there), no `Self` (it would mean the generated
/// type), no `impl Trait`. Such types keep rkyv's own errors.
fn can_bound(ty: &Type) -> bool {
    struct Finder(bool);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_lifetime(&mut self, _: &'ast syn::Lifetime) {
            self.0 = false;
        }
        fn visit_type_reference(&mut self, _: &'ast syn::TypeReference) {
            self.0 = false;
        }
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = false;
        }
        fn visit_ident(&mut self, ident: &'ast proc_macro2::Ident) {
            if ident == "Self" {
                self.0 = false;
            }
        }
    }
    let mut finder = Finder(true);
    finder.visit_type(ty);
    finder.0
}
