//! The context taken as `&RunContext`.
use chimaera::prelude::*;

#[chimod(
    name = "context_by_shared_ref",
    manifest = "context_by_shared_ref.yaml"
)]
pub struct Demo;

#[chimod(manifest = "context_by_shared_ref.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, ctx: &RunContext, data: &str) -> String {
        let _ = ctx;
        data.to_owned()
    }
}

fn main() {}
