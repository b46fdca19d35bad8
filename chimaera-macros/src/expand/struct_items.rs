//! The container struct as emitted: unchanged, plus hidden associated consts the impl's
//! expansion reads (`__CHIMAERA_LANES`, the lane table of `ModuleInfo`, and
//! `__CHIMAERA_MANIFEST`, see [`tracking`](super::tracking)).
use crate::manifest::ManifestPath;
use crate::model::ChimodStruct;
use proc_macro2::TokenStream;
use quote::quote;

pub(crate) fn expand(
    model: &ChimodStruct,
    runtime: &TokenStream,
    manifest: &ManifestPath,
) -> TokenStream {
    let item = model.item;
    let ident = &item.ident;
    let private = quote!(#runtime::__private);
    let lanes = &model.args.lanes;
    let low = (0..lanes.low).map(|_| quote!(#private::LanePriority::LowLatency));
    let high = (0..lanes.high).map(|_| quote!(#private::LanePriority::HighLatency));
    let manifest_path = manifest.path.to_string_lossy();
    quote! {
        #item

        impl #ident {
            #[doc(hidden)]
            pub const __CHIMAERA_LANES: &'static [#private::LanePriority] = &[#(#low,)* #(#high,)*];
            #[doc(hidden)]
            pub const __CHIMAERA_MANIFEST: &'static str = #manifest_path;
        }
    }
}
