//! Runtime configuration: one YAML file, or built-in defaults that work on a laptop.
//!
//! [`RuntimeConfig::from_env`] reads the file named by `CHI_SERVER_CONF` (unset or empty:
//! no file, defaults), then applies `CHI_INSTANCE` if set and not empty. Clients load the same config to
//! find their runtime: the instance name picks the files in `/dev/shm`.
//!
//! # Keys
//!
//! Every key is optional; every key that exists is honoured. Sizes are a whole number of
//! bytes or a string with a unit ([`parse_size`]: `256KiB`, `64MiB`, `1GB`, …).
//!
//! ```yaml
//! instance: default          # which runtime: 1-64 chars of [A-Za-z0-9_.-]; CHI_INSTANCE overrides
//! workers:
//!   low_latency: 1           # workers serving low-latency lanes (1..=1024)
//!   high_latency: 1          # workers for high-latency lanes (0..=1024; 0: low-latency workers serve them)
//! coroutine_stack_size: 256KiB  # stack of each task coroutine (16KiB..=256MiB)
//! queue_depth: 256           # task slots (and ring entries) per client: a power of two, 1..=65536;
//!                            # one client's calls in flight (queue_depth - 1: one slot carries
//!                            # abandon requests); more submissions wait for a slot
//! max_clients: 64            # client processes attached at once (1..=4096)
//! shm:
//!   main_size: 20MiB         # queues and task slots (up to 1 KiB each) of all clients; each gets / max_clients (4KiB..=1TiB, as are the next two)
//!   client_data_size: 32MiB  # buffers clients allocate (Client::allocate_buffer); each client gets / max_clients
//!   runtime_data_size: 8MiB  # outputs larger than a slot; each client gets / max_clients (its output-bytes quota)
//! idle:
//!   spin_rounds: 2048        # polls an idle worker makes (letting its other coroutines run, if any wait)
//!   yield_rounds: 16         # more such polls; a worker parks after spin_rounds + yield_rounds empty polls
//! stop_grace_period_ms: 5000 # how long a stop waits for in-flight tasks before failing them
//! access:                    # who else may connect (the runtime's own uid always may)
//!   uids: [1001]             # further uids (each 0..=4294967294; at most 1024 per list)
//!   gids: [100]              # primary gids (as SO_PEERCRED reports them)
//!   admin_uids: [1002]       # uids that may also StopRuntime, Flush, DestroyPool of any pool
//! quotas:
//!   tasks_in_flight: 1024    # tasks one client may have running or queued, fire-and-forget
//!                            # and periodic ones included (1..=1048576); over it a task fails
//!                            # with QuotaExceeded. A client's output bytes are bounded by its
//!                            # output space: shm.runtime_data_size / max_clients
//!   stack_overflows: 64      # handler stack overflows the tasks of one uid other than the
//!                            # runtime's own and its admin_uids may cause in the runtime's
//!                            # life (1..=1048576); past it that uid's tasks fail with
//!                            # QuotaExceeded. Each overflow keeps its dead coroutine stack
//!                            # (coroutine_stack_size of memory, two memory mappings) for good
//!   connections: 48          # client processes of one such uid attached at once
//!                            # (1..=4096); one more is refused (ConnectError::
//!                            # TooManyConnections). Absent: three quarters of max_clients,
//!                            # so no one uid can take every connection from the others
//!   containers: 16384        # containers of the pools one such uid created, alive at once
//!                            # (1..=16777216; it may destroy only its own); a pool past it
//!                            # fails with QuotaExceeded
//!   memory: 4GiB             # memory modules hold for one such uid (a RAM bdev's size, say),
//!                            # and the names and create parameters of its pools (up to
//!                            # 1024TiB); past it the create fails with QuotaExceeded
//!   periodic_tasks: 1024     # periodic tasks of one such uid alive at once (1..=1048576);
//!                            # one more fails with QuotaExceeded. Absent: a quarter of
//!                            # max_periodic_tasks
//!   waiting_tasks: 7000      # tasks of one such uid (subtasks of its tasks included) that
//!                            # may wait at once, each keeping a coroutine (1..=16777216);
//!                            # while that many wait, its new tasks fail with QuotaExceeded.
//!                            # Absent: a quarter of max_coroutines, so no one uid can take
//!                            # every coroutine from the others
//! stop_grace_period_ms: 5000 # how long a stop waits for in-flight tasks before failing them;
//!                            # tasks arriving meanwhile fail with RuntimeStopped (subtasks of
//!                            # running tasks excepted), and the stop ends when it is over
//!                            # (a handler that never returns is left running: the stop ends
//!                            # one more grace period, at least 1 s, later)
//! max_containers_per_pool: 4096 # containers one GetOrCreatePool may ask for (1..=65536);
//!                            # more fails that task with TooManyContainers, nothing allocated
//! max_task_depth: 1024       # subtask nesting: a task at this depth cannot submit subtasks
//!                            # (1..=65536); a deeper one fails with TooDeep
//! max_periodic_tasks: 4096   # periodic tasks alive at once, all clients together
//!                            # (1..=1048576); one more fails with TooManyPeriodicTasks
//! max_coroutines: 28000      # task coroutines alive at once, all workers together: every
//!                            # task that waits keeps one (a coroutine_stack_size stack and
//!                            # two memory mappings) until done, and a stack overflow leaks
//!                            # its own for good. With none to spare a worker fails its tasks
//!                            # with NoCoroutine until a waiting task finishes. Absent: what
//!                            # the kernel's vm.max_map_count leaves room for (28,669 for its
//!                            # default 65,530); at least 2 per worker + 1, at most 16777216
//! pin_workers: false         # pin worker threads to cores
//! metrics:
//!   prometheus: 127.0.0.1:9464 # serve the runtime's statistics in Prometheus text format at
//!                            # http://ADDRESS/metrics (off when absent; `runtime start` serves it)
//!   latency_sample: 8        # time one run in this many (1..=65536; 1: every run), past each
//!                            # method's first 1024 runs on each worker, which are all timed;
//!                            # run counts stay exact either way (see crate::stats)
//! networking:                # many nodes (see crate::cluster); without a hostfile: one node, no network
//!   port: 9513               # the port every node listens on unless its hostfile line names one (1..=65535)
//!   hostfile: /etc/chimaera/hosts # one host per line: `host`, `host:port`, ranges `node[01-16]`, `#` comments
//!   node_id: 2               # this node's index in the hostfile (from 0); absent: the first
//!                            # entry whose address this process can bind
//!   neighborhood_size: 32    # Broadcast/Range fan out through a tree: no node sends more than
//!                            # this many frames per task (1..=1024)
//!   rpc_timeout_ms: 2000     # a task sent to another node fails with a typed error naming the
//!                            # node when no answer comes within this (1..=3600000)
//!   force_net: false         # send even this node's own tasks through the network path (tests)
//!   secret: "long random text" # the cluster secret every node shares (16..=4096 bytes) ...
//!   secret_file: /etc/chimaera/secret # ... or the file holding it (one of the two, not both)
//!   tls:                     # mutual TLS between the nodes (absent: plain HTTP/2, secret in clear)
//!     cert: node2.crt        # this node's certificate chain (PEM); its subject alternative
//!                            # names must include this node's hostfile host (DNS name or IP)
//!     key: node2.key         # this node's private key (PEM: PKCS#8, PKCS#1 or SEC1)
//!     ca: ca.crt             # the authority that signed every node's certificate (PEM); a peer
//!                            # whose certificate it did not sign gets no connection
//! compose:                   # pools created at boot, in this order
//!   - module: bdev           # the chimod's name
//!     name: ram0             # the pool's unique name
//!     containers: 1          # 1..=max_containers_per_pool; default 1
//!     params:                # free-form mapping the module interprets (default: empty)
//!       bdev_type: ram
//!       capacity: 1GiB
//! ```
//!
//! Relative paths in a config file (`networking.hostfile`, `networking.secret_file` and
//! the three `networking.tls` files) are relative to the directory of that file, not to
//! the working directory of whoever starts the runtime; in YAML text
//! ([`RuntimeConfig::from_yaml_str`]) they stay as written.
//!
//! Each client's share of the three `shm` sizes is its own memory (a memfd, see
//! `crate::transport::shm::client_area`), fully reserved when it connects: with every client
//! attached the runtime commits the three sizes (the defaults, 60 MiB, fit a laptop).
//!
//! # Invariants
//!
//! A [`RuntimeConfig`] made by the loaders here has passed [`RuntimeConfig::validate`]:
//! every value lies in the range above, pool names are unique and each pool's `params`
//! is a mapping. One built by hand can be checked with the same call.
//!
//! # Failure modes
//!
//! An unknown key, a value of the wrong type or a bad size is a [`ConfigError::Parse`]
//! naming the key with its line and column; a value out of range is a
//! [`ConfigError::Invalid`] naming the key path (`workers.low_latency`,
//! `compose[2].containers`); an unreadable file is [`ConfigError::Read`]; a bad
//! `CHI_INSTANCE` is [`ConfigError::Env`].
//!
//! Each runtime starts its own worker threads (`workers`), one coroutine executor each
//! (see `crate::coroutine`); `coroutine_stack_size` sizes every task coroutine's stack
//! and `pin_workers` pins worker `i` to CPU `i` (modulo the CPU count).
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::shm::InstanceName;

/// Environment variable naming the config file.
pub const CONF_ENV: &str = "CHI_SERVER_CONF";
/// Environment variable overriding the `instance` key.
pub const INSTANCE_ENV: &str = "CHI_INSTANCE";

/// How a runtime is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Which runtime: names its files in `/dev/shm`; clients use it to find the runtime.
    pub instance: InstanceName,
    /// Workers serving low-latency lanes (at least 1).
    pub workers_low_latency: usize,
    /// Workers serving high-latency lanes; with 0, high-latency lanes go to the
    /// low-latency workers.
    pub workers_high_latency: usize,
    /// Stack of each task coroutine, in bytes.
    pub stack_size: usize,
    /// Pin worker threads to cores (off by default: on a small shared machine,
    /// pinning fights the clients for the same cores).
    pub pin_workers: bool,
    /// How long a stop waits for in-flight tasks before failing them. A handler still
    /// running then gets as long again (at least a second) to return; one that never
    /// does is left on its worker's thread, logged, and the stop ends anyway.
    pub stop_grace_period: Duration,
    /// Task slots (and submission-ring entries) per client: a power of two. Bounds one
    /// client's calls in flight (less one slot, which carries abandon requests);
    /// submissions past it wait for a slot.
    pub queue_depth: u32,
    /// Client processes that may be attached at once.
    pub max_clients: u32,
    /// Sizes of the clients' shared memory (split evenly among `max_clients`).
    pub shm: ShmSizes,
    /// How idle workers wait for work.
    pub idle: IdlePolicy,
    /// Containers one pool may have: a `GetOrCreatePool` asking for more fails with
    /// [`TaskError::TooManyContainers`](crate::TaskError::TooManyContainers) before
    /// anything is allocated.
    pub max_containers_per_pool: u32,
    /// Deepest subtask nesting: a task at this depth submitting a subtask gets
    /// [`TaskError::TooDeep`](crate::TaskError::TooDeep) (a client's task has depth 0).
    pub max_task_depth: u32,
    /// Periodic tasks alive at once (each keeps a coroutine between runs): one more is
    /// refused with [`TaskError::TooManyPeriodicTasks`](crate::TaskError::TooManyPeriodicTasks).
    pub max_periodic_tasks: u32,
    /// Task coroutines alive at once, all workers together (`max_coroutines`); `None`:
    /// what the kernel's mapping limit leaves room for ([`Self::coroutine_budget`]). Each
    /// task that waits keeps its coroutine, a stack of `stack_size` bytes that is two
    /// memory mappings, until it is done (an overflowed one, for good); a process that
    /// reaches the kernel's `vm.max_map_count` can no longer map memory at all and
    /// aborts. A worker with no coroutine to spare fails its tasks with
    /// [`TaskError::NoCoroutine`](crate::TaskError::NoCoroutine) until one of its
    /// waiting tasks finishes.
    pub max_coroutines: Option<u32>,
    /// Pools created at boot, in order.
    pub compose: Vec<PoolSpec>,
    /// Who besides the runtime's own uid may connect and administer (`access:`).
    pub access: AccessConfig,
    /// Tasks one client may have in flight (`quotas.tasks_in_flight`).
    pub client_tasks_in_flight: u32,
    /// Stack overflows the tasks of one uid without admin rights may cause in the
    /// runtime's life (`quotas.stack_overflows`); past it, that uid's tasks are refused.
    /// A stack that overflowed cannot be unwound and is kept, memory and mappings, for
    /// good: unbounded, a client calling a handler that recurses on its input would grow
    /// the runtime until the kernel's limit of mappings per process (about 32,000
    /// overflows) stopped it.
    pub client_stack_overflows: u32,
    /// Tasks of one uid without admin rights (subtasks of its tasks included) that may
    /// wait at once (`quotas.waiting_tasks`), each keeping a coroutine; while that many
    /// wait, the uid's new tasks fail with
    /// [`TaskError::QuotaExceeded`](crate::TaskError::QuotaExceeded). `None`: a quarter
    /// of the coroutine budget ([`Self::waiting_quota`]), so that one uid, whatever
    /// connections it opens, cannot take every coroutine and leave the others only
    /// [`TaskError::NoCoroutine`](crate::TaskError::NoCoroutine).
    pub client_waiting_tasks: Option<u32>,
    /// Client processes of one uid without admin rights attached at once
    /// (`quotas.connections`), those whose tasks still finish after they left included;
    /// one more is refused. `None`: three quarters of `max_clients`
    /// ([`Self::connections_quota`]), so that one uid cannot take every connection and
    /// leave the others refused.
    pub client_connections: Option<u32>,
    /// Periodic tasks of one uid without admin rights (subtasks of its tasks included)
    /// alive at once (`quotas.periodic_tasks`); one more fails with
    /// [`TaskError::QuotaExceeded`](crate::TaskError::QuotaExceeded). `None`: a quarter
    /// of `max_periodic_tasks` ([`Self::periodic_quota`]), so that one uid cannot take
    /// them all.
    pub client_periodic_tasks: Option<u32>,
    /// Containers of the pools one uid without admin rights created that are not
    /// destroyed (`quotas.containers`): such a uid cannot destroy pools, and each
    /// container keeps its state and lanes, so unbounded a client could grow the runtime
    /// by a megabyte and more per request until the kernel killed it. A pool past it
    /// fails with [`TaskError::QuotaExceeded`](crate::TaskError::QuotaExceeded).
    pub client_containers: u32,
    /// Bytes of memory modules hold on behalf of one uid without admin rights
    /// (`quotas.memory`; see
    /// [`RunContext::reserve_memory`](crate::runtime::context::RunContext::reserve_memory)):
    /// a RAM block device, say, which such a caller could otherwise make as large as the
    /// machine's memory.
    pub client_memory: u64,
    /// Where `chimaera runtime start` serves the runtime's statistics in Prometheus text
    /// format (`metrics.prometheus`); `None` (the default): nowhere.
    pub metrics_prometheus: Option<std::net::SocketAddr>,
    /// One run in this many has its latency measured (`metrics.latency_sample`), past
    /// each method's first runs on each worker, which all are (see [`crate::stats`]); 1
    /// times every run. Run counts are exact whatever it is.
    pub metrics_latency_sample: u32,
    /// Many nodes (`networking:`); the default is one node with no network.
    pub networking: NetworkingConfig,
    /// Where this config came from (not a YAML key): the runtime names it in its
    /// start-up log.
    pub source: ConfigSource,
}

/// The port nodes listen on by default (`networking.port`).
pub const DEFAULT_PORT: u16 = 9513;

/// How this runtime joins a cluster (`networking:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkingConfig {
    /// The port every node listens on unless its hostfile line names its own.
    pub port: u16,
    /// The hostfile listing the cluster's nodes; `None`: this runtime is the only node
    /// and has no network at all.
    pub hostfile: Option<PathBuf>,
    /// This node's index in the hostfile; `None`: the first entry whose address this
    /// process can bind.
    pub node_id: Option<u32>,
    /// The most frames one node sends for one Broadcast or Range task (the fan-out of
    /// its tree).
    pub neighborhood_size: u32,
    /// How long a task sent to another node may take before it fails with an error
    /// naming that node.
    pub rpc_timeout: Duration,
    /// Sends even this node's own tasks through the network path (SaveIn → frame →
    /// LoadIn), so one node tests that path.
    pub force_net: bool,
    /// The secret every node of the cluster shares, checked when peers connect.
    pub secret: Option<ClusterSecret>,
    /// Mutual TLS between the nodes (`networking.tls`); `None`: plain HTTP/2.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of a node's mutual TLS (`networking.tls`), read when the network starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (`networking.tls.cert`).
    pub cert: PathBuf,
    /// This node's private key (`networking.tls.key`).
    pub key: PathBuf,
    /// The authority that signs every node's certificate (`networking.tls.ca`).
    pub ca: PathBuf,
}

impl Default for NetworkingConfig {
    fn default() -> Self {
        NetworkingConfig {
            port: DEFAULT_PORT,
            hostfile: None,
            node_id: None,
            neighborhood_size: 32,
            rpc_timeout: Duration::from_secs(2),
            force_net: false,
            secret: None,
            tls: None,
        }
    }
}

impl NetworkingConfig {
    /// Makes the relative file paths (hostfile, secret file, TLS files) relative to `dir`,
    /// the directory of the config file that named them.
    fn resolve_paths_in(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        if let Some(hostfile) = &mut self.hostfile {
            resolve(hostfile);
        }
        if let Some(ClusterSecret::File(secret)) = &mut self.secret {
            resolve(secret);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
            resolve(&mut tls.ca);
        }
    }
}

/// Where the cluster secret comes from. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum ClusterSecret {
    /// Written in the config (`networking.secret`).
    Inline(String),
    /// The contents of this file (`networking.secret_file`), read when the network
    /// starts, trailing newline removed.
    File(PathBuf),
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterSecret::Inline(_) => f.write_str("Inline(<redacted>)"),
            ClusterSecret::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// Shortest cluster secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// Longest cluster secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 4096;

impl ClusterSecret {
    /// The secret's bytes (a file's read now); errors name the key.
    pub fn load(&self) -> Result<Vec<u8>, ConfigError> {
        let (key, bytes) = match self {
            ClusterSecret::Inline(text) => ("networking.secret", text.as_bytes().to_vec()),
            ClusterSecret::File(path) => {
                let mut bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                ("networking.secret_file", bytes)
            }
        };
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
            return Err(ConfigError::Invalid {
                origin: String::new(),
                key: key.to_owned(),
                problem: format!(
                    "holds {} bytes; use {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} (a long random text)",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }
}

/// Where a [`RuntimeConfig`] came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// [`RuntimeConfig::default`]: no file given.
    #[default]
    BuiltInDefaults,
    /// The YAML file at this path ([`RuntimeConfig::from_file`]).
    File(PathBuf),
    /// YAML text handed to [`RuntimeConfig::from_yaml_str`].
    YamlText,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::BuiltInDefaults => f.write_str("built-in defaults"),
            ConfigSource::File(path) => write!(f, "file {}", path.display()),
            ConfigSource::YamlText => f.write_str("YAML text"),
        }
    }
}

// --- added on branch `isolation`: who may connect, and per-client quotas ---
/// Who besides the runtime's own effective uid may connect (`access:`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys uids, gids and admin_uids"
)]
pub struct AccessConfig {
    /// Further uids allowed to connect.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Primary gids allowed to connect.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Uids allowed to connect and to use admin methods.
    #[serde(default)]
    pub admin_uids: Vec<u32>,
}

/// Most entries one `access` list may have.
const MAX_ACCESS_ENTRIES: usize = 1024;
/// Largest `quotas.tasks_in_flight`.
const MAX_TASKS_IN_FLIGHT: u32 = 1 << 20;
/// Largest `quotas.stack_overflows`.
const MAX_STACK_OVERFLOWS: u32 = 1 << 20;
/// Largest `quotas.memory`.
const MAX_CLIENT_MEMORY: u64 = 1 << 50;
/// Largest `quotas.containers`.
const MAX_CLIENT_CONTAINERS: u32 = 1 << 24;
/// Largest `quotas.waiting_tasks` (as `max_coroutines`).
const MAX_WAITING_TASKS: u32 = MAX_COROUTINES;

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys tasks_in_flight, stack_overflows, waiting_tasks, connections, periodic_tasks, containers and memory"
)]
struct FileQuotas {
    tasks_in_flight: Option<u32>,
    stack_overflows: Option<u32>,
    waiting_tasks: Option<u32>,
    connections: Option<u32>,
    periodic_tasks: Option<u32>,
    containers: Option<u32>,
    memory: Option<Size>,
}
// --- end of the `isolation` addition ---

/// Sizes, in bytes, of the shared memory of a runtime's clients (each client gets
/// `1 / max_clients` of each, in its own memfd).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmSizes {
    /// Queues and task slots.
    pub main_size: usize,
    /// Data shares: buffers clients allocate for bulk data.
    pub client_data_size: usize,
    /// Output spaces: outputs larger than a slot (each client's is its output quota).
    pub runtime_data_size: usize,
}

/// How an idle worker waits: spin, then yield, then sleep on a futex until woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdlePolicy {
    /// Polls with a spin hint before yielding.
    pub spin_rounds: u32,
    /// Polls with a thread yield after spinning, before sleeping.
    pub yield_rounds: u32,
}

/// A pool to create at boot (an entry of `compose:`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    /// Name of the chimod the pool runs.
    pub module: String,
    /// Unique name of the pool.
    pub name: String,
    /// Number of containers (at least 1).
    pub containers: u32,
    /// Module-specific parameters: a mapping (empty when not given).
    pub params: crate::compose::Params,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            instance: InstanceName::default(),
            workers_low_latency: 1,
            workers_high_latency: 1,
            stack_size: 256 * KIB as usize,
            pin_workers: false,
            stop_grace_period: Duration::from_secs(5),
            queue_depth: 256,
            max_clients: 64,
            shm: ShmSizes {
                main_size: 20 * MIB as usize,
                client_data_size: 32 * MIB as usize,
                runtime_data_size: 8 * MIB as usize,
            },
            idle: IdlePolicy {
                spin_rounds: 2048,
                yield_rounds: 16,
            },
            max_containers_per_pool: 4096,
            max_task_depth: 1024,
            max_periodic_tasks: 4096,
            max_coroutines: None,
            compose: Vec::new(),
            access: AccessConfig::default(),
            client_tasks_in_flight: 1024,
            client_stack_overflows: 64,
            client_waiting_tasks: None,
            client_connections: None,
            client_periodic_tasks: None,
            client_containers: 16_384,
            client_memory: 4 << 30,
            metrics_prometheus: None,
            metrics_latency_sample: 8,
            networking: NetworkingConfig::default(),
            source: ConfigSource::BuiltInDefaults,
        }
    }
}

impl RuntimeConfig {
    /// Total number of workers.
    pub fn workers(&self) -> usize {
        self.workers_low_latency.max(1) + self.workers_high_latency
    }

    /// How many task coroutines may live at once: `max_coroutines`, or when it is
    /// absent, what the kernel's `vm.max_map_count` (read now; 65,530 if unreadable)
    /// leaves room for: two mappings per stack, after a reserve of an eighth of the
    /// limit (at least 1,024) for everything else the process maps (its heap, code,
    /// threads, shared memory). Never below what the workers need to poll.
    pub fn coroutine_budget(&self) -> usize {
        let least = self.least_coroutines() as usize;
        if let Some(max) = self.max_coroutines {
            return (max as usize).max(least);
        }
        let maps = std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(65_530);
        let reserve = (maps / 8).max(1_024);
        (maps.saturating_sub(reserve) / 2).max(least)
    }

    /// How many tasks of one uid without admin rights may wait at once, in a runtime
    /// whose coroutine budget is `coroutines` ([`Self::coroutine_budget`]):
    /// `quotas.waiting_tasks`, or when it is absent a quarter of the budget (at least
    /// one).
    pub fn waiting_quota(&self, coroutines: usize) -> u32 {
        self.client_waiting_tasks
            .unwrap_or_else(|| u32::try_from(coroutines / 4).unwrap_or(u32::MAX).max(1))
    }

    /// How many client processes of one uid without admin rights may be attached at
    /// once: `quotas.connections`, or when it is absent three quarters of `max_clients`
    /// (at least one).
    pub fn connections_quota(&self) -> u32 {
        self.client_connections
            .unwrap_or_else(|| (self.max_clients - self.max_clients / 4).max(1))
    }

    /// How many periodic tasks of one uid without admin rights may be alive at once:
    /// `quotas.periodic_tasks`, or when it is absent a quarter of `max_periodic_tasks`
    /// (at least one).
    pub fn periodic_quota(&self) -> u32 {
        self.client_periodic_tasks
            .unwrap_or_else(|| (self.max_periodic_tasks / 4).max(1))
    }

    /// The fewest coroutines the workers can run with: a poller and a spare each, and
    /// one more to start with.
    fn least_coroutines(&self) -> u32 {
        u32::try_from(self.workers())
            .unwrap_or(u32::MAX)
            .saturating_mul(2)
            .saturating_add(1)
    }

    /// The config from the file in `CHI_SERVER_CONF` (defaults if unset or empty), with
    /// `CHI_INSTANCE` applied.
    pub fn from_env() -> Result<RuntimeConfig, ConfigError> {
        Self::from_vars(|var| std::env::var(var).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<RuntimeConfig, ConfigError> {
        let mut config = match var(CONF_ENV).filter(|path| !path.is_empty()) {
            // The file's own errors name the file and the key; one it cannot even read
            // is a bad value of the variable that named it.
            Some(path) => Self::from_file(&path).map_err(|err| match err {
                ConfigError::Read { .. } => ConfigError::Env {
                    var: CONF_ENV,
                    value: path,
                    problem: format!("{err}; fix the path or unset {CONF_ENV} to use the defaults"),
                },
                other => other,
            })?,
            None => RuntimeConfig::default(),
        };
        if let Some(instance) = var(INSTANCE_ENV).filter(|name| !name.is_empty()) {
            config.instance = InstanceName::new(&instance).map_err(|err| ConfigError::Env {
                var: INSTANCE_ENV,
                value: instance,
                problem: err.to_string(),
            })?;
        }
        Ok(config)
    }

    /// The config in the YAML file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<RuntimeConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, &path.display().to_string())?;
        if let Some(dir) = path.parent() {
            config.networking.resolve_paths_in(dir);
        }
        Ok(RuntimeConfig {
            source: ConfigSource::File(path.to_owned()),
            ..config
        })
    }

    /// The config in YAML `text` (an empty document means all defaults).
    pub fn from_yaml_str(text: &str) -> Result<RuntimeConfig, ConfigError> {
        let config = Self::parse(text, "text")?;
        Ok(RuntimeConfig {
            source: ConfigSource::YamlText,
            ..config
        })
    }

    fn parse(text: &str, origin: &str) -> Result<RuntimeConfig, ConfigError> {
        let file: Option<FileConfig> =
            serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Parse {
                origin: origin.to_owned(),
                line: err.location().map(|l| l.line()),
                column: err.location().map(|l| l.column()),
                message: err.to_string(),
            })?;
        let config = file.unwrap_or_default().into_config(origin)?;
        config.validate().map_err(|err| err.with_origin(origin))?;
        Ok(config)
    }

    /// Checks every value against its allowed range (the loaders call this).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| {
            Err(ConfigError::Invalid {
                origin: String::new(),
                key: key.to_owned(),
                problem,
            })
        };
        if !(1..=MAX_WORKERS).contains(&self.workers_low_latency) {
            return invalid(
                "workers.low_latency",
                format!("is {}; use 1 to {MAX_WORKERS}", self.workers_low_latency),
            );
        }
        if self.workers_high_latency > MAX_WORKERS {
            return invalid(
                "workers.high_latency",
                format!("is {}; use 0 to {MAX_WORKERS}", self.workers_high_latency),
            );
        }
        let stack = self.stack_size as u64;
        if !(MIN_STACK..=MAX_STACK).contains(&stack) {
            return invalid(
                "coroutine_stack_size",
                format!("is {stack} bytes; use 16KiB to 256MiB"),
            );
        }
        if !self.queue_depth.is_power_of_two() || self.queue_depth > MAX_QUEUE_DEPTH {
            return invalid(
                "queue_depth",
                format!(
                    "is {}; use a power of two from 1 to {MAX_QUEUE_DEPTH}",
                    self.queue_depth
                ),
            );
        }
        if !(1..=MAX_CLIENTS).contains(&self.max_clients) {
            return invalid(
                "max_clients",
                format!("is {}; use 1 to {MAX_CLIENTS}", self.max_clients),
            );
        }
        for (key, size) in [
            ("shm.main_size", self.shm.main_size),
            ("shm.client_data_size", self.shm.client_data_size),
            ("shm.runtime_data_size", self.shm.runtime_data_size),
        ] {
            if !(MIN_SEGMENT..=MAX_SEGMENT).contains(&(size as u64)) {
                return invalid(key, format!("is {size} bytes; use 4KiB to 1TiB"));
            }
        }
        for (key, list) in [
            ("access.uids", &self.access.uids),
            ("access.gids", &self.access.gids),
            ("access.admin_uids", &self.access.admin_uids),
        ] {
            if list.len() > MAX_ACCESS_ENTRIES {
                return invalid(
                    key,
                    format!(
                        "has {} entries; list at most {MAX_ACCESS_ENTRIES}",
                        list.len()
                    ),
                );
            }
            if list.contains(&u32::MAX) {
                return invalid(
                    key,
                    "contains 4294967295 (-1), which is no user or group; remove it".to_owned(),
                );
            }
        }
        if !(1..=MAX_TASKS_IN_FLIGHT).contains(&self.client_tasks_in_flight) {
            return invalid(
                "quotas.tasks_in_flight",
                format!(
                    "is {}; use 1 to {MAX_TASKS_IN_FLIGHT}",
                    self.client_tasks_in_flight
                ),
            );
        }
        if !(1..=MAX_STACK_OVERFLOWS).contains(&self.client_stack_overflows) {
            return invalid(
                "quotas.stack_overflows",
                format!(
                    "is {}; use 1 to {MAX_STACK_OVERFLOWS}",
                    self.client_stack_overflows
                ),
            );
        }
        if let Some(waiting) = self.client_waiting_tasks {
            if !(1..=MAX_WAITING_TASKS).contains(&waiting) {
                return invalid(
                    "quotas.waiting_tasks",
                    format!("is {waiting}; use 1 to {MAX_WAITING_TASKS}"),
                );
            }
        }
        if let Some(connections) = self.client_connections {
            if !(1..=MAX_CLIENTS).contains(&connections) {
                return invalid(
                    "quotas.connections",
                    format!("is {connections}; use 1 to {MAX_CLIENTS}"),
                );
            }
        }
        if let Some(periodic) = self.client_periodic_tasks {
            if !(1..=MAX_PERIODIC_TASKS).contains(&periodic) {
                return invalid(
                    "quotas.periodic_tasks",
                    format!("is {periodic}; use 1 to {MAX_PERIODIC_TASKS}"),
                );
            }
        }
        if !(1..=MAX_CLIENT_MEMORY).contains(&self.client_memory) {
            return invalid(
                "quotas.memory",
                format!(
                    "is {} bytes; use 1 byte to {MAX_CLIENT_MEMORY} (1 PiB)",
                    self.client_memory
                ),
            );
        }
        if !(1..=MAX_CLIENT_CONTAINERS).contains(&self.client_containers) {
            return invalid(
                "quotas.containers",
                format!(
                    "is {}; use 1 to {MAX_CLIENT_CONTAINERS}",
                    self.client_containers
                ),
            );
        }
        if !(1..=MAX_CONTAINERS).contains(&self.max_containers_per_pool) {
            return invalid(
                "max_containers_per_pool",
                format!(
                    "is {}; use 1 to {MAX_CONTAINERS}",
                    self.max_containers_per_pool
                ),
            );
        }
        if !(1..=MAX_TASK_DEPTH).contains(&self.max_task_depth) {
            return invalid(
                "max_task_depth",
                format!("is {}; use 1 to {MAX_TASK_DEPTH}", self.max_task_depth),
            );
        }
        if !(1..=MAX_PERIODIC_TASKS).contains(&self.max_periodic_tasks) {
            return invalid(
                "max_periodic_tasks",
                format!(
                    "is {}; use 1 to {MAX_PERIODIC_TASKS}",
                    self.max_periodic_tasks
                ),
            );
        }
        if let Some(max) = self.max_coroutines {
            let least = self.least_coroutines();
            if !(least..=MAX_COROUTINES).contains(&max) {
                return invalid(
                    "max_coroutines",
                    format!(
                        "is {max}; use {least} (two per worker and one: a poller and a spare each) to {MAX_COROUTINES}"
                    ),
                );
            }
        }
        if !(1..=MAX_LATENCY_SAMPLE).contains(&self.metrics_latency_sample) {
            return invalid(
                "metrics.latency_sample",
                format!(
                    "is {}; use 1 (every run) to {MAX_LATENCY_SAMPLE}",
                    self.metrics_latency_sample
                ),
            );
        }
        let net = &self.networking;
        if net.port == 0 {
            return invalid("networking.port", "is 0; use 1 to 65535".to_owned());
        }
        if !(1..=MAX_NEIGHBORHOOD).contains(&net.neighborhood_size) {
            return invalid(
                "networking.neighborhood_size",
                format!("is {}; use 1 to {MAX_NEIGHBORHOOD}", net.neighborhood_size),
            );
        }
        let timeout_ms = net.rpc_timeout.as_millis();
        if !(1..=u128::from(MAX_RPC_TIMEOUT_MS)).contains(&timeout_ms) {
            return invalid(
                "networking.rpc_timeout_ms",
                format!("is {timeout_ms}; use 1 to {MAX_RPC_TIMEOUT_MS} (an hour)"),
            );
        }
        if net.hostfile.is_none() {
            if let Some(node) = net.node_id {
                return invalid(
                    "networking.node_id",
                    format!("is {node} but there is no `networking.hostfile`; a single node is node 0, so name the hostfile or remove node_id"),
                );
            }
        }
        if net.tls.is_some() && net.hostfile.is_none() {
            return invalid(
                "networking.tls",
                "is set but there is no `networking.hostfile`; a single node has no network to secure, so name the hostfile or remove tls".to_owned(),
            );
        }
        if let Some(ClusterSecret::Inline(secret)) = &net.secret {
            if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&secret.len()) {
                return invalid(
                    "networking.secret",
                    format!(
                        "holds {} bytes; use {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} (a long random text)",
                        secret.len()
                    ),
                );
            }
        }
        let mut names = HashSet::new();
        for (i, pool) in self.compose.iter().enumerate() {
            let key = |field: &str| format!("compose[{i}].{field}");
            if pool.module.trim().is_empty() {
                return invalid(&key("module"), "is empty; name the chimod".to_owned());
            }
            if pool.name.trim().is_empty() {
                return invalid(&key("name"), "is empty; give the pool a name".to_owned());
            }
            if !names.insert(pool.name.as_str()) {
                return invalid(
                    &key("name"),
                    format!(
                        "is `{}`, the name of an earlier pool too; pool names must be unique",
                        pool.name
                    ),
                );
            }
            if !(1..=self.max_containers_per_pool).contains(&pool.containers) {
                return invalid(
                    &key("containers"),
                    format!(
                        "is {}; use 1 to {} (max_containers_per_pool)",
                        pool.containers, self.max_containers_per_pool
                    ),
                );
            }
            if !pool.params.is_mapping() {
                return invalid(
                    &key("params"),
                    "must be a mapping of parameter names to values".to_owned(),
                );
            }
        }
        Ok(())
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key, or a value of the wrong type.
    #[error("bad config ({origin}): {message}")]
    Parse {
        /// The file (or "text").
        origin: String,
        /// serde_yaml_ng's message: names the key, with line and column when known.
        message: String,
        /// 1-based line of the fault, when known.
        line: Option<usize>,
        /// 1-based column of the fault, when known.
        column: Option<usize>,
    },
    /// A value is out of its allowed range.
    #[error("bad config{}: `{key}` {problem}", origin_suffix(origin))]
    Invalid {
        /// The file (or "text"; empty when validating a config built in code).
        origin: String,
        /// Path of the key, e.g. `workers.low_latency`.
        key: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
    /// An environment variable has a bad value.
    #[error("bad environment variable {var}={value:?}: {problem}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        problem: String,
    },
}

impl ConfigError {
    fn with_origin(self, new_origin: &str) -> ConfigError {
        match self {
            ConfigError::Invalid { key, problem, .. } => ConfigError::Invalid {
                origin: new_origin.to_owned(),
                key,
                problem,
            },
            other => other,
        }
    }
}

fn origin_suffix(origin: &str) -> String {
    if origin.is_empty() {
        String::new()
    } else {
        format!(" ({origin})")
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;
const MAX_WORKERS: usize = 1024;
const MIN_STACK: u64 = 16 * KIB;
const MAX_STACK: u64 = 256 * MIB;
const MAX_QUEUE_DEPTH: u32 = 65536;
const MAX_CLIENTS: u32 = 4096;
const MIN_SEGMENT: u64 = 4 * KIB;
const MAX_SEGMENT: u64 = TIB;
const MAX_CONTAINERS: u32 = 65536;
const MAX_TASK_DEPTH: u32 = 65536;
const MAX_PERIODIC_TASKS: u32 = 1 << 20;
/// Largest `max_coroutines`.
const MAX_COROUTINES: u32 = 1 << 24;
const MAX_LATENCY_SAMPLE: u32 = 65536;
const MAX_NEIGHBORHOOD: u32 = 1024;
const MAX_RPC_TIMEOUT_MS: u64 = 3_600_000;

/// Why a size could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits where the number should be.
    #[error("`{text}` is not a size: write a whole number of bytes, optionally with a unit, like `64MiB`")]
    NotANumber {
        /// The text.
        text: String,
    },
    /// An unknown unit.
    #[error(
        "`{text}` is not a size: unknown unit `{unit}`; use B, KiB, MiB, GiB, TiB (powers of \
         1024; K, M, G, T mean the same) or KB, MB, GB, TB (powers of 1000)"
    )]
    UnknownUnit {
        /// The text.
        text: String,
        /// The unit found.
        unit: String,
    },
    /// More than `u64::MAX` bytes.
    #[error("`{text}` is too large a size")]
    Overflow {
        /// The text.
        text: String,
    },
}

/// Parses a size: a whole number of bytes with an optional unit, case-insensitive:
/// `B`; `K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB` (powers of 1024); `KB`, `MB`, `GB`,
/// `TB` (powers of 1000). Spaces around the number and unit are allowed.
///
/// ```
/// use chimaera_core::config::parse_size;
/// assert_eq!(parse_size("64MiB"), Ok(64 << 20));
/// assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
/// assert_eq!(parse_size("4096"), Ok(4096));
/// assert!(parse_size("12 parsecs").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::NotANumber {
            text: text.to_owned(),
        });
    }
    let unit = unit.trim();
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    let overflow = || SizeError::Overflow {
        text: text.to_owned(),
    };
    digits
        .parse::<u64>()
        .map_err(|_| overflow())?
        .checked_mul(multiplier)
        .ok_or_else(overflow)
}

/// A size in the YAML: an integer number of bytes or a string for [`parse_size`].
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string like `64MiB`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{v} is negative; a size is at least 0")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping of config keys (instance:, workers:, shm:, compose:, ...)"
)]
struct FileConfig {
    instance: Option<String>,
    workers: Option<FileWorkers>,
    coroutine_stack_size: Option<Size>,
    queue_depth: Option<u32>,
    max_clients: Option<u32>,
    shm: Option<FileShm>,
    idle: Option<FileIdle>,
    stop_grace_period_ms: Option<u64>,
    pin_workers: Option<bool>,
    max_containers_per_pool: Option<u32>,
    max_task_depth: Option<u32>,
    max_periodic_tasks: Option<u32>,
    max_coroutines: Option<u32>,
    compose: Option<Vec<FilePool>>,
    access: Option<AccessConfig>,
    quotas: Option<FileQuotas>,
    metrics: Option<FileMetrics>,
    networking: Option<FileNetworking>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys port, hostfile, node_id, neighborhood_size, rpc_timeout_ms, force_net, secret, secret_file and tls"
)]
struct FileNetworking {
    port: Option<u16>,
    hostfile: Option<PathBuf>,
    node_id: Option<u32>,
    neighborhood_size: Option<u32>,
    rpc_timeout_ms: Option<u64>,
    force_net: Option<bool>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys cert, key and ca (paths of PEM files)"
)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys prometheus and latency_sample"
)]
struct FileMetrics {
    prometheus: Option<String>,
    latency_sample: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys low_latency and high_latency"
)]
struct FileWorkers {
    low_latency: Option<usize>,
    high_latency: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys main_size, client_data_size and runtime_data_size"
)]
struct FileShm {
    main_size: Option<Size>,
    client_data_size: Option<Size>,
    runtime_data_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with the keys spin_rounds and yield_rounds"
)]
struct FileIdle {
    spin_rounds: Option<u32>,
    yield_rounds: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a pool: a mapping with the keys module, name, containers and params"
)]
struct FilePool {
    module: String,
    name: String,
    #[serde(default = "one")]
    containers: u32,
    #[serde(default)]
    params: crate::compose::Params,
}

fn one() -> u32 {
    1
}

impl FileConfig {
    fn into_config(self, origin: &str) -> Result<RuntimeConfig, ConfigError> {
        let mut config = RuntimeConfig::default();
        let too_large = |key: &str, size: u64| ConfigError::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            problem: format!("is {size} bytes, more than this machine can address"),
        };
        let to_usize =
            |key: &str, size: Size| usize::try_from(size.0).map_err(|_| too_large(key, size.0));
        if let Some(instance) = self.instance {
            config.instance = InstanceName::new(&instance).map_err(|_| ConfigError::Invalid {
                origin: origin.to_owned(),
                key: "instance".to_owned(),
                problem: format!(
                    "is `{instance}`; use 1 to 64 characters from A-Z, a-z, 0-9, `_`, `.` and `-`"
                ),
            })?;
        }
        if let Some(workers) = self.workers {
            if let Some(low) = workers.low_latency {
                config.workers_low_latency = low;
            }
            if let Some(high) = workers.high_latency {
                config.workers_high_latency = high;
            }
        }
        if let Some(stack) = self.coroutine_stack_size {
            config.stack_size = to_usize("coroutine_stack_size", stack)?;
        }
        if let Some(depth) = self.queue_depth {
            config.queue_depth = depth;
        }
        if let Some(max) = self.max_clients {
            config.max_clients = max;
        }
        if let Some(shm) = self.shm {
            if let Some(size) = shm.main_size {
                config.shm.main_size = to_usize("shm.main_size", size)?;
            }
            if let Some(size) = shm.client_data_size {
                config.shm.client_data_size = to_usize("shm.client_data_size", size)?;
            }
            if let Some(size) = shm.runtime_data_size {
                config.shm.runtime_data_size = to_usize("shm.runtime_data_size", size)?;
            }
        }
        if let Some(access) = self.access {
            config.access = access;
        }
        if let Some(quotas) = self.quotas {
            if let Some(tasks) = quotas.tasks_in_flight {
                config.client_tasks_in_flight = tasks;
            }
            if let Some(overflows) = quotas.stack_overflows {
                config.client_stack_overflows = overflows;
            }
            if let Some(waiting) = quotas.waiting_tasks {
                config.client_waiting_tasks = Some(waiting);
            }
            if let Some(connections) = quotas.connections {
                config.client_connections = Some(connections);
            }
            if let Some(periodic) = quotas.periodic_tasks {
                config.client_periodic_tasks = Some(periodic);
            }
            if let Some(containers) = quotas.containers {
                config.client_containers = containers;
            }
            if let Some(Size(memory)) = quotas.memory {
                config.client_memory = memory;
            }
        }
        if let Some(idle) = self.idle {
            if let Some(spin) = idle.spin_rounds {
                config.idle.spin_rounds = spin;
            }
            if let Some(yields) = idle.yield_rounds {
                config.idle.yield_rounds = yields;
            }
        }
        if let Some(ms) = self.stop_grace_period_ms {
            config.stop_grace_period = Duration::from_millis(ms);
        }
        let metrics = self.metrics.unwrap_or_default();
        if let Some(every) = metrics.latency_sample {
            config.metrics_latency_sample = every;
        }
        if let Some(address) = metrics.prometheus {
            let address = address.parse().map_err(|_| ConfigError::Invalid {
                origin: origin.to_owned(),
                key: "metrics.prometheus".to_owned(),
                problem: format!(
                    "is `{address}`; give an IP address and port like `127.0.0.1:9464`"
                ),
            })?;
            config.metrics_prometheus = Some(address);
        }
        if let Some(net) = self.networking {
            let into = &mut config.networking;
            if let Some(port) = net.port {
                into.port = port;
            }
            into.hostfile = net.hostfile;
            into.node_id = net.node_id;
            if let Some(size) = net.neighborhood_size {
                into.neighborhood_size = size;
            }
            if let Some(ms) = net.rpc_timeout_ms {
                into.rpc_timeout = Duration::from_millis(ms);
            }
            if let Some(force) = net.force_net {
                into.force_net = force;
            }
            into.secret = match (net.secret, net.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Invalid {
                        origin: origin.to_owned(),
                        key: "networking.secret_file".to_owned(),
                        problem: "is set together with `networking.secret`; give one of the two"
                            .to_owned(),
                    })
                }
                (Some(secret), None) => Some(ClusterSecret::Inline(secret)),
                (None, Some(path)) => Some(ClusterSecret::File(path)),
                (None, None) => None,
            };
            into.tls = net.tls.map(|tls| TlsFiles {
                cert: tls.cert,
                key: tls.key,
                ca: tls.ca,
            });
        }
        if let Some(pin) = self.pin_workers {
            config.pin_workers = pin;
        }
        if let Some(max) = self.max_containers_per_pool {
            config.max_containers_per_pool = max;
        }
        if let Some(max) = self.max_task_depth {
            config.max_task_depth = max;
        }
        if let Some(max) = self.max_periodic_tasks {
            config.max_periodic_tasks = max;
        }
        if let Some(max) = self.max_coroutines {
            config.max_coroutines = Some(max);
        }
        if let Some(pools) = self.compose {
            config.compose = pools
                .into_iter()
                .map(|pool| PoolSpec {
                    module: pool.module,
                    name: pool.name,
                    containers: pool.containers,
                    params: pool.params,
                })
                .collect();
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
instance: lab-1
workers:
  low_latency: 3
  high_latency: 0
coroutine_stack_size: 512KiB
queue_depth: 1024
max_clients: 8
shm:
  main_size: 16MiB
  client_data_size: 1GB
  runtime_data_size: 65536
idle:
  spin_rounds: 100
  yield_rounds: 2
stop_grace_period_ms: 250
pin_workers: true
max_containers_per_pool: 16
max_task_depth: 50
max_periodic_tasks: 7
max_coroutines: 100
compose:
  - module: chimaera_bdev
    name: ram0
    containers: 2
    params:
      kind: ram
      size: 1GiB
  - module: chimaera_mod_name
    name: demo
";

    #[test]
    fn defaults_work_on_a_laptop() {
        let config = RuntimeConfig::default();
        config.validate().unwrap();
        assert_eq!(config.instance.as_str(), "default");
        assert_eq!(config.workers(), 2);
        assert_eq!(config.stack_size, 256 * 1024);
        assert_eq!(config.stop_grace_period, Duration::from_secs(5));
        assert!(!config.pin_workers);
        assert_eq!(config.queue_depth, 256);
        assert_eq!(config.max_clients, 64);
        assert_eq!(config.max_containers_per_pool, 4096);
        // Deep enough for MOD_NAME's wait_test at depth 1000 (tests/runtime.rs).
        assert_eq!(config.max_task_depth, 1024);
        assert_eq!(config.max_periodic_tasks, 4096);
        // Absent: what the kernel's mapping limit leaves room for (28,669 at its default).
        assert_eq!(config.max_coroutines, None);
        assert!(config.coroutine_budget() > 2 * config.workers());
        assert!(config.compose.is_empty());
        let total =
            config.shm.main_size + config.shm.client_data_size + config.shm.runtime_data_size;
        assert!(total < 64 << 20);
        assert_eq!(config.source, ConfigSource::BuiltInDefaults);
        let from_text = RuntimeConfig {
            source: ConfigSource::YamlText,
            ..config
        };
        assert_eq!(RuntimeConfig::from_yaml_str("").unwrap(), from_text);
        assert_eq!(
            RuntimeConfig::from_yaml_str("# nothing\n").unwrap(),
            from_text
        );
        assert_eq!(RuntimeConfig::from_yaml_str("{}").unwrap(), from_text);
    }

    #[test]
    fn a_full_file_sets_every_key() {
        let config = RuntimeConfig::from_yaml_str(FULL).unwrap();
        assert_eq!(config.instance.as_str(), "lab-1");
        assert_eq!(config.workers_low_latency, 3);
        assert_eq!(config.workers_high_latency, 0);
        assert_eq!(config.workers(), 3);
        assert_eq!(config.stack_size, 512 * 1024);
        assert_eq!(config.queue_depth, 1024);
        assert_eq!(config.max_clients, 8);
        assert_eq!(
            config.shm,
            ShmSizes {
                main_size: 16 << 20,
                client_data_size: 1_000_000_000,
                runtime_data_size: 65536,
            }
        );
        assert_eq!(
            config.idle,
            IdlePolicy {
                spin_rounds: 100,
                yield_rounds: 2
            }
        );
        assert_eq!(config.stop_grace_period, Duration::from_millis(250));
        assert!(config.pin_workers);
        assert_eq!(config.max_containers_per_pool, 16);
        assert_eq!(config.max_task_depth, 50);
        assert_eq!(config.max_periodic_tasks, 7);
        assert_eq!(config.max_coroutines, Some(100));
        assert_eq!(config.coroutine_budget(), 100);
        assert_eq!(config.compose.len(), 2);
        let ram = &config.compose[0];
        assert_eq!(
            (ram.module.as_str(), ram.name.as_str(), ram.containers),
            ("chimaera_bdev", "ram0", 2)
        );
        #[derive(Deserialize)]
        struct Ram {
            kind: String,
            size: String,
        }
        let params: Ram = ram.params.deserialize("chimaera_bdev").unwrap();
        assert_eq!(params.kind, "ram");
        assert_eq!(parse_size(&params.size), Ok(1 << 30));
        let demo = &config.compose[1];
        assert_eq!(demo.containers, 1);
        assert_eq!(demo.params, crate::compose::Params::empty());
    }

    #[test]
    fn partial_groups_keep_the_other_defaults() {
        let config =
            RuntimeConfig::from_yaml_str("workers: { high_latency: 4 }\nshm: { main_size: 1MiB }")
                .unwrap();
        assert_eq!(config.workers_low_latency, 1);
        assert_eq!(config.workers_high_latency, 4);
        assert_eq!(config.shm.main_size, 1 << 20);
        assert_eq!(
            config.shm.client_data_size,
            RuntimeConfig::default().shm.client_data_size
        );
    }

    fn parse_err(yaml: &str) -> (String, Option<usize>) {
        match RuntimeConfig::from_yaml_str(yaml).unwrap_err() {
            ConfigError::Parse { message, line, .. } => (message, line),
            other => panic!("expected a parse error for {yaml:?}, got {other}"),
        }
    }

    fn invalid_key(yaml: &str) -> (String, String) {
        match RuntimeConfig::from_yaml_str(yaml).unwrap_err() {
            err @ ConfigError::Invalid { .. } => {
                let ConfigError::Invalid { ref key, .. } = err else {
                    unreachable!()
                };
                (key.clone(), err.to_string())
            }
            other => panic!("expected an invalid-value error for {yaml:?}, got {other}"),
        }
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let (message, line) = parse_err("queue_depth: 8\nqueue_dpeth: 8\n");
        assert!(message.contains("unknown field `queue_dpeth`"), "{message}");
        assert_eq!(line, Some(2));
        let (message, line) = parse_err("workers:\n  low_latency: 1\n  medium: 2\n");
        assert!(message.contains("unknown field `medium`"), "{message}");
        assert!(message.contains("low_latency"), "{message}");
        assert_eq!(line, Some(3));
        let (message, _) = parse_err("compose:\n  - module: m\n    name: n\n    contaners: 2\n");
        assert!(message.contains("unknown field `contaners`"), "{message}");
    }

    #[test]
    fn wrong_types_and_bad_sizes_are_named() {
        let (message, _) = parse_err("pin_workers: maybe\n");
        assert!(message.contains("pin_workers"), "{message}");
        let (message, _) = parse_err("queue_depth: -4\n");
        assert!(message.contains("queue_depth"), "{message}");
        let (message, line) = parse_err("shm:\n  main_size: 64XB\n");
        assert!(message.contains("shm.main_size"), "{message}");
        assert!(message.contains("unknown unit `XB`"), "{message}");
        assert_eq!(line, Some(2));
        let (message, _) = parse_err("coroutine_stack_size: -1\n");
        assert!(message.contains("negative"), "{message}");
        let (message, _) = parse_err("compose:\n  - name: n\n");
        assert!(message.contains("missing field `module`"), "{message}");
        let (message, _) = parse_err("workers: [1, 2]\n");
        assert!(message.contains("workers"), "{message}");
        let (message, _) = parse_err("instance: [unclosed\n");
        assert!(!message.is_empty());
    }

    // --- added on branch `isolation` ---
    #[test]
    fn access_and_quota_keys_are_read_and_checked() {
        let config = RuntimeConfig::from_yaml_str(
            "access: { uids: [1001], gids: [100], admin_uids: [1002] }\nquotas: { tasks_in_flight: 8, stack_overflows: 5, waiting_tasks: 6, connections: 3, periodic_tasks: 2, containers: 9, memory: 1MiB }\n",
        )
        .unwrap();
        assert_eq!(
            config.access,
            AccessConfig {
                uids: vec![1001],
                gids: vec![100],
                admin_uids: vec![1002],
            }
        );
        assert_eq!(config.client_tasks_in_flight, 8);
        assert_eq!(config.client_stack_overflows, 5);
        assert_eq!(config.client_waiting_tasks, Some(6));
        assert_eq!(config.waiting_quota(1000), 6);
        let defaults = RuntimeConfig::default();
        assert_eq!(defaults.client_waiting_tasks, None);
        // A quarter of the coroutine budget, at least one.
        assert_eq!(defaults.waiting_quota(28_669), 7_167);
        assert_eq!(defaults.waiting_quota(3), 1);
        assert_eq!(config.connections_quota(), 3);
        // Three quarters of max_clients, at least one.
        assert_eq!(defaults.connections_quota(), 48);
        let one = RuntimeConfig {
            max_clients: 1,
            ..RuntimeConfig::default()
        };
        assert_eq!(one.connections_quota(), 1);
        assert_eq!(config.periodic_quota(), 2);
        // A quarter of max_periodic_tasks, at least one.
        assert_eq!(defaults.periodic_quota(), 1024);
        assert_eq!(config.client_containers, 9);
        assert_eq!(defaults.client_containers, 16_384);
        assert_eq!(config.client_memory, 1 << 20);
        assert_eq!(defaults.client_memory, 4 << 30);
        assert_eq!(defaults.access, AccessConfig::default());
        assert_eq!(defaults.client_tasks_in_flight, 1024);
        assert_eq!(defaults.client_stack_overflows, 64);
        for (yaml, key) in [
            ("quotas: { tasks_in_flight: 0 }", "quotas.tasks_in_flight"),
            (
                "quotas: { tasks_in_flight: 2000000 }",
                "quotas.tasks_in_flight",
            ),
            ("quotas: { stack_overflows: 0 }", "quotas.stack_overflows"),
            (
                "quotas: { stack_overflows: 2000000 }",
                "quotas.stack_overflows",
            ),
            ("quotas: { waiting_tasks: 0 }", "quotas.waiting_tasks"),
            ("quotas: { connections: 0 }", "quotas.connections"),
            ("quotas: { periodic_tasks: 0 }", "quotas.periodic_tasks"),
            ("quotas: { containers: 0 }", "quotas.containers"),
            ("quotas: { memory: 0 }", "quotas.memory"),
            ("quotas: { memory: 2048TiB }", "quotas.memory"),
            ("quotas: { containers: 16777217 }", "quotas.containers"),
            (
                "quotas: { periodic_tasks: 1048577 }",
                "quotas.periodic_tasks",
            ),
            ("quotas: { connections: 4097 }", "quotas.connections"),
            (
                "quotas: { waiting_tasks: 16777217 }",
                "quotas.waiting_tasks",
            ),
            ("access: { uids: [4294967295] }", "access.uids"),
            ("access: { admin_uids: [4294967295] }", "access.admin_uids"),
        ] {
            let (found, message) = invalid_key(yaml);
            assert_eq!(found, key, "{yaml}: {message}");
        }
        let (message, _) = parse_err("access: { users: [1] }");
        assert!(message.contains("users"), "{message}");
    }
    // --- end of the `isolation` addition ---

    #[test]
    fn values_out_of_range_are_named() {
        let cases = [
            ("instance: 'a b'", "instance"),
            ("workers: { low_latency: 0 }", "workers.low_latency"),
            ("workers: { high_latency: 5000 }", "workers.high_latency"),
            ("coroutine_stack_size: 1KiB", "coroutine_stack_size"),
            ("queue_depth: 100", "queue_depth"),
            ("queue_depth: 0", "queue_depth"),
            ("queue_depth: 131072", "queue_depth"),
            ("max_clients: 0", "max_clients"),
            ("shm: { main_size: 0 }", "shm.main_size"),
            ("shm: { client_data_size: 2TiB }", "shm.client_data_size"),
            ("compose: [{ module: '', name: a }]", "compose[0].module"),
            (
                "compose: [{ module: m, name: a }, { module: m, name: a }]",
                "compose[1].name",
            ),
            (
                "compose: [{ module: m, name: a, containers: 0 }]",
                "compose[0].containers",
            ),
            (
                "compose: [{ module: m, name: a, params: [1] }]",
                "compose[0].params",
            ),
            ("max_containers_per_pool: 0", "max_containers_per_pool"),
            ("max_containers_per_pool: 65537", "max_containers_per_pool"),
            ("max_task_depth: 0", "max_task_depth"),
            ("max_task_depth: 65537", "max_task_depth"),
            ("max_periodic_tasks: 0", "max_periodic_tasks"),
            ("max_periodic_tasks: 1048577", "max_periodic_tasks"),
            // Two workers by default: a poller and a spare each, and one to start with.
            ("max_coroutines: 4", "max_coroutines"),
            ("max_coroutines: 16777217", "max_coroutines"),
            (
                "max_containers_per_pool: 4\ncompose: [{ module: m, name: a, containers: 5 }]",
                "compose[0].containers",
            ),
        ];
        for (yaml, key) in cases {
            let (found, message) = invalid_key(yaml);
            assert_eq!(found, key, "{yaml}: {message}");
            assert!(message.contains(&format!("`{key}`")), "{message}");
        }
        let (_, message) = invalid_key("queue_depth: 100");
        assert!(message.contains("power of two"), "{message}");
        let built = RuntimeConfig {
            max_clients: 0,
            ..RuntimeConfig::default()
        };
        let err = built.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad config: `max_clients` is 0; use 1 to 4096"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size(" 256KiB "), Ok(256 * 1024));
        assert_eq!(parse_size("256 kib"), Ok(256 * 1024));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("3m"), Ok(3 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("5kB"), Ok(5000));
        assert_eq!(parse_size("7MB"), Ok(7_000_000));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("12B"), Ok(12));
        assert!(matches!(parse_size(""), Err(SizeError::NotANumber { .. })));
        assert!(matches!(
            parse_size("MiB"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_size("-3"),
            Err(SizeError::NotANumber { .. })
        ));
        assert!(matches!(
            parse_size("1.5GiB"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("9 parsecs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow { .. })
        ));
        assert!(matches!(
            parse_size("17000000TiB"),
            Err(SizeError::Overflow { .. })
        ));
    }

    #[test]
    fn a_list_where_a_mapping_belongs_says_what_belongs_there() {
        for (yaml, wanted) in [
            ("- a\n- b\n", "a mapping of config keys"),
            ("workers: [1, 2]\n", "low_latency and high_latency"),
            ("compose: [[1]]\n", "a pool: a mapping"),
        ] {
            let (message, _) = parse_err(yaml);
            assert!(message.contains(wanted), "{yaml:?}: {message}");
            assert!(!message.contains("FileConfig"), "{message}");
            assert!(!message.contains("struct"), "{message}");
        }
    }

    #[test]
    fn the_prometheus_address_is_off_by_default_and_checked() {
        assert_eq!(RuntimeConfig::default().metrics_prometheus, None);
        let config =
            RuntimeConfig::from_yaml_str("metrics:\n  prometheus: 127.0.0.1:9464\n").unwrap();
        assert_eq!(
            config.metrics_prometheus,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        let (key, problem) = invalid_key("metrics:\n  prometheus: localhost\n");
        assert_eq!(key, "metrics.prometheus");
        assert!(problem.contains("127.0.0.1:9464"), "{problem}");
    }

    #[test]
    fn the_latency_sample_is_one_in_eight_by_default_and_checked() {
        assert_eq!(RuntimeConfig::default().metrics_latency_sample, 8);
        let config = RuntimeConfig::from_yaml_str("metrics:\n  latency_sample: 1\n").unwrap();
        assert_eq!(config.metrics_latency_sample, 1);
        for bad in ["0", "65537"] {
            let (key, problem) = invalid_key(&format!("metrics:\n  latency_sample: {bad}\n"));
            assert_eq!(key, "metrics.latency_sample");
            assert!(problem.contains("use 1 (every run) to 65536"), "{problem}");
        }
    }

    #[test]
    fn networking_is_one_node_by_default_and_every_key_is_read() {
        let net = RuntimeConfig::default().networking;
        assert_eq!(net.hostfile, None);
        assert_eq!(net.port, DEFAULT_PORT);
        assert!(!net.force_net);
        let config = RuntimeConfig::from_yaml_str(
            "networking:\n  port: 7000\n  hostfile: /etc/hosts.chi\n  node_id: 3\n  neighborhood_size: 4\n  rpc_timeout_ms: 150\n  force_net: true\n  secret: 0123456789abcdef-secret\n",
        )
        .unwrap();
        let net = config.networking;
        assert_eq!(net.port, 7000);
        assert_eq!(net.hostfile, Some(PathBuf::from("/etc/hosts.chi")));
        assert_eq!(net.node_id, Some(3));
        assert_eq!(net.neighborhood_size, 4);
        assert_eq!(net.rpc_timeout, Duration::from_millis(150));
        assert!(net.force_net);
        let secret = net.secret.unwrap();
        assert_eq!(secret.load().unwrap(), b"0123456789abcdef-secret");
        assert!(
            !format!("{secret:?}").contains("0123"),
            "Debug shows no secret"
        );
    }

    #[test]
    fn networking_values_are_checked_and_named() {
        let cases = [
            ("networking: { port: 0 }", "networking.port"),
            (
                "networking: { neighborhood_size: 0 }",
                "networking.neighborhood_size",
            ),
            (
                "networking: { neighborhood_size: 1025 }",
                "networking.neighborhood_size",
            ),
            (
                "networking: { rpc_timeout_ms: 0 }",
                "networking.rpc_timeout_ms",
            ),
            (
                "networking: { rpc_timeout_ms: 3600001 }",
                "networking.rpc_timeout_ms",
            ),
            ("networking: { node_id: 1 }", "networking.node_id"),
            (
                "networking: { tls: { cert: a, key: b, ca: c } }",
                "networking.tls",
            ),
            ("networking: { secret: short }", "networking.secret"),
            (
                "networking: { secret: 0123456789abcdef, secret_file: /x }",
                "networking.secret_file",
            ),
        ];
        for (yaml, key) in cases {
            let (found, message) = invalid_key(yaml);
            assert_eq!(found, key, "{yaml}: {message}");
        }
        let (message, line) = parse_err("networking:\n  prot: 1\n");
        assert!(message.contains("prot"), "{message}");
        assert_eq!(line, Some(2));
    }

    #[test]
    fn tls_keys_are_read_and_all_three_are_required() {
        let config = RuntimeConfig::from_yaml_str(
            "networking:\n  hostfile: /h\n  tls:\n    cert: /pki/n.crt\n    key: n.key\n    ca: ca.crt\n",
        )
        .unwrap();
        assert_eq!(
            config.networking.tls,
            Some(TlsFiles {
                cert: "/pki/n.crt".into(),
                key: "n.key".into(),
                ca: "ca.crt".into(),
            }),
            "YAML text keeps relative paths as written"
        );
        for yaml in [
            "networking: { hostfile: /h, tls: { cert: a, key: b } }",
            "networking: { hostfile: /h, tls: { cert: a, key: b, ca: c, crl: d } }",
        ] {
            let (message, _) = parse_err(yaml);
            assert!(message.contains("tls"), "{yaml}: {message}");
        }
    }

    #[test]
    fn relative_networking_paths_are_relative_to_the_config_files_directory() {
        let dir =
            std::env::temp_dir().join(format!("chimaera-relative-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.yaml");
        std::fs::write(
            &path,
            "networking:\n  hostfile: hosts\n  secret_file: keys/secret\n  tls: { cert: n.crt, key: /abs/n.key, ca: ../ca.crt }\n",
        )
        .unwrap();
        let net = RuntimeConfig::from_file(&path).unwrap().networking;
        assert_eq!(net.hostfile, Some(dir.join("hosts")));
        assert_eq!(
            net.secret,
            Some(ClusterSecret::File(dir.join("keys/secret")))
        );
        let tls = net.tls.unwrap();
        assert_eq!(tls.cert, dir.join("n.crt"));
        assert_eq!(tls.key, PathBuf::from("/abs/n.key"), "absolute paths stay");
        assert_eq!(tls.ca, dir.join("../ca.crt"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_file_is_read_and_its_length_checked() {
        let dir = std::env::temp_dir().join(format!("chimaera-secret-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "a-secret-of-enough-length\n").unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "tiny").unwrap();
        assert_eq!(
            ClusterSecret::File(good).load().unwrap(),
            b"a-secret-of-enough-length"
        );
        let err = ClusterSecret::File(bad).load().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Invalid { key, .. } if key == "networking.secret_file"),
            "{err}"
        );
        assert!(matches!(
            ClusterSecret::File(dir.join("missing")).load(),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn environment_picks_the_file_and_the_instance() {
        let dir = std::env::temp_dir().join(format!("chimaera-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("conf.yaml");
        std::fs::write(&path, FULL).unwrap();
        let path_text = path.to_str().unwrap().to_owned();

        let none = |_: &str| None;
        assert_eq!(
            RuntimeConfig::from_vars(none).unwrap(),
            RuntimeConfig::default()
        );
        let empty = |_: &str| Some(String::new());
        assert_eq!(
            RuntimeConfig::from_vars(empty).unwrap(),
            RuntimeConfig::default()
        );

        let file_only = |var: &str| (var == CONF_ENV).then(|| path_text.clone());
        let config = RuntimeConfig::from_vars(file_only).unwrap();
        assert_eq!(config, RuntimeConfig::from_file(&path).unwrap());
        assert_eq!(config.instance.as_str(), "lab-1");
        assert_eq!(config.source, ConfigSource::File(path.clone()));
        assert_eq!(
            config.source.to_string(),
            format!("file {}", path.display())
        );

        let both = |var: &str| match var {
            CONF_ENV => Some(path_text.clone()),
            INSTANCE_ENV => Some("other".to_owned()),
            _ => None,
        };
        let config = RuntimeConfig::from_vars(both).unwrap();
        assert_eq!(config.instance.as_str(), "other");
        assert_eq!(config.queue_depth, 1024);

        let bad_instance = |var: &str| (var == INSTANCE_ENV).then(|| "a/b".to_owned());
        let err = RuntimeConfig::from_vars(bad_instance).unwrap_err();
        assert!(err.to_string().contains("CHI_INSTANCE"), "{err}");

        let missing =
            |var: &str| (var == CONF_ENV).then(|| "/nonexistent/chimaera.yaml".to_owned());
        let err = RuntimeConfig::from_vars(missing).unwrap_err();
        assert!(
            matches!(err, ConfigError::Env { var: CONF_ENV, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("CHI_SERVER_CONF"), "{err}");
        // Read directly, the path came from no variable: the message names none.
        let err = RuntimeConfig::from_file("/nonexistent/chimaera.yaml").unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(!err.to_string().contains("CHI_SERVER_CONF"), "{err}");

        std::fs::write(&path, "max_clients: 0\n").unwrap();
        let err = RuntimeConfig::from_file(&path).unwrap_err();
        assert!(err.to_string().contains(&path_text), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
