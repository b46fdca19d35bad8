//! The runtime: modules, pools, workers, and their life cycle.
//!
//! [`Runtime`] owns a `Shared` state that every client, context and worker points to.
//! Life cycle: `Running` → `Draining` (a stop was asked: outside clients are refused,
//! subtasks of running tasks are still accepted, in-flight tasks get the grace period to
//! finish) → `Stopped` (workers end; what is still queued fails with `RuntimeStopped`;
//! pools are destroyed). A stop never aborts the process.
//!
//! A stop's drain ends when the grace period is over, whatever arrives meanwhile:
//! clients' new tasks are refused with `RuntimeStopped` from the moment the stop begins,
//! and once it is over workers stop taking tasks from client rings at all (the
//! transport fails what is still queued there), so a client that keeps calling cannot
//! hold the stop up.
//!
//! Accounting: `inflight` counts task replicas submitted and not yet finished, and frames
//! sent to other nodes and not yet answered, by epoch (a periodic task counts only while
//! it runs, not while it sleeps between periods); a
//! flush waits for the tasks queued before it, a stop for all (see `flush.rs`).
//!
//! Bounds on what a client controls: a pool has at most `max_containers_per_pool`
//! containers (checked before anything is allocated), subtasks nest at most
//! `max_task_depth` deep, at most `max_periodic_tasks` periodic tasks live at once, a
//! period is at most [`MAX_PERIOD`], the input copies of a
//! task sent to several containers total at most [`MAX_FAN_OUT_COPY_BYTES`]. Each is
//! refused with its own [`TaskError`] variant; the runtime serves on.
//!
//! Periodic tasks are registered (weakly) with the runtime, so destroying their pool or
//! stopping the runtime cancels them, waking them if they sleep.
//!
//! Many nodes (`remote.rs`): a runtime given a network ([`RuntimeBuilder::network`]) is
//! one node of a cluster. Its pools (but the admin pool, which is each node's own) span
//! every node, container `c` on node `c % nodes`; `enqueue` queues the replicas of this
//! node's containers as above and sends the others as frames, whose answers complete
//! the same completion. Under force-net (`networking.force_net`, or a client's own
//! [`Client::with_force_net`] switch, which reaches `enqueue` as `Origin::force_net`)
//! every replica of a cluster pool goes as a frame, this node's own included. Without a
//! network, `cluster` is `None` and nothing of this runs.
//! A flush or a stop's drain counts the replicas this node runs and the frames it sent
//! to other nodes until they are answered (each by its deadline), so a flush returns
//! once the tasks this node queued or sent before it are done, wherever they ran.
pub mod compose;
pub mod context;
mod flush;
crate::internal_mod! {
    /// A task's fixed facts (unstable, for chimaera's own tests).
    mod header;
}
pub mod module;
pub(crate) mod parent;
crate::internal_mod! {
    /// A pool and its containers (unstable, for chimaera's own tests).
    mod pool;
}
crate::internal_mod! {
    /// Pools with their lanes (unstable, for chimaera's own tests).
    mod pool_table;
}
mod remote;
mod status;
mod task_ids;
crate::internal_mod! {
    /// A task in the runtime (unstable, for chimaera's own tests).
    mod task;
}
crate::internal_mod! {
    /// Lanes, workers and task coroutines (unstable, for chimaera's own tests).
    mod worker;
}

pub use context::RuntimeHandle;

use crate::admin_api::{CreatePoolRequest, PoolInfo};
use crate::bulk::BulkShare;
use crate::client::Client;
use crate::codec::{aligned_copy, OutputBuffer};
use crate::config::RuntimeConfig;
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, NodeId, PoolId, TaskNode};
use crate::peer::PeerNetwork;
use crate::query::{Placement, PoolQuery};
use crate::quota::{PoolReservation, UidLimits, UidQuotas, UidTable};
use crate::runtime::context::{Host, RunContext, StatusCaller};
use crate::runtime::flush::InFlight;
use crate::runtime::header::{TaskHeader, MAX_PERIOD};
use crate::runtime::module::LanePriority;
use crate::runtime::module::{ChiMod, ModuleEntry};
use crate::runtime::parent::Parent;
use crate::runtime::pool::Pool;
use crate::runtime::pool_table::{check_reopen, Lookup, PoolEntry, PoolMemo, PoolTable};
use crate::runtime::task::{
    lock, CancelToken, Completion, LocalRequest, Origin, Reply, Schedule, Submission, Task,
    TaskInput,
};
use crate::runtime::task_ids::TaskIds;
use crate::runtime::worker::{
    Held, Lane, TaskRunner, TaskSource, ThreadRole, Worker, WorkerShared,
};
use crate::sync::Latch;
use crate::transport::call::CallSlot;
use crate::transport::shm::handshake::AccessPolicy;
use crate::transport::shm::server::{Ingress, ServeAccess, ServeError, ServeSizes, ShmServer};
use crate::transport::Call;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Bytes of input copies one task may make for its replicas (a `Broadcast` or `Range`
/// makes one per container beyond the first): a large input sent to many containers
/// fails with `FanOutTooLarge` instead of costing `containers ×` its size.
pub const MAX_FAN_OUT_COPY_BYTES: usize = 256 << 20;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPED: u8 = 2;

/// Why a runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No module named `admin` was registered; every runtime needs it for pool 1.0.
    #[error("no `admin` module registered; start from chimaera::builder(), which links it, or register chimaera_admin::Admin")]
    NoAdmin,
    /// Two modules share a name.
    #[error("two modules are registered under the name `{0}`")]
    DuplicateModule(String),
    /// The shared-memory transport could not start.
    #[error("cannot serve over shared memory: {0}")]
    Serve(#[from] ServeError),
    /// The admin pool could not be created.
    #[error("cannot create the admin pool: {0}")]
    Admin(TaskError),
    /// The admin pool was given another id than 1.0 (a pool was created before it).
    #[error(
        "the admin pool got id {0} instead of 1.0; create no pool before the runtime has started"
    )]
    AdminPoolId(PoolId),
    /// The config names a hostfile but the runtime was given no network to reach the
    /// other nodes.
    #[error("the config names the hostfile {} but no network was given; start the runtime with a network (`RuntimeBuilder::network`, e.g. `chimaera::net::attach`, which needs chimaera's `net` cargo feature), or remove `networking.hostfile`", hostfile.display())]
    NetworkMissing {
        /// The configured hostfile.
        hostfile: std::path::PathBuf,
    },
    /// A worker thread could not be started.
    #[error("cannot start a worker thread: {0}; lower `workers` in the configuration or raise the process's thread limit")]
    Worker(#[source] std::io::Error),
    /// A pool given to [`RuntimeBuilder::boot_pools`] could not be created; the runtime
    /// was stopped.
    #[error("compose at boot failed, runtime stopped: {0}")]
    Compose(#[source] crate::runtime::compose::ComposeError),
}

/// What queuing a task hands back: the call to wait on (none for fire-and-forget and
/// periodic tasks, nor for a call whose results go to a sink) and the cancel flag of a
/// periodic task.
pub(crate) type Enqueued = (Option<Call>, Option<Arc<CancelToken>>);

/// What every replica of one task shares, for [`Shared::push_replica`].
struct Replica<'a> {
    entry: &'a PoolEntry,
    id: u64,
    method: MethodId,
    query: PoolQuery,
    node: TaskNode,
    parity: u8,
    /// A periodic task's period and cancel token (each replica gets a box of its own).
    periodic: Option<(Duration, &'a Arc<CancelToken>)>,
    local_worker: Option<usize>,
}

/// The one replica of a task that [`Shared::enqueue_single`] queues.
struct Single<'a> {
    entry: &'a PoolEntry,
    container: ContainerId,
    parent: Option<TaskNode>,
    method: MethodId,
    query: PoolQuery,
    local_worker: Option<usize>,
}

/// Who a pool being built is for: its containers' create tasks run for `caller` (see
/// `RunContext::unprivileged_caller`), and it keeps `reservation` of that caller's
/// quotas until it is destroyed. Default: the runtime itself.
#[derive(Default)]
pub(crate) struct PoolOwner<'a> {
    caller: Option<&'a Arc<BulkShare>>,
    reservation: Option<PoolReservation>,
}

/// A periodic task in the runtime's registry.
struct PeriodicEntry {
    /// Its pool: destroying the pool cancels it.
    pool: PoolId,
    /// Cancels it; dead once the task ended.
    token: Weak<CancelToken>,
    /// The per-uid quotas it counts against (`quotas.periodic_tasks`), if any.
    quotas: Option<Arc<UidQuotas>>,
}

impl PeriodicEntry {
    /// Whether its task is alive and not cancelled.
    fn is_alive(&self) -> bool {
        self.token
            .upgrade()
            .is_some_and(|token| !token.is_cancelled())
    }

    /// How many of `entries` are alive and count against `quotas`.
    fn alive_of(entries: &[PeriodicEntry], quotas: &Arc<UidQuotas>) -> usize {
        entries
            .iter()
            .filter(|entry| {
                entry
                    .quotas
                    .as_ref()
                    .is_some_and(|q| Arc::ptr_eq(q, quotas))
            })
            .filter(|entry| entry.is_alive())
            .count()
    }
}

/// State shared by the runtime, its workers, contexts and in-process clients.
///
/// Aligned to 128 bytes so that, inside its `Arc`, the reference counts (a worker's
/// runner upgrades its weak reference once per polling stretch, see
/// [`Held`]) sit apart from the fields every client thread reads.
#[repr(align(128))]
pub(crate) struct Shared {
    /// This state's own `Arc` (weak, so it does not keep itself alive): what handles and
    /// in-process clients made from a `&Shared` hold.
    me: Weak<Shared>,
    pub(crate) config: RuntimeConfig,
    pub(crate) node: NodeId,
    modules: HashMap<&'static str, ModuleEntry>,
    pub(crate) pools: PoolTable,
    workers: Mutex<Vec<Worker>>,
    worker_states: OnceLock<Vec<Arc<WorkerShared>>>,
    next_lane: [AtomicUsize; 2],
    task_ids: TaskIds,
    inflight: InFlight,
    /// Cancel tokens of the periodic tasks submitted, with their pools: destroying a
    /// pool or stopping cancels them. Weak, so an ended task's token goes; dead entries
    /// are pruned when a periodic task is added.
    periodic: Mutex<Vec<PeriodicEntry>>,
    /// Periodic task replicas whose coroutine runs or sleeps between runs now.
    periodic_live: AtomicU64,
    /// The per-uid quotas of the uids without admin rights that tasks ran for.
    uids: Arc<UidTable>,
    /// The task coroutines the workers may have alive (`max_coroutines`).
    stack_budget: Arc<crate::coroutine::StackBudget>,
    state: AtomicU8,
    stopped: Latch,
    /// The shared-memory transport, when the runtime serves other processes.
    shm: OnceLock<Arc<ShmServer>>,
    /// The other nodes, when this runtime is one node of a cluster; `None` for a single
    /// runtime, which then has no network object on any path.
    cluster: Option<Box<remote::ClusterNode>>,
}

/// How long a stop waits at least for each worker's poller to finish, whatever the
/// grace period: an idle poller sees the stop within microseconds; only a handler that
/// has not returned keeps it longer.
const WORKER_STOP_MIN: Duration = Duration::from_secs(1);

impl Shared {
    /// This state, counted.
    fn this(&self) -> Arc<Shared> {
        // Every `&Shared` is borrowed from a live `Arc` (the runtime's, a worker's
        // runner's, a handle's), so the strong count is not zero here.
        self.me
            .upgrade()
            .expect("a runtime's state is only reached through a live Arc")
    }

    pub(crate) fn shm_server(&self) -> Option<&Arc<ShmServer>> {
        self.shm.get()
    }

    pub(crate) fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RUNNING
    }

    /// Whether a task with this parent may be submitted now.
    pub(crate) fn accepts(&self, parent: Option<TaskNode>) -> bool {
        self.takes(parent, false)
    }

    /// Whether a task with this parent is queued now; a draining runtime takes subtasks,
    /// and tasks `admitted` while it ran (see [`Origin::admitted`]).
    fn takes(&self, parent: Option<TaskNode>, admitted: bool) -> bool {
        match self.state.load(Ordering::Acquire) {
            RUNNING => true,
            DRAINING => parent.is_some() || admitted,
            _ => false,
        }
    }

    /// A fresh task id, taken on the thread `role` names.
    pub(crate) fn next_task_id(&self, role: ThreadRole) -> u64 {
        self.task_ids.take(role)
    }

    /// Registers a periodic task's token, so its pool's destruction or a stop cancels
    /// it; refuses it when `max_periodic_tasks` are alive already, or when the uid whose
    /// `quotas` it counts against has its quota of them alive.
    fn register_periodic(
        &self,
        pool: PoolId,
        token: &Arc<CancelToken>,
        quotas: Option<&Arc<UidQuotas>>,
    ) -> Result<(), TaskError> {
        let mut periodic = lock(&self.periodic);
        periodic.retain(PeriodicEntry::is_alive);
        let max = self.config.max_periodic_tasks;
        if periodic.len() >= max as usize {
            return Err(TaskError::TooManyPeriodicTasks { max });
        }
        if let Some(quotas) = quotas {
            if PeriodicEntry::alive_of(&periodic, quotas) >= quotas.max_periodic() as usize {
                return Err(quotas.periodic_error());
            }
        }
        periodic.push(PeriodicEntry {
            pool,
            token: Arc::downgrade(token),
            quotas: quotas.cloned(),
        });
        Ok(())
    }

    /// Cancels the periodic tasks of `pool`, or all of them.
    fn cancel_periodic(&self, pool: Option<PoolId>) {
        let tokens: Vec<_> = lock(&self.periodic)
            .iter()
            .filter(|entry| pool.is_none_or(|pool| pool == entry.pool))
            .filter_map(|entry| entry.token.upgrade())
            .collect();
        for token in tokens {
            token.cancel();
        }
    }

    /// A new lane of `priority` on the next worker of its class (round robin).
    fn new_lane(&self, priority: LanePriority) -> Arc<Lane> {
        let workers = self.worker_states.get().map(Vec::as_slice).unwrap_or(&[]);
        let low = self.config.workers_low_latency.max(1);
        let (class, range) = match priority {
            LanePriority::HighLatency if workers.len() > low => (1, low..workers.len()),
            _ => (0, 0..low.min(workers.len())),
        };
        let n = self.next_lane[class].fetch_add(1, Ordering::Relaxed) % range.len().max(1);
        WorkerShared::new_lane(&workers[range.start + n], priority)
    }

    /// Queues one task: resolves the query, makes one replica per container (all inputs
    /// exist before any replica is queued), asks each container's `Monitor` for a lane.
    /// The origin's sink receives the results instead of a local waiter; its cancel flag
    /// stops a periodic task (a fresh flag is made when `None`). What the task takes of
    /// `submission` (the input, the origin's parts) is left empty there; a task that is
    /// refused leaves them.
    ///
    /// Inlined into its callers (an in-process caller that routes its own task, a
    /// worker routing a posted in-process call, the shared-memory ingest), so that what
    /// it returns stays in registers: the shared-memory side drops it at once, and read
    /// back from memory right after it was written it stalled (see [`Submission`]).
    #[inline(always)]
    pub(crate) fn enqueue(
        &self,
        parent: Option<TaskNode>,
        submission: &mut Submission,
        pools: &mut PoolMemo,
    ) -> Result<Enqueued, TaskError> {
        // Fields one by one, each loaded as it was stored; the input and the origin's
        // references are taken only where the task is made.
        let pool_id = submission.pool;
        let method = submission.method;
        let query = submission.query;
        let schedule = submission.schedule;
        let local_worker = submission.origin.local_worker;
        let force_net = submission.origin.force_net;
        let has_sink = submission.origin.reply.is_some();
        if !self.takes(parent, submission.origin.admitted) {
            return Err(TaskError::RuntimeStopped);
        }
        if let Some(parent) = parent {
            let max = self.config.max_task_depth;
            if parent.depth >= max {
                return Err(TaskError::TooDeep {
                    depth: parent.depth.saturating_add(1),
                    max,
                });
            }
        }
        if let Some(Schedule::Periodic(period)) = schedule {
            if period > MAX_PERIOD {
                return Err(TaskError::PeriodTooLong {
                    period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
                    max_ms: MAX_PERIOD.as_millis() as u64,
                });
            }
        }
        // Not `ok_or`: building (and dropping) the error on every task shows in profiles.
        let Some(entry) = self.pools.get_memoized(pool_id, pools) else {
            return Err(TaskError::UnknownPool { pool: pool_id });
        };
        let pool = &entry.pool;
        let module = pool.module;
        if module.info.method(method).is_none() {
            return Err(TaskError::UnknownMethod {
                module: module.info.name.to_owned(),
                method,
            });
        }
        if pool.private_to.is_some() {
            let caller = submission.origin.bulk.as_deref();
            pool.check_caller(caller.and_then(BulkShare::unprivileged_uid))?;
        }
        let containers = pool.container_count();
        let placement = pool.placement;
        let dynamic = match query {
            PoolQuery::Dynamic => catch_unwind(AssertUnwindSafe(|| {
                let topology = crate::query::PoolTopology {
                    containers,
                    placement,
                };
                (module.dynamic_container)(method, &submission.input, topology)
            }))
            .ok()
            .flatten(),
            _ => None,
        };
        let targets = query.resolve(pool_id, containers, placement, dynamic)?;
        // A pool spread over nodes (or any cluster pool under force-net) sends the
        // replicas of other nodes' containers as frames; on one node this is `None` and
        // costs nothing more.
        let force_net = force_net || self.cluster.as_deref().is_some_and(|c| c.force_net);
        let spread = self
            .cluster
            .as_deref()
            .filter(|_| pool.clustered && (placement.nodes > 1 || force_net));
        if spread.is_none() && schedule.is_none() && targets.len() == 1 {
            let single = Single {
                entry,
                container: targets.start,
                parent,
                method,
                query,
                local_worker,
            };
            return Ok((self.enqueue_single(single, submission), None));
        }
        if submission.origin.slot.is_some() {
            // A call routed for an in-process caller is posted only when it has one
            // replica on this node (see `call_local`); its slot could gather no more.
            return Err(TaskError::NotRun);
        }
        let input = std::mem::take(&mut submission.input);
        let Origin {
            reply: sink,
            cancel,
            bulk,
            ..
        } = std::mem::take(&mut submission.origin);
        let is_remote = |container: &ContainerId| {
            spread.is_some() && (force_net || !placement.is_local(*container))
        };

        let replicas = targets.len();
        let remote: Vec<ContainerId> = match spread {
            Some(_) => targets.clone().filter(is_remote).collect(),
            None => Vec::new(),
        };
        let local_replicas = replicas - remote.len();
        // Claims the client-share ranges the frames carry: a forged or busy range fails
        // the task here, before anything is queued or sent.
        let carried = match remote.first() {
            Some(&first) => remote::check_remote_task(
                &module,
                method,
                &input,
                bulk.as_ref(),
                schedule,
                placement.node_of(first),
            )?,
            None => None,
        };
        let copied = input.len().saturating_mul(local_replicas.saturating_sub(1));
        if copied > MAX_FAN_OUT_COPY_BYTES {
            return Err(TaskError::FanOutTooLarge {
                replicas: replicas as u32,
                input_bytes: input.len() as u64,
                max_bytes: MAX_FAN_OUT_COPY_BYTES as u64,
            });
        }
        // No allocation for the common single replica.
        let mut copies = Vec::with_capacity(local_replicas.saturating_sub(1));
        for _ in 1..local_replicas {
            copies.push((module.new_copy)(method, &input)?);
        }

        let id = self.next_task_id(ThreadRole::of(local_worker));
        let parity = self.inflight.parity();
        let node = match parent {
            Some(parent) => parent.child(),
            None => TaskNode {
                root: id,
                ..TaskNode::default()
            },
        }
        .counted_in(parity);
        // A single replica needs no completion to gather results in: it answers a sink
        // directly, or a pooled call slot its caller waits on.
        let mut direct = None;
        let mut call = None;
        let (completion, period, cancel) = match schedule {
            None => {
                let completion = match sink {
                    Some(sink) if replicas == 1 => {
                        direct = Some(Reply::Sink(sink));
                        None
                    }
                    Some(sink) => Some(Completion::with_sink(replicas as u32, sink)),
                    None if replicas == 1 => {
                        let (caller, reply) = CallSlot::take();
                        direct = Some(Reply::Slot(reply));
                        call = Some(Call::slot(caller));
                        None
                    }
                    None => Some(Completion::new(replicas as u32)),
                };
                (completion, None, None)
            }
            Some(Schedule::FireAndForget) => (None, None, None),
            Some(Schedule::Periodic(period)) => {
                let token = cancel.unwrap_or_else(CancelToken::new);
                let quotas = bulk.as_deref().and_then(BulkShare::quotas);
                self.register_periodic(pool_id, &token, quotas)?;
                (None, Some(period), Some(token))
            }
        };
        if let Some(cluster) = spread.filter(|_| !remote.is_empty()) {
            // The frames copy the input's bytes, so they go before the input moves into
            // a local replica.
            let reply = match (direct.take(), &completion) {
                (Some(reply), _) => remote::RemoteReply::One(reply),
                (None, Some(completion)) if replicas == 1 => {
                    remote::RemoteReply::One(Reply::Waiter(completion.clone()))
                }
                (None, Some(completion)) => remote::RemoteReply::Many(completion.clone()),
                (None, None) => remote::RemoteReply::Nobody,
            };
            let task = remote::Outgoing {
                pool: pool_id,
                method,
                query,
                depth: node.depth,
                input: &input,
                carried: carried.as_ref(),
                caller: bulk.as_deref().and_then(BulkShare::unprivileged_uid),
                parity,
            };
            self.send_remote(cluster, &task, placement, remote, cluster.timeout, reply);
        }
        let inputs = copies
            .into_iter()
            .map(TaskInput::from)
            .chain(std::iter::once(input));
        let local_targets = targets.filter(|container| !is_remote(container));
        let replica = Replica {
            entry,
            id,
            method,
            query,
            node,
            parity,
            periodic: period.zip(cancel.as_ref()),
            local_worker,
        };
        for (container, mut input) in local_targets.zip(inputs) {
            let reply = direct
                .take()
                .or_else(|| completion.clone().map(Reply::Waiter));
            self.push_replica(&replica, container, &mut input, reply, bulk.clone());
        }
        if let Some(reply) = direct {
            // Its one target had no container: answer rather than leave the caller waiting.
            reply.deliver(0, Err(TaskError::NotRun));
        }
        let call = match (call, completion) {
            (Some(call), _) => Some(call),
            // A sink gathers its own results; nobody waits here.
            (None, Some(_)) if has_sink => None,
            (None, completion) => completion.map(|completion| Call::new(GatheredCall(completion))),
        };
        Ok((call, cancel))
    }

    /// The common task's way in: one replica on this node, run once, answering a sink
    /// (a client process) or a pooled call slot (a caller in this process). It needs
    /// none of the gathering, fan-out and network steps of [`enqueue`](Self::enqueue)'s
    /// general path, and allocates nothing.
    fn enqueue_single(&self, single: Single<'_>, submission: &mut Submission) -> Option<Call> {
        let role = ThreadRole::of(single.local_worker);
        let id = self.next_task_id(role);
        let parity = self.inflight.parity();
        let node = match single.parent {
            Some(parent) => parent.child(),
            None => TaskNode {
                root: id,
                ..TaskNode::default()
            },
        }
        .counted_in(parity);
        let origin = &mut submission.origin;
        let (reply, call) = match (origin.reply.take(), origin.slot.take()) {
            (Some(sink), _) => (Reply::Sink(sink), None),
            // A routed in-process call: its caller waits on its slot already.
            (None, Some(slot)) => (Reply::Slot(slot), None),
            (None, None) => {
                let (caller, reply) = CallSlot::take();
                (Reply::Slot(reply), Some(Call::slot(caller)))
            }
        };
        let replica = Replica {
            entry: single.entry,
            id,
            method: single.method,
            query: single.query,
            node,
            parity,
            periodic: None,
            local_worker: single.local_worker,
        };
        // Moved into the task, not cloned: one reference count step less per task.
        let bulk = submission.origin.bulk.take();
        let input = &mut submission.input;
        self.push_replica(&replica, single.container, input, Some(reply), bulk);
        call
    }

    /// Queues one replica on `container`'s lane (its `Monitor` picks which), taking
    /// `input` into it; a container this node does not hold answers `reply` with
    /// `NotRun`.
    fn push_replica(
        &self,
        replica: &Replica<'_>,
        container: ContainerId,
        input: &mut TaskInput,
        reply: Option<Reply>,
        bulk: Option<Arc<crate::bulk::BulkShare>>,
    ) {
        let pool = &replica.entry.pool;
        let lanes = replica.entry.lanes(container);
        let (Some(object), false) = (pool.container(container), lanes.is_empty()) else {
            if let Some(reply) = reply {
                reply.deliver(container, Err(TaskError::NotRun));
            }
            return;
        };
        let method = replica.method;
        // Most modules route no task by lane: no call (a `dyn` call returning through
        // memory, which then stalled the load of its result).
        let lane_index = if pool.module.lane_hooks {
            catch_unwind(AssertUnwindSafe(|| object.monitor(method, input)))
                .unwrap_or_default()
                .resolve(pool.module.info.lanes)
                .min(lanes.len() - 1)
        } else {
            0
        };
        let lane = &lanes[lane_index];
        // Ingested by worker `local_worker` itself, on its thread (see `Origin`).
        let role = ThreadRole::of(replica.local_worker);
        self.inflight.started(replica.parity, role);
        let task = Task {
            header: TaskHeader {
                id: replica.id,
                pool: pool.id,
                method,
                container,
                lane: lane_index as u32,
                query: replica.query,
                node: replica.node,
                parity: replica.parity,
            },
            pool: pool.clone(),
            input: std::mem::take(input),
            reply,
            periodic: replica.periodic.map(|(period, cancel)| {
                Box::new(task::Periodic {
                    period,
                    cancel: cancel.clone(),
                })
            }),
            bulk,
        };
        match replica.local_worker {
            Some(worker) => lane.push_from_worker(task, worker),
            None => lane.push(task),
        }
    }

    fn run_once(&self, task: &Task, out: &mut OutputBuffer) -> Result<(), TaskError> {
        if task.pool.is_destroyed() {
            return Err(TaskError::PoolDestroyed {
                pool: task.header.pool,
            });
        }
        let pool = &task.pool;
        let Some(container) = pool.container(task.header.container) else {
            return Err(TaskError::NoSuchContainer {
                pool: task.header.pool,
                container: task.header.container,
                containers: pool.container_count(),
            });
        };
        let mut ctx = RunContext::new(task.header, &pool.name, pool.container_count(), self)
            .with_bulk(task.bulk.as_ref());
        catch_unwind(AssertUnwindSafe(|| {
            container.run(&mut ctx, task.header.method, &task.input, out)
        }))
        .unwrap_or_else(|panic| Err(panic_error(panic)))
    }

    fn periodic_goes_on(&self, task: &Task) -> bool {
        let cancelled = task
            .periodic
            .as_ref()
            .is_some_and(|periodic| periodic.cancel.is_cancelled());
        !cancelled && !task.pool.is_destroyed() && self.is_running()
    }

    /// Sleeps a periodic task between two runs, holding none of its client's memory;
    /// returns whether it runs again.
    ///
    /// The client's data share is held weakly while the task sleeps, so the transport
    /// can reclaim a dead client's area (it waits until it holds the share's last
    /// strong reference, after cancelling the client's periodic tasks). On waking the
    /// share is upgraded *before* the cancel flag is checked, with a `SeqCst` fence in
    /// between that pairs with the one the transport puts between cancelling and
    /// counting references: either the transport sees this reference and waits, or
    /// this task sees the cancel and ends — a reclaimed share is never used.
    fn sleep_between_runs(&self, task: &mut Task, period: Duration) -> bool {
        // Only a client's memory is let go of: a subtask's share (see
        // `BulkShare::for_subtasks`) holds none, and nothing else may keep it alive.
        let share = task
            .bulk
            .take_if(|share| share.is_client_memory())
            .map(|share| Arc::downgrade(&share));
        let token = task
            .periodic
            .as_ref()
            .map(|periodic| periodic.cancel.clone())
            .unwrap_or_default();
        if !self.periodic_goes_on(task) || !token.sleep(period) {
            return false;
        }
        if let Some(share) = share {
            match share.upgrade() {
                Some(share) => task.bulk = Some(share),
                None => return false,
            }
        }
        fence(Ordering::SeqCst);
        self.periodic_goes_on(task)
    }

    /// Gets or creates a pool (the admin's `GetOrCreatePool`): in a cluster through
    /// node 0, on every node (see `remote.rs`); the admin pool, and every pool of a
    /// single runtime, on this node.
    pub(crate) fn get_or_create_pool(
        &self,
        parent: (u64, TaskNode),
        request: &CreatePoolRequest,
        caller: Option<&Arc<BulkShare>>,
    ) -> Result<PoolInfo, TaskError> {
        let containers = request.containers.max(1);
        let max = self.config.max_containers_per_pool;
        if containers > max {
            return Err(TaskError::TooManyContainers {
                asked: containers,
                max,
            });
        }
        check_pool_name(&request.pool_name)?;
        let quotas = caller.and_then(|share| share.quotas());
        let caller_uid = caller.and_then(|share| share.unprivileged_uid());
        if let Lookup::Existing(entry) = self.pools.by_name(&request.pool_name) {
            check_reopen(
                &entry.pool,
                &request.module,
                containers,
                &request.params,
                caller_uid,
            )?;
            return Ok(entry.info());
        }
        let is_admin = request.module == "admin" && request.pool_name == "admin";
        if let Some(cluster) = self.cluster.as_deref().filter(|_| !is_admin) {
            if let Some(quotas) = quotas {
                // The other nodes build their containers without knowing who asked, so
                // they could neither count them nor let modules refuse an unprivileged
                // caller (a file device's path, say): only trusted callers create.
                return Err(TaskError::PermissionDenied {
                    action: format!(
                        "create the pool `{}` in a cluster (open pools an admin made)",
                        request.pool_name
                    ),
                    uid: quotas.uid(),
                });
            }
            return self.cluster_get_or_create(cluster, request);
        }
        // Held by the pool until it is destroyed: its containers, and the bytes of the
        // name and create parameters it keeps.
        let kept_bytes = (request.pool_name.len() + request.params.len()) as u64;
        let reservation = quotas
            .map(|quotas| quotas.reserve_pool(containers, kept_bytes))
            .transpose()?;
        // The containers' create tasks run for the same caller, as subtasks.
        let caller = caller.and_then(BulkShare::for_subtasks);
        let id = if is_admin {
            PoolId::ADMIN
        } else {
            self.pools.fresh_id()
        };
        let placement = Placement::single(self.node);
        let owner = PoolOwner {
            caller: caller.as_ref(),
            reservation,
        };
        self.build_pool(parent, request, id, placement, false, owner)
    }

    /// Builds this node's containers of pool `id` as `request` describes and publishes
    /// it; if a pool of that name appeared meanwhile, checks it matches and returns it.
    fn build_pool(
        &self,
        parent: (u64, TaskNode),
        request: &CreatePoolRequest,
        id: PoolId,
        placement: Placement,
        clustered: bool,
        owner: PoolOwner<'_>,
    ) -> Result<PoolInfo, TaskError> {
        let (parent_task, parent_node) = parent;
        let containers = request.containers.max(1);
        check_pool_name(&request.pool_name)?;
        // A uid without admin rights creates pools of its own.
        let caller_uid = owner.caller.and_then(|share| share.unprivileged_uid());
        let module =
            *self
                .modules
                .get(request.module.as_str())
                .ok_or_else(|| TaskError::UnknownModule {
                    module: request.module.clone(),
                })?;
        let params = aligned_copy(&request.params);
        // Containers are built first, then the pool is published in one step.
        let mut objects = Vec::with_capacity(containers as usize);
        let mut lanes = Vec::with_capacity(containers as usize);
        for container in 0..containers {
            if !placement.is_local(container) {
                objects.push(None);
                lanes.push(Vec::new());
                continue;
            }
            let header = TaskHeader {
                id: parent_task,
                pool: id,
                method: 0,
                container,
                lane: 0,
                query: crate::query::PoolQuery::DirectId(container),
                node: parent_node,
                parity: 0,
            };
            let mut ctx = RunContext::new(header, &request.pool_name, containers, self)
                .with_bulk(owner.caller);
            let object = catch_unwind(AssertUnwindSafe(|| (module.create)(&mut ctx, &params)))
                .unwrap_or_else(|panic| Err(panic_error(panic)))?;
            objects.push(Some(object));
            lanes.push(
                module
                    .info
                    .lanes
                    .iter()
                    .map(|priority| self.new_lane(*priority))
                    .collect(),
            );
        }
        let pool = Arc::new(Pool {
            id,
            name: request.pool_name.clone(),
            module,
            params: request.params.clone(),
            containers: objects,
            placement,
            clustered,
            destroyed: Default::default(),
            stats: crate::stats::PoolStats::new(
                module.info.methods,
                self.config.workers(),
                self.config.metrics_latency_sample,
            ),
            reservation: Mutex::new(owner.reservation),
            private_to: caller_uid,
        });
        match self.pools.publish(Arc::new(PoolEntry { pool, lanes })) {
            Ok(entry) => {
                tracing::debug!(
                    pool = %entry.pool.name(), id = %entry.pool.id, module = %module.info.name,
                    containers, node = self.node, "pool created"
                );
                Ok(entry.info())
            }
            Err(existing) => {
                check_reopen(
                    &existing.pool,
                    &request.module,
                    containers,
                    &request.params,
                    caller_uid,
                )?;
                Ok(existing.info())
            }
        }
    }

    /// Says at INFO what the runtime just started with: where its config came from, its
    /// instance, workers, linked modules and, when it serves client processes, its
    /// shared-memory sizes.
    fn log_start(&self) {
        let config = &self.config;
        let mut modules: Vec<&str> = self.modules.keys().copied().collect();
        modules.sort_unstable();
        tracing::info!(
            config = %config.source,
            instance = %config.instance,
            workers_low_latency = config.workers_low_latency.max(1),
            workers_high_latency = config.workers_high_latency,
            coroutine_stack_bytes = config.stack_size,
            max_coroutines = self.stack_budget.max(),
            modules = %modules.join(", "),
            serving_clients = self.shm.get().is_some(),
            "runtime started"
        );
        if self.shm.get().is_some() {
            let shm = &config.shm;
            tracing::info!(
                instance = %config.instance,
                max_clients = config.max_clients,
                client_data_bytes_each = shm.client_data_size / config.max_clients.max(1) as usize,
                client_data_bytes = shm.client_data_size,
                main_bytes = shm.main_size,
                runtime_data_bytes = shm.runtime_data_size,
                queue_depth = config.queue_depth,
                waiting_tasks_per_uid = config.waiting_quota(self.stack_budget.max()),
                "shared memory sized"
            );
        }
    }

    /// Destroys a pool (the admin's `DestroyPool`): queued tasks fail with
    /// `PoolDestroyed`, running ones finish, each container's `kDestroy` runs as a child
    /// of `parent` (a task id and its node). A cluster's pool goes on every node,
    /// through node 0.
    ///
    /// `caller`, a uid without admin rights, may destroy only a pool it created (which
    /// is private to it, and never a cluster's).
    pub(crate) fn destroy_pool(
        &self,
        parent: (u64, TaskNode),
        id: PoolId,
        caller: Option<u32>,
    ) -> Result<(), TaskError> {
        if id == PoolId::ADMIN {
            return Err(TaskError::AdminPoolIndestructible);
        }
        if let Some(uid) = caller {
            let created = self
                .pools
                .get(id)
                .is_some_and(|entry| entry.pool.private_to == Some(uid));
            if !created {
                return Err(TaskError::PermissionDenied {
                    action: "DestroyPool on a pool it did not create".into(),
                    uid,
                });
            }
        }
        if let Some(cluster) = self.cluster.as_deref() {
            return self.cluster_destroy(cluster, id);
        }
        self.destroy_here(parent, id)
    }

    /// Destroys this node's part of pool `id`.
    fn destroy_here(&self, parent: (u64, TaskNode), id: PoolId) -> Result<(), TaskError> {
        let entry = self
            .pools
            .remove(id)
            .ok_or(TaskError::UnknownPool { pool: id })?;
        let pool = &entry.pool;
        self.cancel_periodic(Some(id));
        let mut first_error = None;
        let held = pool.containers.iter().enumerate();
        for (index, container) in held.filter_map(|(i, c)| Some((i, c.as_ref()?))) {
            let header = TaskHeader {
                id: parent.0,
                pool: id,
                method: 1,
                container: index as u32,
                lane: 0,
                query: crate::query::PoolQuery::DirectId(index as u32),
                node: parent.1,
                parity: 0,
            };
            let mut ctx = RunContext::new(header, &pool.name, pool.container_count(), self);
            let result = catch_unwind(AssertUnwindSafe(|| container.destroy(&mut ctx)))
                .unwrap_or_else(|panic| Err(panic_error(panic)));
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        tracing::debug!(
            pool = %pool.name(), %id, module = %pool.module.info.name,
            failed = first_error.is_some(), "pool destroyed"
        );
        first_error.map_or(Ok(()), Err)
    }

    /// Stops the runtime: drain for up to `grace`, then fail what is left and end,
    /// within twice `grace` (at least `grace` + [`WORKER_STOP_MIN`]) even if a handler
    /// never returns (it is left running on its worker's thread). `own_tasks` is how
    /// many in-flight tasks belong to the caller itself.
    pub(crate) fn stop(&self, grace: Duration, own_tasks: u64) {
        if self
            .state
            .compare_exchange(RUNNING, DRAINING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.wait_stopped();
            return;
        }
        // A grace too long for the clock has no end to wait for.
        let deadline = Instant::now().checked_add(grace);
        // Calls posted while it ran are queued (admitted), so the drain counts them.
        self.fence_posted(deadline, u64::MAX);
        let drained = self.inflight.wait_at_most(own_tasks, deadline);
        if !drained {
            tracing::warn!(
                inflight = self.inflight.total(),
                "stop: grace period over, failing the tasks still queued"
            );
        }
        self.state.store(STOPPED, Ordering::Release);
        if let Some(cluster) = &self.cluster {
            // Peers hear this node leaves; calls still out are answered with `Left`.
            cluster.net.shutdown();
        }
        if let Some(server) = self.shm.get() {
            server.stop_taking_tasks();
        }
        self.cancel_periodic(None);
        let workers = std::mem::take(&mut *lock(&self.workers));
        // A handler still running now gets one more grace period (at least
        // `WORKER_STOP_MIN`, time for an idle poller to see the stop) to return; one
        // that never does is left on its worker's thread (`Worker::shutdown`): a stop
        // ends.
        let workers_deadline = Instant::now().checked_add(grace.max(WORKER_STOP_MIN));
        for worker in workers {
            worker.shutdown(workers_deadline);
        }
        if let Some(server) = self.shm.get() {
            server.shutdown();
        }
        let pools = self.pools.clear();
        drop(pools);
        self.stopped.open();
    }

    fn wait_stopped(&self) {
        self.stopped.wait(None);
    }
}

/// The task runner the workers call: runs tasks with access to the shared state.
struct Runner(OnceLock<std::sync::Weak<Shared>>);

impl Runner {
    /// The runtime's state, kept in `held`: upgraded once per polling stretch, not per
    /// task (two locked steps each). `None` once the runtime is gone.
    fn shared<'h>(&self, held: &'h mut Held) -> Option<&'h Shared> {
        // Only this runner fills `held`, so once filled it holds the runtime: one type
        // check (a `dyn` call) per task, none before the fill.
        if held.is_none() {
            *held = self
                .0
                .get()
                .and_then(std::sync::Weak::upgrade)
                .map(|shared| shared as Arc<dyn std::any::Any + Send + Sync>);
        }
        held.as_deref()?.downcast_ref::<Shared>()
    }
}

impl TaskRunner for Runner {
    fn run(&self, task: &mut Task, out: &mut OutputBuffer, worker: usize, held: &mut Held) {
        let role = ThreadRole::Worker(worker);
        // A disabled span still costs its making and its scope's drop on every task: skip
        // both while no subscriber wants DEBUG at all (the macro's own first check).
        let debug = tracing::Level::DEBUG <= tracing::level_filters::STATIC_MAX_LEVEL
            && tracing::Level::DEBUG <= tracing::level_filters::LevelFilter::current();
        let _span = debug.then(|| crate::coroutine::enter_span(task.span()));
        let Some(shared) = self.shared(held) else {
            task.complete(Err(TaskError::RuntimeStopped));
            return;
        };
        let Some(period) = task.periodic.as_ref().map(|periodic| periodic.period) else {
            if let Some(Reply::Slot(reply)) = &task.reply {
                reply.prefetch();
            }
            let timer = task.pool.stats.start(task.header.method);
            let result = shared.run_once(task, out);
            task.pool.stats.finish(timer, result.is_ok());
            let parity = task.header.parity;
            // Counted before the caller hears back, so a caller that then asks for the
            // count sees its task in it; in flight until after, so a flush does not
            // return before the result is delivered.
            shared.inflight.count_completed(role);
            task.complete_from(result, out);
            shared.inflight.uncount(parity, role);
            out.trim();
            return;
        };
        shared.periodic_live.fetch_add(1, Ordering::AcqRel);
        loop {
            let timer = task.pool.stats.start(task.header.method);
            let result = shared.run_once(task, out);
            task.pool.stats.finish(timer, result.is_ok());
            if let Err(err) = result {
                tracing::warn!(task = task.header.id, "periodic task failed: {err}");
            }
            out.trim();
            shared.inflight.finished(task.header.parity, role);
            if !shared.sleep_between_runs(task, period) {
                break;
            }
            let parity = shared.inflight.parity();
            shared.inflight.started(parity, role);
            let header = &mut task.header;
            header.node = header.node.recounted(header.parity, parity);
            header.parity = parity;
        }
        shared.periodic_live.fetch_sub(1, Ordering::AcqRel);
    }

    fn overflowed(&self, mut task: Task) {
        let Some(shared) = self.0.get().and_then(std::sync::Weak::upgrade) else {
            task.complete(Err(TaskError::RuntimeStopped));
            return;
        };
        tracing::error!(
            task = task.header.id,
            method = task.header.method,
            "a handler overflowed its coroutine stack; its task fails"
        );
        // Against the submitting client's quota: the dead stack is kept for good.
        if let Some(share) = &task.bulk {
            share.count_overflow();
        }
        task.complete(Err(TaskError::StackOverflow {
            method: task.header.method,
            stack_size: shared.config.stack_size as u64,
        }));
        // The run counted the task in flight (a periodic one for this run, and as alive).
        shared
            .inflight
            .finished(task.header.parity, ThreadRole::Other);
        task.pool.stats.lost(task.header.method);
        if task.periodic.is_some() {
            shared.periodic_live.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn route(&self, request: &mut LocalRequest, worker: usize, held: &mut Held) {
        // Pipelined requests are routed a batch ahead of their runs: the answer's line is
        // here by then (pipelined in-process calls: 4–12% more per second).
        request.prefetch_reply();
        let Some(shared) = self.shared(held) else {
            request.fail(TaskError::RuntimeStopped);
            return;
        };
        let submission = &mut request.submission(worker);
        let mut pools = PoolMemo::of_worker();
        let enqueued = shared.enqueue(request.parent(), submission, &mut pools);
        pools.keep_for_worker();
        match enqueued {
            Ok(_) => request.routed(),
            // Refused before the task was made: the submission still holds the reply's
            // second handle, and the request its own.
            Err(err) => request.fail(err),
        }
    }

    fn route_overflowed(&self, mut request: LocalRequest) {
        let stack_size = self
            .0
            .get()
            .and_then(std::sync::Weak::upgrade)
            .map_or(0, |shared| shared.config.stack_size as u64);
        request.fail(TaskError::StackOverflow {
            method: request.method(),
            stack_size,
        });
    }

    fn refuse(&self, mut task: Task, error: TaskError) {
        let parity = task.header.parity;
        if task.periodic.is_some() && error != TaskError::RuntimeStopped {
            // Nobody waits for its answer: say it here.
            tracing::error!(task = task.header.id, "a periodic task ends unrun: {error}");
        }
        task.complete(Err(error));
        if let Some(shared) = self.0.get().and_then(std::sync::Weak::upgrade) {
            shared.inflight.finished(parity, ThreadRole::Other);
        }
    }
}

// --- the in-process transport's view of the runtime (see `transport::inproc`) ---
impl crate::transport::inproc::LocalRuntime for Shared {
    fn enqueue_local(
        &self,
        parent: Option<&Parent>,
        route: crate::transport::Route,
        input: TaskInput,
        schedule: Option<Schedule>,
    ) -> Result<crate::transport::inproc::Queued, TaskError> {
        let posted = crate::transport::call::posted_pending(self.identity());
        if posted != 0 && !worker::on_worker_thread() {
            // Queued by this thread directly, it must not overtake a call the thread
            // posted that waits to be routed.
            self.fence_posted(None, posted);
        }
        let crate::transport::Route {
            pool,
            method,
            query,
            force_net,
        } = route;
        let submission = &mut Submission {
            pool,
            method,
            query,
            schedule,
            input,
            origin: Origin {
                force_net,
                bulk: parent.and_then(Parent::charge),
                ..Origin::default()
            },
        };
        let pools = &mut PoolMemo::default();
        let parent = parent.map(|parent| parent.node);
        let (call, cancel) = self.enqueue(parent, submission, pools)?;
        Ok((
            call,
            cancel.map(|f| Box::new(LocalCancel(f)) as Box<dyn crate::transport::CancelPeriodic>),
        ))
    }

    fn accepts(&self, parent: Option<TaskNode>) -> bool {
        Shared::accepts(self, parent)
    }

    fn call_local(
        &self,
        parent: Option<&Parent>,
        route: crate::transport::Route,
        input: TaskInput,
        hint: &crate::transport::inproc::PostHint,
    ) -> Result<Call, TaskError> {
        // Posted whenever it can be (see `transport::call`, "Which path a call takes"):
        // the worker routes it with the pool, its lanes and the task in its own cache,
        // and chimod routing code never runs on the caller's stack.
        let Some((posting, worker)) = self.posting_worker(&route, hint) else {
            let (call, _) = self.enqueue_local(parent, route, input, None)?;
            return call.ok_or(TaskError::NotRun);
        };
        if !self.accepts(parent.map(|parent| parent.node)) {
            return Err(TaskError::RuntimeStopped);
        }
        // Pipelining: the thread's last call posted there is not answered yet.
        let pending = crate::transport::call::posted_pending(self.identity());
        let pipelining = crate::transport::call::names_worker(pending, worker);
        let (mut call, reply) = CallSlot::take();
        call.note_posted(self.identity(), worker);
        posting.post(LocalRequest::new(route, parent, input, reply), pipelining);
        Ok(Call::slot(call))
    }
}

impl Shared {
    /// This runtime's identity for a thread's tracking of the calls it posted (see
    /// `transport::call`, "Which path a call takes"): its address.
    fn identity(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The worker an in-process call is posted to, to route it there (see
    /// `runtime/worker.rs`, "Requests"), and its index; `None` when the caller routes it
    /// itself:
    /// a query that may have several replicas, a runtime that is one node of a cluster, a
    /// caller on a worker's thread (a subtask, queued where it runs), or a pool this node
    /// cannot place the call in (the caller then gets the error at once).
    ///
    /// Any worker routes any call correctly; `hint` (one per client) remembers the
    /// worker of the last pool the client called, so that a call normally reaches the
    /// worker that runs it. Only a miss looks the pool up: the lane of the container the
    /// query picks (`Dynamic` counted as `Local`). A pool whose containers' lanes sit on
    /// several workers may then be routed on one and run on another (one more hop).
    fn posting_worker(
        &self,
        route: &crate::transport::Route,
        hint: &crate::transport::inproc::PostHint,
    ) -> Option<(&Arc<WorkerShared>, usize)> {
        if !route.query.selects_one() || self.cluster.is_some() || worker::on_worker_thread() {
            return None;
        }
        let workers = self.worker_states.get()?;
        if let Some(known) = hint.get(route.pool) {
            if let Some(worker) = workers.get(known) {
                return Some((worker, known));
            }
        }
        let entry = self.pools.get(route.pool)?;
        let query = match route.query {
            PoolQuery::Dynamic => PoolQuery::Local,
            query => query,
        };
        let pool = &entry.pool;
        let container = query
            .resolve(route.pool, pool.container_count(), pool.placement, None)
            .ok()?
            .start;
        let worker = entry.lanes(container).first()?.worker();
        hint.remember(route.pool, worker);
        Some((workers.get(worker)?, worker))
    }

    /// Waits until the workers in `workers` (bit `w` for worker `w`; workers past 63 are
    /// always in) have routed the in-process calls posted to them before now (so a
    /// flush or a stop's drain counts their tasks), or until `deadline`. Each is sent a
    /// request for pool `0.0`, which never exists: it is answered as soon as it is
    /// routed, and a worker routes its requests in the order they came.
    fn fence_posted(&self, deadline: Option<Instant>, workers: u64) {
        let Some(all) = self.worker_states.get() else {
            return;
        };
        let no_pool = crate::transport::Route {
            pool: PoolId::new(0, 0),
            method: 0,
            query: PoolQuery::Local,
            force_net: false,
        };
        let fences: Vec<_> = all
            .iter()
            .filter(|worker| crate::transport::call::names_worker(workers, worker.id()))
            .map(|worker| {
                let (mut call, reply) = CallSlot::take();
                // Answered, it also tells this thread its earlier posts there are routed.
                call.note_posted(self.identity(), worker.id());
                worker.post(
                    LocalRequest::new(no_pool, None, TaskInput::default(), reply),
                    false,
                );
                call
            })
            .collect();
        for fence in &fences {
            if !fence.wait_until(deadline) {
                return;
            }
        }
    }
}

/// An in-process call with several replicas: waited on through the completion gathering
/// them (boxed: such a call allocates its results anyway).
struct GatheredCall(Arc<Completion>);

impl crate::transport::PendingCall for GatheredCall {
    fn is_done(&self) -> bool {
        self.0.is_done()
    }

    fn wait(self: Box<Self>) -> crate::transport::Results {
        self.0.wait()
    }

    fn poll_done(&self, waker: &std::task::Waker) -> bool {
        self.0.poll_done(waker)
    }

    fn wait_until(&self, deadline: std::time::Instant) -> bool {
        self.0.wait_until(Some(deadline))
    }
}

/// The cancel token of a periodic task: cancelling wakes it if it sleeps.
struct LocalCancel(Arc<CancelToken>);

impl crate::transport::CancelPeriodic for LocalCancel {
    fn cancel(&self) -> Result<(), TaskError> {
        self.0.cancel();
        Ok(())
    }
}
// --- end of the in-process transport's view ---

impl Host for Shared {
    fn me(&self) -> Arc<dyn Host> {
        self.this()
    }

    fn client(&self, parent: Option<Parent>) -> Client {
        crate::transport::inproc::client(self.this(), parent)
    }

    fn get_or_create_pool(
        &self,
        parent: (u64, TaskNode),
        request: &CreatePoolRequest,
        caller: Option<&Arc<BulkShare>>,
    ) -> Result<PoolInfo, TaskError> {
        Shared::get_or_create_pool(self, parent, request, caller)
    }

    fn destroy_pool(
        &self,
        parent: (u64, TaskNode),
        pool: PoolId,
        caller: Option<u32>,
    ) -> Result<(), TaskError> {
        Shared::destroy_pool(self, parent, pool, caller)
    }

    fn stop(&self, grace: Duration, own_tasks: u64) {
        Shared::stop(self, grace, own_tasks);
    }

    fn flush(&self, caller: TaskNode) -> u64 {
        let before = self.inflight.completed();
        self.fence_posted(None, u64::MAX);
        self.inflight.flush(caller);
        self.inflight.completed().saturating_sub(before)
    }

    fn inflight(&self) -> u64 {
        self.inflight.total()
    }

    fn completed(&self) -> u64 {
        self.inflight.completed()
    }

    fn periodic_tasks(&self) -> u64 {
        self.periodic_live.load(Ordering::Acquire)
    }

    fn coroutines(&self) -> crate::admin_api::CoroutineStatus {
        crate::admin_api::CoroutineStatus {
            live: self.stack_budget.live() as u64,
            max: self.stack_budget.max() as u64,
        }
    }

    fn uids(&self) -> Vec<crate::admin_api::UidStatus> {
        self.uid_statuses()
    }

    fn pools(&self) -> Vec<PoolInfo> {
        self.pools.list().iter().map(|entry| entry.info()).collect()
    }

    fn is_running(&self) -> bool {
        Shared::is_running(self)
    }

    fn workers(&self) -> Vec<crate::admin_api::WorkerStatus> {
        let workers = self.worker_states.get().map(Vec::as_slice);
        workers
            .unwrap_or(&[])
            .iter()
            .map(|worker| crate::admin_api::WorkerStatus {
                id: worker.id() as u32,
                tasks_run: worker.tasks_run(),
                queued: (worker.inbox_len() + worker.requests_len()) as u64,
            })
            .collect()
    }

    fn instance(&self) -> &crate::shm::InstanceName {
        &self.config.instance
    }

    fn clients(&self) -> u32 {
        self.shm.get().map_or(0, |server| server.clients_active())
    }

    fn status(&self, caller: StatusCaller) -> crate::admin_api::RuntimeStatus {
        Shared::status(self, caller)
    }

    fn method_stats(&self) -> Vec<crate::admin_api::MethodStatus> {
        Shared::method_stats(self)
    }

    fn node(&self) -> NodeId {
        self.node
    }

    fn peers(&self) -> Vec<crate::peer::PeerInfo> {
        self.cluster
            .as_ref()
            .map_or_else(Vec::new, |cluster| cluster.net.peers())
    }
}

impl Ingress for Shared {
    fn enqueue(&self, submission: &mut Submission, pools: &mut PoolMemo) -> Result<(), TaskError> {
        Shared::enqueue(self, None, submission, pools).map(|_| ())
    }

    fn wake_worker(&self, worker: usize) {
        if let Some(state) = self.worker_states.get().and_then(|w| w.get(worker)) {
            state.wake();
        }
    }
}

/// The longest pool name, in bytes (a file device's name is its path: `PATH_MAX`).
pub const MAX_POOL_NAME_LEN: usize = 4096;

/// Refuses a pool name longer than [`MAX_POOL_NAME_LEN`]: every pool keeps its name (twice,
/// with the table's index) for its life.
fn check_pool_name(name: &str) -> Result<(), TaskError> {
    if name.len() > MAX_POOL_NAME_LEN {
        return Err(TaskError::PoolNameTooLong {
            len: name.len() as u64,
            max: MAX_POOL_NAME_LEN as u64,
        });
    }
    Ok(())
}

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> TaskError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    TaskError::Panicked { message }
}

/// Configures a runtime and the modules it hosts.
#[derive(Default)]
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    modules: Vec<ModuleEntry>,
    network: Option<Arc<dyn PeerNetwork>>,
    boot_pools: Vec<crate::runtime::compose::PreparedPool>,
}

impl RuntimeBuilder {
    /// A builder with the default configuration and no module.
    pub fn new() -> Self {
        RuntimeBuilder::default()
    }

    /// Uses `config`.
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Makes this runtime one node of a cluster, reaching the others through
    /// `network` (the gRPC network of `chimaera-net`, or an in-memory
    /// [`MemoryCluster`](crate::cluster::memory::MemoryCluster)'s endpoint). Its node id
    /// is the network's; `networking.force_net`, `neighborhood_size` and `rpc_timeout_ms`
    /// of the config apply. Without one, the runtime is a single node (and a config
    /// naming a hostfile is refused with [`StartError::NetworkMissing`]).
    pub fn network(mut self, network: Arc<dyn PeerNetwork>) -> Self {
        self.network = Some(network);
        self
    }

    /// Links chimod `M` into the runtime.
    pub fn module<M: ChiMod>(self) -> Self {
        self.module_entry(ModuleEntry::of::<M>())
    }

    /// Links a module by its registry entry.
    pub fn module_entry(mut self, entry: ModuleEntry) -> Self {
        self.modules.push(entry);
        self
    }

    /// Links chimod `M`, which can also be created from YAML parameters (a `compose:`
    /// entry of the config, or `chimaera compose FILE`).
    pub fn composable_module<M: crate::runtime::compose::Composable>(self) -> Self {
        self.module_entry(ModuleEntry::composable::<M>())
    }

    /// Pools the runtime creates (gets or creates, in order) right after its admin pool,
    /// before it tells client processes it is ready: a client that connects finds them
    /// (`compose::prepare` makes them from a config's `compose:` entries). If one
    /// cannot be created, the runtime stops and the start fails with
    /// [`StartError::Compose`].
    pub fn boot_pools(mut self, pools: Vec<crate::runtime::compose::PreparedPool>) -> Self {
        self.boot_pools = pools;
        self
    }

    /// The modules registered so far, in registration order.
    pub fn modules(&self) -> impl Iterator<Item = &ModuleEntry> {
        self.modules.iter()
    }

    /// Starts the runtime, serving this process only: workers, then the admin pool
    /// (`1.0`).
    pub fn start(self) -> Result<Runtime, StartError> {
        self.launch(false)
    }

    /// Starts the runtime and serves client processes over shared memory, for the
    /// configured instance (see `crate::shm`). Fails if another runtime serves it.
    pub fn serve(self) -> Result<Runtime, StartError> {
        self.launch(true)
    }

    fn launch(self, serve: bool) -> Result<Runtime, StartError> {
        let mut modules = HashMap::new();
        for entry in self.modules {
            if modules.insert(entry.info.name, entry).is_some() {
                return Err(StartError::DuplicateModule(entry.info.name.to_owned()));
            }
        }
        if !modules.contains_key("admin") {
            return Err(StartError::NoAdmin);
        }
        let config = self.config;
        if self.network.is_none() {
            if let Some(hostfile) = &config.networking.hostfile {
                return Err(StartError::NetworkMissing {
                    hostfile: hostfile.clone(),
                });
            }
        }
        let cluster = self
            .network
            .map(|net| Box::new(remote::ClusterNode::new(net, &config.networking)));
        let node = cluster.as_ref().map_or(0, |cluster| cluster.this_node);
        let coroutines = config.coroutine_budget();
        let uids = Arc::new(UidTable::new(UidLimits {
            stack_overflows: config.client_stack_overflows,
            waiting_tasks: config.waiting_quota(coroutines),
            periodic_tasks: config.periodic_quota(),
            containers: config.client_containers,
            memory: config.client_memory,
        }));
        let server = if serve {
            let sizes = ServeSizes {
                main: config.shm.main_size,
                client_data: config.shm.client_data_size,
                runtime_data: config.shm.runtime_data_size,
                max_clients: config.max_clients,
                slots: config.queue_depth,
                workers: config.workers_low_latency.max(1) as u32,
                stack_size: config.stack_size,
            };
            // isolation: who may connect, and what each client and each uid may hold.
            let access = ServeAccess {
                policy: AccessPolicy {
                    owner: rustix::process::geteuid().as_raw(),
                    uids: config.access.uids.clone(),
                    gids: config.access.gids.clone(),
                    admin_uids: config.access.admin_uids.clone(),
                },
                tasks_in_flight: config.client_tasks_in_flight,
                uids: uids.clone(),
                connections: config.connections_quota(),
            };
            Some(ShmServer::create(&config.instance, sizes, access)?)
        } else {
            None
        };
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            node,
            cluster,
            modules,
            pools: PoolTable::new(),
            workers: Mutex::new(Vec::new()),
            worker_states: OnceLock::new(),
            next_lane: [AtomicUsize::new(0), AtomicUsize::new(0)],
            task_ids: TaskIds::new(config.workers()),
            inflight: InFlight::with_workers(config.workers()),
            periodic: Mutex::new(Vec::new()),
            periodic_live: AtomicU64::new(0),
            uids,
            stack_budget: crate::coroutine::StackBudget::new(coroutines),
            state: AtomicU8::new(RUNNING),
            stopped: Latch::default(),
            shm: OnceLock::new(),
            config,
        });
        if let Some(server) = server {
            let _ = shared.shm.set(server.clone());
            if let Err(err) = server.start_threads(shared.clone()) {
                server.shutdown();
                return Err(err.into());
            }
        }
        let runner = Arc::new(Runner(OnceLock::new()));
        let _ = runner.0.set(Arc::downgrade(&shared));
        let source = shared
            .shm
            .get()
            .map(|server| server.clone() as Arc<dyn TaskSource>);
        let idle_rounds = shared.config.idle.spin_rounds + shared.config.idle.yield_rounds;
        let mut workers = Vec::with_capacity(shared.config.workers());
        for id in 0..shared.config.workers() {
            let cpu = shared.config.pin_workers.then_some(id);
            match Worker::start(
                id,
                worker::WorkerStacks {
                    size: shared.config.stack_size,
                    budget: shared.stack_budget.clone(),
                },
                idle_rounds,
                cpu,
                runner.clone(),
                source.clone(),
            ) {
                Ok(worker) => workers.push(worker),
                Err(err) => {
                    // Nothing ran on them yet: each poller finishes at once.
                    for worker in workers {
                        worker.shutdown(None);
                    }
                    if let Some(server) = shared.shm.get() {
                        server.shutdown();
                    }
                    return Err(StartError::Worker(err));
                }
            }
        }
        let _ = shared
            .worker_states
            .set(workers.iter().map(|w| w.shared().clone()).collect());
        *lock(&shared.workers) = workers;

        let runtime = Runtime { shared };
        // The admin pool cannot be created by an admin task: build it directly, on this
        // thread, as the root of its own task group.
        let bootstrap = CreatePoolRequest {
            module: "admin".to_owned(),
            pool_name: "admin".to_owned(),
            containers: 1,
            params: crate::codec::encode(&())
                .map_err(StartError::Admin)?
                .to_vec(),
        };
        let admin = runtime
            .shared
            .get_or_create_pool((0, TaskNode::default()), &bootstrap, None);
        match admin {
            Ok(info) if info.id == PoolId::ADMIN => {
                runtime.shared.join_cluster();
                let client = runtime.client();
                for pool in &self.boot_pools {
                    match pool.create(&client) {
                        Ok(info) => tracing::info!(
                            pool = %info.name, id = %info.id, module = %info.module,
                            containers = info.containers, "composed pool"
                        ),
                        Err(err) => {
                            drop(client);
                            runtime.stop();
                            return Err(StartError::Compose(err));
                        }
                    }
                }
                drop(client);
                if let Some(server) = runtime.shared.shm.get() {
                    server.publish_ready();
                }
                runtime.shared.log_start();
                Ok(runtime)
            }
            Ok(info) => Err(StartError::AdminPoolId(info.id)),
            Err(err) => Err(StartError::Admin(err)),
        }
    }
}

/// A running runtime. Dropping it stops it (with the configured grace period).
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// A builder; link modules with [`RuntimeBuilder::module`].
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::new()
    }

    /// A client of this runtime in this process.
    pub fn client(&self) -> Client {
        crate::transport::inproc::client(self.shared.clone(), None)
    }

    /// A handle to manage the runtime.
    pub fn handle(&self) -> RuntimeHandle {
        RuntimeHandle::new(self.shared.clone())
    }

    /// Blocks until the runtime has been stopped (by an admin `StopRuntime` task).
    pub fn wait(&self) {
        self.shared.wait_stopped();
    }

    /// Stops the runtime: in-flight tasks get the grace period, then what is left fails;
    /// a handler that still has not returned after a second grace period (at least a
    /// second) is left running on its worker's thread (logged), so this returns
    /// regardless.
    pub fn stop(self) {
        let grace = self.shared.config.stop_grace_period;
        self.shared.stop(grace, 0);
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let grace = self.shared.config.stop_grace_period;
        self.shared.stop(grace, 0);
    }
}
