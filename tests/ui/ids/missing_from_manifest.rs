//! A task the manifest does not list.
use chimaera::prelude::*;

#[chimod(
    name = "missing_from_manifest",
    manifest = "missing_from_manifest.yaml"
)]
pub struct Demo;

#[chimod(manifest = "missing_from_manifest.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }

    #[task(method = 11)]
    fn extra(&self) -> u32 {
        11
    }
}

fn main() {}
