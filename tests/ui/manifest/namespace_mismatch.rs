//! The module's namespace differs from the repository's (`chimaera_repo.yaml`).
use chimaera::prelude::*;

#[chimod(name = "namespace_mismatch", manifest = "namespace_mismatch.yaml")]
pub struct Demo;

#[chimod(manifest = "namespace_mismatch.yaml")]
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
