//! The `chimaera` command line, reusable by any runtime binary.
//!
//! ```text
//! chimaera runtime start               serve clients in the foreground until stopped
//! chimaera runtime stop [--grace-ms N] stop the running runtime and wait until it is gone
//! chimaera runtime status [--json]     is it up; its pools, workers, tasks, latencies, clients
//! chimaera runtime clean               remove the files a dead (killed) runtime left
//! chimaera pool list                   the live pools
//! chimaera pool info NAME              one pool: containers, lanes, methods and latencies
//! chimaera pool destroy NAME           destroy a pool (through the admin `DestroyPool` task)
//! chimaera cluster start [--nodes N]   a local dev cluster of N runtimes, in the background
//! chimaera cluster status|stop         show its nodes | stop them all and remove its state
//! chimaera monitor                     a live view of the runtime, refreshed every second
//! chimaera compose FILE                create the pools FILE lists under `compose:`
//! chimaera modules                     the modules linked into this binary, with their methods
//! chimaera repo check [DIR]            check a repository's manifests against each other and the build
//! chimaera completions SHELL           a completion script for bash, zsh, fish, elvish or powershell
//! ```
//!
//! Every command finds its runtime through the same configuration as the runtime itself:
//! the global `--config FILE` (or `CHI_SERVER_CONF`) names the YAML file, `--instance
//! NAME` (or `CHI_INSTANCE`) overrides its `instance:`, and `--log FILTER` (or
//! `RUST_LOG`) filters the log on stderr; so several runtimes coexist by instance name.
//! A flag wins over its variable; an empty variable counts as unset. An error names where
//! the bad value came from: the flag, the variable, the file and key, or the argument.
//!
//! A runtime with modules of your own gets the same command line from a one-line `main`;
//! [`binary!`](crate::binary) names your binary (its name, version and description from
//! Cargo), so `--version`, `--help`, completions and every hint name it, not `chimaera`.
//! The modules it links are the ones `runtime start` serves, `compose` can create and
//! `repo check` compares with the manifests:
//!
//! ```no_run
//! use std::process::ExitCode;
//!
//! fn main() -> ExitCode {
//!     chimaera::cli::main_with(chimaera::binary!(), chimaera::builder() /* .module::<MyMod>() */)
//! }
//! ```
//!
//! Commands of your own sit next to the built-in ones: derive [`clap::Subcommand`] for an
//! enum and hand it to [`main_with_commands`] with the function that runs it; the
//! [`Context`] gives it the configuration and a client of the runtime, found like every
//! built-in command finds them (names of built-in commands are taken):
//!
//! ```no_run
//! use chimaera::cli::{Context, FAILED};
//! use std::process::ExitCode;
//!
//! #[derive(clap::Subcommand)]
//! enum Mine {
//!     /// Print how many tasks the runtime completed.
//!     Completed,
//! }
//!
//! fn run(command: Mine, context: &Context) -> ExitCode {
//!     match command {
//!         Mine::Completed => {
//!             let Ok(client) = context.connect() else { return ExitCode::from(FAILED) };
//!             let admin = chimaera::AdminClient::attach(&client, chimaera::PoolId::ADMIN);
//!             match admin.status(chimaera::PoolQuery::Local) {
//!                 Ok(status) => println!("{}", status.completed),
//!                 Err(err) => return context.fail(FAILED, err),
//!             }
//!             ExitCode::SUCCESS
//!         }
//!     }
//! }
//!
//! fn main() -> ExitCode {
//!     chimaera::cli::main_with_commands(chimaera::binary!(), chimaera::builder(), run)
//! }
//! ```
//!
//! `runtime status --json` prints a versioned document (`"schema": 1`), documented in
//! the README ("Operating a runtime") and in `src/cli/status.rs`; the statistics in it
//! are [`chimaera_core::stats`]'s.
//!
//! # Exit codes
//!
//! `0` success; `1` ([`FAILED`]) the command failed (no runtime running, a pool not
//! created, a problem found by `repo check`, …); `2` ([`BAD_INPUT`]) bad usage or a bad
//! configuration (the message names the key), before anything was started.
use crate::RuntimeBuilder;
use chimaera_core::config::{ConfigError, CONF_ENV, INSTANCE_ENV};
use chimaera_core::instance::InstanceName;
use chimaera_core::{Client, ConnectError, RuntimeConfig};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches, Subcommand};
use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

#[cfg(feature = "net")]
mod cluster;
mod compose;
mod metrics;
mod monitor;
mod pool;
mod repo;
mod runtime;
mod status;

/// The binary a command line belongs to: what `--version` and `--help` print, and what
/// every message and hint calls the program. Made by [`binary!`](crate::binary) from
/// the calling crate's Cargo metadata, or by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binary {
    name: String,
    version: String,
    about: String,
}

impl Binary {
    /// A binary called `name` at `version`, with no description.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Binary {
        Binary {
            name: name.into(),
            version: version.into(),
            about: String::new(),
        }
    }

    /// The one-line description `--help` shows.
    pub fn about(mut self, about: impl Into<String>) -> Binary {
        self.about = about.into();
        self
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The binary's version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// The [`Binary`](crate::cli::Binary) being compiled: its name (`CARGO_BIN_NAME`; the
/// package's name outside a binary target), version and description from the calling
/// crate's Cargo metadata.
#[macro_export]
macro_rules! binary {
    () => {
        $crate::cli::Binary::new(
            match option_env!("CARGO_BIN_NAME") {
                Some(name) => name,
                None => env!("CARGO_PKG_NAME"),
            },
            env!("CARGO_PKG_VERSION"),
        )
        .about(env!("CARGO_PKG_DESCRIPTION"))
    };
}

/// The global flags, each bound to its environment variable.
#[derive(Debug, Args)]
struct Globals {
    /// The config file (YAML; see the `config` module docs). Unset: built-in defaults.
    #[arg(long, global = true, env = CONF_ENV, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The runtime instance to run or talk to; overrides the config's `instance:`.
    #[arg(long, global = true, env = INSTANCE_ENV, value_name = "NAME")]
    instance: Option<String>,
    /// Log filter for stderr (tracing-subscriber's EnvFilter syntax, e.g. `debug` or
    /// `chimaera_core=trace`); default: `info` for `runtime start`, else `warn`.
    #[arg(long, global = true, env = "RUST_LOG", value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start, stop, inspect or clean up the runtime of this configuration's instance.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// List, inspect or destroy pools of the running runtime.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Start, inspect or stop a local cluster for development: N runtime processes on this
    /// machine joined over the network (see `cluster start --help`).
    #[cfg(feature = "net")]
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// A live view of the running runtime, refreshed every second: pools, lanes and their
    /// queue depths, tasks/s, latencies per method, clients, shared memory. `q` quits.
    Monitor,
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
    /// Print a shell completion script for this binary on stdout (e.g.
    /// `source <(chimaera completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    /// Whether the runtime is up; its pools, workers, tasks, latencies and clients (or,
    /// when it is not running, the files a dead one left).
    Status {
        /// Print JSON (schema 1, see the README) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove the files a dead runtime of this instance left (after a crash or kill -9).
    /// Refuses while the runtime is alive; never follows a link or removes a file it
    /// does not own.
    Clean,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// The live pools: id, name, module, containers, tasks queued.
    List,
    /// One pool: its containers and lanes with their queue depths, and its methods with
    /// their task counts and latencies.
    Info {
        /// The pool's name.
        name: String,
    },
    /// Destroy a pool: tasks queued for it fail with `PoolDestroyed`, running ones
    /// finish, each container's `kDestroy` runs.
    Destroy {
        /// The pool's name.
        name: String,
    },
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

/// No commands of the binary's own (what [`main_with`] adds).
#[derive(Debug, Subcommand)]
pub enum NoCommands {}

/// Runs the command line of `binary` with the modules registered in `builder` (its
/// configuration replaced by the one the flags and environment name); returns the exit
/// code.
pub fn main_with(binary: Binary, builder: RuntimeBuilder) -> ExitCode {
    main_with_commands(binary, builder, |command: NoCommands, _| match command {})
}

/// [`main_with`], plus the subcommands of `C` (a [`clap::Subcommand`]), which `run`
/// runs. Their names must differ from the built-in commands'.
pub fn main_with_commands<C: Subcommand>(
    binary: Binary,
    builder: RuntimeBuilder,
    run: impl FnOnce(C, &Context) -> ExitCode,
) -> ExitCode {
    main_from(binary, builder, run, std::env::args_os())
}

/// The whole command line of `binary`, for completions and `--help`.
fn command_of<C: Subcommand>(binary: &Binary) -> clap::Command {
    let command = clap::Command::new(binary.name.clone())
        .bin_name(binary.name.clone())
        .version(binary.version.clone())
        .about(binary.about.clone())
        .subcommand_required(true)
        .arg_required_else_help(true)
        .max_term_width(100);
    let command = Globals::augment_args(command);
    let command = Command::augment_subcommands(command);
    C::augment_subcommands(command)
}

fn main_from<C: Subcommand>(
    binary: Binary,
    builder: RuntimeBuilder,
    run: impl FnOnce(C, &Context) -> ExitCode,
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> ExitCode {
    let _ = PROGRAM.set(binary.name.clone());
    let matches = match command_of::<C>(&binary).try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let context = match Context::from_matches(binary, &matches) {
        Ok(context) => context,
        Err(code) => return code,
    };
    let builtin = matches
        .subcommand_name()
        .is_some_and(Command::has_subcommand);
    if !builtin {
        return match C::from_arg_matches(&matches) {
            Ok(command) => {
                if let Err(code) = context.init_logging("warn") {
                    return code;
                }
                run(command, &context)
            }
            Err(err) => {
                let _ = err.print();
                ExitCode::from(BAD_INPUT)
            }
        };
    }
    let command = match Command::from_arg_matches(&matches) {
        Ok(command) => command,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(BAD_INPUT);
        }
    };
    let default_log_level = match command {
        Command::Runtime(RuntimeCommand::Start) => "info",
        _ => "warn",
    };
    if let Err(code) = context.init_logging(default_log_level) {
        return code;
    }
    match command {
        Command::Runtime(RuntimeCommand::Start) => runtime::start(&context, builder),
        Command::Runtime(RuntimeCommand::Stop { grace_ms }) => runtime::stop(&context, grace_ms),
        Command::Runtime(RuntimeCommand::Status { json }) => status::status(&context, json),
        Command::Runtime(RuntimeCommand::Clean) => status::clean(&context),
        Command::Pool(PoolCommand::List) => pool::list(&context),
        Command::Pool(PoolCommand::Info { name }) => pool::info(&context, &name),
        Command::Pool(PoolCommand::Destroy { name }) => pool::destroy(&context, &name),
        #[cfg(feature = "net")]
        Command::Cluster(command) => cluster::run(&context, command),
        Command::Monitor => monitor::run(&context),
        Command::Compose { file } => compose::compose_file(&context, &builder, &file),
        Command::Modules => modules(&builder),
        Command::Repo(RepoCommand::Check { dir }) => repo::check(&builder, &dir),
        Command::Completions { shell } => {
            let mut command = command_of::<C>(&context.binary);
            clap_complete::generate(
                shell,
                &mut command,
                context.binary.name.clone(),
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

/// A value of a global flag, with where it came from.
#[derive(Clone, Debug)]
struct Sourced<T> {
    value: T,
    from: Origin,
}

/// Where a global value came from: its flag or its environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Flag(&'static str),
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "the {flag} flag"),
            Origin::Env(var) => write!(f, "the environment variable {var}"),
        }
    }
}

/// What every command runs with: the binary, and where its configuration comes from.
#[derive(Debug)]
pub struct Context {
    binary: Binary,
    config: Option<Sourced<PathBuf>>,
    instance: Option<Sourced<String>>,
    log: Option<Sourced<String>>,
}

impl Context {
    fn from_matches(binary: Binary, matches: &ArgMatches) -> Result<Context, ExitCode> {
        let globals = match Globals::from_arg_matches(matches) {
            Ok(globals) => globals,
            Err(err) => {
                let _ = err.print();
                return Err(ExitCode::from(BAD_INPUT));
            }
        };
        // A global flag given after the subcommand is recorded in the subcommand's
        // matches; its source is wherever clap found it.
        let origin = |id: &str, flag: &'static str, var: &'static str| {
            let mut level = Some(matches);
            let mut source = None;
            while let Some(current) = level {
                if let Some(found) = current.value_source(id) {
                    source = Some(found);
                }
                level = current.subcommand().map(|(_, sub)| sub);
            }
            match source {
                Some(ValueSource::EnvVariable) => Origin::Env(var),
                _ => Origin::Flag(flag),
            }
        };
        let sourced = |value: Option<String>, id, flag, var| {
            value
                .filter(|value| !value.is_empty())
                .map(|value| Sourced {
                    value,
                    from: origin(id, flag, var),
                })
        };
        Ok(Context {
            config: globals
                .config
                .filter(|path| !path.as_os_str().is_empty())
                .map(|value| Sourced {
                    value,
                    from: origin("config", "--config", CONF_ENV),
                }),
            instance: sourced(globals.instance, "instance", "--instance", INSTANCE_ENV),
            log: sourced(globals.log, "log", "--log", "RUST_LOG"),
            binary,
        })
    }

    /// The binary this command line belongs to.
    pub fn binary(&self) -> &Binary {
        &self.binary
    }

    /// The configuration the flags and environment name, or the exit code after saying
    /// what is wrong with it (and where the bad value came from).
    pub fn config(&self) -> Result<RuntimeConfig, ExitCode> {
        let mut config = match &self.config {
            None => RuntimeConfig::default(),
            Some(file) => RuntimeConfig::from_file(&file.value).map_err(|err| match err {
                ConfigError::Read { .. } => self.fail(
                    BAD_INPUT,
                    format!(
                        "{err} (the path came from {}); fix it, or leave it unset to use the \
                         defaults",
                        file.from
                    ),
                ),
                other => self.fail(
                    BAD_INPUT,
                    format!("{other} (the config file named by {})", file.from),
                ),
            })?,
        };
        if let Some(instance) = &self.instance {
            config.instance = InstanceName::new(&instance.value).map_err(|err| {
                self.fail(
                    BAD_INPUT,
                    format!("bad instance from {}: {err}", instance.from),
                )
            })?;
        }
        Ok(config)
    }

    /// A client of the running runtime of `config`'s instance, or the exit code after
    /// saying why there is none.
    pub fn connect_to(&self, config: &RuntimeConfig) -> Result<Client, ExitCode> {
        match Client::connect_to(config) {
            Ok(client) => Ok(client),
            Err(ConnectError::NotRunning { .. }) => Err(self.not_running(config)),
            Err(err) => Err(self.fail(FAILED, err)),
        }
    }

    /// A client of the running runtime of the configured instance, or the exit code after
    /// saying why there is none.
    pub fn connect(&self) -> Result<Client, ExitCode> {
        let config = self.config()?;
        self.connect_to(&config)
    }

    /// Says that no runtime of `config`'s instance runs, and how to start one.
    pub fn not_running(&self, config: &RuntimeConfig) -> ExitCode {
        self.fail(
            FAILED,
            format!(
                "no runtime of instance `{}` is running; start one with `{} runtime start`",
                config.instance, self.binary.name
            ),
        )
    }

    /// Prints `message` on stderr, prefixed with the binary's name, and returns `code`.
    pub fn fail(&self, code: u8, message: impl fmt::Display) -> ExitCode {
        fail(code, message)
    }

    /// Logs to stderr, filtered by `--log`/`RUST_LOG` (default: `default_level`). A
    /// binary that set up its own subscriber keeps it.
    fn init_logging(&self, default_level: &str) -> Result<(), ExitCode> {
        let filter = match &self.log {
            None => tracing_subscriber::EnvFilter::new(default_level),
            Some(log) => tracing_subscriber::EnvFilter::try_new(&log.value).map_err(|err| {
                self.fail(
                    BAD_INPUT,
                    format!("bad log filter `{}` from {}: {err}", log.value, log.from),
                )
            })?,
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init();
        Ok(())
    }
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
pub const FAILED: u8 = 1;
/// Exit code of bad usage or bad input (config, compose file), before anything started.
pub const BAD_INPUT: u8 = 2;

/// The running binary's name, for messages.
static PROGRAM: OnceLock<String> = OnceLock::new();

/// A failure message on stderr, prefixed with the binary's name like every message of it.
fn fail(code: u8, message: impl fmt::Display) -> ExitCode {
    let program = PROGRAM.get().map_or("chimaera", String::as_str);
    eprintln!("{program}: {message}");
    ExitCode::from(code)
}
