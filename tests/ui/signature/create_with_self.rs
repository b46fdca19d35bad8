//! `create` with a receiver.
use chimaera::prelude::*;

#[chimod(name = "create_with_self", manifest = "create_with_self.yaml")]
pub struct Demo;

#[chimod(manifest = "create_with_self.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(&self) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
