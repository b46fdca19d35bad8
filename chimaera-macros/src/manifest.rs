//! The manifests a chimod is checked against, read through `chimaera-manifest` (the one
//! parser and rule book, shared with `chimaera repo check`).
//!
//! * `chimaera_mod.yaml`: by default in `$CARGO_MANIFEST_DIR`; `manifest = "p"` is
//!   relative to the directory of the source file holding the attribute, like
//!   `include_str!`.
//! * `chimaera_repo.yaml`: the nearest one in the module manifest's directory or above;
//!   its `namespace` must equal the module's. Having none is allowed (a chimod built
//!   outside any repository).
//!
//! A YAML file has no Rust span, so each [`Problem`] becomes an error on the Rust token
//! that stands for the file (the `manifest = "…"` literal, or the impl's self type for a
//! rule about entries), with the problem's `file:line:column` leading the message.
use crate::ctxt::Ctxt;
use chimaera_manifest::ProblemKind;
use proc_macro2::Span;

pub(crate) use chimaera_manifest::{
    find_repo, locate, read_module, read_repo, Env, ManifestPath, ModuleManifest, Problem,
    RepoManifest,
};

/// Reports each problem at `span`.
pub(crate) fn report_at(cx: &Ctxt, span: Span, problems: impl IntoIterator<Item = Problem>) {
    for problem in problems {
        match &problem.kind {
            // Here the path comes from the attribute: say which part to fix.
            ProblemKind::Unreadable { error } => cx.error_at(
                span,
                format!(
                    "{}: cannot read the manifest: {error}; create it or point `manifest = \"…\"` at it",
                    problem.place
                ),
            ),
            _ => cx.error_at(span, problem),
        }
    }
}
