//! A task named like the `async_` method generated for another task.
use chimaera::prelude::*;

#[chimod(name = "async_name_clash", manifest = "async_name_clash.yaml")]
pub struct Demo;

#[chimod(manifest = "async_name_clash.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }

    #[task(method = 11)]
    fn async_custom(&self) {}
}

fn main() {}
