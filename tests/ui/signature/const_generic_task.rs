//! A task generic over a const.
use chimaera::prelude::*;

#[chimod(name = "const_generic_task", manifest = "const_generic_task.yaml")]
pub struct Demo;

#[chimod(manifest = "const_generic_task.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom<const N: usize>(&self) -> usize {
        N
    }
}

fn main() {}
