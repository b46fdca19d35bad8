//! Tasks in flight and the completions their callers wait on.
//!
//! A [`Task`] is owned by exactly one place at a time: the submitter builds it, a lane
//! holds it, a worker's coroutine runs it and then drops it (Rust's `Drop` is the
//! original's `Del`: an input buffer is given back, see [`TaskInput`]). Its result goes
//! to its [`Reply`]: a [`Completion`] shared with the caller through an `Arc`, or — for
//! the single replica of a call from a client process — straight to that call's
//! [`ReplySink`], with nothing to gather, or — for the single replica of a call from
//! this process — into a pooled [`CallSlot`].
//!
//! A call slot ([`crate::transport::call`]) takes the one replica of an in-process call:
//! pooled, so such a call allocates nothing in steady state.
//!
//! A [`LocalRequest`] is an in-process call on its way to the worker that routes it
//! (see `runtime/worker.rs`): it holds the call's reply until the task made from it
//! takes over, and answers `RuntimeStopped` itself if it is dropped unrouted, so no
//! caller waits forever.
//!
//! A completion expects one result per replica (a `Broadcast` has one per container).
//! Invariants: each replica stores exactly one result, then decrements `remaining` with
//! `Release`; a waiter that reads `remaining == 0` with `Acquire` sees every result.
//! A waiter spins briefly (a thread; yielding its CPU now and then, as the
//! shared-memory client does), then parks — a coroutine on a [`Blocker`], a thread with
//! `std::thread::park` (no allocation) — and the last replica unparks it. The waiter is
//! registered under the `waiter` lock and `remaining` re-checked after, so no wake-up is
//! lost. An async caller registers a [`Waker`] the same way instead of a blocker, and
//! the last replica wakes it: no thread waits for it.
//!
//! **Periodic tasks** sleep between runs on their [`CancelToken`], which wakes them the
//! moment it is cancelled (by their handle, their client's death, their pool's
//! destruction or the runtime's stop), so a cancelled task ends at once rather than
//! after its period. A period is at most [`MAX_PERIOD`] (the executor's timers are
//! `Instant` deadlines, which an unbounded duration would overflow): a longer one is
//! refused with `PeriodTooLong` when the task is submitted.
use crate::bulk::BulkShare;
use crate::codec::{aligned_copy, recycle, recycled_bytes, Bytes, OutputBuffer};
use crate::transport::call::{wait_for, Route, SlotReply, Waiter};
use crate::coroutine::Blocker;
use crate::error::TaskError;
use crate::ids::{ContainerId, MethodId, PoolId, TaskNode};
use crate::query::PoolQuery;
use crate::runtime::header::{TaskHeader, MAX_PERIOD};
use crate::runtime::parent::Parent;
use crate::runtime::pool::Pool;
use crate::quota::{MemoryReservation, UidQuotas};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

pub use crate::transport::call::Schedule;

/// One replica of a task, queued on a lane or running on a worker.
///
/// 192 bytes on 64-bit targets, three cache lines (asserted below): a task is moved into a lane's ring and
/// out of it, and an in-process call's task crosses from the caller's CPU to its
/// worker's, so every line counts. What only periodic tasks need is boxed
/// ([`Periodic`]), and [`ReplyTo`] carries a niche that lets `Option<Reply>` keep its
/// tag in the padding.
pub struct Task {
    /// Routing and identity.
    pub header: TaskHeader,
    /// The pool it runs in (held, so a destroyed pool lives until its tasks are done).
    pub pool: Arc<Pool>,
    /// The rkyv archive of the method's input tuple.
    pub input: TaskInput,
    /// Where the result goes; `None` for fire-and-forget and periodic tasks.
    pub reply: Option<Reply>,
    /// Set for a periodic task: its period and cancel token.
    pub periodic: Option<Box<Periodic>>,
    /// The submitting client's data share, which bulk arguments may reference. A
    /// periodic task holds it only while it runs, never while it sleeps.
    pub bulk: Option<Arc<BulkShare>>,
}

// Pinned where it was measured; 32-bit targets have smaller pointers.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Task>() == 192);
// A posted request and its ring word fill three whole cache lines (see `sync/ring.rs`).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<LocalRequest>() == 128);

/// What a periodic task has that others do not, boxed so that every task is smaller.
pub struct Periodic {
    /// Re-run every `period` after each run.
    pub period: Duration,
    /// Cancelled to stop the task.
    pub cancel: Arc<CancelToken>,
}

/// Inputs up to this many bytes travel inside their [`Task`] (see [`TaskInput`]).
pub const INLINE_INPUT: usize = 48;
// An inline input's length is kept in a `u8`.
const _: () = assert!(INLINE_INPUT <= u8::MAX as usize);

/// A task's input bytes (the rkyv archive of its input tuple).
///
/// A small input (at most [`INLINE_INPUT`] bytes, as most are) is copied into the task
/// itself when the task is made, and the buffer it was archived in is given back at once
/// ([`crate::codec::recycle`]), on the thread that filled it: so an in-process caller
/// reuses its own buffer call after call, and the worker that runs the task reads the
/// input from the task's own cache lines. A larger input keeps its buffer, given back
/// when the task is dropped; a client of a uid without admin rights has that buffer
/// counted against its `quotas.memory` meanwhile ([`TaskInput::charge`]).
pub struct TaskInput(InputBytes);

enum InputBytes {
    Inline { len: u8, bytes: InlineInput },
    /// The buffer, and what it holds of its client's uid's `quotas.memory`.
    Buffer(Bytes, MemoryReservation),
}

/// Aligned as [`Bytes`] are, so an inline input is read in place.
#[repr(C, align(16))]
struct InlineInput([u8; INLINE_INPUT]);

impl TaskInput {
    /// An input of `len` bytes, all written by `fill`: inside the task when small (no
    /// buffer taken at all), else in a recycled buffer.
    pub fn filled<E>(
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<TaskInput, E> {
        let mut input = TaskInput::default();
        input.fill(len, fill)?;
        Ok(input)
    }

    /// Makes this the input of `len` bytes that `fill` writes, in place: a transport
    /// fills the input where it waits to be taken into its task (see [`Submission`]).
    /// If `fill` fails, the input is left empty.
    #[inline]
    pub fn fill<E>(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if len > INLINE_INPUT {
            let mut buffer = recycled_bytes();
            buffer.resize(len, 0);
            let filled = fill(&mut buffer);
            *self = match filled {
                Ok(()) => TaskInput(InputBytes::Buffer(buffer, MemoryReservation::default())),
                Err(_) => {
                    recycle(buffer);
                    TaskInput::default()
                }
            };
            return filled;
        }
        if let InputBytes::Buffer(..) = self.0 {
            *self = TaskInput::default();
        }
        if let InputBytes::Inline { len: kept, bytes } = &mut self.0 {
            *kept = 0;
            fill(&mut bytes.0[..len])?;
            *kept = len as u8;
        }
        Ok(())
    }
}

impl Default for TaskInput {
    /// The empty input, inside the task.
    fn default() -> Self {
        TaskInput(InputBytes::Inline {
            len: 0,
            bytes: InlineInput([0; INLINE_INPUT]),
        })
    }
}

impl TaskInput {
    /// Counts a buffered input against `quotas` (its client's uid's `quotas.memory`)
    /// until it is dropped, or fails with `QuotaExceeded` past the quota: the runtime
    /// copies each input out of the client's memory, and a client that points many
    /// waiting tasks at one large region of its data share would otherwise have it hold
    /// a copy each. An input inside the task counts nothing (`quotas.tasks_in_flight`
    /// bounds those).
    pub(crate) fn charge(&mut self, quotas: &Arc<UidQuotas>) -> Result<(), TaskError> {
        if let InputBytes::Buffer(bytes, reservation) = &mut self.0 {
            if reservation.bytes() == 0 {
                // Its length: a recycled buffer's spare room is the recycler's, bounded.
                *reservation = quotas.reserve_memory(bytes.len() as u64)?;
            }
        }
        Ok(())
    }

    /// A copy of `bytes`: inside the task when small, else in a recycled buffer.
    pub fn copied(bytes: &[u8]) -> TaskInput {
        let Ok(input) = TaskInput::filled(bytes.len(), |dst| {
            dst.copy_from_slice(bytes);
            Ok::<(), std::convert::Infallible>(())
        });
        input
    }
}

impl From<Bytes> for TaskInput {
    fn from(bytes: Bytes) -> Self {
        if bytes.len() > INLINE_INPUT {
            return TaskInput(InputBytes::Buffer(bytes, MemoryReservation::default()));
        }
        let input = TaskInput::copied(&bytes);
        recycle(bytes);
        input
    }
}

impl std::ops::Deref for TaskInput {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            InputBytes::Inline { len, bytes } => &bytes.0[..usize::from(*len)],
            InputBytes::Buffer(bytes, _) => bytes,
        }
    }
}

impl Drop for TaskInput {
    fn drop(&mut self) {
        if let InputBytes::Buffer(bytes, _) = &mut self.0 {
            recycle(std::mem::take(bytes));
        }
    }
}

/// What the transport that queues a task attaches to it besides its input.
#[derive(Default)]
pub struct Origin {
    /// Receives a call's results when its caller is not a thread of this process.
    pub reply: Option<ReplyTo>,
    /// Stops a periodic task (the runtime makes one when absent).
    pub cancel: Option<Arc<CancelToken>>,
    /// The submitting client's data share, for bulk arguments passed by reference.
    pub bulk: Option<Arc<BulkShare>>,
    /// The worker whose poller queues the task (ingesting a client ring): a task for an
    /// idle lane of that worker is handed to a coroutine at once.
    pub local_worker: Option<usize>,
    /// The client asked for the network path even to this node's containers.
    pub force_net: bool,
    /// The pooled call slot an in-process caller waits on, when a worker routes its call
    /// (a [`LocalRequest`]); a call with neither this nor `reply` gets a fresh slot.
    pub slot: Option<SlotReply>,
    /// The caller was admitted (the runtime was running) when it handed the task over:
    /// a draining runtime still takes it, as it takes a task queued before the stop.
    pub admitted: bool,
}

/// An in-process call posted to a worker, which routes it on its own thread as it
/// routes a client process's task (see `runtime/worker.rs`, "Requests").
///
/// Small: the lines it fills are the ones that travel from the caller's core to the
/// worker's. A small input is copied in by the caller (its buffer recycled on the
/// caller's thread); the pool, its lanes and the task are touched by the worker only.
/// The reply stays in the request until routing is over (the submission routed gets a
/// second handle of the same generation; whichever answers first wins, see
/// [`SlotReply::duplicate`]), so a route that dies on the poller's stack still answers.
pub struct LocalRequest {
    input: TaskInput,
    route: Route,
    /// Boxed: a call with a parent (from a client made inside a task, used on a thread
    /// of its own) is rare, and the request then fits three lines with its ring word.
    parent: Option<Box<Parent>>,
    /// `None` once routed, or once answered.
    reply: Option<SlotReply>,
}

impl LocalRequest {
    /// A call of `route` with `input`, a subtask of `parent` if any, answered through
    /// `reply`.
    pub(crate) fn new(
        route: Route,
        parent: Option<&Parent>,
        input: TaskInput,
        reply: SlotReply,
    ) -> Self {
        LocalRequest {
            input,
            route,
            parent: parent.map(|parent| Box::new(parent.clone())),
            reply: Some(reply),
        }
    }

    /// The parent task, if any.
    pub fn parent(&self) -> Option<TaskNode> {
        self.parent.as_deref().map(|parent| parent.node)
    }

    /// Starts fetching the reply slot's line for writing (see [`SlotReply::prefetch`]).
    pub fn prefetch_reply(&self) {
        if let Some(reply) = &self.reply {
            reply.prefetch();
        }
    }

    /// The method called (for an error about the request).
    pub fn method(&self) -> MethodId {
        self.route.method
    }

    /// The request as a call routed by worker `worker`, taking its input, answered
    /// through a second handle of its reply (the request keeps its own until
    /// [`routed`](Self::routed)).
    pub fn submission(&mut self, worker: usize) -> Submission {
        let route = self.route;
        Submission {
            pool: route.pool,
            method: route.method,
            query: route.query,
            schedule: None,
            input: std::mem::take(&mut self.input),
            origin: Origin {
                reply: None,
                cancel: None,
                bulk: self.parent.as_deref().and_then(Parent::charge),
                local_worker: Some(worker),
                force_net: route.force_net,
                slot: self.reply.as_ref().map(SlotReply::duplicate),
                admitted: true,
            },
        }
    }

    /// Routing is over: the task made from the request answers (or the submission's
    /// reply did), so the request's own handle goes unused.
    pub fn routed(&mut self) {
        self.reply = None;
    }

    /// Answers the call with `error` now (unless it was answered already).
    pub fn fail(&mut self, error: TaskError) {
        if let Some(reply) = self.reply.take() {
            reply.deliver(0, Err(error));
        }
    }
}

impl Drop for LocalRequest {
    /// Dropped unrouted (its worker stopped first): the caller hears so.
    fn drop(&mut self) {
        self.fail(TaskError::RuntimeStopped);
    }
}

/// A task as a transport hands it to the runtime: its route, its input and its origin.
///
/// Passed by reference, and taken apart only where the task is made. A value moved
/// right after it was written, field by field, stalls the wide loads that copy it (the
/// store buffer cannot forward several narrow stores to one wide load), and a value
/// passed by value is copied again at each call on its way: on the shared-memory path
/// those copies were a tenth of an empty task's time in the runtime (`perf`).
#[derive(Default)]
pub struct Submission {
    /// The pool the task runs in.
    pub pool: PoolId,
    /// The method.
    pub method: MethodId,
    /// Which containers run it.
    pub query: PoolQuery,
    /// Fire-and-forget or periodic; `None` for a call.
    pub schedule: Option<Schedule>,
    /// The input, taken into the task when it is queued (left empty then).
    pub input: TaskInput,
    /// What the transport attaches; its parts are taken into the task.
    pub origin: Origin,
}

/// Stops a periodic task, waking its replicas if they sleep between runs.
///
/// No wake-up is lost: [`cancel`](Self::cancel) sets the flag before it takes the
/// sleepers' lock, and a replica checks the flag under that lock before it registers to
/// sleep.
#[derive(Debug, Default)]
pub struct CancelToken {
    cancelled: AtomicBool,
    sleepers: Mutex<Vec<Arc<Blocker>>>,
}

impl CancelToken {
    /// A token not cancelled yet.
    pub fn new() -> Arc<CancelToken> {
        Arc::new(CancelToken::default())
    }

    /// Cancels: the task runs no more; a replica sleeping between runs wakes now and
    /// ends.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let sleepers = std::mem::take(&mut *lock(&self.sleepers));
        for sleeper in sleepers {
            sleeper.unpark();
        }
    }

    /// Whether the token was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Parks the calling coroutine for `period` (at most [`MAX_PERIOD`]) or until
    /// cancelled; returns whether the task goes on (not cancelled).
    pub(crate) fn sleep(&self, period: Duration) -> bool {
        let blocker = Blocker::current();
        {
            let mut sleepers = lock(&self.sleepers);
            if self.is_cancelled() {
                return false;
            }
            sleepers.push(blocker.clone());
        }
        // A timeout is the period being over; a wake-up before it is a cancel (the loop
        // in the caller re-checks the flag either way).
        let _ = blocker.park(Some(period.min(MAX_PERIOD)));
        lock(&self.sleepers).retain(|sleeper| !Arc::ptr_eq(sleeper, &blocker));
        !self.is_cancelled()
    }
}

/// Where a task replica's result goes.
pub enum Reply {
    /// A completion gathering the results of every replica, with a waiter or a sink.
    Waiter(Arc<Completion>),
    /// The one replica of a call from outside the process: straight to the sink.
    Sink(ReplyTo),
    /// The one replica of a call from this process: into the call's pooled slot.
    Slot(SlotReply),
}

impl Reply {
    pub(crate) fn deliver(self, container: ContainerId, result: Result<&[u8], TaskError>) {
        match self {
            Reply::Waiter(completion) => completion.deliver(container, result.map(aligned_copy)),
            Reply::Sink(to) => to.complete_one(container, result),
            Reply::Slot(reply) => reply.deliver(container, result),
        }
    }
}

impl Task {
    /// The task's `tracing` span (target `chimaera::task`, level DEBUG): its pool's name,
    /// its method's name (or id, for a method the module does not list), its id and
    /// container. Disabled — and its fields never computed — unless a subscriber wants
    /// it; the worker makes it current with `coroutine::enter_span` for every stretch
    /// the task runs, waits excluded.
    pub fn span(&self) -> tracing::Span {
        tracing::debug_span!(
            target: "chimaera::task",
            "task",
            pool = %self.pool.name(),
            method = %MethodName(self),
            task = self.header.id,
            container = self.header.container,
        )
    }

    /// Delivers `result`, the output archived in `out` or the task's error, as
    /// [`complete`](Self::complete) does; an in-process caller's call slot takes a large
    /// output's bytes from `out` without a copy (`SlotReply::deliver_output`), leaving
    /// `out` other bytes to encode into.
    #[inline]
    pub fn complete_from(&mut self, result: Result<(), TaskError>, out: &mut OutputBuffer) {
        match (&self.reply, result) {
            (Some(Reply::Slot(_)), Ok(())) => {
                if let Some(Reply::Slot(reply)) = self.reply.take() {
                    reply.deliver_output(self.header.container, out);
                }
            }
            // A client process's reply (the hot path over shared memory) as before.
            (_, result) => self.complete(result.map(|()| out.as_slice())),
        }
    }

    /// Delivers `result` (the archived output) to whoever waits for this task, if anyone.
    /// Only the first call delivers: a task has one result.
    pub fn complete(&mut self, result: Result<&[u8], TaskError>) {
        // A sink is answered through a reference, with no copy of the reply first (see
        // `Submission`): that copy stalled the answer of every client process's call.
        if let Some(Reply::Sink(to)) = &self.reply {
            to.complete_one(self.header.container, result);
            self.reply = None;
        } else if let Some(reply) = self.reply.take() {
            reply.deliver(self.header.container, result);
        }
    }
}

/// A task's method by name, as the module's table lists it, else by id.
struct MethodName<'a>(&'a Task);

impl std::fmt::Display for MethodName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let method = self.0.header.method;
        match self.0.pool.module.info.method(method) {
            Some(info) => f.write_str(info.name),
            None => write!(f, "{method}"),
        }
    }
}

impl Drop for Task {
    /// A task dropped without a result (its coroutine could not be spawned, its queue was
    /// torn down) still answers its caller, so no waiter hangs.
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            reply.deliver(self.header.container, Err(TaskError::NotRun));
        }
    }
}

/// Where the results of a task go when its caller is not a thread of this process
/// (a client process over shared memory, later another node). One sink serves many
/// callers; a [`ReplyKey`] says which.
pub trait ReplySink: Send + Sync {
    /// Receives every replica's result for caller `key`, sorted by container, once.
    fn complete(&self, key: ReplyKey, results: Vec<(ContainerId, Result<Bytes, TaskError>)>);

    /// Receives the result of a task with a single replica (no gathering needed).
    fn complete_one(&self, key: ReplyKey, container: ContainerId, result: Result<&[u8], TaskError>);
}

/// Which caller of a [`ReplySink`] a result is for; the sink gives the words meaning (a
/// shared-memory server: client area, slot, generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyKey(pub [u32; 3]);

/// A sink and the caller it answers: cloned per task without allocating.
#[derive(Clone)]
pub struct ReplyTo {
    /// The sink.
    pub sink: Arc<dyn ReplySink>,
    /// The caller.
    pub key: ReplyKey,
    /// A byte with one valid value, in what would be padding: `Reply` and
    /// `Option<Reply>` keep their tags in it, so a task's reply takes 32 bytes, not 40.
    #[allow(dead_code)] // Never read: it is there for its layout.
    niche: Niche,
}

/// One valid value, so the 255 others are free for enclosing enums' tags.
#[derive(Clone, Copy)]
#[repr(u8)]
enum Niche {
    Only = 0,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Option<Reply>>() == 32);

impl ReplyTo {
    /// The caller `key` of `sink`.
    pub fn new(sink: Arc<dyn ReplySink>, key: ReplyKey) -> ReplyTo {
        ReplyTo {
            sink,
            key,
            niche: Niche::Only,
        }
    }

    /// Delivers the result of a single-replica task.
    pub fn complete_one(&self, container: ContainerId, result: Result<&[u8], TaskError>) {
        self.sink.complete_one(self.key, container, result);
    }
}

/// Results of one task's replicas, and the caller waiting for them.
pub struct Completion {
    remaining: AtomicU32,
    results: Mutex<Vec<(ContainerId, Result<Bytes, TaskError>)>>,
    waiter: Mutex<Option<Waiter>>,
    sink: Option<ReplyTo>,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("remaining", &self.remaining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Completion {
    /// A completion expecting `replicas` results.
    pub fn new(replicas: u32) -> Arc<Self> {
        Self::build(replicas, None)
    }

    /// A completion that hands the results to `sink` instead of a waiter.
    pub fn with_sink(replicas: u32, sink: ReplyTo) -> Arc<Self> {
        Self::build(replicas, Some(sink))
    }

    fn build(replicas: u32, sink: Option<ReplyTo>) -> Arc<Self> {
        Arc::new(Completion {
            remaining: AtomicU32::new(replicas),
            results: Mutex::new(Vec::with_capacity(replicas as usize)),
            waiter: Mutex::new(None),
            sink,
        })
    }

    /// Stores one replica's result; after the last one, wakes the waiter or feeds the sink.
    pub fn deliver(&self, container: ContainerId, result: Result<Bytes, TaskError>) {
        lock(&self.results).push((container, result));
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            match &self.sink {
                Some(to) => to.sink.complete(to.key, self.take_results()),
                None => {
                    if let Some(waiter) = lock(&self.waiter).take() {
                        waiter.wake();
                    }
                }
            }
        }
    }

    fn take_results(&self) -> Vec<(ContainerId, Result<Bytes, TaskError>)> {
        let mut results = std::mem::take(&mut *lock(&self.results));
        results.sort_by_key(|(container, _)| *container);
        results
    }

    /// Whether every replica has delivered.
    pub fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    /// Waits until every replica has delivered, then returns the results sorted by
    /// container. Parks the calling coroutine (or thread) rather than spinning long.
    pub fn wait(&self) -> Vec<(ContainerId, Result<Bytes, TaskError>)> {
        self.wait_until(None);
        self.take_results()
    }

    /// Waits until every replica has delivered or `deadline` passed; returns whether
    /// every replica has delivered.
    pub fn wait_until(&self, deadline: Option<Instant>) -> bool {
        // `deliver` unparks the registered waiter after the last result.
        wait_for(
            deadline,
            || self.is_done(),
            |waiter| {
                *lock(&self.waiter) = Some(waiter.handle());
                !self.is_done()
            },
        )
    }

    /// Whether every replica has delivered; if not, `waker` is woken when the last one
    /// does (it replaces the waker of an earlier poll).
    pub fn poll_done(&self, waker: &Waker) -> bool {
        if self.is_done() {
            return true;
        }
        *lock(&self.waiter) = Some(Waiter::Polled(waker.clone()));
        // Re-checked after registering: `deliver` decrements before it takes the waiter,
        // so either it finds this waker or this load sees its decrement.
        self.is_done()
    }
}

pub(crate) use crate::sync::lock;

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` holds exactly `bytes`, aligned for rkyv, inline exactly when small.
    fn assert_holds(input: &TaskInput, bytes: &[u8], what: &str) {
        assert_eq!(&**input, bytes, "{what}");
        assert_eq!(input.as_ptr() as usize % 16, 0, "{what}: unaligned");
        assert_eq!(
            matches!(input.0, InputBytes::Inline { .. }),
            bytes.len() <= INLINE_INPUT,
            "{what}: kept the wrong way"
        );
    }

    /// Inputs on both sides of the inline limit read back whole and aligned for rkyv,
    /// also after the task (here, the input) moves.
    #[test]
    fn an_input_reads_back_whole_and_aligned_inline_or_not() {
        for len in [0, 1, 15, INLINE_INPUT - 1, INLINE_INPUT, INLINE_INPUT + 1, 4096] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let converted = TaskInput::from(crate::codec::aligned_copy(&bytes));
            let filled = TaskInput::filled(len, |dst| {
                dst.copy_from_slice(&bytes);
                Ok::<_, ()>(())
            })
            .unwrap();
            for input in [converted, filled] {
                let moved = [input];
                let [input] = moved;
                assert_holds(&input, &bytes, &format!("{len} bytes"));
            }
        }
    }

    /// Filling in place replaces whatever the input held, inline or in a buffer, and a
    /// fill that fails leaves the input empty, never a mix of old and new bytes.
    #[test]
    fn an_input_filled_in_place_holds_only_its_new_bytes() {
        let sizes = [0, 3, INLINE_INPUT, INLINE_INPUT + 1, 300, 5];
        let mut input = TaskInput::default();
        assert!(input.is_empty());
        for (round, len) in sizes.into_iter().enumerate() {
            let bytes: Vec<u8> = (0..len).map(|i| (i + round * 31) as u8).collect();
            input
                .fill(len, |dst| {
                    dst.copy_from_slice(&bytes);
                    Ok::<_, ()>(())
                })
                .unwrap();
            assert_holds(&input, &bytes, &format!("round {round}: {len} bytes"));
        }
        for (held, len) in [(300, 7), (5, INLINE_INPUT + 9), (300, INLINE_INPUT + 9)] {
            input
                .fill(held, |dst| {
                    dst.fill(0x11);
                    Ok::<_, &str>(())
                })
                .unwrap();
            let failed = input.fill(len, |dst| {
                dst.fill(0xee);
                Err("the client's bytes could not be read")
            });
            assert!(failed.is_err());
            assert!(input.is_empty(), "a failed fill of {len} bytes left bytes");
        }
    }
}
