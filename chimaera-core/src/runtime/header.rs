//! The fixed facts of one task replica, apart from its input and its reply.
//!
//! A [`TaskHeader`] is plain data (`Copy`): what a worker needs to run a replica and what
//! its handler may ask about it through its [`RunContext`](crate::RunContext). It names
//! the pool by id only; the pool itself travels with the task (`Task::pool`), so this
//! file sits below everything that runs tasks.
use crate::ids::{ContainerId, MethodId, PoolId, TaskNode};
use crate::query::PoolQuery;
use std::time::Duration;

/// The longest period of a periodic task (one year), and the longest
/// [`RunContext::sleep`](crate::RunContext::sleep).
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What a worker needs to know to run a task, besides its input.
#[derive(Clone, Copy, Debug)]
pub struct TaskHeader {
    /// Unique within the runtime.
    pub id: u64,
    /// The pool the task was sent to.
    pub pool: PoolId,
    /// The method to run.
    pub method: MethodId,
    /// The container of `pool` that runs this replica.
    pub container: ContainerId,
    /// The lane of the container's local queue it was queued on (its `Monitor` choice).
    pub lane: u32,
    /// The query the task was submitted with.
    pub query: PoolQuery,
    /// The group of the task (for coroutine locks) and its nesting depth.
    pub node: TaskNode,
    /// The epoch parity the task (or this run of a periodic task) is counted in while in
    /// flight (see `flush.rs`).
    pub(crate) parity: u8,
}
