//! A manifest without `version` and with an id that is not a number.
use chimaera::prelude::*;

#[chimod(name = "bad_entries", manifest = "bad_entries.yaml")]
pub struct Demo;

#[chimod(manifest = "bad_entries.yaml")]
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
