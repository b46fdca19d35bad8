//! A destructuring pattern instead of an argument name.
use chimaera::prelude::*;

#[chimod(name = "pattern_argument", manifest = "pattern_argument.yaml")]
pub struct Demo;

#[chimod(manifest = "pattern_argument.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, (a, b): (u32, u32)) -> u32 {
        a + b
    }
}

fn main() {}
