//! `chimaera runtime status [--json]` and `chimaera runtime clean`.
//!
//! `status` asks the running runtime for its admin `Status` (which leaves the query's own
//! task and client out) and prints it as text or as JSON; when no runtime runs it says
//! so, and lists the files a dead runtime of the instance left, with their sizes (exit
//! code 1 either way).
//!
//! # JSON schema 1
//!
//! Every object below is printed in full; a field is never absent. Durations are
//! nanoseconds, sizes bytes, pool ids `"major.minor"` strings. A consumer must check
//! `schema` (a new field may appear within one schema number; a change or removal bumps
//! it).
//!
//! ```text
//! { "schema": 1, "instance": str, "running": true, "pid": u32,
//!   "tasks": { "in_flight": u64, "completed": u64, "periodic": u64 },
//!   "coroutines": { "live": u64, "max": u64 },
//!   "clients": u32,
//!   "uids": [ { "uid": u32, "connections": Q, "waiting_tasks": Q, "periodic_tasks": Q,
//!               "containers": Q, "memory_bytes": Q, "stack_overflows": Q } ],
//!     (Q: { "used": u64, "max": u64 })
//!   "workers": [ { "id": u32, "tasks_run": u64, "queued": u64 } ],
//!   "pools": [ { "id": str, "name": str, "module": str, "queued": u64,
//!                "private_to": u32 | null,
//!                "containers": [ { "id": u32,
//!                                  "lanes": [ { "id": u32, "worker": u32,
//!                                               "priority": "low_latency" | "high_latency",
//!                                               "queued": u64 } ] } ],
//!                "methods": [ { "id": u32, "name": str, "completed": u64, "failed": u64,
//!                               "in_flight": u64,
//!                               "latency_ns": { "count": u64, "mean": u64, "p50": u64,
//!                                               "p90": u64, "p99": u64, "max": u64 } } ] } ],
//!   "shm": { "serving": bool, "max_clients": u32, "main_size": u64,
//!            "client_data_size": u64, "runtime_data_size": u64, "per_client_bytes": u64,
//!            "client_areas_in_use": u32, "committed_bytes": u64,
//!            "output_bytes_in_use": u64 },
//!   "node": u32,
//!   "nodes": [ { "id": u32, "address": str,
//!                "state": "local" | "up" | "connecting" | "down" | "left" } ] }
//!
//! { "schema": 1, "instance": str, "running": false,
//!   "leftover_files": [ { "path": str, "bytes": u64 } ], "leftover_bytes": u64 }
//! ```
//!
//! `node` is this runtime's node id (0 for a single node), `nodes` every node of its
//! cluster as this one sees it, itself (`local`) included, in id order; empty without a
//! hostfile. Both were added within schema 1, as was `coroutines`: the task coroutines
//! alive (waiting tasks, each worker's poller and spare, stacks leaked by overflows)
//! against `max_coroutines`, at which workers refuse tasks with `NoCoroutine`; and
//! `uids`: each uid without admin rights that connected since the start, with what it
//! holds against each of its `quotas:` (past one its requests fail with
//! `QuotaExceeded`), in uid order.
//!
//! `tasks.in_flight` and each method's `in_flight` leave the status query out; `clients`
//! leaves out the client that asked. Latencies are of runs (handler start to result,
//! waits included; see `chimaera_core::stats`), each percentile within 12.5 %.
//!
//! `clean` takes the instance's runtime lock (so it refuses while a runtime holds it),
//! removes the instance's files through the verified user directory
//! ([`instance::clean`]: never following a link, refusing what it does not own), then
//! releases and removes the lock file.
use super::runtime::alive;
use super::{fail, Context, FAILED};
use crate::admin::AdminClient;
use chimaera_core::admin_api::{MethodStatus, PoolInfo, RuntimeStatus};
use chimaera_core::instance::{self, InstanceFile, RuntimeLockError};
use chimaera_core::{PoolId, PoolQuery, RuntimeConfig};
use serde::Serialize;
use std::process::ExitCode;

/// The schema number of `runtime status --json`.
pub(super) const SCHEMA: u32 = 1;

/// The running runtime's status (the query's own task and client left out), or the exit
/// code after saying why there is none.
pub(super) fn fetch(context: &Context, config: &RuntimeConfig) -> Result<RuntimeStatus, ExitCode> {
    let client = context.connect_to(config)?;
    AdminClient::attach(&client, PoolId::ADMIN)
        .status(PoolQuery::Local)
        .map_err(|err| {
            fail(
                FAILED,
                format!("runtime `{}` did not answer: {err}", config.instance),
            )
        })
}

/// `runtime status [--json]`.
pub(super) fn status(context: &Context, json: bool) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    match alive(&config) {
        Ok(true) => {}
        Ok(false) => return not_running(context, &config, json),
        Err(code) => return code,
    }
    let status = match fetch(context, &config) {
        Ok(status) => status,
        Err(code) => return code,
    };
    if json {
        print_json(&Running::from(&status));
    } else {
        print_text(&for_display(status));
    }
    ExitCode::SUCCESS
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(err) => {
            fail(FAILED, format!("cannot print the status as JSON: {err}"));
        }
    }
}

/// A file a dead runtime left, with its size.
#[derive(Serialize)]
struct Leftover {
    path: String,
    bytes: u64,
}

/// The files of `config`'s instance in the user directory (its lock file included).
fn leftovers(config: &RuntimeConfig) -> Result<Vec<Leftover>, String> {
    let files = instance::instance_files(&config.instance).map_err(|err| err.to_string())?;
    Ok(files.iter().map(Leftover::from).collect())
}

impl From<&InstanceFile> for Leftover {
    fn from(file: &InstanceFile) -> Leftover {
        Leftover {
            path: file.path.display().to_string(),
            bytes: file.bytes,
        }
    }
}

fn not_running(context: &Context, config: &RuntimeConfig, json: bool) -> ExitCode {
    let files = match leftovers(config) {
        Ok(files) => files,
        Err(err) => return fail(FAILED, err),
    };
    let bytes: u64 = files.iter().map(|file| file.bytes).sum();
    if json {
        #[derive(Serialize)]
        struct NotRunning<'a> {
            schema: u32,
            instance: &'a str,
            running: bool,
            leftover_files: &'a [Leftover],
            leftover_bytes: u64,
        }
        print_json(&NotRunning {
            schema: SCHEMA,
            instance: config.instance.as_str(),
            running: false,
            leftover_files: &files,
            leftover_bytes: bytes,
        });
    } else {
        println!("runtime `{}` is not running", config.instance);
        if !files.is_empty() {
            println!(
                "a dead runtime left {} file(s), {bytes} bytes; remove them with `{} runtime clean`:",
                files.len(),
                context.binary().name()
            );
            for file in &files {
                println!("  {}  {} bytes", file.path, file.bytes);
            }
        }
    }
    ExitCode::from(FAILED)
}

/// `runtime clean`.
pub(super) fn clean(context: &Context) -> ExitCode {
    let config = match context.config() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let cleaned = match instance::clean(&config.instance) {
        Ok(cleaned) => cleaned,
        Err(RuntimeLockError::AlreadyRunning { pid, .. }) => {
            let pid = pid.map_or_else(String::new, |pid| format!(" (pid {pid})"));
            return fail(
                FAILED,
                format!(
                    "runtime `{}` is running{pid}: nothing to clean; stop it with `{} runtime stop`",
                    config.instance,
                    context.binary().name()
                ),
            );
        }
        Err(err) => return fail(FAILED, err),
    };
    for file in &cleaned {
        println!("removed {}", file.path.display());
    }
    let bytes: u64 = cleaned.iter().map(|file| file.bytes).sum();
    if cleaned.is_empty() {
        println!("runtime `{}` left no files", config.instance);
    } else {
        println!(
            "cleaned runtime `{}`: {} file(s), {bytes} bytes",
            config.instance,
            cleaned.len()
        );
    }
    ExitCode::SUCCESS
}

/// `runtime status --json` of a running runtime (schema 1, see the module docs).
#[derive(Serialize)]
pub(super) struct Running {
    schema: u32,
    instance: String,
    running: bool,
    pid: u32,
    tasks: Tasks,
    coroutines: Coroutines,
    clients: u32,
    uids: Vec<Uid>,
    workers: Vec<Worker>,
    pools: Vec<Pool>,
    shm: Shm,
    node: u32,
    nodes: Vec<Node>,
}

#[derive(Serialize)]
struct Node {
    id: u32,
    address: String,
    state: String,
}

#[derive(Serialize)]
struct Tasks {
    in_flight: u64,
    completed: u64,
    periodic: u64,
}

/// What one uid holds against its quotas.
#[derive(Serialize)]
struct Uid {
    uid: u32,
    connections: QuotaUse,
    waiting_tasks: QuotaUse,
    periodic_tasks: QuotaUse,
    containers: QuotaUse,
    memory_bytes: QuotaUse,
    stack_overflows: QuotaUse,
}

#[derive(Serialize)]
struct QuotaUse {
    used: u64,
    max: u64,
}

impl From<chimaera_core::admin_api::QuotaUse> for QuotaUse {
    fn from(usage: chimaera_core::admin_api::QuotaUse) -> QuotaUse {
        QuotaUse {
            used: usage.used,
            max: usage.max,
        }
    }
}

#[derive(Serialize)]
struct Coroutines {
    live: u64,
    max: u64,
}

#[derive(Serialize)]
struct Worker {
    id: u32,
    tasks_run: u64,
    queued: u64,
}

#[derive(Serialize)]
struct Pool {
    id: String,
    name: String,
    module: String,
    queued: u64,
    /// The uid without admin rights it is private to.
    private_to: Option<u32>,
    containers: Vec<Container>,
    methods: Vec<Method>,
}

#[derive(Serialize)]
struct Container {
    id: u32,
    lanes: Vec<Lane>,
}

#[derive(Serialize)]
struct Lane {
    id: u32,
    worker: u32,
    priority: &'static str,
    queued: u64,
}

#[derive(Serialize)]
struct Method {
    id: u32,
    name: String,
    completed: u64,
    failed: u64,
    in_flight: u64,
    latency_ns: Latency,
}

#[derive(Serialize)]
struct Latency {
    count: u64,
    mean: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

#[derive(Serialize)]
struct Shm {
    serving: bool,
    max_clients: u32,
    main_size: u64,
    client_data_size: u64,
    runtime_data_size: u64,
    per_client_bytes: u64,
    client_areas_in_use: u32,
    committed_bytes: u64,
    output_bytes_in_use: u64,
}

impl Running {
    /// One pool of `status` in the JSON form.
    fn pool(status: &RuntimeStatus, info: &PoolInfo) -> Pool {
        Pool {
            id: info.id.to_string(),
            name: info.name.clone(),
            module: info.module.clone(),
            queued: info.queued,
            private_to: info.private_to,
            containers: status
                .containers
                .iter()
                .filter(|container| container.pool == info.id)
                .map(|container| Container {
                    id: container.container,
                    lanes: container
                        .lanes
                        .iter()
                        .enumerate()
                        .map(|(id, lane)| Lane {
                            id: id as u32,
                            worker: lane.worker,
                            priority: if lane.high_latency {
                                "high_latency"
                            } else {
                                "low_latency"
                            },
                            queued: lane.queued,
                        })
                        .collect(),
                })
                .collect(),
            methods: methods_of(status, info.id)
                .map(|method| Method {
                    id: method.method,
                    name: method.name.clone(),
                    completed: method.completed,
                    failed: method.failed,
                    in_flight: method.in_flight,
                    latency_ns: Latency {
                        count: method.latency.count,
                        mean: method.latency.mean_ns,
                        p50: method.latency.p50_ns,
                        p90: method.latency.p90_ns,
                        p99: method.latency.p99_ns,
                        max: method.latency.max_ns,
                    },
                })
                .collect(),
        }
    }
}

impl From<&RuntimeStatus> for Running {
    fn from(status: &RuntimeStatus) -> Running {
        let shm = &status.shm;
        Running {
            schema: SCHEMA,
            instance: status.instance.clone(),
            running: true,
            pid: status.pid,
            tasks: Tasks {
                in_flight: status.inflight,
                completed: status.completed,
                periodic: status.periodic,
            },
            coroutines: Coroutines {
                live: status.coroutines.live,
                max: status.coroutines.max,
            },
            clients: status.clients,
            uids: status
                .uids
                .iter()
                .map(|uid| Uid {
                    uid: uid.uid,
                    connections: uid.connections.into(),
                    waiting_tasks: uid.waiting_tasks.into(),
                    periodic_tasks: uid.periodic_tasks.into(),
                    containers: uid.containers.into(),
                    memory_bytes: uid.memory_bytes.into(),
                    stack_overflows: uid.stack_overflows.into(),
                })
                .collect(),
            workers: status
                .workers
                .iter()
                .map(|worker| Worker {
                    id: worker.id,
                    tasks_run: worker.tasks_run,
                    queued: worker.queued,
                })
                .collect(),
            pools: status
                .pools
                .iter()
                .map(|info| Running::pool(status, info))
                .collect(),
            shm: Shm {
                serving: shm.serving,
                max_clients: shm.max_clients,
                main_size: shm.main_size,
                client_data_size: shm.client_data_size,
                runtime_data_size: shm.runtime_data_size,
                per_client_bytes: shm.per_client_bytes,
                client_areas_in_use: shm.client_areas_in_use,
                committed_bytes: shm.committed_bytes,
                output_bytes_in_use: shm.output_bytes_in_use,
            },
            node: status.node,
            nodes: status
                .nodes
                .iter()
                .map(|node| Node {
                    id: node.node,
                    address: node.address.clone(),
                    state: node.state.to_string(),
                })
                .collect(),
        }
    }
}

/// The methods of pool `pool` in `status`.
pub(super) fn methods_of(
    status: &RuntimeStatus,
    pool: PoolId,
) -> impl Iterator<Item = &MethodStatus> {
    status
        .methods
        .iter()
        .filter(move |method| method.pool == pool)
}

/// `text` (a name a client chose) safe to print on a terminal: control characters (an
/// escape sequence could rewrite the operator's screen or forge lines) and bidirectional
/// overrides (which reorder what is shown) are printed escaped, like `\u{1b}`.
pub(super) fn shown(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        let reorders = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || reorders {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// `status` with every name a client may have chosen made [`shown`]: for text output
/// only (JSON escapes by itself; look-ups by name use the real names).
pub(super) fn for_display(mut status: RuntimeStatus) -> RuntimeStatus {
    for pool in &mut status.pools {
        pool.name = shown(&pool.name);
        pool.module = shown(&pool.module);
    }
    for method in &mut status.methods {
        method.name = shown(&method.name);
    }
    status
}

/// A duration in nanoseconds, in the unit that suits it (`850ns`, `12.3µs`, `4.1ms`).
pub(super) fn human_ns(nanos: u64) -> String {
    match nanos {
        0..=999 => format!("{nanos}ns"),
        1_000..=999_999 => format!("{:.1}µs", nanos as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}ms", nanos as f64 / 1e6),
        _ => format!("{:.2}s", nanos as f64 / 1e9),
    }
}

/// A byte count in the binary unit that suits it.
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The pool table of `status`: id, name, module, containers, queued.
pub(super) fn print_pools(status: &RuntimeStatus) {
    let width = |column: fn(&PoolInfo) -> String| {
        status
            .pools
            .iter()
            .map(|pool| column(pool).len())
            .max()
            .unwrap_or(0)
    };
    let (ids, names, modules) = (
        width(|pool| pool.id.to_string()),
        width(|pool| pool.name.clone()),
        width(|pool| pool.module.clone()),
    );
    for pool in &status.pools {
        let private = pool
            .private_to
            .map(|uid| format!(", private to uid {uid}"))
            .unwrap_or_default();
        println!(
            "  {:>ids$}  {:<names$}  {:<modules$}  {} container(s), {} queued{private}",
            pool.id.to_string(),
            pool.name,
            pool.module,
            pool.containers,
            pool.queued
        );
    }
}

/// The methods of `pool` that ran, with counts and latencies.
pub(super) fn print_methods(status: &RuntimeStatus, pool: &PoolInfo, indent: &str) {
    for method in methods_of(status, pool.id).filter(|m| m.latency.count + m.in_flight > 0) {
        println!(
            "{indent}{:<20} {} done, {} failed, {} running; p50 {}, p99 {}, max {}",
            method.name,
            method.completed,
            method.failed,
            method.in_flight,
            human_ns(method.latency.p50_ns),
            human_ns(method.latency.p99_ns),
            human_ns(method.latency.max_ns)
        );
    }
}

fn print_text(status: &RuntimeStatus) {
    println!("runtime `{}` is up (pid {})", status.instance, status.pid);
    println!(
        "tasks: {} in flight, {} completed, {} periodic; clients attached: {}",
        status.inflight, status.completed, status.periodic, status.clients
    );
    println!(
        "coroutines: {} alive of at most {} (max_coroutines: waiting tasks, a poller and a spare per worker, stacks leaked by overflows)",
        status.coroutines.live, status.coroutines.max
    );
    if !status.uids.is_empty() {
        println!("uids without admin rights (used/quota, config keys quotas.*):");
    }
    for uid in &status.uids {
        println!(
            "  uid {}: connections {}/{}, waiting_tasks {}/{}, periodic_tasks {}/{}, containers {}/{}, memory {}/{}, stack_overflows {}/{}",
            uid.uid,
            uid.connections.used,
            uid.connections.max,
            uid.waiting_tasks.used,
            uid.waiting_tasks.max,
            uid.periodic_tasks.used,
            uid.periodic_tasks.max,
            uid.containers.used,
            uid.containers.max,
            human_bytes(uid.memory_bytes.used),
            human_bytes(uid.memory_bytes.max),
            uid.stack_overflows.used,
            uid.stack_overflows.max,
        );
    }
    println!("workers: {}", status.workers.len());
    for worker in &status.workers {
        println!(
            "  {:>3}  {} tasks run, {} waiting in its inbox or posted to it",
            worker.id, worker.tasks_run, worker.queued
        );
    }
    println!("pools: {}", status.pools.len());
    print_pools(status);
    println!("methods that ran:");
    for pool in &status.pools {
        print_methods(status, pool, &format!("  {} ", pool.name));
    }
    if !status.nodes.is_empty() {
        println!(
            "cluster: node {} of {} node(s)",
            status.node,
            status.nodes.len()
        );
        for node in &status.nodes {
            println!("  {:>3}  {}  {}", node.node, node.address, node.state);
        }
    }
    let shm = &status.shm;
    println!(
        "shared memory: {} client area(s) of {} in use ({}), up to {} clients; {} of outputs waiting",
        shm.client_areas_in_use,
        human_bytes(shm.per_client_bytes),
        human_bytes(shm.committed_bytes),
        shm.max_clients,
        human_bytes(shm.output_bytes_in_use)
    );
}
