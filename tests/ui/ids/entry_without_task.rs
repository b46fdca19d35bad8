//! An enabled manifest entry that no task implements.
use chimaera::prelude::*;

#[chimod(name = "entry_without_task", manifest = "entry_without_task.yaml")]
pub struct Demo;

#[chimod(manifest = "entry_without_task.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
