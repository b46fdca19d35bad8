//! A task whose manifest entry is -1.
use chimaera::prelude::*;

#[chimod(
    name = "disabled_entry_implemented",
    manifest = "disabled_entry_implemented.yaml"
)]
pub struct Demo;

#[chimod(manifest = "disabled_entry_implemented.yaml")]
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
