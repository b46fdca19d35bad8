//! `chimaera compose FILE`: create the pools a YAML file lists, in the running runtime.
//!
//! The file uses the config's `compose:` schema (a whole config file works too; only its
//! `compose:` list is used). Every entry is converted with this binary's composable
//! modules before anything is created, so a bad entry creates nothing; pools are then
//! got-or-created in file order, which makes composing a file twice harmless.
use super::{fail, Context, BAD_INPUT, FAILED};
use crate::RuntimeBuilder;
use chimaera_core::{compose, RuntimeConfig};
use std::path::Path;
use std::process::ExitCode;

pub(super) fn compose_file(context: &Context, builder: &RuntimeBuilder, file: &Path) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    // The path came from the command line: say so, not the config's variable.
    let specs = match RuntimeConfig::from_file(file) {
        Ok(listed) => listed.compose,
        Err(err) => return fail(BAD_INPUT, format!("{err} (the FILE argument of `compose`)")),
    };
    if specs.is_empty() {
        return fail(
            BAD_INPUT,
            format!(
                "{} lists no pool; add a `compose:` list of `module:`/`name:` entries",
                file.display()
            ),
        );
    }
    let pools = match compose::prepare(builder.modules(), &specs) {
        Ok(pools) => pools,
        Err(err) => return fail(BAD_INPUT, format!("{}: {err}", file.display())),
    };
    let client = match context.connect_to(&config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    for pool in &pools {
        match pool.create(&client) {
            Ok(info) => println!(
                "pool `{}` ({}, {} container(s)): {}",
                info.name, info.module, info.containers, info.id
            ),
            Err(err) => return fail(FAILED, err),
        }
    }
    ExitCode::SUCCESS
}
