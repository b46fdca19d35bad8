//! `#[task]` without its id.
use chimaera::prelude::*;

#[chimod(name = "missing_method", manifest = "missing_method.yaml")]
pub struct Demo;

#[chimod(manifest = "missing_method.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
