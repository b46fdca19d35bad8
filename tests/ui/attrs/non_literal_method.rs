//! `method` is not an integer literal.
use chimaera::prelude::*;

#[chimod(name = "non_literal_method", manifest = "non_literal_method.yaml")]
pub struct Demo;

#[chimod(manifest = "non_literal_method.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = -1)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
