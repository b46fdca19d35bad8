//! Two tasks with one id: the error is on the second.
use chimaera::prelude::*;

#[chimod(name = "duplicate_task_id", manifest = "duplicate_task_id.yaml")]
pub struct Demo;

#[chimod(manifest = "duplicate_task_id.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }

    #[task(method = 10)]
    fn other(&self) -> u32 {
        0
    }
}

fn main() {}
