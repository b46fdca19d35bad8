//! A bulk view taken by reference: views are taken by value.
use chimaera::prelude::*;

#[chimod(name = "bulk_view_by_ref", manifest = "bulk_view_by_ref.yaml")]
pub struct Demo;

#[chimod(manifest = "bulk_view_by_ref.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn custom(&self, data: &BulkIn<'_>) -> usize {
        data.len()
    }
}

fn main() {}
