//! A task taking `&mut self`.
use chimaera::prelude::*;

#[chimod(name = "mut_self", manifest = "mut_self.yaml")]
pub struct Demo;

#[chimod(manifest = "mut_self.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&mut self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
