//! The `&mut RunContext` parameter after another argument.
use chimaera::prelude::*;

#[chimod(name = "context_not_first", manifest = "context_not_first.yaml")]
pub struct Demo;

#[chimod(manifest = "context_not_first.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str, ctx: &mut RunContext) -> String {
        let _ = ctx;
        data.to_owned()
    }
}

fn main() {}
