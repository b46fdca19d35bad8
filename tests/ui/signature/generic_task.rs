//! A task generic over a type (lifetimes are fine).
use chimaera::prelude::*;

#[chimod(name = "generic_task", manifest = "generic_task.yaml")]
pub struct Demo;

#[chimod(manifest = "generic_task.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom<T: Default>(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
