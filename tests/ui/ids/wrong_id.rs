//! A task id that differs from its manifest entry.
use chimaera::prelude::*;

#[chimod(name = "wrong_id", manifest = "wrong_id.yaml")]
pub struct Demo;

#[chimod(manifest = "wrong_id.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 11)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
