//! The in-process [`Transport`]: a call with one replica is posted to the worker that
//! routes it (and normally runs it), other tasks are queued straight on their
//! containers' lanes; the caller waits on the call's slot or completion.
//!
//! It reaches the runtime only through [`LocalRuntime`] (which the runtime implements),
//! so this file does not depend on `runtime/mod.rs`. Inputs are archived into the calling
//! thread's own reusable buffer (with rkyv's scratch space and shared-pointer table kept
//! from call to call) and made the task's input there: a small one copied into the task
//! itself, a larger one handed over with the buffer's bytes (the task gives them back
//! when dropped). A call with one replica waits on a pooled call slot
//! (`runtime::task::CallSlot`), so a call allocates nothing in steady state. Bulk
//! arguments are always copied (a [`Buffer`] here is heap memory), so the runtime never
//! holds caller memory and a dropped call need not be waited for. A client made inside
//! a task carries the parent's [`TaskNode`]: its tasks are subtasks, which the coroutine
//! locks let through a lock their parent holds, and which a draining runtime still takes;
//! they also carry what counts them against the quotas of the uid whose task made them
//! (see `crate::quota`).
use crate::bulk::{Buffer, BufferError, BulkRef, BulkWire};
use crate::client::Client;
use crate::codec::{recycled_bytes, Bytes, OutputBuffer, SliceRef};
use crate::error::TaskError;
use crate::ids::PoolId;
use crate::ids::TaskNode;
use crate::runtime::parent::Parent;
use crate::runtime::task::{TaskInput, INLINE_INPUT};
use crate::transport::{
    Call, CancelPeriodic, LendGuard, Route, Schedule, Transport, TransportKind,
};
use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A queued task: the pending call of a call, the cancel handle of a periodic task.
pub(crate) type Queued = (Option<Call>, Option<Box<dyn CancelPeriodic>>);

/// What the in-process transport needs from its runtime (which implements it, so this
/// file does not depend on the runtime's internals).
pub(crate) trait LocalRuntime: Send + Sync {
    /// Queues one task (a subtask of `parent` if any).
    fn enqueue_local(
        &self,
        parent: Option<&Parent>,
        route: Route,
        input: TaskInput,
        schedule: Option<Schedule>,
    ) -> Result<Queued, TaskError>;

    /// Makes a call (no schedule): posted to a worker that routes it when it has one
    /// replica on this node (`hint` remembers which worker), else queued as
    /// [`enqueue_local`](Self::enqueue_local) queues it.
    fn call_local(
        &self,
        parent: Option<&Parent>,
        route: Route,
        input: TaskInput,
        hint: &PostHint,
    ) -> Result<Call, TaskError>;

    /// Whether a task with this parent would be accepted now.
    fn accepts(&self, parent: Option<TaskNode>) -> bool;
}

/// Which worker a client's calls to the pool it called last are posted to, so that the
/// next call skips the pool lookup (see [`LocalRuntime::call_local`]). One word, so a
/// reader never pairs one pool with another's worker.
#[derive(Debug, Default)]
pub(crate) struct PostHint(AtomicU64);

impl PostHint {
    /// `major << 32 | minor << 16 | worker` (0 remembers nothing: it would name pool
    /// `0.0`, which never exists); `None` when the minor or the worker does not fit (then
    /// each call to that pool looks it up).
    fn word(pool: PoolId, worker: usize) -> Option<u64> {
        let minor = u16::try_from(pool.minor).ok()?;
        let worker = u16::try_from(worker).ok()?;
        Some(u64::from(pool.major) << 32 | u64::from(minor) << 16 | u64::from(worker))
    }

    /// The worker remembered for `pool`, if any.
    pub(crate) fn get(&self, pool: PoolId) -> Option<usize> {
        let word = self.0.load(Ordering::Relaxed);
        let same_pool = word >> 32 == u64::from(pool.major)
            && (word >> 16) & 0xFFFF == u64::from(pool.minor)
            && word != 0;
        same_pool.then_some((word & 0xFFFF) as usize)
    }

    /// Remembers that `pool`'s calls are posted to `worker`.
    pub(crate) fn remember(&self, pool: PoolId, worker: usize) {
        if let Some(word) = Self::word(pool, worker) {
            self.0.store(word, Ordering::Relaxed);
        }
    }
}

/// Queues tasks on a runtime in this process.
pub(crate) struct InProcess {
    runtime: Arc<dyn LocalRuntime>,
    parent: Option<Parent>,
    hint: PostHint,
}

impl InProcess {
    /// A transport to `runtime`, whose tasks are subtasks of `parent` if any.
    pub(crate) fn new(runtime: Arc<dyn LocalRuntime>, parent: Option<Parent>) -> Self {
        InProcess {
            runtime,
            parent,
            hint: PostHint::default(),
        }
    }

    /// Queues a task whose input is made: a call (no schedule) as `call_local` takes it.
    fn submit_input(
        &self,
        route: Route,
        input: TaskInput,
        schedule: Option<Schedule>,
    ) -> Result<Call, TaskError> {
        if schedule.is_none() {
            return self
                .runtime
                .call_local(self.parent.as_ref(), route, input, &self.hint);
        }
        let (call, _) = self
            .runtime
            .enqueue_local(self.parent.as_ref(), route, input, schedule)?;
        call.ok_or(TaskError::NotRun)
    }
}

thread_local! {
    /// The buffer this thread archives its in-process calls' inputs in, call after call.
    static INPUT_BUFFER: RefCell<OutputBuffer> = RefCell::new(OutputBuffer::reusable());
}

/// Archives an input with `encode` in `buffer` and makes it a task's input: a small
/// archive is copied into the input itself, a larger one keeps the bytes it was archived
/// in (the buffer takes recycled ones in their place): never a second copy of a large
/// input.
fn archive_input(
    buffer: &mut OutputBuffer,
    encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
) -> Result<TaskInput, TaskError> {
    if let Err(err) = encode(buffer) {
        // It may have grown before it failed.
        buffer.trim();
        return Err(err);
    }
    let archive = buffer.as_slice();
    if archive.len() <= INLINE_INPUT {
        // Nothing to trim: only a large archive (or a failed one) grows the buffer, and
        // it is trimmed right after that one.
        return Ok(TaskInput::copied(archive));
    }
    let mut bytes = recycled_bytes();
    buffer.swap_bytes(&mut bytes);
    buffer.trim();
    Ok(TaskInput::from(bytes))
}

/// A client of `runtime` in this process, whose tasks are subtasks of `parent` if any.
pub(crate) fn client(runtime: Arc<dyn LocalRuntime>, parent: Option<Parent>) -> Client {
    Client::with_transport(Arc::new(InProcess::new(runtime, parent)))
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("parent", &self.parent)
            .finish()
    }
}

impl Transport for InProcess {
    fn kind(&self) -> TransportKind {
        TransportKind::InProcess
    }

    fn submit(
        &self,
        route: Route,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<Call, TaskError> {
        self.submit_input(route, TaskInput::from(input), schedule)
    }

    /// Archives the input in this thread's reusable buffer (see the module docs): no
    /// allocation once warm, and no buffer taken and given back per call.
    fn submit_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<Call, TaskError> {
        let input = INPUT_BUFFER
            .try_with(|buffer| match buffer.try_borrow_mut() {
                Ok(mut buffer) => Some(archive_input(&mut buffer, encode)),
                // In use further up this thread's stack (an input whose archiving calls
                // the runtime): a buffer of this call's own, below.
                Err(_) => None,
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| archive_input(&mut OutputBuffer::reusable(), encode))?;
        self.submit_input(route, input, None)
    }

    fn spawn(
        &self,
        route: Route,
        input: Bytes,
        schedule: Schedule,
    ) -> Result<Option<Box<dyn CancelPeriodic>>, TaskError> {
        let (_, cancel) = self.runtime.enqueue_local(
            self.parent.as_ref(),
            route,
            TaskInput::from(input),
            Some(schedule),
        )?;
        Ok(cancel)
    }

    fn allocate_buffer(&self, len: usize) -> Result<Buffer, BufferError> {
        Buffer::heap(len)
    }

    fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a> {
        BulkWire::Inline(SliceRef(bytes))
    }

    fn lend(&self, _bytes: &[u8]) -> Option<LendGuard> {
        None
    }

    fn borrows_caller_memory(&self) -> bool {
        false
    }

    fn peer_gone(&self) -> Option<TaskError> {
        let parent = self.parent.as_ref().map(|parent| parent.node);
        (!self.runtime.accepts(parent)).then_some(TaskError::RuntimeStopped)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
