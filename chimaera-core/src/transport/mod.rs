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
//! * **A pending call** ([`PendingCall`]) is answered exactly once — with the results, or
//!   with the error that ended it (`RuntimeStopped`, `Disowned`) when the peer is gone; a
//!   wait never hangs on a dead peer. It can be waited for by a blocked thread (with or
//!   without a deadline: [`PendingCall::wait_until`]) or polled by an async task
//!   ([`PendingCall::poll_done`]): the answer itself wakes the task — no thread per call
//!   and no polling loop (in process the completion wakes it; over shared memory one
//!   reply-watcher thread per connection, started by the first poll, sleeps on the
//!   connection's reply bell).
//! * **Abandoning.** Dropping a pending call, or [`abandon`](PendingCall::abandon)ing it
//!   when its deadline passed, discards its late reply; a transport that holds a resource
//!   per call (a shared-memory slot) frees it without waiting for the handler, which is
//!   not stopped. If [`Transport::borrows_caller_memory`], the typed
//!   [`Pending`](crate::Pending) that lent buffers by reference is never abandoned: it
//!   waits for the answer when dropped (and ignores its deadline), so the peer is done
//!   with the buffers before the borrow ends.
//! * **Periodic tasks** are stopped through the [`CancelPeriodic`] handle `spawn` gave;
//!   they also end with their pool, their runtime or (for a client process) their client.
pub(crate) mod inproc;
pub mod shm;

use crate::bulk::{Buffer, BufferError, BulkRef, LendState};
use crate::codec::{Bytes, OutputBuffer};
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId};
use crate::query::PoolQuery;
use std::any::Any;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// How a task submitted with a client's `spawn_*` method runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Schedule {
    /// Run once; nobody waits for the result, the runtime frees the task when done.
    FireAndForget,
    /// Run now and again every `period` after each run ends, until cancelled through
    /// its [`TaskHandle`](crate::TaskHandle), its pool is destroyed or the runtime stops.
    /// `period` is at most [`MAX_PERIOD`](crate::runtime::header::MAX_PERIOD) (one year); a longer
    /// one fails with `PeriodTooLong`.
    Periodic(Duration),
}

/// Every replica's output bytes (or error), by container.
pub type Results = Vec<(ContainerId, Result<Bytes, TaskError>)>;

/// Which kind of transport a client uses, for display and diagnostics only: behaviour
/// differs through the [`Transport`] methods, never by matching on this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Tasks are queued straight on the runtime's lanes, in this process.
    InProcess,
    /// Tasks go through this process's client area of the runtime's shared memory.
    SharedMemory,
}

/// Where a task goes and how it is run.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The pool.
    pub pool: PoolId,
    /// The method of the pool's chimod.
    pub method: MethodId,
    /// Which containers run it.
    pub query: PoolQuery,
    /// Send it through the network path even to containers of this node (the client's
    /// force-net switch, [`Client::with_force_net`](crate::Client::with_force_net)); only
    /// a runtime that is one node of a cluster has a network path, others ignore it.
    pub force_net: bool,
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
    ) -> Result<Box<dyn PendingCall>, TaskError>;

    /// Queues one call whose input `encode` archives. Transports that copy the input
    /// anyway override this to encode into a reused buffer.
    fn submit_with(
        &self,
        route: Route,
        encode: &mut dyn FnMut(&mut OutputBuffer) -> Result<(), TaskError>,
    ) -> Result<Box<dyn PendingCall>, TaskError> {
        let mut buffer = OutputBuffer::default();
        encode(&mut buffer)?;
        self.submit(route, buffer.into_bytes(), None)
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

/// The result of a task from its replicas' outputs: the first error (by container)
/// wins, else the lowest container's output is decoded.
pub(crate) fn decode_first<T>(
    results: Results,
    decode: impl FnOnce(&[u8]) -> Result<T, TaskError>,
) -> Result<T, TaskError> {
    let mut first_output = None;
    for (_, result) in results {
        first_output.get_or_insert(result?);
    }
    match first_output {
        Some(bytes) => decode(&bytes),
        None => Err(TaskError::EmptyQuery),
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
