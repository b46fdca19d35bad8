//! [`RunContext`]: a task's view of the runtime while it runs.
//!
//! Per-task state lives here. A task's coroutine never leaves its worker's thread (see
//! `crate::coroutine`), so thread-locals and thread-affine `std` values are sound in a
//! handler even across waits — but a thread-local is shared by every task of that
//! worker, so state of *one task* belongs here. A context is created by the worker for
//! one run of one task and dropped after it.
//!
//! What a task may ask of its runtime (subtasks, and for the admin chimod the
//! [`RuntimeHandle`]) goes through the `Host` trait, which the runtime implements: this
//! file knows the task's header and nothing of pools, workers or the runtime's state,
//! so the module contract built on it sits below them.
use crate::admin_api::{CreatePoolRequest, MethodStatus, PoolInfo, RuntimeStatus, WorkerStatus};
use crate::bulk::BulkShare;
use crate::client::Client;
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, NodeId, PoolId, TaskNode};
use crate::peer::PeerInfo;
use crate::runtime::header::{TaskHeader, MAX_PERIOD};
use crate::runtime::parent::Parent;
use crate::shm::InstanceName;
use std::sync::Arc;
use std::time::Duration;

/// What running tasks and management tools may ask of the runtime; implemented by the
/// runtime's shared state.
pub(crate) trait Host: Send + Sync {
    /// The host itself, counted (for handles and clients that outlive a borrow).
    fn me(&self) -> Arc<dyn Host>;
    /// A client in this process whose tasks are subtasks of `parent` if any.
    fn client(&self, parent: Option<Parent>) -> Client;
    /// Gets or creates a pool; its containers' create tasks are children of `parent`
    /// (a task id and its node).
    fn get_or_create_pool(
        &self,
        parent: (u64, TaskNode),
        request: &CreatePoolRequest,
        caller: Option<&Arc<BulkShare>>,
    ) -> Result<PoolInfo, TaskError>;
    /// Destroys a pool; its containers' destroy tasks are children of `parent`.
    fn destroy_pool(
        &self,
        parent: (u64, TaskNode),
        pool: PoolId,
        caller: Option<u32>,
    ) -> Result<(), TaskError>;
    /// Stops the runtime (blocking), not waiting for `own_tasks` of the caller's.
    fn stop(&self, grace: Duration, own_tasks: u64);
    /// Waits for the tasks in flight now, but `caller`'s own; returns how many tasks
    /// completed meanwhile.
    fn flush(&self, caller: TaskNode) -> u64;
    /// Task replicas in flight now.
    fn inflight(&self) -> u64;
    /// Task replicas completed since start.
    fn completed(&self) -> u64;
    /// Periodic task replicas alive now.
    fn periodic_tasks(&self) -> u64;
    /// Task coroutines alive now, and the most that may be.
    fn coroutines(&self) -> crate::admin_api::CoroutineStatus;
    /// What each uid with quotas holds against them, in uid order.
    fn uids(&self) -> Vec<crate::admin_api::UidStatus>;
    /// Every live pool.
    fn pools(&self) -> Vec<PoolInfo>;
    /// Whether the runtime still accepts tasks from clients.
    fn is_running(&self) -> bool;
    /// Every worker, in id order.
    fn workers(&self) -> Vec<WorkerStatus>;
    /// The instance name the runtime was configured with.
    fn instance(&self) -> &InstanceName;
    /// Client processes attached over shared memory.
    fn clients(&self) -> u32;
    /// A snapshot of the runtime for the `Status` task `caller`, which leaves itself out.
    fn status(&self, caller: StatusCaller) -> RuntimeStatus;
    /// Every pool's per-method counters.
    fn method_stats(&self) -> Vec<MethodStatus>;
    /// This runtime's node in its cluster (0 for a single runtime).
    fn node(&self) -> NodeId;
    /// Every node of the cluster with its link's state; empty for a single runtime.
    fn peers(&self) -> Vec<PeerInfo>;
}

/// The admin `Status` task asking for a snapshot, which leaves itself out of it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StatusCaller {
    /// The pool it runs in.
    pub(crate) pool: PoolId,
    /// Its method.
    pub(crate) method: MethodId,
    /// Whether it came from a client process (whose client and area are left out).
    pub(crate) from_shm_client: bool,
    /// The uid without admin rights it runs for, if any: it sees its own uid alone
    /// among the uids, and no pool private to another uid.
    pub(crate) unprivileged: Option<u32>,
}

/// What a running task knows about itself and can do with the runtime.
///
/// It borrows what the running task holds (its pool, the runtime, its client's data
/// share) for the handler's call, so making one per run costs no reference counting.
/// Handlers take it as `ctx: &mut RunContext`.
pub struct RunContext<'t> {
    header: TaskHeader,
    pool_name: &'t str,
    containers: u32,
    host: &'t dyn Host,
    bulk: Option<&'t Arc<BulkShare>>,
}

impl<'t> RunContext<'t> {
    /// The context of one run of the task `header`, in the pool `pool_name` of
    /// `containers` containers.
    pub(crate) fn new(
        header: TaskHeader,
        pool_name: &'t str,
        containers: u32,
        host: &'t dyn Host,
    ) -> Self {
        RunContext {
            header,
            pool_name,
            containers,
            host,
            bulk: None,
        }
    }

    /// Lets the task's bulk arguments reference `share` (its client's data share).
    pub(crate) fn with_bulk(mut self, share: Option<&'t Arc<BulkShare>>) -> Self {
        self.bulk = share;
        self
    }

    /// The data share of the client process that submitted this task, if any: where
    /// its bulk (`&[u8]` / `&mut [u8]`) arguments passed by reference lie.
    /// Borrowed for `'t`, not for the borrow of `self`: the handler can still take the
    /// context mutably while its bulk arguments lie in the share.
    #[doc(hidden)]
    pub fn bulk_share(&self) -> Option<&'t BulkShare> {
        self.bulk.map(|share| &**share)
    }

    /// The uid this task runs for when it is not trusted with the runtime's own rights:
    /// `Some(uid)` for a task of a client process whose uid is neither the runtime's
    /// owner nor one of `access.admin_uids` (and for the subtasks of such a task, and
    /// on any node of a cluster such a task or subtask was sent to); `None` for the
    /// runtime's own work, in-process callers and trusted clients.
    ///
    /// The runtime runs every handler with its own rights. A module that acts on the
    /// system on a caller's behalf — opens a path the caller named, say — must refuse an
    /// unprivileged caller what that uid could not do itself (bdev refuses it file
    /// devices: the pool name would be a path the runtime opens for it).
    pub fn unprivileged_caller(&self) -> Option<u32> {
        self.bulk.and_then(|share| share.unprivileged_uid())
    }

    /// Reserves `bytes` of the caller's `quotas.memory` for memory a module allocates on
    /// its behalf and keeps (a RAM block device, a cache): keep the reservation with that
    /// memory, and drop it with it. Only an unprivileged caller (see
    /// [`unprivileged_caller`](Self::unprivileged_caller)) is counted; for anyone else
    /// the reservation is empty and never fails. Past the quota it fails with
    /// [`TaskError::QuotaExceeded`]: allocate nothing then.
    pub fn reserve_memory(&self, bytes: u64) -> Result<crate::MemoryReservation, TaskError> {
        match self.bulk.and_then(|share| share.quotas()) {
            Some(quotas) => quotas.reserve_memory(bytes),
            None => Ok(crate::MemoryReservation::default()),
        }
    }

    /// The pool this task runs in.
    pub fn pool_id(&self) -> PoolId {
        self.header.pool
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        self.pool_name
    }

    /// The container running this task.
    pub fn container_id(&self) -> ContainerId {
        self.header.container
    }

    /// The lane of the container's local queue this task was queued on.
    pub fn lane(&self) -> u32 {
        self.header.lane
    }

    /// The node this task runs on (0 for a single runtime).
    pub fn node(&self) -> NodeId {
        self.host.node()
    }

    /// How many containers the pool has.
    pub fn containers(&self) -> u32 {
        self.containers
    }

    /// The method being run.
    pub fn method(&self) -> MethodId {
        self.header.method
    }

    /// The task's id, unique within the runtime.
    pub fn task_id(&self) -> u64 {
        self.header.id
    }

    /// The task's group and depth (see [`TaskNode`]).
    pub fn task_node(&self) -> TaskNode {
        self.header.node
    }

    /// A client whose tasks are subtasks of this one: same TaskNode group, one level
    /// deeper. Waiting on them parks this task's coroutine, not the worker.
    pub fn client(&self) -> Client {
        self.host.client(Some(Parent {
            node: self.header.node,
            charge: self.bulk.and_then(BulkShare::for_subtasks),
        }))
    }

    /// Parks this task for `duration`, at most [`MAX_PERIOD`] (a year; longer sleeps
    /// are cut to it, so no deadline overflows); the worker runs other tasks meanwhile,
    /// and the task resumes on the same worker thread.
    pub fn sleep(&self, duration: Duration) {
        if !duration.is_zero() {
            crate::coroutine::sleep(duration.min(MAX_PERIOD));
        }
    }

    /// Lets other tasks of this worker run before this one goes on.
    pub fn yield_now(&self) {
        crate::coroutine::yield_now();
    }

    /// The runtime itself, for modules that manage it (the admin chimod).
    pub fn runtime(&self) -> RuntimeHandle {
        RuntimeHandle {
            host: self.host.me(),
        }
    }
}

/// Management access to a runtime, for the admin chimod and for tools.
#[derive(Clone)]
pub struct RuntimeHandle {
    host: Arc<dyn Host>,
}

impl RuntimeHandle {
    pub(crate) fn new(host: Arc<dyn Host>) -> Self {
        RuntimeHandle { host }
    }

    /// Gets the pool named in `request`, or creates it (its containers are built by the
    /// module's `create` task, run from `ctx`'s task, for the same caller: see
    /// [`RunContext::unprivileged_caller`]). A pool created for an unprivileged caller
    /// counts against its uid's `quotas.containers`; in a cluster such a caller may only
    /// open pools (the other nodes could not tell who asked).
    pub fn get_or_create_pool(
        &self,
        ctx: &RunContext,
        request: &CreatePoolRequest,
    ) -> Result<PoolInfo, TaskError> {
        self.host
            .get_or_create_pool((ctx.task_id(), ctx.task_node()), request, ctx.bulk)
    }

    /// Destroys a pool. A task that runs for a uid without admin rights (see
    /// [`RunContext::unprivileged_caller`]) may destroy only the pools that uid created:
    /// others fail with [`TaskError::PermissionDenied`].
    pub fn destroy_pool(&self, ctx: &RunContext, pool: PoolId) -> Result<(), TaskError> {
        let parent = (ctx.task_id(), ctx.task_node());
        self.host
            .destroy_pool(parent, pool, ctx.unprivileged_caller())
    }

    /// Starts a clean stop on another thread and returns at once; in-flight tasks get
    /// `grace` to finish (the caller's own task, at `ctx`'s depth, is not waited for).
    /// Fails with [`TaskError::RuntimeThread`] (and the runtime serves on) if that
    /// thread cannot be started.
    pub fn stop_from_task(&self, ctx: &RunContext, grace: Duration) -> Result<(), TaskError> {
        let host = self.host.clone();
        let own = u64::from(ctx.task_node().depth) + 1;
        let thread = "chimaera-stop";
        std::thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || host.stop(grace, own))
            .map(drop)
            .map_err(|err| TaskError::RuntimeThread {
                thread: thread.to_owned(),
                detail: err.to_string(),
            })
    }

    /// Waits until every task that was in flight when it was called is done, except the
    /// caller's own (`ctx`, and the tasks it is nested in) and other flushes; tasks
    /// submitted meanwhile are not waited for. Returns how many tasks completed
    /// meanwhile.
    pub fn flush(&self, ctx: &RunContext) -> u64 {
        self.host.flush(ctx.task_node())
    }

    /// Task replicas in flight now.
    pub fn inflight(&self) -> u64 {
        self.host.inflight()
    }

    /// Task replicas completed since start.
    pub fn completed(&self) -> u64 {
        self.host.completed()
    }

    /// Periodic task replicas alive now: running, or sleeping until their next run.
    pub fn periodic_tasks(&self) -> u64 {
        self.host.periodic_tasks()
    }

    /// Task coroutines alive now (waiting tasks, each worker's poller and spare, stacks
    /// leaked by overflows), and the most that may be (`max_coroutines`).
    pub fn coroutines(&self) -> crate::admin_api::CoroutineStatus {
        self.host.coroutines()
    }

    /// What each uid without admin rights that connected since the start holds against
    /// its quotas (the `quotas:` config keys), in uid order.
    pub fn uids(&self) -> Vec<crate::admin_api::UidStatus> {
        self.host.uids()
    }

    /// Every live pool.
    pub fn pools(&self) -> Vec<PoolInfo> {
        self.host.pools()
    }

    /// Whether the runtime still accepts tasks from clients.
    pub fn is_running(&self) -> bool {
        self.host.is_running()
    }

    /// Every worker with the number of tasks it has run, in id order.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.host.workers()
    }

    /// The instance name this runtime was configured with.
    pub fn instance(&self) -> &InstanceName {
        self.host.instance()
    }

    /// Client processes attached over shared memory.
    pub fn clients(&self) -> u32 {
        self.host.clients()
    }

    /// A snapshot of the runtime for the admin `Status` task running in `ctx`, which
    /// leaves itself out: its own task is not in flight, and the client that sent it
    /// over shared memory (and its client area) is not counted among the attached ones.
    ///
    /// An unprivileged caller (see [`RunContext::unprivileged_caller`]) sees its own uid
    /// alone among `uids` (which users use the runtime, and how much, is for admins),
    /// and no pool private to another uid (nor its containers and methods).
    pub fn status(&self, ctx: &RunContext) -> RuntimeStatus {
        self.host.status(StatusCaller {
            pool: ctx.pool_id(),
            method: ctx.method(),
            // A client process's own share (a subtask's holds no memory).
            from_shm_client: ctx.bulk_share().is_some_and(BulkShare::is_client_memory),
            unprivileged: ctx.unprivileged_caller(),
        })
    }

    /// This runtime's node in its cluster (0 for a single runtime).
    pub fn node(&self) -> NodeId {
        self.host.node()
    }

    /// Every node of the cluster and the state of this node's link to it (for `runtime
    /// status`); empty for a single runtime.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.host.peers()
    }

    /// Every pool's per-method counters (for exporters; nothing left out).
    pub fn method_stats(&self) -> Vec<MethodStatus> {
        self.host.method_stats()
    }
}
