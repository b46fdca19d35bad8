//! `composable` with a `create` of two parameters: compose `params` are one mapping.
use chimaera::prelude::*;

#[chimod(name = "composable_two_params", manifest = "composable_two_params.yaml")]
pub struct Demo;

#[chimod(manifest = "composable_two_params.yaml", composable)]
impl Demo {
    #[task(method = 0)]
    fn create(size: u32, label: String) -> Self {
        let _ = (size, label);
        Demo
    }
}

fn main() {}
