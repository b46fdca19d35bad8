//! Two manifest entries with one id.
use chimaera::prelude::*;

#[chimod(
    name = "duplicate_manifest_id",
    manifest = "duplicate_manifest_id.yaml"
)]
pub struct Demo;

#[chimod(manifest = "duplicate_manifest_id.yaml")]
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
