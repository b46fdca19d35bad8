//! A misspelled `#[task]` key.
use chimaera::prelude::*;

#[chimod(name = "unknown_task_key", manifest = "unknown_task_key.yaml")]
pub struct Demo;

#[chimod(manifest = "unknown_task_key.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(methd = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
