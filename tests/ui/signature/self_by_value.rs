//! A task taking `self` by value.
use chimaera::prelude::*;

#[chimod(name = "self_by_value", manifest = "self_by_value.yaml")]
pub struct Demo;

#[chimod(manifest = "self_by_value.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
