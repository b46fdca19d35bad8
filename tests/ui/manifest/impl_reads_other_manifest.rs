//! The struct and the impl name different manifests (even with the same content).
use chimaera::prelude::*;

#[chimod(
    name = "impl_reads_other_manifest",
    manifest = "impl_reads_other_manifest.yaml"
)]
pub struct Demo;

#[chimod(manifest = "impl_reads_other_manifest_copy.yaml")]
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
