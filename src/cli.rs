//! The `chimaera` command line, reusable by any runtime binary.
//!
//! ```text
//! chimaera runtime start               serve clients in the foreground until stopped
//! chimaera runtime stop [--grace-ms N] stop the running runtime and wait until it is gone
//! chimaera runtime status              is it up; its pools, workers, tasks and clients
//! chimaera compose FILE                create the pools FILE lists under `compose:`
//! chimaera modules                     the modules linked into this binary, with their methods
//! chimaera repo check [DIR]            check a repository's manifests against each other and the build
//! ```
//!
//! Every command finds its runtime through the same configuration as the runtime itself
//! ([`RuntimeConfig::from_env`](crate::RuntimeConfig::from_env): the file in `CHI_SERVER_CONF`, the instance name in
//! `CHI_INSTANCE`), so several runtimes coexist by instance name.
//!
//! A runtime with modules of your own gets the same command line from a one-line `main`;
//! the modules it links are the ones `runtime start` serves, `compose` can create and
//! `repo check` compares with the manifests:
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     chimaera::cli::main_with(chimaera::builder() /* .module::<MyMod>() */)
//! }
//! ```
//!
//! # Exit codes
//!
//! `0` success; `1` the command failed (no runtime running, a pool not created, a
//! problem found by `repo check`, …); `2` bad usage or a bad configuration (the message
//! names the key), before anything was started.
use crate::RuntimeBuilder;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

mod compose;
mod repo;
mod runtime;

/// `chimaera`: run and manage a chimaera runtime.
#[derive(Debug, Parser)]
#[command(name = "chimaera", version, about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop or inspect the runtime of this configuration's instance.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// Create the pools a YAML file lists under `compose:` (same schema as the config) in
    /// the running runtime, and print their ids.
    Compose {
        /// The YAML file: a config file, or one holding only a `compose:` list.
        file: PathBuf,
    },
    /// List the modules linked into this binary and their method tables.
    Modules,
    /// Check a chimod repository's manifests.
    #[command(subcommand)]
    Repo(RepoCommand),
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Serve client processes in the foreground until `runtime stop`, SIGINT or SIGTERM;
    /// creates the config's `compose:` pools first.
    Start,
    /// Stop the running runtime cleanly and wait until it is gone.
    Stop {
        /// How long in-flight tasks may take to finish (default: the config's
        /// `stop_grace_period_ms`).
        #[arg(long, value_name = "N")]
        grace_ms: Option<u64>,
    },
    /// Whether the runtime is up; its pools, workers, tasks and clients.
    Status,
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Check `chimaera_repo.yaml` and each listed module's `chimaera_mod.yaml` against each
    /// other and against the modules linked into this binary.
    Check {
        /// The repository's root (holding `chimaera_repo.yaml`).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Runs the `chimaera` command line with the modules registered in `builder` (and its
/// configuration replaced by the one from the environment); returns the exit code.
pub fn main_with(builder: RuntimeBuilder) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let default_log_level = match cli.command {
        Command::Runtime(RuntimeCommand::Start) => "info",
        _ => "warn",
    };
    init_logging(default_log_level);
    match cli.command {
        Command::Runtime(RuntimeCommand::Start) => runtime::start(builder),
        Command::Runtime(RuntimeCommand::Stop { grace_ms }) => runtime::stop(grace_ms),
        Command::Runtime(RuntimeCommand::Status) => runtime::status(),
        Command::Compose { file } => compose::compose_file(&builder, &file),
        Command::Modules => modules(&builder),
        Command::Repo(RepoCommand::Check { dir }) => repo::check(&builder, &dir),
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level`). A binary that set
/// up its own subscriber keeps it.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// `chimaera modules`.
fn modules(builder: &RuntimeBuilder) -> ExitCode {
    for entry in builder.modules() {
        let info = entry.info;
        let composable = if entry.compose.is_some() {
            ", composable"
        } else {
            ""
        };
        println!(
            "{} ({} {}{composable})",
            info.name, info.namespace, info.version
        );
        for method in info.methods {
            println!(
                "  {:>3}  {:<20} fn {}",
                method.id, method.name, method.function
            );
        }
    }
    ExitCode::SUCCESS
}

/// Exit code of a command that failed.
const FAILED: u8 = 1;
/// Exit code of bad usage or bad input (config, compose file), before anything started.
const BAD_INPUT: u8 = 2;

/// A failure message on stderr, prefixed like every message of this binary.
fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("chimaera: {message}");
    ExitCode::from(code)
}
