//! Parsing of attribute arguments: `#[chimod(...)]` on the struct and on the impl, and
//! `#[task(...)]` on each task method.
//!
//! Every key keeps its literal so later stages can span errors on it (the `10` in
//! `method = 10`). An unknown or repeated key is reported and skipped, and parsing goes
//! on, so one typo does not hide the next one. Nothing here knows about manifests.
use crate::ctxt::Ctxt;
use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Attribute, Expr, ExprLit, Lit, LitInt, LitStr, Path};

/// Arguments of `#[chimod(name = "…", manifest = "…", lanes(low = N, high = M))]` on the
/// container struct.
pub(crate) struct StructArgs {
    pub name: Option<LitStr>,
    pub manifest: Option<LitStr>,
    pub lanes: Lanes,
}

/// How many lanes of each priority a container's local queue has.
pub(crate) struct Lanes {
    pub low: u32,
    pub high: u32,
    /// The `lanes(...)` tokens, or the attribute when they were not written.
    pub span: Span,
}

/// Arguments of `#[chimod(manifest = "…", composable)]` on the impl block.
pub(crate) struct ImplArgs {
    pub manifest: Option<LitStr>,
    /// `composable`: generate `Composable` (pools from YAML params); the key's span.
    pub composable: Option<Span>,
}

/// Arguments of `#[task(method = N, route = f, dynamic = g)]`.
pub(crate) struct TaskArgs {
    /// The id literal and its value.
    pub method: Option<(LitInt, u32)>,
    pub route: Option<Path>,
    pub dynamic: Option<Path>,
    /// Some key was misspelled or had a bad value (already reported; `method` may be it).
    pub had_bad_key: bool,
}

const STRUCT_KEYS: &str = "`name`, `manifest`, `lanes`";
const IMPL_KEYS: &str = "`manifest`, `composable`";
const TASK_KEYS: &str = "`method`, `route`, `dynamic`";
const LANE_KEYS: &str = "`low`, `high`";

/// Parses the arguments of `#[chimod]` on a struct.
pub(crate) fn struct_args(cx: &Ctxt, args: TokenStream) -> StructArgs {
    let mut parsed = StructArgs {
        name: None,
        manifest: None,
        lanes: Lanes {
            low: 1,
            high: 0,
            span: Span::call_site(),
        },
    };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit = meta.value()?.parse::<LitStr>()?;
            set_once(cx, &meta, "chimod", &mut parsed.name, lit);
        } else if meta.path.is_ident("manifest") {
            let lit = meta.value()?.parse::<LitStr>()?;
            set_once(cx, &meta, "chimod", &mut parsed.manifest, lit);
        } else if meta.path.is_ident("lanes") {
            parsed.lanes.span = meta
                .path
                .get_ident()
                .map_or(Span::call_site(), |i| i.span());
            meta.parse_nested_meta(|lane| {
                let count = lane.value()?.parse::<LitInt>()?.base10_parse::<u32>()?;
                if lane.path.is_ident("low") {
                    parsed.lanes.low = count;
                } else if lane.path.is_ident("high") {
                    parsed.lanes.high = count;
                } else {
                    unknown_key(cx, &lane, "lanes(…)", LANE_KEYS);
                }
                Ok(())
            })?;
        } else {
            unknown_key(cx, &meta, "#[chimod]", STRUCT_KEYS);
            skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        cx.push(error);
    }
    parsed
}

/// Parses the arguments of `#[chimod]` on an impl block.
pub(crate) fn impl_args(cx: &Ctxt, args: TokenStream) -> ImplArgs {
    let mut parsed = ImplArgs {
        manifest: None,
        composable: None,
    };
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("manifest") {
            let lit = meta.value()?.parse::<LitStr>()?;
            set_once(cx, &meta, "chimod", &mut parsed.manifest, lit);
        } else if meta.path.is_ident("composable") {
            let span = syn::spanned::Spanned::span(&meta.path);
            set_once(cx, &meta, "chimod", &mut parsed.composable, span);
            skip_value(&meta)?;
        } else if meta.path.is_ident("name") {
            cx.error_spanned_by(
                &meta.path,
                "`name` belongs on the `#[chimod]` struct, not on its impl block; remove it here",
            );
            skip_value(&meta)?;
        } else {
            unknown_key(cx, &meta, "#[chimod] impl", IMPL_KEYS);
            skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        cx.push(error);
    }
    parsed
}

/// Arguments of `#[wire]` / `#[wire(compose)]`.
pub(crate) struct WireArgs {
    /// `compose`: also derive serde's `Deserialize`, for compose params.
    pub compose: bool,
}

/// Parses the arguments of `#[wire]`.
pub(crate) fn wire_args(cx: &Ctxt, args: TokenStream) -> WireArgs {
    let mut compose = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("compose") {
            set_once(cx, &meta, "wire", &mut compose, ());
        } else {
            unknown_key(cx, &meta, "#[wire]", "`compose`");
            skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = parser.parse2(args) {
        cx.push(error);
    }
    WireArgs {
        compose: compose.is_some(),
    }
}

/// Whether `attr` is a `#[task]` (or `#[some::path::task]`) attribute.
pub(crate) fn is_task(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "task")
}

/// Parses one `#[task(...)]` attribute.
pub(crate) fn task_args(cx: &Ctxt, attr: &Attribute) -> TaskArgs {
    let mut parsed = TaskArgs {
        method: None,
        route: None,
        dynamic: None,
        had_bad_key: false,
    };
    if let syn::Meta::Path(_) = attr.meta {
        return parsed;
    }
    let result = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("method") {
            let expr = meta.value()?.parse::<Expr>()?;
            match &expr {
                Expr::Lit(ExprLit {
                    lit: Lit::Int(lit), ..
                }) => match lit.base10_parse::<u32>() {
                    Ok(id) => set_once(cx, &meta, "task", &mut parsed.method, (lit.clone(), id)),
                    Err(_) => {
                        parsed.had_bad_key = true;
                        cx.error_spanned_by(lit, "a method id must fit in a `u32`");
                    }
                },
                _ => {
                    parsed.had_bad_key = true;
                    cx.error_spanned_by(
                        &expr,
                        "`method` takes a non-negative integer literal, e.g. `method = 10`",
                    );
                }
            }
        } else if meta.path.is_ident("route") {
            let path = meta.value()?.parse::<Path>()?;
            set_once(cx, &meta, "task", &mut parsed.route, path);
        } else if meta.path.is_ident("dynamic") {
            let path = meta.value()?.parse::<Path>()?;
            set_once(cx, &meta, "task", &mut parsed.dynamic, path);
        } else {
            unknown_key(cx, &meta, "#[task]", TASK_KEYS);
            parsed.had_bad_key = true;
            skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        cx.push(error);
    }
    parsed
}

fn set_once<T>(cx: &Ctxt, meta: &ParseNestedMeta, attr: &str, slot: &mut Option<T>, value: T) {
    if slot.is_some() {
        cx.error_spanned_by(
            &meta.path,
            format!(
                "duplicate `#[{attr}]` key `{}`; keep only one",
                path_text(&meta.path)
            ),
        );
    } else {
        *slot = Some(value);
    }
}

fn unknown_key(cx: &Ctxt, meta: &ParseNestedMeta, attr: &str, expected: &str) {
    cx.error_spanned_by(
        &meta.path,
        format!(
            "unknown `{attr}` key `{}`; expected one of {expected}",
            path_text(&meta.path)
        ),
    );
}

/// Consumes whatever follows an unknown key (`= expr` or `(…)`) so parsing can go on.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|nested| skip_value(&nested))?;
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}
