//! A misspelled `#[chimod]` key on the struct and on the impl.
use chimaera::prelude::*;

#[chimod(
    name = "unknown_chimod_key",
    manifest = "unknown_chimod_key.yaml",
    lane(low = 2)
)]
pub struct Demo;

#[chimod(manifest = "unknown_chimod_key.yaml", name = "unknown_chimod_key")]
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
