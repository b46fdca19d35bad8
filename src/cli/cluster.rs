//! `chimaera cluster start|status|stop`: a local dev cluster of N `runtime start`
//! processes from one command, and one command to stop it.
//!
//! ```text
//! chimaera cluster start [--nodes 4] [--name dev] [--base-port P] [--workers W] [--tls]
//! chimaera cluster status [--name dev] [--json]
//! chimaera cluster stop [--name dev] [--grace-ms N]
//! ```
//!
//! The parts: [`state`] (the cluster's directory), [`manifest`] (what it says about the
//! nodes), [`layout`] (addresses and ports), [`nodes`] (the processes: start, wait,
//! stop, kill), [`pki`] (`--tls`). This file holds the three commands.
//!
//! `start` writes the cluster's state into `{user dir}/cluster+{name}` ([`state`]: `0700`,
//! nothing followed): `cluster.json` ([`manifest`]: which instance, address, config and
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
mod layout;
mod manifest;
mod nodes;
mod pki;
mod state;

use super::{fail, Context, Origin, BAD_INPUT, FAILED};
use chimaera_core::instance::{runtime_alive, InstanceName};
use chimaera_core::peer::PeerState;
use chimaera_core::RuntimeConfig;
use clap::{Args, Subcommand};
use layout::{AddressingChoice, Layout};
use manifest::{Manifest, NodeRecord, MANIFEST, SCHEMA};
use nodes::{clean_node, node_alive, node_status, spawn_node, stop_nodes, wait_serving, Ended};
use serde::Serialize;
use state::{StateDir, StateError};
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::process::{Child, ExitCode};
use std::time::Duration;

/// The name of a cluster when `--name` is not given.
const DEFAULT_NAME: &str = "dev";
/// The most nodes a local cluster may have (addresses `127.0.0.1`..`127.0.0.64`).
const MAX_NODES: u32 = 64;
/// The longest cluster name: `{name}-node{63}` must stay a valid instance name.
const MAX_NAME_CHARS: usize = 40;
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
    let manifest = match manifest::read(state) {
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
    let manifest = match manifest::read(&state) {
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
        .and_then(|state| manifest::read(&state))
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
    fn a_secret_is_long_random_hex() {
        let (one, two) = (random_secret().unwrap(), random_secret().unwrap());
        assert_eq!(one.len(), 2 * SECRET_BYTES);
        assert!(one.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(one, two);
    }
}
