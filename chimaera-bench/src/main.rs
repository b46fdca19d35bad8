//! The `chimaera` command with the default modules (MOD_NAME, bdev), built with the bench
//! profile next to the benches, which start it as their runtime process through
//! `CARGO_BIN_EXE_chimaera`.
use std::process::ExitCode;

fn main() -> ExitCode {
    chimaera::cli::main_with(chimaera::binary!(), chimaera::builder())
}
