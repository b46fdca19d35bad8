//! A task other than `create` without `&self`.
use chimaera::prelude::*;

#[chimod(name = "missing_self", manifest = "missing_self.yaml")]
pub struct Demo;

#[chimod(manifest = "missing_self.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
