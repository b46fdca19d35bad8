//! A `#[task]` key given twice.
use chimaera::prelude::*;

#[chimod(name = "duplicate_task_key", manifest = "duplicate_task_key.yaml")]
pub struct Demo;

#[chimod(manifest = "duplicate_task_key.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10, method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
