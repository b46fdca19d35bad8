//! The contract of `#[chimod]` / `#[task]`, shown by examples: each compile-fail case in
//! `tests/ui/<category>/` is named after the mistake it catches and its `.stderr` pins
//! the message and the token it points at; `tests/ui/pass/` holds odd but legal
//! modules, run end to end. Regenerate `.stderr` files with `TRYBUILD=overwrite` and
//! read every diff. The `borrow` cases call bdev's client, so they run only when the
//! `bdev` feature links it.
#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/attrs/*.rs");
    cases.compile_fail("tests/ui/ids/*.rs");
    cases.compile_fail("tests/ui/manifest/*.rs");
    cases.compile_fail("tests/ui/signature/*.rs");
    if cfg!(feature = "bdev") {
        cases.compile_fail("tests/ui/borrow/*.rs");
    }
    cases.compile_fail("tests/ui/compose/*.rs");
    cases.compile_fail("tests/ui/wire/*.rs");
}
