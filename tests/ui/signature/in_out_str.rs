//! `&mut str` as an in-out argument.
use chimaera::prelude::*;

#[chimod(name = "in_out_str", manifest = "in_out_str.yaml")]
pub struct Demo;

#[chimod(manifest = "in_out_str.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &mut str) -> String {
        data.to_owned()
    }
}

fn main() {}
