//! The node processes of a local cluster: starting one (`runtime start` of this very
//! binary, in the background), telling when it serves, and stopping them all.
//!
//! # Invariants
//!
//! * Whether a node is up comes from its instance's liveness lock, never from a pid we
//!   remember; every request to a node carries a deadline ([`REQUEST_DEADLINE`], past the
//!   grace period for a stop), so a hung or SIGSTOPped node holds no command.
//! * [`stop_nodes`] asks every live node at once, waits for the grace period and
//!   [`STOP_MARGIN`], then SIGKILLs the holder of each lock still held — through a
//!   pidfd checked against the lock again, so a reused pid is never signalled — and
//!   removes every dead node's leftover instance files (never a live one's: the clean
//!   takes the instance's lock).
use super::manifest::NodeRecord;
use super::state::StateDir;
use super::Context;
use crate::admin::AdminClient;
use chimaera_core::admin_api::RuntimeStatus;
use chimaera_core::instance::{self, runtime_alive, runtime_pid, RuntimeLockError};
use chimaera_core::{Client, PoolId, PoolQuery, RuntimeConfig, TaskError};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long `stop` waits past the grace period before it kills a node still up.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// The deadline of each admin request to a node (past a stop's grace period): a node
/// that is hung (or SIGSTOPped) cannot hold a `cluster` command.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a killed node may take to be gone (its lock released).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(25);

/// Starts `runtime start` of this binary for `record`, detached from the terminal's
/// process group, its output into its log file.
pub(super) fn spawn_node(
    context: &Context,
    state: &StateDir,
    record: &NodeRecord,
) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let program = std::env::current_exe()
        .map_err(|err| format!("cannot find this program's own path: {err}"))?;
    let log = state
        .create_file(&record.log)
        .map_err(|err| err.to_string())?;
    let log_too = log
        .try_clone()
        .map_err(|err| format!("cannot share the log file: {err}"))?;
    let mut command = Command::new(program);
    command
        .args(["runtime", "start"])
        .env("CHI_SERVER_CONF", state.path_of(&record.config))
        .env_remove("CHI_INSTANCE")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_too)
        .process_group(0);
    if let Some(log) = &context.log {
        command.env("RUST_LOG", &log.value);
    }
    command.spawn().map_err(|err| err.to_string())
}

/// Waits until the node of `record` answers the admin `Status`; fails when its process
/// exits first or `bound` passes.
pub(super) fn wait_serving(
    record: &NodeRecord,
    state: &StateDir,
    child: &mut Child,
    bound: Duration,
) -> Result<RuntimeStatus, String> {
    let config = RuntimeConfig::from_file(state.path_of(&record.config))
        .map_err(|err| format!("its config is unusable: {err}"))?;
    let deadline = Instant::now() + bound;
    loop {
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(format!("its process exited ({exit}) before it served"));
        }
        if let Ok(status) = node_status(&config) {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "it did not answer within {} s (--start-timeout-s)",
                bound.as_secs()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The admin status of the runtime of `config`'s instance.
pub(super) fn node_status(config: &RuntimeConfig) -> Result<RuntimeStatus, String> {
    let client = Client::connect_to(config)
        .map_err(|err| err.to_string())?
        .with_deadline(REQUEST_DEADLINE);
    AdminClient::attach(&client, PoolId::ADMIN)
        .status(PoolQuery::Local)
        .map_err(|err| err.to_string())
}

/// The node's liveness (its instance's liveness lock).
pub(super) fn node_alive(record: &NodeRecord) -> Result<bool, String> {
    let instance = record.instance()?;
    runtime_alive(&instance).map_err(|err| err.to_string())
}

/// Removes the files a dead node left (its lock file, socket, segments).
pub(super) fn clean_node(record: &NodeRecord) -> Result<(), String> {
    let instance = record.instance()?;
    match instance::clean(&instance) {
        Ok(_) => Ok(()),
        Err(RuntimeLockError::AlreadyRunning { .. }) => Err(format!(
            "node {} (instance `{instance}`) is still running",
            record.id
        )),
        Err(err) => Err(format!("node {}: {err}", record.id)),
    }
}

/// How a node ended under [`stop_nodes`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// It stopped when asked.
    Stopped,
    /// It was not running (crashed or killed before).
    WasDown,
    /// It did not stop in time and was killed.
    Killed,
    /// It is still up, or its state cannot be told.
    Stuck(String),
}

/// Asks every live node of `records` to stop (in-flight tasks get `grace_ms`), waits for
/// the grace period and [`STOP_MARGIN`], kills any node still up, and cleans every node's
/// leftover files. Returns how each ended.
pub(super) fn stop_nodes(records: &[NodeRecord], grace_ms: u64) -> Vec<Ended> {
    let mut ended: Vec<Option<Ended>> = records
        .iter()
        .map(|record| match node_alive(record) {
            Ok(true) => None,
            Ok(false) => Some(Ended::WasDown),
            Err(err) => Some(Ended::Stuck(err)),
        })
        .collect();
    // All at once: a hung node's request runs out its deadline beside the others'.
    std::thread::scope(|scope| {
        for (record, ended) in records.iter().zip(&ended) {
            if ended.is_none() {
                scope.spawn(move || ask_to_stop(record, grace_ms));
            }
        }
    });
    let gone = |ended: &mut Vec<Option<Ended>>, bound: Duration, outcome: fn() -> Ended| {
        let deadline = Instant::now() + bound;
        loop {
            for (record, ended) in records.iter().zip(ended.iter_mut()) {
                if ended.is_none() && node_alive(record) == Ok(false) {
                    *ended = Some(outcome());
                }
            }
            if ended.iter().all(Option::is_some) || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(POLL);
        }
    };
    gone(
        &mut ended,
        Duration::from_millis(grace_ms) + STOP_MARGIN,
        || Ended::Stopped,
    );
    for (record, ended) in records.iter().zip(&ended) {
        if ended.is_none() {
            kill_node(record);
        }
    }
    gone(&mut ended, KILL_WAIT, || Ended::Killed);
    records
        .iter()
        .zip(ended)
        .map(|(record, ended)| {
            let ended =
                ended.unwrap_or_else(|| Ended::Stuck("it is still up after SIGKILL".to_owned()));
            match (&ended, clean_node(record)) {
                (Ended::Stuck(_), _) | (_, Ok(())) => ended,
                (_, Err(err)) => Ended::Stuck(format!("its files could not be cleaned: {err}")),
            }
        })
        .collect()
}

/// Sends the node an admin `StopRuntime`; a node that cannot be asked is killed later.
fn ask_to_stop(record: &NodeRecord, grace_ms: u64) {
    let Ok(instance) = record.instance() else {
        return;
    };
    let config = RuntimeConfig {
        instance,
        ..RuntimeConfig::default()
    };
    let Ok(client) = Client::connect_to(&config) else {
        return;
    };
    let client = client.with_deadline(Duration::from_millis(grace_ms) + REQUEST_DEADLINE);
    match AdminClient::attach(&client, PoolId::ADMIN).stop_runtime(PoolQuery::Local, grace_ms) {
        Ok(()) | Err(TaskError::RuntimeStopped) => {}
        Err(err) => tracing::warn!(node = record.id, "the node refused to stop: {err}"),
    }
}

/// SIGKILLs the process holding the node's liveness lock (the pid it wrote there).
///
/// Through a pidfd, so a pid reused meanwhile is never signalled: the pidfd is opened
/// first, and only if afterwards the lock is still held and still names that pid is the
/// signal sent — to the process the pidfd pins, which is then the holder (or, had it died
/// in between, no process at all: the signal fails harmlessly).
fn kill_node(record: &NodeRecord) {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
    let Ok(instance) = record.instance() else {
        return;
    };
    let holder = || {
        if matches!(runtime_alive(&instance), Ok(true)) {
            runtime_pid(&instance)
        } else {
            None
        }
    };
    let Some(raw) = holder() else {
        return;
    };
    let Some(pid) = i32::try_from(raw).ok().and_then(Pid::from_raw) else {
        return;
    };
    let Ok(pidfd) = pidfd_open(pid, PidfdFlags::empty()) else {
        return;
    };
    if holder() != Some(raw) {
        return;
    }
    tracing::warn!(
        node = record.id,
        pid = raw,
        "killing a node that did not stop"
    );
    let _ = pidfd_send_signal(&pidfd, Signal::KILL);
}
