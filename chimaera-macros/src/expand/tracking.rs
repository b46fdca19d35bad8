//! Items that tie the expansion to its manifests.
//!
//! * `const _: &str = include_str!("…")` per manifest file that exists (parsable or
//!   not): cargo then tracks the file, so editing the YAML re-runs the checks.
//! * The struct's hidden `__CHIMAERA_MANIFEST` path, compared at compile time with the
//!   impl's: both attributes must read the same manifest. The comparison is a `const`
//!   byte loop, so a mismatch is a compile error whose message we choose.
use crate::expand::Names;
use crate::manifest::ManifestPath;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use std::path::Path;

/// `include_str!` of each existing file, so cargo rebuilds when one changes.
pub(crate) fn track<'a>(files: impl IntoIterator<Item = &'a Path>) -> TokenStream {
    files
        .into_iter()
        .filter(|path| path.is_file())
        .filter_map(|path| path.to_str())
        .map(|path| {
            quote!(
                const _: &str = ::core::include_str!(#path);
            )
        })
        .collect()
}

/// Fails to compile unless the struct's manifest is `location`.
pub(crate) fn same_manifest(
    names: &Names,
    self_ty: &syn::Type,
    location: &ManifestPath,
    span: Span,
) -> TokenStream {
    let Some(path) = location.path.to_str() else {
        return TokenStream::new();
    };
    let message = format!(
        "the `#[chimod]` impl of `{}` reads `{}` but its struct reads another manifest; give both attributes the same `manifest = \"…\"`",
        names.container, location.display
    );
    quote_spanned! {span=>
        const _: () = {
            let expected = #path.as_bytes();
            let actual = <#self_ty>::__CHIMAERA_MANIFEST.as_bytes();
            let mut same = expected.len() == actual.len();
            let mut at = 0;
            while same && at < expected.len() {
                same = expected[at] == actual[at];
                at += 1;
            }
            ::core::assert!(same, #message);
        };
    }
}
