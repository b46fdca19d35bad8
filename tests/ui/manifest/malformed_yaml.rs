//! YAML that does not parse: the error names line and column.
use chimaera::prelude::*;

#[chimod(name = "malformed_yaml", manifest = "malformed_yaml.yaml")]
pub struct Demo;

#[chimod(manifest = "malformed_yaml.yaml")]
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
