//! `composable` whose `create` parameter is `#[wire]` but not `#[wire(compose)]`: it
//! cannot be read from YAML; the error is on the parameter's type.
use chimaera::prelude::*;

#[wire]
pub struct Params {
    pub size: u32,
}

#[chimod(
    name = "composable_params_without_compose",
    manifest = "composable_params_without_compose.yaml"
)]
pub struct Demo;

#[chimod(manifest = "composable_params_without_compose.yaml", composable)]
impl Demo {
    #[task(method = 0)]
    fn create(params: Params) -> Self {
        let _ = params.size;
        Demo
    }
}

fn main() {}
