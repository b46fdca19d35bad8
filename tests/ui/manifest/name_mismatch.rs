//! `name = "…"` differs from the manifest's `module_name`.
use chimaera::prelude::*;

#[chimod(name = "name_mismatsh", manifest = "name_mismatch.yaml")]
pub struct Demo;

#[chimod(manifest = "name_mismatch.yaml")]
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
