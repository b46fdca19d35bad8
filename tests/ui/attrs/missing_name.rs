//! `#[chimod]` on a struct without `name`.
use chimaera::prelude::*;

#[chimod(manifest = "missing_name.yaml")]
pub struct Demo;

#[chimod(manifest = "missing_name.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
