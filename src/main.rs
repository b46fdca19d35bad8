//! The `chimaera` command: run, stop and inspect a runtime with the modules of this
//! build (admin and those of the enabled cargo features), compose pools, list the linked
//! modules and check a repository's manifests. See [`chimaera::cli`].
use std::process::ExitCode;

fn main() -> ExitCode {
    chimaera::cli::main_with(chimaera::binary!(), chimaera::builder())
}
