//! A task named like a generated client method.
use chimaera::prelude::*;

#[chimod(name = "client_name_clash", manifest = "client_name_clash.yaml")]
pub struct Demo;

#[chimod(manifest = "client_name_clash.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn attach(&self) {}
}

fn main() {}
