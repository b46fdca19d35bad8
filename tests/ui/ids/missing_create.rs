//! A chimod without a `create` task.
use chimaera::prelude::*;

#[chimod(name = "missing_create", manifest = "missing_create.yaml")]
pub struct Demo;

#[chimod(manifest = "missing_create.yaml")]
impl Demo {
    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
