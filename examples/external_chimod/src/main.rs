//! This repository's runtime: the `chimaera` command line with the kvstore chimod linked
//! (`myproject-kvstore runtime start`, `… modules`, …).
use myproject_kvstore::KvStore;
use std::process::ExitCode;

fn main() -> ExitCode {
    chimaera::cli::main_with(chimaera::builder().composable_module::<KvStore>())
}
