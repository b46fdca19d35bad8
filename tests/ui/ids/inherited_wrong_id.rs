//! An inherited method (`kDestroy`, fixed id 1) under another id.
use chimaera::prelude::*;

#[chimod(name = "inherited_wrong_id", manifest = "inherited_wrong_id.yaml")]
pub struct Demo;

#[chimod(manifest = "inherited_wrong_id.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 3)]
    fn destroy(&self) {}
}

fn main() {}
