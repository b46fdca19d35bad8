//! `impl Composable` for `#[chimod(composable)]`: a compose entry's `params` become the
//! `create` task's input.
//!
//! `create` takes its parameters as one argument (besides the context): the params are
//! deserialized into that argument's owned type, inferred from the generated
//! `TaskIn::Create` tuple, so the user names no type here. A `create` without parameters
//! accepts only empty params. `validate::check_composable` rejects every other form
//! before this runs. A parameter type without serde's `Deserialize` fails to compile
//! with the error on that argument's type.
use crate::expand::{local, respan, Names};
use crate::model::{ArgKind, ChimodImpl};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

pub(crate) fn expand(model: &ChimodImpl, names: &Names) -> TokenStream {
    if model.args.composable.is_none() {
        return TokenStream::new();
    }
    let Some(create) = model.create() else {
        return TokenStream::new();
    };
    let private = &names.private;
    let module = &names.module;
    let self_ty = &model.item.self_ty;
    let params = local("params");
    let value = local("value");
    let module_name = quote!(<Self as #private::ChiMod>::info().name);
    let mut args = create.wire_args();
    let (first, second) = (args.next(), args.next());
    let readable =
        first.is_none_or(|arg| !matches!(arg.kind, ArgKind::Bulk(_) | ArgKind::InOut(_)));
    if second.is_some() || !readable {
        // Reported by `validate::check_composable`.
        return TokenStream::new();
    }
    let input = match first {
        Some(arg) => {
            // Every token of the call at the parameter's type, so a type serde cannot
            // read is reported there (with `ComposeParam`'s message) and nowhere else.
            let read_as = respan(quote!(#private::ReadComposeParams::read_as), arg.ty.span());
            let read = quote_spanned! {arg.ty.span()=>
                #read_as(#params, #module_name)?
            };
            quote! {
                let #value = #read;
                #module::TaskIn::Create((#value,))
            }
        }
        None => quote! {
            #private::ComposeParams::deserialize::<#private::NoComposeParams>(#params, #module_name)?;
            #module::TaskIn::Create(())
        },
    };
    let wire_bounds = crate::expand::wire::bounds(model, names);
    quote! {
        impl #private::Composable for #self_ty #wire_bounds {
            fn create_input(
                #params: &#private::ComposeParams,
            ) -> ::core::result::Result<#private::Bytes, #private::TaskError> {
                <Self as #private::ChiMod>::save_in(&{ #input })
            }
        }
    }
}
