//! `#[chimod]` and `#[task]`: compile-time generation of chimaera-rs modules.
//!
//! ```ignore
//! #[chimod(name = "MOD_NAME")]          // module_name of chimaera_mod.yaml
//! pub struct ModName { /* container state */ }
//!
//! #[chimod]
//! impl ModName {
//!     #[task(method = 0)]
//!     fn create(ctx: &mut RunContext, params: CreateParams) -> Result<Self, TaskError> { … }
//!     #[task(method = 10)]
//!     fn custom(&self, ctx: &mut RunContext, data: &str, operation_id: u32) -> String { … }
//! }
//! ```
//!
//! generates, for `ModName`: the method table and wire types (`mod_name_tasks`), the
//! `ChiMod` dispatch, and a typed client (`ModNameClient`), all checked against the
//! module's `chimaera_mod.yaml` and the repository's `chimaera_repo.yaml`.
//!
//! This file holds only the entry points. Each runs the pipeline
//! [`attr`] → [`model`] → [`manifest`] + [`validate`] → [`expand`] with one [`ctxt::Ctxt`]
//! collecting every error, and always emits the user's item, so that one mistake gives
//! one precise error instead of a cascade (and IDEs keep working).
mod attr;
mod ctxt;
mod expand;
mod manifest;
mod model;
mod names;
mod validate;

use crate::ctxt::Ctxt;
use crate::expand::{
    client, compose, dispatch, method_table, struct_items, tracking, user_impl, wire, Names,
};
use crate::manifest::Env;
use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::ToTokens;

/// Marks a chimod: on the container struct with `name = "…"` (and optionally
/// `manifest = "…"`, `lanes(low = N, high = M)`), and on its impl block, whose
/// `#[task(method = N)]` methods are the module's tasks.
#[proc_macro_attribute]
pub fn chimod(args: TokenStream, input: TokenStream) -> TokenStream {
    let env = Env::from_process(proc_macro::Span::call_site().local_file());
    let original = TokenStream2::from(input.clone());
    let output = match syn::parse::<syn::Item>(input) {
        Ok(syn::Item::Struct(item)) => chimod_struct(args.into(), &item, &env),
        Ok(syn::Item::Impl(item)) => chimod_impl(args.into(), &item, &env),
        Ok(other) => with_error(
            other.into_token_stream(),
            syn::Error::new(
                Span::call_site(),
                "`#[chimod]` goes on the container struct (with `name = \"…\"`) and on its impl block",
            ),
        ),
        Err(error) => with_error(original, error),
    };
    output.into()
}

/// Marks a task method inside a `#[chimod] impl` block, which consumes it; anywhere else
/// it is an error.
#[proc_macro_attribute]
pub fn task(_args: TokenStream, input: TokenStream) -> TokenStream {
    let error = syn::Error::new(
        Span::call_site(),
        "`#[task]` only works on methods of a `#[chimod] impl` block; add `#[chimod]` above the impl",
    );
    with_error(input.into(), error).into()
}

/// Marks a type that travels as a task argument, output or create parameter: derives
/// its rkyv layout (and with `#[wire(compose)]` serde's `Deserialize`, for params read
/// from compose YAML) through the runtime crate, so no `rkyv` or `serde` dependency of
/// your own is needed.
#[proc_macro_attribute]
pub fn wire(args: TokenStream, input: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let args = attr::wire_args(&cx, args.into());
    let output = match expand::runtime_crate() {
        Ok(runtime) => wire::expand(&args, &runtime, input.into()),
        Err(message) => {
            cx.error_at(Span::call_site(), message);
            input.into()
        }
    };
    with_errors(output, cx.check()).into()
}

fn chimod_struct(args: TokenStream2, item: &syn::ItemStruct, env: &Env) -> TokenStream2 {
    let cx = Ctxt::new();
    let args = attr::struct_args(&cx, args);
    let model = model::ChimodStruct::from_syn(&cx, item, args);
    let written = model.args.manifest.as_ref().map(syn::LitStr::value);
    let location = manifest::locate(env, written.as_deref());
    // A manifest that cannot be read is reported once, by the impl's attribute (which
    // also reads it, and whose manifest must be this one).
    let module = manifest::read_module(&location).ok();
    let repo_location = manifest::find_repo(env, &location);
    let repo = match (&module, &repo_location) {
        (Some(_), Some(repo)) => {
            let at = model
                .args
                .manifest
                .as_ref()
                .map_or_else(Span::call_site, syn::LitStr::span);
            manifest::read_repo(repo)
                .map_err(|problems| manifest::report_at(&cx, at, problems))
                .ok()
        }
        _ => None,
    };
    validate::check_struct(&cx, &model, module.as_ref(), repo.as_ref());
    let mut output = match expand::runtime_crate() {
        Ok(runtime) => struct_items::expand(&model, &runtime, &location),
        Err(message) => {
            cx.error_at(Span::call_site(), message);
            item.into_token_stream()
        }
    };
    let repo_path = repo_location.as_ref().map(|r| r.path.as_path());
    output.extend(tracking::track(
        std::iter::once(location.path.as_path()).chain(repo_path),
    ));
    with_errors(output, cx.check())
}

fn chimod_impl(args: TokenStream2, item: &syn::ItemImpl, env: &Env) -> TokenStream2 {
    let cx = Ctxt::new();
    let args = attr::impl_args(&cx, args);
    let mut output = user_impl::expand(item);
    let Some(model) = model::ChimodImpl::from_syn(&cx, item, args) else {
        return with_errors(output, cx.check());
    };
    let written = model.args.manifest.as_ref().map(syn::LitStr::value);
    let location = manifest::locate(env, written.as_deref());
    let module = match manifest::read_module(&location) {
        Ok(module) => Some(module),
        Err(errors) => {
            let at = model
                .args
                .manifest
                .as_ref()
                .map_or_else(Span::call_site, syn::LitStr::span);
            manifest::report_at(&cx, at, errors);
            None
        }
    };
    let skipped = validate::check_impl(&cx, &model, module.as_ref());
    match expand::runtime_crate() {
        Ok(runtime) => {
            let names = Names::new(&runtime, &model.ident);
            let module_name = module
                .as_ref()
                .map_or_else(|| model.ident.to_string(), |m| m.module_name.value.clone());
            let check_span = model.args.manifest.as_ref().map_or_else(
                || syn::spanned::Spanned::span(&item.self_ty),
                syn::LitStr::span,
            );
            output.extend(method_table::expand(&model, &names, &module_name));
            output.extend(dispatch::expand(&model, &names, module.as_ref()));
            output.extend(client::expand(&model, &names, &module_name, &skipped));
            output.extend(compose::expand(&model, &names));
            output.extend(tracking::same_manifest(
                &names,
                &item.self_ty,
                &location,
                check_span,
            ));
            output.extend(tracking::track([location.path.as_path()]));
        }
        Err(message) => cx.error_at(Span::call_site(), message),
    }
    with_errors(output, cx.check())
}

fn with_errors(mut output: TokenStream2, checked: Result<(), syn::Error>) -> TokenStream2 {
    if let Err(error) = checked {
        output.extend(error.to_compile_error());
    }
    output
}

fn with_error(output: TokenStream2, error: syn::Error) -> TokenStream2 {
    with_errors(output, Err(error))
}
