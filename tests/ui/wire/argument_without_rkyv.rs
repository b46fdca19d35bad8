//! A task argument whose type has no wire layout (neither `#[wire]` nor the rkyv
//! derives): one error, on the argument's type, naming the type and the fix.
use chimaera::prelude::*;

pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[chimod(name = "argument_without_rkyv", manifest = "argument_without_rkyv.yaml")]
pub struct Demo;

#[chimod(manifest = "argument_without_rkyv.yaml")]
impl Demo {
    #[task(method = 0)]
    fn create(_ctx: &mut RunContext) -> Self {
        Demo
    }

    #[task(method = 10)]
    fn store(&self, point: Point) -> i32 {
        point.x + point.y
    }
}

fn main() {}
