//! The wire protocol of the admin chimod (pool `1.0`), known to every client.
//!
//! The admin module's tasks take and return exactly these types, so any client — the
//! generated `create` of every module included — can reach them without depending on
//! the admin crate. The admin crate's tests pin its manifest ids to the constants here.
use crate::client::{Client, Pending};
use crate::codec::{decode, encode, ByRef, StrRef};
use crate::error::TaskError;
use crate::ids::{MethodId, NodeId, PoolId};
use crate::peer::PeerState;
use crate::query::PoolQuery;
use rkyv::{Archive, Deserialize, Serialize};

pub use crate::stats::{LatencySummary, MethodStatus};

/// `kGetOrCreatePool`.
pub const GET_OR_CREATE_POOL: MethodId = 10;
/// `kDestroyPool`.
pub const DESTROY_POOL: MethodId = 11;
/// `kStopRuntime`.
pub const STOP_RUNTIME: MethodId = 12;
/// `kFlush`.
pub const FLUSH: MethodId = 13;
/// `kStatus`.
pub const STATUS: MethodId = 16;
/// `kFindPool`.
pub const FIND_POOL: MethodId = 17;

/// A request to get the pool `pool_name`, creating it if absent.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct CreatePoolRequest {
    /// Name of the module (`module_name` of its manifest).
    pub module: String,
    /// Unique name of the pool.
    pub pool_name: String,
    /// Number of containers (at least 1).
    pub containers: u32,
    /// The archived input of the module's `create` task.
    pub params: Vec<u8>,
}

/// A pool as the admin describes it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct PoolInfo {
    /// Its id.
    pub id: PoolId,
    /// Its unique name.
    pub name: String,
    /// Its module.
    pub module: String,
    /// Its number of containers.
    pub containers: u32,
    /// Tasks queued on its lanes when this was taken.
    pub queued: u64,
    /// The uid without admin rights that created it and to which it is private
    /// ([`TaskError::PrivatePool`] for other such uids); `None` for a pool every allowed
    /// uid may use (made by the runtime, its owner or an admin uid).
    pub private_to: Option<u32>,
}

/// One worker as the admin's `Status` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct WorkerStatus {
    /// Its index among the runtime's workers.
    pub id: u32,
    /// Tasks it has run since start.
    pub tasks_run: u64,
    /// Work waiting for it now that no lane's `queued` counts: tasks in its inbox (for
    /// its idle low-latency lanes, pushed from other threads) and in-process calls posted
    /// to it, not routed yet.
    pub queued: u64,
}

/// A runtime as the admin's `Status` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct RuntimeStatus {
    /// The runtime's process id.
    pub pid: u32,
    /// Its instance name (the `instance` config key).
    pub instance: String,
    /// Every worker, in id order.
    pub workers: Vec<WorkerStatus>,
    /// Every live pool, the admin pool included.
    pub pools: Vec<PoolInfo>,
    /// Task replicas in flight when this was taken (the `Status` task itself left out).
    pub inflight: u64,
    /// Task replicas completed since start.
    pub completed: u64,
    /// Client processes attached over shared memory (the one that asked left out).
    pub clients: u32,
    /// Periodic task replicas alive (running, or sleeping until their next run).
    pub periodic: u64,
    /// Every container of every pool with its lanes, in pool then container order.
    pub containers: Vec<ContainerStatus>,
    /// Every method of every pool with its counters and latencies (see
    /// [`crate::stats`]), in pool then method order.
    pub methods: Vec<MethodStatus>,
    /// The clients' shared memory.
    pub shm: ShmStatus,
    /// Task coroutines alive, against the runtime's `max_coroutines`.
    pub coroutines: CoroutineStatus,
    /// What each uid without admin rights that connected since the start holds against
    /// its quotas (the `quotas:` config keys), in uid order.
    pub uids: Vec<UidStatus>,
    /// This runtime's node id in its cluster (0 for a single node).
    pub node: NodeId,
    /// Every node of the cluster, this one included, in id order, as this node sees
    /// them; empty for a single node (no hostfile).
    pub nodes: Vec<NodeStatus>,
}

/// One node of the cluster as the runtime that answers the `Status` sees it.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct NodeStatus {
    /// Its node id (its line in the hostfile, from 0).
    pub node: NodeId,
    /// The address it listens on (`host:port`).
    pub address: String,
    /// Its connection's state (`Local` for the node that answers).
    pub state: PeerState,
}

/// One container of a pool and its lanes.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ContainerStatus {
    /// Its pool.
    pub pool: PoolId,
    /// Its id in the pool.
    pub container: u32,
    /// Its lanes, in lane order.
    pub lanes: Vec<LaneStatus>,
}

/// One lane of a container.
#[derive(Clone, Debug, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct LaneStatus {
    /// The worker that serves it.
    pub worker: u32,
    /// Whether it is a high-latency lane (else low-latency).
    pub high_latency: bool,
    /// Tasks queued on it when this was taken.
    pub queued: u64,
}

/// Task coroutines: how many live, and how many may (`max_coroutines`). Every waiting
/// task keeps one; each worker keeps one polling and one spare; a stack overflow leaks
/// one for good. At `max` a worker fails its tasks with
/// [`TaskError::NoCoroutine`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct CoroutineStatus {
    /// Coroutines alive now (stacks leaked by overflows included).
    pub live: u64,
    /// The most that may live at once.
    pub max: u64,
}

/// What one uid without admin rights holds against its quotas, over all its
/// connections (see the `quotas:` config keys); past one, that uid's requests fail with
/// [`TaskError::QuotaExceeded`] or
/// [`ConnectError::TooManyConnections`](crate::ConnectError::TooManyConnections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct UidStatus {
    /// The uid.
    pub uid: u32,
    /// Client processes attached, and those gone whose tasks still finish
    /// (`quotas.connections`).
    pub connections: QuotaUse,
    /// Tasks waiting, each keeping a coroutine (`quotas.waiting_tasks`).
    pub waiting_tasks: QuotaUse,
    /// Periodic tasks alive (`quotas.periodic_tasks`).
    pub periodic_tasks: QuotaUse,
    /// Containers of the pools it created that are not destroyed (`quotas.containers`).
    pub containers: QuotaUse,
    /// Bytes of memory modules hold for it (`quotas.memory`).
    pub memory_bytes: QuotaUse,
    /// Handler stack overflows its tasks caused since the start
    /// (`quotas.stack_overflows`).
    pub stack_overflows: QuotaUse,
}

/// How much of one quota is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct QuotaUse {
    /// Used now.
    pub used: u64,
    /// The quota.
    pub max: u64,
}

/// The clients' shared memory: the configured sizes and what attached clients hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub struct ShmStatus {
    /// Whether the runtime serves other processes at all (`Runtime::serve`).
    pub serving: bool,
    /// `max_clients`.
    pub max_clients: u32,
    /// `shm.main_size`.
    pub main_size: u64,
    /// `shm.client_data_size`.
    pub client_data_size: u64,
    /// `shm.runtime_data_size`.
    pub runtime_data_size: u64,
    /// Bytes of shared memory each client area gets (the three sizes / `max_clients`).
    pub per_client_bytes: u64,
    /// Client areas in use (attached clients, and gone ones whose tasks still run).
    pub client_areas_in_use: u32,
    /// Bytes those areas hold (`per_client_bytes` each).
    pub committed_bytes: u64,
    /// Bytes of output spaces holding outputs not yet taken.
    pub output_bytes_in_use: u64,
}

/// How a pool is laid out when created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolOptions {
    /// Number of containers; in a cluster, container `c` lives on node `c % nodes`.
    pub containers: u32,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { containers: 1 }
    }
}

impl PoolOptions {
    /// A pool of `containers` containers.
    pub fn containers(containers: u32) -> Self {
        PoolOptions { containers }
    }
}

fn call<T>(
    client: &Client,
    method: MethodId,
    query: PoolQuery,
    input: crate::codec::Bytes,
    decode_output: fn(&[u8]) -> Result<T, TaskError>,
) -> Result<T, TaskError> {
    let raw = client.submit(PoolId::ADMIN, method, query, input, None)?;
    Pending::new(raw, decode_output).wait()
}

/// Gets or creates a pool through the admin chimod.
pub fn get_or_create_pool(
    client: &Client,
    query: PoolQuery,
    module: &str,
    pool_name: &str,
    options: PoolOptions,
    params: &[u8],
) -> Result<PoolInfo, TaskError> {
    let request = CreatePoolRequest {
        module: module.to_owned(),
        pool_name: pool_name.to_owned(),
        containers: options.containers,
        params: params.to_vec(),
    };
    let input = encode(&(ByRef(&request),))?;
    call(client, GET_OR_CREATE_POOL, query, input, |bytes| {
        decode::<(PoolInfo,)>(bytes, "output").map(|out| out.0)
    })
}

/// Destroys a pool through the admin chimod.
pub fn destroy_pool(client: &Client, pool: PoolId) -> Result<(), TaskError> {
    let input = encode(&(ByRef(&pool),))?;
    call(client, DESTROY_POOL, PoolQuery::Local, input, |bytes| {
        decode::<((),)>(bytes, "output").map(|_| ())
    })
}

/// Looks a pool up by name through the admin chimod: `None` if no pool has that name.
pub fn find_pool(client: &Client, pool_name: &str) -> Result<Option<PoolInfo>, TaskError> {
    let input = encode(&(StrRef(pool_name),))?;
    call(client, FIND_POOL, PoolQuery::Local, input, |bytes| {
        decode::<(Option<PoolInfo>,)>(bytes, "output").map(|out| out.0)
    })
}

/// Why an existing pool could not be opened by name ([`open_pool`], and every typed
/// client's `open`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenPoolError {
    /// No pool has this name.
    #[error("no pool named `{name}` in this runtime; create it first (the typed client's `create`), or list it under `compose:` in the runtime's config")]
    NoSuchPool {
        /// The name asked for.
        name: String,
    },
    /// The pool runs another module than the client's.
    #[error("pool `{name}` runs module `{module}`, not `{expected}`; open it with a client of `{module}`")]
    OtherModule {
        /// The pool's name.
        name: String,
        /// The module the pool runs.
        module: String,
        /// The module of the client that tried to open it.
        expected: String,
    },
    /// The lookup itself failed (the runtime is gone, the call's deadline passed, …).
    #[error("cannot look up pool `{name}`: {source}")]
    Lookup {
        /// The name asked for.
        name: String,
        /// Why.
        #[source]
        source: TaskError,
    },
}

/// Opens the existing pool `pool_name`, which must run `module`.
pub fn open_pool(
    client: &Client,
    module: &str,
    pool_name: &str,
) -> Result<PoolInfo, OpenPoolError> {
    let found = find_pool(client, pool_name).map_err(|source| OpenPoolError::Lookup {
        name: pool_name.to_owned(),
        source,
    })?;
    match found {
        None => Err(OpenPoolError::NoSuchPool {
            name: pool_name.to_owned(),
        }),
        Some(info) if info.module != module => Err(OpenPoolError::OtherModule {
            name: info.name,
            module: info.module,
            expected: module.to_owned(),
        }),
        Some(info) => Ok(info),
    }
}
