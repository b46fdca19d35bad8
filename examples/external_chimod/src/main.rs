//! This repository's runtime: the `chimaera` command line under this binary's own name,
//! with the kvstore chimod linked (`myproject-kvstore runtime start`, `… modules`, …),
//! plus a command of its own (`myproject-kvstore where`).
use chimaera::cli::{Context, BAD_INPUT};
use myproject_kvstore::KvStore;
use std::process::ExitCode;

/// This binary's own commands, next to the built-in ones.
#[derive(clap::Subcommand)]
enum Own {
    /// Print the instance this binary's commands talk to, and the binary's name.
    Where {
        /// Print it in upper case.
        #[arg(long)]
        shout: bool,
    },
}

fn run(command: Own, context: &Context) -> ExitCode {
    match command {
        Own::Where { shout } => {
            let config = match context.config() {
                Ok(config) => config,
                Err(_) => return ExitCode::from(BAD_INPUT),
            };
            let line = format!(
                "{} talks to instance {}",
                context.binary().name(),
                config.instance
            );
            println!("{}", if shout { line.to_uppercase() } else { line });
            ExitCode::SUCCESS
        }
    }
}

fn main() -> ExitCode {
    chimaera::cli::main_with_commands(
        chimaera::binary!(),
        chimaera::builder().composable_module::<KvStore>(),
        run,
    )
}
