//! A manifest path that does not exist.
use chimaera::prelude::*;

#[chimod(name = "missing_manifest", manifest = "no_such_manifest.yaml")]
pub struct Demo;

#[chimod(manifest = "no_such_manifest.yaml")]
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
