//! `chimaera runtime start|stop` (`status` and `clean` are in [`super::status`]).
//!
//! `start` serves in the foreground: it loads the config, creates the `compose:` pools,
//! prints one `… serving (pid N)` line on stdout, and blocks until the runtime is
//! stopped — by `runtime stop` (an admin `StopRuntime` from another process), or by
//! SIGINT/SIGTERM, which it turns into the same admin `StopRuntime` so every stop takes
//! one path: drain for the grace period, fail what is left, remove the shared memory. A
//! second signal during that stop exits at once, leaving its lock file and socket to the
//! next start (which detects and replaces them).
//!
//! With `networking.hostfile` set, `start` makes the runtime that node of the cluster:
//! the network comes from the config through `chimaera_net::attach` (the one mapping
//! of `networking:` onto the network), or, in a binary built without the `net` feature,
//! the start is refused naming the feature. A clean stop tells the peers this node
//! leaves (the runtime shuts its network down as it stops).
//!
//! With `metrics.prometheus` set in the config, `start` also serves the runtime's
//! statistics at `http://ADDRESS/metrics` ([`super::metrics`]) until it stops.
//!
//! `stop` and `status` find the runtime by instance name; whether one is up comes from
//! its liveness lock ([`runtime_alive`]), never from a pid file.
use super::{fail, metrics, Context, BAD_INPUT, FAILED};
use crate::admin::AdminClient;
use crate::RuntimeBuilder;
use chimaera_core::instance::{runtime_alive, runtime_pid};
use chimaera_core::{compose, Client, PoolId, PoolQuery, RuntimeConfig, TaskError};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::Write;
use std::process::ExitCode;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long `stop` waits past the grace period for the runtime process to be gone.
const STOP_MARGIN: Duration = Duration::from_secs(30);
/// How often `stop` looks whether the runtime is gone.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Whether the runtime of `config`'s instance is up, or the exit code after saying why
/// its lock file cannot be checked (a link, a FIFO, another user's file at its name).
pub(super) fn alive(config: &RuntimeConfig) -> Result<bool, ExitCode> {
    runtime_alive(&config.instance).map_err(|err| fail(FAILED, err))
}

/// `chimaera runtime start`.
pub(super) fn start(context: &Context, builder: RuntimeBuilder) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let pools = match compose::prepare(builder.modules(), &config.compose) {
        Ok(pools) => pools,
        Err(err) => return fail(BAD_INPUT, format!("bad `compose:` in the config: {err}")),
    };
    // Registered before serving, so a signal that comes while the runtime starts waits
    // for the stop thread instead of killing the process mid-start.
    let signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(err) => return fail(FAILED, format!("cannot handle SIGINT/SIGTERM: {err}")),
    };
    // Checked here too (the runtime's own check is the one that holds) so that the
    // message names this binary and the flags.
    if let Ok(true) = alive(&config) {
        let pid =
            runtime_pid(&config.instance).map_or_else(String::new, |pid| format!(" (pid {pid})"));
        return fail(
            FAILED,
            format!(
                "a runtime of instance `{}` is already running{pid}; stop it with `{} runtime \
                 stop`, or pick another instance (--instance, CHI_INSTANCE or `instance:` in \
                 the config)",
                config.instance,
                context.binary().name()
            ),
        );
    }
    let instance = config.instance.clone();
    let grace = config.stop_grace_period;
    let metrics_address = config.metrics_prometheus;
    // Created before the runtime says it is ready: a client that connects finds them.
    let builder = builder.boot_pools(pools);
    let builder = match with_network(builder, config) {
        Ok(builder) => builder,
        Err((code, err)) => {
            return fail(code, format!("runtime `{instance}` did not start: {err}"))
        }
    };
    let runtime = match builder.serve() {
        Ok(runtime) => runtime,
        Err(err) => return fail(FAILED, format!("runtime `{instance}` did not start: {err}")),
    };
    let stopper = StopOnSignal::spawn(signals, runtime.client(), grace);

    let exporter = match metrics_address {
        None => None,
        Some(address) => match metrics::Exporter::start(address, runtime.handle()) {
            Ok(exporter) => {
                tracing::info!(%address, "serving Prometheus metrics at /metrics");
                if !address.ip().is_loopback() {
                    tracing::warn!(
                        %address,
                        "the metrics endpoint has no authentication and is reachable beyond \
                         this machine; pool names are visible to anyone who can connect"
                    );
                }
                Some(exporter)
            }
            Err(err) => {
                runtime.stop();
                stopper.close();
                return fail(
                    FAILED,
                    format!(
                        "cannot serve metrics on {address} (`metrics.prometheus` in the \
                         config): {err}; runtime stopped"
                    ),
                );
            }
        },
    };

    tracing::info!(%instance, "serving");
    println!(
        "{} runtime `{instance}` serving (pid {})",
        context.binary().name(),
        std::process::id()
    );
    let _ = std::io::stdout().flush();
    runtime.wait();
    drop(exporter);
    runtime.stop();
    stopper.close();
    tracing::info!(%instance, "stopped");
    ExitCode::SUCCESS
}

/// `builder` with `config` and the cluster network it describes (none without a hostfile);
/// else the exit code and why: [`BAD_INPUT`] for the config's fault, [`FAILED`] when the
/// network could not start (its port taken, no threads).
#[cfg(feature = "net")]
fn with_network(
    builder: RuntimeBuilder,
    config: RuntimeConfig,
) -> Result<RuntimeBuilder, (u8, String)> {
    use chimaera_net::NetConfigError;
    chimaera_net::attach(builder, config).map_err(|err| {
        let code = match err {
            NetConfigError::Setup { .. } => FAILED,
            _ => BAD_INPUT,
        };
        (code, err.to_string())
    })
}

/// `builder` with `config`; a hostfile is refused ([`BAD_INPUT`]), this binary having no
/// network.
#[cfg(not(feature = "net"))]
fn with_network(
    builder: RuntimeBuilder,
    config: RuntimeConfig,
) -> Result<RuntimeBuilder, (u8, String)> {
    match &config.networking.hostfile {
        Some(hostfile) => Err((
            BAD_INPUT,
            format!(
                "the config names the hostfile {} but this binary was built without chimaera's \
             `net` cargo feature, so it cannot reach other nodes; rebuild with the feature \
             (it is on by default) or remove `networking.hostfile`",
                hostfile.display()
            ),
        )),
        None => Ok(builder.config(config)),
    }
}

/// The thread that turns SIGINT/SIGTERM into an admin `StopRuntime`.
struct StopOnSignal {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl StopOnSignal {
    fn spawn(mut signals: Signals, client: Client, grace: Duration) -> StopOnSignal {
        let handle = signals.handle();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let thread = std::thread::spawn(move || {
            let mut stopping = false;
            for signal in signals.forever() {
                if stopping {
                    eprintln!(
                        "chimaera: signal {signal} during stop: exiting without a clean stop"
                    );
                    std::process::exit(i32::from(FAILED));
                }
                stopping = true;
                tracing::info!(signal, grace_ms, "signal received: stopping");
                let admin = AdminClient::attach(&client, PoolId::ADMIN);
                match admin.stop_runtime(PoolQuery::Local, grace_ms) {
                    Ok(()) | Err(TaskError::RuntimeStopped) => {}
                    Err(err) => tracing::error!("stop on signal {signal} failed: {err}"),
                }
            }
        });
        StopOnSignal { handle, thread }
    }

    /// Ends the thread.
    fn close(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

/// `chimaera runtime stop`.
pub(super) fn stop(context: &Context, grace_ms: Option<u64>) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let instance = &config.instance;
    match alive(&config) {
        Ok(true) => {}
        Ok(false) => return context.not_running(&config),
        Err(code) => return code,
    }
    let grace_ms = grace_ms
        .unwrap_or_else(|| u64::try_from(config.stop_grace_period.as_millis()).unwrap_or(u64::MAX));
    let client = match context.connect_to(&config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    let asked =
        AdminClient::attach(&client, PoolId::ADMIN).stop_runtime(PoolQuery::Local, grace_ms);
    drop(client);
    match asked {
        // Already stopping: wait for it like for our own stop.
        Ok(()) | Err(TaskError::RuntimeStopped) => {}
        Err(err) => {
            return fail(
                FAILED,
                format!("runtime `{instance}` refused to stop: {err}"),
            )
        }
    }
    let deadline = Instant::now() + Duration::from_millis(grace_ms) + STOP_MARGIN;
    loop {
        match alive(&config) {
            Ok(true) => {}
            Ok(false) => break,
            Err(code) => return code,
        }
        if Instant::now() >= deadline {
            return fail(
                FAILED,
                format!(
                    "runtime `{instance}` was asked to stop but is still running after {} s",
                    (Duration::from_millis(grace_ms) + STOP_MARGIN).as_secs()
                ),
            );
        }
        std::thread::sleep(STOP_POLL);
    }
    println!("{} runtime `{instance}` stopped", context.binary().name());
    ExitCode::SUCCESS
}

#[cfg(all(test, not(feature = "net")))]
mod tests {
    use super::*;

    #[test]
    fn without_the_net_feature_a_hostfile_is_refused_naming_the_feature() {
        let mut config = RuntimeConfig::default();
        config.networking.hostfile = Some("/etc/chimaera/hosts".into());
        match with_network(RuntimeBuilder::new(), config) {
            Err((code, message)) => {
                assert_eq!(code, BAD_INPUT);
                assert!(message.contains("`net` cargo feature"), "{message}");
                assert!(message.contains("/etc/chimaera/hosts"), "{message}");
            }
            Ok(_) => panic!("a hostfile was accepted without a network"),
        }
        assert!(with_network(RuntimeBuilder::new(), RuntimeConfig::default()).is_ok());
    }
}
