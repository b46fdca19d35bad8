//! The user's impl block as emitted: unchanged but for its `#[task]` attributes, which
//! only `#[chimod]` understands (left in place they would expand the stray-`#[task]`
//! error).
use crate::attr;
use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{ImplItem, ItemImpl};

pub(crate) fn expand(item: &ItemImpl) -> TokenStream {
    let mut item = item.clone();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(function) = impl_item {
            function.attrs.retain(|a| !attr::is_task(a));
        }
    }
    item.into_token_stream()
}
