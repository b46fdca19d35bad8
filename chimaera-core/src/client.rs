//! Clients: how tasks get into the runtime, and how callers wait for results.
//!
//! [`Client::submit`] resolves the [`PoolQuery`] to containers, makes one replica per
//! container (the first ones through the module's `NewCopy`), asks each container's
//! `Monitor` for a lane and queues the replica there. Errors that can be known before
//! queuing (unknown pool or method, a query outside the pool, a runtime that stopped)
//! are returned at once and nothing is queued.
//!
//! A client made by [`RunContext::client`](crate::RunContext::client) submits
//! *subtasks*: they inherit the parent's TaskNode group, which the coroutine locks use
//! to let them through a lock their parent holds.
use crate::codec::Bytes;
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId, TaskNode};
use crate::query::PoolQuery;
use crate::runtime::Shared;
use crate::task::{Completion, Schedule, Task, TaskHeader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What queuing a task hands back: the completion to wait on (none for fire-and-forget
/// and periodic tasks) and the cancel flag of a periodic task.
type Enqueued = (Option<Arc<Completion>>, Option<Arc<AtomicBool>>);

/// A connection to a runtime, cheap to clone.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    parent: Option<TaskNode>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub(crate) fn in_process(shared: Arc<Shared>, parent: Option<TaskNode>) -> Self {
        Client { shared, parent }
    }

    /// Submits one task and returns the completion its replicas answer to.
    pub fn submit(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<Arc<Completion>, TaskError> {
        let (completion, _) = self.enqueue(pool, method, query, input, schedule)?;
        completion.ok_or(TaskError::NotRun)
    }

    /// Submits a fire-and-forget or periodic task.
    pub fn spawn(
        &self,
        pool: PoolId,
        method: MethodId,
        query: PoolQuery,
        schedule: Schedule,
        input: Bytes,
    ) -> Result<TaskHandle, TaskError> {
        let (_, cancel) = self.enqueue(pool, method, query, input, Some(schedule))?;
        Ok(TaskHandle { cancel })
    }

    fn enqueue(
        &self,
        pool_id: PoolId,
        method: MethodId,
        query: PoolQuery,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<Enqueued, TaskError> {
        let shared = &self.shared;
        if !shared.accepts(self.parent) {
            return Err(TaskError::RuntimeStopped);
        }
        let pool = shared
            .pools
            .get(pool_id)
            .ok_or(TaskError::UnknownPool { pool: pool_id })?;
        let module = pool.module;
        if module.info.method(method).is_none() {
            return Err(TaskError::UnknownMethod {
                module: module.info.name.to_owned(),
                method,
            });
        }
        let containers = pool.container_count();
        let dynamic = match query {
            PoolQuery::Dynamic => catch_unwind(AssertUnwindSafe(|| {
                (module.dynamic_container)(method, &input, containers)
            }))
            .ok()
            .flatten(),
            _ => None,
        };
        let targets = query.resolve(pool_id, containers, shared.node, dynamic)?;

        // Every replica's input exists before any is queued: a failing copy queues nothing.
        let replicas = targets.len();
        let mut inputs = Vec::with_capacity(replicas);
        for _ in 1..replicas {
            inputs.push((module.new_copy)(method, &input)?);
        }
        inputs.push(input);

        let id = shared.next_task_id();
        let node = match self.parent {
            Some(parent) => parent.child(),
            None => TaskNode { root: id, depth: 0 },
        };
        let (completion, period, cancel) = match schedule {
            None => (Some(Completion::new(replicas as u32)), None, None),
            Some(Schedule::FireAndForget) => (None, None, None),
            Some(Schedule::Periodic(period)) => {
                (None, Some(period), Some(Arc::new(AtomicBool::new(false))))
            }
        };
        for (container, input) in targets.zip(inputs) {
            let Some(slot) = pool.container(container) else {
                continue;
            };
            let lane_choice =
                catch_unwind(AssertUnwindSafe(|| slot.object.monitor(method, &input)))
                    .unwrap_or_default();
            let lane_index = lane_choice
                .resolve(module.info.lanes)
                .min(slot.lanes.len().saturating_sub(1));
            let lane = &slot.lanes[lane_index];
            shared.task_started();
            lane.push(Task {
                header: TaskHeader {
                    id,
                    pool: pool_id,
                    method,
                    container,
                    lane: lane_index as u32,
                    query,
                    node,
                    period,
                },
                pool: pool.clone(),
                input,
                reply: completion.clone(),
                cancel: cancel.clone(),
            });
        }
        Ok((completion, cancel))
    }
}

/// A submitted task whose result is not yet collected.
#[must_use = "a pending task does nothing unless waited for; use spawn_* for fire-and-forget"]
pub struct Pending<T> {
    completion: Arc<Completion>,
    decode: fn(&[u8]) -> Result<T, TaskError>,
}

impl<T> Pending<T> {
    /// Wraps a completion whose output bytes `decode` turns into `T`.
    pub fn new(completion: Arc<Completion>, decode: fn(&[u8]) -> Result<T, TaskError>) -> Self {
        Pending { completion, decode }
    }

    /// Whether every replica has answered (waiting would not block).
    pub fn is_done(&self) -> bool {
        self.completion.is_done()
    }

    /// Waits for the result. With several replicas the first error (by container) wins,
    /// else the result of the lowest container is returned.
    pub fn wait(self) -> Result<T, TaskError> {
        let results = self.completion.wait();
        let mut first_output = None;
        for (_, result) in results {
            let bytes = result?;
            first_output.get_or_insert(bytes);
        }
        match first_output {
            Some(bytes) => (self.decode)(&bytes),
            None => Err(TaskError::EmptyQuery),
        }
    }

    /// Waits for every replica and returns each one's result, by container.
    pub fn wait_all(self) -> Vec<(ContainerId, Result<T, TaskError>)> {
        let decode = self.decode;
        self.completion
            .wait()
            .into_iter()
            .map(|(container, result)| (container, result.and_then(|bytes| decode(&bytes))))
            .collect()
    }
}

/// A fire-and-forget or periodic task in the runtime.
#[derive(Debug)]
pub struct TaskHandle {
    cancel: Option<Arc<AtomicBool>>,
}

impl TaskHandle {
    /// Stops a periodic task after its current run (no effect on fire-and-forget tasks).
    pub fn cancel(&self) {
        if let Some(flag) = &self.cancel {
            flag.store(true, Ordering::Release);
        }
    }
}
