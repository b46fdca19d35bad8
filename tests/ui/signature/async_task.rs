//! An `async fn` task.
use chimaera::prelude::*;

#[chimod(name = "async_task", manifest = "async_task.yaml")]
pub struct Demo;

#[chimod(manifest = "async_task.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    async fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
