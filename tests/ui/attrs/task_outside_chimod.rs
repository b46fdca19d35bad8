//! `#[task]` on a method of a plain impl block.
use chimaera::prelude::*;

pub struct Plain;

impl Plain {
    #[task(method = 10)]
    pub fn custom(&self) {}
}

fn main() {}
