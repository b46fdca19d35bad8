//! A custom task using an id reserved for inherited methods.
use chimaera::prelude::*;

#[chimod(name = "custom_id_below_ten", manifest = "custom_id_below_ten.yaml")]
pub struct Demo;

#[chimod(manifest = "custom_id_below_ten.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 7)]
    fn custom(&self, data: &str) -> String {
        data.to_owned()
    }
}

fn main() {}
