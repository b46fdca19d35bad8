//! The manifest gives an inherited method another id.
use chimaera::prelude::*;

#[chimod(
    name = "manifest_inherited_wrong_id",
    manifest = "manifest_inherited_wrong_id.yaml"
)]
pub struct Demo;

#[chimod(manifest = "manifest_inherited_wrong_id.yaml")]
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
