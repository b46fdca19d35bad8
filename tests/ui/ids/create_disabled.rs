//! `kCreate` is -1 in the manifest.
use chimaera::prelude::*;

#[chimod(name = "create_disabled", manifest = "create_disabled.yaml")]
pub struct Demo;

#[chimod(manifest = "create_disabled.yaml")]
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
