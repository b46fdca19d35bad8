//! [`RunContext`]: a task's view of the runtime while it runs.
//!
//! Per-task state lives here. A task's coroutine never leaves its worker's thread (see
//! [`crate::coroutine`]), so thread-locals and thread-affine `std` values are sound in a
//! handler even across waits — but a thread-local is shared by every task of that
//! worker, so state of *one task* belongs here. A context is created by the worker for
//! one run of one task and dropped after it.
use crate::bulk::BulkShare;
use crate::client::Client;
use crate::ids::{ContainerId, MethodId, PoolId, TaskNode};
use crate::runtime::pool::Pool;
use crate::runtime::task::{TaskHeader, MAX_PERIOD};
use crate::runtime::{RuntimeHandle, Shared};
use std::sync::Arc;
use std::time::Duration;

/// What a running task knows about itself and can do with the runtime.
///
/// It borrows what the running task holds (its pool, the runtime, its client's data
/// share) for the handler's call, so making one per run costs no reference counting.
/// Handlers take it as `ctx: &mut RunContext`.
pub struct RunContext<'t> {
    header: TaskHeader,
    pool: &'t Arc<Pool>,
    shared: &'t Arc<Shared>,
    bulk: Option<&'t Arc<BulkShare>>,
}

impl<'t> RunContext<'t> {
    pub(crate) fn new(header: TaskHeader, pool: &'t Arc<Pool>, shared: &'t Arc<Shared>) -> Self {
        RunContext {
            header,
            pool,
            shared,
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

    /// The pool this task runs in.
    pub fn pool_id(&self) -> PoolId {
        self.header.pool
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        self.pool.name()
    }

    /// The container running this task.
    pub fn container_id(&self) -> ContainerId {
        self.header.container
    }

    /// The lane of the container's local queue this task was queued on.
    pub fn lane(&self) -> u32 {
        self.header.lane
    }

    /// How many containers the pool has.
    pub fn containers(&self) -> u32 {
        self.pool.container_count()
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
        crate::transport::inproc::client(self.shared.clone(), Some(self.header.node))
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
        RuntimeHandle::new(self.shared.clone())
    }
}
