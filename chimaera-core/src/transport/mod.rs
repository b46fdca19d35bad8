//! The seam between a [`Client`](crate::Client) and the runtime it talks to.
//!
//! A [`Transport`] carries tasks to one runtime and their results back. The client holds
//! one as `Arc<dyn Transport>` and never asks which kind it is: the in-process transport
//! (`inproc`) queues tasks on the runtime's lanes directly, the
//! shared-memory one ([`crate::transport::shm`]) writes them into this process's client
//! area. A network transport plugs in here the same way.
//!
//! What every transport promises:
//!
//! * **Typed refusals.** A task the runtime refuses (unknown pool or method, a query
//!   outside the pool, a runtime that stopped or disowned this client) never runs; the
//!   error comes back from [`Transport::submit`] when the transport can tell at once
//!   (in process), else as the call's answer (a peer decides). Callers treat both alike.
//! * **Ordering.** A task submitted after another's `submit` returned (on any thread
//!   that saw it return) is queued after it; tasks that land on the same lane start in
//!   queue order. Nothing is promised across lanes, nor about when a task that waits
//!   (a lock, a subtask, a timer) resumes.
//! * **Buffers.** The caller owns its input bytes: `submit` has copied (or, in process,
//!   taken) them when it returns. Bulk arguments lying in a [`Buffer`] of this transport
//!   ([`Transport::allocate_buffer`], resolved by [`Transport::bulk_ref`]) travel by
//!   reference, so the peer reads and writes the caller's memory until the call is
//!   answered. While so, the buffer is marked lent ([`Transport::lend`]): dropping it
//!   does not give its memory back until the call is over.
//! * **A pending call** ([`Call`]) is answered exactly once — with the results, or
//!   with the error that ended it (`RuntimeStopped`, `Disowned`) when the peer is gone; a
//!   wait never hangs on a dead peer. It can be waited for by a blocked thread (with or
//!   without a deadline: [`PendingCall::wait_until`]) or polled by an async task
//!   ([`PendingCall::poll_done`]): the answer itself wakes the task — no thread per call
//!   and no polling loop (in process the call slot or completion wakes it; over shared
//!   memory one reply-watcher thread per connection, started by the first poll, sleeps
//!   on the connection's reply bell).
//! * **Abandoning.** Dropping a pending call, or [`abandon`](Call::abandon)ing it
//!   when its deadline passed, discards its late reply; a transport that holds a resource
//!   per call (a shared-memory slot) frees it without waiting for the handler, which is
//!   not stopped. If [`Transport::borrows_caller_memory`], the typed
//!   [`Pending`](crate::Pending) that lent buffers by reference is never abandoned: it
//!   waits for the answer when dropped (and ignores its deadline), so the peer is done
//!   with the buffers before the borrow ends.
//! * **Periodic tasks** are stopped through the [`CancelPeriodic`] handle `spawn` gave;
//!   they also end with their pool, their runtime or (for a client process) their client.
//!
//! **Calls without allocation.** A submission returns a [`Call`]: an enum over the
//! pending calls of the transports in this crate (an in-process call's pooled slot, see
//! [`call`], and a shared-memory call), so the common calls need no box; a transport written elsewhere hands back any [`PendingCall`]
//! boxed ([`Call::new`]).
pub mod call;
pub(crate) mod inproc;
pub mod shm;

use crate::bulk::{Buffer, BufferError, BulkRef, LendState};
use crate::codec::{Bytes, OutputBuffer};
use crate::error::TaskError;
pub(crate) use crate::transport::call::decode_first;
use crate::transport::call::SlotCall;
pub use crate::transport::call::{Results, Route, Schedule};
use crate::transport::shm::client::ShmCall;
use std::any::Any;
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

/// Which kind of transport a client uses, for display and diagnostics only: behaviour
/// differs through the [`Transport`] methods, never by matching on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Tasks are queued straight on the runtime's lanes, in this process.
    InProcess,
    /// Tasks go through this process's client area of the runtime's shared memory.
    SharedMemory,
}

/// Carries tasks to one runtime and their results back (see the module docs for what an
/// implementation promises).
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Which kind this is (for display).
    fn kind(&self) -> TransportKind;

    /// Queues one task with `input` (`schedule` `None`: a call whose results the returned
    /// handle waits for).
    fn submit(
        &self,
        route: Route,
        input: Bytes,
        schedule: Option<Schedule>,
    ) -> Result<Call, TaskError>;

    /// Queues one call whose input `encode` archives. Transports that copy the input
    /// anyway override this to encode into a reused buffer.
    fn submit_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<Call, TaskError> {
        let mut buffer = OutputBuffer::default();
        encode(&mut buffer)?;
        self.submit(route, buffer.into_bytes(), None)
    }

    /// Runs one call start to finish on the caller's thread: `encode` archives its input,
    /// `decode` gets its result (the first error by container wins, as
    /// [`Call::wait_first`]). Past `deadline` the call is abandoned and this returns
    /// `Ok(false)`. What a blocking call needs, with no handle: transports whose handle
    /// costs something per call (a reference counted, a drop) override it.
    fn call_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
        deadline: Option<Instant>,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<bool, TaskError> {
        let call = self.submit_with(route, encode)?;
        if let Some(deadline) = deadline {
            if !call.wait_until(deadline) {
                call.abandon();
                return Ok(false);
            }
        }
        call.wait_first(decode).map(|()| true)
    }

    /// Queues a fire-and-forget or periodic task once the runtime accepted it; a periodic
    /// task comes with the handle that stops it.
    fn spawn(
        &self,
        route: Route,
        input: Bytes,
        schedule: Schedule,
    ) -> Result<Option<Box<dyn CancelPeriodic>>, TaskError>;

    /// A zeroed, page-aligned buffer whose bytes travel by reference when they can.
    fn allocate_buffer(&self, len: usize) -> Result<Buffer, BufferError>;

    /// How `bytes` travels as a bulk argument: by reference when it lies in a buffer of
    /// this transport the peer can reach, inline otherwise.
    fn bulk_ref<'a>(&self, bytes: &'a [u8]) -> BulkRef<'a>;

    /// Marks the buffer of this transport holding `bytes` lent to a call until the guard
    /// drops; `None` when `bytes` travels by copy.
    fn lend(&self, bytes: &[u8]) -> Option<LendGuard>;

    /// Whether the peer may read or write caller memory until a call is answered (so a
    /// dropped call that lent buffers must be waited for).
    fn borrows_caller_memory(&self) -> bool;

    /// Why calls fail, if the peer is gone (stopped, dead, or disowned this client).
    fn peer_gone(&self) -> Option<TaskError>;

    /// The implementation, for tests that reach below the seam.
    fn as_any(&self) -> &dyn Any;
}

/// A submitted call, answered once.
pub trait PendingCall: Send {
    /// Whether every replica has answered (waiting would not block).
    fn is_done(&self) -> bool;

    /// Waits for every replica's result.
    fn wait(self: Box<Self>) -> Results;

    /// Whether every replica has answered (or the peer is gone, so waiting would not
    /// block); if not, `waker` is woken when that changes. A later poll's waker replaces
    /// an earlier one. No thread may be set aside per call to do this.
    fn poll_done(&self, waker: &Waker) -> bool;

    /// Blocks until every replica has answered (or the peer is gone) or `deadline`
    /// passed; returns whether waiting would no longer block.
    fn wait_until(&self, deadline: Instant) -> bool;

    /// Gives up on the call before its answer: the answer, when it comes, is discarded.
    /// Transports that hold a resource until the answer (a shared-memory slot) release
    /// it without waiting for the handler. Dropping a pending call abandons it too.
    fn abandon(self: Box<Self>) {}

    /// Waits and hands the result of the call to `decode`: the first error by container
    /// wins, else the lowest container's output is decoded.
    /// Transports override this to decode small outputs without allocating.
    fn wait_first(
        self: Box<Self>,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        decode_first(self.wait(), decode)
    }
}

/// A submitted call as a transport hands it back, answered once (see the module docs).
///
/// Dropping it abandons the call, as [`abandon`](Self::abandon) does.
pub struct Call(CallKind);

enum CallKind {
    /// An in-process call with one replica: its pooled slot.
    Slot(SlotCall),
    /// A call over shared memory.
    SharedMemory(ShmCall),
    /// A call of a transport written outside this crate.
    Other(Box<dyn PendingCall>),
}

impl Call {
    /// The call `pending` of a transport written outside this crate.
    pub fn new(pending: impl PendingCall + 'static) -> Call {
        Call(CallKind::Other(Box::new(pending)))
    }

    pub(crate) fn slot(call: SlotCall) -> Call {
        Call(CallKind::Slot(call))
    }

    pub(crate) fn shared_memory(call: ShmCall) -> Call {
        Call(CallKind::SharedMemory(call))
    }

    /// Whether every replica has answered (waiting would not block).
    pub fn is_done(&self) -> bool {
        match &self.0 {
            CallKind::Slot(call) => call.is_done(),
            CallKind::SharedMemory(call) => call.is_done(),
            CallKind::Other(call) => call.is_done(),
        }
    }

    /// Waits for every replica's result.
    pub fn wait(self) -> Results {
        match self.0 {
            CallKind::Slot(call) => call.wait(),
            CallKind::SharedMemory(call) => call.wait(),
            CallKind::Other(call) => call.wait(),
        }
    }

    /// See [`PendingCall::poll_done`].
    pub fn poll_done(&self, waker: &Waker) -> bool {
        match &self.0 {
            CallKind::Slot(call) => call.poll_done(waker),
            CallKind::SharedMemory(call) => call.poll_done(waker),
            CallKind::Other(call) => call.poll_done(waker),
        }
    }

    /// See [`PendingCall::wait_until`].
    pub fn wait_until(&self, deadline: Instant) -> bool {
        match &self.0 {
            CallKind::Slot(call) => call.wait_until(Some(deadline)),
            CallKind::SharedMemory(call) => call.wait_until(deadline),
            CallKind::Other(call) => call.wait_until(deadline),
        }
    }

    /// See [`PendingCall::abandon`].
    pub fn abandon(self) {
        match self.0 {
            // Dropping the slot's handle gives the slot back in a new generation.
            CallKind::Slot(call) => drop(call),
            CallKind::SharedMemory(call) => call.abandon(),
            CallKind::Other(call) => call.abandon(),
        }
    }

    /// See [`PendingCall::wait_first`]; no allocation for an in-process call with one
    /// replica nor for a small output over shared memory.
    pub fn wait_first(
        self,
        decode: &mut dyn FnMut(&[u8]) -> Result<(), TaskError>,
    ) -> Result<(), TaskError> {
        match self.0 {
            CallKind::Slot(call) => call.wait_first(decode),
            CallKind::SharedMemory(call) => call.wait_first(decode),
            CallKind::Other(call) => call.wait_first(decode),
        }
    }
}

impl From<Box<dyn PendingCall>> for Call {
    fn from(pending: Box<dyn PendingCall>) -> Call {
        Call(CallKind::Other(pending))
    }
}

/// Stops one periodic task.
pub trait CancelPeriodic: Send + Sync {
    /// Stops the task after its current run.
    fn cancel(&self) -> Result<(), TaskError>;
}

/// A buffer marked lent to one call; dropping it gives the buffer back (and frees it if
/// it was dropped meanwhile).
pub struct LendGuard(Arc<LendState>);

impl LendGuard {
    pub(crate) fn new(state: Arc<LendState>) -> Self {
        LendGuard(state)
    }
}

impl Drop for LendGuard {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

impl std::fmt::Debug for LendGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LendGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::aligned_copy;

    fn ok(byte: u8) -> Result<Bytes, TaskError> {
        Ok(aligned_copy(&[byte]))
    }

    #[test]
    fn the_first_error_by_container_wins_over_any_output() {
        let results = vec![(0, ok(1)), (1, Err(TaskError::NotRun)), (2, ok(3))];
        assert_eq!(
            decode_first(results, |bytes| Ok(bytes[0])),
            Err(TaskError::NotRun)
        );
    }

    #[test]
    fn the_lowest_container_output_is_decoded() {
        let results = vec![(0, ok(7)), (1, ok(8))];
        assert_eq!(decode_first(results, |bytes| Ok(bytes[0])), Ok(7));
    }

    #[test]
    fn no_replica_is_an_empty_query() {
        assert_eq!(
            decode_first(Vec::new(), |bytes| Ok(bytes.len())),
            Err(TaskError::EmptyQuery)
        );
    }
}
