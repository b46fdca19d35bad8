//! `chimaera cluster start|status|stop`: a local dev cluster of N `runtime start`
//! processes from one command, and one command to stop it.
//!
//! ```text
//! chimaera cluster start [--nodes 4] [--name dev] [--base-port P] [--workers W] [--tls]
//! chimaera cluster status [--name dev] [--json]
//! chimaera cluster stop [--name dev] [--grace-ms N]
//! ```
//!
//! `start` writes the cluster's state into `{user dir}/cluster+{name}` ([`state`]: `0700`,
//! nothing followed): `cluster.json` (the manifest: which instance, address, config and
//! log each node has), the hostfile `hosts`, a fresh random `secret` (`0600`), one
//! `node-{i}.yaml` per node (its own shm instance `{name}-node{i}`, node id, hostfile,
//! secret file and, with `--tls`, its certificate files, all as paths relative to the
//! config) and, with `--tls`, a throwaway authority's `ca.crt` and each node's
//! `node-{i}.crt`/`node-{i}.key` ([`pki`]). Then it starts node 0, waits until it answers
//! the admin `Status`, starts the others and waits for each the same way, and prints
//! how to reach node 0 and how to stop the cluster. The nodes run on in the background
//! (their own process group, so a Ctrl-C at the terminal does not reach them), their
//! output going to `node-{i}.log`.
//!
//! `status --json` prints `{ "schema": 1, "name": str, "addressing": str, "tls": bool,
//! "state": path, "nodes": [ { "id": u32, "address": "host:port", "instance": str,
//! "up": bool, "pid": u32 | null, "pools": n | null, "peers_up": n | null } ] }`, where
//! `peers_up` counts the other nodes that node saw answer (a peer it has not called yet
//! counts as not up).
//!
//! The global `--config` and `--instance` play no part here: each node's config is the
//! one `start` writes, and its instance is `{name}-node{i}`. Given as flags they are
//! refused (exit 2) rather than dropped; from the environment (`CHI_SERVER_CONF`,
//! `CHI_INSTANCE`, a shell's defaults for the other commands) they are ignored.
//!
//! # Addresses
//!
//! On Linux all of `127.0.0.0/8` is this machine, so node `i` gets `127.0.0.{i+1}`, all on
//! one port, like hosts of a real cluster (and each node's id is tied to its own address
//! by the network's peer checks). Where binding `127.0.0.2` fails (other systems, some
//! containers), every node gets `127.0.0.1` and its own port. `--addressing` picks one;
//! the default probes and says which it chose and why. Ports: `--base-port P` (node `i`
//! gets `P`, or `P + i` on one address), else free ports the kernel hands out.
//!
//! # Invariants
//!
//! * `start` and `stop` hold the state directory's lock for their whole run: one
//!   command at a time per cluster.
//! * A cluster whose state exists and has a node up is running: a second `start` of the
//!   name fails, naming the nodes up and the stop command. State whose nodes are all dead
//!   (kill -9, a reboot of `/dev/shm` aside) is a crashed cluster's: `start` and `stop`
//!   clean its nodes' leftover files and the state.
//! * `start` succeeds only with every node answering; else it names the node that did
//!   not come up (and shows its log's last lines), stops the others, and removes the
//!   state. Waiting is bounded (`--start-timeout-s`).
//! * `stop` asks every live node to stop (admin `StopRuntime`), waits for the grace
//!   period and a margin, kills (SIGKILL) any node still up after that, cleans every
//!   node's leftover instance files, and removes the state. Liveness comes from each
//!   instance's liveness lock, the pid to kill from that lock's file (never from a pid
//!   we remember), signalled through a pidfd checked against the lock again: a pid
//!   reused by another process is never signalled.
mod pki;
mod state;

use super::{fail, Context, Origin, BAD_INPUT, FAILED};
use crate::admin::AdminClient;
use chimaera_core::admin_api::RuntimeStatus;
use chimaera_core::instance::{self, runtime_alive, runtime_pid, InstanceName, RuntimeLockError};
use chimaera_core::peer::PeerState;
use chimaera_core::{Client, PoolId, PoolQuery, RuntimeConfig, TaskError};
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use state::{StateDir, StateError};
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The name of a cluster when `--name` is not given.
const DEFAULT_NAME: &str = "dev";
/// The most nodes a local cluster may have (addresses `127.0.0.1`..`127.0.0.64`).
const MAX_NODES: u32 = 64;
/// The longest cluster name: `{name}-node{63}` must stay a valid instance name.
const MAX_NAME_CHARS: usize = 40;
/// The manifest's file and its schema number.
const MANIFEST: &str = "cluster.json";
const SCHEMA: u32 = 1;
/// How long `stop` waits past the grace period before it kills a node still up.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// The deadline of each admin request to a node (past a stop's grace period): a node
/// that is hung (or SIGSTOPped) cannot hold a `cluster` command.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long a killed node may take to be gone (its lock released).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often the waits look again.
const POLL: Duration = Duration::from_millis(25);
/// Lines of a failed node's log shown with the error.
const LOG_TAIL_LINES: usize = 15;
/// Bytes of random cluster secret (written as hex).
const SECRET_BYTES: usize = 32;

#[derive(Debug, Subcommand)]
pub(super) enum ClusterCommand {
    /// Start a local cluster of N runtime processes on this machine (127.0.0.1-127.0.0.N,
    /// or one address with distinct ports), wait until every node answers, and print how
    /// to reach node 0.
    Start(StartArgs),
    /// Show the nodes of a local cluster: address, instance, up or down, pid, pools and
    /// the peers each node sees up. Exit 1 when a node is down.
    Status {
        /// The cluster's name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop every node of a local cluster (SIGKILL for any still up after the grace period
    /// and a margin), clean the files of crashed nodes, and remove the cluster's state.
    Stop {
        /// The cluster's name.
        #[arg(long, default_value = DEFAULT_NAME)]
        name: String,
        /// How long in-flight tasks may take to finish on each node (default: 5000).
        #[arg(long, value_name = "N", default_value_t = 5000)]
        grace_ms: u64,
    },
}

#[derive(Debug, Args)]
pub(super) struct StartArgs {
    /// How many nodes (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_NODES)))]
    nodes: u32,
    /// The cluster's name (letters, digits, `_`, `.`, `-`); node `i` is the instance
    /// `{name}-node{i}`.
    #[arg(long, default_value = DEFAULT_NAME)]
    name: String,
    /// The port of every node (one address per node), or of node 0 with node `i` on
    /// `P + i` (one address); default: free ports chosen by the kernel.
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// Low-latency workers of each node (1 to 64).
    #[arg(long, value_name = "W", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Where the nodes listen: `aliases` (127.0.0.1-127.0.0.N, one port), `ports`
    /// (127.0.0.1, a port each), or `auto` (aliases if 127.0.0.2 can be bound).
    #[arg(long, value_enum, default_value_t = AddressingChoice::Auto)]
    addressing: AddressingChoice,
    /// Mutual TLS between the nodes, with a throwaway certificate authority made for this
    /// cluster (its key is never written) and a certificate per node naming its address.
    #[arg(long)]
    tls: bool,
    /// How long to wait for each node to answer before giving up.
    #[arg(long, value_name = "S", default_value_t = 60)]
    start_timeout_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AddressingChoice {
    Auto,
    Aliases,
    Ports,
}

/// What `cluster.json` holds: everything `status` and `stop` need.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    schema: u32,
    name: String,
    /// How the addresses were chosen, for `status`.
    addressing: String,
    tls: bool,
    nodes: Vec<NodeRecord>,
}

/// One node of the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct NodeRecord {
    id: u32,
    instance: String,
    address: String,
    /// Its config file, in the state directory.
    config: String,
    /// Its log file, in the state directory.
    log: String,
}

impl NodeRecord {
    /// The node's instance name (checked when the manifest is read).
    fn instance(&self) -> Result<InstanceName, String> {
        InstanceName::new(&self.instance)
            .map_err(|err| format!("node {}'s instance `{}`: {err}", self.id, self.instance))
    }
}

/// Runs a `cluster` command.
pub(super) fn run(context: &Context, command: ClusterCommand) -> ExitCode {
    // From the environment they are the shell's defaults for other commands; given as
    // flags here they would be silently dropped, which would mislead.
    for (flag, origin) in [
        (
            "--config",
            context.config.as_ref().map(|config| config.from),
        ),
        (
            "--instance",
            context.instance.as_ref().map(|instance| instance.from),
        ),
    ] {
        if matches!(origin, Some(Origin::Flag(_))) {
            return fail(
                BAD_INPUT,
                format!(
                    "`cluster` commands do not take {flag}: every node gets the config `cluster \
                     start` writes, its instance is `{{name}}-node{{i}}`; name the cluster with \
                     --name"
                ),
            );
        }
    }
    match command {
        ClusterCommand::Start(args) => start(context, args),
        ClusterCommand::Status { name, json } => status(context, &name, json),
        ClusterCommand::Stop { name, grace_ms } => stop(context, &name, grace_ms),
    }
}

/// `cluster start`.
fn start(context: &Context, args: StartArgs) -> ExitCode {
    let instances = match node_instances(&args.name, args.nodes) {
        Ok(instances) => instances,
        Err(err) => return fail(BAD_INPUT, err),
    };
    let name = args.name.as_str();
    let state = match StateDir::create_locked(name) {
        Ok(state) => state,
        Err(err) => return fail(FAILED, err),
    };
    if !state.created() {
        match take_over_stale(context, &state, name) {
            Ok(()) => {}
            Err(code) => return code,
        }
    }
    match start_in(context, &args, &state, &instances) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let removed = match state.remove() {
                Ok(()) => "the cluster's state was removed".to_owned(),
                Err(err) => format!("its state could not be removed: {err}"),
            };
            fail(
                FAILED,
                format!("cluster `{name}` did not start: {message}; {removed}"),
            )
        }
    }
}

/// The instance of each node of cluster `name`, or why the name or count is unusable.
fn node_instances(name: &str, nodes: u32) -> Result<Vec<InstanceName>, String> {
    if name.is_empty() || name.len() > MAX_NAME_CHARS {
        return Err(format!(
            "bad cluster name `{name}` (--name): use 1 to {MAX_NAME_CHARS} characters from \
             A-Z, a-z, 0-9, `_`, `.` and `-`"
        ));
    }
    (0..nodes)
        .map(|node| {
            InstanceName::new(&format!("{name}-node{node}")).map_err(|_| {
                format!(
                    "bad cluster name `{name}` (--name): use 1 to {MAX_NAME_CHARS} characters \
                     from A-Z, a-z, 0-9, `_`, `.` and `-`"
                )
            })
        })
        .collect()
}

/// With the state of a cluster of this name already there: refuses if any of its nodes
/// is up, else cleans what the dead cluster left and empties the state.
fn take_over_stale(context: &Context, state: &StateDir, name: &str) -> Result<(), ExitCode> {
    let program = context.binary().name();
    let manifest = match read_manifest(state) {
        Ok(manifest) => manifest,
        Err(err) => {
            return Err(fail(
                FAILED,
                format!(
                    "cluster `{name}` has state at {} that cannot be read ({err}); remove it \
                     with `{program} cluster stop --name {name}`",
                    state.path().display()
                ),
            ))
        }
    };
    if let Some(manifest) = &manifest {
        let mut up = Vec::new();
        for node in &manifest.nodes {
            match node_alive(node) {
                Ok(false) => {}
                Ok(true) => up.push(node.id.to_string()),
                Err(err) => {
                    return Err(fail(
                        FAILED,
                        format!(
                            "cannot tell whether node {} of cluster `{name}` runs: {err}",
                            node.id
                        ),
                    ))
                }
            }
        }
        if !up.is_empty() {
            return Err(fail(
                FAILED,
                format!(
                    "a cluster named `{name}` is already running (node(s) {} up); stop it with \
                     `{program} cluster stop --name {name}`, or pick another --name",
                    up.join(", ")
                ),
            ));
        }
        for node in &manifest.nodes {
            if let Err(err) = clean_node(node) {
                return Err(fail(
                    FAILED,
                    format!("cannot clean up dead cluster `{name}`: {err}"),
                ));
            }
        }
    }
    if let Err(err) = state.empty() {
        return Err(fail(FAILED, err));
    }
    println!(
        "cluster `{name}` had crashed (no node up): its leftover files and state were removed"
    );
    Ok(())
}

/// Starts the cluster in `state`; on failure every node started is stopped and the
/// message says why (the caller removes the state).
fn start_in(
    context: &Context,
    args: &StartArgs,
    state: &StateDir,
    instances: &[InstanceName],
) -> Result<(), String> {
    let layout = Layout::choose(args.addressing, args.nodes, args.base_port)?;
    let addresses = layout.addresses();
    let records: Vec<NodeRecord> = instances
        .iter()
        .zip(&addresses)
        .enumerate()
        .map(|(node, (instance, address))| NodeRecord {
            id: node as u32,
            instance: instance.to_string(),
            address: address.clone(),
            config: format!("node-{node}.yaml"),
            log: format!("node-{node}.log"),
        })
        .collect();
    let manifest = Manifest {
        schema: SCHEMA,
        name: args.name.clone(),
        addressing: layout.describe(),
        tls: args.tls,
        nodes: records.clone(),
    };
    write_state(state, args, &manifest, &layout)?;

    let bound = Duration::from_secs(args.start_timeout_s);
    let mut children: Vec<Child> = Vec::new();
    let mut started = Vec::new();
    // Node 0 first, alone: the others ask it for the cluster's pools as they start. Then
    // the rest all at once, waited for in order.
    let (first, rest) = records.split_at(1);
    for wave in [first, rest] {
        for record in wave {
            match spawn_node(context, state, record) {
                Ok(child) => children.push(child),
                Err(err) => {
                    abort_start(&records, &mut children);
                    return Err(format!("node {} could not be started: {err}", record.id));
                }
            }
        }
        for record in wave {
            // Children are pushed in node order: node `i`'s is `children[i]`.
            let child = &mut children[record.id as usize];
            match wait_serving(record, state, child, bound) {
                Ok(status) => started.push(status),
                Err(why) => {
                    let log = log_tail(state, record);
                    abort_start(&records, &mut children);
                    return Err(format!(
                        "node {} ({}, instance `{}`) did not come up: {why}; the other nodes \
                         were stopped.{log}",
                        record.id, record.address, record.instance
                    ));
                }
            }
        }
    }

    let program = context.binary().name();
    println!(
        "cluster `{}`: {} node(s) up; {}; TLS {}",
        args.name,
        records.len(),
        layout.describe(),
        if args.tls {
            "on (throwaway authority, a certificate per node)"
        } else {
            "off (the cluster secret authenticates peers)"
        }
    );
    for (record, status) in records.iter().zip(&started) {
        println!(
            "  node {:>2}  {:<21}  instance {:<20}  pid {}",
            record.id, record.address, record.instance, status.pid
        );
    }
    println!("state, configs and logs: {}", state.path().display());
    println!(
        "connect a client to node 0: CHI_INSTANCE={} (e.g. `CHI_INSTANCE={} {program} runtime \
         status`), or CHI_SERVER_CONF={}",
        records[0].instance,
        records[0].instance,
        state.path_of(&records[0].config).display()
    );
    println!("stop it: {program} cluster stop --name {}", args.name);
    let _ = std::io::stdout().flush();
    Ok(())
}

/// Writes the secret, hostfile, TLS files, node configs and (last) the manifest.
fn write_state(
    state: &StateDir,
    args: &StartArgs,
    manifest: &Manifest,
    layout: &Layout,
) -> Result<(), String> {
    let write = |file: &str, contents: &[u8]| state.write_file(file, contents);
    write("secret", random_secret()?.as_bytes()).map_err(|err| err.to_string())?;
    let mut hosts = format!(
        "# cluster `{}`, written by `cluster start`: node i is line i\n",
        args.name
    );
    for node in &manifest.nodes {
        let _ = writeln!(hosts, "{}", node.address);
    }
    write("hosts", hosts.as_bytes()).map_err(|err| err.to_string())?;
    if args.tls {
        let pem = pki::issue(&args.name, &layout.hosts())
            .map_err(|err| format!("cannot make the cluster's certificates: {err}"))?;
        write("ca.crt", pem.ca.as_bytes()).map_err(|err| err.to_string())?;
        for (node, files) in pem.nodes.iter().enumerate() {
            write(&format!("node-{node}.crt"), files.cert.as_bytes())
                .map_err(|err| err.to_string())?;
            write(&format!("node-{node}.key"), files.key.as_bytes())
                .map_err(|err| err.to_string())?;
        }
    }
    for node in &manifest.nodes {
        let mut yaml = format!(
            "# node {} of the local cluster `{}` (written by `cluster start`, removed by \
             `cluster stop`)\ninstance: {}\nworkers:\n  low_latency: {}\n  high_latency: 0\n\
             networking:\n  hostfile: hosts\n  node_id: {}\n  secret_file: secret\n",
            node.id, args.name, node.instance, args.workers, node.id
        );
        if args.tls {
            let _ = writeln!(
                yaml,
                "  tls:\n    cert: node-{0}.crt\n    key: node-{0}.key\n    ca: ca.crt",
                node.id
            );
        }
        write(&node.config, yaml.as_bytes()).map_err(|err| err.to_string())?;
    }
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|err| format!("cannot write the manifest: {err}"))?;
    write(MANIFEST, &json).map_err(|err| err.to_string())
}

/// A fresh cluster secret: [`SECRET_BYTES`] random bytes from the kernel, as hex.
fn random_secret() -> Result<String, String> {
    let mut bytes = [0u8; SECRET_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|err| format!("cannot read random bytes from /dev/urandom: {err}"))?;
    Ok(bytes.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    }))
}

/// Starts `runtime start` of this binary for `record`, detached from the terminal's
/// process group, its output into its log file.
fn spawn_node(context: &Context, state: &StateDir, record: &NodeRecord) -> Result<Child, String> {
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
fn wait_serving(
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
fn node_status(config: &RuntimeConfig) -> Result<RuntimeStatus, String> {
    let client = Client::connect_to(config)
        .map_err(|err| err.to_string())?
        .with_deadline(REQUEST_DEADLINE);
    AdminClient::attach(&client, PoolId::ADMIN)
        .status(PoolQuery::Local)
        .map_err(|err| err.to_string())
}

/// After a failed start: stops the nodes that came up, kills the rest of `children`.
fn abort_start(records: &[NodeRecord], children: &mut [Child]) {
    stop_nodes(records, 0);
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
    for record in records {
        let _ = clean_node(record);
    }
}

/// The last lines of `record`'s log, as a paragraph for an error message.
fn log_tail(state: &StateDir, record: &NodeRecord) -> String {
    match state.read_file(&record.log) {
        Ok(Some(bytes)) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n  ");
            if tail.is_empty() {
                " Its log is empty.".to_owned()
            } else {
                format!("\nthe last lines of its log:\n  {tail}\n")
            }
        }
        _ => String::new(),
    }
}

/// The node's liveness (its instance's liveness lock).
fn node_alive(record: &NodeRecord) -> Result<bool, String> {
    let instance = record.instance()?;
    runtime_alive(&instance).map_err(|err| err.to_string())
}

/// Removes the files a dead node left (its lock file, socket, segments).
fn clean_node(record: &NodeRecord) -> Result<(), String> {
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
enum Ended {
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
fn stop_nodes(records: &[NodeRecord], grace_ms: u64) -> Vec<Ended> {
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

/// The manifest in `state`; `None` if there is none (a start that died before writing it).
fn read_manifest(state: &StateDir) -> Result<Option<Manifest>, String> {
    let Some(bytes) = state.read_file(MANIFEST).map_err(|err| err.to_string())? else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|err| {
        format!(
            "{} is not a cluster manifest: {err}",
            state.path_of(MANIFEST).display()
        )
    })?;
    if manifest.schema != SCHEMA {
        return Err(format!(
            "{} has schema {}, this program knows {SCHEMA}",
            state.path_of(MANIFEST).display(),
            manifest.schema
        ));
    }
    for node in &manifest.nodes {
        node.instance()?;
    }
    Ok(Some(manifest))
}

/// `cluster stop`.
fn stop(context: &Context, name: &str, grace_ms: u64) -> ExitCode {
    let state = match StateDir::open_locked(name) {
        Ok(state) => state,
        Err(err @ StateError::Missing { .. }) => {
            return fail(
                FAILED,
                format!(
                    "{err}; start one with `{} cluster start --name {name}`",
                    context.binary().name()
                ),
            )
        }
        Err(err) => return fail(FAILED, err),
    };
    let manifest = match read_manifest(&state) {
        Ok(manifest) => manifest,
        Err(err) => {
            // Written last, before any node starts: without a readable one, no node of
            // this state can be running by our hand.
            println!("the cluster's manifest is unusable ({err}); removing its state only");
            None
        }
    };
    let records = manifest.map(|manifest| manifest.nodes).unwrap_or_default();
    let ended = stop_nodes(&records, grace_ms);
    let mut stuck = Vec::new();
    for (record, ended) in records.iter().zip(&ended) {
        let how = match ended {
            Ended::Stopped => "stopped".to_owned(),
            Ended::WasDown => "was not running; its leftover files were removed".to_owned(),
            Ended::Killed => "did not stop in time: killed (SIGKILL)".to_owned(),
            Ended::Stuck(why) => {
                stuck.push(record.id.to_string());
                format!("NOT stopped: {why}")
            }
        };
        println!("  node {:>2}  {:<20}  {how}", record.id, record.instance);
    }
    if !stuck.is_empty() {
        return fail(
            FAILED,
            format!(
                "cluster `{name}`: node(s) {} could not be stopped; its state stays at {} so \
                 that `{} cluster stop --name {name}` can try again",
                stuck.join(", "),
                state.path().display(),
                context.binary().name()
            ),
        );
    }
    if let Err(err) = state.remove() {
        return fail(FAILED, format!("cluster `{name}` stopped, but {err}"));
    }
    println!(
        "cluster `{name}` stopped ({} node(s)); its state was removed",
        records.len()
    );
    ExitCode::SUCCESS
}

/// One node as `cluster status` shows it.
#[derive(Serialize)]
struct NodeView {
    id: u32,
    address: String,
    instance: String,
    up: bool,
    pid: Option<u32>,
    pools: Option<usize>,
    /// The peers this node sees up, of all the others.
    peers_up: Option<usize>,
}

impl NodeView {
    fn down(record: &NodeRecord) -> NodeView {
        NodeView {
            id: record.id,
            address: record.address.clone(),
            instance: record.instance.clone(),
            up: false,
            pid: None,
            pools: None,
            peers_up: None,
        }
    }
}

/// How `record`'s node answers its admin `Status`, if it is up.
fn view_of(record: &NodeRecord) -> NodeView {
    let status = record
        .instance()
        .ok()
        .filter(|instance| matches!(runtime_alive(instance), Ok(true)))
        .and_then(|instance| {
            node_status(&RuntimeConfig {
                instance,
                ..RuntimeConfig::default()
            })
            .ok()
        });
    match status {
        None => NodeView::down(record),
        Some(status) => NodeView {
            up: true,
            pid: Some(status.pid),
            pools: Some(status.pools.len()),
            peers_up: Some(
                status
                    .nodes
                    .iter()
                    .filter(|node| node.state == PeerState::Up)
                    .count(),
            ),
            ..NodeView::down(record)
        },
    }
}

/// `cluster status`.
fn status(context: &Context, name: &str, json: bool) -> ExitCode {
    let program = context.binary().name();
    // No lock: status only reads, and may run while a start or stop holds the lock.
    let state_path = state::state_path(name);
    let manifest = match StateDir::open_unlocked(name)
        .map_err(|err| err.to_string())
        .and_then(|state| read_manifest(&state))
    {
        Ok(Some(manifest)) => manifest,
        Ok(None) => {
            return fail(
                FAILED,
                format!(
                    "cluster `{name}` is being started (no manifest yet at {})",
                    state_path.display()
                ),
            )
        }
        Err(err) => {
            return fail(
                FAILED,
                format!("{err}; start one with `{program} cluster start --name {name}`"),
            )
        }
    };
    // Asked all at once, each with its deadline: a hung node does not hold the others.
    let views: Vec<NodeView> = std::thread::scope(|scope| {
        let asked: Vec<_> = manifest
            .nodes
            .iter()
            .map(|record| (record, scope.spawn(move || view_of(record))))
            .collect();
        asked
            .into_iter()
            .map(|(record, view)| view.join().unwrap_or_else(|_| NodeView::down(record)))
            .collect()
    });
    let up = views.iter().filter(|view| view.up).count();
    if json {
        let document = serde_json::json!({
            "schema": SCHEMA,
            "name": manifest.name,
            "addressing": manifest.addressing,
            "tls": manifest.tls,
            "state": state_path.display().to_string(),
            "nodes": views,
        });
        match serde_json::to_string_pretty(&document) {
            Ok(text) => println!("{text}"),
            Err(err) => return fail(FAILED, format!("cannot print JSON: {err}")),
        }
    } else {
        println!(
            "cluster `{}`: {} node(s), {up} up; {}; TLS {}",
            manifest.name,
            views.len(),
            manifest.addressing,
            if manifest.tls { "on" } else { "off" }
        );
        println!(
            "  node  address                instance              state  pid      pools  peers seen up"
        );
        for view in &views {
            match (view.pid, view.pools, view.peers_up) {
                (Some(pid), Some(pools), Some(peers)) => println!(
                    "  {:>4}  {:<21}  {:<20}  up     {:<7}  {:>5}  {peers} of {}",
                    view.id,
                    view.address,
                    view.instance,
                    pid,
                    pools,
                    views.len() - 1
                ),
                _ => println!(
                    "  {:>4}  {:<21}  {:<20}  down",
                    view.id, view.address, view.instance
                ),
            }
        }
        println!("state: {}", state_path.display());
        if up < views.len() {
            println!(
                "a node is down; `{program} cluster stop --name {name}` stops the rest and cleans up"
            );
        }
    }
    if up == views.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    }
}

/// Where the nodes listen.
#[derive(Debug)]
enum Layout {
    /// Node `i` on `127.0.0.{i+1}`, all on one port.
    Aliases {
        port: u16,
        nodes: u32,
        why: &'static str,
    },
    /// Every node on `127.0.0.1`, each its own port.
    Ports { ports: Vec<u16>, why: String },
}

impl Layout {
    fn choose(
        choice: AddressingChoice,
        nodes: u32,
        base_port: Option<u16>,
    ) -> Result<Layout, String> {
        let aliases = |why| -> Result<Layout, String> {
            let port = match base_port {
                Some(port) => port,
                None => port_free_on_every_alias(nodes)?,
            };
            Ok(Layout::Aliases { port, nodes, why })
        };
        match choice {
            AddressingChoice::Aliases => aliases("--addressing aliases"),
            AddressingChoice::Ports => {
                Layout::ports(nodes, base_port, "--addressing ports".to_owned())
            }
            AddressingChoice::Auto => match alias_probe(nodes) {
                Ok(()) => aliases("127.0.0.2 and up can be bound"),
                Err(err) => Layout::ports(
                    nodes,
                    base_port,
                    format!(
                        "binding 127.0.0.{} failed ({err}); on Linux every 127.x.y.z is this \
                         machine, elsewhere add loopback aliases to give each node its own address",
                        nodes.min(2)
                    ),
                ),
            },
        }
    }

    fn ports(nodes: u32, base_port: Option<u16>, why: String) -> Result<Layout, String> {
        let ports = match base_port {
            Some(base) => (0..nodes)
                .map(|node| {
                    u16::try_from(u32::from(base) + node).map_err(|_| {
                        format!("--base-port {base} leaves no room for {nodes} ports below 65536")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                // Held together, so the kernel hands out distinct ports.
                let listeners = (0..nodes)
                    .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("cannot find free ports on 127.0.0.1: {err}"))?;
                listeners
                    .iter()
                    .map(|listener| listener.local_addr().map(|address| address.port()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("cannot find free ports on 127.0.0.1: {err}"))?
            }
        };
        Ok(Layout::Ports { ports, why })
    }

    /// Each node's host.
    fn hosts(&self) -> Vec<String> {
        match self {
            Layout::Aliases { nodes, .. } => {
                (0..*nodes).map(|node| alias(node).to_string()).collect()
            }
            Layout::Ports { ports, .. } => ports
                .iter()
                .map(|_| Ipv4Addr::LOCALHOST.to_string())
                .collect(),
        }
    }

    /// Each node's `host:port`.
    fn addresses(&self) -> Vec<String> {
        match self {
            Layout::Aliases { port, .. } => self
                .hosts()
                .iter()
                .map(|host| format!("{host}:{port}"))
                .collect(),
            Layout::Ports { ports, .. } => ports
                .iter()
                .map(|port| format!("{}:{port}", Ipv4Addr::LOCALHOST))
                .collect(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Layout::Aliases { port, nodes, why } => format!(
                "addresses 127.0.0.1-{} port {port}, one per node ({why})",
                alias(nodes.saturating_sub(1))
            ),
            Layout::Ports { ports, why } => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!(
                    "one address 127.0.0.1, ports {} in node order ({why})",
                    ports.join(", ")
                )
            }
        }
    }
}

/// Node `node`'s loopback alias: `127.0.0.{node+1}`.
fn alias(node: u32) -> Ipv4Addr {
    let [_, _, high, low] = (node + 1).to_be_bytes();
    Ipv4Addr::new(127, 0, high, low)
}

/// Whether this machine lets a process bind `127.0.0.2` (and so every alias).
fn alias_probe(nodes: u32) -> Result<(), std::io::Error> {
    if nodes < 2 {
        return Ok(());
    }
    TcpListener::bind((alias(1), 0)).map(drop)
}

/// A port the kernel hands out on 127.0.0.1 that every other alias can bind too.
fn port_free_on_every_alias(nodes: u32) -> Result<u16, String> {
    const TRIES: usize = 16;
    for _ in 0..TRIES {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|err| format!("cannot find a free port on 127.0.0.1: {err}"))?;
        let port = listener
            .local_addr()
            .map_err(|err| format!("cannot find a free port on 127.0.0.1: {err}"))?
            .port();
        let others: Result<Vec<TcpListener>, _> = (1..nodes)
            .map(|node| TcpListener::bind((alias(node), port)))
            .collect();
        if others.is_ok() {
            return Ok(port);
        }
    }
    Err(format!(
        "found no port free on all of 127.0.0.1-{} in {TRIES} tries; give one with --base-port",
        alias(nodes - 1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_instances_follow_the_name_and_bad_names_are_refused() {
        let instances = node_instances("dev", 3).unwrap();
        let names: Vec<&str> = instances.iter().map(InstanceName::as_str).collect();
        assert_eq!(names, ["dev-node0", "dev-node1", "dev-node2"]);
        for bad in ["", "a/b", "../x", "sp ace", "plus+sign", &"x".repeat(41)] {
            let err = node_instances(bad, 1).unwrap_err();
            assert!(err.contains("--name"), "{bad:?}: {err}");
        }
        assert_eq!(
            node_instances(&"x".repeat(40), MAX_NODES).unwrap().len(),
            64
        );
    }

    #[test]
    fn aliases_count_from_127_0_0_1() {
        assert_eq!(alias(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(alias(63), Ipv4Addr::new(127, 0, 0, 64));
        assert_eq!(alias(255), Ipv4Addr::new(127, 0, 1, 0));
    }

    #[test]
    fn layouts_give_each_node_its_address() {
        let aliases = Layout::Aliases {
            port: 7000,
            nodes: 3,
            why: "test",
        };
        assert_eq!(
            aliases.addresses(),
            ["127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"]
        );
        assert_eq!(aliases.hosts(), ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        let ports = Layout::ports(3, Some(7000), "test".to_owned()).unwrap();
        assert_eq!(
            ports.addresses(),
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!(ports.hosts(), ["127.0.0.1"; 3]);
        let err = Layout::ports(3, Some(65534), "test".to_owned()).unwrap_err();
        assert!(err.contains("--base-port 65534"), "{err}");
        let chosen = Layout::ports(4, None, "test".to_owned())
            .unwrap()
            .addresses();
        let mut distinct = chosen.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{chosen:?}");
    }

    #[test]
    fn a_secret_is_long_random_hex() {
        let (one, two) = (random_secret().unwrap(), random_secret().unwrap());
        assert_eq!(one.len(), 2 * SECRET_BYTES);
        assert!(one.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(one, two);
    }
}
